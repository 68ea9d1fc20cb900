"""Gated feed-forward module (DESIGN §2, §6)."""

from __future__ import annotations

import torch
from torch import nn

from orthoasr.kernels.gated_ffn import gated_ffn, gated_ffn_reference

from ..backend import use_triton

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPES = TRITON_DTYPES + (torch.float64,)


def check_module_inputs(x, lengths, gates, d_model: int, num_gates: int,
                        params: list[torch.Tensor]) -> None:
    """ValueError/TypeError for bad module inputs, before any launch and without host sync.

    The range 0 <= lengths <= T is checked only for CPU lengths (reading CUDA values would
    sync); on CUDA a length above T counts as T and a negative one as 0.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, T, {d_model}) tensor, got {shape}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    B, T, _ = x.shape
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be a tensor, got {type(lengths).__name__}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths must be int32 or int64, got {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    if lengths.device != x.device:
        raise ValueError(f"lengths is on {lengths.device} but x is on {x.device}")
    if lengths.device.type == "cpu" and B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must be in [0, T={T}], got min {int(lengths.min())}, "
                         f"max {int(lengths.max())}")
    if gates is not None:
        if not isinstance(gates, torch.Tensor):
            raise TypeError(f"gates must be a tensor or None, got {type(gates).__name__}")
        if not gates.is_floating_point():
            raise TypeError(f"gates must be floating point, got {gates.dtype}")
        if gates.dim() != 1 or gates.shape[0] != num_gates:
            raise ValueError(f"gates must have shape ({num_gates},), got {tuple(gates.shape)}")
        if gates.device != x.device:
            raise ValueError(f"gates is on {gates.device} but x is on {x.device}")
    for p in params:
        if p.device != x.device:
            raise ValueError(f"module parameters are on {p.device} but x is on {x.device}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """x's dtype, or the autocast dtype when autocast is on for x's device."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(dev)
    return x.dtype


class GatedFeedForward(nn.Module):
    """Pre-LN feed-forward with gated hidden-channel chunks (DESIGN §2).

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
    Autocast: x is cast to the autocast dtype; the Triton kernels read the weights in their
    own dtype (fp32 masters) and cast tiles in registers, so weight grads come out in it.
    """

    def __init__(self, d_model: int, ff_dim: int, chunks: int = 4, dropout: float = 0.0,
                 granularity: str = "component") -> None:
        super().__init__()
        if ff_dim % chunks:
            raise ValueError(f"ff_dim ({ff_dim}) must be divisible by chunks ({chunks})")
        if granularity not in ("component", "module"):
            raise ValueError(f"granularity must be 'component' or 'module', got {granularity!r}")
        self.d_model, self.ff_dim, self.chunks = d_model, ff_dim, chunks
        self.granularity = granularity
        self.norm = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    @property
    def num_gates(self) -> int:
        return self.chunks if self.granularity == "component" else 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                gates: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d_model), lengths: (B,), gates: (num_gates,) or None -> (B, T, d_model)."""
        params = [self.norm.weight, self.norm.bias, self.linear1.weight, self.linear1.bias,
                  self.linear2.weight, self.linear2.bias]
        check_module_inputs(x, lengths, gates, self.d_model, self.num_gates, params)
        dtype = compute_dtype(x)
        x = x.to(dtype)
        module_gate = self.granularity == "module"
        if dtype != torch.float64 and use_triton(x, lengths):
            # the kernels read the weights in their own dtype and cast in registers
            y = gated_ffn(x, lengths, *params, gates, self.chunks, module_gate)
        else:
            y = gated_ffn_reference(x, lengths, *[p.to(dtype) for p in params], gates,
                                    module_gate)
        return self.dropout(y)
