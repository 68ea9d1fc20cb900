"""kernels/frontend.py: the fused ReLU / 2x2 max-pool / padding mask after each frontend
conv against its torch reference (interpreter on the CPU), forward and backward, and the
VGG frontend on both backends. The op only compares and selects, so the values must match
bit for bit, ties and NaNs included."""

import pytest
import torch
from error_ratio import assert_error_ratio
from sm90 import assert_compiles_for_sm90

import orthoasr.kernels.frontend as frontend_kernels
import orthoasr.model as model_module
from orthoasr.backend import set_backend
from orthoasr.kernels.common import valid_mask
from orthoasr.kernels.frontend import masked_relu_pool, masked_relu_pool_reference
from orthoasr.model import VGGFrontend

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CL = torch.channels_last


@pytest.fixture(autouse=True)
def nan_poisoned_outputs(monkeypatch):
    """Every output the launchers allocate starts as NaN: an element left unwritten shows."""
    def poisoned(shape, like):
        empty = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=CL)
        return empty.fill_(float("nan"))
    monkeypatch.setattr(frontend_kernels, "_channels_last", poisoned)


def _activations(shape, ties: bool, dtype=torch.float32, device=DEV):
    """Channels-last conv-like outputs; with `ties`, values on a coarse grid, so that windows
    hold several equal maxima, positive and zero."""
    x = torch.randn(shape, device=device)
    if ties:
        x = torch.round(2 * x) / 2
    return x.to(dtype).contiguous(memory_format=CL)


def _run(fn, x, lengths, pool, dy):
    leaf = x.detach().clone().requires_grad_()
    y = fn(leaf, lengths, pool)
    (dx,) = torch.autograd.grad(y, leaf, dy.to(y.dtype))
    return y, dx


