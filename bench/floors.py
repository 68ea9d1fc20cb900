"""Dense floors for the gated modules and the encoder (issue 13): the same computation as
orthoasr.nn's modules for the units that are on, built from the best dense PyTorch ops
(cuBLAS `F.linear`, SDPA, cuDNN depthwise `conv1d`, `F.layer_norm`) with the live units'
weights sliced and cast to the compute dtype once, when the floor is built. What our kernels
must beat: no per-call gating, casting or indexing, only the work of the live units.

Each floor takes (x (B, T, D), lengths (B,)) and returns the module's residual contribution
(B, T, D); valid frames equal the gated module's output with hard gates (`check_floor`).
Padded frames: 0 for the FFN and conv floors, finite for MHSA.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from orthoasr.kernels.common import valid_mask
from orthoasr.model import HALF_STEP, ConformerSupernet, block_layout
from orthoasr.nn import GatedConvModule, GatedFeedForward, GatedMHSA


def _param(t: torch.Tensor, dtype) -> nn.Parameter:
    return nn.Parameter(t.detach().to(dtype).clone())


def _valid(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return valid_mask(lengths, T)[..., None]


class FFNFloor(nn.Module):
    """LN -> Linear(live channels) -> SiLU -> Linear -> zero padded frames."""

    def __init__(self, ffn: GatedFeedForward, live: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        keep = live.bool().repeat_interleave(ffn.ff_dim // ffn.chunks)
        self.on = bool(keep.any())
        self.norm = nn.LayerNorm(ffn.d_model).to(live.device)
        self.norm.load_state_dict(ffn.norm.state_dict())
        self.w1, self.b1 = _param(ffn.linear1.weight[keep], dtype), _param(ffn.linear1.bias[keep],
                                                                           dtype)
        self.w2, self.b2 = _param(ffn.linear2.weight[:, keep], dtype), _param(ffn.linear2.bias,
                                                                              dtype)

    def forward(self, x, lengths):
        if not self.on:
            return torch.zeros_like(x)
        h = F.silu(F.linear(self.norm(x).to(self.w1.dtype), self.w1, self.b1))
        return torch.where(_valid(lengths, x.shape[1]), F.linear(h, self.w2, self.b2), 0.0)


class ConvFloor(nn.Module):
    """LN -> Linear(2D) -> GLU -> zero padded frames -> depthwise conv1d -> LN -> SiLU ->
    Linear -> zero padded frames."""

    def __init__(self, conv: GatedConvModule, live: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.on, self.kernel_size = bool(live.bool().any()), conv.kernel_size
        self.norm, self.norm_conv = (nn.LayerNorm(conv.d_model).to(live.device)
                                     for _ in range(2))
        self.norm.load_state_dict(conv.norm.state_dict())
        self.norm_conv.load_state_dict(conv.norm_conv.state_dict())
        self.pw1_w, self.pw1_b = _param(conv.pointwise1.weight, dtype), \
            _param(conv.pointwise1.bias, dtype)
        self.dw_w = _param(conv.depthwise_weight[:, None, :], dtype)
        self.dw_b = _param(conv.depthwise_bias, dtype)
        self.pw2_w, self.pw2_b = _param(conv.pointwise2.weight, dtype), \
            _param(conv.pointwise2.bias, dtype)

    def forward(self, x, lengths):
        if not self.on:
            return torch.zeros_like(x)
        valid = _valid(lengths, x.shape[1])
        h = F.glu(F.linear(self.norm(x).to(self.pw1_w.dtype), self.pw1_w, self.pw1_b), dim=-1)
        h = torch.where(valid, h, 0.0).transpose(1, 2)
        h = F.conv1d(h, self.dw_w, self.dw_b, padding=self.kernel_size // 2,
                     groups=h.shape[1]).transpose(1, 2)
        h = F.silu(self.norm_conv(h)).to(self.pw2_w.dtype)
        return torch.where(valid, F.linear(h, self.pw2_w, self.pw2_b), 0.0)


class MHSAFloor(nn.Module):
    """LN -> Linear(live heads' q, k, v) -> SDPA (key padding mask, or none) -> Linear(live
    heads' columns of W_o)."""

    def __init__(self, mhsa: GatedMHSA, live: torch.Tensor, dtype: torch.dtype,
                 key_mask: bool = True):
        super().__init__()
        H, Dh, D = mhsa.num_heads, mhsa.head_dim, mhsa.d_model
        heads = live.bool()
        self.on, self.heads, self.head_dim, self.key_mask = bool(heads.any()), \
            int(heads.sum()), Dh, key_mask
        self.norm = nn.LayerNorm(D).to(live.device)
        self.norm.load_state_dict(mhsa.norm.state_dict())
        self.w_in = _param(mhsa.in_proj_weight.view(H, 3 * Dh, D)[heads].reshape(-1, D), dtype)
        self.b_in = _param(mhsa.in_proj_bias.view(H, 3 * Dh)[heads].reshape(-1), dtype)
        self.w_o = _param(mhsa.out_proj_weight.view(D, H, Dh)[:, heads].reshape(D, -1), dtype)
        self.b_o = _param(mhsa.out_proj_bias, dtype)

    def forward(self, x, lengths):
        if not self.on:
            return torch.zeros_like(x)
        B, T, _ = x.shape
        qkv = F.linear(self.norm(x).to(self.w_in.dtype), self.w_in, self.b_in)
        q, k, v = qkv.view(B, T, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        mask = None
        if self.key_mask:       # every query attends to the valid keys (at least one)
            mask = (torch.arange(T, device=x.device)[None, :] <
                    lengths.clamp(min=1)[:, None])[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.linear(a.transpose(1, 2).reshape(B, T, -1), self.w_o, self.b_o)


FLOORS = {GatedFeedForward: FFNFloor, GatedConvModule: ConvFloor, GatedMHSA: MHSAFloor}


def module_floor(module: nn.Module, live: torch.Tensor, dtype: torch.dtype) -> nn.Module:
    """The dense floor of a gated module for the hard gates `live` (one per unit)."""
    return FLOORS[type(module)](module, live, dtype)


def compiled_floor(floor: nn.Module) -> nn.Module:
    """torch.compile of a copy of `floor`, in the mode the targets compare with."""
    return torch.compile(copy.deepcopy(floor), mode="max-autotune-no-cudagraphs")


class EncoderFloor(nn.Module):
    """The supernet's blocks (no frontend, no output layer) under hard gates (N,), each
    module replaced by its floor: (x (B, T', D), lengths) -> (B, T', D)."""

    def __init__(self, model: ConformerSupernet, gates: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.layout = block_layout(model.cfg)
        per_block = gates.view(len(model.blocks), -1)
        self.blocks = nn.ModuleList()
        for block, block_gates in zip(model.blocks, per_block, strict=True):
            floors = nn.ModuleDict({kind: module_floor(block.modules_by_kind[kind],
                                                       block_gates[start:end], dtype)
                                    for kind, start, end in self.layout})
            floors["norm"] = nn.LayerNorm(model.cfg.d_model).to(gates.device)
            floors["norm"].load_state_dict(block.norm.state_dict())
            self.blocks.append(floors)

    def forward(self, x, lengths):
        for floors in self.blocks:
            for kind, _, _ in self.layout:
                x = x + HALF_STEP[kind] * floors[kind](x, lengths)
            x = floors["norm"](x)
        return x


def encode_gated(model: ConformerSupernet, x, lengths, gates, skip=frozenset()):
    """Our encoder under `gates`: the blocks of model.encode, without the output layer;
    `skip`: (layer, kind) of modules left out (model.dead_modules)."""
    return model.run_blocks(x, lengths, gates, skip)


def check_floor(ours, floor, x, lengths, atol: float, rtol: float) -> None:
    """Raise if the floor and our module differ on valid frames (the same work, or not)."""
    with torch.no_grad():
        a, b = ours(x, lengths), floor(x, lengths)
    valid = _valid(lengths, x.shape[1]).expand_as(a)
    torch.testing.assert_close(a[valid].float(), b[valid].float(), atol=atol, rtol=rtol)
