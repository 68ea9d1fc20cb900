"""The FFN's six GEMMs (four row GEMMs, two weight gradients) at one shape against cuBLAS on
the same operands, over a few tile configurations each: where the gated GEMMs lose time.

    python -m bench.gemm_sweep [--shape B32xT250] [--quick | --options | --tma]
                               [--families rows wgrad wgrad_tma] [--only g1 g3 ...]

All frames valid (so cuBLAS computes the same work), gates all ones (soft: nothing skipped)
and half (dead chunks skipped). The weight gradients' default is then their TMA path (every
row zero or valid: `rows_zeroed`); `wgrad_tma` (not in the default set) times that path's
tiles against the masked loads' default. Rows go to bench/results/gemm_sweep.json (and $OUT), each
with the kernel's TFLOP/s and the ratio to cuBLAS on the same product.
"""

from __future__ import annotations

import argparse
import os

import torch

from bench.harness import require_gpu, time_graph_ms, write_rows
from orthoasr.kernels import gated_matmul as gm
from orthoasr.kernels import gated_wgrad as gw
from orthoasr.kernels.launch import gpu_asm

D, FF, CHUNKS = 384, 1536, 4
# B80xT250: a training step's frames at max_frames 80000 (configs/paper.yaml)
SHAPES = {"B32xT250": (32, 250), "B16xT750": (16, 750), "B80xT250": (80, 250)}
ROW_CONFIGS = [dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=4),
               dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=4),
               dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=3),
               dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3),
               dict(BM=128, BN=256, BK=64, num_warps=8, num_stages=3),
               # no spills in an sm_90 compile of the SiLU-backward epilogue (Triton 3.9,
               # bench/compile_check_modules.py), where 64x128/4 warps spills 104 B
               dict(BM=64, BN=128, BK=64, num_warps=8, num_stages=4),
               dict(BM=128, BN=64, BK=64, num_warps=8, num_stages=4),
               dict(BM=64, BN=64, BK=64, num_warps=4, num_stages=4)]
# fewer bytes from L2: an [M, K] @ [K, N] product with BM x BN tiles reads A N/BN times and
# B M/BM times (g3 at 64x128: 72 + 150 MB, ~30 us at 5-7 TB/s; at 256x128: 72 + 38 MB)
ROW_CONFIGS += [dict(BM=256, BN=128, BK=64, num_warps=8, num_stages=3)]
# three programs a SM (72 KB of shared memory at 3 stages): the K-chunked GEMMs' N = 384 makes
# 189 tiles of 128x128 at B32xT250, 1.43 waves of 132 SMs; 378 of 128x64 fit 396 slots
ROW_CONFIGS += [dict(BM=128, BN=64, BK=64, num_warps=4, num_stages=3),
                dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=3)]
# the SiLU epilogues in two row halves (SUBTILE): in an sm_90 compile g3 at 128x128/8 warps
# goes from 72 B of spills to none (176 registers), at 256x128 from 1392 B to 208; capped
# at 128 registers, two programs a SM (the launcher's default for both SiLU GEMMs)
SUBTILE_CONFIGS = [dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3, SUBTILE=True),
                   dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3, SUBTILE=True,
                        maxnreg=128),
                   dict(BM=128, BN=128, BK=64, num_warps=4, num_stages=3, SUBTILE=True),
                   dict(BM=256, BN=128, BK=64, num_warps=8, num_stages=3, SUBTILE=True),
                   # with common.sigmoid the SiLU gate's whole tile at once fits the cap
                   # (sm_90, Triton 3.6: no spills, 789 epilogue instructions against 994
                   # in row halves; tl.sigmoid spilled 32 B); the SiLU backward's whole tile
                   # spills with its column sums (200-624 B), not without them
                   dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3, maxnreg=128)]
WGRAD_CONFIGS = [dict(BP=128, BQ=256, BK=64, num_warps=8, num_stages=3),   # L2 bytes: see
                 dict(BP=256, BQ=128, BK=64, num_warps=8, num_stages=3),   # ROW_CONFIGS
                 dict(BP=64, BQ=128, BK=64, num_warps=4, num_stages=3),
                 dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3),
                 dict(BP=128, BQ=128, BK=64, num_warps=4, num_stages=4),
                 dict(BP=128, BQ=64, BK=64, num_warps=4, num_stages=4),
                 dict(BP=64, BQ=128, BK=64, num_warps=8, num_stages=4)]
