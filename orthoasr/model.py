"""The Conformer-CTC supernet (docs/design.md §2, §6): VGG frontend with 4x time subsampling,
sinusoidal positions, Conformer blocks of gated modules, one output layer per budget.

    feats (B, T, 80) -> VGGFrontend -> (B, T/4, D) -> [ConformerBlock] x L -> head[b]
    -> log_probs (B, T/4, V)

Gates g (N,) scale unit outputs; unit u = layer * U + position in the block (cfg.module_order).
Splitting g per module is a view on the device: no host sync. A module whose gates are all
exactly 0 outputs exactly 0; a caller that knows this on the host (a frozen subnet) can
leave such modules out altogether (`encode(..., skip=model.dead_modules(gates))`): no launch,
no FLOPs, the same output. Likewise a module whose gates are all exactly 1 is the ungated
module (`encode(..., full=model.full_modules(gates))`): the same output from the dense path,
whose backward products go to cuBLAS on the Triton backend.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

import orthoasr.kernels.common as kernel_common
from orthoasr.kernels.common import FrozenOperands, staged_operand_copies
from orthoasr.kernels.common import valid_mask as time_mask  # (B, T) bool, valid frames
from orthoasr.kernels.first_conv import first_conv_relu
from orthoasr.kernels.frontend import masked_relu_pool, masked_relu_pool_reference
from orthoasr.kernels.residual_step import draw_seed

from .backend import kernel_masks
from .batch_streams import check_groups, over_streams
from .conditional import if_any_nonzero
from .config import SupernetConfig
from .nn import GatedConvModule, GatedFeedForward, GatedMHSA
from .nn.common import compute_dtype, triton_runs
from .nn.norm import MaskedLayerNorm
from .units import enumerate_units, module_cost

HALF_STEP = {"ffn1": 0.5, "ffn2": 0.5, "conv": 1.0, "mhsa": 1.0}  # Macaron FFN half steps



class VGGFrontend(nn.Module):
    """Two blocks of [conv3x3, ReLU, conv3x3, ReLU, maxpool 2x2], then Linear(c2 * F/4 -> D).

    Padded frames are set to 0 (with `where`: multiplying by 0 would keep a NaN or inf there)
    before every conv so that valid outputs do not depend on them (and a batch gives the same
    values as its utterances one by one).

    What follows each conv is one op, `masked_relu_pool` (kernels/frontend.py): the conv's
    bias, ReLU, the max-pool after convs 2 and 4, and the mask the next conv (or the
    projection) needs, at the pooled resolution: the values of the bias add, ReLU, pool and
    `where` one after the other (bit for bit in fp32; in bf16 the bias add rounds once
    fewer). On the Triton backend it is one kernel each way, so fewer passes over
    activations of ~0.8 GB each at 80k frames, and no separate bias add and bias-gradient
    reduction (3.7 + 1.9 ms of the step profile). Per conv output of N bf16
    elements, forward + backward: 4N + 6N bytes against ReLU's and where's 8N + 10N, and
    2.5N + 4.5N with the pool against ~9.5N + ~11.5N (its int64 indices, the dx fill). At
    80k frames that is ~10 GB per step against ~24 GB. On the H200 the op's 8 launches take
    2.85 ms of a paper-size step, which fell from 108 to 87 ms with it and the channels-last
    layout below (bench/results/profiles/step_5766582_h200.txt). The backward keeps less:
    y, which the next conv keeps anyway, in place of ReLU's output; x in place of ReLU's
    output and the pool's indices. `kernels=False` keeps the torch ops on every backend
    (the exported subnet: plain PyTorch).

    On the Triton backend the first conv (one input channel, which cuDNN pads to eight) is
    an op of its own with its bias, ReLU and mask (kernels/first_conv.py), in fp32 from the
    fp32 features, written once in the compute dtype.

    The convolutions run in channels-last layout (the activations and the weights), the same
    values up to float rounding (tests/test_model.py). On the CPU, oneDNN does these
    few-channel convolutions' forward and backward about 1.6x faster so (~0.30 -> ~0.19 s
    for a 12,000-frame batch on 2 cores). On CUDA, cuDNN's bf16 kernels work in that layout:
    from NCHW it transposed every activation in and out, 9.0 ms of a 108 ms paper-size step
    on the H200 (bench/results/profiles/step_5fe6434_h200.txt).
    """

    def __init__(self, num_mel_bins: int, channels: tuple[int, int], d_model: int,
                 kernels: bool = True):
        super().__init__()
        c1, c2 = channels
        self.convs = nn.ModuleList([
            nn.Conv2d(1, c1, 3, padding=1), nn.Conv2d(c1, c1, 3, padding=1),
            nn.Conv2d(c1, c2, 3, padding=1), nn.Conv2d(c2, c2, 3, padding=1)])
        # He-uniform weights, zero biases: torch's default conv init shrinks the signal ~2x a
        # conv through the ReLUs while the biases keep their size, so some channels start
        # dead, which ones depending on the seed, and the tiny demo stalled on CTC's blank
        # plateau for seeds 1-3 (configs/tiny.yaml has the runs). The default weights times
        # sqrt(6) are He-uniform (bound sqrt(6 / fan_in)) from the same draws, so no other
        # module's init moves.
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.mul_(math.sqrt(6.0))
                conv.bias.zero_()
        self.proj = nn.Linear(c2 * (num_mel_bins // 4), d_model)
        self.kernels = kernels

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        """feats (B, T, F), lengths (B,) -> (B, T // 4, D), lengths // 4."""
        fused = self.kernels and triton_runs(feats, lengths, None)
        first_fused = fused and not feats.requires_grad    # the op gives no input gradient
        if first_fused:   # conv 1, its bias, ReLU and mask in one op (kernels/first_conv.py)
            first = self.convs[0]
            x = first_conv_relu(feats, lengths, first.weight, first.bias, compute_dtype(feats))
        else:
            feats = torch.where(time_mask(lengths, feats.shape[1])[..., None], feats, 0.0)
            # (B, 1, T, F) with channels-last strides (T*F, 1, F, 1) spelled out: `contiguous(
            # memory_format=channels_last)` keeps the NCHW strides of a one-channel tensor,
            # and cuDNN ran the first conv in NCHW (a slow kernel, transposes, and copies of
            # its output and of its gradient: ~7 ms of an 87 ms step, H200, session 12)
            x = feats.unsqueeze(-1).permute(0, 3, 1, 2)
        for i in range(1 if first_fused else 0, len(self.convs)):
            conv = self.convs[i]
            weight = conv.weight.contiguous(memory_format=torch.channels_last)
            pool = i % 2 == 1
            if fused:       # the bias in the op: cuDNN would add it in a pass of its own
                x = masked_relu_pool(conv._conv_forward(x, weight, None), lengths, pool,
                                     conv.bias)
            else:
                x = masked_relu_pool_reference(conv._conv_forward(x, weight, conv.bias),
                                               lengths, pool)
            if pool:
                lengths = lengths // 2
        return self.project(x), lengths

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c2, T', F') -> (B, T', D) by `proj`, whose inputs are (channel, frequency) pairs
        channel-major. Flattened frequency-major instead, a channels-last x is a view (no copy
        forward, and its gradient comes back channels-last, as the op's backward reads it);
        the weight's columns are reordered to match (c2 * F' * D elements, ~1M)."""
        B, C, T, F = x.shape
        weight = self.proj.weight.view(-1, C, F).transpose(1, 2).reshape(-1, F * C)
        return nn.functional.linear(x.permute(0, 2, 3, 1).flatten(2), weight, self.proj.bias)


def check_embedded(weight_dtype: torch.dtype, x) -> None:
    """encode's x (B, T', D) (the supernet's and the exported subnet's): `embed`'s output
    dtype, the weights' (any under autocast); the modules check its shape."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != weight_dtype and \
            not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"x is {x.dtype} but the model's weights are {weight_dtype}; convert "
                        f"with x.to({weight_dtype})")


