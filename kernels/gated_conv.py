"""Gated convolution module (DESIGN §2, §6):
y = g · PW2(SiLU(LN2(DWConv(mask(GLU(PW1(LN1(x))))))))

Reference placeholder; the Triton kernels follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gated_ffn import valid_mask


def gated_conv_reference(x: torch.Tensor, lengths: torch.Tensor, ln1_weight: torch.Tensor,
                         ln1_bias: torch.Tensor, pw1_weight: torch.Tensor,
                         pw1_bias: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor,
                         ln2_weight: torch.Tensor, ln2_bias: torch.Tensor,
                         pw2_weight: torch.Tensor, pw2_bias: torch.Tensor,
                         gates: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch gated conv module in the dtype of x.

    x: (B, T, D), lengths: (B,), pw1_weight: (2D, D), pw1_bias: (2D,), dw_weight: (D, K),
    dw_bias: (D,), pw2_weight: (D, D), pw2_bias: (D,), gates: None or (1,).
    GLU: first half of PW1's channels times sigmoid of the second half. Frames t >= lengths[b]
    are zeroed before the depthwise conv (same padding, K odd) and output exactly 0.
    """
    B, T, D = x.shape
    mask = valid_mask(lengths, T)[..., None]
    u = F.linear(F.layer_norm(x, (D,), ln1_weight, ln1_bias, eps), pw1_weight, pw1_bias)
    v = torch.where(mask, F.glu(u, dim=-1), 0.0)
    K = dw_weight.shape[1]
    w = F.conv1d(v.transpose(1, 2), dw_weight[:, None, :], dw_bias, padding=K // 2, groups=D)
    r = F.silu(F.layer_norm(w.transpose(1, 2), (D,), ln2_weight, ln2_bias, eps))
    y = F.linear(r, pw2_weight, pw2_bias)
    if gates is not None:
        y = y * gates.to(y.dtype)
    return torch.where(mask, y, 0.0)


def gated_conv(x, lengths, *params_and_gates, eps=1e-5):
    """Temporary: the Triton path is being written; runs the reference."""
    return gated_conv_reference(x, lengths, *params_and_gates, eps=eps)
