"""`orthoasr transcribe`: greedy transcripts of audio files by one subnet.

    orthoasr transcribe --checkpoint runs/demo/checkpoint.pt --budget 0.4 a.wav b.flac
    orthoasr transcribe --subnet runs/demo/sub.pt --format json a.wav
    find calls -name '*.mp3' | orthoasr transcribe --subnet runs/demo/sub.pt -

Prints one line per file, `<path>\\t<text>` (`--format json`: a JSON object, `{"path",
"text", "words": [{"word", "start", "end"}, ...]}`, times in seconds from the file's start
rounded to ms, orthoasr.timestamps), in the order given, each as soon as it and the files
before it are transcribed: files are read one at a time as the recognizer needs them and
decoded in groups of about `--group-seconds` of audio, so a long list is never in memory at
once and an interrupted run keeps the lines it printed. Each recording's silent stretches
are cut out first and its voiced segments decoded (`--silence-db`; `off` decodes each file
whole). A file that cannot be read (missing, empty, corrupt, not audio, or holding NaN
samples) gets a line on stderr naming it and the reason, in its place among the others; the
other files are still transcribed, and the exit status is 1. A FILE of `-` stands for the
paths on standard input, one a line, read as they are needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TextIO

import torch

from .data import AudioError, load_audio
from .recognizer import CHUNK_SECONDS, CONTEXT_SECONDS, GROUP_SECONDS, SILENCE_DB, Recognizer
from .silence import MIN_GAP_SECONDS
from .timestamps import Transcript

READ_FAILURE = 1


def read_file(path: str) -> torch.Tensor:
    """path's 16 kHz mono waveform (S,); AudioError if it holds NaN or inf, which would
    stop the recognizer (and so the files after it)."""
    wave = load_audio(path)
    if not bool(torch.isfinite(wave).all()):
        raise AudioError("holds NaN or inf samples")
    return wave


def file_paths(files: list[str], stdin: TextIO) -> Iterator[str]:
    """The FILE arguments in order, `-` standing for the paths on `stdin`, one a line, each
    read when it is needed (blank lines are skipped; a file named - is ./-)."""
    if files.count("-") > 1:
        raise ValueError("FILE - (the paths on standard input) can be given once, got it "
                         f"{files.count('-')} times")

    def paths() -> Iterator[str]:
        for name in files:
            if name != "-":
                yield name
                continue
            for line in stdin:
                path = line.rstrip("\r\n")
                if path.strip():
                    yield path
    return paths()


def print_transcripts(recognizer: Recognizer, paths: Iterable[str],
                      group_seconds: float = GROUP_SECONDS, output_format: str = "text"
                      ) -> tuple[int, int]:
    """Print `<path>\\t<text>` (output_format "json": `json_line`) for each file of
    `paths`, and a stderr line for each file that cannot be read, in the order of `paths`,
    each as soon as the files before it are printed; paths are taken and files read one at
    a time, as `recognizer.transcribe_iter` pulls them. Returns (files, how many of them
    could not be read)."""
    if output_format not in ("text", "json"):
        raise ValueError(f"output_format must be 'text' or 'json', got {output_format!r}")
    # the files read but not yet printed, in order: (path, None or why it cannot be read)
    waiting: deque[tuple[str, str | None]] = deque()
    files = unreadable = 0

    def print_failures():
        """The unreadable files at the head of `waiting`: every file before them is out."""
        while waiting and waiting[0][1] is not None:
            path, reason = waiting.popleft()
            print(f"orthoasr: cannot read {path}: {reason}", file=sys.stderr, flush=True)

    def readable_waves() -> Iterator[torch.Tensor]:
        nonlocal files, unreadable
        for path in paths:
            files += 1
            try:
                wave = read_file(path)
            except (AudioError, OSError, RuntimeError) as err:
                reason = " ".join(str(err).split()) or type(err).__name__
                waiting.append((path, reason.removeprefix(f"{path}: ")))  # AudioError names it
                unreadable += 1
                print_failures()
                continue
            waiting.append((path, None))
            yield wave

    json_output = output_format == "json"
    for transcript in recognizer.transcribe_iter(readable_waves(), group_seconds,
                                                 timestamps=json_output):
        path = waiting.popleft()[0]
        print(json_line(path, transcript) if json_output else f"{path}\t{transcript}",
              flush=True)
        print_failures()
    return files, unreadable


def json_line(path: str, transcript: Transcript) -> str:
    """One file's line of `--format json`: {"path", "text", "words": [{"word", "start",
    "end"}, ...]}, times in seconds rounded to ms."""
    words = [{"word": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}
             for word in transcript.words]
    return json.dumps({"path": path, "text": transcript.text, "words": words},
                      ensure_ascii=False)


def silence_db(text: str) -> float | None:
    """--silence-db's value: a number of dB, or off / 0 (None: no splitting)."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of dB or 'off', got {text!r}"
                                         ) from None
    return None if value == 0 else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training checkpoint.pt (a subnet of it: --budget)")
    which.add_argument("--subnet", help="exported subnet (`orthoasr export --out`)")
    parser.add_argument("--budget", type=float, default=None,
                        help="with --checkpoint: the subnet of this budget (default: largest)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS,
                        help="decode longer recordings in pieces of this length (default "
                             f"{CHUNK_SECONDS:g}; 0: each whole, memory growing with the "
                             "square of its length)")
    parser.add_argument("--context-seconds", type=float, default=CONTEXT_SECONDS,
                        help="audio each piece also sees on either side (default "
                             f"{CONTEXT_SECONDS:g})")
    parser.add_argument("--silence-db", type=silence_db, default=SILENCE_DB, metavar="DB",
                        help="decode only the voiced segments of each recording: 10 ms "
                             "frames more than DB dB under its loudest 0.1 s are silence, and "
                             f"silences of {MIN_GAP_SECONDS:g} s or more split it (default "
                             f"{SILENCE_DB:g}; off or 0: decode each file whole, silence "
                             "included, which the demo's model misreads)")
    parser.add_argument("--group-seconds", type=float, default=GROUP_SECONDS,
                        help="decode files in groups of about this much audio, printing "
                             "each group's lines when it is done (default "
                             f"{GROUP_SECONDS:g}; less: lines sooner, smaller batches; 0: "
                             "each file alone)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default): `<path><TAB><text>` per file; json: one object "
                             "per file, with each word's start and end in seconds (where "
                             "the model emitted it, to 40 ms)")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="WAV (PCM 8/16/24/32-bit or float), FLAC, MP3, Ogg Vorbis or Opus "
                             "(.ogg, .opus); any rate and channels. -: the paths on standard "
                             "input, one a line")


def run(args: argparse.Namespace) -> None:
    if args.subnet is not None and args.budget is not None:
        raise ValueError("--budget picks a subnet of a --checkpoint; an exported --subnet "
                         f"has one budget already (got --budget {args.budget})")
    paths = file_paths(args.files, sys.stdin)
    options = {"chunk_seconds": args.chunk_seconds or None,       # 0: whole
               "context_seconds": args.context_seconds, "silence_db": args.silence_db}
    if args.subnet is not None:
        recognizer = Recognizer.from_subnet(args.subnet, device=args.device, **options)
    else:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, args.budget, device=args.device,
                                                **options)
    files, unreadable = print_transcripts(recognizer, paths, args.group_seconds, args.format)
    if unreadable:
        print(f"orthoasr: {unreadable} of {files} file(s) could not be read",
              file=sys.stderr)
        raise SystemExit(READ_FAILURE)


__all__ = ["read_file", "file_paths", "print_transcripts", "json_line", "add_arguments", "run"]
