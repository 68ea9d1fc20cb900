"""Throughput scaling of `orthoasr train` under torchrun: the paper config on 1 GPU and on
N GPUs of the same machine, same per-rank batch (so N ranks train N times the utterances
per step). Rows go to bench/results/ddp.json (table "ddp", baseline: 1 GPU).

    python -m bench.ddp_scaling --gpus 2 --steps 30
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

from bench.harness import write_rows
from bench.train_step import make_corpus, stage_times
from orthoasr.run_config import load_run_config
from orthoasr.train import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--work-dir", default="/tmp/ddp_bench")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="steps per stage")
    parser.add_argument("--max-frames", type=int, default=32000, help="per rank")
    args = parser.parse_args()
    work = Path(args.work_dir)
    corpus = make_corpus(work / "data", args.preset)
    overrides = [f"{s}_manifest={work / 'data' / (s + '.jsonl')}" for s in
                 ("train", "dev", "test")]
    overrides += [f"max_frames={args.max_frames}", "log_every=5", "ckpt_every=100000",
                  "warmup_steps=10", "penalty_warmup=10", f"stage1_steps={args.steps}",
                  f"stage2_steps={args.steps}"]
    run = load_run_config(args.config, overrides)
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(run.to_dict()))))
    rows = []
    for gpus in (1, args.gpus):
        out_dir = work / f"gpus{gpus}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={gpus}", "-m", "orthoasr", "train", "--config", str(config),
               "--work-dir", str(out_dir)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
        print(f"{gpus} GPU(s): {time.perf_counter() - start:.0f} s", flush=True)
        for stage, (ms, utt_s, timed) in stage_times(read_metrics(out_dir / "metrics.csv")).items():
            rows.append({"table": "ddp", "case": f"{Path(args.config).stem}, stage {stage}, "
                         f"max_frames {args.max_frames} per rank, corpus {corpus}",
                         "mode": "train step, throughput", "provider": f"{gpus} GPU(s)",
                         "baseline": "1 GPU(s)", "ms": 1.0 / utt_s,   # seconds per 1000 utt
                         "utt_per_s": utt_s, "ms_per_step": ms, "steps_timed": timed})
    print(json.dumps(rows, indent=1))
    print(f"rows -> {write_rows('ddp', rows)}")


if __name__ == "__main__":
    main()
