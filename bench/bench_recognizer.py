"""How fast `orthoasr.Recognizer` transcribes: seconds of audio per second of wall time, the
whole path a user calls (waveform checks, silence cutting, log-mel, padding to shape
classes, the encoder, greedy CTC decoding, text), for a supernet subnet decoded in bf16 and
in fp32 and for the exported subnet of the same gates.

    python -m bench.bench_recognizer [--config configs/paper.yaml] [--clips 64] [--seconds 10]
    python -m bench.bench_recognizer --config configs/tiny.yaml --clips 4 --seconds 2 --out /tmp/r

The model has its initial weights (only the cost is measured, not what it says); the clips
are noise at a speech-like level, so silence cutting keeps each whole. Each provider
transcribes the clips once to warm up (CUDA graphs captured, kernels compiled), then
`--repeats` times; a row holds the median. Rows go to <out or bench/results>/recognizer.json
(table "recognizer"): case (config, gates, clips x seconds), mode `transcribe`, provider
(`supernet_fp32`, `supernet_bf16`: Recognizer over the masked supernet, as from_checkpoint
builds it, decoding in fp32 or under a bf16 autocast (GPU only); `subnet_fp32`: over
extract_subnet's compact model, as from_subnet; `subnet_bf16`, as from_subnet decodes an
export of a bf16 run on a GPU, its encoder replayed from CUDA graphs; `subnet_bf16_eager`:
the same with the graphs turned off, as the Recognizer ran an export before 2026-12-06), ms
(one pass over all clips),
audio_s_per_s, text_chars (the texts' length: an untrained model's output, decoded on the
host, differs between gates); the baseline is supernet_fp32 of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.harness import write_rows
from orthoasr import ConformerSupernet, Recognizer, extract_subnet
from orthoasr.data import SAMPLE_RATE, Tokenizer
from orthoasr.run_config import load_run_config

WORDS = ("the red fox jumps over a lazy dog while seven birds sing in green trees "
         "near quiet water and bright stones").split()


def tokenizer_for(vocab_size: int) -> Tokenizer:
    """A BPE tokenizer of at most vocab_size labels (what it says is not measured)."""
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (12,), generator=gen))
             for _ in range(400)]
    return Tokenizer.train(texts, vocab_size)


def half_gates(num_units: int) -> torch.Tensor:
    """Every other unit on: half the heads, channel chunks and conv modules. (N,)"""
    return (torch.arange(num_units) % 2 == 0).float()


def clips(count: int, seconds: float) -> list[torch.Tensor]:
    """`count` 16 kHz waveforms of noise at -20 dBFS, each `seconds` long."""
    gen = torch.Generator().manual_seed(1)
    return [0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=gen) for _ in range(count)]


def timed_passes(rec: Recognizer, waves: list[torch.Tensor], repeats: int
                 ) -> tuple[float, int]:
    """Median wall milliseconds of rec.transcribe(waves), after one pass to warm up, and
    the characters of its texts (an untrained model's output, which the host decodes: its
    length moves the time from model to model)."""
    texts = rec.transcribe(waves)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rec.transcribe(waves)       # returns texts: the device's work is done
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), sum(map(len, texts))


def run(config: str, count: int, seconds: float, repeats: int, device: torch.device
        ) -> list[dict]:
    cfg = load_run_config(config, []).model
    torch.manual_seed(0)
    model = ConformerSupernet(cfg).to(device).eval()
    tokenizer = tokenizer_for(cfg.vocab_size)
    waves = clips(count, seconds)
    audio_s = count * seconds
    head = len(cfg.budgets) - 1
    rows = []
    for name, gates in (("all on", torch.ones(model.num_units)),
                        ("half", half_gates(model.num_units))):
        case = f"{config.rsplit('/', 1)[-1]} {name}, {count} x {seconds:g} s"
        subnet = extract_subnet(model, gates, head).to(device).eval()
        recognizers = {
            "supernet_fp32": Recognizer(model, tokenizer, gates, head, frozen_weights=True),
            "supernet_bf16": Recognizer(model, tokenizer, gates, head, frozen_weights=True,
                                        bf16=True),
            "subnet_fp32": Recognizer(subnet, tokenizer),
            "subnet_bf16": Recognizer(subnet, tokenizer, bf16=True),
            "subnet_bf16_eager": Recognizer(subnet, tokenizer, bf16=True),
        }
        recognizers["subnet_bf16_eager"].encoder.use_graphs = False
        for provider, rec in recognizers.items():
            if "bf16" in provider and device.type != "cuda":
                continue                     # bf16 decoding is for GPUs only
            ms, chars = timed_passes(rec, waves, repeats)
            rows.append({"table": "recognizer", "case": case, "mode": "transcribe",
                         "provider": provider, "baseline": "supernet_fp32", "ms": ms,
                         "time_unit": "ms", "audio_s_per_s": audio_s / (ms / 1e3),
                         "text_chars": chars})
            print(f"{case:40s} {provider:14s} {ms:9.1f} ms  "
                  f"{audio_s / (ms / 1e3):9.0f} s of audio / s  {chars} characters", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for recognizer.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = run(args.config, args.clips, args.seconds, args.repeats, device)
    print(f"rows -> {write_rows('recognizer', rows, args.out)}")


if __name__ == "__main__":
    main()
