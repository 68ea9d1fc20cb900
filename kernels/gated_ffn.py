"""Gated feed-forward module (docs/design.md §2, §6): y = W2 · (g_chunk ⊙ SiLU(W1·LN(x) + b1)) + b2.

Layers: the PyTorch reference `gated_ffn_reference`; the Triton path of five launches forward
(LayerNorm, GEMM1 with bias + SiLU + gate epilogue, GEMM2 whose K-loop skips dead chunks with
bias + padding-zero epilogue) and backward (GEMM dH = dY·W2 with the SiLU backward and the
gate-gradient column sums fused, dXn = dA·W1 skipping dead chunks, LayerNorm backward, the
two weight-gradient GEMMs over valid frames, b1's gradient summed by dW1's programs on
Hopper (`wgrad`'s a_sums) and b2's by the column-sum kernel; where nothing is skipped, the
weight gradients are cuBLAS products, b1's gradient the column of dW1's product with the ones
column the forward saves after xn), registered as the torch.library ops
`orthoasr::gated_ffn_fwd` / `_bwd`; `gated_ffn` is the entry point.
Kernels live in gated_matmul.py, gated_wgrad.py and layer_norm.py.

Shapes: x (B, T, D), W1 (F, D), W2 (D, F), chunk c = hidden channels [c*F/C, (c+1)*F/C).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .autograd import eager_function, grads_in_order, named_inputs, needs_grad
from .common import as_operands, two_passes, valid_mask
from .gated_matmul import (
    BIAS_ANY_GATE,
    BIAS_GATE0,
    BIAS_PLAIN,
    EPI_SILU_BWD,
    EPI_SILU_GATE,
    EPI_STORE,
    rows_gemm,
    tma_by_default,
)
from .gated_wgrad import (
    col_sums,
    dense_products,
    dense_wgrad,
    wgrad,
    wgrad_row_blocks,
)
from .grads_in_place import accumulators, returned, sinks_of, taken
from .layer_norm import ONES_PAD, layer_norm_bwd, layer_norm_fwd
from .residual_step import residual_args, step_context, step_in, step_out


def gated_ffn_reference(x: torch.Tensor, lengths: torch.Tensor, ln_weight: torch.Tensor,
                        ln_bias: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                        w2: torch.Tensor, b2: torch.Tensor, gates: torch.Tensor | None,
                        module_gate: bool = False, eps: float = 1e-5,
                        ungated_batch: int = 0) -> torch.Tensor:
    """Plain PyTorch gated FFN in the dtype of x.

    x: (B, T, D), lengths: (B,), w1: (F, D), b1: (F,), w2: (D, F), b2: (D,).
    gates: None (all ones); (C,) chunk gates, chunk c = hidden channels [c*F/C, (c+1)*F/C),
    b2 added iff any gate != 0; or, with module_gate, (1,) scaling the whole output.
    Padded frames (t >= lengths[b]) output exactly 0. ungated_batch: the first sequences run
    as if gates were None (the ungated pass of a batch holding two).
    """
    if ungated_batch:
        return two_passes(lambda rows, g: gated_ffn_reference(
            x[rows], lengths[rows], ln_weight, ln_bias, w1, b1, w2, b2, g, module_gate, eps),
            ungated_batch, gates)
    B, T, D = x.shape
    xn = F.layer_norm(x, (D,), ln_weight, ln_bias, eps)
    hidden = F.silu(F.linear(xn, w1, b1))
    bias_scale = None
    if gates is not None and not module_gate:
        chunk_gates = gates.to(hidden.dtype).repeat_interleave(w1.shape[0] // gates.shape[0])
        hidden = hidden * chunk_gates
        bias_scale = (gates != 0).any().to(hidden.dtype)
    y = F.linear(hidden, w2) + (b2 if bias_scale is None else b2 * bias_scale)
    if gates is not None and module_gate:
        y = y * gates.to(y.dtype)
    return torch.where(valid_mask(lengths, T)[..., None], y, 0.0)


# ----------------------------------------------------------------------------- launchers

def _empty(like):
    return like.new_empty(0)


def _rows_zeroed(dense: bool, w1c) -> bool:
    """Whether the backward's weight gradients read every row of their operands, which are
    then written with zeros at padded frames (xn, hidden, d_pre, a copy of dy): as dense
    products (cuBLAS, nothing skipped: `dense`), or by `wgrad`'s TMA loads (16-bit on a
    Hopper GPU)."""
    return dense or tma_by_default(w1c)


def gated_ffn_fwd_triton(x, lengths, ln_weight, ln_bias, w1, b1, w2, b2, gates, chunks,
                         module_gate, skip_dead, save, w1c, w2c, ungated_batch=0, res_y=None,
                         res_seed=None, res_scale=1.0, res_p=0.0, normed=None):
    # w1c, w2c: W1, W2 as matmul operands, in the compute dtype (kept for the backward);
    # w1, w2 are inputs only to receive their gradients. ungated_batch: the first sequences
    # run as if every gate were 1 (gated_ffn). res_y given: the module's input is the
    # residual step x + res_scale * dropout(res_y, res_p), made by its LayerNorm and
    # returned last (x_new; else an empty tensor). normed given (inference: no step, nothing
    # saved): the LayerNorm's output, made by the block before (kernels.layer_norm's
    # final_norm_inference); x is then read for its shape alone
    B, T, D = x.shape
    compute_dtype = w1c.dtype
    M, F_ = B * T, w1.shape[0]
    f = F_ // chunks
    x2 = x.reshape(M, D)
    res, x_new = step_in(x, res_y, res_seed, res_scale, res_p)
    # the LayerNorm reads x in its own dtype (fp32 under autocast) and writes xn in the
    # compute dtype: no cast of x before the call, no cast of dx after the backward. With
    # zero_rows the padded rows of xn and hidden are zeros: the weight gradients then read
    # every row (backward). With the dense products, xn is saved with a column of ones
    # after its D columns (a view of its first D is the GEMMs' operand): cuBLAS's dW1
    # product then also gives b1's gradient, which the SiLU backward's epilogue no longer sums
    dense = save and dense_products(x, gates, skip_dead)
    zero_rows = save and _rows_zeroed(dense, w1c)
    if normed is not None:
        xn_saved, mean, rstd = normed.reshape(M, D), _empty(x), _empty(x)
    else:
        xn_saved, mean, rstd = layer_norm_fwd(x2, ln_weight, ln_bias, lengths, T, gates,
                                              skip_dead, out_dtype=compute_dtype,
                                              zero_padded=zero_rows, ones_column=dense,
                                              residual=res)
    xn = xn_saved[:, :D]
    hidden = xn.new_empty(M, F_)
    pre = xn.new_empty(M, F_) if save else None
    common = dict(lengths=lengths, T=T, gates=gates, chunk=f, num_chunks=chunks,
                  skip_dead=skip_dead, ungated_rows=ungated_batch * T)
    rows_gemm(xn, w1c.t(), hidden, bias=b1, chunk_axis=1, epi=EPI_SILU_GATE, aux=pre,
              final=zero_rows, **common)
    y = xn.new_empty(B, T, D)
    bias_mode = BIAS_PLAIN if gates is None else (BIAS_GATE0 if module_gate else BIAS_ANY_GATE)
    rows_gemm(hidden, w2c.t(), y.view(M, D), bias=b2, chunk_axis=2, epi=EPI_STORE,
              bias_mode=bias_mode, final=True, **common)
    if not save:
        return y, _empty(xn), _empty(mean), _empty(mean), _empty(xn), _empty(xn), x_new
    return y, xn_saved, mean, rstd, pre, hidden, x_new


def gated_ffn_bwd_triton(dy, x, lengths, ln_weight, w1, w2, b2, gates, xn, mean, rstd, pre,
                         hidden, w1c, w2c, chunks, module_gate, skip_dead, gate_grad,
                         ungated_batch=0, x_grad=None, res_seed=None, res_scale=1.0,
                         res_p=0.0, x_dtype=None, res_dtype=None, *, sinks=None):
    # xn: as the forward saved it, with the column of ones for the dense products. x: the
    # LayerNorm's input (the forward's x_new after a residual step); res_dtype given: dx is
    # the stream's gradient (x_grad, x_new's, added), the step's y gets its own (last).
    # sinks (keyword-only: the eager path's own, not the op's): parameter name -> its .grad,
    # to add that gradient to in place (grads_in_place); those taken come back as None
    B, T, D = x.shape
    xn_saved, xn = xn, xn[:, :D]
    M, F_ = B * T, w1.shape[0]
    f = F_ // chunks
    dy2 = dy.reshape(M, D).contiguous()
    ungated_rows = ungated_batch * T      # only the gated epilogues read the gates then
    common = dict(lengths=lengths, T=T, gates=gates, chunk=f, num_chunks=chunks,
                  skip_dead=skip_dead)
    # nothing skipped: d_pre gets zeros at padded rows (final), and its two products with
    # xn (zero there too) and W1 go to cuBLAS, which did them 1.4-1.8x faster than the
    # masked kernels (bench/gemm_sweep.py)
    dense = dense_products(x, gates, skip_dead)
    zero_rows = _rows_zeroed(dense, w1c)     # as the forward decided
    # every fp32 accumulator (atomics) carved from one zeroed buffer: one memset launch
    # (cuBLAS writes the dense path's weight gradients: none to zero for them), or a
    # parameter's .grad where it is a sink; not b2's with a module gate (scaled below)
    w_size = 0 if dense else D * F_
    in_place = taken(sinks, {"ln_weight", "ln_bias"} | (set() if dense else {"w1", "b1", "w2"})
                     | (set() if gates is not None and module_gate else {"b2"}))
    acc = accumulators(dict(gate_cols=chunks if gate_grad else 0, b2=D, b1=0 if dense else F_,
                            w2=w_size, w1=w_size, ln_weight=D, ln_bias=D), x.device, in_place)
    gate_cols = acc["gate_cols"] if gate_grad else None
    dy_sum, db1, dw2, dw1 = acc["b2"], acc["b1"], acc["w2"], acc["w1"]
    d_lnw, d_lnb = acc["ln_weight"], acc["ln_bias"]
    d_pre = xn.new_empty(M, F_)
    rows_gemm(dy2, w2c, d_pre, chunk_axis=1, epi=EPI_SILU_BWD, aux=pre, sum1=gate_cols,
              final=zero_rows, ungated_rows=ungated_rows, chunk_sums=gate_cols is not None,
              **common)
    if dense:
        d_xn = torch.mm(d_pre, w1c.to(d_pre.dtype))
    else:
        d_xn = xn.new_empty(M, D)
        rows_gemm(d_pre, w1c, d_xn, chunk_axis=2, epi=EPI_STORE, **common)
    res, d_res = step_out(x, x_grad, res_seed, res_scale, res_p, res_dtype)
    dx = layer_norm_bwd(d_xn, x.reshape(M, D), ln_weight, mean, rstd, lengths, T, gates,
                        skip_dead, dw=d_lnw, db=d_lnb, residual=res, dx_dtype=x_dtype)[0]
    # b2's gradient; not read at all when every gate is exactly 0 (db2 is 0 then). dy is
    # not ours: anything may sit at its padded rows, so with zero_rows dW2 reads a copy with
    # zeros there, written by the same sweep (a torch.where of its own took 18.8 us a call
    # at the training step's shapes on the H200, 2026-12-01: a broadcast mask is not
    # vectorised)
    dy_valid = torch.empty_like(dy2) if zero_rows else None
    # chunk gates, nothing skipped: b2 counts while any chunk is live, the sums say so
    # (a host-free (gates != 0).any() took four launches)
    any_gate = gates is not None and not module_gate and not skip_dead
    col_sums(dy2, dy_sum, lengths=lengths, T=T, gates=gates, skip_dead=skip_dead,
             copy=dy_valid, any_gate=any_gate, ungated_rows=ungated_rows if any_gate else 0)
    if dense:
        dw2 = dense_wgrad(dy_valid, hidden)
        dw1_ones = dense_wgrad(d_pre, xn_saved)      # [F, D + pad]: dW1, then db1
        dw1, db1 = dw1_ones[:, :D], dw1_ones[:, D]
    else:
        dw2, dw1 = dw2.view(D, F_), dw1.view(F_, D)
        # with zeroed rows (TMA loads), both products visit the row blocks that hold a
        # valid frame, listed once
        blocks = wgrad_row_blocks(lengths, T, d_pre.dtype) if zero_rows else None
        wgrad(dy_valid if zero_rows else dy2, hidden, chunk_axis=2, out=dw2,
              rows_zeroed=zero_rows, valid_blocks=blocks, **common)
        # b1's gradient: d_pre's sums over valid frames, live chunks only, as one more small
        # product of dW1's programs (TMA), or by the column-sum kernel (summed per column in
        # the SiLU backward's epilogue, they cost it a reduction across warps per tile and
        # 128 atomics, 12 us at B32xT250 against the column sums' 9; H200, bench/NOTES.md)
        wgrad(d_pre, xn, chunk_axis=1, out=dw1, rows_zeroed=zero_rows, valid_blocks=blocks,
              a_sums=db1, **common)
    # col_sums gave 0 when every chunk gate is 0 (skip_dead: it read nothing; else any_gate)
    db2 = dy_sum * gates[0].float() if gates is not None and module_gate else dy_sum
    dgates = None
    if gate_grad:
        dgates = gate_cols      # each chunk's sum, from the SiLU backward's epilogue
        if module_gate:
            dgates[0] += (b2.float() * dy_sum).sum()
        dgates = dgates.to(gates.dtype)
    return (dx.view(B, T, D), returned(in_place, "ln_weight", d_lnw, ln_weight.dtype),
            returned(in_place, "ln_bias", d_lnb, ln_weight.dtype),
            returned(in_place, "w1", dw1, w1.dtype), returned(in_place, "b1", db1, w1.dtype),
            returned(in_place, "w2", dw2, w2.dtype), returned(in_place, "b2", db2, w2.dtype),
            dgates, d_res)


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::gated_ffn_fwd", mutates_args=())
def gated_ffn_fwd(x: torch.Tensor, lengths: torch.Tensor, ln_weight: torch.Tensor,
                  ln_bias: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor, gates: torch.Tensor | None, chunks: int, module_gate: bool,
                  skip_dead: bool, save: bool, w1c: torch.Tensor, w2c: torch.Tensor,
                  ungated_batch: int = 0, res_y: torch.Tensor | None = None,
                  res_seed: torch.Tensor | None = None, res_scale: float = 1.0,
                  res_p: float = 0.0, normed: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_ffn_fwd_triton(x, lengths, ln_weight, ln_bias, w1, b1, w2, b2, gates, chunks,
                                module_gate, skip_dead, save, w1c, w2c, ungated_batch, res_y,
                                res_seed, res_scale, res_p, normed)


@gated_ffn_fwd.register_fake
def _(x, lengths, ln_weight, ln_bias, w1, b1, w2, b2, gates, chunks, module_gate, skip_dead,
      save, w1c, w2c, ungated_batch=0, res_y=None, res_seed=None, res_scale=1.0, res_p=0.0,
      normed=None):
    B, T, D = x.shape
    like = dict(dtype=w1c.dtype)
    y = x.new_empty(B, T, D, **like)
    x_new = step_in(x, res_y, res_seed, res_scale, res_p)[1]
    if not save:
        f32 = dict(dtype=torch.float32)
        return (y, x.new_empty(0, **like), x.new_empty(0, **f32), x.new_empty(0, **f32),
                x.new_empty(0, **like), x.new_empty(0, **like), x_new)
    M, F_ = B * T, w1.shape[0]
    stats = x.new_empty(M, dtype=torch.float32)
    pad = ONES_PAD if dense_products(x, gates, skip_dead) else 0
    return (y, x.new_empty(M, D + pad, **like), stats, torch.empty_like(stats),
            x.new_empty(M, F_, **like), x.new_empty(M, F_, **like), x_new)


@torch.library.custom_op("orthoasr::gated_ffn_bwd", mutates_args=())
def gated_ffn_bwd(dy: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor,
                  ln_weight: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  gates: torch.Tensor | None, xn: torch.Tensor, mean: torch.Tensor,
                  rstd: torch.Tensor, pre: torch.Tensor, hidden: torch.Tensor,
                  w1c: torch.Tensor, w2c: torch.Tensor, chunks: int, module_gate: bool,
                  skip_dead: bool, gate_grad: bool, ungated_batch: int = 0,
                  x_grad: torch.Tensor | None = None, res_seed: torch.Tensor | None = None,
                  res_scale: float = 1.0, res_p: float = 0.0,
                  x_dtype: torch.dtype | None = None, res_dtype: torch.dtype | None = None
                  ) -> list[torch.Tensor]:
    grads = gated_ffn_bwd_triton(dy, x, lengths, ln_weight, w1, w2, b2, gates, xn, mean, rstd,
                                 pre, hidden, w1c, w2c, chunks, module_gate, skip_dead,
                                 gate_grad, ungated_batch, x_grad, res_seed, res_scale, res_p,
                                 x_dtype, res_dtype)
    # custom-op outputs may not alias each other: copy the views of the shared fp32 buffer
    return [x.new_empty(0) if g is None else g.clone() if g._base is not None else g
            for g in grads]


@gated_ffn_bwd.register_fake
def _(dy, x, lengths, ln_weight, w1, w2, b2, gates, xn, mean, rstd, pre, hidden, w1c, w2c,
      chunks, module_gate, skip_dead, gate_grad, ungated_batch=0, x_grad=None, res_seed=None,
      res_scale=1.0, res_p=0.0, x_dtype=None, res_dtype=None):
    dg = torch.empty_like(gates) if gate_grad else x.new_empty(0)
    d_res = step_out(x, x_grad, res_seed, res_scale, res_p, res_dtype)[1]
    return [x.new_empty(x.shape, dtype=x_dtype or x.dtype), torch.empty_like(ln_weight),
            torch.empty_like(ln_weight), torch.empty_like(w1), w1.new_empty(w1.shape[0]),
            torch.empty_like(w2), torch.empty_like(b2), dg, d_res]


class _Saved(NamedTuple):
    """What the backward reads, by name (saved with ctx.save_for_backward)."""
    x: torch.Tensor
    lengths: torch.Tensor
    ln_weight: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    gates: torch.Tensor | None
    xn: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    pre: torch.Tensor
    hidden: torch.Tensor
    w1c: torch.Tensor       # the forward's matmul operands: w1, w2 in the compute dtype
    w2c: torch.Tensor
    res_seed: torch.Tensor | None       # the residual step's, or None without one


def _setup_context(ctx, inputs, output):
    args = named_inputs(gated_ffn_fwd_triton, inputs)
    _y, xn, mean, rstd, pre, hidden, x_new = output
    step = args["res_y"] is not None
    ctx.save_for_backward(*_Saved(x_new if step else args["x"], args["lengths"],
                                  args["ln_weight"], args["w1"], args["w2"], args["b2"],
                                  args["gates"], xn, mean, rstd, pre, hidden, args["w1c"],
                                  args["w2c"], args["res_seed"] if step else None))
    ctx.chunks, ctx.module_gate, ctx.skip_dead = (args["chunks"], args["module_gate"],
                                                  args["skip_dead"])
    ctx.ungated_batch = args["ungated_batch"]
    ctx.residual = step_context(args, step)
    ctx.sinks = sinks_of(args, ("ln_weight", "ln_bias", "w1", "b1", "w2", "b2"))


def _backward(ctx, dy, *activations, bwd=gated_ffn_bwd):
    saved = _Saved(*ctx.saved_tensors)
    if saved.pre.numel() == 0 and saved.x.numel() != 0:
        raise RuntimeError("gated_ffn_fwd ran with save=False; call gated_ffn() so that the "
                           "activations are kept when gradients are needed")
    gate_grad = saved.gates is not None and needs_grad(ctx, gated_ffn_fwd_triton, "gates")
    dx, d_lnw, d_lnb, dw1, db1, dw2, db2, dg, d_res = bwd(
        dy, **saved._asdict(), chunks=ctx.chunks, module_gate=ctx.module_gate,
        skip_dead=ctx.skip_dead, gate_grad=gate_grad, ungated_batch=ctx.ungated_batch,
        x_grad=activations[-1], **ctx.residual,
        **(dict(sinks=ctx.sinks) if bwd is gated_ffn_bwd_triton else {}))
    return grads_in_order(gated_ffn_fwd_triton, x=dx, ln_weight=d_lnw, ln_bias=d_lnb, w1=dw1,
                          b1=db1, w2=dw2, b2=db2, gates=dg if gate_grad else None,
                          res_y=d_res if ctx.residual["res_dtype"] is not None else None)


gated_ffn_fwd.register_autograd(_backward, setup_context=_setup_context)
_GatedFFN = eager_function(gated_ffn_fwd_triton, _setup_context, _backward,
                           gated_ffn_bwd_triton, non_differentiable=range(1, 6))


def gated_ffn(x, lengths, ln_weight, ln_bias, w1, b1, w2, b2, gates, chunks, module_gate,
              compute_dtype=None, operands=None, ungated_batch=0, residual=None, normed=None):
    """Triton gated FFN, same meaning as `gated_ffn_reference` (inputs already checked), its
    matmuls in `compute_dtype` (default: x's), the output in it too, dx in x's dtype.
    operands: (W1, W2) in the compute dtype, (F, D) and (D, F), made by the caller (one copy
    for a whole encoder, common.operand_copies), or None: cast here (as_operands).

    Dead chunks (gate exactly 0) are skipped on the device when the gates need no gradient,
    and not with ungated_batch: the first ungated_batch sequences run as if gates were None,
    the rest with `gates` (chunk gates; the gates' gradient from those rows only), as two
    passes in one batch would.
    residual: (y, seed, scale, p), the residual step of the module before, or None: the
    input is then x + scale * dropout(y, p), made by this module's LayerNorm kernels
    (residual_step.Residual), and the call returns (that new stream, the output).
    normed: inference only (no grad, no residual step): LayerNorm(x) by this module's norm,
    (B, T, D) in the compute dtype, made by the caller (a block's final norm makes the next
    block's in its own pass: kernels.layer_norm.final_norm_inference); the module then
    starts at its first product.
    Eager calls go through one autograd.Function; under torch.compile the torch.library op.
    """
    if ungated_batch and (gates is None or module_gate or not 0 < ungated_batch < x.shape[0]):
        raise ValueError(f"gated_ffn: ungated_batch={ungated_batch} needs chunk gates and "
                         f"fewer sequences than x's {x.shape[0]} (gates given: "
                         f"{gates is not None}, module_gate={module_gate})")
    step = residual_args(x, residual)
    tensors = (x, ln_weight, ln_bias, w1, b1, w2, b2) + step[:1]
    gate_grad = gates is not None and gates.requires_grad
    save = torch.is_grad_enabled() and (gate_grad or any(
        t is not None and t.requires_grad for t in tensors))
    if gates is not None and module_gate:
        gates = gates.expand(chunks)
    if gates is not None:
        gates = gates.contiguous()
    x = x.contiguous()
    params = [t.contiguous() for t in (ln_weight, ln_bias, w1, b1, w2, b2)]
    dtype = compute_dtype or x.dtype
    w1c, w2c = operands or as_operands([w1, w2], dtype)
    if normed is not None and (save or residual is not None or normed.shape != x.shape
                               or normed.dtype != dtype):
        raise ValueError(f"gated_ffn: normed must be LayerNorm(x) of x's shape "
                         f"{tuple(x.shape)} in {dtype}, for inference without a residual "
                         f"step; got {tuple(normed.shape)} {normed.dtype} (grad: {save}, "
                         f"residual: {residual is not None})")
    skip_dead = not gate_grad and not ungated_batch
    args = (x, lengths.contiguous(), *params, gates, chunks, module_gate, skip_dead, save,
            w1c, w2c, ungated_batch, *step,
            None if normed is None else normed.contiguous())
    op = gated_ffn_fwd if torch.compiler.is_compiling() else _GatedFFN.apply
    out = op(*args)
    return out[0] if residual is None else (out[-1], out[0])
