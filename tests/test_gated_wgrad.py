"""kernels/gated_wgrad.py: the weight-gradient GEMM, the row-block list and the column sums
against plain PyTorch, with padded frames, chunk gates and dead chunks (interpreter on the
CPU)."""

import pytest
import torch
from gated_case import CHUNKS, DEV, B, N, T, frames_case

from orthoasr.kernels import gated_wgrad as gw
from orthoasr.kernels.gated_matmul import valid_rows


@pytest.mark.parametrize("chunk_axis", [1, 2])
def test_weight_gradient_over_valid_frames_with_dead_chunks(chunk_axis):
    lengths, a, _, gates = frames_case(4)
    b = torch.randn(B * T, N, device=DEV)
    P = a.shape[1]
    chunk = (P if chunk_axis == 1 else N) // CHUNKS
    out = gw.wgrad(a, b, lengths=lengths, T=T, gates=gates, chunk=chunk, num_chunks=CHUNKS,
                   chunk_axis=chunk_axis, skip_dead=True)
    live = (gates != 0).repeat_interleave(chunk)
    expected = gw.wgrad_reference(a, b, lengths, T)
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
    rows = valid_rows(lengths, t_max)
    chunk, other = 40, 24
    wide = 3 * chunk
    a = torch.randn(7 * t_max, wide if chunk_axis == 1 else other, device=DEV)
    b = torch.randn(7 * t_max, other if chunk_axis == 1 else wide, device=DEV)
    a[~rows], b[~rows] = float("nan"), float("nan")
    gates = torch.tensor(live, dtype=torch.float32, device=DEV) * 0.5
    expected = a[rows].T @ b[rows]
    for skip_dead in (False, True):
        out = gw.wgrad(a, b, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
                       chunk_axis=chunk_axis, skip_dead=skip_dead)
        keep = expected
        if skip_dead:      # dead chunks' rows (P) or columns (Q) are left at zero
            alive = (gates != 0).repeat_interleave(chunk)
            keep = expected * (alive[:, None] if chunk_axis == 1 else alive[None, :])
        torch.testing.assert_close(out, keep, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("gate", [0.0, 0.3])
def test_weight_gradient_under_a_module_gate(gate):
    """One gate for the whole product (the conv module's): a dead one leaves out at zero."""
    lengths, a, _, _ = frames_case(7)
    b = torch.randn(B * T, N, device=DEV)
    out = gw.wgrad(a, b, lengths=lengths, T=T, gates=torch.tensor([gate], device=DEV),
                   skip_dead=True)
    expected = gw.wgrad_reference(a, b, lengths, T) * (gate != 0.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_weight_gradient_walks_sequences_of_several_frame_tiles():
    """Sequences longer than one frame tile (T 75: tiles of 32, the last partial), lengths 0
    to T split unevenly over the programs, NaN in padded rows (they must not be read)."""
    torch.manual_seed(9)
    t_max, lengths = 75, torch.tensor([75, 0, 33, 64, 1, 70, 32], device=DEV)
    rows = valid_rows(lengths, t_max)
    a = torch.randn(7 * t_max, 40, device=DEV)
    b = torch.randn(7 * t_max, 24, device=DEV)
    a[~rows], b[~rows] = float("nan"), float("nan")
    out = gw.wgrad(a, b, lengths=lengths, T=t_max)
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
    rows = valid_rows(lengths, t_max)
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
    out = gw.wgrad(a, b, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
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
    rows = valid_rows(lengths, t_max)
    chunk = 40
    a, b = torch.randn(7 * t_max, 3 * chunk, device=DEV), torch.randn(7 * t_max, 72, device=DEV)
    a[~rows], b[~rows] = (0.0, 0.0) if tma else (float("nan"), float("nan"))
    gates = torch.tensor(live, dtype=torch.float32, device=DEV)
    alive = (gates != 0).repeat_interleave(chunk)
    sums = torch.zeros(3 * chunk, device=DEV)
    out = gw.wgrad(a, b, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
                   chunk_axis=1, skip_dead=True, rows_zeroed=tma,
                   blocks=TMA_WGRAD if tma else None, a_sums=sums)
    torch.testing.assert_close(sums, a[rows].sum(0) * alive, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, (a[rows].T @ b[rows]) * alive[:, None], atol=1e-4,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="a_sums"):
        gw.wgrad(b, a, lengths=lengths, T=t_max, gates=gates, chunk=chunk, num_chunks=3,
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
    listed = gw.row_blocks(lengths, t_max, block).cpu()
    valid = valid_rows(lengths, t_max).cpu()
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
    rows = valid_rows(lengths, t_max)
    a, b = torch.randn(6 * t_max, 40, device=DEV), torch.randn(6 * t_max, 24, device=DEV)
    a[~rows], b[~rows] = 0.0, 0.0
    blocks = gw.row_blocks(lengths, t_max, 32)
    assert blocks[0] < -(-6 * t_max // 32)          # some blocks are all padding
    out = gw.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD,
                   valid_blocks=blocks)
    torch.testing.assert_close(out, a.T @ b, atol=1e-4, rtol=1e-4)
    for listed in (True, False):     # the list made by wgrad itself; every block in runs
        out = gw.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True,
                       blocks=dict(TMA_WGRAD, BLOCK_LIST=listed))
        torch.testing.assert_close(out, a.T @ b, atol=1e-4, rtol=1e-4)
    short = blocks.clone()
    short[0] -= 1                                     # the last valid block left out
    out = gw.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD,
                   valid_blocks=short)
    assert not torch.allclose(out, a.T @ b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="valid_blocks"):
        gw.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD,
                 valid_blocks=gw.row_blocks(lengths, t_max, 16))


def test_weight_gradient_by_tma_reads_every_row():
    """The TMA path reads padded rows (so rows_zeroed is a promise the caller must keep):
    NaN there reaches the output, as the masked loads' path would never let it; and TMA
    without that promise is refused, naming it."""
    t_max, lengths = 9, torch.tensor([9, 3], device=DEV)
    a, b = torch.randn(2 * t_max, 32, device=DEV), torch.randn(2 * t_max, 32, device=DEV)
    a[t_max + 5] = float("nan")
    masked = gw.wgrad(a, b, lengths=lengths, T=t_max)
    assert masked.isfinite().all()
    by_tma = gw.wgrad(a, b, lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD)
    assert by_tma.isnan().any()
    with pytest.raises(ValueError, match="rows_zeroed"):
        gw.wgrad(a, b, lengths=lengths, T=t_max, blocks=TMA_WGRAD)
    with pytest.raises(ValueError, match="wgrad TMA: b dtype"):
        gw.wgrad(a, b.double(), lengths=lengths, T=t_max, rows_zeroed=True, blocks=TMA_WGRAD)


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
    rows = valid_rows(lengths, t_max)
    a = torch.randn(6 * t_max, f if chunk_axis == 1 else d, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(6 * t_max, d if chunk_axis == 1 else f, device="cuda", dtype=torch.bfloat16)
    a[~rows], b[~rows] = 0.0, 0.0
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0], device="cuda")
    common = dict(lengths=lengths, T=t_max, gates=gates, chunk=f // 4, num_chunks=4,
                  chunk_axis=chunk_axis, skip_dead=True)
    by_tma = gw.wgrad(a, b, rows_zeroed=True, **common)
    masked = gw.wgrad(a, b, **common)
    alive = (gates != 0).repeat_interleave(f // 4)
    keep = alive[:, None] if chunk_axis == 1 else alive[None, :]
    expected = (a.float().T @ b.float()) * keep
    torch.testing.assert_close(by_tma, expected, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(by_tma, masked, atol=1e-2, rtol=1e-3)


def test_dense_weight_gradient():
    """dense_wgrad: a^T b over every row in fp32 (its operands are zero at padded rows)."""
    a, b = torch.randn(30, 7, device=DEV), torch.randn(30, 5, device=DEV)
    torch.testing.assert_close(gw.dense_wgrad(a, b), a.T @ b, atol=1e-5, rtol=1e-5)
    assert gw.dense_wgrad(a.double(), b.double()).dtype == torch.float32


def test_dense_products_only_where_nothing_is_skipped():
    x, gates = torch.zeros(2, device=DEV), torch.ones(3, device=DEV)
    assert gw.dense_products(x, None, True) and gw.dense_products(x, gates, False)
    assert not gw.dense_products(x, gates, True)


@pytest.mark.parametrize("config", [{}, dict(BM=16), dict(BM=64, BN=16)])
def test_column_sums_over_valid_frames_only(config):
    """Also with other tiles (the sweep's options)."""
    lengths, _, _, _ = frames_case(5)
    a = torch.randn(B * T, 70, device=DEV)            # 70: a partial column tile
    a[~valid_rows(lengths, T)] = float("nan")      # padded rows must not be read
    out = gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T, config=config)
    rows = valid_rows(lengths, T)
    torch.testing.assert_close(out, a[rows].sum(0), atol=1e-4, rtol=1e-4)


def test_column_sums_copy_has_zeros_at_padded_rows():
    """The copy the FFN's dense dW2 reads: a at valid rows, exactly 0 at padded ones (NaN
    there in a and in the copy's fresh memory), in a's dtype; sums as without it."""
    lengths, _, _, _ = frames_case(7)
    rows = valid_rows(lengths, T)
    a = torch.randn(B * T, 70, device=DEV, dtype=torch.float64)
    a[~rows] = float("nan")
    copy = torch.full_like(a, float("nan"))
    out = gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T, copy=copy)
    torch.testing.assert_close(out, a[rows].sum(0).float(), atol=1e-4, rtol=1e-4)
    assert torch.equal(copy, torch.where(rows[:, None], a, 0.0))
    with pytest.raises(ValueError, match="copy"):
        gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T, copy=copy.float())


