"""The conv module's depthwise-conv kernels at a paper step's shape (80 x 250 frames x 384,
lengths 80-100% of T, bf16, K 31): the forward (conv, bias, LayerNorm, SiLU), the SiLU and
LayerNorm backward, the transposed conv with the GLU backward, and the depthwise weight
gradient, over tile sizes, warps and (weight gradient) pipelined loops, each replayed as a
CUDA graph and checked against the default configuration. Rows in
bench/results/kernels.json (table "conv_sweep").
Run: python -m bench.sweep_conv
"""

from __future__ import annotations

import torch

from bench.sweeps import B, T, report, step_lengths, time_configs
from orthoasr.kernels.common import valid_mask
from orthoasr.kernels.gated_conv import (
    conv_dw_grad,
    conv_mid_bwd_conv,
    conv_mid_bwd_norm,
    conv_mid_fwd,
)

D, K = 384, 31
BF16 = torch.bfloat16
# 2026-12-01 (H200) the tap loops pipelined (tl.range num_stages 2-4) or unrolled (2 or 4
# taps a step) were also swept: 7-31% slower in the forward, within 2% or slower in the
# transposed conv, and removed
# maxnreg None: no register cap (the default's 96 would spill at 64 values a thread)
FWD_CONFIGS = [{}, dict(maxnreg=None), dict(BT=16), dict(BT=64, maxnreg=None),
               dict(BT=32, num_warps=8), dict(BT=16, num_warps=2)]
# tiles whose sm_90 compile (with the unmasked tap loop, 9825966) loads each tap's weight row
# straight in the v tile's layout: no shared-memory conversion and no barrier a tap, where
# the default (128 channels, 4 warps) has both
FWD_CONFIGS += [dict(BC=64, maxnreg=None), dict(BC=64, BT=64, maxnreg=None),
                dict(BC=64, num_warps=8, maxnreg=None), dict(BC=32, BT=64, maxnreg=None)]
# BC 512 at 8 warps: one block of all channels, the layout before 2026-12-01 (with one more
# pass over pre now), the baseline of the channel split
FWD_CONFIGS += [dict(BC=512, num_warps=8, maxnreg=None)]
BWD_CONFIGS = [{}, dict(BT=64), dict(BC=128), dict(BT=16, BC=128, num_warps=8)]
NORM_CONFIGS = [{}, dict(SPAN=4), dict(SPAN=16), dict(SPAN=8, BT=1), dict(SPAN=8, BT=4)]
# LOAD_STAGES: the frame loop's loads as async copies (tl.range num_stages)
DW_CONFIGS = [{}, dict(LOAD_STAGES=1), dict(LOAD_STAGES=2), dict(SPAN=32), dict(SPAN=128)]


def main() -> None:
    torch.manual_seed(0)
    M = B * T
    lengths = step_lengths()
    v, dpre = (torch.randn(M, D, device="cuda", dtype=BF16) for _ in range(2))
    u = torch.randn(M, 2 * D, device="cuda", dtype=BF16)
    dw_w, dw_b, ln_w, ln_b = (torch.randn(*shape, device="cuda") * 0.2
                              for shape in ((D, K), (D,), (D,), (D,)))
    gate = torch.ones(1, device="cuda")
    valid = valid_mask(lengths, T).reshape(-1)
    case = f"{B}x{T}x{D} bf16 K{K}, 80-100% valid"
    pre, r = torch.empty_like(v), torch.empty_like(v)
    ref = {}

    def checker(mode):
        """Each configuration's outputs against the default's (the first configuration);
        row outputs at the valid frames only (padded rows may be left unwritten)."""
        def check(config, outputs):
            outputs = [(o[valid] if o.shape[0] == M else o).float() for o in outputs]
            for o, r0 in zip(outputs, ref.setdefault(mode, outputs), strict=True):
                torch.testing.assert_close(o, r0, atol=2e-2, rtol=2e-2, msg=f"{mode} {config}")
        return check

    def fwd(config):
        conv_mid_fwd(v, dw_w, dw_b, ln_w, ln_b, pre, r, gate, lengths, T, True, config=config)
        return pre, r

    def bwd(config):
        return [conv_mid_bwd_conv(dpre, u, dw_w, gate, lengths, T, True, True, config=config)]

    def norm(config):   # dpre and (dgamma, dbeta, conv-bias gradient)
        return conv_mid_bwd_norm(dpre, v, ln_w, ln_b, gate, lengths, T, True, True,
                                 config=config)

    def dw_grad(config):
        return [conv_dw_grad(dpre, v, lengths, T, K, gate, True, True, config=config)]

    rows = []
    for mode, configs, call in (("fwd", FWD_CONFIGS, fwd),
                                ("bwd (transposed conv + GLU)", BWD_CONFIGS, bwd),
                                ("bwd (SiLU + LayerNorm)", NORM_CONFIGS, norm),
                                ("bwd (depthwise weight grad)", DW_CONFIGS, dw_grad)):
        base = dict(table="conv_sweep", case=case, mode=mode)
        rows += time_configs(base, configs, call, checker(mode))
    report(rows, lambda row: f"{row['mode']:>28}")


if __name__ == "__main__":
    main()
