"""Subtitles (orthoasr.subtitles): words grouped into cues at pauses and at the character and
duration limits, SubRip and WebVTT text to the character; `orthoasr transcribe --format
srt|vtt --output-dir` writing each file's subtitles before printing its line, and refusing
two files whose subtitles would share a name."""

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import test_transcribe_stream
from test_train import level_swings
from test_transcribe import FrameLocalModel, LabelTokenizer
from test_transcribe_stream import PathLines, Recorder

from orthoasr import Recognizer, Transcript, Word
from orthoasr.subtitles import Cue, cues, lines, srt, vtt

stand_in_cli = test_transcribe_stream.stand_in_cli   # the fixture, for the CLI tests here


def transcript(*words: Word) -> Transcript:
    return Transcript(" ".join(word.text for word in words), list(words))


def texts(found: list[Cue]) -> list[str]:
    return [cue.text for cue in found]


def test_a_pause_of_max_gap_or_more_starts_a_cue():
    words = transcript(Word("put", 0.0, 0.25), Word("the", 0.75, 1.0),      # gap 0.5
                       Word("red", 1.375, 1.5), Word("ball", 1.875, 2.0))   # gaps 0.375
    assert cues(words, max_gap=0.5) == [Cue(0.0, 0.25, "put"), Cue(0.75, 2.0, "the red ball")]
    assert cues(words, max_gap=0.625) == [Cue(0.0, 2.0, "put the red ball")]
    # the defaults: 0.4 s
    assert texts(cues(transcript(Word("a", 0.0, 0.25), Word("b", 0.625, 0.75),
                                 Word("c", 1.25, 1.5)))) == ["a b", "c"]


def test_a_cue_holds_at_most_max_lines_of_line_chars_characters():
    words = transcript(Word("aaaa", 0.0, 0.1), Word("bbbbb", 0.2, 0.3), Word("c", 0.4, 0.5),
                       Word("dddddd", 0.6, 0.7))
    assert texts(cues(words, line_chars=10, max_lines=1)) == ["aaaa bbbbb", "c dddddd"]
    assert texts(cues(words, line_chars=9, max_lines=1)) == ["aaaa", "bbbbb c", "dddddd"]
    assert texts(cues(words, line_chars=10)) == ["aaaa bbbbb\nc dddddd"]
    assert texts(cues(words, line_chars=9)) == ["aaaa\nbbbbb c", "dddddd"]
    # the defaults: two lines of 42; "word" 8 times with spaces between is 39, 9 times 44
    many = transcript(*(Word("word", i * 0.25, i * 0.25 + 0.125) for i in range(20)))
    eight = " ".join(["word"] * 8)
    assert texts(cues(many)) == [f"{eight}\n{eight}", "word word word word"]


def test_lines_are_evened_out():
    assert lines("aaa bbb ccc ddd eee".split(), 15) == ["aaa bbb", "ccc ddd eee"]   # not 15 + 3
    assert lines("aaa bbb ccc".split(), 15) == ["aaa bbb ccc"]
    assert lines(["a", "bbbbbbbbbbbbbbbbbbbb"], 15) == ["a", "bbbbbbbbbbbbbbbbbbbb"]
    assert lines("aaaaaaaaaa bb ccccccccc".split(), 12) == ["aaaaaaaaaa", "bb ccccccccc"]


def test_a_cue_lasts_at_most_max_seconds():
    words = transcript(Word("a", 0.0, 0.5), Word("b", 0.75, 2.0), Word("c", 2.25, 2.5),
                       Word("d", 2.75, 4.25))
    assert cues(words, max_seconds=2.0) == [Cue(0.0, 2.0, "a b"), Cue(2.25, 4.25, "c d")]
    assert texts(cues(words, max_seconds=1.875)) == ["a", "b c", "d"]
    # the defaults: 6 s
    long = transcript(*(Word("w", i * 0.5, i * 0.5 + 0.25) for i in range(13)))
    assert cues(long) == [Cue(0.0, 5.75, " ".join(["w"] * 12)), Cue(6.0, 6.25, "w")]


def test_a_word_beyond_the_limits_is_a_cue_of_its_own():
    words = transcript(Word("ab", 0.0, 0.1), Word("abcdefgh", 0.2, 0.3), Word("cd", 0.4, 0.5),
                       Word("slow", 0.6, 3.6), Word("ef", 3.7, 3.8))
    assert cues(words, line_chars=5, max_lines=1, max_seconds=2.0) == [
        Cue(0.0, 0.1, "ab"), Cue(0.2, 0.3, "abcdefgh"), Cue(0.4, 0.5, "cd"),
        Cue(0.6, 3.6, "slow"), Cue(3.7, 3.8, "ef")]


