"""kernels/ctc.py: orthoasr.ctc_loss against torch.nn.functional.ctc_loss (interpreter on the
CPU), losses of every reduction and gradients, on awkward cases. Gradients are compared
upstream of a log_softmax (torch's CTC gradient differs from the exact one with respect to
log_probs by exp(log_probs), which the log_softmax backward removes)."""

import pytest
import torch
import torch.nn.functional as F
from error_ratio import assert_error_ratio

from orthoasr import ctc_loss
from orthoasr.graphs import call_without_sync

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _compare(T, B, V, targets, input_lengths, target_lengths, zero_infinity=True, seed=0,
             concatenated=False, dtype=torch.float64):
    torch.manual_seed(seed)
    logits = torch.randn(T, B, V, dtype=dtype, device=DEV) * 2
    targets = torch.as_tensor(targets, device=DEV)
    input_lengths = torch.as_tensor(input_lengths, device=DEV)
    target_lengths = torch.as_tensor(target_lengths, device=DEV)
    ours_targets = targets
    if concatenated:
        ours_targets = torch.cat([targets[b, :n] for b, n in enumerate(target_lengths.tolist())])
    for reduction in ("none", "sum", "mean"):
        x = logits.clone().requires_grad_()
        y = logits.clone().requires_grad_()
        ref = F.ctc_loss(x.log_softmax(-1), targets, input_lengths, target_lengths,
                         reduction=reduction, zero_infinity=zero_infinity)
        ours = ctc_loss(y.log_softmax(-1), ours_targets, input_lengths, target_lengths,
                        reduction=reduction, zero_infinity=zero_infinity)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        if zero_infinity:
            weights = torch.randn_like(ref)
            (ref * weights).sum().backward()
            (ours * weights).sum().backward()
            torch.testing.assert_close(y.grad, x.grad, rtol=1e-5, atol=1e-5)


def test_repeated_labels_and_padding():
    _compare(14, 3, 6, [[1, 2, 2, 0], [3, 0, 0, 0], [1, 1, 1, 1]], [14, 5, 9], [3, 1, 4])


def test_concatenated_targets():
    _compare(14, 3, 6, [[1, 2, 2, 0], [3, 0, 0, 0], [1, 1, 1, 1]], [14, 5, 9], [3, 1, 4],
             concatenated=True)


def test_target_longer_than_input_is_inf_or_zero():
    _compare(6, 2, 5, [[1, 2, 3, 4], [1, 1, 1, 0]], [3, 4], [4, 3])           # both infeasible
    _compare(6, 2, 5, [[1, 2, 3, 4], [1, 1, 1, 0]], [3, 4], [4, 3], zero_infinity=False)


def test_empty_targets_and_one_frame():
    _compare(1, 3, 4, [[0, 0], [2, 0], [0, 0]], [1, 1, 1], [0, 1, 0])


def test_two_symbols_and_a_large_vocabulary():
    _compare(9, 2, 2, [[1, 1, 1], [1, 0, 0]], [9, 4], [3, 1])
    torch.manual_seed(1)
    targets = torch.randint(1, 5000, (2, 7))
    _compare(20, 2, 5000, targets, [20, 16], [7, 5])


def test_fp32_inputs():
    _compare(30, 4, 12, torch.randint(1, 12, (4, 10)), [30, 25, 30, 11], [10, 8, 3, 4],
             dtype=torch.float32)


def test_other_blank_index():
    torch.manual_seed(2)
    logits = torch.randn(10, 2, 5, dtype=torch.float64)
    args = (logits.log_softmax(-1), torch.tensor([[0, 1, 1], [2, 3, 0]]), [10, 8], [3, 2])
    torch.testing.assert_close(ctc_loss(*args, blank=4, reduction="none"),
                               F.ctc_loss(*args, blank=4, reduction="none"), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(log_probs=torch.zeros(3, 4)), "log_probs"),
    (dict(reduction="avg"), "reduction"),
    (dict(blank=7), "blank"),
    (dict(input_lengths=[3]), "input_lengths"),
    (dict(targets=torch.zeros(3, 2, 2, dtype=torch.long)), "targets"),
    (dict(input_lengths=[4, 3]), r"input_lengths must be in \[0, 3\], got 4"),
    (dict(input_lengths=torch.tensor([3, -1])), r"input_lengths must be in \[0, 3\], got -1"),
    (dict(target_lengths=[3, 1]), r"target_lengths must be in \[0, 2\], got 3"),
    (dict(targets=torch.ones(3, dtype=torch.long), target_lengths=[2, -1]),
     "target_lengths must be at least 0, got -1"),
    (dict(targets=torch.ones(2, dtype=torch.long)), "target_lengths sum to 3, more than the 2"),
])
def test_bad_arguments(bad, match):
    args = dict(log_probs=torch.zeros(3, 2, 5), targets=torch.ones(2, 2, dtype=torch.long),
                input_lengths=[3, 3], target_lengths=[2, 1])
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ctc_loss(**args)


@pytest.mark.gpu
def test_gpu_no_host_sync_and_error_ratio():
    """Paper-like shape on the GPU: fp64 equals PyTorch's fp64 CTC; fp32 by the error-ratio
    rule against it (at T = 250 the fp32 gradients of both implementations carry errors near
    1e-3: alpha + beta - log p cancels two numbers near -1500); no host sync."""
    torch.manual_seed(0)
    T, B, V, U = 250, 32, 512, 60
    logits = torch.randn(T, B, V, device="cuda", dtype=torch.float64)
    targets = torch.randint(1, V, (B, U), device="cuda")
    input_lengths = torch.randint(200, T + 1, (B,), device="cuda")
    target_lengths = torch.randint(20, U + 1, (B,), device="cuda")

    def loss_and_grad(loss_fn, dtype):
        x = logits.to(dtype).requires_grad_()

        def loss():
            return loss_fn(x.log_softmax(-1), targets, input_lengths, target_lengths,
                           reduction="sum", zero_infinity=True)
        value = call_without_sync(loss) if loss_fn is ctc_loss else loss()
        return [value.detach().double(), torch.autograd.grad(value, x)[0].double()]

    reference = loss_and_grad(F.ctc_loss, torch.float64)
    for ours, ref in zip(loss_and_grad(ctc_loss, torch.float64), reference, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    assert_error_ratio(loss_and_grad(ctc_loss, torch.float32),
                       loss_and_grad(F.ctc_loss, torch.float32), reference)


@pytest.mark.gpu
def test_gpu_lengths_from_the_host_with_concatenated_targets():
    """Lengths given as lists (checked on the host, then copied to the device) with
    concatenated targets on CUDA: PyTorch's losses."""
    torch.manual_seed(0)
    log_probs = torch.randn(12, 3, 6, device="cuda", dtype=torch.float64).log_softmax(-1)
    targets = torch.randint(1, 6, (7,), device="cuda")
    args = (log_probs, targets, [12, 9, 5], [3, 2, 2])
    torch.testing.assert_close(ctc_loss(*args, reduction="none"),
                               F.ctc_loss(*args, reduction="none"), rtol=1e-9, atol=1e-9)
