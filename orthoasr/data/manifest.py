"""Manifests: JSON-lines files and LibriSpeech-layout directories -> lists of records.

A record is a dict with `audio_filepath` (absolute), `duration` (seconds), `text`
(normalised: lower case, words separated by single spaces) and `speaker` when known.
In a JSONL manifest a relative `audio_filepath` is relative to the manifest's folder.

Bad input (missing or unreadable audio, empty transcript, non-UTF-8 line, bad JSON, duration
mismatch, unsupported format, one audio file listed with two transcripts) raises
ManifestError naming the file and line; with `skip_bad=True` such records are dropped
instead, counted in `records.skipped` and reported by a warning on the `orthoasr.data`
logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import unicodedata
from pathlib import Path

from .audio import AUDIO_EXTENSIONS, AudioError, audio_info

log = logging.getLogger("orthoasr.data")


class ManifestError(ValueError):
    """A bad record: `file` and `line` say where it is."""

    def __init__(self, file: str | os.PathLike, line: int, reason: str):
        self.file, self.line, self.reason = os.fspath(file), line, reason
        super().__init__(f"{self.file}:{line}: {reason}")


class Records(list):
    """A list of records; `skipped` holds the messages of the records left out."""

    def __init__(self, items=(), skipped=None):
        super().__init__(items)
        self.skipped: list[str] = list(skipped or [])


_NOT_WORD = re.compile(r"[^\w']+")


def normalize_text(text: str) -> str:
    """Lower case; anything but letters, digits and apostrophes becomes a word break."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    words = (w.strip("'") for w in _NOT_WORD.sub(" ", text).replace("_", " ").split())
    return " ".join(w for w in words if w)


def load_manifest(path: str | os.PathLike, skip_bad: bool = False, check_audio: bool = True,
                  normalize: bool = True, duration_tolerance: float = 0.1) -> Records:
    """Read a JSONL manifest or a LibriSpeech-layout directory.

    check_audio: open each audio header (file exists, format supported, duration agrees with
    the manifest within `duration_tolerance` seconds); the record's duration is then the
    header's. Without, it is the manifest's (or the header's where the manifest has none).
    LibriSpeech directories always read the headers, which give the durations.
    """
    path = Path(path)
    if path.is_dir():
        records, skipped = _load_librispeech(path, skip_bad, normalize)
    elif path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
        raise ValueError(f"{path} is an audio file, not a manifest (a JSONL file of "
                         "audio_filepath, text and duration lines, or a LibriSpeech folder)")
    elif path.is_file():
        records, skipped = _load_jsonl(path, skip_bad, check_audio, normalize,
                                       duration_tolerance)
    else:
        raise FileNotFoundError(f"manifest not found: {path}")
    if skipped:
        log.warning("load_manifest: skipped %d bad record(s) of %d in %s; first: %s",
                    len(skipped), len(records) + len(skipped), path, skipped[0])
    return Records(records, skipped)


def _load_jsonl(path: Path, skip_bad: bool, check_audio: bool, normalize: bool,
                tolerance: float) -> tuple[list[dict], list[str]]:
    records, skipped = [], []
    first_seen: dict[str, tuple[int, str]] = {}   # audio -> (line, text) of the record kept
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = _jsonl_record(path, lineno, raw, check_audio, normalize, tolerance)
                line, text = first_seen.setdefault(record["audio_filepath"],
                                                   (lineno, record["text"]))
                if text != record["text"]:   # two labels for one audio: which is right?
                    raise ManifestError(path, lineno, f"{record['audio_filepath']} is listed "
                                        f"again with another transcript (first at line {line})")
                records.append(record)
            except ManifestError as err:
                if not skip_bad:
                    raise
                skipped.append(str(err))
    return records, skipped


