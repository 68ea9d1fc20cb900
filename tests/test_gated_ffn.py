"""GatedFeedForward: Triton kernels (interpreter on CPU) vs the fp64 PyTorch reference."""

import pytest
import torch
from error_ratio import (
    assert_error_ratio,
    assert_grads_close,
    assert_handed_operands_are_used,
    assert_module_autocast_error_ratio,
)

from orthoasr import set_backend
from orthoasr.graphs import call_without_sync, capture_graph
from orthoasr.kernels import gated_wgrad as gw
from orthoasr.kernels.common import as_operands, valid_mask
from orthoasr.kernels.gated_ffn import (
    gated_ffn,
    gated_ffn_fwd,
    gated_ffn_reference,
)
from orthoasr.nn import GatedFeedForward

D, F, C = 24, 48, 4
SHAPES = {  # name: (T, lengths)
    "B1_T1": (1, [1]),
    "T37_full_and_len1": (37, [37, 1]),
    "B3_T20_ragged": (20, [20, 13, 7]),
}
GATES = {  # name: (gates, granularity, requires_grad)
    "none": (None, "component", False),
    "soft": ([0.3, 1.0, 0.7, -0.5], "component", True),
    "soft_with_zero": ([0.3, 0.0, 0.7, 1.0], "component", True),
    "hard_half": ([1.0, 0.0, 0.0, 1.0], "component", False),
    "one_on": ([0.0, 0.0, 1.0, 0.0], "component", False),
    "all_off": ([0.0, 0.0, 0.0, 0.0], "component", False),
    "soft_all_off": ([0.0, 0.0, 0.0, 0.0], "component", True),   # b2 off, gates get gradients
    "module_soft": ([0.6], "module", True),
    "module_off": ([0.0], "module", False),
}


def make_params(dtype=torch.float32, ff=F):
    return [torch.randn(D, dtype=dtype) * 0.2 + 1, torch.randn(D, dtype=dtype) * 0.2,
            torch.randn(ff, D, dtype=dtype) / D ** 0.5, torch.randn(ff, dtype=dtype) * 0.2,
            torch.randn(D, ff, dtype=dtype) / ff ** 0.5, torch.randn(D, dtype=dtype) * 0.2]


def run(fn, x, lengths, params, gates, module_gate, dy):
    """Output and gradients of x, every parameter and (if it requires grad) the gates."""
    with_gates = gates is not None and gates.requires_grad
    inputs = [t.detach().clone().requires_grad_()
              for t in [x, *params] + ([gates] if with_gates else [])]
    x_, params_ = inputs[0], inputs[1:1 + len(params)]
    gates_ = inputs[-1] if with_gates else gates
    y = fn(x_, lengths, *params_, gates_, module_gate)
    grads = torch.autograd.grad(y, inputs, dy)
    return y, grads


def triton_ffn(x, lengths, *rest):
    *params, gates, module_gate = rest
    return gated_ffn(x, lengths, *params, gates, C, module_gate)


