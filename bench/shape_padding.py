"""How much padding static shape classes cost (issue 14 item 1): the share of padded frames
for 4, 8 and 12 classes on each training manifest given and on a LibriSpeech-like length
distribution (an approximation, see tests/test_shape_classes.py), against the plain bucket
sampler's own padding on the same utterances.

    python -m bench.shape_padding [--max-frames 40000] MANIFEST...
"""

from __future__ import annotations

import argparse

import numpy as np

from orthoasr.data import (
    BucketBatchSampler,
    duration_frames,
    load_manifest,
    padding_fraction,
    shape_classes,
)


def librispeech_like(n: int = 28000, seed: int = 0) -> np.ndarray:
    """Seconds: most near the segmenter's ~14-16 s, a spread of shorter ones, a few long."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.clip(rng.normal(14.8, 1.2, int(0.65 * n)), 10, 17.5),
                           rng.uniform(1.5, 14, int(0.32 * n)),
                           rng.uniform(17.5, 24.5, n - int(0.65 * n) - int(0.32 * n))])


def bucket_padding(durations, max_frames: int) -> float:
    """Padding share of the plain (shape-free) bucket sampler's batches."""
    frames = duration_frames(durations)
    batches = list(BucketBatchSampler(durations, max_frames, seed=0))
    padded = sum(len(b) * max(frames[i] for i in b) for b in batches)
    return 1.0 - frames.sum() / padded


def report(name: str, durations, max_frames: int) -> None:
    frames = duration_frames(durations)
    cells = []
    for count in (4, 8, 12):
        classes = shape_classes(frames, np.ones_like(frames), max_frames, count)
        cells.append(f"{count} classes {padding_fraction(frames, classes):6.1%}")
    print(f"{name:40s} {len(frames):6d} utts  buckets {bucket_padding(durations, max_frames):6.1%}"
          f"  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", nargs="*")
    parser.add_argument("--max-frames", type=int, default=40000)
    args = parser.parse_args()
    report("LibriSpeech-like (approximation)", librispeech_like(), args.max_frames)
    for path in args.manifests:
        report(path, [r["duration"] for r in load_manifest(path, check_audio=False)],
               args.max_frames)


if __name__ == "__main__":
    main()
