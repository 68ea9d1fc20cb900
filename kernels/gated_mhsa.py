"""Gated MHSA around the attention core (DESIGN §2): in-projection, gated attention over the
active heads, out-projection, on pre-normalised input y = LN(x).

    qkv = y W_in^T + b_in            W_in (3d, d) head-major: view (H, 3, Dh, d)
    a_h = g_h Attn_h(q_h, k_h, v_h)   key padding by lengths (kernels/gated_attention.py)
    out = a W_o^T + s b_o            s = bias_scale (None: 1)

`gated_mhsa_reference` is the PyTorch version; `gated_mhsa` picks the backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gated_attention import gated_attention_packed_fwd, gated_attention_reference


def _out_bias(b_o, bias_scale):
    return b_o if bias_scale is None else b_o * bias_scale.to(b_o.dtype)


def gated_mhsa_reference(y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o,
                         num_heads: int):
    """y: (B, T, d) -> (B, T, d), plain PyTorch."""
    B, T, D = y.shape
    Dh = D // num_heads
    qkv = F.linear(y, w_in, b_in).view(B, T, num_heads, 3, Dh).permute(3, 0, 2, 1, 4)
    a = gated_attention_reference(qkv[0], qkv[1], qkv[2], lengths, head_gates, Dh ** -0.5)
    a = a.transpose(1, 2).reshape(B, T, D)
    return F.linear(a, w_o, _out_bias(b_o, bias_scale))


def gated_mhsa(y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o, num_heads: int):
    """Backend choice: Triton attention (projections by cuBLAS for now) or the reference."""
    from orthoasr.backend import use_triton

    if y.dtype == torch.float64 or not use_triton(y, lengths, head_gates):
        return gated_mhsa_reference(y, lengths, head_gates, bias_scale, w_in, b_in, w_o, b_o,
                                    num_heads)
    B, T, D = y.shape
    Dh = D // num_heads
    qkv = F.linear(y, w_in, b_in).view(B, T, num_heads, 3, Dh)
    a, _lse = gated_attention_packed_fwd(qkv, lengths, head_gates, Dh ** -0.5)
    return F.linear(a.view(B, T, D), w_o, _out_bias(b_o, bias_scale))
