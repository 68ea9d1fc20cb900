"""The long-K row GEMM in Gluon (Hopper): out[M, N] = a[M, K] @ b[K, N] with K walked over
the live chunks only: the FFN's second product and d_xn (K 1536, N 384), the MHSA
in-projection's input gradient (K 1152).

`rows_gemm` (gated_matmul.py) hands its K-chunked plain-store calls here where `applies`
holds and its tile model picks this kernel's 64 x 128 tile (B32xT250 and B16xT750; at
B80xT250, a training step's shape, it picks 128 x 128 and keeps the product); the result is
the one its own kernel gives (EPI_STORE, CHUNK_AXIS 2, FINAL: zeros at padded rows).

Why a second language: the tile is the Triton row GEMM's (64 x 128, 3 stages, 4 warps, three
programs a SM), with the pipeline written out: TMA loads into a ring of shared-memory stages,
asynchronous warp-group MMAs with one step in flight. On the H200 at M 8000, K 1536, N 384,
every row valid, it took 16.4-16.7 us a call against 19.6-19.9 for the Triton kernel and
15.9 for cuBLAS; in the FFN module 1-3.5 us less a call, the MHSA within noise
(bench/NOTES.md, session 46). Where the Triton kernel loses the time was not profiled. A
64 x 192 tile (two programs a SM, cuBLAS's work a SM) did better alone (15.5-16.0) and worse
in the modules.

A program whose rows are all padding skips its K-loop and writes zeros. Gluon does not run
under Triton's CPU interpreter: there `rows_gemm` keeps its own kernel, which the CPU tests
check; tests/test_long_k_gemm.py checks this one on the GPU.
"""

from __future__ import annotations

import functools

import torch
import triton

from .common import b_layout, tma_problems
from .launch import Switch, cdiv, launch, next_pow2

try:        # Gluon's API moves between Triton versions: written against 3.6
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    _GLUON = tuple(int(v) for v in triton.__version__.split(".")[:2]) == (3, 6)
except ImportError:
    _GLUON = False

BM, BN, BK, STAGES, WARPS = 64, 128, 64, 3, 4

# ORTHOASR_GLUON=0 keeps every product on the Triton row GEMM (benchmarks compare the two)
gluon_products = Switch("ORTHOASR_GLUON")


