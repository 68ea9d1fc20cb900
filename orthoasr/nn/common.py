"""Input checks, dtype rules, the backend choice and the residual step shared by the gated
modules."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from ..backend import use_triton
from ..kernels.residual_step import check_step_inputs, keep_mask

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPES = TRITON_DTYPES + (torch.float64,)


def check_module_inputs(x, lengths, gates, d_model: int, num_gates: int,
                        params: list[torch.Tensor], validate: bool = False,
                        ungated_batch: int = 0) -> None:
    """ValueError/TypeError for bad module inputs, before any launch.

    The range 0 <= lengths <= T is checked for CPU lengths, and for CUDA lengths only with
    validate=True (reading them is a host sync); unchecked, a CUDA length above T counts as
    T and a negative one as 0.
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
    if (validate or lengths.device.type == "cpu") and B and \
            (int(lengths.min()) < 0 or int(lengths.max()) > T):
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
    if ungated_batch and (gates is None or not 0 < ungated_batch < B):
        raise ValueError(f"ungated_batch={ungated_batch} needs gates and fewer sequences than "
                         f"x's {B} (gates given: {gates is not None})")


def check_residual_step(x: torch.Tensor, residual) -> None:
    """ValueError/TypeError for a bad `residual=(y, seed, scale, p)` on either backend (the
    torch backend broadcast a y of another shape and took integer ys and p = 1)."""
    if residual is None:
        return
    if not isinstance(residual, (tuple, list)) or len(residual) != 4:
        got = f"{len(residual)} items" if isinstance(residual, (tuple, list)) else \
            type(residual).__name__
        raise ValueError(f"residual must be (y, seed, scale, p), got {got}")
    y, seed, scale, p = residual
    for name, value in (("scale", scale), ("dropout p", p)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"the residual step's {name} must be a number, got {value!r}")
    check_step_inputs(x, y, seed, p)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """x's dtype, or the autocast dtype when autocast is on for x's device."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _ResidualAdd(torch.autograd.Function):
    """x + s * y as one kernel, and in the backward y's gradient s * g made in y's dtype by one
    kernel. (Autograd's own add makes s * g in x's dtype, then casts it to y's: two kernels
    per FFN module, whose bf16 output joins the fp32 residual stream under autocast.)"""

    @staticmethod
    def forward(ctx, x, y, scale: float):
        ctx.scale, ctx.y_dtype = scale, y.dtype
        return torch.add(x, y, alpha=scale)

    @staticmethod
    def backward(ctx, grad):
        dx = grad if ctx.needs_input_grad[0] else None
        dy = None
        if ctx.needs_input_grad[1]:
            dy = torch.mul(grad, ctx.scale, out=grad.new_empty(grad.shape, dtype=ctx.y_dtype))
        return dx, dy, None


def residual_add(x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """x + scale * y (x the residual stream, y a module's output, maybe in a lower dtype)."""
    return _ResidualAdd.apply(x, y, scale)


def torch_residual_step(x: torch.Tensor, residual) -> torch.Tensor:
    """The torch backend's residual step: x + scale * dropout(y, p) for residual = (y, seed,
    scale, p). The dropout is torch's (its generator), or with a seed (the encoder draws
    them under `kernel_masks`) the mask the Triton kernels draw from it."""
    y, seed, scale, p = residual
    if p > 0 and seed is not None:
        y = torch.where(keep_mask(seed, y.shape, p), y / (1.0 - p), 0.0)
    elif p > 0:
        y = F.dropout(y, p)
    return residual_add(x, y, scale)


def triton_runs(x: torch.Tensor, lengths: torch.Tensor, gates: torch.Tensor | None) -> bool:
    """The one backend choice of the gated modules: the Triton kernels where
    orthoasr.backend allows them, the PyTorch references otherwise, for float64 and for an
    empty x (no frames: nothing to launch)."""
    tensors = (x, lengths) if gates is None else (x, lengths, gates)
    return x.dtype != torch.float64 and x.numel() > 0 and use_triton(*tensors)
