"""Per-kernel GPU times of OrthoSoftmax (CUDA-graph replays) for block-size variants, to see
where the forward and backward spend their time. Run: python -m bench.profile_ortho_softmax"""

from __future__ import annotations

import argparse
from functools import partial

import torch

import orthoasr
from bench.harness import require_gpu, time_graph_ms
from orthoasr.kernels.ortho_softmax import ortho_softmax_bwd_triton, ortho_softmax_fwd_triton


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("profile_ortho_softmax")
    n, m = 180, 5
    costs, rest, total = orthoasr.unit_costs(orthoasr.SupernetConfig(), "params")
    costs = costs.float().cuda()
    scores = torch.randn(n, n, device="cuda")
    budgets = torch.linspace(0.3, 1.0, m, device="cuda")
    tau = torch.tensor(0.5, device="cuda")
    grad_masks, grad_penalty = torch.randn(m, n, device="cuda"), torch.rand(m, device="cuda")
    out = ortho_softmax_fwd_triton(scores, costs, budgets, tau, rest, total, "l2")
    k, penalty = out[3], out[4]
    empty = torch.empty(0, device="cuda")
    print(f"{'variant':>28} {'fwd us':>8} {'bwd us':>8}")
    for tuning in [{}, dict(num_warps=4), dict(num_warps=16), dict(BC=64)]:
        fwd = partial(ortho_softmax_fwd_triton, scores, costs, budgets, tau, rest, total,
                      "l2", **tuning)
        bwd = partial(ortho_softmax_bwd_triton, scores, costs, tau, k, penalty, grad_masks,
                      grad_penalty, None, None, "l2", **tuning)
        print(f"{str(tuning):>28} {time_graph_ms(fwd) * 1e3:8.1f} {time_graph_ms(bwd) * 1e3:8.1f}")
    # an empty launch: the floor of one kernel in a graph
    print(f"{'torch add (floor)':>28} {time_graph_ms(lambda: empty.add_(1)) * 1e3:8.1f}")


if __name__ == "__main__":
    main()
