"""kernels/gated_matmul.py: the row GEMM's epilogues and the weight-gradient GEMM against
plain PyTorch, with padded frames, chunk gates and dead chunks (interpreter on the CPU)."""

import pytest
import torch
import torch.nn.functional as F
from error_ratio import assert_error_ratio

from orthoasr.kernels import gated_matmul as gm

DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, T, K, N, CHUNKS = 3, 11, 40, 48, 4           # chunks of 12 (N) or 10 (K): awkward tiles


def _case(seed=0):
    torch.manual_seed(seed)
    lengths = torch.tensor([11, 4, 1], device=DEV)
    a = torch.randn(B * T, K, device=DEV)
    b = torch.randn(K, N, device=DEV)
    gates = torch.tensor([0.5, 0.0, 1.5, 1.0], device=DEV)
    return lengths, a, b, gates


def _poisoned(*shape):
    return torch.full(shape, float("nan"), device=DEV)


@pytest.mark.parametrize("skip_dead", [False, True])
def test_store_epilogue_with_k_chunks_and_bias_while_any_gate_is_on(skip_dead):
    lengths, a, b, gates = _case()
    bias = torch.randn(N, device=DEV)
    out = gm.rows_gemm(a, b, _poisoned(B * T, N), lengths=lengths, T=T, bias=bias,
                       gates=gates, chunk=K // CHUNKS, num_chunks=CHUNKS, chunk_axis=2,
                       skip_dead=skip_dead, bias_mode=gm.BIAS_ANY_GATE, final=True)
    live_k = None
    if skip_dead:      # the K loop leaves out the dead chunk's rows of b
        live_k = (gates != 0).repeat_interleave(K // CHUNKS)
    expected = gm.rows_gemm_reference(a, b, lengths, T, bias, live_k)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    off = gm.rows_gemm(a, b, _poisoned(B * T, N), lengths=lengths, T=T, bias=bias,
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
        out = gm.rows_gemm(a, b, _poisoned(B * T, N), lengths=lengths, T=T, gates=g, chunk=3,
                           num_chunks=chunks, chunk_axis=2, skip_dead=True, final=True)
        expected = gm.rows_gemm_reference(a, b, lengths, T, None,
                                          (g != 0).repeat_interleave(3))
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_silu_gate_epilogue_saves_pre_activation():
    lengths, a, b, gates = _case(1)
    bias = torch.randn(N, device=DEV)
    pre, hidden = _poisoned(B * T, N), _poisoned(B * T, N)
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
    _, a, b, gates = _case(1)
    lengths = torch.tensor([11, 4, 0], device=DEV)
    bias = torch.randn(N, device=DEV)
    pre, hidden = _poisoned(B * T, N), _poisoned(B * T, N)
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
    lengths, dy, w, gates = _case(2)                 # dy [M, K] @ w [K, N] -> d_hidden
    if final:
        lengths = torch.tensor([11, 4, 0], device=DEV)
    pre = torch.randn(B * T, N, device=DEV)
    d_pre, col_sums = _poisoned(B * T, N), torch.zeros(N, device=DEV)
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
    lengths, dy, w, gates = _case(4)
    pre = torch.randn(B * T, N, device=DEV)
    args = dict(lengths=lengths, T=T, gates=gates, chunk=N // CHUNKS, num_chunks=CHUNKS,
                chunk_axis=1, epi=gm.EPI_SILU_BWD, aux=pre, ungated_rows=T)
    per_column, per_chunk = torch.zeros(N, device=DEV), torch.zeros(CHUNKS, device=DEV)
    gm.rows_gemm(dy, w, _poisoned(B * T, N), sum1=per_column, **args)
    gm.rows_gemm(dy, w, _poisoned(B * T, N), sum1=per_chunk, chunk_sums=True, **args)
    torch.testing.assert_close(per_chunk, chunk_sums(per_column), atol=1e-4, rtol=1e-5)
    assert per_chunk.abs().sum() > 0
    for bad in (dict(sum1=per_column), dict(sum1=per_chunk, blocks=dict(
            BM=32, BN=32, BK=32, num_warps=4, num_stages=1, TILE_SUMS=False))):
        with pytest.raises(ValueError, match="chunk_sums"):
            gm.rows_gemm(dy, w, _poisoned(B * T, N), chunk_sums=True, **{**args, **bad})


def test_glu_epilogue():
    lengths, a, _, _ = _case(3)
    b = torch.randn(K, 2 * N, device=DEV)
    bias = torch.randn(2 * N, device=DEV)
    out, u = _poisoned(B * T, N), _poisoned(B * T, 2 * N)
    gm.rows_gemm(a, b, out, lengths=lengths, T=T, bias=bias, epi=gm.EPI_GLU, aux=u)
    rows = gm.valid_rows(lengths, T)
    ref_u = a @ b + bias
    torch.testing.assert_close(u[rows], ref_u[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[rows], F.glu(ref_u, dim=-1)[rows], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_axis", [1, 2])
def test_weight_gradient_over_valid_frames_with_dead_chunks(chunk_axis):
    lengths, a, _, gates = _case(4)
    b = torch.randn(B * T, N, device=DEV)
    P = a.shape[1]
    chunk = (P if chunk_axis == 1 else N) // CHUNKS
    out = gm.wgrad(a, b, lengths=lengths, T=T, gates=gates, chunk=chunk, num_chunks=CHUNKS,
                   chunk_axis=chunk_axis, skip_dead=True)
    live = (gates != 0).repeat_interleave(chunk)
    expected = gm.wgrad_reference(a, b, lengths, T)
    expected = expected * (live[:, None] if chunk_axis == 1 else live[None, :])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_axis", [1, 2])
@pytest.mark.parametrize("live", [(1, 1, 1), (0, 1, 0), (1, 0, 1), (0, 0, 0)])
def test_weight_gradient_shares_the_live_tiles_among_the_programs(chunk_axis, live):
    """The programs take the live tiles only, so with dead chunks each live tile is split
    over more programs (more sequence groups): every sequence must still be summed once.
    Chunks of 40 (two tiles of the interpreter's 32, the second partial), 7 sequences,
    soft gates (nothing skipped) and hard ones, NaN in padded rows."""
    torch.manual_seed(11)
    t_max, lengths = 9, torch.tensor([9, 3, 0, 9, 1, 6, 8], device=DEV)
    rows = gm.valid_rows(lengths, t_max)
    chunk, other = 40, 24
    wide = 3 * chunk
    a = torch.randn(7 * t_max, wide if chunk_axis == 1 else other, device=DEV)
    b = torch.randn(7 * t_max, other if chunk_axis == 1 else wide, device=DEV)
    a[~rows], b[~rows] = float("nan"), float("nan")
    gates = torch.tensor(live, dtype=torch.float32, device=DEV) * 0.5
    expected = a[rows].T @ b[rows]
    for skip_dead in (False, True):
        out = gm.wgrad(a, b, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
                       chunk_axis=chunk_axis, skip_dead=skip_dead)
        keep = expected
        if skip_dead:      # dead chunks' rows (P) or columns (Q) are left at zero
            alive = (gates != 0).repeat_interleave(chunk)
            keep = expected * (alive[:, None] if chunk_axis == 1 else alive[None, :])
        torch.testing.assert_close(out, keep, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("gate", [0.0, 0.3])
def test_weight_gradient_under_a_module_gate(gate):
    """One gate for the whole product (the conv module's): a dead one leaves out at zero."""
    lengths, a, _, _ = _case(7)
    b = torch.randn(B * T, N, device=DEV)
    out = gm.wgrad(a, b, lengths=lengths, T=T, gates=torch.tensor([gate], device=DEV),
                   skip_dead=True)
    expected = gm.wgrad_reference(a, b, lengths, T) * (gate != 0.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_weight_gradient_walks_sequences_of_several_frame_tiles():
    """Sequences longer than one frame tile (T 75: tiles of 32, the last partial), lengths 0
    to T split unevenly over the programs, NaN in padded rows (they must not be read)."""
    torch.manual_seed(9)
    t_max, lengths = 75, torch.tensor([75, 0, 33, 64, 1, 70, 32], device=DEV)
    rows = gm.valid_rows(lengths, t_max)
    a = torch.randn(7 * t_max, 40, device=DEV)
    b = torch.randn(7 * t_max, 24, device=DEV)
    a[~rows], b[~rows] = float("nan"), float("nan")
    out = gm.wgrad(a, b, lengths=lengths, T=t_max)
    torch.testing.assert_close(out, a[rows].T @ b[rows], atol=1e-4, rtol=1e-4)


TMA_WGRAD = dict(BP=32, BQ=32, BK=32, num_warps=4, num_stages=1, TMA=True)


@pytest.mark.parametrize("chunk_axis", [1, 2])
@pytest.mark.parametrize("live", [(1, 1, 1), (0, 1, 0), (0, 0, 0)])
def test_weight_gradient_by_tma_over_zeroed_rows(chunk_axis, live):
    """TMA loads (rows_zeroed: zeros at padded rows): the programs split the rows in whole
    blocks (63 rows: the second block ends past them), chunks of 40 (the second tile of 32
    reads into the next chunk, whose columns it must not store); equal to the sum over
    valid frames, with NaN in a dead chunk's columns (never read)."""
    torch.manual_seed(12)
    t_max, lengths = 9, torch.tensor([9, 3, 0, 9, 1, 6, 8], device=DEV)
    rows = gm.valid_rows(lengths, t_max)
    chunk, other = 40, 24
    a = torch.randn(7 * t_max, 3 * chunk if chunk_axis == 1 else other, device=DEV)
    b = torch.randn(7 * t_max, other if chunk_axis == 1 else 3 * chunk, device=DEV)
    a[~rows], b[~rows] = 0.0, 0.0
    expected = a.T @ b
    gates = torch.tensor(live, dtype=torch.float32, device=DEV)
    alive = (gates != 0).repeat_interleave(chunk)
    dead = a[:, ~alive] if chunk_axis == 1 else b[:, ~alive]
    dead.fill_(float("nan"))
    if chunk_axis == 1:
        a[:, ~alive] = dead
    else:
        b[:, ~alive] = dead
    out = gm.wgrad(a, b, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
                   chunk_axis=chunk_axis, skip_dead=True, rows_zeroed=True, blocks=TMA_WGRAD)
    keep = expected.nan_to_num() * (alive[:, None] if chunk_axis == 1 else alive[None, :])
    torch.testing.assert_close(out, keep, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("live", [(1, 0, 1), (0, 0, 0)])
def test_weight_gradient_with_the_column_sums_of_a(tma, live):
    """a_sums: a's column sums over the valid frames (a bias gradient) beside the product, by
    the TMA programs (three Q tiles: counted once, by the first) or by the column sums'
    kernel; a dead chunk's columns 0, padded rows never counted (NaN there without TMA)."""
    torch.manual_seed(15)
    t_max, lengths = 9, torch.tensor([9, 3, 0, 9, 1, 6, 8], device=DEV)
    rows = gm.valid_rows(lengths, t_max)
    chunk = 40
    a, b = torch.randn(7 * t_max, 3 * chunk, device=DEV), torch.randn(7 * t_max, 72, device=DEV)
    a[~rows], b[~rows] = (0.0, 0.0) if tma else (float("nan"), float("nan"))
    gates = torch.tensor(live, dtype=torch.float32, device=DEV)
    alive = (gates != 0).repeat_interleave(chunk)
    sums = torch.zeros(3 * chunk, device=DEV)
    out = gm.wgrad(a, b, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
                   chunk_axis=1, skip_dead=True, rows_zeroed=tma,
                   blocks=TMA_WGRAD if tma else None, a_sums=sums)
    torch.testing.assert_close(sums, a[rows].sum(0) * alive, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, (a[rows].T @ b[rows]) * alive[:, None], atol=1e-4,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="a_sums"):
        gm.wgrad(b, a, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
                 chunk_axis=2, skip_dead=True, a_sums=torch.zeros(72, device=DEV))


@pytest.mark.parametrize("block", [8, 64, 128])
def test_row_blocks_list_the_blocks_holding_a_valid_frame(block):
    """row_blocks: count, then the indices of the blocks with a valid frame, in order; blocks
    that span two sequences, empty sequences, a last block past the rows, more blocks than
    one pass of the kernel's loop (the interpreter's 32), and blocks longer than a sequence
    (128 > T, every row checked)."""
    t_max = 75
    lengths = torch.tensor([75, 0, 10, 64, 1, 0, 0, 0, 30, 75, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
                           device=DEV)
    listed = gm.row_blocks(lengths, t_max, block).cpu()
    valid = gm.valid_rows(lengths, t_max).cpu()
    n_blocks = -(-valid.numel() // block)
    padded = torch.nn.functional.pad(valid, (0, n_blocks * block - valid.numel()))
    expected = padded.view(n_blocks, block).any(1).nonzero().flatten()
    assert 0 < expected.numel() < n_blocks and (block > 8 or n_blocks > 32)
    assert listed.shape == (1 + n_blocks,) and listed[0] == expected.numel()
    assert torch.equal(listed[1:1 + expected.numel()].long(), expected)


def test_weight_gradient_by_tma_skips_padded_blocks_only():
    """The TMA path visits the listed row blocks only: with long padded runs (whole blocks of
    32 rows padded) and programs sharing the list unevenly, every valid frame counts once;
    a list missing a valid block would lose its frames (valid_blocks given by the caller,
    checked for its shape)."""
    torch.manual_seed(14)
    t_max, lengths = 75, torch.tensor([75, 0, 10, 64, 1, 33], device=DEV)
    rows = gm.valid_rows(lengths, t_max)
    a, b = torch.randn(6 * t_max, 40, device=DEV), torch.randn(6 * t_max, 24, device=DEV)
    a[~rows], b[~rows] = 0.0, 0.0
    blocks = gm.row_blocks(lengths, t_max, 32)
    assert blocks[0] < -(-6 * t_max // 32)          # some blocks are all padding
    out = gm.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD,
                   valid_blocks=blocks)
    torch.testing.assert_close(out, a.T @ b, atol=1e-4, rtol=1e-4)
    for listed in (True, False):     # the list made by wgrad itself; every block in runs
        out = gm.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True,
                       blocks=dict(TMA_WGRAD, BLOCK_LIST=listed))
        torch.testing.assert_close(out, a.T @ b, atol=1e-4, rtol=1e-4)
    short = blocks.clone()
    short[0] -= 1                                     # the last valid block left out
    out = gm.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD,
                   valid_blocks=short)
    assert not torch.allclose(out, a.T @ b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="valid_blocks"):
        gm.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD,
                 valid_blocks=gm.row_blocks(lengths, t_max, 16))


def test_weight_gradient_by_tma_reads_every_row():
    """The TMA path reads padded rows (so rows_zeroed is a promise the caller must keep):
    NaN there reaches the output, as the masked loads' path would never let it; and TMA
    without that promise is refused, naming it."""
    t_max, lengths = 9, torch.tensor([9, 3], device=DEV)
    a, b = torch.randn(2 * t_max, 32, device=DEV), torch.randn(2 * t_max, 32, device=DEV)
    a[t_max + 5] = float("nan")
    masked = gm.wgrad(a, b, lengths=lengths, T=t_max)
    assert masked.isfinite().all()
    by_tma = gm.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD)
    assert by_tma.isnan().any()
    with pytest.raises(ValueError, match="rows_zeroed"):
        gm.wgrad(a, b, lengths=lengths, T=t_max, blocks=TMA_WGRAD)
    with pytest.raises(ValueError, match="wgrad TMA: b dtype"):
        gm.wgrad(a, b.double(), lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk_axis", [1, 2])
def test_gpu_weight_gradient_by_tma_bf16(chunk_axis):
    """The launcher's default for zeroed rows (TMA on a Hopper GPU) at the FFN's dW1 (chunks
    along P) and dW2 (along Q) in bf16, B6xT250, a dead chunk: equal to the masked loads'
    result and to fp32 products over valid frames (the same products, summed in other
    orders)."""
    torch.manual_seed(13)
    t_max, d, f = 250, 384, 1536
    lengths = torch.randint(100, t_max + 1, (6,), device="cuda")
    rows = gm.valid_rows(lengths, t_max)
    a = torch.randn(6 * t_max, f if chunk_axis == 1 else d, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(6 * t_max, d if chunk_axis == 1 else f, device="cuda", dtype=torch.bfloat16)
    a[~rows], b[~rows] = 0.0, 0.0
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0], device="cuda")
    common = dict(lengths=lengths, T=t_max, gates=gates, chunk=f // 4, num_chunks=4,
                  chunk_axis=chunk_axis, skip_dead=True)
    by_tma = gm.wgrad(a, b, rows_zeroed=True, **common)
    masked = gm.wgrad(a, b, **common)
    alive = (gates != 0).repeat_interleave(f // 4)
    keep = alive[:, None] if chunk_axis == 1 else alive[None, :]
    expected = (a.float().T @ b.float()) * keep
    torch.testing.assert_close(by_tma, expected, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(by_tma, masked, atol=1e-2, rtol=1e-3)


def test_dense_weight_gradient():
    """dense_wgrad: a^T b over every row in fp32 (its operands are zero at padded rows)."""
    a, b = torch.randn(30, 7, device=DEV), torch.randn(30, 5, device=DEV)
    torch.testing.assert_close(gm.dense_wgrad(a, b), a.T @ b, atol=1e-5, rtol=1e-5)
    assert gm.dense_wgrad(a.double(), b.double()).dtype == torch.float32


@pytest.mark.parametrize("frames, bm", [(32 * 250, 64), (16 * 750, 64), (80 * 250, 128)])
def test_k_chunked_tile_by_its_waves_on_132_sms(frames, bm):
    # N = 384: 128x128 tiles (two a SM) make 1.43 waves at B32xT250 where 64x128 (three a SM)
    # make 0.95; at B80xT250 1.78 against 2.37. The H200's sweep agreed at all three shapes.
    blk = gm._k_chunked_blocks(frames, 384, 132)
    assert (blk["BM"], blk["BN"]) == (bm, 128)
    assert gm._k_chunked_blocks(frames, 384, 132) is not blk   # callers may change theirs


def test_dense_products_only_where_nothing_is_skipped():
    x, gates = torch.zeros(2, device=DEV), torch.ones(3, device=DEV)
    assert gm.dense_products(x, None, True) and gm.dense_products(x, gates, False)
    assert not gm.dense_products(x, gates, True)


@pytest.mark.parametrize("config", [{}, dict(BM=16), dict(BM=64, BN=16)])
def test_column_sums_over_valid_frames_only(config):
    """Also with other tiles (the sweep's options)."""
    lengths, _, _, _ = _case(5)
    a = torch.randn(B * T, 70, device=DEV)            # 70: a partial column tile
    a[~gm.valid_rows(lengths, T)] = float("nan")      # padded rows must not be read
    out = gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T, config=config)
    rows = gm.valid_rows(lengths, T)
    torch.testing.assert_close(out, a[rows].sum(0), atol=1e-4, rtol=1e-4)


def test_column_sums_copy_has_zeros_at_padded_rows():
    """The copy the FFN's dense dW2 reads: a at valid rows, exactly 0 at padded ones (NaN
    there in a and in the copy's fresh memory), in a's dtype; sums as without it."""
    lengths, _, _, _ = _case(7)
    rows = gm.valid_rows(lengths, T)
    a = torch.randn(B * T, 70, device=DEV, dtype=torch.float64)
    a[~rows] = float("nan")
    copy = torch.full_like(a, float("nan"))
    out = gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T, copy=copy)
    torch.testing.assert_close(out, a[rows].sum(0).float(), atol=1e-4, rtol=1e-4)
    assert torch.equal(copy, torch.where(rows[:, None], a, 0.0))
    with pytest.raises(ValueError, match="copy"):
        gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T, copy=copy.float())


def test_sum_rows_adds_every_row():
    """The partial sums' reduction: out += parts.sum(0) over every row (no lengths), in the
    parts' trailing shape; rows past a program's range are not read twice (73 rows: a partial
    row tile); a wrong dtype or shape is refused."""
    parts = torch.randn(73, 3, 50, device=DEV)
    out = torch.full((3, 50), 2.0, device=DEV)
    assert gm.sum_rows(parts, out) is out
    torch.testing.assert_close(out, parts.sum(0) + 2.0, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gm.sum_rows(parts), parts.sum(0), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="sum_rows"):
        gm.sum_rows(parts.double())
    with pytest.raises(ValueError, match="sum_rows"):
        gm.sum_rows(parts, torch.zeros(150, device=DEV))


def test_column_sums_scaled_by_the_module_gate_after_ungated_rows():
    """scaled: rows >= ungated_rows times the gate in the sums and in the copy (zeros at
    padded rows); gated_dot those rows' sums unscaled, dotted with the weights, added to one
    number; a dead gate with skip_dead reads and writes nothing (the copy keeps its NaNs:
    its readers skip the module too)."""
    lengths, _, _, _ = _case(9)
    rows = gm.valid_rows(lengths, T)
    a = torch.randn(B * T, 70, device=DEV)
    a[~rows] = float("nan")
    U = T                                              # the first sequence ungated
    factor = torch.where(torch.arange(B * T, device=DEV) < U, 1.0, -0.7)[:, None]
    copy, dot = torch.full_like(a, float("nan")), torch.full((1,), 0.5, device=DEV)
    weights = torch.randn(70, device=DEV)
    out = gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                      gates=torch.tensor([-0.7], device=DEV), copy=copy, scaled=True,
                      ungated_rows=U, gated_dot=(weights, dot))
    expected = torch.where(rows[:, None], a * factor, 0.0)
    torch.testing.assert_close(copy, expected)
    torch.testing.assert_close(out, expected.sum(0), atol=1e-4, rtol=1e-4)
    gated_rows = rows & (torch.arange(B * T, device=DEV) >= U)
    torch.testing.assert_close(dot, 0.5 + (a[gated_rows].sum(0) * weights).sum().reshape(1),
                               atol=1e-4, rtol=1e-4)
    dead_copy = torch.full_like(a, float("nan"))
    out = gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                      gates=torch.zeros(1, device=DEV), skip_dead=True, copy=dead_copy,
                      scaled=True)
    assert torch.equal(out, torch.zeros(70, device=DEV)) and dead_copy.isnan().all()
    with pytest.raises(ValueError, match="module gate"):
        gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                    gates=torch.ones(2, device=DEV), scaled=True)
    with pytest.raises(ValueError, match="gated_dot"):
        gm.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                    gated_dot=(weights, dot))