@pytest.mark.parametrize("gate_case", list(GATES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_fp64_reference(shape, gate_case):
    T, lens = SHAPES[shape]
    values, granularity, requires_grad = GATES[gate_case]
    lengths = torch.tensor(lens)
    x = torch.randn(len(lens), T, D)
    params = make_params()
    gates = None if values is None else torch.tensor(values).requires_grad_(requires_grad)
    module_gate = granularity == "module"
    dy = torch.randn(len(lens), T, D)
    y, grads = run(triton_ffn, x, lengths, params, gates, module_gate, dy)
    g64 = None if gates is None else gates.detach().double().requires_grad_(requires_grad)
    y64, grads64 = run(gated_ffn_reference, x.double(), lengths, [p.double() for p in params],
                       g64, module_gate, dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    assert len(grads) == len(grads64)
    for i, (g, g64_) in enumerate(zip(grads, grads64)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")
    if gate_case in ("all_off", "module_off"):
        assert (y == 0).all() and all((g == 0).all() for g in grads)


def test_padding_invariance_and_finite():
    lengths = torch.tensor([9, 4])
    x = torch.randn(2, 9, D)
    params = make_params()
    gates = torch.tensor([1.0, 0.5, 0.0, 2.0])
    y1 = gated_ffn(x, lengths, *params, gates, C, False)
    x2 = x.clone()
    x2[1, 4:] = torch.randn(5, D) * 1e4
    x2[1, 6] = float("nan")
    y2 = gated_ffn(x2, lengths, *params, gates, C, False)
    assert torch.equal(y1[0], y2[0]) and torch.equal(y1[1, :4], y2[1, :4])
    assert torch.isfinite(y2).all() and (y2[1, 4:] == 0).all()
    torch.testing.assert_close(y1, gated_ffn_reference(x, lengths, *params, gates, False))


def run_with_poisoned_padding(params, gates, module_gate):
    """(y, grads, y64, grads64): the Triton module on 3 sequences of up to 9 frames whose x
    and dy carry 1e4 and NaN at padded rows, and the fp64 reference on the same inputs with
    zeros there (what a padded frame must not change); gates as given (requiring grad or
    not)."""
    lengths = torch.tensor([9, 4, 1])
    x, dy = torch.randn(3, 9, D), torch.randn(3, 9, D)
    pad = ~valid_mask(lengths, 9)
    x[pad], dy[pad] = 1e4, float("nan")
    x[1, 6] = float("nan")
    y, grads = run(triton_ffn, x, lengths, params, gates, module_gate, dy)
    x0, dy0 = torch.where(pad[..., None], 0.0, x), torch.where(pad[..., None], 0.0, dy)
    g64 = None if gates is None else \
        gates.detach().double().requires_grad_(gates.requires_grad)
    y64, grads64 = run(gated_ffn_reference, x0.double(), lengths, [p.double() for p in params],
                       g64, module_gate, dy0.double())
    return y, grads, y64, grads64


@pytest.mark.parametrize("gate_case", ["none", "soft", "module_soft"])
def test_dense_products_read_only_written_rows(gate_case, monkeypatch, nan_filled_memory):
    """With nothing skipped, dW1 and dxn are products over every row (dense_wgrad,
    torch.mm), so every padded row of d_pre and xn must be written, as zeros. Fresh memory is
    NaN here (nan_filled_memory), x and dy carry NaN and 1e4 at padded rows, and the
    gradients must still match the fp64 reference."""
    from orthoasr.kernels import gated_ffn as module
    calls = []
    monkeypatch.setattr(module, "dense_wgrad",
                        lambda a, b: calls.append(1) or gw.dense_wgrad(a, b))
    values, granularity, requires_grad = GATES[gate_case]
    gates = None if values is None else torch.tensor(values).requires_grad_(requires_grad)
    _, grads, _, grads64 = run_with_poisoned_padding(make_params(), gates,
                                                     granularity == "module")
    assert calls, "the dense path was not taken"
    for i, (g, g64_) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


@pytest.mark.parametrize("gate_case", ["hard_half", "hard_scaled", "one_on", "all_off",
                                       "module_off", "module_on"])
def test_hard_gates_with_weight_gradients_by_tma(gate_case, monkeypatch, nan_filled_memory):
    """Hard gates where `wgrad` takes TMA loads (16-bit on a Hopper GPU; forced here): its
    loads read every row, so the forward and backward write zeros at the padded rows of xn,
    hidden, d_pre and a copy of dy. Fresh memory is NaN, x and dy carry NaN and 1e4 at
    padded rows: output and every gradient must still match the fp64 reference."""
    from orthoasr.kernels import gated_ffn as module
    interpreter_tiles = dict(BP=32, BQ=32, BK=32, num_warps=4, num_stages=1, TMA=True)
    calls = []

    def wgrad_by_tma(*args, rows_zeroed=False, **kwargs):
        calls.append(rows_zeroed)
        return gw.wgrad(*args, rows_zeroed=rows_zeroed, blocks=interpreter_tiles, **kwargs)

    monkeypatch.setattr(module, "tma_by_default", lambda a: True)
    monkeypatch.setattr(module, "wgrad", wgrad_by_tma)
    values, granularity, _ = {"hard_scaled": ([0.5, 0.0, 1.5, 1.0], "component", False),
                              "module_on": ([1.0], "module", False)}.get(gate_case) \
        or GATES[gate_case]
    params = make_params(ff=128)                         # chunks of 32: whole TMA blocks
    y, grads, y64, grads64 = run_with_poisoned_padding(params, torch.tensor(values),
                                                       granularity == "module")
    assert calls == [True, True]
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    for i, (g, g64_) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


def fp64_weights_case():
    """(lengths, x, params, gates, dy, inputs): fp64 inputs and weights that require grad,
    an fp32 output gradient, for the cases computed in fp32."""
    lengths = torch.tensor([7, 3])
    x = torch.randn(2, 7, D, dtype=torch.float64)
    params = [p.double() for p in make_params()]
    gates = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 7, D)
    inputs = [x.requires_grad_(), *(p.requires_grad_() for p in params), gates]
    return lengths, x, params, gates, dy, inputs


def test_weights_in_another_dtype_than_the_compute_dtype():
    """fp64 weights computed in fp32 (as fp32 weights under bf16 autocast): the forward's
    fp32 copies of W1 and W2 are the ones the backward uses; outputs and every gradient
    against the fp64 reference."""
    lengths, x, params, gates, dy, inputs = fp64_weights_case()
    y = gated_ffn(x, lengths, *params, gates, C, False, torch.float32)
    assert y.dtype == torch.float32
    grads = torch.autograd.grad(y, inputs, dy)
    y64 = gated_ffn_reference(x, lengths, *params, gates, False)
    grads64 = torch.autograd.grad(y64, inputs, dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    for i, (g, g64) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


def test_handed_operands_are_the_ones_used():
    """operands: W1, W2 in the compute dtype made by the caller (ConformerSupernet.run_blocks,
    one copy for a whole pass), fp64 weights computed in fp32. Copies of the weights give
    exactly the output and gradients of the op's own casts, the gradients on the fp64
    weights; operands of other weights make forward and backward those of the other
    weights (the fp64 reference with them), so the op reads nothing else."""
    lengths, x, params, gates, dy, inputs = fp64_weights_case()

    def outputs(operands):
        y = gated_ffn(x, lengths, *params, gates, C, False, torch.float32, operands)
        return [y, *torch.autograd.grad(y, inputs, dy)]

    def reference(other):
        y64 = gated_ffn_reference(x, lengths, *other, gates, False)
        return [y64, *torch.autograd.grad(y64, [x, *other, gates], dy.double())]
    assert_handed_operands_are_used(outputs, reference, params, (2, 4))


def test_gradcheck_reference_gates_fp64():
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    p = [torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64),
         torch.randn(12, 8, dtype=torch.float64), torch.randn(12, dtype=torch.float64),
         torch.randn(8, 12, dtype=torch.float64), torch.randn(8, dtype=torch.float64)]
    for values, module_gate in (([0.3, -1.2, 0.8], False), ([0.7], True)):
        gates = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda g, xx, mg=module_gate: gated_ffn_reference(xx, lengths, *p, g, mg),
            (gates, x.clone().requires_grad_()))


def test_module_params_names_and_backends():
    from orthoasr.backend import set_backend
    ffn = GatedFeedForward(D, F, chunks=C)
    assert sum(p.numel() for p in ffn.parameters()) == 2 * D + F * D + F + D * F + D
    assert ffn.linear1.weight.shape == (F, D) and ffn.linear2.weight.shape == (D, F)
    x, lengths = torch.randn(2, 6, D), torch.tensor([6, 3])
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0])
    y_triton = ffn(x, lengths, gates)
    set_backend("torch")
    try:
        y_torch = ffn(x, lengths, gates)
    finally:
        set_backend("auto")
    torch.testing.assert_close(y_triton, y_torch, atol=1e-5, rtol=1e-5)
    ffn.dropout.p = 0.5
    ffn.train()
    y_drop = ffn(x, lengths, gates)
    assert not torch.equal(y_drop, y_triton)
    ffn.eval()
    assert torch.equal(ffn(x, lengths, gates), y_triton)
    mod = GatedFeedForward(D, F, chunks=C, granularity="module")
    assert mod(x, lengths, torch.zeros(1)).abs().max() == 0


