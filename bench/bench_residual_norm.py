"""The residual step of a training block and the LayerNorm after it, x_new = x + s *
dropout(y, p), xn = LN(x_new): ours (one kernel each way, kernels/layer_norm.py) against
what it replaced (our dropout-residual kernel's bytes are torch's F.dropout + add
here) and torch's ops (F.dropout, torch.add, F.layer_norm), bf16, at a B32xT250 block
activation and at a paper step's 40k frames (the stage-1 pair as one batch), fwd and
fwd+bwd with gradients into both outputs, each replayed as a CUDA graph. Rows in
bench/results/kernels.json (table "residual_norm").
Run: python -m bench.bench_residual_norm
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.harness import require_gpu, time_graph_ms, write_rows
from orthoasr.kernels.layer_norm import masked_layer_norm, residual_layer_norm

P, SCALE, D = 0.1, 0.5, 384


def _providers(frames: int):
    B = frames // 250
    x = torch.randn(B, 250, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn_like(x, requires_grad=True)
    g_new, g_xn = torch.randn_like(x), torch.randn_like(x)
    lengths = torch.full((B,), 250, device="cuda")
    w = torch.ones(D, device="cuda", requires_grad=True)
    b = torch.zeros(D, device="cuda", requires_grad=True)
    seed = torch.tensor([7], device="cuda")

    def torch_ops():
        new = torch.add(x, F.dropout(y, P, True), alpha=SCALE)
        return new, F.layer_norm(new, (D,), w.to(new.dtype), b.to(new.dtype))

    def step_then_norm():       # the residual add, then our LayerNorm kernel (as before)
        new = torch.add(x, F.dropout(y, P, True), alpha=SCALE)
        return new, masked_layer_norm(new, lengths, w, b)
    chains = {"ours": lambda: residual_layer_norm(x, y, seed, SCALE, P, lengths, w, b),
              "torch_then_our_norm": step_then_norm, "torch_ops": torch_ops}

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (x, y, w, b), (g_new, g_xn))
    return {name: (fn, fwd_bwd(fn)) for name, fn in chains.items()}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("bench_residual_norm")
    rows = []
    for frames in (8000, 40000):
        for provider, (fwd, step) in _providers(frames).items():
            for mode, fn in (("fwd", fwd), ("fwd+bwd", step)):
                rows.append(dict(table="residual_norm", case=f"{frames}x{D} bf16 p={P}",
                                 mode=mode, provider=provider, timing="graph",
                                 ms=time_graph_ms(fn), baseline="torch_ops",
                                 bytes_fwd=4 * frames * D * 2))
    path = write_rows("kernels", rows)
    for r in rows:
        print(f"{r['case']:>22} {r['mode']:>8} {r['provider']:>20} {r['ms'] * 1e3:8.1f} us")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
