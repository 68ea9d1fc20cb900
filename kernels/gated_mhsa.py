"""Gated MHSA around the attention core (docs/design.md §2): in-projection, gated attention over the
active heads, out-projection, on pre-normalised input y = LN(x).

    qkv = y W_in^T + b_in            W_in (3d, d) head-major, view (H, 3, Dh, d): the rows
                                     [h*3*Dh, (h+1)*3*Dh) are head h's q, k, v rows
    a_h = g_h Attn_h(q_h, k_h, v_h)   key padding by lengths (kernels/gated_attention.py)
    out = a W_o^T + s b_o            s: 1 (gates None), [any g_h != 0] (component
                                     granularity), the module gate (module granularity)

Every GEMM skips the heads whose gate is exactly 0, read on the device: the in-projection
computes only live heads' q/k/v (dead heads' columns of qkv are never written nor read), the
out-projection sums only over live heads' columns of a, and the backward kernels compute the
weight and bias gradients of live heads only (dead ones are exactly 0). The matmuls read
the weights' copies in the compute dtype (bf16 under autocast, like F.linear: cast once per
call, or handed in by the caller, one copy for a whole encoder pass); y (the LayerNorm
output) is read in its own dtype (GatedMHSA passes it in the compute dtype) and cast tile by
tile in registers where it differs. Weight gradients
accumulate in fp32, split over rows with atomics. The bias factor s is evaluated inside the
kernels (no host sync, no extra launches).

Layers: `gated_mhsa_reference` (PyTorch), the Triton kernels `_in_proj_fwd_kernel`,
`_out_proj_fwd_kernel`, `_out_proj_da_kernel`, `_out_proj_dw_kernel` (the in-projection's
input and weight gradients go through gated_matmul's `rows_gemm` and gated_wgrad's `wgrad`
and `col_sums`, a head a chunk of W_in's rows and of qkv's columns),
launchers, the torch.library ops `orthoasr::gated_in_proj` and
`orthoasr::gated_out_proj` (+ backward ops; what torch.compile sees), the eager
autograd.Function `_GatedMHSA` (one Function for the whole module: fewer host round-trips),
and `gated_mhsa`, which picks the backend.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import (
    as_operands,
    await_producers,
    dot_precision,
    interpreting,
    two_passes,
    warp_uniform,
)
from .gated_attention import (
    attention_packed_bwd,
    attention_packed_fwd,
    gated_attention_packed,
    gated_attention_reference,
)
from .gated_matmul import (
    live_chunks,
    nth_live,
    rows_gemm,
    tma_by_default,
    tma_operands,
)
from .gated_wgrad import (
    col_sums,
    wgrad,
)
from .grads_in_place import accumulators, returned, sinks_of
from .launch import cdiv, launch, next_pow2

# the out-projection's bias factor s: 1; [any gate != 0]; the module gate; and for a batch
# holding two passes, 1 for the first (ungated) rows and [any gate != 0] for the others,
# the gates read from the scale pointer (the head gates then all 1: nothing skipped)
BIAS_PLAIN, BIAS_IF_LIVE, BIAS_SCALED, BIAS_IF_LIVE_AFTER = 0, 1, 2, 3


# ----------------------------------------------------------------------------- reference

def gated_mhsa_reference(y, lengths, gates, w_in, b_in, w_o, b_o, num_heads: int,
                         granularity: str = "component", ungated_batch: int = 0):
    """y: (B, T, d), gates: None, (H,) (component) or (1,) (module) -> (B, T, d).
    ungated_batch: the first sequences run as if gates were None (the ungated pass of a
    batch holding two)."""
    if ungated_batch:
        return two_passes(lambda rows, g: gated_mhsa_reference(
            y[rows], lengths[rows], g, w_in, b_in, w_o, b_o, num_heads, granularity),
            ungated_batch, gates)
    B, T, D = y.shape
    Dh = D // num_heads
    if gates is None:
        head_gates, bias = None, b_o
    elif granularity == "module":
        head_gates, bias = gates.expand(num_heads), b_o * gates.to(b_o.dtype)
    else:
        head_gates, bias = gates, b_o * (gates != 0).any().to(b_o.dtype)
    qkv = F.linear(y, w_in, b_in).view(B, T, num_heads, 3, Dh).permute(3, 0, 2, 1, 4)
    a = gated_attention_reference(qkv[0], qkv[1], qkv[2], lengths, head_gates, Dh ** -0.5)
    a = a.transpose(1, 2).reshape(B, T, D)
    return F.linear(a, w_o, bias)


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _in_proj_fwd_kernel(
    y_ptr, w_ptr, b_ptr, gate_ptr, qkv_ptr, M, D,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    # Program (m, h), live heads only: rows [m*BLOCK_M, ...) of head h's q, k and v,
    # qkv[:, (3h+j)*Dh + c] = y W_in[(3h+j)*Dh + c]^T + b_in[...], j = 0, 1, 2; each y tile
    # is loaded once for the three.
    # TMA: y_ptr and w_ptr are tensor descriptors (y [M, D] in blocks [BLOCK_M, BLOCK_K], W_in
    # [3d, d] in blocks [BLOCK_D, BLOCK_K]) and the tiles come whole, without masks: past a
    # tensor's edge they hold zeros; a block wider than Dh reads the next rows of W_in into
    # columns the store leaves out.
    await_producers(PDL)
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    gate = tl.load(gate_ptr + h)
    if gate != 0:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        offs_k = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        col_ok = cols < HEAD_DIM
        w_rows = 3 * h * HEAD_DIM + cols
        acc_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_k = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_v = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            if TMA:
                y = y_ptr.load([pid_m * BLOCK_M, k0])
                w_q = w_ptr.load([3 * h * HEAD_DIM, k0])
                w_k = w_ptr.load([(3 * h + 1) * HEAD_DIM, k0])
                w_v = w_ptr.load([(3 * h + 2) * HEAD_DIM, k0])
            else:
                ks = k0 + offs_k
                k_ok = (ks < D)[None, :]
                y = tl.load(y_ptr + rows[:, None] * D + ks[None, :],
                            mask=row_ok[:, None] & k_ok, other=0.0).to(w_ptr.dtype.element_ty)
                w_mask = col_ok[:, None] & k_ok
                w_q = tl.load(w_ptr + w_rows[:, None] * D + ks[None, :], mask=w_mask,
                              other=0.0)
                w_k = tl.load(w_ptr + (w_rows + HEAD_DIM)[:, None] * D + ks[None, :],
                              mask=w_mask, other=0.0)
                w_v = tl.load(w_ptr + (w_rows + 2 * HEAD_DIM)[:, None] * D + ks[None, :],
                              mask=w_mask, other=0.0)
            acc_q = tl.dot(y, tl.trans(w_q), acc_q, input_precision=DOT_PRECISION)
            acc_k = tl.dot(y, tl.trans(w_k), acc_k, input_precision=DOT_PRECISION)
            acc_v = tl.dot(y, tl.trans(w_v), acc_v, input_precision=DOT_PRECISION)
        out_mask = row_ok[:, None] & col_ok[None, :]
        out_ptrs = qkv_ptr + rows[:, None] * (3 * D) + w_rows[None, :]
        dtype = qkv_ptr.dtype.element_ty
        b_q = tl.load(b_ptr + w_rows, mask=col_ok, other=0.0).to(tl.float32)
        b_k = tl.load(b_ptr + w_rows + HEAD_DIM, mask=col_ok, other=0.0).to(tl.float32)
        b_v = tl.load(b_ptr + w_rows + 2 * HEAD_DIM, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(out_ptrs, (acc_q + b_q[None, :]).to(dtype), mask=out_mask)
        tl.store(out_ptrs + HEAD_DIM, (acc_k + b_k[None, :]).to(dtype), mask=out_mask)
        tl.store(out_ptrs + 2 * HEAD_DIM, (acc_v + b_v[None, :]).to(dtype), mask=out_mask)


@triton.jit
def _bias_factor(gate_ptr, scale_ptr, H, BIAS_MODE: tl.constexpr, BLOCK_H: tl.constexpr):
    """s of `out = a W_o^T + s b_o`: 1, [any gate != 0], or the module gate (BIAS_IF_LIVE_AFTER:
    [any gate != 0] of the gates at scale_ptr, for the rows after the ungated ones)."""
    if BIAS_MODE == 1 or BIAS_MODE == 3:
        offs_h = tl.arange(0, BLOCK_H)
        gates = tl.load((gate_ptr if BIAS_MODE == 1 else scale_ptr) + offs_h, mask=offs_h < H,
                        other=0.0)
        return tl.max(tl.where(gates != 0, 1.0, 0.0), 0)
    elif BIAS_MODE == 2:
        return tl.load(scale_ptr).to(tl.float32)
    else:
        return 1.0


@triton.jit
def _out_proj_fwd_kernel(
    a_ptr, w_ptr, b_ptr, gate_ptr, scale_ptr, out_ptr, M, D, H, UNGATED,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BIAS_MODE: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False, GPU: tl.constexpr = False,
):
    # out[rows, cols] = sum over live heads h of a[rows, head h] W_o[cols, head h]^T
    #                   + s * b_o[cols]
    # (the live heads' count passes through warp_uniform: fewer instructions a step)
    await_producers(PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    live_rank, n_live = live_chunks(gate_ptr, H, BLOCK_H, True)
    for i in range(0, warp_uniform(n_live, GPU)):
        h = nth_live(live_rank, i)
        a = tl.load(a_ptr + rows[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    scale = _bias_factor(gate_ptr, scale_ptr, H, BIAS_MODE, BLOCK_H)
    if BIAS_MODE == 3:      # rows < UNGATED: the bias whatever the gates
        acc += bias[None, :] * tl.where(rows < UNGATED, 1.0, scale)[:, None]
    else:
        acc += (bias * scale)[None, :]
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _out_proj_da_kernel(
    dout_ptr, w_ptr, gate_ptr, da_ptr, M, D,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (m, h), live heads only: da[rows, head h] = dout[rows] W_o[:, head h]. Dead
    # heads' columns are not written (the attention backward never reads them).
    await_producers(PDL)
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    gate = tl.load(gate_ptr + h)
    if gate != 0:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_k = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        d_ok = offs_d < HEAD_DIM
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + offs_k
            g = tl.load(dout_ptr + rows[:, None] * D + ks[None, :],
                        mask=row_ok[:, None] & (ks < D)[None, :], other=0.0)
            w = tl.load(w_ptr + ks[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                        mask=(ks < D)[:, None] & d_ok[None, :], other=0.0)
            acc = tl.dot(g.to(w.dtype), w, acc, input_precision=DOT_PRECISION)
        tl.store(da_ptr + rows[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                 acc.to(da_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _out_proj_dw_kernel(
    dout_ptr, a_ptr, b_ptr, gate_ptr, scale_ptr, dw_ptr, db_ptr, dscale_ptr,
    M, D, H, rows_per_split, UNGATED,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BIAS_MODE: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (n, h, split): for a live head h, dW_o[cols n, head h] += dout[rows, n]^T
    # a[rows, head h] over its share of rows (fp32 atomics). The extra program h == H sums
    # dout[rows, n] over the rows: db_o += s * sum, and for the module gate ds += sum . b_o.
    await_producers(PDL)
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    row_start = tl.program_id(2) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, M)
    offs_m = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D
    if h < H:
        gate = tl.load(gate_ptr + h)
        if gate != 0:
            offs_d = tl.arange(0, BLOCK_D)
            d_ok = offs_d < HEAD_DIM
            acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            for m0 in range(row_start, row_end, BLOCK_M):
                rows = m0 + offs_m
                row_ok = rows < row_end
                a = tl.load(a_ptr + rows[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                g = tl.load(dout_ptr + rows[:, None] * D + cols[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(a.dtype)
                acc = tl.dot(tl.trans(g), a, acc, input_precision=DOT_PRECISION)
            tl.atomic_add(dw_ptr + cols[:, None] * D + (h * HEAD_DIM + offs_d)[None, :], acc,
                          mask=col_ok[:, None] & d_ok[None, :], sem="relaxed")
    else:
        # a [BLOCK_M, BLOCK_N] accumulator summed once at the end (a cross-warp reduction
        # per loaded tile serialised load and reduce: these 42 programs set the kernel's
        # 23 us at B32xT250 on the H200, all heads off included); no rows read when the
        # bias is off and no module gate needs the sum
        scale = _bias_factor(gate_ptr, scale_ptr, H, BIAS_MODE, BLOCK_H)
        if BIAS_MODE == 3:          # rows < UNGATED count whatever the gates
            if scale == 0:
                row_end = tl.minimum(row_end, tl.maximum(UNGATED, row_start))
        elif BIAS_MODE != 2 and scale == 0:
            row_end = row_start
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for m0 in range(row_start, row_end, BLOCK_M):
            rows = m0 + offs_m
            g = tl.load(dout_ptr + rows[:, None] * D + cols[None, :],
                        mask=(rows < row_end)[:, None] & col_ok[None, :], other=0.0)
            if BIAS_MODE == 3:
                acc += g.to(tl.float32) * tl.where(rows < UNGATED, 1.0, scale)[:, None]
            else:
                acc += g.to(tl.float32)
        total = tl.sum(acc, 0)
        if BIAS_MODE == 3:
            scale = 1.0         # applied row by row above
        tl.atomic_add(db_ptr + cols, total * scale, mask=col_ok, sem="relaxed")
        if BIAS_MODE == 2:
            bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            tl.atomic_add(dscale_ptr, tl.sum(total * bias, 0), sem="relaxed")


# ----------------------------------------------------------------------------- launchers

def _blocks(head_dim: int) -> dict:
    block_d = max(16, next_pow2(head_dim))
    if interpreting():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, BLOCK_D=block_d, wide=32, opts={},
                    dw_opts={})
    return _blocks_gpu(head_dim)


def _blocks_gpu(head_dim: int) -> dict:
    # in_proj: the in-projection's tile with TMA operands. H200, bench/sweep_in_proj.py
    # (671ef4a, bf16, all heads live): 64 rows / 4 warps / 3 stages 23.8 us at M 8000 and
    # 52.0 at 20000, against 27.3 / 60.4 for 128 / 8 / 3 (28.2 / 63.5 with pointer loads);
    # cuBLAS 20.1 / 40.2
    # out_proj: the out-projection forward's tile. H200, a probe of ten tiles (fb6d045, bf16,
    # 6 heads of 64, graph of one launch; bench/results/profiles/probe_out_proj_fb6d045_h200
    # .json): 64 x 128 / 4 warps / 3 stages 12.9 / 11.1 / 12.8 / 19.2 us at M 8000 / 4000 /
    # 6000 / 12000 against 13.9 / 11.5 / 13.8 / 20.0 for the 128 x 128 / 8 / 3 of the
    # other kernels (cuBLAS 14.1 / 11.2 / 12.0 / 17.3)
    block_d = max(16, next_pow2(head_dim))
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, BLOCK_D=block_d, wide=128,
                opts=dict(num_warps=8, num_stages=3), dw_opts=dict(num_warps=8, num_stages=2),
                in_proj=dict(BLOCK_M=64, num_warps=4, num_stages=3),
                out_proj=dict(BLOCK_M=64, wide=128, opts=dict(num_warps=4, num_stages=3)))


def _split(M: int, block_m: int) -> tuple[int, int]:
    """(splits, rows per split) for the weight-gradient reductions over M rows."""
    target = 64 if interpreting() else 1024
    splits = max(1, min(32, M // target))
    rows = cdiv(cdiv(M, splits), block_m) * block_m
    return cdiv(M, rows), rows


def in_proj_fwd_triton(y, w, b, head_gates, blocks=None):
    """y (M, d) any float dtype, w (3d, d) in the compute dtype -> qkv (M, 3d) compute dtype.
    blocks: BLOCK_M, BLOCK_K, num_warps, num_stages and TMA (operands by tensor descriptors;
    a ValueError where their layouts do not allow them) in place of the defaults, which take
    TMA where `tma_by_default` holds and y is in w's dtype."""
    M, D = y.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    base = {"BLOCK_M": blk["BLOCK_M"], "BLOCK_K": blk["BLOCK_K"], **blk["opts"]}
    asked = (blocks or {}).get("TMA")
    operands = None
    if asked or (asked is None and tma_by_default(y)):
        cfg = {**base, **blk.get("in_proj", {}), **(blocks or {})}
        tiles = dict(BM=cfg["BLOCK_M"], BN=blk["BLOCK_D"], BK=cfg["BLOCK_K"])
        operands = tma_operands(y, w.t(), 0, tiles, bool(asked), "in_proj_fwd_triton")
    if operands is None:        # masked pointer loads, with their own tile
        cfg, y_arg, w_arg = {**base, **(blocks or {})}, y, w
    else:
        y_arg, w_arg, _ = operands
    cfg.pop("TMA", None)
    qkv = torch.empty(M, 3 * D, dtype=w.dtype, device=y.device)
    launch(_in_proj_fwd_kernel, (cdiv(M, cfg["BLOCK_M"]), H),
        y_arg, w_arg, b, head_gates, qkv, M, D, HEAD_DIM=Dh, BLOCK_D=blk["BLOCK_D"],
        DOT_PRECISION=dot_precision(w.dtype), TMA=operands is not None, **cfg)
    return qkv


