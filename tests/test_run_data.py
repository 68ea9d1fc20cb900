"""The training data of a run: what filter_records leaves out, and why it says so."""

import json
import wave

import numpy as np
import pytest
import torch
from test_train import tiny_run, write_corpus

from orthoasr.data import LogMel, load_manifest
from orthoasr.distributed import World
from orthoasr.run_config import load_run_config
from orthoasr.run_data import (
    TrainData,
    check_manifests,
    ctc_frames_needed,
    filter_records,
    make_tokenizer,
    output_frames,
)


def misaligned_corpus(root, every: int):
    """The random corpus with every `every`-th training text repeated 15 times (too long for
    its audio)."""
    corpus = write_corpus(root / "corpus")
    manifest = corpus / "train.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, entry in enumerate(lines):
        if i % every == 0:
            entry["text"] = " ".join([entry["text"]] * 15)
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in lines))
    return corpus


@pytest.mark.parametrize("samples", [639, 640, 641, 16000, 16159, 16160, 16161])
def test_output_frames_counts_as_logmel_and_the_frontend(samples):
    """output_frames(duration) is LogMel's frame count after the frontend's two poolings."""
    frames = LogMel().frame_lengths(torch.tensor([samples]))
    assert output_frames(samples / 16000) == int(frames // 2 // 2)


def test_ctc_frames_needed_counts_a_blank_between_repeats():
    assert ctc_frames_needed([]) == 0
    assert ctc_frames_needed([5]) == 1
    assert ctc_frames_needed([3, 4, 3]) == 3
    assert ctc_frames_needed([3, 3, 3, 4, 4]) == 8


def test_transcripts_too_long_for_their_audio_are_left_out_and_reported(tmp_path, capsys):
    """Unalignable utterances (their CTC loss is infinite, zeroed by zero_infinity) are
    dropped, counted and reported with the reason; the others are kept."""
    run = tiny_run(misaligned_corpus(tmp_path, every=3))
    tokenizer = make_tokenizer(run, tmp_path)
    records = load_manifest(run.train_manifest)
    kept = filter_records(records, run, tokenizer)
    assert len(kept) == 8
    assert all(len(r["text"].split()) < 15 for r in kept)
    out = capsys.readouterr().out
    assert "12 utterances, 8 kept" in out
    assert "4 utterance(s) whose transcript is longer than their audio allows" in out


def test_only_unalignable_transcripts_is_an_error(tmp_path):
    run = tiny_run(misaligned_corpus(tmp_path, every=1))
    with pytest.raises(ValueError, match="0 kept; skipped 12 utterance.s. whose transcript "
                                         "is longer than their audio allows.*nothing left"):
        TrainData(run, make_tokenizer(run, tmp_path))


def test_shape_classes_hold_audio_that_the_manifest_understates(tmp_path):
    """Manifest durations 0.05 s short (within load_manifest's tolerance) and lengths that the
    classes' 8-frame rounding does not absorb (8k + 3 frames): every batch of an epoch fits
    its shape class."""
    corpus = write_corpus(tmp_path / "corpus")
    rng = np.random.default_rng(1)
    lines = []
    for i, line in enumerate((corpus / "train.jsonl").read_text().splitlines()):
        entry = json.loads(line)
        samples = (8 * (5 + i) + 3) * 160
        with wave.open(entry["audio_filepath"], "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((rng.standard_normal(samples) * 2000).astype(np.int16).tobytes())
        lines.append(json.dumps({**entry, "duration": samples / 16000 - 0.05}) + "\n")
    (corpus / "train.jsonl").write_text("".join(lines))
    run = tiny_run(corpus, "shape_classes=2")
    data = TrainData(run, make_tokenizer(run, tmp_path))
    plan = data.epoch_batches(0)
    batches = data.batches(0, 0)
    for _ in plan:
        waves, wave_lengths, _, _ = next(batches)[2]
        assert int(wave_lengths.max()) <= waves.shape[1]
    batches.close()


@pytest.mark.parametrize("ranks, buckets", [(2, 1), (1, 2)])
def test_an_epoch_too_small_for_a_step_names_max_frames_and_the_ranks(tmp_path, ranks,
                                                                        buckets):
    """12 short utterances make one batch of max_frames=20000: too few for two ranks (the
    message blamed buckets_per_step, which torchrun users had left at 1) or two buckets."""
    run = tiny_run(write_corpus(tmp_path / "corpus"), "max_frames=20000",
                   f"buckets_per_step={buckets}")
    data = TrainData(run, make_tokenizer(run, tmp_path), world=World(0, ranks))
    with pytest.raises(ValueError, match=rf"train.jsonl: epoch 0 makes fewer batches of "
                                         rf"max_frames=20000 than one step takes, {ranks} "
                                         rf"rank\(s\) x buckets_per_step={buckets}; lower"):
        next(data.batches(0, 0))


def test_transcripts_with_characters_the_tokenizer_lacks_are_left_out_and_reported(
        tmp_path, capsys):
    """A resume on a changed manifest keeps the run's tokenizer: characters it was not
    trained on encode to its unknown piece, which those utterances trained the model to
    output, silently. They are dropped and counted with the other filters."""
    run = tiny_run(write_corpus(tmp_path / "corpus"))
    tokenizer = make_tokenizer(run, tmp_path)
    records = load_manifest(run.train_manifest)
    records[5]["text"] += " café 42"
    kept = filter_records(records, run, tokenizer)
    assert len(kept) == 11 and records[5] not in kept
    assert ("12 utterances, 11 kept; skipped 1 whose transcript holds characters that the "
            f"run's tokenizer has no piece for, e.g. '24acé' in {records[5]['audio_filepath']}"
            in capsys.readouterr().out)


def test_a_missing_synthetic_corpus_names_the_command_that_makes_it(tmp_path, monkeypatch):
    """`orthoasr train` before `orthoasr synth` (the default config is configs/tiny.yaml)
    said only "set train_manifest=PATH", as if the config's path were the mistake."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train_manifest data/synth-tiny/train.jsonl "
                                                r"not found \(`orthoasr synth --preset tiny` "
                                                r"makes that corpus, or set train_manifest="):
        check_manifests(load_run_config("tiny"))
    with pytest.raises(FileNotFoundError, match=r"`orthoasr synth --preset demo --out "
                                                r"elsewhere/synth-demo` makes that corpus"):
        check_manifests(load_run_config("tiny", ["train_manifest=elsewhere/synth-demo/"
                                                 "train.jsonl"]))
    with pytest.raises(FileNotFoundError, match=r"corpus/train.jsonl not found \(set "
                                                r"train_manifest=PATH\)"):
        check_manifests(load_run_config("tiny", ["train_manifest=corpus/train.jsonl"]))
