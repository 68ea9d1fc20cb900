"""Dataset, collate and a length-bucketed batch sampler.

    loader = DataLoader(SpeechDataset(records, tokenizer), collate_fn=collate, num_workers=4,
                        batch_sampler=BucketBatchSampler([r["duration"] for r in records],
                                                         max_frames=20000))
    for epoch in ...: loader.batch_sampler.set_epoch(epoch); for batch in loader: ...

With static shape classes (orthoasr/data/shapes.py) the sampler yields (index, class)
pairs, `ClassedDataset` passes the class along and `collate_to_class` pads every batch to
its class's shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..checks import check_number
from .audio import SAMPLE_RATE, load_checked_audio
from .shapes import ShapeClasses
from .tokenizer import Tokenizer

FRAMES_PER_SECOND = 100   # feature frames: LogMel's 10 ms hop


class SpeechDataset(Dataset):
    """records (load_manifest) -> items (wave float32 [S] at 16 kHz, token_ids int64 [L])."""

    def __init__(self, records: Sequence[dict], tokenizer: Tokenizer,
                 sample_rate: int = SAMPLE_RATE):
        self.records, self.tokenizer, self.sample_rate = list(records), tokenizer, sample_rate

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """AudioError if the clip cannot be read or decoded (load_checked_audio)."""
        record = self.records[index]
        wave = load_checked_audio(record["audio_filepath"], self.sample_rate)
        tokens = torch.tensor(self.tokenizer.encode(record["text"]), dtype=torch.long)
        return wave, tokens


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]], samples: int | None = None,
            tokens: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(wave [S_i], tokens [L_i])] -> (waves [B, S], wave_lengths [B], targets [B, L],
    target_lengths [B]); waves zero-padded, targets padded with the blank (0). S and L: the
    longest (at least 1 token), or `samples` / `tokens` when given (a fixed shape that must
    hold the longest)."""
    waves, token_ids = zip(*batch, strict=True)
    wave_lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    target_lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
    padded_waves = torch.zeros(len(batch), samples or int(wave_lengths.max()),
                               dtype=torch.float32)
    targets = torch.zeros(len(batch), tokens or max(1, int(target_lengths.max())),
                          dtype=torch.long)
    for i, (wave, ids) in enumerate(batch):
        padded_waves[i, :len(wave)] = wave
        targets[i, :len(ids)] = ids
    return padded_waves, wave_lengths, targets, target_lengths


class ClassedDataset(Dataset):
    """dataset[(index, class)] -> (*dataset[index], class): carries the shape class that the
    sampler chose to the collate."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, shape_class = key
        return (*self.dataset[index], shape_class)


def collate_to_class(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
                     classes: ShapeClasses, sample_rate: int = SAMPLE_RATE):
    """Like `collate`, padded to the batch's shape class: waves [batch, frames * hop samples],
    targets [batch, tokens]. Items are (wave, tokens, class) from ClassedDataset."""
    (index,) = {c for *_, c in batch}
    shape = classes[index]
    samples = shape.frames * sample_rate // FRAMES_PER_SECOND
    longest = max(len(wave) for wave, *_ in batch)
    most_tokens = max(len(ids) for _, ids, _ in batch)
    if len(batch) != shape.batch or longest > samples or most_tokens > shape.tokens:
        raise ValueError(f"a batch of {len(batch)} utterances, {longest} samples and "
                         f"{most_tokens} tokens does not fit its shape class {shape} (do "
                         "the durations it was planned from understate the audio? "
                         "load_manifest(check_audio=True) takes them from the audio headers)")
    return collate([item[:2] for item in batch], samples, shape.tokens)


def class_collate(classes: ShapeClasses):
    """The collate_fn for batches of ClassedDataset items (picklable for worker processes)."""
    return partial(collate_to_class, classes=classes)


def duration_frames(durations: Sequence[float]) -> np.ndarray:
    """Feature frames (10 ms, at least 1) of utterances of `durations` seconds."""
    return np.array([max(1, math.ceil(d * FRAMES_PER_SECOND)) for d in durations],
                    dtype=np.int64)


def length_batches(lengths: Sequence[int], batch_frames: int) -> list[list[int]]:
    """Indices of `lengths` (frames, or samples) grouped shortest first so that each
    batch's padded size, longest x count, stays within `batch_frames` (a longer single item
    gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[i] * (len(batches[-1]) + 1) <= batch_frames:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances whose padded size, batch size x longest
    utterance in 10 ms frames, stays within `max_frames` (an utterance longer than that
    forms a batch alone).

    Per epoch (set_epoch), with shuffle: utterances are shuffled, stably sorted by length
    bucket (`bucket_width` frames), packed greedily, and the batch order shuffled; without
    shuffle: sorted by length, in order. Deterministic for (seed, epoch). With
    num_replicas > 1 each rank takes every num_replicas-th batch of the same plan (the plan
    is cut to a multiple of num_replicas so ranks take equal counts).

    With `classes` (static shapes): each utterance goes to the shortest class that holds it,
    each class's utterances (shuffled, or by length) are cut into batches of exactly its
    batch size, the last one filled up by repeating that class's first utterances; the
    batches are lists of (index, class) pairs, for ClassedDataset and collate_to_class.
    """

    def __init__(self, durations: Sequence[float], max_frames: int, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 bucket_width: int = 50, classes: ShapeClasses | None = None):
        # NaN passed `<= 0`, and every comparison with it is False: one batch of everything
        check_number("max_frames", max_frames, above=0)
        check_number("bucket_width", bucket_width, least=1, integer=True)
        durations = np.asarray(durations, dtype=np.float64).reshape(-1) if len(durations) \
            else np.zeros(0)
        if bad := np.flatnonzero(~np.isfinite(durations) | (durations < 0)).tolist():
            raise ValueError(f"durations must be finite seconds >= 0; utterance {bad[0]} has "
                             f"{durations[bad[0]]} ({len(bad)} such)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.frames = duration_frames(durations)
        self.classes = classes
        self.max_frames, self.shuffle, self.seed = max_frames, shuffle, seed
        self.num_replicas, self.rank, self.bucket_width = num_replicas, rank, bucket_width
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches = self._plan(epoch)

    def _plan(self, epoch: int) -> list[list[int]]:
        if len(self.frames) == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        if self.classes is not None:
            batches = self._class_batches(rng)
        else:
            batches = self._bucket_batches(rng)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[self.rank:usable:self.num_replicas]
        return batches

    def _class_batches(self, rng) -> list[list[tuple[int, int]]]:
        order = rng.permutation(len(self.frames)) if self.shuffle else \
            np.argsort(self.frames, kind="stable")
        of = self.classes.indices_of(self.frames[order])
        batches = []
        for c, shape in enumerate(self.classes):
            members = order[of == c].tolist()
            for start in range(0, len(members), shape.batch):
                chunk = members[start:start + shape.batch]
                chunk += [members[i % len(members)] for i in range(shape.batch - len(chunk))]
                batches.append([(i, c) for i in chunk])
        return batches

    def _bucket_batches(self, rng) -> list[list[int]]:
        if self.shuffle:
            order = rng.permutation(len(self.frames))
            buckets = self.frames[order] // self.bucket_width
            order = order[np.argsort(buckets, kind="stable")]
        else:
            order = np.argsort(self.frames, kind="stable")
        batches, current, longest = [], [], 0
        for index in order.tolist():
            frames = int(self.frames[index])
            if current and (len(current) + 1) * max(longest, frames) > self.max_frames:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, frames)
        batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self._batches])

    def __len__(self) -> int:
        return len(self._batches)