CASES = [      # (B, C, T, F), lengths: odd T and F, a length-0 and a length-1 sequence
    ((3, 5, 7, 9), [7, 1, 0]),
    ((3, 5, 8, 10), [8, 5, 2]),
    ((1, 4, 1, 6), [1]),
    ((2, 16, 6, 80), [6, 3]),
    ((2, 3, 5, 3), [4, 8]),           # a length above T counts as T (unchecked CUDA lengths)
]


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,lengths", CASES)
def test_matches_reference_exactly_forward_and_backward(shape, lengths, ties, pool):
    if pool and shape[2] == 1:
        pytest.skip("torch's max_pool2d rejects T = 1 (test_pool_of_one_frame)")
    x = _activations(shape, ties)
    lengths = torch.tensor(lengths, device=DEV, dtype=torch.int32 if ties else torch.int64)
    dy = torch.randn(masked_relu_pool_reference(x, lengths, pool).shape, device=DEV)
    y, dx = _run(masked_relu_pool, x, lengths, pool, dy)
    y_ref, dx_ref = _run(masked_relu_pool_reference, x.double(), lengths, pool, dy)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and dx.dtype == x.dtype
    assert y.is_contiguous(memory_format=CL) and dx.is_contiguous(memory_format=CL)
    assert torch.equal(y.double(), y_ref)
    assert torch.equal(dx.double(), dx_ref)
    T_out = y.shape[2]
    padded = torch.arange(T_out, device=DEV)[None, :] >= (lengths // (2 if pool else 1))[:, None]
    assert (y.permute(0, 2, 1, 3)[padded] == 0).all()


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("shape,lengths", CASES[:2] + CASES[3:])
def test_bias_forward_exact_and_its_gradient_summed(shape, lengths, pool):
    """With a bias: y and dx equal the fp32 reference's bit for bit (x + bias rounds the same
    in the kernel's fp32 registers); dbias, each program's per-channel sum added up, equals
    the fp64 reference's within rounding."""
    x = _activations(shape, ties=True)
    bias = torch.randn(shape[1], device=DEV)
    lengths = torch.tensor(lengths, device=DEV)
    dy = torch.randn(masked_relu_pool_reference(x, lengths, pool).shape, device=DEV)

    def run(fn, x, bias):
        leaves = [x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()]
        y = fn(leaves[0], lengths, pool, leaves[1])
        return (y, *torch.autograd.grad(y, leaves, dy.to(y.dtype)))
    y, dx, dbias = run(masked_relu_pool, x, bias)
    y_ref, dx_ref, _ = run(masked_relu_pool_reference, x, bias)
    _, _, dbias_ref = run(masked_relu_pool_reference, x.double(), bias.double())
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
    assert dbias.dtype == bias.dtype and dbias.shape == bias.shape
    torch.testing.assert_close(dbias.double(), dbias_ref, rtol=1e-5, atol=1e-5)
    assert dbias.abs().sum() > 0                      # some gradient reached the bias


def test_ties_and_nans_follow_torch():
    """One channel, windows (T, F) in row-major order: the gradient goes to the first of
    equal maxima (not the last), to no element of a window whose maximum is <= 0, and to
    the last NaN (torch's rule: a NaN beats anything); NaNs propagate forward."""
    nan = float("nan")
    windows = [[[2, 2], [2, 1]], [[0, 3], [3, 3]], [[-1, -1], [-1, -1]], [[0, 0], [-1, 0]],
               [[nan, 5], [nan, 1]], [[1, 4], [4, 1]]]
    x = torch.cat([torch.tensor(w, dtype=torch.float32) for w in windows], dim=1)
    x = x[None, None].to(DEV).contiguous(memory_format=CL)          # (1, 1, 2, 12)
    lengths = torch.tensor([2], device=DEV)
    dy = torch.arange(1.0, 7.0, device=DEV)[None, None, None]
    y, dx = _run(masked_relu_pool, x, lengths, True, dy)
    assert torch.equal(y.isnan(), torch.tensor([[[[0, 0, 0, 0, 1, 0]]]], device=DEV).bool())
    torch.testing.assert_close(y[..., :4], torch.tensor([[[[2.0, 3, 0, 0]]]], device=DEV))
    want = torch.zeros(2, 12, device=DEV)
    want[0, 0], want[0, 3], want[1, 8], want[0, 11] = 1, 2, 5, 6
    assert torch.equal(dx[0, 0], want)
    y_ref, dx_ref = _run(masked_relu_pool_reference, x, lengths, True, dy)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(dx, dx_ref)


def test_backward_keeps_y_without_pool_and_x_with_it():
    """Without the pool the backward reads y, which the next conv keeps anyway: x, the conv
    output, is not kept alive beside it."""
    lengths = torch.tensor([5, 3], device=DEV)
    saved = []

    def record(t):
        saved.append(t.data_ptr())
        return t
    for pool in (False, True):
        x = _activations((2, 3, 5, 7), ties=False).requires_grad_()
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            y = masked_relu_pool(x, lengths, pool)
        kept, dropped = (x, y) if pool else (y, x)
        assert kept.data_ptr() in saved and dropped.data_ptr() not in saved


def test_pool_of_one_frame_is_empty_with_zero_gradient():
    x = _activations((2, 3, 1, 7), ties=False)
    lengths = torch.tensor([1, 0], device=DEV)
    leaf = x.clone().requires_grad_()
    y = masked_relu_pool(leaf, lengths, True)
    assert y.shape == (2, 3, 0, 3)
    (dx,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
    assert torch.equal(dx, torch.zeros_like(dx))


def test_bf16_and_fp16_select_the_same_values():
    """The kernels compute in fp32 and store in the input dtype: the values of a 16-bit
    input are kept exactly (the interpreter converts 16-bit loads and stores)."""
    lengths = torch.tensor([7, 4, 0], device=DEV)
    for dtype in (torch.bfloat16, torch.float16):
        for pool in (False, True):
            x = _activations((3, 5, 7, 9), ties=True, dtype=dtype)
            y_ref = masked_relu_pool_reference(x.float(), lengths, pool)
            dy = torch.randn_like(y_ref).to(dtype)
            y, dx = _run(masked_relu_pool, x, lengths, pool, dy)
            _, dx_ref = _run(masked_relu_pool_reference, x.float(), lengths, pool, dy.float())
            assert y.dtype == dtype and torch.equal(y.float(), y_ref)
            assert dx.dtype == dtype and torch.equal(dx.float(), dx_ref)


def test_reference_gradcheck_in_fp64():
    """The reference's gradient is the true one where it is defined: distinct values away
    from 0, so no window holds a tie or a ReLU kink within gradcheck's steps."""
    values = torch.randperm(3 * 2 * 5 * 7, device=DEV).double() - 99.5    # none is 0
    x = (values / 10).view(3, 2, 5, 7).contiguous(memory_format=CL).requires_grad_()
    lengths = torch.tensor([5, 2, 0], device=DEV)
    assert torch.autograd.gradcheck(masked_relu_pool_reference, (x, lengths, False), eps=1e-4)
    assert torch.autograd.gradcheck(masked_relu_pool_reference, (x, lengths, True), eps=1e-4)


def test_inputs_are_checked():
    x = _activations((2, 3, 4, 4), ties=False)
    with pytest.raises(ValueError, match="x must be a"):
        masked_relu_pool(x[0], torch.tensor([4, 4], device=DEV), False)
    with pytest.raises(TypeError, match="float64"):
        masked_relu_pool(x.double(), torch.tensor([4, 4], device=DEV), False)
    with pytest.raises(ValueError, match="lengths"):
        masked_relu_pool(x, torch.tensor([4], device=DEV), False)
    with pytest.raises(ValueError, match="lengths"):
        masked_relu_pool(x, torch.tensor([4.0, 4.0], device=DEV), False)


def test_registered_ops_pass_opcheck():
    """The torch.library ops (what torch.compile sees) have consistent fake and autograd
    registrations."""
    from orthoasr.kernels.frontend import masked_relu_pool_bwd, masked_relu_pool_fwd
    lengths = torch.tensor([5, 2], device=DEV)
    for pool, with_bias in ((False, False), (True, False), (False, True), (True, True)):
        x = _activations((2, 3, 5, 7), ties=False).requires_grad_()
        bias = torch.randn(3, device=DEV, requires_grad=True) if with_bias else None
        torch.library.opcheck(masked_relu_pool_fwd, (x, lengths, pool, bias),
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))
        dy = _activations((2, 3, 5 // (1 + pool), 7 // (1 + pool)), ties=False)
        torch.library.opcheck(masked_relu_pool_bwd,
                              (dy, x.detach(), lengths, pool,
                               None if bias is None else bias.detach()),
                              test_utils=("test_schema", "test_faketensor"))


def _frontend_run(frontend, feats, lengths, backend, input_grad=False):
    """(output, [input gradient,] parameter gradients) of `frontend` on `backend`. Features
    that need no gradient (training's) take the first-conv op on the Triton backend; with
    input_grad, cuDNN's conv and the fused op after it."""
    set_backend(backend)
    try:
        frontend.zero_grad(set_to_none=True)
        leaf = feats.clone().requires_grad_(input_grad)
        y, out_lengths = frontend(leaf, lengths)
        dy = torch.linspace(-1, 1, y.numel(), device=y.device).view(y.shape).to(y.dtype)
        y.backward(dy)
        grads = [leaf.grad] if input_grad else []
        return [y.detach(), *grads, *(p.grad for p in frontend.parameters())], out_lengths
    finally:
        set_backend("auto")


def _frontend_as_before(frontend, feats, lengths):
    """The frontend's forward before the fused op: `where` before every conv and after the
    last pool, ReLU after each conv, a pool after convs 2 and 4."""
    x = torch.where(valid_mask(lengths, feats.shape[1])[..., None], feats, 0.0)
    x = x.unsqueeze(-1).permute(0, 3, 1, 2)               # channels-last, as the frontend
    for i, conv in enumerate(frontend.convs):
        if i > 0:
            x = torch.where(valid_mask(lengths, x.shape[2])[:, None, :, None], x, 0.0)
        x = torch.relu(conv._conv_forward(x, conv.weight.contiguous(memory_format=CL),
                                          conv.bias))
        if i % 2 == 1:
            x, lengths = torch.nn.functional.max_pool2d(x, 2), lengths // 2
    x = torch.where(valid_mask(lengths, x.shape[2])[:, None, :, None], x, 0.0)
    return frontend.project(x)            # (its column order: tests/test_model.py)


def test_frontend_same_outputs_and_gradients_with_the_fused_op(monkeypatch):
    """VGGFrontend with the fused ops against the torch composition and against the forward
    before them: the same outputs and parameter gradients up to float rounding (the conv adds
    its bias inside on the torch path, the op after it). Training's features (no gradient):
    the first-conv op, then the fused op three times, two pooled, each with its conv's bias.
    Features that need a gradient: cuDNN's first conv and the fused op four times, the input
    gradient too. kernels=False never calls the ops."""
    torch.manual_seed(0)
    frontend = VGGFrontend(80, (4, 6), 16).to(DEV)
    feats = torch.randn(3, 41, 80, device=DEV)
    lengths = torch.tensor([41, 17, 4], device=DEV)
    calls = []

    def counted(x, lengths, pool, bias):
        calls.append((pool, next(i for i, conv in enumerate(frontend.convs) if conv.bias is bias)))
        return masked_relu_pool(x, lengths, pool, bias)
    monkeypatch.setattr(model_module, "masked_relu_pool", counted)
    for input_grad, ops in ((False, [(True, 1), (False, 2), (True, 3)]),
                            (True, [(False, 0), (True, 1), (False, 2), (True, 3)])):
        calls.clear()
        fused, fused_lengths = _frontend_run(frontend, feats, lengths, "triton", input_grad)
        assert calls == ops
        torch_ops, torch_lengths = _frontend_run(frontend, feats, lengths, "torch", input_grad)
        assert torch.equal(fused_lengths, torch_lengths)
        assert torch.equal(fused_lengths, lengths // 4)
        with torch.no_grad():
            before = _frontend_as_before(frontend, feats, lengths)
        torch.testing.assert_close(fused[0], before, rtol=1e-5, atol=1e-6)
        assert torch.equal(torch_ops[0], before)               # the torch path: bit for bit
        for a, b in zip(fused, torch_ops, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    frontend.kernels = False
    calls.clear()
    _frontend_run(frontend, feats, lengths, "triton")
    assert calls == []


def test_frontend_activations_and_their_gradients_stay_channels_last(monkeypatch):
    """Every op input and every gradient arriving at an op is channels-last, the first conv's
    one-channel input and the projection's flatten included: otherwise the launcher copies
    the tensor (on the H200, the first conv's NCHW output and its gradient cost ~7 ms of an
    87 ms paper-size step)."""
    torch.manual_seed(0)
    frontend = VGGFrontend(80, (4, 6), 16).to(DEV)
    feats = torch.randn(3, 41, 80, device=DEV)
    lengths = torch.tensor([41, 17, 4], device=DEV)
    layouts = {"input": [], "grad": []}

    def recorded(x, lengths, pool, bias):
        layouts["input"].append(x.is_contiguous(memory_format=CL))
        y = masked_relu_pool(x, lengths, pool, bias)
        y.register_hook(lambda g: layouts["grad"].append(g.is_contiguous(memory_format=CL)))
        return y
    monkeypatch.setattr(model_module, "masked_relu_pool", recorded)
    _frontend_run(frontend, feats, lengths, "triton")                   # the first-conv op
    _frontend_run(frontend, feats, lengths, "triton", input_grad=True)  # cuDNN's conv 1
    assert layouts == {"input": [True] * 7, "grad": [True] * 7}


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("pool", [False, True])
def test_gpu_bf16_error_ratio(pool):
    """bf16 at a frontend-like shape (64 channels, 80 mels, odd T): the kernel's error
    against an fp64 reference at most ~2x torch's bf16 composition's (both are exact
    selections, so in fact equal)."""
    x = _activations((4, 64, 301, 80), ties=False, dtype=torch.bfloat16)
    lengths = torch.tensor([301, 150, 1, 0], device="cuda")
    dy = torch.randn(masked_relu_pool_reference(x, lengths, pool).shape, device="cuda")
    ours = _run(masked_relu_pool, x, lengths, pool, dy)
    torch_bf16 = _run(masked_relu_pool_reference, x, lengths, pool, dy)
    reference = [t.double() for t in
                 _run(masked_relu_pool_reference, x.double(), lengths, pool, dy.double())]
    assert_error_ratio(ours, torch_bf16, reference)
    for a, b in zip(ours, torch_bf16, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_frontend_under_autocast_matches_torch_backend():
    """bf16 autocast, paper channels: the fused frontend (the op adds each conv's bias in
    fp32 registers, cuDNN's path in bf16) against torch's ops by the error-ratio rule, both
    measured against the fp32 frontend: output, input and parameter gradients."""
    frontend = VGGFrontend(80, (64, 128), 256).cuda()
    feats = torch.randn(4, 203, 80, device="cuda")
    lengths = torch.tensor([203, 120, 9, 4], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fused, _ = _frontend_run(frontend, feats, lengths, "auto")
        torch_ops, _ = _frontend_run(frontend, feats, lengths, "torch")
    reference, _ = _frontend_run(frontend, feats, lengths, "torch")      # fp32
    assert_error_ratio([t.float() for t in fused], [t.float() for t in torch_ops],
                       [t.double() for t in reference])


@pytest.mark.gpu
def test_gpu_cuda_graph_and_no_sync():
    from orthoasr.graphs import call_without_sync, capture_graph
    x = _activations((4, 64, 101, 80), ties=False, dtype=torch.bfloat16).requires_grad_()
    lengths = torch.tensor([101, 60, 1, 77], device="cuda")

    def relu_then_pool(op, x):
        return op(op(x, lengths, False), lengths, True)

    def step():
        z = relu_then_pool(masked_relu_pool, x)
        (dx,) = torch.autograd.grad(z, x, torch.ones_like(z))
        return z, dx

    step()
    call_without_sync(step)
    graph, (z, dx) = capture_graph(step)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    lengths.copy_(torch.tensor([50, 101, 3, 0], device="cuda"))
    graph.replay()
    z_ref = relu_then_pool(masked_relu_pool_reference, x)
    (dx_ref,) = torch.autograd.grad(z_ref, x, torch.ones_like(z_ref))
    assert torch.equal(z, z_ref) and torch.equal(dx, dx_ref)


SM90_COMPILE = """
import itertools
from orthoasr.kernels import frontend as fk
for pool, has_bias in itertools.product((False, True), repeat=2):
    blk = fk._blocks(1000, 80 // (1 + pool), 64)
    warps = blk.pop("num_warps")
    types = {"bias_ptr": "*fp32", "dbias_ptr": "*fp32", "len_ptr": "*i64"}
    for kernel in (fk._masked_relu_pool_fwd_kernel, fk._masked_relu_pool_bwd_kernel):
        compile_sm90(kernel, dict(S=2 if pool else 1, HAS_BIAS=has_bias, **blk), types, warps)
"""


def test_kernels_compile_for_sm90():
    """Both kernels, with and without pool and bias, bf16 at the paper frontend's 64
    channels (tests/sm90.py)."""
    assert_compiles_for_sm90(SM90_COMPILE)
