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


def test_dead_module_backward_passes_the_stream_gradient_through_its_residual_step():
    """A dead module's norm with the residual step fused: dx is the stream's gradient alone
    and y's gradient that, scaled and dropped out where the forward dropped; nothing else
    is read (NaN statistics and input)."""
    from orthoasr.kernels.residual_step import Residual, keep_mask
    lengths, x, weight, _ = _case()
    nan = torch.full((B * T,), float("nan"), device=DEV)
    x_grad = torch.randn_like(x)
    y_grad = torch.full_like(x, float("nan"))
    seed, p, scale = torch.tensor([77], device=DEV), 0.3, 0.5
    res = Residual(seed, scale, p, x_grad=x_grad, y_grad=y_grad)
    dx, dw, db = layer_norm_bwd(torch.randn_like(x), torch.full_like(x, float("nan")), weight,
                                nan, nan, lengths, T, torch.zeros(2, device=DEV),
                                skip_dead=True, residual=res)
    assert torch.equal(dx, x_grad) and not dw.any() and not db.any()
    kept = keep_mask(seed, x.shape, p)
    torch.testing.assert_close(y_grad, torch.where(kept, x_grad * scale / (1 - p), 0.0))


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
    _y, mean, rstd, _ = masked_layer_norm_fwd(x, lengths, weight, bias, x.dtype, 1e-5)
    torch.library.opcheck(masked_layer_norm_bwd,
                          (torch.randn_like(x), x, lengths, weight, mean, rstd),
                          test_utils=("test_schema", "test_faketensor"))
    seed = torch.tensor([5], device=DEV)
    step = (torch.randn_like(x), seed, 0.5, 0.25)
    torch.library.opcheck(masked_layer_norm_fwd, (x, lengths, weight, bias, x.dtype, 1e-5, *step),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(masked_layer_norm_bwd,
                          (torch.randn_like(x), x, lengths, weight, mean, rstd,
                           torch.randn_like(x), seed, 0.5, 0.25, x.dtype, torch.bfloat16),
                          test_utils=("test_schema", "test_faketensor"))


def _step_case(y_dtype=torch.float32):
    """(x, y, lengths, weight, bias): a residual stream x (B, T, D), a module output y that
    is 0 at padded frames, and a norm's parameters."""
    lengths, x, weight, bias = _case()
    x = x.view(B, T, D)
    y = torch.where(valid_rows(lengths, T).view(B, T, 1), torch.randn_like(x), 0.0)
    return x, y.to(y_dtype), lengths, weight, bias


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("use_stream", [True, False])
def test_residual_step_and_norm_match_fp64_references_under_its_mask(p, use_stream):
    """residual_layer_norm: x_new = x + 0.5 * dropout(y, p) at every frame and its masked
    LayerNorm, against the fp64 references under the mask the kernels draw (keep_mask);
    gradients of x, y, weight and bias from both outputs, or (use_stream=False, a block's
    final norm) from the normalised output only."""
    from orthoasr.kernels.layer_norm import residual_layer_norm
    from orthoasr.kernels.residual_step import keep_mask, residual_step_reference
    x, y, lengths, weight, bias = _step_case()
    seed = torch.tensor([1234], device=DEV)
    keep = keep_mask(seed, (B, T, D), p)
    valid = valid_rows(lengths, T).view(B, T)
    leaves = [t.clone().requires_grad_() for t in (x, y, weight, bias)]
    x_new, xn = residual_layer_norm(leaves[0], leaves[1], seed, 0.5, p, lengths, *leaves[2:])
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, y, weight, bias)]
    ref_new = residual_step_reference(*ref_leaves[:2], 0.5, p, keep)
    ref_xn = torch.where(valid[..., None], layer_norm_reference(ref_new, *ref_leaves[2:]), 0.0)
    torch.testing.assert_close(x_new.double(), ref_new, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(xn.double(), ref_xn, atol=1e-5, rtol=1e-5)
    g_new, g_xn = torch.randn_like(x_new), torch.randn_like(xn)
    outs, refs, grads = [xn], [ref_xn], [g_xn]
    if use_stream:
        outs, refs, grads = [x_new, xn], [ref_new, ref_xn], [g_new, g_xn]
    ours = torch.autograd.grad(outs, leaves, grads)
    expected = torch.autograd.grad(refs, ref_leaves, [g.double() for g in grads])
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    assert torch.equal(ours[1][~keep], torch.zeros_like(ours[1][~keep]))
    if p == 0:
        assert keep.all()


def test_residual_step_keeps_dtypes_and_redraws_its_mask_by_seed():
    """x_new in result_type(x, y), y's gradient in y's dtype and x's in x's; a fraction ~p
    dropped, one seed one mask, another seed another; bad steps refused by name."""
    from orthoasr.kernels.layer_norm import residual_layer_norm
    from orthoasr.kernels.residual_step import keep_mask
    x, y, lengths, weight, bias = _step_case(torch.bfloat16)
    seed = torch.tensor([7], device=DEV)
    leaves = [t.clone().requires_grad_() for t in (x, y)]
    x_new, xn = residual_layer_norm(*leaves, seed, 1.0, 0.3, lengths, weight, bias)
    dx, dy = torch.autograd.grad([x_new, xn], leaves, [torch.ones_like(x_new),
                                                       torch.ones_like(xn)])
    assert (x_new.dtype, xn.dtype, dx.dtype, dy.dtype) == (torch.float32, torch.float32,
                                                           torch.float32, torch.bfloat16)
    keep = keep_mask(seed, (3000, 64), 0.3)
    assert abs(keep.float().mean().item() - 0.7) < 0.02
    assert torch.equal(keep, keep_mask(seed, (3000, 64), 0.3))
    assert (keep != keep_mask(seed + 1, (3000, 64), 0.3)).float().mean() > 0.3
    with pytest.raises(ValueError, match="p must be in"):
        residual_layer_norm(x, y, seed, 1.0, 1.0, lengths, weight, bias)
    with pytest.raises(ValueError, match="seed must be"):
        residual_layer_norm(x, y, seed.float(), 1.0, 0.1, lengths, weight, bias)
    with pytest.raises(ValueError, match="shape"):
        residual_layer_norm(x, y[:, :2], seed, 1.0, 0.1, lengths, weight, bias)


@pytest.mark.parametrize("step", [False, True])
def test_twin_outputs_gradients_are_added_in_the_backward_kernel(twin_gradients, step):
    """masked_layer_norm / residual_layer_norm with twin=True: the output twice (the second
    a view of the first), each consumed on its own; the gradients of x, the step's y, weight
    and bias are those of the one output with both gradients summed (fp64 reference), and
    the backward kernel gets the twin's gradient itself (no separate add). With one of the
    two unused, the other's gradient alone."""
    import orthoasr.kernels.layer_norm as ln
    calls = twin_gradients
    x, y, lengths, weight, bias = _step_case()
    seed = torch.tensor([3], device=DEV)
    valid = valid_rows(lengths, T).view(B, T)

    def run(leaves, twin):
        if step:
            return ln.residual_layer_norm(*leaves[:2], seed, 0.5, 0.0, lengths, *leaves[2:],
                                          twin=twin)[1:]
        return ln.masked_layer_norm(leaves[0], lengths, *leaves[2:], twin=twin)

    leaves = [t.clone().requires_grad_() for t in (x, y, weight, bias)]
    out, twin = run(leaves, True)
    assert twin is not out and twin.data_ptr() == out.data_ptr() and torch.equal(out, twin)
    g1, g2 = torch.randn_like(out), torch.randn_like(out)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, y, weight, bias)]
    ref_in = ref_leaves[0] + 0.5 * ref_leaves[1] if step else ref_leaves[0]
    ref = torch.where(valid[..., None], layer_norm_reference(ref_in, *ref_leaves[2:]), 0.0)
    used = [0, 1, 2, 3] if step else [0, 2, 3]       # y is unread without a step
    for grads_out, total in (((g1, g2), g1 + g2), ((None, g2), g2), ((g1, None), g1)):
        calls.clear()
        pairs = [(o, g) for o, g in zip((out, twin), grads_out, strict=True) if g is not None]
        ours = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in used],
                                   [g for _, g in pairs], retain_graph=True)
        want = torch.autograd.grad(ref, [ref_leaves[i] for i in used], total.double(),
                                   retain_graph=True)
        for got, expected in zip(ours, want, strict=True):
            torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)
        assert calls == [len(pairs) == 2]


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_masked_layer_norm_module_writes_its_output_into_a_given_tensor(backend):
    """MaskedLayerNorm.forward_into (a dead block's output, written into the tensor its live
    branch writes): forward's values in every element of a poisoned tensor, padding too."""
    from orthoasr import set_backend
    from orthoasr.nn.norm import MaskedLayerNorm
    set_backend(backend)
    lengths, x, weight, bias = _case()
    norm = MaskedLayerNorm(D).to(DEV)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    x3 = x.view(B, T, D)
    out = torch.full_like(x3, float("nan"))
    norm.forward_into(x3, lengths, out)
    torch.testing.assert_close(out, norm(x3, lengths), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[1, 2:], torch.zeros_like(out[1, 2:]))


