"""The row GEMM of the gated modules: it skips dead units and padded frames on the device.

`_rows_gemm_kernel`: C[M, N] = A[M, K] @ B[K, N] over frame rows (M = B*T flattened), with
the gated chunks along N (a program of a dead chunk exits) or along K (the K-loop skips dead
chunks), fully padded row tiles skipped, and epilogues fused per use (bias, SiLU, gates, GLU,
the SiLU backward with gate- and bias-gradient column sums, output gate). It serves every
GEMM of the FFN and conv modules that has frames as its rows; the weight and bias gradients
of the same products are in gated_wgrad.py. The helpers that find the live chunks on the
device (`live_chunks`, `nth_live`, `next_step`) serve both files and the MHSA's projections.

A gate g_c "is dead" when SKIP_DEAD is set and g_c == 0, read on the device. Callers set
SKIP_DEAD when the gates need no gradient; otherwise every chunk is computed so d/dg is exact.

`rows_gemm_reference` (the plain store epilogue) gives the plain-PyTorch meaning of the
launcher; tests/test_gated_matmul.py checks every epilogue.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .common import (
    await_producers,
    dot_precision,
    interpreting,
    sigmoid,
    valid_mask,
    warp_uniform,
)
from .launch import cdiv, launch, next_pow2

# epilogues of _rows_gemm_kernel
EPI_STORE = 0      # out = (acc + bias * bias_scale) * out_scale, zero at padded rows
EPI_SILU_GATE = 1  # pre = acc + bias (saved to aux), out = g_c * silu(pre)
EPI_SILU_BWD = 2   # out = acc * g_c * silu'(pre[aux]); colsum(acc * silu(pre)) -> sum1
EPI_GLU = 3        # accumulators a (cols n), b (cols n + N): u -> aux, out = a * sigmoid(b)
EPI_GATE_BWD = 4   # colsum(acc * aux) -> sum1 (gate gradient), out = acc * g0

BIAS_PLAIN, BIAS_ANY_GATE, BIAS_GATE0 = 0, 1, 2


# ----------------------------------------------------------------------------- helpers

@triton.jit
def _valid_rows(rows, M, T, len_ptr):
    """True for flattened frame rows b*T + t with t < lengths[b]."""
    in_range = rows < M
    b = rows // T
    length = tl.load(len_ptr + b, mask=in_range, other=0)
    return in_range & ((rows - b * T) < length)


@triton.jit
def live_chunks(gate_ptr, n, N_P2: tl.constexpr, SKIP_DEAD: tl.constexpr):
    """(each chunk's rank among the live ones, counting itself, (N_P2,); how many are live).
    Chunk c < n is live where its gate is nonzero, or always without SKIP_DEAD. A loop over
    the live chunks alone (the j-th one: nth_live) has no branch in its body, which keeps it
    one the compiler pipelines; an `if gate != 0` in the body did not (bench/NOTES.md)."""
    offs = tl.arange(0, N_P2)
    live = offs < n
    if SKIP_DEAD:
        live = live & (tl.load(gate_ptr + offs, mask=live, other=0.0) != 0.0)
    live_rank = tl.cumsum(live.to(tl.int32), 0)
    return live_rank, tl.sum(live.to(tl.int32), 0)


@triton.jit
def nth_live(live_rank, j):
    """The index of the j-th live chunk (from 0), from live_chunks' ranks."""
    return tl.sum((live_rank <= j).to(tl.int32), 0)


@triton.jit
def next_step(j, step, steps):
    """(j, step) after step `step` of the j-th of a row of runs of `steps` steps each: a loop
    over such runs carries the two from step to step (a division of the step index at every
    step cost the long-K product 19.3 us against 17.9; bench/NOTES.md)."""
    step += 1
    wrap = step == steps
    return j + wrap.to(tl.int32), tl.where(wrap, 0, step)


@triton.jit
def _gate(gate_ptr, c, HAS_GATES: tl.constexpr):
    if HAS_GATES:
        g = tl.load(gate_ptr + c).to(tl.float32)
    else:
        g = 1.0
    return g


@triton.jit
def _chunk_cols(pid, CHUNK, BN: tl.constexpr):
    """Columns of tile `pid` when tiles never straddle chunks of size CHUNK: (chunk, first
    column, cols, ok)."""
    tiles_per_chunk = tl.cdiv(CHUNK, BN)
    c = pid // tiles_per_chunk
    first = c * CHUNK + (pid - c * tiles_per_chunk) * BN
    local = first - c * CHUNK + tl.arange(0, BN)
    return c, first, first + tl.arange(0, BN), local < CHUNK


# ----------------------------------------------------------------------------- row GEMM

@triton.jit
def _rows_gemm_kernel(
    a_ptr, b_ptr, out_ptr, bias_ptr, gate_ptr, len_ptr, aux_ptr, sum1_ptr,
    M, N, K, T, CHUNK, UNGATED, stride_am, stride_bk, stride_bn,
    NUM_CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr, CHUNK_AXIS: tl.constexpr,
    HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr, EPI: tl.constexpr, HAS_BIAS: tl.constexpr,
    BIAS_MODE: tl.constexpr, SCALE_OUT: tl.constexpr, SAVE_AUX: tl.constexpr,
    FINAL: tl.constexpr, HAS_SUM1: tl.constexpr,
    HAS_UNGATED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, SUBTILE: tl.constexpr = False, TMA: tl.constexpr = False,
    B_NK: tl.constexpr = False, AUX_ALL_ROWS: tl.constexpr = False,
    AUX_PREFETCH: tl.constexpr = False, TILE_SUMS: tl.constexpr = False,
    CHUNK_SUMS: tl.constexpr = False,
    PDL: tl.constexpr = False, GPU: tl.constexpr = False,
):
    # Program (pid_n, pid_m) computes rows [pid_m*BM, +BM) x one BN tile of columns. With
    # CHUNK_AXIS == 1 column tiles live inside one chunk of size CHUNK; with CHUNK_AXIS == 2
    # the K-loop walks the chunks and skips dead ones. CHUNK_AXIS == 0: one module gate.
    # FINAL outputs are written everywhere (zeros for padded rows / dead work); the other
    # outputs are intermediates written for the valid rows of live tiles only.
    # TMA: a_ptr and b_ptr are tensor descriptors (a [M, K]; b [K, N], or its [N, K]
    # transpose with B_NK) and the operands come by the Hopper tensor-memory accelerator,
    # whole blocks without masks: padded rows are read too (anything, NaN included), and
    # each output row depends on its own row of a only, so the epilogue's selects drop
    # them; past a tensor's edge the loads are zeros.
    # AUX_ALL_ROWS (a SiLU backward default): the backward
    # epilogues read their saved tile at every in-range row, padded ones too, so that the
    # load waits on addresses only, not on the lengths read after the K-loop; the padded
    # rows' values are dropped by selects.
    # AUX_PREFETCH (SUBTILE, EPI_SILU_BWD; a default too): the saved
    # tile's two row halves loaded together right after the K-loop, in place of each half's
    # load at the start of its epilogue, where the load's latency is waited out (ncu,
    # 2026-12-01: ~17% of the kernel's stall samples on the loaded values' converts).
    # Loaded before the K-loop instead, they spilled and ran slower (bench/NOTES.md).
    # HAS_UNGATED: rows < UNGATED (the first sequences of a batch holding two passes) run as
    # if every gate were 1 and add nothing to the gates' gradient sums (sum1); not with
    # SKIP_DEAD (the launcher checks)
    # TILE_SUMS (EPI_SILU_BWD, EPI_GATE_BWD): the gates' gradient sums as one number a tile
    # (a row half with SUBTILE), added at the tile's first column, in place of a column sum
    # added at every column: sum1's sums over a chunk's columns are the same, and the tile
    # is reduced to a scalar without the per-column exchange between warps, with one atomic
    # in place of BN. CHUNK_SUMS (TILE_SUMS, CHUNK_AXIS 0 or 1): added at the tile's chunk's
    # index instead (0 for CHUNK_AXIS 0), so that sum1 [NUM_CHUNKS] holds the chunks' sums
    # (sum1_ptr is moved by c - col0 below: the epilogues add at sum1_ptr + col0)
    await_producers(PDL)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    row_ok = _valid_rows(rows, M, T, len_ptr)
    any_row = tl.max(row_ok.to(tl.int32), 0) > 0
    if CHUNK_AXIS == 1:
        c, col0, cols, col_ok = _chunk_cols(pid_n, CHUNK, BN)
    else:
        c = 0
        col0 = pid_n * BN
        cols = col0 + tl.arange(0, BN)
        col_ok = cols < N
    if CHUNK_SUMS:
        sum1_ptr += c - col0
    g = _gate(gate_ptr, c, HAS_GATES)
    live = any_row
    fill = True         # FINAL's zeros go to this tile: all but a dead chunk's
    if SKIP_DEAD and CHUNK_AXIS != 2:
        live = live & (g != 0.0)
        fill = g != 0.0

    acc = tl.zeros([BM, BN], dtype=tl.float32)
    acc_b = tl.zeros([BM, BN], dtype=tl.float32)
    if live:
        # one flat K-loop (a nested loop per chunk ran 6 steps at a time, mostly pipeline
        # fill); with CHUNK_AXIS == 2 it visits the live chunks only: step i reads step
        # `step` of chunk kc, the j-th live one, found from the running count of live gates.
        # j and step are carried from step to step (next_step): found as i // steps and its
        # remainder, they took the long-K product 19.3 us against 17.9 (bare, M 8000, K 1536,
        # N 384, 64x128 tiles, H200; 16.9 with no chunks at all; bench/NOTES.md). The trip
        # count, made from loaded gates, is passed through warp_uniform
        if CHUNK_AXIS == 2:
            steps = tl.cdiv(CHUNK, BK)
            live_rank, n_live = live_chunks(gate_ptr, NUM_CHUNKS, CHUNKS_P2, SKIP_DEAD)
            n_steps = warp_uniform(n_live * steps, GPU)
        else:
            steps = tl.cdiv(K, BK)
            n_steps = steps
        j = 0
        step = 0
        for i in range(0, n_steps):
            if CHUNK_AXIS == 2:
                kc = nth_live(live_rank, j)
                k0 = kc * CHUNK + step * BK
                k_local = step * BK + tl.arange(0, BK)
                k_ok = k_local < CHUNK
                ks = kc * CHUNK + k_local
                j, step = next_step(j, step, steps)
            else:
                k0 = i * BK
                ks = i * BK + tl.arange(0, BK)
                k_ok = ks < K
            if TMA:      # the launcher checked: CHUNK a multiple of BK along K
                a = a_ptr.load([pid_m * BM, k0])
                if B_NK:
                    b = b_ptr.load([col0, k0]).T
                else:
                    b = b_ptr.load([k0, col0])
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
                if EPI == 3:
                    if B_NK:
                        b2 = b_ptr.load([col0 + N, k0]).T
                    else:
                        b2 = b_ptr.load([k0, col0 + N])
                    acc_b = tl.dot(a, b2, acc_b, input_precision=DOT_PRECISION)
            else:
                a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :],
                            mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b_ptrs = b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn
                b_mask = k_ok[:, None] & col_ok[None, :]
                # a no-op when the launcher passes weights in the activations' dtype
                b = tl.load(b_ptrs, mask=b_mask, other=0.0).to(a.dtype)
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
                if EPI == 3:
                    b2 = tl.load(b_ptrs + N * stride_bn, mask=b_mask, other=0.0).to(a.dtype)
                    acc_b = tl.dot(a, b2, acc_b, input_precision=DOT_PRECISION)

    if SUBTILE:
        # the epilogue in two row halves: its temporaries (the saved tile, sigmoids, the
        # column sums' products) live for half the tile at a time, so that the SiLU
        # backward runs on 128x128 tiles (fewer bytes from L2) without spilling
        half: tl.constexpr = BM // 2
        rows0 = pid_m * BM + tl.arange(0, half)
        PREFETCH: tl.constexpr = EPI == 2 and AUX_PREFETCH
        acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (2, half, BN)), (1, 2, 0)))
        acc_b0, acc_b1 = tl.split(tl.permute(tl.reshape(acc_b, (2, half, BN)), (1, 2, 0)))
        if PREFETCH:
            saved0 = _saved_rows(aux_ptr, rows0, cols, col_ok, live, M, N, T, len_ptr,
                                 AUX_ALL_ROWS)
            saved1 = _saved_rows(aux_ptr, rows0 + half, cols, col_ok, live, M, N, T, len_ptr,
                                 AUX_ALL_ROWS)
        else:     # placeholders, unread: each epilogue loads its own
            saved0 = acc0
            saved1 = acc1
        _epilogue(acc0, acc_b0, rows0, cols, col_ok, g, live, fill, M, N, T, UNGATED, len_ptr,
                  out_ptr, col0, bias_ptr, gate_ptr, aux_ptr, sum1_ptr,
                  saved0, NUM_CHUNKS, CHUNKS_P2, EPI, HAS_BIAS, BIAS_MODE, SCALE_OUT, SAVE_AUX,
                  FINAL, HAS_SUM1, AUX_ALL_ROWS, PREFETCH, HAS_UNGATED,
                  TILE_SUMS, GPU)
        _epilogue(acc1, acc_b1, rows0 + half, cols, col_ok, g, live, fill,
                  M, N, T, UNGATED, len_ptr,
                  out_ptr, col0, bias_ptr, gate_ptr, aux_ptr,
                  sum1_ptr, saved1, NUM_CHUNKS, CHUNKS_P2, EPI, HAS_BIAS, BIAS_MODE,
                  SCALE_OUT, SAVE_AUX, FINAL, HAS_SUM1, AUX_ALL_ROWS, PREFETCH,
                  HAS_UNGATED, TILE_SUMS, GPU)
    else:
        _epilogue(acc, acc_b, rows, cols, col_ok, g, live, fill, M, N, T, UNGATED, len_ptr,
                  out_ptr, col0, bias_ptr, gate_ptr, aux_ptr, sum1_ptr,
                  acc, NUM_CHUNKS, CHUNKS_P2, EPI, HAS_BIAS, BIAS_MODE, SCALE_OUT, SAVE_AUX,
                  FINAL, HAS_SUM1, AUX_ALL_ROWS, False, HAS_UNGATED,
                  TILE_SUMS, GPU)


