"""WER of a trained run's subnets on its test clips as they are and with a DC offset added
(a constant on every sample, as a cheap microphone's; docs/transcription.md). The CPU is
enough.

Run:
    python -m bench.dc_offset_wer --checkpoint runs/demo/checkpoint.pt \
        --manifest data/synth-demo/test.jsonl --offsets 1e-3 1e-2

Each subnet (every budget of the run unless `--budgets`) reads each clip whole
(`silence_db=None`, as `orthoasr eval` scores it), so the rows compare with eval's test WER;
the features are the model's own (its `model.remove_dc` says whether the offset is taken
away before them). Prints a JSON line per row and a markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import json

import torch

from orthoasr import Recognizer
from orthoasr.data import load_audio, load_manifest
from orthoasr.decoding import word_errors
from orthoasr.trained import load_trained


def offset_wer(recognizer: Recognizer, waves: list[torch.Tensor], texts: list[str],
               offset: float) -> float:
    """Test WER (%) of `recognizer` on the clips `waves` (S_i,) with `offset` added."""
    errors, words = word_errors(texts, recognizer.transcribe([w + offset for w in waves]))
    return round(100 * errors / words, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True, help="the test clips (JSON lines)")
    parser.add_argument("--offsets", type=float, nargs="+", default=[1e-2],
                        help="offsets to add, in full scale (0, the clips as they are, "
                             "always comes first)")
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    args = parser.parse_args()
    cfg = load_trained(args.checkpoint).model.cfg
    budgets = args.budgets or list(cfg.budgets)
    offsets = [0.0] + [o for o in args.offsets if o != 0.0]
    records = load_manifest(args.manifest)
    waves = [load_audio(r["audio_filepath"]) for r in records]
    texts = [r["text"] for r in records]
    rows = []
    for budget in budgets:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, budget, silence_db=None)
        for offset in offsets:
            rows.append({"budget": budget, "offset": offset, "remove_dc": cfg.remove_dc,
                         "wer": offset_wer(recognizer, waves, texts, offset),
                         "clips": len(waves)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nremove_dc={cfg.remove_dc}\n| test audio | "
          + " | ".join(f"{b:g}" for b in budgets) + " |")
    for offset in offsets:
        print(f"| {'clean' if offset == 0 else f'+{offset:g}'} | " + " | ".join(
            f"{r['wer']:.2f}%" for r in rows if r["offset"] == offset) + " |")


if __name__ == "__main__":
    main()
