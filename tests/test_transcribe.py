"""`Recognizer` against the masked supernet's own decoding (evaluate.transcribe), exported
subnets, waveforms and batching; `orthoasr transcribe` on good files, formats (8 kHz stereo,
24-bit, float, FLAC), bad ones (missing, corrupt among good ones, empty) and silence
(`--silence-db`; the splitter itself: tests/test_silence.py)."""

import json
import warnings

import numpy as np
import pytest
import torch
from test_evaluate import main_help, talkative
from test_train import level_swings, tiny_run, write_corpus

from orthoasr import ConformerSupernet, Recognizer, extract_subnet, load_subnet, set_backend
from orthoasr.checkpoint import SUBNET_KIND, TRAINING_KIND, load_checkpoint, save_checkpoint
from orthoasr.cli import main as cli_main
from orthoasr.data import Tokenizer, downmix, load_audio, load_manifest
from orthoasr.evaluate import transcribe
from orthoasr.recognizer import chunk_windows
from orthoasr.silence import voiced_spans
from orthoasr.train import CHECKPOINT, train
from orthoasr.trained import load_trained

soundfile = pytest.importorskip("soundfile")  # a test need (install_requires has it)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny supernet trained 3 + 3 steps, then made `talkative`."""
    set_backend("torch")
    root = tmp_path_factory.mktemp("transcribe")
    corpus = write_corpus(root / "corpus", n=6)
    train(tiny_run(corpus), root / "run")
    path = root / "run" / CHECKPOINT
    save_checkpoint(path, talkative(load_checkpoint(path, kind=TRAINING_KIND)))
    records = load_manifest(corpus / "test.jsonl")
    return {"checkpoint": path, "records": records, "root": root,
            "paths": [r["audio_filepath"] for r in records]}


def supernet_decoding(run, index):
    """What `orthoasr eval` decodes with subnet `index` of the checkpoint."""
    trained = load_trained(run["checkpoint"])
    gates = trained.subnet_gates(index)
    return transcribe(trained.model, run["records"], trained.tokenizer(), [(gates, index)],
                      torch.device("cpu"), batch_frames=40000, bf16=False)[0]


def test_recognizer_equals_masked_supernet_decoding(run):
    budgets = load_trained(run["checkpoint"]).model.cfg.budgets
    by_budget = {}
    for index, budget in enumerate(budgets):
        texts = Recognizer.from_checkpoint(run["checkpoint"], budget).transcribe(run["paths"])
        assert texts == supernet_decoding(run, index)
        assert all(texts)
        by_budget[budget] = texts
    assert len({tuple(t) for t in by_budget.values()}) > 1      # the budget changes the model
    default = Recognizer.from_checkpoint(run["checkpoint"]).transcribe(run["paths"])
    assert default == by_budget[max(budgets)]


def test_recognizer_decodes_as_the_run_trained_only_on_a_gpu(run, tmp_path):
    """A run trained in bf16 (the default) is decoded under a bfloat16 autocast on a GPU,
    as `orthoasr eval` scores it, and so is its exported subnet (the export records how
    the run trained; exported subnets always decoded in float32, 2.1x slower on an H100);
    on the CPU always in float32. An export without the record (older) reads as float32."""
    assert load_trained(run["checkpoint"]).run.bf16
    assert not Recognizer.from_checkpoint(run["checkpoint"]).bf16
    path = tmp_path / "sub.pt"
    cli_main(["export", "--checkpoint", str(run["checkpoint"]), "--budget", "0.4",
              "--out", str(path)])
    assert load_subnet(path).trained_in_bf16
    assert not Recognizer.from_subnet(path).bf16                 # the CPU
    state = load_checkpoint(path, kind=SUBNET_KIND)
    del state["bf16"]
    save_checkpoint(tmp_path / "old.pt", state)
    assert not load_subnet(tmp_path / "old.pt").trained_in_bf16


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [True, False])
def test_recognizer_on_a_gpu_reads_as_eval(run, bf16):
    """On a GPU, through the Triton kernels, the Recognizer's texts are eval's in the same
    precision (bf16: the run's; False: --fp32)."""
    set_backend("auto")
    try:
        budgets = load_trained(run["checkpoint"]).model.cfg.budgets
        device = torch.device("cuda")
        trained = load_trained(run["checkpoint"], device)
        for index, budget in enumerate(budgets):
            recognizer = Recognizer.from_checkpoint(run["checkpoint"], budget, device="cuda",
                                                    bf16=None if bf16 else False)
            assert recognizer.bf16 == bf16
            gates = trained.subnet_gates(index).to(device)
            expected = transcribe(trained.model, run["records"], trained.tokenizer(),
                                  [(gates, index)], device, batch_frames=40000, bf16=bf16,
                                  frozen_weights=True)[0]
            assert recognizer.transcribe(run["paths"]) == expected
    finally:
        set_backend("torch")


