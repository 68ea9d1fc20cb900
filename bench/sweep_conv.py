"""The conv module's depthwise-conv kernels at a paper step's shape (80 x 250 frames x 384,
lengths 80-100% of T, bf16, K 31): the forward (conv and bias, then LayerNorm and SiLU),
the SiLU and LayerNorm backward, the transposed conv with the GLU backward, the depthwise weight
gradient, over tile sizes, warps and (weight gradient) pipelined loops, each replayed as a
CUDA graph and checked against the default configuration. Rows in
bench/results/kernels.json (table "conv_sweep").
Run: python -m bench.sweep_conv
"""

from __future__ import annotations

import argparse

import torch

from bench.harness import require_gpu
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
# the forward's depthwise conv (a sliding window of v rows in registers; the LayerNorm with
# SiLU after it is a second launch, timed with it): spans of frames, loop steps (UNROLL),
# channels a program (one a thread: BC = 32 x num_warps), and a register cap that would fit
# six programs of 4 warps an SM (768 programs at B32xT250) where the default's 95 fit five
FWD_CONFIGS = [{}, dict(SPAN=16), dict(SPAN=48), dict(SPAN=64), dict(UNROLL=4),
               dict(UNROLL=16), dict(BC=64, num_warps=2), dict(BC=32, num_warps=1),
               dict(maxnreg=80),
               # two channels a thread: 4-byte loads and stores, each row's load and the
               # loop's bookkeeping shared by two outputs, at twice the registers
               dict(BC=256), dict(BC=128, num_warps=2), dict(BC=256, UNROLL=4),
               dict(BC=256, SPAN=64), dict(BC=64, num_warps=1),
               dict(BC=128, num_warps=2, UNROLL=4), dict(BC=64, num_warps=1, UNROLL=4),
               dict(BC=128, num_warps=2, SPAN=16)]
# the transposed conv (the forward's kernel, taps reversed), then the GLU backward (its
# tiles fixed: _glu_bwd_blocks)
BWD_CONFIGS = [{}, dict(UNROLL=4), dict(UNROLL=2), dict(SPAN=16), dict(SPAN=64),
               dict(BC=64, num_warps=2), dict(BC=256), dict(BC=128, num_warps=2),
               dict(BC=256, UNROLL=4), dict(BC=128, num_warps=2, UNROLL=4),
               dict(BC=64, num_warps=1, UNROLL=4)]
NORM_CONFIGS = [{}, dict(SPAN=4), dict(SPAN=16), dict(SPAN=8, BT=1), dict(SPAN=8, BT=4)]
# LOAD_STAGES: the frame loop's loads as async copies (tl.range num_stages)
DW_CONFIGS = [{}, dict(LOAD_STAGES=1), dict(LOAD_STAGES=2), dict(SPAN=32), dict(SPAN=128)]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("sweep_conv")
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
