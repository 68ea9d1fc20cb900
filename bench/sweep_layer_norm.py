"""LayerNorm kernels' launch configurations at a paper step's shape (80 x 250 frames x 384,
lengths 80-100% of T, input fp32 or bf16, bf16 output and gradient): forward row tiles and
warps, backward rows, warps and persistent warps per SM, each replayed as a CUDA graph,
against F.layer_norm and its backward on the same tensors. Rows in
bench/results/kernels.json (table "layer_norm").
With a residual step fused (bf16, dropout 0.1 and 0): --residual.
Run: python -m bench.sweep_layer_norm [--residual]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.harness import require_gpu, time_graph_ms
from bench.sweeps import B, T, report, step_lengths, time_configs
from orthoasr.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd
from orthoasr.kernels.residual_step import step_in, step_out

D = 384
FWD_CONFIGS = [dict(BM=4, num_warps=1), dict(BM=8, num_warps=4), dict(BM=2, num_warps=1),
               dict(BM=8, num_warps=2)]
# 2026-12-01 (H200) persistent programs with x loaded ahead by the compiler's pipeliner
# (LOAD_STAGES 2-3, 6-12 programs an SM) were swept too: 16-65% slower than one program a
# block, and removed
# the backward's loads go through the compiler's pipeliner: LOAD_STAGES blocks in flight a
# program (default 3; at 2-3 stages it beat a one-block register prefetch at 2026-12-01,
# since removed: 30.0 / 35.6 us against 31.9 / 39.7 at bf16 / fp32 input)
BWD_CONFIGS = [dict(BM=bm, num_warps=warps, warps_per_sm=8, LOAD_STAGES=stages)
               for bm, warps in ((4, 2), (8, 4), (2, 1)) for stages in (2, 3, 4)]
BWD_CONFIGS += [dict(BM=4, num_warps=2, warps_per_sm=16, LOAD_STAGES=3),
                dict(BM=8, num_warps=2, warps_per_sm=8, LOAD_STAGES=3)]
# programs enough for one block each at B32xT250 (8000 rows; at most 4 programs of 2 warps
# fit a SM at 235 registers, the rest wait for a slot): no loop to pipeline, every program's
# loads issued at once
BWD_CONFIGS += [dict(BM=bm, num_warps=warps, warps_per_sm=512, LOAD_STAGES=2)
                for bm, warps in ((4, 2), (8, 4), (16, 8), (2, 1))]
# 2026-12-03 (H200, B32xT250) 2 programs an SM (half the dgamma / dbeta atomics on the same
# D addresses; LOAD_STAGES 3, 4, 6) were swept too: 22.8-24.1 / 17.4-21.4 us (fp32 / bf16
# x) against the default's 22.0 / 17.6, and removed: the atomics are not what costs
# 2026-12-01 (H200) the weight / bias partials summed over each block's rows as the loop
# goes ([1, BD] in place of [BM, BD]: 128 registers a thread in place of 255, 16 warps a SM)
# were swept too: 35.4-80.5 us against the default's 32.5 at bf16 input, and removed
# 2026-12-07 (H100, B32xT250) a row as two column tiles, 256 + 128 for D 384 (no masked
# quarter: 830 instructions a 4-row loop on sm_90 against 1,180) was swept too: 22.1-23.4 /
# 19.1-19.7 us (fp32 / bf16 x) against 21.1 / 18.0-18.2 for one 512-wide tile, and no faster
# in the FFN or conv (its dx tiles then change layout through shared memory before their
# stores); 2-row tiles at 8-16 warps an SM and 1-warp programs were slower still. Not kept
# 2026-12-07 (H100, B32xT250) dgamma / dbeta as per-program partials in a workspace, summed
# by a second launch (no atomics a program, so that more programs could run): 25.0 / 20.8
# us at the default tile, 22.0-30.7 / 18.7-27.7 at 2-24 warps an SM, against 20.9-21.2 /
# 18.2 with the atomics. Not kept
# 2026-12-01 (H200) the loop's small loads (mean, rstd, lengths) as async copies
# (tl.range num_stages 2-3) were also swept: within 4% of the plain loop, and removed


def _rows(x_dtype: torch.dtype) -> list[dict]:
    torch.manual_seed(0)
    M = B * T
    x = torch.randn(M, D, device="cuda").to(x_dtype)
    w, b = torch.randn(D, device="cuda"), torch.randn(D, device="cuda")
    dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    lengths = step_lengths().int()   # int32, as in this sweep's earlier rows
    _, mean, rstd = layer_norm_fwd(x, w, b, lengths, T, out_dtype=torch.bfloat16)
    ref_grads = [g.float() for g in layer_norm_bwd(dy, x, w, mean, rstd, lengths, T)]
    case = f"{B}x{T}x{D} {str(x_dtype)[6:]} in, bf16 out, 80-100% valid"

    def torch_row(mode, fn):
        return dict(table="layer_norm", case=case, mode=mode, provider="torch", config="",
                    timing="graph", ms=time_graph_ms(fn))

    def check_grads(config, grads):
        for name, grad, ref in zip(("dx", "dweight", "dbias"), grads, ref_grads):
            err = ((grad.float() - ref).abs().max() / ref.abs().max().clamp_min(1)).item()
            assert err < 2e-2, f"{config}: {name} differs from the default config's by {err}"

    xr = x.clone().requires_grad_(True)
    wr, br = w.to(x_dtype).requires_grad_(True), b.to(x_dtype).requires_grad_(True)
    return [
        torch_row("fwd", lambda: F.layer_norm(x, (D,), w.to(x_dtype), b.to(x_dtype)).to(
            torch.bfloat16)),
        *time_configs(dict(table="layer_norm", case=case, mode="fwd"), FWD_CONFIGS,
                      lambda c: layer_norm_fwd(x, w, b, lengths, T, config=c,
                                               out_dtype=torch.bfloat16)),
        torch_row("fwd+bwd", lambda: torch.autograd.grad(
            F.layer_norm(xr, (D,), wr, br), (xr, wr, br), dy.to(x_dtype))),
        *time_configs(dict(table="layer_norm", case=case, mode="bwd"), BWD_CONFIGS,
                      lambda c: layer_norm_bwd(dy, x, w, mean, rstd, lengths, T, config=c),
                      check_grads)]


# with a residual step (the block's path): the Philox mask adds integer work per element
STEP_FWD_CONFIGS = FWD_CONFIGS + [dict(BM=4, num_warps=2), dict(BM=16, num_warps=4),
                                  dict(BM=16, num_warps=8)]
STEP_BWD_CONFIGS = [dict(BM=4, num_warps=2, warps_per_sm=8, LOAD_STAGES=3),
                    dict(BM=4, num_warps=2, warps_per_sm=8, LOAD_STAGES=2),
                    dict(BM=4, num_warps=4, warps_per_sm=8, LOAD_STAGES=3),
                    dict(BM=8, num_warps=4, warps_per_sm=8, LOAD_STAGES=3),
                    dict(BM=8, num_warps=4, warps_per_sm=16, LOAD_STAGES=2),
                    dict(BM=2, num_warps=1, warps_per_sm=8, LOAD_STAGES=3),
                    dict(BM=4, num_warps=2, warps_per_sm=16, LOAD_STAGES=3),
                    # tiles whose registers let more warps an SM be resident (sm_90 compile,
                    # session 22, with the residual step: BM 2 / 2 warps 156 registers at 3
                    # stages, 146 at 2; BM 4 / 4 warps 160; the default 247): 12 and 16 warps
                    dict(BM=2, num_warps=2, warps_per_sm=12, LOAD_STAGES=3),
                    dict(BM=2, num_warps=2, warps_per_sm=16, LOAD_STAGES=2),
                    dict(BM=4, num_warps=4, warps_per_sm=12, LOAD_STAGES=3),
                    # one block a program (see BWD_CONFIGS)
                    dict(BM=4, num_warps=2, warps_per_sm=512, LOAD_STAGES=2),
                    dict(BM=8, num_warps=4, warps_per_sm=512, LOAD_STAGES=2)]


def _step_rows(p: float) -> list[dict]:
    """The LayerNorm with a residual step (bf16 stream and module output, as in training)."""
    torch.manual_seed(0)
    M = B * T
    x, y = (torch.randn(M, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    w, b = torch.randn(D, device="cuda"), torch.randn(D, device="cuda")
    dy, gx = (torch.randn(M, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lengths = step_lengths()
    seed = torch.tensor([3], device="cuda")
    step = step_in(x, y, seed, 0.5, p)[0]
    _, mean, rstd = layer_norm_fwd(x, w, b, lengths, T, out_dtype=torch.bfloat16,
                                   residual=step)
    case = f"{B}x{T}x{D} bf16, residual step p={p}, 80-100% valid"

    def backward(c):
        res = step_out(x, gx, seed, 0.5, p, torch.bfloat16)[0]
        return layer_norm_bwd(dy, step.x_new, w, mean, rstd, lengths, T, config=c,
                              residual=res)
    return [
        *time_configs(dict(table="layer_norm", case=case, mode="fwd"), STEP_FWD_CONFIGS,
                      lambda c: layer_norm_fwd(x, w, b, lengths, T, config=c,
                                               out_dtype=torch.bfloat16,
                                               residual=step_in(x, y, seed, 0.5, p)[0])),
        *time_configs(dict(table="layer_norm", case=case, mode="bwd"), STEP_BWD_CONFIGS,
                      backward)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--residual", action="store_true",
                        help="the LayerNorm with a residual step fused (dropout 0.1 and 0)")
    args = parser.parse_args()
    require_gpu("sweep_layer_norm")
    if args.residual:
        rows = _step_rows(0.1) + _step_rows(0.0)
    else:
        rows = _rows(torch.float32) + _rows(torch.bfloat16)
    report(rows, lambda row: f"{row['case'][:44]} {row['mode']:>7}")


if __name__ == "__main__":
    main()
