"""kernels/layer_norm.py: LayerNorm over valid frames, forward and backward, against
F.layer_norm (interpreter on the CPU), with padding and a dead module."""

import pytest
import torch

from orthoasr.kernels.gated_matmul import valid_rows
from orthoasr.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd, layer_norm_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, T, D = 3, 9, 40                       # D not a power of two: a masked tail of channels


def _case():
    torch.manual_seed(0)
    lengths = torch.tensor([9, 2, 1], device=DEV)
    x = 2.0 + torch.randn(B * T, D, device=DEV)
    weight = 1 + 0.2 * torch.randn(D, device=DEV)
    bias = 0.2 * torch.randn(D, device=DEV)
    return lengths, x, weight, bias


def test_forward_and_backward_match_reference_on_valid_frames():
    lengths, x, weight, bias = _case()
    y, mean, rstd = layer_norm_fwd(x, weight, bias, lengths, T)
    rows = valid_rows(lengths, T)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, weight, bias))
    ref = layer_norm_reference(xr, wr, br)
    torch.testing.assert_close(y[rows], ref[rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean[rows], x[rows].mean(1), atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(x)
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, lengths, T)
    ref_grads = torch.autograd.grad(ref, [xr, wr, br], torch.where(rows[:, None], dy, 0.0))
    torch.testing.assert_close(dx, ref_grads[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(dx[~rows], torch.zeros_like(dx[~rows]))       # padded frames: 0
    torch.testing.assert_close(dw, ref_grads[1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(db, ref_grads[2], atol=1e-4, rtol=1e-5)


def test_dead_module_does_nothing_forward_and_writes_zeros_backward():
    lengths, x, weight, bias = _case()
    off = torch.zeros(4, device=DEV)
    y, mean, rstd = layer_norm_fwd(x, weight, bias, lengths, T, off, skip_dead=True)
    dx, dw, db = layer_norm_bwd(torch.randn_like(x), x, weight, mean, rstd, lengths, T, off,
                                skip_dead=True)
    assert torch.equal(dx, torch.zeros_like(dx))
    assert torch.equal(dw, torch.zeros_like(dw)) and torch.equal(db, torch.zeros_like(db))
    live = torch.tensor([0.0, 0.3, 0.0, 0.0], device=DEV)       # one unit on: computed
    y, _, _ = layer_norm_fwd(x, weight, bias, lengths, T, live, skip_dead=True)
    rows = valid_rows(lengths, T)
    torch.testing.assert_close(y[rows], layer_norm_reference(x, weight, bias)[rows],
                               atol=1e-5, rtol=1e-5)


def test_masked_layer_norm_op_zeros_padded_frames_and_matches_fp64_gradients():
    from orthoasr.kernels.layer_norm import masked_layer_norm
    lengths, x, weight, bias = _case()
    x = x.view(B, T, D)
    x[1, 5] = float("nan")                          # padded frames are never read
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    y = masked_layer_norm(*leaves[:1], lengths, *leaves[1:])
    valid = valid_rows(lengths, T).view(B, T)
    assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().nan_to_num().requires_grad_() for t in (x, weight, bias)]
    ref = torch.where(valid[..., None], layer_norm_reference(*ref_leaves), 0.0)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    assert torch.equal(grads[0][~valid], torch.zeros_like(grads[0][~valid]))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("config", [None, dict(LOAD_STAGES=1)])
def test_backward_over_several_blocks_per_program_ignores_padded_rows(config):
    """More row blocks than programs (each program walks several, with the next blocks' x
    and dy loaded ahead, padded rows included): NaN at padded rows of x and dy changes
    nothing. Also with one load stage (no loads ahead)."""
    torch.manual_seed(0)
    T_long = 50
    lengths = torch.tensor([50, 23, 0, 37], device=DEV)
    x = 1.0 + torch.randn(4 * T_long, D, device=DEV)
    weight, bias = 1 + 0.2 * torch.randn(D, device=DEV), 0.2 * torch.randn(D, device=DEV)
    dy = torch.randn_like(x)
    rows = valid_rows(lengths, T_long)
    x[~rows], dy[~rows] = float("nan"), float("nan")
    _, mean, rstd = layer_norm_fwd(x, weight, bias, lengths, T_long)
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, lengths, T_long, config=config)
    xr, wr, br = (t.clone().nan_to_num().requires_grad_() for t in (x, weight, bias))
    ref = layer_norm_reference(xr, wr, br)
    ref_grads = torch.autograd.grad(ref, [xr, wr, br],
                                    torch.where(rows[:, None], dy.nan_to_num(), 0.0))
    torch.testing.assert_close(dx, torch.where(rows[:, None], ref_grads[0], 0.0),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw, ref_grads[1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(db, ref_grads[2], atol=1e-4, rtol=1e-5)


def test_ones_column_follows_the_normalised_rows():
    """ones_column: y is ONES_PAD columns wider, column D holds 1 at every row (padded ones
    too: the dense products read them) and the rest 0; y[:, :D] is the plain zero-padded
    output. Without zero_padded (rows left unwritten) it is refused."""
    from orthoasr.kernels.layer_norm import ONES_PAD
    lengths, x, weight, bias = _case()
    plain = layer_norm_fwd(x, weight, bias, lengths, T, zero_padded=True)
    wide = layer_norm_fwd(x, weight, bias, lengths, T, zero_padded=True, ones_column=True)
    assert wide[0].shape == (B * T, D + ONES_PAD)
    assert torch.equal(wide[0][:, :D], plain[0])
    expected = torch.zeros(B * T, ONES_PAD, device=DEV)
    expected[:, 0] = 1.0
    assert torch.equal(wide[0][:, D:], expected)
    rows = valid_rows(lengths, T)
    for a, b in zip(wide[1:], plain[1:]):
        assert torch.equal(a[rows], b[rows])
    with pytest.raises(ValueError, match="zero_padded"):
        layer_norm_fwd(x, weight, bias, lengths, T, ones_column=True)


def test_registered_ops_pass_opcheck():
    """The ops torch.compile sees: schema, fake tensors, and no output aliasing another
    (dweight and dbias carved from one buffer broke torch.compile's backward on the GPU,
    2026-12-01)."""
    from orthoasr.kernels.layer_norm import masked_layer_norm_bwd, masked_layer_norm_fwd
    lengths, x, weight, bias = _case()
    x = x.view(B, T, D)
    torch.library.opcheck(masked_layer_norm_fwd, (x, lengths, weight, bias, x.dtype, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))
    _y, mean, rstd = masked_layer_norm_fwd(x, lengths, weight, bias, x.dtype, 1e-5)
    torch.library.opcheck(masked_layer_norm_bwd,
                          (torch.randn_like(x), x, lengths, weight, mean, rstd),
                          test_utils=("test_schema", "test_faketensor"))
