"""Library edges of issue 16: padding never reaches valid frames (torch backend), NaN gates
and NaN OrthoSoftmax probabilities are errors, lengths are checked in input frames, feature
dtypes are named; each gated module takes every input dtype and an empty batch, and bf16
never reaches the CPU interpreter."""

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
    for wrong in (probs[:, :-1], probs[:-1], torch.cat([probs, probs[:1]])):
        with pytest.raises(ValueError, match=rf"probs must be the \[N, N\] = \[{n}, {n}\]"):
            freeze_masks(wrong, cfg)


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU interpreter's rule")
def test_bfloat16_on_the_cpu_takes_the_references_under_the_interpreter():
    """The interpreter computes bf16 products wrong without a word (|y| ~ 1e10 for an FFN
    whose output is ~0.5): bf16 CPU tensors, or a bf16 CPU autocast, run the references
    under "auto", and backend "triton" refuses them."""
    ffn = orthoasr.nn.GatedFeedForward(16, 64, 4)
    x, lengths, gates = torch.randn(2, 7, 16), torch.tensor([7, 5]), torch.ones(4)
    orthoasr.set_backend("torch")
    expected = ffn.bfloat16()(x.bfloat16(), lengths, gates)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_autocast = ffn.float()(x, lengths, gates)
    orthoasr.set_backend("auto")
    torch.testing.assert_close(ffn.bfloat16()(x.bfloat16(), lengths, gates), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ffn.float()(x, lengths, gates), expected_autocast)
    orthoasr.set_backend("triton")
    with pytest.raises(RuntimeError, match="interpreter computes bfloat16 wrong"):
        ffn.bfloat16()(x.bfloat16(), lengths, gates)
    ffn.half()(x.half(), lengths, gates)          # fp16 the interpreter computes right


@pytest.mark.parametrize("chunks", [0, -2, 2.0, 65])
def test_bad_chunk_counts_are_named(chunks):
    with pytest.raises(ValueError, match=r"chunks must be an int >= 1 and <= 64, got"):
        orthoasr.nn.GatedFeedForward(16, 64, chunks)


@pytest.mark.parametrize("make, name", [
    (lambda: orthoasr.nn.GatedFeedForward(0, 64), "d_model"),
    (lambda: orthoasr.nn.GatedFeedForward(16, 0), "ff_dim"),
    (lambda: orthoasr.nn.GatedFeedForward(16, 64.0), "ff_dim"),
    (lambda: orthoasr.nn.GatedFeedForward(16, 64, dropout=1.0), "dropout"),
    (lambda: orthoasr.nn.GatedMHSA(0, 0), "d_model"),
    (lambda: orthoasr.nn.GatedMHSA(16, 0), "num_heads"),
    (lambda: orthoasr.nn.GatedMHSA(16, True), "num_heads"),
    (lambda: orthoasr.nn.GatedMHSA(16, 2, dropout=float("nan")), "dropout"),
    (lambda: orthoasr.nn.GatedConvModule(0), "d_model"),
    (lambda: orthoasr.nn.GatedConvModule(16, 31.0), "kernel_size"),
    (lambda: orthoasr.nn.GatedConvModule(16, 5, dropout=-0.1), "dropout"),
    (lambda: orthoasr.nn.GatedConvModule(16, 5, dropout=1), "dropout"),
])
def test_module_sizes_and_rates_out_of_range_are_named(make, name):
    """Zero sizes, float or bool counts and rates outside [0, 1) failed inside torch (a
    ZeroDivisionError, a TypeError from torch.empty) or built a module whose dropout the
    kernels refuse at the first call."""
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        make()


def _gated_modules():
    """(module, gate count) for each gated module, fp32 parameters."""
    return [(orthoasr.nn.GatedFeedForward(16, 64, 4), 4), (orthoasr.nn.GatedMHSA(16, 2), 2),
            (orthoasr.nn.GatedConvModule(16, 5), 1)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                        (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_every_module_takes_each_input_dtype_with_fp32_parameters(dtype, tol):
    """Each dtype check_module_inputs accepts runs on the references, in x's dtype, close to
    the same module in float64."""
    orthoasr.set_backend("torch")
    x, lengths = torch.randn(2, 7, 16), torch.tensor([7, 5])
    for module, n in _gated_modules():
        gates = torch.full((n,), 0.7)
        expected = module.double()(x.double(), lengths, gates.double())
        out = module.float()(x.to(dtype), lengths, gates)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("B, T", [(2, 0), (0, 7)])
def test_every_module_takes_an_empty_batch(backend, B, T):
    orthoasr.set_backend(backend)
    for module, n in _gated_modules():
        x = torch.randn(B, T, 16, requires_grad=True)
        out = module(x, torch.zeros(B, dtype=torch.long), torch.ones(n))
        out.sum().backward()
        assert out.shape == (B, T, 16) and x.grad.shape == (B, T, 16)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps", "cpu:1", None],
                         ids=["name-gpu", "cuda-x", "mps", "cpu-1", "none"])   # not the gpu mark
def test_a_bad_device_is_named(device):
    """`Recognizer.from_checkpoint(..., device="gpu")` printed torch's list of every device
    type it knows; the device names the library takes are auto, cpu, cuda and cuda:N."""
    from orthoasr.devices import resolve_device
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                         rf"got {device!r}"):
        resolve_device(device)


def test_a_missing_gpu_is_named(monkeypatch):
    from orthoasr.devices import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device '{device}' requested but no CUDA GPU"):
            resolve_device(device)
    assert resolve_device("auto") == torch.device("cpu")
