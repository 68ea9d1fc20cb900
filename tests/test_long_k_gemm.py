"""kernels/long_k_gemm.py: the Gluon long-K product against plain PyTorch on the GPU (Gluon
does not run under the CPU interpreter), with padded frames (NaN in them), a row tile past
M, dead chunks, the bias modes and both weight layouts; and `rows_gemm` handing it its
K-chunked plain stores."""

import pytest
import torch
import triton
from error_ratio import assert_error_ratio

from orthoasr.kernels import gated_matmul as gm
from orthoasr.kernels import long_k_gemm as lk

pytestmark = pytest.mark.gpu

T = 37
LENGTHS = [37, 1, 20, 37, 5, 36, 2]           # 259 rows: the last row tile has 3


def _case(K, N, chunks, weight_nk, seed):
    torch.manual_seed(seed)
    lengths = torch.tensor(LENGTHS, device="cuda")
    rows = gm.valid_rows(lengths, T)
    a = torch.randn(len(LENGTHS) * T, K, device="cuda", dtype=torch.bfloat16)
    a[~rows] = float("nan")           # TMA reads padded rows too: none may leak
    w = (torch.randn((N, K) if weight_nk else (K, N), device="cuda") / K ** 0.5)
    b = w.to(torch.bfloat16).t() if weight_nk else w.to(torch.bfloat16)   # [K, N] view
    return lengths, rows, a, b


def _reference(a, b, rows, bias, bias_scale, live_k, scale, dtype):
    """The product over the live chunks' K rows in `dtype`, zeros at padded rows."""
    a = torch.where(rows[:, None], a.to(dtype), 0.0)
    b = torch.where(live_k[:, None], b.to(dtype), 0.0)
    out = a @ b
    if bias is not None:
        out = out + bias.to(dtype) * bias_scale
    return torch.where(rows[:, None], out * scale, 0.0)


@pytest.mark.parametrize("K,N,chunks", [(1536, 384, 4), (1152, 384, 6), (512, 256, 2)])
@pytest.mark.parametrize("weight_nk", [False, True])
@pytest.mark.parametrize("gating,bias_mode", [
    ("none", gm.BIAS_PLAIN), ("soft", gm.BIAS_GATE0), ("dead", gm.BIAS_ANY_GATE),
    ("all-dead", gm.BIAS_ANY_GATE), ("all-dead", None)])
def test_gpu_long_k_product_against_pytorch(K, N, chunks, weight_nk, gating, bias_mode):
    lengths, rows, a, b = _case(K, N, chunks, weight_nk, seed=K + N + chunks)
    assert lk.applies(a, b, a.new_empty(a.shape[0], N), K // chunks, 0)
    gates = {"none": None, "soft": torch.rand(chunks, device="cuda") + 0.25,
             "dead": torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 1.0][:chunks], device="cuda"),
             "all-dead": torch.zeros(chunks, device="cuda")}[gating]
    skip_dead = gating in ("dead", "all-dead")
    bias = None if bias_mode is None else torch.randn(N, device="cuda", dtype=torch.bfloat16)
    scale_out = gating == "soft" and bias_mode == gm.BIAS_GATE0
    out = torch.full((a.shape[0], N), float("nan"), device="cuda", dtype=torch.bfloat16)
    lk.long_k_gemm(a, b, out, lengths=lengths, T=T, bias=bias, bias_mode=bias_mode or 0,
                   gates=gates, chunk=K // chunks, num_chunks=chunks, skip_dead=skip_dead,
                   scale_out=scale_out)
    g = torch.ones(chunks, device="cuda") if gates is None else gates
    live_k = ((g != 0) if skip_dead else torch.ones_like(g, dtype=torch.bool))
    live_k = live_k.repeat_interleave(K // chunks)
    bias_scale = {None: 0.0, gm.BIAS_PLAIN: 1.0, gm.BIAS_ANY_GATE: float((g != 0).any()),
                  gm.BIAS_GATE0: g[0].item()}[bias_mode]
    scale = g[0].item() if scale_out else 1.0
    expected = [_reference(a, b, rows, bias, bias_scale, live_k, scale, dtype)
                for dtype in (torch.bfloat16, torch.float64)]
    assert not out.isnan().any()
    if gating == "all-dead" and bias_mode != gm.BIAS_PLAIN:
        assert torch.equal(out, torch.zeros_like(out))        # exactly 0, the bias too
    assert torch.equal(out[~rows], torch.zeros_like(out[~rows]))
    assert_error_ratio([out], [expected[0]], [expected[1]], rtol=2e-3)


@pytest.mark.skipif(tuple(int(v) for v in triton.__version__.split(".")[:2]) != (3, 6),
                    reason="the Gluon kernel is written against Triton 3.6")
@pytest.mark.parametrize("weight_nk", [False, True])
def test_gpu_rows_gemm_hands_its_k_chunked_stores_to_the_gluon_kernel(weight_nk):
    """At the FFN's shapes, rows_gemm's K-chunked plain store takes the Gluon kernel and
    gives the Triton row GEMM's result (ORTHOASR_GLUON's switch off) on valid rows."""
    lengths, rows, a, b = _case(1536, 384, 4, weight_nk, seed=3)
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0], device="cuda")
    bias = torch.randn(384, device="cuda", dtype=torch.bfloat16)
    outs = []
    for on in (True, False):
        out = torch.full((a.shape[0], 384), float("nan"), device="cuda", dtype=torch.bfloat16)
        with lk.gluon_products.within(on):
            assert lk.applies(a, b, out, 384, 0) == on
            gm.rows_gemm(a, b, out, lengths=lengths, T=T, bias=bias, gates=gates, chunk=384,
                         num_chunks=4, chunk_axis=2, skip_dead=True,
                         bias_mode=gm.BIAS_ANY_GATE, final=True)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=2e-2, rtol=1e-2)
