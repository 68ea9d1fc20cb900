"""Subnet export (docs/design.md §6): a compact dense Conformer with the selected units' weights
sliced out of the supernet; modules with no unit left are removed.

    sub = extract_subnet(model, gates, head)   # gates (N,): 0 drops a unit, others scale it
    log_probs, out_lengths = sub(features, lengths)
    sub.save("sub.pt"); sub = load_subnet("sub.pt")

The compact model is plain PyTorch (no Triton, no gates), goes through `torch.export` for
any batch and length (`export_program`), has exactly `subnet_cost(cfg, gates, "params")`
parameters, and its outputs equal the masked supernet's: a gate value is folded into the
weights its unit's output passes through.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (
    SUBNET_KIND,
    CheckpointError,
    is_exported_program,
    load_checkpoint,
    refuse_replacing,
    save_checkpoint,
    write_atomically,
)
from .config import SupernetConfig, budget_index
from .data import Tokenizer
from .devices import resolve_device
from .model import (
    HALF_STEP,
    ConformerSupernet,
    VGGFrontend,
    block_layout,
    check_embedded,
    check_features,
    sinusoidal_positions,
    time_mask,
)
from .nn.common import check_module_inputs

# the shapes a subnet's torch.export program accepts: at least 8 frames (torch.export's
# guard: its graph needs two frames after the 4x subsampling), at most an hour of 10 ms
# frames
PROGRAM_BATCH = (1, 4096)
PROGRAM_FRAMES = (8, 360_000)

# ----------------------------------------------------------------------------- dense modules

class DenseFeedForward(nn.Module):
    """y = W2 SiLU(W1 LN(x) + b1) + b2 on valid frames, 0 on padded ones."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, hidden)
        self.linear2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor):
        y = self.linear2(F.silu(self.linear1(self.norm(x))))
        return torch.where(mask, y, 0.0)


class DenseConvModule(nn.Module):
    """PW2(SiLU(LN(DWConv(mask(GLU(PW1(LN(x)))))))) on valid frames, 0 on padded ones."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2,
                                   groups=d_model)
        self.norm_conv = nn.LayerNorm(d_model)
        self.pointwise2 = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor):
        v = torch.where(mask, F.glu(self.pointwise1(self.norm(x)), dim=-1), 0.0)
        w = self.depthwise(v.transpose(1, 2)).transpose(1, 2)
        y = self.pointwise2(F.silu(self.norm_conv(w)))
        return torch.where(mask, y, 0.0)


class DenseMHSA(nn.Module):
    """Multi-head self-attention over `num_heads` kept heads of size `head_dim`; keys past
    the length are masked, padded query rows attend to nothing (output = b_o there)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 3 * num_heads * head_dim)   # rows view (H, 3, Dh)
        self.out_proj = nn.Linear(num_heads * head_dim, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor):
        B, T, _ = x.shape
        qkv = self.in_proj(self.norm(x)).view(B, T, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4)                            # (B, H, T, Dh) each
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        keys = torch.arange(T, device=x.device)[None, :] < lengths.clamp(min=1)[:, None]
        scores = scores.float().masked_fill(~keys[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1).to(v.dtype) @ v
        attn = attn.masked_fill(~mask[:, None, :, :], 0.0)
        # the width named, not -1: an empty batch has no elements to infer it from
        width = self.num_heads * self.head_dim
        return self.out_proj(attn.transpose(1, 2).reshape(B, T, width))


class CompactBlock(nn.Module):
    def __init__(self, cfg: SupernetConfig, widths: dict[str, int]):
        super().__init__()
        self.order = [kind for kind in cfg.module_order if widths[kind] > 0]
        layers = {}
        for kind in self.order:
            if kind in ("ffn1", "ffn2"):
                layers[kind] = DenseFeedForward(cfg.d_model, widths[kind] * cfg.chunk_dim)
            elif kind == "conv":
                layers[kind] = DenseConvModule(cfg.d_model, cfg.conv_kernel)
            else:
                layers[kind] = DenseMHSA(cfg.d_model, widths[kind], cfg.head_dim)
        self.modules_by_kind = nn.ModuleDict(layers)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x, mask, lengths):
        for kind in self.order:
            x = x + HALF_STEP[kind] * self.modules_by_kind[kind](x, mask, lengths)
        return torch.where(mask, self.norm(x), 0.0)        # as the supernet's block


