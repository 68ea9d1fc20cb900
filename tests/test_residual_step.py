"""The Conformer block's residual steps, x + s * dropout(y, p), each taken by the LayerNorm
after it (kernels/layer_norm.py, kernels/residual_step.py): a block on the Triton backend
against the fp64 composition of its modules under the masks the kernels draw, in training
and eval; the encoder's seeds; sm_90 compiles; and on the GPU the bf16 error ratio and
CUDA-graph replays (the op's own tests: tests/test_layer_norm.py)."""

import copy

import pytest
import torch
from error_ratio import assert_error_ratio
from sm90 import assert_compiles_for_sm90

import orthoasr.model as model_module
from orthoasr.backend import set_backend, set_kernel_masks
from orthoasr.config import SupernetConfig
from orthoasr.kernels.layer_norm import residual_layer_norm
from orthoasr.kernels.residual_step import keep_mask, residual_step_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _small_model_case(num_layers: int, d_model: int = 36):
    """(cfg, x, lengths): a small model with dropout 0.25 (d_model 36: not a multiple of 8,
    so the mask's groups of 8 straddle no row) and a ragged batch of two."""
    cfg = SupernetConfig(num_layers=num_layers, d_model=d_model, num_heads=2, ff_dim=64,
                         conv_kernel=5, num_mel_bins=80, vocab_size=11,
                         frontend_channels=(4, 8), budgets=(1.0,), dropout=0.25, ref_frames=10)
    return cfg, torch.randn(2, 9, d_model, device=DEV), torch.tensor([9, 5], device=DEV)


def _composed_reference(block, x, lengths, gates, seeds, p):
    """The block as its definition composes it, in fp64 on the torch backend: each module
    without dropout, then x + s * y * keep / (1 - p) with the mask the kernels draw from that
    module's seed, then the final norm."""
    set_backend("torch")
    try:
        for index, (kind, start, end) in enumerate(block.layout):
            module = block.modules_by_kind[kind]
            y = module(x, lengths, None if gates is None else gates[start:end], dropout=False)
            keep = keep_mask(seeds[index:index + 1], x.shape, p)
            x = residual_step_reference(x, y, model_module.HALF_STEP[kind], p, keep)
        return block.norm(x, lengths)
    finally:
        set_backend("auto")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("soft_gates", [False, True])
def test_block_matches_its_fp64_composition_under_the_kernels_masks(training, soft_gates):
    """A block on the Triton backend (each residual step in the next norm's kernels) equals
    its modules composed in fp64 with the kernels' dropout masks (training) or none (eval):
    the output and the gradients of the input, every parameter and the gates."""
    torch.manual_seed(0)
    cfg, x, lengths = _small_model_case(1)
    block = model_module.ConformerBlock(cfg).to(DEV).train(training)
    ref_block = copy.deepcopy(block).double()
    seeds = torch.arange(40, 44, device=DEV)
    units = max(end for _, _, end in block.layout)
    gates = torch.rand(units, device=DEV) if soft_gates else None
    ours = [t.clone().requires_grad_() for t in (x, gates) if t is not None]
    refs = [t.detach().double().requires_grad_() for t in ours]
    set_backend("triton")
    try:
        out = block(ours[0], lengths, ours[1] if soft_gates else None,
                    seeds=seeds if training else None)
    finally:
        set_backend("auto")
    ref = _composed_reference(ref_block, refs[0], lengths, refs[1] if soft_gates else None,
                              seeds, cfg.dropout if training else 0.0)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    g = torch.randn_like(out)
    names = ["x", "gates"][:len(ours)] + [name for name, _ in block.named_parameters()]
    grads = torch.autograd.grad(out, ours + list(block.parameters()), g)
    ref_grads = torch.autograd.grad(ref, refs + list(ref_block.parameters()), g.double())
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4, msg=name)


