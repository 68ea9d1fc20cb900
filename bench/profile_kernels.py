"""Where each gated module's GPU time goes, kernel by kernel (issue 13's "profile and reason").

    python -m bench.profile_kernels [--shape B32xT250] [--modules ffn conv mhsa encoder]
        [--gates all-on dense half soft] [--modes fwd+bwd fwd]
        [--providers ours dense_floor compile_floor] [--out FILE]

For each module, gate pattern, mode and provider: fwd+bwd (training) or fwd (inference: no
grad) under bf16 autocast (fp32 weights, as in training), `--iters` calls under
torch.profiler, and each kernel's device time per call in microseconds, largest first, with
the total. Printed, and written as text to --out.
Providers: `ours` (the default), and for hard gate patterns the dense floor of
bench/floors.py (bf16 weights cast once) and torch.compile (max-autotune-no-cudagraphs) of
it, as bench_floor times them: where the compiled floor's time goes, kernel by kernel, beside
ours.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.profiler import ProfilerActivity, profile

from bench.bench_floor import (
    GATE_PATTERNS,
    SHAPES,
    gate_patterns,
    grad_in_output_dtype,
    model_gate_patterns,
)
from bench.floors import EncoderFloor, compiled_floor, encode_gated, module_floor
from bench.harness import require_gpu
from orthoasr import set_backend
from orthoasr.config import SupernetConfig
from orthoasr.model import ConformerSupernet, make_module


def kernel_table(fn, iters: int, warmup: int = 3) -> list[tuple[str, float, int]]:
    """[(kernel name, device µs per call of fn, launches per call)], largest first, after
    `warmup` unprofiled calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0.0)
        if device_us > 0:
            rows.append((event.key, device_us / iters, event.count // iters))
    return sorted(rows, key=lambda r: -r[1])


def op_table(fn, iters: int, warmup: int = 3, frames: int = 3
             ) -> list[tuple[str, float, int, str]]:
    """[(aten op, device µs per call of fn of the kernels it launched itself, calls per call
    of fn, where: its innermost `frames` callers in orthoasr or bench, or the autograd node
    that ran it)], largest first: who launches the small kernels that a kernel table cannot
    tell apart (copies, adds, fills)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 with_stack=True) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    totals: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        device_us = getattr(event, "self_device_time_total", 0.0)
        if device_us <= 0 or not event.name.startswith("aten::"):
            continue
        # the op's recorded Python stack where the profiler fills one in, else the Python-
        # function events above it (what torch 2.13 gives on the CPU; the H200 run of
        # 2026-12-01, torch 2.11, found no Python frame among the parents)
        ours = [f for f in (event.stack or []) if "orthoasr/" in f or "bench/" in f]
        callers = [f.split("orthoasr/")[-1] for f in ours[:frames]]
        parent = None if callers else event.cpu_parent
        while parent is not None and len(callers) < frames:
            if "orthoasr/" in parent.name or "bench/" in parent.name or \
                    "evaluate_function" in parent.name:
                callers.append(parent.name.split("orthoasr/")[-1])
            parent = parent.cpu_parent
        entry = totals.setdefault((event.name, " < ".join(callers)), [0.0, 0])
        entry[0] += device_us
        entry[1] += 1
    rows = [(op, us / iters, count // iters, where)
            for (op, where), (us, count) in totals.items()]
    return sorted(rows, key=lambda r: -r[1])


def kernel_report(label: str, run, params, gates, mode: str, x, lengths, dy, iters: int
                  ) -> list[str]:
    """The kernel table of `run(x, lengths, gates)` as text lines: fwd+bwd (dy the output's
    gradient) or fwd alone without autograd (inference)."""
    def step():
        if mode == "fwd":
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                run(x, lengths, gates)
            return
        # gradients set to None first, as a training step does: accumulating into them added
        # one add kernel per parameter (~1 ms of the encoder's profile)
        params.zero_grad(set_to_none=True)
        x.grad = None
        if gates is not None:
            gates.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = run(x, lengths, gates)
        y.backward(dy)

    params.train(mode != "fwd")
    if mode != "fwd":       # not autograd's cast of dy in every backward (the harness's)
        dy = grad_in_output_dtype(lambda: run(x, lengths, gates), dy)
    table = kernel_table(step, iters)
    return ([f"\n## {label}: {sum(r[1] for r in table):.1f} us of kernels per call, "
             f"{sum(r[2] for r in table)} launches"]
            + [f"{us:9.1f} us {count:3d}x  {key[:110]}" for key, us, count in table])


def _floor(module, gates) -> torch.nn.Module:
    """bench_floor's dense floor of a module, or of the encoder, under hard `gates`."""
    if isinstance(module, ConformerSupernet):
        return EncoderFloor(module, gates, torch.bfloat16)
    return module_floor(module, gates, torch.bfloat16)


FLOOR_PROVIDERS = {
    "dense_floor": _floor,
    "compile_floor": lambda module, gates: compiled_floor(_floor(module, gates)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="B32xT250", choices=list(SHAPES))
    parser.add_argument("--modules", nargs="*", default=["ffn", "conv", "mhsa"],
                        choices=["ffn", "conv", "mhsa", "encoder"])
    parser.add_argument("--gates", nargs="*", default=["all-on", "half", "off", "soft"],
                        choices=GATE_PATTERNS)
    parser.add_argument("--modes", nargs="*", default=["fwd+bwd"], choices=["fwd+bwd", "fwd"])
    parser.add_argument("--providers", nargs="*", default=["ours"],
                        choices=["ours", *FLOOR_PROVIDERS])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    require_gpu("profile_kernels")
    set_backend("auto")
    cfg = SupernetConfig(budgets=(1.0,), dropout=0.0)
    B, T = SHAPES[args.shape]
    torch.manual_seed(0)
    x = torch.randn(B, T, cfg.d_model, device="cuda", requires_grad=True)
    lengths = torch.randint(T // 2, T + 1, (B,), device="cuda")
    lengths[0] = T
    dy = torch.randn_like(x)
    lines = [f"# {torch.cuda.get_device_name()}, {args.shape}, bf16 autocast, fp32 weights"]
    for kind in args.modules:
        if kind == "encoder":  # the whole encoder: every block's modules and the glue
            model = ConformerSupernet(cfg).cuda()
            patterns = model_gate_patterns(model)

            def run(x, lengths, gates, model=model):
                return encode_gated(model, x, lengths, gates)
            params = model
        else:
            module = make_module(cfg, "ffn1" if kind == "ffn" else kind).cuda()
            patterns = gate_patterns(module.num_gates if kind != "conv" else 1, "cuda")
            run = params = module
        for (name, gates), mode in itertools.product(patterns.items(), args.modes):
            if name not in args.gates:
                continue
            if "ours" in args.providers:
                g = gates
                if g is not None:       # None: `dense`, no gates (the supernet's pass)
                    g = g.clone().requires_grad_(name == "soft" and mode == "fwd+bwd")
                lines += kernel_report(f"{kind} {name} {mode}", run, params, g, mode,
                                       x, lengths, dy, args.iters)
            # floors: hard gates that leave work (soft has none; dense's is all-on's)
            if gates is None or name in ("soft", "off"):
                continue
            for provider in [p for p in args.providers if p in FLOOR_PROVIDERS]:
                floor = FLOOR_PROVIDERS[provider](params, gates)
                lines += kernel_report(f"{kind} {name} {mode} {provider}",
                                       lambda x, lengths, _g, f=floor: f(x, lengths), floor,
                                       None, mode, x, lengths, dy, args.iters)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
