"""`orthoasr transcribe`: greedy transcripts of audio files by one subnet.

    orthoasr transcribe --checkpoint runs/demo/checkpoint.pt --budget 0.4 a.wav b.flac
    orthoasr transcribe --subnet runs/demo/sub.pt --format json a.wav
    orthoasr transcribe --subnet runs/demo/sub.pt --format srt --output-dir subs a.wav
    find calls -name '*.mp3' | orthoasr transcribe --subnet runs/demo/sub.pt -

Prints one line per file, `<path>\\t<text>` (`--format json`: a JSON object, `{"path",
"text", "words": [{"word", "start", "end"}, ...]}`, times in seconds from the file's start
rounded to ms, orthoasr.timestamps; `--format srt|vtt`: `<path>\\t<subtitle file>`, having
written those words' subtitles, orthoasr.subtitles, to `--output-dir`/<name less
suffix>.srt|.vtt), in the order given, each as soon as it and the files before it are
transcribed: files are read one at a time as the recognizer needs them and decoded in groups
of about `--group-seconds` of audio, so a long list is never in memory at once and an
interrupted run keeps the lines it printed. Each recording's silent stretches are cut out
first and its voiced segments decoded (`--silence-db`; `off` decodes each file whole). A
file that cannot be read (missing, empty, corrupt, not audio, holding NaN samples, or float
samples at 16-bit PCM's scale) gets a line on stderr naming it and the reason, in its place
among the others; the other files are still transcribed, and the exit status is 1. So does
a path from standard input whose subtitle file an earlier file took (FILE names that would
clash are refused before the model loads). A FILE of `-` stands for the paths on standard
input, one a line, read as they are needed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import torch

from .checkpoint import write_atomically, write_failure_reason
from .cli import number, silence_db
from .data import AudioError, load_checked_audio
from .recognizer import (
    CHUNK_SECONDS,
    CONTEXT_SECONDS,
    FRAME_SECONDS,
    GROUP_SECONDS,
    SILENCE_DB,
    Recognizer,
)
from .silence import MIN_GAP_SECONDS, SILENT_DBFS
from .subtitles import cues, srt, vtt
from .timestamps import Transcript

READ_FAILURE = 1
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
SUBTITLE_FORMATS = {"srt": srt, "vtt": vtt}


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
                      group_seconds: float = GROUP_SECONDS, output: TextLines | None = None
                      ) -> tuple[int, int]:
    """Print `output`'s line for each file of `paths` (default `<path>\\t<text>`), and a
    stderr line for each file that cannot be read or that `output` refuses, in the order of
    `paths`, each as soon as the files before it are printed; paths are taken and files
    read one at a time, as `recognizer.transcribe_iter` pulls them. Returns (files, how
    many of them failed)."""
    output = TextLines() if output is None else output
    # the files taken but not yet printed, in order: (path, None or what went wrong)
    waiting: deque[tuple[str, str | None]] = deque()
    files = failed = 0

    def print_failures():
        """The failed files at the head of `waiting`: every file before them is out."""
        while waiting and waiting[0][1] is not None:
            print(f"orthoasr: {waiting.popleft()[1]}", file=sys.stderr, flush=True)

    def readable_waves() -> Iterator[torch.Tensor]:
        nonlocal files, failed
        for path in paths:
            files += 1
            wave, failure = None, output.refuse(path)
            if failure is None:
                try:
                    # NaN or a 16-bit scale would stop the recognizer, and the files after
                    wave = load_checked_audio(path)
                except (AudioError, OSError, RuntimeError) as err:
                    reason = " ".join(str(err).split()) or type(err).__name__
                    failure = f"cannot read {path}: {reason.removeprefix(f'{path}: ')}"
            waiting.append((path, failure))
            if wave is None:
                failed += 1
                print_failures()
                continue
            yield wave

    for transcript in recognizer.transcribe_iter(readable_waves(), group_seconds,
                                                 timestamps=output.timestamps):
        path = waiting.popleft()[0]
        print(output.line(path, transcript), flush=True)
        print_failures()
    return files, failed


class TextLines:
    """What `print_transcripts` prints for each file: `<path>\\t<text>`."""
    timestamps = False          # whether `line` takes a Transcript (else the text)

    def refuse(self, path: str) -> str | None:
        """Why `path` is not to be read (None: it is), when it is taken."""
        return None

    def line(self, path: str, transcript: str | Transcript) -> str:
        return f"{path}\t{transcript}"


class JsonLines(TextLines):
    """`--format json`: `json_line` for each file."""
    timestamps = True

    def line(self, path: str, transcript: Transcript) -> str:
        return json_line(path, transcript)


def json_line(path: str, transcript: Transcript) -> str:
    """One file's line of `--format json`: {"path", "text", "words": [{"word", "start",
    "end"}, ...]}, times in seconds rounded to ms."""
    words = [{"word": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}
             for word in transcript.words]
    line = json.dumps({"path": path, "text": transcript.text, "words": words},
                      ensure_ascii=False)
    # a name's bytes that are not UTF-8 (os.fsdecode's lone surrogates) as \udcXX escapes:
    # written as their bytes they would make the line invalid UTF-8, so invalid JSON text;
    # json.loads gives the surrogates back, and os.fsencode the name's bytes
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class SubtitleFiles(TextLines):
    """`--format srt|vtt`: each file's subtitles (`subtitles.cues` at their defaults) written
    atomically to `<folder>/<its name less the suffix>.srt|.vtt`, and `<path>\\t<that
    file>` printed. A file whose subtitle file another file of this run has taken is
    refused."""
    timestamps = True

    def __init__(self, folder: str | Path, output_format: str):
        if output_format not in SUBTITLE_FORMATS:
            raise ValueError(f"output_format must be one of {sorted(SUBTITLE_FORMATS)}, got "
                             f"{output_format!r}")
        self.folder, self.output_format = Path(folder), output_format
        self.sources: dict[Path, str] = {}      # each subtitle file taken: the file it is of

    def target(self, path: str) -> Path:
        return self.folder / f"{Path(path).stem}.{self.output_format}"

    def refuse(self, path: str) -> str | None:
        """Why `path`'s subtitles cannot be written: a file taken before it had the same
        name less its suffix (the same path too). Else None, and its subtitle file taken."""
        target = self.target(path)
        if target not in self.sources:
            self.sources[target] = path
            return None
        return (f"cannot write the subtitles of {path}: {target} is for those of "
                f"{self.sources[target]}, given before it with the same name less its suffix")

    def line(self, path: str, transcript: Transcript) -> str:
        render = SUBTITLE_FORMATS[self.output_format]
        text = render(cues(transcript)).encode()
        target = write_atomically(self.target(path), lambda f: f.write(text), "subtitles")
        return f"{path}\t{target}"


def output_lines(output_format: str, output_dir: str | None, files: Iterable[str] = ()
                 ) -> TextLines:
    """What `orthoasr transcribe --format output_format --output-dir output_dir` prints for
    each file. For subtitles, `files` (the FILE names known before any is read) are
    refused here if two of them would write one subtitle file; the folder is made."""
    if output_format not in ("text", "json", *SUBTITLE_FORMATS):
        raise ValueError(f"--format must be text, json, srt or vtt, got {output_format!r}")
    if output_format not in SUBTITLE_FORMATS:
        if output_dir is not None:
            raise ValueError(f"--output-dir is for the subtitle files of --format srt or "
                             f"vtt; --format {output_format} prints to standard output (got "
                             f"--output-dir {output_dir})")
        return JsonLines() if output_format == "json" else TextLines()
    if output_dir is None:
        raise ValueError(f"--format {output_format} writes a subtitle file for each FILE: "
                         "give the folder for them with --output-dir")
    names = SubtitleFiles(output_dir, output_format)
    for name in files:
        failure = names.refuse(name)
        if failure is not None:
            raise ValueError(failure)
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)           # fails here, not at a file
    except OSError as err:
        raise OSError(f"--output-dir {output_dir}: cannot make the folder: "
                      f"{write_failure_reason(folder, err)}") from None
    return SubtitleFiles(output_dir, output_format)     # the names checked, none taken yet


def chunk_seconds(text: str) -> float:
    """--chunk-seconds' value: 0 (each recording whole) or at least one output frame."""
    value = number(least=0)(text)
    if 0 < value < FRAME_SECONDS:
        raise argparse.ArgumentTypeError(f"expected 0 or a number of seconds >= "
                                         f"{FRAME_SECONDS:g}, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training checkpoint.pt (a subnet of it: --budget)")
    which.add_argument("--subnet", help="exported subnet (`orthoasr export --out`)")
    parser.add_argument("--budget", type=float, default=None,
                        help="with --checkpoint: the subnet of this budget (default: largest; a "
                             "fixed_gates run's: the one it trained)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                        help="where to decode (default cpu, even on a GPU machine; auto: the "
                             "GPU if there is one)")
    parser.add_argument("--fp32", action="store_true",
                        help="decode in float32 (default: on a GPU under a bfloat16 autocast "
                             "if the run trained in bf16, as `orthoasr eval` scores it, an "
                             "exported --subnet's run as its export records; on the CPU in "
                             "float32; a --subnet saved in float16 or bfloat16 in that "
                             "dtype on either)")
    parser.add_argument("--chunk-seconds", type=chunk_seconds, default=CHUNK_SECONDS,
                        help="decode longer recordings in pieces of this length (default "
                             f"{CHUNK_SECONDS:g}; 0: each whole, memory growing with the "
                             "square of its length)")
    parser.add_argument("--context-seconds", type=number(least=0), default=CONTEXT_SECONDS,
                        help="audio each piece also sees on either side (default "
                             f"{CONTEXT_SECONDS:g})")
    parser.add_argument("--silence-db", type=silence_db, default=SILENCE_DB, metavar="DB",
                        help="decode only the voiced segments of each recording: 10 ms "
                             "frames more than DB dB under its loudest 0.1 s are silence, and "
                             f"silences of {MIN_GAP_SECONDS:g} s or more split it (default "
                             f"{SILENCE_DB:g}; off or 0: decode each file whole, silence "
                             "included, which the demo's model misreads; a file with no 10 "
                             f"ms frame at {SILENT_DBFS:g} dBFS or over gives an empty text "
                             "either way, and one of a room's steady noise alone (hiss, "
                             "hum) when split)")
    parser.add_argument("--group-seconds", type=number(least=0), default=GROUP_SECONDS,
                        help="decode files in groups of about this much audio, printing "
                             "each group's lines when it is done (default "
                             f"{GROUP_SECONDS:g}; less: lines sooner, smaller batches; 0: "
                             "each file alone)")
    parser.add_argument("--format", choices=("text", "json", *SUBTITLE_FORMATS),
                        default="text",
                        help="text (default): `<path><TAB><text>` per file; json: one object "
                             "per file, with each word's start and end in seconds (where "
                             "the model emitted it, to 40 ms); srt, vtt: subtitles of those "
                             "times, a file per FILE in --output-dir, and `<path><TAB><that "
                             "file>` printed")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="with --format srt or vtt: write DIR/<FILE's name less its "
                             "suffix>.srt (.vtt), making DIR if missing and replacing a "
                             "subtitle file of that name there; two FILEs of one name are "
                             "refused")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="WAV (PCM 8/16/24/32-bit, float, A-law, mu-law), FLAC, MP3, Ogg "
                             "Vorbis or Opus (.ogg, .oga, .opus); any rate and channels. -: the "
                             "paths on standard input, one a line")