def test_a_block_called_alone_in_training_draws_its_own_seeds():
    """Without seeds from the encoder, a training block on the Triton backend draws its own:
    two calls drop different elements, the same generator state gives the same output."""
    cfg, x, lengths = _small_model_case(1)
    block = model_module.ConformerBlock(cfg).to(DEV).train()
    set_backend("triton")
    try:
        torch.manual_seed(5)
        first = block(x, lengths)
        second = block(x, lengths)
        torch.manual_seed(5)
        again = block(x, lengths)
    finally:
        set_backend("auto")
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert torch.isfinite(first).all() and (first[1, 5:] == 0).all()


def test_encoder_draws_every_seed_in_one_launch_and_none_in_eval(monkeypatch):
    """Training on the Triton backend, one encoder pass draws all its modules' dropout seeds
    at once and matches its blocks composed in fp64 under those seeds' masks (so each step
    used its own module's slice); in eval, or without a dropout, nothing is drawn (the
    generator's later draws stay where they were)."""
    torch.manual_seed(0)
    cfg, x, lengths = _small_model_case(2)
    model = model_module.ConformerSupernet(cfg).to(DEV)
    draws = []

    def drawn(device, n=1):
        draws.append(torch.arange(100, 100 + n, device=device))
        return draws[-1]
    monkeypatch.setattr(model_module, "draw_seed", drawn)
    set_backend("triton")
    try:
        out = model.train().run_blocks(x, lengths)
        model.eval().run_blocks(x, lengths)
        cfg.dropout = 0.0
        model_module.ConformerSupernet(cfg).to(DEV).train().run_blocks(x, lengths)
    finally:
        set_backend("auto")
    modules = len(cfg.module_order)
    assert [d.numel() for d in draws] == [cfg.num_layers * modules]
    ref = x.double()
    for layer, block in enumerate(model.double().blocks):
        ref = _composed_reference(block.train(), ref, lengths, None,
                                  draws[0][layer * modules:(layer + 1) * modules], 0.25)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)


def test_torch_backend_draws_the_kernels_masks_when_asked():
    """Under set_kernel_masks(True) a training encoder on the torch backend drops what the
    Triton backend drops and draws from the generator alike: from the same generator state,
    the same output, input gradient and next draw. Without it, other masks."""
    torch.manual_seed(0)
    cfg, x, lengths = _small_model_case(2)
    model = model_module.ConformerSupernet(cfg).to(DEV).train()
    g = torch.randn_like(x)

    def run(backend):
        set_backend(backend)
        try:
            torch.manual_seed(9)
            leaf = x.clone().requires_grad_()
            out = model.run_blocks(leaf, lengths)
            (grad,) = torch.autograd.grad(out, leaf, g)
            return out.detach(), grad, torch.rand(4, device=DEV)
        finally:
            set_backend("auto")

    kernels = run("triton")
    set_kernel_masks(True)
    try:
        shared = run("torch")
    finally:
        set_kernel_masks(False)
    plain = run("torch")
    for name, got, want in zip(("output", "input gradient"), shared, kernels):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5, msg=name)
    assert torch.equal(shared[2], kernels[2]), "the generator was drawn from differently"
    assert (plain[0] - kernels[0]).abs().max() > 1e-2, "torch's own masks gave the same output"
    with pytest.raises(TypeError, match="on must be a bool"):
        set_kernel_masks(1)


