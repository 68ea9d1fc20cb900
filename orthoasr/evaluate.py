"""`orthoasr eval`: every subnet of a checkpoint with its budget, exact params and FLOPs
(`subnet_cost`, FLOPs at cfg.ref_frames) and WER and CER on dev and test, as a table, a CSV
(eval.csv beside the checkpoint, or --csv), and a heatmap of the units each subnet keeps
(layers x unit kinds). The table is printed before any file is written. `--subnet` scores
an exported subnet instead (`evaluate_subnet`): one row, the same columns and numbers as
the checkpoint's subnet of its budget, on the manifests given."""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import torch

from .checkpoint import refuse_replacing, write_failure_reason
from .cli import number, output_file
from .cli import silence_db as silence_db_value
from .config import SupernetConfig
from .data.corpus_lock import corpus_read_lock
from .devices import resolve_device
from .model import block_layout
from .recognizer import (
    CHUNK_SECONDS,
    CONTEXT_SECONDS,
    FRAME_SECONDS,
    Recognizer,
    check_cutting,
    chunk_windows,
    output_frames,
)
from .silence import THRESHOLD_DB
from .trained import Trained, load_trained
from .transcribe import chunk_seconds as chunk_seconds_value
from .units import subnet_cost


def eval_manifest(trained: Trained, split: str, given: str | None) -> str:
    """The manifest of `split` ("dev", "test"): `given` (it must exist), else the run's:
    the absolute path recorded when it was trained, then its config's path relative to this
    folder (a run moved to another machine, or a checkpoint from before the record)."""
    if given is not None:
        return given_manifest(split, given)
    configured = getattr(trained.run, f"{split}_manifest")
    recorded = trained.manifest_paths.get(split)
    for path in (recorded, configured):
        if path and Path(path).exists():
            return path
    raise FileNotFoundError(
        f"{split} manifest {configured} of the checkpoint's run config not found (looked "
        f"{'at ' + recorded + ' and ' if recorded else ''}in {Path.cwd()}); "
        f"pass --{split} PATH")


def given_manifest(split: str, given: str) -> str:
    """`given`, the --dev or --test manifest, which must exist."""
    if not Path(given).exists():
        raise FileNotFoundError(f"--{split} manifest {given} not found")
    return given


def load_split(split: str, path: str) -> list[dict]:
    """The records of manifest `path`, named with their count; an empty one is refused."""
    from .data import load_manifest
    records = load_manifest(path)
    if not records:
        raise ValueError(f"{split} manifest {path} is empty")
    print(f"{split} manifest {Path(path).resolve()}: {len(records)} utterances")
    return records


def short_clips(records, logmel) -> set[int]:
    """Indices of the clips shorter than the frontend's minimum (4 feature frames), which get
    an empty transcript; a note says how many and names the shortest."""
    from .run_data import min_duration
    shortest = min_duration(logmel)
    short = {i for i, record in enumerate(records) if float(record["duration"]) < shortest}
    if short:
        first = min(short, key=lambda i: float(records[i]["duration"]))
        print(f"note: {len(short)} clip(s) shorter than {shortest} s (4 frames, the frontend's "
              f"minimum) get an empty transcript, e.g. {records[first]['audio_filepath']}")
    return short


class Piece(NamedTuple):
    """Audio that eval decodes in one pass: samples [first, end) of clip `clip` (end None:
    to its end), a part of that clip's segment starting at sample `segment`; `keep`: the
    piece's output frames that count (None: all), the rest being context."""
    clip: int
    segment: int
    first: int
    end: int | None
    keep: slice | None


