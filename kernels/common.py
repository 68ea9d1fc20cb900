"""Helpers the kernel files share: whether Triton runs under its CPU interpreter, the
`tl.dot` input precision for a dtype, weights as matmul operands, the valid-frame mask
of padded batches, and zeroed fp32 accumulators from one buffer."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors through Triton's interpreter (it must be
    set before triton is imported, so it cannot change during a process)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: exact products ("ieee"); 16-bit operands ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T] bool, True where t < lengths[b]."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def as_operand(weight: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """`weight` in the activations' dtype (a copy only when they differ: fp32 master weights
    under bf16 autocast). One cast per call beats casting every tile in registers: with bf16
    weights the gated FFN ran 409 instead of 584 us fwd+bwd on the H200 (bench/NOTES.md,
    2026-11-30). Weight gradients still come out in the weights' own dtype."""
    return weight if weight.dtype == activations.dtype else weight.to(activations.dtype)


def operand_to_keep(weight: torch.Tensor, operand: torch.Tensor) -> torch.Tensor:
    """What a forward op keeps of `operand` (= as_operand(weight, ...)) for its backward: the
    copy, or an empty tensor when the weight is the operand itself (an op output may not
    alias an input)."""
    return weight.new_empty(0) if operand is weight else operand


def kept_operand(kept: torch.Tensor, weight: torch.Tensor,
                 activations: torch.Tensor) -> torch.Tensor:
    """The backward's operand: the forward's copy `kept`, else as_operand(weight, ...)."""
    return kept if kept.numel() else as_operand(weight, activations)


def fake_kept_operand(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """operand_to_keep's result under torch.compile's fake tensors."""
    return weight.new_empty(0) if weight.dtype == dtype else weight.new_empty(weight.shape,
                                                                              dtype=dtype)


def zeroed_fp32(sizes: list[int], device: torch.device) -> list[torch.Tensor]:
    """Zeroed fp32 1-D tensors of `sizes` carved from one buffer (one memset launch), each
    starting on a 128-byte boundary: Triton specialises pointer arguments on 16-byte
    alignment, and a weight gradient written at an unaligned offset ran 3x slower (the MHSA
    in-projection's, 31 -> 98 us on the H200, bench/NOTES.md session 10)."""
    padded = [-(-n // 32) * 32 for n in sizes]
    buf = torch.zeros(sum(padded), dtype=torch.float32, device=device)
    return [part[:n] for part, n in zip(buf.split(padded), sizes)]