def test_encoder_blocks_hand_on_their_norms_twins(twin_gradients):
    """run_blocks on the Triton backend: each block but the last ends in a norm whose output
    and its twin feed the next block's first module and its residual stream. The output and
    the gradients of x and of every parameter equal the same blocks in fp64 on the torch
    backend, and each such norm's backward kernel got both gradients itself."""
    torch.manual_seed(0)
    cfg, x, lengths = _small_model_case(3)
    model = model_module.ConformerSupernet(cfg).to(DEV).eval()
    ref_model = copy.deepcopy(model).double()
    ours, ref_x = x.clone().requires_grad_(), x.double().requires_grad_()
    set_backend("triton")
    try:
        out = model.run_blocks(ours, lengths)
    finally:
        set_backend("torch")
    try:
        ref = ref_model.run_blocks(ref_x, lengths)
    finally:
        set_backend("auto")
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    g = torch.randn_like(out)
    names = ["x"] + [name for name, _ in model.blocks.named_parameters()]
    grads = torch.autograd.grad(out, [ours, *model.blocks.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [ref_x, *ref_model.blocks.parameters()], g.double())
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4, msg=name)
    assert sum(twin_gradients) == cfg.num_layers - 1      # one a boundary between blocks


SM90_COMPILE = """
from orthoasr.kernels import layer_norm as ln
step = dict(res_ptr="*bf16", xnew_ptr="*bf16", seed_ptr="*i64", gx_ptr="*bf16",
            dres_ptr="*bf16", w_ptr="*fp32", b_ptr="*fp32", mean_ptr="*fp32", rstd_ptr="*fp32",
            gate_ptr="*fp32", len_ptr="*i64", dw_ptr="*fp32", db_ptr="*fp32", eps="fp32",
            gain="fp32")
for kernel, backward in ((ln._layer_norm_fwd_kernel, False), (ln._layer_norm_bwd_kernel, True)):
    blk = ln._blocks(384, backward, residual=True)
    warps = blk.pop("num_warps")
    fused = dict(RESIDUAL=True, DROPOUT=True, NUM_GATES=4, GATES_P2=4, SKIP_DEAD=False)
    if backward:      # a block's final norm: its twin's gradient added too
        fused.update(X_GRAD=True, DY_TWIN=True)
    else:
        fused.update(ZERO_PADDED=True, ONES_PAD=0)
    compile_sm90(kernel, dict(blk, **fused), step, warps)
"""


def test_kernels_compile_for_sm90():
    """Both LayerNorm kernels with the residual step and its dropout, at the launchers'
    blocks for D=384 (tests/sm90.py)."""
    assert_compiles_for_sm90(SM90_COMPILE)


# ----------------------------------------------------------------------------- GPU

def _run(fn, x, y, g_new, g_xn):
    """(x_new, xn, dx, dy) of fn(x, y) -> (x_new, xn) under the output gradients."""
    x, y = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    x_new, xn = fn(x, y)
    dx, dy = torch.autograd.grad([x_new, xn], (x, y), [g_new, g_xn])
    return x_new.detach(), xn.detach(), dx, dy


@pytest.mark.gpu
def test_gpu_bf16_error_ratio_under_the_kernels_mask():
    """bf16 stream and module output at a block's activation size: against an fp64
    reference under the same mask, at most ~2x the error of torch's bf16 chain (dropout,
    add, LayerNorm)."""
    torch.manual_seed(0)
    x = torch.randn(8, 250, 384, device="cuda", dtype=torch.bfloat16)
    y, g_new, g_xn = (torch.randn_like(x) for _ in range(3))
    lengths = torch.full((8,), 250, device="cuda")
    w, b = 1 + 0.1 * torch.randn(384, device="cuda"), 0.1 * torch.randn(384, device="cuda")
    seed, p, scale = torch.tensor([99], device="cuda"), 0.1, 0.5
    keep = keep_mask(seed, x.shape, p)
    ours = _run(lambda a, c: residual_layer_norm(a, c, seed, scale, p, lengths, w, b), x, y,
                g_new, g_xn)

    def torch_chain(a, c):
        new = torch.add(a, torch.where(keep, c / (1 - p), 0.0), alpha=scale)
        return new, torch.nn.functional.layer_norm(new, (384,), w.to(a.dtype), b.to(a.dtype))
    torch_bf16 = _run(torch_chain, x, y, g_new, g_xn)
    reference = [t.double() for t in _run(torch_chain, x.double(), y.double(), g_new.double(),
                                          g_xn.double())]
    assert_error_ratio(ours, torch_bf16, reference)


