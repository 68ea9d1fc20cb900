"""Weight and bias gradients of the gated modules' products, over the valid frames only.

- `_wgrad_kernel`: W[P, Q] += A[rows, P]^T @ B[rows, Q] over the valid frames only (the loop
  runs t < lengths[b] per sequence; sequences are split over programs and reduced with fp32
  atomics), dead chunks along P or Q skipped: the programs share out the live tiles only;
  on its TMA path it may also sum A's columns (a bias gradient) by one more small MMA.
- `_col_sums_kernel`: column sums over the valid frames (bias gradients), kept out of the
  masked weight-gradient loop; also the plain sum over rows of per-program partial sums
  (`sum_rows`).
- `_row_blocks_kernel`: the list of row blocks that hold a valid frame (`row_blocks`).

Where nothing is skipped (no gates, or gates that need gradients: `dense_products`), a
module's plain backward products need neither masks nor skips: their operands are written
with zeros at padded rows, and `dense_wgrad` and torch.mm hand them to cuBLAS, faster than
these kernels on dense work (bench/gemm_sweep.py).

Chunks and dead gates mean what they mean for the row GEMM (gated_matmul.py), whose helpers
find the live chunks here too. `wgrad_reference` gives the plain-PyTorch meaning of `wgrad`;
tests/test_gated_wgrad.py checks the launchers against it and against plain sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .common import await_producers, dot_precision, interpreting, warp_uniform
from .gated_matmul import (
    _gate,
    _num_sms,
    _tma_problems,
    _valid_rows,
    live_chunks,
    next_step,
    nth_live,
    tma_by_default,
    valid_rows,
)
from .launch import cdiv, launch, next_pow2


@triton.jit
def _live_tile(rank, CHUNK, NUM_CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr,
               live_rank, BLOCK: tl.constexpr):
    """Offsets (BLOCK,) and their mask for the `rank`-th live tile along a chunked axis:
    tiles never straddle chunks; live_rank is the running count of live chunks."""
    tiles_per_chunk = tl.cdiv(CHUNK, BLOCK)
    j = rank // tiles_per_chunk                            # the j-th live chunk ...
    c = nth_live(live_rank, j)                             # ... is chunk c
    local = (rank - j * tiles_per_chunk) * BLOCK + tl.arange(0, BLOCK)
    return c * CHUNK + local, local < CHUNK


@triton.jit
def _wgrad_kernel(
    a_ptr, b_ptr, out_ptr, gate_ptr, len_ptr, blocks_ptr, sums_ptr,
    P, Q, T, NB, lda, ldb, CHUNK, MIN_SPLIT,
    NUM_CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr, CHUNK_AXIS: tl.constexpr,
    HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr, SEQS_P2: tl.constexpr,
    BP: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TMA: tl.constexpr = False, BLOCK_LIST: tl.constexpr = False, LIST_P2: tl.constexpr = 1,
    A_SUMS: tl.constexpr = False,
    PDL: tl.constexpr = False, GPU: tl.constexpr = False,
):
    # The programs share out the live output tiles, found on the device: with n of them,
    # program i takes tile i % n and the sequences i // n, i // n + split, ... where split =
    # programs // n (at least MIN_SPLIT, so a program never holds more than SEQS_P2
    # sequences). Fewer live tiles, shorter chains: with the grid sized by tile (and the
    # split fixed for all tiles), half the chunks dead took as long as none (77 / 80 us at
    # B80xT250 on the H200, 2026-12-01), each live program walking the same sequences.
    # A program adds its tile's A^T B over its sequences' valid frames to the fp32 output.
    # TMA: a_ptr, b_ptr are descriptors of a [NB*T, P] and b [NB*T, Q] whose padded rows are
    # zeros (the caller's promise): the programs split the NB*T rows among themselves in
    # contiguous runs of whole [BK, BP] / [BK, BQ] blocks with no masks (past the last row
    # the loads are zeros), in place of sequences and masked pointer loads. BLOCK_LIST: they
    # split only the row blocks holding a valid frame (blocks_ptr: their count, then their
    # indices; row_blocks), a program's share of the list (at most LIST_P2) read into
    # registers before its loop. (Read a step at a time, each index load took pipeline
    # stages of its own: dW1 at B32xT250, every frame valid, 31.1 us at 5 stages and 37.8 at
    # 3, against 27.0 for the contiguous runs; H200, 2026-12-03.)
    # Chunks lie along P (CHUNK_AXIS 1) or Q (2); tiles never straddle them. (Column sums of
    # A for bias gradients by a reduction per step over the loaded tile stalled the
    # pipeline, 76 against 47 us at the FFN's dW1; see col_sums.) A_SUMS (TMA): A's column
    # sums as one more product a step, A^T times a [BK, 16] block of ones in its first
    # column, made by every program (a branch in the loop would stop its pipelining) and
    # added to sums_ptr [P] by those of the first Q tile. The loops' trip counts and first
    # rows depend on loaded gates and lengths: warp_uniform tells the compiler they are the
    # same in every lane (fewer instructions a step).
    await_producers(PDL)
    pid = tl.program_id(0)
    p_tiles = tl.cdiv(P, BP)
    q_tiles = tl.cdiv(Q, BQ)
    if CHUNK_AXIS != 0:
        live_rank, n_live = live_chunks(gate_ptr, NUM_CHUNKS, CHUNKS_P2, SKIP_DEAD)
        if CHUNK_AXIS == 1:
            p_tiles = n_live * tl.cdiv(CHUNK, BP)
        else:
            q_tiles = n_live * tl.cdiv(CHUNK, BQ)
    elif SKIP_DEAD:     # one module gate
        p_tiles = tl.where(_gate(gate_ptr, 0, HAS_GATES) != 0.0, p_tiles, 0)
    n_tiles = p_tiles * q_tiles
    parts = NB                                        # what the split shares out
    if BLOCK_LIST:
        parts = tl.load(blocks_ptr)
    elif TMA:
        parts = tl.cdiv(NB * T, BK)
    split = tl.maximum(MIN_SPLIT,
                       tl.minimum(parts, tl.num_programs(0) // tl.maximum(n_tiles, 1)))
    if pid < n_tiles * split:
        tile = pid % n_tiles
        part = pid // n_tiles       # TMA: its rows' share; else its first sequence
        rank_p = tile // q_tiles
        rank_q = tile - rank_p * q_tiles
        if CHUNK_AXIS == 1:
            offs_p, p_ok = _live_tile(rank_p, CHUNK, NUM_CHUNKS, CHUNKS_P2, live_rank, BP)
        else:
            offs_p = rank_p * BP + tl.arange(0, BP)
            p_ok = offs_p < P
        if CHUNK_AXIS == 2:
            offs_q, q_ok = _live_tile(rank_q, CHUNK, NUM_CHUNKS, CHUNKS_P2, live_rank, BQ)
        else:
            offs_q = rank_q * BQ + tl.arange(0, BQ)
            q_ok = offs_q < Q
        acc = tl.zeros([BP, BQ], dtype=tl.float32)
        if TMA:
            p0 = tl.min(offs_p, 0)
            q0 = tl.min(offs_q, 0)
            per = tl.cdiv(parts, split)
            first = warp_uniform(part * per, GPU)
            n_mine = warp_uniform(tl.minimum(per, parts - first), GPU)
            if BLOCK_LIST:
                offs_i = tl.arange(0, LIST_P2)
                listed = tl.load(blocks_ptr + 1 + first + offs_i, mask=offs_i < n_mine,
                                 other=0)
            sums = tl.zeros([BP, 16], dtype=tl.float32)
            first_col = (tl.arange(0, BK)[:, None] * 0 + tl.arange(0, 16)[None, :]) == 0
            ones = tl.where(first_col, 1.0, 0.0).to(a_ptr.dtype)
            for i in range(0, n_mine):
                if BLOCK_LIST:
                    row = tl.sum(tl.where(offs_i == i, listed, 0), 0) * BK
                else:
                    row = (first + i) * BK
                a = a_ptr.load([row, p0])
                b = b_ptr.load([row, q0])
                acc = tl.dot(tl.trans(a), b, acc, input_precision=DOT_PRECISION)
                if A_SUMS:
                    sums = tl.dot(tl.trans(a), ones, sums, input_precision=DOT_PRECISION)
            if A_SUMS:
                first_q = (offs_p * 0 + rank_q) == 0
                tl.atomic_add(sums_ptr + offs_p, tl.sum(sums, 1), mask=p_ok & first_q,
                              sem="relaxed")
        else:
            # one flat loop over (sequence, frame tile) steps: a loop per sequence ran
            # cdiv(T, BK) steps at a time (4 at T=250), mostly pipeline fill and drain. Tiles
            # past a sequence's length load nothing (masked) and add zeros. The lengths of the
            # program's sequences are read before the loop: a load inside it took a pipeline
            # stage (two tile buffers instead of three in an sm_90 compile). The j-th
            # sequence and its frame tile `step` are carried from step to step (next_step).
            first_seq = part
            steps = tl.cdiv(T, BK)
            n_seqs = tl.cdiv(NB - first_seq, split)
            offs_j = tl.arange(0, SEQS_P2)
            lens = tl.load(len_ptr + first_seq + offs_j * split, mask=offs_j < n_seqs, other=0)
            lens = tl.minimum(lens, T)
            j = 0
            step = 0
            for _ in range(0, warp_uniform(n_seqs * steps, GPU)):
                seq = first_seq + j * split
                t = step * BK + tl.arange(0, BK)
                t_ok = t < tl.sum(tl.where(offs_j == j, lens, 0), 0)
                j, step = next_step(j, step, steps)
                frame = seq * T + t
                a = tl.load(a_ptr + frame[:, None] * lda + offs_p[None, :],
                            mask=t_ok[:, None] & p_ok[None, :], other=0.0)
                b = tl.load(b_ptr + frame[:, None] * ldb + offs_q[None, :],
                            mask=t_ok[:, None] & q_ok[None, :], other=0.0)
                acc = tl.dot(tl.trans(a), b, acc, input_precision=DOT_PRECISION)
        tl.atomic_add(out_ptr + offs_p[:, None] * Q + offs_q[None, :], acc,
                      mask=p_ok[:, None] & q_ok[None, :], sem="relaxed")


@triton.jit
def _row_blocks_kernel(len_ptr, out_ptr, count_ptr, M, T, n_blocks,
                       BK: tl.constexpr, BLOCK: tl.constexpr, ROWWISE: tl.constexpr,
                       PDL: tl.constexpr = False):
    # One program: the indices of the BK-row blocks of M flattened frame rows that hold a
    # valid frame, in order, to out[0, count), and count. A block no longer than a sequence
    # meets at most two: it holds a valid frame if its first row is one, or if it reaches
    # into the next sequence and that one is not empty. ROWWISE (blocks longer than a
    # sequence): every row checked.
    await_producers(PDL)
    count = 0
    for start in range(0, n_blocks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        in_range = idx < n_blocks
        if ROWWISE:
            rows = idx[:, None] * BK + tl.arange(0, BK)[None, :]
            has = tl.max(_valid_rows(rows, M, T, len_ptr).to(tl.int32), 1) > 0
        else:
            first = idx * BK
            s0 = first // T
            s1 = (tl.minimum(first + BK, M) - 1) // T
            len0 = tl.load(len_ptr + s0, mask=in_range, other=0)
            len1 = tl.load(len_ptr + s1, mask=in_range, other=0)
            has = ((first - s0 * T) < len0) | ((s1 != s0) & (len1 > 0))
        has = has & in_range
        rank = count + tl.cumsum(has.to(tl.int32), 0) - 1
        tl.store(out_ptr + rank, idx, mask=has)
        count += tl.sum(has.to(tl.int32), 0)
    tl.store(count_ptr, count)


@triton.jit
def _col_sums_kernel(a_ptr, out_ptr, copy_ptr, len_ptr, gate_ptr, dot_w_ptr, dot_out_ptr, M, N,
                     T, lda, ROWS_PER_PROG,
                     CHUNK, UNGATED, NUM_GATES: tl.constexpr, GATES_P2: tl.constexpr,
                     SKIP_DEAD: tl.constexpr, PER_CHUNK: tl.constexpr, COPY: tl.constexpr,
                     ANY_GATE: tl.constexpr, HAS_UNGATED: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, ALL_ROWS: tl.constexpr = False,
                     SCALED: tl.constexpr = False, GATED_DOT: tl.constexpr = False,
                     PDL: tl.constexpr = False):
    # Program (pid_n, pid_m) sums columns [pid_n*BN, +BN) over the valid rows of its range.
    # With SKIP_DEAD, columns whose gate is 0 get nothing (a dead unit's columns are
    # unwritten): the gate of column n is gates[n // CHUNK] with PER_CHUNK, else all the
    # gates together. A tile with no live column reads nothing; a tile with some reads all
    # its columns and drops the dead ones' sums (a load masked per column by its gate is
    # not vectorised: 2-byte loads, 13 us for a 15 MB sweep on the H200). With COPY (not
    # with SKIP_DEAD per chunk: every live row is read) each loaded tile is also stored to
    # copy[M, N] with zeros at padded rows. ANY_GATE (not with SKIP_DEAD): every row is
    # read, and the sums are multiplied by whether any gate is nonzero (a bias that only a
    # live unit adds), but for rows < UNGATED with HAS_UNGATED (the ungated pass of a batch
    # holding two).
    # ALL_ROWS: every row < M counts (no lengths: a plain sum over rows, `sum_rows`).
    # SCALED (not with ANY_GATE): rows >= UNGATED are multiplied by gates[0], in the sums and
    # in the copy; with GATED_DOT, dot_out[0] gets those rows' sums before the scale dotted
    # with dot_w [N] (the conv's bias term of its gate's gradient).
    await_producers(PDL)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    cols = pid_n * BN + tl.arange(0, BN)
    col_ok = cols < N
    # a [BM, BN] accumulator summed across rows once at the end: a cross-warp row reduction
    # per loaded tile serialised load and reduce (20.6 us for the MHSA's 18 MB, 2026-11-30)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    acc2 = tl.zeros([BM, BN], dtype=tl.float32)
    any_on = 1.0
    scale = 1.0
    if SCALED:
        scale = tl.load(gate_ptr).to(tl.float32)
    if ANY_GATE:
        offs_g = tl.arange(0, GATES_P2)
        g = tl.load(gate_ptr + offs_g, mask=offs_g < NUM_GATES, other=0.0)
        any_on = tl.max((g != 0.0).to(tl.float32), 0)
    start = pid_m * ROWS_PER_PROG
    stop = tl.minimum(start + ROWS_PER_PROG, M)
    col_live = col_ok
    if SKIP_DEAD:
        if PER_CHUNK:
            g_col = tl.load(gate_ptr + cols // CHUNK, mask=col_ok, other=0.0)
            col_live = col_ok & (g_col != 0.0)
            stop = tl.where(tl.max(col_live.to(tl.int32), 0) > 0, stop, start)
        else:
            offs_g = tl.arange(0, GATES_P2)
            g = tl.load(gate_ptr + offs_g, mask=offs_g < NUM_GATES, other=0.0)
            stop = tl.where(tl.max((g != 0.0).to(tl.int32), 0) > 0, stop, start)
    # Latency-bound: each iteration loads the next tile before summing its own, masked by
    # the program's range only (not by the lengths, which would make it wait for their
    # load first); padded rows are read, then dropped by a NaN-safe select.
    rows = start + tl.arange(0, BM)
    x_next = tl.load(a_ptr + rows[:, None] * lda + cols[None, :],
                     mask=(rows < stop)[:, None] & col_ok[None, :], other=0.0)
    for r0 in range(start, stop, BM):
        rows = r0 + tl.arange(0, BM)
        x = x_next
        x_next = tl.load(a_ptr + (rows + BM)[:, None] * lda + cols[None, :],
                         mask=(rows + BM < stop)[:, None] & col_ok[None, :], other=0.0)
        if ALL_ROWS:
            ok = rows < M
        else:
            ok = _valid_rows(rows, M, T, len_ptr)
        if GATED_DOT:
            acc2 += tl.where((ok & (rows >= UNGATED))[:, None], x.to(tl.float32), 0.0)
        if SCALED:
            x = x.to(tl.float32) * tl.where(rows < UNGATED, 1.0, scale)[:, None]
        if HAS_UNGATED:     # ANY_GATE's factor row by row
            acc += tl.where(ok[:, None], x.to(tl.float32), 0.0) * tl.where(
                rows < UNGATED, 1.0, any_on)[:, None]
        else:
            acc += tl.where(ok[:, None], x.to(tl.float32), 0.0)
        if COPY:
            tl.store(copy_ptr + rows[:, None] * N + cols[None, :],
                     tl.where(ok[:, None], x, 0.0).to(copy_ptr.dtype.element_ty),
                     mask=(rows < stop)[:, None] & col_ok[None, :])
    sums = tl.sum(acc, 0)
    if ANY_GATE and not HAS_UNGATED:
        sums = sums * any_on
    tl.atomic_add(out_ptr + cols, sums, mask=col_live, sem="relaxed")
    if GATED_DOT:
        w = tl.load(dot_w_ptr + cols, mask=col_live, other=0.0).to(tl.float32)
        tl.atomic_add(dot_out_ptr, tl.sum(tl.sum(acc2, 0) * w, 0), sem="relaxed")


# ----------------------------------------------------------------------------- launchers

# The TMA path's register cap with a_sums: two programs of 8 warps a SM need at most 128
# registers a thread; the sums' accumulator and ones block took it to 138 (one program a
# SM) in an sm_90 compile (Triton 3.6)
WGRAD_SUMS_MAXNREG = 128

# Whether the TMA path's default tiles visit only the row blocks holding a valid frame
# (BLOCK_LIST) rather than every block in contiguous runs (an sm_90 compile keeps the loop
# and its 3 tile buffers as without the list: each program's share of it is read into
# registers before its loop; bench/NOTES.md, 2026-12-03)
_WGRAD_TMA_LIST = False


def _wgrad_blocks(dtype: torch.dtype, chunk: int = 0, chunk_axis: int = 0) -> dict:
    """16-bit: 128x128x64 / 8 warps / 3 stages at one wave (2 programs a SM), where a chunked
    axis is cut in whole tiles of 128; else 64x128x64 / 4 warps / 3 stages at 3 a SM (the
    MHSA in-projection's chunks of 192 rows). At B80xT250 on the H200 the FFN's dW1 took
    68.3 / 49.2 us (all / half the chunks live) with the first, 81.0 / 54.2 with the second
    (bench/gemm_sweep.py, 2026-12-01): the larger tile reads half the L2 bytes per FLOP.
    With TMA loads (rows_zeroed) the same tile took 27.0 / 21.3 us (all / half live) for dW1
    at B32xT250 against the masked loads' 32.8 / 24.1 and cuBLAS's 27.6 for the dense
    product (every frame valid; 4 stages at one program a SM 27.8 / 20.3, 128x256 30.3 /
    22.8, 4 programs a SM 33.8 / 27.5; H200, 2026-12-02).
    fp32 keeps the configuration its GPU test ran with."""
    if interpreting():
        return dict(BP=32, BQ=32, BK=32, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3)
    if chunk_axis == 0 or chunk % 128 == 0:
        return dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3, programs_per_sm=2)
    return dict(BP=64, BQ=128, BK=64, num_warps=4, num_stages=3, programs_per_sm=3)


def row_blocks(lengths: torch.Tensor, T: int, block: int) -> torch.Tensor:
    """int32 [1 + cdiv(B*T, block)]: how many `block`-row blocks of the B*T flattened frame
    rows hold a valid frame, then their indices in order (the rest unwritten). On the device,
    without a host sync; one list serves every product over the same rows."""
    M = lengths.shape[0] * T
    n_blocks = cdiv(M, block)
    out = torch.empty(1 + n_blocks, dtype=torch.int32, device=lengths.device)
    rowwise = block > T
    launch(_row_blocks_kernel, (1,), lengths, out[1:], out, M, T, n_blocks, BK=block,
           BLOCK=32 if rowwise or interpreting() else 1024, ROWWISE=rowwise, num_warps=4)
    return out


def wgrad_row_blocks(lengths: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor | None:
    """`row_blocks` at the row block of `wgrad`'s default tiles for operands of `dtype`: the
    valid_blocks argument of several weight gradients over the same rows; None where those
    tiles visit every row block (no list to make)."""
    if not _WGRAD_TMA_LIST:
        return None
    return row_blocks(lengths, T, _wgrad_blocks(dtype)["BK"])


def wgrad(a, b, *, lengths, T, gates=None, chunk=0, num_chunks=1, chunk_axis=0,
          skip_dead=False, out=None, blocks=None, rows_zeroed=False, valid_blocks=None,
          a_sums=None):
    """fp32 W[P, Q] = sum over valid frames of a[rows, P]^T b[rows, Q]. `out`: a zeroed fp32
    [P, Q] to add to. blocks: the tiles (BP, BQ, BK, num_warps, num_stages), optionally
    programs_per_sm, how many programs a SM gets when the rows are split among them (3), and
    TMA. rows_zeroed: a and b hold zeros (finite values) at every padded row, so that the
    kernel may read them: then, where `tma_by_default` holds and the layouts allow, the
    operands come by TMA in whole blocks (or where blocks ask for TMA: a ValueError if the
    layouts do not allow it). The TMA path visits every row block, or with BLOCK_LIST in
    blocks (or valid_blocks given) only those holding a valid frame: valid_blocks,
    `row_blocks(lengths, T, BK)` made once for several products, or None (made here).
    a_sums (chunk_axis 0 or 1): a zeroed fp32 [P] that gets a's column sums over the valid
    frames too (a bias gradient; dead chunks' columns left 0): by the TMA path's programs,
    or else by `col_sums`."""
    P, Q = a.shape[1], b.shape[1]
    NB = lengths.shape[0]
    blk = dict(blocks or _wgrad_blocks(a.dtype, chunk, chunk_axis))
    programs_per_sm = blk.pop("programs_per_sm", 3)
    use_tma = blk.pop("TMA", False)
    block_list = blk.pop("BLOCK_LIST", blocks is None and _WGRAD_TMA_LIST) or \
        valid_blocks is not None
    if use_tma and not rows_zeroed:
        raise ValueError("wgrad: TMA loads read padded rows: they need rows_zeroed")
    a_arg, b_arg = a, b
    if use_tma or (blocks is None and rows_zeroed and tma_by_default(a)):
        problems = _tma_problems(a, b, 0, blk["BK"])
        if problems and use_tma:
            raise ValueError(f"wgrad TMA: {'; '.join(problems)}")
        use_tma = not problems
        if use_tma:
            a_arg = TensorDescriptor.from_tensor(a, [blk["BK"], blk["BP"]])
            b_arg = TensorDescriptor.from_tensor(b, [blk["BK"], blk["BQ"]])
    if out is None:
        out = torch.zeros(P, Q, dtype=torch.float32, device=a.device)
    if a_sums is not None and (a_sums.shape != (P,) or chunk_axis == 2):
        raise ValueError(f"wgrad: a_sums must be ({P},) and chunks not along Q, got "
                         f"{tuple(a_sums.shape)}, chunk_axis={chunk_axis}")
    if a_sums is not None and not use_tma:
        col_sums(a, a_sums, lengths=lengths, T=T, gates=gates, skip_dead=skip_dead,
                 chunk=chunk if chunk_axis == 1 else 0)
    p_tiles = num_chunks * cdiv(chunk, blk["BP"]) if chunk_axis == 1 else \
        cdiv(P, blk["BP"])
    q_tiles = num_chunks * cdiv(chunk, blk["BQ"]) if chunk_axis == 2 else \
        cdiv(Q, blk["BQ"])
    n_tiles = p_tiles * q_tiles          # all live; the kernel finds the live ones
    parts = cdiv(NB * T, blk["BK"]) if use_tma else NB      # row blocks (at most), or sequences
    block_list = block_list and use_tma
    if a_sums is not None and use_tma and blocks is None and a.is_cuda:
        blk["maxnreg"] = WGRAD_SUMS_MAXNREG
    if block_list and valid_blocks is None:
        valid_blocks = row_blocks(lengths, T, blk["BK"])
    if block_list and valid_blocks.shape != (1 + parts,):
        raise ValueError(f"wgrad: valid_blocks of shape {tuple(valid_blocks.shape)} are not "
                         f"row_blocks of {NB}x{T} rows in blocks of BK={blk['BK']}")
    if a.is_cuda:
        want = programs_per_sm * _num_sms(a.device.index or 0)
        split = max(1, min(parts, want // n_tiles))
    else:
        split = min(parts, 2)
    # the grid: every tile `split` ways; with dead tiles the live ones split further
    launch(_wgrad_kernel, (n_tiles * split,),
        a_arg, b_arg, out, gates if gates is not None else out, lengths,
        valid_blocks if block_list else lengths, a_sums if a_sums is not None else out,
        P, Q, T, NB, a.stride(0), b.stride(0), max(chunk, 1), split,
        NUM_CHUNKS=num_chunks, CHUNKS_P2=next_pow2(num_chunks),
        CHUNK_AXIS=chunk_axis, HAS_GATES=gates is not None,
        SKIP_DEAD=skip_dead and gates is not None,
        SEQS_P2=1 if use_tma else next_pow2(cdiv(NB, split)),
        DOT_PRECISION=dot_precision(a.dtype), TMA=use_tma, BLOCK_LIST=block_list,
        LIST_P2=next_pow2(cdiv(parts, split)) if block_list else 1,
        A_SUMS=a_sums is not None and use_tma, **blk)
    return out


# torch.mm(..., out_dtype=) (aten::mm.dtype): cuBLAS with fp32 output from 16-bit operands
_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


def dense_products(x: torch.Tensor, gates: torch.Tensor | None, skip_dead: bool) -> bool:
    """Whether a gated module's plain products (a weight gradient, an input gradient) may
    run as dense ones over every row: nothing is skipped (no gates, or gates that need
    gradients), and on CUDA cuBLAS can write fp32 from 16-bit operands. The module then
    writes zeros at the padded rows of those products' operands."""
    if gates is not None and skip_dead:
        return False
    return not x.is_cuda or _MM_OUT_DTYPE


def dense_wgrad(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp32 W[P, Q] = a[M, P]^T b[M, Q] over every row, for operands that are zero at padded
    rows (so that no row needs masking) and have no dead chunks to skip: what `wgrad`
    computes then, without its masks. 16-bit CUDA operands go to cuBLAS with fp32 output:
    the FFN's dW1 took 44 us there against the masked kernel's 79 at B80xT250 (H200,
    bench/gemm_sweep.py, 2026-12-01)."""
    if a.is_cuda and a.dtype == b.dtype and a.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(a.t(), b, out_dtype=torch.float32)
    return torch.mm(a.t().float(), b.float())


def col_sums(a, out, *, lengths, T, gates=None, skip_dead=False, chunk=0, copy=None,
             any_gate=False, ungated_rows=0, scaled=False, gated_dot=None, config=None):
    """out[N] (fp32, zeroed) += sum over the valid frame rows of a[M, N]: bias gradients
    (lengths None: over every row).
    With skip_dead, columns of dead units are skipped: column n belongs to gates[n // chunk]
    when chunk > 0, else to the module (nothing read when every gate is exactly 0).
    copy: an [M, N] contiguous tensor of a's dtype that gets a with zeros at padded rows, in
    the same pass (not with skip_dead per chunk, which leaves columns unread; with skip_dead
    per module, a dead module's copy is left unwritten, for readers that skip it too).
    any_gate: the sums count only while any gate is nonzero (times 0 or 1; every row read;
    gates given, not with skip_dead): a bias gradient with no host-side test of the gates;
    rows [0, ungated_rows) (any_gate only: the ungated pass of a batch holding two) count
    whatever the gates.
    scaled (a module gate (1,) given, not with any_gate): rows >= ungated_rows are multiplied
    by the gate, in the sums and in the copy; gated_dot (scaled only):
    (weights [N], out fp32 (1,)): out += the sums of those rows before the scale, dotted
    with the weights.
    config: dict(BM, BN, num_warps) in place of the defaults (bench/sweep_col_sums.py)."""
    M, N = a.shape
    skip_dead = skip_dead and gates is not None
    if copy is not None and ((skip_dead and chunk) or copy.shape != a.shape or
                             copy.dtype != a.dtype or not copy.is_contiguous()):
        raise ValueError(f"col_sums: copy must be a contiguous {tuple(a.shape)} {a.dtype} "
                         f"and skip_dead per chunk unset, got {tuple(copy.shape)} "
                         f"{copy.dtype}, skip_dead={skip_dead}, chunk={chunk}")
    if any_gate and (gates is None or skip_dead or scaled):
        raise ValueError(f"col_sums: any_gate needs gates, skip_dead False and no scale, got "
                         f"gates {gates is not None}, skip_dead={skip_dead}, scaled={scaled}")
    if scaled and (gates is None or gates.numel() != 1 or chunk):
        raise ValueError(f"col_sums: scaled needs a module gate (1,), got "
                         f"{None if gates is None else tuple(gates.shape)}, chunk={chunk}")
    if gated_dot is not None and (not scaled or gated_dot[0].shape != (N,)
                                  or gated_dot[1].shape != (1,)):
        raise ValueError(f"col_sums: gated_dot is for scaled sums only, with ({N},) weights "
                         f"and a (1,) output")
    if ungated_rows and not (any_gate or scaled):
        raise ValueError(f"col_sums: ungated_rows={ungated_rows} is for any_gate or scaled "
                         f"sums only")
    # 64-row tiles for narrow sums: at 32 x 250 x 384 half the programs (and atomics) for
    # the same reads, 10.7 against 12.2 us; at 80 x 250 within 1%, and at N 1536 18.7
    # against 18.3 (bench/sweep_col_sums.py, H200, 2026-12-03)
    rows_tile = 64 if N <= 512 else 32
    blk = {**(dict(BM=32, BN=32) if interpreting() else dict(BM=rows_tile, BN=128)),
           **(config or {})}
    # a memory-bound sweep: enough programs that every SM has several tiles' loads in flight
    # (6 a SM; 3 or 12, or the row loop's loads as async copies, were 2-20% slower on the
    # H200: bench/sweep_col_sums.py, 2026-12-01)
    programs = 6 * _num_sms(a.device.index or 0) if a.is_cuda else 2
    n_tiles = cdiv(N, blk["BN"])
    rows_per_prog = cdiv(cdiv(M, max(1, programs // n_tiles)), blk["BM"]) * blk["BM"]
    n_gates = 1 if gates is None else gates.shape[0]
    launch(_col_sums_kernel, (n_tiles, cdiv(M, rows_per_prog)),
        a, out, a if copy is None else copy, out if lengths is None else lengths,
        out if gates is None else gates, *(gated_dot or (out, out)), M, N, T,
        a.stride(0), rows_per_prog, max(chunk, 1),
        ungated_rows, NUM_GATES=n_gates, GATES_P2=next_pow2(n_gates), SKIP_DEAD=skip_dead,
        PER_CHUNK=chunk > 0, COPY=copy is not None, ANY_GATE=any_gate,
        HAS_UNGATED=any_gate and ungated_rows > 0, ALL_ROWS=lengths is None, SCALED=scaled,
        GATED_DOT=gated_dot is not None, **blk)
    return out


def sum_rows(parts: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """parts [R, ...] fp32 -> out [...] fp32 += parts.sum(0) (out: zeroed, default new): the
    kernels' per-program partial sums, added up by `col_sums`' sweep (fp32 atomics, in any
    order). torch's sum(0) over these few-row-many-column shapes is latency-bound: 26 us a
    call for the conv backward's 24-30 MB on the H200 (bench/results/profiles, 2026-12-01)."""
    if out is None:
        out = torch.zeros(parts.shape[1:], dtype=torch.float32, device=parts.device)
    if parts.dtype != torch.float32 or out.shape != parts.shape[1:] or not out.is_contiguous():
        raise ValueError(f"sum_rows: parts must be fp32 and out a contiguous {parts.shape[1:]}, "
                         f"got {parts.dtype} and {tuple(out.shape)}")
    flat = parts.reshape(parts.shape[0], -1)
    col_sums(flat, out.view(-1), lengths=None, T=flat.shape[0])
    return out


# ----------------------------------------------------------------------------- references

def wgrad_reference(a, b, lengths, T):
    """sum over valid frames of a^T b, in fp32."""
    rows = valid_rows(lengths, T)
    a = torch.where(rows[:, None], a.float(), 0.0)
    return a.T @ torch.where(rows[:, None], b.float(), 0.0)
