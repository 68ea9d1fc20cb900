"""kernels/gated_matmul.py: the row GEMM's epilogues against plain PyTorch, with padded
frames, chunk gates and dead chunks (interpreter on the CPU)."""

import pytest
import torch
import torch.nn.functional as F
from error_ratio import assert_error_ratio
from gated_case import CHUNKS, DEV, B, K, N, T, frames_case, poisoned

from orthoasr.kernels import gated_matmul as gm


@pytest.mark.parametrize("skip_dead", [False, True])
def test_store_epilogue_with_k_chunks_and_bias_while_any_gate_is_on(skip_dead):
    lengths, a, b, gates = frames_case()
    bias = torch.randn(N, device=DEV)
    out = gm.rows_gemm(a, b, poisoned(B * T, N), lengths=lengths, T=T, bias=bias,
                       gates=gates, chunk=K // CHUNKS, num_chunks=CHUNKS, chunk_axis=2,
                       skip_dead=skip_dead, bias_mode=gm.BIAS_ANY_GATE, final=True)
    live_k = None
    if skip_dead:      # the K loop leaves out the dead chunk's rows of b
        live_k = (gates != 0).repeat_interleave(K // CHUNKS)
    expected = gm.rows_gemm_reference(a, b, lengths, T, bias, live_k)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    off = gm.rows_gemm(a, b, poisoned(B * T, N), lengths=lengths, T=T, bias=bias,
                       gates=torch.zeros(CHUNKS, device=DEV), chunk=K // CHUNKS,
                       num_chunks=CHUNKS, chunk_axis=2, skip_dead=True,
                       bias_mode=gm.BIAS_ANY_GATE, final=True)
    assert torch.equal(off, torch.zeros_like(off))        # all off: exactly 0, bias too


@pytest.mark.parametrize("chunks", [5, 16, 20])
def test_k_chunk_walk_finds_each_live_chunk(chunks):
    """The K-loop walks the live chunks with the chunk and the step within it carried from
    step to step: the first chunk dead, the last live, chunks of one step (chunk 3 < BK)."""
    torch.manual_seed(chunks)
    lengths = torch.tensor([11, 4, 1], device=DEV)
    k = 3 * chunks
    a, b = torch.randn(B * T, k, device=DEV), torch.randn(k, N, device=DEV)
    gates = (torch.rand(chunks, device=DEV) > 0.4).float()
    gates[0], gates[-1] = 0.0, 1.0
    for g in (gates, torch.ones(chunks, device=DEV)):
        out = gm.rows_gemm(a, b, poisoned(B * T, N), lengths=lengths, T=T, gates=g, chunk=3,
                           num_chunks=chunks, chunk_axis=2, skip_dead=True, final=True)
        expected = gm.rows_gemm_reference(a, b, lengths, T, None,
                                          (g != 0).repeat_interleave(3))
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_silu_gate_epilogue_saves_pre_activation():
    lengths, a, b, gates = frames_case(1)
    bias = torch.randn(N, device=DEV)
    pre, hidden = poisoned(B * T, N), poisoned(B * T, N)
    gm.rows_gemm(a, b, hidden, lengths=lengths, T=T, bias=bias, gates=gates,
                 chunk=N // CHUNKS, num_chunks=CHUNKS, chunk_axis=1, skip_dead=True,
                 epi=gm.EPI_SILU_GATE, aux=pre)
    ref_pre = a @ b + bias
    ref = F.silu(ref_pre) * gates.repeat_interleave(N // CHUNKS)
    rows = gm.valid_rows(lengths, T)
    live = (gates != 0).repeat_interleave(N // CHUNKS)
    written = rows[:, None] & live[None, :]
    torch.testing.assert_close(hidden[written], ref[written], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pre[written], ref_pre[written], atol=1e-4, rtol=1e-4)
    assert hidden[~written].isnan().all()      # padded rows and the dead chunk: not written


def test_silu_gate_epilogue_final_writes_zeros_at_padded_rows():
    """final (nothing skipped, soft gates): every padded row of hidden is 0, the rows of a
    tile with no valid row among them too (the interpreter's 32-row tiles: the last one)."""
    _, a, b, gates = frames_case(1)
    lengths = torch.tensor([11, 4, 0], device=DEV)
    bias = torch.randn(N, device=DEV)
    pre, hidden = poisoned(B * T, N), poisoned(B * T, N)
    gm.rows_gemm(a, b, hidden, lengths=lengths, T=T, bias=bias, gates=gates,
                 chunk=N // CHUNKS, num_chunks=CHUNKS, chunk_axis=1, epi=gm.EPI_SILU_GATE,
                 aux=pre, final=True)
    rows = gm.valid_rows(lengths, T)
    ref = F.silu(a @ b + bias) * gates.repeat_interleave(N // CHUNKS)
    torch.testing.assert_close(hidden[rows], ref[rows], atol=1e-4, rtol=1e-4)
    assert (hidden[~rows] == 0).all()


@pytest.mark.parametrize("final,skip_dead", [(False, False), (True, False), (True, True)])
def test_silu_backward_epilogue_and_gate_column_sums(final, skip_dead):
    """final: zeros at every padded row too (a product over every row reads them), the rows
    of tiles with no valid row among them (the interpreter's 32-row tiles: the last one);
    with skip_dead a dead chunk's columns are left unwritten (no reader takes them)."""
    lengths, dy, w, gates = frames_case(2)                 # dy [M, K] @ w [K, N] -> d_hidden
    if final:
        lengths = torch.tensor([11, 4, 0], device=DEV)
    pre = torch.randn(B * T, N, device=DEV)
    d_pre, col_sums = poisoned(B * T, N), torch.zeros(N, device=DEV)
    gm.rows_gemm(dy, w, d_pre, lengths=lengths, T=T, gates=gates, chunk=N // CHUNKS,
                 num_chunks=CHUNKS, chunk_axis=1, epi=gm.EPI_SILU_BWD, aux=pre, sum1=col_sums,
                 final=final, skip_dead=skip_dead)
    rows = gm.valid_rows(lengths, T)
    g = gates.repeat_interleave(N // CHUNKS)
    if final:
        assert (d_pre[~rows][:, g != 0] == 0).all()
        if skip_dead:
            assert d_pre[:, g == 0].isnan().all()
        else:
            assert (d_pre[:, g == 0] == 0).all()
    d_hidden = torch.where(rows[:, None], dy @ w, 0.0)
    sig = torch.sigmoid(pre)
    expected = d_hidden * g * sig * (1 + pre * (1 - sig))
    written = rows[:, None] & (g != 0 if skip_dead else torch.ones_like(g, dtype=torch.bool))
    torch.testing.assert_close(d_pre[written], expected[written], atol=1e-4, rtol=1e-4)
    # a skipped chunk's gate gradient is not asked for (hard gates): its sums stay 0
    live = g != 0 if skip_dead else torch.ones_like(g, dtype=torch.bool)
    expected_sums = torch.where(live, (d_hidden * F.silu(pre)).sum(0), 0.0)
    torch.testing.assert_close(chunk_sums(col_sums), chunk_sums(expected_sums), atol=1e-3,
                               rtol=1e-4)


def test_silu_backward_chunk_sums_hold_each_chunks_sum():
    """chunk_sums: sum1 [num_chunks] gets each chunk's gate-gradient sum itself, as the
    column sums add up to; with ungated rows left out; refused without chunk_axis 1, the
    tile sums or a [num_chunks] sum1."""
    lengths, dy, w, gates = frames_case(4)
    pre = torch.randn(B * T, N, device=DEV)
    args = dict(lengths=lengths, T=T, gates=gates, chunk=N // CHUNKS, num_chunks=CHUNKS,
                chunk_axis=1, epi=gm.EPI_SILU_BWD, aux=pre, ungated_rows=T)
    per_column, per_chunk = torch.zeros(N, device=DEV), torch.zeros(CHUNKS, device=DEV)
    gm.rows_gemm(dy, w, poisoned(B * T, N), sum1=per_column, **args)
    gm.rows_gemm(dy, w, poisoned(B * T, N), sum1=per_chunk, chunk_sums=True, **args)
    torch.testing.assert_close(per_chunk, chunk_sums(per_column), atol=1e-4, rtol=1e-5)
    assert per_chunk.abs().sum() > 0
    for bad in (dict(sum1=per_column), dict(sum1=per_chunk, blocks=dict(
            BM=32, BN=32, BK=32, num_warps=4, num_stages=1, TILE_SUMS=False))):
        with pytest.raises(ValueError, match="chunk_sums"):
            gm.rows_gemm(dy, w, poisoned(B * T, N), chunk_sums=True, **{**args, **bad})


def test_glu_epilogue():
    lengths, a, _, _ = frames_case(3)
    b = torch.randn(K, 2 * N, device=DEV)
    bias = torch.randn(2 * N, device=DEV)
    out, u = poisoned(B * T, N), poisoned(B * T, 2 * N)
    gm.rows_gemm(a, b, out, lengths=lengths, T=T, bias=bias, epi=gm.EPI_GLU, aux=u)
    rows = gm.valid_rows(lengths, T)
    ref_u = a @ b + bias
    torch.testing.assert_close(u[rows], ref_u[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[rows], F.glu(ref_u, dim=-1)[rows], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("frames, bm", [(32 * 250, 64), (16 * 750, 64), (80 * 250, 128)])
def test_k_chunked_tile_by_its_waves_on_132_sms(frames, bm):
    # N = 384: 128x128 tiles (two a SM) make 1.43 waves at B32xT250 where 64x128 (three a SM)
    # make 0.95; at B80xT250 1.78 against 2.37. The H200's sweep agreed at all three shapes.
    blk = gm._k_chunked_blocks(frames, 384, 132)
    assert (blk["BM"], blk["BN"]) == (bm, 128)
    assert gm._k_chunked_blocks(frames, 384, 132) is not blk   # callers may change theirs


def chunk_sums(sum1, chunks=CHUNKS):
    """The gates' gradient sums (sum1) per chunk of columns: what they define (the row GEMM
    adds each tile's total at one column of its chunk, or its column sums)."""
    return sum1.view(chunks, -1).sum(1)


@pytest.mark.parametrize("epi", ["store-k-chunks", "silu-gate", "silu-bwd", "glu", "gate-bwd"])
@pytest.mark.parametrize("option", ["SUBTILE", "TMA", "AUX_ALL_ROWS", "AUX_PREFETCH",
                                    "TILE_SUMS"])
def test_tile_options_give_the_plain_tiles_results(epi, option):
    """SUBTILE (the epilogue in two row halves), TMA (operands by descriptors, padded rows
    read too), AUX_ALL_ROWS (the backward epilogues' saved tile read at padded rows too,
    NaN there) and AUX_PREFETCH (the SiLU backward's saved tile loaded early, in row halves:
    compared with SUBTILE alone) and TILE_SUMS (the gates' gradient sums a tile at a time,
    compared per chunk) against the kernel without the option, for every epilogue:
    weights in both layouts, a dead chunk; valid rows, and every row of a FINAL output
    (zeros at padded rows, though TMA read NaN there); column sums added to what the
    accumulators held. K 64 in chunks of 16, N 48 in chunks of 12 (tiles reach past a chunk:
    masked at the store)."""
    k, n = 64, 48
    torch.manual_seed(8)
    lengths = torch.tensor([11, 4, 1], device=DEV)
    rows = gm.valid_rows(lengths, T)
    a = torch.randn(B * T, k, device=DEV)
    a[~rows] = float("nan")                              # padded rows hold garbage
    w_nk = torch.randn(n, k, device=DEV)                 # as nn.Linear keeps W1: b = w_nk.t()
    w_kn = torch.randn(k, n, device=DEV)                 # as the backward reads W2
    gates = torch.tensor([0.5, 0.0, 1.5, 1.0], device=DEV)
    aux_in = torch.randn(B * T, n, device=DEV)           # pre (SiLU backward), r (gate bwd)
    aux_in[~rows] = float("nan")                         # never written there
    w2n = torch.randn(2 * n, k, device=DEV)              # the GLU's two halves
    blocks = dict(BM=16, BN=16, BK=16, num_warps=4, num_stages=1)
    if option == "AUX_PREFETCH":
        blocks["SUBTILE"] = True
    outs = []
    for variant in (False, True):
        blk = dict(blocks, **{option: variant})
        n_chunks = dict(lengths=lengths, T=T, gates=gates, chunk=n // 4, num_chunks=4,
                        skip_dead=True, blocks=blk)
        if epi == "store-k-chunks":
            out = poisoned(B * T, n)
            gm.rows_gemm(a, w_kn, out, lengths=lengths, T=T, gates=gates, chunk=k // 4,
                         num_chunks=4, chunk_axis=2, skip_dead=True, final=True, blocks=blk)
            outs.append([out])
        elif epi == "silu-gate":
            out, pre = poisoned(B * T, n), poisoned(B * T, n)
            gm.rows_gemm(a, w_nk.t(), out, chunk_axis=1, epi=gm.EPI_SILU_GATE, aux=pre,
                         **n_chunks)
            outs.append([out, pre])
        elif epi == "silu-bwd":
            out, s1 = poisoned(B * T, n), torch.ones(n)
            gm.rows_gemm(a, w_kn, out, chunk_axis=1, epi=gm.EPI_SILU_BWD, aux=aux_in, sum1=s1,
                         **n_chunks)
            outs.append([out, chunk_sums(s1, 4)])
        elif epi == "glu":
            out, u = poisoned(B * T, n), poisoned(B * T, 2 * n)
            gm.rows_gemm(a, w2n.t(), out, lengths=lengths, T=T, epi=gm.EPI_GLU, aux=u,
                         blocks=blk)
            outs.append([out, u])
        else:
            out, s1 = poisoned(B * T, n), torch.ones(n)
            gm.rows_gemm(a, w_kn, out, lengths=lengths, T=T, gates=gates[:1],
                         epi=gm.EPI_GATE_BWD, aux=aux_in, sum1=s1, blocks=blk)
            outs.append([out, s1.sum()])
    for plain, variant in zip(*outs):
        if plain.dim() == 2 and plain.isnan().any():     # not FINAL: valid rows only
            plain, variant = plain[rows], variant[rows]
        torch.testing.assert_close(variant, plain, atol=1e-4, rtol=1e-4, equal_nan=True)


def test_tma_option_names_what_it_cannot_read():
    lengths = torch.tensor([11, 4, 1], device=DEV)
    a, out = torch.randn(B * T, 64, device=DEV), torch.empty(B * T, 48, device=DEV)
    blk = dict(BM=16, BN=16, BK=32, num_warps=4, num_stages=1, TMA=True)
    common = dict(lengths=lengths, T=T, blocks=blk)
    with pytest.raises(ValueError, match="dtype"):
        gm.rows_gemm(a, torch.randn(64, 48, device=DEV, dtype=torch.float64), out, **common)
    with pytest.raises(ValueError, match="chunk 16 along K"):
        gm.rows_gemm(a, torch.randn(64, 48, device=DEV), out, chunk=16, num_chunks=4,
                     chunk_axis=2, **common)
    with pytest.raises(ValueError, match="contiguous in neither"):
        gm.rows_gemm(a, torch.randn(64, 96, device=DEV)[:, ::2], out, **common)


@pytest.mark.gpu
@pytest.mark.parametrize("epi", ["silu-gate", "store-k-chunks"])
def test_gpu_tma_option_bf16(epi):
    """The TMA option at the sweep's tiles on the GPU, bf16, NaN at padded rows: equal to
    the plain loads' results (the same operands reach the same tensor-core products) on the
    live chunks' columns."""
    torch.manual_seed(9)
    T_, D_, F_ = 250, 384, 1536
    lengths = torch.randint(150, T_ + 1, (6,), device="cuda")
    rows = gm.valid_rows(lengths, T_)
    a = torch.randn(6 * T_, D_ if epi == "silu-gate" else F_, device="cuda",
                    dtype=torch.bfloat16)
    a[~rows] = float("nan")
    w = (torch.randn(F_, D_, device="cuda") / 20).to(torch.bfloat16)   # [F, D] as W1
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0], device="cuda")
    outs = []
    for tma in (False, True):
        blk = dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=3, TMA=tma)
        if epi == "silu-gate":
            out, pre = (torch.full((6 * T_, F_), float("nan"), device="cuda",
                                   dtype=torch.bfloat16) for _ in range(2))
            gm.rows_gemm(a, w.t(), out, lengths=lengths, T=T_, gates=gates, chunk=F_ // 4,
                         num_chunks=4, chunk_axis=1, skip_dead=True, epi=gm.EPI_SILU_GATE,
                         aux=pre, final=True, blocks=blk)
            live = (gates != 0).repeat_interleave(F_ // 4)    # a dead chunk's: unwritten
            outs.append([out[:, live], torch.where(rows[:, None], pre, 0.0)[:, live]])
        else:
            out = torch.full((6 * T_, D_), float("nan"), device="cuda", dtype=torch.bfloat16)
            gm.rows_gemm(a, w, out, lengths=lengths, T=T_, gates=gates, chunk=F_ // 4,
                         num_chunks=4, chunk_axis=2, skip_dead=True, final=True, blocks=blk)
            outs.append([out])
    for plain, tma in zip(*outs):
        assert not tma.isnan().any()
        torch.testing.assert_close(tma, plain, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("epi", ["silu-gate", "silu-bwd", "store-any-gate", "store-gate0",
                                 "gate-bwd"])
@pytest.mark.parametrize("final", [False, True])
def test_ungated_rows_run_as_if_every_gate_were_one(epi, final):
    """ungated_rows (the first pass of a batch holding two): the first sequence's rows equal
    a call on them alone with every gate 1, the others a call on them alone with the gates;
    the gates' gradient sums (sum1) those of the second call only."""
    k, n = 32, 48
    torch.manual_seed(10)
    lengths = torch.tensor([9, 11, 4], device=DEV)
    a = torch.randn(B * T, k, device=DEV)
    w_kn = torch.randn(k, n, device=DEV)
    bias = torch.randn(n, device=DEV)
    aux = torch.randn(B * T, n, device=DEV)
    gates = torch.tensor([0.5, 0.0, 1.5, 1.0], device=DEV)
    if epi == "store-any-gate":      # every gate 0: b2 for the ungated rows only
        gates = torch.zeros(4, device=DEV)

    def run(rows, lens, g, ungated):
        m = rows.stop - rows.start
        out, s1 = torch.zeros(m, n), torch.zeros(n)
        common = dict(lengths=lens, T=T, final=final, ungated_rows=ungated,
                      blocks=dict(BM=16, BN=16, BK=16, num_warps=4, num_stages=1))
        chunks = dict(gates=g, chunk=12, num_chunks=4, chunk_axis=1)
        if epi == "silu-gate":
            gm.rows_gemm(a[rows], w_kn, out, bias=bias, epi=gm.EPI_SILU_GATE,
                         aux=torch.zeros(m, n), **chunks, **common)
        elif epi == "silu-bwd":
            gm.rows_gemm(a[rows], w_kn, out, epi=gm.EPI_SILU_BWD, aux=aux[rows], sum1=s1,
                         **chunks, **common)
        elif epi == "store-any-gate":
            gm.rows_gemm(a[rows], w_kn, out, bias=bias, bias_mode=gm.BIAS_ANY_GATE, gates=g,
                         chunk=8, num_chunks=4, chunk_axis=2, **common)
        elif epi == "store-gate0":
            gm.rows_gemm(a[rows], w_kn, out, bias=bias, bias_mode=gm.BIAS_GATE0,
                         scale_out=True, gates=g[:1], **common)
        else:
            gm.rows_gemm(a[rows], w_kn, out, epi=gm.EPI_GATE_BWD, aux=aux[rows], sum1=s1,
                         gates=g[:1], **common)
        return out, s1

    first = slice(0, T)
    rest = slice(T, B * T)
    ones = torch.ones_like(gates)
    both = run(slice(0, B * T), lengths, gates, T)
    alone = run(first, lengths[:1], ones, 0), run(rest, lengths[1:], gates, 0)
    rows = gm.valid_rows(lengths, T)
    expected = torch.cat([alone[0][0], alone[1][0]])
    torch.testing.assert_close(both[0][rows], expected[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunk_sums(both[1], 4), chunk_sums(alone[1][1], 4), atol=1e-4,
                               rtol=1e-4)


def test_ungated_rows_need_gates_and_no_skipping():
    lengths = torch.tensor([11, 4, 1], device=DEV)
    a, out = torch.randn(B * T, 32, device=DEV), torch.empty(B * T, 48, device=DEV)
    common = dict(lengths=lengths, T=T, ungated_rows=T)
    with pytest.raises(ValueError, match="ungated_rows=11 needs gates"):
        gm.rows_gemm(a, torch.randn(32, 48, device=DEV), out, **common)
    with pytest.raises(ValueError, match="skip_dead=True"):
        gm.rows_gemm(a, torch.randn(32, 48, device=DEV), out, gates=torch.ones(1, device=DEV),
                     skip_dead=True, **common)


@pytest.mark.gpu
@pytest.mark.parametrize("K,N,chunks", [(1536, 384, 4), (1152, 384, 6), (512, 256, 2)])
@pytest.mark.parametrize("weight_nk", [False, True])
@pytest.mark.parametrize("gating,bias_mode", [
    ("none", gm.BIAS_PLAIN), ("soft", gm.BIAS_GATE0), ("dead", gm.BIAS_ANY_GATE),
    ("all-dead", gm.BIAS_ANY_GATE), ("all-dead", None)])
def test_gpu_k_chunked_store_bf16_against_pytorch(K, N, chunks, weight_nk, gating, bias_mode):
    """The long-K products' call (the FFN's second product and d_xn, the MHSA
    in-projection's input gradient) at its launcher defaults on the GPU, bf16 (TMA on a
    Hopper GPU): NaN at padded rows, a last row tile of 3 rows, dead and all-dead chunks, soft
    gates, the bias modes and both weight layouts, against PyTorch by the error-ratio rule."""
    torch.manual_seed(K + N + chunks)
    t_max, lens = 37, [37, 1, 20, 37, 5, 36, 2]            # 259 rows
    lengths = torch.tensor(lens, device="cuda")
    rows = gm.valid_rows(lengths, t_max)
    a = torch.randn(len(lens) * t_max, K, device="cuda", dtype=torch.bfloat16)
    a[~rows] = float("nan")           # TMA reads padded rows too: none may leak
    w = torch.randn((N, K) if weight_nk else (K, N), device="cuda") / K ** 0.5
    b = w.to(torch.bfloat16).t() if weight_nk else w.to(torch.bfloat16)     # [K, N] view
    gates = {"none": None, "soft": torch.rand(chunks, device="cuda") + 0.25,
             "dead": torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 1.0][:chunks], device="cuda"),
             "all-dead": torch.zeros(chunks, device="cuda")}[gating]
    skip_dead = gating in ("dead", "all-dead")
    bias = None if bias_mode is None else torch.randn(N, device="cuda", dtype=torch.bfloat16)
    scale_out = gating == "soft" and bias_mode == gm.BIAS_GATE0
    out = gm.rows_gemm(a, b, poisoned(a.shape[0], N).to(torch.bfloat16), lengths=lengths,
                       T=t_max, bias=bias, bias_mode=bias_mode or 0, gates=gates,
                       chunk=K // chunks, num_chunks=chunks, chunk_axis=2,
                       skip_dead=skip_dead, scale_out=scale_out, final=True)
    g = torch.ones(chunks, device="cuda") if gates is None else gates
    live_k = ((g != 0) if skip_dead else torch.ones_like(g, dtype=torch.bool))
    live_k = live_k.repeat_interleave(K // chunks)
    bias_scale = {None: 0.0, gm.BIAS_PLAIN: 1.0, gm.BIAS_ANY_GATE: float((g != 0).any()),
                  gm.BIAS_GATE0: g[0].item()}[bias_mode]
    scale = g[0].item() if scale_out else 1.0

    def expected(dtype):
        """The product over the live chunks' K rows in `dtype`, zeros at padded rows."""
        prod = torch.where(rows[:, None], a.to(dtype), 0.0) @ torch.where(
            live_k[:, None], b.to(dtype), 0.0)
        if bias is not None:
            prod = prod + bias.to(dtype) * bias_scale
        return torch.where(rows[:, None], prod * scale, 0.0)

    assert not out.isnan().any()
    if gating == "all-dead" and bias_mode != gm.BIAS_PLAIN:
        assert torch.equal(out, torch.zeros_like(out))        # exactly 0, the bias too
    assert torch.equal(out[~rows], torch.zeros_like(out[~rows]))
    assert_error_ratio([out], [expected(torch.bfloat16)], [expected(torch.float64)], rtol=2e-3)
