"""The residual step of a Conformer block, x + scale * dropout(y, p), as the LayerNorm after
it takes it (kernels/layer_norm.py): its arguments, its PyTorch reference, and its dropout
mask, drawn by Philox from a device seed and never stored.

A kernel that drops elements out draws its mask from `seed` (a one-element int64 device
tensor: `draw_seed` makes them with torch's generator, so CUDA-graph replays draw new masks
and nothing syncs) and its backward draws the same mask again. One Philox call gives four
32-bit words for a group of 8 elements, each split into two 16-bit uniforms, so p is
rounded to a multiple of 2^-16 (`keep_threshold`). (tl.rand's call per element made the
kernels bound by Philox's integer work: 28 us a pass at 20k x 384 on the H200, against ~10
for the bytes.)

In a [rows, D] tensor, element (r, c) belongs to group r * ceil(D / 8) + c // 8, lane c % 8:
`row_tile_keep` gives a row tile's mask in a kernel, `keep_mask` a whole tensor's (for tests
and references).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .common import await_producers, interpreting
from .launch import cdiv, launch, next_pow2

MAX_ELEMENTS = 2 ** 31 - 1       # Philox offsets and element indices are int32


@triton.jit
def keep_groups(seed_ptr, groups, threshold, G: tl.constexpr):
    """(G, 8) bool: whether lane j of group groups[i] is kept (its 16-bit uniform >=
    threshold = round(p * 2^16))."""
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), groups)
    words = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (G, 4))
    halves = tl.join(words & 0xFFFF, words >> 16)                   # (G, 4, 2)
    return tl.reshape(halves, (G, 8)).to(tl.int32) >= threshold


@triton.jit
def row_tile_keep(seed_ptr, rows, D, threshold, BM: tl.constexpr, BD: tl.constexpr):
    """(BM, BD) bool: the mask at rows `rows` (BM,) and columns 0..BD-1 of a [rows, D]
    tensor (BD >= 8 * ceil(D / 8); the columns past D are meaningless)."""
    groups = rows[:, None] * tl.cdiv(D, 8) + tl.arange(0, BD // 8)[None, :]
    keep = keep_groups(seed_ptr, tl.reshape(groups, (BM * (BD // 8),)), threshold,
                       BM * (BD // 8))
    return tl.reshape(keep, (BM, BD))


def keep_threshold(p: float) -> int:
    """p as the 16-bit threshold of `keep_groups` (the drop rate is p rounded to a multiple
    of 2^-16)."""
    return round(p * 65536)


def draw_seed(device: torch.device, n: int = 1) -> torch.Tensor:
    """n fresh Philox seeds (n,) on `device`, drawn by torch's default generator there in
    one launch (graph-safe on CUDA: each replay draws anew). A caller with many dropouts
    draws their seeds together and hands each a one-element slice."""
    return torch.randint(MAX_ELEMENTS, (n,), device=device, dtype=torch.int64)


def check_seed(seed, device: torch.device) -> None:
    """ValueError unless `seed` is a (1,) int64 tensor on `device`."""
    if not isinstance(seed, torch.Tensor) or seed.shape != (1,) or \
            seed.dtype != torch.int64 or seed.device != device:
        raise ValueError(f"seed must be a (1,) int64 tensor on {device}, got "
                         f"{getattr(seed, 'dtype', type(seed).__name__)} "
                         f"{tuple(getattr(seed, 'shape', ()))} on {getattr(seed, 'device', '')}")


@triton.jit
def _keep_mask_kernel(seed_ptr, out_ptr, R, D, threshold, BM: tl.constexpr, BD: tl.constexpr,
                      PDL: tl.constexpr = False):
    await_producers(PDL)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    keep = row_tile_keep(seed_ptr, rows, D, threshold, BM, BD)
    ok = (rows < R)[:, None] & (cols < D)[None, :]
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], keep.to(tl.int8), mask=ok)


def keep_mask(seed: torch.Tensor, shape, p: float) -> torch.Tensor:
    """bool of `shape` (..., D): the mask the kernels draw from `seed` at rate p for a tensor
    of that shape (for tests and references)."""
    D = shape[-1]
    rows = math.prod(shape[:-1])
    out = torch.empty(rows, D, dtype=torch.int8, device=seed.device)
    if out.numel():
        BM, BD = 4, max(16, next_pow2(D))
        launch(_keep_mask_kernel, (cdiv(rows, BM),), seed, out, rows, D, keep_threshold(p),
               BM=BM, BD=BD)
    return out.bool().view(shape)


# ----------------------------------------------------------------------------- the step

def residual_step_reference(x: torch.Tensor, y: torch.Tensor, scale: float, p: float,
                            keep: torch.Tensor) -> torch.Tensor:
    """x + scale * y * keep / (1 - p) in fp32, rounded once to result_type(x, y); keep: bool,
    x's shape (the mask `keep_mask` reads back)."""
    out = x.float() + torch.where(keep, y.float() * (scale / (1.0 - p)), 0.0)
    return out.to(torch.result_type(x, y))