@triton.jit
def _saved_rows(aux_ptr, rows, cols, col_ok, live, M, N, T, len_ptr,
                AUX_ALL_ROWS: tl.constexpr):
    """The saved [rows, cols] tile in its own dtype, read where the SiLU backward's epilogue
    reads it (`aux_read` there), nothing in a dead tile."""
    if AUX_ALL_ROWS:
        ok = rows < M
    else:
        ok = _valid_rows(rows, M, T, len_ptr)
    ok = tl.where(live, ok, False)
    return tl.load(aux_ptr + rows[:, None] * N + cols[None, :],
                   mask=ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _epilogue(acc, acc_b, rows, cols, col_ok, g, live, fill, M, N, T, UNGATED, len_ptr, out_ptr,
              col0, bias_ptr, gate_ptr, aux_ptr, sum1_ptr, saved,
              NUM_CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr, EPI: tl.constexpr,
              HAS_BIAS: tl.constexpr, BIAS_MODE: tl.constexpr, SCALE_OUT: tl.constexpr,
              SAVE_AUX: tl.constexpr, FINAL: tl.constexpr, HAS_SUM1: tl.constexpr,
              AUX_ALL_ROWS: tl.constexpr, HAS_SAVED: tl.constexpr,
              HAS_UNGATED: tl.constexpr, TILE_SUMS: tl.constexpr, GPU: tl.constexpr):
    """The row GEMM's epilogues (EPI_*) on the accumulator tile of `rows` x `cols` (its
    first column: col0). saved: the SiLU backward's saved tile, loaded already (HAS_SAVED),
    or unread. g: the tile's gate, made a [rows, 1] column with HAS_UNGATED. fill: whether
    the SiLU epilogues' FINAL zeros reach this tile (not in a skipped dead chunk, whose
    columns no reader takes)."""
    row_in = rows < M
    row_ok = _valid_rows(rows, M, T, len_ptr)
    tile = rows[:, None] * N + cols[None, :]
    store_ok = row_ok[:, None] & col_ok[None, :]
    grad_ok = store_ok          # the rows whose products the gates' gradient sums take
    if HAS_UNGATED:
        ungated = rows < UNGATED
        g = tl.where(ungated, 1.0, g)[:, None]
        grad_ok = store_ok & (rows >= UNGATED)[:, None]
    # where a backward epilogue reads its saved tile (AUX_ALL_ROWS: with no wait on row_ok)
    aux_read = row_in[:, None] & col_ok[None, :] if AUX_ALL_ROWS else store_ok
    dtype = out_ptr.dtype.element_ty
    if EPI == 0:
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if BIAS_MODE == 1:  # bias only while any chunk gate is nonzero
                offs_c = tl.arange(0, CHUNKS_P2)
                all_g = tl.load(gate_ptr + offs_c, mask=offs_c < NUM_CHUNKS,
                                other=0.0).to(tl.float32)
                any_on = tl.max((all_g != 0.0).to(tl.float32), 0)
                if HAS_UNGATED:
                    acc += bias[None, :] * tl.where(ungated, 1.0, any_on)[:, None]
                else:
                    acc += bias[None, :] * any_on
            elif BIAS_MODE == 2:
                acc += bias[None, :] * g
            else:
                acc += bias[None, :]
        if SCALE_OUT:
            acc = acc * g
        if FINAL:
            out = tl.where(row_ok[:, None], acc, 0.0)
            tl.store(out_ptr + tile, out.to(dtype), mask=row_in[:, None] & col_ok[None, :])
        else:
            if live:
                tl.store(out_ptr + tile, acc.to(dtype), mask=store_ok)
    elif EPI == 1:
        # FINAL (here and for EPI_SILU_BWD): zeros at padded rows and in tiles with no valid
        # row too, so that a product over every row (dense_wgrad, wgrad's TMA loads) may
        # read the output's live columns
        if FINAL:
            if fill:
                _silu_gate_tile(acc, g, tile, store_ok, row_in[:, None] & col_ok[None, :],
                                cols, col_ok, bias_ptr, aux_ptr, out_ptr, HAS_BIAS, SAVE_AUX,
                                True, GPU)
        elif live:
            _silu_gate_tile(acc, g, tile, store_ok, store_ok, cols, col_ok, bias_ptr, aux_ptr,
                            out_ptr, HAS_BIAS, SAVE_AUX, False, GPU)
    elif EPI == 2:
        # a dead tile's FINAL zeros in a branch of their own: with one call for both, the
        # SiLU backward with its column sums took 210 registers (one program an SM)
        write = row_in[:, None] & col_ok[None, :] if FINAL else store_ok
        if live:
            _silu_bwd_tile(acc, g, tile, store_ok, grad_ok, write, aux_read, cols, col_ok,
                           aux_ptr, out_ptr, col0, sum1_ptr, saved, HAS_SUM1, FINAL,
                           HAS_SAVED, TILE_SUMS, GPU)
        elif FINAL:
            if fill:
                tl.store(out_ptr + tile, tl.zeros_like(acc).to(dtype), mask=write)
    elif live:
        if EPI == 3:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
                acc_b += tl.load(bias_ptr + N + cols, mask=col_ok,
                                 other=0.0).to(tl.float32)[None, :]
            if SAVE_AUX:
                tl.store(aux_ptr + rows[:, None] * (2 * N) + cols[None, :], acc.to(dtype),
                         mask=store_ok)
                tl.store(aux_ptr + rows[:, None] * (2 * N) + N + cols[None, :],
                         acc_b.to(dtype), mask=store_ok)
            tl.store(out_ptr + tile, (acc * sigmoid(acc_b, GPU)).to(dtype), mask=store_ok)
        elif EPI == 4:
            if HAS_SUM1:
                saved = tl.load(aux_ptr + tile, mask=aux_read, other=0.0).to(tl.float32)
                _gate_sums(sum1_ptr, cols, col_ok, col0, tl.where(grad_ok, acc * saved, 0.0),
                           TILE_SUMS)
            tl.store(out_ptr + tile, (acc * g).to(dtype), mask=store_ok)


@triton.jit
def _silu_gate_tile(acc, g, tile, store_ok, write, cols, col_ok, bias_ptr, aux_ptr, out_ptr,
                    HAS_BIAS: tl.constexpr, SAVE_AUX: tl.constexpr, ZEROS: tl.constexpr,
                    GPU: tl.constexpr):
    """EPI_SILU_GATE on a tile: pre = acc + bias saved to aux over `store_ok` (the valid
    rows' live columns), hidden = g * silu(pre) stored over `write`, zeros outside
    `store_ok` with ZEROS."""
    pre = acc
    if HAS_BIAS:
        pre += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    dtype = out_ptr.dtype.element_ty
    if SAVE_AUX:
        tl.store(aux_ptr + tile, pre.to(dtype), mask=store_ok)
    hidden = pre * sigmoid(pre, GPU) * g
    if ZEROS:
        hidden = tl.where(store_ok, hidden, 0.0)
    tl.store(out_ptr + tile, hidden.to(dtype), mask=write)


@triton.jit
def _silu_bwd_tile(acc, g, tile, store_ok, grad_ok, write, read, cols, col_ok, aux_ptr,
                   out_ptr, col0, sum1_ptr, saved, HAS_SUM1: tl.constexpr,
                   ZEROS: tl.constexpr, HAS_SAVED: tl.constexpr,
                   TILE_SUMS: tl.constexpr, GPU: tl.constexpr):
    """EPI_SILU_BWD on a live tile: pre read over `read` (store_ok or more; or given as
    `saved` with HAS_SAVED), d_pre = acc * g * silu'(pre) stored over `write`, zeros outside
    `store_ok` (the valid rows' live columns) with ZEROS; the gates' gradient products
    over `grad_ok` into sum1 (_gate_sums)."""
    if HAS_SAVED:
        pre = saved.to(tl.float32)
    else:
        pre = tl.load(aux_ptr + tile, mask=read, other=0.0).to(tl.float32)
    sig = sigmoid(pre, GPU)
    d_pre = acc * g * sig * (1.0 + pre * (1.0 - sig))
    if HAS_SUM1:
        _gate_sums(sum1_ptr, cols, col_ok, col0, tl.where(grad_ok, acc * pre * sig, 0.0),
                   TILE_SUMS)
    if ZEROS:
        d_pre = tl.where(store_ok, d_pre, 0.0)
    tl.store(out_ptr + tile, d_pre.to(out_ptr.dtype.element_ty), mask=write)


@triton.jit
def _gate_sums(sum1_ptr, cols, col_ok, col0, products, TILE_SUMS: tl.constexpr):
    """The gates' gradient products of a tile added to sum1: their column sums, or with
    TILE_SUMS their total at the tile's first column."""
    if TILE_SUMS:
        tl.atomic_add(sum1_ptr + col0, tl.sum(tl.sum(products, 1), 0), sem="relaxed")
    else:
        tl.atomic_add(sum1_ptr + cols, tl.sum(products, 0), mask=col_ok, sem="relaxed")


# ----------------------------------------------------------------------------- launchers

def _rows_blocks(dtype: torch.dtype, chunk_axis: int, epi: int, tiles_on=None) -> dict:
    """Tiles per GEMM kind. 16-bit choices from bench/gemm_sweep.py on the H200 (FFN,
    B32xT250, soft gates, pointer loads): K-chunked GEMMs 128x128x64/4 warps/3 stages ~30 us
    (64x128x64/4/4: 38); the SiLU backward 128x128x64/8/3 with SUBTILE 60.0 us
    (64x128x64/4/4: 80.0; 128x128/4/3 without SUBTILE spills: 211); the SiLU-gate GEMM
    128x128x64/4/3 46.8 us (128x64x64/4/4: 52.2), since moved to 8 warps (below). fp32
    keeps the smaller-stage configuration (shared memory). tiles_on: (M, N, SMs), where the
    K-chunked GEMM's tile depends on its waves (`_k_chunked_blocks`)."""
    if interpreting():
        return dict(BM=32, BN=32, BK=32, num_warps=4, num_stages=1)
    if epi == EPI_GLU:
        return dict(BM=128, BN=64, BK=64, num_warps=8, num_stages=3)
    if dtype == torch.float32:
        return dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3)
    if epi == EPI_SILU_BWD:
        # the epilogue in row halves: no spills at 128x128/8 warps. At most 128 registers,
        # two programs an SM: with its column sums the kernel took 148-152 (one program an
        # SM) and 1.9x the time it takes without them (190.1 against 99.6 us, B80xT250,
        # TMA); capped, it compiles for sm_90 without spills and took 134.3 (H200). The
        # saved tile read at every row with column sums, and loaded right after the K-loop
        # without: 126.7 against 135.2 us, and 93.0 against 102.6 (B80xT250 soft gates, H200,
        # gemm_sweep --options at 4c8527b; the other option 136.2 and 96.9). With the sums a
        # tile at a time (TILE_SUMS), both options together: 105.9 us against 114.7 (the saved
        # tile read at every row) and 127.5 (column sums), and 90.5 against 93.3 without sums
        # (loaded early) (3982f8f, same run)
        return dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3, SUBTILE=True,
                    maxnreg=128, AUX_ALL_ROWS=True, AUX_PREFETCH=True)
    if epi == EPI_SILU_GATE:
        # the same shape: at 4 warps it took 255 registers and spilled; 90.3 us against
        # 105.9 at B80xT250, soft gates, TMA (H200, 2026-12-01)
        return dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3, SUBTILE=True,
                    maxnreg=128)
    if epi == EPI_GATE_BWD:
        return dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=4)
    if chunk_axis == 1:
        return dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=4)
    if chunk_axis == 2 and tiles_on is not None:
        return _k_chunked_blocks(*tiles_on)
    return dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=3)


