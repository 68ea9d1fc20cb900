"""What follows each convolution of the VGG frontend, fused: its bias, ReLU, an optional 2x2
max-pool and the padding mask, one kernel forward and one backward.

    masked_relu_pool(x, lengths, False, bias): y = where(t < lengths[b], relu(x + bias), 0)
    masked_relu_pool(x, lengths, True, bias):  y = where(t < lengths[b] // 2,
                                                         maxpool2x2(relu(x + bias)), 0)

The bias (C,) is optional. cuDNN's convolution leaves it to a separate add over its whole
output, and its gradient to a separate reduction over dy: 3.7 + 1.9 ms of a 108 ms
paper-size step on the H200. Here the forward adds it in fp32 registers (one rounding to
x's dtype where torch's add rounds x + bias first: equal in fp32, within a rounding in
bf16) and the backward writes each program's sum of dx per channel, which the launcher adds
up.

x (B, C, T, F) channels-last (memory order B, T, F, C); y (B, C, T, F), or (B, C, T // 2,
F // 2) with the pool (floor, as nn.MaxPool2d(2)), channels-last too. lengths (B,) counts
the valid frames of x. `masked_relu_pool_reference` is the composition of torch ops the
frontend ran before; without a bias the kernels give the same values bit for bit in fp32,
bf16 and fp16 (they only compare, in fp32 registers, and select), with torch's tie rule
(the first maximum of a window in row-major order, a NaN wins) and torch's NaN behaviour
(relu keeps a NaN).

The backward routes dy to the first maximum of each window (recomputed from x) where that
maximum is > 0 at a valid frame; every other element of x gets 0, including the last row or
column beyond the pooled range for odd T or F. Without the pool the backward reads y instead
of x: y > 0 exactly where x > 0 at a valid frame, and the next convolution keeps y anyway,
so no second activation of that size is saved.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.nn.functional import max_pool2d

from .autograd import eager_function, grads_in_order
from .common import await_producers, check_lengths, interpreting, valid_mask
from .launch import cdiv, launch, next_pow2


def masked_relu_pool_reference(x: torch.Tensor, lengths: torch.Tensor, pool: bool,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, T, F), lengths (B,) valid frames of x, bias (C,) or None -> y (B, C, T, F),
    or (B, C, T // 2, F // 2) with pool; padded frames 0 (lengths // 2 with pool)."""
    y = torch.relu(x if bias is None else x + bias.to(x.dtype)[:, None, None])
    if pool:
        y, lengths = max_pool2d(y, 2), lengths // 2
    return torch.where(valid_mask(lengths, y.shape[2])[:, None, :, None], y, 0.0)


@triton.jit
def _bias_row(bias_ptr, c, C, HAS_BIAS: tl.constexpr):
    """bias[c] as a (1, 1, BC) fp32 row, or zeros (one return: the compiler wants one type)."""
    if HAS_BIAS:
        row = tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)
    else:
        row = tl.zeros(c.shape, dtype=tl.float32)
    return row[None, None, :]


