"""Compile the FFN, conv, LayerNorm, first-conv, CTC, OrthoSoftmax, weight-cast, zeroing and
dropout-mask kernels for sm_90
without a GPU, at the configurations their launchers use for bf16 activations and the paper
model's sizes (as Triton's launcher specialises them), and print registers, spills and
shared memory (the attention / MHSA kernels: bench/compile_check_attention.py). Run before
spending GPU time on a kernel change.

    python -m bench.compile_check_modules
"""

from __future__ import annotations

import torch

from bench.compile_check_attention import _compile
from orthoasr.kernels import (
    common,
    ctc,
    first_conv,
    gated_conv,
    gated_matmul,
    gated_wgrad,
    layer_norm,
    ortho_softmax,
    residual_step,
)
from orthoasr.kernels.gated_matmul import (
    EPI_GATE_BWD,
    EPI_GLU,
    EPI_SILU_BWD,
    EPI_SILU_GATE,
    EPI_STORE,
)
from orthoasr.kernels.launch import cdiv

BF16 = torch.bfloat16
D, F, M, T = 384, 1536, 8000, 250          # the paper model at B32xT250
# (name, EPI, CHUNK_AXIS, HAS_BIAS, SAVE_AUX, FINAL, HAS_SUM1, SCALE_OUT, N, K, stride_bk,
# stride_bn): the row GEMMs of gated_ffn.py and gated_conv.py (B given as a strided view of
# the weight: W.t() for the forward GEMMs, W for the backward ones)
ROW_GEMMS = [
    ("ffn GEMM1", EPI_SILU_GATE, 1, True, True, False, False, False, F, D, 1, D),
    ("ffn GEMM1, zero-padded", EPI_SILU_GATE, 1, True, True, True, False, False, F, D, 1, D),
    ("ffn GEMM2", EPI_STORE, 2, True, False, True, False, False, D, F, 1, F),
    ("ffn dH", EPI_SILU_BWD, 1, False, False, False, True, False, F, D, F, 1),
    # nothing skipped (soft gates): zeros at padded rows for the dense products
    ("ffn dH, zero-padded", EPI_SILU_BWD, 1, False, False, True, True, False, F, D, F, 1),
    # no gates (the supernet's dense pass): no column sums, the saved tile loaded early
    ("ffn dH, dense", EPI_SILU_BWD, 1, False, False, True, False, False, F, D, F, 1),
    ("ffn dXn", EPI_STORE, 2, False, False, False, False, False, D, F, D, 1),
    ("conv PW1", EPI_GLU, 0, True, True, False, False, False, D, D, 1, D),
    ("conv PW2", EPI_STORE, 0, True, False, True, False, True, D, D, 1, D),
    ("conv dR", EPI_GATE_BWD, 0, False, False, False, True, False, D, D, D, 1),
]


def _row_gemm(name, epi, axis, bias, aux, final, sum1, scale, n, k, s_k, s_n, blk) -> bool:
    warps, stages = blk.pop("num_warps"), blk.pop("num_stages")
    maxnreg = blk.pop("maxnreg", None)
    ungated = blk.pop("HAS_UNGATED", False)   # a batch holding two passes (nothing skipped)
    options = (", TMA" if blk.get("TMA") else "") + (", ungated rows" if ungated else "")
    print(f"{name}{options}: ", end="")
    operands = dict(a_ptr="bf16", b_ptr="bf16")
    if blk.get("TMA"):       # descriptors of the blocks the kernel loads (B_NK: b as [N, K])
        blk["B_NK"] = s_k == 1
        b_block = [blk["BN"], blk["BK"]] if blk["B_NK"] else [blk["BK"], blk["BN"]]
        operands = dict(a_ptr=f"tensordesc<bf16[{blk['BM']},{blk['BK']}]>",
                        b_ptr=f"tensordesc<bf16[{b_block[0]},{b_block[1]}]>")
    return _compile(gated_matmul._rows_gemm_kernel,
                    operands | dict(out_ptr="bf16", bias_ptr="fp32",
                                    gate_ptr="fp32", len_ptr="i64", aux_ptr="bf16",
                                    sum1_ptr="fp32"),
                    ints=dict(M=M, N=n, K=k, T=T, CHUNK=F // 4, UNGATED=0, stride_am=k,
                              stride_bk=s_k, stride_bn=s_n),
                    constexprs=dict(NUM_CHUNKS=4, CHUNKS_P2=4, CHUNK_AXIS=axis,
                                    HAS_GATES=True, SKIP_DEAD=not ungated,
                                    HAS_UNGATED=ungated,
                                    EPI=epi, HAS_BIAS=bias,
                                    BIAS_MODE=1, SCALE_OUT=scale, SAVE_AUX=aux, FINAL=final,
                                    HAS_SUM1=sum1, TILE_SUMS=sum1,   # as rows_gemm
                                    # the FFN's per-chunk sums, the conv gate's one sum
                                    CHUNK_SUMS=sum1,
                                    DOT_PRECISION="tf32", **blk),
                    num_warps=warps, num_stages=stages, maxnreg=maxnreg)


