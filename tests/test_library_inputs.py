"""Inputs of the public library API that were taken without a word and gave wrong results,
or failed with another library's internal error (a third audit, CPU): each module, the
supernet, ctc_loss, the data classes and GraphedEncoder, on both backends where it matters
(the Triton kernels under the CPU interpreter)."""

import pytest
import torch

import orthoasr
from orthoasr.nn import GatedConvModule, GatedFeedForward, GatedMHSA

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _modules():
    """(module, gate count) for each gated module (non-trivial norms and biases)."""
    modules = [(GatedFeedForward(16, 32, 2), 2), (GatedConvModule(16, 5), 1),
               (GatedMHSA(16, 2), 2)]
    with torch.no_grad():
        for module, _ in modules:
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return [(module.to(DEV).eval(), n) for module, n in modules]


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_strided_lengths_are_read_at_their_strides(backend):
    """lengths[::2] of a longer tensor: GatedMHSA's attention kernel read lengths[1] from
    the element after lengths[0] (0.4 off on the interpreter); now every module gives the
    output of contiguous lengths."""
    orthoasr.set_backend(backend)
    x = torch.randn(2, 7, 16, device=DEV)
    strided = torch.tensor([7, 0, 4, 0], device=DEV)[::2]
    for module, n in _modules():
        gates = torch.tensor([0.3, 0.8][:n], device=DEV)
        torch.testing.assert_close(module(x, strided, gates),
                                   module(x, strided.contiguous(), gates))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_padding_stays_out_of_each_modules_valid_frames(backend, poison):
    """A module used alone, on x whose padded frames hold NaN or inf: GatedMHSA's reference
    (the torch backend) gave NaN at every valid frame of that sequence (its masked keys'
    values reached them as 0 * NaN); the kernels and the other modules did not."""
    orthoasr.set_backend(backend)
    x, lengths = torch.randn(2, 7, 16, device=DEV), torch.tensor([7, 4], device=DEV)
    poisoned = x.clone()
    poisoned[1, 4:] = poison
    for module, n in _modules():
        gates = torch.full((n,), 0.7, device=DEV)
        clean, out = module(x, lengths, gates), module(poisoned, lengths, gates)
        torch.testing.assert_close(out[:, :4], clean[:, :4])
        torch.testing.assert_close(out[0], clean[0])


@pytest.mark.parametrize("normalize", ["utterance", "voiced", None])
@pytest.mark.parametrize("padding", ["noise", "nan"])
def test_logmel_reads_no_sample_past_wave_lengths(normalize, padding):
    """The last valid frame's window reaches ~120 samples past wave_lengths: LogMel read
    what the batch held there (the rest of a recording, a NaN), so the valid features
    differed from the utterance's alone (1.4 at most, normalised; all NaN for a NaN)."""
    from orthoasr.data import LogMel
    logmel = LogMel(normalize=normalize)
    waves = 0.1 * torch.randn(2, 16000)
    lengths = torch.tensor([16000, 12345])
    alone, alone_lengths = logmel(waves[1:, :12345], lengths[1:])
    waves[1, 12345:] = 0.1 * torch.randn(16000 - 12345) if padding == "noise" else float("nan")
    feats, frame_lengths = logmel(waves, lengths)
    n = int(alone_lengths[0])
    assert int(frame_lengths[1]) == n
    torch.testing.assert_close(feats[1, :n], alone[0, :n])
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("waves, lengths, error, message", [
    (torch.zeros(1, 800, dtype=torch.int16), torch.tensor([800]), TypeError,
     r"waves must be floating point \(samples in \[-1, 1\]; 16-bit PCM: samples / 32768\), "
     r"got torch.int16"),
    (torch.zeros(1, 800), torch.tensor([800.5]), TypeError,
     r"wave_lengths must be an integer tensor, got torch.float32"),
    (torch.zeros(1, 800), [800], TypeError, r"wave_lengths must be an integer tensor, got list"),
])
def test_logmel_names_bad_dtypes(waves, lengths, error, message):
    """Integer samples were taken as they were (16-bit PCM at 32768 times the scale) and float
    wave_lengths gave float frame lengths that count one frame more than they say."""
    from orthoasr.data import LogMel
    with pytest.raises(error, match=message):
        LogMel()(waves, lengths)


