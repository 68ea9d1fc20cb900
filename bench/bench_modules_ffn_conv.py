"""Benchmark of the gated FFN and conv modules (issue 3) on one GPU, bf16 autocast.

Providers: ours (Triton kernels, eager launch), ours-graph (the same call replayed from a CUDA
graph: GPU time without host launch overhead), eager (bench/baselines_ffn_conv.py, masking
the way the method's public code does), compile (torch.compile of that baseline; soft gates
and gates=None only: the hard-mask baseline syncs and changes shapes). Modes fwd (no grad)
and fwd+bwd (grads of x, every weight and soft gates). Paper-size modules: d 384, FFN 1536
in 4 chunks, conv kernel 31; B32xT250 and B16xT750, lengths uniform in [T/2, T].

Also: the fused depthwise-conv + LayerNorm + SiLU forward kernel against the card's measured
device-to-device copy bandwidth.

Run: python -m bench.bench_modules_ffn_conv [--quick]; rows go to
bench/results/kernels.json (and $OUT when set).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.baselines_ffn_conv import eager_conv, eager_ffn
from bench.harness import require_gpu, time_graph_ms, time_ms, write_rows

D, FF, CHUNKS, K = 384, 1536, 4, 31
SHAPES = ((32, 250), (16, 750))
NAME = "kernels"


def _emit(rows):
    write_rows(NAME, rows)
    if os.environ.get("OUT"):
        write_rows(NAME, rows, out_dir=os.environ["OUT"])
    for r in rows:
        print(f"{r['case']:<34} {r['mode']:<8} {r['provider']:<11} {r['ms'] * 1e3:9.1f} us",
              flush=True)


def _step(fn, x, dy, params, gates, mode):
    """A closure running fn once in `mode`."""
    if mode == "fwd":
        def run():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                fn(x, gates)
        return run
    inputs = [x, *params] + ([gates] if gates is not None and gates.requires_grad else [])

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x, gates)
        if y.requires_grad:  # the eager all-off baseline returns a constant zero tensor
            torch.autograd.grad(y, inputs, dy, allow_unused=True)
    return run


def bench_module(kind, module, cases, B, T, quick):
    dev = "cuda"
    g = torch.Generator(device="cpu").manual_seed(B * 1000 + T)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).to(dev)
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    params = list(module.parameters())
    eager = eager_ffn if kind == "ffn" else eager_conv
    compiled = torch.compile(eager, dynamic=False)
    rows = []
    for case, gates, hard in cases:
        def ours(xx, gg):
            return module(xx, lengths, gg)

        def base(xx, gg, h=hard):
            return eager(module, xx, lengths, gg, h)

        def comp(xx, gg, h=hard):
            return compiled(module, xx, lengths, gg, h)
        for mode in ("fwd", "fwd+bwd"):
            providers = [("ours", ours), ("ours-graph", ours), ("eager", base)]
            if not hard and not quick:
                providers.append(("compile", comp))
            for provider, fn in providers:
                run = _step(fn, x, dy, params, gates, mode)
                try:
                    ms = (time_graph_ms if provider == "ours-graph" else time_ms)(
                        run, warmup_ms=25, rep_ms=150)
                except Exception as err:  # report, keep the run going
                    print(f"{kind} {case} {mode} {provider} failed: {err!r}"[:300], flush=True)
                    continue
                rows.append(dict(table="modules", case=f"{kind} B{B}xT{T} {case}", mode=mode,
                                 provider=provider, ms=ms, baseline="eager"))
    _emit(rows)
    return rows


def ffn_cases(dev):
    soft = torch.tensor([0.9, 0.6, 0.4, 0.2], device=dev, requires_grad=True)
    return [("soft", soft, False), ("gates=None", None, False),
            ("hard all-on", torch.ones(CHUNKS, device=dev), True),
            ("hard half-on", torch.tensor([1.0, 0.0, 1.0, 0.0], device=dev), True),
            ("all-off", torch.zeros(CHUNKS, device=dev), True)]


def conv_cases(dev):
    return [("soft", torch.tensor([0.7], device=dev, requires_grad=True), False),
            ("gates=None", None, False), ("hard on", torch.ones(1, device=dev), True),
            ("all-off", torch.zeros(1, device=dev), True)]


def bench_dwconv(B, T):
    """The fused depthwise conv + LN + SiLU forward kernel vs a large D2D copy."""

    from orthoasr.kernels.gated_conv import conv_mid_fwd
    dev = "cuda"
    src = torch.empty(512 * 2 ** 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    g = torch.Generator(device="cpu").manual_seed(B * 1000 + T)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).to(dev)
    v = torch.randn(B * T, D, device=dev, dtype=torch.bfloat16)
    w, b = torch.randn(D, K, device=dev) / K ** 0.5, torch.randn(D, device=dev)
    lw, lb = torch.ones(D, device=dev), torch.zeros(D, device=dev)
    pre, r = torch.empty_like(v), torch.empty_like(v)
    ms = time_ms(lambda: conv_mid_fwd(v, w, b, lw, lb, pre, r, None, lengths, T, False))
    frames = int(lengths.sum())
    # read v, write pre and r, read pre twice (L2), bf16, valid frames (weights negligible)
    moved = 5 * frames * D * 2
    gbs = moved / ms / 1e6
    rows = [dict(table="dwconv", case=f"dwconv+LN+SiLU fwd B{B}xT{T}", mode="fwd",
                 provider="ours", ms=ms, GBps=gbs, copy_GBps=copy_gbs,
                 frac_of_copy=gbs / copy_gbs),
            dict(table="dwconv", case=f"dwconv+LN+SiLU fwd B{B}xT{T}", mode="fwd",
                 provider="copy 1GiB", ms=copy_ms, GBps=copy_gbs, copy_GBps=copy_gbs,
                 frac_of_copy=1.0)]
    _emit(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="no torch.compile provider")
    ap.add_argument("--only", choices=("ffn", "conv", "dwconv"), default=None)
    args = ap.parse_args()
    require_gpu("bench_modules_ffn_conv")
    from orthoasr.nn import GatedConvModule, GatedFeedForward
    dev = "cuda"
    torch.manual_seed(0)
    t0 = time.time()
    if args.only in (None, "dwconv"):
        for B, T in SHAPES:
            bench_dwconv(B, T)
    for B, T in SHAPES:
        if args.only in (None, "ffn"):
            bench_module("ffn", GatedFeedForward(D, FF, CHUNKS).to(dev), ffn_cases(dev), B, T,
                         args.quick)
        if args.only in (None, "conv"):
            bench_module("conv", GatedConvModule(D, K).to(dev), conv_cases(dev), B, T,
                         args.quick)
        print(f"[{time.time() - t0:.0f}s]", flush=True)


if __name__ == "__main__":
    main()
