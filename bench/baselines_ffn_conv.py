"""Eager baselines for the gated FFN and conv modules, written the way the method's public
PyTorch code masks: every call builds gate-scaled copies of the weights (soft gates) or
boolean-indexed weight slices (hard gates, host syncs included), and computes dense.

Both return the same quantity as orthoasr.nn.GatedFeedForward / GatedConvModule (same
parameters), so the benchmark compares equal work. Deviation kept from our spec: the soft
gate scales W2's columns (the public code scales W1's rows, which gates before the SiLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _valid(lengths, T):
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None])[..., None]


def eager_ffn(ffn, x, lengths, gates=None, hard=False):
    """ffn: an orthoasr.nn.GatedFeedForward (component granularity); x (B, T, D)."""
    B, T, D = x.shape
    w1, b1 = ffn.linear1.weight, ffn.linear1.bias
    w2, b2 = ffn.linear2.weight, ffn.linear2.bias
    xn = F.layer_norm(x, (D,), ffn.norm.weight, ffn.norm.bias)
    if gates is None:
        y = F.linear(F.silu(F.linear(xn, w1, b1)), w2, b2)
    else:
        expanded = gates.repeat_interleave(ffn.ff_dim // ffn.chunks)
        if hard:
            keep = expanded != 0
            if not bool(keep.any()):          # host sync, as in the public code
                return torch.zeros_like(x)
            y = F.linear(F.silu(F.linear(xn, w1[keep], b1[keep])), w2[:, keep], b2)
        else:
            w2_gated = w2 * expanded[None, :]  # a gate-scaled weight copy on every call
            y = F.linear(F.silu(F.linear(xn, w1, b1)), w2_gated,
                         b2 * (gates != 0).any().to(b2.dtype))
    return torch.where(_valid(lengths, T), y, 0.0)


def eager_conv(conv, x, lengths, gates=None, hard=False):
    """conv: an orthoasr.nn.GatedConvModule; x (B, T, D)."""
    B, T, D = x.shape
    valid = _valid(lengths, T)
    if gates is not None and hard and not bool(gates[0] != 0):  # host sync
        return torch.zeros_like(x)
    pw2_w, pw2_b = conv.pointwise2.weight, conv.pointwise2.bias
    if gates is not None and not hard:
        pw2_w, pw2_b = pw2_w * gates[0], pw2_b * gates[0]   # gate-scaled copies per call
    h = F.layer_norm(x, (D,), conv.norm.weight, conv.norm.bias)
    h = F.glu(F.linear(h, conv.pointwise1.weight, conv.pointwise1.bias), dim=-1)
    h = h.masked_fill(~valid, 0.0).transpose(1, 2)
    h = F.conv1d(h, conv.depthwise_weight[:, None, :], conv.depthwise_bias,
                 padding=conv.kernel_size // 2, groups=D).transpose(1, 2)
    h = F.silu(F.layer_norm(h, (D,), conv.norm_conv.weight, conv.norm_conv.bias))
    y = F.linear(h, pw2_w, pw2_b)
    return torch.where(valid, y, 0.0)