def _tiny_supernet():
    from orthoasr import ConformerSupernet, SupernetConfig
    cfg = SupernetConfig(num_layers=2, d_model=32, num_heads=2, ff_dim=64, ff_chunks=2,
                         conv_kernel=5, vocab_size=20, frontend_channels=(4, 8),
                         budgets=(0.5, 1.0), dropout=0.0)
    return ConformerSupernet(cfg).eval()


@pytest.mark.parametrize("lengths, error, message", [
    ([20, 6], ValueError, r"lengths must be in \[0, T=10\], got min 6, max 20"),
    ([10, 6, 3], ValueError, r"lengths must have shape \(2,\), got \(3,\)"),
    ([10], ValueError, r"lengths must have shape \(2,\), got \(1,\)"),
    ([-1, 6], ValueError, r"lengths must be in \[0, T=10\], got min -1"),
])
def test_graphed_encoder_checks_lengths_against_the_unpadded_frames(lengths, error, message):
    """GraphedEncoder pads T' up to a multiple of frame_step before the model's checks: a
    length past T' (up to the padded size) ran over zero frames as if they were valid,
    where model.encode refuses it; extra lengths were dropped, and too few an IndexError."""
    from orthoasr.graphs import GraphedEncoder
    orthoasr.set_backend("torch")
    model = _tiny_supernet()
    encoder = GraphedEncoder(model, use_graphs=False)
    x = torch.randn(2, 10, 32)
    with pytest.raises(error, match=message):
        encoder(x, torch.tensor(lengths))
    with pytest.raises(TypeError, match="lengths must be a tensor, got list"):
        encoder(x, [10, 6])
    with pytest.raises(ValueError, match=r"x must be a \(B, T, 32\) tensor, got \(10, 32\)"):
        encoder(x[0], torch.tensor([10]))
    with pytest.raises(ValueError, match=r"gates must have shape \(14,\)"):
        encoder(x, torch.tensor([10, 6]), torch.ones(()))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("change, error, message", [
    (dict(targets=[[1, 6, 3], [2, 2, 9]]), ValueError,
     r"targets must be labels in \[0, V=6\) other than the blank \(0\) within their "
     r"target_lengths, got 6"),
    (dict(targets=[[1, -1, 3], [2, 2, 0]]), ValueError, r"got -1"),
    (dict(targets=[[1, 0, 3], [2, 2, 0]]), ValueError, r"other than the blank \(0\)"),
    (dict(targets=[1, 2, 3, 2, 200]), ValueError, r"got 200"),
    (dict(targets=[[1.7, 2.2, 3.0], [2.0, 2.0, 0.0]]), TypeError,
     r"targets must be integer labels, got torch.float32"),
    (dict(blank=0.5), TypeError, r"blank must be an int, got 0.5"),
    (dict(log_probs="int"), TypeError, r"log_probs must be floating point, got torch.int64"),
    (dict(log_probs="no frames"), ValueError, r"log_probs has no frames \(T=0"),
])
def test_ctc_loss_refuses_labels_it_would_misread(backend, change, error, message):
    """Labels past V were read out of bounds (torch's CPU CTC too: -1e18 for a label of
    100), the blank as a label and float targets (truncated) gave a loss without a word,
    a fractional blank ran on the kernel, int log_probs were taken as log-probabilities,
    and T=0 crashed the interpreter (an out-of-bounds read)."""
    orthoasr.set_backend(backend)
    log_probs = torch.randn(12, 2, 6).log_softmax(-1)
    args = dict(targets=[[1, 2, 3], [2, 2, 0]], blank=0)
    args.update(change)
    input_lengths, target_lengths = torch.tensor([12, 9]), torch.tensor([3, 2])
    if args.get("log_probs") == "int":
        log_probs = (10 * log_probs).long()
    elif args.get("log_probs") == "no frames":
        log_probs, input_lengths = log_probs[:0], torch.tensor([0, 0])
    targets = torch.tensor(args["targets"])
    with pytest.raises(error, match=message):
        orthoasr.ctc_loss(log_probs, targets, input_lengths, target_lengths,
                          blank=args["blank"])
    # labels past a target's length are padding, whatever they hold
    orthoasr.ctc_loss(torch.randn(12, 2, 6).log_softmax(-1), torch.tensor([[1, 2, -1], [2, 9, 9]]),
                      input_lengths.clamp(min=1), torch.tensor([2, 1]))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("step, error, message", [
    ("broadcast y", ValueError, r"the residual step's y must be a tensor of x's shape "
                                r"\(2, 7, 16\) on cpu, got \(1, 7, 16\)"),
    ("short y", ValueError, r"y must be a tensor of x's shape \(2, 7, 16\) on cpu, got "
                            r"\(2, 5, 16\)"),
    ("int y", TypeError, r"the residual step's y must be"),
    ("p = 1", ValueError, r"the residual step's dropout p must be in \[0, 1\), got 1.0"),
    ("three items", ValueError, r"residual must be \(y, seed, scale, p\), got 3 items"),
])
def test_a_bad_residual_step_is_named_on_both_backends(backend, step, error, message):
    """residual=(y, seed, scale, p): the torch backend broadcast a y of shape (1, T, D) over
    the batch and took integer ys and p = 1 without a word (the Triton path refused them);
    a three-item tuple was torch's 'Boolean value of Tensor' error in GatedMHSA."""
    if DEV != "cpu":
        pytest.skip("the messages name the CPU")
    orthoasr.set_backend(backend)
    x, lengths, y = torch.randn(2, 7, 16), torch.tensor([7, 4]), torch.randn(2, 7, 16)
    residual = {"broadcast y": (y[:1], None, 0.5, 0.0), "short y": (y[:, :5], None, 0.5, 0.0),
                "int y": (y.long(), None, 0.5, 0.0), "p = 1": (y, None, 0.5, 1.0),
                "three items": (y, None, 0.5)}[step]
    for module, n in _modules():
        with pytest.raises(error, match=message):
            module(x, lengths, torch.ones(n), residual=residual)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_frames=float("nan")), r"max_frames must be a finite number > 0, got nan"),
    (dict(bucket_width=0), r"bucket_width must be an int >= 1, got 0"),
    (dict(bucket_width=-5), r"bucket_width must be an int >= 1, got -5"),
    (dict(durations=[1.0, float("nan")]), r"durations must be finite seconds >= 0; "
                                          r"utterance 1 has nan \(1 such\)"),
    (dict(durations=[1.0, -2.0, float("inf")]), r"utterance 1 has -2.0 \(2 such\)"),
])
def test_bucket_batch_sampler_refuses_values_that_plan_wrong(kwargs, message):
    """max_frames=NaN passed the `<= 0` check and put every utterance in one batch; a
    negative bucket_width reversed the length order and 0 divided by zero; negative
    durations became 1 frame, and NaN or inf ones failed inside math.ceil."""
    from orthoasr.data import BucketBatchSampler
    args = dict(durations=[1.0, 2.0, 0.5], max_frames=300)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BucketBatchSampler(args.pop("durations"), **args)
    assert list(BucketBatchSampler([1.0, 2.0, 0.5], 300, shuffle=False)) == [[2, 0], [1]]
    assert list(BucketBatchSampler([], 300)) == []


