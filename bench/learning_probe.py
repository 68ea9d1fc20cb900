"""Where do the backends part in training? Trains the paper model with one backend on the
synthetic corpus (the plain Conformer-CTC of issue 11: one budget, no SpecAugment) and every
`--check-every` steps compares one step's gradients of both backends on the current batch
and weights, printing the per-module table of bench.grad_check: in train mode Triton
against torch (the same dropout masks only with ORTHOASR_KERNEL_MASKS=1), and with
`--fp64` in eval mode each backend in bf16 against an fp64 copy of the model, which says
which of the two is further from the exact gradient. After the last step, `--module-check`
replays every gated module alone and `--attention-check` the last MHSA modules' attention
core alone, each backend in bf16 against fp64 on the same inputs.

    ORTHOASR_KERNEL_MASKS=1 python -m bench.learning_probe --backend torch --steps 600 \
        --check-every 300 --fp64 --attention-check --module-check seed=0
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from bench.grad_check import compare, grads_of
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


def record_modules(trainer: Trainer, batch, modules: list) -> list[dict]:
    """One eval-mode (no dropout) torch-backend step on `batch` (no update), recording for
    each call of `modules`: the module, its input x (after the residual step fused into it),
    lengths, gates, and dy, its output's gradient. The model is left in eval mode."""
    records = []

    def hook(module, inputs, kwargs, output):
        x, lengths, gates = inputs
        residual = kwargs.get("residual")
        if residual is not None:     # (y, seed, scale, p): the module returned (x_new, out)
            x = x + residual[2] * residual[0]
            output = output[1]
        rec = {"module": module, "x": x.detach(), "lengths": lengths,
               "gates": None if gates is None else gates.detach()}
        output.register_hook(lambda g: rec.__setitem__("dy", g.detach()))
        records.append(rec)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    trainer.model.eval()
    step_grads(trainer, batch, "torch")
    for h in handles:
        h.remove()
    return records


def fp64_check(trainer: Trainer, batch, model64, rows: list, step: int) -> None:
    """Eval mode (no dropout), bf16 autocast: each backend's gradient of the batch's CTC
    loss against the fp64 copy's, per module (bench.grad_check.compare) and over all
    parameters together."""
    waves, wave_lengths, targets, target_lengths = (t.to(trainer.device) for t in batch)
    feats, lengths = trainer.features(waves, wave_lengths)
    inputs = {"feats": feats, "lengths": lengths, "targets": targets,
              "target_lengths": target_lengths.cpu()}
    model64.load_state_dict({k: v.double() for k, v in trainer.model.state_dict().items()})
    _, exact = grads_of(model64, dict(inputs, feats=feats.double()), "torch", train=False,
                        autocast=False, seed=0)
    loss_t, ours = grads_of(trainer.model, inputs, "auto", train=False, autocast=True, seed=0)
    loss_r, ref = grads_of(trainer.model, inputs, "torch", train=False, autocast=True, seed=0)
    trainer.model.train()
    set_backend(trainer.run.backend)
    norm = sum(float(g.square().sum()) for g in exact.values()) ** 0.5

    def total(grads):
        return sum(float((grads[k] - g).square().sum()) for k, g in exact.items()) ** 0.5 / norm

    print(f"step {step}: eval bf16 loss triton {loss_t:.5f} torch {loss_r:.5f}; whole "
          f"gradient's rel err against fp64: triton {total(ours):.2e} torch {total(ref):.2e} "
          f"(|g64| {norm:.2e})", flush=True)
    compare(f"step {step}, eval bf16 vs fp64", ours, exact, ref, rows)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def module_check(trainer: Trainer, batch) -> None:
    """Record every gated module's input and output gradient in one eval-mode torch-backend
    step on `batch` (record_modules), then replay each module alone: Triton and torch in
    bf16 autocast against fp64, output and every gradient; prints the ratio err(triton) /
    err(torch) (error-ratio rule)."""
    from orthoasr.nn import GatedConvModule, GatedFeedForward, GatedMHSA
    modules = []
    for name, m in trainer.model.named_modules():
        if isinstance(m, (GatedConvModule, GatedFeedForward, GatedMHSA)):
            m._probe_name = name
            modules.append(m)
    records = record_modules(trainer, batch, modules)
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
        for i, name in enumerate(names):     # the attention's q, k and v rows apart
            if "in_proj" in name:
                parts = [r[i].chunk(3) for r in (results["triton"], results["torch"],
                                                 results["fp64"])]
                cells = "  ".join(f"{p} {_max_err(t, r):.1e} / {_max_err(o, r):.1e} (max "
                                  f"{float(r.abs().max()):.1e})" for p, t, o, r in
                                  zip("qkv", *parts))
                print(f"    {name}, error triton / torch: {cells}", flush=True)
    set_backend(trainer.run.backend)
    trainer.model.train()


