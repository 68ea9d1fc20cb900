"""Where the host time goes: Triton launch cost, each gated module's wall time per call vs
its GPU time (CUDA-graph replay), a cProfile of the module calls, and the paper model's
fwd+bwd wall time vs the GPU time torch.profiler sees.

    python -m bench.profile_host          (prints; rows to bench/results/host_overhead.json)
    python -m bench.profile_host --launch-ab
        wall time with kernels/launch.py's direct launches vs Triton's own launch path, both
        in this process, alternating (the host's speed differs from machine to machine, so
        only a same-process comparison says what the direct launch saves).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time

import torch
import triton
import triton.language as tl

from bench.harness import require_gpu, time_graph_ms, write_rows


@triton.jit
def _empty_kernel(x_ptr):
    pass


@triton.jit
def _many_args_kernel(a, b, c, d, e, f, g, h, n1, n2, n3, n4, n5, n6,
                      C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr):
    pass


def wall_us(fn, calls: int = 200) -> float:
    """Host wall time per call (synchronised once at the end of the loop)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def top_functions(fn, calls: int = 20, lines: int = 18) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def module_step(kind: str):
    from orthoasr.nn import GatedConvModule, GatedFeedForward, GatedMHSA
    module = {"ffn": lambda: GatedFeedForward(384, 1536, 4),
              "conv": lambda: GatedConvModule(384, 31),
              "mhsa": lambda: GatedMHSA(384, 6)}[kind]().cuda()
    gates = torch.rand(getattr(module, "num_gates", 1), device="cuda", requires_grad=True)
    x = torch.randn(32, 250, 384, device="cuda", requires_grad=True)
    lengths = torch.randint(125, 251, (32,), device="cuda")
    dy = torch.randn(32, 250, 384, device="cuda", dtype=torch.bfloat16)
    inputs = [x, gates, *module.parameters()]

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = module(x, lengths, gates)
        torch.autograd.grad(y, inputs, dy)
    return run


def model_step():
    from orthoasr.config import SupernetConfig
    from orthoasr.model import ConformerSupernet
    cfg = SupernetConfig()
    model = ConformerSupernet(cfg).cuda()
    feats = torch.randn(32, 1000, cfg.num_mel_bins, device="cuda")
    lengths = torch.randint(500, 1001, (32,), device="cuda")
    gates = torch.rand(model.num_units, device="cuda", requires_grad=True)

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            log_probs, _ = model(feats, lengths, gates)
        log_probs.float().mean().backward()
    return run


def launch_ab(reps: int = 3) -> None:
    """Median over `reps` alternations of each step's wall time, direct vs Triton's path."""
    import orthoasr.kernels.launch as launch_module
    steps = {"paper model B32xT1000 soft fwd+bwd": (model_step(), 8)}
    steps.update({f"{kind} B32xT250 soft fwd+bwd": (module_step(kind), 60)
                  for kind in ("ffn", "conv", "mhsa")})
    times = {(case, mode): [] for case in steps for mode in ("direct", "triton")}
    for _ in range(reps):
        for mode in ("triton", "direct"):
            launch_module._cache.clear()     # the switch is read when a kernel is cached
            os.environ["ORTHOASR_DIRECT_LAUNCH"] = "1" if mode == "direct" else "0"
            for case, (run, calls) in steps.items():
                times[case, mode].append(wall_us(run, calls) / 1e3)
    os.environ.pop("ORTHOASR_DIRECT_LAUNCH")
    rows = [dict(table="launch_ab", case=case, mode="wall per call",
                 provider="direct launch" if mode == "direct" else "triton launch path",
                 baseline="triton launch path", ms=statistics.median(ms), reps=reps)
            for (case, mode), ms in times.items()]
    for r in rows:
        print(f"{r['case']:<40} {r['provider']:<20} {r['ms'] * 1e3:10.1f} us")
    write_rows("host_overhead", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launch-ab", action="store_true")
    args = parser.parse_args()
    require_gpu("profile_host")
    if args.launch_ab:
        launch_ab()
        return
    x = torch.empty(16, device="cuda")
    rows = [dict(case="empty kernel, 1 arg", ms=wall_us(lambda: _empty_kernel[(1,)](x)) / 1e3),
            dict(case="empty kernel, 14 args + 3 constexpr", ms=wall_us(
                lambda: _many_args_kernel[(4, 2)](x, x, x, x, x, x, x, x, 1, 2, 3, 4, 5, 6,
                                                  C1=64, C2=32, C3=True)) / 1e3),
            dict(case="torch.empty(8000, 384)", ms=wall_us(
                lambda: torch.empty(8000, 384, device="cuda")) / 1e3),
            dict(case="w.to(bf16) 384x384", ms=wall_us(
                lambda: torch.empty(384, 384, device="cuda").to(torch.bfloat16)) / 1e3)]
    for r in rows:
        print(f"{r['case']:<40} {r['ms'] * 1e3:10.1f} us", flush=True)
    for kind in ("ffn", "conv", "mhsa"):
        run = module_step(kind)
        wall = wall_us(run, 50) / 1e3
        gpu = time_graph_ms(run)
        rows.append(dict(case=f"{kind} B32xT250 soft fwd+bwd", ms=wall, gpu_ms=gpu,
                         host_bound_by_ms=wall - gpu))
        print(f"--- {kind} fwd+bwd: wall {wall * 1e3:.0f} us, GPU {gpu * 1e3:.0f} us")
        print(top_functions(run), flush=True)
    run = model_step()
    wall = wall_us(run, 5) / 1e3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            run()
        torch.cuda.synchronize()
    gpu = sum(e.self_device_time_total for e in prof.key_averages()) / 3 / 1e3
    rows.append(dict(case="paper model B32xT1000 soft fwd+bwd", ms=wall, gpu_ms=gpu,
                     host_bound_by_ms=wall - gpu))
    print(f"--- model fwd+bwd: wall {wall:.1f} ms, kernels {gpu:.1f} ms")
    print(top_functions(run, calls=3, lines=25))
    for r in rows:
        r.update(table="host", mode="wall per call", provider="ours")
        print(f"{r['case']:<40} {r['ms'] * 1e3:10.1f} us  gpu {r.get('gpu_ms', 0) * 1e3:9.1f}")
    write_rows("host_overhead", rows)


if __name__ == "__main__":
    main()
