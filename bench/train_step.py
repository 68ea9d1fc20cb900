"""End-to-end training step time: `orthoasr train --config configs/paper.yaml` for a few steps
of each stage on a small corpus made on the machine, with the Triton kernels and, as the
baseline in the same run, with the PyTorch references.

    python -m bench.train_step --work-dir /tmp/train_bench --out bench/results

Step time = wall time between the loop's loss reads / steps (data loading included), the
median over the log intervals after the first of each stage (compilation, autotuning).
Learning check: both backends train on the same batches (same seed, same plan), and each
row carries `loss_start` / `loss_end`, the supernet's mean CTC loss per frame over the first
and last 20 steps of its stage, `steps`, and `left_plateau`, the first step whose 50-step
mean loss is under 1.0 (None: never): a fast kernel that trains wrongly shows there.
Rows go to <out>/train_step.json (table "train").

The plain paper-size Conformer-CTC of issue 11 (one budget, no SpecAugment), both backends:
    python -m bench.train_step --steps 1600 --baseline-steps 1600 --stage2-steps 1 \
        --set model.budgets=[1.0] spec_augment=false warmup_steps=300 --max-frames 40000
With ORTHOASR_KERNEL_MASKS=1 the torch backend drops what the kernels drop (the same masks),
so the two curves part by rounding alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import write_rows
from orthoasr.backend import kernel_masks
from orthoasr.metrics import plateau_exit, read_metrics
from orthoasr.run_config import load_run_config
from orthoasr.train import train

WORDS = ("the quick brown fox jumps over lazy dog red green blue one two three four five six "
         "seven eight nine stop go left right up down yes no").split()


def make_corpus(data_dir: Path, preset: str) -> str:
    """The synthetic eSpeak corpus if it can be made here, else random noise with random
    transcripts (shapes and step times only). Returns which one."""
    summary = data_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("preset") == preset:
        print(f"reusing the {preset} corpus in {data_dir}")
        return f"synth-{preset}"
    try:
        from orthoasr.data.synth import synthesize_corpus
        # a corpus of another preset (or an interrupted one) is replaced
        synthesize_corpus(data_dir, preset=preset, seed=0, overwrite=True)
        return f"synth-{preset}"
    except Exception as err:  # no eSpeak NG on this machine
        print(f"synthesis failed ({err!r}); using random audio")
    from orthoasr.data import write_wav
    rng = np.random.default_rng(0)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 2000), ("dev", 100), ("test", 100)):
        with (data_dir / f"{split}.jsonl").open("w") as manifest:
            for i in range(count):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 15))))
                samples = int(16000 * rng.uniform(1.5, 6.0))
                path = data_dir / f"{split}_{i}.wav"
                write_wav(path, 0.1 * rng.standard_normal(samples), 16000)
                manifest.write(json.dumps({"audio_filepath": str(path),
                                           "duration": samples / 16000, "text": text}) + "\n")
    return "random"


def corpus_manifests(work: Path, preset: str) -> tuple[str, list[str]]:
    """make_corpus in work/data, timed: (which corpus, the manifest overrides for a run)."""
    start = time.perf_counter()
    corpus = make_corpus(work / "data", preset)
    print(f"corpus {corpus} ready after {time.perf_counter() - start:.0f} s", flush=True)
    return corpus, [f"{s}_manifest={work / 'data' / (s + '.jsonl')}"
                    for s in ("train", "dev", "test")]


def stage_times(rows: list[dict]) -> dict[int, dict]:
    """stage -> medians over the log intervals after the first (compilation) of ms/step,
    utt/s and audio s/s, and the number of steps timed."""
    out = {}
    for stage in (1, 2):
        intervals = {}                  # the rows of one interval share its timings
        for r in rows:
            if int(r["stage"]) == stage:
                key = (r["ms_per_step"], r["utt_per_s"], r.get("audio_per_s", math.nan))
                intervals.setdefault(key, []).append(r["step"])
        timed = list(intervals.items())[1:]
        if timed:
            out[stage] = {name: statistics.median(k[i] for k, _ in timed) for i, name in
                          enumerate(("ms_per_step", "utt_per_s", "audio_per_s"))}
            out[stage]["steps_timed"] = sum(len(v) for _, v in timed)
    return out


def learning(rows: list[dict], stage: int, window: int = 20) -> dict:
    """loss_start / loss_end: mean supernet CTC loss per frame over the first and last
    `window` steps of `stage`; steps: how many steps the stage ran; left_plateau: the step
    at which it left CTC's blank plateau (`plateau_exit` at its defaults), None if never."""
    stage_rows = [r for r in rows if int(r["stage"]) == stage]
    losses = [r["loss_sup"] for r in stage_rows]
    if not losses:
        return {}
    exit_at = plateau_exit(losses)
    return {"loss_start": statistics.fmean(losses[:window]),
            "loss_end": statistics.fmean(losses[-window:]), "steps": len(losses),
            "left_plateau": None if exit_at is None else int(stage_rows[exit_at]["step"])}