class Residual(NamedTuple):
    """The residual step a LayerNorm's kernels fuse ahead of the norm: its input is
    x + scale * dropout(y, p), x the residual stream and y the previous module's output.
    Forward: `y` [M, D] is read and `x_new` [M, D] (result_type(x, y)) written. Backward:
    `x_grad` (the new stream's gradient [M, D], or None for none) is added to the norm's
    input gradient, and `y_grad` [M, D] (y's dtype) is written."""
    seed: torch.Tensor | None           # (1,) int64: the dropout mask's seed (None: p = 0)
    scale: float
    p: float
    y: torch.Tensor | None = None
    x_new: torch.Tensor | None = None
    x_grad: torch.Tensor | None = None
    y_grad: torch.Tensor | None = None

    @property
    def gain(self) -> float:
        return self.scale / (1.0 - self.p)


NO_RESIDUAL = (None, None, 1.0, 0.0)      # an op's residual-step inputs when it takes none


def residual_args(x: torch.Tensor, residual) -> tuple:
    """An op's four residual-step inputs (res_y, res_seed, res_scale, res_p) from a public
    `residual=(y, seed, scale, p)` argument (checked), or the defaults for None."""
    if residual is None:
        return NO_RESIDUAL
    y, seed, scale, p = residual
    check_residual(x, y, seed, p)
    return (y.contiguous(), seed, float(scale), float(p))


def step_context(args: dict, step: bool) -> dict:
    """What an op's backward needs of its residual step besides the seed it saved: the
    backward launcher's res_scale, res_p, x_dtype (x's gradient) and res_dtype (y's)."""
    return dict(res_scale=args["res_scale"], res_p=args["res_p"], x_dtype=args["x"].dtype,
                res_dtype=args["res_y"].dtype if step else None)


def check_step_inputs(x: torch.Tensor, y, seed, p: float) -> None:
    """ValueError/TypeError for a residual step's bad inputs on either backend (x the
    stream, y the module output)."""
    if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.device != x.device:
        raise ValueError(f"the residual step's y must be a tensor of x's shape {tuple(x.shape)} "
                         f"on {x.device}, got "
                         f"{tuple(getattr(y, 'shape', ())) or type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(f"the residual step's y must be floating point, got {y.dtype}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"the residual step's dropout p must be in [0, 1), got {p}")
    if seed is not None:            # None: the torch backend's own dropout draws the mask
        check_seed(seed, x.device)
        if p > 0 and x.device.type == "cpu" and not interpreting():
            # else Triton's own "0 active drivers" error, naming nothing of ours
            raise ValueError("the residual step's seed draws the Triton kernels' dropout mask, "
                             "which on the CPU needs TRITON_INTERPRET=1; pass seed None for "
                             "torch's own dropout")


def check_residual(x: torch.Tensor, y: torch.Tensor, seed: torch.Tensor, p: float) -> None:
    """check_step_inputs, and what the kernels alone need: a seed for a dropout, no float64,
    int32 indices."""
    check_step_inputs(x, y, seed, p)
    if p > 0 and seed is None:
        check_seed(seed, x.device)    # names the missing seed (a given one is checked above)
    if y.dtype == torch.float64:
        raise TypeError(f"the residual step's y must be float32, bfloat16 or float16, got "
                        f"{y.dtype}")
    if x.numel() > MAX_ELEMENTS:
        raise ValueError(f"x has {x.numel()} elements; the kernels index at most {MAX_ELEMENTS}")


def step_in(x: torch.Tensor, res_y: torch.Tensor | None, seed: torch.Tensor | None,
            scale: float, p: float) -> tuple[Residual | None, torch.Tensor]:
    """An op's forward side of its residual step on x (..., D): the Residual for the
    LayerNorm launcher ([M, D] views, x_new allocated in result_type(x, res_y)) and x_new in
    x's shape, the op's output; without a step (res_y None), None and an empty tensor."""
    if res_y is None:
        return None, x.new_empty(0)
    D = x.shape[-1]
    x_new = x.new_empty(x.shape, dtype=torch.result_type(x, res_y))
    return Residual(seed, float(scale), float(p), y=res_y.reshape(-1, D),
                    x_new=x_new.view(-1, D)), x_new


def step_out(x: torch.Tensor, x_grad: torch.Tensor | None, seed: torch.Tensor | None,
             scale: float, p: float, res_dtype: torch.dtype | None
             ) -> tuple[Residual | None, torch.Tensor]:
    """An op's backward side of its residual step on x (..., D): the Residual for the
    LayerNorm launcher (x_grad, the new stream's gradient or None, as [M, D]; y's gradient
    allocated in res_dtype) and y's gradient in x's shape; without a step (res_dtype None),
    None and an empty tensor."""
    if res_dtype is None:
        return None, x.new_empty(0)
    D = x.shape[-1]
    y_grad = x.new_empty(x.shape, dtype=res_dtype)
    return Residual(seed, float(scale), float(p),
                    x_grad=None if x_grad is None else x_grad.reshape(-1, D).contiguous(),
                    y_grad=y_grad.view(-1, D)), y_grad