def in_proj_bwd_triton(dqkv, y, w, head_gates, lengths=None, T=None, acc=None):
    """-> (dy in y's dtype, dW fp32, db fp32); w in the compute dtype (= dqkv's). Rows are
    B sequences of T frames with `lengths` (padded frames skipped), or, without lengths,
    M rows all valid. dy, dW and db through the FFN's row-GEMM, weight-gradient and
    column-sum kernels: head h owns rows [3h*Dh, 3(h+1)*Dh) of W_in (and the same columns
    of dqkv), a chunk skipped while its gate is 0.
    acc: zeroed fp32 (3d * d,) and (3d,) tensors to add dW and db to (default: a new tensor
    each, as the torch.library op needs: its outputs may not be views of one buffer)."""
    M, D = y.shape
    H = head_gates.shape[0]
    Dh = D // H
    if lengths is None:
        lengths, T = _row_blocks(M, y.device)
    heads = dict(lengths=lengths, T=T, gates=head_gates, chunk=3 * Dh, skip_dead=True)
    # dy = dqkv W_in over the live heads: the row GEMM with K in head chunks (a head's q, k
    # and v columns), dead ones skipped; zeros at padded rows, where dqkv is 0 (their q,
    # k and v change nothing: a padded query's output is 0, a padded key is masked)
    dy = torch.empty_like(y)
    rows_gemm(dqkv, w, dy, num_chunks=H, chunk_axis=2, final=True, **heads)
    if acc is None:
        dw, db = (torch.zeros(shape, dtype=torch.float32, device=y.device)
                  for shape in ((3 * D, D), 3 * D))
    else:
        dw, db = acc[0].view(3 * D, D), acc[1]
    dw = wgrad(dqkv, y.to(dqkv.dtype), num_chunks=H, chunk_axis=1, out=dw, **heads)
    db = col_sums(dqkv, db, **heads)
    return dy, dw, db


