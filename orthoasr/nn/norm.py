"""LayerNorm over the valid frames of a padded batch (each Conformer block's final norm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orthoasr.kernels.common import valid_mask
from orthoasr.kernels.layer_norm import (
    final_norm_inference,
    layer_norm_fwd,
    masked_layer_norm,
    residual_layer_norm,
)

from .common import compute_dtype, torch_residual_step, triton_runs


class MaskedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (the same parameters and state-dict keys) with `forward(x, lengths)`:
    x (B, T, D) normalised over D at the valid frames t < lengths[b]; padded frames output
    exactly 0, on either backend. The output keeps x's dtype (fp32 under autocast, as
    nn.LayerNorm's). On the Triton backend one kernel each way (torch's LayerNorm forward
    and backward took three, 1.3 ms of the paper encoder's 19.8 ms on the H200).
    residual: (y, seed, scale, p), the residual step of the module before, or None: x +
    scale * dropout(y, p) is then normalised (on the Triton backend in the same kernels).
    twin: -> (output, its twin) for two consumers; on the Triton backend their gradients
    are added inside the backward kernel (kernels/layer_norm.py), elsewhere the same tensor
    comes twice.
    next_norm: inference on the Triton backend only (no grad): the LayerNorm that the next
    block's first module applies to the output -> (output, that norm of it in the compute
    dtype), one kernel for both. Without grad on the Triton backend, the residual step's
    sum is not written (nothing reads it again)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, residual=None,
                twin: bool = False, next_norm: nn.LayerNorm | None = None):
        triton = triton_runs(x, lengths, None)
        inference = triton and not twin and not torch.is_grad_enabled() and \
            not torch.compiler.is_compiling()
        if next_norm is not None and not inference:
            raise ValueError("MaskedLayerNorm: next_norm needs the Triton backend without "
                             "grad and without twin")
        if inference:
            return final_norm_inference(
                x, lengths, self.weight, self.bias, self.eps, residual,
                None if next_norm is None else (next_norm.weight, next_norm.bias,
                                                next_norm.eps), compute_dtype(x))
        if triton:
            if residual is not None:     # -> (x_new, normalised[, twin]): x_new unused
                out = residual_layer_norm(x, *residual, lengths, self.weight, self.bias,
                                          torch.result_type(x, residual[0]), self.eps, twin)
                return out[1:] if twin else out[1]
            return masked_layer_norm(x, lengths, self.weight, self.bias, x.dtype, self.eps,
                                     twin)
        if residual is not None:
            x = torch_residual_step(x, residual)
        y = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        y = torch.where(valid_mask(lengths, x.shape[1])[..., None], y, 0.0)
        return (y, y) if twin else y

    @torch.no_grad()
    def forward_into(self, x: torch.Tensor, lengths: torch.Tensor, out: torch.Tensor) -> None:
        """`forward(x, lengths)` written into `out` (B, T, D), without autograd: on the
        Triton backend by the kernel itself (no copy), elsewhere copied."""
        if triton_runs(x, lengths, None) and out.is_contiguous():
            B, T, D = x.shape
            layer_norm_fwd(x.reshape(B * T, D).contiguous(), self.weight, self.bias, lengths,
                           T, eps=self.eps, zero_padded=True, out=out.view(B * T, D))
        else:
            out.copy_(self.forward(x, lengths))