def test_column_sums_skip_dead_chunks():
    lengths, _, _, _ = _case(6)
    chunk, gates = 24, torch.tensor([1.0, 0.0, 0.5], device=DEV)   # 72 columns, 3 chunks
    a = torch.randn(B * T, 72, device=DEV)
    a[:, chunk:2 * chunk] = float("nan")               # the dead chunk's columns: unwritten
    out = gm.col_sums(a, torch.zeros(72, device=DEV), lengths=lengths, T=T, gates=gates,
                      chunk=chunk, skip_dead=True)
    rows = gm.valid_rows(lengths, T)
    expected = torch.where((gates != 0).repeat_interleave(chunk), a[rows].sum(0), 0.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_column_sums_count_while_any_gate_is_live():
    """any_gate: every row read (the sums over valid rows) while some gate is nonzero, exact
    zeros when all are; gates without skip_dead only."""
    lengths, _, _, _ = _case(8)
    a = torch.randn(B * T, 40, device=DEV)
    rows = gm.valid_rows(lengths, T)
    for gates, live in (([0.0, -0.3, 0.0], True), ([0.0, 0.0, 0.0], False)):
        gates = torch.tensor(gates, device=DEV)
        out = gm.col_sums(a, torch.zeros(40, device=DEV), lengths=lengths, T=T, gates=gates,
                          any_gate=True)
        expected = a[rows].sum(0) if live else torch.zeros(40, device=DEV)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="any_gate"):
        gm.col_sums(a, torch.zeros(40, device=DEV), lengths=lengths, T=T, any_gate=True)


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
            out = _poisoned(B * T, n)
            gm.rows_gemm(a, w_kn, out, lengths=lengths, T=T, gates=gates, chunk=k // 4,
                         num_chunks=4, chunk_axis=2, skip_dead=True, final=True, blocks=blk)
            outs.append([out])
        elif epi == "silu-gate":
            out, pre = _poisoned(B * T, n), _poisoned(B * T, n)
            gm.rows_gemm(a, w_nk.t(), out, chunk_axis=1, epi=gm.EPI_SILU_GATE, aux=pre,
                         **n_chunks)
            outs.append([out, pre])
        elif epi == "silu-bwd":
            out, s1 = _poisoned(B * T, n), torch.ones(n)
            gm.rows_gemm(a, w_kn, out, chunk_axis=1, epi=gm.EPI_SILU_BWD, aux=aux_in, sum1=s1,
                         **n_chunks)
            outs.append([out, chunk_sums(s1, 4)])
        elif epi == "glu":
            out, u = _poisoned(B * T, n), _poisoned(B * T, 2 * n)
            gm.rows_gemm(a, w2n.t(), out, lengths=lengths, T=T, epi=gm.EPI_GLU, aux=u,
                         blocks=blk)
            outs.append([out, u])
        else:
            out, s1 = _poisoned(B * T, n), torch.ones(n)
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


@pytest.mark.parametrize("gate", [0.0, 0.7])
def test_col_sums_any_gate_counts_ungated_rows_whatever_the_gates(gate):
    """col_sums(any_gate=True, ungated_rows=T): the first sequence's rows always count (the
    ungated pass of a batch holding two), the others only while a gate is nonzero."""
    torch.manual_seed(11)
    lengths = torch.tensor([9, 11, 4], device=DEV)
    a = torch.randn(B * T, 40, device=DEV)
    gates = torch.full((3,), gate, device=DEV)
    both = gm.col_sums(a, torch.zeros(40), lengths=lengths, T=T, gates=gates, any_gate=True,
                       ungated_rows=T)
    first = gm.col_sums(a[:T], torch.zeros(40), lengths=lengths[:1], T=T,
                        gates=torch.ones(3, device=DEV), any_gate=True)
    rest = gm.col_sums(a[T:], torch.zeros(40), lengths=lengths[1:], T=T, gates=gates,
                       any_gate=True)
    torch.testing.assert_close(both, first + rest, atol=1e-5, rtol=1e-5)


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
    out = gm.rows_gemm(a, b, _poisoned(a.shape[0], N).to(torch.bfloat16), lengths=lengths,
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
