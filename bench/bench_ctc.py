"""orthoasr.ctc_loss (Triton, lengths read on the device) against torch's CUDA CTC, fwd and
fwd+bwd, at the training shape of issue 14 (B=32, T'=250, U~60, V=512) and a long one.

    python -m bench.bench_ctc      (rows to bench/results/ctc.json, table "ctc")

Both take fp32 log-softmax outputs, padded (B, U) targets and device lengths, reduction
"sum" with zero_infinity as the trainer calls it. Eager timings (`do_bench`): torch's CTC
reads its lengths on the host (a sync per call), so it has no CUDA-graph timing; ours is
also timed as a graph replay.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.harness import require_gpu, time_graph_ms, time_ms, write_rows
from orthoasr import ctc_loss

CASES = {"B32 T250 U60 V512": (32, 250, 60, 512), "B16 T750 U180 V512": (16, 750, 180, 512)}


def case_rows(case: str, B: int, T: int, U: int, V: int) -> list[dict]:
    torch.manual_seed(0)
    logits = torch.randn(T, B, V, device="cuda")
    log_probs = logits.log_softmax(-1).requires_grad_()
    targets = torch.randint(1, V, (B, U), device="cuda")
    input_lengths = torch.randint(int(0.8 * T), T + 1, (B,), device="cuda")
    target_lengths = torch.randint(U // 2, U + 1, (B,), device="cuda")
    rows = []
    for provider, fn in (("ours", ctc_loss), ("torch", F.ctc_loss)):
        def forward(fn=fn):
            return fn(log_probs, targets, input_lengths, target_lengths, reduction="sum",
                      zero_infinity=True)

        def fwd_bwd(forward=forward):
            return torch.autograd.grad(forward(), log_probs)
        for mode, call in (("fwd", forward), ("fwd+bwd", fwd_bwd)):
            timers = {"eager": time_ms} | ({"graph": time_graph_ms} if provider == "ours"
                                           else {})
            for timing, timer in timers.items():
                ms = timer(call)
                rows.append({"table": "ctc", "case": case, "mode": mode, "provider": provider,
                             "timing": timing, "ms": ms, "baseline": "torch"})
                print(f"{case:20s} {mode:8s} {provider:6s} {timing:6s} {ms * 1e3:9.1f} us",
                      flush=True)
    return rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("bench_ctc")
    rows = [row for case, shape in CASES.items() for row in case_rows(case, *shape)]
    print(f"rows -> {write_rows('ctc', rows)}")


if __name__ == "__main__":
    main()
