"""The VGG frontend's first convolution, fused: a 3x3 conv (padding 1) over the one-channel
log-mel input, its bias, ReLU and the padding mask, one kernel forward and one backward.

    first_conv_relu(feats, lengths, weight, bias, out_dtype):
        y = where(t < lengths[b], relu(conv2d(feats masked, weight, bias, padding=1)), 0)

cuDNN pads a one-channel input to eight channels in its NHWC kernels (1.66 ms for the
forward of a paper-size step on the H200, plus a 0.31 ms weight gradient, layout transposes
and the separate ReLU op: profiles/step_c61fbe6_h200.txt). Here a tile of positions is
one small product on the tensor cores, (positions x 16 tap slots: the 9 inputs under the
taps and a 1 for the bias) x (16 x C weights), written once in `out_dtype` (tf32 products
for 16-bit outputs, exact ones for fp32); the backward reads y and dy once and gives the
weight and bias gradients (the input needs none: it is the features) from the transposed
product, as per-program partial sums that the launcher adds up (no atomics, the same
result every run). Frames t >= lengths[b] read as 0, as the masked input the frontend gave
cuDNN.

feats (B, T, F) float, lengths (B,), weight (C, 1, 3, 3), bias (C,); y (B, C, T, F)
channels-last (memory order B, T, F, C), as `masked_relu_pool` and cuDNN take it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .autograd import eager_function, grads_in_order, needs_grad
from .common import await_producers, check_lengths, dot_precision, interpreting, valid_mask
from .frontend import masked_relu_pool_reference
from .launch import cdiv, launch, next_pow2

TAPS, SLOTS = 9, 16    # 3 x 3 taps; a position's tap row: 9 inputs, a 1 (the bias), zeros
_TAPS, _SLOTS = tl.constexpr(TAPS), tl.constexpr(SLOTS)            # the kernels' copies


def first_conv_relu_reference(feats: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The torch ops in out_dtype: mask, conv2d, bias, ReLU, mask (B, C, T, F)."""
    x = torch.where(valid_mask(lengths, feats.shape[1])[..., None], feats, 0.0)
    y = F.conv2d(x[:, None].to(out_dtype), weight.to(out_dtype), None, padding=1)
    return masked_relu_pool_reference(y, lengths, False, bias)


@triton.jit
def _positions(row0, f0, len_ptr, T, F, n_rows, BR: tl.constexpr, BF: tl.constexpr):
    """The BR x BF positions (rows row0 + [0, BR) of the flattened (B, T), frequencies
    f0 + [0, BF)) as one [BR * BF] vector each: row, sequence, frame, frequency, that
    sequence's length, and whether the position exists."""
    p = tl.arange(0, BR * BF)
    rows = row0 + p // BF
    f = f0 + p % BF
    b = rows // T
    row_ok = rows < n_rows
    length = tl.load(len_ptr + b, mask=row_ok, other=0)
    return rows, b, rows - b * T, f, length, row_ok & (f < F)


