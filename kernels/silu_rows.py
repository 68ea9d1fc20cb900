"""The FFN's two SiLU products as persistent TMA GEMMs (not yet the module's default,
`USE_IN_FFN`: bench/gemm_sweep.py and bench_floor's `ours_silu_rows` time them against the
row GEMM).

    EPI_SILU_GATE  pre = a @ b + bias (saved), out = g_c * silu(pre)      (forward, xn @ W1^T)
    EPI_SILU_BWD   out = (a @ b) * g_c * silu'(pre), pre the saved tile  (backward, dy @ W2)

With skip_dead, over the live chunks of N only (g_c != 0, read on the device; a dead chunk's
columns are left unwritten, as the row GEMM leaves them). The row GEMM
(`gated_matmul.rows_gemm`) runs one program per output tile: with K = 384 its 6 K-steps and
its epilogue alternate, and the epilogue's 49 MB of stores at B32xT250 add ~16 us to each
product's ~23 (bench/NOTES.md). Here the programs walk the live tiles in one flattened loop
and store by asynchronous TMA descriptor stores, so that the next tile's loads and MMAs run
while a tile's results drain.

Every row in [0, M) is computed and stored, padded frames too: without `final` the outputs
are intermediates that every reader masks or drops at padded frames (the row GEMM leaves
them unwritten there); with it, zeros there. The gates' gradient sums (soft gates' backward)
and ungated rows stay with the row GEMM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .common import interpreting
from .gated_matmul import (
    EPI_SILU_BWD,
    EPI_SILU_GATE,
    _gate,
    _num_sms,
    _tma_problems,
    _valid_rows,
    live_chunks,
    nth_live,
    tma_by_default,
    tma_operands,
)
from .launch import cdiv, launch, next_pow2


@triton.jit
def _silu_rows_kernel(a_desc, b_desc, out_desc, aux_desc, bias_ptr, gate_ptr, len_ptr,
                      M, K, T, CHUNK,
                      EPI: tl.constexpr, NUM_CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr,
                      HAS_GATES: tl.constexpr, SKIP_DEAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SAVE_AUX: tl.constexpr, FINAL: tl.constexpr, B_NK: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # Program p takes live tiles p, p + P, ...: tile i is row block i // n_cols and the
    # (i % n_cols)-th live column block, whose chunk is found from the running count of live
    # gates (nth_live), once a tile, not once a K-step. Consecutive tiles share a row block,
    # so its a rows are read from L2 by the programs that run side by side. FINAL: zeros at
    # padded frames (for the dense products that read every row; never with SKIP_DEAD).
    live_rank, n_live = live_chunks(gate_ptr, NUM_CHUNKS, CHUNKS_P2, SKIP_DEAD and HAS_GATES)
    per_chunk = CHUNK // BN                         # the launcher checked: whole blocks
    n_cols = n_live * per_chunk
    n_tiles = tl.cdiv(M, BM) * n_cols
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), flatten=True):
        row0 = (tile // n_cols) * BM
        rank = tile % n_cols
        c = nth_live(live_rank, rank // per_chunk)
        col0 = c * CHUNK + (rank % per_chunk) * BN
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = a_desc.load([row0, k0])
            if B_NK:
                b = b_desc.load([col0, k0]).T
            else:
                b = b_desc.load([k0, col0])
            acc = tl.dot(a, b, acc)
        g = _gate(gate_ptr, c, HAS_GATES)
        if EPI == 1:
            pre = acc
            if HAS_BIAS:
                pre += tl.load(bias_ptr + col0 + tl.arange(0, BN)).to(tl.float32)[None, :]
            if SAVE_AUX:
                aux_desc.store([row0, col0], pre.to(aux_desc.dtype))
            out = pre * tl.sigmoid(pre) * g
        else:
            pre = aux_desc.load([row0, col0]).to(tl.float32)
            sig = tl.sigmoid(pre)
            out = acc * g * sig * (1.0 + pre * (1.0 - sig))
        if FINAL:
            valid = _valid_rows(row0 + tl.arange(0, BM), M, T, len_ptr)
            out = tl.where(valid[:, None], out, 0.0)
        out_desc.store([row0, col0], out.to(out_desc.dtype))


# Whether the FFN takes silu_rows for its SiLU products: off until the H200
# shows it beating the row GEMM (bench/NOTES.md, session 29's plan); tests turn it on
USE_IN_FFN = False


def silu_rows_applies(a: torch.Tensor, b: torch.Tensor, chunk: int) -> bool:
    """Whether the FFN's SiLU product a @ b (N in chunks of `chunk` columns) goes to
    silu_rows: USE_IN_FFN, operands TMA can take (16-bit on a Hopper GPU, any dtype under the
    interpreter) and chunks of whole column blocks."""
    if not USE_IN_FFN or (a.is_cuda and not tma_by_default(a)):
        return False
    blk = silu_rows_blocks()
    return chunk % blk["BN"] == 0 and not _tma_problems(a, b, 0, blk["BK"])


def silu_rows_blocks() -> dict:
    """128x128x64 tiles, 8 warps, at most 128 registers and 2 stages: two programs a SM
    (98 KB of shared memory for the forward, 131 KB for the backward, whose saved tile's
    load is double-buffered: one program a SM there) in an sm_90 compile with Triton 3.6;
    programs_per_sm: how many persistent programs a SM gets (the interpreter: how many in
    all). Not yet timed on a GPU."""
    if interpreting():
        return dict(BM=32, BN=32, BK=32, num_warps=4, num_stages=1, programs_per_sm=3)
    return dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=2, maxnreg=128,
                programs_per_sm=2)


def silu_rows(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, aux: torch.Tensor | None,
              *, epi: int, gates: torch.Tensor | None = None, chunk: int = 0,
              skip_dead: bool = True, bias: torch.Tensor | None = None,
              lengths: torch.Tensor | None = None, T: int = 0, final: bool = False,
              blocks: dict | None = None) -> torch.Tensor:
    """out[M, N] = the SiLU epilogue `epi` of a[M, K] @ b, N in chunks of `chunk` columns
    gated by gates [N // chunk] (None: no gates); with skip_dead a chunk whose gate is 0 is
    skipped, its columns left unwritten. b: a [K, N] view of a row-major [K, N] or [N, K]
    tensor (W2, or W1.t()). EPI_SILU_GATE adds bias [N] (fp32) and writes pre to aux (None:
    not kept, inference); EPI_SILU_BWD reads pre from aux. out and aux: contiguous [M, N] in
    a's dtype. final: zeros at padded frames of out (lengths [B], T: frame rows b*T + t; not
    with skip_dead and gates). blocks: BM, BN, BK, num_warps, num_stages, maxnreg, and
    programs_per_sm (None: one program per live tile) in place of `silu_rows_blocks`."""
    M, K = a.shape
    N = out.shape[1]
    blk = dict(blocks or silu_rows_blocks())
    programs_per_sm = blk.pop("programs_per_sm", None)
    num_chunks, chunk = (1, N) if gates is None else (gates.shape[0], chunk)
    saved = [t for t in (out, aux) if t is not None]
    problems = [f"{name} {what}" for name, ok, what in (
        ("epi", epi in (EPI_SILU_GATE, EPI_SILU_BWD), f"{epi} is not a SiLU epilogue"),
        ("chunk", chunk > 0 and chunk % blk["BN"] == 0 and chunk * num_chunks == N,
         f"{chunk} x {num_chunks} gates must be N={N} in whole blocks of BN={blk['BN']}"),
        ("out/aux", all(t.shape == (M, N) and t.is_contiguous() and t.dtype == a.dtype
                        for t in saved),
         f"must be contiguous {(M, N)} {a.dtype}, got "
         f"{[(tuple(t.shape), t.dtype) for t in saved]}"),
        ("aux", aux is not None or epi == EPI_SILU_GATE, "is the backward's saved pre"),
        ("final", not final or (lengths is not None and T > 0
                                and not (skip_dead and gates is not None)),
         "needs lengths and T, and no dead chunk to skip"))
        if not ok]
    if problems:
        raise ValueError(f"silu_rows: {'; '.join(problems)}")
    a_desc, b_desc, b_nk = tma_operands(a, b, 0, blk, required=True, name="silu_rows")
    out_desc = TensorDescriptor.from_tensor(out, [blk["BM"], blk["BN"]])
    aux_desc = out_desc if aux is None else TensorDescriptor.from_tensor(aux, [blk["BM"],
                                                                               blk["BN"]])
    most_tiles = cdiv(M, blk["BM"]) * (N // blk["BN"])
    programs = most_tiles
    if programs_per_sm is not None:
        sms = _num_sms(a.device.index or 0) if a.is_cuda else 1
        programs = min(most_tiles, programs_per_sm * sms)
    launch(_silu_rows_kernel, (programs,),
        a_desc, b_desc, out_desc, aux_desc, bias if bias is not None else out,
        gates if gates is not None else out, lengths if lengths is not None else out,
        M, K, max(T, 1), chunk, EPI=epi, NUM_CHUNKS=num_chunks,
        CHUNKS_P2=next_pow2(num_chunks), HAS_GATES=gates is not None, SKIP_DEAD=skip_dead,
        HAS_BIAS=bias is not None, SAVE_AUX=aux is not None, FINAL=final, B_NK=b_nk, **blk)
    return out
