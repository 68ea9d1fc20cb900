"""Does a persistent GEMM close the gap to cuBLAS on the encoder's products? A measurement to
decide before rewriting the gated row GEMM (kernels/gated_matmul.py) around one.

The row GEMM launches one program per output tile. With K = 384 a tile is 6 steps of 64,
so filling the pipeline, draining it and the epilogue's stores are much of each program.
cuBLAS does the same products 1.3-1.7x faster (bench/NOTES.md, sessions 7-9). A persistent
GEMM keeps one program per SM slot and walks its tiles in one loop over (tile, K-step). The
software pipeliner can then load the next tile's first steps while the current tile's
epilogue runs.

Three plain bf16 GEMMs, all rows valid and no gates, are timed against cuBLAS on the same
operands, each replayed as a CUDA graph:
- `tiled`: one program per tile;
- `persistent`: one flat loop, at 1 or 2 programs a SM;
- `ours`: the gated row GEMM, with the store epilogue;
- `tiled 128x256/8w`: a wider tile over two warpgroups;
- `TMA ...`: the tiled product with operands and result moved by TMA descriptors;
- `TMA persistent ...`: that product in persistent programs.
A variant with the tile loop warp-specialized (`tl.range(warp_specialize=True)`) was
dropped: it compiles for sm_90 with Triton 3.6 but never finished on the H200
(2026-12-04, bench/NOTES.md session 42); Triton's tutorial lists the feature for Blackwell.
On the H200 (2026-12-01) `persistent` was 8-12% ahead of `tiled` at K = 384 and even at
K = 1536, and `TMA` 13-19% ahead at M = 20000, about half the way to cuBLAS: the row GEMM
got a TMA option (kernels/gated_matmul.py).

Rows go to bench/results/gemm_probe.json. Run: python -m bench.gemm_probe
[--rows 20000] [--products W1] [--providers persistent]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from bench.harness import require_gpu, time_graph_ms, write_rows
from orthoasr.kernels import gated_matmul as gm

# (name, K, N): the FFN's K = 384 and K = 1536 products, the MHSA's in-projection
PRODUCTS = [("xn @ W1^T (K 384, N 1536)", 384, 1536),
            ("hidden @ W2^T (K 1536, N 384)", 1536, 384),
            ("x @ W_in^T (K 384, N 1152)", 384, 1152)]
TILES = dict(BM=128, BN=128, BK=64, GROUP_M=8)
WIDE = dict(TILES, BN=256)


@triton.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped order: GROUP_M row tiles take each column tile in turn, so that a group's A
    rows and B columns are read from L2 while they are still there."""
    per_group = GROUP_M * num_n
    first_m = (tile // per_group) * GROUP_M
    rows_in_group = tl.minimum(num_m - first_m, GROUP_M)
    within = tile % per_group
    return first_m + within % rows_in_group, within // rows_in_group


@triton.jit
def _store_tile(c_ptr, acc, pid_m, pid_n, M, N, BM: tl.constexpr, BN: tl.constexpr):
    """C's [BM, BN] tile (pid_m, pid_n) from acc by masked pointer stores (C [M, N],
    row-major), as the row GEMM stores."""
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def _tiled_mm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_bk, stride_bn,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     GROUP_M: tl.constexpr):
    # C[M, N] = A[M, K] @ B (B a [K, N] view by its strides), one program per tile
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :],
                    mask=(rows < M)[:, None] & (ks < K)[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=(ks < K)[:, None] & (cols < N)[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def _persistent_mm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_bk, stride_bn,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                          GROUP_M: tl.constexpr):
    # The same product; program p takes tiles p, p + P, ... in one loop over (tile, K-step).
    # A new tile's coordinates are worked out at its first step, at the top of the loop, so
    # that the pipeliner can issue its loads ahead while the previous tile's epilogue (the
    # `if` at the bottom) runs.
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    k_steps = tl.cdiv(K, BK)
    my_tiles = tl.cdiv(num_m * num_n - pid, programs)
    tile = pid - programs
    ki = -1
    rows = tl.arange(0, BM)
    cols = tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for _ in range(0, my_tiles * k_steps):
        ki = tl.where(ki == k_steps - 1, 0, ki + 1)
        if ki == 0:
            tile += programs
            pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
            rows = pid_m * BM + tl.arange(0, BM)
            cols = pid_n * BN + tl.arange(0, BN)
        ks = ki * BK + tl.arange(0, BK)
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :],
                    mask=(rows < M)[:, None] & (ks < K)[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=(ks < K)[:, None] & (cols < N)[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        if ki == k_steps - 1:
            tl.store(c_ptr + rows[:, None] * N + cols[None, :],
                     acc.to(c_ptr.dtype.element_ty),
                     mask=(rows < M)[:, None] & (cols < N)[None, :])
            acc = tl.zeros([BM, BN], dtype=tl.float32)


@triton.jit
def _tma_tile_product(a_desc, w_desc, pid_m, pid_n, K, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr):
    """fp32 [BM, BN] tile (pid_m, pid_n) of A @ W^T, its blocks loaded by TMA descriptors."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = a_desc.load([pid_m * BM, k0])
        w = w_desc.load([pid_n * BN, k0])
        acc = tl.dot(a, w.T, acc)
    return acc


@triton.jit
def _tma_mm_kernel(a_desc, w_desc, c, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                   BK: tl.constexpr, GROUP_M: tl.constexpr, C_DESC: tl.constexpr = True):
    # The tiled product with its operands read by the Hopper tensor-memory accelerator:
    # one descriptor load per [BM, BK] / [BN, BK] block, no per-element addresses or masks
    # in registers (the bounds are the descriptor's, zero-filled), the store likewise where
    # C_DESC (c a descriptor); else c is a pointer and the store masked, as the row GEMM's
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    acc = _tma_tile_product(a_desc, w_desc, pid_m, pid_n, K, BM, BN, BK)
    if C_DESC:
        c.store([pid_m * BM, pid_n * BN], acc.to(c.dtype))
    else:
        _store_tile(c, acc, pid_m, pid_n, M, N, BM, BN)


@triton.jit
def _tma_persistent_mm_kernel(a_desc, w_desc, c_ptr, M, N, K, BM: tl.constexpr,
                              BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # The TMA product with one program per SM slot walking tiles p, p + P, ..., the loop
    # over (tile, K-step) flattened so that the pipeliner can load the next tile's first
    # steps during the current tile's epilogue; the result goes out by pointers.
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), num_m * num_n, tl.num_programs(0), flatten=True):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        acc = _tma_tile_product(a_desc, w_desc, pid_m, pid_n, K, BM, BN, BK)
        _store_tile(c_ptr, acc, pid_m, pid_n, M, N, BM, BN)


def tiled_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, num_warps: int = 4,
             num_stages: int = 3, tiles: dict = TILES) -> torch.Tensor:
    """out[M, N] = a[M, K] @ b[K, N] (b any strided view), one program per tile."""
    M, K = a.shape
    N = out.shape[1]
    grid = (triton.cdiv(M, tiles["BM"]) * triton.cdiv(N, tiles["BN"]),)
    _tiled_mm_kernel[grid](a, b, out, M, N, K, b.stride(0), b.stride(1), **tiles,
                           num_warps=num_warps, num_stages=num_stages)
    return out


def tma_mm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, num_warps: int = 4,
           num_stages: int = 3, tiles: dict = TILES, out_desc: bool = True) -> torch.Tensor:
    """out[M, N] = a[M, K] @ w[N, K]^T through host-built TMA descriptors (all three
    contiguous; the descriptors are kernel arguments, so a CUDA graph captures them); out by
    pointer stores where not out_desc."""
    M, K = a.shape
    N = w.shape[0]
    BM, BN, BK = tiles["BM"], tiles["BN"], tiles["BK"]
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    c = TensorDescriptor.from_tensor(out, [BM, BN]) if out_desc else out
    _tma_mm_kernel[grid](TensorDescriptor.from_tensor(a, [BM, BK]),
                         TensorDescriptor.from_tensor(w, [BN, BK]), c, M, N, K, **tiles,
                         C_DESC=out_desc, num_warps=num_warps, num_stages=num_stages)
    return out


def tma_persistent_mm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, programs: int,
                      num_warps: int = 4, num_stages: int = 3,
                      tiles: dict = TILES) -> torch.Tensor:
    """tma_mm's product with `programs` persistent programs (at most one per tile)."""
    M, K = a.shape
    N = w.shape[0]
    BM, BN, BK = tiles["BM"], tiles["BN"], tiles["BK"]
    grid = (min(programs, triton.cdiv(M, BM) * triton.cdiv(N, BN)),)
    _tma_persistent_mm_kernel[grid](TensorDescriptor.from_tensor(a, [BM, BK]),
                                    TensorDescriptor.from_tensor(w, [BN, BK]),
                                    out, M, N, K, **tiles,
                                    num_warps=num_warps, num_stages=num_stages)
    return out


def persistent_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, programs: int,
                  num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """The same product with `programs` persistent programs (at most one per tile)."""
    M, K = a.shape
    N = out.shape[1]
    tiles = triton.cdiv(M, TILES["BM"]) * triton.cdiv(N, TILES["BN"])
    _persistent_mm_kernel[(min(programs, tiles),)](
        a, b, out, M, N, K, b.stride(0), b.stride(1), **TILES, num_warps=num_warps,
        num_stages=num_stages)
    return out


def providers(a, w, out, sms: int) -> dict:
    """name -> a call computing out = a @ w^T (w [N, K], as the encoder stores weights)."""
    M = a.shape[0]
    lengths = torch.full((1,), M, device=a.device)
    return {
        "cublas": lambda: torch.mm(a, w.t(), out=out),
        "ours": lambda: gm.rows_gemm(a, w.t(), out, lengths=lengths, T=M, final=True),
        "tiled": lambda: tiled_mm(a, w.t(), out),
        **{f"persistent, {k}/SM": (lambda k=k: persistent_mm(a, w.t(), out, k * sms))
           for k in (1, 2)},
        # larger tiles halve the operand bytes per FLOP; 8 warps are two warpgroups
        "tiled 128x256/8w": lambda: tiled_mm(a, w.t(), out, 8, 3, WIDE),
        "TMA": lambda: tma_mm(a, w, out),
        "TMA, 4 stages": lambda: tma_mm(a, w, out, 4, 4),
        # the row GEMM stores by masked pointers: what does that cost against TMA's store?
        "TMA, pointer store": lambda: tma_mm(a, w, out, out_desc=False),
        "TMA 128x64/4w/4, pointer store": lambda: tma_mm(a, w, out, 4, 4,
                                                         dict(TILES, BN=64), False),
        "TMA 128x128/8w": lambda: tma_mm(a, w, out, 8, 3),
        "TMA 128x256/8w": lambda: tma_mm(a, w, out, 8, 3, WIDE),
        **{f"TMA persistent, {k}/SM": (lambda k=k: tma_persistent_mm(a, w, out, k * sms))
           for k in (1, 2)},
    }


def timed_row(case: str, provider: str, call, check, flops: int) -> dict | None:
    """Run call once, check its result, time it replayed as a CUDA graph: a row, or None
    (printed) for a variant that fails to compile, to run or to match."""
    try:
        call()
        check()
        ms = time_graph_ms(call)
    except Exception as error:       # noqa: BLE001 (reported, not hidden)
        print(f"{case:42s} {provider:18s} Error: {error}", flush=True)
        return None
    print(f"{case:42s} {provider:18s} {ms * 1e3:7.1f} us {flops / ms / 1e9:6.0f} TFLOP/s",
          flush=True)
    return dict(table="gemm_probe", case=case, mode="fwd", provider=provider,
                baseline="cublas", timing="graph", ms=ms, tflops=flops / ms / 1e9)


def wanted(name: str, patterns: list[str] | None) -> bool:
    return not patterns or any(p in name for p in patterns)


def probe(name: str, K: int, N: int, M: int, sms: int, keep: list[str] | None) -> None:
    """One product's rows at M rows, each provider's result checked before it is timed and
    its row written as soon as it is measured (a variant that never finished, the
    warp-specialized one on 2026-12-04, cost its product's rows before)."""
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
    out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    expected = a.float() @ w.float().t()
    case = f"{name}, M {M}"

    def check(provider):
        torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2,
                                   msg=f"{case} {provider}")

    for provider, call in providers(a, w, out, sms).items():
        if not wanted(provider, keep):
            continue
        out.fill_(float("nan"))
        row = timed_row(case, provider, call, lambda p=provider: check(p), 2 * M * N * K)
        if row is not None:
            write_rows("gemm_probe", [row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[8000, 20000],
                        help="M: frames of B32xT250 and of a training step (B80xT250)")
    parser.add_argument("--products", nargs="*", default=None,
                        help="only the products whose name holds one of these (e.g. W1)")
    parser.add_argument("--providers", nargs="*", default=None,
                        help="only the providers whose name holds one of these (cublas is "
                             "always kept)")
    args = parser.parse_args()
    require_gpu("gemm_probe")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    keep = None if args.providers is None else args.providers + ["cublas"]
    torch.manual_seed(0)
    for M in args.rows:
        for name, K, N in PRODUCTS:
            if wanted(name, args.products):
                probe(name, K, N, M, sms, keep)


if __name__ == "__main__":
    main()
