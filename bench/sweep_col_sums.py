"""The column-sum kernel (bias gradients: sums over the valid frames of an [M, N] gradient) at
a paper step's shapes (80 x 250 frames, lengths 80-100% of T, bf16; N 384 for the FFN's and
conv's output bias, 1536 for the FFN's hidden bias), over row tiles, warps, programs per SM
and pipelined loops, each replayed as a CUDA graph, against torch's masked sum and checked
against the default configuration. Rows in bench/results/kernels.json (table
"col_sums_sweep").
Run: python -m bench.sweep_col_sums
"""

from __future__ import annotations

import torch

from bench.harness import time_graph_ms, write_rows
from orthoasr.kernels.gated_matmul import col_sums

B, T = 80, 250
CONFIGS = [{}, dict(LOAD_STAGES=2), dict(LOAD_STAGES=3), dict(programs_per_sm=12),
           dict(programs_per_sm=12, LOAD_STAGES=3), dict(programs_per_sm=3, LOAD_STAGES=3),
           dict(BM=64, LOAD_STAGES=3), dict(BM=16, programs_per_sm=12, LOAD_STAGES=3),
           dict(BN=256, num_warps=8, LOAD_STAGES=3)]


def _name(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items()) or "default"


def main() -> None:
    torch.manual_seed(0)
    lengths = torch.randint(int(0.8 * T), T + 1, (B,), device="cuda")
    valid = (torch.arange(T, device="cuda")[None, :] < lengths[:, None]).reshape(-1, 1)
    rows = []
    for N in (384, 1536):
        a = torch.randn(B * T, N, device="cuda", dtype=torch.bfloat16)
        out = torch.zeros(N, device="cuda")
        case = f"{B}x{T}x{N} bf16, 80-100% valid"
        ref = torch.where(valid, a.float(), 0.0).sum(0)
        rows.append(dict(table="col_sums_sweep", case=case, mode="fwd", provider="torch",
                         config="where + sum", timing="graph",
                         ms=time_graph_ms(lambda a=a: torch.where(valid, a, 0).sum(0))))
        for cfg in CONFIGS:
            def run(cfg=cfg, a=a, out=out):
                out.zero_()
                return col_sums(a, out, lengths=lengths, T=T, config=cfg)
            torch.testing.assert_close(run(), ref, atol=1e-1, rtol=1e-3, msg=_name(cfg))
            rows.append(dict(table="col_sums_sweep", case=case, mode="fwd", provider="ours",
                             config=_name(cfg), timing="graph", ms=time_graph_ms(run)))
    path = write_rows("kernels", rows)
    for row in rows:
        print(f"{row['case'][:14]} {row['provider']:>6} {row['config']:>40} "
              f"{row['ms'] * 1e3:8.1f} us")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
