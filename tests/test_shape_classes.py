"""Static shape classes (orthoasr/data/shapes.py): the padding-minimal lengths against brute
force, padding <= 10% with a few classes on corpus-like length distributions, the sampler's
class batches and the collate's class shapes, and a training run that uses them."""

import itertools
import math

import numpy as np
import pytest
import torch
from test_train import tiny_run, write_corpus

from orthoasr.data import (
    BucketBatchSampler,
    ClassedDataset,
    class_collate,
    duration_frames,
    padding_fraction,
    shape_classes,
)
from orthoasr.data.shapes import class_lengths
from orthoasr.train import train


def _brute_force_padding(frames, count, step=8):
    rounded = [-(-f // step) * step for f in frames]
    values = sorted(set(rounded))
    best = math.inf
    for k in range(1, count + 1):
        for cut in itertools.combinations(values[:-1], k - 1):
            ends = [*cut, values[-1]]
            best = min(best, sum(min(e for e in ends if e >= r) - r for r in rounded))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_class_lengths_are_padding_minimal(seed):
    rng = np.random.default_rng(seed)
    frames = rng.integers(1, 240, int(rng.integers(1, 25))).tolist()
    count = int(rng.integers(1, 5))
    lengths = class_lengths(frames, count)
    assert len(lengths) <= count and list(lengths) == sorted(set(lengths))
    padding = sum(min(n for n in lengths if n >= -(-f // 8) * 8) - -(-f // 8) * 8
                  for f in frames)
    assert padding == _brute_force_padding(frames, count)


def _librispeech_like(rng, n):
    """An approximation of LibriSpeech train-clean's utterance lengths (seconds): most near
    the segmenter's ~14-16 s, a spread of shorter ones, a few long ones up to ~25 s."""
    return np.concatenate([np.clip(rng.normal(14.8, 1.2, int(0.65 * n)), 10, 17.5),
                           rng.uniform(1.5, 14, int(0.32 * n)),
                           rng.uniform(17.5, 24.5, n - int(0.65 * n) - int(0.32 * n))])


@pytest.mark.parametrize("name, count", [("librispeech-like", 8), ("uniform 0.5-12 s", 8),
                                         ("log-normal", 12)])
def test_a_few_classes_pad_at_most_ten_percent(name, count):
    """8 classes for the corpus-like spreads; the wide log-normal one (0.5-40 s) needs 12
    (8 pad 13.7% of its frames)."""
    rng = np.random.default_rng(0)
    durations = {"librispeech-like": lambda: _librispeech_like(rng, 5000),
                 "uniform 0.5-12 s": lambda: rng.uniform(0.5, 12, 5000),
                 "log-normal": lambda: rng.lognormal(1.0, 0.5, 5000)}[name]()
    frames = duration_frames(durations)
    classes = shape_classes(frames, np.ones_like(frames), max_frames=40000, count=count)
    assert len(classes) == count
    assert padding_fraction(frames, classes) <= 0.10
    fewer = shape_classes(frames, np.ones_like(frames), max_frames=40000, count=count // 2)
    assert padding_fraction(frames, fewer) > padding_fraction(frames, classes)
    for c in classes:
        assert c.batch == max(1, 40000 // c.frames) and c.frames % 8 == 0


def test_sampler_batches_have_their_class_shape():
    durations = np.random.default_rng(1).uniform(0.3, 6.0, 157).round(3).tolist()
    frames = duration_frames(durations)
    tokens = (frames // 20 + 1).tolist()
    classes = shape_classes(frames, tokens, max_frames=3000, count=4)
    sampler = BucketBatchSampler(durations, 3000, seed=3, classes=classes)
    batches = list(sampler)
    seen = set()
    for batch in batches:
        (c,) = {k for _, k in batch}
        assert len(batch) == classes[c].batch
        assert all(frames[i] <= classes[c].frames and tokens[i] <= classes[c].tokens
                   for i, _ in batch)
        assert all(classes.index_of(frames[i]) == c for i, _ in batch)
        seen |= {i for i, _ in batch}
    assert seen == set(range(len(durations)))                # every utterance each epoch
    assert batches == list(BucketBatchSampler(durations, 3000, seed=3, classes=classes))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    halves = [list(BucketBatchSampler(durations, 3000, seed=3, classes=classes,
                                      num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(batches) // 2


def test_collate_pads_to_the_class_shape():
    classes = shape_classes([50, 120], [3, 9], max_frames=400, count=2)
    items = [(torch.ones(16000 * 110 // 100), torch.arange(1, 8)),
             (torch.ones(16000 * 60 // 100), torch.arange(1, 4))]
    dataset = ClassedDataset(items)
    c = classes.index_of(110)
    batch = [dataset[(0, c)], dataset[(1, c)]]
    collate = class_collate(classes)
    with pytest.raises(ValueError, match="shape class"):
        collate(batch)                                     # class batch is 3: two do not fit
    batch.append(dataset[(1, c)])
    waves, wave_lengths, targets, target_lengths = collate(batch)
    shape = classes[c]
    assert waves.shape == (3, shape.frames * 160) and targets.shape == (3, shape.tokens)
    assert wave_lengths.tolist() == [17600, 9600, 9600]
    assert target_lengths.tolist() == [7, 3, 3]
    assert (waves[1, 9600:] == 0).all() and (targets[1, 3:] == 0).all()


def test_training_with_shape_classes(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    train(tiny_run(corpus, "shape_classes=3"), tmp_path / "run")
    out = capsys.readouterr().out
    assert "shape classes (utterances x frames):" in out
    with pytest.raises(ValueError, match="buckets_per_step"):
        tiny_run(corpus, "shape_classes=3", "buckets_per_step=2")