def clip_pieces(records: list[dict], logmel, silence_db: float | None,
                chunk_seconds: float | None = CHUNK_SECONDS,
                context_seconds: float = CONTEXT_SECONDS) -> list[Piece]:
    """What eval decodes of `records`, cut as `orthoasr transcribe` cuts them. silence_db
    None: each clip whole, but those shorter than the frontend's minimum (`short_clips`:
    empty transcripts). Else each clip's voiced segments (orthoasr.silence.voiced_spans; a
    clip with none gets an empty transcript); segments under the minimum are dropped, as the
    Recognizer drops them. A clip or segment longer than chunk_seconds + 2 x context_seconds
    is decoded in pieces (recognizer.chunk_windows; chunk_seconds None: never). Splitting
    reads every clip here, and so does cutting, for the clips whose manifest duration comes
    within a second of that length; those are read again when their batches are decoded."""
    from .data import load_checked_audio
    from .silence import voiced_spans
    least = 4 * logmel.hop                      # samples of 4 frames, the frontend's minimum
    chunk = None if chunk_seconds is None else output_frames(chunk_seconds)
    context = output_frames(context_seconds)

    def cut(clip: int, start: int, end: int) -> list[Piece]:
        return [Piece(clip, start, start + first, start + stop, keep)
                for first, stop, keep in chunk_windows(end - start, least, chunk, context)]
    if silence_db is not None:
        return [piece for i, record in enumerate(records)
                for start, end in voiced_spans(load_checked_audio(record["audio_filepath"]),
                                                silence_db)
                if end - start >= least for piece in cut(i, start, end)]
    short = short_clips(records, logmel)
    may_be_cut = math.inf if chunk is None else (chunk + 2 * context) * FRAME_SECONDS - 1.0
    pieces = []
    for i, record in enumerate(records):
        if i in short:
            continue
        if float(record["duration"]) > may_be_cut:
            pieces += cut(i, 0, len(load_checked_audio(record["audio_filepath"])))
        else:
            pieces.append(Piece(i, 0, 0, None, None))
    return pieces


