"""Static shape classes: a few (utterances, frames, tokens) batch shapes per run, so that the
kernels and CUDA graphs of a training run meet a handful of shapes instead of one per batch.

    classes = shape_classes(frames, tokens, max_frames=40000, count=8)
    classes[classes.index_of(longest_frames)]  -> ShapeClass(batch, frames, tokens)

The padded lengths are chosen from the training set's own lengths (`class_lengths`: the
padding-minimal choice, exact); each class's batch size fills `max_frames`, and its target
width is the most tokens of any utterance in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class ShapeClass(NamedTuple):
    batch: int    # utterances per batch
    frames: int   # feature frames (10 ms) every utterance is padded to
    tokens: int   # target width every transcript is padded to


class ShapeClasses(tuple):
    """ShapeClass entries by increasing `frames`."""

    def index_of(self, frames: int) -> int:
        """The class of an utterance (or batch) whose longest is `frames`: the shortest class
        that holds it."""
        return int(self.indices_of([frames])[0])

    def indices_of(self, frames) -> np.ndarray:
        """index_of for each of `frames` (an array of frame counts)."""
        frames = np.asarray(frames)
        indices = np.searchsorted([c.frames for c in self], frames)
        if frames.size and indices.max() == len(self):
            raise ValueError(f"{int(frames.max())} frames is longer than the longest shape "
                             f"class ({self[-1].frames})")
        return indices


def class_lengths(frames: Sequence[int], count: int, step: int = 8) -> tuple[int, ...]:
    """The at most `count` padded lengths, multiples of `step`, that minimise the total
    padding when every utterance is padded up to the shortest length that holds it.

    Exact dynamic programme over the distinct rounded lengths r_1 < ... < r_M (n_m utterances
    each): best[k][j] = min over i < j of best[k-1][i] + cost(i+1..j), where a class ending
    at r_j pads every utterance it holds to r_j. O(count * M^2) with M <= max / step.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size == 0 or frames.min() < 1:
        raise ValueError("frames must be a non-empty list of positive lengths")
    rounded = -(-frames // step) * step
    values, counts = np.unique(rounded, return_counts=True)
    M = len(values)
    cum_n = np.concatenate([[0], np.cumsum(counts)])              # utterances up to i
    cum_s = np.concatenate([[0], np.cumsum(counts * values)])     # their frames
    # cost[i, j]: pad the utterances of values i..j-1 (0-based, j > i) to values[j-1]
    i, j = np.meshgrid(np.arange(M + 1), np.arange(M + 1), indexing="ij")
    top = values[np.clip(j - 1, 0, M - 1)]
    cost = np.where(j > i, top * (cum_n[j] - cum_n[i]) - (cum_s[j] - cum_s[i]), np.inf)
    best = cost[0].copy()                     # one class covering values 0..j-1
    choice = [np.zeros(M + 1, dtype=np.int64)]
    for _ in range(1, min(count, M)):
        total = best[:, None] + cost          # last class covers i..j-1
        arg = np.argmin(total, axis=0)
        best = total[arg, np.arange(M + 1)]
        choice.append(arg)
    ends, j = [], M
    for arg in reversed(choice):
        ends.append(j)
        j = int(arg[j])
        if j == 0:
            break
    return tuple(int(values[e - 1]) for e in sorted(ends))


def shape_classes(frames: Sequence[int], tokens: Sequence[int], max_frames: int,
                  count: int, step: int = 8) -> ShapeClasses:
    """Classes for utterances of `frames` feature frames and `tokens` target tokens: lengths
    from `class_lengths`, batch = max_frames // length (at least 1), target width = the most
    tokens among the utterances a class holds (at least 1)."""
    lengths = class_lengths(frames, count, step)
    widths = [1] * len(lengths)
    classes = ShapeClasses(ShapeClass(max(1, max_frames // n), n, 0) for n in lengths)
    for c, t in zip(classes.indices_of(frames), tokens, strict=True):
        widths[c] = max(widths[c], int(t))
    return ShapeClasses(ShapeClass(c.batch, c.frames, w) for c, w in zip(classes, widths))


def padding_fraction(frames: Sequence[int], classes: ShapeClasses) -> float:
    """Share of the padded frames that are padding when each utterance is padded to its
    class's length (the batch fill repeats real utterances: not counted as padding)."""
    lengths = np.array([c.frames for c in classes])
    return 1.0 - float(np.sum(frames)) / float(lengths[classes.indices_of(frames)].sum())
