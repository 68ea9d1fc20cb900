"""OrthoSoftmax API (docs/design.md §3): the op, its schedules and the freeze step."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from orthoasr.kernels.ortho_softmax import (
    MAX_BUDGETS,
    MAX_UNITS,
    NORMS,
    OrthoSoftmaxFunction,
    budget_masks,
    ortho_softmax_fwd,
    ortho_softmax_reference,
)

from .backend import get_backend, use_triton
from .config import SupernetConfig, check_budgets
from .units import subnet_cost, unit_costs


class OrthoSoftmaxResult(NamedTuple):
    probs: torch.Tensor      # [N, N] row softmaxes P
    expected: torch.Tensor   # [N] expected cost of each row, P @ costs
    masks: torch.Tensor      # [M, N] soft masks, sum of the first k(p) rows of P
    k: torch.Tensor          # [M] int64 prefix length chosen for each budget
    penalty: torch.Tensor    # [M] orthogonality penalty of the first k(p) rows


def ortho_softmax(scores: torch.Tensor, costs: torch.Tensor, rest_cost: float, total_cost: float,
                  budgets: Sequence[float] | torch.Tensor, tau: float | torch.Tensor,
                  norm: str = "l2", validate: bool = True) -> OrthoSoftmaxResult:
    """OrthoSoftmax of `scores` [N, N] against unit `costs` [N] for every budget.

    `tau` may be a float or a 0-d tensor on the scores' device (a tensor keeps a CUDA graph
    valid while the temperature anneals). Shapes, devices and settings are always checked;
    `validate=True` also reads the values of scores and costs (finite, costs >= 0), which on
    CUDA costs one host sync: pass False on the hot path.
    """
    budgets_t = _check_args(scores, costs, rest_cost, total_cost, budgets, tau, norm, validate)
    tau_t = _as_tensor(tau, scores)
    triton = use_triton(scores, costs)
    if triton and scores.dtype != torch.float32:
        if get_backend() == "triton":
            raise TypeError(f"the triton backend takes float32 scores, got {scores.dtype}; "
                            "use set_backend('torch') or 'auto' for other dtypes")
        triton = False              # "auto": the kernel is fp32 only, the reference takes any
    if triton:
        n, m = scores.shape[0], budgets_t.shape[0]
        if n > MAX_UNITS or m > MAX_BUDGETS:
            raise ValueError(f"the triton backend supports N <= {MAX_UNITS} units and M <= "
                             f"{MAX_BUDGETS} budgets, got N={n}, M={m}")
        op = ortho_softmax_fwd if torch.compiler.is_compiling() else OrthoSoftmaxFunction.apply
        out = op(scores.contiguous(), costs.to(torch.float32).contiguous(), budgets_t, tau_t,
                 float(rest_cost), float(total_cost), norm)
    else:
        out = ortho_softmax_reference(scores, costs, float(rest_cost), float(total_cost),
                                      budgets_t, tau_t, norm)
    return OrthoSoftmaxResult(*out)


def simple_topk(scores: torch.Tensor, costs: torch.Tensor, rest_cost: float,
                total_cost: float, budgets: Sequence[float] | torch.Tensor,
                tau: float | torch.Tensor, validate: bool = True) -> OrthoSoftmaxResult:
    """Simple-Top-k, the relaxed top-k of OrthoSoftmax's predecessor, as an alternative
    selector: one score per unit, s [N]; N successive softmaxes a_i = softmax(s_i / tau) with
    s_1 = s and s_(i+1) = s_i + log(1 - a_i), so that each row takes what the rows before it
    have not. The rows a_i stand where OrthoSoftmax has the rows of P: the same prefix-cost
    rule picks k(p) for each budget, the masks are the sums of the first k(p) rows, and
    `freeze_masks` ranks the units from them. The successive updates keep the rows apart, so
    there is no orthogonality penalty (zeros). PyTorch only (N small softmaxes in sequence,
    autograd for the backward). Arguments are checked as ortho_softmax's, `validate` alike
    (pass False on the hot path: reading the values is a host sync on CUDA)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.shape[0] == 0:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
        raise ValueError(f"simple_topk scores must be a non-empty [N] tensor, got {shape}")
    budgets_t = _check_common(scores, costs, rest_cost, total_cost, budgets, tau, validate)
    n = scores.shape[0]
    tau_t = _as_tensor(tau, scores)
    rows, s = [], scores
    for _ in range(n):
        a = torch.softmax(s / tau_t, dim=0)
        rows.append(a)
        # log(1 - a): a unit already taken (a -> 1) gets a score far below the others,
        # finite so that a later softmax never sees only -inf
        s = s + torch.log((1.0 - a).clamp(min=1e-12))
    probs = torch.stack(rows)
    expected, k, masks = budget_masks(probs, costs, rest_cost, total_cost, budgets_t)
    return OrthoSoftmaxResult(probs, expected, masks, k, probs.new_zeros(k.shape))