def test_bad_input():
    ffn = GatedFeedForward(D, F, chunks=C)
    x, lengths = torch.randn(2, 5, D), torch.tensor([5, 2])
    with pytest.raises(ValueError, match="x must be"):
        ffn(torch.randn(2, 5), lengths)
    with pytest.raises(ValueError, match="x must be"):
        ffn(torch.randn(2, 5, D + 1), lengths)
    with pytest.raises(TypeError, match="x must be"):
        ffn(x.to(torch.int32), lengths)
    with pytest.raises(ValueError, match="lengths must have shape"):
        ffn(x, torch.tensor([5]))
    with pytest.raises(TypeError, match="lengths must be int32 or int64"):
        ffn(x, lengths.float())
    with pytest.raises(ValueError, match="lengths must be in"):
        ffn(x, torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="lengths must be in"):
        ffn(x, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="gates must have shape"):
        ffn(x, lengths, torch.ones(3))
    with pytest.raises(TypeError, match="gates must be floating"):
        ffn(x, lengths, torch.ones(4, dtype=torch.int64))
    for backend in ("torch", "auto"):          # the module checks before either backend
        set_backend(backend)
        with pytest.raises(ValueError, match="ungated_batch=2 needs gates and fewer"):
            ffn(x, lengths, torch.ones(4), ungated_batch=2)
        with pytest.raises(ValueError, match="ungated_batch=1 needs gates"):
            ffn(x, lengths, None, ungated_batch=1)
    with pytest.raises(ValueError, match="chunks"):
        GatedFeedForward(D, 50, chunks=4)


