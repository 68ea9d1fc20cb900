"""Gated convolution module (docs/design.md §2, §6)."""

from __future__ import annotations

import torch
from torch import nn

from orthoasr.kernels.gated_conv import gated_conv, gated_conv_reference

from ..checks import check_number
from .common import (
    check_module_inputs,
    check_residual_step,
    compute_dtype,
    torch_residual_step,
    triton_runs,
)


class GatedConvModule(nn.Module):
    """Conformer convolution module with one gate (docs/design.md §2).

    y = g · PW2(SiLU(LN2(DWConv(mask(GLU(PW1(LN1(x)))))))), zero at padded frames.

    Parameters (3d² + dK + 8d in all, the whole module is one unit):
      norm: LayerNorm(d) (pre-norm); pointwise1: Linear(d, 2d), GLU = first half of its output
      channels times sigmoid of the second half; depthwise: weight (d, K), bias (d,), same
      padding, frames t >= lengths[b] zeroed before it; norm_conv: LayerNorm(d) (in place of
      BatchNorm); pointwise2: Linear(d, d).
    gates (1,) scales the whole output, bias included; a gate exactly 0 that does not require
    grad skips all work on the device. Dropout (training) applies to the output.
    """

    def __init__(self, d_model: int, kernel_size: int = 31, dropout: float = 0.0) -> None:
        super().__init__()
        check_number("d_model", d_model, least=1, integer=True)
        check_number("kernel_size", kernel_size, least=1, integer=True)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        check_number("dropout", dropout, least=0, below=1)
        self.d_model, self.kernel_size = d_model, kernel_size
        self.norm = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise_weight = nn.Parameter(torch.empty(d_model, kernel_size))
        self.depthwise_bias = nn.Parameter(torch.empty(d_model))
        self.norm_conv = nn.LayerNorm(d_model)
        self.pointwise2 = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        bound = kernel_size ** -0.5  # nn.Conv1d's default init for groups=d_model
        nn.init.uniform_(self.depthwise_weight, -bound, bound)
        nn.init.uniform_(self.depthwise_bias, -bound, bound)

    @property
    def dropout_rate(self) -> float:
        return self.dropout.p

    @property
    def matmul_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights whose compute-dtype copies `forward(operands=...)` takes, in order."""
        return self.pointwise1.weight, self.pointwise2.weight

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                gates: torch.Tensor | None = None, operands=None,
                dropout: bool = True, ungated_batch: int = 0, residual=None):
        """x: (B, T, d_model), lengths: (B,), gates: (1,) or None -> (B, T, d_model).
        operands: `matmul_weights` in the compute dtype (ConformerSupernet.run_blocks makes
        them all at once; the torch backend ignores them), or None: the op casts them.
        dropout=False leaves the output's dropout (rate `dropout_rate`) to the caller.
        ungated_batch: the first sequences run as if gates were None, the rest with `gates`
        (a batch holding the supernet's pass and a subnet's, ConformerSupernet.encode_pair).
        residual: (y, seed, scale, p), the residual step of the module before, or None: the
        input is then x + scale * dropout(y, p), and the call returns (that, the output)."""
        params = [self.norm.weight, self.norm.bias, self.pointwise1.weight, self.pointwise1.bias,
                  self.depthwise_weight, self.depthwise_bias, self.norm_conv.weight,
                  self.norm_conv.bias, self.pointwise2.weight, self.pointwise2.bias]
        check_module_inputs(x, lengths, gates, self.d_model, 1, params,
                            ungated_batch=ungated_batch)
        check_residual_step(x, residual)
        dtype = compute_dtype(x)
        if triton_runs(x, lengths, gates):   # x as it is: the kernels' LayerNorm casts it
            out = gated_conv(x, lengths, *params, gates, dtype, operands, ungated_batch,
                             residual)
            x, y = out if residual is not None else (x, out)
        else:
            if residual is not None:
                x = torch_residual_step(x, residual)
            y = gated_conv_reference(x.to(dtype), lengths, *[p.to(dtype) for p in params],
                                     gates, ungated_batch=ungated_batch)
        y = self.dropout(y) if dropout else y
        return y if residual is None else (x, y)
