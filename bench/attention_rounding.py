"""The attention backward's dq and dk under the kernels' roundings, emulated in PyTorch on
the CPU (the Triton interpreter has no bf16 products): scores, log-sum-exp, P and dP in fp32,
dS and the keys or queries rounded to bf16 for their product, everything else exact. Inputs
share a component across time, as the paper model's last blocks do on the blank plateau.
Prints, per size of that component, the median over five draws of each gradient's largest
error against fp64 on the same bf16 inputs, relative to its largest exact value, for the
ways of forming it below and for the torch backend's attention in bf16 (which rounds the
scores themselves).

    python -m bench.attention_rounding [--noise 0.5]

    delta            dS = P (dP - sum_j P dP), the kernels before session 59
    delta / sum P    that delta divided by the recomputed P's row sum
    first key off    and dq = dS (K - k_0): the kernels from session 59 to 70
    row sum off      dq = dS K - rowsum(dS) k_0, dS K accumulated in fp32 a 64-key tile at a
                     time, rowsum of the rounded dS in fp32: the kernels since session 70
    dk               dk = dS^T Q with that dS: the kernels
    dk, 1st query    dk = dS^T (Q - q_0) + q_0 (fp32 column sums of dS): not built, since
                     the kernels' dk is already far under the torch backend's
"""

from __future__ import annotations

import argparse
import math

import torch

from kernels.gated_attention import gated_attention_reference


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).double()


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float().double()


def _rel(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got - exact).abs().max() / exact.abs().max())


def _tiled_fp32(a: torch.Tensor, b: torch.Tensor, tile: int = 64) -> torch.Tensor:
    """a @ b accumulated as the kernels do: each tile of the inner dimension's product
    exact, rounded to fp32, added to an fp32 accumulator."""
    acc = torch.zeros(*a.shape[:-1], b.shape[-1], dtype=torch.float64)
    for start in range(0, a.shape[-1], tile):
        acc = _fp32(acc + _fp32(a[..., start:start + tile] @ b[..., start:start + tile, :]))
    return acc


def gradient_errors(shared: float, noise: float, B=4, H=6, T=82, Dh=64, seed=0) -> dict:
    """{way: the gradient's largest error / its largest exact value} for one draw of
    inputs."""
    gen = torch.Generator().manual_seed(seed)

    def part(size, spread):      # (B, H, T, Dh): size x one vector per (b, h) + noise
        c = torch.randn(B, H, 1, Dh, generator=gen, dtype=torch.float64)
        return _bf16(size * c + spread * torch.randn(B, H, T, Dh, generator=gen,
                                                     dtype=torch.float64))
    q, k, v, d_out = part(shared, noise), part(shared, noise), part(5.0, 1.0), part(2.0, 1.0)
    lengths = torch.full((B,), T)
    scale = Dh ** -0.5
    exact = [q.clone().requires_grad_(), k.clone().requires_grad_()]
    out = gated_attention_reference(*exact, v, lengths, None, scale)
    dq_exact, dk_exact = torch.autograd.grad(out, exact, d_out)
    qk = _fp32(_fp32(q @ k.transpose(-1, -2)) * scale / math.log(2))      # log2 units
    top = qk.amax(-1, keepdim=True)
    lse = _fp32(top + torch.log2(_fp32(torch.exp2(qk - top).sum(-1, keepdim=True))))
    p = _fp32(torch.exp2(_fp32(qk - lse)))
    dp = _fp32(d_out @ v.transpose(-1, -2))
    errors = {}
    for way in ("delta", "delta / sum P", "first key off"):
        delta = (p * dp).sum(-1, keepdim=True)
        if way != "delta":
            delta = delta / p.sum(-1, keepdim=True)
        ds_fp32 = _fp32(p * (dp - _fp32(delta)))
        ds = _bf16(ds_fp32)
        keys = k if way != "first key off" else _bf16(k - k[:, :, :1])
        errors[way] = _rel(scale * _fp32(ds @ keys), dq_exact)
    errors["row sum off"] = _rel(scale * _fp32(_tiled_fp32(ds, k) - _fp32(ds.sum(-1, keepdim=True))
                                               * k[:, :, :1]), dq_exact)
    # dS's columns do not sum to 0, so taking q_0 off needs their fp32 sums added back
    errors["dk"] = _rel(scale * _fp32(ds.transpose(-1, -2) @ q), dk_exact)
    q_first = q[:, :, :1]
    column_sums = _fp32(ds_fp32.sum(-2).unsqueeze(-1))
    errors["dk, 1st query"] = _rel(scale * _fp32(_fp32(ds.transpose(-1, -2) @ _bf16(q - q_first))
                                                 + column_sums * q_first), dk_exact)
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = gated_attention_reference(*low, lengths, None, scale)
    dq_torch, dk_torch = torch.autograd.grad(out, low[:2], d_out.to(torch.bfloat16))
    errors["dq, torch bf16"] = _rel(dq_torch.double(), dq_exact)
    errors["dk, torch bf16"] = _rel(dk_torch.double(), dk_exact)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, default=0.5)
    args = parser.parse_args()
    for shared in (4.0, 12.0, 24.0, 40.0):
        draws = [gradient_errors(shared, args.noise, seed=seed) for seed in range(5)]
        print(f"shared {shared:4.0f}: " + "  ".join(
            f"{way} {sorted(d[way] for d in draws)[2]:.1e}" for way in draws[0]), flush=True)


if __name__ == "__main__":
    main()
