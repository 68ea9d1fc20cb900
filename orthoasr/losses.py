"""`orthoasr.ctc_loss`: torch.nn.functional.ctc_loss's contract, on the Triton kernel where
orthoasr.backend allows it (every length read on the device: no host sync), on PyTorch's
own CTC otherwise."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from orthoasr.kernels.ctc import ctc_loss as ctc_loss_triton

from .backend import use_triton


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False
             ) -> torch.Tensor:
    """log_probs (T, B, V) log-softmax outputs; targets (B, S) padded or concatenated;
    input_lengths, target_lengths (B,) tensors or sequences -> the loss, reduced as
    F.ctc_loss reduces it ("mean": each loss over its target length, then the batch mean).
    Targets on the CPU with lengths on the host are checked to be labels in [0, V) other
    than the blank (where each target's length reaches)."""
    check_ctc_inputs(log_probs, targets, target_lengths, blank)
    if use_triton(log_probs):
        return ctc_loss_triton(log_probs, targets, input_lengths, target_lengths, blank,
                               reduction, zero_infinity)
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                      zero_infinity)


def check_ctc_inputs(log_probs, targets, target_lengths, blank) -> None:
    """TypeError/ValueError for what both backends would take without a word or fail on
    inside: non-float log_probs, no frames, a blank that is not an int, float targets
    (truncated), and, read only where targets and their lengths are on the host, labels
    outside [0, V) (read out of bounds) or equal to the blank."""
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3:
        raise ValueError(f"log_probs must be a (T, B, V) tensor, got "
                         f"{getattr(log_probs, 'shape', type(log_probs).__name__)}")
    if not log_probs.is_floating_point():
        raise TypeError(f"log_probs must be floating point, got {log_probs.dtype}")
    T, B, V = log_probs.shape
    if T == 0:
        raise ValueError(f"log_probs has no frames (T=0, shape {tuple(log_probs.shape)})")
    if isinstance(blank, bool) or not isinstance(blank, numbers.Integral):
        raise TypeError(f"blank must be an int, got {blank!r}")
    if not isinstance(targets, torch.Tensor):
        return                       # F.ctc_loss refuses it; the Triton path converts it
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer labels, got {targets.dtype}")
    if targets.device.type != "cpu" or targets.dim() not in (1, 2) or (
            isinstance(target_lengths, torch.Tensor) and target_lengths.device.type != "cpu"):
        return                       # reading them would sync (or they are not there)
    lengths = torch.as_tensor(target_lengths)
    if lengths.shape != (B,) or lengths.is_floating_point() or lengths.is_complex():
        return                       # the backends name it
    if targets.dim() == 2:
        within = torch.arange(targets.shape[1])[None, :] < lengths[:, None]
        labels = targets[within] if targets.shape[0] == B else targets[:0]
    else:
        labels = targets[:max(int(lengths.sum()), 0)]
    bad = (labels < 0) | (labels >= V) | (labels == blank)
    if bool(bad.any()):
        raise ValueError(f"targets must be labels in [0, V={V}) other than the blank "
                         f"({blank}) within their target_lengths, got {int(labels[bad][0])}")