def test_sum_rows_adds_every_row():
    """The partial sums' reduction: out += parts.sum(0) over every row (no lengths), in the
    parts' trailing shape; rows past a program's range are not read twice (73 rows: a partial
    row tile); a wrong dtype or shape is refused."""
    parts = torch.randn(73, 3, 50, device=DEV)
    out = torch.full((3, 50), 2.0, device=DEV)
    assert gw.sum_rows(parts, out) is out
    torch.testing.assert_close(out, parts.sum(0) + 2.0, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gw.sum_rows(parts), parts.sum(0), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="sum_rows"):
        gw.sum_rows(parts.double())
    with pytest.raises(ValueError, match="sum_rows"):
        gw.sum_rows(parts, torch.zeros(150, device=DEV))


def test_column_sums_scaled_by_the_module_gate_after_ungated_rows():
    """scaled: rows >= ungated_rows times the gate in the sums and in the copy (zeros at
    padded rows); gated_dot those rows' sums unscaled, dotted with the weights, added to one
    number; a dead gate with skip_dead reads and writes nothing (the copy keeps its NaNs:
    its readers skip the module too)."""
    lengths, _, _, _ = frames_case(9)
    rows = valid_rows(lengths, T)
    a = torch.randn(B * T, 70, device=DEV)
    a[~rows] = float("nan")
    U = T                                              # the first sequence ungated
    factor = torch.where(torch.arange(B * T, device=DEV) < U, 1.0, -0.7)[:, None]
    copy, dot = torch.full_like(a, float("nan")), torch.full((1,), 0.5, device=DEV)
    weights = torch.randn(70, device=DEV)
    out = gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                      gates=torch.tensor([-0.7], device=DEV), copy=copy, scaled=True,
                      ungated_rows=U, gated_dot=(weights, dot))
    expected = torch.where(rows[:, None], a * factor, 0.0)
    torch.testing.assert_close(copy, expected)
    torch.testing.assert_close(out, expected.sum(0), atol=1e-4, rtol=1e-4)
    gated_rows = rows & (torch.arange(B * T, device=DEV) >= U)
    torch.testing.assert_close(dot, 0.5 + (a[gated_rows].sum(0) * weights).sum().reshape(1),
                               atol=1e-4, rtol=1e-4)
    dead_copy = torch.full_like(a, float("nan"))
    out = gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                      gates=torch.zeros(1, device=DEV), skip_dead=True, copy=dead_copy,
                      scaled=True)
    assert torch.equal(out, torch.zeros(70, device=DEV)) and dead_copy.isnan().all()
    with pytest.raises(ValueError, match="module gate"):
        gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                    gates=torch.ones(2, device=DEV), scaled=True)
    with pytest.raises(ValueError, match="gated_dot"):
        gw.col_sums(a, torch.zeros(70, device=DEV), lengths=lengths, T=T,
                    gated_dot=(weights, dot))


