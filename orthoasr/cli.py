"""`orthoasr <command>`: each command lives in its own module, which provides
`add_arguments(parser)` and `run(args)`; this file only dispatches and turns errors into one
line (`orthoasr: error: ...`, exit 2; `--debug` or ORTHOASR_DEBUG=1 for the traceback)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import sys

from . import __version__

DESCRIPTION = """Conformer-CTC supernets whose subnets for several parameter or FLOPs budgets
are chosen by OrthoSoftmax. A first run, from the repository root:

  orthoasr synth --preset tiny                 # corpus -> data/synth-tiny/
  orthoasr train --config tiny --work-dir runs/tiny
  orthoasr eval --checkpoint runs/tiny/checkpoint.pt
  orthoasr export --checkpoint runs/tiny/checkpoint.pt --budget 0.4 --out runs/tiny/sub.pt
  orthoasr transcribe --subnet runs/tiny/sub.pt some.wav

`orthoasr <command> --help` describes each command."""

COMMANDS = {
    "demo": ("orthoasr.demo", "the demo: what `make demo` runs"),
    "synth": ("orthoasr.data.synth", "synthesise the speech corpus with eSpeak NG"),
    "train": ("orthoasr.train", "train the supernet and its subnets"),
    "eval": ("orthoasr.evaluate", "evaluate every subnet of a checkpoint, or an exported one"),
    "export": ("orthoasr.export", "export a compact subnet"),
    "transcribe": ("orthoasr.transcribe", "transcribe audio files with a subnet"),
}
DEBUG_ENV = "ORTHOASR_DEBUG"
USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orthoasr", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    parser.add_argument("--version", action="version", version=f"orthoasr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if not _exists(module_name):
            continue
        modules[name] = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
        modules[name].add_arguments(command)
    # key=value overrides may follow options (`--stop-at 2 lr=1e-3`), which argparse's
    # positional list does not take: they are collected from what it leaves
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        modules[args.command].run(args)
    except (Exception, KeyboardInterrupt) as err:
        if debug:
            raise
        print(f"orthoasr: error: {error_line(err)}", file=sys.stderr)
        raise SystemExit(130 if isinstance(err, KeyboardInterrupt) else USAGE_ERROR) from None


def error_line(err: BaseException) -> str:
    """The error as one line: its message (the type too where it is not a plain user error),
    and a pointer to --debug for unexpected ones."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
        message = f"{message}: {err.filename}"
    if isinstance(err, (ValueError, OSError, RuntimeError)):
        return message
    return f"{type(err).__name__}: {message} (run with --debug for the traceback)"


def number(least: float | None = None, above: float | None = None, integer: bool = False):
    """An argparse type: a finite number (an integer with `integer`) >= least (> above).
    Anything else is the parser's error, which names the option and the value given
    (`argument --chunk-seconds: expected a finite number >= 0, got '-1'`)."""
    kind = "an integer" if integer else "a finite number"
    bound = f" >= {least:g}" if least is not None else f" > {above:g}" if above is not None \
        else ""

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (least is not None and value < least) \
                or (above is not None and value <= above):
            raise argparse.ArgumentTypeError(f"expected {kind}{bound}, got {text!r}")
        return value
    return parse


def output_file(text: str) -> str:
    """An argparse type: the path of a file to write. One ending in a path separator names a
    folder, where the write made a file of that name."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a file path (one ending in / names a "
                                         f"folder), got {text!r}")
    return text


def silence_db(text: str) -> float | None:
    """--silence-db's value (transcribe, eval): a number of dB, or off / 0 (None: no
    splitting)."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = number(least=0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a finite number of dB > 0, or 'off', got "
                                         f"{text!r}") from None
    return None if value == 0 else value


def _exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # its parent package is not there either
        return False
