"""The residual step of a training-mode Conformer block, fused: out = x + scale * dropout(y, p),
one kernel forward and one backward.

torch runs it as three kernels forward (dropout's mask and scaled output, the add) and two
backward (dropout's masked scale, the scale of the add), each a pass over a (frames, D)
activation: 14.5 + 10.7 and 8.5 + 6.6 us per module at 20k frames, D 384, bf16 on the H200
(~3.9 ms of an 87 ms paper-size step for its 96 modules; profiles/step_5766582_h200.txt).
Here the forward reads x and y and writes out; the backward reads the output's gradient g and
writes y's, g * scale / (1 - p) where kept. x's gradient is g itself: no kernel.

The mask is not stored: both kernels draw it from `seed` (a one-element int64 device tensor,
drawn by torch's generator for each call, so CUDA-graph replays draw new masks and nothing
syncs) with Triton's Philox: one call per group of 8 elements, 16 bits per element, so p
is rounded to a multiple of 2^-16 (`_kept`). `dropout_keep_mask` gives the mask for tests.
The arithmetic is in fp32 with one rounding to the output dtype (torch's chain rounds the
dropped-out y first: within a rounding of it).

x and y: the same shape, contiguous, any float dtypes; out in torch.result_type(x, y).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autograd import eager_function, grads_in_order, needs_grad
from .common import interpreting
from .launch import cdiv, launch

MAX_ELEMENTS = 2 ** 31 - 1       # Philox offsets and element indices are int32


def dropout_residual_add_reference(x: torch.Tensor, y: torch.Tensor, scale: float, p: float,
                                   keep: torch.Tensor) -> torch.Tensor:
    """x + scale * y * keep / (1 - p), in fp32 then rounded once; keep: bool, x's shape."""
    out = x.float() + torch.where(keep, y.float() * (scale / (1.0 - p)), 0.0)
    return out.to(torch.result_type(x, y))


@triton.jit
def _kept(seed_ptr, groups, threshold, G: tl.constexpr):
    """(G, 8) bool: whether element 8 * groups[i] + j is kept. One Philox call gives four
    32-bit words per group of 8 elements, each split into two 16-bit uniforms, kept iff
    >= threshold = round(p * 2^16). (tl.rand's call per element made the kernels bound by
    Philox's integer work: 28 us a pass at 20k x 384 on the H200, against ~10 for the
    bytes.)"""
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), groups)
    words = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (G, 4))
    halves = tl.join(words & 0xFFFF, words >> 16)                   # (G, 4, 2)
    return tl.reshape(halves, (G, 8)).to(tl.int32) >= threshold


@triton.jit
def _tile(G: tl.constexpr):
    """This program's (G,) groups and (G, 8) element indices."""
    groups = tl.program_id(0) * G + tl.arange(0, G)
    return groups, groups[:, None] * 8 + tl.arange(0, 8)[None, :]