def test_column_sums_skip_dead_chunks():
    lengths, _, _, _ = frames_case(6)
    chunk, gates = 24, torch.tensor([1.0, 0.0, 0.5], device=DEV)   # 72 columns, 3 chunks
    a = torch.randn(B * T, 72, device=DEV)
    a[:, chunk:2 * chunk] = float("nan")               # the dead chunk's columns: unwritten
    out = gw.col_sums(a, torch.zeros(72, device=DEV), lengths=lengths, T=T, gates=gates,
                      chunk=chunk, skip_dead=True)
    rows = valid_rows(lengths, T)
    expected = torch.where((gates != 0).repeat_interleave(chunk), a[rows].sum(0), 0.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_column_sums_count_while_any_gate_is_live():
    """any_gate: every row read (the sums over valid rows) while some gate is nonzero, exact
    zeros when all are; gates without skip_dead only."""
    lengths, _, _, _ = frames_case(8)
    a = torch.randn(B * T, 40, device=DEV)
    rows = valid_rows(lengths, T)
    for gates, live in (([0.0, -0.3, 0.0], True), ([0.0, 0.0, 0.0], False)):
        gates = torch.tensor(gates, device=DEV)
        out = gw.col_sums(a, torch.zeros(40, device=DEV), lengths=lengths, T=T, gates=gates,
                          any_gate=True)
        expected = a[rows].sum(0) if live else torch.zeros(40, device=DEV)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="any_gate"):
        gw.col_sums(a, torch.zeros(40, device=DEV), lengths=lengths, T=T, any_gate=True)


@pytest.mark.parametrize("gate", [0.0, 0.7])
def test_col_sums_any_gate_counts_ungated_rows_whatever_the_gates(gate):
    """col_sums(any_gate=True, ungated_rows=T): the first sequence's rows always count (the
    ungated pass of a batch holding two), the others only while a gate is nonzero."""
    torch.manual_seed(11)
    lengths = torch.tensor([9, 11, 4], device=DEV)
    a = torch.randn(B * T, 40, device=DEV)
    gates = torch.full((3,), gate, device=DEV)
    both = gw.col_sums(a, torch.zeros(40), lengths=lengths, T=T, gates=gates, any_gate=True,
                       ungated_rows=T)
    first = gw.col_sums(a[:T], torch.zeros(40), lengths=lengths[:1], T=T,
                        gates=torch.ones(3, device=DEV), any_gate=True)
    rest = gw.col_sums(a[T:], torch.zeros(40), lengths=lengths[1:], T=T, gates=gates,
                       any_gate=True)
    torch.testing.assert_close(both, first + rest, atol=1e-5, rtol=1e-5)
