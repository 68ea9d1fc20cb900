"""OrthoSoftmax (docs/design.md §3): row softmaxes of a score matrix, expected costs, the
prefix k(p) that meets each budget, the soft masks and the orthogonality penalties.

Layers, as in every op file: the PyTorch reference `ortho_softmax_reference`, the Triton
kernels `_ortho_softmax_fwd_kernel` / `_ortho_softmax_bwd_kernel`, host launchers, the
torch.library ops `orthoasr::ortho_softmax_fwd` / `_bwd` wired together by autograd (what
torch.compile sees), and `OrthoSoftmaxFunction`, the same kernels for eager calls.

Shapes: scores S [N, N], costs c [N], budgets [M]; P = softmax(S / tau) row-wise,
e = P c, C_k = rest + sum_{i<=k} e_i, k(p) = argmin_k |C_k - p * total| (first on ties),
mask_p = sum_{i<=k(p)} P_i, penalty_p = f(G) on the k(p) x k(p) block of G = P P^T.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .autograd import eager_function
from .common import await_producers, interpreting
from .launch import cdiv, launch, next_pow2

NORMS = ("l2", "l2_sqrt", "l1")
MAX_UNITS = 1024
MAX_BUDGETS = 16


# ----------------------------------------------------------------------------- reference

def budget_masks(probs: torch.Tensor, costs: torch.Tensor, rest_cost: float,
                 total_cost: float, budgets: torch.Tensor):
    """The budget rule on rows `probs` [N, N]: (expected [N] cost of each row, k [M] the
    prefix whose cost C_k = rest + sum of the first k expected costs is closest to each
    budget's (the smaller k on ties), masks [M, N] the sums of the first k rows)."""
    expected = probs @ costs.to(probs.dtype)
    prefix_costs = rest_cost + torch.cumsum(expected, 0)                     # C_k, k = 1..N
    targets = budgets.to(probs.dtype) * total_cost
    k = (prefix_costs[None, :] - targets[:, None]).abs().argmin(dim=1) + 1  # first min on ties
    return expected, k, torch.cumsum(probs, 0)[k - 1]


def ortho_softmax_reference(scores: torch.Tensor, costs: torch.Tensor, rest_cost: float,
                            total_cost: float, budgets: torch.Tensor, tau, norm: str = "l2"):
    """Plain PyTorch OrthoSoftmax in the dtype of `scores`.

    Returns (probs [N, N], expected [N], masks [M, N], k [M] int64, penalty [M]).
    """
    probs = torch.softmax(scores / tau, dim=-1)
    expected, k, masks = budget_masks(probs, costs, rest_cost, total_cost, budgets)

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

# Divisions are hoisted out of the tiles (1 / tau, 1 / row sum): a precise fp32 division is
# a long instruction sequence, and per element it dominated these latency-bound kernels.

@triton.jit
def _row_stats(s_ptr, rows, N, inv_tau, BN: tl.constexpr):
    """Max of S[rows] / tau and the reciprocal of each row's softmax normaliser ([BR] each)."""
    cols = tl.arange(0, BN)
    row_ok = rows < N
    s = tl.load(s_ptr + rows[:, None] * N + cols[None, :],
                mask=row_ok[:, None] & (cols < N)[None, :], other=float("-inf"))
    z = s * inv_tau
    z_max = tl.where(row_ok, tl.max(z, 1), 0.0)
    denom = tl.where(row_ok, tl.sum(tl.exp(z - z_max[:, None]), 1), 1.0)
    return z_max, 1.0 / denom


@triton.jit
def _probs(s_ptr, rows, cols, N, inv_tau, z_max, inv_denom):
    """The tile P[rows, cols] from the row statistics, zero outside N x N."""
    s = tl.load(s_ptr + rows[:, None] * N + cols[None, :],
                mask=(rows < N)[:, None] & (cols < N)[None, :], other=float("-inf"))
    return tl.exp(s * inv_tau - z_max[:, None]) * inv_denom[:, None]


@triton.jit
def _gram_tile(s_ptr, rows_i, rows_j, N, inv_tau, max_i, inv_den_i, max_j, inv_den_j,
               BR: tl.constexpr, BC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """G[rows_i, rows_j] = P_I P_J^T, accumulated over column chunks."""
    g = tl.zeros([BR, BR], tl.float32)
    for c0 in range(0, N, BC):
        cols = c0 + tl.arange(0, BC)
        p_i = _probs(s_ptr, rows_i, cols, N, inv_tau, max_i, inv_den_i)
        p_j = _probs(s_ptr, rows_j, cols, N, inv_tau, max_j, inv_den_j)
        g += tl.dot(p_i, tl.trans(p_j), input_precision=DOT_PRECISION)
    return g


@triton.jit
def _pick(vec, offs, i):
    """vec[i] of a register vector, as a scalar."""
    return tl.sum(tl.where(offs == i, vec, 0), 0)


@triton.jit
def _ortho_softmax_fwd_kernel(
    s_ptr, c_ptr, budget_ptr, tau_ptr,
    p_ptr, e_ptr, mask_ptr, k_ptr, pen_ptr,
    colpen_ptr, rowcum_ptr, blocksum_ptr, counter_ptr,
    N, M, rest, total, num_tiles,
    NORM: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr,
    BM: tl.constexpr, BB: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (I, J) with I <= J computes the Gram tile G_IJ = P_I P_J^T and writes, for each
    # column j of it, the sum of its penalty terms on or above the diagonal (colpen[I, j]).
    # Diagonal programs also write P_I, e_I and the running row sums of P inside block I.
    # The last program to arrive (acq_rel ticket) reduces these into k(p), the masks and the
    # penalties with one-shot vector operations: no loop over the rows anywhere.
    await_producers(PDL)
    I = tl.program_id(0)
    J = tl.program_id(1)
    if I <= J:
        offs_r = tl.arange(0, BR)
        inv_tau = 1.0 / tl.load(tau_ptr)
        rows_i = I * BR + offs_r
        rows_j = J * BR + offs_r
        max_i, inv_den_i = _row_stats(s_ptr, rows_i, N, inv_tau, BN)
        max_j, inv_den_j = _row_stats(s_ptr, rows_j, N, inv_tau, BN)
        g = _gram_tile(s_ptr, rows_i, rows_j, N, inv_tau, max_i, inv_den_i, max_j, inv_den_j,
                       BR, BC, DOT_PRECISION)
        on_diag = rows_i[:, None] == rows_j[None, :]
        if NORM == 2:
            val = tl.where(on_diag, tl.abs(g - 1.0), g)
        else:
            val = tl.where(on_diag, (g - 1.0) * (g - 1.0), g * g)
        keep = (rows_i[:, None] <= rows_j[None, :]) & (rows_j < N)[None, :]
        tl.store(colpen_ptr + I * N + rows_j, tl.sum(tl.where(keep, val, 0.0), 0),
                 mask=rows_j < N)

        if I == J:
            e = tl.zeros([BR], tl.float32)
            for c0 in range(0, N, BC):
                cols = c0 + tl.arange(0, BC)
                tile = rows_i[:, None] * N + cols[None, :]
                tile_ok = (rows_i < N)[:, None] & (cols < N)[None, :]
                p = _probs(s_ptr, rows_i, cols, N, inv_tau, max_i, inv_den_i)
                tl.store(p_ptr + tile, p, mask=tile_ok)
                tl.store(rowcum_ptr + tile, tl.cumsum(p, 0), mask=tile_ok)
                tl.store(blocksum_ptr + I * N + cols, tl.sum(p, 0), mask=cols < N)
                e += tl.sum(p * tl.load(c_ptr + cols, mask=cols < N, other=0.0)[None, :], 1)
            tl.store(e_ptr + rows_i, e, mask=rows_i < N)

        tl.debug_barrier()
        ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
        if ticket == num_tiles - 1:
            _fwd_reduce(budget_ptr, e_ptr, colpen_ptr, rowcum_ptr, blocksum_ptr,
                        mask_ptr, k_ptr, pen_ptr, N, M, rest, total, tl.num_programs(0),
                        NORM, BR, BN, BM, BB, DOT_PRECISION)
            tl.atomic_xchg(counter_ptr, 0)  # ready for the next launch


@triton.jit
def _fwd_reduce(budget_ptr, e_ptr, colpen_ptr, rowcum_ptr, blocksum_ptr,
                mask_ptr, k_ptr, pen_ptr, N, M, rest, total, nblk,
                NORM: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                BB: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_n = tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    col_ok = offs_n < N
    # k(p) = argmin_k |rest + sum_{i<=k} e_i - p * total|, first on ties
    e = tl.load(e_ptr + offs_n, mask=col_ok, other=0.0, volatile=True)
    prefix = rest + tl.cumsum(e, 0)
    target = tl.load(budget_ptr + offs_m, mask=offs_m < M, other=0.0) * total
    dist = tl.where(col_ok[None, :], tl.abs(prefix[None, :] - target[:, None]), float("inf"))
    k = tl.argmin(dist, 1, tie_break_left=True) + 1
    tl.store(k_ptr + offs_m, k, mask=offs_m < M)

    # penalty_p = sum over columns j < k(p) of column j's terms on or above the diagonal
    col_pen = tl.zeros([BN], tl.float32)
    for b0 in range(0, nblk, BB):
        blocks = b0 + tl.arange(0, BB)
        ok = (blocks[:, None] <= (offs_n // BR)[None, :]) & col_ok[None, :]
        col_pen += tl.sum(tl.load(colpen_ptr + blocks[:, None] * N + offs_n[None, :],
                                  mask=ok, other=0.0, volatile=True), 0)
    pen = tl.sum(tl.where(offs_n[None, :] < k[:, None], col_pen[None, :], 0.0), 1)
    if NORM == 1:
        pen = tl.sqrt(pen)
    tl.store(pen_ptr + offs_m, pen, mask=offs_m < M)

    # mask_p = the running row sum of P inside the block holding row k(p)-1, at that row,
    # plus the sums of all whole blocks before it (an indicator [M, blocks] times blocksum)
    last = k - 1
    mask = tl.load(rowcum_ptr + last[:, None] * N + offs_n[None, :],
                   mask=(offs_m < M)[:, None] & col_ok[None, :], other=0.0, volatile=True)
    for b0 in range(0, nblk, BB):
        blocks = b0 + tl.arange(0, BB)
        before = tl.where(blocks[None, :] < (last // BR)[:, None], 1.0, 0.0)
        sums = tl.load(blocksum_ptr + blocks[:, None] * N + offs_n[None, :],
                       mask=(blocks < nblk)[:, None] & col_ok[None, :], other=0.0,
                       volatile=True)
        mask += tl.dot(before, sums, input_precision=DOT_PRECISION)
    tl.store(mask_ptr + offs_m[:, None] * N + offs_n[None, :], mask,
             mask=(offs_m < M)[:, None] & col_ok[None, :])


@triton.jit
def _ortho_softmax_bwd_kernel(
    s_ptr, c_ptr, tau_ptr, k_ptr, pen_ptr,
    gmask_ptr, gpen_ptr, gprobs_ptr, gexp_ptr, dp_ptr, counter_ptr, ds_ptr,
    N, M,
    NORM: tl.constexpr, HAS_GPROBS: tl.constexpr, HAS_GEXP: tl.constexpr,
    BR: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # Program (I, J) with I <= J: the penalty's gradient reaches P through G_IJ, so
    # dP_I += A_IJ P_J and dP_J += A_IJ^T P_I with A = dpenalty/dG (symmetric), added
    # atomically into a zeroed workspace dP. Each row block receives exactly nblk such
    # contributions; the program that brings the last one finishes that block: mask
    # gradients, softmax backward dS = P * (dP - rowsum(dP * P)) / tau, and re-zeroing.
    await_producers(PDL)
    I = tl.program_id(0)
    J = tl.program_id(1)
    nblk = tl.num_programs(0)
    if I <= J:
        offs_r = tl.arange(0, BR)
        offs_m = tl.arange(0, BM)
        inv_tau = 1.0 / tl.load(tau_ptr)
        k = tl.load(k_ptr + offs_m, mask=offs_m < M, other=0).to(tl.int32)
        gpen = tl.load(gpen_ptr + offs_m, mask=offs_m < M, other=0.0)
        if NORM == 1:  # d sqrt(x) = 1 / (2 sqrt(x)); taken as 0 where the penalty is exactly 0
            pen = tl.load(pen_ptr + offs_m, mask=offs_m < M, other=0.0)
            gpen = tl.where(pen > 0, gpen / (2.0 * tl.where(pen > 0, pen, 1.0)), 0.0)
        rows_i = I * BR + offs_r
        rows_j = J * BR + offs_r
        max_i, inv_den_i = _row_stats(s_ptr, rows_i, N, inv_tau, BN)
        max_j, inv_den_j = _row_stats(s_ptr, rows_j, N, inv_tau, BN)
        g = _gram_tile(s_ptr, rows_i, rows_j, N, inv_tau, max_i, inv_den_i, max_j, inv_den_j,
                       BR, BC, DOT_PRECISION)
        # weight of pair (i, j): sum of the penalty gradients of the budgets whose prefix
        # block contains it
        last = tl.maximum(rows_i[:, None], rows_j[None, :])
        weight = tl.zeros([BR, BR], tl.float32)
        for m in range(0, M):
            weight += tl.where(last < _pick(k, offs_m, m), _pick(gpen, offs_m, m), 0.0)
        on_diag = rows_i[:, None] == rows_j[None, :]
        if NORM == 2:
            slope = tl.where(on_diag,
                             2.0 * tl.where(g > 1.0, 1.0, tl.where(g < 1.0, -1.0, 0.0)),
                             tl.where(g > 0.0, 1.0, 0.0))
        else:
            slope = tl.where(on_diag, 4.0 * (g - 1.0), 2.0 * g)
        a = slope * weight
        for c0 in range(0, N, BC):
            cols = c0 + tl.arange(0, BC)
            col_ok = (cols < N)[None, :]
            p_j = _probs(s_ptr, rows_j, cols, N, inv_tau, max_j, inv_den_j)
            tl.atomic_add(dp_ptr + rows_i[:, None] * N + cols[None, :],
                          tl.dot(a, p_j, input_precision=DOT_PRECISION),
                          mask=(rows_i < N)[:, None] & col_ok, sem="relaxed")
            if I < J:
                p_i = _probs(s_ptr, rows_i, cols, N, inv_tau, max_i, inv_den_i)
                tl.atomic_add(dp_ptr + rows_j[:, None] * N + cols[None, :],
                              tl.dot(tl.trans(a), p_i, input_precision=DOT_PRECISION),
                              mask=(rows_j < N)[:, None] & col_ok, sem="relaxed")
        tl.debug_barrier()
        if tl.atomic_add(counter_ptr + I, 1, sem="acq_rel") == nblk - 1:
            _bwd_finish(s_ptr, c_ptr, gmask_ptr, gprobs_ptr, gexp_ptr, dp_ptr, counter_ptr,
                        ds_ptr, I, k, N, M, inv_tau, HAS_GPROBS, HAS_GEXP, BR, BC, BN, BM)
        if I < J:
            if tl.atomic_add(counter_ptr + J, 1, sem="acq_rel") == nblk - 1:
                _bwd_finish(s_ptr, c_ptr, gmask_ptr, gprobs_ptr, gexp_ptr, dp_ptr,
                            counter_ptr, ds_ptr, J, k, N, M, inv_tau, HAS_GPROBS, HAS_GEXP,
                            BR, BC, BN, BM)


@triton.jit
def _full_dp(dp_ptr, gmask_ptr, gprobs_ptr, gexp_ptr, c_ptr, rows, cols, k, N, M,
             HAS_GPROBS: tl.constexpr, HAS_GEXP: tl.constexpr, BM: tl.constexpr):
    """dP[rows, cols]: the penalty part from the workspace plus the direct gradients."""
    offs_m = tl.arange(0, BM)
    tile = rows[:, None] * N + cols[None, :]
    tile_ok = (rows < N)[:, None] & (cols < N)[None, :]
    dp = tl.load(dp_ptr + tile, mask=tile_ok, other=0.0, volatile=True)
    for m in range(0, M):  # rows below k(p) are in mask p
        grad_mask = tl.load(gmask_ptr + m * N + cols, mask=cols < N, other=0.0)
        dp += tl.where((rows < _pick(k, offs_m, m))[:, None], grad_mask[None, :], 0.0)
    if HAS_GPROBS:
        dp += tl.load(gprobs_ptr + tile, mask=tile_ok, other=0.0)
    if HAS_GEXP:
        cost = tl.load(c_ptr + cols, mask=cols < N, other=0.0)
        dp += tl.load(gexp_ptr + rows, mask=rows < N, other=0.0)[:, None] * cost[None, :]
    return dp


@triton.jit
def _bwd_finish(s_ptr, c_ptr, gmask_ptr, gprobs_ptr, gexp_ptr, dp_ptr, counter_ptr, ds_ptr,
                R, k, N, M, inv_tau, HAS_GPROBS: tl.constexpr, HAS_GEXP: tl.constexpr,
                BR: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    rows = R * BR + tl.arange(0, BR)
    z_max, inv_denom = _row_stats(s_ptr, rows, N, inv_tau, BN)
    row_dot = tl.zeros([BR], tl.float32)
    for c0 in range(0, N, BC):
        cols = c0 + tl.arange(0, BC)
        dp = _full_dp(dp_ptr, gmask_ptr, gprobs_ptr, gexp_ptr, c_ptr, rows, cols, k, N, M,
                      HAS_GPROBS, HAS_GEXP, BM)
        row_dot += tl.sum(dp * _probs(s_ptr, rows, cols, N, inv_tau, z_max, inv_denom), 1)
    for c0 in range(0, N, BC):
        cols = c0 + tl.arange(0, BC)
        tile = rows[:, None] * N + cols[None, :]
        tile_ok = (rows < N)[:, None] & (cols < N)[None, :]
        dp = _full_dp(dp_ptr, gmask_ptr, gprobs_ptr, gexp_ptr, c_ptr, rows, cols, k, N, M,
                      HAS_GPROBS, HAS_GEXP, BM)
        p = _probs(s_ptr, rows, cols, N, inv_tau, z_max, inv_denom)
        tl.store(ds_ptr + tile, p * (dp - row_dot[:, None]) * inv_tau, mask=tile_ok)
        tl.store(dp_ptr + tile, tl.zeros([BR, BC], tl.float32), mask=tile_ok)
    tl.atomic_xchg(counter_ptr + R, 0)


# ----------------------------------------------------------------------------- launchers

def _blocks(n: int, m: int) -> dict:
    # tf32x3 keeps fp32 accuracy on the tensor cores; the interpreter computes in fp32 anyway
    return dict(BR=16, BC=min(128, max(16, next_pow2(n))),
                BN=max(16, next_pow2(n)), BM=max(16, next_pow2(m)),
                DOT_PRECISION="ieee" if interpreting() else "tf32x3",
                num_warps=8)


_workspaces: dict = {}


def _zeroed_workspace(name: str, numel: int, dtype, device: torch.device) -> torch.Tensor:
    """A zeroed buffer made once per (name, size, device). The kernels that use it set it
    back to zero before they finish, so no memset is launched per call. (Calls on two
    streams at once would share it: orthoasr runs one OrthoSoftmax at a time.)"""
    key = (name, numel, dtype, str(device))
    if key not in _workspaces:
        _workspaces[key] = torch.zeros(numel, dtype=dtype, device=device)
    return _workspaces[key]


def ortho_softmax_fwd_triton(scores, costs, budgets, tau, rest, total, norm, **tuning):
    n, m = scores.shape[0], budgets.shape[0]
    blk = {**_blocks(n, m), **tuning}
    nblk = cdiv(n, blk["BR"])
    dev = scores.device
    new = functools.partial(torch.empty, dtype=torch.float32, device=dev)
    probs, expected, masks, penalty = new(n, n), new(n), new(m, n), new(m)
    k = torch.empty(m, dtype=torch.int64, device=dev)
    col_pen, row_cum, block_sum = new(nblk, n), new(n, n), new(nblk, n)
    launch(_ortho_softmax_fwd_kernel, (nblk, nblk),
        scores, costs, budgets, tau, probs, expected, masks, k, penalty,
        col_pen, row_cum, block_sum, _zeroed_workspace("fwd_counter", 1, torch.int32, dev),
        n, m, float(rest), float(total), nblk * (nblk + 1) // 2,
        NORM=NORMS.index(norm), BB=16, num_stages=1, **blk)
    return probs, expected, masks, k, penalty


def ortho_softmax_bwd_triton(scores, costs, tau, k, penalty, grad_masks, grad_penalty,
                             grad_probs, grad_expected, norm, **tuning):
    n, m = scores.shape[0], k.shape[0]
    blk = {**_blocks(n, m), **tuning}
    nblk = cdiv(n, blk["BR"])
    dev = scores.device
    grad_scores = torch.empty_like(scores)
    launch(_ortho_softmax_bwd_kernel, (nblk, nblk),
        scores, costs, tau, k, penalty, grad_masks, grad_penalty,
        grad_probs if grad_probs is not None else grad_masks,
        grad_expected if grad_expected is not None else grad_penalty,
        _zeroed_workspace("bwd_dp", n * n, torch.float32, dev),
        _zeroed_workspace("bwd_counters", nblk, torch.int32, dev), grad_scores,
        n, m, NORM=NORMS.index(norm), HAS_GPROBS=grad_probs is not None,
        HAS_GEXP=grad_expected is not None, num_stages=1, **blk)
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


def _backward(ctx, grad_probs, grad_expected, grad_masks, _grad_k, grad_penalty,
              bwd=ortho_softmax_bwd):
    scores, costs, tau, k, penalty = ctx.saved_tensors
    n, m = scores.shape[0], ctx.num_budgets
    if grad_masks is None:
        grad_masks = scores.new_zeros(m, n)
    if grad_penalty is None:
        grad_penalty = scores.new_zeros(m)
    grad_scores = bwd(scores, costs, tau, k, penalty, grad_masks.contiguous(),
                      grad_penalty.contiguous(),
                      None if grad_probs is None else grad_probs.contiguous(),
                      None if grad_expected is None else grad_expected.contiguous(), ctx.norm)
    return grad_scores, None, None, None, None, None, None


ortho_softmax_fwd.register_autograd(_backward, setup_context=_setup_context)


# the eager path: the same forward, setup_context and backward, without the custom-op
# dispatch, whose Python overhead was most of an eager call (torch.compile uses the ops)
OrthoSoftmaxFunction = eager_function(ortho_softmax_fwd_triton, _setup_context, _backward,
                                      ortho_softmax_bwd_triton, non_differentiable=(3,))