def _check_args(scores, costs, rest_cost, total_cost, budgets, tau, norm, validate):
    """ortho_softmax's checks (its scores [N, N]); returns the budgets as a device tensor."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or \
            scores.shape[0] != scores.shape[1] or scores.shape[0] == 0:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
        raise ValueError(f"scores must be a non-empty square [N, N] tensor, got {shape}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return _check_common(scores, costs, rest_cost, total_cost, budgets, tau, validate)


def _check_common(scores, costs, rest_cost, total_cost, budgets, tau, validate):
    """The checks both selectors share, for scores whose first dimension counts the units;
    returns the budgets as a device tensor. validate: also the values of scores and costs
    (a host sync on CUDA)."""
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    n = scores.shape[0]
    if not isinstance(costs, torch.Tensor) or costs.shape != (n,):
        shape = tuple(costs.shape) if isinstance(costs, torch.Tensor) else type(costs)
        raise ValueError(f"costs must be a [N] = [{n}] tensor, got {shape}")
    if costs.device != scores.device:
        raise ValueError(f"costs are on {costs.device} but scores on {scores.device}")
    for name, value in (("rest_cost", rest_cost), ("total_cost", total_cost)):
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    if float(total_cost) <= 0:
        raise ValueError(f"total_cost must be > 0, got {total_cost}")
    # the budget rule runs in the scores' dtype: costs past its range are inf there, and
    # every budget then picked k = 1 without a word (float16 holds at most 65504)
    if float(total_cost) > torch.finfo(scores.dtype).max:
        raise TypeError(f"scores are {scores.dtype}, whose largest value "
                        f"{torch.finfo(scores.dtype).max:g} is below total_cost "
                        f"({float(total_cost):g}): the costs would overflow; pass float32 "
                        "or bfloat16 scores")
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1 or tau.device != scores.device:
            raise ValueError(f"tau must be a float or a 1-element tensor on {scores.device}, "
                             f"got shape {tuple(tau.shape)} on {tau.device}")
        if not tau.is_cuda and not float(tau) > 0:
            raise ValueError(f"tau must be > 0, got {float(tau)}")
    elif not (isinstance(tau, numbers.Real) and not isinstance(tau, bool)
              and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if validate:
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("scores contain NaN or inf")
        if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
            raise ValueError("costs must be finite and >= 0")
    return _budget_tensor(tuple(budgets.tolist()) if isinstance(budgets, torch.Tensor)
                          else check_budgets(budgets), scores.device)


_budget_cache: dict = {}


def _budget_tensor(budgets: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Budgets as a float32 device tensor, made once per (budgets, device): no per-call copy."""
    budgets = check_budgets(budgets)
    key = (budgets, str(device))
    if key not in _budget_cache:
        _budget_cache[key] = torch.tensor(budgets, dtype=torch.float32, device=device)
    return _budget_cache[key]


