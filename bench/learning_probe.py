"""Where do the backends part in training? Trains the paper model with one backend on the
synthetic corpus (the plain Conformer-CTC of issue 11: one budget, no SpecAugment) and every
`--check-every` steps compares one step's gradients of both backends on the current batch
and weights (same dropout masks), printing the per-module table of bench.grad_check.

    python -m bench.learning_probe --backend torch --steps 900 --check-every 300
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.grad_check import compare
from bench.train_step import make_corpus
from orthoasr.backend import set_backend
from orthoasr.run_config import load_run_config
from orthoasr.run_data import TrainData, make_tokenizer
from orthoasr.train import Trainer


def step_grads(trainer: Trainer, batch, backend: str) -> tuple[float, dict]:
    """One forward+backward of the trainer's loss on `batch` with `backend` (no update)."""
    waves, wave_lengths, targets, target_lengths = (t.to(trainer.device) for t in batch)
    feats, lengths = trainer.features(waves, wave_lengths)
    set_backend(backend)
    torch.manual_seed(1234)
    trainer.model.zero_grad(set_to_none=True)
    loss, _ = trainer.losses(feats, lengths, targets, target_lengths,
                             drawn=trainer.draw_budget())
    loss.backward()
    grads = {name: p.grad.detach().double().clone()
             for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    set_backend(trainer.run.backend)
    return float(loss), grads


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def module_check(trainer: Trainer, batch) -> None:
    """Record every gated module's input and output gradient in one torch-backend step on
    `batch`, then replay each module alone: Triton and torch in bf16 autocast against fp64,
    output and every gradient; prints the ratio err(triton) / err(torch) (error-ratio rule)."""
    from orthoasr.nn import GatedConvModule, GatedFeedForward, GatedMHSA
    records, handles = [], []

    def hook(module, inputs, output):
        x, lengths, gates = inputs
        rec = {"module": module, "x": x.detach(), "lengths": lengths,
               "gates": None if gates is None else gates.detach()}
        output.register_hook(lambda g: rec.__setitem__("dy", g.detach()))
        records.append(rec)

    for name, m in trainer.model.named_modules():
        if isinstance(m, (GatedConvModule, GatedFeedForward, GatedMHSA)):
            m._probe_name = name
            handles.append(m.register_forward_hook(hook))
    step_grads(trainer, batch, "torch")
    for h in handles:
        h.remove()
    trainer.model.eval()
    for rec in records:
        m, x, lengths, gates, dy = rec["module"], rec["x"], rec["lengths"], rec["gates"], \
            rec["dy"]
        results = {}
        for label, backend, dtype in (("triton", "auto", None), ("torch", "torch", None),
                                      ("fp64", "torch", torch.float64)):
            set_backend(backend)
            mm = m.double() if dtype else m
            xx = x.to(dtype or x.dtype).requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is None):
                y = mm(xx, lengths, None if gates is None else gates.to(dtype or gates.dtype))
            grads = torch.autograd.grad(y, [xx, *mm.parameters()], dy.to(y.dtype))
            results[label] = [y.detach(), *[g.detach() for g in grads]]
            m.float()
        names = ["out", "dx", *[n for n, _ in m.named_parameters()]]
        worst = []
        for i, name in enumerate(names):
            ref = results["fp64"][i]
            e_t, e_r = _max_err(results["triton"][i], ref), _max_err(results["torch"][i], ref)
            bad = "!!" if e_t > 2 * e_r + 1e-3 * float(ref.abs().max()) else ""
            worst.append((e_t / max(e_r, 1e-30), name + bad, e_t, e_r,
                          float(ref.abs().max())))
        worst.sort(reverse=True)
        cells = "  ".join(f"{n} {r:.2f} ({et:.1e}/{er:.1e}, max {mx:.1e})"
                          for r, n, et, er, mx in worst[:3])
        print(f"{m._probe_name:32s} x {tuple(x.shape)} {x.dtype} "
              f"|x|max {float(x.abs().max()):.1f}: {cells}", flush=True)
    set_backend(trainer.run.backend)
    trainer.model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--work-dir", default="/tmp/probe")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--check-every", type=int, default=300)
    parser.add_argument("--max-frames", type=int, default=40000)
    parser.add_argument("--module-check", action="store_true",
                        help="after training, replay every gated module alone vs fp64")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides")
    args = parser.parse_args()
    work = Path(args.work_dir)
    make_corpus(work / "data", args.preset)
    overrides = [f"{s}_manifest={work / 'data' / (s + '.jsonl')}" for s in
                 ("train", "dev", "test")]
    overrides += [f"max_frames={args.max_frames}", "model.budgets=[1.0]", "spec_augment=false",
                  f"stage1_steps={args.steps}", "stage2_steps=1", "warmup_steps=300",
                  f"backend={args.backend}", "num_workers=2", *args.overrides]
    run = load_run_config(args.config, overrides)
    out = work / args.backend
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, out)
    trainer.tokenizer = make_tokenizer(run, out)
    batches = TrainData(run, trainer.tokenizer, pin_memory=True).batches(0, 0)
    start = time.perf_counter()
    rows: list = []
    for step in range(args.steps + 1):
        _, _, batch = next(batches)
        if step % args.check_every == 0:
            loss_t, grads_t = step_grads(trainer, batch, "auto")
            loss_r, grads_r = step_grads(trainer, batch, "torch")
            print(f"step {step}: B={batch[0].shape[0]} loss triton {loss_t:.5f} "
                  f"torch {loss_r:.5f}", flush=True)
            compare(f"trained with {args.backend}, step {step}: triton vs torch", grads_t,
                    grads_r, None, rows)
        if step == args.steps:
            if args.module_check:
                module_check(trainer, batch)
            break
        trainer.train_step(batch)
        if step % 50 == 49:
            losses = [float(p["loss"]) for p in trainer.pending[-50:]]
            print(f"{args.backend} step {step + 1}: mean loss {sum(losses) / 50:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
