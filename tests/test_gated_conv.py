"""GatedConvModule: Triton kernels (interpreter on CPU) vs the fp64 PyTorch reference."""

import pytest
import torch
from error_ratio import (
    assert_error_ratio,
    assert_grads_close,
    assert_handed_operands_are_used,
    assert_module_autocast_error_ratio,
)

from orthoasr.graphs import call_without_sync, capture_graph
from orthoasr.kernels import gated_wgrad as gw
from orthoasr.kernels.common import as_operands, valid_mask
from orthoasr.kernels.gated_conv import gated_conv, gated_conv_fwd, gated_conv_reference
from orthoasr.nn import GatedConvModule

D = 24
SHAPES = {  # name: (T, lengths, K)
    "B1_T1": (1, [1], 7),
    "T37_full_and_len1_K31": (37, [37, 1], 31),
    "B3_T20_ragged": (20, [20, 13, 7], 5),
}
GATES = {  # name: (gates, requires_grad)
    "none": (None, False),
    "soft": ([0.3], True),
    "hard_on": ([1.0], False),
    "off": ([0.0], False),
    "soft_exact_zero": ([0.0], True),
}


def make_params(K, dtype=torch.float32, d=D):
    def r(*shape, scale=0.2):
        return torch.randn(*shape, dtype=dtype) * scale
    return [r(d) + 1, r(d), r(2 * d, d, scale=d ** -0.5), r(2 * d), r(d, K, scale=K ** -0.5),
            r(d), r(d) + 1, r(d), r(d, d, scale=d ** -0.5), r(d)]


def run(fn, x, lengths, params, gates, dy):
    with_gates = gates is not None and gates.requires_grad
    inputs = [t.detach().clone().requires_grad_()
              for t in [x, *params] + ([gates] if with_gates else [])]
    y = fn(inputs[0], lengths, *inputs[1:1 + len(params)], inputs[-1] if with_gates else gates)
    return y, torch.autograd.grad(y, inputs, dy)