SPOKEN = transcript(Word("put", 0.52, 0.6), Word("the", 0.64, 0.72),
                    Word("ball", 1.9996, 59.9996),          # rounds up into the next second
                    Word("r&b", 3661.0004, 3661.0006),      # after an hour, to the ms
                    Word("<i>", 360000.5, 360000.54))       # past 99 hours


def test_srt_text():
    assert srt(cues(SPOKEN, max_seconds=60.0)) == (
        "1\n00:00:00,520 --> 00:00:00,720\nput the\n\n"
        "2\n00:00:02,000 --> 00:01:00,000\nball\n\n"
        "3\n01:01:01,000 --> 01:01:01,001\nr&b\n\n"
        "4\n100:00:00,500 --> 100:00:00,540\n<i>\n\n")


def test_vtt_text():
    assert vtt(cues(SPOKEN, max_seconds=60.0)) == (
        "WEBVTT\n\n"
        "00:00:00.520 --> 00:00:00.720\nput the\n\n"
        "00:00:02.000 --> 00:01:00.000\nball\n\n"
        "01:01:01.000 --> 01:01:01.001\nr&amp;b\n\n"
        "100:00:00.500 --> 100:00:00.540\n&lt;i&gt;\n\n")


def test_no_words_no_cues():
    assert cues(Transcript("", [])) == []
    assert srt([]) == ""
    assert vtt([]) == "WEBVTT\n\n"


@pytest.mark.parametrize("name, value", [
    ("line_chars", 0), ("line_chars", "42"), ("max_lines", -1), ("max_seconds", -1.0),
    ("max_seconds", math.nan), ("max_gap", 0.0), ("max_gap", True)])
def test_limits_must_be_positive_numbers(name, value):
    unit = {"line_chars": "characters", "max_lines": "lines"}.get(name, "seconds")
    message = f"{name} must be a number of {unit} > 0, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cues(SPOKEN, **{name: value})


class LinesWithFiles:
    """A stand-in for sys.stdout that logs each line written, and the files in `folder` at
    that moment, in `events` as ("out", line, [file names])."""

    def __init__(self, events: list, folder):
        self.events, self.folder = events, folder

    def write(self, text: str) -> int:
        if text.strip():
            names = sorted(path.name for path in self.folder.glob("*"))
            self.events.append(("out", text.strip(), names))
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("output_format, render", [("srt", srt), ("vtt", vtt)])
def test_cli_writes_each_files_subtitles_before_printing_its_line(
        stand_in_cli, tmp_path, monkeypatch, output_format, render):
    """Groups of one file: read it, write its subtitle file (no temporary file left), print
    its line; the files hold the subtitles of `Recognizer.transcribe(..., timestamps=True)`,
    and the folder is made, parents too."""
    long = tmp_path / "long.wav"                      # 2.5 s: two cues of the stand-in
    soundfile.write(long, np.random.default_rng(2).standard_normal(40000) * 0.1
                    * level_swings(40000), 16000)
    files, events = [*stand_in_cli["files"], str(long)], stand_in_cli["events"]
    folder = tmp_path / "subs" / "new"
    monkeypatch.setattr(sys, "stdout", LinesWithFiles(events, folder))
    stand_in_cli["run"]("--format", output_format, "--output-dir", str(folder),
                        "--group-seconds", "0", *files)
    names = [f"{Path(path).stem}.{output_format}" for path in files]
    assert events == [event for i, path in enumerate(files) for event in (
        ("read", path), ("out", f"{path}\t{folder / names[i]}", names[:i + 1]))]
    timed = Recognizer(FrameLocalModel(), LabelTokenizer()).transcribe(files, timestamps=True)
    assert sum(len(cues(t)) for t in timed) > len(files)          # some files have 2 cues
    assert [(folder / name).read_text() for name in names] == [render(cues(t)) for t in timed]


def test_cli_replaces_a_subtitle_file_already_in_the_folder(stand_in_cli, tmp_path, capsys):
    """A run again over the same folder updates its output (the chosen behaviour, as
    Whisper's command line): the file there is replaced whole, atomically, nothing else
    in the folder is touched."""
    folder = tmp_path / "subs"
    folder.mkdir()
    first = stand_in_cli["files"][0]
    (folder / f"{Path(first).stem}.srt").write_text("1\n00:00:00,000 --> 00:00:09,000\nold\n")
    (folder / "notes.txt").write_text("mine")
    stand_in_cli["run"]("--format", "srt", "--output-dir", str(folder), first)
    timed = Recognizer(FrameLocalModel(), LabelTokenizer()).transcribe([first], timestamps=True)
    assert (folder / f"{Path(first).stem}.srt").read_text() == srt(cues(timed[0]))
    assert sorted(p.name for p in folder.iterdir()) == ["clip0.srt", "notes.txt"]


