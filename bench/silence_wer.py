"""WER of a trained run's subnets with `transcribe`'s silence splitting off and on, on its test
clips as they are and with silence, noise and clicks added (docs/transcription.md's table).
The CPU is enough.

Run:
    python -m bench.silence_wer --checkpoint runs/demo/checkpoint.pt \
        --manifest data/synth-demo/test.jsonl --budgets 0.4 1.0

Each budget's subnet transcribes every kind of test audio three ways: each recording whole
(`silence_db=None`), split with the splitter's first rules (levels weighed against the
loudest frame, every voiced run kept, steady noise too: `reference_seconds=0,
min_segment_seconds=0, floor_db=0`), and split with the defaults. The audio is drawn from a
fixed seed, so a rerun on the same run gives the same numbers. Each also reads a room's
noise alone (`noise_alone`: white and pink noise and a mains hum at -70 to -40 dBFS, 3 s
each), whose right text is "": those rows count the words read. Rows are appended to
bench/results/accuracy/silence_wer.json (WER, not speed, so out of bench/RESULTS.md's
tables), and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from orthoasr import Recognizer
from orthoasr.data import load_audio, load_manifest
from orthoasr.decoding import word_errors
from orthoasr.silence import THRESHOLD_DB, voiced_spans

from .harness import RESULTS_DIR, write_rows

RATE = 16000


def test_audio(waves: list[torch.Tensor], texts: list[str]) -> dict:
    """{kind of audio: (recordings, their texts)} built from the clips `waves` (S_i,)."""
    draw = torch.Generator().manual_seed(0)
    zeros = lambda seconds: torch.zeros(int(seconds * RATE))                     # noqa: E731
    speech_rms = sum(float(w.square().mean().sqrt()) for w in waves) / len(waves)
    noise = lambda n: torch.randn(n, generator=draw) * speech_rms * 10 ** (-50 / 20)  # noqa: E731
    audio = {"the clips": (waves, texts),
             "0.3 s of zeros after each": ([torch.cat([w, zeros(0.3)]) for w in waves], texts),
             "0.3 s of zeros before and after":
                 ([torch.cat([zeros(0.3), w, zeros(0.3)]) for w in waves], texts),
             "the same, noise 50 dB under the speech":
                 ([torch.cat([noise(4800), w, noise(4800)]) for w in waves], texts)}

    def joined(count, shortest, spread, name, gap_audio=torch.zeros, over=False):
        """`count` clips at a time with gaps of `shortest` + up to `spread` seconds."""
        recordings, joined_texts = [], []
        for k in range(0, len(waves), count):
            parts = []
            for w in waves[k:k + count]:
                gap = shortest + spread * float(torch.rand(1, generator=draw))
                parts += [w, gap_audio(int(RATE * gap))]
            recording = torch.cat(parts[:-1])
            recordings.append(recording + noise(len(recording)) if over else recording)
            joined_texts.append(" ".join(texts[k:k + count]))
        audio[name] = (recordings, joined_texts)

    joined(5, 0.1, 0.2, "5 clips joined by 0.1-0.3 s of zeros")
    joined(25, 0.5, 0.5, "25 clips joined by 0.5-1 s of zeros")
    joined(25, 0.5, 0.5, "the same, noise 50 dB under the speech in the gaps", gap_audio=noise)
    joined(25, 0.5, 0.5, "the same, and over the speech too", gap_audio=noise, over=True)
    click = lambda: (torch.randint(0, 2, (80,), generator=draw) * 2 - 1).float() * 0.9  # noqa: E731
    audio["a 5 ms click 0.15 s before each, in 0.3 s of zeros"] = (
        [torch.cat([zeros(0.15), click(), zeros(0.145), w, zeros(0.3)]) for w in waves], texts)
    audio["the same, the speech 10 dB softer"] = (
        [torch.cat([zeros(0.15), click(), zeros(0.145), w * 10 ** (-10 / 20), zeros(0.3)])
         for w in waves], texts)
    audio["a 5 ms click 0.15 s after each"] = (
        [torch.cat([zeros(0.3), w, zeros(0.15), click(), zeros(0.145)]) for w in waves], texts)
    # a knock or a key's click: 60 ms of noise, rising and falling (drawn after the rows
    # above, which keep their draws)
    knock = lambda: torch.randn(960, generator=draw) * 0.3 * torch.hann_window(960)  # noqa: E731
    audio["a 60 ms knock 0.15 s after each"] = (
        [torch.cat([zeros(0.3), w, zeros(0.15), knock(), zeros(0.15)]) for w in waves], texts)
    return audio


def noise_alone(clips: int = 10) -> dict:
    """{kind of noise: `clips` recordings of 3 s} of a room's noise alone at -70, -60, -50 and
    -40 dBFS (RMS): white (hiss), pink (a fan's rumble), and a 50 Hz mains hum with two
    harmonics and a little hiss."""
    draw = torch.Generator().manual_seed(1)
    n = 3 * RATE
    t = torch.arange(n) / RATE

    def pink() -> torch.Tensor:
        spectrum = torch.fft.rfft(torch.randn(n, generator=draw))
        return torch.fft.irfft(spectrum / torch.arange(len(spectrum)).clamp(min=1).sqrt(), n)

    def hum() -> torch.Tensor:
        phase = 2 * math.pi * float(torch.rand(1, generator=draw))
        return sum(a * torch.sin(2 * math.pi * 50 * k * t + k * phase)
                   for k, a in ((1, 1.0), (2, 0.5), (3, 0.3))) + 0.05 * torch.randn(
                       n, generator=draw)
    makers = {"white": lambda: torch.randn(n, generator=draw), "pink": pink, "hum": hum}
    return {f"{kind} noise alone, {dbfs} dBFS":
            [wave / wave.square().mean().sqrt() * 10 ** (dbfs / 20)
             for wave in (make() for _ in range(clips))]
            for kind, make in makers.items() for dbfs in (-70, -60, -50, -40)}


def first_rules(wave: torch.Tensor) -> list[tuple[int, int]]:
    """The splitter before clicks and noise were handled: the loudest frame sets the level,
    and a voiced run of any length is a segment, steady noise or not."""
    return voiced_spans(wave, THRESHOLD_DB, reference_seconds=0, min_segment_seconds=0,
                        floor_db=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True, help="the test clips (JSON lines)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 1.0])
    args = parser.parse_args()
    records = load_manifest(args.manifest)
    audio = test_audio([load_audio(r["audio_filepath"]) for r in records],
                       [r["text"] for r in records])
    noises = noise_alone()
    rows = []
    for budget in args.budgets:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, budget)
        for setting in ("whole", "first rules", "default"):
            recognizer.silence_db = None if setting == "whole" else THRESHOLD_DB
            if setting == "first rules":
                recognizer._voiced_spans = first_rules
            else:
                recognizer.__dict__.pop("_voiced_spans", None)
            for kind, (recordings, texts) in audio.items():
                errors, words = word_errors(texts, recognizer.transcribe(recordings))
                rows.append({"budget": budget, "audio": kind, "setting": setting,
                             "wer": round(100 * errors / words, 1), "words": words})
                print(json.dumps(rows[-1]), flush=True)
            for kind, recordings in noises.items():
                read = sum(len(text.split()) for text in recognizer.transcribe(recordings))
                rows.append({"budget": budget, "audio": kind, "setting": setting,
                             "words_read": read, "clips": len(recordings)})
                print(json.dumps(rows[-1]), flush=True)
    write_rows("silence_wer", rows, RESULTS_DIR / "accuracy")
    print("\n| test audio | " + " | ".join(f"{b:g}: {s}" for b in args.budgets
                                           for s in ("whole", "first rules", "default")) + " |")
    for kind in audio:
        print(f"| {kind} | " + " | ".join(
            f"{r['wer']}%" for r in rows if r["audio"] == kind) + " |")
    for kind in noises:
        print(f"| {kind} (words read in {len(noises[kind])} clips) | " + " | ".join(
            str(r["words_read"]) for r in rows if r["audio"] == kind) + " |")


if __name__ == "__main__":
    main()
