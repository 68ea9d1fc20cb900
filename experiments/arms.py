"""The experiment's arms: run-config overrides per arm, given the budgets and the first arm's
checkpoint (the individually trained models take their units from it).

Arm names: `orthosoftmax-flops-component` (the method, arm 1), `orthosoftmax-params-component`,
`orthosoftmax-flops-module`, `simple-topk-flops-component`, `individual-flops-component`
(one run per budget of arm 1: its frozen units, trained alone, `fixed_gates`), `shrunk` (one
plain Conformer per budget of arm 1, its layers or d_model shrunk to that budget's FLOPs),
and each OrthoSoftmax arm's name + `-clamped`: that arm with its soft masks clamped to <= 1
(`clamp_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orthoasr.config import SupernetConfig
from orthoasr.units import unit_costs

FIRST = "orthosoftmax-flops-component"
# the supernet arms: (criterion, granularity, selector)
SUPERNET_ARMS = {FIRST: ("flops", "component", "orthosoftmax"),
                 "orthosoftmax-params-component": ("params", "component", "orthosoftmax"),
                 "orthosoftmax-flops-module": ("flops", "module", "orthosoftmax"),
                 "simple-topk-flops-component": ("flops", "component", "simple_topk")}
CLAMPED_ARMS = tuple(f"{arm}-clamped" for arm, (_, _, selector) in SUPERNET_ARMS.items()
                     if selector == "orthosoftmax")
ARMS = (*SUPERNET_ARMS, "individual-flops-component", "shrunk", *CLAMPED_ARMS)


@dataclass(frozen=True)
class Job:
    """One training run of an arm: `overrides` (key=value) and the budget it stands for
    (None: a supernet run, one row per budget). `plain`: a plain model (one budget, 1.0),
    whose one row stands for `budget`."""
    arm: str
    name: str
    overrides: tuple[str, ...]
    budget: float | None = None
    plain: bool = False


def jobs(arm: str, budgets: tuple[float, ...], first_checkpoint: str | None,
         model: SupernetConfig) -> list[Job]:
    """The runs of `arm`. The supernet arms share `budgets`; `individual` and `shrunk` need
    arm 1's budgets (and its checkpoint, for `individual`)."""
    budget_list = "[" + ",".join(str(b) for b in budgets) + "]"
    if arm in SUPERNET_ARMS:
        criterion, granularity, selector = SUPERNET_ARMS[arm]
        return [Job(arm, arm, (f"model.criterion={criterion}",
                               f"model.granularity={granularity}", f"selector={selector}",
                               f"model.budgets={budget_list}"))]
    if arm in CLAMPED_ARMS:
        plain, = jobs(arm.removesuffix("-clamped"), budgets, first_checkpoint, model)
        return [Job(arm, arm, (*plain.overrides, "clamp_masks=true"))]
    if arm == "individual-flops-component":
        if first_checkpoint is None:
            raise ValueError(f"arm {arm} needs arm {FIRST}'s checkpoint: run that arm first")
        return [Job(arm, f"{arm}-{b}", ("model.criterion=flops", "model.granularity=component",
                                        f"model.budgets={budget_list}",
                                        f"fixed_gates={first_checkpoint}@{b}"), b)
                for b in budgets if b < 1.0]
    if arm == "shrunk":
        out = []
        for b in budgets:
            if b >= 1.0:
                continue
            small = shrunk_model(replace(model, criterion="flops"), b)
            out.append(Job(arm, f"{arm}-{b}", (
                f"model.num_layers={small.num_layers}", f"model.d_model={small.d_model}",
                f"model.ff_dim={small.ff_dim}",
                "model.criterion=flops", "model.budgets=[1.0]"), b, plain=True))
        return out
    raise ValueError(f"unknown arm {arm!r}; arms: {list(ARMS)}")


def shrunk_model(cfg: SupernetConfig, budget: float) -> SupernetConfig:
    """A plain Conformer like `cfg`, uniformly shrunk to the closest to `budget` x cfg's
    FLOPs: fewer layers, or a smaller d_model (a multiple of 8 per head) with the FFN width
    in cfg's ratio, or both."""
    target = budget * unit_costs(cfg, "flops")[2]
    ratio = cfg.ff_dim / cfg.d_model
    step = 8 * cfg.num_heads
    best = None
    for layers in range(1, cfg.num_layers + 1):
        for d in range(step, cfg.d_model + 1, step):
            ff = max(cfg.ff_chunks, round(ratio * d / cfg.ff_chunks) * cfg.ff_chunks)
            candidate = replace(cfg, num_layers=layers, d_model=d, ff_dim=ff, budgets=(1.0,))
            gap = abs(unit_costs(candidate, "flops")[2] - target)
            if best is None or gap < best[0]:
                best = (gap, candidate)
    return best[1]