class CompactConformer(nn.Module):
    """The exported subnet: `sub(features (B, T, F), lengths (B,)) -> (log_probs, lengths//4)`.

    `widths[layer][kind]`: FFN chunks kept, MHSA heads kept, conv 0/1 (0 = module removed).
    `trained_in_bf16`: its run trained under a bfloat16 autocast (`orthoasr export` records
    it), so a Recognizer decodes it in bf16 on a GPU, as eval scores the run.
    """

    def __init__(self, cfg: SupernetConfig, widths: list[dict[str, int]], budget: float = 1.0):
        super().__init__()
        self.cfg, self.widths, self.budget = cfg, widths, budget
        self.frontend = VGGFrontend(cfg.num_mel_bins, cfg.frontend_channels, cfg.d_model,
                                    kernels=False)
        self.blocks = nn.ModuleList([CompactBlock(cfg, w) for w in widths])
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.tokenizer_bytes: bytes | None = None
        self.trained_in_bf16 = False

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        """features (B, T, F), lengths (B,) -> log_probs (B, T // 4, V), lengths // 4."""
        x, lengths = self.embed(features, lengths)
        return self.encode(x, lengths), lengths

    def embed(self, features: torch.Tensor, lengths: torch.Tensor):
        """Frontend plus positions: (B, T, F) -> (B, T // 4, D), lengths // 4."""
        check_features(self.cfg, self.frontend.proj.weight.dtype, features, lengths)
        x, lengths = self.frontend(features, lengths)
        return x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype), lengths

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Blocks and output layer, what a GraphedSubnet replays: x (B, T', D), lengths (B,)
        -> log_probs (B, T', V) float32; frames past each length are ignored. Its inputs
        are checked as the supernet's encode checks them (lengths in [0, T'] when they are
        on the CPU), except when traced: forward's `embed` checked them."""
        if not torch.compiler.is_compiling():
            check_module_inputs(x, lengths, None, self.cfg.d_model, 0, [self.head.weight])
            check_embedded(self.head.weight.dtype, x)
        mask = time_mask(lengths, x.shape[1])[..., None]
        for block in self.blocks:
            x = block(x, mask, lengths)
        return self.head(x).float().log_softmax(dim=-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path, tokenizer: bytes | Tokenizer | None = None) -> Path:
        """Write config, kept widths and weights (and optionally tokenizer bytes) atomically.
        An earlier export at `path` is replaced; any other file (a training checkpoint), or
        a path ending in a separator (a folder: Path would drop the separator and write a
        file of the folder's name), is refused, as `orthoasr export --out` refuses it.
        `tokenizer`: its bytes or a `orthoasr.data.Tokenizer` (None: `self.tokenizer_bytes`)."""
        text = os.fspath(path)
        if isinstance(text, str) and text.endswith(("/", os.sep)):
            raise ValueError(f"path {text!r} ends in {text[-1]!r}, which names a folder: name "
                             f"the file, e.g. {os.path.join(text, 'sub.pt')!r}")
        tokenizer = self.tokenizer_bytes if tokenizer is None else tokenizer
        if isinstance(tokenizer, Tokenizer):
            tokenizer = tokenizer.to_bytes()
        elif isinstance(tokenizer, bytearray):
            tokenizer = bytes(tokenizer)
        elif tokenizer is not None and not isinstance(tokenizer, bytes):
            # a path would be saved as the tokenizer, an object pickled into a file that
            # load_subnet (weights_only) refuses
            raise TypeError(f"tokenizer must be a Tokenizer, its bytes or None, got "
                            f"{type(tokenizer).__name__}")
        path = Path(path)
        check_replaceable("path", path, _why_not_a_subnet)
        return save_checkpoint(path, {
            "kind": SUBNET_KIND, "config": self.cfg.to_dict(), "widths": self.widths,
            "budget": self.budget, "state_dict": self.state_dict(), "tokenizer": tokenizer,
            "bf16": self.trained_in_bf16})


