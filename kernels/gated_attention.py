"""Gated multi-head attention core (docs/design.md §2, MHSA): flash-style attention over the active
heads with key padding by lengths, the head gate applied in the epilogue.

    out[b, h, t] = g_h * softmax(q[b, h, t] k[b, h, :L_b]^T * sm_scale) v[b, h, :L_b]   t < L_b
    out[b, h, t] = 0                                                                  t >= L_b

Shapes: q, k, v (B, H, T, Dh) (any strides, last dim contiguous), lengths (B,) int,
head_gates (H,), L_b = lengths[b]. Padded query rows give exactly 0 (finite, and the block
costs nothing); keys at t >= L_b are masked. A head whose gate is exactly 0 gives exactly 0
and costs nothing, in the forward and the backward; its gate gradient is returned as 0
(the head is never computed; OrthoSoftmax masks that are exactly 0 receive no gradient
through their softmax anyway). Every other gate gets the exact gradient
dg_h = sum(out_h / g_h * grad_out_h), reduced inside the backward's first pass.

Layers, as in every op file: `gated_attention_reference` (PyTorch), the Triton kernels
`_gated_attn_fwd_kernel`, `_gated_attn_bwd_delta_kernel`, `_gated_attn_bwd_dkdv_kernel`,
`_gated_attn_bwd_dq_kernel`, `_gated_attn_dgate_kernel`, host launchers, and one op pair
`orthoasr::gated_attention_packed_fwd` / `_bwd` on a packed qkv (B, T, H, 3, Dh): the layout
the MHSA in-projection writes, so the backward returns one packed gradient. With
zero_dead=False (the MHSA, which never reads a dead head's columns) dead heads' entries of
out and grad qkv are left unwritten. `gated_attention(q, k, v, ...)` packs separate q, k, v
(a copy) for tests and benchmarks.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .autograd import eager_function, grads_in_order
from .common import await_producers, dot_precision, interpreting
from .launch import cdiv, launch, next_pow2

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ROW_SUM_COLS = tl.constexpr(16)    # the narrowest tile tl.dot takes: dS's row sums (dq kernel)


# ----------------------------------------------------------------------------- reference

def _effective_gates(head_gates: torch.Tensor) -> torch.Tensor:
    """The gates themselves, with no gradient flowing to gates that are exactly 0 (the
    kernels never compute those heads)."""
    return torch.where(head_gates != 0, head_gates, head_gates.detach())


def gated_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              lengths: torch.Tensor, head_gates: torch.Tensor | None,
                              sm_scale: float) -> torch.Tensor:
    """Plain PyTorch gated attention. q, k, v: (B, H, T, Dh) -> (B, H, T, Dh).

    Matmuls run in the input dtype, the softmax in fp32 (fp64 stays fp64).
    """
    B, H, T, _ = q.shape
    pos = torch.arange(T, device=q.device)
    query_ok = pos[None, :] < lengths[:, None]                    # (B, T)
    # a sequence of length 0 attends to every key: finite, and its rows are zeroed below
    key_ok = pos[None, :] < lengths.clamp(min=1)[:, None]
    scores = (q @ k.transpose(-1, -2)) * sm_scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = scores.to(acc).masked_fill(~key_ok[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = probs @ v
    out = out.masked_fill(~query_ok[:, None, :, None], 0)
    if head_gates is not None:      # (H,), or (B, H): each sequence's own
        gates = _effective_gates(head_gates).to(out.dtype)
        out = out * gates.view(-1, H, 1, 1)
    return out


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _fwd_key_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, start_n, seq_len, qk_scale,
                   offs_n, offs_d, stride_kt, stride_vt,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KEYS: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """One step of the online softmax over keys [start_n, start_n + BLOCK_N)."""
    keys = start_n + offs_n
    load_mask = (offs_d < HEAD_DIM)[None, :]
    if MASK_KEYS:
        load_mask = load_mask & (keys < seq_len)[:, None]
    k = tl.load(k_ptrs + start_n * stride_kt, mask=load_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASK_KEYS:
        s = tl.where((keys < seq_len)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs + start_n * stride_vt, mask=load_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _gated_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, len_ptr, gate_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    H, T, qk_scale, gate_stride_b,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, ZERO_DEAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (m, b*H + h) computes query rows [m*BLOCK_M, (m+1)*BLOCK_M) of head h of
    # sequence b: online softmax over the L_b valid keys only (key blocks past L_b are never
    # visited), then out = g_h * acc / l. Dead heads and query blocks past L_b store 0.
    await_producers(PDL)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    gate = tl.load(gate_ptr + b * gate_stride_b + h).to(tl.float32)
    seq_len = tl.load(len_ptr + b).to(tl.int32)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = (offs_d < HEAD_DIM)[None, :]
    o_ptrs = o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    o_mask = (offs_m < T)[:, None] & d_ok
    if (gate != 0) & (start_m < seq_len):
        q_ptrs = q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt \
            + offs_d[None, :]
        q = tl.load(q_ptrs, mask=o_mask, other=0.0)
        k_ptrs = k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kt \
            + offs_d[None, :]
        v_ptrs = v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt \
            + offs_d[None, :]
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        full_end = (seq_len // BLOCK_N) * BLOCK_N
        for start_n in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _fwd_key_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, start_n, seq_len,
                                           qk_scale, offs_n, offs_d, stride_kt, stride_vt,
                                           HEAD_DIM, BLOCK_D, False, DOT_PRECISION)
        if full_end < seq_len:
            acc, m_i, l_i = _fwd_key_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, full_end, seq_len,
                                           qk_scale, offs_n, offs_d, stride_kt, stride_vt,
                                           HEAD_DIM, BLOCK_D, True, DOT_PRECISION)
        out = acc * (gate / l_i)[:, None]
        out = tl.where((offs_m < seq_len)[:, None], out, 0.0)
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=o_mask)
        tl.store(lse_ptr + pid_bh * T + offs_m, m_i + tl.log2(l_i), mask=offs_m < seq_len)
    elif (gate != 0) | ZERO_DEAD:   # padded blocks always; dead heads unless packed
        tl.store(o_ptrs, tl.zeros([BLOCK_M, BLOCK_D], o_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _query_rows(q_ptr, do_ptr, lse_ptr, b, h, pid_bh, T, offs_m, offs_d, row_ok, d_ok,
                stride_qb, stride_qh, stride_qt, stride_dob, stride_doh, stride_dot):
    """A query block's q, dout and log-sum-exp (+inf at padded rows, so that P is 0 there)."""
    mask = row_ok[:, None] & d_ok
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt
                + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot
                 + offs_d[None, :], mask=mask, other=0.0)
    lse = tl.load(lse_ptr + pid_bh * T + offs_m, mask=row_ok, other=float("inf"))
    return q, do, lse


