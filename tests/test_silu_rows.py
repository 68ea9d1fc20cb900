"""kernels/silu_rows.py: the FFN's SiLU products as persistent TMA GEMMs against plain
PyTorch, with a dead chunk, every chunk dead, M and K ending inside a block, and the
persistent and one-program-a-tile grids (interpreter on the CPU)."""

import pytest
import torch
import torch.nn.functional as F

from orthoasr.kernels import gated_matmul as gm
from orthoasr.kernels.silu_rows import silu_rows

DEV = "cuda" if torch.cuda.is_available() else "cpu"
M, K, CHUNK, CHUNKS = 33, 40, 32, 4                 # N = 128: four chunks of one block each
N = CHUNK * CHUNKS
BLOCKS = dict(BM=32, BN=32, BK=32, num_warps=4, num_stages=1)
GRIDS = {"persistent": dict(BLOCKS, programs_per_sm=3), "a program per tile": BLOCKS}


def _operands(seed, b_nk):
    """a [M, K]; b as the module passes it: W1.t() (a view of [N, K]) or W2 ([K, N])."""
    torch.manual_seed(seed)
    a = torch.randn(M, K, device=DEV)
    b = torch.randn(N, K, device=DEV).t() if b_nk else torch.randn(K, N, device=DEV)
    return a, b


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("gates", [[0.5, 0.0, 1.5, 1.0], [0.0] * 4])
def test_silu_gate_forward_writes_live_chunks_only(grid, gates):
    a, b = _operands(1, b_nk=True)
    bias = torch.randn(N, device=DEV)
    g = torch.tensor(gates, device=DEV)
    out, pre = (torch.full((M, N), float("nan"), device=DEV) for _ in range(2))
    silu_rows(a, b, out, pre, epi=gm.EPI_SILU_GATE, gates=g, chunk=CHUNK, bias=bias,
              blocks=GRIDS[grid])
    live = g.repeat_interleave(CHUNK) != 0
    expected_pre = a @ b + bias
    torch.testing.assert_close(pre[:, live], expected_pre[:, live], atol=1e-4, rtol=1e-4)
    expected = F.silu(expected_pre) * g.repeat_interleave(CHUNK)
    torch.testing.assert_close(out[:, live], expected[:, live], atol=1e-4, rtol=1e-4)
    assert out[:, ~live].isnan().all() and pre[:, ~live].isnan().all()   # left unwritten


@pytest.mark.parametrize("grid", list(GRIDS))
def test_silu_backward_reads_the_saved_tile(grid):
    a, b = _operands(2, b_nk=False)
    g = torch.tensor([1.0, 0.5, 0.0, 2.0], device=DEV)
    pre = torch.randn(M, N, device=DEV)
    out = torch.full((M, N), float("nan"), device=DEV)
    silu_rows(a, b, out, pre, epi=gm.EPI_SILU_BWD, gates=g, chunk=CHUNK, blocks=GRIDS[grid])
    live = g.repeat_interleave(CHUNK) != 0
    sig = torch.sigmoid(pre)
    expected = (a @ b) * g.repeat_interleave(CHUNK) * sig * (1 + pre * (1 - sig))
    torch.testing.assert_close(out[:, live], expected[:, live], atol=1e-4, rtol=1e-4)
    assert out[:, ~live].isnan().all()


@pytest.mark.parametrize("case", ["no gates, final", "every chunk computed, final",
                                  "forward without pre (inference)"])
