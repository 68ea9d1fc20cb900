"""Where a training step's GPU time goes (issue 14: the trainer's audio-per-second misses).

    python -m bench.profile_step [--config configs/paper.yaml] [--preset small]
        [--max-frames 80000] [--steps 10] [--ops N] [--out FILE]

Builds the trainer of `--config` on a synthetic corpus made on the machine; for each stage,
times `--steps` eager steps under torch.profiler after kernel_table's warm-up steps (the
kernels a CUDA-graph replay runs are the same): device time per step by part of the step
(kernel names sorted into parts by `PARTS`), then each kernel, largest first; with --ops, a
second profile (with Python stacks) names the aten ops behind the small kernels and where
they were called. Printed, and written as text to --out.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from bench.profile_kernels import kernel_table, op_table
from bench.train_step import corpus_manifests
from orthoasr.run_config import load_run_config
from orthoasr.run_data import TrainData, make_tokenizer
from orthoasr.train import Trainer

# unprofiled steps first: enough that every one of the paper config's 8 shape classes has
# been met (cuDNN times its algorithms at a class's first step: with 3, stage 1's profile
# held those trials, 145 ms a step instead of ~72, 2026-12-01)
WARMUP_STEPS = 30

# (part, regex on the kernel name), first match wins
PARTS = (
    ("ctc", r"_ctc_"),
    ("encoder: row GEMMs", r"_rows_gemm|_in_proj_|_out_proj_"),
    ("encoder: weight gradients", r"_wgrad|_col_sums|_out_proj_dw"),
    ("encoder: attention", r"_gated_attn"),
    ("encoder: conv", r"_conv_"),
    # with each block's residual steps and their dropout fused in since 2026-12-01
    ("encoder: LayerNorm, residual steps", r"_layer_norm"),
    # torch's dropout (the PyTorch backend; its add: elementwise)
    ("encoder: dropout", r"_dropout_residual|dropout|masked_scale"),
    ("OrthoSoftmax", r"ortho"),
    # the fused op after each frontend conv, or what it replaced (max-pool; ReLU, where and
    # the bias add are plain elementwise kernels, not told apart from the encoder's)
    ("frontend: bias, ReLU, pool, mask", r"_masked_relu_pool|max_pool"),
    ("optimizer", r"multi_tensor|adam|Adam|foreach"),
    ("cuDNN / cuBLAS (frontend, output layer)", r"cudnn|implicit|xmma|gemm|gemv|sm90|cutlass"),
    ("FFT (log-mel)", r"fft|FFT"),
    ("reductions", r"reduce_kernel"),
    ("elementwise, copies, fills", r"elementwise|copy|Fill|fill|cat|index"),
)


def part_of(kernel: str) -> str:
    return next((name for name, pattern in PARTS if re.search(pattern, kernel)), "other")


def report(title: str, rows: list[tuple[str, float, int]], top: int = 40) -> str:
    total = sum(us for _, us, _ in rows)
    parts: dict[str, list[float]] = {}
    for kernel, us, count in rows:
        entry = parts.setdefault(part_of(kernel), [0.0, 0])
        entry[0] += us
        entry[1] += count
    lines = [f"## {title}: {total / 1e3:.2f} ms of kernels per step, "
             f"{sum(c for _, _, c in rows)} launches"]
    lines += [f"    {us / 1e3:8.2f} ms {count:6d}x  {name}"
              for name, (us, count) in sorted(parts.items(), key=lambda p: -p[1][0])]
    lines += ["", "  kernels:"]
    lines += [f"    {us:9.1f} us {count:5d}x  {kernel[:110]}" for kernel, us, count in rows[:top]]
    return "\n".join(lines) + "\n"


def op_report(title: str, rows: list[tuple[str, float, int, str]], top: int) -> str:
    lines = [f"## {title}: aten ops by the device time of their own kernels, per step"]
    lines += [f"    {us:9.1f} us {count:5d}x  {op}  @ {where}"
              for op, us, count, where in rows[:top]]
    return "\n".join(lines) + "\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--preset", default="small", help="synthetic corpus (orthoasr synth)")
    parser.add_argument("--work-dir", default="/tmp/profile_step")
    parser.add_argument("--max-frames", type=int, default=80000)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per stage")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="text file for the tables")
    parser.add_argument("--top", type=int, default=40,
                        help="kernels listed per stage, by time (the parts' tails need more)")
    parser.add_argument("--ops", type=int, default=0, metavar="N",
                        help="also list the N aten ops whose own kernels took most device "
                             "time per step, with where they were called (a second profile)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.profile_step needs a CUDA device")
    work = Path(args.work_dir)
    _, manifests = corpus_manifests(work, args.preset)
    per_stage = WARMUP_STEPS + args.steps
    run = load_run_config(args.config, manifests + [
        f"max_frames={args.max_frames}", "cuda_graphs=false", f"stage1_steps={per_stage}",
        f"stage2_steps={per_stage}", f"warmup_steps={per_stage}", *args.set])
    (work / "run").mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, work / "run")
    trainer.tokenizer = make_tokenizer(run, work / "run")
    batches = TrainData(run, trainer.tokenizer, pin_memory=True).batches(0, 0)
    text = f"# {torch.cuda.get_device_name()}, {args.config}, {args.preset} corpus, " \
           f"max_frames {args.max_frames}, eager steps\n\n"
    for stage in (1, 2):
        if stage == 2:
            trainer.freeze()
            trainer.prepare_stage2()

        def step():
            trainer.train_step(next(batches)[2])
        text += report(f"stage {stage}", kernel_table(step, args.steps, WARMUP_STEPS),
                       args.top) + "\n"
        if args.ops:
            text += op_report(f"stage {stage}", op_table(step, args.steps, 2), args.ops)
    batches.close()
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
