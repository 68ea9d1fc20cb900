"""OrthoSoftmax (DESIGN §3): row softmaxes of a score matrix, expected costs, the prefix k(p)
that meets each budget, the soft masks and the orthogonality penalties.

Layers, as in every op file: the PyTorch reference `ortho_softmax_reference`, the Triton
kernels `_ortho_softmax_fwd_kernel` / `_ortho_softmax_bwd_kernel`, host launchers, and the
torch.library ops `orthoasr::ortho_softmax_fwd` / `_bwd` wired together by autograd.

Shapes: scores S [N, N], costs c [N], budgets [M]; P = softmax(S / tau) row-wise,
e = P c, C_k = rest + sum_{i<=k} e_i, k(p) = argmin_k |C_k - p * total| (first on ties),
mask_p = sum_{i<=k(p)} P_i, penalty_p = f(G) on the k(p) x k(p) block of G = P P^T.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

NORMS = ("l2", "l2_sqrt", "l1")
MAX_UNITS = 1024
MAX_BUDGETS = 16


# ----------------------------------------------------------------------------- reference

def ortho_softmax_reference(scores: torch.Tensor, costs: torch.Tensor, rest_cost: float,
                            total_cost: float, budgets: torch.Tensor, tau, norm: str = "l2"):
    """Plain PyTorch OrthoSoftmax in the dtype of `scores`.

    Returns (probs [N, N], expected [N], masks [M, N], k [M] int64, penalty [M]).
    """
    probs = torch.softmax(scores / tau, dim=-1)
    expected = probs @ costs.to(probs.dtype)
    prefix_costs = rest_cost + torch.cumsum(expected, 0)                     # C_k, k = 1..N
    targets = budgets.to(probs.dtype) * total_cost
    k = (prefix_costs[None, :] - targets[:, None]).abs().argmin(dim=1) + 1  # first min on ties
    masks = torch.cumsum(probs, 0)[k - 1]

    gram = probs @ probs.T
    n = scores.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    eye = torch.eye(n, dtype=probs.dtype, device=scores.device)
    if norm == "l1":
        off, diag = gram.abs(), (gram.diagonal() - 1).abs()
    else:
        off, diag = gram.square(), (gram.diagonal() - 1).square()
    # column j's share of every prefix block that contains it: sum_{i<j} off_ij + diag_j
    per_column = torch.where(upper, off, 0 * eye).sum(0) + diag
    penalty = torch.cumsum(per_column, 0)[k - 1]
    if norm == "l2_sqrt":
        positive = penalty > 0
        penalty = torch.where(positive, torch.where(positive, penalty, 1).sqrt(), 0)
    return probs, expected, masks, k, penalty


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _softmax_rows(s_ptr, rows, cols, N, tau):
    """P[rows] = softmax(S[rows] / tau) as a [BR, BN] fp32 tile, zero outside N x N."""
    row_ok = rows < N
    s = tl.load(s_ptr + rows[:, None] * N + cols[None, :],
                mask=row_ok[:, None] & (cols < N)[None, :], other=float("-inf"))
    z = s / tau
    z_max = tl.where(row_ok, tl.max(z, 1), 0.0)
    p = tl.exp(z - z_max[:, None])
    denom = tl.where(row_ok, tl.sum(p, 1), 1.0)
    return p / denom[:, None]


@triton.jit
def _pick(vec, offs, i):
    """vec[i] of a register vector, as a scalar."""
    return tl.sum(tl.where(offs == i, vec, 0), 0)


@triton.jit
def _ortho_softmax_fwd_kernel(
    s_ptr, c_ptr, budget_ptr, tau_ptr,
    p_ptr, e_ptr, mask_ptr, k_ptr, pen_ptr,
    part_mask_ptr, part_pen_ptr, counter_ptr,
    N, M, rest, total,
    NORM: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
    NBLK_P2: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program I owns rows [I*BR, (I+1)*BR) of P. Every program first finds k(p) for all
    # budgets (a cheap redundant pass over S, so no grid-wide sync is needed), then adds its
    # rows' share of each mask and its row block of the penalty's upper triangle to
    # per-program partials. The last program to finish sums the partials.
    pid = tl.program_id(0)
    nblk = tl.num_programs(0)
    offs_r = tl.arange(0, BR)
    offs_n = tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    tau = tl.load(tau_ptr)
    cost = tl.load(c_ptr + offs_n, mask=offs_n < N, other=0.0)
    target = tl.load(budget_ptr + offs_m, mask=offs_m < M, other=0.0) * total

    # Pass 1: prefix costs C_k and k(p) = argmin_k |C_k - target_p|, first on ties.
    best = tl.full([BM], float("inf"), tl.float32)
    k = tl.zeros([BM], tl.int32)
    carry = rest
    for J in range(0, nblk):
        rows = J * BR + offs_r
        p = _softmax_rows(s_ptr, rows, offs_n, N, tau)
        e = tl.sum(p * cost[None, :], 1)
        prefix = carry + tl.cumsum(e, 0)
        dist = tl.abs(prefix[None, :] - target[:, None])
        dist = tl.where((rows < N)[None, :], dist, float("inf"))
        blk_best = tl.min(dist, 1)
        blk_k = tl.argmin(dist, 1, tie_break_left=True) + J * BR + 1
        better = blk_best < best
        k = tl.where(better, blk_k, k)
        best = tl.where(better, blk_best, best)
        carry += tl.sum(e, 0)
    k_max = tl.max(tl.where(offs_m < M, k, 0), 0)

    # Pass 2: this program's rows of P and e, and their share of every mask.
    rows_i = pid * BR + offs_r
    p_i = _softmax_rows(s_ptr, rows_i, offs_n, N, tau)
    row_ok = rows_i < N
    tl.store(p_ptr + rows_i[:, None] * N + offs_n[None, :], p_i,
             mask=row_ok[:, None] & (offs_n < N)[None, :])
    tl.store(e_ptr + rows_i, tl.sum(p_i * cost[None, :], 1), mask=row_ok)
    for m in range(0, M):
        k_m = _pick(k, offs_m, m)
        share = tl.sum(tl.where((rows_i < k_m)[:, None], p_i, 0.0), 0)
        tl.store(part_mask_ptr + (pid * BM + m) * BN + offs_n, share)

    # Pass 3: G[I, J] = P_I P_J^T for J >= I inside the largest prefix; column j of the upper
    # triangle (diagonal included) belongs to every prefix block with k > j.
    pen = tl.zeros([BM], tl.float32)
    for J in range(pid, tl.cdiv(k_max, BR)):
        rows_j = J * BR + offs_r
        p_j = _softmax_rows(s_ptr, rows_j, offs_n, N, tau)
        g = tl.dot(p_i, tl.trans(p_j), input_precision=DOT_PRECISION)
        on_diag = rows_i[:, None] == rows_j[None, :]
        if NORM == 2:
            val = tl.where(on_diag, tl.abs(g - 1.0), g)
        else:
            val = tl.where(on_diag, (g - 1.0) * (g - 1.0), g * g)
        val = tl.where(rows_i[:, None] <= rows_j[None, :], val, 0.0)
        col = tl.sum(val, 0)
        pen += tl.sum(tl.where(rows_j[None, :] < k[:, None], col[None, :], 0.0), 1)
    tl.store(part_pen_ptr + pid * BM + offs_m, pen)

    # The last program to arrive reduces the partials (acq_rel atomic orders the stores).
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if ticket == nblk - 1:
        offs_b = tl.arange(0, NBLK_P2)
        parts = tl.load(part_pen_ptr + offs_b[:, None] * BM + offs_m[None, :],
                        mask=(offs_b < nblk)[:, None], other=0.0, volatile=True)
        total_pen = tl.sum(parts, 0)
        if NORM == 1:
            total_pen = tl.sqrt(total_pen)
        tl.store(pen_ptr + offs_m, total_pen, mask=offs_m < M)
        tl.store(k_ptr + offs_m, k, mask=offs_m < M)
        masks = tl.zeros([BM, BN], tl.float32)
        for J in range(0, tl.cdiv(k_max, BR)):
            masks += tl.load(part_mask_ptr + (J * BM + offs_m[:, None]) * BN + offs_n[None, :],
                             mask=(offs_m < M)[:, None], other=0.0, volatile=True)
        tl.store(mask_ptr + offs_m[:, None] * N + offs_n[None, :], masks,
                 mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])
        tl.atomic_xchg(counter_ptr, 0)  # ready for the next launch


@triton.jit
def _ortho_softmax_bwd_kernel(
    s_ptr, c_ptr, tau_ptr, k_ptr, pen_ptr,
    gmask_ptr, gpen_ptr, gprobs_ptr, gexp_ptr, ds_ptr,
    N, M,
    NORM: tl.constexpr, HAS_GPROBS: tl.constexpr, HAS_GEXP: tl.constexpr,
    BR: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program I computes dS for rows I: dP_I from the masks (rows below k(p) receive
    # grad_mask_p), from the penalty (dP_I = sum_J A_IJ P_J with A = dpenalty/dG made
    # symmetric), then the softmax backward dS = P * (dP - rowsum(dP * P)) / tau.
    pid = tl.program_id(0)
    offs_r = tl.arange(0, BR)
    offs_n = tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    tau = tl.load(tau_ptr)
    rows_i = pid * BR + offs_r
    row_ok = rows_i < N
    col_ok = offs_n < N
    tile = rows_i[:, None] * N + offs_n[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    p_i = _softmax_rows(s_ptr, rows_i, offs_n, N, tau)

    k = tl.load(k_ptr + offs_m, mask=offs_m < M, other=0).to(tl.int32)
    gpen = tl.load(gpen_ptr + offs_m, mask=offs_m < M, other=0.0)
    if NORM == 1:  # d sqrt(x) = 1 / (2 sqrt(x)); taken as 0 where the penalty is exactly 0
        pen = tl.load(pen_ptr + offs_m, mask=offs_m < M, other=0.0)
        gpen = tl.where(pen > 0, gpen / (2.0 * tl.where(pen > 0, pen, 1.0)), 0.0)
    k_max = tl.max(k, 0)

    dp = tl.zeros([BR, BN], tl.float32)
    if HAS_GPROBS:
        dp += tl.load(gprobs_ptr + tile, mask=tile_ok, other=0.0)
    if HAS_GEXP:
        cost = tl.load(c_ptr + offs_n, mask=col_ok, other=0.0)
        dp += tl.load(gexp_ptr + rows_i, mask=row_ok, other=0.0)[:, None] * cost[None, :]
    for m in range(0, M):
        grad_mask = tl.load(gmask_ptr + m * N + offs_n, mask=col_ok, other=0.0)
        dp += tl.where((rows_i < _pick(k, offs_m, m))[:, None], grad_mask[None, :], 0.0)

    for J in range(0, tl.cdiv(k_max, BR)):
        rows_j = J * BR + offs_r
        p_j = _softmax_rows(s_ptr, rows_j, offs_n, N, tau)
        g = tl.dot(p_i, tl.trans(p_j), input_precision=DOT_PRECISION)
        last = tl.maximum(rows_i[:, None], rows_j[None, :])
        weight = tl.zeros([BR, BR], tl.float32)
        for m in range(0, M):
            weight += tl.where(last < _pick(k, offs_m, m), _pick(gpen, offs_m, m), 0.0)
        on_diag = rows_i[:, None] == rows_j[None, :]
        if NORM == 2:
            slope = tl.where(on_diag, 2.0 * tl.where(g > 1.0, 1.0, tl.where(g < 1.0, -1.0, 0.0)),
                             tl.where(g > 0.0, 1.0, 0.0))
        else:
            slope = tl.where(on_diag, 4.0 * (g - 1.0), 2.0 * g)
        dp += tl.dot(slope * weight, p_j, input_precision=DOT_PRECISION)

    ds = p_i * (dp - tl.sum(dp * p_i, 1)[:, None]) / tau
    tl.store(ds_ptr + tile, ds, mask=tile_ok)


# ----------------------------------------------------------------------------- launchers

def _blocks(n: int, m: int) -> dict:
    block_n = max(16, triton.next_power_of_2(n))
    return dict(BR=16, BN=block_n, BM=max(16, triton.next_power_of_2(m)),
                DOT_PRECISION="ieee" if _interpreting() else "tf32x3")


def _num_warps(block_n: int) -> int:
    return 4 if block_n <= 256 else 8


@functools.lru_cache(maxsize=None)
def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_counters: dict = {}


def _arrival_counter(device: torch.device) -> torch.Tensor:
    """One zeroed int32 per device; the forward kernel's last program resets it to 0."""
    key = str(device)
    if key not in _counters:
        _counters[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _counters[key]


def ortho_softmax_fwd_triton(scores, costs, budgets, tau, rest, total, norm):
    n, m = scores.shape[0], budgets.shape[0]
    blk = _blocks(n, m)
    nblk = triton.cdiv(n, blk["BR"])
    dev = scores.device
    probs = torch.empty(n, n, dtype=torch.float32, device=dev)
    expected = torch.empty(n, dtype=torch.float32, device=dev)
    masks = torch.empty(m, n, dtype=torch.float32, device=dev)
    k = torch.empty(m, dtype=torch.int64, device=dev)
    penalty = torch.empty(m, dtype=torch.float32, device=dev)
    part_masks = torch.empty(nblk, blk["BM"], blk["BN"], dtype=torch.float32, device=dev)
    part_pen = torch.empty(nblk, blk["BM"], dtype=torch.float32, device=dev)
    _ortho_softmax_fwd_kernel[(nblk,)](
        scores, costs, budgets, tau, probs, expected, masks, k, penalty,
        part_masks, part_pen, _arrival_counter(dev), n, m, float(rest), float(total),
        NORM=NORMS.index(norm), NBLK_P2=triton.next_power_of_2(nblk),
        num_warps=_num_warps(blk["BN"]), **blk)
    return probs, expected, masks, k, penalty


def ortho_softmax_bwd_triton(scores, costs, tau, k, penalty, grad_masks, grad_penalty,
                             grad_probs, grad_expected, norm):
    n, m = scores.shape[0], k.shape[0]
    blk = _blocks(n, m)
    grad_scores = torch.empty_like(scores)
    _ortho_softmax_bwd_kernel[(triton.cdiv(n, blk["BR"]),)](
        scores, costs, tau, k, penalty, grad_masks, grad_penalty,
        grad_probs if grad_probs is not None else grad_masks,
        grad_expected if grad_expected is not None else grad_penalty,
        grad_scores, n, m, NORM=NORMS.index(norm), HAS_GPROBS=grad_probs is not None,
        HAS_GEXP=grad_expected is not None, num_warps=_num_warps(blk["BN"]), **blk)
    return grad_scores


# ----------------------------------------------------------------------------- torch.library

@torch.library.custom_op("orthoasr::ortho_softmax_fwd", mutates_args=())
def ortho_softmax_fwd(scores: torch.Tensor, costs: torch.Tensor, budgets: torch.Tensor,
                      tau: torch.Tensor, rest: float, total: float, norm: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                 torch.Tensor]:
    return ortho_softmax_fwd_triton(scores, costs, budgets, tau, rest, total, norm)


@ortho_softmax_fwd.register_fake
def _(scores, costs, budgets, tau, rest, total, norm):
    n, m = scores.shape[0], budgets.shape[0]
    new = scores.new_empty
    return (new(n, n), new(n), new(m, n), new(m, dtype=torch.int64), new(m))


@torch.library.custom_op("orthoasr::ortho_softmax_bwd", mutates_args=())
def ortho_softmax_bwd(scores: torch.Tensor, costs: torch.Tensor, tau: torch.Tensor,
                      k: torch.Tensor, penalty: torch.Tensor, grad_masks: torch.Tensor,
                      grad_penalty: torch.Tensor, grad_probs: torch.Tensor | None,
                      grad_expected: torch.Tensor | None, norm: str) -> torch.Tensor:
    return ortho_softmax_bwd_triton(scores, costs, tau, k, penalty, grad_masks, grad_penalty,
                                    grad_probs, grad_expected, norm)


@ortho_softmax_bwd.register_fake
def _(scores, costs, tau, k, penalty, grad_masks, grad_penalty, grad_probs, grad_expected,
      norm):
    return torch.empty_like(scores)


def _setup_context(ctx, inputs, output):
    scores, costs, _budgets, tau, _rest, _total, norm = inputs
    _probs, _expected, masks, k, penalty = output
    ctx.save_for_backward(scores, costs, tau, k, penalty)
    ctx.norm = norm
    ctx.num_budgets = masks.shape[0]


def _backward(ctx, grad_probs, grad_expected, grad_masks, _grad_k, grad_penalty):
    scores, costs, tau, k, penalty = ctx.saved_tensors
    n, m = scores.shape[0], ctx.num_budgets
    if grad_masks is None:
        grad_masks = scores.new_zeros(m, n)
    if grad_penalty is None:
        grad_penalty = scores.new_zeros(m)
    grad_scores = ortho_softmax_bwd(scores, costs, tau, k, penalty, grad_masks.contiguous(),
                                    grad_penalty.contiguous(),
                                    None if grad_probs is None else grad_probs.contiguous(),
                                    None if grad_expected is None else grad_expected.contiguous(),
                                    ctx.norm)
    return grad_scores, None, None, None, None, None, None


ortho_softmax_fwd.register_autograd(_backward, setup_context=_setup_context)