@triton.jit
def _window_max(x_ptr, corner, F, C, read, shift, S: tl.constexpr):
    """The first maximum of each S x S window of x + shift whose (0, 0) is at `corner`, in
    fp32, and its index in the window (row-major, as torch; a NaN wins)."""
    m = tl.load(x_ptr + corner, mask=read, other=0.0).to(tl.float32) + shift
    arg = tl.zeros(m.shape, dtype=tl.int32)
    for k in tl.static_range(1, S * S):
        v = tl.load(x_ptr + corner + ((k // S) * F + k % S) * C, mask=read,
                    other=0.0).to(tl.float32) + shift
        take = (v > m) | (v != v)
        m = tl.where(take, v, m)
        arg = tl.where(take, k, arg)
    return m, arg


@triton.jit
def _tile(len_ptr, T, F, C, rows_per_seq, n_rows, S: tl.constexpr, BR: tl.constexpr,
          BF: tl.constexpr, BC: tl.constexpr):
    """Program (i, j)'s rows i*BR + [0, BR) of the flattened (B, rows_per_seq), frequencies
    j*BF + [0, BF) and all channels: (f, c, b, t, row_ok, the valid output frames
    lengths[b] // S, and each S x S window's (0, 0) offset in x (B, T, F, C))."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    f = tl.program_id(1) * BF + tl.arange(0, BF)
    c = tl.arange(0, BC)
    b = rows // rows_per_seq
    t = rows - b * rows_per_seq
    row_ok = rows < n_rows
    valid_frames = tl.load(len_ptr + b, mask=row_ok, other=0) // S
    corner = (((b.to(tl.int64) * T + S * t)[:, None, None] * F + S * f[None, :, None]) * C
              + c[None, None, :])
    return f, c, b, t, row_ok, valid_frames, corner


@triton.jit
def _masked_relu_pool_fwd_kernel(
    x_ptr, bias_ptr, y_ptr, len_ptr, T, F, C, T_out, F_out, n_rows,
    S: tl.constexpr, HAS_BIAS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
    BC: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (i, j) writes output rows [i*BR, (i+1)*BR) of the flattened (B, T_out),
    # frequencies [j*BF, (j+1)*BF), all channels: relu of the maximum of each S x S window
    # of x + bias (S = 1: the element itself); 0 at frames t >= lengths[b] // S, whose
    # inputs are not read.
    await_producers(PDL)
    f, c, b, t, row_ok, valid_frames, corner = _tile(len_ptr, T, F, C, T_out, n_rows, S,
                                                     BR, BF, BC)
    valid = row_ok & (t < valid_frames)
    in_range = row_ok[:, None, None] & (f < F_out)[None, :, None] & (c < C)[None, None, :]
    read = in_range & valid[:, None, None]
    m, _ = _window_max(x_ptr, corner, F, C, read, _bias_row(bias_ptr, c, C, HAS_BIAS), S)
    y = tl.where((m <= 0.0) | ~read, 0.0, m)          # relu (keeps a NaN); padded: 0
    out = (((b.to(tl.int64) * T_out + t)[:, None, None] * F_out + f[None, :, None]) * C
           + c[None, None, :])
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _masked_relu_pool_bwd_kernel(
    dy_ptr, x_ptr, bias_ptr, dx_ptr, dbias_ptr, len_ptr, T, F, C, T_out, F_out, T_win, F_win,
    n_rows, S: tl.constexpr, HAS_BIAS: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
    BC: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (i, j) writes dx over S x S windows: rows [i*BR, (i+1)*BR) of the flattened
    # (B, T_win), window columns [j*BF, (j+1)*BF) of F_win, all channels, T_win = ceil(T / S)
    # and F_win = ceil(F / S) so that the row and column outside the pooled range (odd T
    # or F) are written too, with 0. Each window's dy goes to its first maximum in x if that
    # is > 0 (or NaN: torch's relu passes it) and the frame valid; the rest get 0. With a
    # bias, the program's sum of dx per channel goes to row i * num_programs(1) + j of
    # dbias (programs, C). Without the pool x is the forward's y (bias and mask applied).
    await_producers(PDL)
    f, c, b, t, row_ok, valid_frames, corner = _tile(len_ptr, T, F, C, T_win, n_rows, S,
                                                     BR, BF, BC)
    pooled = row_ok & (t < T_out) & (t < valid_frames)
    c_ok = (c < C)[None, None, :]
    read = pooled[:, None, None] & (f < F_out)[None, :, None] & c_ok
    out = (((b.to(tl.int64) * T_out + t)[:, None, None] * F_out + f[None, :, None]) * C
           + c[None, None, :])
    g = tl.load(dy_ptr + out, mask=read, other=0.0).to(tl.float32)
    m, arg = _window_max(x_ptr, corner, F, C, read,                # the forward's argmax
                         _bias_row(bias_ptr, c, C, HAS_BIAS and S > 1), S)
    g = tl.where(m <= 0.0, 0.0, g)                      # relu'(max) = 0: all of it 0
    if HAS_BIAS:
        program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(dbias_ptr + program.to(tl.int64) * C + c,
                 tl.sum(tl.sum(g, axis=0), axis=0), mask=c < C)
    for k in tl.static_range(S * S):
        inside = (row_ok & (S * t + k // S < T))[:, None, None] & \
            (S * f + k % S < F)[None, :, None] & c_ok
        tl.store(dx_ptr + corner + ((k // S) * F + k % S) * C,
                 tl.where(arg == k, g, 0.0).to(dx_ptr.dtype.element_ty), mask=inside)


def _blocks(rows: int, cols: int, C: int) -> dict:
    """Tile [BR rows, BF frequencies, BC channels] over `rows` x `cols` x C: ~2K elements on
    a GPU, ~1M under the interpreter (which pays per program and per op, not per element);
    BF the power of two that pads `cols` least (80 = 5 x 16: none)."""
    tile = 2 ** 20 if interpreting() else 2048
    BC = next_pow2(C)
    cap = max(1, tile // BC)
    BF = min((1 << k for k in range(cap.bit_length())), key=lambda bf: (cdiv(cols, bf) * bf, -bf))
    return dict(BR=min(next_pow2(rows), max(1, tile // (BF * BC))), BF=BF, BC=BC, num_warps=4)


def _channels_last(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last)


def masked_relu_pool_fwd_triton(x: torch.Tensor, lengths: torch.Tensor, pool: bool,
                                bias: torch.Tensor | None = None) -> tuple[torch.Tensor]:
    """x (B, C, T, F) channels-last, bias (C,) or None -> (y,), y (B, C, T_out, F_out)
    channels-last."""
    B, C, T, F = x.shape
    S = 2 if pool else 1
    T_out, F_out = T // S, F // S
    y = _channels_last((B, C, T_out, F_out), x)
    if y.numel():
        blk = _blocks(B * T_out, F_out, C)
        launch(_masked_relu_pool_fwd_kernel,
               (cdiv(B * T_out, blk["BR"]), cdiv(F_out, blk["BF"])),
               x, x if bias is None else bias, y, lengths, T, F, C, T_out, F_out, B * T_out,
               S=S, HAS_BIAS=bias is not None, **blk)
    return (y,)


def masked_relu_pool_bwd_triton(dy: torch.Tensor, saved: torch.Tensor, lengths: torch.Tensor,
                                pool: bool, bias: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """dy (B, C, T_out, F_out), saved: x (B, C, T, F) with pool, else y -> (dx (B, C, T, F)
    channels-last in saved's dtype, dbias (C,) in bias's dtype; (0,) without a bias)."""
    B, C, T, F = saved.shape
    S = 2 if pool else 1
    T_win, F_win = cdiv(T, S), cdiv(F, S)
    dx = _channels_last(saved.shape, saved)
    no_bias = saved.new_zeros(0)
    if not dx.numel():
        return dx, no_bias if bias is None else torch.zeros_like(bias)
    blk = _blocks(B * T_win, F_win, C)
    grid = (cdiv(B * T_win, blk["BR"]), cdiv(F_win, blk["BF"]))
    # one row of per-channel sums per program, added up here: no atomics, the same dbias
    # every run
    shares = None if bias is None else torch.empty(grid[0] * grid[1], C, device=dx.device,
                                                   dtype=torch.float32)
    launch(_masked_relu_pool_bwd_kernel, grid,
           dy.contiguous(memory_format=torch.channels_last), saved,
           saved if bias is None else bias, dx, dx if shares is None else shares, lengths,
           T, F, C, T // S, F // S, T_win, F_win, B * T_win, S=S, HAS_BIAS=bias is not None,
           **blk)
    return dx, no_bias if shares is None else shares.sum(0).to(bias.dtype)


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::masked_relu_pool_fwd", mutates_args=())
def masked_relu_pool_fwd(x: torch.Tensor, lengths: torch.Tensor, pool: bool,
                         bias: torch.Tensor | None = None) -> tuple[torch.Tensor]:
    return masked_relu_pool_fwd_triton(x, lengths, pool, bias)


@masked_relu_pool_fwd.register_fake
def _(x, lengths, pool, bias=None):
    B, C, T, F = x.shape
    S = 2 if pool else 1
    return (_channels_last((B, C, T // S, F // S), x),)


@torch.library.custom_op("orthoasr::masked_relu_pool_bwd", mutates_args=())
def masked_relu_pool_bwd(dy: torch.Tensor, saved: torch.Tensor, lengths: torch.Tensor,
                         pool: bool, bias: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    return masked_relu_pool_bwd_triton(dy, saved, lengths, pool, bias)


@masked_relu_pool_bwd.register_fake
def _(dy, saved, lengths, pool, bias=None):
    return (_channels_last(saved.shape, saved),
            saved.new_empty(0) if bias is None else torch.empty_like(bias))


def _setup_context(ctx, inputs, output):
    x, lengths, pool, bias = inputs
    (y,) = output
    ctx.save_for_backward(x if pool else y, lengths, bias)
    ctx.pool = pool


def _backward(ctx, dy, bwd=masked_relu_pool_bwd):
    if dy is None:
        return grads_in_order(masked_relu_pool_fwd_triton)
    saved, lengths, bias = ctx.saved_tensors
    dx, dbias = bwd(dy, saved, lengths, ctx.pool, bias)
    return grads_in_order(masked_relu_pool_fwd_triton, x=dx,
                          bias=None if bias is None else dbias)


masked_relu_pool_fwd.register_autograd(_backward, setup_context=_setup_context)
_MaskedReluPool = eager_function(masked_relu_pool_fwd_triton, _setup_context, _backward,
                                 masked_relu_pool_bwd_triton)


def masked_relu_pool(x: torch.Tensor, lengths: torch.Tensor, pool: bool,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton op, same meaning as `masked_relu_pool_reference`: x (B, C, T, F) (made
    channels-last if it is not), lengths (B,) valid frames of x, on x's device (read there:
    no sync), bias (C,) or None -> y channels-last in x's dtype. With the pool and T = 1
    (or F = 1) y is empty and dx all 0, where torch's max_pool2d raises. Eager calls go
    through one autograd.Function; under torch.compile the torch.library op."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B, C, T, F) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"x must be float32, bfloat16 or float16 (the kernels compare in "
                        f"fp32; float64 takes masked_relu_pool_reference), got {x.dtype}")
    check_lengths(lengths, x.shape[0], x.device)
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (x.shape[1],)
                             or not bias.is_floating_point() or bias.device != x.device):
        raise ValueError(f"bias must be a float tensor of shape ({x.shape[1]},) on {x.device}, "
                         f"got {getattr(bias, 'dtype', type(bias).__name__)} "
                         f"{tuple(getattr(bias, 'shape', ()))}")
    args = (x.contiguous(memory_format=torch.channels_last), lengths.contiguous(), bool(pool),
            None if bias is None else bias.contiguous())
    op = masked_relu_pool_fwd if torch.compiler.is_compiling() else _MaskedReluPool.apply
    return op(*args)[0]
