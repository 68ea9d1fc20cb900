"""`orthoasr demo`: what `make demo` runs.

By default the whole job on the embedded corpus (`run_demo`): synthesise the
tiny eSpeak NG corpus, train a tiny supernet through both stages, evaluate every subnet and
write the heatmap. `--selection-only` shows the selection mechanism alone, in seconds: the
score matrix of the paper-size model (180 units) is trained with OrthoSoftmax against a budget
set, with a stand-in task for the ASR loss (every unit has a usefulness: later layers and
attention heads matter more, with noise; each subnet is rewarded for the usefulness its soft
mask keeps). The temperature anneals, the penalty makes the rows one-hot, then the freeze step
picks nested subnets that meet their exact budgets.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cli import number
from .config import SupernetConfig
from .devices import resolve_device
from .objective import check_feasible_budgets
from .ortho import PenaltyScale, freeze_masks, gamma_for, ortho_softmax, temperature
from .run_config import load_run_config
from .train import CHECKPOINT, train
from .units import enumerate_units, subnet_cost, unit_costs
from .workdir import WorkDirLock, check_work_dir

WORK_DIR = "runs/demo"

SYMBOLS = {"ffn1": "F", "conv": "C", "mhsa": "H", "ffn2": "G"}


@dataclass(frozen=True)
class DemoPreset:
    """What `orthoasr demo` trains on one kind of machine: a corpus preset (synth.PRESETS)
    and a run config (configs/)."""
    corpus: str
    config: str


# found in the package when not run from the checkout (run_config.find_config)
DEMO_PRESETS = {
    "cpu": DemoPreset(corpus="demo", config="configs/tiny.yaml"),
    # one H100 at 319e7dc: 121 s, supernet test WER 1.6% (configs/demo-gpu.yaml)
    "cuda": DemoPreset(corpus="demo-gpu", config="configs/demo-gpu.yaml"),
}


def demo_preset(device: str = "auto") -> DemoPreset:
    """The preset for `device` ("auto": the GPU's when CUDA is available)."""
    return DEMO_PRESETS[resolve_device(device).type]


def run_demo(work_dir: str | Path = WORK_DIR, config: str | Path | None = None,
             overrides: list[str] = (), data_dir: str | Path | None = None,
             device: str = "auto") -> list[dict]:
    """`make demo`: synthesise the corpus of this machine's preset (unless `data_dir`,
    default data/synth-<corpus>, holds it), train both stages (a previous demo run in
    `work_dir` is moved aside), evaluate every subnet, print the table, write the heatmap
    and say what to try next. Returns the evaluation rows."""
    from .data.synth import synthesize_corpus
    from .evaluate import evaluate
    start = time.perf_counter()
    preset = demo_preset(device)
    config = config or preset.config
    work_dir = held_path(Path(work_dir))
    check_work_dir(work_dir)        # before the corpus: synthesis takes a while
    data_dir = Path(data_dir or f"data/synth-{preset.corpus}")
    if not (data_dir / "train.jsonl").exists():
        # under the corpus folder's lock: a second demo started meanwhile would take it for
        # an interrupted synthesis and delete the wav/ folder this one is writing
        with WorkDirLock(data_dir):
            print(f"synthesising the {preset.corpus!r} corpus into {data_dir} ...", flush=True)
            # no train.jsonl: at most an interrupted synthesis is there, which is replaced
            synthesize_corpus(data_dir, preset=preset.corpus, seed=0, overwrite=True)
    print(f"corpus ready after {time.perf_counter() - start:.0f} s", flush=True)
    paths = [f"{split}_manifest={data_dir / (split + '.jsonl')}"
             for split in ("train", "dev", "test")]
    overrides = paths + [f"device={device}"] + list(overrides)
    run_cfg = load_run_config(config, overrides)
    trainer = train(run_cfg, work_dir, overwrite=True)
    if trainer.stopped_by:
        raise SystemExit(stopped_demo(trainer.stopped_by, config, work_dir, overrides))
    print(f"training done after {time.perf_counter() - start:.0f} s", flush=True)
    rows = evaluate(work_dir / CHECKPOINT, heatmap=work_dir / "heatmap.png",
                    device=run_cfg.device)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(next_steps(work_dir, data_dir, run_cfg.model.budgets))
    return rows


def held_path(work_dir: Path) -> Path:
    """`work_dir`, absolute if it holds the current folder ("." from inside an earlier
    run): training moves that run aside, and the current folder goes with it, so a relative
    path would then name the old run (the demo scored it and wrote its heatmap there)."""
    cwd = Path.cwd()
    if work_dir.resolve() in (cwd, *cwd.parents):
        return Path(os.path.abspath(work_dir))
    return work_dir


def stopped_demo(signal_name: str, config: str | Path, work_dir: Path,
                 overrides: list[str]) -> int:
    """A demo whose training a signal stopped (with a checkpoint) ends there: scoring the
    half-trained model and suggesting its subnets would mislead, and `orthoasr demo` starts
    anew. Prints the command that continues the run (the demo's config and overrides) and
    returns the exit status, 128 + the signal's number."""
    resume = ["orthoasr", "train", "--config", str(config), "--work-dir", str(work_dir),
              "--resume", *overrides]
    print(f"the demo stopped; continue its training with\n  {shlex.join(resume)}\nthen score "
          f"its subnets with\n  orthoasr eval --checkpoint {work_dir / CHECKPOINT}", flush=True)
    return 128 + signal.Signals[signal_name].value


def next_steps(work_dir: Path, data_dir: Path, budgets) -> str:
    """What to try after the demo, as commands that work on its outputs."""
    from .data import load_manifest
    test_file = load_manifest(data_dir / "test.jsonl")[0]["audio_filepath"]
    smallest = min(budgets)
    return f"""
What to try next (`orthoasr` is in .venv/bin after `make demo`: `. .venv/bin/activate`):
  # hear what the smallest subnet ({smallest:g} of the parameters) makes of a test file
  orthoasr transcribe --checkpoint {work_dir / CHECKPOINT} --budget {smallest:g} {test_file}
  # export it as a compact model that transcribes on its own
  orthoasr export --checkpoint {work_dir / CHECKPOINT} --budget {smallest:g} --out {work_dir}/sub.pt
  orthoasr transcribe --subnet {work_dir}/sub.pt {test_file}
  # which units each subnet keeps (layers x units): the image
  {work_dir / 'heatmap.png'}
  # the paper-size model, on a GPU with a larger corpus
  orthoasr synth --preset base && orthoasr train --config paper --work-dir runs/paper"""


# the options of --selection-only; they parse to None when not given, so that the full demo
# can refuse them rather than ignore them
SELECTION_DEFAULTS = {"steps": 600, "criterion": "flops", "budgets": (0.5, 0.6, 0.7, 0.85, 1.0),
                      "seed": 0}


def budget_list(text: str) -> tuple[float, ...]:
    """--budgets' value: comma-separated fractions (SupernetConfig checks their range)."""
    try:
        return tuple(float(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (e.g. 0.5,1.0), "
                                         f"got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default=None,
                        help="checkpoint, metrics and heatmap of the full demo (the corpus "
                             "goes to data/synth-demo, on a GPU data/synth-demo-gpu; default "
                             f"{WORK_DIR}); the selection-only demo writes nothing")
    parser.add_argument("--selection-only", action="store_true",
                        help="only OrthoSoftmax selecting subnets of the paper-size model")
    parser.add_argument("--steps", type=number(least=1, integer=True), default=None,
                        help=f"selection-only: steps (default {SELECTION_DEFAULTS['steps']})")
    parser.add_argument("--criterion", default=None, choices=["params", "flops"],
                        help="selection-only: budget criterion "
                             f"(default {SELECTION_DEFAULTS['criterion']})")
    parser.add_argument("--budgets", type=budget_list, default=None,
                        help="selection-only: comma-separated fractions of the supernet's cost "
                             f"(default {','.join(map(str, SELECTION_DEFAULTS['budgets']))})")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"selection-only: random seed (default {SELECTION_DEFAULTS['seed']})")


def run(args: argparse.Namespace) -> None:
    given = {name: getattr(args, name) for name in SELECTION_DEFAULTS
             if getattr(args, name) is not None}
    if not args.selection_only:
        if given:
            flags = ", ".join(f"--{name}" for name in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{flags} {verb} only with --selection-only; the full demo takes "
                             "its settings from its config")
        run_demo(args.work_dir or WORK_DIR)
        return
    if args.work_dir is not None:
        raise ValueError(f"--work-dir {args.work_dir}: the selection-only demo writes nothing; "
                         "leave --work-dir out (or --selection-only, for the full demo)")
    options = {**SELECTION_DEFAULTS, **given}
    cfg = SupernetConfig(criterion=options["criterion"], budgets=options["budgets"])
    check_feasible_budgets(cfg)     # before the steps, not at the freeze after them
    select_subnets(cfg, steps=options["steps"], seed=options["seed"])


def unit_usefulness(cfg: SupernetConfig, seed: int) -> torch.Tensor:
    """A stand-in importance per unit: deeper layers and heads count more, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    units = enumerate_units(cfg)
    kind_weight = {"ffn1": 0.6, "conv": 1.0, "mhsa": 1.2, "ffn2": 0.8}
    depth = torch.tensor([0.5 + u.layer / cfg.num_layers for u in units])
    kind = torch.tensor([kind_weight[u.module] for u in units])
    return depth * kind * (1 + 0.5 * torch.rand(len(units), generator=gen))


def select_subnets(cfg: SupernetConfig, steps: int = 600, seed: int = 0, lr: float = 0.01,
                   device: str = "cpu") -> torch.Tensor:
    """Train OrthoSoftmax scores, freeze, print each subnet; returns hard gates [M, N]."""
    torch.manual_seed(seed)
    costs, rest, total = unit_costs(cfg)
    n = costs.numel()
    usefulness = unit_usefulness(cfg, seed).to(device)
    costs = costs.float().to(device)
    scores = torch.nn.Parameter(torch.randn(n, n, device=device) * 1e-3)
    optimizer = torch.optim.Adam([scores], lr=lr)
    scale = PenaltyScale("warmup", value=10.0, warmup_steps=max(1, steps // 4))
    gamma = gamma_for(1.0, 0.02, steps)
    start = time.time()
    for step in range(steps):
        tau = temperature(step, gamma=gamma, tau_min=0.02)
        out = ortho_softmax(scores, costs, rest, total, cfg.budgets, tau, validate=False)
        # keep useful units per unit of cost in every subnet; the penalty makes rows one-hot
        reward = (out.masks * usefulness).sum(1)
        loss = -reward.mean() / n + scale(out.penalty, step).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"step {step:4d}  tau {tau:.3f}  penalty {out.penalty.mean().item():8.4f}  "
                  f"k {out.k.tolist()}")
    print(f"trained {steps} steps in {time.time() - start:.1f} s\n")

    with torch.no_grad():
        probs = ortho_softmax(scores, costs, rest, total, cfg.budgets, 0.02).probs
    distinct = len(set(probs.argmax(1).tolist()))
    print(f"rows with distinct argmax: {distinct} of {n} (the freeze de-duplicates the rest)")
    gates = freeze_masks(probs, cfg)
    print_subnets(cfg, gates)
    return gates


def print_subnets(cfg: SupernetConfig, gates: torch.Tensor) -> None:
    """One table row per budget, then a map of the units each subnet keeps."""
    units = enumerate_units(cfg)
    _, _, total = unit_costs(cfg)
    full_params = subnet_cost(cfg, torch.ones(len(units)), "params")
    full_flops = subnet_cost(cfg, torch.ones(len(units)), "flops")
    print(f"{'budget':>7} {'units':>6} {'params (M)':>11} {'FLOPs (G)':>10} "
          f"{cfg.criterion + ' used':>12} {'heads':>6} {'FFN chunks':>11} {'convs':>6}")
    for budget, row in zip(cfg.budgets, gates):
        kept = [u for u, g in zip(units, row) if g]
        params = subnet_cost(cfg, row, "params")
        flops = subnet_cost(cfg, row, "flops")
        used = subnet_cost(cfg, row) / total
        print(f"{budget:7.2f} {len(kept):6d} {params / 1e6:11.2f} {flops / 1e9:10.2f} "
              f"{used:12.3f} {sum(u.module == 'mhsa' for u in kept):6d} "
              f"{sum(u.module.startswith('ffn') for u in kept):11d} "
              f"{sum(u.module == 'conv' for u in kept):6d}")
    print(f"(supernet: {full_params / 1e6:.2f} M params, {full_flops / 1e9:.2f} GFLOPs at "
          f"{cfg.ref_frames} frames)\n")
    print("kept units per layer (F=FFN1 chunk, C=conv, H=head, G=FFN2 chunk, .=pruned):")
    per_block = len(units) // cfg.num_layers
    for budget, row in zip(cfg.budgets, gates):
        print(f"budget {budget:.2f}")
        for layer in range(cfg.num_layers):
            block = units[layer * per_block:(layer + 1) * per_block]
            cells = "".join(SYMBOLS[u.module] if row[layer * per_block + i] else "."
                            for i, u in enumerate(block))
            print(f"  layer {layer + 1:2d}  {cells}")