def _row_blocks(M: int, device, T: int = 256) -> tuple[torch.Tensor, int]:
    """M rows as sequences of T frames, all valid (the last one shorter): (lengths, T)."""
    lengths = torch.full((cdiv(M, T),), T, dtype=torch.int32, device=device)
    lengths[-1] = M - T * (lengths.shape[0] - 1)      # a fill on the device: capturable
    return lengths, T


def out_proj_fwd_triton(a, w, b, head_gates, bias_scale, bias_mode, ungated_rows=0):
    """a (M, d), w (d, d) in the compute dtype -> a W^T + s b (M, d) compute dtype.
    ungated_rows: BIAS_IF_LIVE_AFTER's first rows, which get the bias whatever the gates."""
    M, D = a.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    blk = {**blk, **blk.get("out_proj", {})}
    out = torch.empty(M, D, dtype=w.dtype, device=a.device)
    launch(_out_proj_fwd_kernel, (cdiv(M, blk["BLOCK_M"]), cdiv(D, blk["wide"])),
        a, w, b, head_gates, head_gates if bias_scale is None else bias_scale, out, M, D, H,
        ungated_rows, HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"], BLOCK_N=blk["wide"],
        BLOCK_D=blk["BLOCK_D"], BIAS_MODE=bias_mode, BLOCK_H=next_pow2(H),
        DOT_PRECISION=dot_precision(w.dtype), **blk["opts"])
    return out


