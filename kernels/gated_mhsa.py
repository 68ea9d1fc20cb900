"""Gated MHSA around the attention core (DESIGN §2): in-projection, gated attention over the
active heads, out-projection, on pre-normalised input y = LN(x).

    qkv = y W_in^T + b_in            W_in (3d, d) head-major, view (H, 3, Dh, d): the rows
                                     [h*3*Dh, (h+1)*3*Dh) are head h's q, k, v rows
    a_h = g_h Attn_h(q_h, k_h, v_h)   key padding by lengths (kernels/gated_attention.py)
    out = a W_o^T + s b_o            s = bias_scale (None: 1)

Every GEMM skips the heads whose gate is exactly 0, read on the device: the in-projection
computes only live heads' q/k/v columns (dead heads' columns of qkv are never written nor
read), the out-projection sums only over live heads' columns of a, and the backward kernels
compute dW/db rows and columns of live heads only (dead ones are exactly 0). The GEMMs cast
tiles to the compute dtype in registers (bf16 under autocast), so fp32 master weights and
the fp32 LayerNorm output are read directly, with no cast pass; weight gradients accumulate
in fp32 (split over rows with atomics).

Layers: `gated_mhsa_reference` (PyTorch), the Triton kernels `_in_proj_fwd_kernel`,
`_in_proj_dy_kernel`, `_in_proj_dw_kernel`, `_out_proj_fwd_kernel`, `_out_proj_da_kernel`,
`_out_proj_dw_kernel`, launchers, the torch.library ops `orthoasr::gated_in_proj` and
`orthoasr::gated_out_proj` (+ their backward ops), and `gated_mhsa`, which picks a backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .gated_attention import (_interpreting, gated_attention_packed_fwd,
                              gated_attention_reference)

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# ----------------------------------------------------------------------------- reference

def _out_bias(b_o, bias_scale):
    return b_o if bias_scale is None else b_o * bias_scale.to(b_o.dtype)


def gated_mhsa_reference(y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o,
                         num_heads: int):
    """y: (B, T, d) -> (B, T, d), plain PyTorch."""
    B, T, D = y.shape
    Dh = D // num_heads
    qkv = F.linear(y, w_in, b_in).view(B, T, num_heads, 3, Dh).permute(3, 0, 2, 1, 4)
    a = gated_attention_reference(qkv[0], qkv[1], qkv[2], lengths, head_gates, Dh ** -0.5)
    a = a.transpose(1, 2).reshape(B, T, D)
    return F.linear(a, w_o, _out_bias(b_o, bias_scale))


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _in_proj_fwd_kernel(
    y_ptr, w_ptr, b_ptr, gate_ptr, qkv_ptr, M, D,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (m, s) with slice s = 3h + j (j: q, k, v) computes rows [m*BLOCK_M, ...) of
    # qkv[:, s*Dh:(s+1)*Dh] = y W_in[s*Dh:(s+1)*Dh]^T + b_in[...], if head h is live.
    pid_m = tl.program_id(0)
    s = tl.program_id(1)
    gate = tl.load(gate_ptr + s // 3)
    if gate != 0:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        offs_k = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        col_ok = cols < HEAD_DIM
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + offs_k
            y = tl.load(y_ptr + rows[:, None] * D + ks[None, :],
                        mask=row_ok[:, None] & (ks < D)[None, :], other=0.0).to(COMPUTE)
            w = tl.load(w_ptr + (s * HEAD_DIM + cols)[:, None] * D + ks[None, :],
                        mask=col_ok[:, None] & (ks < D)[None, :], other=0.0).to(COMPUTE)
            acc = tl.dot(y, tl.trans(w), acc, input_precision=DOT_PRECISION)
        acc += tl.load(b_ptr + s * HEAD_DIM + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(qkv_ptr + rows[:, None] * (3 * D) + (s * HEAD_DIM + cols)[None, :],
                 acc.to(qkv_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _in_proj_dy_kernel(
    dqkv_ptr, w_ptr, gate_ptr, dy_ptr, M, D, H,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # dy[rows, cols] = sum over live heads h and j of dqkv[rows, slice 3h+j] W_in[slice, cols].
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for h in range(0, H):
        gate = tl.load(gate_ptr + h)
        if gate != 0:
            for j in range(0, 3):
                s = 3 * h + j
                g = tl.load(dqkv_ptr + rows[:, None] * (3 * D) + (s * HEAD_DIM + offs_d)[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(COMPUTE)
                w = tl.load(w_ptr + (s * HEAD_DIM + offs_d)[:, None] * D + cols[None, :],
                            mask=d_ok[:, None] & col_ok[None, :], other=0.0).to(COMPUTE)
                acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
    tl.store(dy_ptr + rows[:, None] * D + cols[None, :], acc.to(dy_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _in_proj_dw_kernel(
    dqkv_ptr, y_ptr, gate_ptr, dw_ptr, db_ptr, M, D, rows_per_split,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (s, n, split): for a live slice s, dW_in[slice s, cols n] += dqkv[rows, s]^T
    # y[rows, n] over its share of rows (fp32 atomics); the extra column block n == cdiv(D,
    # BLOCK_N) adds the rows' sum of dqkv[:, s] to db_in instead.
    s = tl.program_id(0)
    pid_n = tl.program_id(1)
    row_start = tl.program_id(2) * rows_per_split
    gate = tl.load(gate_ptr + s // 3)
    if gate != 0:
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        row_end = tl.minimum(row_start + rows_per_split, M)
        if pid_n * BLOCK_N < D:
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < D
            acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
            for m0 in range(row_start, row_end, BLOCK_M):
                rows = m0 + offs_m
                row_ok = rows < row_end
                g = tl.load(dqkv_ptr + rows[:, None] * (3 * D) + (s * HEAD_DIM + offs_d)[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(COMPUTE)
                y = tl.load(y_ptr + rows[:, None] * D + cols[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(COMPUTE)
                acc = tl.dot(tl.trans(g), y, acc, input_precision=DOT_PRECISION)
            tl.atomic_add(dw_ptr + (s * HEAD_DIM + offs_d)[:, None] * D + cols[None, :], acc,
                          mask=d_ok[:, None] & col_ok[None, :])
        else:
            total = tl.zeros([BLOCK_D], tl.float32)
            for m0 in range(row_start, row_end, BLOCK_M):
                rows = m0 + offs_m
                g = tl.load(dqkv_ptr + rows[:, None] * (3 * D) + (s * HEAD_DIM + offs_d)[None, :],
                            mask=(rows < row_end)[:, None] & d_ok[None, :], other=0.0)
                total += tl.sum(g.to(tl.float32), 0)
            tl.atomic_add(db_ptr + s * HEAD_DIM + offs_d, total, mask=d_ok)


@triton.jit
def _out_proj_fwd_kernel(
    a_ptr, w_ptr, b_ptr, gate_ptr, scale_ptr, out_ptr, M, D, H,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_SCALE: tl.constexpr, COMPUTE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # out[rows, cols] = sum over live heads h of a[rows, head h] W_o[cols, head h]^T
    #                   + s * b_o[cols]
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for h in range(0, H):
        gate = tl.load(gate_ptr + h)
        if gate != 0:
            a = tl.load(a_ptr + rows[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(COMPUTE)
            w = tl.load(w_ptr + cols[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0).to(COMPUTE)
            acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        bias = bias * tl.load(scale_ptr).to(tl.float32)
    acc += bias[None, :]
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _out_proj_da_kernel(
    dout_ptr, w_ptr, gate_ptr, da_ptr, M, D,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (m, h), live heads only: da[rows, head h] = dout[rows] W_o[:, head h]. Dead
    # heads' columns are not written (the attention backward never reads them).
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
                        mask=row_ok[:, None] & (ks < D)[None, :], other=0.0).to(COMPUTE)
            w = tl.load(w_ptr + ks[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                        mask=(ks < D)[:, None] & d_ok[None, :], other=0.0).to(COMPUTE)
            acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
        tl.store(da_ptr + rows[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                 acc.to(da_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _out_proj_dw_kernel(
    dout_ptr, a_ptr, gate_ptr, dw_ptr, colsum_ptr, M, D, H, rows_per_split,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (n, h, split): for a live head h, dW_o[cols n, head h] += dout[rows, n]^T
    # a[rows, head h] over its share of rows (fp32 atomics); the extra program h == H adds
    # the rows' sum of dout[:, n] to colsum (for db_o and the module gate's gradient).
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
                g = tl.load(dout_ptr + rows[:, None] * D + cols[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(COMPUTE)
                a = tl.load(a_ptr + rows[:, None] * D + (h * HEAD_DIM + offs_d)[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(COMPUTE)
                acc = tl.dot(tl.trans(g), a, acc, input_precision=DOT_PRECISION)
            tl.atomic_add(dw_ptr + cols[:, None] * D + (h * HEAD_DIM + offs_d)[None, :], acc,
                          mask=col_ok[:, None] & d_ok[None, :])
    else:
        total = tl.zeros([BLOCK_N], tl.float32)
        for m0 in range(row_start, row_end, BLOCK_M):
            rows = m0 + offs_m
            g = tl.load(dout_ptr + rows[:, None] * D + cols[None, :],
                        mask=(rows < row_end)[:, None] & col_ok[None, :], other=0.0)
            total += tl.sum(g.to(tl.float32), 0)
        tl.atomic_add(colsum_ptr + cols, total, mask=col_ok)


# ----------------------------------------------------------------------------- launchers

def _precision(compute: torch.dtype) -> str:
    return "ieee" if compute == torch.float32 else "tf32"


def _blocks(head_dim: int) -> dict:
    block_d = max(16, triton.next_power_of_2(head_dim))
    if _interpreting():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, BLOCK_D=block_d)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, BLOCK_D=block_d)


def _split(M: int, block_m: int) -> tuple[int, int]:
    """(splits, rows per split) for the weight-gradient reductions over M rows."""
    target = 64 if _interpreting() else 1024
    splits = max(1, min(32, M // target))
    rows = triton.cdiv(triton.cdiv(M, splits), block_m) * block_m
    return triton.cdiv(M, rows), rows


def _launch_opts(kind: str) -> dict:
    if _interpreting():
        return {}
    return dict(num_warps=4, num_stages=3 if kind != "dw" else 2)


def in_proj_fwd_triton(y, w, b, head_gates, compute):
    M, D = y.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    qkv = torch.empty(M, 3 * D, dtype=compute, device=y.device)
    _in_proj_fwd_kernel[(triton.cdiv(M, blk["BLOCK_M"]), 3 * H)](
        y, w, b, head_gates, qkv, M, D, HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"],
        BLOCK_D=blk["BLOCK_D"], BLOCK_K=blk["BLOCK_K"], COMPUTE=_TL_DTYPES[compute],
        DOT_PRECISION=_precision(compute), **_launch_opts("fwd"))
    return qkv


def in_proj_bwd_triton(dqkv, y, w, head_gates, compute):
    M, D = y.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    common = dict(HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"], BLOCK_N=blk["BLOCK_N"],
                  BLOCK_D=blk["BLOCK_D"], COMPUTE=_TL_DTYPES[compute],
                  DOT_PRECISION=_precision(compute))
    dy = torch.empty_like(y)
    _in_proj_dy_kernel[(triton.cdiv(M, blk["BLOCK_M"]), triton.cdiv(D, blk["BLOCK_N"]))](
        dqkv, w, head_gates, dy, M, D, H, **common, **_launch_opts("fwd"))
    dw = torch.zeros(3 * D, D, dtype=torch.float32, device=y.device)
    db = torch.zeros(3 * D, dtype=torch.float32, device=y.device)
    splits, rows = _split(M, blk["BLOCK_M"])
    _in_proj_dw_kernel[(3 * H, triton.cdiv(D, blk["BLOCK_N"]) + 1, splits)](
        dqkv, y, head_gates, dw, db, M, D, rows, **common, **_launch_opts("dw"))
    return dy, dw, db


def out_proj_fwd_triton(a, w, b, head_gates, bias_scale, compute):
    M, D = a.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    out = torch.empty(M, D, dtype=compute, device=a.device)
    _out_proj_fwd_kernel[(triton.cdiv(M, blk["BLOCK_M"]), triton.cdiv(D, blk["BLOCK_N"]))](
        a, w, b, head_gates, bias_scale if bias_scale is not None else head_gates, out,
        M, D, H, HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"], BLOCK_N=blk["BLOCK_N"],
        BLOCK_D=blk["BLOCK_D"], HAS_SCALE=bias_scale is not None, COMPUTE=_TL_DTYPES[compute],
        DOT_PRECISION=_precision(compute), **_launch_opts("fwd"))
    return out


def out_proj_bwd_triton(dout, a, w, head_gates, compute):
    """Returns (da, dw fp32, colsum fp32 = dout summed over rows)."""
    M, D = a.shape
    H = head_gates.shape[0]
    Dh = D // H
    blk = _blocks(Dh)
    common = dict(HEAD_DIM=Dh, BLOCK_M=blk["BLOCK_M"], BLOCK_D=blk["BLOCK_D"],
                  COMPUTE=_TL_DTYPES[compute], DOT_PRECISION=_precision(compute))
    da = torch.empty_like(a)
    _out_proj_da_kernel[(triton.cdiv(M, blk["BLOCK_M"]), H)](
        dout, w, head_gates, da, M, D, BLOCK_K=blk["BLOCK_K"], **common, **_launch_opts("fwd"))
    dw = torch.zeros(D, D, dtype=torch.float32, device=a.device)
    colsum = torch.zeros(D, dtype=torch.float32, device=a.device)
    splits, rows = _split(M, blk["BLOCK_M"])
    _out_proj_dw_kernel[(triton.cdiv(D, blk["BLOCK_N"]), H + 1, splits)](
        dout, a, head_gates, dw, colsum, M, D, H, rows, BLOCK_N=blk["BLOCK_N"], **common,
        **_launch_opts("dw"))
    return da, dw, colsum


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::gated_in_proj", mutates_args=())
def gated_in_proj(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, head_gates: torch.Tensor,
                  compute: torch.dtype) -> torch.Tensor:
    """y (M, d) -> qkv (M, 3d) in `compute`; dead heads' columns are left unwritten."""
    return in_proj_fwd_triton(y, w, b, head_gates, compute)


