"""The input gradient of a pre-norm module's first product, with the LayerNorm backward in
its epilogue: dx = LayerNorm_bwd(a @ b) for the FFN's d_xn = d_pre @ W1 (docs/design.md §6).

Unfused, the product writes d_xn [M, D] (16-bit) and the norm's backward reads it back with
x, mean and rstd in a latency-bound sweep of its own (15.3 us at B32xT250 on the H200). Here
a program owns BM whole rows, all D columns as up to four BN-wide accumulators, so the
row sums the norm's backward needs are its own: it reads x once more from L2 and writes dx,
the norm's dgamma / dbeta partial sums (fp32 atomics), and, with a residual step, y's
gradient. d_xn never exists; it also stays fp32 (no 16-bit rounding before the norm).

The K-loop is the row GEMM's (gated_matmul.py) along a chunked K: dead chunks are skipped
(SKIP_DEAD), row blocks with no valid frame do no product; dx is written at every row (0 at
padded rows and for a dead module, plus the stream's gradient with a residual step), as
`layer_norm_bwd` writes it. `gemm_norm_bwd_reference` is the same in fp64 PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import dot_precision, interpreting
from .gated_matmul import (
    _valid_rows,
    live_chunks,
    nth_live,
    tma_by_default,
    tma_operands,
    valid_rows,
)
from .launch import cdiv, launch, next_pow2
from .residual_step import Residual, keep_threshold, row_tile_keep

# accumulators a program holds: D <= MAX_COL_TILES * BN
MAX_COL_TILES = 4


@triton.jit
def _dot_cols(a, b_ptr, k0, ks, k_ok, j: tl.constexpr, acc, D, stride_bk, stride_bn,
              BN: tl.constexpr, TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + a @ b[ks, j*BN : (j+1)*BN]."""
    if TMA:
        b = b_ptr.load([k0, j * BN])
    else:
        cols = j * BN + tl.arange(0, BN)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=k_ok[:, None] & (cols < D)[None, :], other=0.0).to(a.dtype)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _tile_terms(dy, rows, ok, j: tl.constexpr, x_ptr, w_ptr, mean, rstd, D, BN: tl.constexpr):
    """Column tile j of the norm's backward: (dy * w, xhat), both 0 outside `ok`."""
    cols = j * BN + tl.arange(0, BN)
    ok = ok & (cols < D)[None, :]
    x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    return tl.where(ok, dy, 0.0) * w[None, :], xhat


@triton.jit
def _row_sums(dy, rows, ok, j: tl.constexpr, x_ptr, w_ptr, dw_ptr, db_ptr, mean, rstd, D,
              BN: tl.constexpr):
    """Column tile j's share of each row's two sums (sum dy*w*xhat, sum dy*w); its dgamma /
    dbeta partials added to dw, db."""
    dyw, xhat = _tile_terms(dy, rows, ok, j, x_ptr, w_ptr, mean, rstd, D, BN)
    cols = j * BN + tl.arange(0, BN)
    dy = tl.where(ok & (cols < D)[None, :], dy, 0.0)
    tl.atomic_add(dw_ptr + cols, tl.sum(dy * xhat, 0), mask=cols < D, sem="relaxed")
    tl.atomic_add(db_ptr + cols, tl.sum(dy, 0), mask=cols < D, sem="relaxed")
    return tl.sum(dyw * xhat, 1), tl.sum(dyw, 1)