def check_features(cfg: SupernetConfig, weight_dtype: torch.dtype, features, lengths
                   ) -> None:
    """The checks of a model's inputs, features (B, T, F) and lengths (B,) (the supernet's
    and the exported subnet's): shapes and dtypes; lengths in input frames when they are on
    the CPU (on a GPU reading them would sync) and not traced (torch.export, torch.compile:
    reading them would be a data-dependent branch), and in a torch.export program when it
    runs."""
    if not isinstance(features, torch.Tensor) or features.dim() != 3 or \
            features.shape[2] != cfg.num_mel_bins:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else features
        raise ValueError(f"features must be (B, T, {cfg.num_mel_bins}), got {shape}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point ({weight_dtype}, as the model's "
                        f"weights), got {features.dtype}")
    if features.dtype != weight_dtype and \
            not torch.is_autocast_enabled(features.device.type):
        raise TypeError(f"features are {features.dtype} but the model's weights are "
                        f"{weight_dtype}; convert with features.to({weight_dtype})")
    if features.shape[1] < 4:
        raise ValueError(f"features need at least 4 frames (4x subsampling), "
                         f"got T={features.shape[1]}")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (features.shape[0],) \
            or lengths.dtype not in (torch.int32, torch.int64):
        got = f"{lengths.dtype} {tuple(lengths.shape)}" if isinstance(
            lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be an int tensor of shape ({features.shape[0]},), "
                         f"got {got}")
    if lengths.device != features.device:
        raise ValueError(f"lengths are on {lengths.device} but features on {features.device}")
    if lengths.device.type == "cpu" and lengths.numel() and \
            not torch.compiler.is_compiling() and \
            (int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]):
        raise ValueError(f"lengths must be in [1, T={features.shape[1]}] input frames, "
                         f"got {lengths.tolist()}")
    if torch.compiler.is_exporting():
        # the program checks them when it runs, on the lengths' device (no sync; on a GPU a
        # failure is a device-side assert, as PyTorch's own index checks are)
        torch._assert_async(((lengths >= 1) & (lengths <= features.shape[1])).all(),
                            "lengths must be in [1, T] input frames, T = features.shape[1]")


