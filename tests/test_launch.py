"""kernels/launch.py: host helpers, and the cached direct launch against Triton's own."""

import math

import pytest
import torch
import triton
import triton.language as tl

from orthoasr.kernels import launch as launch_module
from orthoasr.kernels.common import await_producers, sigmoid, warp_uniform
from orthoasr.kernels.launch import cdiv, gpu_asm, launch, next_pow2, programmatic_launch


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, stride, factor, BLOCK: tl.constexpr,
                  SHIFT: tl.constexpr = 0):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    x = tl.load(x_ptr + offs * stride, mask=keep)
    tl.store(y_ptr + offs, x * factor + SHIFT, mask=keep)


def test_host_helpers_match_math():
    for a in range(0, 300):
        for b in (1, 3, 16, 64):
            assert cdiv(a, b) == math.ceil(a / b)
    for n in range(1, 2000):
        assert next_pow2(n) == 2 ** math.ceil(math.log2(n))


def test_specialisation_key_separates_what_triton_separates():
    """Values Triton compiles differently for must never share a cached kernel."""
    spec = launch_module._spec
    for a, b in ((1, 17), (16, 17), (2 ** 31 - 16, 2 ** 31), (2 ** 62, 2 ** 63), (True, False)):
        assert spec(a) != spec(b), (a, b)
    x = torch.zeros(64)
    assert spec(x) != spec(x[1:])                      # 16-byte aligned vs not
    assert spec(x) != spec(x.double())
    assert spec(3) == spec(5) and spec(32) == spec(48)  # same Triton specialisation


def test_specialisation_key_of_tma_descriptors():
    """A descriptor's key: hashable, the same for another tensor of the same layout, apart
    for another block shape, dtype, or a shape that is no longer a multiple of 16."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    spec = launch_module._spec
    a, b = torch.zeros(64, 32), torch.zeros(64, 32)
    key = spec(TensorDescriptor.from_tensor(a, [16, 16]))
    assert hash(key) == hash(spec(TensorDescriptor.from_tensor(b, [16, 16])))
    for other in (TensorDescriptor.from_tensor(a, [32, 16]),
                  TensorDescriptor.from_tensor(a.double(), [16, 16]),
                  TensorDescriptor.from_tensor(torch.zeros(60, 32), [16, 16])):
        assert spec(other) != key


def test_direct_path_switch_and_supported_versions(monkeypatch):
    """ORTHOASR_DIRECT_LAUNCH=0 and a Triton outside the checked versions both turn the
    direct path off; with it off, a cache miss stores no direct launcher."""
    version = ".".join(map(str, launch_module.DIRECT_TRITON_VERSIONS[0])) + ".0"
    monkeypatch.setattr(triton, "__version__", version)
    monkeypatch.delenv("ORTHOASR_DIRECT_LAUNCH", raising=False)
    assert launch_module.direct_launch_enabled()
    monkeypatch.setenv("ORTHOASR_DIRECT_LAUNCH", "0")
    assert not launch_module.direct_launch_enabled()
    assert launch_module._direct_launcher(None, object(), (), {}) is None
    monkeypatch.setenv("ORTHOASR_DIRECT_LAUNCH", "1")
    monkeypatch.setattr(triton, "__version__", "3.99.0")
    assert not launch_module.direct_launch_enabled()


def _scaled(x, n, stride, factor, shift=0, block=32):
    y = torch.full((n,), -1.0, device=x.device)
    launch(_scale_kernel, (cdiv(n, block),), x, y, n, stride, factor, BLOCK=block, SHIFT=shift)
    return y


@pytest.mark.gpu
def test_direct_launch_equals_triton_over_specialisations():
    """Aligned and misaligned pointers, n = 1 / multiple of 16 / other, strides 1 and 2,
    a defaulted constexpr: each specialisation gets its own cached kernel, and the repeated
    (direct) launches give exactly the first (Triton) launch's result."""
    base = torch.randn(4096, device="cuda")
    for offset in (0, 1):                       # 1: a 4-byte, not 16-byte, aligned pointer
        for n in (1, 16, 37, 1000):
            for stride in (1, 2):
                x = base[offset:]
                expected = x[: n * stride: stride] * 1.5
                first = _scaled(x, n, stride, 1.5)
                again = [_scaled(x, n, stride, 1.5) for _ in range(2)]
                torch.testing.assert_close(first, expected, rtol=0, atol=0)
                for y in again:
                    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(_scaled(base, 10, 1, 1.0, shift=3),
                               base[:10] + 3, rtol=0, atol=0)
    direct = [entry for entry in launch_module._cache.values() if entry]
    assert direct, "no launch took the direct path"


