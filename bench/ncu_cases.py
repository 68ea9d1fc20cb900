"""Kernels whose time the sweeps do not explain, each launched alone at a paper step's shape
(80 x 250 frames, lengths 80-100% of T, bf16), for Nsight Compute to read their counters:
stall reasons, occupancy, memory throughput. the `ncu` stage of
`bench/gpu_all.sh` runs ncu over each case.

    python -m bench.ncu_cases --list           # each case and its kernel's name
    python -m bench.ncu_cases CASE [--repeat 3]

Each case launches its kernel `repeat` times (the first compiles; ncu skips it) and
synchronises. Cases (the launchers' defaults unless named):
  silu-gate         the FFN's GEMM1 with the SiLU-gate epilogue, gates all ones, zero-padded
  plain-store       the same product and tile with a plain store epilogue (the reference)
  silu-bwd          the FFN's dH GEMM with the SiLU backward, no column sums, as the dense
                    pass runs it (b1's gradient comes from the dW1 product)
  silu-bwd-gate     the same with the gate gradient's column sums, as the soft pass runs it
  conv-mid          the depthwise conv forward (the LayerNorm and SiLU after it, a second
                    launch, are not the profiled kernel)
  ln-bwd            the LayerNorm backward, fp32 x and bf16 dy
"""

from __future__ import annotations

import argparse

import torch

from bench.sweeps import T, step_lengths
from orthoasr.kernels import gated_conv
from orthoasr.kernels import gated_matmul as gm
from orthoasr.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd

D, FF, CHUNKS, K = 384, 1536, 4, 31
BF16 = torch.bfloat16


def _ffn_cases(lengths: torch.Tensor, T: int) -> dict:
    M, dev = lengths.numel() * T, lengths.device
    xn, dy = (torch.randn(M, D, device=dev, dtype=BF16) for _ in range(2))
    pre = torch.randn(M, FF, device=dev, dtype=BF16)
    w1 = torch.randn(FF, D, device=dev, dtype=BF16) / D ** 0.5
    w2 = torch.randn(D, FF, device=dev, dtype=BF16) / FF ** 0.5
    b1 = torch.zeros(FF, device=dev)
    out = torch.empty(M, FF, device=dev, dtype=BF16)
    sums = torch.zeros(FF, device=dev)
    common = dict(lengths=lengths, T=T, gates=torch.ones(CHUNKS, device=dev), chunk=FF // CHUNKS,
                  num_chunks=CHUNKS, chunk_axis=1, final=True)
    blocks = gm._rows_blocks(BF16, 1, gm.EPI_SILU_GATE)   # the SiLU GEMMs' shared tile
    return {
        "silu-gate": lambda: gm.rows_gemm(xn, w1.t(), out, bias=b1, epi=gm.EPI_SILU_GATE,
                                          aux=pre, **common),
        "plain-store": lambda: gm.rows_gemm(xn, w1.t(), out, blocks=dict(blocks, TMA=True),
                                            **common),
        "silu-bwd": lambda: gm.rows_gemm(dy, w2, out, epi=gm.EPI_SILU_BWD, aux=pre, **common),
        "silu-bwd-gate": lambda: gm.rows_gemm(dy, w2, out, epi=gm.EPI_SILU_BWD, aux=pre,
                                              sum1=sums, **common),
    }


def _other_cases(lengths: torch.Tensor, T: int) -> dict:
    M, dev = lengths.numel() * T, lengths.device
    v = torch.randn(M, D, device=dev, dtype=BF16)
    dw_w, dw_b, ln_w, ln_b = (torch.randn(*shape, device=dev) * 0.2
                              for shape in ((D, K), (D,), (D,), (D,)))
    gate = torch.ones(1, device=dev)
    pre, r = torch.empty_like(v), torch.empty_like(v)
    x = torch.randn(M, D, device=dev)
    dy = torch.randn(M, D, device=dev, dtype=BF16)
    _, mean, rstd = layer_norm_fwd(x, ln_w, ln_b, lengths, T)

    def conv_mid(config=None):
        return gated_conv.conv_mid_fwd(v, dw_w, dw_b, ln_w, ln_b, pre, r, gate, lengths, T,
                                       True, config=config)
    return {
        "conv-mid": conv_mid,
        "ln-bwd": lambda: layer_norm_bwd(dy, x, ln_w, mean, rstd, lengths, T),
    }


def cases(lengths: torch.Tensor | None = None, frames: int = T) -> dict:
    """name -> a callable that launches the case's kernel once, at `lengths` (default: a
    paper step's, B of them on the GPU) of `frames` padded frames."""
    torch.manual_seed(0)
    lengths = step_lengths() if lengths is None else lengths
    return {**_ffn_cases(lengths, frames), **_other_cases(lengths, frames)}


# case -> the kernel ncu profiles in it
KERNELS = {**dict.fromkeys(["silu-gate", "plain-store", "silu-bwd", "silu-bwd-gate"],
                           "_rows_gemm_kernel"),
           "conv-mid": "_conv_dw_kernel",
           "ln-bwd": "_layer_norm_bwd_kernel"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", choices=list(KERNELS))
    parser.add_argument("--list", action="store_true",
                        help="print each case and its kernel's name, one pair a line")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.list or args.case is None:
        print("\n".join(f"{case} {kernel}" for case, kernel in KERNELS.items()))
        return
    launches = cases()
    assert sorted(launches) == sorted(KERNELS), "KERNELS must name every case's kernel"
    launch = launches[args.case]
    for _ in range(args.repeat):
        launch()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
