"""`orthoasr <command>`: each command lives in its own module, which provides
`add_arguments(parser)` and `run(args)`; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import importlib.util

COMMANDS = {
    "demo": ("orthoasr.demo", "the demo: what `make demo` runs"),
    "synth": ("orthoasr.data.synth", "synthesise the speech corpus with eSpeak NG"),
    "train": ("orthoasr.train", "train the supernet and its subnets"),
    "eval": ("orthoasr.evaluate", "evaluate every subnet of a checkpoint"),
    "export": ("orthoasr.export", "export a compact subnet"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="orthoasr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if not _exists(module_name):
            continue
        modules[name] = importlib.import_module(module_name)
        modules[name].add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    modules[args.command].run(args)


def _exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # its parent package is not there either
        return False