def _as_tensor(tau, like: torch.Tensor) -> torch.Tensor:
    if isinstance(tau, torch.Tensor):
        return tau.reshape(()).to(like.dtype)
    return torch.full((), float(tau), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- schedules

def temperature(step: int, tau0: float = 1.0, gamma: float = 0.999992,
                tau_min: float = 0.01) -> float:
    """tau_t = max(tau0 * gamma^t, tau_min)."""
    return max(tau0 * gamma ** step, tau_min)


def gamma_for(tau0: float, tau_end: float, steps: int) -> float:
    """The decay gamma that brings tau0 to tau_end after `steps` steps."""
    if not (tau0 > 0 and tau_end > 0 and steps > 0):
        raise ValueError(f"need tau0 > 0, tau_end > 0, steps > 0; got {tau0}, {tau_end}, {steps}")
    return (tau_end / tau0) ** (1.0 / steps)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class PenaltyScale(torch.nn.Module):
    """Scale lambda_t of the orthogonality penalty.

    mode "constant": lambda; "warmup": lambda * min(1, step / warmup_steps); "lagrange": a
    learnable multiplier trained by gradient ascent (its gradient is reversed) on
    lambda * penalty - rho * lambda^2, starting at `value`.
    """

    MODES = ("constant", "warmup", "lagrange")

    def __init__(self, mode: str = "constant", value: float = 1.0, warmup_steps: int = 0,
                 rho: float = 0.0):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"penalty scale mode must be one of {self.MODES}, got {mode!r}")
        if mode == "warmup" and warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 for mode 'warmup', got {warmup_steps}")
        self.mode, self.value, self.warmup_steps, self.rho = mode, value, warmup_steps, rho
        self.multiplier = torch.nn.Parameter(torch.tensor(float(value))) \
            if mode == "lagrange" else None

    def forward(self, penalty: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """The loss term for `penalty` (any shape) at `step` (an int, or a 0-d device tensor:
        nothing read on the host, as a captured training step needs)."""
        if self.mode == "constant":
            return self.value * penalty
        if self.mode == "warmup":
            ramp = step / self.warmup_steps
            ramp = ramp.clamp(max=1.0) if isinstance(ramp, torch.Tensor) else min(1.0, ramp)
            return self.value * ramp * penalty
        lam = _ReverseGrad.apply(self.multiplier)
        return lam * penalty - self.rho * lam * lam


# ----------------------------------------------------------------------------- freeze

def unit_ranking(probs: torch.Tensor) -> list[int]:
    """r_i = argmax_{j not yet taken} P_ij, row by row: a permutation of the units."""
    probs = probs.detach().double().cpu()
    taken = torch.zeros(probs.shape[1], dtype=torch.bool)
    ranking = []
    for row in probs:
        j = int(torch.where(taken, -1.0, row).argmax())
        taken[j] = True
        ranking.append(j)
    return ranking


def freeze_masks(probs: torch.Tensor, cfg: SupernetConfig, criterion: str | None = None,
                 frames: int | None = None, budgets: Sequence[float] | None = None
                 ) -> torch.Tensor:
    """Hard 0/1 gates [M, N]: for each budget the longest prefix of the ranking whose exact
    cost is within budget * total. Subnets are nested; a budget below the cost of the empty
    subnet is an error naming the smallest feasible budget."""
    budgets = check_budgets(cfg.budgets if budgets is None else budgets)
    costs, rest, total = unit_costs(cfg, criterion, frames)
    n_units = len(costs)
    if not isinstance(probs, torch.Tensor) or probs.shape != (n_units, n_units):
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be the [N, N] = [{n_units}, {n_units}] row softmaxes "
                         f"(one row and one column per unit), got {shape}")
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("probs contain NaN or inf (diverged OrthoSoftmax scores?): no "
                         "subnet can be frozen from them")
    ranking = unit_ranking(probs)
    n = len(ranking)
    gates = torch.zeros(len(budgets), n)
    prefix_costs, active = [], torch.zeros(n)
    for unit in ranking:
        active[unit] = 1
        prefix_costs.append(subnet_cost(cfg, active, criterion, frames))
    for b, budget in enumerate(budgets):
        if rest > budget * total:
            raise ValueError(f"budget {budget} is below the cost of the empty subnet; the "
                             f"smallest feasible budget is {rest / total:.4f}")
        length = sum(cost <= budget * total * (1 + 1e-12) for cost in prefix_costs)
        gates[b, ranking[:length]] = 1
    return gates
