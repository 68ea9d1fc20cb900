"""`Recognizer.transcribe_iter` and `orthoasr transcribe` as streams: the texts whatever the
grouping, items pulled only as they are needed and dropped once decoded, and the command's
lines printed (and its unreadable files reported) before later files are read."""

import gc
import sys
import weakref

import numpy as np
import pytest
import torch
from test_train import level_swings
from test_transcribe import FrameLocalModel, LabelTokenizer

import orthoasr.transcribe
from orthoasr import Recognizer
from orthoasr.cli import main as cli_main
from orthoasr.recognizer import GROUP_SECONDS

soundfile = pytest.importorskip("soundfile")
RATE = 16000


def stand_in(**options) -> Recognizer:
    """A recognizer with the stand-in model: labels of one output frame each, so texts show
    any item, segment or piece out of place; clips over 1.4 s are decoded in pieces."""
    return Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=1.0,
                      context_seconds=0.2, batch_frames=700, **options)


def mixed_items(folder) -> list:
    """Tensors, arrays and files (16 kHz mono, 8 kHz stereo) of 10 ms to 9 s: noise, some of
    it with silences (split into segments), some long enough for pieces, one under 40 ms."""
    noise = np.random.default_rng(0)
    clips = [noise.standard_normal(int(RATE * s)).astype(np.float32) * 0.1
             * level_swings(int(RATE * s)) for s in (2.3, 0.01, 0.5, 4.0, 1.2, 0.7)]
    gap = np.zeros(RATE // 2, np.float32)
    with_silences = np.concatenate([gap, clips[3], gap, clips[4], gap, clips[0]])   # 9 s
    mono, stereo = str(folder / "mono.wav"), str(folder / "stereo.wav")
    soundfile.write(mono, clips[4], RATE, subtype="FLOAT")
    soundfile.write(stereo, np.stack([clips[0][::2]] * 2, axis=1), RATE // 2, subtype="FLOAT")
    return [torch.from_numpy(clips[0]), clips[1], mono, with_silences, clips[2], stereo,
            torch.from_numpy(clips[3]), clips[5]]


def test_texts_do_not_depend_on_the_grouping(tmp_path):
    items, rec = mixed_items(tmp_path), stand_in()
    alone = [rec.transcribe([item])[0] for item in items]
    assert sum(bool(text) for text in alone) == len(items) - 1      # the 10 ms clip: ""
    # 0 and 5 ms: each item alone (each is longer); 1-10 s: groups of 1-4 items; the
    # default: all in one group, as `transcribe` decodes them
    for group_seconds in (0, 0.005, 1.0, 4.0, 10.0, GROUP_SECONDS):
        assert list(rec.transcribe_iter(items, group_seconds)) == alone, group_seconds
    assert rec.transcribe(items) == alone


def test_items_are_pulled_as_needed_and_dropped_once_decoded():
    """Groups of 2 s: each text comes out as soon as its group reaches 2 s (or the items
    end), before the next item is pulled, and a decoded group's audio is freed."""
    seconds = [1.5, 0.5, 2.0, 0.7, 3.5, 0.3, 1.0, 2.2, 0.4, 1.1]
    noise = torch.Generator().manual_seed(0)
    pulled = []                                    # weak references to the items pulled

    def items():
        for s in seconds:
            wave = torch.randn(int(RATE * s), generator=noise) * torch.from_numpy(
                level_swings(int(RATE * s)))
            pulled.append(weakref.ref(wave))
            yield wave

    pulled_at_text, alive_at_text = [], []
    for _ in stand_in().transcribe_iter(items(), group_seconds=2.0):
        gc.collect()
        pulled_at_text.append(len(pulled))
        alive_at_text.append(sum(len(ref()) for ref in pulled if ref() is not None) / RATE)
    # groups: 1.5 + 0.5 | 2.0 | 0.7 + 3.5 | 0.3 + 1.0 + 2.2 | 0.4 + 1.1 (the end)
    assert pulled_at_text == [2, 2, 3, 5, 5, 8, 8, 8, 10, 10]
    # what is held while a group's texts come out: at most the item last pulled (which the
    # generator above still holds)
    assert alive_at_text == [seconds[n - 1] for n in pulled_at_text]


def test_bad_items_are_named_by_their_place_in_the_whole_stream():
    rec, wave = stand_in(), np.ones(RATE // 2, np.float32)
    poisoned = wave.copy()
    poisoned[7] = np.inf
    texts = rec.transcribe_iter([wave, wave, wave, poisoned, wave], group_seconds=0)
    assert next(texts) == rec.transcribe([wave])[0]             # decoded before item 3 is read
    with pytest.raises(ValueError, match="item 3 holds NaN or inf samples"):
        list(texts)
    # neither a path nor samples (they were torch's "Could not infer dtype of NoneType" and
    # "new(): invalid data type 'bytes'", naming no item)
    for index, item, kind in ((1, None, "NoneType"), (1, b"a.wav", "bytes"),
                              (1, [[0.1], [0.1, 0.2]], "list")):
        with pytest.raises(TypeError, match=rf"item {index} must be an audio file path or a "
                                            rf"1-D float waveform, got {kind}$"):
            rec.transcribe([wave, item])
    with pytest.raises(TypeError, match="wrap it in a list"):    # at the call, not at next()
        rec.transcribe_iter(torch.zeros(RATE))
    with pytest.raises(ValueError, match="group_seconds must be a number of seconds >= 0"):
        rec.transcribe_iter([wave], group_seconds=-1.0)


class Recorder:
    """A stand-in for sys.stdout or sys.stderr that logs each line written, in order (a
    transcript line by its path)."""

    def __init__(self, events: list, stream: str):
        self.events, self.stream = events, stream

    def write(self, text: str) -> int:
        if text.strip():
            self.events.append((self.stream, text.strip().split("\t")[0]))
        return len(text)

    def flush(self):
        pass


@pytest.fixture
def stand_in_cli(monkeypatch, tmp_path):
    """`orthoasr transcribe --checkpoint any ...` with the stand-in model (the command's
    options passed on to it), on four 0.5-1.2 s noise files; its audio reads logged in
    "events" as ("read", path)."""
    monkeypatch.setattr(Recognizer, "from_checkpoint", classmethod(
        lambda cls, path, budget, device, **options: Recognizer(
            FrameLocalModel(), LabelTokenizer(), **options)))
    noise = np.random.default_rng(1)
    files = []
    for i, s in enumerate((0.5, 1.2, 0.8, 1.0)):
        files.append(str(tmp_path / f"clip{i}.wav"))
        soundfile.write(files[-1], noise.standard_normal(int(RATE * s)) * 0.1
                        * level_swings(int(RATE * s)), RATE)
    events = []
    real_load = orthoasr.transcribe.load_checked_audio

    def load_checked_audio(path):
        events.append(("read", path))
        return real_load(path)

    monkeypatch.setattr(orthoasr.transcribe, "load_checked_audio", load_checked_audio)
    return {"files": files, "events": events,
            "run": lambda *argv: cli_main(["transcribe", "--checkpoint", "any", *argv])}


@pytest.mark.parametrize("group_seconds", ["0", None])
def test_cli_prints_each_line_before_reading_later_files(stand_in_cli, tmp_path, monkeypatch,
                                                         group_seconds):
    """With groups of one file each: read, print, read the next; a file that cannot be
    read (missing, or holding NaN) is reported in its place. With the default group (every
    file in one), all are read first and the unreadable ones still do not stop the rest."""
    good = stand_in_cli["files"][:3]
    missing, nan = str(tmp_path / "missing.wav"), str(tmp_path / "nan.wav")
    samples = soundfile.read(good[0], dtype="float32")[0]
    samples[100] = np.nan
    soundfile.write(nan, samples, RATE, subtype="FLOAT")
    files = [good[0], missing, good[1], nan, good[2]]
    events = stand_in_cli["events"]
    monkeypatch.setattr(sys, "stdout", Recorder(events, "out"))
    monkeypatch.setattr(sys, "stderr", Recorder(events, "err"))
    flags = [] if group_seconds is None else ["--group-seconds", group_seconds]
    with pytest.raises(SystemExit) as exit:
        stand_in_cli["run"](*flags, *files)
    assert exit.value.code == 1
    said = [("out", path) if path in good else
            ("err", f"orthoasr: cannot read {path}: " + ("audio file not found"
                                                        if path == missing else
                                                        "holds NaN or inf samples"))
            for path in files]
    count = ("err", "orthoasr: 2 of 5 file(s) could not be transcribed")
    if group_seconds == "0":
        assert events == [e for path, line in zip(files, said) for e in (("read", path), line)
                          ] + [count]
    else:
        assert events == [("read", path) for path in files] + said + [count]


@pytest.mark.parametrize("group_seconds", ["0", "1.5", "3"])
def test_cli_prints_the_texts_of_any_grouping(stand_in_cli, capsys, group_seconds):
    files = stand_in_cli["files"]
    expected = Recognizer(FrameLocalModel(), LabelTokenizer()).transcribe(files)
    stand_in_cli["run"]("--group-seconds", group_seconds, *files)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{p}\t{t}" for p, t in zip(files, expected)]
    assert stand_in_cli["events"] == [("read", path) for path in files]


def test_cli_refuses_a_negative_group(stand_in_cli, capsys):
    with pytest.raises(SystemExit) as exit:
        stand_in_cli["run"]("--group-seconds", "-1", *stand_in_cli["files"])
    assert exit.value.code == 2
    assert "argument --group-seconds: expected a finite number >= 0, got '-1'" in \
        capsys.readouterr().err


class PathLines:
    """Standard input holding `paths`, one a line, its reads logged in `events` as
    ("stdin", path)."""

    def __init__(self, paths, events):
        self.lines, self.events = [f"{p}\n" for p in paths], events

    def __iter__(self):
        for line in self.lines:
            self.events.append(("stdin", line.strip()))
            yield line


def test_cli_reads_paths_from_stdin_as_they_are_needed(stand_in_cli, tmp_path, monkeypatch,
                                                       capsys):
    """`-` among the files: the paths on standard input, in its place, each taken when the
    recognizer wants its file (groups of 0 s: take, read, print); blank lines skipped, an
    unreadable one reported and counted like any other."""
    first, *middle, last = stand_in_cli["files"]
    missing = str(tmp_path / "missing.wav")
    piped = [middle[0], "", missing, middle[1], "  "]
    events = stand_in_cli["events"]
    monkeypatch.setattr(sys, "stdin", PathLines(piped, events))
    with pytest.raises(SystemExit):
        stand_in_cli["run"]("--group-seconds", "0", first, "-", last)
    out, err = capsys.readouterr()
    files = [first, middle[0], middle[1], last]
    expected = Recognizer(FrameLocalModel(), LabelTokenizer()).transcribe(files)
    assert out.splitlines() == [f"{p}\t{t}" for p, t in zip(files, expected)]
    assert err.splitlines() == [f"orthoasr: cannot read {missing}: audio file not found",
                                "orthoasr: 1 of 5 file(s) could not be transcribed"]
    assert events == [("read", first), ("stdin", middle[0]), ("read", middle[0]),
                      ("stdin", ""), ("stdin", missing), ("read", missing),
                      ("stdin", middle[1]), ("read", middle[1]), ("stdin", ""),
                      ("read", last)]


def test_cli_refuses_two_stdins_before_loading_a_model(stand_in_cli, monkeypatch, capsys):
    monkeypatch.setattr(Recognizer, "from_checkpoint", None)        # loading would fail
    with pytest.raises(SystemExit) as exit:
        stand_in_cli["run"]("-", stand_in_cli["files"][0], "-")
    assert exit.value.code != 0
    assert "FILE - (the paths on standard input) can be given once, got it 2 times" in \
        capsys.readouterr().err
