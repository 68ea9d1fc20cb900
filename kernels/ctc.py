"""CTC loss (docs/design.md §5) with every length read on the device: no host sync, so a
training step that uses it can be captured in a CUDA graph.

    loss_b = -log sum over the alignments of target b of prod_t p_t(label),  blank = `blank`

Layers: the reference is `torch.nn.functional.ctc_loss`; the Triton kernels
`_ctc_alpha_kernel` (forward variables, one program per sequence walking its frames) and
`_ctc_grad_kernel` (backward variables and the gradient, frames in reverse), launchers, the
torch.library ops `orthoasr::ctc_loss_fwd` / `_bwd` and their eager twin (kernels/autograd.py),
and `ctc_loss`, the entry point with F.ctc_loss's arguments.

Shapes: log_probs (T, B, V) log-softmax outputs; targets (B, S) padded or (sum of target
lengths,) concatenated; input_lengths, target_lengths (B,). The extended label sequence of
sequence b is blank, l_1, blank, l_2, ..., l_U, blank: 2U + 1 states; the forward variables
alpha (B, T, BLOCK_S) stay on the device for the backward.

Gradient: d loss_b / d log_probs[t, b, v] = -sum over the states s labelled v of
exp(alpha_t(s) + beta_t(s) - log_probs[t, b, v] - log p_b), the exact gradient with respect to
log_probs. (PyTorch's own CTC returns that plus exp(log_probs): the same once it flows back
through the log_softmax that produced log_probs, which is how the tests compare.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .autograd import eager_function, grads_in_order
from .common import await_producers
from .launch import launch, next_pow2

REDUCTIONS = ("none", "sum", "mean")


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _logsumexp3(a, b, c):
    m = tl.maximum(tl.maximum(a, b), c)
    safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.exp(a - safe) + tl.exp(b - safe) + tl.exp(c - safe)
    total = tl.where(m == float("-inf"), 1.0, total)      # no log(0)
    return tl.where(m == float("-inf"), float("-inf"), safe + tl.log(total))


@triton.jit
def _states(tgt_ptr, off_ptr, tlen_ptr, b, BLANK, BLOCK_S: tl.constexpr):
    """Extended labels of sequence b: (s, number of states S, label of s, label of s - 2 and
    of s + 2 (-1 where none))."""
    s = tl.arange(0, BLOCK_S)
    U = tl.load(tlen_ptr + b).to(tl.int32)
    S = 2 * U + 1
    off = tl.load(off_ptr + b)
    odd = (s % 2) == 1
    label = tl.where(odd, tl.load(tgt_ptr + off + (s - 1) // 2, mask=odd & (s < S), other=0),
                     BLANK).to(tl.int32)
    prev2 = tl.where(odd & (s >= 3), tl.load(tgt_ptr + off + (s - 3) // 2,
                                             mask=odd & (s >= 3) & (s < S), other=0), -1)
    next2 = tl.where(odd & (s + 2 < S), tl.load(tgt_ptr + off + (s + 1) // 2,
                                                mask=odd & (s + 2 < S), other=0), -1)
    return s, S, label, prev2.to(tl.int32), next2.to(tl.int32)


@triton.jit
def _shifted(x, s, by: tl.constexpr, BLOCK_S: tl.constexpr):
    """x[s - by] (by may be negative), -inf outside [0, BLOCK_S): a shift within the
    program's registers (tl.gather goes through shared memory at most), not a round trip
    through global memory."""
    src = s - by
    inside = (src >= 0) & (src < BLOCK_S)
    moved = tl.gather(x, tl.minimum(tl.maximum(src, 0), BLOCK_S - 1), 0)
    return tl.where(inside, moved, float("-inf"))


@triton.jit
def _ctc_alpha_kernel(lp_ptr, tgt_ptr, off_ptr, ilen_ptr, tlen_ptr, alpha_ptr, loss_ptr,
                      T, stride_t, stride_b, BLANK, BLOCK_S: tl.constexpr,
                      PDL: tl.constexpr = False):
    # Program b: alpha_t(s) = log p_t(l'_s) + logsumexp of alpha_{t-1} at s, s - 1 and, where
    # l'_s is a label unlike l'_{s-2}, s - 2. The row stays in registers from one frame to
    # the next (shifted by _shifted); each row is also stored for the backward, and the next
    # frame's emissions are loaded one step ahead, so neither is on the recursion's path.
    # (Storing each row and reading it back shifted after a barrier took ~2 us a frame on
    # the H200: 3.0 ms for B16 T750, against 1.9 for torch's CTC.)
    await_producers(PDL)
    b = tl.program_id(0)
    s, S, label, prev2, _next2 = _states(tgt_ptr, off_ptr, tlen_ptr, b, BLANK, BLOCK_S)
    T_b = tl.minimum(tl.load(ilen_ptr + b).to(tl.int32), T)
    in_s = s < S
    skip_ok = (s % 2 == 1) & (s >= 3) & (label != prev2)
    row = alpha_ptr + b * T * BLOCK_S
    lp = lp_ptr + b * stride_b + label
    alpha = tl.where(in_s & (s < 2), tl.load(lp, mask=in_s & (s < 2), other=0.0),
                     float("-inf"))
    tl.store(row + s, alpha)
    # masks as vectors (s * 0 + scalar): Triton's interpreter refuses a scalar mask
    emit_next = tl.load(lp + stride_t, mask=in_s & ((s * 0 + T_b) > 1), other=0.0)
    for t in range(1, T_b):
        emit = emit_next
        emit_next = tl.load(lp + (t + 1) * stride_t, mask=in_s & ((s * 0 + t + 1) < T_b),
                            other=0.0)
        a1 = _shifted(alpha, s, 1, BLOCK_S)
        a2 = tl.where(skip_ok, _shifted(alpha, s, 2, BLOCK_S), float("-inf"))
        alpha = tl.where(in_s, _logsumexp3(alpha, a1, a2) + emit, float("-inf"))
        tl.store(row + t * BLOCK_S + s, alpha)
    final = (s == S - 1) | (s == S - 2)
    last = tl.where(final & in_s, alpha, float("-inf"))
    m = tl.max(last, 0)
    safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.where(m == float("-inf"), 1.0, tl.sum(tl.exp(last - safe), 0))
    log_p = tl.where(m == float("-inf"), float("-inf"), safe + tl.log(total))
    log_p = tl.where(T_b > 0, log_p, tl.where(S == 1, 0.0, float("-inf")))
    tl.store(loss_ptr + b, -log_p)


@triton.jit
def _ctc_grad_kernel(lp_ptr, tgt_ptr, off_ptr, ilen_ptr, tlen_ptr, alpha_ptr, loss_ptr,
                     gloss_ptr, grad_ptr, T, stride_t, stride_b, g_stride_t, g_stride_b, BLANK,
                     BLOCK_S: tl.constexpr, PDL: tl.constexpr = False):
    # Program b walks its frames backwards: beta_t(s) = log p_t(l'_s) + logsumexp of
    # beta_{t+1} at s, s + 1 and (where allowed) s + 2, the row kept in registers as in the
    # forward, with the next frame's emissions and alphas loaded one step ahead; then
    # grad[t, b, l'_s] -= gloss_b exp(alpha_t(s) + beta_t(s) - log p_t(l'_s) - log p_b),
    # atomically (several states share a label). An infeasible target leaves its zeros.
    await_producers(PDL)
    b = tl.program_id(0)
    s, S, label, _prev2, next2 = _states(tgt_ptr, off_ptr, tlen_ptr, b, BLANK, BLOCK_S)
    T_b = tl.minimum(tl.load(ilen_ptr + b).to(tl.int32), T)
    in_s = s < S
    skip_ok = (s % 2 == 1) & (s + 2 < S) & (label != next2)
    loss = tl.load(loss_ptr + b)
    log_p = -loss
    scale = tl.load(gloss_ptr + b)
    feasible = (loss != float("inf")) & (T_b > 0)
    alpha_row = alpha_ptr + b * T * BLOCK_S
    lp = lp_ptr + b * stride_b + label
    grad = grad_ptr + b * g_stride_b + label
    if feasible:
        t = T_b - 1
        emit = tl.load(lp + t * stride_t, mask=in_s, other=0.0)
        alpha = tl.load(alpha_row + t * BLOCK_S + s)
        beta = tl.where(in_s & ((s == S - 1) | (s == S - 2)), emit, float("-inf"))
        for step in range(0, T_b):
            t = T_b - 1 - step
            ahead = (s * 0 + t) >= 1
            emit_next = tl.load(lp + (t - 1) * stride_t, mask=ahead & in_s, other=0.0)
            alpha_next = tl.load(alpha_row + (t - 1) * BLOCK_S + s, mask=ahead,
                                 other=float("-inf"))
            occupancy = tl.exp(alpha + beta - emit - log_p)
            tl.atomic_add(grad + t * g_stride_t, -scale * occupancy,
                          mask=in_s & (alpha + beta > float("-inf")))
            b1 = _shifted(beta, s, -1, BLOCK_S)
            b2 = tl.where(skip_ok, _shifted(beta, s, -2, BLOCK_S), float("-inf"))
            beta = tl.where(in_s, _logsumexp3(beta, b1, b2) + emit_next, float("-inf"))
            emit, alpha = emit_next, alpha_next


# ----------------------------------------------------------------------------- launchers

def _block_states(max_target: int) -> int:
    return max(16, next_pow2(2 * max_target + 1))


def ctc_fwd(log_probs, targets, offsets, input_lengths, target_lengths, blank, block_s):
    """-> (losses (B,), inf where the target is infeasible; alpha (B, T, block_s)), both in
    log_probs' dtype (fp32 or fp64)."""
    T, B, _ = log_probs.shape
    alpha = log_probs.new_empty(B, T, block_s)
    losses = log_probs.new_empty(B)
    launch(_ctc_alpha_kernel, (B,), log_probs, targets, offsets, input_lengths,
           target_lengths, alpha, losses, T, log_probs.stride(0), log_probs.stride(1), blank,
           BLOCK_S=block_s, num_warps=4)
    return losses, alpha