@pytest.mark.gpu
def test_an_exported_subnet_on_a_gpu_decodes_as_its_run_trained(run, tmp_path):
    """On a GPU an export of a bf16 run decodes under a bfloat16 autocast (its output head
    computes in bf16), with --fp32 (bf16=False) in float32; both read the same clips."""
    path = tmp_path / "sub.pt"
    cli_main(["export", "--checkpoint", str(run["checkpoint"]), "--budget", "0.4",
              "--out", str(path)])
    texts = {}
    for bf16, dtype in ((None, torch.bfloat16), (False, torch.float32)):
        recognizer = Recognizer.from_subnet(path, device="cuda", bf16=bf16)
        assert recognizer.bf16 == (bf16 is None)
        seen = []
        recognizer.model.head.register_forward_hook(
            lambda _m, _i, out, seen=seen: seen.append(out.dtype))
        texts[bf16] = recognizer.transcribe(run["paths"])
        assert seen and set(seen) == {dtype}
        graphs = recognizer.encoder.graphs           # replayed from CUDA graphs
        assert graphs and all(graph is not None for graph in graphs.values())
    assert all(texts[None]) and len(texts[None]) == len(texts[False]) == len(run["paths"])


def test_exported_subnet_transcribes_alone_like_the_supernet(run, tmp_path):
    trained = load_trained(run["checkpoint"])
    sub = extract_subnet(trained.model, trained.subnet_gates(0), head=0)
    sub.save(tmp_path / "sub.pt", tokenizer=trained.tokenizer_bytes)
    budget = trained.model.cfg.budgets[0]
    expected = Recognizer.from_checkpoint(run["checkpoint"], budget).transcribe(run["paths"])
    assert Recognizer.from_subnet(tmp_path / "sub.pt").transcribe(run["paths"]) == expected
    sub.tokenizer_bytes = None      # extract_subnet gave it the checkpoint's
    sub.save(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="without its tokenizer"):
        Recognizer.from_subnet(tmp_path / "bare.pt")


def test_a_fixed_gates_run_transcribes_with_the_subnet_it_trained(run, tmp_path):
    """A fixed_gates run keeps its source run's masks for every budget, but trains one
    subnet: the default (the largest) and the other budgets decoded with weights and heads
    that run never trained, as `orthoasr eval` and `export` no longer do."""
    source = run["checkpoint"]
    train(tiny_run(run["root"] / "corpus", f"fixed_gates={source}@0.4", "stage1_steps=1",
                   "stage2_steps=0"), tmp_path / "alone")
    checkpoint = tmp_path / "alone" / CHECKPOINT
    rec = Recognizer.from_checkpoint(checkpoint)
    assert rec.head == 0 and rec.gates.equal(load_trained(checkpoint).subnet_gates(0))
    assert Recognizer.from_checkpoint(checkpoint, 0.4).head == 0
    with pytest.raises(ValueError, match=rf"budget 1.0: the run of {checkpoint} trained only "
                                         rf"the subnet of budget 0.4 \(fixed_gates {source}@0.4"):
        Recognizer.from_checkpoint(checkpoint, 1.0)


def test_waveforms_and_batch_sizes_give_the_same_transcripts(run):
    rec = Recognizer.from_checkpoint(run["checkpoint"], 0.4)
    expected = rec.transcribe(run["paths"])
    waves = [soundfile.read(p, dtype="float32")[0] for p in run["paths"]]
    mixed = [torch.from_numpy(w) if i % 2 else w for i, w in enumerate(waves)]
    assert rec.transcribe(mixed[::-1]) == expected[::-1]
    rec.batch_frames = 1                                        # one utterance per batch
    assert rec.transcribe(run["paths"]) == expected
    assert rec.transcribe([np.zeros(100, np.float32)]) == [""]  # under 4 frames
    with pytest.raises(TypeError, match="wrap it in a list"):
        rec.transcribe(run["paths"][0])
    with pytest.raises(TypeError, match="timestamps must be True or False, got 'no'"):
        rec.transcribe(run["paths"], timestamps="no")
    with pytest.raises(ValueError, match="1-D"):
        rec.transcribe([np.zeros((2, 8000), np.float32)])
    poisoned = waves[1].copy()
    poisoned[123] = np.nan
    with pytest.raises(ValueError, match="item 1 holds NaN or inf samples"):
        rec.transcribe([waves[0], poisoned])
    pcm = (waves[0] * 32767).astype(np.int16)       # scipy.io.wavfile's 16-bit samples
    with pytest.raises(ValueError, match=r"item 0 has torch.int16 samples: .* / 32768"):
        rec.transcribe([pcm])


