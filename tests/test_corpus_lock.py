"""A corpus that a run reads is never replaced under it: `orthoasr synth --overwrite`
deleted and rewrote the wav/ folder of a corpus that a training or eval run was reading,
and the run went on with other audio, silently (orthoasr/data/corpus_lock.py)."""

import errno
import hashlib
import os
import re
import subprocess
import sys

import pytest
from test_train import tiny_run, write_corpus

from orthoasr import evaluate as evaluate_module
from orthoasr.cli import main as cli_main
from orthoasr.data import load_manifest
from orthoasr.data.corpus_lock import (
    LOCK_NAME,
    CorpusInUse,
    corpus_read_lock,
    corpus_write_lock,
)
from orthoasr.data.synth import Preset, synthesize_corpus
from orthoasr.evaluate import evaluate, evaluate_subnet
from orthoasr.train import train
from orthoasr.trainer import Trainer

SMALL = Preset(utterances=(8, 3, 3), speakers=(3, 2, 2), max_words=7, noise_fraction=0.5)


def _digest(folder):
    """Every file of `folder` but the lock file, by its contents."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def _in_use(folder) -> str:
    return rf"corpus {re.escape(str(folder))} is in use: a run is reading it"


def _synth(folder, seed=1, **kwargs):
    return synthesize_corpus(folder, SMALL, seed=seed, workers=2, progress=False, **kwargs)


def test_training_and_eval_hold_their_corpus_against_synth_overwrite(tmp_path, monkeypatch):
    """synth --overwrite tried at each training step and at each split's scoring (eval of
    the checkpoint, of an exported subnet): refused, naming the folder, nothing touched;
    once the runs end it goes through."""
    corpus = write_corpus(tmp_path / "corpus", n=6)
    before = _digest(corpus)
    refused = []

    def overwrite():
        with pytest.raises(CorpusInUse, match=_in_use(corpus)):
            _synth(corpus, overwrite=True)
        refused.append(True)

    def step(trainer, *args, **kwargs):
        overwrite()
        return train_step(trainer, *args, **kwargs)

    def score(*args, **kwargs):
        overwrite()
        return add_error_rates(*args, **kwargs)

    train_step, add_error_rates = Trainer.train_step, evaluate_module.add_error_rates
    monkeypatch.setattr(Trainer, "train_step", step)
    train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1"), tmp_path / "run")
    assert len(refused) == 2
    monkeypatch.setattr(evaluate_module, "add_error_rates", score)
    evaluate(tmp_path / "run" / "checkpoint.pt")
    assert len(refused) == 2 + 2 * 3                      # dev and test, 3 subnets each
    sub = tmp_path / "sub.pt"
    cli_main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--subnet",
              "0", "--out", str(sub)])
    evaluate_subnet(sub, str(corpus / "dev.jsonl"))
    assert len(refused) == 2 + 2 * 3 + 1
    assert _digest(corpus) == before
    pytest.importorskip("espeakng_loader")
    assert _synth(corpus, overwrite=True)["utterances"] == 14     # the runs let go


def test_a_reader_in_another_process_keeps_synth_out_until_it_ends(tmp_path, capsys):
    pytest.importorskip("espeakng_loader")
    corpus = tmp_path / "c"
    _synth(corpus)
    # the lock is free as soon as synth returns (its forked workers held it too): `orthoasr
    # demo` synthesises, then trains in the same process
    with corpus_read_lock([corpus / "train.jsonl"]):
        pass
    before = _digest(corpus)
    code = ("import sys\nfrom orthoasr.data.corpus_lock import corpus_read_lock\n"
            "with corpus_read_lock([sys.argv[1]]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(corpus / "dev.jsonl")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CorpusInUse, match=_in_use(corpus)):
            _synth(corpus, seed=2, overwrite=True)
        with pytest.raises(SystemExit) as exit_:
            cli_main(["synth", "--out", str(corpus), "--overwrite"])
        assert exit_.value.code == 2
        assert f"orthoasr: error: corpus {corpus} is in use: a run is reading it" in \
            capsys.readouterr().err
        assert _digest(corpus) == before                  # the wav files untouched
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert _synth(corpus, seed=2, overwrite=True)["seed"] == 2
    assert _digest(corpus) != before
    records = load_manifest(corpus / "train.jsonl")       # the lock file is no corpus file
    assert not any(LOCK_NAME in r["audio_filepath"] for r in records)


def test_a_run_is_refused_while_synth_writes_its_corpus(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=2)
    with corpus_write_lock(corpus):
        with pytest.raises(CorpusInUse, match=rf"corpus {re.escape(str(corpus))} is being "
                                              "written by `orthoasr synth`"):
            with corpus_read_lock([corpus / "train.jsonl"]):
                pass
    with corpus_read_lock([corpus / "train.jsonl", corpus / "test.jsonl"]):
        with corpus_read_lock([corpus]):                  # readers share it
            assert load_manifest(corpus / "train.jsonl")


def test_a_lock_file_alone_is_no_corpus(tmp_path):
    """A folder where a run looked for a corpus holds only the lock file: synth fills it
    without --overwrite."""
    pytest.importorskip("espeakng_loader")
    folder = tmp_path / "new"
    folder.mkdir()
    with corpus_read_lock([folder / "train.jsonl"]):
        pass
    assert [p.name for p in folder.iterdir()] == [LOCK_NAME]
    assert _synth(folder)["utterances"] == 14


def test_a_read_only_corpus_is_read_and_never_replaced(tmp_path, monkeypatch):
    """The lock file cannot be created in a read-only corpus folder: reading goes on without
    it, and synth --overwrite, which must take it, is refused with nothing touched."""
    corpus = write_corpus(tmp_path / "corpus", n=2)
    before = _digest(corpus)
    if os.geteuid() == 0:          # root writes in a read-only folder: refuse as the OS would
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and os.path.dirname(path) == str(corpus):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", read_only_open)
    corpus.chmod(0o555)
    try:
        with corpus_read_lock([corpus / "train.jsonl", corpus / "dev.jsonl"]):
            assert len(load_manifest(corpus / "train.jsonl")) == 2
        with pytest.raises(OSError, match=rf"cannot lock {re.escape(str(corpus / LOCK_NAME))} "
                                          r"\(Permission denied\)"):
            _synth(corpus, overwrite=True)
    finally:
        corpus.chmod(0o755)
    assert not (corpus / LOCK_NAME).exists() and _digest(corpus) == before


def test_a_librispeech_folder_is_locked_and_still_read(tmp_path):
    """A LibriSpeech-layout folder (a manifest the train command takes) is its own corpus
    folder: the lock file inside it is not read as part of it."""
    soundfile = pytest.importorskip("soundfile")
    chapter = tmp_path / "libri" / "19" / "198"
    chapter.mkdir(parents=True)
    soundfile.write(chapter / "19-198-0000.flac", [0.1, -0.1] * 8000, 16000)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO THERE\n")
    with corpus_read_lock([tmp_path / "libri"]):
        assert (tmp_path / "libri" / LOCK_NAME).exists()
        assert [r["text"] for r in load_manifest(tmp_path / "libri")] == ["hello there"]
        with pytest.raises(CorpusInUse, match=_in_use(tmp_path / "libri")):
            with corpus_write_lock(tmp_path / "libri"):
                pass
