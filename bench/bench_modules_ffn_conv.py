"""Benchmark of the gated FFN and conv modules (issue 3) on one GPU, bf16 autocast.

Providers: ours (Triton kernels, eager launch), ours-graph (the same call replayed from a CUDA
graph: GPU time without host launch overhead), eager (bench/baselines_ffn_conv.py, masking
the way the method's public code does), compile (torch.compile of that baseline; soft gates
and gates=None only: the hard-mask baseline syncs and changes shapes). Modes fwd (no grad)
and fwd+bwd (grads of x, every weight and soft gates). Paper-size modules: d 384, FFN 1536
in 4 chunks, conv kernel 31; B32xT250 and B16xT750, lengths uniform in [T/2, T].

Also: the fused depthwise-conv + LayerNorm + SiLU forward kernel against the card's measured
device-to-device copy bandwidth, and a small tile sweep for the main GEMMs.

Run: python -m bench.bench_modules_ffn_conv [--quick] [--sweep]; rows go to
bench/results/kernels.json (and $OUT when set).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.baselines_ffn_conv import eager_conv, eager_ffn
from bench.harness import time_graph_ms, time_ms, write_rows

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

    from orthoasr.kernels.gated_conv import _conv_mid_fwd_kernel, _mid_blocks
    dev = "cuda"
    src = torch.empty(512 * 2 ** 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    g = torch.Generator(device="cpu").manual_seed(B * 1000 + T)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).to(dev)
    v = torch.randn(B * T, D, device=dev, dtype=torch.bfloat16)
    w_t, b = torch.randn(K, D, device=dev) / K ** 0.5, torch.randn(D, device=dev)
    lw, lb = torch.ones(D, device=dev), torch.zeros(D, device=dev)
    r = torch.empty_like(v)
    blk = _mid_blocks(D)
    grid = (-(-T // blk["BT"]), B)

    def run():
        _conv_mid_fwd_kernel[grid](v, w_t, b, lw, lb, v, r, v, lengths, T, D, K, 1e-5,
                                   HAS_GATES=False, SKIP_DEAD=False, SAVE_PRE=False, **blk)
    ms = time_ms(run)
    frames = int(lengths.sum())
    moved = 2 * frames * D * 2  # read v and write r, bf16, valid frames (weights negligible)
    gbs = moved / ms / 1e6
    rows = [dict(table="dwconv", case=f"dwconv+LN+SiLU fwd B{B}xT{T}", mode="fwd",
                 provider="ours", ms=ms, GBps=gbs, copy_GBps=copy_gbs,
                 frac_of_copy=gbs / copy_gbs),
            dict(table="dwconv", case=f"dwconv+LN+SiLU fwd B{B}xT{T}", mode="fwd",
                 provider="copy 1GiB", ms=copy_ms, GBps=copy_gbs, copy_GBps=copy_gbs,
                 frac_of_copy=1.0)]
    _emit(rows)


def sweep_gemms(B, T):
    """Time a few tile configs of the FFN's four GEMM launches (soft gates)."""
    from orthoasr.kernels import gated_matmul as gm
    dev = "cuda"
    M = B * T
    lengths = torch.full((B,), T, device=dev)
    a = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
    h = torch.randn(M, FF, device=dev, dtype=torch.bfloat16)
    w1 = torch.randn(FF, D, device=dev, dtype=torch.bfloat16)
    w2 = torch.randn(D, FF, device=dev, dtype=torch.bfloat16)
    gates = torch.ones(CHUNKS, device=dev)
    common = dict(lengths=lengths, T=T, gates=gates, chunk=FF // CHUNKS, num_chunks=CHUNKS)
    out1, out2 = torch.empty(M, FF, device=dev, dtype=torch.bfloat16), torch.empty_like(a)
    rows = []
    configs = [dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3),
               dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=4),
               dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=4),
               dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=4),
               dict(BM=128, BN=256, BK=64, num_warps=8, num_stages=3)]
    for cfg in configs:
        tag = "x".join(str(cfg[k]) for k in ("BM", "BN", "BK", "num_warps", "num_stages"))
        for name, fn in [
            ("gemm1 silu-gate", lambda cfg=cfg: gm.rows_gemm(a, w1.t(), out1, bias=w1[:, 0],
                                                     chunk_axis=1, epi=gm.EPI_SILU_GATE,
                                                     blocks=cfg, **common)),
            ("gemm2 K-chunked", lambda cfg=cfg: gm.rows_gemm(h, w2.t(), out2, chunk_axis=2,
                                                     epi=gm.EPI_STORE, final=True, blocks=cfg,
                                                     **common))]:
            try:
                ms = time_ms(fn, warmup_ms=25, rep_ms=100)
            except Exception as err:
                print(f"sweep {name} {tag} failed: {err!r}"[:200])
                continue
            flops = 2 * M * D * FF
            rows.append(dict(table="gemm-sweep", case=f"{name} M{M}", mode=tag,
                             provider="ours", ms=ms, TFLOPs=flops / ms / 1e9))
    wcfgs = [dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3),
             dict(BP=128, BQ=128, BK=32, num_warps=4, num_stages=4),
             dict(BP=64, BQ=128, BK=64, num_warps=4, num_stages=3)]
    for cfg in wcfgs:
        tag = "x".join(str(cfg[k]) for k in ("BP", "BQ", "BK", "num_warps", "num_stages"))
        def fn(cfg=cfg):
            return gm.wgrad(h, a, chunk_axis=1, blocks=cfg, **common)
        try:
            ms = time_ms(fn, warmup_ms=25, rep_ms=100)
        except Exception as err:
            print(f"sweep wgrad {tag} failed: {err!r}"[:200])
            continue
        rows.append(dict(table="gemm-sweep", case=f"wgrad dW1 M{M}", mode=tag, provider="ours",
                         ms=ms, TFLOPs=2 * M * D * FF / ms / 1e9))
    _print_pipelining(gm._rows_gemm_kernel, gm._wgrad_kernel)
    cublas = time_ms(lambda: torch.mm(a, w1.t()), warmup_ms=25, rep_ms=100)
    rows.append(dict(table="gemm-sweep", case=f"cuBLAS x@W1^T M{M}", mode="torch.mm",
                     provider="cublas", ms=cublas, TFLOPs=2 * M * D * FF / cublas / 1e9))
    _emit(rows)


def _print_pipelining(*jit_fns):
    """Diagnostic: does the compiled GEMM use async copies (software pipelining)?"""
    for fn in jit_fns:
        try:
            caches = getattr(fn, "device_caches", None) or {}
            for entry in caches.values():
                cache = entry[0] if isinstance(entry, tuple) else entry
                for kernel in list(cache.values())[:6]:
                    ir = kernel.asm.get("ttgir", "")
                    print(fn.__name__, {w: ir.count(w) for w in
                                        ("async_copy_global_to_local", "warp_group_dot",
                                         "async_tma_copy")},
                          "smem", kernel.metadata.shared, flush=True)
        except Exception as err:
            print("pipelining diagnostic failed:", repr(err)[:200])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="no torch.compile provider")
    ap.add_argument("--sweep", action="store_true", help="also sweep GEMM tile configs")
    ap.add_argument("--only", choices=("ffn", "conv", "dwconv"), default=None)
    args = ap.parse_args()
    from orthoasr.nn import GatedConvModule, GatedFeedForward
    dev = "cuda"
    torch.manual_seed(0)
    t0 = time.time()
    if args.only in (None, "dwconv"):
        for B, T in SHAPES:
            bench_dwconv(B, T)
    if args.sweep:
        sweep_gemms(32, 250)
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