def test_the_supernet_names_devices_dtypes_and_gate_types():
    """Lengths on another device than the features were torch's 'Tensor on device cpu is not
    on the expected device meta!'; gates as a NumPy array 'gates are on cpu but features on
    cpu' and as a list an AttributeError; encode's float64 x with float32 weights 'mixed
    dtype (CPU)'."""
    orthoasr.set_backend("torch")
    model = _tiny_supernet()
    features, lengths = torch.randn(2, 40, 80), torch.tensor([40, 21])
    with pytest.raises(ValueError, match=r"lengths are on meta but features on cpu"):
        model(features, lengths.to("meta"))
    gates = torch.ones(model.num_units)
    for wrong, name in ((gates.numpy(), "ndarray"), (gates.tolist(), "list")):
        with pytest.raises(TypeError, match=rf"gates must be a tensor or None, got {name}"):
            model(features, lengths, wrong)
    x, out_lengths = model.embed(features, lengths)
    with pytest.raises(TypeError, match=r"x is torch.float64 but the model's weights are "
                                        r"torch.float32; convert with x.to\(torch.float32\)"):
        model.encode(x.double(), out_lengths, gates)
    model.double().encode(x.double(), out_lengths, gates.double())   # float64 weights take it


def test_spec_augment_load_audio_and_head_name_bad_values(tmp_path):
    """Each failed inside torch or numpy (a float mask count in torch.rand, a 2-D input in
    an unpack, a fractional rate in slicing), or was taken as another value: lengths of
    shape [1] broadcast over the batch, head=True read as head 1."""
    from orthoasr.data import SpecAugment, load_audio, write_wav
    for options, name in (({"freq_masks": 2.5}, "freq_masks"), ({"time_masks": -1}, "time_masks"),
                          ({"time_width": 2.0}, "time_width")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            SpecAugment(**options)
    augment = SpecAugment().train()
    with pytest.raises(ValueError, match=r"feats must be \[B, T, F\], got \(40, 80\)"):
        augment(torch.randn(40, 80), torch.tensor([40]))
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[3\], got \(1,\)"):
        augment(torch.randn(3, 40, 80), torch.tensor([40]))
    write_wav(tmp_path / "a.wav", torch.zeros(1600).numpy())
    for rate in (16000.5, "16000", 0):
        with pytest.raises(ValueError, match=f"sample_rate must be an int >= 1 .*{rate!r}"):
            load_audio(tmp_path / "a.wav", rate)
    model = orthoasr.ConformerSupernet(orthoasr.SupernetConfig(
        num_layers=1, d_model=16, num_heads=2, ff_dim=32, ff_chunks=2, conv_kernel=5,
        vocab_size=10, frontend_channels=(4, 8), budgets=(0.5, 1.0)))
    x, lengths = torch.randn(1, 8, 16), torch.tensor([8])
    with pytest.raises(ValueError, match="head must be an int in .*got True"):
        model.encode(x, lengths, torch.ones(model.num_units), head=True)


def test_integer_gates_are_refused_where_they_are_given():
    """Integer gates passed Recognizer(...) and dead_modules and failed at the first
    transcribe, once audio was read ("gates must be floating point" from inside a module;
    bool gates were refused at once). Now the supernet's gate check names them wherever
    they are given, as the modules do."""
    from orthoasr.data import Tokenizer
    orthoasr.set_backend("torch")
    model = _tiny_supernet()
    tokenizer = Tokenizer.train(["turn the light on", "stop the music"], vocab_size=20)
    gates = torch.ones(model.num_units, dtype=torch.long)
    for call in (lambda: orthoasr.Recognizer(model, tokenizer, gates=gates, head=0),
                 lambda: model.dead_modules(gates), lambda: model.full_modules(gates),
                 lambda: model.encode(torch.randn(1, 5, 32), torch.tensor([5]), gates)):
        with pytest.raises(TypeError, match=r"gates must be floating point, got torch.int64"):
            call()


def test_subnet_save_refuses_a_path_naming_a_folder(tmp_path, monkeypatch):
    """`sub.save("exports/")` wrote the subnet to a file named `exports` (Path drops the
    separator), where `orthoasr export --out exports/` is refused: the library now refuses
    it too, naming the path, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    sub = orthoasr.extract_subnet(_tiny_supernet(), None)
    with pytest.raises(ValueError, match=r"path 'exports/' ends in '/', which names a folder"):
        sub.save("exports/")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "exports").mkdir()
    assert sub.save(tmp_path / "exports" / "sub.pt").is_file()   # a file in it is written
