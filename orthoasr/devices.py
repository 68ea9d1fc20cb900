"""Which device a run uses: `device=auto` picks the GPU when there is one."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (or a torch.device of those) as a torch.device;
    anything else, or a GPU this machine lacks, is a ValueError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or \
            (device.type == "cpu" and device.index not in (None, 0)):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
    return device
