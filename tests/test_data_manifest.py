import json
import logging
import os

import numpy as np
import pytest

from orthoasr.data import ManifestError, load_manifest, normalize_text, write_manifest, write_wav


def _wav(path, seconds, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, 0.1 * np.random.default_rng(0).standard_normal(int(rate * seconds)), rate)
    return path


def _jsonl(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
    return path


def test_normalize_text():
    assert normalize_text("  Hello, WORLD!  It's  fine.") == "hello world it's fine"
    assert normalize_text("Don\u2019t stop -- well-known 'quotes'") == \
        "don't stop well known quotes"
    assert normalize_text("...?!") == ""


def test_jsonl_relative_paths_duration_and_speaker(tmp_path):
    _wav(tmp_path / "audio" / "a.wav", 1.25)
    _wav(tmp_path / "audio" / "b.wav", 0.5, rate=8000)
    manifest = _jsonl(tmp_path / "m.jsonl", [
        {"audio_filepath": "audio/a.wav", "duration": 1.25, "text": "Hello There.", "speaker": 7},
        {"audio_filepath": str(tmp_path / "audio" / "b.wav"), "text": "second one"},
    ])
    records = load_manifest(manifest)
    assert len(records) == 2 and records.skipped == []
    assert records[0] == {"audio_filepath": os.path.abspath(tmp_path / "audio" / "a.wav"),
                          "duration": 1.25, "text": "hello there", "speaker": "7"}
    assert records[1]["duration"] == pytest.approx(0.5)       # filled in from the header
    assert "speaker" not in records[1]
    # write_manifest + load_manifest round trip with relative paths
    write_manifest(tmp_path / "out.jsonl", records, relative_to=tmp_path)
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["audio_filepath"] \
        == "audio/a.wav"
    assert load_manifest(tmp_path / "out.jsonl") == records


BAD_CASES = [
    ({"audio_filepath": "missing.wav", "duration": 1.0, "text": "x"},
     "missing.wav: audio file not found"),
    ({"audio_filepath": "good.wav", "duration": 1.0, "text": " ,. "}, "empty transcript"),
    (b'{"audio_filepath": "good.wav", "text": "caf\xe9"}\n', "not valid UTF-8"),
    ({"audio_filepath": "good.wav", "duration": 3.0, "text": "x"}, "duration mismatch"),
    ({"audio_filepath": "song.aac", "duration": 1.0, "text": "x"}, "unsupported audio format"),
    (b'{"audio_filepath": "good.wav", "text": }\n', "invalid JSON"),
    ({"audio_filepath": "good.wav", "duration": 1.0}, "missing field 'text'"),
    ({"audio_filepath": "junk.wav", "duration": 1.0, "text": "x"}, "not a RIFF/WAVE file"),
    (b'{"audio_filepath": "good.wav", "duration": NaN, "text": "x"}\n',
     "duration must be a positive finite number, got nan"),
    (b'{"audio_filepath": "good.wav", "duration": Infinity, "text": "x"}\n',
     "duration must be a positive finite number, got inf"),
    # two labels for one audio (the same line twice, as good's, is taken as written)
    ({"audio_filepath": "good.wav", "duration": 1.0, "text": "other"},
     "good.wav is listed again with another transcript (first at line 1)"),
]


@pytest.mark.parametrize("line,message", BAD_CASES)
def test_bad_record_names_file_and_line(tmp_path, line, message):
    _wav(tmp_path / "good.wav", 1.0)
    (tmp_path / "junk.wav").write_bytes(b"garbage")
    good = {"audio_filepath": "good.wav", "duration": 1.0, "text": "fine"}
    manifest = _jsonl(tmp_path / "m.jsonl", [good, line, good])
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest)
    assert err.value.line == 2 and err.value.file == str(manifest)
    assert str(err.value).startswith(f"{manifest}:2: ")
    assert message in str(err.value)


