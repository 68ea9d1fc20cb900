"""The MHSA in-projection (y [M, 384] @ W_in^T -> qkv [M, 1152], bf16, 6 heads, all live) over
tiles and loads (masked pointer loads or TMA descriptors), each replayed as a CUDA graph and
checked against F.linear, which is timed too (cuBLAS, the same product). M: the module
benchmark's 32 x 250 frames and a paper step's 80 x 250. Rows in bench/results/kernels.json
(table "in_proj_sweep").
Run: python -m bench.sweep_in_proj
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.harness import require_gpu, time_graph_ms
from bench.sweeps import report, time_configs
from orthoasr.kernels.gated_mhsa import in_proj_fwd_triton

D, H = 384, 6
CONFIGS = [{}, dict(TMA=False),
           dict(BLOCK_M=128, num_warps=8, num_stages=2, TMA=True),
           dict(BLOCK_M=64, num_warps=4, num_stages=3, TMA=True),
           dict(BLOCK_M=64, num_warps=4, num_stages=4, TMA=True),
           dict(BLOCK_M=128, BLOCK_K=32, num_warps=8, num_stages=4, TMA=True)]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("sweep_in_proj")
    torch.manual_seed(0)
    rows = []
    w = torch.randn(3 * D, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5
    b = torch.randn(3 * D, device="cuda")
    b16 = b.to(torch.bfloat16)
    gates = torch.ones(H, device="cuda")
    for frames in (32 * 250, 80 * 250):
        y = torch.randn(frames, D, device="cuda", dtype=torch.bfloat16)
        base = dict(table="in_proj_sweep", case=f"in-projection M{frames} bf16", mode="fwd")
        ref = F.linear(y, w, b16)
        rows.append({**base, "provider": "cublas", "config": "F.linear", "timing": "graph",
                     "ms": time_graph_ms(lambda y=y: F.linear(y, w, b16))})

        def check(config, output, ref=ref):
            torch.testing.assert_close(output, ref, atol=5e-2, rtol=2e-2, msg=str(config))
        rows += time_configs(base, CONFIGS, lambda c, y=y: in_proj_fwd_triton(y, w, b, gates, c),
                             check)
    report(rows, lambda row: row["case"])


if __name__ == "__main__":
    main()