def _jsonl_record(path: Path, lineno: int, raw: bytes, check_audio: bool, normalize: bool,
                  tolerance: float) -> dict:
    def bad(reason: str) -> ManifestError:
        return ManifestError(path, lineno, reason)

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise bad(f"line is not valid UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise bad(f"invalid JSON: {err.msg}") from None
    if not isinstance(entry, dict):
        raise bad("a manifest line must be a JSON object")
    for key in ("audio_filepath", "text"):
        if key not in entry:
            raise bad(f"missing field {key!r}")
    audio = entry["audio_filepath"]
    if not isinstance(audio, str) or not audio:
        raise bad(f"audio_filepath must be a non-empty string, got {audio!r}")
    audio_path = os.path.normpath(os.path.join(os.path.abspath(path.parent), audio))
    text = entry["text"]
    if not isinstance(text, str):
        raise bad(f"text must be a string, got {type(text).__name__}")
    if normalize:
        text = normalize_text(text)
    if not text.strip():
        raise bad(f"empty transcript for {audio_path}")
    duration = entry.get("duration")
    # JSON's NaN and Infinity parse to floats that pass `<= 0` and the mismatch check
    if duration is not None and (not isinstance(duration, (int, float))
                                 or not math.isfinite(duration) or duration <= 0):
        raise bad(f"duration must be a positive finite number, got {duration!r}")
    if os.path.splitext(audio_path)[1].lower() not in AUDIO_EXTENSIONS:
        raise bad(f"unsupported audio format {audio_path} (supported: "
                  f"{', '.join(AUDIO_EXTENSIONS)})")
    if check_audio or duration is None:
        try:
            actual = audio_info(audio_path).duration
        except AudioError as err:
            raise bad(str(err)) from None
        if duration is not None and abs(actual - duration) > tolerance:
            raise bad(f"duration mismatch for {audio_path}: manifest says {duration:.3f} s, "
                      f"the file holds {actual:.3f} s")
        # the header's, exact: batches padded to a length planned from a manifest's rounded
        # duration would not hold the audio that it understates
        duration = actual
    record = {"audio_filepath": audio_path, "duration": float(duration), "text": text}
    if entry.get("speaker") is not None:
        record["speaker"] = str(entry["speaker"])
    return record


def _load_librispeech(root: Path, skip_bad: bool, normalize: bool
                      ) -> tuple[list[dict], list[str]]:
    """`<root>/.../<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` with lines
    `<utt-id> <TRANSCRIPT>` and audio `<utt-id>.flac` (or .wav, .mp3, .ogg, .oga or .opus; either
    case) beside it. An utterance id may appear once in the whole tree."""
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"{root}: no *.trans.txt files (LibriSpeech layout expected)")
    records, skipped = [], []
    first_seen: dict[str, str] = {}     # utterance id -> "file:line" of the record kept
    for trans in transcripts:
        with open(trans, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = _librispeech_record(trans, lineno, raw, normalize)
                    utt_id = Path(record["audio_filepath"]).stem
                    if utt_id in first_seen:   # two labels for one audio: which is right?
                        raise ManifestError(trans, lineno, f"utterance {utt_id} is listed "
                                            f"again (first at {first_seen[utt_id]})")
                    first_seen[utt_id] = f"{trans}:{lineno}"
                    records.append(record)
                except ManifestError as err:
                    if not skip_bad:
                        raise
                    skipped.append(str(err))
    return records, skipped


def _librispeech_record(trans: Path, lineno: int, raw: bytes, normalize: bool) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(trans, lineno, f"line is not valid UTF-8 ({err.reason} at byte "
                                           f"{err.start})") from None
    parts = line.strip().split(maxsplit=1)
    utt_id = parts[0]
    text = parts[1] if len(parts) > 1 else ""
    if normalize:
        text = normalize_text(text)
    if not text.strip():
        raise ManifestError(trans, lineno, f"empty transcript for utterance {utt_id}")
    audio_path = next((trans.parent / (utt_id + ext)
                       for ext in AUDIO_EXTENSIONS + tuple(e.upper() for e in AUDIO_EXTENSIONS)
                       if (trans.parent / (utt_id + ext)).exists()),
                      trans.parent / (utt_id + ".flac"))
    try:
        duration = audio_info(audio_path).duration
    except AudioError as err:
        raise ManifestError(trans, lineno, str(err)) from None
    return {"audio_filepath": os.path.abspath(audio_path), "duration": duration, "text": text,
            "speaker": utt_id.split("-")[0]}


def write_manifest(path: str | os.PathLike, records: list[dict],
                   relative_to: str | os.PathLike | None = None) -> None:
    """Write records as JSON lines; paths are made relative to `relative_to` if given."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            record = dict(record)
            if relative_to is not None:
                record["audio_filepath"] = os.path.relpath(record["audio_filepath"],
                                                           relative_to)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
