"""The column-sum kernel (bias gradients: sums over the valid frames of an [M, N] gradient) at
a paper step's shapes (80 x 250 frames, lengths 80-100% of T, bf16; N 384 for the FFN's and
conv's output bias, 1536 for the FFN's hidden bias), over row tiles and warps, each replayed
as a CUDA graph, against torch's masked sum and checked against it. Rows in
bench/results/kernels.json (table "col_sums_sweep").
Run: python -m bench.sweep_col_sums
"""

from __future__ import annotations

import argparse

import torch

from bench.harness import require_gpu, time_graph_ms
from bench.sweeps import B, T, report, step_lengths, time_configs
from orthoasr.kernels.common import valid_mask
from orthoasr.kernels.gated_wgrad import col_sums

# 2026-12-01 (H200) the row loop as async copies (LOAD_STAGES) and 3 or 12 programs a SM
# were also swept: each 2-20% slower than the default, and removed
CONFIGS = [{}, dict(BM=32), dict(BM=64), dict(BM=16), dict(BN=256, num_warps=8)]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("sweep_col_sums")
    torch.manual_seed(0)
    lengths = step_lengths()
    valid = valid_mask(lengths, T).reshape(-1, 1)
    rows = []
    for N in (384, 1536):
        a = torch.randn(B * T, N, device="cuda", dtype=torch.bfloat16)
        out = torch.zeros(N, device="cuda")
        base = dict(table="col_sums_sweep", case=f"{B}x{T}x{N} bf16, 80-100% valid", mode="fwd")
        ref = torch.where(valid, a.float(), 0.0).sum(0)
        rows.append({**base, "provider": "torch", "config": "where + sum", "timing": "graph",
                     "ms": time_graph_ms(lambda a=a: torch.where(valid, a, 0).sum(0))})

        def run(config, a=a, out=out):
            out.zero_()
            return col_sums(a, out, lengths=lengths, T=T, config=config)

        def check(config, output, ref=ref):
            torch.testing.assert_close(output, ref, atol=1e-1, rtol=1e-3, msg=str(config))
        rows += time_configs(base, CONFIGS, run, check)
    report(rows, lambda row: row["case"][:14])


if __name__ == "__main__":
    main()
