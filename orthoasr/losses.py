"""`orthoasr.ctc_loss`: torch.nn.functional.ctc_loss's contract, on the Triton kernel where
orthoasr.backend allows it (every length read on the device: no host sync), on PyTorch's
own CTC otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orthoasr.kernels.ctc import ctc_loss as ctc_loss_triton

from .backend import use_triton


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False
             ) -> torch.Tensor:
    """log_probs (T, B, V) log-softmax outputs; targets (B, S) padded or concatenated;
    input_lengths, target_lengths (B,) tensors or sequences -> the loss, reduced as
    F.ctc_loss reduces it ("mean": each loss over its target length, then the batch mean)."""
    if isinstance(log_probs, torch.Tensor) and use_triton(log_probs):
        return ctc_loss_triton(log_probs, targets, input_lengths, target_lengths, blank,
                               reduction, zero_infinity)
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                      zero_infinity)
