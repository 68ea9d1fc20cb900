"""Gated feed-forward module (docs/design.md §2, §6)."""

from __future__ import annotations

import torch
from torch import nn

from orthoasr.kernels.gated_ffn import gated_ffn, gated_ffn_reference

from ..checks import check_number
from .common import (
    check_module_inputs,
    check_residual_step,
    compute_dtype,
    torch_residual_step,
    triton_runs,
)


class GatedFeedForward(nn.Module):
    """Pre-LN feed-forward with gated hidden-channel chunks (docs/design.md §2).

    y = W2 · (g_chunk ⊙ SiLU(W1·LN(x) + b1)) + b2, zero at padded frames.

    Parameters (plain names, sliced by subnet export):
      norm: LayerNorm(d_model) -> norm.weight, norm.bias (d each, shared)
      linear1: Linear(d_model, ff_dim) -> W1 (ff_dim, d_model), b1 (ff_dim,)
      linear2: Linear(ff_dim, d_model) -> W2 (d_model, ff_dim), b2 (d_model,) (shared)
    Chunk c (c = 0..chunks-1) owns hidden channels [c*f, (c+1)*f), f = ff_dim // chunks:
    rows [c*f, (c+1)*f) of linear1.weight and linear1.bias, columns [c*f, (c+1)*f) of
    linear2.weight.

    granularity="component": gates (chunks,) scale each chunk; b2 is added iff any gate != 0.
    granularity="module": gates (1,) scales the whole output, b2 included.
    A gate that is exactly 0 and does not require grad skips its chunk's work on the device
    (no host sync); all gates 0 gives exactly 0. Dropout (training) applies to the output.
    Autocast: the output is in the autocast dtype. The Triton path's LayerNorm reads x in
    its own dtype and writes the autocast dtype (the gradient of x comes back in x's dtype,
    no cast either way); its matmuls read copies of W1 and W2 in the autocast dtype (made
    per call, or handed in as `operands`), and weight grads come out in fp32. The reference
    casts x first.
    """

    def __init__(self, d_model: int, ff_dim: int, chunks: int = 4, dropout: float = 0.0,
                 granularity: str = "component") -> None:
        super().__init__()
        check_number("d_model", d_model, least=1, integer=True)
        check_number("ff_dim", ff_dim, least=1, integer=True)
        check_number("chunks", chunks, least=1, most=ff_dim, integer=True)
        if ff_dim % chunks:
            raise ValueError(f"ff_dim ({ff_dim}) must be divisible by chunks ({chunks})")
        if granularity not in ("component", "module"):
            raise ValueError(f"granularity must be 'component' or 'module', got {granularity!r}")
        check_number("dropout", dropout, least=0, below=1)
        self.d_model, self.ff_dim, self.chunks = d_model, ff_dim, chunks
        self.granularity = granularity
        self.norm = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    @property
    def num_gates(self) -> int:
        return self.chunks if self.granularity == "component" else 1

    @property
    def dropout_rate(self) -> float:
        return self.dropout.p

    @property
    def matmul_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights whose compute-dtype copies `forward(operands=...)` takes, in order."""
        return self.linear1.weight, self.linear2.weight

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                gates: torch.Tensor | None = None, operands=None,
                dropout: bool = True, ungated_batch: int = 0, residual=None, normed=None):
        """x: (B, T, d_model), lengths: (B,), gates: (num_gates,) or None -> (B, T, d_model).
        operands: `matmul_weights` in the compute dtype (ConformerSupernet.run_blocks makes
        them all at once; the torch backend ignores them), or None: the op casts them.
        dropout=False leaves the output's dropout (rate `dropout_rate`) to the caller.
        ungated_batch: the first sequences run as if gates were None, the rest with `gates`
        (a batch holding the supernet's pass and a subnet's, ConformerSupernet.encode_pair).
        residual: (y, seed, scale, p), the residual step of the module before (y its output
        before dropout; seed for the Triton kernels' mask, None when p is 0), or None: the
        input is then x + scale * dropout(y, p), and the call returns (that, the output).
        normed: inference on the Triton backend only: `norm` of x, (B, T, d_model) in the
        compute dtype, made by the caller in its own pass (a block's final norm makes the
        next block's: MaskedLayerNorm's next_norm); the kernels then skip their LayerNorm."""
        params = [self.norm.weight, self.norm.bias, self.linear1.weight, self.linear1.bias,
                  self.linear2.weight, self.linear2.bias]
        check_module_inputs(x, lengths, gates, self.d_model, self.num_gates, params,
                            ungated_batch=ungated_batch)
        check_residual_step(x, residual)
        dtype = compute_dtype(x)
        module_gate = self.granularity == "module"
        triton = triton_runs(x, lengths, gates)
        if normed is not None and not triton:
            raise ValueError("GatedFeedForward: normed needs the Triton backend")
        if triton:   # x as it is: the kernels' LayerNorm casts it
            out = gated_ffn(x, lengths, *params, gates, self.chunks, module_gate, dtype,
                            operands, ungated_batch, residual, normed)
            x, y = out if residual is not None else (x, out)
        else:
            if residual is not None:
                x = torch_residual_step(x, residual)
            y = gated_ffn_reference(x.to(dtype), lengths, *[p.to(dtype) for p in params],
                                    gates, module_gate, ungated_batch=ungated_batch)
        y = self.dropout(y) if dropout else y
        return y if residual is None else (x, y)