@triton.jit
def _tap_rows(feats_ptr, b, t, f, length, ok, T, F):
    """(P, SLOTS) fp32: each position's 9 inputs under the taps k = 3 * dh + dw (0 outside
    [0, length) x [0, F)), then 1 in slot TAPS (the bias), then zeros: the conv at a
    position is this row times the (SLOTS, C) weights with the bias in row TAPS."""
    k = tl.arange(0, _SLOTS)
    ts = t[:, None] + (k // 3 - 1)[None, :]
    fs = f[:, None] + (k % 3 - 1)[None, :]
    read = ok[:, None] & (k < _TAPS)[None, :] & (ts >= 0) & (ts < length[:, None]) & \
        (fs >= 0) & (fs < F)
    x = tl.load(feats_ptr + (b.to(tl.int64)[:, None] * T + ts) * F + fs, mask=read,
                other=0.0).to(tl.float32)
    return tl.where((k == _TAPS)[None, :], 1.0, x)


@triton.jit
def _first_conv_fwd_kernel(feats_ptr, w_ptr, bias_ptr, y_ptr, len_ptr, T, F, C, n_rows,
                           BR: tl.constexpr, BF: tl.constexpr, BC: tl.constexpr,
                           DOT_PRECISION: tl.constexpr, PDL: tl.constexpr = False):
    # Program (i, j): rows [i*BR, +BR) of the flattened (B, T), frequencies [j*BF, +BF), all
    # channels, as one (P, SLOTS) x (SLOTS, C) product on the tensor cores (9 FMAs per
    # output spread over the tile's threads took 0.82 ms for a paper step's 0.82 GB of y,
    # ~1 TB/s, on the H200). ReLU keeps a NaN, as torch's; padded frames get 0.
    await_producers(PDL)
    rows, b, t, f, length, ok = _positions(tl.program_id(0) * BR, tl.program_id(1) * BF,
                                           len_ptr, T, F, n_rows, BR, BF)
    c = tl.arange(0, BC)
    c_ok = c < C
    k = tl.arange(0, _SLOTS)
    w = tl.load(w_ptr + c[None, :] * _TAPS + k[:, None],
                mask=(k < _TAPS)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    w = tl.where((k == _TAPS)[:, None], bias[None, :], w)                    # (SLOTS, BC)
    acc = tl.dot(_tap_rows(feats_ptr, b, t, f, length, ok, T, F), w,
                 input_precision=DOT_PRECISION)                             # (P, BC)
    valid = (ok & (t < length))[:, None]
    y = tl.where((acc <= 0.0) | ~valid, 0.0, acc)
    out = (rows.to(tl.int64) * F + f)[:, None] * C + c[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=ok[:, None] & c_ok[None, :])


@triton.jit
def _first_conv_bwd_kernel(dy_ptr, y_ptr, feats_ptr, part_ptr, len_ptr, T, F, C, n_rows,
                           TILES: tl.constexpr, BR: tl.constexpr, BF: tl.constexpr,
                           BC: tl.constexpr, DOT_PRECISION: tl.constexpr,
                           PDL: tl.constexpr = False):
    # Program (i, j): TILES tiles of BR rows from row i*TILES*BR, frequencies [j*BF, +BF).
    # The pre-activation gradient g = dy where y > 0 (0 at padded frames, where y = 0)
    # times the tap rows, (C, P) x (P, SLOTS) on the tensor cores, sums the weight gradient
    # (slots 0-8) and the bias gradient (slot TAPS) into one (SLOTS, C) row of partial sums
    # per program. (Ten channel sums per tile, each a reduction across threads, took
    # 1.33 ms for a paper step's 1.64 GB of y and dy, ~1.2 TB/s, on the H200.)
    await_producers(PDL)
    c = tl.arange(0, BC)
    c_ok = c < C
    acc = tl.zeros([BC, _SLOTS], dtype=tl.float32)
    for tile in range(TILES):
        rows, b, t, f, length, ok = _positions((tl.program_id(0) * TILES + tile) * BR,
                                               tl.program_id(1) * BF, len_ptr, T, F, n_rows,
                                               BR, BF)
        at = (rows.to(tl.int64) * F + f)[:, None] * C + c[None, :]
        read = ok[:, None] & c_ok[None, :]
        y = tl.load(y_ptr + at, mask=read, other=0.0).to(tl.float32)
        g = tl.where(y > 0.0, tl.load(dy_ptr + at, mask=read, other=0.0).to(tl.float32), 0.0)
        acc = tl.dot(tl.trans(g), _tap_rows(feats_ptr, b, t, f, length, ok, T, F), acc,
                     input_precision=DOT_PRECISION)
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    slot = tl.arange(0, _SLOTS)
    tl.store(part_ptr + (program.to(tl.int64) * _SLOTS + slot[None, :]) * C + c[:, None], acc,
             mask=c_ok[:, None])


def _blocks(C: int, backward: bool = False) -> dict:
    """[BR rows x BF frequencies = 128 positions, BC channels] tiles at 4 warps (16
    frequencies: 80 mels = 5 x 16); BC at least 16, a tensor-core product's smallest side;
    TILES row tiles per backward program, so that its partial sums stay few."""
    BC = max(16, next_pow2(C))
    return dict(BR=8, BF=16, BC=BC, TILES=2 if interpreting() else 32, num_warps=4)


def _channels_last(shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- launchers

def first_conv_fwd_triton(feats: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor]:
    B, T, Fq = feats.shape
    C = weight.shape[0]
    y = _channels_last((B, C, T, Fq), out_dtype, feats.device)
    if y.numel():
        blk = _blocks(C)
        blk.pop("TILES")
        launch(_first_conv_fwd_kernel, (cdiv(B * T, blk["BR"]), cdiv(Fq, blk["BF"])),
               feats, weight, bias, y, lengths, T, Fq, C, B * T,
               DOT_PRECISION=dot_precision(out_dtype), **blk)
    return (y,)


def first_conv_bwd_triton(dy: torch.Tensor, y: torch.Tensor, feats: torch.Tensor,
                          lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (dweight (C, 1, 3, 3), dbias (C,)) in fp32."""
    B, C, T, Fq = y.shape
    if not y.numel():
        return (torch.zeros(C, 1, 3, 3, dtype=torch.float32, device=y.device),
                torch.zeros(C, dtype=torch.float32, device=y.device))
    blk = _blocks(C, backward=True)
    grid = (cdiv(B * T, blk["BR"] * blk["TILES"]), cdiv(Fq, blk["BF"]))
    parts = torch.empty(grid[0] * grid[1], SLOTS, C, dtype=torch.float32, device=y.device)
    launch(_first_conv_bwd_kernel, grid, dy.contiguous(memory_format=torch.channels_last), y,
           feats, parts, lengths, T, Fq, C, B * T, DOT_PRECISION=dot_precision(y.dtype),
           **blk)
    sums = parts.sum(0)                                             # (SLOTS, C)
    # copies, not views of sums: a custom op's outputs may not alias one another
    return sums[:TAPS].t().contiguous().view(C, 1, 3, 3), sums[TAPS].clone()


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::first_conv_fwd", mutates_args=())
def first_conv_fwd(feats: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor]:
    return first_conv_fwd_triton(feats, lengths, weight, bias, out_dtype)


@first_conv_fwd.register_fake
def _(feats, lengths, weight, bias, out_dtype):
    B, T, Fq = feats.shape
    return (_channels_last((B, weight.shape[0], T, Fq), out_dtype, feats.device),)


@torch.library.custom_op("orthoasr::first_conv_bwd", mutates_args=())
def first_conv_bwd(dy: torch.Tensor, y: torch.Tensor, feats: torch.Tensor,
                   lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return first_conv_bwd_triton(dy, y, feats, lengths)


@first_conv_bwd.register_fake
def _(dy, y, feats, lengths):
    C = y.shape[1]
    return (y.new_empty((C, 1, 3, 3), dtype=torch.float32),
            y.new_empty((C,), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    feats, lengths, weight, bias, _ = inputs
    ctx.save_for_backward(output[0], feats, lengths)
    ctx.dtypes = weight.dtype, bias.dtype


def _backward(ctx, dy, bwd=first_conv_bwd):
    if dy is None:
        return grads_in_order(first_conv_fwd_triton)
    y, feats, lengths = ctx.saved_tensors
    dweight, dbias = bwd(dy, y, feats, lengths)
    return grads_in_order(
        first_conv_fwd_triton,
        weight=dweight.to(ctx.dtypes[0]) if needs_grad(ctx, first_conv_fwd_triton, "weight")
        else None,
        bias=dbias.to(ctx.dtypes[1]) if needs_grad(ctx, first_conv_fwd_triton, "bias")
        else None)


first_conv_fwd.register_autograd(_backward, setup_context=_setup_context)
_FirstConv = eager_function(first_conv_fwd_triton, _setup_context, _backward,
                            first_conv_bwd_triton)


def first_conv_relu(feats: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The Triton op, same meaning as `first_conv_relu_reference`: feats (B, T, F) (its
    gradient is not computed), lengths (B,) on feats' device, weight (C, 1, 3, 3), bias (C,)
    -> y (B, C, T, F) channels-last in out_dtype. Eager calls go through one
    autograd.Function; under torch.compile the torch.library op."""
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or \
            feats.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"feats must be a float32/bfloat16/float16 (B, T, F) tensor, got "
                         f"{getattr(feats, 'dtype', type(feats).__name__)} "
                         f"{tuple(getattr(feats, 'shape', ()))}")
    check_lengths(lengths, feats.shape[0], feats.device)
    if feats.requires_grad:
        raise ValueError("feats must not require grad: first_conv_relu gives gradients to "
                         "the weight and bias only (use conv2d for an input gradient)")
    C = weight.shape[0] if isinstance(weight, torch.Tensor) else None
    if C is None or weight.shape != (C, 1, 3, 3) or bias.shape != (C,):
        raise ValueError(f"weight must be (C, 1, 3, 3) and bias (C,), got "
                         f"{tuple(getattr(weight, 'shape', ()))} and "
                         f"{tuple(getattr(bias, 'shape', ()))}")
    op = first_conv_fwd if torch.compiler.is_compiling() else _FirstConv.apply
    return op(feats.contiguous(), lengths.contiguous(), weight.contiguous(), bias.contiguous(),
              out_dtype)[0]
