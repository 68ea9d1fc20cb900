"""The conv module's depthwise-conv kernels at a paper step's shape (80 x 250 frames x 384,
lengths 80-100% of T, bf16, K 31): the forward (conv, bias, LayerNorm, SiLU), the SiLU and
LayerNorm backward, the transposed conv with the GLU backward, and the depthwise weight
gradient, over tile sizes, warps, taps per loop step and pipelined loops, each replayed as a
CUDA graph and checked against the default configuration. Rows in
bench/results/kernels.json (table "conv_sweep").
Run: python -m bench.sweep_conv
"""

from __future__ import annotations

import torch

from bench.harness import time_graph_ms, write_rows
from orthoasr.kernels.gated_conv import (
    conv_dw_grad,
    conv_mid_bwd_conv,
    conv_mid_bwd_norm,
    conv_mid_fwd,
)

B, T, D, K = 80, 250, 384, 31
BF16 = torch.bfloat16
# LOAD_STAGES: the tap loop as tl.range(num_stages=...), whose loads become async copies
# in flight (sm_90 TTGIR; the weight row then needs no layout conversion either);
# TAPS_PER_STEP: taps unrolled per loop step
FWD_CONFIGS = [{}, dict(LOAD_STAGES=2), dict(LOAD_STAGES=3), dict(LOAD_STAGES=4),
               dict(TAPS_PER_STEP=2, LOAD_STAGES=3), dict(TAPS_PER_STEP=4),
               dict(BT=8, num_warps=4, LOAD_STAGES=3), dict(BT=16, num_warps=4, LOAD_STAGES=3),
               dict(BT=4, num_warps=1, LOAD_STAGES=3), dict(BT=32, LOAD_STAGES=3)]
BWD_CONFIGS = [{}, dict(LOAD_STAGES=2), dict(LOAD_STAGES=3), dict(LOAD_STAGES=4),
               dict(TAPS_PER_STEP=2, LOAD_STAGES=3), dict(TAPS_PER_STEP=4),
               dict(BT=64, LOAD_STAGES=3), dict(BC=128, LOAD_STAGES=3),
               dict(BT=16, BC=128, num_warps=8, LOAD_STAGES=3)]
NORM_CONFIGS = [{}, dict(SPAN=8), dict(SPAN=32), dict(SPAN=16, BT=2), dict(SPAN=32, BT=2)]
DW_CONFIGS = [{}, dict(LOAD_STAGES=2), dict(LOAD_STAGES=3), dict(SPAN=32, LOAD_STAGES=3),
              dict(SPAN=128, LOAD_STAGES=3)]

def _name(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items()) or "default"


def main() -> None:
    torch.manual_seed(0)
    M = B * T
    lengths = torch.randint(int(0.8 * T), T + 1, (B,), device="cuda")
    v, dpre = (torch.randn(M, D, device="cuda", dtype=BF16) for _ in range(2))
    u = torch.randn(M, 2 * D, device="cuda", dtype=BF16)
    dw_w, dw_b, ln_w, ln_b = (torch.randn(*shape, device="cuda") * 0.2
                              for shape in ((D, K), (D,), (D,), (D,)))
    gate = torch.ones(1, device="cuda")
    valid = (torch.arange(T, device="cuda")[None, :] < lengths[:, None]).reshape(-1)
    case = f"{B}x{T}x{D} bf16 K{K}, 80-100% valid"
    rows, ref = [], {}

    def check(mode, cfg, outs):
        # row outputs at the valid frames only (padded rows may be left unwritten)
        outs = [(o[valid] if o.shape[0] == valid.shape[0] else o).float() for o in outs]
        if mode not in ref:
            ref[mode] = outs
        for o, r in zip(outs, ref[mode], strict=True):
            torch.testing.assert_close(o, r, atol=2e-2, rtol=2e-2, msg=f"{mode} {cfg}")

    for cfg in FWD_CONFIGS:
        pre, r = torch.empty_like(v), torch.empty_like(v)

        def fwd(cfg=cfg, pre=pre, r=r):
            conv_mid_fwd(v, dw_w, dw_b, ln_w, ln_b, pre, r, gate, lengths, T, True, True,
                         config=cfg)
        fwd()
        check("fwd", cfg, [pre, r])
        rows.append(dict(table="conv_sweep", case=case, mode="fwd", provider="ours",
                         config=_name(cfg), timing="graph", ms=time_graph_ms(fwd)))
    for cfg in BWD_CONFIGS:
        def bwd(cfg=cfg):
            return conv_mid_bwd_conv(dpre, u, dw_w, gate, lengths, T, True, True, config=cfg)
        check("bwd", cfg, [bwd()])
        rows.append(dict(table="conv_sweep", case=case, mode="bwd (transposed conv + GLU)",
                         provider="ours", config=_name(cfg), timing="graph",
                         ms=time_graph_ms(bwd)))
    for cfg in NORM_CONFIGS:
        def norm(cfg=cfg):
            return conv_mid_bwd_norm(dpre, v, ln_w, ln_b, gate, lengths, T, True, True,
                                     config=cfg)
        dr_grad, sums = norm()
        check("norm bwd", cfg, [dr_grad])
        torch.testing.assert_close(sums, conv_mid_bwd_norm(dpre, v, ln_w, ln_b, gate, lengths,
                                                           T, True, True)[1],
                                   atol=1e-1, rtol=1e-3)
        rows.append(dict(table="conv_sweep", case=case, mode="bwd (SiLU + LayerNorm)",
                         provider="ours", config=_name(cfg), timing="graph",
                         ms=time_graph_ms(norm)))
    for cfg in DW_CONFIGS:
        def dw_grad(cfg=cfg):
            return conv_dw_grad(dpre, v, lengths, T, K, gate, True, True, config=cfg)
        check("dw grad", cfg, [dw_grad()])
        rows.append(dict(table="conv_sweep", case=case, mode="bwd (depthwise weight grad)",
                         provider="ours", config=_name(cfg), timing="graph",
                         ms=time_graph_ms(dw_grad)))
    path = write_rows("kernels", rows)
    for row in rows:
        print(f"{row['mode']:>28} {row['config']:>44} {row['ms'] * 1e3:8.1f} us")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