def test_weights_in_another_dtype_are_cast_to_the_activations():
    """fp32 activations with fp64 weights: the matmul weights are cast to fp32 per call and the
    weight grads come back in the weights' dtype (the bf16-autocast / fp32-master case)."""
    x, lengths = torch.randn(2, 9, D, requires_grad=True), torch.tensor([9, 5])
    params = [p.double().requires_grad_() for p in make_params()]
    gates = torch.tensor([1.0, 0.25, 0.0, 1.0])
    y = gated_ffn(x, lengths, *params, gates, C, False)
    y64 = gated_ffn_reference(x.double(), lengths, *params, gates.double(), False)
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    grads = assert_grads_close(y, y64, params)
    assert all(g.dtype == torch.float64 for g in grads)


def test_registered_op_autograd_matches_reference():
    """The torch.library op (the torch.compile path) and its registered backward."""
    x, lengths = torch.randn(2, 7, D, requires_grad=True), torch.tensor([7, 3])
    params = [p.requires_grad_() for p in make_params()]
    gates = torch.tensor([0.5, 0.0, 1.0, 2.0], requires_grad=True)
    y = gated_ffn_fwd(x, lengths, *params, gates, C, False, False, True, params[2],
                      params[4])[0]
    y_ref = gated_ffn_reference(x, lengths, *params, gates, False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert_grads_close(y, y_ref, [x, *params, gates])


def test_input_in_another_dtype_than_the_compute_dtype():
    """x read in its own dtype by the LayerNorm (fp64 here, fp32 under bf16 autocast on the
    GPU), everything else in the compute dtype; dx comes back in x's dtype."""
    x, lengths = torch.randn(2, 7, D, dtype=torch.float64), torch.tensor([7, 3])
    params = [p.requires_grad_() for p in make_params()]
    x.requires_grad_()
    y = gated_ffn(x, lengths, *params, None, C, False, torch.float32)
    assert y.dtype == torch.float32
    (dx,) = torch.autograd.grad(y, [x], torch.ones_like(y))
    assert dx.dtype == torch.float64
    x32 = x.detach().float().requires_grad_()
    y32 = gated_ffn_reference(x32, lengths, *params, None, False)
    torch.testing.assert_close(y, y32, atol=1e-5, rtol=1e-5)
    (dx32,) = torch.autograd.grad(y32, [x32], torch.ones_like(y32))
    torch.testing.assert_close(dx.float(), dx32, atol=1e-4, rtol=1e-4)


def test_registered_op_fake_and_schema():
    """The weights as their own operands, and fp64 weights with fp32 operands."""
    x, lengths = torch.randn(2, 4, D), torch.tensor([4, 2])
    for params in (make_params(), make_params(torch.float64)):
        operands = as_operands([params[2], params[4]], torch.float32)
        for p in params:
            p.requires_grad_()
        torch.library.opcheck(gated_ffn_fwd, (x, lengths, *params, torch.tensor([1.0, 0, 1, 1]),
                                              C, False, True, True, *operands),
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))