# The K-chunked GEMM's two tiles (16-bit, TMA) and how many programs of each share a SM
# (shared memory at 3 stages: 96 KB at 128x128, 72 KB at 64x128)
_K_CHUNKED_TILES = ((dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=3), 2),
                    (dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=3), 3))


def _k_chunked_blocks(M: int, N: int, sms: int) -> dict:
    """The tile with the least modelled time: waves (the tiles over the SMs' program slots,
    rounded up) times a wave's work on one SM. The FFN's N = 384 makes few column tiles, so
    the rounding decides: at B32xT250 128x128 tiles fill 1.43 of the 264 slots' waves and
    64x128 one of 396, at B16xT750 2 waves each, at B80xT250 2 against 3. Measured on the H200
    (gemm_sweep --tma, all chunks live, d_xn / the second GEMM), 64x128 against 128x128:
    22.5 / 23.4 against 24.3 / 24.6 us at B32xT250 and 37.2 / 38.1 against 39.5 / 40.1 at
    B16xT750, as modelled; at B80xT250 55.0 / 56.2 against 45.8 / 46.1, as modelled."""
    def modelled(tile):
        blk, per_sm = tile
        tiles = cdiv(M, blk["BM"]) * cdiv(N, blk["BN"])
        return cdiv(tiles, per_sm * sms) * per_sm * blk["BM"] * blk["BN"]
    return dict(min(_K_CHUNKED_TILES, key=modelled)[0])