# more programs, each over fewer sequences (shorter chains, more fp32 atomics): at
# B80xT250 the default tile took as long with half the chunks dead as with none (77 / 80
# us, 2026-12-01), the time of one program's chain rather than of the work
WGRAD_CONFIGS += [dict(BP=64, BQ=128, BK=64, num_warps=4, num_stages=3, programs_per_sm=p)
                  for p in (6, 12)]
WGRAD_CONFIGS += [dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3, programs_per_sm=6)]
# larger tiles read fewer bytes per FLOP (the 64x128 tile is L2-bound: ~400 programs x 24 KB
# per ~1 us step), but at 3 programs a SM they ran in 1.5-3 waves: one wave each here
# (shared memory: 96 KB at 128x128, 144 KB at 128x256, 3 stages)
WGRAD_CONFIGS += [dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3, programs_per_sm=2),
                  dict(BP=128, BQ=256, BK=64, num_warps=8, num_stages=3, programs_per_sm=1),
                  dict(BP=256, BQ=128, BK=64, num_warps=8, num_stages=3, programs_per_sm=1)]
# TMA loads over rows that hold zeros at padded frames (`rows_zeroed`; every frame is valid
# here): the masked loads' default tile first, then TMA over every row block in contiguous
# runs at 3 and 4 stages, then over the valid-block list (BLOCK_LIST; each program's share
# read into registers before its loop) at 3, 4 and 5 stages and 64x128 tiles
_TMA_TILE = dict(BP=128, BQ=128, BK=64, num_warps=8, programs_per_sm=2, TMA=True)
WGRAD_TMA_CONFIGS = [dict(BP=128, BQ=128, BK=64, num_warps=8, num_stages=3, programs_per_sm=2),
                     *(dict(_TMA_TILE, num_stages=s) for s in (3, 4)),
                     *(dict(_TMA_TILE, num_stages=s, BLOCK_LIST=True) for s in (3, 4, 5)),
                     dict(BP=64, BQ=128, BK=64, num_warps=4, num_stages=4, programs_per_sm=3,
                          TMA=True, BLOCK_LIST=True)]


def _tag(cfg):
    """128x128x64x8x3 (BM/BP, BN/BQ, BK, warps, stages), then +OPTION for each flag set and
    +maxnreg128 for a register cap."""
    sizes = "x".join(str(v) for k, v in cfg.items() if not isinstance(v, bool)
                     and k != "maxnreg")
    cap = f"+maxnreg{cfg['maxnreg']}" if "maxnreg" in cfg else ""
    return sizes + "".join(f"+{k}" for k, v in cfg.items() if v is True) + cap


