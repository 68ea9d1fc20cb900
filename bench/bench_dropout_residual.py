"""The residual step of a training block, x + s * dropout(y, p): ours (one kernel each way,
kernels/dropout_residual.py) against torch's ops (F.dropout, then torch.add), bf16, at a
B32xT250 block activation and at a paper step's 20k frames, fwd and fwd+bwd, each replayed
as a CUDA graph. Rows in bench/results/kernels.json (table "dropout_residual").
Run: python -m bench.bench_dropout_residual
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import time_graph_ms, write_rows
from orthoasr.kernels.dropout_residual import dropout_residual_add

P, SCALE = 0.1, 0.5


def _providers(frames: int):
    x = torch.randn(frames, 384, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn_like(x, requires_grad=True)
    g = torch.randn_like(x)
    chains = {"ours": lambda: dropout_residual_add(x, y, SCALE, P),
              "torch_ops": lambda: torch.add(x, F.dropout(y, P, True), alpha=SCALE)}

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (x, y), g)
    return {name: (fn, fwd_bwd(fn)) for name, fn in chains.items()}


def main() -> None:
    rows = []
    for frames in (8000, 20000):
        for provider, (fwd, step) in _providers(frames).items():
            for mode, fn in (("fwd", fwd), ("fwd+bwd", step)):
                rows.append(dict(table="dropout_residual", case=f"{frames}x384 bf16 p={P}",
                                 mode=mode, provider=provider, timing="graph",
                                 ms=time_graph_ms(fn), baseline="torch_ops",
                                 bytes_fwd=3 * frames * 384 * 2))
    path = write_rows("kernels", rows)
    for r in rows:
        print(f"{r['case']:>22} {r['mode']:>8} {r['provider']:>10} {r['ms'] * 1e3:8.1f} us")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