def main() -> None:
    ok = True
    for gemm in ROW_GEMMS:
        name, epi, axis, _bias, _aux, final, sum1, *_ = gemm
        # the K-chunked GEMM picks one of two tiles by its waves: both
        tiles = ([dict(t) for t, _ in gated_matmul._K_CHUNKED_TILES] if axis == 2 else
                 [gated_matmul._rows_blocks(BF16, axis, epi)])
        for blk in tiles:
            ok &= _row_gemm(*gemm, dict(blk))  # the pointer loads (TMA: the launcher's choice)
            ok &= _row_gemm(*gemm, dict(blk, TMA=True))
            if final or epi == EPI_GATE_BWD:  # the soft pass's: also as a batch of two passes
                ok &= _row_gemm(*gemm, dict(blk, TMA=True, HAS_UNGATED=True))
    for axis, tma, listed, sums in ((1, False, False, False), (2, False, False, False),
                                    (1, True, False, False), (2, True, False, False),
                                    (1, True, True, False), (1, True, False, True)):
        blk = gated_wgrad._wgrad_blocks(BF16, F // 4, axis)
        warps, stages = blk.pop("num_warps"), blk.pop("num_stages")
        blk.pop("programs_per_sm")
        print(f"wgrad, chunks along {'PQ'[axis - 1]}{', TMA' if tma else ''}"
              f"{' over the valid-block list' if listed else ''}"
              f"{', with the column sums of a (the FFN dW1)' if sums else ''}: ", end="")
        operands = dict(a_ptr="bf16", b_ptr="bf16")
        if tma:     # the FFN with hard gates: operands zero at padded rows
            operands = {name: f"tensordesc<bf16[{blk['BK']},{blk[size]}]>"
                        for name, size in (("a_ptr", "BP"), ("b_ptr", "BQ"))}
        ok &= _compile(gated_wgrad._wgrad_kernel,
                       dict(operands, out_ptr="fp32", gate_ptr="fp32", len_ptr="i64",
                            blocks_ptr="i32", sums_ptr="fp32"),
                       ints=dict(P=F if axis == 1 else D, Q=D if axis == 1 else F, T=T, NB=32,
                                 lda=F if axis == 1 else D, ldb=D if axis == 1 else F,
                                 CHUNK=F // 4, MIN_SPLIT=5),
                       constexprs=dict(NUM_CHUNKS=4, CHUNKS_P2=4, CHUNK_AXIS=axis,
                                       HAS_GATES=True, SKIP_DEAD=True,
                                       SEQS_P2=1 if tma else 8, TMA=tma,
                                       BLOCK_LIST=listed, LIST_P2=32 if listed else 1,
                                       A_SUMS=sums,
                                       DOT_PRECISION="tf32", **blk),
                       num_warps=warps, num_stages=stages,
                       maxnreg=gated_wgrad.WGRAD_SUMS_MAXNREG if sums else None)
    print("the valid row blocks' list (row_blocks): ", end="")
    ok &= _compile(gated_wgrad._row_blocks_kernel,
                   dict(len_ptr="i64", out_ptr="i32", count_ptr="i32"),
                   ints=dict(M=M, T=T, n_blocks=M // 64),
                   constexprs=dict(BK=64, BLOCK=1024, ROWWISE=False),
                   num_warps=4)
    for skip_dead, copy, scaled in ((True, False, False), (False, True, False),
                                    (False, True, True)):
        # the copy as the FFN's soft pass makes it, with any_gate; the conv's, scaled by its
        # module gate after the ungated rows, with the gated rows' sums dotted with its bias
        extra = (", the conv's scaled copy" if scaled else
                 ", with a zero-padded copy and any_gate" if copy else "")
        print(f"col_sums (bias gradients){extra}: ", end="")
        ok &= _compile(gated_wgrad._col_sums_kernel,
                       dict(a_ptr="bf16", out_ptr="fp32", copy_ptr="bf16", len_ptr="i64",
                            gate_ptr="fp32", dot_w_ptr="fp32", dot_out_ptr="fp32"),
                       ints=dict(M=M, N=3 * D, T=T, lda=3 * D, ROWS_PER_PROG=256,
                                 CHUNK=3 * 64, UNGATED=T * 16 if scaled else 0),
                       constexprs=dict(NUM_GATES=1 if scaled else 6,
                                       GATES_P2=1 if scaled else 8, SKIP_DEAD=skip_dead,
                                       PER_CHUNK=not scaled, COPY=copy,
                                       ANY_GATE=copy and not scaled, HAS_UNGATED=False,
                                       BM=32, BN=128, SCALED=scaled, GATED_DOT=scaled))
    print("col_sums as sum_rows (fp32 partial sums): ", end="")
    ok &= _compile(gated_wgrad._col_sums_kernel,
                   dict(a_ptr="fp32", out_ptr="fp32", copy_ptr="fp32", len_ptr="fp32",
                        gate_ptr="fp32", dot_w_ptr="fp32", dot_out_ptr="fp32"),
                   ints=dict(M=640, N=31 * D, T=640, lda=31 * D, ROWS_PER_PROG=96, CHUNK=1,
                             UNGATED=0),
                   constexprs=dict(NUM_GATES=1, GATES_P2=1, SKIP_DEAD=False, PER_CHUNK=False,
                                   COPY=False, ANY_GATE=False, HAS_UNGATED=False, BM=32,
                                   BN=128, ALL_ROWS=True))
    # each kernel plain, then with a residual step and its dropout fused (the block's path)
    step = dict(res_ptr="bf16", xnew_ptr="bf16", seed_ptr="i64", gx_ptr="bf16", dres_ptr="bf16",
                dy_twin_ptr="bf16")
    for kernel, backward, ptrs in (
            (layer_norm._layer_norm_fwd_kernel, False,
             dict(x_ptr="bf16", y_ptr="bf16", w_ptr="fp32", b_ptr="fp32", mean_ptr="fp32",
                  rstd_ptr="fp32", gate_ptr="fp32", len_ptr="i64")),
            (layer_norm._layer_norm_bwd_kernel, True,
             dict(dy_ptr="bf16", x_ptr="bf16", w_ptr="fp32", mean_ptr="fp32", rstd_ptr="fp32",
                  dx_ptr="bf16", dw_ptr="fp32", db_ptr="fp32", gate_ptr="fp32",
                  len_ptr="i64"))):
        # backward: a module's norm (the stream's gradient added), a block's final norm
        # (its output's twin's gradient added)
        step_variants = [dict(X_GRAD=True), dict(DY_TWIN=True)] if backward else [{}]
        for fused in [{}] + [dict(RESIDUAL=True, DROPOUT=True) | v for v in step_variants]:
            if fused:
                print(f"with the residual step{' and the twin' if 'DY_TWIN' in fused else ''}: ",
                      end="")
            blk = layer_norm._blocks(384, backward, residual=bool(fused))
            warps = blk.pop("num_warps")
            ok &= _compile(kernel, ptrs | step, floats=("eps", "gain"),
                           ints=dict(M=M, D=D, T=T, stride_y=D),
                           constexprs=dict(NUM_GATES=4, GATES_P2=4, SKIP_DEAD=True, **blk,
                                           **fused),
                           num_warps=warps)
    print("LayerNorm forward with the ones column (the FFN's dense path): ", end="")
    fwd_ln = layer_norm._blocks(384)
    ok &= _compile(layer_norm._layer_norm_fwd_kernel,
                   dict(x_ptr="fp32", y_ptr="bf16", w_ptr="fp32", b_ptr="fp32",
                        mean_ptr="fp32", rstd_ptr="fp32", gate_ptr="fp32", len_ptr="i64"),
                   floats=("eps", "gain"),
                   ints=dict(M=M, D=D, T=T, stride_y=D + layer_norm.ONES_PAD),
                   constexprs=dict(NUM_GATES=4, GATES_P2=4, SKIP_DEAD=False, ZERO_PADDED=True,
                                   ONES_PAD=layer_norm.ONES_PAD, BM=fwd_ln["BM"],
                                   BD=fwd_ln["BD"]),
                   num_warps=fwd_ln["num_warps"])
    conv = gated_conv._dw_blocks(384)
    conv_warps = conv.pop("num_warps")
    for transposed in (False, True):
        print(f"depthwise conv, transposed={transposed}: ", end="")
        ok &= _compile(gated_conv._conv_dw_kernel,
                       dict(v_ptr="bf16", wdw_ptr="fp32", bdw_ptr="fp32", pre_ptr="bf16",
                            gate_ptr="fp32", len_ptr="i64"), ints=dict(T=T, D=D),
                       constexprs=dict(K=31, HAS_GATES=True, SKIP_DEAD=True,
                                       TRANSPOSED=transposed, **conv),
                       num_warps=conv_warps)
    print("LayerNorm forward with SiLU (the conv's norm): ", end="")
    ok &= _compile(layer_norm._layer_norm_fwd_kernel,
                   dict(x_ptr="bf16", y_ptr="bf16", w_ptr="fp32", b_ptr="fp32",
                        mean_ptr="fp32", rstd_ptr="fp32", gate_ptr="fp32", len_ptr="i64"),
                   floats=("eps", "gain"), ints=dict(M=M, D=D, T=T, stride_y=D),
                   constexprs=dict(NUM_GATES=1, GATES_P2=1, SKIP_DEAD=True, ZERO_PADDED=False,
                                   SILU=True, BM=fwd_ln["BM"], BD=fwd_ln["BD"]),
                   num_warps=fwd_ln["num_warps"])
    norm = gated_conv._norm_bwd_blocks(384)
    norm_warps = norm.pop("num_warps")
    ok &= _compile(gated_conv._conv_mid_bwd_norm_kernel,
                   dict(dr_ptr="bf16", pre_ptr="bf16", lnw_ptr="fp32", lnb_ptr="fp32",
                        dpre_ptr="bf16", part_ptr="fp32", gate_ptr="fp32", len_ptr="i64"),
                   floats=("eps",), ints=dict(T=T, D=D),
                   constexprs=dict(HAS_GATES=True, SKIP_DEAD=True, **norm),
                   num_warps=norm_warps)
    glu = gated_conv._glu_bwd_blocks(384)
    warps = glu.pop("num_warps")
    ok &= _compile(gated_conv._glu_bwd_kernel,
                   dict(dv_ptr="bf16", u_ptr="bf16", du_ptr="bf16", gate_ptr="fp32",
                        len_ptr="i64"),
                   ints=dict(T=T, D=D),
                   constexprs=dict(HAS_GATES=True, SKIP_DEAD=True, ZERO_PADDED=True, **glu),
                   num_warps=warps)
    dw = gated_conv._dw_grad_blocks(384)
    warps = dw.pop("num_warps")
    ok &= _compile(gated_conv._conv_dw_grad_kernel,
                   dict(dpre_ptr="bf16", v_ptr="bf16", part_ptr="fp32", gate_ptr="fp32",
                        len_ptr="i64"),
                   ints=dict(T=T, NS=4),
                   constexprs=dict(D=D, K=31, G=8, HAS_GATES=True, SKIP_DEAD=True, **dw),
                   num_warps=warps)
    for kernel, backward, ptrs in (
            (first_conv._first_conv_fwd_kernel, False,
             dict(feats_ptr="fp32", w_ptr="fp32", bias_ptr="fp32", y_ptr="bf16",
                  len_ptr="i64")),
            (first_conv._first_conv_bwd_kernel, True,
             dict(dy_ptr="bf16", y_ptr="bf16", feats_ptr="fp32", part_ptr="fp32",
                  len_ptr="i64"))):
        blk = first_conv._blocks(64, backward)       # the paper frontend: 64 channels, 80 mels
        warps = blk.pop("num_warps")
        if not backward:
            blk.pop("TILES")                         # the forward has no row-tile loop
        ok &= _compile(kernel, ptrs, ints=dict(T=1000, F=80, C=64, n_rows=80000),
                       constexprs=dict(blk, DOT_PRECISION="tf32"), num_warps=warps)
    block_s = ctc._block_states(60)
    ptrs = dict(lp_ptr="fp32", tgt_ptr="i64", off_ptr="i64", ilen_ptr="i64", tlen_ptr="i64",
                alpha_ptr="fp32", loss_ptr="fp32")
    strides = dict(T=T, stride_t=32 * 512, stride_b=512, BLANK=0)
    ok &= _compile(ctc._ctc_alpha_kernel, ptrs, ints=strides, constexprs=dict(BLOCK_S=block_s))
    ok &= _compile(ctc._ctc_grad_kernel,
                   ptrs | dict(gloss_ptr="fp32", grad_ptr="fp32"),
                   ints=strides | dict(g_stride_t=32 * 512, g_stride_b=512),
                   constexprs=dict(BLOCK_S=block_s))
    # a module's two weights cast by one launch (the FFN's, fp32 -> bf16)
    ok &= _compile(common._cast_pair_kernel,
                   dict(src0="fp32", dst0="bf16", src1="fp32", dst1="bf16"),
                   ints=dict(n0=F * D, n1=D * F),
                   constexprs=dict(BLOCK=common._CAST_BLOCK), num_warps=4)
    ok &= _compile(common._zero_kernel, dict(ptr="fp32"), ints=dict(n=F * D),
                   constexprs=dict(BLOCK=common._ZERO_BLOCK), num_warps=4)
    # the dropout mask the kernels draw, as a tensor (keep_mask: tests and references)
    ok &= _compile(residual_step._keep_mask_kernel, dict(seed_ptr="i64", out_ptr="i8"),
                   ints=dict(R=M, D=D, threshold=residual_step.keep_threshold(0.1)),
                   constexprs=dict(BM=4, BD=512))
    # OrthoSoftmax at the paper config's 180 units and 5 budgets, its launchers' blocks with
    # the GPU's dot precision (tf32x3: _blocks picks ieee under the interpreter)
    units, budgets = 180, 5
    blk = ortho_softmax._blocks(units, budgets) | dict(DOT_PRECISION="tf32x3")
    warps, tiles = blk.pop("num_warps"), cdiv(units, blk["BR"])
    fp32 = dict.fromkeys(("s_ptr", "c_ptr", "tau_ptr", "pen_ptr", "budget_ptr", "p_ptr",
                          "e_ptr", "mask_ptr", "colpen_ptr", "rowcum_ptr", "blocksum_ptr",
                          "gmask_ptr", "gpen_ptr", "gprobs_ptr", "gexp_ptr", "dp_ptr",
                          "ds_ptr"), "fp32")
    ptrs = fp32 | dict(k_ptr="i64", counter_ptr="i32")
    ok &= _compile(ortho_softmax._ortho_softmax_fwd_kernel, ptrs, floats=("rest", "total"),
                   ints=dict(N=units, M=budgets, num_tiles=tiles * (tiles + 1) // 2),
                   constexprs=dict(blk, NORM=0, BB=16), num_warps=warps, num_stages=1)
    ok &= _compile(ortho_softmax._ortho_softmax_bwd_kernel, ptrs,
                   ints=dict(N=units, M=budgets),
                   constexprs=dict(blk, NORM=0, HAS_GPROBS=True, HAS_GEXP=True),
                   num_warps=warps, num_stages=1)
    print("all kernels compiled" if ok else "SOME KERNELS FAILED THE SHARED-MEMORY CHECK")


if __name__ == "__main__":
    main()