def _print_pipelining(*jit_fns):
    """Diagnostic: does the compiled GEMM use async copies (software pipelining)?"""
    for fn in jit_fns:
        try:
            caches = getattr(fn, "device_caches", None) or {}
            for entry in caches.values():
                cache = entry[0] if isinstance(entry, tuple) else entry
                for kernel in list(cache.values())[:6]:
                    ir = kernel.asm.get("ttgir", "")
                    print(fn.__name__, {w: ir.count(w) for w in
                                        ("async_copy_global_to_local", "warp_group_dot")},
                          "smem", kernel.metadata.shared, flush=True)
        except Exception as err:
            print("pipelining diagnostic failed:", repr(err)[:200])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="B32xT250", choices=list(SHAPES))
    ap.add_argument("--quick", action="store_true", help="only the launchers' default tiles")
    ap.add_argument("--families", nargs="*", default=["rows", "wgrad"],
                    choices=["rows", "wgrad", "wgrad_tma"])
    ap.add_argument("--options", action="store_true",
                    help="the default tiles only; row GEMMs without and with each option "
                         "(TMA; the register cap where the default has one; AUX_ALL_ROWS, "
                         "AUX_PREFETCH and TILE_SUMS for the SiLU backward); every GEMM "
                         "also with its GPU-only code off (launch.gpu_asm(False))")
    ap.add_argument("--tma", action="store_true",
                    help="row GEMMs: every tile configuration with TMA loads (the launcher's "
                         "default on Hopper; a configuration given without it gets pointer "
                         "loads)")
    ap.add_argument("--only", nargs="*", default=None, metavar="PREFIX",
                    help="only the GEMMs whose names start with one of these (g1 g3 ...)")
    args = ap.parse_args()
    require_gpu("gemm_sweep")
    B, T = SHAPES[args.shape]
    M, dev, bf = B * T, "cuda", torch.bfloat16
    torch.manual_seed(0)
    lengths = torch.full((B,), T, device=dev)
    xn, dy = (torch.randn(M, D, device=dev, dtype=bf) for _ in range(2))
    pre, hidden, d_pre = (torch.randn(M, FF, device=dev, dtype=bf) for _ in range(3))
    w1 = torch.randn(FF, D, device=dev, dtype=bf) / D ** 0.5
    w2 = torch.randn(D, FF, device=dev, dtype=bf) / FF ** 0.5
    b1 = torch.zeros(FF, device=dev)
    out_f, out_d = torch.empty(M, FF, device=dev, dtype=bf), torch.empty(M, D, device=dev,
                                                                          dtype=bf)
    sums = torch.zeros(FF, device=dev)
    gate_sets = {"soft": torch.ones(CHUNKS, device=dev),
                 "half": torch.tensor([1.0, 0.0, 1.0, 0.0], device=dev)}
    flops = 2 * M * D * FF
    row_gemms = {  # name: (launch(cfg, gates, skip), the same product through cuBLAS)
        "g1 xn@W1^T silu-gate": (
            lambda cfg, g, skip: gm.rows_gemm(xn, w1.t(), out_f, bias=b1, chunk_axis=1,
                                              epi=gm.EPI_SILU_GATE, aux=pre, blocks=cfg,
                                              **common(g, skip)),
            lambda: torch.mm(xn, w1.t())),
        # the same two products with the plain store epilogue: what the SiLU epilogues cost
        "g1 xn@W1^T plain store": (
            lambda cfg, g, skip: gm.rows_gemm(xn, w1.t(), out_f, chunk_axis=1, blocks=cfg,
                                              **common(g, skip)),
            lambda: torch.mm(xn, w1.t())),
        "g3 dy@W2 plain store": (
            lambda cfg, g, skip: gm.rows_gemm(dy, w2, out_f, chunk_axis=1, blocks=cfg,
                                              **common(g, skip)),
            lambda: torch.mm(dy, w2)),
        "g2 hidden@W2^T K-chunked": (
            lambda cfg, g, skip: gm.rows_gemm(hidden, w2.t(), out_d, chunk_axis=2, final=True,
                                              blocks=cfg, **common(g, skip)),
            lambda: torch.mm(hidden, w2.t())),
        "g3 dy@W2 silu-bwd": (
            lambda cfg, g, skip: gm.rows_gemm(dy, w2, out_f, chunk_axis=1,
                                              epi=gm.EPI_SILU_BWD, aux=pre, sum1=sums,
                                              blocks=cfg, **common(g, skip)),
            lambda: torch.mm(dy, w2)),
        "g3 dy@W2 silu-bwd, no column sums": (
            lambda cfg, g, skip: gm.rows_gemm(dy, w2, out_f, chunk_axis=1,
                                              epi=gm.EPI_SILU_BWD, aux=pre, blocks=cfg,
                                              **common(g, skip)),
            lambda: torch.mm(dy, w2)),
        "g4 d_pre@W1 K-chunked": (
            lambda cfg, g, skip: gm.rows_gemm(d_pre, w1, out_d, chunk_axis=2, blocks=cfg,
                                              **common(g, skip)),
            lambda: torch.mm(d_pre, w1)),
    }
    # each row GEMM's (chunk_axis, epi): its launcher-default tiles, for --options
    kinds = {"g1 xn@W1^T silu-gate": (1, gm.EPI_SILU_GATE), "g1 xn@W1^T plain store": (1, 0),
             "g3 dy@W2 plain store": (1, 0), "g2 hidden@W2^T K-chunked": (2, 0),
             "g3 dy@W2 silu-bwd": (1, gm.EPI_SILU_BWD),
             "g3 dy@W2 silu-bwd, no column sums": (1, gm.EPI_SILU_BWD),
             "g4 d_pre@W1 K-chunked": (2, 0)}
    assert kinds.keys() == row_gemms.keys()
    wgrads = {
        "w2 dy^T@hidden": (
            lambda cfg, g, skip: gw.wgrad(dy, hidden, chunk_axis=2, blocks=cfg,
                                          rows_zeroed=True, **common(g, skip)),
            lambda: torch.mm(dy.t(), hidden)),
        "w1 d_pre^T@xn": (
            lambda cfg, g, skip: gw.wgrad(d_pre, xn, chunk_axis=1, blocks=cfg,
                                          rows_zeroed=True, **common(g, skip)),
            lambda: torch.mm(d_pre.t(), xn)),
    }

    def common(g, skip):
        return dict(lengths=lengths, T=T, gates=g, chunk=FF // CHUNKS, num_chunks=CHUNKS,
                    skip_dead=skip)

    rows = []
    families = {"rows": (row_gemms, ROW_CONFIGS), "wgrad": (wgrads, WGRAD_CONFIGS),
                "wgrad_tma": (wgrads, WGRAD_TMA_CONFIGS)}
    for family, configs in (families[f] for f in args.families):
        for name, (ours, cublas) in family.items():
            if args.only and not any(name.startswith(prefix) for prefix in args.only):
                continue
            ref_ms = time_graph_ms(cublas)
            rows.append(dict(table="gemm-sweep", case=f"{name} {args.shape}", mode="dense",
                             provider="cublas", ms=ref_ms, TFLOPs=flops / ref_ms / 1e9))
            extra = SUBTILE_CONFIGS if "silu" in name else []
            cfgs = [None] if args.quick else [None, *configs, *extra]
            if args.options and name not in kinds:   # a weight gradient
                cfgs = [None]
            elif args.options:
                # the K-chunked GEMMs (N = D) pick their tile by waves: the launcher's pick
                sms = torch.cuda.get_device_properties(0).multi_processor_count
                default = gm._rows_blocks(torch.bfloat16, *kinds[name], tiles_on=(M, D, sms))
                cfgs = [dict(default, TMA=False), dict(default, TMA=True)]
                if "maxnreg" in default:    # the register cap's effect
                    cfgs += [{k: v for k, v in default.items() if k != "maxnreg"} | {"TMA": True}]
                if kinds[name][1] == gm.EPI_SILU_BWD:
                    # the saved tile's load not waiting on the lengths (AUX_ALL_ROWS), loaded
                    # early (AUX_PREFETCH; sm_90 at the 128-register cap: 80-88 B of spills
                    # after the K-loop, 144 before it), neither, both
                    plain = dict(default, TMA=True, AUX_ALL_ROWS=False, AUX_PREFETCH=False)
                    cfgs += [plain, dict(plain, AUX_ALL_ROWS=True),
                             dict(plain, AUX_PREFETCH=True),
                             dict(plain, AUX_ALL_ROWS=True, AUX_PREFETCH=True)]
                    if "no column sums" not in name:     # the gates' sums a column at a time
                        cfgs += [dict(default, TMA=True, TILE_SUMS=False)]
            elif args.tma and family is row_gemms:
                cfgs = [cfg if cfg is None else dict(cfg, TMA=True) for cfg in cfgs]
            # (tiles, GPU-only code on): --options adds the default tiles with it off
            variants = [(cfg, True) for cfg in cfgs] + ([(None, False)] if args.options
                                                        else [])
            for cfg, asm in variants:
                tag = ("default" if cfg is None else _tag(cfg)) + ("" if asm else
                                                                   ", no GPU asm")
                for gates_name, g in gate_sets.items():
                    try:
                        skip = gates_name == "half"
                        with gpu_asm(asm):
                            ms = time_graph_ms(lambda f=ours, c=cfg, g=g, s=skip: f(c, g, s))
                    except Exception as err:  # a tile that does not fit shared memory
                        print(f"{name} {cfg} failed: {err!r}"[:240], flush=True)
                        break
                    rows.append(dict(table="gemm-sweep", case=f"{name} {args.shape}",
                                     mode=gates_name, provider="ours", tiles=tag, ms=ms,
                                     TFLOPs=flops / ms / 1e9, vs_cublas=ms / ref_ms))
            for r in rows:
                print(f"{r['case']:<36} {r['mode']:<6} {r['provider']:<7} "
                      f"{r.get('tiles', ''):<20} {r['ms'] * 1e3:7.1f} us "
                      f"{r['TFLOPs']:6.0f} TF/s", flush=True)
            # each GEMM's rows as soon as they are measured: a call's time limit may cut the
            # sweep short
            write_rows("gemm_sweep", rows)
            if os.environ.get("OUT"):
                write_rows("gemm_sweep", rows, out_dir=os.environ["OUT"])
            rows = []
    _print_pipelining(gm._rows_gemm_kernel, gw._wgrad_kernel)


if __name__ == "__main__":
    main()