def test_silu_rows_without_skipping(case):
    """No gates, or gates whose zero chunks are computed too (skip_dead False: soft gates'
    forward), with zeros at padded frames (final: the dense products read every row); and
    the forward with pre not kept."""
    a, b = _operands(4, b_nk=True)
    bias = torch.randn(N, device=DEV)
    lengths, T = torch.tensor([11, 4, 0], device=DEV), 11            # M = 33 frame rows
    gates = None if case.startswith("no gates") else torch.tensor([0.5, 0.0, 1.5, 1.0],
                                                                  device=DEV)
    final = case.endswith("final")
    out = torch.full((M, N), float("nan"), device=DEV)
    pre = None if case.endswith("(inference)") else torch.full_like(out, float("nan"))
    silu_rows(a, b, out, pre, epi=gm.EPI_SILU_GATE, gates=gates, chunk=CHUNK,
              skip_dead=False, bias=bias, lengths=lengths, T=T, final=final,
              blocks=GRIDS["persistent"])
    g = torch.ones(N, device=DEV) if gates is None else gates.repeat_interleave(CHUNK)
    expected = F.silu(a @ b + bias) * g
    if final:
        expected = torch.where(gm.valid_rows(lengths, T)[:, None], expected, 0.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    if pre is not None:
        torch.testing.assert_close(pre, a @ b + bias, atol=1e-4, rtol=1e-4)


def test_silu_rows_names_what_it_cannot_take():
    a, b = _operands(3, b_nk=False)
    out, aux = torch.empty(M, N, device=DEV), torch.empty(M, N, device=DEV)
    g = torch.ones(CHUNKS, device=DEV)
    with pytest.raises(ValueError, match="silu_rows: chunk 24 x 4 gates must be N=128"):
        silu_rows(a, b, out, aux, epi=gm.EPI_SILU_BWD, gates=g, chunk=24, blocks=BLOCKS)
    with pytest.raises(ValueError, match="silu_rows: epi 0 is not a SiLU epilogue"):
        silu_rows(a, b, out, aux, epi=gm.EPI_STORE, gates=g, chunk=CHUNK, blocks=BLOCKS)
    with pytest.raises(ValueError, match="out/aux must be contiguous"):
        silu_rows(a, b, out, aux.t(), epi=gm.EPI_SILU_BWD, gates=g, chunk=CHUNK,
                  blocks=BLOCKS)
    with pytest.raises(ValueError, match="aux is the backward's saved pre"):
        silu_rows(a, b, out, None, epi=gm.EPI_SILU_BWD, gates=g, chunk=CHUNK, blocks=BLOCKS)
    with pytest.raises(ValueError, match="final needs lengths and T, and no dead chunk"):
        silu_rows(a, b, out, aux, epi=gm.EPI_SILU_BWD, gates=g, chunk=CHUNK, final=True,
                  lengths=torch.tensor([M], device=DEV), T=M, blocks=BLOCKS)


@pytest.mark.gpu
@pytest.mark.parametrize("epi", [gm.EPI_SILU_GATE, gm.EPI_SILU_BWD])
def test_gpu_silu_rows_bf16_at_paper_width(epi):
    """At paper width in bf16 with the default (persistent) grid and a dead chunk: the live
    columns within twice the error of PyTorch's bf16 ops against an fp64 reference, and
    equal to the row GEMM's (the module's) to bf16 rounding on the valid rows."""
    from error_ratio import assert_error_ratio

    M, D, FF = 8011, 384, 1536             # M ends inside a 128-row block
    torch.manual_seed(5)
    bf = torch.bfloat16
    a = torch.randn(M, D, device="cuda", dtype=bf)
    w1 = (torch.randn(FF, D, device="cuda") / 20).to(bf)       # [N, K]: W1, read as W1.t()
    w2 = (torch.randn(D, FF, device="cuda") / 20).to(bf)       # [K, N]: W2
    w = w1.t() if epi == gm.EPI_SILU_GATE else w2
    bias = torch.randn(FF, device="cuda") if epi == gm.EPI_SILU_GATE else None
    g = torch.tensor([1.0, 0.0, 0.5, 1.0], device="cuda")
    live = g.repeat_interleave(FF // 4) != 0
    saved = torch.randn(M, FF, device="cuda", dtype=bf)          # pre, for the backward

    def run(product):
        out, pre = torch.empty(M, FF, device="cuda", dtype=bf), saved.clone()
        product(out, pre)
        return out[:, live].double(), pre[:, live].double()

    ours = run(lambda out, pre: silu_rows(a, w, out, pre, epi=epi, gates=g, chunk=FF // 4,
                                          bias=bias))
    rows = run(lambda out, pre: gm.rows_gemm(
        a, w, out, bias=bias, chunk_axis=1, epi=epi, aux=pre, lengths=torch.tensor(
            [M], device="cuda"), T=M, gates=g, chunk=FF // 4, num_chunks=4, skip_dead=True))

    def reference(dtype):
        acc = (a.to(dtype) @ w.to(dtype)).to(dtype)
        if epi == gm.EPI_SILU_GATE:
            pre = (acc.float() + bias).to(dtype) if dtype == bf else acc + bias.double()
            out = F.silu(pre) * g.to(dtype).repeat_interleave(FF // 4)
        else:
            pre = saved.to(dtype)
            sig = torch.sigmoid(pre)
            out = acc * g.to(dtype).repeat_interleave(FF // 4) * sig * (1 + pre * (1 - sig))
        return out[:, live].double(), pre[:, live].double()

    assert_error_ratio(ours, reference(bf), reference(torch.float64))
    for mine, theirs in zip(ours, rows, strict=True):
        torch.testing.assert_close(mine, theirs, atol=3e-2, rtol=2e-2)