@pytest.mark.parametrize("gate_case", list(GATES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_fp64_reference(shape, gate_case):
    T, lens, K = SHAPES[shape]
    values, requires_grad = GATES[gate_case]
    lengths = torch.tensor(lens)
    x = torch.randn(len(lens), T, D)
    params = make_params(K)
    gates = None if values is None else torch.tensor(values).requires_grad_(requires_grad)
    dy = torch.randn(len(lens), T, D)
    y, grads = run(gated_conv, x, lengths, params, gates, dy)
    g64 = None if gates is None else gates.detach().double().requires_grad_(requires_grad)
    y64, grads64 = run(gated_conv_reference, x.double(), lengths, [p.double() for p in params],
                       g64, dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    assert len(grads) == len(grads64) == 11 + requires_grad
    for i, (g, g64_) in enumerate(zip(grads, grads64)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")
    if values == [0.0]:
        assert (y == 0).all() and all((g == 0).all() for g in grads[:11])


@pytest.mark.parametrize("gate_case", ["soft", "soft_exact_zero", "off"])
def test_ungated_batch_matches_two_reference_passes(gate_case):
    """ungated_batch=1: the first sequence as if gates were None, the others with the gate,
    outputs and every gradient (the gate's from the gated sequences only) as the fp64
    reference's two passes give them."""
    values, requires_grad = GATES[gate_case]
    lengths = torch.tensor([20, 13, 7])
    x = torch.randn(3, 20, D)
    params = make_params(5)
    gates = torch.tensor(values).requires_grad_(requires_grad)
    dy = torch.randn(3, 20, D)

    def ours(x, lengths, *rest):
        return gated_conv(x, lengths, *rest, ungated_batch=1)

    def reference(x, lengths, *rest):
        return gated_conv_reference(x, lengths, *rest, ungated_batch=1)

    y, grads = run(ours, x, lengths, params, gates, dy)
    g64 = gates.detach().double().requires_grad_(requires_grad)
    y64, grads64 = run(reference, x.double(), lengths, [p.double() for p in params], g64,
                       dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    for i, (g, g64_) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


def test_registered_op_with_ungated_batch():
    """The torch.compile path's op and its registered backward with ungated_batch."""
    x, lengths = torch.randn(2, 7, D, requires_grad=True), torch.tensor([7, 3])
    params = [p.requires_grad_() for p in make_params(5)]
    gates = torch.tensor([0.5], requires_grad=True)
    args = (x, lengths, *params, gates, False, True, params[2], params[8], 1)
    torch.library.opcheck(gated_conv_fwd, args, test_utils=(
        "test_schema", "test_faketensor", "test_autograd_registration"))
    y = gated_conv_fwd(*args)[0]
    y_ref = gated_conv_reference(x, lengths, *params, gates, ungated_batch=1)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert_grads_close(y, y_ref, [x, *params, gates])


def test_ungated_batch_needs_the_module_gate():
    x, lengths = torch.randn(2, 4, D), torch.tensor([4, 2])
    with pytest.raises(ValueError, match="ungated_batch=1 needs the module gate"):
        gated_conv(x, lengths, *make_params(5), None, ungated_batch=1)


@pytest.mark.parametrize("gate_case", ["none", "soft"])
def test_dense_products_read_only_written_rows(gate_case, monkeypatch, nan_filled_memory):
    """With nothing skipped, PW1's weight gradient and dz are products over every row
    (dense_wgrad, torch.mm), so every padded row of du and z must be written, as zeros
    (frames past a sequence's length in the GLU backward's tiles, and tiles wholly past
    it). Fresh memory is NaN here (nan_filled_memory), x and dy carry NaN
    and 1e4 at padded rows, and the gradients must still match the fp64 reference."""
    from orthoasr.kernels import gated_conv as module
    calls = []
    monkeypatch.setattr(module, "dense_wgrad",
                        lambda a, b: calls.append(1) or gw.dense_wgrad(a, b))
    values, requires_grad = GATES[gate_case]
    T, lengths = 40, torch.tensor([40, 13, 1])     # tiles of 16 frames wholly past 13 and 1
    x, dy = torch.randn(3, T, D), torch.randn(3, T, D)
    pad = ~valid_mask(lengths, T)
    x[pad], dy[pad] = 1e4, float("nan")
    params = make_params(7)
    gates = None if values is None else torch.tensor(values).requires_grad_(requires_grad)
    _, grads = run(gated_conv, x, lengths, params, gates, dy)
    assert calls, "the dense path was not taken"
    x0, dy0 = torch.where(pad[..., None], 0.0, x), torch.where(pad[..., None], 0.0, dy)
    g64 = None if gates is None else gates.detach().double().requires_grad_(requires_grad)
    _, grads64 = run(gated_conv_reference, x0.double(), lengths, [p.double() for p in params],
                     g64, dy0.double())
    for i, (g, g64_) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


def test_gpu_tiles_several_channel_blocks(monkeypatch):
    """The conv, transposed-conv, depthwise weight-gradient and norm-backward kernels with
    GPU-like tiles (the interpreter's own tiles hold every channel in one block): blocks of
    64 with a ragged last one, spans of 32 frames whose windows cross their edges, stepped 8
    frames at a time (lengths 75, 40, 1: not multiples of 8), weight-gradient spans of 30
    frames (not a multiple of the kernel's 4-frame step; three per sequence, the last
    partial) with async-copied loads, the norm backward two frames at a time over spans of
    32, a sequence of one frame."""
    from orthoasr.kernels import gated_conv as module
    tiles = dict(SPAN=32, BC=64, UNROLL=8, num_warps=2)
    monkeypatch.setattr(module, "_dw_blocks", lambda D: tiles)
    monkeypatch.setattr(module, "_glu_bwd_blocks", lambda D: dict(BT=8, BC=64, num_warps=2))
    monkeypatch.setattr(module, "_dw_grad_blocks",
                        lambda D: dict(SPAN=30, BC=64, num_warps=4, LOAD_STAGES=3))
    monkeypatch.setattr(module, "_norm_bwd_blocks",
                        lambda D: dict(SPAN=32, BT=2, BD=128, num_warps=1))
    torch.manual_seed(3)
    d, K, T, lengths = 100, 31, 75, torch.tensor([75, 40, 1])
    x = torch.randn(3, T, d, dtype=torch.float64)
    params = make_params(K, torch.float64, d)
    gates = torch.tensor([0.7], requires_grad=True)
    dy = torch.randn(3, T, d)
    y, grads = run(gated_conv, x.float(), lengths, [p.float() for p in params], gates, dy)
    y64, grads64 = run(gated_conv_reference, x, lengths, params, gates.double(), dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    for i, (g, g64) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


@pytest.mark.parametrize("K", [1, 3, 9, 31])
def test_dw_grad_kernel_edges(monkeypatch, K):
    """The depthwise weight-gradient kernel alone against fp64: taps not a multiple of its 4
    per thread (K 1, 3, 9, 31), spans of 6 frames (not a multiple of its 4-frame step) and
    a sequence shorter than one, a ragged last channel block, NaN in every padded row of
    dpre and v (the kernel must not read them), and a dead gate (exact zeros)."""
    from orthoasr.kernels import gated_conv as module
    monkeypatch.setattr(module, "_dw_grad_blocks",
                        lambda D: dict(SPAN=6, BC=16, num_warps=4, LOAD_STAGES=2))
    T, d, lengths = 13, 20, torch.tensor([13, 5, 1, 3])
    B = len(lengths)
    dpre, v = torch.randn(B, T, d), torch.randn(B, T, d)
    pad = ~valid_mask(lengths, T)
    dpre[pad], v[pad] = float("nan"), float("nan")
    gate = torch.tensor([0.5])
    dw = module.conv_dw_grad(dpre.view(-1, d), v.view(-1, d), lengths, T, K, gate, True, True)
    # v zero-padded by K//2 frames each side: frames k .. k+T-1 are v[t + k - K//2]
    v_pad = torch.nn.functional.pad(torch.nan_to_num(v.double()), (0, 0, K // 2, K // 2))
    dpre64 = torch.nan_to_num(dpre.double())
    ref = torch.stack([(dpre64 * v_pad[:, k:k + T]).sum((0, 1)) for k in range(K)], 1)
    torch.testing.assert_close(dw.double(), ref, atol=1e-5, rtol=1e-5)
    dead = module.conv_dw_grad(dpre.view(-1, d), v.view(-1, d), lengths, T, K, gate * 0,
                               True, True)
    assert (dead == 0).all()



def test_mid_forward_statistics_under_a_large_offset():
    """The conv forward's LayerNorm statistics over channel blocks of 8, 8 and 4, against
    fp64 when every conv output sits near 1000 with a spread of ~0.5: E[x^2] - mean^2 in
    fp32 loses the variance there (terms of ~1e6 for a variance of ~0.2); the deviations
    from the mean, summed in a second pass, do not."""
    from orthoasr.kernels import gated_conv as module
    torch.manual_seed(3)
    T, d, K, lengths = 12, 20, 5, torch.tensor([12, 7])
    M = len(lengths) * T
    v = torch.randn(M, d)
    dw_w, dw_b = torch.randn(d, K) * 0.2, torch.full((d,), 1000.0)
    ln_w, ln_b = torch.randn(d) + 1, torch.randn(d) * 0.2
    pre, r = torch.zeros_like(v), torch.zeros_like(v)
    module.conv_mid_fwd(v, dw_w, dw_b, ln_w, ln_b, pre, r, None, lengths, T, False,
                        config=dict(SPAN=4, BC=8))
    valid = valid_mask(lengths, T)
    v64 = torch.where(valid[..., None], v.double().view(-1, T, d), 0.0)
    w = torch.nn.functional.conv1d(v64.transpose(1, 2), dw_w.double()[:, None, :],
                                   dw_b.double(), padding=K // 2, groups=d).transpose(1, 2)
    ref = torch.nn.functional.silu(torch.nn.functional.layer_norm(
        w, (d,), ln_w.double(), ln_b.double(), module.LN_EPS))
    torch.testing.assert_close(r.view(-1, T, d)[valid].double(), ref[valid], atol=2e-3,
                               rtol=2e-3)

def _launch_option_outputs(K, device, dtype, configs):
    """The depthwise conv's forward (pre, r) and transposed conv (du) at the valid frames
    and its weight gradient, one list per (forward, transposed conv, weight gradient)
    launch configs, with NaN in every padded row (never read)."""
    from orthoasr.kernels import gated_conv as module
    torch.manual_seed(5)
    T, d, lengths = 20, 24, torch.tensor([20, 9, 1], device=device)
    M = len(lengths) * T
    v, dpre = (torch.randn(M, d, device=device).to(dtype) for _ in range(2))
    u = torch.randn(M, 2 * d, device=device).to(dtype)
    pad = ~valid_mask(lengths, T).reshape(-1)
    v[pad], dpre[pad] = float("nan"), float("nan")
    dw_w, dw_b, ln_w, ln_b = (torch.randn(*shape, device=device)
                              for shape in ((d, K), (d,), (d,), (d,)))
    gate = torch.tensor([0.5], device=device)
    outs = []
    for fwd, bwd, dw_grad in configs:
        pre, r = torch.zeros_like(v), torch.zeros_like(v)
        module.conv_mid_fwd(v, dw_w, dw_b, ln_w, ln_b, pre, r, gate, lengths, T, True,
                            config=fwd)
        du = module.conv_mid_bwd_conv(dpre, u, dw_w, gate, lengths, T, True, True, config=bwd)
        dw = module.conv_dw_grad(dpre, v, lengths, T, K, gate, True, True, config=dw_grad)
        outs.append([o[~pad].float() for o in (pre, r, du)] + [dw])
    return outs


# other tiles (channel blocks of 24 = 16 + 8: a partial block; one block wider than the
# channels, as the interpreter's defaults have; three full ones), and the weight gradient's
# frame loop with and without async copies (LOAD_STAGES). The two convs' spans: longer than
# the sequences, one frame, and spans that their loop steps (UNROLL) do not divide, so that
# steps past a span's end are masked; the NaN in the padded rows catch a span that reads
# past its sequence
LAUNCH_OPTIONS = [(dict(SPAN=32, UNROLL=8, BC=16), dict(SPAN=8, BC=16),
                   dict(SPAN=8, LOAD_STAGES=3)),
                  (dict(BC=32, SPAN=1, UNROLL=1), dict(SPAN=32, UNROLL=8), dict(LOAD_STAGES=1)),
                  (dict(BC=8, SPAN=6, UNROLL=4), dict(BC=32, SPAN=1, UNROLL=1),
                   dict(LOAD_STAGES=2)),
                  (dict(SPAN=5, BC=8, UNROLL=2), dict(SPAN=5, BC=8, UNROLL=2), {})]


@pytest.mark.parametrize("K", [3, 31])
def test_launch_options_give_the_same_values(K):
    """Other tiles and pipelined loops give what the defaults give: forward, transposed
    conv, weight gradient."""
    default, *others = _launch_option_outputs(K, "cpu", torch.float32,
                                              [({}, {}, {}), *LAUNCH_OPTIONS])
    for outs in others:
        for one, other in zip(default, outs, strict=True):
            assert torch.isfinite(one).all()
            torch.testing.assert_close(other, one, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
def test_gpu_launch_options_give_the_same_values():
    """The same on the GPU in bf16, where LOAD_STAGES makes the loads async copies."""
    default, *others = _launch_option_outputs(31, "cuda", torch.bfloat16,
                                              [({}, {}, {}), *LAUNCH_OPTIONS])
    for outs in others:
        for one, other in zip(default, outs, strict=True):
            torch.testing.assert_close(other, one, atol=1e-2, rtol=1e-2)


def fp64_weights_case():
    """(lengths, x, params, gates, dy, inputs): fp64 inputs and weights that require grad,
    an fp32 output gradient, for the cases computed in fp32."""
    lengths = torch.tensor([12, 5])
    x = torch.randn(2, 12, D, dtype=torch.float64)
    params = make_params(7, torch.float64)
    gates = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 12, D)
    inputs = [x.requires_grad_(), *(p.requires_grad_() for p in params), gates]
    return lengths, x, params, gates, dy, inputs


def test_weights_in_another_dtype_than_the_compute_dtype():
    """fp64 weights computed in fp32 (as fp32 weights under bf16 autocast): the forward's
    fp32 copies of the pointwise weights are the ones the backward uses; outputs and every
    gradient against the fp64 reference."""
    lengths, x, params, gates, dy, inputs = fp64_weights_case()
    y = gated_conv(x, lengths, *params, gates, torch.float32)
    grads = torch.autograd.grad(y, inputs, dy)
    y64 = gated_conv_reference(x, lengths, *params, gates)
    grads64 = torch.autograd.grad(y64, inputs, dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    for i, (g, g64) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


def test_handed_operands_are_the_ones_used():
    """operands: PW1, PW2 in the compute dtype made by the caller (ConformerSupernet.run_blocks,
    one copy for a whole pass), fp64 weights computed in fp32. Copies of the weights give
    exactly the output and gradients of the op's own casts, the gradients on the fp64
    weights; operands of other weights make forward and backward those of the other
    weights (the fp64 reference with them), so the op reads nothing else."""
    lengths, x, params, gates, dy, inputs = fp64_weights_case()

    def outputs(operands):
        y = gated_conv(x, lengths, *params, gates, torch.float32, operands)
        return [y, *torch.autograd.grad(y, inputs, dy)]

    def reference(other):
        y64 = gated_conv_reference(x, lengths, *other, gates)
        return [y64, *torch.autograd.grad(y64, [x, *other, gates], dy.double())]
    assert_handed_operands_are_used(outputs, reference, params, (2, 8))


def test_input_in_another_dtype_than_the_compute_dtype():
    """x read in its own dtype by the first LayerNorm (fp64 here, fp32 under bf16 autocast on
    the GPU), the rest in the compute dtype; dx comes back in x's dtype."""
    lengths = torch.tensor([12, 5])
    x = torch.randn(2, 12, D, dtype=torch.float64, requires_grad=True)
    params = make_params(7)
    y = gated_conv(x, lengths, *params, None, torch.float32)
    assert y.dtype == torch.float32
    (dx,) = torch.autograd.grad(y, [x], torch.ones_like(y))
    assert dx.dtype == torch.float64
    x32 = x.detach().float().requires_grad_()
    y32 = gated_conv_reference(x32, lengths, *params, None)
    torch.testing.assert_close(y, y32, atol=1e-5, rtol=1e-5)
    (dx32,) = torch.autograd.grad(y32, [x32], torch.ones_like(y32))
    torch.testing.assert_close(dx.float(), dx32, atol=1e-4, rtol=1e-4)


def test_padding_invariance_and_finite():
    K = 7
    lengths = torch.tensor([12, 5])
    x = torch.randn(2, 12, D)
    params = make_params(K)
    gates = torch.tensor([0.8])
    y1 = gated_conv(x, lengths, *params, gates)
    x2 = x.clone()
    x2[1, 5:] = torch.randn(7, D) * 1e4
    x2[1, 8] = float("nan")
    y2 = gated_conv(x2, lengths, *params, gates)
    assert torch.equal(y1[0], y2[0]) and torch.equal(y1[1, :5], y2[1, :5])
    assert torch.isfinite(y2).all() and (y2[1, 5:] == 0).all()
    y_ref = gated_conv_reference(x2, lengths, *params, gates)
    torch.testing.assert_close(y2[0], y_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y2[1, :5], y_ref[1, :5], atol=1e-5, rtol=1e-5)


def test_gradcheck_reference_gates_fp64():
    K, d = 3, 4
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 5, d, dtype=torch.float64, requires_grad=True)
    p = [torch.randn(*s, dtype=torch.float64) for s in
         [(d,), (d,), (2 * d, d), (2 * d,), (d, K), (d,), (d,), (d,), (d, d), (d,)]]
    gates = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, xx: gated_conv_reference(xx, lengths, *p, g),
                                    (gates, x))


def test_module_params_and_backends():
    from orthoasr.backend import set_backend
    for d, K in ((D, 7), (384, 31)):
        conv = GatedConvModule(d, kernel_size=K)
        assert sum(p.numel() for p in conv.parameters()) == 3 * d * d + d * K + 8 * d
    conv = GatedConvModule(D, kernel_size=7)
    x, lengths = torch.randn(2, 9, D), torch.tensor([9, 4])
    y_triton = conv(x, lengths, torch.tensor([0.5]))
    set_backend("torch")
    try:
        y_torch = conv(x, lengths, torch.tensor([0.5]))
    finally:
        set_backend("auto")
    torch.testing.assert_close(y_triton, y_torch, atol=1e-5, rtol=1e-5)
    assert conv(x, lengths, torch.zeros(1)).abs().max() == 0


def test_bad_input():
    conv = GatedConvModule(D, kernel_size=5)
    x, lengths = torch.randn(2, 5, D), torch.tensor([5, 2])
    with pytest.raises(ValueError, match="x must be"):
        conv(torch.randn(5, D), lengths)
    with pytest.raises(ValueError, match="lengths must have shape"):
        conv(x, torch.tensor([5, 2, 1]))
    with pytest.raises(ValueError, match="lengths must be in"):
        conv(x, torch.tensor([5, 9]))
    with pytest.raises(ValueError, match="gates must have shape"):
        conv(x, lengths, torch.ones(2))
    with pytest.raises(TypeError, match="x must be"):
        conv(x.to(torch.int64), lengths)
    with pytest.raises(ValueError, match="kernel_size"):
        GatedConvModule(D, kernel_size=4)


def test_weights_in_another_dtype_are_cast_to_the_activations():
    """fp32 activations with fp64 weights: the matmul weights are cast to fp32 per call and
    the weight grads come back in the weights' dtype (the bf16-autocast / fp32-master case)."""
    K = 5
    x, lengths = torch.randn(2, 9, D, requires_grad=True), torch.tensor([9, 4])
    params = [p.double().requires_grad_() for p in make_params(K)]
    gates = torch.tensor([0.6])
    y = gated_conv(x, lengths, *params, gates)
    y64 = gated_conv_reference(x.double(), lengths, *params, gates.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    grads = assert_grads_close(y, y64, params)
    assert all(g.dtype == torch.float64 for g in grads)


def test_registered_op_autograd_matches_reference():
    """The torch.library op (the torch.compile path) and its registered backward."""
    K = 5
    x, lengths = torch.randn(2, 8, D, requires_grad=True), torch.tensor([8, 3])
    params = [p.requires_grad_() for p in make_params(K)]
    gates = torch.tensor([0.7], requires_grad=True)
    y = gated_conv_fwd(x, lengths, *params, gates, False, True, params[2], params[8])[0]
    y_ref = gated_conv_reference(x, lengths, *params, gates)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert_grads_close(y, y_ref, [x, *params, gates])


def test_registered_op_with_a_residual_step():
    """The torch.compile path's op with the residual step of the module before: schema, fake
    tensors, autograd registration, and the new stream and output of the composition."""
    from orthoasr.kernels.residual_step import keep_mask, residual_step_reference
    x, lengths = torch.randn(2, 7, D, requires_grad=True), torch.tensor([7, 3])
    y_prev = torch.randn(2, 7, D, requires_grad=True)
    params = [p.requires_grad_() for p in make_params(5)]
    gates = torch.tensor([0.5], requires_grad=True)
    seed = torch.tensor([9])
    args = (x, lengths, *params, gates, False, True, params[2], params[8], 0, y_prev, seed,
            1.0, 0.3)
    torch.library.opcheck(gated_conv_fwd, args, test_utils=(
        "test_schema", "test_faketensor", "test_autograd_registration"))
    out = gated_conv_fwd(*args)
    x_ref = residual_step_reference(x, y_prev, 1.0, 0.3, keep_mask(seed, x.shape, 0.3))
    y_ref = gated_conv_reference(x_ref, lengths, *params, gates)
    torch.testing.assert_close(out[-1], x_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[0], y_ref, atol=1e-5, rtol=1e-5)
    assert_grads_close(out[0] + out[-1], y_ref + x_ref, [x, y_prev, *params, gates])


def test_registered_op_fake_and_schema():
    """The weights as their own operands, and fp64 weights with fp32 operands."""
    K = 5
    x, lengths = torch.randn(2, 6, D), torch.tensor([6, 3])
    for params in (make_params(K), make_params(K, torch.float64)):
        operands = as_operands([params[2], params[8]], torch.float32)
        params = [p.requires_grad_() for p in params]
        torch.library.opcheck(gated_conv_fwd, (x, lengths, *params, torch.tensor([0.5]), True,
                                               True, *operands),
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_low_precision_error_ratio(dtype):
    torch.manual_seed(1)
    dev, d, K = "cuda", 384, 31
    lengths = torch.tensor([250, 130, 1, 200], device=dev)
    x = torch.randn(4, 250, d, device=dev)
    params = [p.to(dev) for p in make_params_d(d, K)]
    dy = torch.randn_like(x)
    for values, rg in (([0.6], True), ([1.0], False)):
        gates = torch.tensor(values, device=dev, requires_grad=rg)
        low = [t.to(dtype) for t in params]
        y, grads = run(gated_conv, x.to(dtype), lengths, low, gates, dy.to(dtype))
        yt, gradst = run(gated_conv_reference, x.to(dtype), lengths, low, gates, dy.to(dtype))
        y64, grads64 = run(gated_conv_reference, x.double(), lengths, [t.double() for t in low],
                           gates.detach().double().requires_grad_(rg), dy.double())
        assert_error_ratio([y, *grads], [yt, *gradst], [y64, *grads64])


def make_params_d(d, K):
    def r(*shape, scale=0.2):
        return torch.randn(*shape) * scale
    return [r(d) + 1, r(d), r(2 * d, d, scale=d ** -0.5), r(2 * d), r(d, K, scale=K ** -0.5),
            r(d), r(d) + 1, r(d), r(d, d, scale=d ** -0.5), r(d)]


@pytest.mark.gpu
def test_gpu_fp32_matches_reference():
    dev, K = "cuda", 31
    lengths = torch.tensor([37, 1], device=dev)
    x = torch.randn(2, 37, D, device=dev)
    params = [p.to(dev) for p in make_params(K)]
    gates = torch.tensor([0.4], device=dev, requires_grad=True)
    dy = torch.randn_like(x)
    y, grads = run(gated_conv, x, lengths, params, gates, dy)
    y64, grads64 = run(gated_conv_reference, x.double(), lengths, [p.double() for p in params],
                       gates.detach().double().requires_grad_(), dy.double())
    torch.testing.assert_close(y.double(), y64, atol=1e-4, rtol=1e-4)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_autocast_module_error_ratio():
    """Module under bf16 autocast (fp32 weights read by the kernels) vs the torch backend in
    the same autocast, both against an fp64 run of the same module."""
    dev = "cuda"
    x = torch.randn(4, 120, 384, device=dev)
    lengths = torch.tensor([120, 60, 1, 99], device=dev)
    gates = torch.tensor([0.7], device=dev)
    assert_module_autocast_error_ratio(GatedConvModule(384, 31).to(dev), x, lengths, gates)


@pytest.mark.gpu
def test_gpu_cuda_graph_and_no_sync():
    dev = "cuda"
    conv = GatedConvModule(384, 31).to(dev)
    x = torch.randn(8, 100, 384, device=dev, dtype=torch.bfloat16, requires_grad=True)
    lengths = torch.randint(50, 101, (8,), device=dev)
    hard = torch.tensor([1.0], device=dev)
    soft = torch.tensor([0.3], device=dev, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        conv(x, lengths, hard).sum().backward()
        conv(x, lengths, soft).sum().backward()

    def hard_soft_and_no_gates():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            conv(x, lengths, hard).sum().backward()
            conv(x, lengths, soft).sum().backward()
            conv(x, lengths, None).sum().backward()

    call_without_sync(hard_soft_and_no_gates)
    xs = x.detach()
    static_gates = hard.clone()
    with torch.no_grad():
        graph, out = capture_graph(lambda: conv(xs, lengths, static_gates))
        static_gates.fill_(0.5)
        graph.replay()
        torch.testing.assert_close(out, conv(xs, lengths, static_gates))
        static_gates.zero_()
        graph.replay()
        assert (out == 0).all()