# ----------------------------------------------------------------------------- GPU

def _error_ratio_check(dtype):
    torch.manual_seed(1)
    dev = "cuda"
    d, f, chunks = 384, 1536, 4
    lengths = torch.tensor([250, 130, 1, 200], device=dev)
    x = torch.randn(4, 250, d, device=dev)
    params = [torch.randn(d, device=dev) * 0.2 + 1, torch.randn(d, device=dev) * 0.2,
              torch.randn(f, d, device=dev) / d ** 0.5, torch.randn(f, device=dev) * 0.2,
              torch.randn(d, f, device=dev) / f ** 0.5, torch.randn(d, device=dev) * 0.2]
    dy = torch.randn_like(x)
    for values in ([0.3, 1.0, 0.7, 0.2], [1.0, 0.0, 1.0, 0.0]):
        gates = torch.tensor(values, device=dev, requires_grad=values[1] != 0)
        low = [t.to(dtype) for t in params]

        def tri(xx, ll, *rest):
            *ps, g, mg = rest
            return gated_ffn(xx, ll, *ps, g, chunks, mg)
        y, grads = run(tri, x.to(dtype), lengths, low, gates, False, dy.to(dtype))
        yt, gradst = run(gated_ffn_reference, x.to(dtype), lengths, low, gates, False,
                         dy.to(dtype))
        g64 = gates.detach().double().requires_grad_(gates.requires_grad)
        y64, grads64 = run(gated_ffn_reference, x.double(), lengths,
                           [t.double() for t in low], g64, False, dy.double())
        assert_error_ratio([y, *grads], [yt, *gradst], [y64, *grads64])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_low_precision_error_ratio(dtype):
    _error_ratio_check(dtype)


@pytest.mark.gpu
def test_gpu_fp32_matches_reference():
    dev = "cuda"
    lengths = torch.tensor([37, 1], device=dev)
    x = torch.randn(2, 37, D, device=dev)
    params = [p.to(dev) for p in make_params()]
    gates = torch.tensor([0.3, 1.0, 0.0, -0.5], device=dev, requires_grad=True)
    dy = torch.randn_like(x)
    y, grads = run(triton_ffn, x, lengths, params, gates, False, dy)
    y64, grads64 = run(gated_ffn_reference, x.double(), lengths, [p.double() for p in params],
                       gates.detach().double().requires_grad_(), False, dy.double())
    torch.testing.assert_close(y.double(), y64, atol=1e-4, rtol=1e-4)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_autocast_module_error_ratio():
    """Module under bf16 autocast (fp32 weights read by the kernels) vs the torch backend in
    the same autocast, both against an fp64 run of the same module; hard gates."""
    dev = "cuda"
    x = torch.randn(4, 120, 384, device=dev)
    lengths = torch.tensor([120, 60, 1, 99], device=dev)
    gates = torch.tensor([0.8, 0.0, 0.5, 1.0], device=dev)
    assert_module_autocast_error_ratio(GatedFeedForward(384, 1536, 4).to(dev), x, lengths, gates)


@pytest.mark.gpu
def test_gpu_cuda_graph_and_no_sync():
    dev = "cuda"
    ffn = GatedFeedForward(384, 1536, 4).to(dev)
    x = torch.randn(8, 100, 384, device=dev, dtype=torch.bfloat16, requires_grad=True)
    lengths = torch.randint(50, 101, (8,), device=dev)
    gates = torch.tensor([1.0, 0.0, 1.0, 0.0], device=dev)
    soft = torch.tensor([0.3, 0.9, 0.5, 0.1], device=dev, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ffn(x, lengths, gates).sum().backward()  # compile outside the checks
        ffn(x, lengths, soft).sum().backward()

    def hard_soft_and_no_gates():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ffn(x, lengths, gates).sum().backward()
            ffn(x, lengths, soft).sum().backward()
            ffn(x, lengths, None).sum().backward()

    call_without_sync(hard_soft_and_no_gates)
    xs = x.detach()
    static_gates = gates.clone()
    with torch.no_grad():
        graph, out = capture_graph(lambda: ffn(xs, lengths, static_gates))
        static_gates.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0], device=dev))
        graph.replay()
        expected = ffn(xs, lengths, static_gates)
        torch.testing.assert_close(out, expected)
        static_gates.zero_()
        graph.replay()
        assert (out == 0).all()