if _GLUON:
    @gluon.jit
    def _add(x, y):
        return x + y

    @gluon.jit
    def _load(a_desc, b_desc, a_bufs, b_bufs, bars, i, n_steps, steps, live_rank, CHUNK,
              off_m, off_n, B_NK: gl.constexpr, STAGES: gl.constexpr):
        """Issue the TMA loads of step i of the flat loop over the live chunks' K steps into
        its stage (none past the last step)."""
        BK: gl.constexpr = a_desc.block_type.shape[1]
        j = i // steps
        kc = gl.sum((live_rank <= j).to(gl.int32), 0)     # the j-th live chunk
        k0 = kc * CHUNK + (i - j * steps) * BK
        s = i % STAGES
        bar = bars.index(s)
        go = i < n_steps
        mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=go)
        tma.async_copy_global_to_shared(a_desc, [off_m, k0], bar, a_bufs.index(s), pred=go)
        if B_NK:
            tma.async_copy_global_to_shared(b_desc, [off_n, k0], bar, b_bufs.index(s), pred=go)
        else:
            tma.async_copy_global_to_shared(b_desc, [k0, off_n], bar, b_bufs.index(s), pred=go)

    @gluon.jit
    def _long_k_kernel(a_desc, b_desc, out_desc, bias_ptr, gate_ptr, len_ptr, M, T, CHUNK,
                       NUM_CHUNKS: gl.constexpr, CHUNKS_P2: gl.constexpr,
                       HAS_GATES: gl.constexpr, SKIP_DEAD: gl.constexpr,
                       HAS_BIAS: gl.constexpr, BIAS_MODE: gl.constexpr,
                       SCALE_OUT: gl.constexpr, B_NK: gl.constexpr, STAGES: gl.constexpr,
                       PDL: gl.constexpr = False, num_warps: gl.constexpr = 4):
        # Program (pid_m, pid_n): rows [pid_m*BM, +BM) x columns [pid_n*BN, +BN), K walked
        # over the live chunks of CHUNK (a multiple of BK). Gates as gated_matmul's row GEMM
        # reads them with CHUNK_AXIS 2: chunk c is skipped where SKIP_DEAD and g_c == 0; the
        # bias counts while any chunk is live (BIAS_MODE 1) or scaled by g_0 (2); SCALE_OUT
        # multiplies the tile by g_0. b: [K, N] blocks, or [N, K] ones with B_NK.
        BM: gl.constexpr = a_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        BN: gl.constexpr = out_desc.block_type.shape[1]
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        off_m = gl.program_id(0) * BM
        off_n = gl.program_id(1) * BN

        # every thread holds the whole chunk vector: the per-step reductions stay in-thread
        vec: gl.constexpr = gl.BlockedLayout([CHUNKS_P2], [32], [num_warps], [0])
        offs_c = gl.arange(0, CHUNKS_P2, layout=vec)
        in_chunks = offs_c < NUM_CHUNKS
        gates = gl.full([CHUNKS_P2], 1.0, gl.float32, layout=vec)
        if HAS_GATES:
            gates = gl.load(gate_ptr + offs_c, mask=in_chunks, other=0.0).to(gl.float32)
        live = in_chunks
        if SKIP_DEAD:
            live = live & (gates != 0.0)
        live_rank = gl.associative_scan(live.to(gl.int32), 0, _add)
        n_live = gl.sum(live.to(gl.int32), 0)

        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])
        rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
        seq = rows // T
        row_ok = (rows < M) & (rows - seq * T < gl.load(len_ptr + seq, mask=rows < M, other=0))
        steps = CHUNK // BK
        n_steps = n_live * steps * gl.max(row_ok.to(gl.int32), 0)     # 0: all padding

        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape,
                                           a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape,
                                           b_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for stage in gl.static_range(STAGES):
            mbarrier.init(bars.index(stage), count=1)
        for ahead in gl.static_range(STAGES - 1):
            _load(a_desc, b_desc, a_bufs, b_bufs, bars, ahead, n_steps, steps, live_rank,
                  CHUNK, off_m, off_n, B_NK, STAGES)
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout)
        for i in range(n_steps):
            s = i % STAGES
            mbarrier.wait(bars.index(s), (i // STAGES) & 1)
            b = b_bufs.index(s)
            if B_NK:
                b = b.permute((1, 0))
            acc = warpgroup_mma(a_bufs.index(s), b, acc, is_async=True)
            # the step before's MMA is done (this step's stays in flight), and with the
            # barrier in every warp: its stage may be refilled
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            gl.thread_barrier()
            _load(a_desc, b_desc, a_bufs, b_bufs, bars, i + STAGES - 1, n_steps, steps,
                  live_rank, CHUNK, off_m, off_n, B_NK, STAGES)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        for stage in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(stage))

        # (acc + bias * bias_scale) * (g_0 with SCALE_OUT), zeros at padded rows, through
        # shared memory to a TMA store (rows past M are clipped by the store)
        if HAS_BIAS:
            if BIAS_MODE == 1:
                bias_scale = gl.max((gates != 0.0).to(gl.float32), 0)
            elif BIAS_MODE == 2:
                bias_scale = gl.sum(gl.where(offs_c == 0, gates, 0.0), 0)
            else:
                bias_scale = 1.0
            cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
            acc = acc + gl.load(bias_ptr + cols).to(gl.float32)[None, :] * bias_scale
        if SCALE_OUT:
            acc = acc * gl.sum(gl.where(offs_c == 0, gates, 0.0), 0)
        out = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape,
                                        out_desc.layout)
        out.store(gl.where(row_ok[:, None], acc, 0.0).to(out_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(out_desc, [off_m, off_n], out)
        tma.store_wait(pendings=0)


@functools.cache
def _hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] == 9


def applies(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, chunk: int,
            ungated_rows: int) -> bool:
    """Whether `long_k_gemm` takes this K-chunked plain-store product: Gluon on Triton 3.6,
    a Hopper GPU, 16-bit operands in one dtype laid out for TMA, N a multiple of BN,
    chunks of whole BK steps, no ungated rows, and the switch on."""
    if not (_GLUON and gluon_products.on and a.is_cuda and _hopper(a.device.index or 0)):
        return False
    return (a.dtype in (torch.float16, torch.bfloat16) and out.dtype == a.dtype
            and ungated_rows == 0 and out.shape[1] % BN == 0 and chunk > 0
            and not tma_problems(a, b, chunk, BK)
            and out.is_contiguous() and out.data_ptr() % 16 == 0
            and out.stride(0) * out.element_size() % 16 == 0)


def _desc(t: torch.Tensor, block: list[int]):
    dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor.from_tensor(t, block, layout)


def long_k_gemm(a, b, out, *, lengths, T, bias=None, bias_mode=0, gates=None, chunk, num_chunks,
                skip_dead=False, scale_out=False):
    """out [M, N] = a [M, K] @ b [K, N] (+ bias, gated as `rows_gemm` with chunk_axis 2,
    EPI_STORE, final), with zeros at padded rows; b is row-major or the transposed view of a
    row-major [N, K] (nn.Linear's weight). Only where `applies` holds."""
    b_t, b_nk = b_layout(b)
    b_desc = _desc(b_t, [BN, BK] if b_nk else [BK, BN])
    launch(_long_k_kernel, (cdiv(a.shape[0], BM), out.shape[1] // BN), _desc(a, [BM, BK]),
           b_desc, _desc(out, [BM, BN]), bias if bias is not None else out,
           gates if gates is not None else out, lengths, a.shape[0], T, chunk,
           NUM_CHUNKS=num_chunks, CHUNKS_P2=next_pow2(num_chunks), HAS_GATES=gates is not None,
           SKIP_DEAD=skip_dead and gates is not None, HAS_BIAS=bias is not None,
           BIAS_MODE=bias_mode, SCALE_OUT=scale_out, B_NK=b_nk, STAGES=STAGES,
           num_warps=WARPS)
    return out
