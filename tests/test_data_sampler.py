import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from orthoasr.data import BucketBatchSampler, SpeechDataset, Tokenizer, collate, write_wav


def _durations(n=300, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 12.0, n).round(3).tolist()


def _check_plan(sampler, durations, max_frames):
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(durations)))                # each utterance exactly once
    for batch in batches:
        frames = max(math.ceil(durations[i] * 100) for i in batch)
        assert len(batch) == 1 or len(batch) * frames <= max_frames
    return batches


def test_packing_and_determinism():
    durations = _durations()
    sampler = BucketBatchSampler(durations, max_frames=6000, seed=1)
    first = _check_plan(sampler, durations, 6000)
    # buckets keep lengths together: padding waste stays small
    waste = sum(len(b) * max(durations[i] for i in b) - sum(durations[i] for i in b)
                for b in first) / sum(durations)
    assert waste < 0.15
    assert BucketBatchSampler(durations, 6000, seed=1).__iter__().__next__() == first[0]
    sampler.set_epoch(1)
    second = _check_plan(sampler, durations, 6000)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_no_shuffle_is_sorted_and_long_utterances_alone():
    durations = [3.0, 1.0, 20.0, 2.0, 1.5]
    sampler = BucketBatchSampler(durations, max_frames=1000, shuffle=False)
    batches = _check_plan(sampler, durations, 1000)
    assert batches == [[1, 4, 3], [0], [2]]      # 4 x 300 frames > 1000; 20 s goes alone


def test_replicas_split_the_same_plan():
    durations = _durations(101)
    plans = [list(BucketBatchSampler(durations, 3000, seed=4, num_replicas=3, rank=r))
             for r in range(3)]
    assert len({len(p) for p in plans}) == 1
    seen = [i for p in plans for b in p for i in b]
    assert len(seen) == len(set(seen))
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(durations, 3000, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="max_frames"):
        BucketBatchSampler(durations, 0)


def test_dataset_collate_and_workers(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["one two three", "the cat sat on the mat", "go", "a longer sentence than the rest"]
    records = []
    for i, text in enumerate(texts):
        n = int(16000 * (0.3 + 0.2 * i))
        path = tmp_path / f"{i}.wav"
        write_wav(path, 0.2 * rng.standard_normal(n), 16000)
        records.append({"audio_filepath": str(path), "duration": n / 16000, "text": text})
    tok = Tokenizer.train(texts * 5, vocab_size=40)
    dataset = SpeechDataset(records, tok)
    wave, tokens = dataset[1]
    assert wave.dtype == torch.float32 and tokens.dtype == torch.long
    assert tok.decode(tokens.tolist()) == texts[1]

    sampler = BucketBatchSampler([r["duration"] for r in records], max_frames=400, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    seen = 0
    for waves, wave_lengths, targets, target_lengths in loader:
        assert waves.shape == (len(wave_lengths), int(wave_lengths.max()))
        assert targets.shape == (len(target_lengths), int(target_lengths.max()))
        for b in range(len(wave_lengths)):
            assert (waves[b, wave_lengths[b]:] == 0).all()
            assert (targets[b, target_lengths[b]:] == 0).all()
            assert (targets[b, :target_lengths[b]] > 0).all()
        seen += len(wave_lengths)
    assert seen == len(records)
