"""LayerNorm kernels' launch configurations at a paper step's shape (20k frames x 384, fp32
input, bf16 output and gradient): forward row tiles and warps, backward rows, warps and
persistent warps per SM, each replayed as a CUDA graph, against F.layer_norm and its
backward on the same tensors. Rows in bench/results/kernels.json (table "layer_norm").
Run: python -m bench.sweep_layer_norm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.harness import time_graph_ms, write_rows
from orthoasr.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd

FRAMES, D = 20000, 384
FWD_CONFIGS = [dict(BM=4, num_warps=1), dict(BM=8, num_warps=4), dict(BM=8, num_warps=2),
               dict(BM=16, num_warps=4), dict(BM=2, num_warps=1)]
BWD_CONFIGS = [dict(BM=8, num_warps=4, warps_per_sm=8), dict(BM=2, num_warps=1, warps_per_sm=8),
               dict(BM=2, num_warps=1, warps_per_sm=16), dict(BM=2, num_warps=1, warps_per_sm=32),
               dict(BM=4, num_warps=1, warps_per_sm=16), dict(BM=8, num_warps=4, warps_per_sm=16),
               dict(BM=8, num_warps=4, warps_per_sm=32), dict(BM=16, num_warps=4, warps_per_sm=16),
               dict(BM=8, num_warps=2, warps_per_sm=16)]


def _name(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(FRAMES, D, device="cuda")
    w, b = torch.randn(D, device="cuda"), torch.randn(D, device="cuda")
    dy = torch.randn(FRAMES, D, device="cuda", dtype=torch.bfloat16)
    lengths = torch.full((1,), FRAMES, device="cuda", dtype=torch.int32)
    _, mean, rstd = layer_norm_fwd(x, w, b, lengths, FRAMES, out_dtype=torch.bfloat16)
    ref_dx = layer_norm_bwd(dy, x, w, mean, rstd, lengths, FRAMES)[0]
    case = f"{FRAMES}x{D} fp32 in, bf16 out"
    rows = []

    def row(mode, provider, fn, cfg=None):
        rows.append(dict(table="layer_norm", case=case, mode=mode, provider=provider,
                         config=_name(cfg or {}), timing="graph", ms=time_graph_ms(fn)))

    row("fwd", "torch", lambda: F.layer_norm(x, (D,), w, b).to(torch.bfloat16))
    for cfg in FWD_CONFIGS:
        row("fwd", "ours", lambda c=cfg: layer_norm_fwd(x, w, b, lengths, FRAMES, config=c,
                                                       out_dtype=torch.bfloat16), cfg)
    xr = x.clone().requires_grad_(True)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    row("bwd", "torch (fwd+bwd)", lambda: torch.autograd.grad(
        F.layer_norm(xr, (D,), wr, br), (xr, wr, br), dy.float()))
    for cfg in BWD_CONFIGS:
        dx = layer_norm_bwd(dy, x, w, mean, rstd, lengths, FRAMES, config=cfg)[0]
        err = (dx - ref_dx).abs().max().item()
        assert err < 1e-4, f"{cfg}: dx differs from the default config's by {err}"
        row("bwd", "ours", lambda c=cfg: layer_norm_bwd(dy, x, w, mean, rstd, lengths, FRAMES,
                                                        config=c), cfg)
    path = write_rows("kernels", rows)
    for r in rows:
        print(f"{r['mode']:>4} {r['provider']:>16} {r['config']:>34} {r['ms'] * 1e3:8.1f} us")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
