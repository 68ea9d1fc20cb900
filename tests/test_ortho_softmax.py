"""OrthoSoftmax: fused Triton kernel vs PyTorch reference, semantics, freeze, bad input."""

import numpy as np
import pytest
import torch

import orthoasr
from orthoasr.backend import use_triton
from orthoasr.graphs import call_without_sync, capture_graph
from orthoasr.kernels.ortho_softmax import ortho_softmax_reference

NORMS = ["l2", "l2_sqrt", "l1"]
# Triton runs on CUDA tensors on the GPU machine and under the interpreter on the CPU
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(n, m, device=DEVICE):
    costs = torch.rand(n, dtype=torch.float64, device=device) * 10 + 0.1
    rest = float(torch.rand(()) * 20)
    total = rest + float(costs.sum())
    budgets = tuple(sorted(torch.rand(m).mul(0.9).add(0.05).tolist()))
    return costs, rest, total, budgets


def _run(backend, scores, costs, rest, total, budgets, tau, norm):
    orthoasr.set_backend(backend)
    try:
        return orthoasr.ortho_softmax(scores, costs, rest, total, budgets, tau, norm)
    finally:
        orthoasr.set_backend("auto")


def _check_against_fp64(n, m, tau, norm, device=DEVICE, atol=None):
    # penalties sum ~N^2 terms of size ~1 near cancellation (1 - G_ii): on the GPU the
    # tf32x3 dot adds ~1e-6 per term
    atol = atol or (1e-4 if device == "cuda" else 1e-5)
    costs, rest, total, budgets = _problem(n, m, device)
    scores = (torch.randn(n, n, device=device) * 3).requires_grad_()
    out = _run("triton", scores, costs.float(), rest, total, budgets, tau, norm)
    scores64 = scores.detach().double().requires_grad_()
    ref = ortho_softmax_reference(scores64, costs, rest, total,
                                  torch.tensor(budgets, dtype=torch.float64, device=device),
                                  tau, norm)
    assert torch.equal(out.k, ref[3])
    for got, want in zip((out.probs, out.expected, out.masks, out.penalty),
                         (ref[0], ref[1], ref[2], ref[4])):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=atol)
    # every output carries a gradient: draw a random upstream gradient for each
    grads = [torch.randn_like(t) for t in (ref[0], ref[1], ref[2], ref[4])]
    torch.autograd.backward([out.probs, out.expected, out.masks, out.penalty],
                            [g.float() for g in grads])
    torch.autograd.backward([ref[0], ref[1], ref[2], ref[4]], grads)
    assert _relative_error(scores.grad, scores64.grad) < 1e-4


def _relative_error(got, want):
    return float((got.double() - want).norm() / want.norm().clamp_min(1e-30))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n,m,tau", [(1, 1, 1.0), (7, 2, 0.5), (37, 3, 0.2), (180, 5, 1.0),
                                     (50, 16, 0.05)])
def test_kernel_matches_reference(n, m, tau, norm):
    _check_against_fp64(n, m, tau, norm)


