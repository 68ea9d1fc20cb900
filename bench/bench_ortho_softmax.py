"""OrthoSoftmax forward and forward+backward: fused Triton kernels vs the eager reference.

Paper-size cost table (N = 180 units, M = 5 budgets) and the largest supported size
(N = 1024, M = 16). Each time is reported twice: with ordinary launches (host overhead
included) and as CUDA-graph replays (GPU time only). Run: python -m bench.bench_ortho_softmax
"""

from __future__ import annotations

import argparse

import torch

import orthoasr
from bench.harness import require_gpu, time_graph_ms, time_ms, write_rows
from orthoasr.kernels.ortho_softmax import ortho_softmax_reference


def _case(n: int, m: int):
    cfg = orthoasr.SupernetConfig()
    costs, rest, total = orthoasr.unit_costs(cfg, "params")
    if n != costs.numel():  # synthetic table of the same scale
        costs = torch.rand(n, dtype=torch.float64) * float(costs.mean()) * 2
        total = rest + float(costs.sum())
    budgets = tuple(torch.linspace(0.3, 1.0, m).tolist())
    costs = costs.float().cuda()
    scores = torch.randn(n, n, device="cuda", requires_grad=True)
    tau = torch.tensor(0.5, device="cuda")
    budgets_t = torch.tensor(budgets, device="cuda")
    grad_masks = torch.randn(m, n, device="cuda")
    grad_penalty = torch.rand(m, device="cuda")

    def ours():
        return orthoasr.ortho_softmax(scores, costs, rest, total, budgets, tau, validate=False)

    def eager():
        return ortho_softmax_reference(scores, costs, rest, total, budgets_t, tau)

    def fwd_bwd(fn, masks_at, penalty_at):
        def step():
            out = fn()
            return torch.autograd.grad([out[masks_at], out[penalty_at]], scores,
                                       [grad_masks, grad_penalty])
        return step

    return {"ours": (ours, fwd_bwd(ours, 2, 4)), "eager": (eager, fwd_bwd(eager, 2, 4))}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("bench_ortho_softmax")
    orthoasr.set_backend("triton")
    rows = []
    for n, m in [(180, 5), (1024, 16)]:
        try:
            rows += _measure(n, m)
        except Exception as err:  # keep the rows of the other sizes
            print(f"N={n} M={m} failed: {err!r}")
    path = write_rows("ortho_softmax", rows)
    for r in rows:
        print(f"{r['case']:>14} {r['mode']:>22} {r['provider']:>6} {r['ms'] * 1e3:9.1f} us")
    print(f"wrote {path}")


def _measure(n: int, m: int) -> list[dict]:
    rows = []
    providers = _case(n, m)
    with torch.no_grad():
        fwd_check = (providers["ours"][0]().masks - providers["eager"][0]()[2]).abs().max()
    torch.cuda.set_sync_debug_mode("error")  # raises if any call syncs with the host
    for fwd, step in providers.values():
        fwd(), step()
    torch.cuda.set_sync_debug_mode(0)
    for provider, (fwd, step) in providers.items():
        for mode, fn in (("fwd", fwd), ("fwd+bwd", step)):
            for timing, timer in (("launches", time_ms), ("cuda graph", time_graph_ms)):
                rows.append(dict(table="ortho_softmax", case=f"N={n} M={m}",
                                 mode=f"{mode}, {timing}", provider=provider,
                                 ms=timer(fn), baseline="eager", sync_free=True,
                                 max_mask_err=float(fwd_check)))
    return rows


if __name__ == "__main__":
    main()
