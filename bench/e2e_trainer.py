"""The full trainer's rows of bench/results/e2e.json (issue 14 item 6): `orthoasr train
--config configs/paper.yaml` for a few steps of each stage on a synthetic corpus made on the
machine, data loading included, per provider in one run on one card.

    python -m bench.e2e_trainer [--preset base] [--steps 60] [--providers ours ...]

Providers: `ours` (Triton kernels, each step replayed from a CUDA graph: cuda_graphs=true),
`ours_eager` (the same, stepped eagerly) and `eager_reference` (the PyTorch references,
backend=torch). A step's time is the stream time between the ends of consecutive steps
(CUDA events, read after the run: no sync added), so the host's work and data loading
between steps count. Per stage, after `--warmup` steps, over the steps that replayed a graph
already captured (the steady state; every step without graphs): the median step (`ms`),
seconds of audio per second (`audio_s_per_s`), the longest step over the median
(`max_over_median`); the same two over every step (`ms_all_steps`,
`max_over_median_all_steps`), the captures, and `peak_mem_mb`
(torch.cuda.max_memory_allocated over the stage).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.harness import require_gpu, write_rows
from bench.train_step import corpus_manifests
from orthoasr.run_config import load_run_config
from orthoasr.train import Trainer, train

# the reference keeps autograd's own gradient handling (grads_in_place is ours: on the torch
# backend it would only turn autograd's free first gradient into an add)
PROVIDERS = {"ours": ["backend=auto", "cuda_graphs=true"],
             "ours_eager": ["backend=auto", "cuda_graphs=false"],
             "eager_reference": ["backend=torch", "cuda_graphs=false", "grads_in_place=false"]}


class StepClock:
    """Wraps Trainer.train_step to record, per step: stage, seconds of audio, whether it
    captured a graph, a CUDA event at its end, and the stage's peak memory."""

    def __init__(self):
        self.steps: list[dict] = []
        self.peak_mb: dict[int, float] = {}
        self._original = Trainer.train_step

    def __enter__(self):
        clock = self

        def timed(trainer, batch, *on_device):
            stage = 1 if trainer.frozen_masks is None else 2
            if clock.steps and clock.steps[-1]["stage"] != stage:   # a new stage
                clock.peak_mb[clock.steps[-1]["stage"]] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            graphs = trainer.step_graphs
            before = len(graphs.graphs) if graphs is not None else 0
            clock._original(trainer, batch, *on_device)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            clock.steps.append({"stage": stage, "end": end,
                                "audio_s": float(batch[1].sum()) / trainer.logmel.sample_rate,
                                "captured": (len(graphs.graphs) if graphs is not None else 0)
                                > before})

        Trainer.train_step = timed
        torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        Trainer.train_step = self._original
        if self.steps:
            self.peak_mb[self.steps[-1]["stage"]] = torch.cuda.max_memory_allocated() / 2**20

    def stage_rows(self, warmup: int) -> dict[int, dict]:
        torch.cuda.synchronize()
        rows = {}
        for stage in sorted({s["stage"] for s in self.steps}):
            steps = [s for s in self.steps if s["stage"] == stage]
            timed = [(prev["end"].elapsed_time(s["end"]), s)
                     for prev, s in zip(steps[warmup:], steps[warmup + 1:])]
            for index, (_, s) in enumerate(timed):
                s["index"] = warmup + 2 + index          # the step's number in its stage
            if not timed:
                continue
            ms = [t for t, _ in timed]
            # the steady state: steps that replayed a graph already captured (with the
            # paper's 8 shape classes and 4 / 3 drawn budgets a stage meets 32 / 24 keys,
            # each captured after two warm-up runs of the step)
            settled = [(t, s) for t, s in timed if not s["captured"]] or timed
            settled_ms = [t for t, _ in settled]
            median = statistics.median(settled_ms)
            rows[stage] = {"ms": median, "steps_timed": len(settled),
                           "audio_s_per_s": sum(s["audio_s"] for _, s in settled)
                           / (sum(settled_ms) / 1e3),
                           "max_over_median": max(settled_ms) / median,
                           "ms_all_steps": statistics.median(ms),
                           "max_over_median_all_steps": max(ms) / statistics.median(ms),
                           "captures": sum(s["captured"] for s in steps),
                           # where the longest steps fall (log steps flush: one sync)
                           "slowest": [(s["index"], round(t, 1)) for t, s in
                                       sorted(settled, key=lambda ts: -ts[0])[:3]],
                           "peak_mem_mb": self.peak_mb.get(stage, float("nan"))}
        return rows


def run_trainer(providers, *, config="configs/paper.yaml", preset="base",
                work_dir="/tmp/e2e_trainer", steps=60, warmup=10, max_frames=80000,
                settings=(), out=None) -> list[dict]:
    """Trains `steps` steps of each stage per provider on the synthetic `preset` corpus
    (made in work_dir if missing) and writes a row per (provider, stage) to e2e.json in
    `out` (default bench/results). settings: run-config overrides KEY=VALUE."""
    work = Path(work_dir)
    start = time.perf_counter()
    corpus, common = corpus_manifests(work, preset)
    common += [f"max_frames={max_frames}", "log_every=20", "ckpt_every=100000",
               "ckpt_minutes=1000", f"stage1_steps={steps}",
               f"stage2_steps={steps}", "shape_classes=8", *settings]
    rows = []
    for provider in providers:
        run = load_run_config(config, common + PROVIDERS[provider])
        with StepClock() as clock:
            train(run, work / provider, overwrite=True)
        for stage, row in clock.stage_rows(warmup).items():
            rows.append({"table": "e2e", "workload": f"trainer stage {stage}",
                         "shape": f"max_frames {max_frames}",
                         "case": f"trainer stage {stage} {Path(config).stem}, "
                                 f"corpus {corpus}",
                         "mode": "train step (data, fwd+bwd, AdamW)", "provider": provider,
                         "timing": "stream", "baseline": "eager_reference",
                         "time_unit": "ms", "settings": " ".join(settings), **row})
            print(f"trainer stage {stage} {provider:16s} {row['ms']:8.1f} ms "
                  f"{row['audio_s_per_s']:8.0f} audio s/s  max/median "
                  f"{row['max_over_median']:.2f} ({row['max_over_median_all_steps']:.2f} "
                  f"with captures), {row['captures']} captures, {row['peak_mem_mb']:.0f} MiB; "
                  f"slowest (step, ms) {row['slowest']}", flush=True)
        print(f"[{time.perf_counter() - start:.0f} s]", flush=True)
    if rows:
        print(f"rows -> {write_rows('e2e', rows, out)}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--preset", default="base", help="synthetic corpus (orthoasr synth)")
    parser.add_argument("--work-dir", default="/tmp/e2e_trainer")
    parser.add_argument("--steps", type=int, default=60, help="steps per stage")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per stage")
    parser.add_argument("--max-frames", type=int, default=80000)
    parser.add_argument("--providers", nargs="*", default=list(PROVIDERS),
                        choices=list(PROVIDERS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="folder for e2e.json (default "
                        "bench/results)")
    args = parser.parse_args()
    require_gpu("e2e_trainer")          # before the corpus is made (minutes)
    run_trainer(args.providers, config=args.config, preset=args.preset,
                work_dir=args.work_dir, steps=args.steps, warmup=args.warmup,
                max_frames=args.max_frames, settings=args.set, out=args.out)


if __name__ == "__main__":
    main()
