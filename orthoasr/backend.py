"""Which implementation runs an op: the Triton kernels or the PyTorch references.

`auto` (the default, or env ORTHOASR_BACKEND) picks Triton for CUDA tensors and for CPU
tensors when TRITON_INTERPRET=1, and PyTorch otherwise. The interpreter has no bfloat16
arithmetic (its results are silently wrong), so bfloat16 on the CPU always takes PyTorch.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")
_backend = os.environ.get("ORTHOASR_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"ORTHOASR_BACKEND must be one of {BACKENDS}, got {_backend!r}")


_kernel_masks = os.environ.get("ORTHOASR_KERNEL_MASKS", "0")
if _kernel_masks not in ("0", "1"):
    raise ValueError(f"ORTHOASR_KERNEL_MASKS must be 0 or 1, got {_kernel_masks!r}")
_kernel_masks = _kernel_masks == "1"


def set_kernel_masks(on: bool) -> None:
    """Whether the torch backend draws the encoder's residual-step dropout masks as the
    Triton kernels do (Philox from a device seed, `kernels/residual_step.py`) rather than
    from torch's generator (the default; env ORTHOASR_KERNEL_MASKS=1 turns it on). Both
    backends then drop the same elements and draw from the generator alike, so their
    training curves differ by rounding alone. The masks come from a Triton kernel: CUDA
    tensors, or CPU tensors with TRITON_INTERPRET=1."""
    global _kernel_masks
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    _kernel_masks = on


def kernel_masks() -> bool:
    return _kernel_masks


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True if the Triton kernels should run on these tensors."""
    if _backend == "torch":
        return False
    if all(t.is_cuda for t in tensors):
        return True
    on_cpu = not any(t.is_cuda for t in tensors)
    if on_cpu and interpreting() and not _bf16_on_cpu(tensors):
        return True
    if _backend == "triton":
        reason = ("the interpreter computes bfloat16 wrong (silently), so CPU tensors under "
                  "TRITON_INTERPRET=1 must not be bfloat16 or under a bfloat16 autocast"
                  if on_cpu and interpreting() else
                  "it needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        raise RuntimeError(f"backend 'triton' cannot run here: {reason}; use 'torch' or "
                           "'auto' (set_backend, or backend= in a run config)")
    return False


def _bf16_on_cpu(tensors) -> bool:
    """bfloat16 tensors, or a bfloat16 autocast on the CPU (its kernels would compute in it)."""
    return (any(t.dtype == torch.bfloat16 for t in tensors)
            or (torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16))
