"""Run arms of issue 17's experiment and append one row per model to experiments/results.json.

    python -m experiments.run --config configs/paper.yaml --arms orthosoftmax-flops-component \
        individual-flops-component --budgets 0.5 0.6 0.7 0.85 1.0 \
        --set train_manifest=... stage1_steps=... stage2_steps=...

Every arm gets the same `--set` overrides (corpus, stage lengths: the same updates). Arm 1
(`orthosoftmax-flops-component`) runs before `individual-flops-component`, which trains its
frozen subnets alone. A row: arm, budget, flops, params (exact, of the subnet), wer_dev,
wer_test, cer_dev, cer_test, kept (units kept per kind), updates, gpu_minutes (training wall
time; on a CPU machine `gpu` says "cpu"), gpu, commit, config_hash (sha256 of the run
config), checkpoint_sha256. Heatmaps of the supernet arms go beside the results file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from pathlib import Path

import torch

from experiments.arms import ARMS, FIRST, jobs
from orthoasr.evaluate import evaluate, load_trained, write_heatmap
from orthoasr.model import block_layout
from orthoasr.run_config import load_run_config
from orthoasr.train import train

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(run) -> str:
    return hashlib.sha256(json.dumps(run.to_dict(), sort_keys=True).encode()).hexdigest()


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def kept_units(gates: torch.Tensor, cfg) -> dict[str, int]:
    """Units kept per kind (ffn chunks, conv modules, attention heads) by a 0/1 gate vector."""
    per_block = {}
    for kind, start, end in block_layout(cfg):
        name = "ffn" if kind.startswith("ffn") else kind
        per_block.setdefault(name, []).append((start, end))
    grid = (gates != 0).view(cfg.num_layers, -1)
    return {name: int(sum(grid[:, s:e].sum() for s, e in spans))
            for name, spans in per_block.items()}


def run_job(job, args, common: list[str], out_dir: Path) -> list[dict]:
    run = load_run_config(args.config, common + list(job.overrides))
    work = Path(args.work_dir) / job.name
    start = time.perf_counter()
    trainer = train(run, work, overwrite=True)
    minutes = (time.perf_counter() - start) / 60
    checkpoint = work / "checkpoint.pt"
    rows = evaluate(checkpoint, device=run.device)
    trained = load_trained(checkpoint)
    if job.plain:                                   # a plain model standing for its budget
        rows = [dict(rows[-1], budget=job.budget)]
    elif job.budget is not None:                    # the one subnet trained (fixed_gates)
        rows = [r for r in rows if r["budget"] == job.budget]
    elif trained.masks is not None:
        heatmap = out_dir / f"heatmap-{job.arm}.png"
        print(f"heatmap -> {write_heatmap(trained.masks, run.model, heatmap)}")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    stamp = {"updates": trainer.step, "gpu_minutes": minutes, "gpu": gpu, "commit": commit(),
             "config_hash": config_hash(run), "checkpoint_sha256": sha256(checkpoint),
             "run": job.name}
    out = []
    for row in rows:
        index = row["subnet"]
        gates = (torch.ones(trained.model.num_units) if index == "supernet"
                 else trained.subnet_gates(index))
        out.append({"arm": job.arm, "budget": row["budget"], "flops": row["flops"],
                    "params": row["params"], "wer_dev": row["wer_dev"],
                    "wer_test": row["wer_test"], "cer_dev": row["cer_dev"],
                    "cer_test": row["cer_test"], "kept": kept_units(gates, run.model),
                    **stamp})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.5, 0.6, 0.7, 0.85, 1.0])
    parser.add_argument("--work-dir", default="runs/experiments")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    common = list(args.set)
    model = load_run_config(args.config, common).model
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    first = Path(args.work_dir) / FIRST / "checkpoint.pt"
    for arm in args.arms:
        for job in jobs(arm, tuple(args.budgets), str(first) if first.exists() else None,
                        model):
            rows = run_job(job, args, common, out.parent)
            results += rows
            out.write_text(json.dumps(results, indent=1) + "\n")
            for r in rows:
                print(f"{r['arm']:32s} budget {r['budget']:.2f} FLOPs {r['flops']:>12,} "
                      f"WER test {100 * r['wer_test']:.1f}%", flush=True)
    print(f"rows -> {out}")


if __name__ == "__main__":
    main()
