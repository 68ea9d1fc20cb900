"""kernels/gemm_norm_bwd.py: a chunked product with the LayerNorm backward in its epilogue,
against the fp64 PyTorch reference (interpreter on the CPU), and against the unfused row GEMM
and LayerNorm backward with a residual step."""

import pytest
import torch
from error_ratio import assert_error_ratio

from orthoasr.kernels import gated_matmul as gm
from orthoasr.kernels.gemm_norm_bwd import fusable, gemm_norm_bwd, gemm_norm_bwd_reference
from orthoasr.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd
from orthoasr.kernels.residual_step import Residual

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CHUNKS = 4
GATES = {"all_on": [1.0, 1.0, 1.0, 1.0], "half": [1.0, 0.0, 0.0, 1.0],
         "one_on": [0.0, 0.0, 1.0, 0.0], "all_off": [0.0, 0.0, 0.0, 0.0]}


def _case(D, K, T=11, lengths=(11, 4, 1), dtype=torch.float32, seed=0):
    """(lengths, a [M, K], b [K, D], x [M, D], weight, mean, rstd), NaN at a's and x's
    padded rows (never read)."""
    torch.manual_seed(seed)
    lengths = torch.tensor(lengths, device=DEV)
    M = lengths.shape[0] * T
    rows = gm.valid_rows(lengths, T)
    a = torch.randn(M, K, device=DEV).masked_fill(~rows[:, None], float("nan")).to(dtype)
    b = (torch.randn(K, D, device=DEV) / K ** 0.5).to(dtype)
    x = (1.0 + torch.randn(M, D, device=DEV)).masked_fill(~rows[:, None], float("nan"))
    weight = 1 + 0.2 * torch.randn(D, device=DEV)
    _, mean, rstd = layer_norm_fwd(x, weight, torch.zeros_like(weight), lengths, T)
    return lengths, a, b, x, weight, mean, rstd


@pytest.mark.parametrize("gate_case", list(GATES))
@pytest.mark.parametrize("D", [40, 144])
def test_matches_fp64_reference(D, gate_case):
    K, T = 64, 11
    lengths, a, b, x, weight, mean, rstd = _case(D, K, T)
    gates = torch.tensor(GATES[gate_case], device=DEV)
    dx, dw, db = gemm_norm_bwd(a, b, x, weight, mean, rstd, lengths=lengths, T=T, gates=gates,
                               chunk=K // CHUNKS, num_chunks=CHUNKS, skip_dead=True)
    live_k = (gates != 0).repeat_interleave(K // CHUNKS)
    ref = gemm_norm_bwd_reference(a.nan_to_num(), b, x.nan_to_num(), weight, lengths, T,
                                  live_k)
    for got, want, name in zip((dx, dw, db), ref, ("dx", "dweight", "dbias")):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4, msg=name)
    padded = ~gm.valid_rows(lengths, T)
    assert not dx[padded].any()                                # padded rows: exactly 0
    if gate_case == "all_off":                                 # a dead module: nothing
        assert not dx.any() and not dw.any() and not db.any()


def test_without_gates_every_chunk_counts():
    D, K, T = 40, 64, 11
    lengths, a, b, x, weight, mean, rstd = _case(D, K, T, seed=1)
    dx, dw, db = gemm_norm_bwd(a, b, x, weight, mean, rstd, lengths=lengths, T=T,
                               chunk=K // 2, num_chunks=2)
    ref = gemm_norm_bwd_reference(a.nan_to_num(), b, x.nan_to_num(), weight, lengths, T)
    for got, want in zip((dx, dw, db), ref):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("p", [0.0, 0.25])
def test_residual_step_matches_unfused_kernels(p):
    """With the stream's gradient added and y's gradient written (dropped out where the
    forward dropped): the row GEMM's d_xn and layer_norm_bwd give the same."""
    D, K, T = 144, 64, 11
    lengths, a, b, x, weight, mean, rstd = _case(D, K, T, seed=2)
    gates = torch.tensor(GATES["half"], device=DEV)
    x_grad = torch.randn_like(x)
    seed = torch.tensor([1234], device=DEV)
    outs = []
    for fused in (True, False):
        y_grad = torch.full_like(x, float("nan"))
        res = Residual(seed, 0.5, p, x_grad=x_grad, y_grad=y_grad)
        args = dict(lengths=lengths, T=T, gates=gates)
        if fused:
            dx = gemm_norm_bwd(a, b, x, weight, mean, rstd, chunk=K // CHUNKS,
                               num_chunks=CHUNKS, skip_dead=True, residual=res, **args)[0]
        else:
            d_xn = torch.empty(x.shape, device=DEV)
            gm.rows_gemm(a, b, d_xn, chunk=K // CHUNKS, num_chunks=CHUNKS, chunk_axis=2,
                         skip_dead=True, **args)
            dx = layer_norm_bwd(d_xn, x, weight, mean, rstd, skip_dead=True, residual=res,
                                **args)[0]
        outs.append((dx, y_grad))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (outs[0][1] == 0).any() == (p > 0)     # the dropout mask reached y's gradient


def test_bad_shapes_are_refused():
    lengths, a, b, x, weight, mean, rstd = _case(40, 64)
    with pytest.raises(ValueError, match="gemm_norm_bwd: a"):
        gemm_norm_bwd(a, b[:, :30], x, weight, mean, rstd, lengths=lengths, T=11, chunk=16,
                      num_chunks=4)
    with pytest.raises(ValueError, match="K = chunk"):
        gemm_norm_bwd(a, b, x, weight, mean, rstd, lengths=lengths, T=11, chunk=16,
                      num_chunks=3)
    assert fusable(384) and fusable(512) and not fusable(1024)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("gate_case", ["all_on", "half", "all_off"])
def test_gpu_bf16_error_ratio_at_paper_width(gate_case):
    """bf16 operands at the paper FFN's D=384, K=1536 (TMA on Hopper, the compiled tiles):
    the error against fp64 at most the error-ratio rule's multiple of PyTorch's own bf16
    product followed by an fp32 LayerNorm backward."""
    D, K, T = 384, 1536, 250
    lengths = torch.randint(T // 2, T + 1, (8,))
    lengths[0] = T
    lengths, a, b, x, weight, mean, rstd = _case(D, K, T, tuple(lengths.tolist()),
                                                 dtype=torch.bfloat16, seed=3)
    gates = torch.tensor(GATES[gate_case], device=DEV)
    dx, dw, db = gemm_norm_bwd(a, b, x, weight, mean, rstd, lengths=lengths, T=T, gates=gates,
                               chunk=K // CHUNKS, num_chunks=CHUNKS, skip_dead=True)
    live_k = (gates != 0).repeat_interleave(K // CHUNKS)
    ref = gemm_norm_bwd_reference(a.nan_to_num(), b, x.nan_to_num(), weight, lengths, T,
                                  live_k)
    # PyTorch in bf16: the product rounded to bf16, then the norm's backward in fp32
    b_live = torch.where(live_k[:, None], b, 0)
    d_xn = torch.where(gm.valid_rows(lengths, T)[:, None], a.nan_to_num() @ b_live, 0)
    torch_bf16 = gemm_norm_bwd_reference(d_xn.float(), torch.eye(D, device=DEV),
                                         x.nan_to_num(), weight, lengths, T)
    assert_error_ratio((dx, dw, db), torch_bf16, ref)