@torch.no_grad()
def transcribe(model, records, tokenizer, subnets: list[tuple[torch.Tensor, int]], device,
               batch_frames: int, bf16: bool, frozen_weights: bool = False,
               silence_db: float | None = None,
               chunk_seconds: float | None = CHUNK_SECONDS,
               context_seconds: float = CONTEXT_SECONDS) -> list[list[str]]:
    """Greedy CTC transcripts of `records` (in their order) by each subnet (gates, head) of
    `subnets`; batches sorted by length, the shared frontend run once per batch.
    frozen_weights: nothing trains `model` meanwhile (GraphedEncoder's). Modules
    whose gates are all 0 in a subnet are left out of its passes (model.dead_modules).
    silence_db: each clip whole (None; one with no sound at all, `silence.audible`, reads
    ""), or its voiced segments decoded alone and their texts joined by single spaces;
    chunk_seconds, context_seconds: long clips or segments in pieces, each heard with
    context_seconds either side, whose frame labels are joined before decoding
    (`clip_pieces`; the Recognizer's texts)."""
    from .data import LogMel, collate, length_batches, load_checked_audio
    from .decoding import best_paths, collapse_path, label_text
    from .graphs import GraphedEncoder
    from .silence import audible
    check_cutting(chunk_seconds, context_seconds, silence_db)
    logmel = LogMel.of_model(model.cfg).to(device)
    pieces = clip_pieces(records, logmel, silence_db, chunk_seconds, context_seconds)
    # [subnet][clip]: segment -> [(a piece's first sample, its kept frames' labels)]
    labels = [[defaultdict(list) for _ in records] for _ in subnets]
    skips = [model.dead_modules(gates) for gates, _ in subnets]
    # CUDA graphs per padded shape class on a GPU
    encoder = GraphedEncoder(model, frozen_weights=frozen_weights)
    frames = [int(100 * float(records[p.clip]["duration"])) + 1 if p.end is None
              else (p.end - p.first) // logmel.hop + 1 for p in pieces]
    no_tokens = torch.zeros(0, dtype=torch.long)
    for batch in length_batches(frames, batch_frames):
        # each clip read once a batch, however many of its pieces the batch holds
        clips = {i: load_checked_audio(records[i]["audio_filepath"]) for i in
                 {pieces[j].clip for j in batch}}
        if silence_db is None:
            # a clip scored whole with no sound at all reads "", as the Recognizer's does: it
            # is left out of the batch, not decoded
            silent = {i for i, clip in clips.items() if not audible(clip)}
            batch = [j for j in batch if pieces[j].clip not in silent]
            if not batch:
                continue
        waves, wave_lengths, _, _ = collate([(clips[p.clip][p.first:p.end], no_tokens)
                                             for p in (pieces[j] for j in batch)])
        feats, lengths = logmel(waves.to(device), wave_lengths.to(device))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            x, out_lengths = model.embed(feats, lengths)
            for s, (gates, head) in enumerate(subnets):
                log_probs = encoder(x, out_lengths, gates, head, skips[s])
                paths = best_paths(log_probs.float(), out_lengths,
                                   vocab_size=tokenizer.vocab_size)
                for j, path in zip(batch, paths, strict=True):
                    p = pieces[j]
                    labels[s][p.clip][p.segment].append(
                        (p.first, path if p.keep is None else path[p.keep]))

    def text(parts: list[tuple[int, list[int]]]) -> str:
        """A segment's text: its pieces' labels joined in order, then repeats and blanks
        removed (a word across a cut is neither lost nor doubled)."""
        return label_text(tokenizer, collapse_path([label for _, kept in sorted(parts)
                                                    for label in kept]))
    # a clip's segments in the order they are heard (batches run shortest first)
    return [[" ".join(t for t in (text(parts) for _, parts in sorted(clip.items())) if t)
             for clip in subnet] for subnet in labels]


def evaluate(checkpoint: str | Path, dev_manifest: str | None = None,
             test_manifest: str | None = None, heatmap: str | Path | None = None,
             device: str = "auto", csv_path: str | Path | None = None,
             silence_db: float | None = None,
             chunk_seconds: float | None = CHUNK_SECONDS,
             context_seconds: float = CONTEXT_SECONDS) -> list[dict]:
    """One row per subnet (or the supernet alone before the freeze). Prints the manifests
    used and the table, then writes the table to `csv_path` (default: eval.csv beside the
    checkpoint) and the heatmap to `heatmap`. silence_db: None scores each clip whole; a
    number of dB splits each at its silences first, as `orthoasr transcribe` does;
    chunk_seconds: clips (or segments) longer than it and context_seconds either side are
    decoded in pieces, as `transcribe` decodes them (None: whole; `transcribe`)."""
    check_cutting(chunk_seconds, context_seconds, silence_db)
    csv_path = csv_path or Path(checkpoint).with_name("eval.csv")
    check_outputs(csv_path, heatmap)
    device = resolve_device(device)
    trained = load_trained(checkpoint, device)
    run, model, cfg = trained.run, trained.model, trained.run.model
    tokenizer = trained.tokenizer()
    paths = {name: eval_manifest(trained, name, given)
             for name, given in (("dev", dev_manifest), ("test", test_manifest))}
    subnets = range(trained.num_subnets) if trained.masks is not None else [None]
    if run.fixed_subnet is not None and trained.masks is not None:
        # a fixed_gates run: its other masks are the source run's, never trained here
        subnets = [run.fixed_subnet]
        print(f"only the subnet of budget {cfg.budgets[run.fixed_subnet]:g} (fixed_gates "
              f"{run.fixed_gates}) was trained: the other subnets are not scored")
    bf16 = run.bf16 and device.type == "cuda"
    rows, selected = [], []
    for index in subnets:
        gates = (torch.ones(model.num_units) if index is None else trained.subnet_gates(index))
        head = len(cfg.budgets) - 1 if index is None else index
        selected.append((gates.to(device), head))
        rows.append(cost_row("supernet" if index is None else index,
                             1.0 if index is None else cfg.budgets[index], cfg, gates))
    with corpus_read_lock(paths.values()):       # corpus_lock.py: until every clip is read
        splits = {name: load_split(name, path) for name, path in paths.items()}
        for name, records in splits.items():
            hyps = transcribe(model, records, tokenizer, selected, device, run.eval_batch_frames,
                              bf16, frozen_weights=True,     # the checkpoint's, loaded here
                              silence_db=silence_db, chunk_seconds=chunk_seconds,
                              context_seconds=context_seconds)
            for row, subnet_hyps in zip(rows, hyps):
                add_error_rates(row, name, records, subnet_hyps)
    print_table(rows, cfg, f"subnets at step {trained.step}{split_note(silence_db)}")
    if trained.masks is not None:
        print_retained(trained.masks, cfg)
    # the table comes first, the CSV before the heatmap: a path that cannot be written loses
    # neither the numbers nor the other file
    print(f"CSV -> {write_csv(rows, csv_path)}")
    if trained.masks is not None and heatmap:
        print(f"heatmap -> {write_heatmap(trained.masks, cfg, heatmap)}")
    elif heatmap:
        print(f"no heatmap {heatmap}: the checkpoint (step {trained.step}) is from stage 1, "
              "before its subnets are frozen")
    return rows


def evaluate_subnet(subnet: str | Path, dev_manifest: str | None = None,
                    test_manifest: str | None = None, device: str = "auto",
                    csv_path: str | Path | None = None, silence_db: float | None = None,
                    chunk_seconds: float | None = CHUNK_SECONDS,
                    context_seconds: float = CONTEXT_SECONDS) -> dict:
    """One row for an exported subnet (`orthoasr export`) on the manifests given (one at
    least: the file holds none of its own): `evaluate`'s columns, and the numbers it gives
    the checkpoint's subnet of the same budget (greedy CTC; on a GPU under a bf16 autocast
    if its run trained in bf16, as the export records and as the checkpoint is scored, else
    in float32; a subnet saved in float16 or bfloat16 in that dtype; split at silences when
    `silence_db` is given and long clips cut at `chunk_seconds` with `context_seconds`, as
    `evaluate` does). Prints the manifests and the table, then writes the row to
    `csv_path` (default: <subnet stem>.eval.csv beside the subnet, never a run's
    eval.csv)."""
    from .export import widths_to_gates
    given = {name: path for name, path in (("dev", dev_manifest), ("test", test_manifest))
             if path is not None}
    if not given:
        raise ValueError(f"an exported subnet has no manifests of its own: pass --dev and/or "
                         f"--test to score {subnet}")
    subnet = Path(subnet)
    csv_path = csv_path or subnet.with_name(f"{subnet.stem}.eval.csv")
    check_outputs(csv_path)
    paths = {name: given_manifest(name, path) for name, path in given.items()}
    with corpus_read_lock(paths.values()):       # corpus_lock.py: until every clip is read
        splits = {name: load_split(name, path) for name, path in paths.items()}
        recognizer = Recognizer.from_subnet(subnet, device, chunk_seconds=chunk_seconds,
                                            context_seconds=context_seconds,
                                            silence_db=silence_db)
        sub = recognizer.model
        row = cost_row("exported", sub.budget, sub.cfg, widths_to_gates(sub.cfg, sub.widths))
        for name, records in splits.items():
            short = short_clips(records, recognizer.logmel)
            decoded = [i for i in range(len(records)) if i not in short]
            texts = recognizer.transcribe([records[i]["audio_filepath"] for i in decoded])
            hyps = [""] * len(records)
            for i, text in zip(decoded, texts, strict=True):
                hyps[i] = text
            add_error_rates(row, name, records, hyps)
    print_table([row], sub.cfg, f"exported subnet {subnet}{split_note(silence_db)}")
    print(f"CSV -> {write_csv([row], csv_path)}")
    return row


def cost_row(subnet: int | str, budget: float, cfg: SupernetConfig, gates: torch.Tensor
             ) -> dict:
    """A row's first columns: the subnet, its budget, its units kept, exact params and FLOPs
    (`subnet_cost` of gates (N,))."""
    return {"subnet": subnet, "budget": budget, "units": int((gates != 0).sum()),
            "params": int(subnet_cost(cfg, gates, "params")),
            "flops": int(subnet_cost(cfg, gates, "flops"))}


def add_error_rates(row: dict, split: str, records: list[dict], hyps: list[str]) -> None:
    """row["wer_<split>"], row["cer_<split>"]: the rates of `hyps` against the records'
    texts."""
    from .decoding import char_error_rate, word_error_rate
    refs = [record["text"] for record in records]
    row[f"wer_{split}"] = float(word_error_rate(refs, hyps))
    row[f"cer_{split}"] = float(char_error_rate(refs, hyps))


# how an eval CSV's header starts (cost_row's columns), and how the images matplotlib writes
# for a heatmap begin (PNG, JPEG, TIFF, PDF, PostScript, SVG): an existing output path that
# holds anything else is someone's file, not an earlier result, and is left alone
CSV_HEADER = "subnet,budget,units,params,flops"
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"%PDF",
                    b"%!PS", b"<?xml", b"<svg")