@pytest.mark.gpu
def test_direct_launch_is_captured_in_a_cuda_graph():
    from orthoasr.graphs import capture_graph
    x = torch.randn(100, device="cuda")
    y = torch.empty(100, device="cuda")

    def run():
        launch(_scale_kernel, (4,), x, y, 100, 1, 2.0, BLOCK=32)
        return y
    graph, out = capture_graph(run)
    x.copy_(torch.randn(100, device="cuda"))
    graph.replay()
    torch.testing.assert_close(out, x * 2, rtol=0, atol=0)


@triton.jit
def _tma_copy_kernel(x_desc, y_ptr, n_cols, BM: tl.constexpr, BN: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BN)
    tile = x_desc.load([tl.program_id(0) * BM, 0])
    tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], tile * 2, mask=cols[None, :] < n_cols)


@pytest.mark.gpu
def test_direct_launch_with_tma_descriptors_in_and_out_of_a_cuda_graph():
    """Descriptor arguments: the first launch (Triton's path) and the direct ones give the
    same result, a new tensor's descriptor reads the new tensor, and a captured launch reads
    the tensor the descriptor was built on at each replay."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from orthoasr.graphs import capture_graph
    x = torch.randn(64, 32, device="cuda")
    y = torch.empty(64, 32, device="cuda")

    def run(src):
        launch(_tma_copy_kernel, (4,), TensorDescriptor.from_tensor(src, [16, 32]), y, 32,
               BM=16, BN=32)
        return y
    for _ in range(3):
        torch.testing.assert_close(run(x), x * 2, rtol=0, atol=0)
    other = torch.randn(64, 32, device="cuda")
    torch.testing.assert_close(run(other), other * 2, rtol=0, atol=0)
    assert any(entry for key, entry in launch_module._cache.items()
               if key[0] is _tma_copy_kernel)
    graph, out = capture_graph(lambda: run(x))
    x.copy_(torch.randn(64, 32, device="cuda"))
    graph.replay()
    torch.testing.assert_close(out, x * 2, rtol=0, atol=0)


@pytest.mark.gpu
def test_tensor_by_keyword_is_refused():
    x = torch.randn(8, device="cuda")
    y = torch.empty(8, device="cuda")
    with pytest.raises(TypeError, match="positionally"):
        launch(_scale_kernel, (1,), x, y_ptr=y, n=8, stride=1, factor=1.0, BLOCK=8)


@pytest.mark.gpu
@pytest.mark.parametrize("setting", [programmatic_launch, gpu_asm])
@pytest.mark.parametrize("kind", ["ffn1", "conv", "mhsa"])
def test_launch_settings_give_the_plain_launch_results(kind, setting):
    """A gated module's fwd+bwd (bf16 autocast, soft gates, padded batch), eager and replayed
    in a CUDA graph, gives the same output and gradients with each launch setting on as off:
    programmatic dependent launch (a kernel that read its inputs before its predecessor had
    written them would differ by O(1)) and the kernels' GPU-only code (warp_uniform's trip
    counts: a wrong count skips or repeats whole K steps). The atomics' order differs
    between runs only at fp32 rounding. On Hopper, the kernels must then have been launched
    with the setting on."""
    from orthoasr.config import SupernetConfig
    from orthoasr.graphs import capture_graph
    from orthoasr.model import make_module
    # the data from the CPU's generator: the CUDA generator's state after the graph tests
    # above refused an offset increment in torch 2.11 (H200, 2026-12-03)
    torch.manual_seed(0)
    module = make_module(SupernetConfig(budgets=(1.0,), dropout=0.0), kind).cuda()
    B, T = 8, 200
    x = torch.randn(B, T, 384).cuda().requires_grad_()
    lengths = torch.tensor([200, 37, 150, 199, 64, 1, 128, 90], device="cuda")
    gates = torch.rand(getattr(module, "num_gates", 1)).cuda().requires_grad_()
    dy = torch.randn(B, T, 384).cuda()
    inputs = [x, gates, *module.parameters()]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(x, lengths, gates)
        return (out, *torch.autograd.grad(out, inputs, dy))

    results = {}
    for on in (False, True):
        with setting(on):
            # detached: a live autograd graph from the eager call would tie its leaves'
            # gradient nodes to the default stream, which the capture may not wait on
            eager = [t.detach().float().clone() for t in step()]
            graph, graphed = capture_graph(step)
            graph.replay()
            torch.cuda.synchronize()
            results[on] = eager, [t.detach().float().clone() for t in graphed]
    for run in results[True]:          # eager, then graphed, against the plain eager call
        for plain, programmatic in zip(results[False][0], run):
            assert torch.linalg.norm(programmatic - plain) <= \
                1e-3 * torch.linalg.norm(plain) + 1e-6
    flag = ("launch_pdl", True) if setting is programmatic_launch else ("GPU", True)
    if torch.cuda.get_device_capability()[0] >= 9 or setting is gpu_asm:
        assert any(flag in key[-1] for key in launch_module._cache), \
            f"no kernel was launched with {flag}"


@triton.jit
def _slow_write_kernel(out_ptr, n_iter, PDL: tl.constexpr = False):
    await_producers(PDL)
    acc = 0.0
    for _ in range(n_iter):       # ~1 ms of dependent arithmetic before the store
        acc = acc * 0.999 + 1.0
    tl.store(out_ptr, acc)


@triton.jit
def _copy_first_kernel(src_ptr, dst_ptr, PDL: tl.constexpr = False):
    await_producers(PDL)
    tl.store(dst_ptr, tl.load(src_ptr))


@pytest.mark.gpu
def test_a_programmatic_launch_reads_what_the_kernel_before_wrote():
    """The second kernel may be scheduled while the first (one program, which lets it be
    scheduled at once) still computes; `await_producers` must hold it until the first has
    stored. Without the wait, the second reads the buffer's old 0."""
    src = torch.zeros(1, device="cuda")
    dst = torch.full((1,), -1.0, device="cuda")
    for _ in range(3):
        src.zero_()
        launch(_slow_write_kernel, (1,), src, 200_000)
        launch(_copy_first_kernel, (1,), src, dst)
        torch.cuda.synchronize()
        assert src.item() > 900 and dst.item() == src.item()