def run_case(config: str, run, stage: int, max_frames: int, corpus: str) -> str:
    """The row's case: config, budgets, dropout (and whether the torch backend draws the
    kernels' masks, ORTHOASR_KERNEL_MASKS=1), precision if fp32, stage, batch size, corpus
    and seed, so that runs of other seeds, budgets, dropouts or precisions are rows of their
    own (the report shows a case's newest row of each provider)."""
    budgets = len(run.model.budgets)
    masks = ", kernels' masks" if kernel_masks() else ""
    fp32 = "" if run.bf16 else ", fp32"
    return (f"{Path(config).stem}, {budgets} budget{'s' if budgets > 1 else ''}, dropout "
            f"{run.model.dropout:g}{masks}{fp32}, stage {stage}, max_frames {max_frames}, "
            f"corpus {corpus}, seed {run.seed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--work-dir", default="/tmp/train_bench")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=30, help="steps per stage (ours)")
    parser.add_argument("--baseline-steps", type=int, default=15, help="per stage (torch)")
    parser.add_argument("--stage2-steps", type=int, default=None,
                        help="stage-2 steps for both (default: as stage 1)")
    parser.add_argument("--backends", default="auto,torch",
                        help="which providers to run, comma-separated (auto, torch, graphs: "
                             "auto with cuda_graphs=true)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="run-config overrides for both providers")
    parser.add_argument("--max-frames", type=int, default=32000)
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args()
    work = Path(args.work_dir)
    start = time.perf_counter()
    corpus, common = corpus_manifests(work, args.preset)
    common += [f"max_frames={args.max_frames}", "log_every=5", "ckpt_every=100000",
               "warmup_steps=10", "penalty_warmup=10", *args.set]
    results = {}
    ours = "orthoasr (triton)" if torch.cuda.is_available() else "orthoasr (auto: torch on CPU)"
    for provider, name, steps in ((ours, "auto", args.steps),
                                  (f"{ours}, CUDA graphs", "graphs", args.steps),
                                  ("pytorch reference", "torch", args.baseline_steps)):
        if name not in args.backends.split(","):
            continue
        stage2 = steps if args.stage2_steps is None else args.stage2_steps
        backend = {"graphs": ["backend=auto", "cuda_graphs=true"]}.get(
            name, [f"backend={name}", "cuda_graphs=false"])
        run = load_run_config(args.config, common + backend + [f"stage1_steps={steps}",
                                                               f"stage2_steps={stage2}"])
        out_dir = work / name
        train(run, out_dir)
        metrics = read_metrics(out_dir / "metrics.csv")
        times = stage_times(metrics)
        for stage in times:
            times[stage].update(learning(metrics, stage))
        results[provider] = (times, run)
        print(f"{provider}: {results[provider][0]} after {time.perf_counter() - start:.0f} s",
              flush=True)
    rows = []
    for provider, (times, run) in results.items():
        for stage, t in times.items():
            rows.append({"table": "train", "case": run_case(args.config, run, stage,
                                                           args.max_frames, corpus),
                         "mode": "train step (fwd+bwd+AdamW, data incl.)", "provider": provider,
                         "baseline": "pytorch reference", "ms": t["ms_per_step"],
                         "utt_per_s": t["utt_per_s"], "steps_timed": t["steps_timed"],
                         "bf16": run.bf16, "budgets": list(run.model.budgets),
                         **{k: t[k] for k in ("loss_start", "loss_end", "steps", "left_plateau")
                            if k in t}})
    path = write_rows("train_step", rows, args.out)
    print(json.dumps(rows, indent=1))
    print(f"rows -> {path} after {time.perf_counter() - start:.0f} s", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    for name in args.backends.split(","):
        print(f"evaluate {name} with `orthoasr eval --checkpoint {work / name / 'checkpoint.pt'}`")


if __name__ == "__main__":
    main()