def check_outputs(csv_path: str | Path, heatmap: str | Path | None = None) -> None:
    """Refuse, before anything is decoded, outputs that would destroy a file: an existing
    file that is not an earlier result of its sort (the checkpoint, a manifest, an audio
    file; evaluating again replaces the earlier CSV and heatmap), or one path for both. A
    folder is left to the write, which names it."""
    if heatmap is not None and Path(heatmap).resolve() == Path(csv_path).resolve():
        raise ValueError(f"the CSV and the heatmap are the same file {csv_path}; give each "
                         "its own (--csv, --heatmap)")
    for flag, path, starts, what in (
            ("--csv", csv_path, (CSV_HEADER.encode(),), f"a CSV starting {CSV_HEADER!r}"),
            ("--heatmap", heatmap, IMAGE_SIGNATURES, "an image")):
        if path is not None:
            refuse_replacing(flag, Path(path), "result", _unless_starting(starts, what))
    if heatmap is not None:
        check_image_suffix(Path(heatmap))


def check_image_suffix(path: Path) -> None:
    """Refuse a heatmap path whose suffix matplotlib cannot write (its own error came after
    the decoding and named no argument) or that has none (savefig adds .png: the file
    named and checked above would not be the one written)."""
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        why = f"matplotlib writes no {path.suffix} images" if path.suffix else \
            "no suffix to name the image format"
        raise ValueError(f"--heatmap {path}: {why}; end the name in .png (or "
                         f"{', '.join(sorted(formats))})")