@gated_in_proj.register_fake
def _(y, w, b, head_gates, compute):
    return y.new_empty(y.shape[0], w.shape[0], dtype=compute)


@torch.library.custom_op("orthoasr::gated_in_proj_bwd", mutates_args=())
def gated_in_proj_bwd(dqkv: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                      head_gates: torch.Tensor, compute: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return in_proj_bwd_triton(dqkv, y, w, head_gates, compute)


@gated_in_proj_bwd.register_fake
def _(dqkv, y, w, head_gates, compute):
    f32 = torch.float32
    return torch.empty_like(y), w.new_empty(w.shape, dtype=f32), w.new_empty(w.shape[0],
                                                                               dtype=f32)


def _in_proj_setup(ctx, inputs, output):
    y, w, b, head_gates, compute = inputs
    ctx.save_for_backward(y, w, head_gates)
    ctx.compute = compute
    ctx.b_dtype = b.dtype


def _in_proj_backward(ctx, dqkv):
    y, w, head_gates = ctx.saved_tensors
    dy, dw, db = gated_in_proj_bwd(dqkv.contiguous(), y, w, head_gates, ctx.compute)
    return dy, dw.to(w.dtype), db.to(ctx.b_dtype), None, None


gated_in_proj.register_autograd(_in_proj_backward, setup_context=_in_proj_setup)


@torch.library.custom_op("orthoasr::gated_out_proj", mutates_args=())
def gated_out_proj(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, head_gates: torch.Tensor,
                   bias_scale: torch.Tensor | None, compute: torch.dtype) -> torch.Tensor:
    """a (M, d) -> a W_o^T + s b_o (M, d) in `compute`, summing over live heads only."""
    return out_proj_fwd_triton(a, w, b, head_gates, bias_scale, compute)


@gated_out_proj.register_fake
def _(a, w, b, head_gates, bias_scale, compute):
    return a.new_empty(a.shape[0], w.shape[0], dtype=compute)


@torch.library.custom_op("orthoasr::gated_out_proj_bwd", mutates_args=())
def gated_out_proj_bwd(dout: torch.Tensor, a: torch.Tensor, w: torch.Tensor,
                       head_gates: torch.Tensor, compute: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return out_proj_bwd_triton(dout, a, w, head_gates, compute)


@gated_out_proj_bwd.register_fake
def _(dout, a, w, head_gates, compute):
    f32 = torch.float32
    return torch.empty_like(a), w.new_empty(w.shape, dtype=f32), w.new_empty(w.shape[0],
                                                                               dtype=f32)


def _out_proj_setup(ctx, inputs, output):
    a, w, b, head_gates, bias_scale, compute = inputs
    ctx.save_for_backward(a, w, b, head_gates, bias_scale)
    ctx.compute = compute


def _out_proj_backward(ctx, dout):
    a, w, b, head_gates, bias_scale = ctx.saved_tensors
    da, dw, colsum = gated_out_proj_bwd(dout.contiguous(), a, w, head_gates, ctx.compute)
    if bias_scale is None:
        db, dscale = colsum, None
    else:
        db = colsum * bias_scale.float()
        dscale = (colsum * b.float()).sum().to(bias_scale.dtype)
    return da, dw.to(w.dtype), db.to(b.dtype), None, dscale, None


gated_out_proj.register_autograd(_out_proj_backward, setup_context=_out_proj_setup)


# ----------------------------------------------------------------------------- entry point

def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype on CUDA when autocast is on, else x's dtype."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def gated_mhsa(y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o, num_heads: int,
               compute: torch.dtype | None = None):
    """y = LN(x): (B, T, d) -> (B, T, d). Triton (projections and attention skip dead heads)
    or the PyTorch reference, by orthoasr.backend.use_triton; float64 runs the reference."""
    from orthoasr.backend import use_triton

    if y.dtype == torch.float64 or not use_triton(y, lengths, head_gates):
        return gated_mhsa_reference(y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o,
                                    num_heads)
    compute = compute_dtype(y) if compute is None else compute
    B, T, D = y.shape
    Dh = D // num_heads
    qkv = gated_in_proj(y.reshape(B * T, D).contiguous(), w_in.contiguous(), b_in, head_gates,
                        compute)
    a, _lse = gated_attention_packed_fwd(qkv.view(B, T, num_heads, 3, Dh), lengths, head_gates,
                                         Dh ** -0.5)
    out = gated_out_proj(a.view(B * T, D), w_o.contiguous(), b_o, head_gates, bias_scale,
                         compute)
    return out.view(B, T, D)