def ctc_bwd(grad_losses, log_probs, targets, offsets, input_lengths, target_lengths, alpha,
            losses, blank, block_s):
    """-> grad log_probs (T, B, V) in its dtype; 0 for infeasible targets and t >= T_b."""
    T, B, V = log_probs.shape
    grad = torch.zeros_like(log_probs)
    launch(_ctc_grad_kernel, (B,), log_probs, targets, offsets, input_lengths, target_lengths,
           alpha, losses, grad_losses.to(grad.dtype).contiguous(), grad, T,
           log_probs.stride(0), log_probs.stride(1), grad.stride(0), grad.stride(1), blank,
           BLOCK_S=block_s, num_warps=4)
    return grad


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::ctc_loss_fwd", mutates_args=())
def ctc_loss_fwd(log_probs: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor,
                 input_lengths: torch.Tensor, target_lengths: torch.Tensor, blank: int,
                 block_s: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ctc_fwd(log_probs, targets, offsets, input_lengths, target_lengths, blank, block_s)


@ctc_loss_fwd.register_fake
def _(log_probs, targets, offsets, input_lengths, target_lengths, blank, block_s):
    T, B, _ = log_probs.shape
    return log_probs.new_empty(B), log_probs.new_empty(B, T, block_s)


@torch.library.custom_op("orthoasr::ctc_loss_bwd", mutates_args=())
def ctc_loss_bwd(grad_losses: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor,
                 offsets: torch.Tensor, input_lengths: torch.Tensor,
                 target_lengths: torch.Tensor, alpha: torch.Tensor, losses: torch.Tensor,
                 blank: int, block_s: int) -> torch.Tensor:
    return ctc_bwd(grad_losses, log_probs, targets, offsets, input_lengths, target_lengths,
                   alpha, losses, blank, block_s)


@ctc_loss_bwd.register_fake
def _(grad_losses, log_probs, targets, offsets, input_lengths, target_lengths, alpha, losses,
      blank, block_s):
    return torch.empty_like(log_probs)


class _Saved(NamedTuple):
    log_probs: torch.Tensor
    targets: torch.Tensor
    offsets: torch.Tensor
    input_lengths: torch.Tensor
    target_lengths: torch.Tensor
    alpha: torch.Tensor
    losses: torch.Tensor


def _setup_context(ctx, inputs, output):
    log_probs, targets, offsets, input_lengths, target_lengths, blank, block_s = inputs
    losses, alpha = output
    ctx.save_for_backward(*_Saved(log_probs, targets, offsets, input_lengths, target_lengths,
                                  alpha, losses))
    ctx.blank, ctx.block_s = blank, block_s


def _backward(ctx, grad_losses, _grad_alpha, bwd=ctc_loss_bwd):
    saved = _Saved(*ctx.saved_tensors)
    grad = bwd(grad_losses, **saved._asdict(), blank=ctx.blank, block_s=ctx.block_s)
    return grads_in_order(ctc_fwd, log_probs=grad.to(saved.log_probs.dtype))


ctc_loss_fwd.register_autograd(_backward, setup_context=_setup_context)
_CTCLoss = eager_function(ctc_fwd, _setup_context, _backward, ctc_bwd)


# ----------------------------------------------------------------------------- entry point

def _as_lengths(lengths, name: str, B: int, device) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (B,) or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"{name} must be {B} integers, got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    return lengths.to(torch.int64)


def _check_host_lengths(lengths, name: str, most: int | None) -> None:
    """ValueError unless lengths given on the host lie in [0, most]. Lengths in a CUDA tensor
    are not read (no sync): there, as in F.ctc_loss's CUDA path, they are the caller's
    promise."""
    if isinstance(lengths, torch.Tensor) and lengths.is_cuda:
        return
    lengths = torch.as_tensor(lengths)
    bad = (lengths < 0) if most is None else (lengths < 0) | (lengths > most)
    if bad.any():
        bound = "at least 0" if most is None else f"in [0, {most}]"
        raise ValueError(f"{name} must be {bound}, got {int(lengths[bad][0])}")


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False
             ) -> torch.Tensor:
    """torch.nn.functional.ctc_loss's contract on the Triton kernels (CUDA tensors, or CPU
    tensors under TRITON_INTERPRET=1). log_probs (T, B, V) (computed in fp64 for fp64, else
    in fp32);
    targets (B, S) or concatenated; lengths as tensors (read on the device: no sync) or
    sequences. reduction "mean" divides each loss by its target length, then averages."""
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3:
        raise ValueError(f"log_probs must be a (T, B, V) tensor, got "
                         f"{getattr(log_probs, 'shape', type(log_probs).__name__)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    T, B, V = log_probs.shape
    if not 0 <= blank < V:
        raise ValueError(f"blank must be in [0, V={V}), got {blank}")
    device = log_probs.device
    input_lengths_given, target_lengths_given = input_lengths, target_lengths
    input_lengths = _as_lengths(input_lengths, "input_lengths", B, device)
    # the longest target bounds the states: free to read where the lengths came from the host
    on_host = not (isinstance(target_lengths, torch.Tensor) and target_lengths.is_cuda)
    target_lengths = _as_lengths(target_lengths, "target_lengths", B, device)
    targets = torch.as_tensor(targets, device=device)
    _check_host_lengths(input_lengths_given, "input_lengths", T)
    _check_host_lengths(target_lengths_given, "target_lengths",
                        targets.shape[-1] if targets.dim() == 2 else None)
    # the sum from the host's copy: target_lengths is on the device by now
    total = int(torch.as_tensor(target_lengths_given).sum()) if on_host else 0
    if targets.dim() == 1 and total > targets.shape[0]:
        raise ValueError(f"target_lengths sum to {total}, more than the {targets.shape[0]} "
                         "concatenated targets")
    if targets.dim() == 2:
        if targets.shape[0] != B:
            raise ValueError(f"targets (B, S) must have B={B} rows, got {tuple(targets.shape)}")
        max_target = targets.shape[1]
        offsets = torch.arange(B, device=device) * targets.shape[1]
    elif targets.dim() == 1:
        max_target = targets.shape[0]
        if on_host and B:
            max_target = int(torch.as_tensor(target_lengths_given).max())
        offsets = torch.cumsum(target_lengths, 0) - target_lengths
    else:
        raise ValueError(f"targets must be (B, S) or concatenated (N,), got "
                         f"{tuple(targets.shape)}")
    block_s = _block_states(max(max_target, 0))
    compute = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    args = (log_probs.to(compute).contiguous(), targets.to(torch.int64).contiguous().flatten(),
            offsets, input_lengths, target_lengths, blank, block_s)
    op = ctc_loss_fwd if torch.compiler.is_compiling() else _CTCLoss.apply
    losses = op(*args)[0].to(log_probs.dtype)
    if zero_infinity:     # the kernels give infeasible targets a zero gradient either way
        losses = torch.where(torch.isinf(losses), 0.0, losses)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return (losses / target_lengths.clamp(min=1).to(losses.dtype)).mean()