@triton.jit
def _bwd_key_block(q, do, lse, k_base, v_base, start_n, offs_n, seq_len, d_ok, stride_kt,
                   stride_vt, qk_scale, DOT_PRECISION: tl.constexpr):
    """For keys [start_n, start_n + BLOCK_N): P recomputed from the log-sum-exp, dP without
    the gate (dout V^T) and the key tile, the same numbers in the delta and dq passes."""
    keys = start_n + offs_n
    key_ok = keys < seq_len
    k = tl.load(k_base + keys[:, None] * stride_kt, mask=key_ok[:, None] & d_ok, other=0.0)
    v = tl.load(v_base + keys[:, None] * stride_vt, mask=key_ok[:, None] & d_ok, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    p = tl.where(key_ok[None, :], tl.exp2(qk - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    return p, dp, k


@triton.jit
def _gated_attn_bwd_delta_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, len_ptr, gate_ptr, delta_ptr, dgate_part_ptr,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    B, H, T, qk_scale, gate_stride_b,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (m, b*H + h): delta_i = sum_j P_ij dP_ij over the L_b valid keys, with P
    # recomputed from the log-sum-exp and dP = g dout V^T in fp32, exactly as the dq and
    # dk kernels recompute them; and this block's share sum_i delta_i of g_h * dg_h.
    # Why not FlashAttention's rowsum(dout * out): that equals delta only when out is
    # exactly sum_j P_ij V_j, but out is rounded to 16 bits and made from 16-bit P. Where
    # the values share a large component across time (a speech encoder's do: that is the
    # blank plateau), the mismatch times that component is a bias in every dS_ij = P_ij
    # (dP_ij - delta_i) larger than dS itself: the paper-size model did not learn (issue 11).
    # Divided by sum_j P_ij: P recomputed as exp2(qk - lse) sums to 1 only up to the
    # rounding of lse, an fp32 number as large as the scores (1e-4 where they reach 1e3,
    # as in the last blocks on the plateau); with delta = sum P dP / sum P every row of
    # dS still sums to 0, else each row's dS_ij* of a near one-hot P is off by ~1e-4 dP
    # and dq, dk by that times |k|, |q|: 30-70x torch's error at scores of 500 (fp32).
    await_producers(PDL)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    gate = tl.load(gate_ptr + b * gate_stride_b + h).to(tl.float32)
    seq_len = tl.load(len_ptr + b).to(tl.int32)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = (offs_d < HEAD_DIM)[None, :]
    part_ptr = dgate_part_ptr + (h * B + b) * tl.num_programs(0) + pid_m
    if (gate != 0) & (start_m < seq_len):
        row_ok = offs_m < seq_len
        q, do, lse = _query_rows(q_ptr, do_ptr, lse_ptr, b, h, pid_bh, T, offs_m, offs_d,
                                 row_ok, d_ok, stride_qb, stride_qh, stride_qt, stride_dob,
                                 stride_doh, stride_dot)
        k_base = k_ptr + b * stride_kb + h * stride_kh + offs_d[None, :]
        v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :]
        delta = tl.zeros([BLOCK_M], tl.float32)
        p_sum = tl.zeros([BLOCK_M], tl.float32)
        for start_n in range(0, seq_len, BLOCK_N):
            p, dp, _k = _bwd_key_block(q, do, lse, k_base, v_base, start_n, offs_n, seq_len,
                                       d_ok, stride_kt, stride_vt, qk_scale, DOT_PRECISION)
            delta += tl.sum(p * dp, 1)
            p_sum += tl.sum(p, 1)
        delta = delta / tl.where(row_ok, p_sum, 1.0) * gate
        tl.store(delta_ptr + pid_bh * T + offs_m, delta, mask=row_ok)
        tl.store(part_ptr, tl.sum(tl.where(row_ok, delta, 0.0), 0))
    else:
        tl.store(part_ptr, 0.0)


@triton.jit
def _gated_attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, len_ptr, gate_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, T, sm_scale, qk_scale, gate_stride_b,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, ZERO_DEAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (n, b*H + h) owns keys [n*BLOCK_N, (n+1)*BLOCK_N): it walks the L_b valid
    # query rows, recomputes P^T from the saved log-sum-exp and accumulates
    # dV = g P^T dout and dK = sm_scale dS^T Q with dS = P (g dout V^T - delta).
    await_producers(PDL)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    gate = tl.load(gate_ptr + b * gate_stride_b + h).to(tl.float32)
    seq_len = tl.load(len_ptr + b).to(tl.int32)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = (offs_d < HEAD_DIM)[None, :]
    kv_mask = (offs_n < T)[:, None] & d_ok
    dk_ptrs = dk_ptr + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkt \
        + offs_d[None, :]
    dv_ptrs = dv_ptr + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvt \
        + offs_d[None, :]
    if (gate != 0) & (start_n < seq_len):
        key_ok = offs_n < seq_len
        k = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kt
                    + offs_d[None, :], mask=key_ok[:, None] & d_ok, other=0.0)
        v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt
                    + offs_d[None, :], mask=key_ok[:, None] & d_ok, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        q_base = q_ptr + b * stride_qb + h * stride_qh + offs_d[None, :]
        do_base = do_ptr + b * stride_dob + h * stride_doh + offs_d[None, :]
        for start_m in range(0, seq_len, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < seq_len
            q = tl.load(q_base + rows[:, None] * stride_qt, mask=row_ok[:, None] & d_ok,
                        other=0.0)
            do = tl.load(do_base + rows[:, None] * stride_dot, mask=row_ok[:, None] & d_ok,
                         other=0.0)
            # padded rows get lse = +inf, so their P is exactly 0
            lse = tl.load(lse_ptr + pid_bh * T + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_ptr + pid_bh * T + rows, mask=row_ok, other=0.0)
            qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
            p_t = tl.exp2(qk_t - lse[None, :])
            p_t = tl.where(key_ok[:, None], p_t, 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION) * gate
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
        tl.store(dk_ptrs, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(dv_ptrs, (dv * gate).to(dv_ptr.dtype.element_ty), mask=kv_mask)
    elif (gate != 0) | ZERO_DEAD:   # padded blocks always; dead heads unless packed
        tl.store(dk_ptrs, tl.zeros([BLOCK_N, BLOCK_D], dk_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(dv_ptrs, tl.zeros([BLOCK_N, BLOCK_D], dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _gated_attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, len_ptr, gate_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H, T, sm_scale, qk_scale, gate_stride_b,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, ZERO_DEAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (m, b*H + h) owns query rows [m*BLOCK_M, (m+1)*BLOCK_M): it walks the L_b
    # valid keys and accumulates dQ = sm_scale dS K.
    await_producers(PDL)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    gate = tl.load(gate_ptr + b * gate_stride_b + h).to(tl.float32)
    seq_len = tl.load(len_ptr + b).to(tl.int32)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = (offs_d < HEAD_DIM)[None, :]
    dq_ptrs = dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt \
        + offs_d[None, :]
    dq_mask = (offs_m < T)[:, None] & d_ok
    if (gate != 0) & (start_m < seq_len):
        row_ok = offs_m < seq_len
        q, do, lse = _query_rows(q_ptr, do_ptr, lse_ptr, b, h, pid_bh, T, offs_m, offs_d,
                                 row_ok, d_ok, stride_qb, stride_qh, stride_qt, stride_dob,
                                 stride_doh, stride_dot)
        delta = tl.load(delta_ptr + pid_bh * T + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_base = k_ptr + b * stride_kb + h * stride_kh + offs_d[None, :]
        v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :]
        # each row of dS sums to 0 (delta above), so dQ = sm_scale (dS K - rowsum(dS) k_0)
        # for any k_0: with the rounded dS's own row sums times the sequence's first key
        # taken off after the loop, a component the keys share (large on the blank plateau)
        # no longer multiplies dS's 16-bit rounding. The row sums come from the tensor
        # cores, as dS times a tile whose first column is ones (exact in fp32): summed in
        # the loop across lanes they took 52 loop instructions more (Triton 3.6, sm_90)
        ds_sum = tl.zeros([BLOCK_M, ROW_SUM_COLS], tl.float32)
        first_col = (tl.arange(0, ROW_SUM_COLS) == 0)[None, :] & (offs_n >= 0)[:, None]
        ones = first_col.to(k_ptr.dtype.element_ty)
        for start_n in range(0, seq_len, BLOCK_N):
            p, dp, k = _bwd_key_block(q, do, lse, k_base, v_base, start_n, offs_n, seq_len,
                                      d_ok, stride_kt, stride_vt, qk_scale, DOT_PRECISION)
            ds = (p * (dp * gate - delta[:, None])).to(k.dtype)   # 0 at padded keys
            dq += tl.dot(ds, k, input_precision=DOT_PRECISION)
            ds_sum = tl.dot(ds, ones, ds_sum, input_precision=DOT_PRECISION)
        k_first = tl.load(k_base, mask=d_ok, other=0.0).to(tl.float32)
        dq -= tl.sum(ds_sum, 1)[:, None] * k_first
        tl.store(dq_ptrs, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=dq_mask)
    elif (gate != 0) | ZERO_DEAD:   # padded blocks always; dead heads unless packed
        tl.store(dq_ptrs, tl.zeros([BLOCK_M, BLOCK_D], dq_ptr.dtype.element_ty), mask=dq_mask)


@triton.jit
def _gated_attn_dgate_kernel(part_ptr, gate_ptr, dgate_ptr, num_parts, head_parts,
                             part_start, seq0, gate_stride_b, out_stride_b,
                             BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    # Program (h, j): dg = the sum of num_parts delta partials / g; 0 for a dead gate (never
    # computed). Head h's partials start at h * head_parts + part_start; program j takes the
    # j-th num_parts of them, those of sequence seq0 + j with per-sequence gates
    # (gate_stride_b = H; seq0 0), else j = 0 takes them all: with shared gates (stride 0),
    # or with per-sequence gates that sequences seq0.. share (their gate read at seq0).
    await_producers(PDL)
    h = tl.program_id(0)
    j = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    first = part_ptr + h * head_parts + part_start + j * num_parts
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, num_parts, BLOCK):
        total += tl.load(first + start + offs, mask=start + offs < num_parts, other=0.0)
    gate = tl.load(gate_ptr + (seq0 + j) * gate_stride_b + h).to(tl.float32)
    safe = tl.where(gate != 0, gate, 1.0)
    dgate = tl.where(gate != 0, tl.sum(total, 0) / safe, 0.0)
    tl.store(dgate_ptr + j * out_stride_b + h, dgate.to(dgate_ptr.dtype.element_ty))


# ----------------------------------------------------------------------------- launchers

LOG2E = 1.4426950408889634


def _config(kind: str, head_dim: int, seq_len: int) -> dict:
    """Block sizes and launch options (kind: fwd, dkdv, dq). Overrides for benchmarking
    variants: ORTHOASR_ATTN_<KIND>="BLOCK_M,BLOCK_N,warps,stages"."""
    if interpreting():
        return dict(BLOCK_M=32, BLOCK_N=16) if kind != "dkdv" else dict(BLOCK_M=16, BLOCK_N=32)
    override = os.environ.get(f"ORTHOASR_ATTN_{kind.upper()}")
    if override:
        bm, bn, warps, stages = (int(x) for x in override.split(","))
        return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    return _config_table(kind, seq_len)


def _config_table(kind: str, seq_len: int) -> dict:
    """GPU block sizes, chosen from H100 measurements (bench/NOTES.md, 2026-11-25)."""
    if kind == "fwd":
        if seq_len <= 512:
            return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
        if seq_len <= 1024:
            return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    if kind == "dkdv":
        return dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)   # dq


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def gated_attention_fwd_triton(q, k, v, lengths, head_gates, sm_scale, out, zero_dead=True):
    """Fills `out` (B, H, T, Dh) (any strides) and returns lse (B, H, T) fp32 (log2 units).
    head_gates (H,), or (B, H): each sequence's own. zero_dead=False leaves dead heads' rows
    of `out` unwritten."""
    B, H, T, Dh = q.shape
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    cfg = _config("fwd", Dh, T)
    grid = (cdiv(T, cfg["BLOCK_M"]), B * H)
    launch(_gated_attn_fwd_kernel, grid,
        q, k, v, lengths, head_gates, out, lse,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(out),
        H, T, sm_scale * LOG2E, _gate_stride(head_gates),
        HEAD_DIM=Dh, BLOCK_D=max(16, next_pow2(Dh)), ZERO_DEAD=zero_dead,
        DOT_PRECISION=dot_precision(q.dtype), **cfg)
    return lse


def gated_attention_bwd_triton(q, k, v, grad_out, lse, lengths, head_gates, sm_scale, dq, dk, dv,
                               zero_dead=True, shared_after=0):
    """Fills dq, dk, dv (any strides) and returns dgates, the gates' shape and dtype; with
    (B, H) gates and shared_after > 0, the (H,) gradient of the gates that sequences
    shared_after.. share (their rows of head_gates equal), as one pass of a batch holding two
    uses them: summed here, where autograd's sum over an expand of them took ~18 us a call
    (a latency-bound reduction; H200, 2026-12-01). zero_dead=False leaves dead heads' rows
    of dq, dk, dv unwritten."""
    B, H, T, Dh = q.shape
    block_d = max(16, next_pow2(Dh))
    dev = q.device
    precision = dot_precision(q.dtype)
    delta = torch.empty(B, H, T, dtype=torch.float32, device=dev)
    cfg = _config("dq", Dh, T)
    delta_grid = (cdiv(T, cfg["BLOCK_M"]), B * H)
    dgate_part = torch.empty(H, B, delta_grid[0], dtype=torch.float32, device=dev)
    launch(_gated_attn_bwd_delta_kernel, delta_grid,
        q, k, v, grad_out, lse, lengths, head_gates, delta, dgate_part,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(grad_out), B, H, T,
        sm_scale * LOG2E, _gate_stride(head_gates), HEAD_DIM=Dh, BLOCK_D=block_d,
        DOT_PRECISION=precision, **cfg)
    cfg = _config("dkdv", Dh, T)
    launch(_gated_attn_bwd_dkdv_kernel, (cdiv(T, cfg["BLOCK_N"]), B * H),
        q, k, v, grad_out, lse, delta, lengths, head_gates, dk, dv,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(grad_out),
        *_strides3(dk), *_strides3(dv), H, T, sm_scale, sm_scale * LOG2E,
        _gate_stride(head_gates), HEAD_DIM=Dh, BLOCK_D=block_d, ZERO_DEAD=zero_dead,
        DOT_PRECISION=precision, **cfg)
    cfg = _config("dq", Dh, T)
    launch(_gated_attn_bwd_dq_kernel, (cdiv(T, cfg["BLOCK_M"]), B * H),
        q, k, v, grad_out, lse, delta, lengths, head_gates, dq,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(grad_out), *_strides3(dq),
        H, T, sm_scale, sm_scale * LOG2E, _gate_stride(head_gates),
        HEAD_DIM=Dh, BLOCK_D=block_d, ZERO_DEAD=zero_dead, DOT_PRECISION=precision, **cfg)
    per_sequence = head_gates.dim() == 2
    n_m = delta_grid[0]
    if shared_after:
        if not per_sequence or not 0 < shared_after < B:
            raise ValueError(f"shared_after={shared_after} needs (B, H) gates and 0 < it < "
                             f"B = {B}, got gates {tuple(head_gates.shape)}")
        dgates = head_gates.new_empty(H)
        launch(_gated_attn_dgate_kernel, (H, 1), dgate_part, head_gates, dgates,
               (B - shared_after) * n_m, B * n_m, shared_after * n_m, shared_after, H, 0,
               BLOCK=128)
        return dgates
    dgates = torch.empty_like(head_gates)
    stride = _gate_stride(head_gates)
    launch(_gated_attn_dgate_kernel, (H, B if per_sequence else 1), dgate_part, head_gates,
           dgates, n_m if per_sequence else B * n_m, B * n_m, 0, 0, stride, stride, BLOCK=128)
    return dgates


def _gate_stride(head_gates: torch.Tensor) -> int:
    """How far apart two sequences' gates are: 0 for shared (H,) gates, H for (B, H)."""
    return head_gates.shape[-1] if head_gates.dim() == 2 else 0


def _unpack(qkv: torch.Tensor):
    """(B, T, H, 3, Dh) -> q, k, v views (B, H, T, Dh)."""
    view = qkv.permute(0, 2, 1, 3, 4)
    return view[..., 0, :], view[..., 1, :], view[..., 2, :]


# ----------------------------------------------------------------------------- torch.library

def attention_packed_fwd(qkv, lengths, head_gates, sm_scale, zero_dead):
    """qkv (B, T, H, 3, Dh) -> (out (B, T, H, Dh), lse (B, H, T) fp32). zero_dead=False
    leaves dead heads' entries of out unwritten (the MHSA never reads them)."""
    B, T, H, _, Dh = qkv.shape
    out = torch.empty(B, T, H, Dh, dtype=qkv.dtype, device=qkv.device)
    q, k, v = _unpack(qkv)
    lse = gated_attention_fwd_triton(q, k, v, lengths, head_gates, sm_scale,
                                     out.permute(0, 2, 1, 3), zero_dead)
    return out, lse


def attention_packed_bwd(grad_out, qkv, lse, lengths, head_gates, sm_scale, zero_dead, *,
                         shared_after=0):
    """-> (grad qkv (B, T, H, 3, Dh), grad head_gates (their shape, or (H,) with
    shared_after: see gated_attention_bwd_triton; keyword-only, the eager MHSA's own))."""
    grad_qkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    q, k, v = _unpack(qkv)
    dq, dk, dv = _unpack(grad_qkv)
    dgates = gated_attention_bwd_triton(q, k, v, grad_out.permute(0, 2, 1, 3), lse, lengths,
                                        head_gates, sm_scale, dq, dk, dv, zero_dead,
                                        shared_after=shared_after)
    return grad_qkv, dgates


@torch.library.custom_op("orthoasr::gated_attention_packed_fwd", mutates_args=())
def gated_attention_packed_fwd(qkv: torch.Tensor, lengths: torch.Tensor,
                               head_gates: torch.Tensor, sm_scale: float, zero_dead: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_packed_fwd(qkv, lengths, head_gates, sm_scale, zero_dead)


@gated_attention_packed_fwd.register_fake
def _(qkv, lengths, head_gates, sm_scale, zero_dead):
    B, T, H, _, Dh = qkv.shape
    return qkv.new_empty(B, T, H, Dh), qkv.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("orthoasr::gated_attention_packed_bwd", mutates_args=())
def gated_attention_packed_bwd(grad_out: torch.Tensor, qkv: torch.Tensor, lse: torch.Tensor,
                               lengths: torch.Tensor, head_gates: torch.Tensor,
                               sm_scale: float, zero_dead: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_packed_bwd(grad_out, qkv, lse, lengths, head_gates, sm_scale, zero_dead)


@gated_attention_packed_bwd.register_fake
def _(grad_out, qkv, lse, lengths, head_gates, sm_scale, zero_dead):
    return qkv.new_empty(qkv.shape), torch.empty_like(head_gates)


class _Saved(NamedTuple):
    qkv: torch.Tensor
    lse: torch.Tensor
    lengths: torch.Tensor
    head_gates: torch.Tensor


def _setup_context(ctx, inputs, output):
    qkv, lengths, head_gates, sm_scale, zero_dead = inputs
    _out, lse = output
    ctx.save_for_backward(*_Saved(qkv, lse, lengths, head_gates))
    ctx.sm_scale, ctx.zero_dead = sm_scale, zero_dead


def _backward(ctx, grad_out, _grad_lse, bwd=gated_attention_packed_bwd):
    saved = _Saved(*ctx.saved_tensors)
    grad_qkv, dgates = bwd(grad_out.contiguous(), **saved._asdict(), sm_scale=ctx.sm_scale,
                           zero_dead=ctx.zero_dead)
    return grads_in_order(attention_packed_fwd, qkv=grad_qkv, head_gates=dgates)


gated_attention_packed_fwd.register_autograd(_backward, setup_context=_setup_context)
_GatedAttentionPacked = eager_function(attention_packed_fwd, _setup_context, _backward,
                                       attention_packed_bwd)


def gated_attention_packed(qkv: torch.Tensor, lengths: torch.Tensor, head_gates: torch.Tensor,
                           sm_scale: float, zero_dead: bool = False) -> torch.Tensor:
    """Triton gated attention on a packed qkv (B, T, H, 3, Dh) -> (B, T, H, Dh); the custom
    op under torch.compile, its eager twin otherwise. No input checks."""
    op = gated_attention_packed_fwd if torch.compiler.is_compiling() else \
        _GatedAttentionPacked.apply
    return op(qkv, lengths, head_gates, sm_scale, zero_dead)[0]


# ----------------------------------------------------------------------------- public API

def _check(q, k, v, lengths, head_gates):
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v, lengths)):
        raise TypeError("q, k, v and lengths must be tensors")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be (B, H, T, Dh), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of {SUPPORTED_DTYPES} (float64: "
                        f"gated_attention_reference), got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H = q.shape[:2]
    if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lengths must be int32/int64 of shape ({B},), got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    if head_gates is not None:
        if not isinstance(head_gates, torch.Tensor) or head_gates.shape not in ((H,), (B, H)) \
                or not head_gates.is_floating_point():
            raise ValueError(f"head_gates must be a float tensor of shape ({H},) or ({B}, "
                             f"{H}), got {getattr(head_gates, 'shape', head_gates)!r}")
    devices = {t.device for t in (q, k, v, lengths) + (() if head_gates is None
                                                          else (head_gates,))}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
                    head_gates: torch.Tensor | None = None, sm_scale: float | None = None
                    ) -> torch.Tensor:
    """Triton gated attention with key padding (the reference: `gated_attention_reference`).
    q, k, v: (B, H, T, Dh) in fp32, bf16 or fp16 on CUDA (or the CPU under the interpreter);
    lengths (B,); head_gates (H,), (B, H) (per sequence) or None (all ones) -> (B, H, T, Dh)."""
    _check(q, k, v, lengths, head_gates)
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else float(sm_scale)
    if head_gates is None:
        head_gates = torch.ones(q.shape[1], dtype=torch.float32, device=q.device)
    qkv = torch.stack([q, k, v], dim=3).transpose(1, 2)        # (B, T, H, 3, Dh), a copy
    out = gated_attention_packed(qkv, lengths, head_gates.contiguous(), sm_scale,
                                 zero_dead=True)
    return out.transpose(1, 2)
