"""Where a training step's time goes on each rank: a few warm stage-1 steps of `orthoasr
train`, first timed on the host (time waiting for the batch, time inside train_step, wall),
then under torch.profiler (ops by host time and by GPU time, GPU busy time per step).
Run it under torchrun; each rank writes <out>/probe_<label>_rank<r>.txt.

    torchrun --nproc_per_node=2 -m bench.ddp_probe --config run.yaml --label ddp --out /tmp/p
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from orthoasr.distributed import barrier, shutdown
from orthoasr.run_config import load_run_config
from orthoasr.run_data import TrainData, make_tokenizer
from orthoasr.train import Trainer


def timed_steps(trainer: Trainer, batches, steps: int) -> dict:
    """Host time per step: waiting for the batch, inside train_step, and wall (median)."""
    data, call, wall = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)[2]
        t1 = time.perf_counter()
        trainer.train_step(batch)
        t2 = time.perf_counter()
        data.append(t1 - t0)
        call.append(t2 - t1)
        wall.append(t2 - t0)
    trainer.flush()                       # the steps' losses: waits for the device
    return {name: 1000 * statistics.median(v) for name, v in
            (("data_ms", data), ("train_step_ms", call), ("wall_ms", wall))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--work-dir", default="/tmp/ddp_probe")
    parser.add_argument("--label", default="run")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="host-timed steps")
    parser.add_argument("--profiled", type=int, default=3)
    parser.add_argument("--out", default="/tmp/ddp_probe/out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    run = load_run_config(args.config, args.overrides)
    work = Path(args.work_dir) / args.label
    work.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, work)
    trainer.tokenizer = make_tokenizer(run, work, trainer.world)
    data = TrainData(run, trainer.tokenizer, pin_memory=True, world=trainer.world)
    batches = data.batches(0, 0)
    timed_steps(trainer, batches, args.warmup)
    barrier(trainer.world)
    host = timed_steps(trainer, batches, args.steps)
    barrier(trainer.world)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        timed_steps(trainer, batches, args.profiled)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        profiled_ms = 1000 * (time.perf_counter() - start) / args.profiled
    events = prof.key_averages()
    per_step = 1000 * args.profiled                         # profiler times are in us
    gpu_ms = sum(e.self_device_time_total for e in events
                 if e.device_type == torch.autograd.DeviceType.CUDA) / per_step
    nccl_ms = sum(e.self_device_time_total for e in events if e.key.startswith("ncclDev")
                  and e.device_type == torch.autograd.DeviceType.CUDA) / per_step
    # blocking copies and syncs: where the host waits for the device
    waits = {e.key: (e.count // args.profiled, round(e.self_cpu_time_total / per_step, 1))
             for e in events if e.key in ("cudaStreamSynchronize", "cudaMemcpyAsync",
                                          "cudaDeviceSynchronize", "cudaEventSynchronize")}
    rank = trainer.world.rank
    lines = [f"# {args.label}, rank {rank} of {trainer.world.size}, {run.max_frames} frames "
             f"per rank, stage 1", f"host, {args.steps} steps (median ms): {host}",
             f"profiled: {profiled_ms:.1f} ms/step wall, GPU busy {gpu_ms:.1f} ms/step "
             f"(NCCL kernels {nccl_ms:.1f} ms, waiting included); host waits per step "
             f"(calls, ms): {waits}",
             events.table(sort_by="self_cpu_time_total", row_limit=25),
             events.table(sort_by="self_device_time_total", row_limit=15)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"probe_{args.label}_rank{rank}.txt").write_text("\n".join(lines) + "\n")
    print(lines[0], lines[1], lines[2], sep="\n", flush=True)
    batches.close()
    trainer.ddp = None
    shutdown(trainer.world)


if __name__ == "__main__":
    main()