def test_cli_refuses_a_piped_path_whose_subtitles_an_earlier_file_took(
        stand_in_cli, tmp_path, monkeypatch):
    """A path from standard input of a name already taken is not read: a line on stderr in
    its place, counted among the failures; the files after it are still transcribed."""
    first, second, third, last = stand_in_cli["files"]
    again = tmp_path / "again" / "clip0.flac"          # the name of `first` less its suffix
    again.parent.mkdir()
    soundfile.write(again, soundfile.read(second)[0], 16000)
    folder = tmp_path / "subs"
    events = stand_in_cli["events"]
    monkeypatch.setattr(sys, "stdin", PathLines([str(again), third], events))
    monkeypatch.setattr(sys, "stdout", Recorder(events, "out"))
    monkeypatch.setattr(sys, "stderr", Recorder(events, "err"))
    with pytest.raises(SystemExit) as exit:
        stand_in_cli["run"]("--format", "srt", "--output-dir", str(folder),
                            "--group-seconds", "0", first, "-", last)
    assert exit.value.code == 1
    assert events == [
        ("read", first), ("out", first), ("stdin", str(again)),
        ("err", f"orthoasr: cannot write the subtitles of {again}: {folder / 'clip0.srt'} is "
                f"for those of {first}, given before it with the same name less its suffix"),
        ("stdin", third), ("read", third), ("out", third), ("read", last), ("out", last),
        ("err", "orthoasr: 1 of 4 file(s) could not be transcribed")]
    assert sorted(path.name for path in folder.iterdir()) == ["clip0.srt", "clip2.srt",
                                                              "clip3.srt"]
    timed = Recognizer(FrameLocalModel(), LabelTokenizer()).transcribe([first],
                                                                      timestamps=True)
    assert (folder / "clip0.srt").read_text() == srt(cues(timed[0]))


def test_cli_refuses_files_of_one_name_before_loading_a_model(stand_in_cli, tmp_path,
                                                               monkeypatch, capsys):
    monkeypatch.setattr(Recognizer, "from_checkpoint", None)        # loading would fail
    first = stand_in_cli["files"][0]
    folder = tmp_path / "subs"
    for other in (str(tmp_path / "elsewhere" / "clip0.flac"), first):
        with pytest.raises(SystemExit) as exit:
            stand_in_cli["run"]("--format", "vtt", "--output-dir", str(folder), first, "-",
                                other)
        assert exit.value.code == 2
        assert capsys.readouterr().err == (
            f"orthoasr: error: cannot write the subtitles of {other}: {folder / 'clip0.vtt'} "
            f"is for those of {first}, given before it with the same name less its suffix\n")
    assert not folder.exists() and stand_in_cli["events"] == []


@pytest.mark.parametrize("flags, message", [
    (["--format", "srt"], "--format srt writes a subtitle file for each FILE: give the "
                          "folder for them with --output-dir"),
    (["--format", "json", "--output-dir", "subs"], "--output-dir is for the subtitle files "
     "of --format srt or vtt; --format json prints to standard output (got --output-dir "
     "subs)"),
    (["--output-dir", "subs"], "--format text prints to standard output")])
def test_cli_takes_an_output_dir_with_subtitles_only(stand_in_cli, tmp_path, monkeypatch,
                                                     capsys, flags, message):
    monkeypatch.setattr(Recognizer, "from_checkpoint", None)        # loading would fail
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        stand_in_cli["run"](*flags, *stand_in_cli["files"])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "subs").exists() and stand_in_cli["events"] == []


def test_cli_names_an_output_dir_that_is_a_file(stand_in_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Recognizer, "from_checkpoint", None)        # loading would fail
    (tmp_path / "subs").write_text("notes")
    with pytest.raises(SystemExit) as exit:
        stand_in_cli["run"]("--format", "srt", "--output-dir", str(tmp_path / "subs"),
                            *stand_in_cli["files"])
    assert exit.value.code == 2
    assert f"--output-dir {tmp_path / 'subs'} is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "subs").read_text() == "notes" and stand_in_cli["events"] == []