@pytest.mark.parametrize("gate_case", ["soft", "soft_all_off", "hard_half"])
def test_ungated_batch_matches_two_reference_passes(gate_case):
    """ungated_batch=1: the first sequence as if gates were None, the others with the gates,
    outputs and every gradient (the gates' from the gated sequences only) as the fp64
    reference's two passes give them."""
    values, _, requires_grad = GATES[gate_case]
    lengths = torch.tensor([20, 13, 7])
    x = torch.randn(3, 20, D)
    params = make_params()
    gates = torch.tensor(values).requires_grad_(requires_grad)
    dy = torch.randn(3, 20, D)

    def pair(fn):
        def call(x, lengths, *rest):
            *params, gates, module_gate = rest
            if fn is gated_ffn:
                return gated_ffn(x, lengths, *params, gates, C, module_gate, ungated_batch=1)
            return gated_ffn_reference(x, lengths, *params, gates, module_gate, ungated_batch=1)
        return call

    y, grads = run(pair(gated_ffn), x, lengths, params, gates, False, dy)
    g64 = gates.detach().double().requires_grad_(requires_grad)
    y64, grads64 = run(pair(gated_ffn_reference), x.double(), lengths,
                       [p.double() for p in params], g64, False, dy.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=1e-4)
    for i, (g, g64_) in enumerate(zip(grads, grads64, strict=True)):
        torch.testing.assert_close(g.double(), g64_, atol=5e-5, rtol=1e-4, msg=f"grad {i}")


def test_registered_op_with_ungated_batch():
    """The torch.compile path's op and its registered backward with ungated_batch."""
    x, lengths = torch.randn(2, 7, D, requires_grad=True), torch.tensor([7, 3])
    params = [p.requires_grad_() for p in make_params()]
    gates = torch.tensor([0.5, 0.0, 1.0, 2.0], requires_grad=True)
    torch.library.opcheck(gated_ffn_fwd, (x, lengths, *params, gates, C, False, False, True,
                                          params[2], params[4], 1),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
    y = gated_ffn_fwd(x, lengths, *params, gates, C, False, False, True, params[2], params[4],
                      1)[0]
    y_ref = gated_ffn_reference(x, lengths, *params, gates, False, ungated_batch=1)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert_grads_close(y, y_ref, [x, *params, gates])


def test_registered_op_with_a_residual_step():
    """The torch.compile path's op with the residual step of the module before: schema, fake
    tensors, autograd registration, and the new stream and output of the composition."""
    from orthoasr.kernels.residual_step import keep_mask, residual_step_reference
    x, lengths = torch.randn(2, 7, D, requires_grad=True), torch.tensor([7, 3])
    y_prev = torch.randn(2, 7, D, requires_grad=True)
    params = [p.requires_grad_() for p in make_params()]
    gates = torch.tensor([0.5, 0.0, 1.0, 2.0], requires_grad=True)
    seed = torch.tensor([9])
    args = (x, lengths, *params, gates, C, False, False, True, params[2], params[4], 0,
            y_prev, seed, 0.5, 0.2)
    torch.library.opcheck(gated_ffn_fwd, args, test_utils=(
        "test_schema", "test_faketensor", "test_autograd_registration"))
    out = gated_ffn_fwd(*args)
    x_ref = residual_step_reference(x, y_prev, 0.5, 0.2, keep_mask(seed, x.shape, 0.2))
    y_ref = gated_ffn_reference(x_ref, lengths, *params, gates, False)
    torch.testing.assert_close(out[-1], x_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[0], y_ref, atol=1e-5, rtol=1e-5)
    assert_grads_close(out[0] + out[-1], y_ref + x_ref, [x, y_prev, *params, gates])


def test_ungated_batch_needs_chunk_gates():
    x, lengths = torch.randn(2, 4, D), torch.tensor([4, 2])
    with pytest.raises(ValueError, match="ungated_batch=1 needs chunk gates"):
        gated_ffn(x, lengths, *make_params(), None, C, False, ungated_batch=1)
    with pytest.raises(ValueError, match="ungated_batch=2 needs chunk gates"):
        gated_ffn(x, lengths, *make_params(), torch.ones(C), C, False, ungated_batch=2)