def _unless_starting(starts: tuple[bytes, ...], what: str):
    """refuse_replacing's why_not: None for a file that begins with one of `starts`, else
    `what` it should be."""
    def why_not(path: Path) -> str | None:
        with path.open("rb") as f:
            return None if f.read(max(map(len, starts))).startswith(starts) else what
    return why_not


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """The rows as a CSV file, one column per key."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as err:
        raise OSError(f"could not write the results CSV {path}: "
                      f"{write_failure_reason(path, err)} (the table above holds the same "
                      "numbers)") from None
    return path


def split_note(silence_db: float | None) -> str:
    """The table title's note that the clips were split at silences (none if whole)."""
    return "" if silence_db is None else f", clips split at silences ({silence_db:g} dB)"


def print_table(rows: list[dict], cfg: SupernetConfig, title: str) -> None:
    print(f"{title} (FLOPs per utterance of {cfg.ref_frames} frames after "
          f"subsampling, selected by {cfg.criterion}):")
    print(f"{'subnet':>8} {'budget':>6} {'units':>6} {'params':>12} {'MFLOPs':>10} "
          f"{'WER dev':>8} {'CER dev':>8} {'WER test':>8} {'CER test':>8}")
    for r in rows:
        rates = [f"{100 * r[key]:.2f}%" if key in r else "-"
                 for key in ("wer_dev", "cer_dev", "wer_test", "cer_test")]
        print(f"{r['subnet']!s:>8} {r['budget']:>6.2f} {r['units']:>6} {r['params']:>12,} "
              f"{r['flops'] / 1e6:>10.1f} " + " ".join(f"{rate:>8}" for rate in rates))


def unit_labels(cfg: SupernetConfig) -> list[str]:
    """Column names of one block's units: ffn1.0 .. conv .. mhsa.0 .. ffn2.3."""
    labels = []
    for kind, start, end in block_layout(cfg):
        labels += [kind] if end - start == 1 else [f"{kind}.{i}" for i in range(end - start)]
    return labels


def retained_grid(masks: torch.Tensor, cfg: SupernetConfig) -> torch.Tensor:
    """(layers, units per block): how many subnets keep each unit (nested subnets: a unit
    kept by c subnets is in the c largest)."""
    return (masks != 0).sum(0).view(cfg.num_layers, -1)


