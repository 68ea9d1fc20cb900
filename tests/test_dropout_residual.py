"""kernels/dropout_residual.py: x + scale * dropout(y, p) in one kernel each way, the mask
drawn from a seed and redrawn in the backward, against its reference given that mask
(interpreter on the CPU), and the Conformer block's use of it."""

import pytest
import torch
from error_ratio import assert_error_ratio
from sm90 import assert_compiles_for_sm90

import orthoasr.model as model_module
from orthoasr.backend import set_backend
from orthoasr.config import SupernetConfig
from orthoasr.kernels.dropout_residual import (
    dropout_keep_mask,
    dropout_residual_add,
    dropout_residual_add_reference,
    dropout_residual_bwd,
    dropout_residual_fwd,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _seed(value: int) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64, device=DEV)


def _run(fn, x, y, g):
    """(out, dx, dy) of fn(x, y) under the output gradient g."""
    x, y = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    out = fn(x, y)
    dx, dy = torch.autograd.grad(out, (x, y), g)
    return out.detach(), dx, dy


@pytest.mark.parametrize("x_dtype,y_dtype", [(torch.float32, torch.float32),
                                             (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_matches_reference_under_its_own_mask(x_dtype, y_dtype, p):
    """An awkward size (not a multiple of the block); the kernel's mask read back by
    dropout_keep_mask; output in result_type(x, y), y's gradient in y's dtype, x's = g."""
    x = torch.randn(3, 37, 19, device=DEV, dtype=x_dtype)
    y = torch.randn(3, 37, 19, device=DEV, dtype=y_dtype)
    g = torch.randn(3, 37, 19, device=DEV, dtype=torch.result_type(x, y))
    seed = _seed(1234)
    keep = dropout_keep_mask(seed, x.shape, p, DEV)
    ours = _run(lambda a, b: dropout_residual_add(a, b, 0.5, p, seed), x, y, g)
    ref = _run(lambda a, b: dropout_residual_add_reference(a, b, 0.5, p, keep), x, y, g)
    assert [t.dtype for t in ours] == [torch.result_type(x, y), x_dtype, y_dtype]
    for a, b in zip(ours, ref, strict=True):   # bf16: the interpreter's stores may truncate
        tol = 1e-2 if a.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(a, b, rtol=tol, atol=1e-6)
    assert torch.equal(ours[1], g.to(x_dtype))
    if p == 0:
        assert keep.all()


def test_mask_rate_and_seeds():
    """A fraction ~p dropped; one seed gives one mask (forward and backward agree), another
    seed another mask; seed=None draws from torch's generator."""
    shape, p = (200, 500), 0.3
    keep = dropout_keep_mask(_seed(7), shape, p, DEV)
    assert abs(1 - keep.float().mean().item() - p) < 0.01
    assert torch.equal(keep, dropout_keep_mask(_seed(7), shape, p, DEV))
    assert (keep != dropout_keep_mask(_seed(8), shape, p, DEV)).float().mean() > 0.3
    x, y = torch.zeros(shape, device=DEV), torch.ones(shape, device=DEV)
    torch.manual_seed(0)
    first = dropout_residual_add(x, y, 1.0, p)
    torch.manual_seed(0)
    assert torch.equal(first, dropout_residual_add(x, y, 1.0, p))
    assert not torch.equal(first, dropout_residual_add(x, y, 1.0, p))


def test_bad_input():
    x = torch.zeros(2, 3, device=DEV)
    with pytest.raises(ValueError, match="one shape"):
        dropout_residual_add(x, torch.zeros(3, 2, device=DEV), 1.0, 0.1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1.0"):
        dropout_residual_add(x, x, 1.0, 1.0)
    with pytest.raises(TypeError, match="float64"):
        dropout_residual_add(x.double(), x.double(), 1.0, 0.1)
    with pytest.raises(ValueError, match="seed must be"):
        dropout_residual_add(x, x, 1.0, 0.1, torch.tensor([1.0], device=DEV))


def test_registered_ops_pass_opcheck():
    x = torch.randn(4, 9, device=DEV, requires_grad=True)
    y = torch.randn(4, 9, device=DEV, requires_grad=True)
    torch.library.opcheck(dropout_residual_fwd, (x, y, _seed(3), 0.5, 0.2),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))
    torch.library.opcheck(dropout_residual_bwd, (x.detach(), _seed(3), 0.5, 0.2, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))


def _small_model_case(num_layers: int):
    """(cfg, x, lengths): a small model with dropout 0.25 and a ragged batch of two."""
    cfg = SupernetConfig(num_layers=num_layers, d_model=32, num_heads=2, ff_dim=64,
                         conv_kernel=5, num_mel_bins=80, vocab_size=11,
                         frontend_channels=(4, 8), budgets=(1.0,), dropout=0.25, ref_frames=10)
    return cfg, torch.randn(2, 9, 32, device=DEV), torch.tensor([9, 5], device=DEV)


def test_block_fuses_dropout_in_training_on_the_triton_backend(monkeypatch):
    """Training on the Triton backend: each module's dropout and residual add are one call of
    the op at the module's rate and half step, on the module's output without a dropout of
    its own (no zeros in a full-length sequence); eval mode and the torch backend never call
    it."""
    torch.manual_seed(0)
    cfg, x, lengths = _small_model_case(1)
    block = model_module.ConformerBlock(cfg).to(DEV)
    calls = []

    def recorded(x, y, scale, p, seed=None):
        calls.append((scale, p, int((y[0] == 0).sum())))
        return dropout_residual_add(x, y, scale, p, seed)
    monkeypatch.setattr(model_module, "dropout_residual_add", recorded)
    set_backend("triton")
    try:
        out = block.train()(x, lengths)
        assert calls == [(model_module.HALF_STEP[kind], 0.25, 0) for kind in cfg.module_order]
        assert torch.isfinite(out).all() and (out[1, 5:] == 0).all()
        block.eval()(x, lengths)
        set_backend("torch")
        block.train()(x, lengths)
        assert len(calls) == len(cfg.module_order)
    finally:
        set_backend("auto")


def test_encoder_draws_every_dropout_seed_in_one_launch(monkeypatch):
    """Training on the Triton backend, one encoder pass draws all its modules' dropout seeds
    at once, and each module's fused dropout gets its own one-element slice of that draw, in
    layout order; in eval, or without a dropout, nothing is drawn (the generator's later
    draws stay where they were)."""
    torch.manual_seed(0)
    cfg, x, lengths = _small_model_case(2)
    model = model_module.ConformerSupernet(cfg).to(DEV)
    draws, seeds = [], []

    def drawn(device, n=1):
        draws.append(torch.arange(100, 100 + n, device=device))
        return draws[-1]

    def recorded(x, y, scale, p, seed=None):
        seeds.append(seed)
        return dropout_residual_add(x, y, scale, p, seed)
    monkeypatch.setattr(model_module, "draw_seed", drawn)
    monkeypatch.setattr(model_module, "dropout_residual_add", recorded)
    set_backend("triton")
    try:
        model.train().run_blocks(x, lengths)
        modules = cfg.num_layers * len(cfg.module_order)
        assert [d.numel() for d in draws] == [modules]
        assert [int(s) for s in seeds] == list(range(100, 100 + modules))
        assert all(s.shape == (1,) and s.data_ptr() == draws[0][i].data_ptr()
                   for i, s in enumerate(seeds))
        model.eval().run_blocks(x, lengths)
        cfg.dropout = 0.0
        model_module.ConformerSupernet(cfg).to(DEV).train().run_blocks(x, lengths)
        assert len(draws) == 1 and len(seeds) == modules
    finally:
        set_backend("auto")


SM90_COMPILE = """
from orthoasr.kernels import dropout_residual as dr
blk = dr._block()
warps = blk.pop("num_warps")
types = {"seed_ptr": "*i64", "gain": "fp32"}
for out in ("*bf16", "*fp32"):
    compile_sm90(dr._dropout_residual_fwd_kernel, blk, dict(types, out_ptr=out), warps)
    compile_sm90(dr._dropout_residual_bwd_kernel, blk, dict(types, dy_ptr=out), warps)
"""


def test_kernels_compile_for_sm90():
    """Both kernels, bf16 and fp32 outputs, at the launcher's block (tests/sm90.py)."""
    assert_compiles_for_sm90(SM90_COMPILE)


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_gpu_bf16_error_ratio_under_the_kernels_mask():
    """bf16 x and y at a block's activation size: against an fp64 reference under the same
    mask, at most ~2x the error of torch's bf16 chain (dropout, then add)."""
    x = torch.randn(8, 250, 384, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    g = torch.randn_like(x)
    seed, p, scale = _seed(99), 0.1, 0.5
    keep = dropout_keep_mask(seed, x.shape, p, "cuda")
    ours = _run(lambda a, b: dropout_residual_add(a, b, scale, p, seed), x, y, g)

    def torch_chain(a, b):
        return torch.add(a, torch.where(keep, b / (1 - p), 0.0), alpha=scale)
    torch_bf16 = _run(torch_chain, x, y, g)
    reference = [t.double() for t in _run(torch_chain, x.double(), y.double(), g.double())]
    assert_error_ratio(ours, torch_bf16, reference)


@pytest.mark.gpu
def test_gpu_cuda_graph_redraws_the_mask_without_sync():
    from orthoasr.graphs import call_without_sync, capture_graph
    x = torch.zeros(64, 384, device="cuda")
    y = torch.ones(64, 384, device="cuda", requires_grad=True)

    def step():
        out = dropout_residual_add(x, y, 1.0, 0.5)
        (dy,) = torch.autograd.grad(out, y, torch.ones_like(out))
        return out, dy

    step()
    call_without_sync(step)
    graph, (out, dy) = capture_graph(step)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)                   # a new mask each replay
    assert torch.equal(dy, out)                          # the backward drew the same one
    assert abs((out == 0).float().mean().item() - 0.5) < 0.05
