"""LayerNorm over the channels of the valid frames: the gated modules' pre-norms (the
launchers), and `masked_layer_norm`, the same kernels as an autograd op for norms outside
the fused modules (the MHSA pre-norm, each block's final norm).

`layer_norm_reference` is F.layer_norm; the kernels add what the gated modules need: rows
t >= lengths[b] are skipped (forward) or get a zero gradient (backward), and when SKIP_DEAD
is set and every gate of the module is 0 the forward does nothing and the backward writes
zeros. Statistics are fp32; dgamma / dbeta are reduced with fp32 atomics per program.

Both kernels can fuse the residual step of the module before (`Residual`): the norm's input
is then x + scale * dropout(y, p), which the forward writes as the new residual stream (one
pass instead of a dropout-add kernel and the norm's read), and the backward adds the
stream's gradient to the norm's input gradient and writes y's, dropped out where the forward
dropped (instead of an add kernel and a dropout backward). The mask comes from a seed
(kernels/residual_step.py), so nothing is stored for it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .autograd import eager_function, grads_in_order, named_inputs
from .common import await_producers, interpreting, zeroed_fp32
from .gated_matmul import _num_sms, _valid_rows
from .grads_in_place import accumulators, returned, sinks_of
from .launch import cdiv, launch, next_pow2
from .residual_step import (
    NO_RESIDUAL,
    Residual,
    keep_threshold,
    residual_args,
    row_tile_keep,
    step_context,
    step_in,
    step_out,
)

# the columns `layer_norm_fwd(..., ones_column=True)` adds: 16 keep the row stride a multiple
# of 16 elements where D is one, which Triton's launcher needs to vectorise y's rows (and TMA
# needs 16-byte row strides)
ONES_PAD = 16


def layer_norm_reference(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class NextNorm(NamedTuple):
    """A second LayerNorm that `layer_norm_fwd` applies to its own output in the same pass:
    its parameters (D,) and eps, and `out` [M, D], where it writes."""
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float
    out: torch.Tensor


@triton.jit
def _module_live(gate_ptr, NUM_GATES: tl.constexpr, GATES_P2: tl.constexpr,
                 SKIP_DEAD: tl.constexpr):
    """0 when SKIP_DEAD and every gate is exactly 0, else 1 (int32)."""
    live = 1
    if SKIP_DEAD:
        offs = tl.arange(0, GATES_P2)
        g = tl.load(gate_ptr + offs, mask=offs < NUM_GATES, other=0.0)
        live = tl.max((g != 0.0).to(tl.int32), 0)
    return live


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, gate_ptr, len_ptr,
    res_ptr, xnew_ptr, seed_ptr, next_ptr, next_w_ptr, next_b_ptr,
    M, D, T, eps, stride_y, threshold, gain, next_eps,
    NUM_GATES: tl.constexpr, GATES_P2: tl.constexpr, SKIP_DEAD: tl.constexpr,
    ZERO_PADDED: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
    ONES_PAD: tl.constexpr = 0, RESIDUAL: tl.constexpr = False, DROPOUT: tl.constexpr = False,
    STORE_STREAM: tl.constexpr = True, SILU: tl.constexpr = False,
    NEXT_NORM: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    # Program i normalises rows [i*BM, (i+1)*BM), each whole in one BD-wide tile. Padded
    # rows are left unwritten, or written as zeros with ZERO_PADDED (an output that later
    # ops read in full, e.g. a block's output; not a dead module's, which no one reads).
    # (Persistent programs with x loaded ahead by the compiler's pipeliner were 16-65%
    # slower on the H200: bench/NOTES.md, session 17.)
    # ONES_PAD > 0 (with ZERO_PADDED): y's rows are ONES_PAD wider, column D holds 1 and the
    # rest 0, so that a product with y's transpose also sums the other operand's rows.
    # RESIDUAL: x is x_ptr + gain * dropout(res_ptr), written to xnew_ptr at every row (the
    # residual stream) and normalised as written (rounded to its dtype), as an unfused
    # residual step and norm would. DROPOUT (p > 0): with the mask drawn from seed_ptr.
    # STORE_STREAM=False: x_new is normalised but not written (inference's final norm, whose
    # input no one reads again).
    # SILU: y = silu(LayerNorm(x)) (the conv module's norm after its depthwise conv).
    # NEXT_NORM: y, rounded to its dtype, is normalised again by a second LayerNorm
    # (next_w, next_b, next_eps) into next_ptr (stride D, rows as y's): a block's final norm
    # and the next block's first pre-norm in one pass (inference).
    await_producers(PDL)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    row_ok = _valid_rows(rows, M, T, len_ptr)
    live = _module_live(gate_ptr, NUM_GATES, GATES_P2, SKIP_DEAD)
    if RESIDUAL | ((live > 0) & (ZERO_PADDED | (tl.max(row_ok.to(tl.int32), 0) > 0))):
        col_ok = cols < D
        ok = row_ok[:, None] & col_ok[None, :]
        tile = rows[:, None] * D + cols[None, :]
        if RESIDUAL:
            every = (rows < M)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + tile, mask=every, other=0.0).to(tl.float32)
            r = tl.load(res_ptr + tile, mask=every, other=0.0).to(tl.float32) * gain
            if DROPOUT:
                r = tl.where(row_tile_keep(seed_ptr, rows, D, threshold, BM, BD), r, 0.0)
            x_new = (x + r).to(xnew_ptr.dtype.element_ty)
            if STORE_STREAM:
                tl.store(xnew_ptr + tile, x_new, mask=every)
            x = tl.where(ok, x_new.to(tl.float32), 0.0)
        else:
            x = tl.load(x_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        y, mean, rstd = _normalise(x, ok, cols, col_ok, D, w_ptr, b_ptr, eps)
        if SILU:
            y = y * tl.sigmoid(y)
        if NEXT_NORM:
            _second_norm(y.to(y_ptr.dtype.element_ty).to(tl.float32), ok, rows, cols, col_ok,
                         M, D, next_ptr, next_w_ptr, next_b_ptr, next_eps, ZERO_PADDED)
        if ZERO_PADDED:
            y = tl.where(ok, y, 0.0)
            ok = (rows < M)[:, None] & col_ok[None, :]
        y_rows = y_ptr + rows[:, None] * stride_y
        tl.store(y_rows + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)
        if ONES_PAD > 0:
            pad = tl.arange(0, ONES_PAD)
            ones = tl.where(pad == 0, 1.0, 0.0)[None, :] + tl.zeros([BM, ONES_PAD], tl.float32)
            tl.store(y_rows + D + pad[None, :], ones.to(y_ptr.dtype.element_ty),
                     mask=(rows < M)[:, None])
        tl.store(mean_ptr + rows, mean, mask=row_ok)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _normalise(x, ok, cols, col_ok, D, w_ptr, b_ptr, eps):
    """(LayerNorm of the rows of a [BM, BD] fp32 tile x (0 outside `ok`) by the parameters
    at w_ptr, b_ptr, its rows' mean, its rows' 1 / std); statistics over the D columns."""
    mean = tl.sum(x, 1) / D
    xc = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return xc * rstd[:, None] * w[None, :] + b[None, :], mean, rstd


@triton.jit
def _second_norm(y, ok, rows, cols, col_ok, M, D, out_ptr, w_ptr, b_ptr, eps,
                 ZERO_PADDED: tl.constexpr):
    """LayerNorm of the rows of a [BM, BD] fp32 tile y at `ok` into out_ptr ([M, D]); its
    padded rows are written as zeros with ZERO_PADDED, else left unwritten."""
    out = _normalise(tl.where(ok, y, 0.0), ok, cols, col_ok, D, w_ptr, b_ptr, eps)[0]
    if ZERO_PADDED:
        out = tl.where(ok, out, 0.0)
        ok = (rows < M)[:, None] & col_ok[None, :]
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=ok)


@triton.jit
def layer_norm_dx_tile(dy, xhat, w, rstd, ok, D):
    """LayerNorm input gradient of a [rows, BD] tile (dy and xhat 0 outside `ok`)."""
    dxhat = dy * w[None, :]
    c1 = tl.sum(dxhat * xhat, 1) / D
    c2 = tl.sum(dxhat, 1) / D
    return tl.where(ok, (dxhat - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)


@triton.jit
def _layer_norm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, gate_ptr, len_ptr,
    gx_ptr, dres_ptr, seed_ptr, dy_twin_ptr,
    M, D, T, threshold, gain,
    NUM_GATES: tl.constexpr, GATES_P2: tl.constexpr, SKIP_DEAD: tl.constexpr,
    BM: tl.constexpr, BD: tl.constexpr, LOAD_STAGES: tl.constexpr,
    RESIDUAL: tl.constexpr = False, X_GRAD: tl.constexpr = False,
    DROPOUT: tl.constexpr = False, DY_TWIN: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    # Persistent programs walk row blocks pid, pid + nprog, ...; dx is written for every row
    # (0 at padded rows and for a dead module); dgamma / dbeta partials are [BM, BD] tiles
    # summed over rows once at the end and added atomically. (A row reduction per block puts
    # a cross-warp exchange between every load and the next; one program per block writing
    # its sums to a workspace took 18.7 us plus two torch sums of 18 us each at B32xT250 on
    # the H200, against 15.8 us in all for the loop below before its prefetch.)
    # The loop is latency-bound (BWD_WARPS_PER_SM warps per SM): the compiler's pipeliner
    # copies x and dy asynchronously into LOAD_STAGES buffers of shared memory, so that
    # LOAD_STAGES blocks are in flight a program. The loads are masked by rows < M only, so
    # that they wait neither on a block's work nor on the lengths (padded rows are read and
    # then dropped by `ok`, as NaN-safe selects). At B80xT250 on the H200 3 stages took 30.0
    # / 35.6 us (bf16 / fp32 x) against 31.9 / 39.7 for a register prefetch of the next
    # block (bench/sweep_layer_norm.py, 2026-12-01).
    await_producers(PDL)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BD)
    col_ok = cols < D
    live = _module_live(gate_ptr, NUM_GATES, GATES_P2, SKIP_DEAD)
    if live == 0:
        # a dead module: nothing of the norm to read, no dgamma / dbeta partials; dx is 0
        # (plus the stream's gradient). As a branch of the loop below it took 15.3 us at
        # B32xT250 (H200, 2026-12-03), its loads masked off but its pipeline still run
        for blk in tl.range(pid, tl.cdiv(M, BM), nprog):
            rows = blk * BM + tl.arange(0, BM)
            every = (rows < M)[:, None] & col_ok[None, :]
            tile = rows[:, None] * D + cols[None, :]
            dx = tl.zeros([BM, BD], dtype=tl.float32)
            if X_GRAD:
                dx += tl.load(gx_ptr + tile, mask=every, other=0.0).to(tl.float32)
            _store_dx(dx, rows, tile, every, dx_ptr, dres_ptr, seed_ptr, D, threshold, gain,
                      BM, BD, RESIDUAL, DROPOUT)
    else:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BM, BD], dtype=tl.float32)
        db = tl.zeros([BM, BD], dtype=tl.float32)
        for blk in tl.range(pid, tl.cdiv(M, BM), nprog, num_stages=LOAD_STAGES):
            rows = blk * BM + tl.arange(0, BM)
            every = (rows < M)[:, None] & col_ok[None, :]
            tile = rows[:, None] * D + cols[None, :]
            x = tl.load(x_ptr + tile, mask=every, other=0.0)
            dy = tl.load(dy_ptr + tile, mask=every, other=0.0).to(tl.float32)
            if DY_TWIN:     # the gradient of the output's twin (masked_layer_norm), in fp32
                dy += tl.load(dy_twin_ptr + tile, mask=every, other=0.0).to(tl.float32)
            if X_GRAD:
                gx = tl.load(gx_ptr + tile, mask=every, other=0.0)
            row_ok = _valid_rows(rows, M, T, len_ptr)
            ok = row_ok[:, None] & col_ok[None, :]
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            dy = tl.where(ok, dy, 0.0)
            xhat = tl.where(ok, (x.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0)
            dw += dy * xhat
            db += dy
            dx = layer_norm_dx_tile(dy, xhat, w, rstd, ok, D)
            if X_GRAD:
                dx += gx.to(tl.float32)
            _store_dx(dx, rows, tile, every, dx_ptr, dres_ptr, seed_ptr, D, threshold, gain,
                      BM, BD, RESIDUAL, DROPOUT)
        tl.atomic_add(dw_ptr + cols, tl.sum(dw, 0), mask=col_ok, sem="relaxed")
        tl.atomic_add(db_ptr + cols, tl.sum(db, 0), mask=col_ok, sem="relaxed")


@triton.jit
def _store_dx(dx, rows, tile, every, dx_ptr, dres_ptr, seed_ptr, D, threshold, gain,
              BM: tl.constexpr, BD: tl.constexpr, RESIDUAL: tl.constexpr,
              DROPOUT: tl.constexpr):
    """The backward's dx tile and, with a residual step, y's gradient (dx scaled, dropped
    out where the forward dropped), at every row < M."""
    tl.store(dx_ptr + tile, dx.to(dx_ptr.dtype.element_ty), mask=every)
    if RESIDUAL:
        d_res = dx * gain
        if DROPOUT:
            d_res = tl.where(row_tile_keep(seed_ptr, rows, D, threshold, BM, BD), d_res, 0.0)
        tl.store(dres_ptr + tile, d_res.to(dres_ptr.dtype.element_ty), mask=every)


def _blocks(D: int, backward: bool = False, residual: bool = False) -> dict:
    """Row tiles [BM, BD]. Up to 512 channels: forward one warp, 4 rows (a row's sums stay
    in the warp), two warps with a residual step; backward 2 warps, 4 rows, 3 blocks' loads
    in flight (LOAD_STAGES). At 80 x 250 frames, 80-100% valid, on the H200
    (bench/sweep_layer_norm.py, 2026-12-01): forward 18.0 / 15.4 us (fp32 / bf16 input)
    against 19.2 / 16.4 at 8 rows and 4 warps; backward 35.6 / 30.0 us, against 49.0 / 30.0
    at 8 rows and 4 warps and 36.0 / 33.6 at one warp and 2 rows (3 stages each). With a
    residual step (bf16, p 0.1; `--residual`): forward 23.3 us at two warps against 27.4 at
    one (the mask's Philox work), backward 35.9 at the default, 37.7-48.7 at the others."""
    BD = max(16, next_pow2(D))
    stages = dict(LOAD_STAGES=3) if backward else {}
    if interpreting():
        return dict(BM=16, BD=BD, num_warps=4, **stages)
    if BD <= 512:
        return dict(BM=4, BD=BD, num_warps=2 if backward or residual else 1, **stages)
    return dict(BM=max(1, min(16, 4096 // BD)), BD=BD, num_warps=8, **stages)


# the backward's persistent programs: 8 warps per SM (the dgamma / dbeta atomics of every
# program meet on the same D addresses; 16 warps per SM were slower at every tile)
BWD_WARPS_PER_SM = 8


def layer_norm_fwd(x2d, weight, bias, lengths, T, gates=None, skip_dead=False, eps=1e-5,
                   out_dtype=None, zero_padded=False, ones_column=False, config=None,
                   residual: Residual | None = None, out=None, silu=False,
                   next_norm: NextNorm | None = None):
    """x2d [M, D] -> (y [M, D] in out_dtype (default x's), mean [M] fp32, rstd [M] fp32);
    valid rows only, padded rows of y left unwritten or, with zero_padded, zeros (a dead
    module's y, with skip_dead, is left unwritten but with a residual step). out: y's
    tensor, given (then out_dtype is its dtype); silu: y = silu(LayerNorm(x)). With
    ones_column (zero_padded only), y is [M, D + ONES_PAD] with 1 in column D and 0 after
    it: y[:, :D] is the normalised x, and a product a^T y also gives a's column sums (the
    FFN's bias gradient in its weight gradient's GEMM). residual (from `step_in`): the
    norm's input is x2d + scale * dropout(residual.y, p), written to residual.x_new at
    every row (residual.x_new None: not written). next_norm: y (rounded to its dtype) is
    normalised again into next_norm.out, in the same pass. config: dict(BM, num_warps) in
    place of the defaults."""
    M, D = x2d.shape
    if ones_column and not zero_padded:
        raise ValueError("layer_norm_fwd: ones_column needs zero_padded (every row written)")
    blk = {**_blocks(D, residual=residual is not None), **(config or {})}
    y = out if out is not None else torch.empty(
        M, D + (ONES_PAD if ones_column else 0), dtype=out_dtype or x2d.dtype,
        device=x2d.device)
    mean = torch.empty(M, dtype=torch.float32, device=x2d.device)
    rstd = torch.empty_like(mean)
    n_gates = gates.shape[0] if gates is not None else 1
    res = residual or Residual(None, 1.0, 0.0, y=x2d, x_new=x2d)   # no step: unread
    nxt = next_norm or NextNorm(weight, bias, eps, y)                  # none: unread
    if next_norm is not None and (ones_column or nxt.out.shape != (M, D)
                                  or not nxt.out.is_contiguous()):
        raise ValueError("layer_norm_fwd: next_norm needs a contiguous [M, D] out and no "
                         "ones_column")
    # where x_new goes; without it (not written) a one-element stand-in whose dtype rounds it
    stream = res.x_new if res.x_new is not None else \
        x2d.new_empty(1, dtype=torch.result_type(x2d, res.y))
    launch(_layer_norm_fwd_kernel, (cdiv(M, blk["BM"]),),
        x2d, y, weight, bias, mean, rstd, gates if gates is not None else mean, lengths,
        res.y, stream,
        lengths if res.seed is None else res.seed, nxt.out, nxt.weight, nxt.bias,
        M, D, T, eps, y.stride(0), keep_threshold(res.p), res.gain, nxt.eps, NUM_GATES=n_gates,
        GATES_P2=next_pow2(n_gates), SKIP_DEAD=skip_dead and gates is not None,
        ZERO_PADDED=zero_padded, ONES_PAD=ONES_PAD if ones_column else 0,
        RESIDUAL=residual is not None, DROPOUT=res.p > 0,
        STORE_STREAM=res.x_new is not None, SILU=silu, NEXT_NORM=next_norm is not None, **blk)
    return y, mean, rstd


def layer_norm_bwd(dy2d, x2d, weight, mean, rstd, lengths, T, gates=None, skip_dead=False,
                   dw=None, db=None, config=None, residual: Residual | None = None,
                   dx_dtype: torch.dtype | None = None, dy_twin=None):
    """-> (dx [M, D] in dx_dtype (default x's), 0 at padded rows; dweight fp32 [D], dbias
    fp32 [D]); dw / db: zeroed fp32 [D] to add to (default: new). dy2d may be in another
    dtype than x2d (a bf16 gradient of an fp32 input). residual (from `step_out`; x2d
    is then the forward's x_new): dx is the stream's gradient, residual.x_grad added, and
    residual.y_grad is written. dy_twin: a second gradient of the output [M, D] (or None),
    added to dy2d as the kernel reads them. config: dict(BM, num_warps, warps_per_sm,
    optionally LOAD_STAGES) in place of the defaults (bench/sweep_layer_norm.py)."""
    M, D = x2d.shape
    blk = {**_blocks(D, backward=True), "warps_per_sm": BWD_WARPS_PER_SM, **(config or {})}
    warps_per_sm = blk.pop("warps_per_sm")
    dx = torch.empty(x2d.shape, dtype=dx_dtype or x2d.dtype, device=x2d.device)
    if dw is None and db is None:      # both from one zeroed buffer: one fill launch
        dw, db = zeroed_fp32([D, D], x2d.device)
    if dw is None:
        dw = torch.zeros(D, dtype=torch.float32, device=x2d.device)
    if db is None:
        db = torch.zeros(D, dtype=torch.float32, device=x2d.device)
    n_blocks = cdiv(M, blk["BM"])
    per_sm = max(2, warps_per_sm // blk["num_warps"])
    nprog = min(n_blocks, per_sm * _num_sms(x2d.device.index or 0) if x2d.is_cuda else 4)
    n_gates = gates.shape[0] if gates is not None else 1
    res = residual or Residual(None, 1.0, 0.0)             # no step: nothing read for it
    launch(_layer_norm_bwd_kernel, (max(1, nprog),),
        dy2d, x2d, weight, mean, rstd, dx, dw, db, gates if gates is not None else dw, lengths,
        dx if res.x_grad is None else res.x_grad, dx if res.y_grad is None else res.y_grad,
        lengths if res.seed is None else res.seed, dy2d if dy_twin is None else dy_twin,
        M, D, T, keep_threshold(res.p), res.gain,
        NUM_GATES=n_gates, GATES_P2=next_pow2(n_gates), SKIP_DEAD=skip_dead and gates is not None,
        RESIDUAL=residual is not None, X_GRAD=res.x_grad is not None, DROPOUT=res.p > 0,
        DY_TWIN=dy_twin is not None, **blk)
    return dx, dw, db


# ----------------------------------------------------------------------------- the op

def masked_layer_norm_fwd_triton(x, lengths, weight, bias, out_dtype: torch.dtype, eps: float,
                                 res_y=None, res_seed=None, res_scale: float = 1.0,
                                 res_p: float = 0.0):
    # res_y given: the norm's input is x + res_scale * dropout(res_y, res_p), returned as
    # x_new (else an empty x_new)
    B, T, D = x.shape
    res, x_new = step_in(x, res_y, res_seed, res_scale, res_p)
    y, mean, rstd = layer_norm_fwd(x.reshape(B * T, D), weight, bias, lengths, T, eps=eps,
                                   out_dtype=out_dtype, zero_padded=True, residual=res)
    return y.view(B, T, D), mean, rstd, x_new


def masked_layer_norm_bwd_triton(dy, x, lengths, weight, mean, rstd, x_grad=None,
                                 res_seed=None, res_scale=1.0, res_p=0.0, x_dtype=None,
                                 res_dtype=None, dw=None, db=None, *, dy_twin=None):
    # x: the norm's input (the forward's x_new with a residual step); res_dtype given (y's
    # dtype): dx is the stream's gradient (x_grad, that of x_new, added) and the step's y
    # gets its own. dy_twin (keyword-only: the eager path's): the gradient of the output's
    # twin, added to dy in the kernel
    B, T, D = x.shape
    M = B * T
    res, d_res = step_out(x, x_grad, res_seed, res_scale, res_p, res_dtype)
    dx, dw, db = layer_norm_bwd(
        dy.reshape(M, D).contiguous(), x.reshape(M, D), weight, mean, rstd, lengths, T, dw=dw,
        db=db, residual=res, dx_dtype=x_dtype,
        dy_twin=None if dy_twin is None else dy_twin.reshape(M, D).contiguous())
    return dx.view(B, T, D), dw.to(weight.dtype), db.to(weight.dtype), d_res


@torch.library.custom_op("orthoasr::masked_layer_norm_fwd", mutates_args=())
def masked_layer_norm_fwd(x: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, out_dtype: torch.dtype, eps: float,
                          res_y: torch.Tensor | None = None,
                          res_seed: torch.Tensor | None = None, res_scale: float = 1.0,
                          res_p: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return masked_layer_norm_fwd_triton(x, lengths, weight, bias, out_dtype, eps, res_y,
                                        res_seed, res_scale, res_p)


@masked_layer_norm_fwd.register_fake
def _(x, lengths, weight, bias, out_dtype, eps, res_y=None, res_seed=None, res_scale=1.0,
      res_p=0.0):
    stats = x.new_empty(x.shape[0] * x.shape[1], dtype=torch.float32)
    x_new = step_in(x, res_y, res_seed, res_scale, res_p)[1]
    return x.new_empty(x.shape, dtype=out_dtype), stats, torch.empty_like(stats), x_new


@torch.library.custom_op("orthoasr::masked_layer_norm_bwd", mutates_args=())
def masked_layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor,
                          weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                          x_grad: torch.Tensor | None = None,
                          res_seed: torch.Tensor | None = None, res_scale: float = 1.0,
                          res_p: float = 0.0, x_dtype: torch.dtype | None = None,
                          res_dtype: torch.dtype | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # a custom op's outputs may not alias one another: dweight and dbias in two buffers, not
    # carved from one as in the eager path (tests/test_layer_norm.py's opcheck)
    dw, db = (torch.zeros_like(weight, dtype=torch.float32) for _ in range(2))
    return masked_layer_norm_bwd_triton(dy, x, lengths, weight, mean, rstd, x_grad, res_seed,
                                        res_scale, res_p, x_dtype, res_dtype, dw, db)


@masked_layer_norm_bwd.register_fake
def _(dy, x, lengths, weight, mean, rstd, x_grad=None, res_seed=None, res_scale=1.0,
      res_p=0.0, x_dtype=None, res_dtype=None):
    d_res = step_out(x, x_grad, res_seed, res_scale, res_p, res_dtype)[1]
    return (x.new_empty(x.shape, dtype=x_dtype or x.dtype), torch.empty_like(weight),
            torch.empty_like(weight), d_res)


def _setup_context(ctx, inputs, output):
    args = named_inputs(masked_layer_norm_fwd_triton, inputs)
    _y, mean, rstd, x_new = output[:4]          # (a fifth: the twin's view)
    step = args["res_y"] is not None
    ctx.save_for_backward(x_new if step else args["x"], args["lengths"], args["weight"], mean,
                          rstd, args["res_seed"] if step else None)
    ctx.residual = step_context(args, step)
    ctx.sinks = sinks_of(args, ("weight", "bias"))


def _backward(ctx, dy, _mean, _rstd, x_grad=None, dy_twin=None, bwd=masked_layer_norm_bwd):
    x, lengths, weight, mean, rstd, res_seed = ctx.saved_tensors
    if dy is None:          # one of the two outputs unused: the other's gradient alone
        dy, dy_twin = dy_twin, None
    if dy is None:          # only x_new was used: the norm adds nothing to its gradient
        dy = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    # the eager path adds the weight's and bias's gradients to their .grad where those are
    # sinks (grads_in_place)
    in_place, buffers = {}, {}
    if bwd is masked_layer_norm_bwd_triton:
        in_place = ctx.sinks
        acc = accumulators(dict(weight=weight.numel(), bias=weight.numel()), x.device,
                           in_place)
        buffers = dict(dw=acc["weight"], db=acc["bias"])
    twin = {} if dy_twin is None else dict(dy_twin=dy_twin)   # eager twins only
    dx, dw, db, d_res = bwd(dy, x, lengths, weight, mean, rstd, x_grad, res_seed,
                            **ctx.residual, **buffers, **twin)
    return grads_in_order(masked_layer_norm_fwd_triton, x=dx,
                          weight=returned(in_place, "weight", dw, dw.dtype),
                          bias=returned(in_place, "bias", db, db.dtype),
                          res_y=None if ctx.residual["res_dtype"] is None else d_res)


masked_layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)
_MaskedLayerNorm = eager_function(masked_layer_norm_fwd_triton, _setup_context, _backward,
                                  masked_layer_norm_bwd_triton, non_differentiable=(1, 2))


# The twin: the normalised output returned a second time, as a view (eager calls only). A
# block's final norm hands one to the next block's first module and the other to its
# residual stream; autograd then gives this op the two gradients apart, which its backward
# kernel adds as it reads them, where a tensor with two consumers had their sum made by a
# separate add first (two passes and a launch more a block).
def masked_layer_norm_fwd_with_twin(*inputs):
    out = masked_layer_norm_fwd_triton(*inputs)
    return (*out, out[0].view_as(out[0]))


_MaskedLayerNormTwin = eager_function(masked_layer_norm_fwd_with_twin, _setup_context,
                                      _backward, masked_layer_norm_bwd_triton,
                                      non_differentiable=(1, 2))


def masked_layer_norm(x, lengths, weight, bias, out_dtype=None, eps=1e-5, twin=False):
    """LayerNorm over the last dim of x (B, T, D) at the valid frames t < lengths[b], in
    `out_dtype` (default x's; statistics in fp32); padded frames output exactly 0 and get a
    zero gradient. Reads an fp32 x and writes bf16 in one pass (no separate cast). twin:
    -> (output, its twin), the same values, for two consumers whose gradients the backward
    adds in its kernel (under torch.compile the same tensor twice)."""
    out = _masked_layer_norm(x, lengths, weight, bias, out_dtype, eps, twin=twin)
    return (out[0], out[4]) if twin else out[0]


def residual_layer_norm(x, y, seed, scale, p, lengths, weight, bias, out_dtype=None,
                        eps=1e-5, twin=False):
    """A residual step and the LayerNorm after it, one kernel each way: x_new = x + scale *
    dropout(y, p) (x the residual stream (B, T, D), y the module output before it, same
    shape, any float dtypes; x_new in result_type(x, y), at every frame), and
    `masked_layer_norm(x_new, ...)`. seed: (1,) int64 on x's device, the dropout mask's
    (kernels/residual_step.py); None when p is 0. -> (x_new, normalised x_new), and with
    twin the normalised x_new's twin third (masked_layer_norm)."""
    out = _masked_layer_norm(x, lengths, weight, bias, out_dtype, eps,
                             residual_args(x, (y, seed, scale, p)), twin)
    return (out[3], out[0], out[4]) if twin else (out[3], out[0])


@torch.no_grad()
def final_norm_inference(x, lengths, weight, bias, eps=1e-5, residual=None, next_norm=None,
                         next_dtype=None):
    """A block's final norm for inference (no autograd), one kernel: x (B, T, D), or with
    residual=(y, seed, scale, p) x + scale * dropout(y, p) (that sum not written: nothing
    reads it again), normalised at the valid frames -> out (B, T, D) in result_type(x, y),
    0 at padded frames. next_norm=(weight, bias, eps), the LayerNorm the next block's first
    module applies to out: -> (out, that norm of out in next_dtype (default out's), 0 at
    padded frames), made in the same pass."""
    B, T, D = x.shape
    y, seed, scale, p = residual_args(x, residual)
    res = None if y is None else Residual(seed, scale, p, y=y.reshape(B * T, D))
    out = x.new_empty(x.shape, dtype=x.dtype if y is None else torch.result_type(x, y))
    normed = None if next_norm is None else x.new_empty(x.shape, dtype=next_dtype or out.dtype)
    layer_norm_fwd(x.contiguous().view(B * T, D), weight, bias, lengths, T, eps=eps,
                   zero_padded=True, residual=res, out=out.view(B * T, D),
                   next_norm=None if normed is None else
                   NextNorm(*next_norm, out=normed.view(B * T, D)))
    return out if normed is None else (out, normed)


def _masked_layer_norm(x, lengths, weight, bias, out_dtype, eps, residual=NO_RESIDUAL,
                       twin=False):
    args = (x.contiguous(), lengths.contiguous(), weight.contiguous(), bias.contiguous(),
            out_dtype or x.dtype, float(eps), *residual)
    if torch.compiler.is_compiling():
        out = masked_layer_norm_fwd(*args)
        return (*out, out[0]) if twin else out
    return (_MaskedLayerNormTwin if twin else _MaskedLayerNorm).apply(*args)
