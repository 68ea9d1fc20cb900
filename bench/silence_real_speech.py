"""Where `voiced_spans` cuts real speech: 19 recordings of people (five LibriVox sentences,
five recordings of card names, "go forward ten meters" and eight speaker-test words from ALSA),
aligned word by word by pocketsphinx, and pocketsphinx's WER on them whole and split. The
demo's model knows only eSpeak voices, so a second recogniser tells whether the splits hurt.

    apt-get download pocketsphinx-testdata alsa-utils
    for deb in *.deb; do dpkg -x "$deb" real-speech; done
    pip install pocketsphinx==5.0.3        # its en-us model and dictionary are in the wheel
    python -m bench.silence_real_speech --root real-speech

Rows are appended to bench/results/accuracy/silence_real_speech.json: per recording, its
splits (the silences cut out, in seconds) and the aligned words each one overlaps.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from orthoasr.data import load_audio
from orthoasr.decoding import word_errors
from orthoasr.silence import SAMPLE_RATE, voiced_spans

from .harness import RESULTS_DIR, write_rows

TESTDATA, SOUNDS = "usr/share/pocketsphinx/test/data", "usr/share/sounds/alsa"
SPEAKER_TEST = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left",
                "Rear_Right", "Side_Left", "Side_Right")


def recordings(root: Path) -> list[tuple[str, torch.Tensor, str]]:
    """[(name, wave (S,) at 16 kHz, transcript)] of the packages extracted under root."""
    items = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (root / TESTDATA / folder / listing).read_text().splitlines():
            text, name = line.rsplit("(", 1)
            text = " ".join(w for w in text.split() if w not in ("<s>", "</s>"))
            name = name.strip(") ")
            items.append((name, load_audio(str(root / TESTDATA / folder / f"{name}.wav")), text))
    raw = np.fromfile(root / TESTDATA / "goforward.raw", dtype="<i2")   # 16 kHz, 16-bit
    items.append(("goforward", torch.from_numpy(raw.astype(np.float32) / 32768),
                  "go forward ten meters"))
    for name in SPEAKER_TEST:
        items.append((name, load_audio(str(root / SOUNDS / f"{name}.wav")),
                      name.replace("_", " ").lower()))
    return items


def pcm(wave: torch.Tensor) -> bytes:
    return (wave.clamp(-1, 1) * 32767).numpy().astype("<i2").tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True,
                        help="where pocketsphinx-testdata and alsa-utils were extracted")
    args = parser.parse_args()
    from pocketsphinx import Decoder
    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def recognise(wave: torch.Tensor) -> str:
        decoder.start_utt()
        decoder.process_raw(pcm(wave), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return re.sub(r"\(\d+\)", "", hyp.hypstr) if hyp else ""

    rows, refs, whole, split = [], [], [], []
    for name, wave, text in recordings(args.root):
        aligner = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        aligner.set_align_text(text)
        aligner.start_utt()
        aligner.process_raw(pcm(wave), full_utt=True)
        aligner.end_utt()
        words = [(re.sub(r"\(\d+\)", "", s.word), s.start_frame / 100, (s.end_frame + 1) / 100)
                 for s in aligner.seg() if not s.word.startswith(("<", "[", "+"))]
        spans = voiced_spans(wave)
        edges = [0] + [x for span in spans for x in span] + [len(wave)]
        cuts = [(edges[i] / SAMPLE_RATE, edges[i + 1] / SAMPLE_RATE)
                for i in range(0, len(edges), 2) if edges[i + 1] > edges[i]]
        overlaps = [[w for w, start, end in words if min(b, end) - max(a, start) > 0]
                    for a, b in cuts]
        refs.append(text)
        whole.append(recognise(wave))
        split.append(" ".join(t for t in (recognise(wave[a:b]) for a, b in spans) if t))
        rows.append({"recording": name, "seconds": round(len(wave) / SAMPLE_RATE, 2),
                     "segments": len(spans),
                     "cuts": [[round(a, 2), round(b, 2)] for a, b in cuts],
                     "words_cut": overlaps, "whole": whole[-1], "split": split[-1]})
        print(json.dumps(rows[-1]), flush=True)
    for setting, hyps in (("whole", whole), ("split", split)):
        errors, count = word_errors(refs, hyps)
        rows.append({"recording": "all", "setting": setting, "wer": round(100 * errors / count, 1),
                     "words": count})
        print(json.dumps(rows[-1]))
    write_rows("silence_real_speech", rows, RESULTS_DIR / "accuracy")


if __name__ == "__main__":
    main()