def attention_check(trainer: Trainer, batch, blocks: int = 2) -> None:
    """The attention core of the last `blocks` MHSA modules alone, on the q, k, v and output
    gradient of one eval-mode torch step on `batch` (made in fp64 from the recorded module
    input and output gradient, then rounded to bf16): the Triton kernel and the torch
    backend's attention in bf16 against fp64 on the same rounded inputs (on a GPU: the
    interpreter has no bf16 products). Prints, per
    gradient, the largest error relative to the fp64 values' largest, and the error of its
    sum over valid frames (what a bias gradient sees) relative to the sum of the fp64
    values' magnitudes."""
    import torch.nn.functional as F

    from kernels.gated_attention import gated_attention, gated_attention_reference
    from orthoasr.nn import GatedMHSA
    mhsa = [m for _, m in trainer.model.named_modules() if isinstance(m, GatedMHSA)]
    records = record_modules(trainer, batch, mhsa[-blocks:])
    for index, rec in enumerate(records):
        m, x, lengths = rec["module"], rec["x"].double(), rec["lengths"]
        B, T, D = x.shape
        H, Dh = m.num_heads, D // m.num_heads
        with torch.no_grad():
            y = F.layer_norm(x, (D,), m.norm.weight.double(), m.norm.bias.double(), m.norm.eps)
            qkv = F.linear(y, m.in_proj_weight.double(), m.in_proj_bias.double())
            q, k, v = qkv.view(B, T, H, 3, Dh).permute(3, 0, 2, 1, 4).bfloat16().unbind(0)
            # the core's output gradient: out = a W_o^T + b_o, so d_a = dy W_o
            d_out = (rec["dy"].double() @ m.out_proj_weight.double()).view(B, T, H, Dh)
            d_out = d_out.transpose(1, 2).bfloat16()
        valid = (torch.arange(T, device=x.device)[None, :] < lengths[:, None])
        results = {}
        for label, dtype in (("triton", None), ("torch", None), ("fp64", torch.float64)):
            inputs = [t.to(dtype or t.dtype).contiguous().requires_grad_() for t in (q, k, v)]
            out = gated_attention(*inputs, lengths) if label == "triton" else \
                gated_attention_reference(*inputs, lengths, None, Dh ** -0.5)
            grads = torch.autograd.grad(out, inputs, d_out.to(out.dtype))
            results[label] = [out.detach().double(), *[g.double() for g in grads]]
        cells = []
        for i, name in enumerate(("out", "dq", "dk", "dv")):
            ref = results["fp64"][i]
            scale = float(ref.abs().max())
            mask = valid[:, None, :, None]
            ref_sum = (ref * mask).sum((0, 2))       # (H, Dh)
            abs_sum = float((ref.abs() * mask).sum((0, 2)).max())
            errs = []
            for label in ("triton", "torch"):
                got = results[label][i]
                errs.append(_max_err(got, ref) / scale)
                errs.append(float(((got * mask).sum((0, 2)) - ref_sum).abs().max())
                            / max(abs_sum, 1e-30))
            cells.append(f"{name} max {errs[0]:.1e}/{errs[2]:.1e} sum {errs[1]:.1e}/"
                         f"{errs[3]:.1e}")
        print(f"attention core, MHSA {len(mhsa) - blocks + index} (|q|max "
              f"{float(q.abs().max()):.0f}, |k|max {float(k.abs().max()):.0f}), rel. error "
              f"triton/torch: " + "  ".join(cells), flush=True)
    set_backend(trainer.run.backend)
    trainer.model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--work-dir", default="/tmp/probe")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--check-every", type=int, default=300)
    parser.add_argument("--max-frames", type=int, default=40000)
    parser.add_argument("--module-check", action="store_true",
                        help="after training, replay every gated module alone vs fp64")
    parser.add_argument("--attention-check", action="store_true",
                        help="after training, the last MHSA modules' attention core alone")
    parser.add_argument("--fp64", action="store_true",
                        help="at each check also compare both backends (bf16, eval) to fp64")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides")
    args = parser.parse_args()
    work = Path(args.work_dir)
    make_corpus(work / "data", args.preset)
    overrides = [f"{s}_manifest={work / 'data' / (s + '.jsonl')}" for s in
                 ("train", "dev", "test")]
    overrides += [f"max_frames={args.max_frames}", "model.budgets=[1.0]", "spec_augment=false",
                  f"stage1_steps={args.steps}", "stage2_steps=1", "warmup_steps=300",
                  f"backend={args.backend}", "num_workers=2", "cuda_graphs=false",
                  *args.overrides]
    run = load_run_config(args.config, overrides)
    if run.cuda_graphs:     # each check switches the backend, which a captured step won't see
        raise SystemExit("bench.learning_probe: cuda_graphs=true cannot be probed")
    out = work / args.backend
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, out)
    trainer.tokenizer = make_tokenizer(run, out)
    batches = TrainData(run, trainer.tokenizer, pin_memory=True).batches(0, 0)
    model64 = copy.deepcopy(trainer.model).double() if args.fp64 else None
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
            if model64 is not None:
                fp64_check(trainer, batch, model64, rows, step)
        if step == args.steps:
            if args.attention_check:
                attention_check(trainer, batch)
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