def out_proj_bwd_triton(dout, a, w, b, head_gates, bias_scale, bias_mode, acc=None,
                        ungated_rows=0):
    """-> (da, dW fp32, db fp32, dscale fp32 (1,)); dead heads' columns of da unwritten.
    acc: zeroed fp32 (d * d,), (d,) and (1,) tensors to add dW, db and dscale to (default:
    new tensors)."""
    M, D = a.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    precision = dot_precision(w.dtype)
    da = torch.empty_like(a)
    launch(_out_proj_da_kernel, (cdiv(M, blk["BLOCK_M"]), H),
        dout, w, head_gates, da, M, D, HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"],
        BLOCK_D=blk["BLOCK_D"], BLOCK_K=blk["BLOCK_K"], DOT_PRECISION=precision, **blk["opts"])
    if acc is None:                                                  # db: db_o, then dscale
        dw, db = (torch.zeros(shape, dtype=torch.float32, device=a.device)
                  for shape in ((D, D), D + 1))
        db, dscale = db[:D], db[D:]
    else:
        dw, db, dscale = acc[0].view(D, D), acc[1], acc[2]
    splits, rows = _split(M, blk["BLOCK_M"])
    launch(_out_proj_dw_kernel, (cdiv(D, blk["BLOCK_N"]), H + 1, splits),
        dout, a, b, head_gates, head_gates if bias_scale is None else bias_scale, dw, db,
        dscale, M, D, H, rows, ungated_rows, HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"],
        BLOCK_N=blk["BLOCK_N"], BLOCK_D=blk["BLOCK_D"], BIAS_MODE=bias_mode,
        BLOCK_H=next_pow2(H), DOT_PRECISION=precision, **blk["dw_opts"])
    return da, dw, db, dscale


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::gated_in_proj", mutates_args=())
def gated_in_proj(y: torch.Tensor, w: torch.Tensor, w_c: torch.Tensor, b: torch.Tensor,
                  head_gates: torch.Tensor) -> torch.Tensor:
    """y (M, d) -> qkv (M, 3d) in w_c's dtype; dead heads' columns are left unwritten. w_c: w
    (3d, d) in the compute dtype, the matmul operand; w only receives the gradient."""
    return in_proj_fwd_triton(y, w_c, b, head_gates)