@pytest.mark.parametrize("step", [False, True])
@pytest.mark.parametrize("next_dtype", [None, torch.float16])
def test_final_norm_for_inference_chains_the_next_pre_norm(step, next_dtype,
                                                           nan_filled_memory):
    """final_norm_inference (a block's final norm without autograd): the output matches the
    fp64 reference, 0 at padded frames, without writing the step's sum; with next_norm, the
    second output is the next LayerNorm of the output as stored (in next_dtype), 0 at padded
    frames; fresh memory is NaN (every element must be written)."""
    from orthoasr.kernels.layer_norm import final_norm_inference
    x, y, lengths, weight, bias = _step_case()
    valid = valid_rows(lengths, T).view(B, T, 1)
    w2, b2 = 1 + 0.3 * torch.randn(D, device=DEV), 0.1 * torch.randn(D, device=DEV)
    residual = (y, None, 0.5, 0.0) if step else None
    with torch.no_grad():
        out = final_norm_inference(x, lengths, weight, bias, 1e-5, residual)
        pair = final_norm_inference(x, lengths, weight, bias, 1e-5, residual,
                                    next_norm=(w2, b2, 1e-3), next_dtype=next_dtype)
    stream = x.double() + 0.5 * y.double() if step else x.double()
    want = torch.where(valid, layer_norm_reference(stream, weight.double(), bias.double()), 0.0)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(pair[0], out)
    want2 = torch.where(valid, layer_norm_reference(out.double(), w2.double(), b2.double(),
                                                    1e-3), 0.0)
    assert pair[1].dtype == (next_dtype or out.dtype)
    tol = 1e-5 if next_dtype is None else 2e-3
    torch.testing.assert_close(pair[1].double(), want2, atol=tol, rtol=tol)
    assert torch.equal(pair[1][~valid[..., 0]], torch.zeros_like(pair[1][~valid[..., 0]]))


def test_layer_norm_fwd_refuses_a_next_norm_it_cannot_write():
    from orthoasr.kernels.layer_norm import NextNorm
    lengths, x, weight, bias = _case()
    with pytest.raises(ValueError, match="next_norm needs a contiguous"):
        layer_norm_fwd(x, weight, bias, lengths, T, zero_padded=True,
                       next_norm=NextNorm(weight, bias, 1e-5, torch.empty(B * T, D + 1,
                                                                         device=DEV)))
