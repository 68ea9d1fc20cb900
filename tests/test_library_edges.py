"""Library edges of issue 16: padding never reaches valid frames (torch backend), NaN gates
and NaN OrthoSoftmax probabilities are errors, lengths are checked in input frames, feature
dtypes are named."""

import pytest
import torch

import orthoasr
from orthoasr import ConformerSupernet, SupernetConfig, freeze_masks, unit_costs


def tiny_cfg():
    return SupernetConfig(num_layers=2, d_model=32, num_heads=2, ff_dim=64, ff_chunks=2,
                          conv_kernel=5, vocab_size=20, frontend_channels=(4, 8),
                          budgets=(0.5, 1.0), dropout=0.0)


@pytest.fixture
def model():
    orthoasr.set_backend("torch")
    return ConformerSupernet(tiny_cfg()).eval()


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_padding_never_reaches_valid_frames(model, poison):
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 21])
    clean, out_lengths = model(feats, lengths)
    feats[1, 21:] = poison
    poisoned, _ = model(feats, lengths)
    valid = out_lengths[1]
    torch.testing.assert_close(poisoned[1, :valid], clean[1, :valid])
    torch.testing.assert_close(poisoned[0], clean[0])


def test_nan_gates_are_an_error(model):
    gates = torch.ones(model.num_units)
    gates[3] = float("nan")
    with pytest.raises(ValueError, match="gates contain NaN or inf"):
        model(torch.randn(1, 16, 80), torch.tensor([16]), gates)


def test_nan_probabilities_are_an_error_in_freeze_masks():
    cfg = tiny_cfg()
    n = len(unit_costs(cfg)[0])
    probs = torch.softmax(torch.randn(n, n), dim=1)
    probs[2, 5] = float("nan")
    with pytest.raises(ValueError, match="probs contain NaN or inf"):
        freeze_masks(probs, cfg)
    with pytest.raises(ValueError, match=rf"probs must be an \[N, {n}\] tensor"):
        freeze_masks(probs[:, :-1], cfg)


def test_lengths_are_checked_in_input_frames(model):
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=100\] input frames, got "
                                         r"\[150, 90\]"):
        model(torch.randn(2, 100, 80), torch.tensor([150, 90]))


@pytest.mark.parametrize("dtype, message", [
    (torch.float64, r"features are torch.float64 but the model's weights are torch.float32; "
                    r"convert with features.to\(torch.float32\)"),
    (torch.int64, r"features must be floating point \(torch.float32, as the model's weights\), "
                  r"got torch.int64"),
])
def test_feature_dtypes_are_named(model, dtype, message):
    feats = torch.randn(1, 16, 80).to(dtype)
    with pytest.raises(TypeError, match=message):
        model(feats, torch.tensor([16]))
    model.double()(feats.double(), torch.tensor([16]))   # a float64 model takes float64