def test_skip_bad_counts_and_reports(tmp_path, caplog):
    _wav(tmp_path / "good.wav", 1.0)
    (tmp_path / "junk.wav").write_bytes(b"garbage")
    good = {"audio_filepath": "good.wav", "duration": 1.0, "text": "fine"}
    lines = [good] + [line for line, _ in BAD_CASES] + [good]
    manifest = _jsonl(tmp_path / "m.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="orthoasr.data"):
        records = load_manifest(manifest, skip_bad=True)
    assert len(records) == 2
    assert len(records.skipped) == len(BAD_CASES)
    assert [s.split(": ")[0] for s in records.skipped] == \
        [f"{manifest}:{i}" for i in range(2, 2 + len(BAD_CASES))]
    assert f"skipped {len(BAD_CASES)} bad record(s) of {len(lines)}" in caplog.text


def test_checked_audio_gives_the_header_duration(tmp_path):
    """A duration within the tolerance but 0.05 s short gives way to the header's, which the
    shape classes plan the padded lengths from."""
    _wav(tmp_path / "a.wav", 1.23)
    manifest = _jsonl(tmp_path / "m.jsonl",
                      [{"audio_filepath": "a.wav", "duration": 1.18, "text": "x"}])
    assert load_manifest(manifest)[0]["duration"] == 1.23
    assert load_manifest(manifest, check_audio=False)[0]["duration"] == 1.18


def test_check_audio_off_trusts_the_manifest(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl",
                      [{"audio_filepath": "not_there.wav", "duration": 2.0, "text": "x"}])
    assert load_manifest(manifest, check_audio=False)[0]["duration"] == 2.0
    nan = _jsonl(tmp_path / "nan.jsonl",
                 [b'{"audio_filepath": "not_there.wav", "duration": NaN, "text": "x"}\n'])
    with pytest.raises(ManifestError, match=r"nan.jsonl:1: duration .* got nan"):
        load_manifest(nan, check_audio=False)


def _librispeech(root, soundfile):
    """<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + flac files."""
    layout = {("19", "198"): ["NORTHANGER ABBEY", "IT WAS A DARK NIGHT"],
              ("26", "495"): ["HE SAID HELLO"]}
    expected = []
    for (spk, chap), texts in layout.items():
        folder = root / "train-clean-5" / spk / chap
        folder.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            utt = f"{spk}-{chap}-{i:04d}"
            seconds = 0.5 + 0.25 * i
            soundfile.write(folder / f"{utt}.flac",
                            0.1 * np.sin(np.arange(int(16000 * seconds)) / 7.0), 16000)
            lines.append(f"{utt} {text}")
            expected.append((os.path.abspath(folder / f"{utt}.flac"), seconds, text.lower(), spk))
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return expected


def test_librispeech_layout(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    expected = _librispeech(tmp_path, soundfile)
    records = load_manifest(tmp_path)
    got = sorted((r["audio_filepath"], r["duration"], r["text"], r["speaker"]) for r in records)
    assert got == sorted(expected)


def test_librispeech_bad_lines(tmp_path, caplog):
    soundfile = pytest.importorskip("soundfile")
    _librispeech(tmp_path, soundfile)
    trans = tmp_path / "train-clean-5" / "19" / "198" / "19-198.trans.txt"
    with open(trans, "ab") as f:
        f.write(b"19-198-0009 THIS AUDIO IS MISSING\n19-198-0000\n19-198-0001 BAD \xff BYTE\n")
    missing = rf"{trans}:3: .*19-198-0009.flac: audio file not found"
    with pytest.raises(ManifestError, match=missing):
        load_manifest(tmp_path)
    with caplog.at_level(logging.WARNING, logger="orthoasr.data"):
        records = load_manifest(tmp_path, skip_bad=True)
    assert len(records) == 3
    assert [s.split(": ")[0] for s in records.skipped] == [f"{trans}:{i}" for i in (3, 4, 5)]
    assert "empty transcript" in records.skipped[1] and "UTF-8" in records.skipped[2]
    assert "skipped 3 bad record(s)" in caplog.text


@pytest.mark.parametrize("where", ["same file", "other chapter"])
def test_librispeech_duplicate_id_is_refused(tmp_path, caplog, where):
    """One utterance id twice (two labels for one audio) names the second line and the
    first; skip_bad keeps the first."""
    soundfile = pytest.importorskip("soundfile")
    _librispeech(tmp_path, soundfile)
    first = tmp_path / "train-clean-5" / "19" / "198" / "19-198.trans.txt"
    trans = first if where == "same file" else \
        tmp_path / "train-clean-5" / "26" / "495" / "26-495.trans.txt"
    soundfile.write(trans.parent / "19-198-0001.flac", np.zeros(8000), 16000)
    with open(trans, "a") as f:
        f.write("19-198-0001 A CONFLICTING LABEL\n")
    line = len(trans.read_text().splitlines())
    with pytest.raises(ManifestError, match=rf"{trans}:{line}: utterance 19-198-0001 is "
                                            rf"listed again \(first at {first}:2\)"):
        load_manifest(tmp_path)
    with caplog.at_level(logging.WARNING, logger="orthoasr.data"):
        records = load_manifest(tmp_path, skip_bad=True)
    assert len(records) == 3 and len(records.skipped) == 1
    assert [r["text"] for r in records].count("it was a dark night") == 1


def test_librispeech_upper_case_extensions(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    _librispeech(tmp_path, soundfile)
    folder = tmp_path / "train-clean-5" / "26" / "495"
    (folder / "26-495-0000.flac").rename(folder / "26-495-0000.FLAC")
    _wav(folder / "26-495-0001.WAV", 0.5)
    with open(folder / "26-495.trans.txt", "a") as f:
        f.write("26-495-0001 IN UPPER CASE\n")
    paths = sorted(r["audio_filepath"] for r in load_manifest(tmp_path))
    assert paths[-2:] == [str(folder / "26-495-0000.FLAC"), str(folder / "26-495-0001.WAV")]


@pytest.mark.parametrize("name", ["clip.wav", "clip.FLAC"])
def test_an_audio_file_given_as_the_manifest_is_named_as_such(tmp_path, name):
    """`orthoasr eval --test clip.wav` said "clip.wav:1: line is not valid UTF-8 (invalid
    continuation byte at byte 5)"."""
    path = tmp_path / name
    write_wav(path, np.zeros(1600, np.float32), 16000)
    with pytest.raises(ValueError, match=rf"^{path} is an audio file, not a manifest \(a "
                                         r"JSONL file of audio_filepath, text and duration "
                                         r"lines, or a LibriSpeech folder\)$"):
        load_manifest(path)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="trans.txt"):
        load_manifest(tmp_path / "empty_dir")
