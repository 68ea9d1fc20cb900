"""The dropout mask the fused kernels draw: Philox from a device seed, never stored.

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

import torch
import triton
import triton.language as tl

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
def _keep_mask_kernel(seed_ptr, out_ptr, R, D, threshold, BM: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    keep = row_tile_keep(seed_ptr, rows, D, threshold, BM, BD)
    ok = (rows < R)[:, None] & (cols < D)[None, :]
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], keep.to(tl.int8), mask=ok)


def keep_mask(seed: torch.Tensor, rows: int, D: int, p: float) -> torch.Tensor:
    """[rows, D] bool: the mask the kernels draw from `seed` at rate p (for tests and
    references)."""
    out = torch.empty(rows, D, dtype=torch.int8, device=seed.device)
    if out.numel():
        BM, BD = 4, max(16, next_pow2(D))
        launch(_keep_mask_kernel, (cdiv(rows, BM),), seed, out, rows, D, keep_threshold(p),
               BM=BM, BD=BD)
    return out.bool()