class FourFramePadded(nn.Module):
    """`sub` on its features padded with zero frames to a multiple of 4, the embedded frames
    cut back to T // 4 before the blocks: the same outputs (a padded frame is masked, as one
    past a length is, and the frames kept are the unpadded subsampling's).
    What export_program traces: torch 2.11's shape rules for the frontend's pooling branch on
    the parity of a symbolic T (max_pool2d's output size, then the pooled view's strides),
    so a program traced straight from `sub` took only lengths of its example's parity."""

    def __init__(self, sub: CompactConformer):
        super().__init__()
        self.sub = sub

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        """features (B, T, F), lengths (B,) -> log_probs (B, T // 4, V), lengths // 4."""
        # lengths against T itself: `sub` checks them against the padded T
        check_features(self.sub.cfg, self.sub.frontend.proj.weight.dtype, features, lengths)
        frames = features.shape[1]
        padded = nn.functional.pad(features, (0, 0, 0, 4 * ((frames + 3) // 4) - frames))
        x, out_lengths = self.sub.embed(padded, lengths)
        # a gather, not a slice: a slice's strides again made export guard T's remainder
        kept = torch.arange(frames // 4, device=x.device)
        return self.sub.encode(x.index_select(1, kept), out_lengths), out_lengths


def export_program(sub: CompactConformer) -> torch.export.ExportedProgram:
    """`torch.export` program of `sub` for batches and lengths within PROGRAM_BATCH and
    PROGRAM_FRAMES (dynamic shapes; torch.export checks them when it runs)."""
    cfg = sub.cfg
    frames = max(4 * cfg.ref_frames, 2 * PROGRAM_FRAMES[0])
    # batch 2: an example size of 1 would be fixed in the program (torch specialises 0 and 1)
    weight = sub.frontend.proj.weight          # features come in the weights' dtype
    feats = torch.randn(2, frames, cfg.num_mel_bins, device=weight.device, dtype=weight.dtype)
    lengths = torch.tensor([frames, frames // 2], device=feats.device)
    batch_dim = torch.export.Dim.DYNAMIC(min=PROGRAM_BATCH[0], max=PROGRAM_BATCH[1])
    frames_dim = torch.export.Dim.DYNAMIC(min=PROGRAM_FRAMES[0], max=PROGRAM_FRAMES[1])
    return torch.export.export(FourFramePadded(sub), (feats, lengths),
                               dynamic_shapes=({0: batch_dim, 1: frames_dim}, {0: batch_dim}))


def load_subnet(path: str | Path, map_location="cpu") -> CompactConformer:
    """The subnet written by `sub.save(path)` (read with weights_only=True), in eval mode, on
    device `map_location` ('cpu', 'cuda', 'cuda:N', 'auto' or a torch.device). Each weight
    comes back in the dtype it was saved in: `sub.half().save(path)` loads as float16."""
    # checked first: torch.load's error for a missing GPU would read as a corrupt file
    map_location = resolve_device(map_location)
    state = load_checkpoint(path, map_location=map_location, kind=SUBNET_KIND)
    sub = CompactConformer(SupernetConfig.from_dict(state["config"]), state["widths"],
                           state["budget"])
    # assign: the saved tensors become the weights (copied into the fresh float32 ones,
    # float16 and bfloat16 weights came back float32)
    sub.load_state_dict(state["state_dict"], assign=True)
    sub.tokenizer_bytes = state["tokenizer"]
    sub.trained_in_bf16 = bool(state.get("bf16", False))    # exports before 2026-12-06: no key
    return sub.to(map_location).eval()


# ----------------------------------------------------------------------------- extraction

@torch.no_grad()
def extract_subnet(model: nn.Module, gates, head: int = -1) -> CompactConformer:
    """Compact dense copy of `model` (a ConformerSupernet) under unit `gates` (N,).

    Units whose gate is 0 are dropped, modules with no unit left removed; every other gate
    value is folded into the weights after its unit (FFN W2 columns, MHSA W_o columns, the
    conv module's last layer; with module granularity the module's last layer and bias).
    `head` picks the output layer (index of the budget). gates None: every unit on, as the
    supernet reads it. Returns the model in eval mode on the supernet's device, with the
    supernet's tokenizer_bytes (load_trained's), which `sub.save(path)` stores.
    """
    if not isinstance(model, ConformerSupernet):
        raise TypeError(f"model must be a ConformerSupernet, got {type(model).__name__}")
    cfg: SupernetConfig = model.cfg
    if gates is None:
        gates = torch.ones(model.num_units)
    try:
        gates = torch.as_tensor(gates).detach().reshape(-1).double().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"gates must be a tensor of {model.num_units} unit gates, got "
                        f"{type(gates).__name__}") from None
    if gates.numel() != model.num_units:
        raise ValueError(f"gates must have {model.num_units} entries (one per unit), "
                         f"got {gates.numel()}")
    if not bool(torch.isfinite(gates).all()):
        raise ValueError("gates contain NaN or inf")
    model.check_head(head)
    layout = block_layout(cfg)
    block_gates = gates.view(cfg.num_layers, -1)
    widths = [{kind: _kept_width(cfg, kind, block_gates[layer, start:end])
               for kind, start, end in layout} for layer in range(cfg.num_layers)]
    budget = cfg.budgets[head]
    sub = CompactConformer(cfg, widths, budget)
    sub.tokenizer_bytes = model.tokenizer_bytes
    param = next(model.parameters())
    sub.to(device=param.device, dtype=param.dtype)
    sub.frontend.load_state_dict(model.frontend.state_dict())
    sub.head.load_state_dict(model.heads[head].state_dict())
    for layer, (block, compact) in enumerate(zip(model.blocks, sub.blocks)):
        compact.norm.load_state_dict(block.norm.state_dict())
        for kind, start, end in layout:
            if kind in compact.modules_by_kind:
                unit_gates = block_gates[layer, start:end]
                copy = {"ffn1": _copy_ffn, "ffn2": _copy_ffn, "conv": _copy_conv,
                        "mhsa": _copy_mhsa}[kind]
                copy(cfg, block.modules_by_kind[kind], compact.modules_by_kind[kind],
                     unit_gates.to(param.device))
    return sub.eval()


def _kept_width(cfg: SupernetConfig, kind: str, unit_gates: torch.Tensor) -> int:
    """Units of the module that stay in the compact model (FFN chunks, heads, conv 0/1)."""
    on = int((unit_gates != 0).sum())
    if cfg.granularity == "module" and kind != "conv" and on:
        return cfg.ff_chunks if kind in ("ffn1", "ffn2") else cfg.num_heads
    return on


def widths_to_gates(cfg: SupernetConfig, widths: list[dict[str, int]]) -> torch.Tensor:
    """(num_units,) 0/1 gates of a subnet with these kept `widths` (a CompactConformer's):
    the first `width` units of each module on (granularity "module": its one unit, if the
    module is kept). The file keeps how many units of each module stay, not which, and the
    counts are all that `subnet_cost` reads."""
    layout = block_layout(cfg)
    if len(widths) != cfg.num_layers:
        raise ValueError(f"widths must have {cfg.num_layers} entries (one per layer), got "
                         f"{len(widths)}")
    gates = torch.zeros(cfg.num_layers, layout[-1][2])
    for layer, kept in enumerate(widths):
        for kind, start, end in layout:
            most = {"conv": 1, "mhsa": cfg.num_heads}.get(kind, cfg.ff_chunks)
            if not 0 <= kept[kind] <= most:
                raise ValueError(f"widths[{layer}][{kind!r}] must be in [0, {most}], got "
                                 f"{kept[kind]}")
            gates[layer, start:start + min(kept[kind], end - start)] = 1.0
    return gates.flatten()


def _copy_ffn(cfg, src, dst: DenseFeedForward, unit_gates):
    f = cfg.chunk_dim
    dst.norm.load_state_dict(src.norm.state_dict())
    if cfg.granularity == "module":
        g = unit_gates[0]
        channels = torch.arange(cfg.ff_dim, device=unit_gates.device)
        channel_gates, bias_gate = torch.ones(cfg.ff_dim, device=unit_gates.device) * g, g
    else:
        kept = (unit_gates != 0).nonzero().flatten()
        channels = (kept[:, None] * f + torch.arange(f, device=kept.device)).flatten()
        channel_gates, bias_gate = unit_gates[kept].repeat_interleave(f), 1.0
    w2 = src.linear2.weight[:, channels]
    dst.linear1.weight.copy_(src.linear1.weight[channels])
    dst.linear1.bias.copy_(src.linear1.bias[channels])
    dst.linear2.weight.copy_(w2 * channel_gates.to(w2.dtype))
    dst.linear2.bias.copy_(src.linear2.bias * bias_gate)


def _copy_conv(cfg, src, dst: DenseConvModule, unit_gates):
    g = unit_gates[0].to(src.pointwise2.weight.dtype)
    dst.norm.load_state_dict(src.norm.state_dict())
    dst.pointwise1.load_state_dict(src.pointwise1.state_dict())
    dst.depthwise.weight.copy_(src.depthwise_weight[:, None, :])
    dst.depthwise.bias.copy_(src.depthwise_bias)
    dst.norm_conv.load_state_dict(src.norm_conv.state_dict())
    dst.pointwise2.weight.copy_(src.pointwise2.weight * g)
    dst.pointwise2.bias.copy_(src.pointwise2.bias * g)


def _copy_mhsa(cfg, src, dst: DenseMHSA, unit_gates):
    H, Dh, D = cfg.num_heads, cfg.head_dim, cfg.d_model
    dst.norm.load_state_dict(src.norm.state_dict())
    if cfg.granularity == "module":
        kept = torch.arange(H, device=unit_gates.device)
        head_gates, bias_gate = unit_gates[0].expand(H), unit_gates[0]
    else:
        kept = (unit_gates != 0).nonzero().flatten()
        head_gates, bias_gate = unit_gates[kept], 1.0
    w_out = src.out_proj_weight.view(D, H, Dh)[:, kept]
    dst.in_proj.weight.copy_(src.in_proj_weight.view(H, 3 * Dh, D)[kept].reshape(-1, D))
    dst.in_proj.bias.copy_(src.in_proj_bias.view(H, 3 * Dh)[kept].reshape(-1))
    dst.out_proj.weight.copy_((w_out * head_gates.to(w_out.dtype)[None, :, None]).reshape(D, -1))
    dst.out_proj.bias.copy_(src.out_proj_bias * bias_gate)


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    # not at the top: the package imports this module, and cli imports the package
    from .cli import output_file
    parser.add_argument("--checkpoint", required=True, help="training checkpoint.pt")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--budget", type=float, help="export the subnet of this budget")
    which.add_argument("--subnet", type=int, help="export the subnet with this index")
    parser.add_argument("--out", required=True, type=output_file,
                        help="file for the compact subnet (an earlier export there is "
                             "replaced; any other file is left alone and refused)")
    parser.add_argument("--pt2", default=None, type=output_file,
                        help="also write a torch.export program (.pt2) here, for batches of "
                             f"{PROGRAM_BATCH[0]}-{PROGRAM_BATCH[1]} utterances of "
                             f"{PROGRAM_FRAMES[0]}-{PROGRAM_FRAMES[1]} feature frames")


def run(args: argparse.Namespace) -> None:
    from .trained import load_trained
    trained = load_trained(args.checkpoint, "cpu")
    pt2 = Path(args.pt2) if args.pt2 else None
    check_outputs(Path(args.checkpoint), Path(args.out), pt2)
    cfg = trained.model.cfg
    if args.budget is not None:
        index = budget_index(cfg.budgets, args.budget)
    else:
        index = args.subnet
        if not 0 <= index < len(cfg.budgets):
            raise ValueError(f"--subnet must be in [0, {len(cfg.budgets) - 1}], got {index}")
    given = f"--budget {args.budget}" if args.budget is not None else f"--subnet {index}"
    trained.check_trained(index, given, args.checkpoint)
    gates = trained.subnet_gates(index)
    sub = extract_subnet(trained.model, gates, head=index)
    sub.trained_in_bf16 = trained.run.bf16
    path = sub.save(args.out, tokenizer=trained.tokenizer_bytes)
    print(f"subnet {index} (budget {cfg.budgets[index]}): {sub.num_params():,} params -> {path}")
    if pt2 is not None:
        program = export_program(sub)
        write_atomically(pt2, lambda f: torch.export.save(program, f), "torch.export program")
        # the program holds no config: its features must be made as the model's were
        print(f"torch.export program -> {pt2} (features: orthoasr.data.LogMel(n_mels="
              f"{cfg.num_mel_bins}, normalize={cfg.feature_norm!r}, "
              f"remove_dc={cfg.remove_dc}))")


def check_outputs(checkpoint: Path, out: Path, pt2: Path | None) -> None:
    """Refuse outputs that would destroy a file: the training checkpoint (the same file, hard
    links included: checkpoint.pt is one to checkpoints/step-N.pt) or any file but an earlier
    export of the same sort, which is replaced (re-exporting is normal)."""
    if pt2 is not None and pt2.resolve() == out.resolve():
        raise ValueError(f"--out and --pt2 are the same file {out}; give each its own")
    for flag, path, why_not_an_export in (("--out", out, _why_not_a_subnet),
                                          ("--pt2", pt2, _why_not_a_program)):
        if path is not None and path.is_file() and os.path.samefile(path, checkpoint):
            raise ValueError(f"{flag} {path} is the same file as --checkpoint {checkpoint}: "
                             f"writing it would destroy the training checkpoint; choose "
                             f"another {flag}")
        if path is not None:
            check_replaceable(flag, path, why_not_an_export)


def check_replaceable(name: str, path: Path, why_not_an_export) -> None:
    """Refuse to write over a folder or a file that is not an earlier export of its sort
    (`why_not_an_export(path)`: None for one, else the reason); `name` names the argument."""
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; name a file in it")
    refuse_replacing(name, path, "export", why_not_an_export)


def _why_not_a_subnet(path: Path) -> str | None:
    """None for an exported subnet, else the loader's reason."""
    try:
        load_checkpoint(path, kind=SUBNET_KIND)
    except CheckpointError as err:
        return str(err)
    return None


def _why_not_a_program(path: Path) -> str | None:
    """None for a torch.export.save archive."""
    return None if is_exported_program(path) else "not a torch.export program"


__all__ = ["extract_subnet", "load_subnet", "export_program", "check_outputs",
           "widths_to_gates", "CompactConformer", "PROGRAM_BATCH", "PROGRAM_FRAMES",
           "add_arguments", "run"]