def print_retained(masks: torch.Tensor, cfg: SupernetConfig) -> None:
    grid = retained_grid(masks, cfg)
    labels = unit_labels(cfg)
    print(f"units kept (number of the {masks.shape[0]} subnets that keep each unit):")
    print("layer " + " ".join(f"{label:>7}" for label in labels))
    for layer, row in enumerate(grid.tolist()):
        print(f"{layer:>5} " + " ".join(f"{v:>7}" for v in row))


def write_heatmap(masks: torch.Tensor, cfg: SupernetConfig, path: str | Path) -> Path:
    """PNG heatmap layers x unit kinds of how many subnets keep each unit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    grid = retained_grid(masks, cfg).float()
    labels = unit_labels(cfg)
    fig, ax = plt.subplots(figsize=(1 + 0.4 * len(labels), 1 + 0.35 * cfg.num_layers))
    image = ax.imshow(grid.numpy(), cmap="Blues", vmin=0, vmax=masks.shape[0], aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(cfg.num_layers))
    ax.set_ylabel("layer")
    ax.set_title("subnets keeping each unit (budgets " +
                 ", ".join(f"{b:g}" for b in cfg.budgets) + ")")
    fig.colorbar(image, ax=ax, label="number of subnets")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise OSError(f"could not write the heatmap {path}: "
                      f"{write_failure_reason(path, err)}") from None
    finally:
        plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training checkpoint.pt: all its subnets")
    which.add_argument("--subnet", help="exported subnet (`orthoasr export --out`): it alone, "
                                        "on --dev and/or --test (one at least)")
    run_manifest = ("with --checkpoint, the run's: where it was when trained, else its "
                    "config's path from here")
    parser.add_argument("--dev", default=None, help=f"dev manifest (default: {run_manifest})")
    parser.add_argument("--test", default=None, help=f"test manifest (default: {run_manifest})")
    parser.add_argument("--heatmap", default=None, type=output_file,
                        help="PNG of the kept units (default: heatmap.png by the checkpoint; "
                             "not with --subnet, which keeps no masks); an existing file there is "
                             "replaced only if it is an image, else refused")
    parser.add_argument("--csv", default=None, type=output_file,
                        help="the table as CSV, one row per subnet (default: eval.csv by the "
                             "checkpoint; with --subnet, <its stem>.eval.csv by it); an existing "
                             "file there is replaced only if it is an earlier eval CSV, else "
                             "refused")
    parser.add_argument("--silence-db", type=silence_db_value, default=None, metavar="DB",
                        help="split each clip at its silences and decode its voiced segments "
                             "alone, as `orthoasr transcribe` does (its default: "
                             f"{THRESHOLD_DB:g}); default off: each clip whole, the usual "
                             "way to score a manifest")
    parser.add_argument("--chunk-seconds", type=chunk_seconds_value, default=CHUNK_SECONDS,
                        metavar="SECONDS",
                        help="decode a clip (or voiced segment) longer than this and "
                             "--context-seconds either side in pieces, as `orthoasr "
                             f"transcribe` does (default {CHUNK_SECONDS:g}; 0: each whole, "
                             "memory growing with the square of its length)")
    parser.add_argument("--context-seconds", type=number(least=0), default=CONTEXT_SECONDS,
                        metavar="SECONDS",
                        help="audio each piece also sees on either side, as with `orthoasr "
                             f"transcribe` (default {CONTEXT_SECONDS:g})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to decode (default auto: the GPU if there is one, else "
                             "the CPU)")


def run(args: argparse.Namespace) -> None:
    if args.subnet is not None:
        if args.heatmap is not None:
            raise ValueError("--heatmap draws the frozen masks of a --checkpoint; an exported "
                             "--subnet keeps how many units of each module it has, not which: "
                             "leave --heatmap out")
        evaluate_subnet(args.subnet, args.dev, args.test, args.device, args.csv,
                        args.silence_db, args.chunk_seconds or None, args.context_seconds)
        return
    heatmap = args.heatmap or Path(args.checkpoint).with_name("heatmap.png")
    evaluate(args.checkpoint, args.dev, args.test, heatmap, args.device, args.csv,
             args.silence_db, args.chunk_seconds or None, args.context_seconds)


__all__ = ["evaluate", "evaluate_subnet", "transcribe", "write_csv", "write_heatmap",
           "check_outputs", "add_arguments", "run"]
