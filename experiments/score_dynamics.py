"""OrthoSoftmax's scores under its penalty alone: do the rows become orthogonal within the
experiment's schedule? (issue 17's analysis)

    python -m experiments.score_dynamics [--config configs/experiment.yaml] [--set KEY=VALUE ...]

No network: the selector of the config's model (its unit costs, budgets, score init, score
learning rate, tau schedule over stage 1 and penalty warm-up), Adam on the penalty of one
budget drawn per step, as stage 1 draws them. Prints, every 250 steps, each budget's
penalty, and how many distinct units the argmaxes of the rows that the largest drawn budget
sums hit. A penalty that stays above 0 means rows stuck on one unit (duplicates) that the
penalty no longer separates once tau is low. Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import random

import torch

from orthoasr.objective import SubnetSelector
from orthoasr.ortho import gamma_for, temperature
from orthoasr.run_config import load_run_config


def score_dynamics(config: str, overrides: list[str], seed: int = 0, every: int = 250):
    """Yields (step, tau, penalty per budget, distinct argmax units in the first k rows of
    the largest drawn budget, that k)."""
    torch.manual_seed(seed)
    draw = random.Random(seed)
    run = load_run_config(config, ["backend=torch", *overrides])
    selector = SubnetSelector(run.model, run)
    optimizer = torch.optim.Adam(selector.parameters(), lr=run.score_lr)
    steps = run.stage1_steps
    gamma = gamma_for(run.tau0, run.tau_end, steps)
    drawn = len(run.model.budgets) - 1
    for step in range(steps):
        tau = temperature(step, run.tau0, gamma, run.tau_min)
        out = selector(torch.tensor(tau))
        b = draw.randrange(drawn)
        loss = selector.penalty_scale(out.penalty[b], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps - 1:
            k = int(out.k[drawn - 1])
            distinct = out.probs[:k].argmax(dim=1).unique().numel()
            yield step, tau, out.penalty.tolist(), distinct, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--config", default="configs/experiment.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    for step, tau, penalty, distinct, k in score_dynamics(args.config, args.set):
        print(f"step {step:5d} tau {tau:.3f} penalty per budget "
              f"{' '.join(f'{p:7.3f}' for p in penalty)}  distinct units in the first {k} "
              f"rows: {distinct}", flush=True)


if __name__ == "__main__":
    main()