@triton.jit
def _store_dx(dy, rows, ok, j: tl.constexpr, c1, c2, x_ptr, w_ptr, mean, rstd, dx_ptr, gx_ptr,
              dres_ptr, seed_ptr, M, D, threshold, gain, BM: tl.constexpr, BN: tl.constexpr,
              RESIDUAL: tl.constexpr, X_GRAD: tl.constexpr, DROPOUT: tl.constexpr):
    """Column tile j of dx (every row < M) and, with a residual step, of y's gradient."""
    dyw, xhat = _tile_terms(dy, rows, ok, j, x_ptr, w_ptr, mean, rstd, D, BN)
    cols = j * BN + tl.arange(0, BN)
    ok = ok & (cols < D)[None, :]
    every = (rows < M)[:, None] & (cols < D)[None, :]
    tile = rows[:, None] * D + cols[None, :]
    dx = tl.where(ok, (dyw - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)
    if X_GRAD:
        dx += tl.load(gx_ptr + tile, mask=every, other=0.0).to(tl.float32)
    tl.store(dx_ptr + tile, dx.to(dx_ptr.dtype.element_ty), mask=every)
    if RESIDUAL:
        d_res = dx * gain
        if DROPOUT:
            d_res = tl.where(row_tile_keep(seed_ptr, rows, D, threshold, BM, BN, j * BN),
                             d_res, 0.0)
        tl.store(dres_ptr + tile, d_res.to(dres_ptr.dtype.element_ty), mask=every)


@triton.jit
def _gemm_norm_bwd_kernel(
    a_ptr, b_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, gate_ptr, len_ptr,
    gx_ptr, dres_ptr, seed_ptr,
    M, D, T, CHUNK, threshold, gain, stride_am, stride_bk, stride_bn,
    NUM_CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr, SKIP_DEAD: tl.constexpr,
    COL_TILES: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr = False,
    RESIDUAL: tl.constexpr = False, X_GRAD: tl.constexpr = False,
    DROPOUT: tl.constexpr = False,
):
    # Program i: rows [i*BM, +BM), dy = a[rows] @ b over the live chunks of K (the row
    # GEMM's flat K-loop, one a tile and COL_TILES b tiles a step), then the norm's backward
    # in two passes over the column tiles: the rows' sums (and dgamma / dbeta), then dx.
    # Holding dx's terms for all tiles at once would double the registers the accumulators
    # take; the second pass reads x again, from L2. TMA: a and b are descriptors ([BM, BK],
    # [BK, BN] blocks; padded rows of a are read and their products dropped).
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    row_ok = _valid_rows(rows, M, T, len_ptr)
    live_rank, n_live = live_chunks(gate_ptr, NUM_CHUNKS, CHUNKS_P2, SKIP_DEAD)
    # a dead module (every chunk skipped): dx is 0 (+ the stream's gradient); mean and
    # rstd were never written
    row_ok = row_ok & ((rows * 0 + n_live) > 0)
    acc0 = tl.zeros([BM, BN], dtype=tl.float32)
    acc1 = tl.zeros([BM, BN], dtype=tl.float32)
    acc2 = tl.zeros([BM, BN], dtype=tl.float32)
    acc3 = tl.zeros([BM, BN], dtype=tl.float32)
    steps = tl.cdiv(CHUNK, BK)
    n_steps = tl.where(tl.max(row_ok.to(tl.int32), 0) > 0, n_live * steps, 0)
    for i in range(0, n_steps):
        j = i // steps
        kc = nth_live(live_rank, j)
        k_local = (i - j * steps) * BK + tl.arange(0, BK)
        k_ok = k_local < CHUNK
        ks = kc * CHUNK + k_local
        k0 = kc * CHUNK + (i - j * steps) * BK
        if TMA:        # the launcher checked: CHUNK a multiple of BK
            a = a_ptr.load([pid * BM, k0])
        else:
            a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        acc0 = _dot_cols(a, b_ptr, k0, ks, k_ok, 0, acc0, D, stride_bk, stride_bn, BN, TMA,
                         DOT_PRECISION)
        if COL_TILES > 1:
            acc1 = _dot_cols(a, b_ptr, k0, ks, k_ok, 1, acc1, D, stride_bk, stride_bn, BN,
                             TMA, DOT_PRECISION)
        if COL_TILES > 2:
            acc2 = _dot_cols(a, b_ptr, k0, ks, k_ok, 2, acc2, D, stride_bk, stride_bn, BN,
                             TMA, DOT_PRECISION)
        if COL_TILES > 3:
            acc3 = _dot_cols(a, b_ptr, k0, ks, k_ok, 3, acc3, D, stride_bk, stride_bn, BN,
                             TMA, DOT_PRECISION)

    ok = row_ok[:, None]
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    s1, s2 = _row_sums(acc0, rows, ok, 0, x_ptr, w_ptr, dw_ptr, db_ptr, mean, rstd, D, BN)
    if COL_TILES > 1:
        t1, t2 = _row_sums(acc1, rows, ok, 1, x_ptr, w_ptr, dw_ptr, db_ptr, mean, rstd, D, BN)
        s1 += t1
        s2 += t2
    if COL_TILES > 2:
        t1, t2 = _row_sums(acc2, rows, ok, 2, x_ptr, w_ptr, dw_ptr, db_ptr, mean, rstd, D, BN)
        s1 += t1
        s2 += t2
    if COL_TILES > 3:
        t1, t2 = _row_sums(acc3, rows, ok, 3, x_ptr, w_ptr, dw_ptr, db_ptr, mean, rstd, D, BN)
        s1 += t1
        s2 += t2
    c1 = s1 / D
    c2 = s2 / D
    _store_dx(acc0, rows, ok, 0, c1, c2, x_ptr, w_ptr, mean, rstd, dx_ptr, gx_ptr, dres_ptr,
              seed_ptr, M, D, threshold, gain, BM, BN, RESIDUAL, X_GRAD, DROPOUT)
    if COL_TILES > 1:
        _store_dx(acc1, rows, ok, 1, c1, c2, x_ptr, w_ptr, mean, rstd, dx_ptr, gx_ptr,
                  dres_ptr, seed_ptr, M, D, threshold, gain, BM, BN, RESIDUAL, X_GRAD,
                  DROPOUT)
    if COL_TILES > 2:
        _store_dx(acc2, rows, ok, 2, c1, c2, x_ptr, w_ptr, mean, rstd, dx_ptr, gx_ptr,
                  dres_ptr, seed_ptr, M, D, threshold, gain, BM, BN, RESIDUAL, X_GRAD,
                  DROPOUT)
    if COL_TILES > 3:
        _store_dx(acc3, rows, ok, 3, c1, c2, x_ptr, w_ptr, mean, rstd, dx_ptr, gx_ptr,
                  dres_ptr, seed_ptr, M, D, threshold, gain, BM, BN, RESIDUAL, X_GRAD,
                  DROPOUT)


def _blocks(D: int) -> dict:
    """BN: D in at most three column tiles up to 512 channels (four at most past 384);
    64 rows, 8 warps (the paper model's 64x384 tile: three 64x128 fp32 accumulators, 96
    registers a thread)."""
    BN = min(128, max(16, next_pow2(cdiv(D, 3))))
    if interpreting():
        return dict(BM=32, BN=BN, BK=32, num_warps=4, num_stages=1)
    return dict(BM=64, BN=BN, BK=64, num_warps=8, num_stages=3)


def fusable(D: int) -> bool:
    """Whether `gemm_norm_bwd` holds D channels in one program's accumulators."""
    return cdiv(D, _blocks(D)["BN"]) <= MAX_COL_TILES


def gemm_norm_bwd(a, b, x2d, weight, mean, rstd, *, lengths, T, gates=None, chunk=0,
                  num_chunks=1, skip_dead=False, dw=None, db=None,
                  residual: Residual | None = None, dx_dtype: torch.dtype | None = None,
                  blocks=None):
    """(dx [M, D], dweight, dbias) = `layer_norm_bwd` of dy = a [M, K] @ b [K, D] (b row-major
    or any strided view), over K's `num_chunks` chunks of `chunk` (dead ones skipped with
    skip_dead, and every gate 0 is a dead module: dx 0). x2d [M, D], mean, rstd [M], weight
    [D], dw / db, residual, dx_dtype: as `layer_norm_bwd`. D <= 4 BN (`fusable`). blocks:
    dict(BM, BN, BK, num_warps, num_stages, optionally TMA) in place of the defaults."""
    M, K = a.shape
    D = x2d.shape[1]
    if a.stride(1) != 1 or b.shape != (K, D) or x2d.shape[0] != M or chunk * num_chunks != K:
        raise ValueError(f"gemm_norm_bwd: a {tuple(a.shape)} (contiguous columns), b of shape "
                         f"({K}, {D}) and x2d's {M} rows, K = chunk * num_chunks "
                         f"({chunk} * {num_chunks}), got b {tuple(b.shape)}, x2d "
                         f"{tuple(x2d.shape)}, a's strides {a.stride()}")
    blk = dict(blocks or _blocks(D))
    col_tiles = cdiv(D, blk["BN"])
    if col_tiles > MAX_COL_TILES:
        raise ValueError(f"gemm_norm_bwd: D={D} needs {col_tiles} column tiles of "
                         f"{blk['BN']}, more than {MAX_COL_TILES}")
    dx = torch.empty(x2d.shape, dtype=dx_dtype or x2d.dtype, device=x2d.device)
    if dw is None:
        dw = torch.zeros(D, dtype=torch.float32, device=x2d.device)
    if db is None:
        db = torch.zeros(D, dtype=torch.float32, device=x2d.device)
    a_arg, b_arg = a, b
    if blk.get("TMA") or (blocks is None and tma_by_default(a)):
        required = bool(blk.get("TMA"))
        operands = tma_operands(a, b, chunk, blk, required, name="gemm_norm_bwd")
        if required and operands[2]:
            raise ValueError("gemm_norm_bwd TMA: b must be row-major [K, D]")
        blk["TMA"] = operands is not None and not operands[2]    # b as [K, D] blocks only
        if blk["TMA"]:
            a_arg, b_arg = operands[:2]
    res = residual or Residual(None, 1.0, 0.0)
    launch(_gemm_norm_bwd_kernel, (cdiv(M, blk["BM"]),),
        a_arg, b_arg, x2d, weight, mean, rstd, dx, dw, db,
        gates if gates is not None else dw, lengths,
        dx if res.x_grad is None else res.x_grad, dx if res.y_grad is None else res.y_grad,
        lengths if res.seed is None else res.seed,
        M, D, T, chunk, keep_threshold(res.p), res.gain, a.stride(0), b.stride(0),
        b.stride(1), NUM_CHUNKS=num_chunks, CHUNKS_P2=next_pow2(num_chunks),
        SKIP_DEAD=skip_dead and gates is not None, COL_TILES=col_tiles,
        DOT_PRECISION=dot_precision(a.dtype), RESIDUAL=residual is not None,
        X_GRAD=res.x_grad is not None, DROPOUT=res.p > 0, **blk)
    return dx, dw, db


def gemm_norm_bwd_reference(a, b, x2d, weight, lengths, T, live_k=None, eps=1e-5):
    """(dx, dweight, dbias) in fp64 of F.layer_norm(x2d, weight) given the output gradient
    dy = a @ b over the K rows where `live_k` [K] is True (None: all), 0 at padded rows;
    what `gemm_norm_bwd` computes without a residual step (every row of K dead: zeros)."""
    b = b.double() if live_k is None else torch.where(live_k[:, None], b.double(), 0.0)
    dy = torch.where(valid_rows(lengths, T)[:, None], a.double() @ b, 0.0)
    x, w = (t.detach().double().requires_grad_() for t in (x2d, weight))
    y = F.layer_norm(x, (x.shape[1],), w, None, eps)
    dx, dw = torch.autograd.grad(y, [x, w], dy)
    return dx, dw, dy.sum(0)
