"""Which implementation runs an op: the Triton kernels or the PyTorch references.

`auto` (the default, or env ORTHOASR_BACKEND) picks Triton for CUDA tensors and for CPU
tensors when TRITON_INTERPRET=1, and PyTorch otherwise.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")
_backend = os.environ.get("ORTHOASR_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"ORTHOASR_BACKEND must be one of {BACKENDS}, got {_backend!r}")


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
    on_cuda = all(t.is_cuda for t in tensors)
    runnable = on_cuda or (interpreting() and not any(t.is_cuda for t in tensors))
    if _backend == "triton" and not runnable:
        raise RuntimeError("backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 for CPU "
                           "tensors; use set_backend('torch') or 'auto'")
    return runnable
