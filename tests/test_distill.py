"""In-place distillation (`distill_weight`): the per-frame KL term and where training adds
it (stage-2 subnets only)."""

import pytest
import torch
from test_train import tiny_run, write_corpus

from orthoasr.objective import distill_loss
from orthoasr.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_distill_loss_is_the_per_frame_kl_within_lengths():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 7).log_softmax(-1).requires_grad_()
    logits = torch.randn(2, 5, 7, requires_grad=True)
    lengths = torch.tensor([5, 3])
    assert distill_loss(teacher, teacher, lengths).item() == pytest.approx(0, abs=1e-6)
    loss = distill_loss(logits.log_softmax(-1), teacher, lengths)
    expected = sum(torch.nn.functional.kl_div(logits.log_softmax(-1)[b, :n], teacher[b, :n],
                                              log_target=True, reduction="sum")
                   for b, n in enumerate(lengths.tolist())) / 8
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    assert distill_loss(logits.log_softmax(-1), teacher, lengths, frames=16).item() == \
        pytest.approx(expected.item() / 2, rel=1e-5)
    loss.backward()
    assert teacher.grad is None                         # the teacher is detached
    assert logits.grad[1, 3:].abs().max() == 0 and logits.grad[1, :3].abs().max() > 0


def test_distillation_adds_to_the_stage2_subnet_losses_only(corpus, tmp_path):
    plain = train(tiny_run(corpus), tmp_path / "plain").history
    distilled = train(tiny_run(corpus, "distill_weight=1.0"), tmp_path / "kd").history
    assert [r["stage"] for r in distilled] == [1, 1, 1, 2, 2, 2]
    for a, b in zip(plain[:3], distilled[:3]):                # stage 1: unchanged
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    # the first stage-2 step: same weights, same batch; the supernet's loss is unchanged,
    # the subnets' gain the KL term
    assert distilled[3]["loss_sup"] == pytest.approx(plain[3]["loss_sup"], rel=1e-6)
    assert distilled[3]["loss_sub"] > plain[3]["loss_sub"]


def test_distill_weight_must_not_be_negative(corpus):
    with pytest.raises(ValueError, match="distill_weight"):
        tiny_run(corpus, "distill_weight=-0.1")
