"""The optimiser of a training run and its learning-rate schedule: AdamW over the model's
and the selector's parameters, linear warm-up then cosine decay, with learning rates held
in device tensors when a step is replayed from a CUDA graph."""

from __future__ import annotations

import math

import torch
from torch import nn

from .run_config import RunConfig


def lr_factor(step: int, run: RunConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `lr_final` at the last step."""
    if step < run.warmup_steps:
        return (step + 1) / run.warmup_steps
    progress = min(1.0, (step - run.warmup_steps) / max(1, run.total_steps - run.warmup_steps))
    return run.lr_final + (1.0 - run.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, selector: nn.Module, run: RunConfig, device,
                   capturable: bool = False):
    """AdamW; weight decay on matrices and conv kernels only, none on the scores. With
    `capturable` (CUDA graphs) each group's learning rate is a device tensor that
    `set_learning_rates` refills before each step, so a captured step reads the new one."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": run.weight_decay, "base_lr": run.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": run.lr},
              {"params": list(selector.parameters()), "weight_decay": 0.0,
               "base_lr": run.score_lr}]
    for group in groups:
        group["lr"] = torch.tensor(group["base_lr"], device=device) if capturable \
            else group["base_lr"]
    return torch.optim.AdamW(groups, lr=run.lr, betas=run.betas, capturable=capturable,
                             fused=device.type == "cuda")


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its base_lr * factor (in place where lr is a tensor)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(group["base_lr"] * factor)
        else:
            group["lr"] = group["base_lr"] * factor


def apply_schedule(optimizer: torch.optim.Optimizer, run: RunConfig,
                   capturable: bool = False) -> None:
    """Set the schedule's hyperparameters of `make_optimizer`'s groups from `run` (a resumed
    optimiser state carries the checkpoint's), and `capturable` with the learning rates'
    kind (a checkpoint may come from a run with the other `cuda_graphs` setting)."""
    decay, no_decay, scores = optimizer.param_groups
    decay["weight_decay"] = run.weight_decay
    for group, base_lr in ((decay, run.lr), (no_decay, run.lr), (scores, run.score_lr)):
        group["base_lr"], group["betas"] = base_lr, run.betas
        lr = float(group["lr"])
        group["capturable"] = capturable
        group["lr"] = torch.tensor(lr, device=group["params"][0].device) if capturable else lr
