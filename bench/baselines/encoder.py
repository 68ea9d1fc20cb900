"""The supernet's encoder blocks computed the way the method's public PyTorch code masks:
soft gates multiplied into copies of the weights on every call, hard subnets by boolean
indexing of weight slices (host syncs included), then dense PyTorch ops. The same weights and
the same quantity as orthoasr.model's blocks (`bench/e2e.py --check` compares them); the
module order, residual scales and final LayerNorm are ConformerBlock's.

FFN and conv: bench/baselines_ffn_conv.py's eager_ffn / eager_conv. MHSA: eager_mhsa below
(also bench/bench_mhsa.py's baseline), gating what orthoasr gates: the head outputs, and b_o
while any head is on. bench_mhsa's earlier baseline also scaled q, k and v, a different
quantity under soft gates (scores scaled by g²).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.baselines_ffn_conv import eager_conv, eager_ffn
from orthoasr.model import HALF_STEP, ConformerSupernet, block_layout
from orthoasr.nn import GatedMHSA


def eager_mhsa(m: GatedMHSA, x, lengths, gates=None, hard=False):
    """m: a GatedMHSA (component granularity); x (B, T, D) -> (B, T, D). Soft gates scale a
    copy of W_o's head columns; hard gates keep the live heads' rows of W_in and columns of
    W_o by boolean indexing (a host sync). Masked softmax over the valid keys."""
    B, T, D = x.shape
    H, Dh = m.num_heads, m.head_dim
    w_in, b_in = m.in_proj_weight.view(H, 3 * Dh, D), m.in_proj_bias.view(H, 3 * Dh)
    w_o, b_o = m.out_proj_weight.view(D, H, Dh), m.out_proj_bias
    if gates is not None and hard:
        heads = gates != 0
        if not bool(heads.any()):           # host sync, as in the public code
            return torch.zeros_like(x)
        w_in, b_in, w_o = w_in[heads], b_in[heads], w_o[:, heads]
        H = w_in.shape[0]
    elif gates is not None:
        w_o = w_o * gates[None, :, None]    # a gate-scaled weight copy on every call
        b_o = b_o * (gates != 0).any().to(b_o.dtype)
    y = F.layer_norm(x, (D,), m.norm.weight, m.norm.bias)
    qkv = F.linear(y, w_in.reshape(-1, D), b_in.reshape(-1))
    q, k, v = qkv.view(B, T, H, 3, Dh).permute(3, 0, 2, 1, 4)
    padded = (torch.arange(T, device=x.device)[None, :] >= lengths[:, None])[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(Dh)
    scores = scores.masked_fill(padded, torch.finfo(scores.dtype).min)
    attn = torch.softmax(scores, dim=-1).masked_fill(padded, 0.0)
    a = (attn @ v).transpose(1, 2).reshape(B, T, H * Dh)
    return F.linear(a, w_o.reshape(D, H * Dh), b_o)


EAGER = {"ffn1": eager_ffn, "ffn2": eager_ffn, "conv": eager_conv, "mhsa": eager_mhsa}


class EagerEncoder(nn.Module):
    """`EagerEncoder(model)(x (B, T', D), lengths, gates (N,) or None, hard)` -> (B, T', D):
    model's blocks (no frontend, no output layer) under gates, sharing model's weights.
    Valid frames equal orthoasr's (padded frames differ: ours leaves b_o there after MHSA)."""

    def __init__(self, model: ConformerSupernet):
        super().__init__()
        self.blocks = model.blocks
        self.layout = block_layout(model.cfg)

    def forward(self, x, lengths, gates=None, hard: bool = False):
        per_block = None if gates is None else gates.view(len(self.blocks), -1)
        for layer, block in enumerate(self.blocks):
            for kind, start, end in self.layout:
                g = None if per_block is None else per_block[layer, start:end]
                x = x + HALF_STEP[kind] * EAGER[kind](block.modules_by_kind[kind], x, lengths,
                                                      g, hard)
            x = F.layer_norm(x, x.shape[-1:], block.norm.weight, block.norm.bias)
        return x
