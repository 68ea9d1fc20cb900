"""Gated convolution module (docs/design.md §2, §6):
y = g · PW2(SiLU(LN2(DWConv(mask(GLU(PW1(LN1(x))))))))

Layers: the PyTorch reference `gated_conv_reference`; the Triton path, registered as the
torch.library ops `orthoasr::gated_conv_fwd` / `_bwd` with `gated_conv` as entry point:
forward = LayerNorm, PW1 GEMM with the GLU and padding mask in its epilogue (two
accumulators, value and gate halves), `_conv_dw_kernel` (depthwise conv and bias over
valid frames), the LayerNorm kernel with SiLU, PW2 GEMM with bias, gate and padding-zero
epilogue.
Backward = dR GEMM with the gate-gradient sums fused, `_conv_mid_bwd_norm_kernel` (SiLU and
LayerNorm backward, conv-bias and norm-parameter gradients), `_conv_dw_kernel` again
(the transposed depthwise conv: taps reversed), `_glu_bwd_kernel`, `_conv_dw_grad_kernel`
(depthwise weight gradient), dZ GEMM, LayerNorm backward and the two weight-gradient
GEMMs over valid frames (where nothing is skipped, PW1's is a cuBLAS product that also
gives its bias gradient, from a column of ones the forward saves after z). A module gate
exactly 0 that needs no gradient makes every launch return at once (output exactly 0).

Shapes: x (B, T, D), PW1 (2D, D), DW (D, K), PW2 (D, D); frames are rows b*T + t.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .autograd import eager_function, grads_in_order, named_inputs, needs_grad
from .common import as_operands, await_producers, interpreting, two_passes, valid_mask
from .gated_matmul import (
    EPI_GATE_BWD,
    EPI_GLU,
    EPI_STORE,
    rows_gemm,
)
from .gated_wgrad import (
    col_sums,
    dense_products,
    dense_wgrad,
    sum_rows,
    wgrad,
)
from .grads_in_place import accumulators, returned, sinks_of, taken
from .launch import cdiv, launch, next_pow2
from .layer_norm import ONES_PAD, layer_norm_bwd, layer_norm_dx_tile, layer_norm_fwd
from .residual_step import residual_args, step_context, step_in, step_out


def gated_conv_reference(x: torch.Tensor, lengths: torch.Tensor, ln1_weight: torch.Tensor,
                         ln1_bias: torch.Tensor, pw1_weight: torch.Tensor,
                         pw1_bias: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor,
                         ln2_weight: torch.Tensor, ln2_bias: torch.Tensor,
                         pw2_weight: torch.Tensor, pw2_bias: torch.Tensor,
                         gates: torch.Tensor | None, eps: float = 1e-5,
                         ungated_batch: int = 0) -> torch.Tensor:
    """Plain PyTorch gated conv module in the dtype of x.

    x: (B, T, D), lengths: (B,), pw1_weight: (2D, D), pw1_bias: (2D,), dw_weight: (D, K),
    dw_bias: (D,), pw2_weight: (D, D), pw2_bias: (D,), gates: None or (1,).
    GLU: first half of PW1's channels times sigmoid of the second half. Frames t >= lengths[b]
    are zeroed before the depthwise conv (same padding, K odd) and output exactly 0.
    ungated_batch: the first sequences run as if gates were None (the ungated pass of a
    batch holding two).
    """
    if ungated_batch:
        weights = (ln1_weight, ln1_bias, pw1_weight, pw1_bias, dw_weight, dw_bias, ln2_weight,
                   ln2_bias, pw2_weight, pw2_bias)
        return two_passes(lambda rows, g: gated_conv_reference(x[rows], lengths[rows], *weights,
                                                               g, eps), ungated_batch, gates)
    B, T, D = x.shape
    if T == 0:     # conv1d refuses an input shorter than its kernel, even an empty one
        return x * 0.0
    mask = valid_mask(lengths, T)[..., None]
    u = F.linear(F.layer_norm(x, (D,), ln1_weight, ln1_bias, eps), pw1_weight, pw1_bias)
    v = torch.where(mask, F.glu(u, dim=-1), 0.0)
    K = dw_weight.shape[1]
    w = F.conv1d(v.transpose(1, 2), dw_weight[:, None, :], dw_bias, padding=K // 2, groups=D)
    r = F.silu(F.layer_norm(w.transpose(1, 2), (D,), ln2_weight, ln2_bias, eps))
    y = F.linear(r, pw2_weight, pw2_bias)
    if gates is not None:
        y = y * gates.to(y.dtype)
    return torch.where(mask, y, 0.0)



# ----------------------------------------------------------------------------- kernels

@triton.jit
def _conv_live(gate_ptr, HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr):
    live = 1
    if HAS_GATES and SKIP_DEAD:
        live = (tl.load(gate_ptr) != 0.0).to(tl.int32)
    return live


@triton.jit
def _frame(rows_ptr, t, length, cols, col_ok, D):
    """(BC,) fp32: row t of one sequence's rows (rows_ptr: its row 0 of (T, D)) at channels
    cols, zero outside [0, length)."""
    t_vec = tl.full(cols.shape, t, tl.int32)   # the interpreter takes no scalar bool in a mask
    ok = col_ok & (t_vec >= 0) & (t_vec < length)
    return tl.load(rows_ptr + t * D + cols, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _taps(wdw_ptr, cols, col_ok, K: tl.constexpr, REVERSED: tl.constexpr):
    """The K depthwise weights of channels cols as a tuple of (BC,) fp32, tap k first (or
    tap K-1 first, REVERSED); wdw: the (D, K) weight, read once a program."""
    taps = ()
    for k in tl.static_range(K):
        tap = K - 1 - k if REVERSED else k
        taps = taps + (tl.load(wdw_ptr + cols * K + tap, mask=col_ok, other=0.0)
                       .to(tl.float32),)
    return taps


@triton.jit
def _window_at(rows_ptr, start, length, cols, col_ok, D, K: tl.constexpr):
    """The rows start - K//2 .. start + K//2 - 1 of one sequence (zero outside [0, length)),
    a tuple of K - 1 (BC,) fp32: what frame `start`'s window holds before its step."""
    window = ()
    for k in tl.static_range(K - 1):
        window = window + (_frame(rows_ptr, start - K // 2 + k, length, cols, col_ok, D),)
    return window


@triton.jit
def _slide(window, taps, ahead, t_vec, length, col_ok, acc, K: tl.constexpr):
    """One frame t of a depthwise conv over a sliding window: appends the row that `ahead`
    points at (row t + K//2, zero at or past length; t_vec: t over the channels), returns
    (acc + sum_k window[k] * taps[k], the window without its oldest row). The taps are
    summed in order, tap 0 first."""
    new = tl.load(ahead, mask=col_ok & (t_vec + K // 2 < length), other=0.0)
    window = window + (new.to(tl.float32),)
    for k in tl.static_range(K):
        acc += window[k] * taps[k]
    return acc, window[1:]


@triton.jit
def _conv_dw_kernel(
    v_ptr, wdw_ptr, bdw_ptr, pre_ptr, gate_ptr, len_ptr, T, D,
    K: tl.constexpr, HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr, SPAN: tl.constexpr,
    BC: tl.constexpr, UNROLL: tl.constexpr, TRANSPOSED: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (s, j, b): the depthwise conv and its bias, pre[t] = b + sum_k v[t + k - P] w[k]
    # (P = K // 2, v zero outside [0, lengths[b])), for frames [s*SPAN, +SPAN) of sequence
    # b and channels [j*BC, +BC), one channel a thread. TRANSPOSED: the backward's transposed
    # conv, pre[t] = sum_k v[t + P - k] w[k] (the taps reversed, no bias; v is then dW and
    # pre dV). The K weights stay in registers, and
    # so do the K rows of v that frame t reads: the window slides one row a frame (one load
    # and one conversion an output, then K FMAs; sm_90: ~49 instructions an output, where
    # the former kernel's tap loop took ~106-134 (each tap's shifted tile loaded and
    # converted again): 12.7 us a call at B32xT250 on the H200 against 36, either way
    # (profiles/kernels_30def90_h200.txt).
    # The window is a tuple: each step appends the new row and drops the oldest, which the
    # compiler resolves to registers; UNROLL steps a loop iteration leave one set of
    # register moves per iteration instead of one a frame. Frames at or past the sequence's
    # length are left unwritten (the LayerNorm after it skips them too), as are all of a
    # dead module's.
    await_producers(PDL)
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    seq = tl.program_id(2)
    length = tl.minimum(tl.load(len_ptr + seq), T).to(tl.int32)   # int32 compares
    start = pid_s * SPAN
    live = _conv_live(gate_ptr, HAS_GATES, SKIP_DEAD)
    if (live > 0) & (start < length):
        cols = pid_c * BC + tl.arange(0, BC)
        col_ok = cols < D
        rows = v_ptr + seq * T * D
        taps = _taps(wdw_ptr, cols, col_ok, K, TRANSPOSED)
        if TRANSPOSED:
            bias = tl.zeros(cols.shape, tl.float32)
        else:
            bias = tl.load(bdw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        window = _window_at(rows, start, length, cols, col_ok, D, K)
        end = tl.minimum(start + SPAN, length)
        # pointers stepped a row a frame (a product t * D a frame cost ~4 instructions)
        ahead = rows + (start + K // 2) * D + cols      # v row t + P
        out = pre_ptr + (seq * T + start) * D + cols    # pre row t
        for t0 in range(start, end, UNROLL):
            for i in tl.static_range(UNROLL):
                t_vec = tl.full(cols.shape, t0 + i, tl.int32)
                acc, window = _slide(window, taps, ahead, t_vec, length, col_ok, bias, K)
                tl.store(out, acc.to(pre_ptr.dtype.element_ty), mask=col_ok & (t_vec < end))
                ahead += D
                out += D


@triton.jit
def _conv_mid_bwd_norm_kernel(
    dr_ptr, pre_ptr, lnw_ptr, lnb_ptr, dpre_ptr, part_ptr, gate_ptr, len_ptr, T, D, eps,
    HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr, SPAN: tl.constexpr, BT: tl.constexpr,
    BD: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (i, b): for frames [i*SPAN, +SPAN) of sequence b, BT at a time, the SiLU and
    # LayerNorm backward from dR to dW (conv output); its sums of dgamma, dbeta and the conv
    # bias gradient go to row (b, i) of part (B * spans, 3, D), zeros for a dead or padded
    # span, which the launcher adds up. (Atomic adds of 512 programs onto the same 3 x D
    # addresses queued: 51 us at B32xT250 on the H200.) One warp per program where a row fits
    # it (_norm_bwd_blocks): a row's sums stay in the warp and the column sums in each
    # thread. The former 8-warp tiles of 16 frames crossed warps for every sum (51 barriers)
    # at 1 program per SM (132 registers x 256 threads): 108 us a call at ~20k frames, ~10x
    # its bytes (H200, profiles/step_c61fbe6_h200.txt).
    await_producers(PDL)
    pid_t = tl.program_id(0)
    seq = tl.program_id(1)
    length = tl.minimum(tl.load(len_ptr + seq), T)
    cols = tl.arange(0, BD)
    col_ok = cols < D
    part = part_ptr + (seq * tl.num_programs(0) + pid_t) * 3 * D + cols
    live = _conv_live(gate_ptr, HAS_GATES, SKIP_DEAD)
    d_lnw = tl.zeros([BD], dtype=tl.float32)
    d_lnb = tl.zeros([BD], dtype=tl.float32)
    d_bias = tl.zeros([BD], dtype=tl.float32)
    start = pid_t * SPAN
    if (live > 0) & (start < length):
        lnw = tl.load(lnw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        lnb = tl.load(lnb_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        end = tl.minimum(start + SPAN, length)
        # each step loads the next step's rows first: their latency overlaps this one's work
        t_first = start + tl.arange(0, BT)
        first = (seq * T + t_first)[:, None] * D + cols[None, :]
        ok_first = (t_first < end)[:, None] & col_ok[None, :]
        pre_next = tl.load(pre_ptr + first, mask=ok_first, other=0.0)
        dr_next = tl.load(dr_ptr + first, mask=ok_first, other=0.0)
        for t0 in range(start, end, BT):
            t = t0 + tl.arange(0, BT)
            ok = (t < end)[:, None] & col_ok[None, :]
            tile = (seq * T + t)[:, None] * D + cols[None, :]
            pre = pre_next.to(tl.float32)
            dr = dr_next.to(tl.float32)
            ok_next = (t + BT < end)[:, None] & col_ok[None, :]
            pre_next = tl.load(pre_ptr + tile + BT * D, mask=ok_next, other=0.0)
            dr_next = tl.load(dr_ptr + tile + BT * D, mask=ok_next, other=0.0)
            mean = tl.sum(pre, 1) / D
            xc = tl.where(ok, pre - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
            xhat = xc * rstd[:, None]
            q = xhat * lnw[None, :] + lnb[None, :]
            sig = tl.sigmoid(q)
            dq = tl.where(ok, dr * sig * (1.0 + q * (1.0 - sig)), 0.0)
            d_lnw += tl.sum(dq * xhat, 0)
            d_lnb += tl.sum(dq, 0)
            dpre = layer_norm_dx_tile(dq, xhat, lnw, rstd, ok, D)
            d_bias += tl.sum(dpre, 0)
            tl.store(dpre_ptr + tile, dpre.to(dpre_ptr.dtype.element_ty), mask=ok)
    tl.store(part, d_lnw, mask=col_ok)
    tl.store(part + D, d_lnb, mask=col_ok)
    tl.store(part + 2 * D, d_bias, mask=col_ok)


@triton.jit
def _glu_bwd_kernel(
    dv_ptr, u_ptr, du_ptr, gate_ptr, len_ptr, T, D,
    HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    ZERO_PADDED: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (i, j, b): the GLU backward dU = (dV sigmoid(g), dV a sigmoid'(g)), U = (a, g),
    # for frames [i*BT, +BT) and channels [j*BC, +BC) of sequence b. A kernel of its own, not
    # the transposed conv's epilogue: there, one channel a thread, its two loads and two
    # stores a frame were scalar and the kernel issue-bound (35.6 us a call at B32xT250 on
    # the H200, eb462ec, against 12.7 for the conv alone). Padded frames are left unwritten,
    # or written as zeros with ZERO_PADDED (for a dense product over every row, dense_wgrad),
    # as are all of a dead module's.
    await_producers(PDL)
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    seq = tl.program_id(2)
    live = _conv_live(gate_ptr, HAS_GATES, SKIP_DEAD)
    # frames below `valid` get gradients: none for a dead module
    valid = tl.minimum(tl.load(len_ptr + seq), T).to(tl.int32) * live
    t = pid_t * BT + tl.arange(0, BT)
    cols = pid_c * BC + tl.arange(0, BC)
    col_ok = (cols < D)[None, :]
    busy = pid_t * BT < valid
    if ZERO_PADDED:
        busy = pid_t * BT < T
    if busy:
        ok = (t < valid)[:, None] & col_ok
        rows = (seq * T + t)[:, None]
        dv = tl.load(dv_ptr + rows * D + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        u_tile = u_ptr + rows * (2 * D) + cols[None, :]
        a = tl.load(u_tile, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(u_tile + D, mask=ok, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        write = ok      # masked-off terms are 0: the padded rows' zeros
        if ZERO_PADDED:
            write = (t < T)[:, None] & col_ok
        du_tile = du_ptr + rows * (2 * D) + cols[None, :]
        dtype = du_ptr.dtype.element_ty
        tl.store(du_tile, (dv * sig).to(dtype), mask=write)
        tl.store(du_tile + D, (dv * a * sig * (1.0 - sig)).to(dtype), mask=write)


@triton.jit
def _v_row(v_ptrs, t, length, rel, col_ok, D: tl.constexpr):
    # (G, BC) fp32: V at source frames t + rel (zero outside [0, length)); v_ptrs: row rel
    src = t + rel
    ok = col_ok & (src >= 0) & (src < length)
    return tl.load(v_ptrs + t * D, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _conv_dw_grad_kernel(
    dpre_ptr, v_ptr, part_ptr, gate_ptr, len_ptr,
    T, NS,  # part: (B * NS, K, D) fp32 partial sums, one row block per program
    D: tl.constexpr, K: tl.constexpr, HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr,
    SPAN: tl.constexpr, G: tl.constexpr, BC: tl.constexpr, LOAD_STAGES: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (s, j, b): the depthwise weight gradient dw[c, k] = sum_t dW[t, c] V[t + k - P, c]
    # over frames [s*SPAN, +SPAN) and channels [j*BC, +BC) of sequence b, stored as its
    # partial sums (zeros for a dead or padded span), which the launcher adds up.
    # Taps k = 4g + i: row g of a (G, BC) tile (one g and 8 channels per thread at 8 x 128,
    # 4 warps) and i in 0..3 a variable of its own, so a thread holds 4 taps of its channels.
    # Frames go one by one: each frame loads one dW row and one new V row (w3), 8 values a
    # thread, for 4 FMAs each; the window w0..w3 = V[t + 4g - P + i] slides by renaming
    # (the loop steps 4 frames, so the renaming costs no moves). D is a constexpr so the
    # row offsets are immediates. sm_90 SASS per 4 frames: 319 instructions for 128
    # element-taps (8 LDG.128, 128 FFMA); the former design, taps outside and frame tiles
    # inside, reloaded and masked both tiles per tap: 498 for 64 (16 LDG.128) and 65 us at
    # B32xT250 against 24 us for this one (H200, kernel alone, bench script outside the repo,
    # not in bench/results; reducing per tap and 32-frame tile had taken 144.5 us).
    await_producers(PDL)
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    seq = tl.program_id(2)
    length = tl.minimum(tl.load(len_ptr + seq), T).to(tl.int32)   # i32 compares
    start = pid_s * SPAN
    cols = pid_c * BC + tl.arange(0, BC)
    col_ok = (cols < D)[None, :]
    tap0 = 4 * tl.arange(0, G)[:, None]            # (G, 1): the first of each row's 4 taps
    rel = tap0 - K // 2                             # w0 of frame t holds V[t + rel]
    base = seq * T * D
    # dW rows broadcast over g: loaded in the layout of the V tiles, no conversion
    dp_ptrs = dpre_ptr + base + tl.broadcast_to(cols[None, :], [G, BC])
    v_ptrs = v_ptr + base + rel * D + cols[None, :]
    acc0 = tl.zeros([G, BC], dtype=tl.float32)
    acc1 = tl.zeros([G, BC], dtype=tl.float32)
    acc2 = tl.zeros([G, BC], dtype=tl.float32)
    acc3 = tl.zeros([G, BC], dtype=tl.float32)
    live = _conv_live(gate_ptr, HAS_GATES, SKIP_DEAD)
    if (live > 0) & (start < length):
        end = tl.minimum(start + SPAN, length)
        w0 = _v_row(v_ptrs, start, length, rel, col_ok, D)
        w1 = _v_row(v_ptrs, start + 1, length, rel, col_ok, D)
        w2 = _v_row(v_ptrs, start + 2, length, rel, col_ok, D)
        for f in tl.range(start, end, 4, num_stages=LOAD_STAGES):
            for i in tl.static_range(4):
                t = f + i
                # (1, 1) frame test: the interpreter rejects a scalar bool in a mask
                t_ok = tl.full([1, 1], t, tl.int32) < end
                dp = tl.load(dp_ptrs + t * D, mask=col_ok & t_ok, other=0.0).to(tl.float32)
                w3 = _v_row(v_ptrs, t + 3, length, rel, col_ok, D)
                acc0 += dp * w0
                acc1 += dp * w1
                acc2 += dp * w2
                acc3 += dp * w3
                w0, w1, w2 = w1, w2, w3
    part = part_ptr + (seq * NS + pid_s) * K * D + tap0 * D + cols[None, :]
    tl.store(part, acc0, mask=col_ok & (tap0 < K))
    tl.store(part + D, acc1, mask=col_ok & (tap0 + 1 < K))
    tl.store(part + 2 * D, acc2, mask=col_ok & (tap0 + 2 < K))
    tl.store(part + 3 * D, acc3, mask=col_ok & (tap0 + 3 < K))


# ----------------------------------------------------------------------------- launchers

LN_EPS = 1e-5      # both LayerNorms, as nn.LayerNorm's default

def _dw_blocks(D: int) -> dict:
    """Tiles of both depthwise convs (forward, transposed): spans of 32 frames, one channel a
    thread, 128 channels at 4 warps (768 programs at B32xT250, D 384), 8 frames a loop
    iteration. H200 at 80 x 250 x 384 bf16 (bench/sweep_conv.py, eb462ec): 51.6 us, against
    50.6 at 4 frames an iteration, 55.3 / 56.2 / 66.0 for spans of 16 / 48 / 64, ~52 for
    narrower channel blocks."""
    if interpreting():      # every channel in one program: fewer interpreted ops
        return dict(SPAN=16, BC=max(16, next_pow2(D)), UNROLL=4, num_warps=1)
    return dict(SPAN=32, BC=128, UNROLL=8, num_warps=4)


def _norm_bwd_blocks(D: int) -> dict:
    """Spans of the SiLU / LayerNorm backward: 8 frames a program, two at a time in one
    warp where a row fits it. H200 at 80 x 250 x 384 bf16 (bench/sweep_conv.py): 49.8 us
    against 53.1 for spans of 16 and 58.8 of 32 (2026-12-01, session 17); one frame at a
    time 63.0 at spans of 16 (session 16). A longer span means fewer programs, each a longer
    chain of dependent steps."""
    BD = max(16, next_pow2(D))
    if interpreting():
        return dict(SPAN=32, BT=16, BD=BD, num_warps=4)
    return dict(SPAN=8, BT=2, BD=BD, num_warps=1 if BD <= 512 else 4)


def _glu_bwd_blocks(D: int) -> dict:
    """Tiles of the GLU backward: 32 frames x 128 channels (16 elements a thread at 8 warps,
    768 programs at B32xT250, D 384): 6.7 us a call there on the H200 (30def90), ~30 MB
    moved, ~4.6 TB/s."""
    if interpreting():
        return dict(BT=16, BC=max(16, next_pow2(D)), num_warps=4)
    return dict(BT=32, BC=128, num_warps=8)


def _dw_grad_blocks(D: int) -> dict:
    """Tiles of the depthwise weight gradient: spans of 64 frames x 128 channels (384
    programs of 4 warps at B32xT250, D 384; 6 MB of partial sums), the frame loop's loads
    async copies 3 stages deep (LOAD_STAGES, tl.range). sm_90 compile
    (bench/compile_check_modules.py): 104 registers, no spills. H200 at 80 x 250 x 384 bf16
    (bench/sweep_conv.py, 2026-12-01): 48.1 us against 54.4 unpipelined; spans of 128
    frames took 46.8 us there, but give B32xT250 only 192 programs for 132 SMs."""
    if interpreting():
        return dict(SPAN=32, BC=max(16, next_pow2(D)), num_warps=4, LOAD_STAGES=1)
    return dict(SPAN=64, BC=128, num_warps=4, LOAD_STAGES=3)


def conv_dw_grad(dpre: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, T: int, K: int,
                 gate_arg: torch.Tensor, has_gates: bool, skip_dead: bool,
                 config: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise weight gradient dw (D, K) fp32: dw[c, k] = sum over valid frames t of
    dpre[t, c] v[t + k - K//2, c], v zero outside [0, lengths[b]).

    dpre, v: (B*T, D), rows b*T + t; lengths: (B,); gate_arg: the module gate (1,) when
    has_gates (all zeros for a dead gate with skip_dead), else any tensor. config: dict(SPAN,
    BC, num_warps, LOAD_STAGES) in place of the defaults (bench/sweep_conv.py). out: a zeroed
    fp32 (K * D,) buffer that gets dw transposed (default: new); dw is its (D, K) view."""
    M, D = v.shape
    B = M // T
    blk = {**_dw_grad_blocks(D), **(config or {})}
    n_spans = cdiv(T, blk["SPAN"])
    parts = torch.empty(B * n_spans, K, D, dtype=torch.float32, device=v.device)
    launch(_conv_dw_grad_kernel, (n_spans, cdiv(D, blk["BC"]), B),
        dpre, v, parts, gate_arg, lengths, T, n_spans,
        D=D, K=K, HAS_GATES=has_gates, SKIP_DEAD=skip_dead, G=next_pow2(cdiv(K, 4)), **blk)
    out = None if out is None else out.view(K, D)
    return sum_rows(parts, out).t()


def conv_mid_fwd(v, dw_w, dw_b, ln2_w, ln2_b, pre, r, gates, lengths, T, skip_dead,
                 config=None):
    """The depthwise conv, its bias, LayerNorm and SiLU: v [M, D] -> r [M, D], the conv
    output in pre [M, D] (the backward's input; a scratch buffer in inference, never v),
    valid frames only. Two launches: the conv, then the LayerNorm kernel with SiLU.
    config: dict(SPAN, BC, UNROLL, num_warps) for the conv in place of the defaults
    (bench/sweep_conv.py)."""
    D, K = v.shape[1], dw_w.shape[1]
    blk = {**_dw_blocks(D), **(config or {})}
    launch(_conv_dw_kernel, (cdiv(T, blk["SPAN"]), cdiv(D, blk["BC"]), v.shape[0] // T),
        v, dw_w.contiguous(), dw_b, pre, gates if gates is not None else v, lengths, T, D,
        K=K, HAS_GATES=gates is not None, SKIP_DEAD=skip_dead and gates is not None,
        TRANSPOSED=False, **blk)
    layer_norm_fwd(pre, ln2_w, ln2_b, lengths, T, gates, skip_dead, LN_EPS, out=r, silu=True)


def conv_mid_bwd_norm(dr, pre, ln2_w, ln2_b, gate_arg, lengths, T, has_gates, skip_dead,
                      config=None, out=None):
    """The SiLU and LayerNorm backward from dR [M, D] to the conv output's gradient dpre
    [M, D], and (dgamma, dbeta, the conv bias gradient) as one fp32 [3, D] (out: a zeroed
    fp32 (3 * D,) buffer for them, default new). config: dict(SPAN, BT, num_warps) in place
    of the defaults (bench/sweep_conv.py)."""
    D = dr.shape[1]
    blk = {**_norm_bwd_blocks(D), **(config or {})}
    n_tiles = cdiv(T, blk["SPAN"])
    dpre = torch.empty_like(dr)
    parts = torch.empty(dr.shape[0] // T * n_tiles, 3, D, dtype=torch.float32,
                        device=dr.device)
    launch(_conv_mid_bwd_norm_kernel, (n_tiles, dr.shape[0] // T),
        dr, pre, ln2_w, ln2_b, dpre, parts, gate_arg, lengths, T, D, LN_EPS,
        HAS_GATES=has_gates, SKIP_DEAD=skip_dead, **blk)
    return dpre, sum_rows(parts, None if out is None else out.view(3, D))


def conv_mid_bwd_conv(dpre, u, dw_w, gate_arg, lengths, T, has_gates, skip_dead,
                      config=None, zero_padded=False):
    """The transposed depthwise conv and the GLU backward: dpre [M, D], u [M, 2D] (the GLU
    input) -> du [M, 2D], its padded rows unwritten or, with zero_padded, zeros. Two
    launches: the conv kernel with its taps reversed into dV [M, D], then the GLU backward.
    config: dict(SPAN, BC, UNROLL, num_warps) for the conv in place of the defaults
    (bench/sweep_conv.py)."""
    M, D = dpre.shape
    K = dw_w.shape[1]
    blk = {**_dw_blocks(D), **(config or {})}
    dv = torch.empty_like(dpre)
    launch(_conv_dw_kernel, (cdiv(T, blk["SPAN"]), cdiv(D, blk["BC"]), M // T),
        dpre, dw_w.contiguous(), dpre, dv, gate_arg, lengths, T, D,
        K=K, HAS_GATES=has_gates, SKIP_DEAD=skip_dead, TRANSPOSED=True, **blk)
    # dV in the compute dtype between the launches, as autograd's conv backward would
    # give it to the GLU's (the fused kernel kept it in fp32: 6 MB less at B32xT250)
    glu = _glu_bwd_blocks(D)
    du = dpre.new_empty(M, 2 * D)
    launch(_glu_bwd_kernel, (cdiv(T, glu["BT"]), cdiv(D, glu["BC"]), M // T),
        dv, u, du, gate_arg, lengths, T, D,
        HAS_GATES=has_gates, SKIP_DEAD=skip_dead, ZERO_PADDED=zero_padded, **glu)
    return du


def gated_conv_fwd_triton(x, lengths, ln1_w, ln1_b, pw1_w, pw1_b, dw_w, dw_b, ln2_w, ln2_b,
                          pw2_w, pw2_b, gates, skip_dead, save, pw1c, pw2c, ungated_batch=0,
                          res_y=None, res_seed=None, res_scale=1.0, res_p=0.0):
    # pw1c, pw2c: the pointwise weights as matmul operands, in the compute dtype (kept for
    # the backward); pw1_w, pw2_w are inputs only to receive their gradients. res_y given:
    # the input is the residual step x + res_scale * dropout(res_y, res_p), made by the
    # LayerNorm and returned last (x_new; else an empty tensor)
    B, T, D = x.shape
    compute_dtype = pw1c.dtype
    M = B * T
    x2 = x.reshape(M, D)
    res, x_new = step_in(x, res_y, res_seed, res_scale, res_p)
    common = dict(lengths=lengths, T=T, gates=gates, skip_dead=skip_dead)
    # the LayerNorm reads x in its own dtype and writes z in the compute dtype (no cast of
    # x before the call, none of dx after the backward)
    # With nothing skipped, z's padded rows are zeros: PW1's weight gradient is then a dense
    # product (backward), and z is saved with a column of ones after its D columns, so that
    # the same product gives PW1's bias gradient (as the FFN's dW1 gives b1's)
    dense = save and dense_products(x, gates, skip_dead)
    z_saved, mean, rstd = layer_norm_fwd(x2, ln1_w, ln1_b, lengths, T, gates, skip_dead,
                                         LN_EPS, out_dtype=compute_dtype, zero_padded=dense,
                                         ones_column=dense, residual=res)
    z = z_saved[:, :D]
    v = z.new_empty(M, D)
    u = z.new_empty(M, 2 * D) if save else None
    rows_gemm(z, pw1c.t(), v, bias=pw1_b, epi=EPI_GLU, aux=u, **common)
    pre = z.new_empty(M, D)
    r = z.new_empty(M, D)
    conv_mid_fwd(v, dw_w, dw_b, ln2_w, ln2_b, pre, r, gates, lengths, T, skip_dead)
    y = z.new_empty(B, T, D)
    rows_gemm(r, pw2c.t(), y.view(M, D), bias=pw2_b, epi=EPI_STORE,
              scale_out=gates is not None, final=True, ungated_rows=ungated_batch * T, **common)
    if not save:  # distinct empties: custom_op outputs may not alias each other
        return (y, z.new_empty(0), mean.new_empty(0), mean.new_empty(0),
                *(z.new_empty(0) for _ in range(4)), x_new)
    return y, z_saved, mean, rstd, u, v, pre, r, x_new


def gated_conv_bwd_triton(dy, x, lengths, ln1_w, pw1_w, dw_w, ln2_w, ln2_b, pw2_w, pw2_b,
                          gates, z, mean, rstd, u, v, pre, r, pw1c, pw2c, skip_dead,
                          gate_grad, ungated_batch=0, x_grad=None, res_seed=None,
                          res_scale=1.0, res_p=0.0, x_dtype=None, res_dtype=None, *,
                          sinks=None):
    # x: the LayerNorm's input (the forward's x_new after a residual step); res_dtype given:
    # dx is the stream's gradient (x_grad, x_new's, added), the step's y gets its own (last).
    # sinks (keyword-only: the eager path's own, not the op's): parameter name -> its .grad,
    # to add that gradient to in place (grads_in_place); those taken come back as None
    B, T, D = x.shape
    M, K = B * T, dw_w.shape[1]
    z_saved, z = z, z[:, :D]      # as the forward saved it: a column of ones for the dense path
    dy2 = dy.reshape(M, D).contiguous()
    common = dict(lengths=lengths, T=T, gates=gates, skip_dead=skip_dead)
    has_gates, skip = gates is not None, skip_dead and gates is not None
    # nothing skipped: du gets zeros at padded rows, and its two products with z (zero
    # there too) and PW1 go to cuBLAS (see the FFN's backward)
    dense = dense_products(x, gates, skip_dead)
    # every fp32 accumulator (atomics) carved from one zeroed buffer: one memset launch
    # (cuBLAS writes the dense path's PW1 weight gradient: none to zero for it), the sums of
    # the conv kernels' per-program partials (`sum_rows`) among them, or a parameter's .grad
    # where it is a sink
    in_place = taken(sinks, {"ln1_w", "ln1_b", "pw2_w", "pw2_b"}
                     | (set() if dense else {"pw1_w", "pw1_b"}))
    acc = accumulators(dict(gate_cols=1 if gate_grad else 0, pw2_b=D, pw2_w=D * D,
                            pw1_b=0 if dense else 2 * D, pw1_w=0 if dense else 2 * D * D,
                            ln1_w=D, ln1_b=D, norm_sums=3 * D, dw_w=K * D), x.device,
                       in_place)
    gate_cols = acc["gate_cols"] if gate_grad else None
    dy_sum, dpw2, d_pw1b, d_pw1w = acc["pw2_b"], acc["pw2_w"].view(D, D), acc["pw1_b"], \
        acc["pw1_w"]
    d_ln1w, d_ln1b, norm_sums, d_dww = acc["ln1_w"], acc["ln1_b"], acc["norm_sums"], \
        acc["dw_w"]
    dr = dy2.new_empty(M, D)
    U = ungated_batch * T
    # the gate's gradient, one number: sum over columns of dy . (r W2^T) (the epilogue's
    # tile totals, all at index 0) + pw2_b . (the gated rows' sums of dy) (col_sums below)
    rows_gemm(dy2, pw2c, dr, epi=EPI_GATE_BWD, aux=r, sum1=gate_cols, ungated_rows=U,
              chunk_sums=gate_grad, **common)
    # PW2's gradients from dy times the gate at the rows it scaled (all but the ungated
    # ones): one copy of dy so scaled (zeros at padded rows) in the bias gradient's sweep, and
    # one weight-gradient product over it (where gated and ungated rows took two of each and
    # two _foreach launches, ~16 us each on the H200, to scale and add them); the gated rows'
    # unscaled sums, dotted with pw2_b, go into the gate's gradient. A dead module (skip)
    # reads and writes nothing: its gradients stay 0.
    dy_w = dy2
    if has_gates:
        dy_w = torch.empty_like(dy2)
        col_sums(dy2, dy_sum, lengths=lengths, T=T, gates=gates, skip_dead=skip, copy=dy_w,
                 scaled=True, ungated_rows=U,
                 gated_dot=(pw2_b, gate_cols) if gate_grad else None)
    else:
        col_sums(dy2, dy_sum, lengths=lengths, T=T)
    wgrad(dy_w, r, out=dpw2, **common)
    gate_arg = gates if has_gates else dy_sum
    dpre, (d_ln2w, d_ln2b, d_dwb) = conv_mid_bwd_norm(dr, pre, ln2_w, ln2_b, gate_arg, lengths,
                                                      T, has_gates, skip, out=norm_sums)
    du = conv_mid_bwd_conv(dpre, u, dw_w, gate_arg, lengths, T, has_gates, skip,
                           zero_padded=dense)
    d_dww = conv_dw_grad(dpre, v, lengths, T, K, gate_arg, has_gates, skip, out=d_dww)
    if dense:
        dz = torch.mm(du, pw1c.to(du.dtype))
    else:
        dz = dy2.new_empty(M, D)
        rows_gemm(du, pw1c, dz, epi=EPI_STORE, **common)
    if dense:
        d_pw1 = dense_wgrad(du, z_saved)       # [2D, D + pad]: the weight's, then the bias's
        d_pw1w, d_pw1b = d_pw1[:, :D], d_pw1[:, D]
    else:
        col_sums(du, d_pw1b, lengths=lengths, T=T, gates=gates, skip_dead=skip_dead)
        d_pw1w = d_pw1w.view(2 * D, D)
        wgrad(du, z, out=d_pw1w, **common)
    res, d_res = step_out(x, x_grad, res_seed, res_scale, res_p, res_dtype)
    dx = layer_norm_bwd(dz, x.reshape(M, D), ln1_w, mean, rstd, lengths, T, gates, skip_dead,
                        dw=d_ln1w, db=d_ln1b, residual=res, dx_dtype=x_dtype)[0]
    dgates = None
    if gate_grad:   # summed by the two kernels above
        dgates = gate_cols.to(gates.dtype)
    return (dx.view(B, T, D), returned(in_place, "ln1_w", d_ln1w, ln1_w.dtype),
            returned(in_place, "ln1_b", d_ln1b, ln1_w.dtype),
            returned(in_place, "pw1_w", d_pw1w, pw1_w.dtype),
            returned(in_place, "pw1_b", d_pw1b, pw1_w.dtype), d_dww.to(dw_w.dtype),
            d_dwb.to(dw_w.dtype), d_ln2w.to(ln2_w.dtype), d_ln2b.to(ln2_b.dtype),
            returned(in_place, "pw2_w", dpw2, pw2_w.dtype),
            returned(in_place, "pw2_b", dy_sum, pw2_b.dtype), dgates, d_res)


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::gated_conv_fwd", mutates_args=())
def gated_conv_fwd(x: torch.Tensor, lengths: torch.Tensor, ln1_w: torch.Tensor,
                   ln1_b: torch.Tensor, pw1_w: torch.Tensor, pw1_b: torch.Tensor,
                   dw_w: torch.Tensor, dw_b: torch.Tensor, ln2_w: torch.Tensor,
                   ln2_b: torch.Tensor, pw2_w: torch.Tensor, pw2_b: torch.Tensor,
                   gates: torch.Tensor | None, skip_dead: bool, save: bool,
                   pw1c: torch.Tensor, pw2c: torch.Tensor, ungated_batch: int = 0,
                   res_y: torch.Tensor | None = None, res_seed: torch.Tensor | None = None,
                   res_scale: float = 1.0, res_p: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    return tuple(gated_conv_fwd_triton(x, lengths, ln1_w, ln1_b, pw1_w, pw1_b, dw_w, dw_b,
                                      ln2_w, ln2_b, pw2_w, pw2_b, gates, skip_dead, save,
                                      pw1c, pw2c, ungated_batch, res_y, res_seed, res_scale,
                                      res_p))


@gated_conv_fwd.register_fake
def _(x, lengths, ln1_w, ln1_b, pw1_w, pw1_b, dw_w, dw_b, ln2_w, ln2_b, pw2_w, pw2_b, gates,
      skip_dead, save, pw1c, pw2c, ungated_batch=0, res_y=None, res_seed=None, res_scale=1.0,
      res_p=0.0):
    B, T, D = x.shape
    like = dict(dtype=pw1c.dtype)
    y = x.new_empty(B, T, D, **like)
    x_new = step_in(x, res_y, res_seed, res_scale, res_p)[1]
    if not save:
        f32 = dict(dtype=torch.float32)
        return (y, x.new_empty(0, **like), x.new_empty(0, **f32), x.new_empty(0, **f32),
                *(x.new_empty(0, **like) for _ in range(4)), x_new)
    M = B * T
    stats = x.new_empty(M, dtype=torch.float32)
    pad = ONES_PAD if dense_products(x, gates, skip_dead) else 0
    return (y, x.new_empty(M, D + pad, **like), stats, torch.empty_like(stats),
            x.new_empty(M, 2 * D, **like), *(x.new_empty(M, D, **like) for _ in range(3)),
            x_new)


@torch.library.custom_op("orthoasr::gated_conv_bwd", mutates_args=())
def gated_conv_bwd(dy: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor,
                   ln1_w: torch.Tensor, pw1_w: torch.Tensor, dw_w: torch.Tensor,
                   ln2_w: torch.Tensor, ln2_b: torch.Tensor, pw2_w: torch.Tensor,
                   pw2_b: torch.Tensor, gates: torch.Tensor | None, z: torch.Tensor,
                   mean: torch.Tensor, rstd: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   pre: torch.Tensor, r: torch.Tensor, pw1c: torch.Tensor,
                   pw2c: torch.Tensor, skip_dead: bool, gate_grad: bool,
                   ungated_batch: int = 0, x_grad: torch.Tensor | None = None,
                   res_seed: torch.Tensor | None = None, res_scale: float = 1.0,
                   res_p: float = 0.0, x_dtype: torch.dtype | None = None,
                   res_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    grads = gated_conv_bwd_triton(dy, x, lengths, ln1_w, pw1_w, dw_w, ln2_w, ln2_b, pw2_w,
                                  pw2_b, gates, z, mean, rstd, u, v, pre, r, pw1c, pw2c,
                                  skip_dead, gate_grad, ungated_batch, x_grad, res_seed,
                                  res_scale, res_p, x_dtype, res_dtype)
    # custom-op outputs may not alias each other: copy the views of the shared fp32 buffer
    return [x.new_empty(0) if g is None else g.clone() if g._base is not None else g
            for g in grads]


@gated_conv_bwd.register_fake
def _(dy, x, lengths, ln1_w, pw1_w, dw_w, ln2_w, ln2_b, pw2_w, pw2_b, gates, z, mean, rstd, u,
      v, pre, r, pw1c, pw2c, skip_dead, gate_grad, ungated_batch=0, x_grad=None, res_seed=None,
      res_scale=1.0, res_p=0.0, x_dtype=None, res_dtype=None):
    D = x.shape[-1]
    vec = [ln1_w.new_empty(D) for _ in range(2)]
    d_res = step_out(x, x_grad, res_seed, res_scale, res_p, res_dtype)[1]
    return [x.new_empty(x.shape, dtype=x_dtype or x.dtype), *vec, torch.empty_like(pw1_w),
            pw1_w.new_empty(2 * D),
            torch.empty_like(dw_w), dw_w.new_empty(D), ln2_w.new_empty(D), ln2_w.new_empty(D),
            torch.empty_like(pw2_w), pw2_w.new_empty(D),
            torch.empty_like(gates) if gate_grad else x.new_empty(0), d_res]


class _Saved(NamedTuple):
    """What the backward reads, by name (saved with ctx.save_for_backward)."""
    x: torch.Tensor
    lengths: torch.Tensor
    ln1_w: torch.Tensor
    pw1_w: torch.Tensor
    dw_w: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    pw2_w: torch.Tensor
    pw2_b: torch.Tensor
    gates: torch.Tensor | None
    z: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    pre: torch.Tensor
    r: torch.Tensor
    pw1c: torch.Tensor      # the forward's matmul operands: pw1_w, pw2_w in the compute
    pw2c: torch.Tensor      # dtype
    res_seed: torch.Tensor | None       # the residual step's, or None without one


def _setup_context(ctx, inputs, output):
    args = named_inputs(gated_conv_fwd_triton, inputs)
    _y, z, mean, rstd, u, v, pre, r, x_new = output
    step = args["res_y"] is not None
    weights = {name: args[name] for name in _Saved._fields[:10]}
    if step:
        weights["x"] = x_new
    ctx.save_for_backward(*_Saved(**weights, z=z, mean=mean, rstd=rstd, u=u, v=v, pre=pre, r=r,
                                  pw1c=args["pw1c"], pw2c=args["pw2c"],
                                  res_seed=args["res_seed"] if step else None))
    ctx.skip_dead, ctx.ungated_batch = args["skip_dead"], args["ungated_batch"]
    ctx.residual = step_context(args, step)
    ctx.sinks = sinks_of(args, ("ln1_w", "ln1_b", "pw1_w", "pw1_b", "pw2_w", "pw2_b"))


def _backward(ctx, dy, *activations, bwd=gated_conv_bwd):
    saved = _Saved(*ctx.saved_tensors)
    if saved.r.numel() == 0 and saved.x.numel() != 0:
        raise RuntimeError("gated_conv_fwd ran with save=False; call gated_conv() so that "
                           "the activations are kept when gradients are needed")
    gate_grad = saved.gates is not None and needs_grad(ctx, gated_conv_fwd_triton, "gates")
    (dx, d_ln1w, d_ln1b, d_pw1w, d_pw1b, d_dww, d_dwb, d_ln2w, d_ln2b, d_pw2w, d_pw2b, dg,
     d_res) = bwd(dy, **saved._asdict(), skip_dead=ctx.skip_dead, gate_grad=gate_grad,
                  ungated_batch=ctx.ungated_batch, x_grad=activations[-1], **ctx.residual,
                  **(dict(sinks=ctx.sinks) if bwd is gated_conv_bwd_triton else {}))
    return grads_in_order(gated_conv_fwd_triton, x=dx, ln1_w=d_ln1w, ln1_b=d_ln1b,
                          pw1_w=d_pw1w, pw1_b=d_pw1b, dw_w=d_dww, dw_b=d_dwb, ln2_w=d_ln2w,
                          ln2_b=d_ln2b, pw2_w=d_pw2w, pw2_b=d_pw2b,
                          gates=dg if gate_grad else None,
                          res_y=d_res if ctx.residual["res_dtype"] is not None else None)


gated_conv_fwd.register_autograd(_backward, setup_context=_setup_context)
_GatedConv = eager_function(gated_conv_fwd_triton, _setup_context, _backward,
                            gated_conv_bwd_triton, non_differentiable=range(1, 8))


def gated_conv(x, lengths, ln1_w, ln1_b, pw1_w, pw1_b, dw_w, dw_b, ln2_w, ln2_b, pw2_w, pw2_b,
               gates, compute_dtype=None, operands=None, ungated_batch=0, residual=None):
    """Triton gated conv module, same meaning as `gated_conv_reference` (inputs checked), its
    work in `compute_dtype` (default: x's), the output in it too, dx in x's dtype.
    operands: (PW1, PW2) in the compute dtype, (2D, D) and (D, D), made by the caller (one
    copy for a whole encoder, common.operand_copies), or None: cast here (as_operands).

    A gate exactly 0 skips all work on the device when the gates need no gradient, and not
    with ungated_batch: the first ungated_batch sequences run as if gates were None, the rest
    with the gate (its gradient from those rows only), as two passes in one batch would.
    residual: (y, seed, scale, p), the residual step of the module before, or None: the
    input is then x + scale * dropout(y, p), made by this module's LayerNorm kernels
    (residual_step.Residual), and the call returns (that new stream, the output).
    Eager calls go through one autograd.Function; under torch.compile the torch.library op.
    """
    if ungated_batch and (gates is None or not 0 < ungated_batch < x.shape[0]):
        raise ValueError(f"gated_conv: ungated_batch={ungated_batch} needs the module gate "
                         f"and fewer sequences than x's {x.shape[0]} (gates given: "
                         f"{gates is not None})")
    params = [t.contiguous() for t in (ln1_w, ln1_b, pw1_w, pw1_b, dw_w, dw_b, ln2_w, ln2_b,
                                       pw2_w, pw2_b)]
    step = residual_args(x, residual)
    gate_grad = gates is not None and gates.requires_grad
    save = torch.is_grad_enabled() and (gate_grad or x.requires_grad or any(
        t is not None and t.requires_grad for t in params + [step[0]]))
    if gates is not None:
        gates = gates.contiguous()
    dtype = compute_dtype or x.dtype
    pw1c, pw2c = operands or as_operands([pw1_w, pw2_w], dtype)
    skip_dead = not gate_grad and not ungated_batch
    args = (x.contiguous(), lengths.contiguous(), *params, gates, skip_dead, save, pw1c, pw2c,
            ungated_batch, *step)
    op = gated_conv_fwd if torch.compiler.is_compiling() else _GatedConv.apply
    out = op(*args)
    return out[0] if residual is None else (out[-1], out[0])