def test_masks_and_penalty_gradients_alone():
    """Only masks used (probs/expected/penalty get no gradient) still backpropagates."""
    costs, rest, total, budgets = _problem(20, 3)
    scores = torch.randn(20, 20, device=DEVICE, requires_grad=True)
    out = _run("triton", scores, costs.float(), rest, total, budgets, 0.7, "l2")
    ref = _run("torch", scores, costs.float(), rest, total, budgets, 0.7, "l2")
    g_kernel, = torch.autograd.grad(out.masks.square().sum(), scores)
    g_ref, = torch.autograd.grad(ref.masks.square().sum(), scores)
    torch.testing.assert_close(g_kernel, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_reference_gradcheck_fp64(norm):
    costs, rest, total, budgets = _problem(6, 2, device="cpu")
    budgets = torch.tensor(budgets, dtype=torch.float64)

    def masks_and_penalty(scores):
        out = ortho_softmax_reference(scores, costs, rest, total, budgets, 0.8, norm)
        return out[2], out[4]

    scores = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(masks_and_penalty, (scores,))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm", NORMS)
def test_one_hot_rows_give_k_hot_masks_and_zero_penalty(backend, norm):
    n = 24
    perm = torch.randperm(n, device=DEVICE)
    scores = torch.full((n, n), -30.0, device=DEVICE)
    scores[torch.arange(n), perm] = 30.0
    costs, rest, total, budgets = _problem(n, 4)
    out = _run(backend, scores, costs.float(), rest, total, budgets, 0.01, norm)
    assert set(out.probs.unique().tolist()) == {0.0, 1.0}
    for mask, k in zip(out.masks, out.k.tolist()):
        expected = torch.zeros(n, device=DEVICE)
        expected[perm[:k]] = 1.0
        assert torch.equal(mask, expected)
    assert torch.equal(out.penalty, torch.zeros_like(out.penalty))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_k_is_the_prefix_closest_to_each_budget_and_grows_with_it(backend):
    n = 60
    costs, rest, total, _ = _problem(n, 1)
    budgets = tuple(torch.linspace(0.05, 1.0, 16).tolist())
    scores = torch.randn(n, n, device=DEVICE) * 2
    out = _run(backend, scores, costs.float(), rest, total, budgets, 0.5, "l2")
    k = out.k.tolist()
    assert k == sorted(k) and k[-1] == n or k[-1] == n - 1
    prefix = rest + torch.cumsum(out.expected.double(), 0)
    for b, kb in zip(budgets, k):
        best = (prefix - b * total).abs()
        assert best[kb - 1] <= best.min() + 1e-3 * total


@pytest.mark.parametrize("criterion,budgets", [("params", (0.3, 0.5, 0.7, 1.0)),
                                               ("flops", (0.85, 0.9, 0.95, 1.0))])
def test_freeze_gives_nested_subnets_within_budget(criterion, budgets):
    cfg = orthoasr.SupernetConfig(num_layers=3, criterion=criterion, budgets=budgets)
    costs, rest, total = orthoasr.unit_costs(cfg)
    n = costs.numel()
    probs = torch.softmax(torch.randn(n, n) * 3, dim=1)
    gates = orthoasr.freeze_masks(probs, cfg)
    ranking = orthoasr.unit_ranking(probs)
    assert sorted(ranking) == list(range(n))           # de-duplicated: a permutation
    for b, budget in enumerate(cfg.budgets):
        cost = orthoasr.subnet_cost(cfg, gates[b])
        assert cost <= budget * total
        if b:
            assert bool((gates[b - 1] <= gates[b]).all())   # nested
        on = int(gates[b].sum())
        assert set(torch.nonzero(gates[b]).flatten().tolist()) == set(ranking[:on])
        if on < n:                                       # the longest prefix that fits
            longer = gates[b].clone()
            longer[ranking[on]] = 1
            assert orthoasr.subnet_cost(cfg, longer) > budget * total
    assert torch.equal(gates[-1], torch.ones(n))


def test_freeze_rejects_an_infeasible_budget():
    cfg = orthoasr.SupernetConfig(num_layers=1, budgets=(0.01, 1.0))
    probs = torch.eye(15)
    with pytest.raises(ValueError, match="budget 0.01 .* smallest feasible budget"):
        orthoasr.freeze_masks(probs, cfg)


def test_temperature_schedule():
    assert orthoasr.temperature(0) == 1.0
    assert orthoasr.temperature(10, gamma=0.5) == pytest.approx(2 ** -10 if 2 ** -10 > 0.01
                                                                else 0.01)
    gamma = orthoasr.gamma_for(1.0, 0.05, 1000)
    assert orthoasr.temperature(1000, gamma=gamma, tau_min=0.0) == pytest.approx(0.05)
    assert orthoasr.temperature(10 ** 9, gamma=gamma) == 0.01


def test_penalty_scales():
    penalty = torch.tensor(2.0, requires_grad=True)
    assert orthoasr.PenaltyScale("constant", 0.5)(penalty, 7).item() == 1.0
    warm = orthoasr.PenaltyScale("warmup", 4.0, warmup_steps=10)
    assert warm(penalty, 5).item() == pytest.approx(4.0) and warm(penalty, 50).item() == 8.0
    lagrange = orthoasr.PenaltyScale("lagrange", 0.3, rho=0.1)
    term = lagrange(penalty, 0)
    term.backward()
    # gradient ascent on lambda: its gradient is minus d(lambda*p - rho*lambda^2)/d lambda
    assert lagrange.multiplier.grad.item() == pytest.approx(-(2.0 - 2 * 0.1 * 0.3))
    assert penalty.grad.item() == pytest.approx(0.3)     # the scores see +lambda


@pytest.mark.parametrize("kwargs,match", [
    (dict(scores=torch.randn(4, 5)), "square"),
    (dict(costs=torch.ones(3)), "costs must be a"),
    (dict(costs=-torch.ones(4)), "costs must be finite"),
    (dict(costs=torch.tensor([1.0, float("inf"), 1.0, 1.0])), "costs must be finite"),
    (dict(budgets=(0.5, 0.2)), "increasing"),
    (dict(budgets=(0.5, 1.2)), r"\(0, 1\], got 1.2"),
    (dict(budgets=()), "empty"),
    (dict(tau=0.0), "tau"),
    (dict(tau=float("nan")), "tau"),
    (dict(scores=torch.full((4, 4), float("nan"))), "NaN"),
    (dict(norm="l3"), "norm"),
    (dict(total_cost=0.0), "total_cost"),
    (dict(scores=torch.ones(4, 4, dtype=torch.int64)), "floating"),
    # float16 costs past 65504 were inf and every budget got k = 1 without a word
    (dict(scores=torch.randn(4, 4).half(), costs=torch.full((4,), 3e4), total_cost=1.3e5),
     r"scores are torch.float16, whose largest value 65504 is below total_cost \(130000\)"),
])
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(scores=torch.randn(4, 4), costs=torch.ones(4), rest_cost=1.0, total_cost=5.0,
                budgets=(0.5, 1.0), tau=1.0, norm="l2")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        orthoasr.ortho_softmax(**{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v
                                  for k, v in args.items()})


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n,m", [(180, 5), (37, 3), (1024, 16)])
def test_kernel_matches_reference_on_gpu(n, m, norm):
    torch.full((1 << 24,), float("nan"), device="cuda")  # poison the caching allocator
    _check_against_fp64(n, m, 0.5, norm, device="cuda", atol=1e-4)


@pytest.mark.gpu
def test_no_host_sync_and_cuda_graph_capture():
    costs, rest, total, budgets = _problem(180, 5, "cuda")
    costs = costs.float()
    scores = torch.randn(180, 180, device="cuda", requires_grad=True)
    tau = torch.tensor(0.7, device="cuda")

    def step():
        out = orthoasr.ortho_softmax(scores, costs, rest, total, budgets, tau, "l2",
                                     validate=False)
        (out.masks.sum() + out.penalty.sum()).backward()
        return out

    step()
    call_without_sync(step)
    scores.grad = None
    graph, captured = capture_graph(step)
    with torch.no_grad():
        scores.copy_(torch.randn_like(scores))
    tau.fill_(0.3)
    graph.replay()
    want = orthoasr.ortho_softmax(scores.detach(), costs, rest, total, budgets, 0.3, "l2")
    torch.testing.assert_close(captured.masks, want.masks, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(captured.penalty, want.penalty, rtol=1e-4, atol=1e-5)


def test_registered_ops_pass_opcheck():
    """The torch.library ops (what torch.compile sees) have consistent fake and autograd
    registrations."""
    from orthoasr.kernels.ortho_softmax import ortho_softmax_fwd
    costs, rest, total, budgets = _problem(10, 2)
    scores = torch.randn(10, 10, device=DEVICE, requires_grad=True)
    args = (scores, costs.float(), torch.tensor(budgets, device=DEVICE),
            torch.tensor(0.5, device=DEVICE), rest, total, "l2")
    torch.library.opcheck(ortho_softmax_fwd, args,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


# ----------------------------------------------------------------------------- Simple-Top-k

def test_simple_topk_at_low_temperature_takes_units_in_score_order():
    """Distinct scores, tau small: row i is one-hot on the i-th best unit, so each budget's
    mask is the top-k(p) units by score, k(p) the prefix whose cost is closest to p."""
    scores = torch.tensor([0.3, 2.0, -1.0, 1.1, 0.7])
    costs = torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0])
    out = orthoasr.simple_topk(scores, costs, 0.0, 8.0, (0.5, 1.0), tau=1e-3)
    order = [1, 3, 4, 0, 2]
    torch.testing.assert_close(out.probs, torch.eye(5)[order])
    assert out.k.tolist() == [2, 5]               # prefix costs 2, 3, 6, 7, 8 vs 4 and 8
    torch.testing.assert_close(out.masks[0], torch.eye(5)[order[:2]].sum(0))
    assert torch.equal(out.penalty, torch.zeros(2))


def test_simple_topk_rows_take_what_the_rows_before_left_and_have_gradients():
    torch.manual_seed(0)
    scores = torch.randn(6, dtype=torch.float64, requires_grad=True)
    costs = torch.rand(6, dtype=torch.float64)
    out = orthoasr.simple_topk(scores, costs, 0.1, float(costs.sum()) + 0.1, (0.4, 0.7, 1.0),
                               tau=0.5)
    torch.testing.assert_close(out.probs[0], torch.softmax(scores / 0.5, 0))
    second = torch.softmax((scores + torch.log(1 - out.probs[0])) / 0.5, 0)
    torch.testing.assert_close(out.probs[1], second)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(6, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda s: orthoasr.simple_topk(s, costs, 0.1, float(costs.sum()) + 0.1, (0.4, 1.0),
                                       tau=0.5).masks, (scores,))


def test_simple_topk_rejects_a_score_matrix():
    with pytest.raises(ValueError, match="simple_topk scores must be a non-empty \\[N\\]"):
        orthoasr.simple_topk(torch.zeros(3, 3), torch.ones(3), 0.0, 3.0, (1.0,), tau=1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(costs=torch.ones(3)), "costs must be a"),
    (dict(costs=-torch.ones(4)), "costs must be finite"),
    (dict(tau=0.0), "tau"),
    (dict(tau=-1.0), "tau"),
    (dict(tau=float("nan")), "tau"),
    (dict(tau=torch.tensor(0.0)), "tau must be > 0"),
    (dict(scores=torch.full((4,), float("nan"))), "NaN"),
    (dict(total_cost=0.0), "total_cost"),
    (dict(budgets=(0.5, 0.2)), "increasing"),
    (dict(scores=torch.randn(4).half(), total_cost=1e5), "torch.float16, whose largest"),
])
def test_simple_topk_checks_its_arguments_as_ortho_softmax_does(kwargs, match):
    args = dict(scores=torch.randn(4), costs=torch.ones(4), rest_cost=1.0, total_cost=5.0,
                budgets=(0.5, 1.0), tau=1.0)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        orthoasr.simple_topk(**args)


def test_other_dtypes_and_numpy_temperatures_take_the_reference_under_auto():
    """The kernel takes float32 scores: under "auto" float64 and float16 run the reference
    (backend "triton" refuses them); a NumPy float is a temperature like any other."""
    torch.manual_seed(0)
    scores, costs = torch.randn(5, 5, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    args = (costs, 0.1, float(costs.sum()) + 0.1, (0.5, 1.0))
    expected = ortho_softmax_reference(scores, costs, 0.1, float(costs.sum()) + 0.1,
                                       torch.tensor([0.5, 1.0]),
                                       torch.tensor(0.5, dtype=torch.float64), "l2")
    got = orthoasr.ortho_softmax(scores, *args, tau=np.float32(0.5))
    torch.testing.assert_close(got.masks, expected[2])
    assert orthoasr.ortho_softmax(scores.half(), costs.half(), *args[1:], tau=0.5).masks.dtype \
        == torch.float16
    orthoasr.set_backend("triton")
    if use_triton(scores):
        with pytest.raises(TypeError, match="the triton backend takes float32 scores"):
            orthoasr.ortho_softmax(scores, *args, tau=0.5)