def test_waveforms_at_another_rate_are_resampled_as_files_are(run, tmp_path):
    """A waveform at 8 kHz with sample_rate=8000 reads as the same audio in an 8 kHz file
    (both resampled by load_audio's resampler); without it, it would be taken as 16 kHz
    audio, twice as fast. A file's own rate is read from it, whatever sample_rate says."""
    rec = Recognizer.from_checkpoint(run["checkpoint"], 0.4)
    wave, rate = soundfile.read(run["paths"][0], dtype="float32")
    slow = wave[::2].copy()
    path = str(tmp_path / "mono8k.wav")
    soundfile.write(path, slow, rate // 2, subtype="FLOAT")
    from_file = rec.transcribe([path])
    assert rec.transcribe([slow], sample_rate=rate // 2) == from_file
    assert rec.transcribe([torch.from_numpy(slow)], sample_rate=rate // 2) == from_file
    assert list(rec.transcribe_iter([slow], sample_rate=rate // 2)) == from_file
    assert rec.transcribe([slow]) != from_file
    assert rec.transcribe([path], sample_rate=44100) == from_file
    for bad in (0, 16000.5, "16k"):
        with pytest.raises(ValueError, match=f"sample_rate must be .*got {bad!r}"):
            rec.transcribe([slow], sample_rate=bad)


def test_arrays_in_any_layout_read_as_their_native_copies():
    """A reversed view (wave[::-1], np.flip) or a big-endian array (">f4", as some readers
    give) is a 1-D float waveform: they were refused as "must be an audio file path or a
    1-D float waveform, got ndarray" (torch.as_tensor takes neither)."""
    rec = Recognizer(FrameLocalModel(), LabelTokenizer())
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    reversed_wave = np.ascontiguousarray(wave[::-1])
    assert rec.transcribe([wave[::-1], np.flip(wave), wave.astype(">f4")]) == \
        rec.transcribe([reversed_wave, reversed_wave, wave])


def test_a_batch_of_waveforms_in_one_array_is_told_to_be_a_list():
    """np.stack(waves) (a [B, S] batch) was told 'wrap it in a list', which then gave
    'waveforms must be 1-D, got shape (B, S)'; the hint is list(batch) for a batch."""
    rec = Recognizer(FrameLocalModel(), LabelTokenizer())
    batch = np.zeros((2, 16000), np.float32)
    for given in (batch, torch.from_numpy(batch)):
        with pytest.raises(TypeError, match=r"got one .* of shape \(2, 16000\): pass "
                                            r"list\(batch\), its rows as waveforms"):
            rec.transcribe(given)
    assert rec.transcribe(list(batch)) == ["", ""]
    with pytest.raises(TypeError, match="got one ndarray; wrap it in a list"):
        rec.transcribe(batch[0])


def test_a_recording_of_several_channels_is_told_to_be_mixed_as_files_are():
    """An item [samples, channels] is refused naming downmix, which a file's channels go
    through: averaged by hand, a channel of opposite polarity cancels the other."""
    rec = Recognizer(FrameLocalModel(), LabelTokenizer())
    voice = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    stereo = np.stack([voice, -voice], axis=1)
    with pytest.raises(ValueError, match=r"got shape \(16000, 2\) for item 0 \(channels: mix "
                                         r"an array \[samples, channels\] with "
                                         r"orthoasr.data.downmix"):
        rec.transcribe([stereo])
    assert rec.transcribe([downmix(stereo)]) == rec.transcribe([voice])
    assert rec.transcribe([stereo.mean(axis=1)]) == [""]


def test_a_read_only_array_is_read_without_a_warning(tmp_path):
    """A memory-mapped recording (np.load(mmap_mode="r")) or np.frombuffer's array is read
    only: torch.as_tensor warned of 'undefined behavior' as it shared its memory."""
    rec = Recognizer(FrameLocalModel(), LabelTokenizer())
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    np.save(tmp_path / "wave.npy", wave)
    mapped = np.load(tmp_path / "wave.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rec.transcribe([mapped, np.frombuffer(wave.tobytes(), np.float32)]) == \
            rec.transcribe([wave, wave])


def test_waveforms_at_the_scale_of_integer_samples_are_refused():
    """16-bit samples passed as floats without the / 32768 (`pcm.astype(np.float32)`) were
    decoded without a word. The splitter's -80 dBFS floor is for samples in [-1, 1]: 2 s of
    a muted microphone's dither (1.5 LSB rms) has no segments, but at 32768 times the scale
    it was voiced throughout and decoded into words; normalised over all frames, speech
    with 0.3 s of zeros around it had features up to 1.5 (0.34 on average) off. Peaks up
    to 10 (hot or clipped float audio, unit-variance noise) are taken."""
    rec = Recognizer(FrameLocalModel(), LabelTokenizer())
    rng = np.random.default_rng(0)
    speech = np.clip(rng.standard_normal(16000) * 0.1, -0.3, 0.3).astype(np.float32)
    dither = np.round(rng.standard_normal(32000) * 1.5).astype(np.float32) / 32768
    assert rec.transcribe([dither]) == [""]
    pcm = np.round(speech * 32767)
    peak = np.abs(pcm).max()
    for scaled in (pcm.astype(np.float32), torch.from_numpy(pcm).float(), pcm):
        with pytest.raises(ValueError, match=rf"item 1 peaks at {peak:g}: .*\[-1, 1\] "
                                             r"\(16-bit PCM: samples / 32768; up to 10 "):
            rec.transcribe([speech, scaled])
    hot = np.concatenate([speech, [2.0, -10.0]]).astype(np.float32)
    assert rec.transcribe([hot, torch.randn(160000)])[0] == rec.transcribe([hot])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the peak of a tensor that requires grad
        rec.transcribe([torch.from_numpy(speech).requires_grad_()])


def test_word_timestamps_read_as_the_text(run, reference_backend):
    """With timestamps: the same texts, each the words joined by spaces, the words in
    order inside their clip (their times: tests/test_timestamps.py)."""
    rec = Recognizer.from_checkpoint(run["checkpoint"], 0.4)
    transcripts = rec.transcribe(run["paths"], timestamps=True)
    assert [t.text for t in transcripts] == rec.transcribe(run["paths"])
    for transcript, record in zip(transcripts, run["records"]):
        assert " ".join(word.text for word in transcript.words) == transcript.text
        times = [time for word in transcript.words for time in word[1:]]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= record["duration"]


def test_grouping_leaves_the_transcripts_unchanged(run, reference_backend):
    """`transcribe_iter` decodes the items in groups of about group_seconds of audio (0:
    each alone; tests/test_transcribe_stream.py), so the batches change with the groups:
    length_batches pads each to its longest, and the features and outputs of the valid
    frames do not depend on the padding."""
    rec = Recognizer.from_checkpoint(run["checkpoint"], 0.4)
    expected = rec.transcribe(run["paths"])                     # one group, one batch
    for group_seconds in (0, 1.0, 2.5):         # 1 clip a group; 1-2; 2-4 (of 0.5-1.1 s)
        assert list(rec.transcribe_iter(run["paths"], group_seconds)) == expected


def test_bad_budget_is_refused(run):
    with pytest.raises(ValueError, match=r"budget 0\.5 is not one of the run's budgets"):
        Recognizer.from_checkpoint(run["checkpoint"], 0.5)
    with pytest.raises(TypeError, match=r"budget must be a number .*, got '0\.4'"):
        Recognizer.from_checkpoint(run["checkpoint"], "0.4")


@pytest.fixture
def reference_backend():
    """The PyTorch references for the tests of the command's input and output: the Triton
    kernels under the CPU's interpreter took ~10 s a transcription here, and the tests
    above already run `Recognizer` on them (the backend is "auto" after the first)."""
    set_backend("torch")


def cli(capsys, *argv):
    """(exit status, stdout lines, stderr) of `orthoasr transcribe ...`."""
    try:
        cli_main(["transcribe", *argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_cli_prints_one_line_per_file(run, capsys, reference_backend):
    expected = Recognizer.from_checkpoint(run["checkpoint"], 0.7).transcribe(run["paths"])
    code, lines, _ = cli(capsys, "--checkpoint", str(run["checkpoint"]), "--budget", "0.7",
                         *run["paths"])
    assert code == 0
    assert lines == [f"{p}\t{t}" for p, t in zip(run["paths"], expected)]
    pieces = Recognizer.from_checkpoint(run["checkpoint"], 0.7, chunk_seconds=0.2,
                                        context_seconds=0).transcribe(run["paths"])
    assert pieces != expected                    # cuts without context change the features
    code, lines, _ = cli(capsys, "--checkpoint", str(run["checkpoint"]), "--budget", "0.7",
                         "--chunk-seconds", "0.2", "--context-seconds", "0", *run["paths"])
    assert code == 0 and lines == [f"{p}\t{t}" for p, t in zip(run["paths"], pieces)]


def test_cli_passes_file_names_that_are_not_utf8_through(run, tmp_path, monkeypatch,
                                                          reference_backend):
    """A file name's bytes need not be UTF-8 (an old Latin-1 archive's `café.wav`): with
    standard input and output strict UTF-8, as under a UTF-8 locale, reading such a name
    from `-` or printing its line raised UnicodeDecodeError / UnicodeEncodeError and ended
    the run; the names pass through as their bytes, as `find` prints them."""
    import io
    import os
    wave = soundfile.read(run["paths"][0], dtype="float32")[0]
    soundfile.write(tmp_path / "cafe.wav", wave, 16000)
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.wav")
    os.rename(tmp_path / "cafe.wav", name)
    expected = Recognizer.from_checkpoint(run["checkpoint"]).transcribe(run["paths"][:1])[0]
    stdin = io.TextIOWrapper(io.BytesIO(os.fsencode(name) + b"\n"), encoding="utf-8")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    cli_main(["transcribe", "--checkpoint", str(run["checkpoint"]), name, "-"])
    line = os.fsencode(name) + b"\t" + expected.encode() + b"\n"
    assert stdout.buffer.getvalue() == line * 2
    # --format json: the line stays UTF-8 JSON text, the name's bytes as \udcXX escapes
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    monkeypatch.setattr("sys.stdout", stdout)
    cli_main(["transcribe", "--checkpoint", str(run["checkpoint"]), "--format", "json", name])
    record = json.loads(stdout.buffer.getvalue().decode("utf-8"))
    assert os.fsencode(record["path"]) == os.fsencode(name)
    assert record["text"] == expected


def test_cli_reads_other_rates_channels_and_encodings(run, tmp_path, capsys, reference_backend):
    """The same speech as 16 kHz 16-bit mono, 8 kHz 16-bit stereo (both channels equal),
    24-bit, 32-bit float and FLAC: each reads and mixes down to what its mono twin says."""
    wave, rate = soundfile.read(run["paths"][0], dtype="float32")
    files = {}
    for name, data, sr, subtype in (
            ("mono8k.wav", wave[::2], 8000, "PCM_16"),
            ("stereo8k.wav", np.stack([wave[::2]] * 2, axis=1), 8000, "PCM_16"),
            ("pcm24.wav", wave, rate, "PCM_24"), ("float.wav", wave, rate, "FLOAT"),
            ("pcm16.flac", wave, rate, "PCM_16")):
        files[name] = str(tmp_path / name)
        soundfile.write(files[name], data, sr, subtype=subtype)
    code, lines, err = cli(capsys, "--checkpoint", str(run["checkpoint"]), *files.values())
    assert code == 0, err
    texts = dict(line.split("\t") for line in lines)
    assert list(texts) == list(files.values())
    assert texts[files["stereo8k.wav"]] == texts[files["mono8k.wav"]]
    original = Recognizer.from_checkpoint(run["checkpoint"]).transcribe(run["paths"][:1])[0]
    for name in ("pcm24.wav", "float.wav", "pcm16.flac"):
        assert texts[files[name]] == original, name


@pytest.mark.parametrize("bad", ["missing", "corrupt", "empty", "loud"])
def test_cli_reports_a_bad_file_and_transcribes_the_others(run, tmp_path, capsys, bad,
                                                           reference_backend):
    """loud: a float wav holding 16-bit values (as Cool Edit's 32-bit float files did) was
    decoded at 32768 times the scale; the recognizer's ValueError would end the run."""
    path = tmp_path / f"{bad}.wav"
    if bad == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(200)))
    elif bad == "empty":
        path.write_bytes(b"")
    elif bad == "loud":
        wave = soundfile.read(run["paths"][0], dtype="float32")[0]
        soundfile.write(path, wave * 32768, 16000, subtype="FLOAT")
    good = run["paths"][:2]
    code, lines, err = cli(capsys, "--checkpoint", str(run["checkpoint"]), good[0], str(path),
                           good[1])
    assert code == 1
    assert [line.split("\t")[0] for line in lines] == good
    assert f"cannot read {path}: " in err and err.count(str(path)) == 1
    reason = err.split(f"cannot read {path}: ")[1].splitlines()[0]
    assert {"missing": "audio file not found", "corrupt": "no data chunk",
            "empty": "empty file (0 bytes)", "loud": "peaks at "}[bad] in reason
    assert "1 of 3 file(s) could not be transcribed" in err


def test_cli_usage_errors(run, tmp_path, capsys):
    code, _, err = cli(capsys, "--checkpoint", str(run["checkpoint"]), "--budget", "0.33",
                       run["paths"][0])
    assert code == 2 and "budget 0.33 is not one of the run's budgets" in err
    # each option's bad value is named by its flag before the model loads
    for flag, value, expected in (("--chunk-seconds", "-1", "a finite number >= 0"),
                                  ("--chunk-seconds", "0.01", "0 or a number of seconds >= 0.04"),
                                  ("--context-seconds", "nan", "a finite number >= 0"),
                                  ("--group-seconds", "inf", "a finite number >= 0"),
                                  ("--silence-db", "-5", "a finite number of dB > 0, or 'off'")):
        code, _, err = cli(capsys, "--checkpoint", "nowhere.pt", flag, value, run["paths"][0])
        assert code == 2 and f"argument {flag}: expected {expected}, got '{value}'" in err, err
    trained = load_trained(run["checkpoint"])
    extract_subnet(trained.model, trained.subnet_gates(1), head=1).save(
        tmp_path / "sub.pt", tokenizer=trained.tokenizer_bytes)
    code, _, err = cli(capsys, "--subnet", str(tmp_path / "sub.pt"), "--budget", "0.7",
                       run["paths"][0])
    assert code == 2 and "--budget picks a subnet of a --checkpoint" in err
    code, lines, _ = cli(capsys, "--subnet", str(tmp_path / "sub.pt"), run["paths"][0])
    expected = Recognizer.from_checkpoint(run["checkpoint"], 0.7).transcribe(run["paths"][:1])
    assert code == 0 and lines == [f"{run['paths'][0]}\t{expected[0]}"]


def test_cli_cuts_silence_out_unless_told_not_to(run, tmp_path, capsys, reference_backend):
    """Two clips with 0.5 s of zeros between: by default each voiced segment is decoded
    alone and the texts joined; `--silence-db off` (or 0) decodes the file whole."""
    waves = [soundfile.read(p, dtype="float32")[0] for p in run["paths"][:2]]
    joined = np.concatenate([waves[0], np.zeros(8000, np.float32), waves[1]])
    path = str(tmp_path / "two.wav")
    soundfile.write(path, joined, 16000, subtype="FLOAT")
    split = Recognizer.from_checkpoint(run["checkpoint"], 0.4).transcribe([joined])[0]
    whole_rec = Recognizer.from_checkpoint(run["checkpoint"], 0.4, silence_db=None)
    whole = whole_rec.transcribe([joined])[0]
    segments = [joined[start:end] for start, end in voiced_spans(torch.from_numpy(joined))]
    assert len(segments) == 2 and split == " ".join(whole_rec.transcribe(segments))
    assert split != whole
    for flags, expected in (([], split), (["--silence-db", "40"], split),
                            (["--silence-db", "off"], whole), (["--silence-db", "0"], whole)):
        code, lines, err = cli(capsys, "--checkpoint", str(run["checkpoint"]), "--budget", "0.4",
                               *flags, path)
        assert code == 0 and lines == [f"{path}\t{expected}"], (flags, err)
    code, _, err = cli(capsys, "--checkpoint", str(run["checkpoint"]), "--silence-db", "loud",
                       path)
    assert code == 2 and "expected a finite number of dB > 0, or 'off', got 'loud'" in err


def test_labels_beyond_the_tokenizers_vocabulary_are_never_decoded(run, tmp_path):
    """A checkpoint whose output layers are wider than its tokenizer's vocabulary (allowed:
    model.vocab_size above what the transcripts gave): its output heads get one more label,
    which wins every frame. `Recognizer` (and `orthoasr eval`, which decodes alike) decode
    the others, as before the widening (they raised sentencepiece's 'piece id is out of
    range')."""
    state = load_checkpoint(run["checkpoint"], kind=TRAINING_KIND)
    state["run_config"]["model"]["vocab_size"] += 1
    for key in [k for k in state["model"] if k.startswith("heads.")]:
        value = state["model"][key]
        extra = torch.full_like(value[:1], 100.0 if key.endswith(".bias") else 0.0)
        state["model"][key] = torch.cat([value, extra])
    path = tmp_path / "wide.pt"
    save_checkpoint(path, state)
    for budget in (None, 0.4):
        wide = Recognizer.from_checkpoint(path, budget).transcribe(run["paths"])
        assert wide == Recognizer.from_checkpoint(run["checkpoint"], budget).transcribe(
            run["paths"])


@pytest.mark.parametrize("samples", [640 * 100 + 17, 640 * 101, 640 * 5000 + 639])
@pytest.mark.parametrize("chunk,context", [(10, 0), (10, 3), (7, 50), (1, 1)])
def test_chunk_windows_keep_every_output_frame_once(samples, chunk, context):
    frames = samples // 640
    windows = chunk_windows(samples, 640, chunk, context)
    kept = []
    for first, end, keep in windows:
        assert first % 640 == 0 and 0 <= first < end <= samples
        window_frames = (end - first) // 640
        assert 0 <= keep.start < keep.stop <= window_frames
        assert keep.stop - keep.start <= chunk or windows == [(0, samples, slice(0, frames))]
        start = first // 640 + keep.start                 # the clip's frame of keep.start
        assert keep.start == min(context, start)          # context seen before, where there is
        assert window_frames - keep.stop == min(context, frames - (start + keep.stop
                                                                    - keep.start))
        kept += range(start, start + keep.stop - keep.start)
    assert kept == list(range(frames))
    assert len(windows) == (1 if frames <= chunk + 2 * context else -(-frames // chunk))
    assert chunk_windows(samples, 640, frames - 2 * context, context) == [
        (0, samples, slice(0, frames))]
    assert chunk_windows(samples, 640, None, context) == [(0, samples, slice(0, frames))]


class FrameLocalModel(torch.nn.Module):
    """A stand-in acoustic model whose output frame f depends only on feature frames 4f and
    4f + 1: label 1 + (which of mel bins 0-3 rise from one to the other, as bits). A rise is
    unchanged by the per-utterance normalisation, so the label of an output frame is the
    same whether the clip is decoded whole or in pieces, if and only if the pieces line up
    with the clip's frames."""

    cfg = type("Config", (), {"num_mel_bins": 80, "feature_norm": "utterance",
                              "remove_dc": False})

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, feats, lengths):
        batch, frames = feats.shape[0], feats.shape[1] // 4
        quads = feats[:, :4 * frames].reshape(batch, frames, 4, -1)
        rises = (quads[:, :, 1, :4] > quads[:, :, 0, :4]).long()
        labels = 1 + (rises * torch.tensor([1, 2, 4, 8], device=feats.device)).sum(-1)
        log_probs = torch.nn.functional.one_hot(labels, 17).float().log()
        return log_probs, torch.div(lengths, 4, rounding_mode="floor")


class LabelTokenizer:
    vocab_size = 17

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_long_clips_decoded_in_pieces_equal_whole_decoding():
    noise = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=noise) * torch.from_numpy(level_swings(n))
             for n in (16000 * 9 + 333, 16000 * 2, 16000 * 5)]
    whole = Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=None)
    expected = whole.transcribe(waves)
    assert len(expected[0].split()) > 100                   # labels change from frame to frame
    for chunk, context in [(1.0, 0.04), (0.36, 0.2), (2.0, 1.0), (30.0, 2.0)]:
        pieces = Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=chunk,
                            context_seconds=context, batch_frames=700)
        assert pieces.transcribe(waves) == expected, (chunk, context)
    # without context the features at a cut see zero padding instead of the clip
    cut = Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=1.0, context_seconds=0)
    assert cut.transcribe(waves)[0] != expected[0]


@pytest.mark.gpu
def test_long_clips_decoded_in_pieces_on_a_gpu_equal_whole_decoding():
    noise = torch.Generator().manual_seed(1)
    waves = [torch.randn(n, generator=noise) * torch.from_numpy(level_swings(n))
             for n in (16000 * 9 + 333, 16000 * 3)]
    expected = Recognizer(FrameLocalModel().cuda(), LabelTokenizer(), chunk_seconds=None
                          ).transcribe(waves)
    assert len(expected[0].split()) > 100
    pieces = Recognizer(FrameLocalModel().cuda(), LabelTokenizer(), chunk_seconds=1.0,
                        context_seconds=0.2, batch_frames=700)
    assert pieces.transcribe(waves) == expected


@pytest.mark.parametrize("option,value", [("chunk_seconds", 0.0), ("chunk_seconds", 0.01),
                                          ("chunk_seconds", float("nan")),
                                          ("chunk_seconds", True), ("context_seconds", -1.0),
                                          ("context_seconds", "2")])
def test_bad_chunk_options_are_refused(option, value):
    with pytest.raises(ValueError, match=f"{option} must be a number of seconds >= .*, got"):
        Recognizer(FrameLocalModel(), LabelTokenizer(), **{option: value})


@pytest.mark.parametrize("option,flag", [("chunk_seconds", "--chunk-seconds"),
                                         ("silence_db", "--silence-db")])
def test_a_zero_for_whole_recordings_is_told_none_does_that(option, flag):
    """The command line's 0 decodes each recording whole; the library's is None, and a 0
    passed to it was refused only with the range, which never says so."""
    with pytest.raises(ValueError, match=f"{option} must be .*, got 0 \\(None, not 0, "
                                         f"decodes each recording whole: the command "
                                         f"line's {flag} 0\\)"):
        Recognizer(FrameLocalModel(), LabelTokenizer(), **{option: 0})


def test_help_gives_the_device_default(capsys):
    """transcribe decodes on the CPU unless told, eval on the GPU where there is one; their
    --help listed only the choices."""
    for command, default in (("transcribe", "(default cpu, even on a GPU machine;"),
                             ("eval", "(default auto: the GPU if there is one")):
        assert default in " ".join(main_help(capsys, command).split()), command


class WideTokenizer(LabelTokenizer):
    vocab_size = 21


def test_bad_recognizer_arguments_are_named():
    """Each was an AttributeError or TypeError from inside the constructor or the first
    transcribe call, naming no argument."""
    from orthoasr import ConformerSupernet, SupernetConfig
    cfg = SupernetConfig(num_layers=1, d_model=32, num_heads=2, ff_dim=64, ff_chunks=2,
                         conv_kernel=5, vocab_size=20, frontend_channels=(4, 8),
                         budgets=(0.5, 1.0))
    supernet, units = ConformerSupernet(cfg), ConformerSupernet(cfg).num_units
    cases = [((supernet, LabelTokenizer()), {"gates": [1.0] * units},
              rf"gates must be a tensor of shape \({units},\) .*got list"),
             ((supernet, LabelTokenizer()), {"gates": torch.ones(units + 1)},
              rf"gates must be a tensor of shape \({units},\) .*got \({units + 1},\)"),
             ((supernet, LabelTokenizer()), {"gates": torch.ones(units), "head": 2},
              r"head must be an int in \[-2, 1\] .*got 2"),
             ((FrameLocalModel(), LabelTokenizer()), {"batch_frames": "100"},
              "batch_frames must be an int >= 1, got '100'"),
             ((FrameLocalModel(), None), {}, "tokenizer is None"),
             ((FrameLocalModel(), "tokenizer.model"), {},
              r"tokenizer must be a Tokenizer .*got str; load it with "
              r"orthoasr.data.Tokenizer\(path\)"),
             ((supernet, LabelTokenizer()), {},
              rf"gates are needed with a ConformerSupernet: .*\({units},\) unit gates "
              r"\(torch.ones\(model.num_units\): every unit on\)"),
             ((FrameLocalModel(), LabelTokenizer()), {"gates": torch.ones(units)},
              "gates are for a ConformerSupernet only; a FrameLocalModel has its units "
              "fixed: pass gates=None"),
             ((supernet, WideTokenizer()), {"gates": torch.ones(units)},
              r"tokenizer has 21 labels, more than the model's 20 outputs"),
             (("model.pt", LabelTokenizer()), {}, "model must be .*got str")]
    for args, options, expected in cases:
        with pytest.raises((TypeError, ValueError), match=expected):
            Recognizer(*args, **options)


def test_another_runs_smaller_tokenizer_is_refused(run, tmp_path):
    """A tokenizer with no more labels than the model's outputs passed the label count, so
    another run's read this model's labels as other text, silently. A model loaded from a
    checkpoint or an export carries its own, which the Recognizer now compares."""
    trained = load_trained(run["checkpoint"])
    outputs = trained.model.cfg.vocab_size
    other = Tokenizer.train(["an other run", "with other words"], vocab_size=outputs - 2)
    assert other.vocab_size <= outputs
    sub = extract_subnet(trained.model, torch.ones(trained.model.num_units))
    sub.save(tmp_path / "sub.pt", tokenizer=trained.tokenizer_bytes)
    all_on = {"gates": torch.ones(trained.model.num_units)}
    for model, options in ((trained.model, all_on), (load_subnet(tmp_path / "sub.pt"), {})):
        with pytest.raises(ValueError, match="tokenizer is not the one this model was saved "
                                             "with"):
            Recognizer(model, other, **options)
        Recognizer(model, Tokenizer.from_bytes(trained.tokenizer_bytes), **options)  # its own
    # a model built here has nothing to compare with
    Recognizer(ConformerSupernet(trained.model.cfg), other, **all_on)


def test_a_subnet_extracted_from_a_checkpoint_saves_its_tokenizer(run, tmp_path):
    """extract_subnet keeps the loaded supernet's tokenizer, so `sub.save(path)` with no
    tokenizer argument writes an export that from_subnet reads (it was refused as saved
    without its tokenizer)."""
    trained = load_trained(run["checkpoint"])
    sub = extract_subnet(trained.model, torch.ones(trained.model.num_units))
    assert sub.tokenizer_bytes == trained.tokenizer_bytes
    recognizer = Recognizer.from_subnet(sub.save(tmp_path / "sub.pt"))
    assert recognizer.tokenizer.to_bytes() == trained.tokenizer_bytes


class EncoderOutputs:
    """Stands in for a Recognizer's encoder: calls it and keeps the log-probs (B, T', V) and
    output lengths (B,) of each batch."""

    def __init__(self, encoder):
        self.encoder, self.outputs = encoder, []

    def __call__(self, x, lengths):
        log_probs = self.encoder(x, lengths)
        self.outputs.append((log_probs, lengths))
        return log_probs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_subnet_decodes_in_its_dtype(run, tmp_path, capsys, dtype, device,
                                                      reference_backend):
    """An export cast with `sub.half()` (or to bfloat16) and saved decodes in that dtype,
    through Recognizer.from_subnet and `transcribe --subnet` (load_subnet gave it back
    float32). On a GPU its run's bf16 autocast computed a float16 subnet in bfloat16, 3
    mantissa bits short; `--fp32` (bf16=False) decoded it in its dtype, now in float32.
    Its log-probs against the float32 subnet's in float64: the flash-attention rule, at most
    2x the error of the same subnet called alone by PyTorch plus one unit of the dtype (the
    recognizer's batches, padding and graphs add no more), and that error under 32 units
    (measured on the CPU: 10, in float16 and in bfloat16; a badly cast weight or an overflow
    costs order 1). Not the texts: this barely trained model's best two labels are 3e-4
    apart on some frames, where bf16's rounding picks the other."""
    path, half_path = tmp_path / "sub.pt", tmp_path / "half.pt"
    cli_main(["export", "--checkpoint", str(run["checkpoint"]), "--budget", "0.4",
              "--out", str(path)])
    capsys.readouterr()
    load_subnet(path).to(dtype).save(half_path)
    assert load_subnet(half_path).trained_in_bf16           # its run's autocast: not used
    recognizer = Recognizer.from_subnet(half_path, device, silence_db=None)
    assert not recognizer.bf16
    assert {p.dtype for p in recognizer.model.parameters()} == {dtype}
    computed = []
    recognizer.model.head.register_forward_hook(lambda _m, _i, out: computed.append(out.dtype))
    recognizer.encoder = EncoderOutputs(recognizer.encoder)
    reference = load_subnet(path, device).double()
    alone = load_subnet(half_path, device)
    errors = {"recognizer": 0.0, "alone": 0.0}
    texts = []
    for clip in run["paths"]:               # a clip a call: one batch of one
        texts += recognizer.transcribe([clip])
        got, out_lengths = recognizer.encoder.outputs[-1]
        wave = load_audio(clip).to(device)
        feats, lengths = recognizer.logmel(wave[None], torch.tensor([len(wave)], device=device))
        expected, expected_lengths = reference(feats.double(), lengths)
        assert out_lengths.tolist() == expected_lengths.tolist()
        frames = slice(0, int(expected_lengths[0]))
        for name, log_probs in (("recognizer", got), ("alone", alone(feats.to(dtype), lengths)[0])):
            error = (log_probs[0, frames].double() - expected[0, frames]).abs().max().item()
            errors[name] = max(errors[name], error)
    assert computed and set(computed) == {dtype}
    eps = torch.finfo(dtype).eps
    assert errors["recognizer"] <= 2 * errors["alone"] + eps, errors
    assert errors["alone"] <= 32 * eps, errors
    assert all(texts)
    code, lines, _ = cli(capsys, "--subnet", str(half_path), "--device", device,
                         "--silence-db", "off", *run["paths"])
    assert code == 0 and lines == [f"{p}\t{t}" for p, t in zip(run["paths"], texts)]
    # --fp32 (bf16=False): float32, from the half-precision weights
    in_float32 = Recognizer.from_subnet(half_path, device, silence_db=None, bf16=False)
    assert {p.dtype for p in in_float32.model.parameters()} == {torch.float32}
    expected = in_float32.transcribe(run["paths"])
    code, lines, _ = cli(capsys, "--subnet", str(half_path), "--device", device,
                         "--silence-db", "off", "--fp32", *run["paths"])
    assert code == 0 and lines == [f"{p}\t{t}" for p, t in zip(run["paths"], expected)]