@triton.jit
def _uniform_count_kernel(count_ptr, out_ptr, GPU: tl.constexpr = False):
    # out[0] = the sum of 1..count, by a loop whose trip count comes from memory
    n = warp_uniform(tl.load(count_ptr), GPU)
    acc = 0
    for i in range(0, n):
        acc += i + 1
    tl.store(out_ptr, acc)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_warp_uniform_keeps_the_loaded_trip_count(device):
    """A loop bounded by warp_uniform's count runs that many steps, for counts 0 to 40
    (on CUDA through its shuffle; under the interpreter as given)."""
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("Triton runs CPU tensors only under the interpreter (no GPU)")
    out = torch.zeros(1, dtype=torch.int32, device=device)
    for count in (0, 1, 2, 7, 40):
        launch(_uniform_count_kernel, (3,), torch.tensor([count], dtype=torch.int32,
                                                         device=device), out, num_warps=4)
        assert int(out) == count * (count + 1) // 2
    if device == "cuda":
        assert any(key[0] is _uniform_count_kernel and ("GPU", True) in key[-1]
                   for key in launch_module._cache)


@triton.jit
def _sigmoid_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, GPU: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    tl.store(out_ptr + offs, sigmoid(tl.load(x_ptr + offs, mask=keep), GPU), mask=keep)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sigmoid_matches_torch(device):
    """common.sigmoid (on CUDA the approximate exp2 and reciprocal with denormals flushed,
    under the interpreter tl.sigmoid) against fp64 over [-120, 120] and the ends: within
    a few fp32 ulps where the result is a normal number, under 1e-37 below that, 1 past
    200, and NaN for NaN."""
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("Triton runs CPU tensors only under the interpreter (no GPU)")
    x = torch.cat([torch.linspace(-120, 120, 40001), torch.tensor(
        [0.0, -0.0, 1e-30, -1e-30, 200.0, -200.0, 1e30, -1e30, float("inf"), float("-inf"),
         float("nan")])]).to(device)
    out = torch.empty_like(x)
    launch(_sigmoid_kernel, (cdiv(x.numel(), 1024),), x, out, x.numel(), BLOCK=1024)
    exact = torch.sigmoid(x.double()).cpu()
    got = out.double().cpu()
    normal = exact >= torch.finfo(torch.float32).tiny
    # 4 ulps, plus what the argument's errors move exp2's result by: rounding -x log2(e) to
    # fp32 (|x| 2^-24 of it) and log2(e) itself rounded to fp32 (|x| ln2 |log2e_32 - log2e|;
    # 5 ulps at x = -45, where an H100 read 27.1 ulps against 26.9 without this term)
    eps = torch.finfo(torch.float32).eps
    log2e = math.log2(math.e)
    constant_error = abs(torch.tensor(log2e, dtype=torch.float32).item() - log2e) * math.log(2)
    abs_x = x.cpu().double().abs()[normal]
    bound = ((4 + abs_x / 2) * eps + abs_x * constant_error) * exact[normal]
    assert ((got[normal] - exact[normal]).abs() <= bound).all()
    tiny = ~normal & ~exact.isnan()
    assert (got[tiny] < 1e-37).all() and (got[tiny] >= 0).all()
    assert got[x.cpu() >= 200].eq(1.0).all() and got[-1].isnan()
    if device == "cuda":
        assert any(key[0] is _sigmoid_kernel and ("GPU", True) in key[-1]
                   for key in launch_module._cache)