def _b_layout(b: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """b [K, N] as a row-major tensor for a descriptor: (b, False), or (its [N, K] transpose,
    True) when b is the transposed view of a row-major [N, K] (nn.Linear's weights)."""
    b_nk = b.stride(0) == 1 and b.stride(1) != 1
    return (b.t() if b_nk else b), b_nk


def _tma_problems(a: torch.Tensor, b: torch.Tensor, k_chunk: int, BK: int) -> list[str]:
    """What keeps the row GEMM's operands from TMA block loads (16-byte aligned bases and
    row strides, a contiguous last dimension, one dtype, K chunks of whole BK steps)."""
    b_t, _ = _b_layout(b)
    return [f"{name} {what}" for name, ok, what in (
        ("b", a.dtype == b.dtype, f"dtype {b.dtype} is not a's {a.dtype}"),
        ("a", a.stride(1) == 1, f"strides {a.stride()} not row-major"),
        ("b", b_t.stride(1) == 1, f"strides {b.stride()} contiguous in neither dim"),
        ("a", a.stride(0) * a.element_size() % 16 == 0 and a.data_ptr() % 16 == 0,
         "rows not 16-byte aligned"),
        ("b", b_t.stride(0) * b.element_size() % 16 == 0 and b.data_ptr() % 16 == 0,
         "rows not 16-byte aligned"),
        ("chunk", k_chunk % BK == 0, f"{k_chunk} along K not a multiple of BK {BK}"))
        if not ok]


@functools.cache
def _has_tma(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9      # Hopper and later


def tma_by_default(a) -> bool:
    """TMA is the default for 16-bit operands on a Hopper GPU, where their layout allows: at
    B80xT250 on the H200 every FFN row GEMM took 1-19% less time than with masked pointer
    loads (the plain store 88.8 -> 71.7 us, the K-chunked GEMM2 53.0 -> 46.3, the SiLU
    backward 205.5 -> 203.0; bench/gemm_sweep.py --options, 2026-12-01)."""
    return (a.is_cuda and a.dtype in (torch.float16, torch.bfloat16)
            and _has_tma(a.device.index or 0))


def tma_operands(a, b, k_chunk: int, blk: dict, required: bool, name: str = "rows_gemm"):
    """(a's descriptor, b's descriptor, whether b's is its [N, K] transpose) for the TMA
    tiles (BM, BK) of a and (BK, BN) of b of a product a [M, K] @ b [K, N] (the row GEMM's,
    the MHSA in-projection's). Where the operands do not allow them: a ValueError naming
    `name` and what they lack if `required` (TMA asked for), else None (pointer loads)."""
    BM, BN, BK = blk["BM"], blk["BN"], blk["BK"]
    problems = _tma_problems(a, b, k_chunk, BK)
    if problems and not required:
        return None
    if problems:
        raise ValueError(f"{name} TMA: {'; '.join(problems)}")
    b_t, b_nk = _b_layout(b)
    a_desc = TensorDescriptor.from_tensor(a, [BM, BK])
    b_desc = TensorDescriptor.from_tensor(b_t, [BN, BK] if b_nk else [BK, BN])
    return a_desc, b_desc, b_nk


def rows_gemm(a, b, out, *, lengths, T, bias=None, gates=None, chunk=0, num_chunks=1,
              chunk_axis=0, skip_dead=False, epi=EPI_STORE, bias_mode=BIAS_PLAIN,
              scale_out=False, aux=None, sum1=None, final=False, blocks=None,
              ungated_rows=0, chunk_sums=False):
    """out[M, N] (epilogue of) a[M, K] @ b, where b is a [K, N] view given by its strides and
    a's rows may be strided (its columns contiguous).

    For EPI_GLU, b is [K, 2N] and out gets N columns. chunk_axis 1: N is split into
    num_chunks chunks of `chunk` columns; 2: K is. ungated_rows: rows [0, ungated_rows) (the
    first pass of a batch holding two) computed as if every gate were 1, and left out of the
    gates' gradient sums (sum1); gates given, skip_dead False. blocks: the tiles (BM, BN,
    BK, num_warps, num_stages, optionally SUBTILE, TMA: operands by TMA descriptors,
    TILE_SUMS False: sum1 as column sums) in place of the defaults, which take TMA where
    `tma_by_default` holds.

    sum1 (EPI_SILU_BWD, EPI_GATE_BWD; fp32 [N], added to): the gates' gradient products,
    defined by their sums over each chunk's columns (over all N with chunk_axis 0); by
    default each tile adds its total at its first column (TILE_SUMS). chunk_sums
    (chunk_axis 0 or 1, TILE_SUMS): sum1 is [num_chunks] and gets each chunk's sum itself (no
    reduction over its columns left to do; with chunk_axis 0, one number).
    """
    M, K = a.shape
    N = out.shape[1]
    if a.stride(1) != 1 or not out.is_contiguous():
        raise ValueError(f"rows_gemm: a needs contiguous columns (strides {a.stride()}) and out "
                         f"to be contiguous (strides {out.stride()})")
    if ungated_rows and (gates is None or skip_dead or not 0 < ungated_rows <= M):
        raise ValueError(f"rows_gemm: ungated_rows={ungated_rows} needs gates, skip_dead False "
                         f"and at most M={M} rows (gates given: {gates is not None}, "
                         f"skip_dead={skip_dead})")
    tiles_on = (M, N, _num_sms(a.device.index or 0)) if a.is_cuda else None
    blk = dict(blocks or _rows_blocks(a.dtype, chunk_axis, epi, tiles_on))
    if chunk_axis == 1:
        n_tiles = num_chunks * cdiv(chunk, blk["BN"])
    else:
        n_tiles = cdiv(N, blk["BN"])
    if sum1 is not None:
        blk.setdefault("TILE_SUMS", True)
    if chunk_sums and (chunk_axis == 2 or sum1 is None or sum1.shape != (num_chunks,)
                       or not blk["TILE_SUMS"]):
        raise ValueError(f"rows_gemm: chunk_sums needs chunk_axis 0 or 1, TILE_SUMS and sum1 of "
                         f"shape ({num_chunks},), got chunk_axis {chunk_axis}, sum1 "
                         f"{None if sum1 is None else tuple(sum1.shape)}")
    dummy = out
    grid = (n_tiles, cdiv(M, blk["BM"]))
    a_arg, b_arg = a, b
    if blk.get("TMA") or (blocks is None and tma_by_default(a)):
        k_chunk = chunk if chunk_axis == 2 else 0
        operands = tma_operands(a, b, k_chunk, blk, required=bool(blk.get("TMA")))
        if operands is not None:
            a_arg, b_arg, blk["B_NK"] = operands
            blk["TMA"] = True
    launch(_rows_gemm_kernel, grid,
        a_arg, b_arg, out, bias if bias is not None else dummy,
        gates if gates is not None else dummy,
        lengths, aux if aux is not None else dummy, sum1 if sum1 is not None else dummy,
        M, N, K, T, max(chunk, 1), ungated_rows, a.stride(0), b.stride(0), b.stride(1),
        NUM_CHUNKS=num_chunks, CHUNKS_P2=next_pow2(num_chunks),
        CHUNK_AXIS=chunk_axis, HAS_GATES=gates is not None,
        SKIP_DEAD=skip_dead and gates is not None, EPI=epi, HAS_BIAS=bias is not None,
        BIAS_MODE=bias_mode, SCALE_OUT=scale_out, SAVE_AUX=aux is not None, FINAL=final,
        HAS_SUM1=sum1 is not None,
        HAS_UNGATED=ungated_rows > 0, CHUNK_SUMS=chunk_sums,
        DOT_PRECISION=dot_precision(a.dtype), **blk)
    return out


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# ----------------------------------------------------------------------------- references

def valid_rows(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[B*T] bool: flattened frame rows b*T + t with t < lengths[b]."""
    return valid_mask(lengths, T).flatten()


def rows_gemm_reference(a, b, lengths, T, bias=None, live_k=None):
    """a[M, K] @ b[K, N] (+ bias), over the K rows where `live_k` [K] is True; 0 at padded rows.
    What `rows_gemm(..., epi=EPI_STORE, final=True)` computes, in fp32."""
    b = b.float() if live_k is None else torch.where(live_k[:, None], b.float(), 0.0)
    out = a.float() @ b
    if bias is not None:
        out = out + bias.float()
    return torch.where(valid_rows(lengths, T)[:, None], out, 0.0)