@gated_in_proj.register_fake
def _(y, w, w_c, b, head_gates):
    return y.new_empty(y.shape[0], w_c.shape[0], dtype=w_c.dtype)


@torch.library.custom_op("orthoasr::gated_in_proj_bwd", mutates_args=())
def gated_in_proj_bwd(dqkv: torch.Tensor, y: torch.Tensor, w_c: torch.Tensor,
                      head_gates: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return in_proj_bwd_triton(dqkv, y, w_c, head_gates)


@gated_in_proj_bwd.register_fake
def _(dqkv, y, w_c, head_gates):
    f32 = torch.float32
    return (torch.empty_like(y), w_c.new_empty(w_c.shape, dtype=f32),
            w_c.new_empty(w_c.shape[0], dtype=f32))


def _in_proj_setup(ctx, inputs, output):
    y, w, w_c, b, head_gates = inputs
    ctx.save_for_backward(y, w_c, head_gates)
    ctx.w_dtype, ctx.b_dtype = w.dtype, b.dtype


def _in_proj_backward(ctx, dqkv):
    y, w_c, head_gates = ctx.saved_tensors
    dy, dw, db = gated_in_proj_bwd(dqkv.contiguous(), y, w_c, head_gates)
    return dy, dw.to(ctx.w_dtype), None, db.to(ctx.b_dtype), None


gated_in_proj.register_autograd(_in_proj_backward, setup_context=_in_proj_setup)


@torch.library.custom_op("orthoasr::gated_out_proj", mutates_args=())
def gated_out_proj(a: torch.Tensor, w: torch.Tensor, w_c: torch.Tensor, b: torch.Tensor,
                   head_gates: torch.Tensor, bias_scale: torch.Tensor | None, bias_mode: int,
                   ungated_rows: int = 0) -> torch.Tensor:
    """a (M, d) -> a W_o^T + s b_o (M, d) in w_c's dtype, summing over live heads only. w_c:
    w (d, d) in the compute dtype, the matmul operand; w only receives the gradient."""
    return out_proj_fwd_triton(a, w_c, b, head_gates, bias_scale, bias_mode, ungated_rows)


@gated_out_proj.register_fake
def _(a, w, w_c, b, head_gates, bias_scale, bias_mode, ungated_rows=0):
    return a.new_empty(a.shape[0], w_c.shape[0], dtype=w_c.dtype)


@torch.library.custom_op("orthoasr::gated_out_proj_bwd", mutates_args=())
def gated_out_proj_bwd(dout: torch.Tensor, a: torch.Tensor, w_c: torch.Tensor, b: torch.Tensor,
                       head_gates: torch.Tensor, bias_scale: torch.Tensor | None,
                       bias_mode: int, ungated_rows: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    da, dw, db, dscale = out_proj_bwd_triton(dout, a, w_c, b, head_gates, bias_scale,
                                             bias_mode, ungated_rows=ungated_rows)
    return da, dw, db.clone(), dscale.clone()


@gated_out_proj_bwd.register_fake
def _(dout, a, w_c, b, head_gates, bias_scale, bias_mode, ungated_rows=0):
    f32 = torch.float32
    return (torch.empty_like(a), w_c.new_empty(w_c.shape, dtype=f32),
            w_c.new_empty(w_c.shape[0], dtype=f32), w_c.new_empty(1, dtype=f32))


def _out_proj_setup(ctx, inputs, output):
    a, w, w_c, b, head_gates, bias_scale, bias_mode, ungated_rows = inputs
    ctx.save_for_backward(a, w_c, b, head_gates, bias_scale)
    ctx.bias_mode, ctx.w_dtype, ctx.ungated_rows = bias_mode, w.dtype, ungated_rows


def _out_proj_backward(ctx, dout):
    a, w_c, b, head_gates, bias_scale = ctx.saved_tensors
    da, dw, db, dscale = gated_out_proj_bwd(dout.contiguous(), a, w_c, b, head_gates,
                                            bias_scale, ctx.bias_mode, ctx.ungated_rows)
    # only the module gate's scale has a gradient (the others' factor is an indicator)
    dscale = (dscale.reshape(bias_scale.shape).to(bias_scale.dtype)
              if ctx.bias_mode == BIAS_SCALED else None)
    return da, dw.to(ctx.w_dtype), None, db.to(b.dtype), None, dscale, None, None


gated_out_proj.register_autograd(_out_proj_backward, setup_context=_out_proj_setup)


# ----------------------------------------------------------------------------- eager path

class _MHSASaved(NamedTuple):
    y2: torch.Tensor           # (B*T, d) the normalised input
    w_in: torch.Tensor         # in the compute dtype
    qkv: torch.Tensor
    a: torch.Tensor            # attention output (B, T, H, Dh)
    lse: torch.Tensor
    lengths: torch.Tensor
    head_gates: torch.Tensor
    w_o: torch.Tensor          # in the compute dtype
    b_o: torch.Tensor
    bias_scale: torch.Tensor | None
    attn_gates: torch.Tensor   # the attention's gates: head_gates, or (B, H) for a pair


class _GatedMHSA(torch.autograd.Function):
    """The eager path: the three ops' launchers (in-projection, attention, out-projection)
    chained in one autograd.Function, one host round-trip instead of three; torch.compile
    sees the three ops instead. attn_gates: the attention's (B, H) per-sequence gates of a
    batch holding two passes (the projections then skip nothing: head_gates all 1), or
    None: head_gates for all three. In such a pair attn_gates needs no gradient: its gated
    rows are bias_scale, the (H,) gates themselves, which get the attention's gradient."""

    @staticmethod
    def forward(ctx, y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o, w_in_c, w_o_c,
                num_heads, bias_mode, attn_gates, ungated_rows):
        # w_in_c, w_o_c: the matmul operands (w_in, w_o in the compute dtype)
        B, T, D = y.shape
        Dh = D // num_heads
        y2 = y.reshape(B * T, D)
        pair = attn_gates is not None
        attn_gates = attn_gates if pair else head_gates
        qkv = in_proj_fwd_triton(y2, w_in_c, b_in, head_gates)
        # a batch holding two passes: a head off in one pass only is computed by the
        # projections, so the attention writes its zeros
        a, lse = attention_packed_fwd(qkv.view(B, T, num_heads, 3, Dh), lengths, attn_gates,
                                      Dh ** -0.5, zero_dead=pair)
        out = out_proj_fwd_triton(a.view(B * T, D), w_o_c, b_o, head_gates, bias_scale,
                                  bias_mode, ungated_rows)
        ctx.save_for_backward(*_MHSASaved(y2, w_in_c, qkv, a, lse, lengths, head_gates, w_o_c,
                                          b_o, bias_scale, attn_gates))
        ctx.num_heads, ctx.bias_mode, ctx.pair = num_heads, bias_mode, pair
        ctx.ungated_rows = ungated_rows
        ctx.dtypes = w_in.dtype, b_in.dtype, w_o.dtype
        ctx.sinks = sinks_of(dict(w_in=w_in, b_in=b_in, w_o=w_o, b_o=b_o),
                             ("w_in", "b_in", "w_o", "b_o"))
        return out.view(B, T, D)

    @staticmethod
    def backward(ctx, dout):
        s = _MHSASaved(*ctx.saved_tensors)
        B, T, H, Dh = s.a.shape
        D = H * Dh
        w_in_dtype, b_in_dtype, w_o_dtype = ctx.dtypes
        # every fp32 accumulator of both projections from one zeroed buffer: one memset, or
        # a parameter's .grad where it is a sink (grads_in_place)
        # (dscale: only a module gate's scaled bias sums into it)
        acc = accumulators(dict(w_o=D * D, b_o=D, w_in=3 * D * D, b_in=3 * D,
                                dscale=1 if ctx.bias_mode == BIAS_SCALED else 0),
                           dout.device, ctx.sinks)
        da, dw_o, db_o, dscale = out_proj_bwd_triton(dout.reshape(B * T, D).contiguous(),
                                                     s.a.view(B * T, D), s.w_o, s.b_o,
                                                     s.head_gates, s.bias_scale, ctx.bias_mode,
                                                     (acc["w_o"], acc["b_o"], acc["dscale"]),
                                                     ctx.ungated_rows)
        dqkv, dgates = attention_packed_bwd(da.view(B, T, H, Dh), s.qkv.view(B, T, H, 3, Dh),
                                            s.lse, s.lengths, s.attn_gates, Dh ** -0.5,
                                            zero_dead=ctx.pair,
                                            shared_after=ctx.ungated_rows // T)
        dy, dw_in, db_in = in_proj_bwd_triton(dqkv.view(B * T, 3 * D), s.y2, s.w_in,
                                              s.head_gates, s.lengths, T,
                                              (acc["w_in"], acc["b_in"]))
        if ctx.bias_mode == BIAS_SCALED:    # the others' bias factor is an indicator
            dscale = dscale.reshape(s.bias_scale.shape).to(s.bias_scale.dtype)
        elif ctx.pair:                      # the gates (H,) of the gated pass (see above)
            dscale = dgates
        else:
            dscale = None
        d_head = None if ctx.pair else dgates
        sunk = ctx.sinks
        return (dy.view(B, T, D), None, d_head, dscale,
                returned(sunk, "w_in", dw_in, w_in_dtype),
                returned(sunk, "b_in", db_in, b_in_dtype), returned(sunk, "w_o", dw_o, w_o_dtype),
                returned(sunk, "b_o", db_o, s.b_o.dtype), None, None, None, None, None, None)


# ----------------------------------------------------------------------------- entry point

def gated_mhsa(y, lengths, gates, w_in, b_in, w_o, b_o, num_heads: int, granularity: str,
               compute: torch.dtype, all_on: torch.Tensor | None = None, operands=None,
               ungated_batch: int = 0):
    """Triton gated MHSA (the reference: `gated_mhsa_reference`): y = LN(x) (B, T, d) ->
    (B, T, d) in `compute` (the matmul dtype: bf16 under autocast); gates None, (H,) or
    (1,) (module granularity); the projections and the attention skip dead heads.
    `all_on`: a cached (H,) ones tensor for gates=None (saves a launch). operands: (W_in,
    W_o) in `compute`, (3d, d) and (d, d), made by the caller (one copy for a whole encoder,
    common.operand_copies), or None: cast here (as_operands). ungated_batch: the first
    sequences run as if gates were None, the rest with the head gates (their gradient from
    those only), as two passes in one batch would; no head is skipped then."""
    B, T, D = y.shape
    bias_scale, attn_gates, ungated_rows = None, None, 0
    if ungated_batch:
        if gates is None or granularity == "module" or not 0 < ungated_batch < B:
            raise ValueError(f"gated_mhsa: ungated_batch={ungated_batch} needs head gates and "
                             f"fewer sequences than y's {B} (gates given: "
                             f"{gates is not None}, granularity {granularity!r})")
        head_gates = all_on if all_on is not None else torch.ones(num_heads, device=y.device)
        # the first sequences' ones expanded from head_gates: no fill launch of their own.
        # Eager calls take the gates' gradient through bias_scale (_GatedMHSA), so that no
        # autograd sum over the expand runs
        shared = gates if torch.compiler.is_compiling() else gates.detach()
        attn_gates = torch.cat([head_gates.to(gates.dtype).expand(ungated_batch, num_heads),
                                shared.expand(B - ungated_batch, num_heads)])
        bias_scale, bias_mode, ungated_rows = gates, BIAS_IF_LIVE_AFTER, ungated_batch * T
    elif gates is None:
        head_gates = all_on if all_on is not None else torch.ones(num_heads, device=y.device)
        bias_mode = BIAS_PLAIN
    elif granularity == "module":
        head_gates, bias_scale, bias_mode = gates.expand(num_heads).contiguous(), gates, \
            BIAS_SCALED
    else:
        head_gates, bias_mode = gates.contiguous(), BIAS_IF_LIVE
    w_in_c, w_o_c = operands or as_operands([w_in, w_o], compute)
    if not torch.compiler.is_compiling():
        return _GatedMHSA.apply(y.contiguous(), lengths, head_gates, bias_scale, w_in, b_in,
                                w_o, b_o, w_in_c, w_o_c, num_heads, bias_mode, attn_gates,
                                ungated_rows)
    Dh = D // num_heads
    qkv = gated_in_proj(y.reshape(B * T, D).contiguous(), w_in, w_in_c, b_in, head_gates)
    a = gated_attention_packed(qkv.view(B, T, num_heads, 3, Dh), lengths,
                               head_gates if attn_gates is None else attn_gates, Dh ** -0.5,
                               zero_dead=attn_gates is not None)
    out = gated_out_proj(a.view(B * T, D), w_o, w_o_c, b_o, head_gates, bias_scale, bias_mode,
                         ungated_rows)
    return out.view(B, T, D)
