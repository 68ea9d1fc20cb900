"""Run arms of issue 17's experiment and append one row per model to experiments/results.json.

    python -m experiments.run --config configs/paper.yaml --arms orthosoftmax-flops-component \
        individual-flops-component --budgets 0.5 0.6 0.7 0.85 1.0 \
        --set train_manifest=... stage1_steps=... stage2_steps=...

Every arm gets the same `--set` overrides (corpus, stage lengths: the same updates). Arm 1
(`orthosoftmax-flops-component`) runs before `individual-flops-component`, which trains its
frozen subnets alone. A row: arm, budget, flops, params (exact, of the subnet), wer_dev,
wer_test, cer_dev, cer_test, kept (units kept per kind), updates, gpu_minutes (training wall
time; on a CPU machine `gpu` says "cpu"), side_by_side (how many jobs shared the device
while it trained), gpu, commit, config_hash (sha256 of the run config), checkpoint_sha256.
Heatmaps of the supernet arms go beside the results file.

`--parallel N` runs up to N jobs at once, each in its own process (a small model leaves most
of an H200 idle), spread over the machine's GPUs: first every job but the individually
trained ones, then those, from arm 1's checkpoint. Rows are added in the order of the jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from experiments.arms import ARMS, FIRST, jobs
from orthoasr.checkpoint import TRAINING_KIND, load_checkpoint, save_checkpoint
from orthoasr.evaluate import evaluate, write_heatmap
from orthoasr.model import block_layout
from orthoasr.run_config import load_run_config
from orthoasr.train import train
from orthoasr.trained import load_trained

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
    """ORTHOASR_COMMIT when set (the device machine's copy has a .git of an older commit:
    experiments/gpu_run.sh sets it from .commit), else git's HEAD."""
    if os.environ.get("ORTHOASR_COMMIT"):
        return os.environ["ORTHOASR_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def kept_units(gates: torch.Tensor, cfg) -> dict[str, list[int]]:
    """Units kept per kind (ffn chunks, conv modules, attention heads) and layer, by a 0/1
    gate vector: {kind: [count in layer 0, layer 1, ...]}."""
    per_block = {}
    for kind, start, end in block_layout(cfg):
        name = "ffn" if kind.startswith("ffn") else kind
        per_block.setdefault(name, []).append((start, end))
    grid = (gates != 0).view(cfg.num_layers, -1)
    return {name: [int(sum(row[s:e].sum() for s, e in spans)) for row in grid]
            for name, spans in per_block.items()}


def first_masks(work_dir: Path) -> Path:
    """Arm 1's frozen masks alone, beside its checkpoint: a training checkpoint with just the
    run config, step and masks (kilobytes, where the full one holds the weights and the
    optimizer). `fixed_gates` reads it like the full one, so the individually trained
    models can run on another machine than arm 1 did."""
    run_dir = work_dir / FIRST
    state = load_checkpoint(run_dir / "checkpoint.pt", "cpu", TRAINING_KIND)
    keep = {k: state[k] for k in ("run_config", "step", "frozen_masks")}
    return save_checkpoint(run_dir / "frozen_masks.pt", keep)


def run_job(job, args, common: list[str], out_dir: Path, side_by_side: int = 1) -> list[dict]:
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
    stamp = {"updates": trainer.step, "gpu_minutes": minutes, "side_by_side": side_by_side,
             "gpu": gpu, "commit": commit(),
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


def arm_jobs(arms, args, model) -> list:
    """The jobs of `arms`; with --tag, their arm and job names end in +TAG (a variant of an
    arm, its settings in --set: its rows stand beside the arm's, not over them)."""
    # a variant's individually trained subnets take the variant's arm 1 (FIRST+TAG)
    first = (Path(args.first_masks) if args.first_masks
             else Path(args.work_dir) / tagged(FIRST, args.tag) / "checkpoint.pt")
    out = [job for arm in arms
           for job in jobs(arm, tuple(args.budgets), str(first) if first.exists() else None,
                           model)]
    if args.tag:
        out = [replace(job, arm=tagged(job.arm, args.tag), name=tagged(job.name, args.tag))
               for job in out]
    return out


def tagged(name: str, tag: str) -> str:
    """An arm's or job's name in the variant `tag` (itself without one)."""
    return f"{name}+{tag}" if tag else name


def prefix_lines(stream, name: str) -> None:
    """Copy a job's output to ours, each line led by the job's name: the logs of jobs run
    side by side interleave."""
    for line in stream:
        print(f"[{name}] {line}", end="", flush=True)


def run_side_by_side(job_list, args, on_done) -> None:
    """Each job in its own process (`--job`), at most args.parallel at once; on_done(job,
    rows) as each one ends (so rows written so far survive a run cut short)."""
    rows_dir = Path(args.work_dir) / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    waiting, running = list(job_list), []
    width = min(args.parallel, len(job_list))
    gpus = torch.cuda.device_count()
    while waiting or running:
        while waiting and len(running) < args.parallel:
            job = waiting.pop(0)
            env = dict(os.environ)
            if gpus > 1:       # the jobs spread over the machine's GPUs, in turn
                busy = [entry[3] for entry in running]
                slot = min(range(gpus), key=busy.count)
                env["CUDA_VISIBLE_DEVICES"] = str(slot)
            else:
                slot = 0
            rows_path = rows_dir / f"{job.name}.json"
            rows_path.unlink(missing_ok=True)
            command = [sys.executable, "-m", "experiments.run", "--config", args.config,
                       "--arms", job.arm.removesuffix(f"+{args.tag}") if args.tag else job.arm,
                       "--budgets", *map(str, args.budgets),
                       "--work-dir", args.work_dir, "--out", args.out,
                       "--job", job.name, "--job-rows", str(rows_path),
                       "--side-by-side", str(width), "--set", *args.set]
            if args.first_masks:
                command += ["--first-masks", args.first_masks]
            if args.tag:
                command += ["--tag", args.tag]
            print(f"started {job.name}" + (f" on GPU {slot}" if gpus > 1 else ""), flush=True)
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            reader = threading.Thread(target=prefix_lines, args=(proc.stdout, job.name),
                                      daemon=True)
            reader.start()
            running.append((job, rows_path, proc, slot, reader))
        time.sleep(1)
        for entry in list(running):
            job, rows_path, proc, _slot, reader = entry
            if proc.poll() is None:
                continue
            reader.join()                   # its last lines (a traceback, say) first
            running.remove(entry)
            if proc.returncode != 0:
                raise RuntimeError(f"job {job.name} failed (exit status {proc.returncode})")
            on_done(job, json.loads(rows_path.read_text()))


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (anything else is a usage error naming the value)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.5, 0.6, 0.7, 0.85, 1.0])
    parser.add_argument("--work-dir", default="runs/experiments")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--parallel", type=positive_int, default=1,
                        help="jobs run side by side, each in its own process")
    parser.add_argument("--first-masks", default=None,
                        help="arm 1's checkpoint or frozen_masks.pt for the individually "
                             "trained models (default: <work-dir>/" + FIRST + "/checkpoint.pt)")
    parser.add_argument("--tag", default="",
                        help="a variant: rows and work directories name the arm ARM+TAG "
                             "(with the variant's settings in --set)")
    # one job of a --parallel run (internal): its rows go to --job-rows
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--job-rows", help=argparse.SUPPRESS)
    parser.add_argument("--side-by-side", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = list(args.set)
    model = load_run_config(args.config, common).model
    out = Path(args.out)
    if args.job:
        job = next(j for j in arm_jobs(args.arms, args, model) if j.name == args.job)
        rows = run_job(job, args, common, out.parent, args.side_by_side)
        Path(args.job_rows).write_text(json.dumps(rows, indent=1) + "\n")
        return
    results = json.loads(out.read_text()) if out.exists() else []
    # the individually trained subnets need arm 1's checkpoint: they come last
    for arms in ([a for a in args.arms if a != "individual-flops-component"],
                 [a for a in args.arms if a == "individual-flops-component"]):
        results += run_phase(arm_jobs(arms, args, model), args, common, results)
        if FIRST in arms and not args.tag:
            print(f"arm 1's frozen masks -> {first_masks(Path(args.work_dir))}")
    print(f"rows -> {out}")


def run_phase(job_list, args, common, earlier: list[dict]) -> list[dict]:
    """Train and evaluate job_list (side by side with --parallel); the rows in job order.
    args.out is rewritten as each job ends: the earlier rows, then those so far."""
    out, done = Path(args.out), {}

    def add(job, rows):
        done[job.name] = rows
        so_far = [r for j in job_list if j.name in done for r in done[j.name]]
        out.write_text(json.dumps(earlier + so_far, indent=1) + "\n")
        for r in rows:
            print(f"{r['arm']:32s} budget {r['budget']:.2f} FLOPs {r['flops']:>12,} "
                  f"WER test {100 * r['wer_test']:.1f}%", flush=True)
    if args.parallel > 1:
        run_side_by_side(job_list, args, add)
    else:
        for job in job_list:
            add(job, run_job(job, args, common, out.parent))
    return [r for job in job_list for r in done[job.name]]


if __name__ == "__main__":
    main()
