import hashlib
import json
import re

import numpy as np
import pytest

from orthoasr.cli import main as cli_main
from orthoasr.data import load_manifest, normalize_text
from orthoasr.data.sentences import SentenceGenerator, comparative, gerund, past, plural
from orthoasr.data.synth import PRESETS, Job, Preset, plan_corpus, render, synthesize_corpus

pytest.importorskip("espeakng_loader")

SMALL = Preset(utterances=(8, 3, 3), speakers=(3, 2, 2), max_words=7, noise_fraction=0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The real tiny preset through the CLI, as a user runs it."""
    out = tmp_path_factory.mktemp("tiny")
    cli_main(["synth", "--out", str(out), "--preset", "tiny", "--seed", "3", "--workers", "2"])
    return out


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.wav"))}


def test_tiny_manifests_are_valid(tiny):
    summary = json.loads((tiny / "summary.json").read_text())
    counts = PRESETS["tiny"].utterances
    assert summary["failed"] == 0
    assert [summary["splits"][s]["utterances"] for s in ("train", "dev", "test")] == list(counts)
    assert 0.1 < summary["hours"] < 1.0 and summary["vocabulary"] > 1000
    total = 0.0
    for split in ("train", "dev", "test"):
        records = load_manifest(tiny / f"{split}.jsonl")          # checks every header
        assert len(records) == summary["splits"][split]["utterances"]
        for r in records:
            assert r["text"] and r["text"] == normalize_text(r["text"]) and r["speaker"]
            assert 0.3 < r["duration"] < 10.0
        total += sum(r["duration"] for r in records)
    assert total / 3600 == pytest.approx(summary["hours"], abs=1e-3)


def test_tiny_holds_out_voices_speakers_and_sentences(tiny):
    speakers = json.loads((tiny / "speakers.json").read_text())
    variants = {s: {x["variant"] for x in speakers if x["split"] == s}
                for s in ("train", "dev", "test")}
    assert variants["train"] and variants["dev"] and variants["test"]
    assert not variants["train"] & variants["dev"] and not variants["train"] & variants["test"]
    assert not variants["dev"] & variants["test"]
    texts, spk = {}, {}
    for split in ("train", "dev", "test"):
        lines = [json.loads(x) for x in (tiny / f"{split}.jsonl").read_text().splitlines()]
        texts[split] = {x["text"] for x in lines}
        spk[split] = {x["speaker"] for x in lines}
        assert len(texts[split]) == len(lines)                  # no sentence said twice
    for held in ("dev", "test"):
        assert not texts[held] & texts["train"] and not spk[held] & spk["train"]
    assert not texts["dev"] & texts["test"]


def test_audio_is_speech_like(tiny):
    from orthoasr.data import load_audio
    record = load_manifest(tiny / "train.jsonl")[0]
    wave = load_audio(record["audio_filepath"]).numpy()
    assert len(wave) == pytest.approx(record["duration"] * 16000, abs=1)
    assert 0.1 < np.abs(wave).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
    speech_band = spectrum[(freqs > 80) & (freqs < 4000)].sum() / spectrum.sum()
    assert speech_band > 0.5                                   # energy where voices are


def test_deterministic_for_any_worker_count(tmp_path):
    one = synthesize_corpus(tmp_path / "a", SMALL, seed=11, workers=1, progress=False)
    two = synthesize_corpus(tmp_path / "b", SMALL, seed=11, workers=2, progress=False)
    digest = _digest(tmp_path / "a")
    assert digest == _digest(tmp_path / "b") and len(digest) == 14
    for split in ("train", "dev", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_text() == \
            (tmp_path / "b" / f"{split}.jsonl").read_text()
    assert one["hours"] == two["hours"]
    other = synthesize_corpus(tmp_path / "c", SMALL, seed=12, workers=2, progress=False)
    assert (tmp_path / "c" / "train.jsonl").read_text() != \
        (tmp_path / "a" / "train.jsonl").read_text()
    assert other["utterances"] == 14


def test_unspeakable_sentences_are_reported_not_written(tmp_path):
    summary = synthesize_corpus(tmp_path, SMALL, seed=0, workers=2, progress=False,
                                sentences=["... ?!", "Hello there, my old friend."])
    assert summary["failed"] == 1
    assert summary["failures"][0]["text"] == "... ?!"
    assert summary["utterances"] == 14                         # replaced by another sentence
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert train[0]["text"] == "hello there my old friend"
    assert all((tmp_path / r["audio_filepath"]).stat().st_size > 1000 for r in train)


class _SilentEngine:
    sample_rate = 22050

    def synthesize(self, *args, **kwargs):
        return np.zeros(3000, np.int16)


def test_silent_render_is_an_error():
    job = Job(0, "train", "u", "hello", "en-us+m1", 175, 50, 50, 0, 0.5, None, "/nonexistent")
    with pytest.raises(ValueError, match="no speech"):
        render(_SilentEngine(), job, 0)


def test_sentence_source_vocabulary_and_base_plan(tmp_path):
    generator = SentenceGenerator(seed=0)
    words = {w for _ in range(20000) for w in normalize_text(generator.sentence()).split()}
    assert len(words) >= 5000
    _, jobs, rejected = plan_corpus(tmp_path, PRESETS["base"], seed=0)
    assert not rejected and len(jobs) == sum(PRESETS["base"].utterances)
    base_words = {w for j in jobs for w in normalize_text(j.text).split()}
    assert len(base_words) >= 5000
    by_split = {s: {normalize_text(j.text) for j in jobs if j.split == s}
                for s in ("train", "dev", "test")}
    assert not by_split["train"] & by_split["dev"] and not by_split["train"] & by_split["test"]


def test_inflection_rules():
    assert [plural(w) for w in ("box", "city", "day", "wolf", "child", "key")] == \
        ["boxes", "cities", "days", "wolves", "children", "keys"]
    assert [past(w) for w in ("stop", "bake", "carry", "play", "take", "panic")] == \
        ["stopped", "baked", "carried", "played", "took", "panicked"]
    assert [gerund(w) for w in ("stop", "bake", "tie", "see", "panic")] == \
        ["stopping", "baking", "tying", "seeing", "panicking"]
    assert [comparative(w) for w in ("big", "late", "happy", "strong")] == \
        ["bigger", "later", "happier", "stronger"]
    sentences = [SentenceGenerator(seed=9).sentence() for _ in range(1)]
    assert re.match(r"^[A-Z]", sentences[0])


def test_synth_refuses_an_existing_corpus(tiny, capsys):
    """`orthoasr synth` into a folder that holds a corpus: an error naming --out, no file
    touched."""
    before = _digest(tiny)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["synth", "--out", str(tiny), "--preset", "tiny", "--seed", "5"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"--out {tiny} already holds a corpus (train.jsonl, dev.jsonl, test.jsonl, wav)" \
        in error and "add --overwrite" in error
    assert _digest(tiny) == before


def test_overwrite_replaces_a_corpus_and_an_interrupted_one_is_refused(tmp_path):
    interrupted = tmp_path / "interrupted"
    (interrupted / "wav").mkdir(parents=True)                # no manifests yet
    with pytest.raises(FileExistsError, match=r"already holds a corpus \(wav\)"):
        synthesize_corpus(interrupted, SMALL, seed=1, workers=2, progress=False)
    synthesize_corpus(tmp_path / "c", SMALL, seed=1, workers=2, progress=False)
    stray = tmp_path / "c" / "wav" / "train" / "old.wav"
    stray.write_bytes(b"")
    first = _digest(tmp_path / "c")
    with pytest.raises(FileExistsError, match="add --overwrite"):
        synthesize_corpus(tmp_path / "c", SMALL, seed=2, workers=2, progress=False)
    assert _digest(tmp_path / "c") == first
    summary = synthesize_corpus(tmp_path / "c", SMALL, seed=2, workers=2, progress=False,
                                overwrite=True)
    assert summary["seed"] == 2 and not stray.exists()
    assert len(_digest(tmp_path / "c")) == 14                # the new corpus, nothing else
    load_manifest(tmp_path / "c" / "train.jsonl")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        synthesize_corpus(tmp_path, "huge")
    with pytest.raises(ValueError, match="workers"):
        synthesize_corpus(tmp_path, SMALL, workers=0)
    # a negative seed lost every utterance that draws noise (numpy takes no negative seed):
    # half the tiny corpus, with exit status 0
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        synthesize_corpus(tmp_path / "negative", SMALL, seed=-1, workers=1, progress=False)
    with pytest.raises(SystemExit):
        cli_main(["synth", "--out", str(tmp_path / "negative"), "--seed", "-1"])
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(ValueError, match=f"--out {tmp_path / 'a.wav'} is a file, not a folder"):
        synthesize_corpus(tmp_path / "a.wav", SMALL, workers=1, progress=False)
    assert not (tmp_path / "negative").exists()
