"""What a training step minimises (docs/design.md §5): the selector that turns its scores
into soft masks for every budget, the CTC and distillation losses (sums divided by frames),
the auxiliary losses' scale s, and the check that every budget admits a subnet."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import SupernetConfig
from .kernels.common import valid_mask
from .losses import ctc_loss as orthoasr_ctc_loss
from .model import block_layout
from .ortho import PenaltyScale, ortho_softmax, simple_topk
from .run_config import RunConfig
from .units import subnet_cost, unit_costs


class SubnetSelector(nn.Module):
    """The selector's scores and the penalty scale: soft masks for every budget. `selector`
    "orthosoftmax": scores S (N, N), OrthoSoftmax (its masks clamped to <= 1 with
    `clamp_masks`); "simple_topk": scores s (N,), the predecessor's successive softmaxes (no
    penalty; their masks never exceed 1)."""

    def __init__(self, cfg: SupernetConfig, run: RunConfig):
        super().__init__()
        costs, self.rest_cost, self.total_cost = unit_costs(cfg, cfg.criterion)
        self.register_buffer("costs", costs.float())
        n = costs.shape[0]
        self.kind = run.selector
        shape = (n, n) if self.kind == "orthosoftmax" else (n,)
        self.scores = nn.Parameter(torch.randn(shape) * run.score_init_std)
        self.penalty_scale = PenaltyScale(run.penalty_mode, run.penalty_scale,
                                          run.penalty_warmup, run.penalty_rho)
        self.budgets, self.norm, self.clamp_masks = cfg.budgets, run.penalty_norm, \
            run.clamp_masks

    def forward(self, tau: torch.Tensor):
        """tau: 0-d device tensor -> OrthoSoftmaxResult (.probs, .masks (M, N), .penalty)."""
        if self.kind == "simple_topk":
            return simple_topk(self.scores, self.costs, self.rest_cost, self.total_cost,
                               self.budgets, tau, validate=False)
        out = ortho_softmax(self.scores, self.costs, self.rest_cost, self.total_cost,
                            self.budgets, tau, self.norm, validate=False)
        return out._replace(masks=out.masks.clamp(max=1.0)) if self.clamp_masks else out


def check_feasible_budgets(cfg: SupernetConfig) -> None:
    """Every budget must admit a subnet of at least one unit (exact cost, cfg.criterion)."""
    _, rest, total = unit_costs(cfg, cfg.criterion)
    n = cfg.num_layers * sum(end - start for _, start, end in block_layout(cfg))
    cheapest = rest
    if n:
        cheapest = min(subnet_cost(cfg, torch.eye(n)[u], cfg.criterion)
                       for _, u, _ in block_layout(cfg))
    smallest = cheapest / total
    for budget in cfg.budgets:
        if budget * total < cheapest:
            raise ValueError(
                f"budget {budget} is infeasible for criterion {cfg.criterion!r}: the cheapest "
                f"subnet with one unit costs {smallest:.4f} of the supernet (the frontend, "
                f"norms and output layer alone {rest / total:.4f}); the smallest feasible "
                f"budget is {math.ceil(smallest * 1e4) / 1e4:.4f}")


def ctc_loss(log_probs, out_lengths, targets, target_lengths, frames=None) -> torch.Tensor:
    """CTC (blank 0), summed over the batch and divided by `frames` (default: the batch's
    number of frames). Lengths on log_probs' device: on the Triton backend (orthoasr's CTC)
    they are read there, with no host sync, so that a step can be captured in a CUDA graph;
    torch's CUDA CTC copies them to the host."""
    loss = orthoasr_ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths,
                             blank=0, reduction="sum", zero_infinity=True)
    return loss / (out_lengths.sum().clamp(min=1) if frames is None else frames)


def distill_loss(log_probs, teacher_log_probs, lengths, frames=None) -> torch.Tensor:
    """KL(teacher || student) per frame, summed over the frames within `lengths` (B,) and
    divided by `frames` (default: their number), as `ctc_loss` divides; the teacher's
    log-probabilities are detached."""
    teacher = teacher_log_probs.detach().float()
    kl = (teacher.exp() * (teacher - log_probs.float())).sum(-1)          # (B, T)
    valid = valid_mask(lengths.to(kl.device), kl.shape[1])
    total = (kl * valid).sum()
    return total / (valid.sum().clamp(min=1) if frames is None else frames)


def aux_scale(run: RunConfig, loss: torch.Tensor) -> torch.Tensor | float:
    """s: constant, or focal 1 - exp(-L) (treated as a constant in the backward)."""
    if run.aux_scale == "focal":
        return 1.0 - torch.exp(-loss.detach())
    return run.aux_value