def sinusoidal_positions(frames: int, d_model: int, device, dtype) -> torch.Tensor:
    """(frames, D) absolute sinusoidal position encoding (no parameters)."""
    position = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                      * (-math.log(10000.0) / d_model))
    angles = position * freqs                                       # (T, ceil(D / 2))
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :d_model]
    return pe.to(dtype)


def block_layout(cfg: SupernetConfig) -> list[tuple[str, int, int]]:
    """(module kind, first unit, end unit) of each module within one block, in block order."""
    layout, start = [], 0
    for kind in cfg.module_order:
        n = module_cost(cfg, kind, 1).num_units
        layout.append((kind, start, start + n))
        start += n
    return layout


def make_module(cfg: SupernetConfig, kind: str) -> nn.Module:
    if kind in ("ffn1", "ffn2"):
        return GatedFeedForward(cfg.d_model, cfg.ff_dim, chunks=cfg.ff_chunks,
                                dropout=cfg.dropout, granularity=cfg.granularity)
    if kind == "conv":
        return GatedConvModule(cfg.d_model, kernel_size=cfg.conv_kernel, dropout=cfg.dropout)
    return GatedMHSA(cfg.d_model, cfg.num_heads, dropout=cfg.dropout,
                     granularity=cfg.granularity)


class ConformerBlock(nn.Module):
    """x += s_m * dropout(module(x)) for each module m in `module_order` (s = 1/2 for FFNs),
    then LN. Each residual step is taken by the norm after it, at the start of the next
    module (or by the final LN): on the Triton backend the step and that LayerNorm are one
    kernel each way (kernels/layer_norm.py, kernels/residual_step.py)."""

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        self.layout = block_layout(cfg)
        self.modules_by_kind = nn.ModuleDict({kind: make_module(cfg, kind)
                                              for kind, _, _ in self.layout})
        self.norm = MaskedLayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                lengths: torch.Tensor,
                gates: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
                skip: frozenset[str] = frozenset(),
                operands: dict[str, tuple[torch.Tensor, ...]] | None = None,
                full: frozenset[str] = frozenset(),
                seeds: torch.Tensor | None = None, ungated_batch: int = 0,
                twin: bool = False, normed: torch.Tensor | None = None,
                next_norm: nn.LayerNorm | None = None):
        """x (B, T, D), gates (U,) or None (all ones) -> (B, T, D), 0 at padded frames.
        gates may also come as `split_gates` gives them (one tensor a module). skip: kinds
        of the modules left out (as if their gates were all 0); full: kinds of the modules
        run ungated (as their gates are all 1). operands: kind -> that module's
        `matmul_weights` in the compute dtype, or None: each casts its own. seeds: (modules,)
        int64, the fused dropouts' seeds in layout order, or None: drawn here when a
        dropout runs on the Triton backend. ungated_batch: the first sequences run as if
        gates were None (encode_pair). twin: -> (output, its twin), as the final norm gives
        them (MaskedLayerNorm), for the next block, which takes such a pair as x: the first
        module that runs reads the first, the residual stream starts from the second, and
        the norm's backward adds their gradients in its kernel.
        Inference on the Triton backend (no grad) may chain blocks through their norms:
        next_norm, the next block's `first_norm`, makes this block return (output, that norm
        of the output), made by the final norm's kernel; the next block takes the second as
        `normed`, its first module's normalised input."""
        first_input, x = x if isinstance(x, tuple) else (x, x)
        if seeds is None and self.draws_seeds(x, lengths):
            seeds = draw_seed(x.device, len(self.layout))
        if isinstance(gates, torch.Tensor):
            gates = self.split_gates(gates)
        residual = None          # (y, seed, scale, p): the last module's step, not yet taken
        for index, (kind, _, _) in enumerate(self.layout):
            if kind in skip:
                continue
            module_gates = None if gates is None or kind in full else gates[index]
            module = self.modules_by_kind[kind]
            first = {} if residual is not None or normed is None else dict(normed=normed)
            out = module(first_input if residual is None else x, lengths, module_gates,
                         operands=None if operands is None else operands[kind], dropout=False,
                         ungated_batch=0 if module_gates is None else ungated_batch,
                         residual=residual, **first)
            x, y = out if residual is not None else (x, out)
            p = module.dropout_rate if self.training else 0.0
            seed = None if seeds is None or p == 0 else seeds[index:index + 1]
            residual = (y, seed, HALF_STEP[kind], p)
        return self.norm(x, lengths, residual, twin, next_norm)

    def first_norm(self, skip: frozenset[str] = frozenset()) -> nn.LayerNorm | None:
        """The pre-norm of the first module that runs (not in `skip`) when it takes its
        input already normalised (a feed-forward module: `normed`), else None."""
        kind = next((kind for kind, _, _ in self.layout if kind not in skip), None)
        module = None if kind is None else self.modules_by_kind[kind]
        return module.norm if isinstance(module, GatedFeedForward) else None

    def write_dead(self, x, lengths: torch.Tensor, out) -> None:
        """Write into `out` (forward's output, or its pair with the twin) what forward
        outputs when every gate of the block is 0: the final norm of the residual stream."""
        stream = x[1] if isinstance(x, tuple) else x
        self.norm.forward_into(stream, lengths, out[0] if isinstance(out, tuple) else out)

    def split_gates(self, gates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(U,) -> each module's gates, in layout order (views)."""
        return torch.split(gates, [end - start for _, start, end in self.layout])

    def draws_seeds(self, x: torch.Tensor, lengths: torch.Tensor) -> bool:
        """Whether this block's residual steps draw their dropout masks from seeds: training
        with a dropout, on the Triton backend (its kernels' masks) or on the torch backend
        under `kernel_masks` (the same masks)."""
        if not self.training or not any(module.dropout_rate > 0
                                        for module in self.modules_by_kind.values()):
            return False
        if triton_runs(x, lengths, None):
            return True
        if kernel_masks() and x.device.type == "cpu" and not kernel_common.interpreting():
            # else the residual step's "pass seed None", which a training run cannot do
            raise ValueError("set_kernel_masks(True) (env ORTHOASR_KERNEL_MASKS=1) draws the "
                             "encoder's dropout masks with a Triton kernel, which on the CPU "
                             "needs TRITON_INTERPRET=1 (set before Triton is imported): set "
                             "it, or turn the kernel masks off")
        return kernel_masks()


class ConformerSupernet(nn.Module):
    """`model(features, lengths, gates=None, head=-1) -> (log_probs, out_lengths)`.

    features (B, T, num_mel_bins) log-mel frames, lengths (B,) int; gates (N,) unit gates
    (None: all ones); head: index of the budget whose output layer is used (-1: largest).
    log_probs (B, T // 4, V) float32; out_lengths = lengths // 4.
    tokenizer_bytes: the serialized tokenizer its checkpoint was saved with (set by
    load_trained; None for a model built here), which a Recognizer checks its tokenizer
    against.
    """

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer_bytes: bytes | None = None
        self.frontend = VGGFrontend(cfg.num_mel_bins, cfg.frontend_channels, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([ConformerBlock(cfg) for _ in range(cfg.num_layers)])
        self.heads = nn.ModuleList([nn.Linear(cfg.d_model, cfg.vocab_size)
                                    for _ in cfg.budgets])
        self.units = enumerate_units(cfg)

    @property
    def num_units(self) -> int:
        return len(self.units)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                gates: torch.Tensor | None = None, head: int = -1):
        x, lengths = self.embed(features, lengths)
        return self.encode(x, lengths, gates, head), lengths

    def embed(self, features: torch.Tensor, lengths: torch.Tensor):
        """Frontend plus positions, the part every subnet shares (training runs it once per
        batch for all its subnets): (B, T, F) -> (B, T // 4, D), lengths // 4."""
        self._check_features(features, lengths)
        x, lengths = self.frontend(features, lengths)
        return x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype), lengths

    def encode(self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor | None = None,
               head: int = -1, skip: frozenset[tuple[int, str]] = frozenset(),
               full: frozenset[tuple[int, str]] = frozenset(),
               frozen_operands: FrozenOperands | None = None,
               skip_dead_blocks: bool = False, batch_streams: int = 1) -> torch.Tensor:
        """Blocks under `gates` and output layer `head`: (B, T', D) -> log_probs (B, T', V).
        skip: (layer, kind) of modules left out, as `dead_modules` gives them: with hard
        gates that are all 0 there the output is the same, without their launches. full:
        (layer, kind) of modules run ungated, as `full_modules` gives them: with hard gates
        that are all 1 there the output is the same, from the dense path. frozen_operands,
        skip_dead_blocks, batch_streams: as run_blocks takes them."""
        self._check_gates(x, gates, head)
        check_embedded(self.heads[0].weight.dtype, x)
        if not isinstance(lengths, torch.Tensor):     # the modules check the rest of it
            raise TypeError(f"lengths must be a tensor, got {type(lengths).__name__}")
        x = self.run_blocks(self.dropout(x), lengths, gates, skip, full,
                            frozen_operands=frozen_operands, skip_dead_blocks=skip_dead_blocks,
                            batch_streams=batch_streams)
        return self.heads[head](x).float().log_softmax(dim=-1)

    def encode_pair(self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor,
                    head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The supernet (gates None, the last output layer) and a subnet (`gates`, output
        layer `head`) on the same x, as one batch of 2B sequences: (B, T', D) -> their
        log_probs (B, T', V) each. The values of `encode(x, lengths)` and `encode(x, lengths,
        gates, head)`; each launch covers both passes, and every weight's gradient comes out
        summed over both. Component granularity (the gates of a module's units, not one
        gate a module)."""
        self._check_gates(x, gates, head)
        if self.cfg.granularity != "component":
            raise ValueError(f"encode_pair needs granularity 'component', got "
                             f"{self.cfg.granularity!r}")
        B = x.shape[0]
        both = self.dropout(torch.cat([x, x]))
        both = self.run_blocks(both, torch.cat([lengths, lengths]), gates, ungated_batch=B)
        return (self.heads[-1](both[:B]).float().log_softmax(dim=-1),
                self.heads[head](both[B:]).float().log_softmax(dim=-1))

    def run_blocks(self, x: torch.Tensor, lengths: torch.Tensor,
                   gates: torch.Tensor | None = None,
                   skip: frozenset[tuple[int, str]] = frozenset(),
                   full: frozenset[tuple[int, str]] = frozenset(),
                   ungated_batch: int = 0,
                   frozen_operands: FrozenOperands | None = None,
                   skip_dead_blocks: bool = False, batch_streams: int = 1) -> torch.Tensor:
        """The Conformer blocks alone (no checks, no dropout, no output layer): (B, T', D) ->
        (B, T', D). ungated_batch: the first sequences run as if gates were None.
        frozen_operands: kept compute-dtype copies of the matmul weights, for weights that
        inference keeps as they are (FrozenOperands); None: copied anew every pass.
        skip_dead_blocks: where a CUDA graph is being captured without grad, a block whose
        gates are all 0 runs only its final norm at replay, decided on the device
        (orthoasr.conditional; needs cuda-bindings): the same output without the block's
        modules' launches, at ~12 us more a live block (H200). No effect elsewhere.
        batch_streams: where a CUDA graph is being captured without grad (and no dropout
        draws), the sequences split into up to this many groups, each group's blocks on its
        own stream, so that their kernels overlap at replay (orthoasr.batch_streams): the
        same output, ~5-10% less GPU time at 2 (H200). No effect elsewhere."""
        check_groups(batch_streams)
        skips = self._modules_per_layer(skip, "skip")
        fulls = self._modules_per_layer(full, "full")
        if both := [(layer, kind) for layer, kinds in enumerate(skips)
                    for kind in kinds & fulls[layer]]:
            raise ValueError(f"modules both left out (skip) and run ungated (full): {both}")
        # every module's gates as views from one split: one node whose backward writes the
        # gates' gradient in one launch (a select per block and a slice per module gave
        # each a zero fill, a copy and an add: ~180 launches a paper-size stage-1 step)
        block_gates = [None] * len(self.blocks)
        if gates is not None:
            sizes = [end - start for block in self.blocks for _, start, end in block.layout]
            modules = torch.split(gates, sizes)
            per_block = len(self.blocks[0].layout)
            block_gates = [modules[i * per_block:(i + 1) * per_block]
                           for i in range(len(self.blocks))]
        operands, (ready_layer, ready) = self._matmul_operands(x, lengths, gates, skips,
                                                              frozen_operands)
        seeds = [None] * len(self.blocks)
        if any(block.draws_seeds(x, lengths) for block in self.blocks):
            # the fused dropouts' seeds for the whole pass in one launch (one a module
            # otherwise: 96 a paper-size stage-1 step); none drawn without a dropout, as
            # before, so that the generator's later draws stay where they were
            seeds = draw_seed(x.device, len(self.blocks) * len(self.blocks[0].layout)
                              ).view(len(self.blocks), -1)
        grad = torch.is_grad_enabled()
        # what skip_dead_blocks and batch_streams act on: inference under a graph capture
        captured_inference = (ungated_batch == 0 and not grad and x.is_cuda
                              and torch.cuda.is_current_stream_capturing())
        # each block inside an IF node on its gates, whose ELSE branch (every gate 0) is the
        # block's final norm alone
        branch = captured_inference and skip_dead_blocks and gates is not None
        block_units = gates.float().contiguous().chunk(len(self.blocks)) if branch else []
        # inference on the Triton backend, no IF nodes: each block's final norm also makes the
        # next block's first pre-norm where that module takes it (one launch and one read of
        # the block's output less a block)
        chain = (not grad and not torch.compiler.is_compiling() and ungated_batch == 0
                 and not branch and triton_runs(x, lengths, None))

        def blocks(x, lengths):
            normed = None
            for layer, block in enumerate(self.blocks):
                if layer == ready_layer:     # the later blocks' operand copies, made meanwhile
                    torch.cuda.current_stream().wait_event(ready)
                last = layer + 1 == len(self.blocks)
                next_norm = None if last or not chain else \
                    self.blocks[layer + 1].first_norm(skips[layer + 1])
                # with grad, each block but the last hands the next its output and the
                # output's twin
                run = functools.partial(block, x, lengths, block_gates[layer], skips[layer],
                                        operands[layer], full=fulls[layer],
                                        seeds=seeds[layer], ungated_batch=ungated_batch,
                                        twin=grad and not last, normed=normed,
                                        next_norm=next_norm)
                if branch:
                    dead = functools.partial(block.write_dead, x, lengths)     # dead(out)
                    x = if_any_nonzero(block_units[layer], run, dead)
                else:
                    x = run()
                x, normed = x if next_norm is not None else (x, None)
            return x

        # split only where nothing is drawn per element (a group would repeat the first
        # group's dropout masks) and the capture hides the extra launches' host time
        if captured_inference and batch_streams > 1 and x.shape[0] > 1 and seeds[0] is None:
            return over_streams(x, lengths, min(batch_streams, x.shape[0]), blocks)
        return blocks(x, lengths)

    @property
    def matmul_weights(self) -> list[torch.Tensor]:
        """Every encoder module's `matmul_weights`, block by block in layout order: what
        `run_blocks` copies to the compute dtype (the list a FrozenOperands holds)."""
        return [w for block in self.blocks for kind, _, _ in block.layout
                for w in block.modules_by_kind[kind].matmul_weights]

    def _matmul_operands(self, x, lengths, gates, skips, frozen=None
                         ) -> tuple[list[dict[str, tuple[torch.Tensor, ...]] | None],
                                    tuple[int, torch.cuda.Event | None]]:
        """(per layer, kind -> the compute-dtype copies of that module's `matmul_weights`,
        for every module that runs; (layer, ready)). The copies are made at the start of
        the pass by multi-tensor copies (two cast launches per module otherwise: 96 per
        paper-size pass): the first running layer's on the current stream, the others' on
        a side stream while that layer runs (staged_operand_copies), so the current stream
        waits on the event `ready` before `layer` (ready None: nothing to wait for). Made
        anew at every pass, so a captured CUDA graph copies the current weights; or, with
        `frozen` (a FrozenOperands), kept copies of every module's, written again only
        where a weight changed. None per layer when the torch backend runs (its references
        cast for themselves) or no weight needs a cast."""
        none = [None] * len(self.blocks), (-1, None)
        if not triton_runs(x, lengths, gates):
            return none
        modules = [(layer, kind, block.modules_by_kind[kind])
                   for layer, block in enumerate(self.blocks)
                   for kind, _, _ in block.layout
                   if frozen is not None or kind not in skips[layer]]
        weights = [w for _, _, module in modules for w in module.matmul_weights]
        dtype = compute_dtype(x)
        if all(w.dtype == dtype for w in weights):
            return none
        ready, ready_layer = None, -1
        if frozen is not None:
            copies = frozen(weights, dtype)
        else:
            first = modules[0][0]
            ahead = sum(len(module.matmul_weights) for layer, _, module in modules
                        if layer == first)
            copies, ready = staged_operand_copies(weights, dtype, ahead)
            if ready is not None:
                ready_layer = min(layer for layer, _, _ in modules if layer > first)
        copies = iter(copies)
        operands = [{} for _ in self.blocks]
        for layer, kind, module in modules:
            operands[layer][kind] = tuple(next(copies) for _ in module.matmul_weights)
        return operands, (ready_layer, ready)

    def dead_modules(self, gates: torch.Tensor) -> frozenset[tuple[int, str]]:
        """(layer, kind) of every module whose gates in `gates` (N,) are all exactly 0: what
        `encode(..., skip=)` may leave out. Reads the gates on the host (a sync on a GPU):
        once per frozen subnet, not per step. Gates that need a gradient are refused: a
        module left out would give its gates none."""
        return self._modules_where(gates, "dead_modules", lambda g: not g.any())

    def full_modules(self, gates: torch.Tensor) -> frozenset[tuple[int, str]]:
        """(layer, kind) of every module whose gates in `gates` (N,) are all exactly 1: what
        `encode(..., full=)` may run ungated. Reads the gates on the host, as dead_modules
        does, and refuses gates that need a gradient likewise."""
        return self._modules_where(gates, "full_modules", lambda g: bool((g == 1).all()))

    def _modules_where(self, gates, name: str, test) -> frozenset[tuple[int, str]]:
        """(layer, kind) of the modules whose slice of hard host-read `gates` passes test."""
        if gates is None:
            return frozenset()
        if not isinstance(gates, torch.Tensor):
            raise TypeError(f"gates must be a tensor or None, got {type(gates).__name__}")
        if gates.requires_grad:
            raise ValueError(f"{name} needs hard gates without a gradient (a module left out "
                             f"or run ungated gives its gates no gradient)")
        self._check_gates(gates, gates, -1)
        rows = gates.detach().cpu().view(len(self.blocks), -1)
        return frozenset((layer, kind) for layer, block in enumerate(self.blocks)
                         for kind, start, end in block.layout
                         if test(rows[layer, start:end]))

    def _modules_per_layer(self, items, name: str) -> list[frozenset[str]]:
        """(layer, kind) items (`skip` or `full`) -> per layer, the set of kinds."""
        per_layer = [set() for _ in self.blocks]
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int)
                    and 0 <= item[0] < len(self.blocks) and item[1] in HALF_STEP):
                raise ValueError(f"{name} items must be (layer in [0, {len(self.blocks)}), kind "
                                 f"in {tuple(HALF_STEP)}), got {item!r}")
            per_layer[item[0]].add(item[1])
        return [frozenset(kinds) for kinds in per_layer]

    def _check_features(self, features, lengths) -> None:
        check_features(self.cfg, self.frontend.proj.weight.dtype, features, lengths)

    def _check_gates(self, x, gates, head) -> None:
        if gates is not None:
            if not isinstance(gates, torch.Tensor):
                raise TypeError(f"gates must be a tensor or None, got {type(gates).__name__}")
            if not gates.is_floating_point():     # as the modules refuse them, but here
                raise TypeError(f"gates must be floating point, got {gates.dtype}")
            if gates.shape != (self.num_units,):
                raise ValueError(f"gates must have shape ({self.num_units},) (one per unit), "
                                 f"got {tuple(gates.shape)}")
            if gates.device != x.device:
                raise ValueError(f"gates are on {gates.device} but features on {x.device}")
            # hard gates on the CPU (inference, export) are read here; soft training masks
            # carry a gradient, and a NaN there shows in the loss (TrainingDiverged)
            if gates.device.type == "cpu" and not gates.requires_grad and \
                    not bool(torch.isfinite(gates).all()):
                raise ValueError("gates contain NaN or inf")
        self.check_head(head)

    def check_head(self, head) -> None:
        """ValueError unless `head` indexes an output layer (one per budget)."""
        if isinstance(head, bool) or not isinstance(head, int) or \
                not -len(self.heads) <= head < len(self.heads):
            raise ValueError(f"head must be an int in [-{len(self.heads)}, "
                             f"{len(self.heads) - 1}] (one per budget), got {head!r}")


__all__ = ["ConformerSupernet", "ConformerBlock", "VGGFrontend", "sinusoidal_positions",
           "block_layout", "time_mask", "check_features", "check_embedded"]
