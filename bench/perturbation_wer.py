"""WER of a trained run's subnets on its test clips as they are and perturbed: a DC offset
added (a constant on every sample, as a cheap microphone's) or the level changed (a quieter
microphone's; docs/transcription.md). The CPU is enough.

Run:
    python -m bench.perturbation_wer --checkpoint runs/demo/checkpoint.pt \
        --manifest data/synth-demo/test.jsonl --offsets 1e-3 1e-2 --gains-db -20 -40

Each subnet (every budget of the run unless `--budgets`) reads each clip whole
(`silence_db=None`, as `orthoasr eval` scores it), so the rows compare with eval's test WER;
`--split` adds rows read through the default silence splitter (`transcribe`'s), whose level
rules may drop quiet speech. `--joined-dithered` adds, at 0 dB and at each gain, the clips
25 at a time joined by 0.5-1 s of silence and written as a 16-bit file is (rounded to
1/32768 with TPDF dither, about -96 dBFS): long recordings whose pauses are dither, which
the splitter must cut however quiet the speech. The features are the model's own (its
`model.remove_dc` says whether an offset is taken away before them; nothing takes a level
away: docs/transcription.md). Prints a JSON line per row and a markdown table per reading;
appends the rows to bench/results/accuracy/perturbation_wer.json.
"""

from __future__ import annotations

import argparse
import json

import torch

from orthoasr import Recognizer
from orthoasr.data import SAMPLE_RATE, load_audio, load_manifest
from orthoasr.decoding import word_errors
from orthoasr.recognizer import SILENCE_DB
from orthoasr.trained import load_trained

from .harness import RESULTS_DIR, write_rows

JOINED = 25


def perturbations(offsets: list[float], gains_db: list[float]) -> list[tuple[str, float, float]]:
    """[(label, offset, gain), ...]: the clips as they are first, then each offset (full
    scale) added and each gain (dB) applied, alone."""
    rows = [("clean", 0.0, 1.0)]
    rows += [(f"+{o:g}", o, 1.0) for o in offsets if o != 0.0]
    rows += [(f"{g:+g} dB", 0.0, 10.0 ** (g / 20)) for g in gains_db if g != 0.0]
    return rows


def joined_dithered(waves: list[torch.Tensor], texts: list[str],
                    gain: float) -> tuple[list[torch.Tensor], list[str]]:
    """(recordings, their texts): the clips `waves` (S_i,) scaled by `gain`, 25 (JOINED) at a time
    with 0.5-1 s of zeros between them (the same gaps at every gain), each recording then
    rounded to a 16-bit file's steps (1/32768) over TPDF dither (the difference of two
    uniform draws of one step: noise near -96 dBFS, in the pauses too)."""
    draw = torch.Generator().manual_seed(0)
    recordings, joined = [], []
    for k in range(0, len(waves), JOINED):
        parts = []
        for w in waves[k:k + JOINED]:
            gap = 0.5 + 0.5 * float(torch.rand(1, generator=draw))
            parts += [gain * w, torch.zeros(int(SAMPLE_RATE * gap))]
        wave = torch.cat(parts[:-1])
        tpdf = torch.rand(len(wave), generator=draw) - torch.rand(len(wave), generator=draw)
        recordings.append((torch.round(wave * 32768 + tpdf) / 32768).clamp(-1.0, 1.0))
        joined.append(" ".join(texts[k:k + JOINED]))
    return recordings, joined


def perturbed_wer(recognizer: Recognizer, waves: list[torch.Tensor], texts: list[str],
                  offset: float, gain: float, dithered: bool = False) -> float:
    """Test WER (%) of `recognizer` on the clips `waves` (S_i,) scaled by `gain`, then with
    `offset` added (dithered: joined and dithered as `joined_dithered` does; offset 0)."""
    if dithered:
        recordings, texts = joined_dithered(waves, texts, gain)
    else:
        recordings = [gain * w + offset for w in waves]
    errors, words = word_errors(texts, recognizer.transcribe(recordings))
    return round(100 * errors / words, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True, help="the test clips (JSON lines)")
    parser.add_argument("--offsets", type=float, nargs="*", default=[],
                        help="offsets to add, in full scale (the clips as they are always "
                             "come first)")
    parser.add_argument("--gains-db", type=float, nargs="*", default=[],
                        help="level changes in dB, e.g. -20 -40 (a 0.1 / 0.01 gain)")
    parser.add_argument("--split", action="store_true",
                        help=f"also read through the silence splitter ({SILENCE_DB:g} dB)")
    parser.add_argument("--joined-dithered", action="store_true",
                        help=f"also read the clips {JOINED} at a time joined by 0.5-1 s of "
                             "silence as a 16-bit file with dither, at 0 dB and each gain")
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    args = parser.parse_args()
    cfg = load_trained(args.checkpoint).model.cfg
    budgets = args.budgets or list(cfg.budgets)
    cases = [(label, offset, gain, False)
             for label, offset, gain in perturbations(args.offsets, args.gains_db)]
    if args.joined_dithered:
        cases += [(f"{label}, {JOINED} joined by 0.5-1 s, 16-bit dithered", 0.0, gain, True)
                  for label, offset, gain in perturbations([], args.gains_db)]
    readings = [None] + ([SILENCE_DB] if args.split else [])
    records = load_manifest(args.manifest)
    waves = [load_audio(r["audio_filepath"]) for r in records]
    texts = [r["text"] for r in records]
    rows = []
    for silence_db in readings:
        for budget in budgets:
            recognizer = Recognizer.from_checkpoint(args.checkpoint, budget,
                                                    silence_db=silence_db)
            for label, offset, gain, dithered in cases:
                wer = perturbed_wer(recognizer, waves, texts, offset, gain, dithered)
                rows.append({"budget": budget, "audio": label, "silence_db": silence_db,
                             "remove_dc": cfg.remove_dc, "wer": wer, "clips": len(waves)})
                print(json.dumps(rows[-1]), flush=True)
    for silence_db in readings:
        print(f"\nremove_dc={cfg.remove_dc}, silence_db={silence_db}\n| test audio | "
              + " | ".join(f"{b:g}" for b in budgets) + " |")
        for label, *_ in cases:
            print(f"| {label} | " + " | ".join(
                f"{r['wer']:.2f}%" for r in rows
                if r["audio"] == label and r["silence_db"] == silence_db) + " |")
    write_rows("perturbation_wer", rows, RESULTS_DIR / "accuracy")


if __name__ == "__main__":
    main()