@triton.jit
def _dropout_residual_fwd_kernel(x_ptr, y_ptr, out_ptr, seed_ptr, n, threshold, gain,
                                 G: tl.constexpr):
    groups, offs = _tile(G)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    out = x + tl.where(_kept(seed_ptr, groups, threshold, G), y * gain, 0.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dropout_residual_bwd_kernel(g_ptr, dy_ptr, seed_ptr, n, threshold, gain,
                                 G: tl.constexpr):
    groups, offs = _tile(G)
    ok = offs < n
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    dy = tl.where(_kept(seed_ptr, groups, threshold, G), g * gain, 0.0)
    tl.store(dy_ptr + offs, dy.to(dy_ptr.dtype.element_ty), mask=ok)


def _block() -> dict:
    # G groups of 8 elements (16 bytes in bf16) per program: 512 x 8 at 4 warps, a pass
    # over a 20k x 384 activation in 1,875 programs
    return dict(G=32) if interpreting() else dict(G=512, num_warps=4)


def _threshold(p: float) -> int:
    """p as the 16-bit threshold of `_kept` (the drop rate is p rounded to a multiple of
    2^-16)."""
    return round(p * 65536)


# ----------------------------------------------------------------------------- launchers

def dropout_residual_fwd_triton(x: torch.Tensor, y: torch.Tensor, seed: torch.Tensor,
                                scale: float, p: float) -> tuple[torch.Tensor]:
    out = torch.empty(x.shape, dtype=torch.result_type(x, y), device=x.device)
    if out.numel():
        blk = _block()
        launch(_dropout_residual_fwd_kernel, (cdiv(out.numel(), 8 * blk["G"]),),
               x, y, out, seed, out.numel(), _threshold(p), scale / (1.0 - p), **blk)
    return (out,)


def dropout_residual_bwd_triton(g: torch.Tensor, seed: torch.Tensor, scale: float, p: float,
                                y_dtype: torch.dtype) -> torch.Tensor:
    """g (the output's gradient) -> y's gradient, in y's dtype."""
    g = g.contiguous()
    dy = torch.empty(g.shape, dtype=y_dtype, device=g.device)
    if dy.numel():
        blk = _block()
        launch(_dropout_residual_bwd_kernel, (cdiv(dy.numel(), 8 * blk["G"]),),
               g, dy, seed, dy.numel(), _threshold(p), scale / (1.0 - p), **blk)
    return dy


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::dropout_residual_fwd", mutates_args=())
def dropout_residual_fwd(x: torch.Tensor, y: torch.Tensor, seed: torch.Tensor, scale: float,
                         p: float) -> tuple[torch.Tensor]:
    return dropout_residual_fwd_triton(x, y, seed, scale, p)


@dropout_residual_fwd.register_fake
def _(x, y, seed, scale, p):
    return (torch.empty(x.shape, dtype=torch.result_type(x, y), device=x.device),)


@torch.library.custom_op("orthoasr::dropout_residual_bwd", mutates_args=())
def dropout_residual_bwd(g: torch.Tensor, seed: torch.Tensor, scale: float, p: float,
                         y_dtype: torch.dtype) -> torch.Tensor:
    return dropout_residual_bwd_triton(g, seed, scale, p, y_dtype)


@dropout_residual_bwd.register_fake
def _(g, seed, scale, p, y_dtype):
    return torch.empty(g.shape, dtype=y_dtype, device=g.device)


def _setup_context(ctx, inputs, output):
    x, y, seed, scale, p = inputs
    ctx.save_for_backward(seed)
    ctx.scale, ctx.p, ctx.y_dtype = scale, p, y.dtype


def _backward(ctx, g, bwd=dropout_residual_bwd):
    if g is None:
        return grads_in_order(dropout_residual_fwd_triton)
    (seed,) = ctx.saved_tensors
    dy = None
    if needs_grad(ctx, dropout_residual_fwd_triton, "y"):
        dy = bwd(g, seed, ctx.scale, ctx.p, ctx.y_dtype)
    dx = g if needs_grad(ctx, dropout_residual_fwd_triton, "x") else None
    return grads_in_order(dropout_residual_fwd_triton, x=dx, y=dy)


dropout_residual_fwd.register_autograd(_backward, setup_context=_setup_context)
_DropoutResidual = eager_function(dropout_residual_fwd_triton, _setup_context, _backward,
                                  dropout_residual_bwd_triton)


def draw_seed(device: torch.device, n: int = 1) -> torch.Tensor:
    """n fresh Philox seeds (n,) on `device`, drawn by torch's default generator there in
    one launch (graph-safe on CUDA: each replay draws anew). A caller with many dropouts
    draws their seeds together and hands each a one-element slice."""
    return torch.randint(MAX_ELEMENTS, (n,), device=device, dtype=torch.int64)


def dropout_residual_add(x: torch.Tensor, y: torch.Tensor, scale: float, p: float,
                         seed: torch.Tensor | None = None) -> torch.Tensor:
    """x + scale * dropout(y, p) with the Triton kernels (x the residual stream, y a module's
    output, maybe in another dtype). p in [0, 1); seed: a one-element int64 tensor on x's
    device, or None to draw one. Eager calls go through one autograd.Function; under
    torch.compile the torch.library op."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or \
            x.shape != y.shape or x.device != y.device:
        raise ValueError(f"x and y must be tensors of one shape on one device, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    if not (x.is_floating_point() and y.is_floating_point()) or torch.float64 in (x.dtype,
                                                                                    y.dtype):
        raise TypeError(f"x and y must be float32, bfloat16 or float16, got {x.dtype} and "
                        f"{y.dtype}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    if x.numel() > MAX_ELEMENTS:
        raise ValueError(f"x has {x.numel()} elements; the kernels index at most {MAX_ELEMENTS}")
    if seed is None:
        seed = draw_seed(x.device)
    elif seed.shape != (1,) or seed.dtype != torch.int64 or seed.device != x.device:
        raise ValueError(f"seed must be a (1,) int64 tensor on {x.device}, got {seed.dtype} "
                         f"{tuple(seed.shape)} on {seed.device}")
    op = dropout_residual_fwd if torch.compiler.is_compiling() else _DropoutResidual.apply
    return op(x.contiguous(), y.contiguous(), seed, float(scale), float(p))[0]


def dropout_keep_mask(seed: torch.Tensor, shape, p: float, device) -> torch.Tensor:
    """The kept elements (bool, `shape`) that `dropout_residual_add` draws from `seed`."""
    ones = torch.ones(shape, device=device)
    return dropout_residual_fwd_triton(torch.zeros_like(ones), ones, seed, 1.0, p)[0] != 0
