"""Gated multi-head self-attention (docs/design.md §2, §6): the MHSA module of a Conformer block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from orthoasr.kernels.common import valid_mask
from orthoasr.kernels.gated_mhsa import gated_mhsa, gated_mhsa_reference
from orthoasr.kernels.layer_norm import masked_layer_norm, residual_layer_norm

from ..checks import check_number
from ..config import GRANULARITIES
from .common import (
    check_module_inputs,
    check_residual_step,
    compute_dtype,
    torch_residual_step,
    triton_runs,
)


class GatedMHSA(nn.Module):
    """out = sum_h g_h * Attn_h(LN(x)) W_o[:, head h]^T + b_o, the module's residual
    contribution (before the block adds it). No positional encoding here (the model adds it).

    x: (B, T, D), lengths: (B,) int, gates: (num_heads,) for granularity "component" (one
    gate per head; b_o is added iff any gate != 0, decided on the device) or (1,) for
    "module" (scales the whole output, b_o included); None = all ones. Keys at
    t >= lengths[b] are masked; outputs at padded frames are b_o (finite). A head whose gate
    is exactly 0 costs nothing on the Triton backend and its gate gets gradient 0; all gates
    0 gives exactly 0. Dropout (training only) is applied to the module output.

    Parameters (d = d_model, H = num_heads, Dh = d / H), exactly what orthoasr.units counts
    (per head 4*d*Dh + 3*Dh, shared 3d = LN 2d + b_o d):
      norm.weight, norm.bias        (d,)      pre-LayerNorm
      in_proj_weight                (3d, d)   head-major: rows [h*3*Dh, (h+1)*3*Dh) belong to
                                              head h, as q rows h*3*Dh + [0, Dh), k rows
                                              + [Dh, 2Dh), v rows + [2Dh, 3Dh); i.e. the view
                                              (H, 3, Dh, d)
      in_proj_bias                  (3d,)     same layout, view (H, 3, Dh)
      out_proj_weight               (d, d)    out = a @ W_o^T; columns [h*Dh, (h+1)*Dh) of
                                              head h
      out_proj_bias                 (d,)      b_o
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0,
                 granularity: str = "component"):
        super().__init__()
        check_number("d_model", d_model, least=1, integer=True)
        check_number("num_heads", num_heads, least=1, integer=True)
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        check_number("dropout", dropout, least=0, below=1)
        self.d_model, self.num_heads = d_model, num_heads
        self.head_dim = d_model // num_heads
        self.dropout, self.granularity = dropout, granularity
        self.norm = nn.LayerNorm(d_model)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj_weight = nn.Parameter(torch.empty(d_model, d_model))
        self.out_proj_bias = nn.Parameter(torch.zeros(d_model))
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.kaiming_uniform_(self.out_proj_weight, a=math.sqrt(5))
        # gates=None on the Triton backend: all heads on, without a fill launch per call
        self.register_buffer("_all_on", torch.ones(num_heads), persistent=False)

    @property
    def num_gates(self) -> int:
        return self.num_heads if self.granularity == "component" else 1

    @property
    def matmul_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights whose compute-dtype copies `forward(operands=...)` takes, in order."""
        return self.in_proj_weight, self.out_proj_weight

    @property
    def dropout_rate(self) -> float:
        return self.dropout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor | None = None,
                validate: bool = False, operands=None, dropout: bool = True,
                ungated_batch: int = 0, residual=None):
        """x: (B, T, D), lengths: (B,), gates: (num_gates,) or None -> (B, T, D).

        validate=True also checks 0 <= lengths <= T for CUDA tensors (a host sync); CPU
        lengths are always checked. operands: `matmul_weights` in the compute dtype
        (ConformerSupernet.run_blocks makes them all at once; the torch backend ignores
        them), or None: the op casts them. dropout=False leaves the output's dropout (rate
        `dropout_rate`) to the caller.
        ungated_batch: the first sequences run as if gates were None, the rest with `gates`
        (a batch holding the supernet's pass and a subnet's, ConformerSupernet.encode_pair).
        residual: (y, seed, scale, p), the residual step of the module before, or None: the
        input is then x + scale * dropout(y, p) (made by the LayerNorm's kernels on the
        Triton backend), and the call returns (that, the output)."""
        check_module_inputs(x, lengths, gates, self.d_model, self.num_gates,
                            list(self.parameters()), validate, ungated_batch)
        check_residual_step(x, residual)
        lengths = lengths.contiguous()     # the attention kernel reads lengths[b] at b
        weights = (self.in_proj_weight, self.in_proj_bias, self.out_proj_weight,
                   self.out_proj_bias)
        if triton_runs(x, lengths, gates):
            # the matmuls run in the compute dtype (bf16 under autocast): the LayerNorm
            # kernel writes y in it (one pass, no cast of an fp32 y; zeros at padded frames)
            compute = compute_dtype(x)
            if residual is None:
                y = masked_layer_norm(x, lengths, self.norm.weight, self.norm.bias, compute)
            else:
                x, y = residual_layer_norm(x, *residual, lengths, self.norm.weight,
                                           self.norm.bias, compute)
            out = gated_mhsa(y, lengths, gates, *weights, self.num_heads, self.granularity,
                             compute, all_on=self._all_on, operands=operands,
                             ungated_batch=ungated_batch)
        else:
            if residual is not None:
                x = torch_residual_step(x, residual)
            # without autocast, everything in x's dtype whatever the parameters' (as the FFN
            # and conv modules do); under it, autocast's own rule (the norm in fp32)
            same = compute_dtype(x) == x.dtype
            norm = [p.to(x.dtype) if same else p for p in (self.norm.weight, self.norm.bias)]
            y = F.layer_norm(x, (self.d_model,), *norm, self.norm.eps)
            # zeros at padded frames, as the Triton LayerNorm writes them: a NaN or inf there
            # would reach valid frames through the masked keys' values (0 * NaN in probs @ v)
            y = torch.where(valid_mask(lengths, x.shape[1])[..., None], y, 0.0)
            out = gated_mhsa_reference(y, lengths, gates,
                                       *[w.to(x.dtype) if same else w for w in weights],
                                       self.num_heads, self.granularity, ungated_batch)
        if dropout and self.training and self.dropout > 0:
            out = F.dropout(out, self.dropout, True)
        return out if residual is None else (x, out)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"granularity={self.granularity!r}")
