"""Prunable units of the supernet and their exact costs (docs/design.md §2, §4).

A block's units follow `cfg.module_order`; with component granularity a feed-forward module
has `ff_chunks` units (contiguous hidden-channel slices), MHSA has `num_heads` units and the
conv module one. Unit index u = layer * units_per_block + position in the block.

Costs of one block (d = d_model, f = ff_dim / ff_chunks, h = head_dim, K = conv_kernel, T =
frames after subsampling), FLOPs = 2 * MACs of matmuls and convolutions only:

    FFN chunk   params f*(2d + 1)          flops 4*T*d*f          shared: LN 2d, b2 d
    MHSA head   params 4*d*h + 3h          flops 8*T*d*h + 4*T^2*h  shared: LN 2d, b_o d
    conv module params 3d^2 + d*K + 8d     flops 6*T*d^2 + 2*T*d*K (owns everything)

Shared weights count once when any unit of their module is active; for the expected cost of
OrthoSoftmax they are spread evenly over the module's units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CRITERIA, SupernetConfig


@dataclass(frozen=True)
class Unit:
    """One prunable unit: `params` / `flops` are what only this unit owns or does."""

    layer: int
    module: str
    index: int
    params: int
    flops: int


@dataclass(frozen=True)
class ModuleCost:
    """Own cost of each unit of one module kind, and the module's shared cost."""

    num_units: int
    unit_params: int
    unit_flops: int
    shared_params: int


def module_cost(cfg: SupernetConfig, kind: str, frames: int) -> ModuleCost:
    d, T = cfg.d_model, frames
    if kind in ("ffn1", "ffn2"):
        f = cfg.chunk_dim
        parts = ModuleCost(cfg.ff_chunks, f * (2 * d + 1), 4 * T * d * f, 3 * d)
    elif kind == "mhsa":
        h = cfg.head_dim
        parts = ModuleCost(cfg.num_heads, 4 * d * h + 3 * h, 8 * T * d * h + 4 * T * T * h, 3 * d)
    elif kind == "conv":
        K = cfg.conv_kernel
        parts = ModuleCost(1, 3 * d * d + d * K + 8 * d, 6 * T * d * d + 2 * T * d * K, 0)
    else:
        raise ValueError(f"unknown module kind {kind!r}")
    if cfg.granularity == "module":  # one unit owns the whole module, shared weights included
        n = parts.num_units
        return ModuleCost(1, n * parts.unit_params + parts.shared_params, n * parts.unit_flops, 0)
    return parts


def units_per_block(cfg: SupernetConfig) -> int:
    return sum(module_cost(cfg, kind, 1).num_units for kind in cfg.module_order)


def enumerate_units(cfg: SupernetConfig, frames: int | None = None) -> list[Unit]:
    """All N = num_layers * units_per_block units in index order."""
    frames = _frames(cfg, frames)
    units = []
    for layer in range(cfg.num_layers):
        for kind in cfg.module_order:
            mc = module_cost(cfg, kind, frames)
            units += [Unit(layer, kind, i, mc.unit_params, mc.unit_flops)
                      for i in range(mc.num_units)]
    return units


def frontend_cost(cfg: SupernetConfig, frames: int) -> tuple[int, int]:
    """(params, flops) of the VGG frontend: two blocks of [conv3x3, ReLU, conv3x3, ReLU,
    maxpool 2x2] with channels `frontend_channels`, then Linear(c2 * mel/4 -> d_model).
    `frames` is the length after the 4x subsampling (input 4 * frames)."""
    c1, c2 = cfg.frontend_channels
    F, d, T_in = cfg.num_mel_bins, cfg.d_model, 4 * frames
    convs = [(1, c1, F * T_in), (c1, c1, F * T_in),
             (c1, c2, (F // 2) * (T_in // 2)), (c2, c2, (F // 2) * (T_in // 2))]
    params = sum(9 * cin * cout + cout for cin, cout, _ in convs) + c2 * (F // 4) * d + d
    flops = sum(2 * 9 * cin * cout * pixels for cin, cout, pixels in convs)
    flops += 2 * frames * c2 * (F // 4) * d
    return params, flops


def rest_cost(cfg: SupernetConfig, criterion: str, frames: int) -> int:
    """Cost outside the units: frontend, each block's final LayerNorm, one output layer."""
    front_params, front_flops = frontend_cost(cfg, frames)
    d, V = cfg.d_model, cfg.vocab_size
    if criterion == "params":
        return front_params + cfg.num_layers * 2 * d + d * V + V
    return front_flops + 2 * frames * d * V


def unit_costs(cfg: SupernetConfig, criterion: str | None = None,
               frames: int | None = None) -> tuple[torch.Tensor, float, float]:
    """Expected-cost table for OrthoSoftmax.

    Returns (costs[N] float64, rest, total): each unit's own cost plus an even share of its
    module's shared weights, the cost outside the units, and rest + sum(costs).
    """
    criterion = _criterion(cfg, criterion)
    frames = _frames(cfg, frames)
    costs = []
    for _layer in range(cfg.num_layers):
        for kind in cfg.module_order:
            mc = module_cost(cfg, kind, frames)
            if criterion == "params":
                cost = mc.unit_params + mc.shared_params / mc.num_units
            else:
                cost = mc.unit_flops
            costs += [float(cost)] * mc.num_units
    rest = float(rest_cost(cfg, criterion, frames))
    costs = torch.tensor(costs, dtype=torch.float64)
    return costs, rest, rest + float(costs.sum())


def subnet_cost(cfg: SupernetConfig, gates, criterion: str | None = None,
                frames: int | None = None) -> float:
    """Exact cost of the subnet whose units have nonzero `gates` (shape [N]; None: every
    unit on, as the supernet reads it).

    Shared module weights count once for every module with at least one active unit.
    """
    criterion = _criterion(cfg, criterion)
    frames = _frames(cfg, frames)
    n = cfg.num_layers * units_per_block(cfg)
    if gates is None:
        gates = torch.ones(n)
    try:
        gates = torch.as_tensor(gates).detach().reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"gates must be a tensor of {n} unit gates (or None), got "
                        f"{type(gates).__name__}") from None
    if gates.numel() != n:
        raise ValueError(f"gates must have {n} entries (one per unit), got {gates.numel()}")
    if gates.is_floating_point() and not bool(torch.isfinite(gates).all()):
        raise ValueError("gates contain NaN or inf: no subnet to cost")
    active = gates != 0
    total, u = rest_cost(cfg, criterion, frames), 0
    for _layer in range(cfg.num_layers):
        for kind in cfg.module_order:
            mc = module_cost(cfg, kind, frames)
            on = int(active[u:u + mc.num_units].sum())
            u += mc.num_units
            if criterion == "params":
                total += on * mc.unit_params + (mc.shared_params if on else 0)
            else:
                total += on * mc.unit_flops
    return float(total)


def _criterion(cfg: SupernetConfig, criterion: str | None) -> str:
    criterion = cfg.criterion if criterion is None else criterion
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    return criterion


def _frames(cfg: SupernetConfig, frames: int | None) -> int:
    frames = cfg.ref_frames if frames is None else frames
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    return frames
