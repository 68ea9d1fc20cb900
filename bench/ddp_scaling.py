"""Throughput scaling of `orthoasr train` on the GPUs of one machine: the paper config on
1 GPU, then on N GPUs three ways, same per-rank batch (N ranks train N times the audio per
step):
  independent  N unrelated single-GPU runs at once: no communication, the upper bound
               (what sharing the host's CPUs, memory and PCIe alone costs)
  ddp          torchrun, grad_sync=ddp (DistributedDataParallel, find_unused_parameters)
  flat         torchrun, grad_sync=flat (one all-reduce of all gradients after backward)
Throughput is audio seconds trained per wall second (all ranks' batches, data loading
included), the median over the log intervals after each stage's first. A warm-up run of
N ranks for the same steps first compiles the kernels for every batch shape the timed runs
meet (the same plan: 1 GPU takes its first half), so no timed interval holds a compilation.
Rows go to bench/results/ddp.json (table "ddp", time = wall ms per audio second,
baseline: 1 GPU).

    python -m bench.ddp_scaling --gpus 2 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.harness import require_gpu, write_rows
from bench.train_step import make_corpus, stage_times
from orthoasr.metrics import read_metrics
from orthoasr.run_config import load_run_config

ENV = {**os.environ, "OMP_NUM_THREADS": "4"}


def train_command(config: Path, work_dir: Path, ranks: int | None) -> list[str]:
    """`orthoasr train`, under torchrun with `ranks` processes, or plain with None."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={ranks}"] if ranks else [sys.executable])
    return [*launcher, "-m", "orthoasr", "train", "--config", str(config),
            "--work-dir", str(work_dir)]


def run_variant(name: str, config: Path, work: Path, gpus: int) -> list[dict]:
    """Train one variant; returns the stage_times of each of its runs (one, or `gpus` for
    the independent runs, timed separately and summed)."""
    start = time.perf_counter()
    if name == "independent":
        dirs = [work / f"{name}{g}" for g in range(gpus)]
        procs = [subprocess.Popen(train_command(config, d, None),
                                  env={**ENV, "CUDA_VISIBLE_DEVICES": str(g)})
                 for g, d in enumerate(dirs)]
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError(f"an independent run failed: {[p.returncode for p in procs]}")
    else:
        dirs = [work / name]
        ranks = 1 if name == "1 GPU" else gpus
        sync_config = config.with_name(f"run_{name.replace(' ', '_')}.yaml")
        values = yaml.safe_load(config.read_text())
        values["grad_sync"] = "ddp" if name == "1 GPU" else name
        if values["grad_sync"] == "ddp":     # DDP's hooks are not captured in a CUDA graph
            values["cuda_graphs"] = False
        sync_config.write_text(yaml.safe_dump(values))
        subprocess.run(train_command(sync_config, dirs[0], ranks), check=True, env=ENV)
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return [stage_times(read_metrics(d / "metrics.csv")) for d in dirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--work-dir", default="/tmp/ddp_bench")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="steps per stage")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="per rank (default: the config's)")
    parser.add_argument("--variants", default="independent,ddp,flat")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="per stage (default: --steps); 0: no warm-up run")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args()
    require_gpu("ddp_scaling", args.gpus)      # before the corpus is made
    work = Path(args.work_dir)
    corpus = make_corpus(work / "data", args.preset)
    overrides = [f"{s}_manifest={work / 'data' / (s + '.jsonl')}" for s in
                 ("train", "dev", "test")]
    overrides += ["log_every=5", "ckpt_every=100000", "warmup_steps=10", "penalty_warmup=10"]
    if args.max_frames:
        overrides.append(f"max_frames={args.max_frames}")
    run = load_run_config(args.config, overrides)
    config = work / "run.yaml"

    def write_config(steps: int) -> None:
        values = json.loads(json.dumps(run.to_dict()))
        values.update(stage1_steps=steps, stage2_steps=steps)
        config.write_text(yaml.safe_dump(values))

    warmup = args.steps if args.warmup_steps is None else args.warmup_steps
    if warmup:
        write_config(warmup)
        run_variant("flat", config, work / "warmup", args.gpus)
    write_config(args.steps)
    results = {"1 GPU": run_variant("1 GPU", config, work, args.gpus)}
    for name in args.variants.split(","):
        results[name] = run_variant(name, config, work, args.gpus)
    rows = []
    for name, runs in results.items():
        for stage in (1, 2):
            times = [r[stage] for r in runs if stage in r]
            if len(times) != len(runs):
                continue
            audio = sum(t["audio_per_s"] for t in times)       # summed over independent runs
            gpus = 1 if name == "1 GPU" else args.gpus
            rows.append({
                "table": "ddp", "mode": "train, audio throughput",
                "case": f"{Path(args.config).stem}, stage {stage}, max_frames "
                        f"{run.max_frames} per rank, corpus {corpus}",
                "provider": name if gpus == 1 else f"{gpus} GPUs, {name}",
                "baseline": "1 GPU", "time_unit": "ms per audio s", "ms": 1000.0 / audio,
                "audio_per_s": audio, "utt_per_s": sum(t["utt_per_s"] for t in times),
                "ms_per_step": max(t["ms_per_step"] for t in times),
                "steps_timed": min(t["steps_timed"] for t in times)})
    print(json.dumps(rows, indent=1))
    print(f"rows -> {write_rows('ddp', rows, args.out)}")


if __name__ == "__main__":
    main()