def run(args: argparse.Namespace) -> None:
    if args.subnet is not None and args.budget is not None:
        raise ValueError("--budget picks a subnet of a --checkpoint; an exported --subnet "
                         f"has one budget already (got --budget {args.budget})")
    # a file name's bytes need not be UTF-8 (an old Latin-1 archive's): read from `-` or
    # printed, one failed the run under a strict UTF-8 locale; they pass through as bytes
    for stream in (sys.stdin, sys.stdout):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    paths = file_paths(args.files, sys.stdin)
    output = output_lines(args.format, args.output_dir,
                          [name for name in args.files if name != "-"])
    options = {"chunk_seconds": args.chunk_seconds or None,       # 0: whole
               "context_seconds": args.context_seconds, "silence_db": args.silence_db,
               "device": args.device, "bf16": False if args.fp32 else None}
    if args.subnet is not None:
        recognizer = Recognizer.from_subnet(args.subnet, **options)
    else:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, args.budget, **options)
    files, failed = print_transcripts(recognizer, paths, args.group_seconds, output)
    if failed:
        print(f"orthoasr: {failed} of {files} file(s) could not be transcribed",
              file=sys.stderr)
        raise SystemExit(READ_FAILURE)


__all__ = ["file_paths", "print_transcripts", "TextLines", "JsonLines",
           "json_line", "SubtitleFiles", "output_lines", "add_arguments", "run"]