@pytest.mark.gpu
def test_gpu_cuda_graph_redraws_the_mask_without_sync():
    """Replays of a captured step with a seed drawn inside it drop new elements each time,
    without a host sync."""
    from orthoasr.graphs import call_without_sync, capture_graph
    from orthoasr.kernels.residual_step import draw_seed
    x = torch.zeros(64, 8, 384, device="cuda")
    y = torch.ones(64, 8, 384, device="cuda", requires_grad=True)
    lengths = torch.full((64,), 8, device="cuda")
    w, b = torch.ones(384, device="cuda"), torch.zeros(384, device="cuda")

    def step():
        x_new, xn = residual_layer_norm(x, y, draw_seed(x.device), 1.0, 0.5, lengths, w, b)
        (dy,) = torch.autograd.grad([x_new, xn], y, [torch.ones_like(x_new),
                                                     torch.zeros_like(xn)])
        return x_new, dy

    step()
    call_without_sync(step)
    graph, (out, dy) = capture_graph(step)
    graph.replay()
    first = out.clone()
    assert torch.equal(first != 0, dy != 0)          # the backward's mask is the forward's
    graph.replay()
    assert not torch.equal(first, out)
    assert abs((out != 0).float().mean().item() - 0.5) < 0.02


def test_a_seed_on_the_cpu_without_the_interpreter_is_named(monkeypatch):
    """The torch backend draws a seed's mask with a Triton kernel: on the CPU without
    TRITON_INTERPRET=1 that ended in Triton's "0 active drivers" error, naming nothing of
    the call. Now a ValueError naming the seed and the way out; seed None still runs."""
    import orthoasr.kernels.residual_step as residual_step
    from orthoasr.nn import GatedFeedForward
    set_backend("torch")
    monkeypatch.setattr(residual_step, "interpreting", lambda: False)
    module = GatedFeedForward(16, 32, chunks=2)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    lengths, seed = torch.tensor([5, 3]), torch.tensor([7])
    with pytest.raises(ValueError, match="seed draws the Triton kernels' dropout mask.*"
                                         "TRITON_INTERPRET=1.*seed None"):
        module(x, lengths, residual=(y, seed, 0.5, 0.1))
    module(x, lengths, residual=(y, None, 0.5, 0.1))
    module(x, lengths, residual=(y, seed, 0.5, 0.0))    # no dropout: no mask drawn


def test_kernel_masks_on_the_cpu_without_the_interpreter_are_named(monkeypatch):
    """`ORTHOASR_KERNEL_MASKS=1 orthoasr train` on a CPU without TRITON_INTERPRET=1 stopped
    at its first step with the residual step's "pass seed None for torch's own dropout",
    which a training run cannot do. Now the encoder names the switch and the way out;
    without the switch, or in eval, it runs."""
    import orthoasr.kernels.common as common
    import orthoasr.kernels.residual_step as residual_step
    set_backend("torch")
    for module in (common, residual_step):
        monkeypatch.setattr(module, "interpreting", lambda: False)
    cfg, x, lengths = _small_model_case(1)
    model = model_module.ConformerSupernet(cfg).train()
    set_kernel_masks(True)
    try:
        with pytest.raises(ValueError, match=r"set_kernel_masks\(True\) \(env "
                                             r"ORTHOASR_KERNEL_MASKS=1\).*TRITON_INTERPRET=1"):
            model.run_blocks(x.cpu(), lengths.cpu())
        model.eval().run_blocks(x.cpu(), lengths.cpu())       # no dropout: no masks drawn
        set_kernel_masks(False)
        model.train().run_blocks(x.cpu(), lengths.cpu())      # torch's own dropout
    finally:
        set_kernel_masks(False)
        set_backend("auto")
