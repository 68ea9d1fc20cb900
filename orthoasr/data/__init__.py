"""Speech data: manifests, audio, log-mel features, tokenizer, batching, synthetic corpus.

    records = load_manifest("data/synth-tiny/train.jsonl")      # or a LibriSpeech folder
    tokenizer = Tokenizer.train([r["text"] for r in records], 256, "bpe.model")
    dataset = SpeechDataset(records, tokenizer)                  # (wave [S], tokens [L])
    sampler = BucketBatchSampler([r["duration"] for r in records], max_frames=20000)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    # static shapes: BucketBatchSampler(..., classes=shape_classes(...)), ClassedDataset,
    # class_collate(classes)
    feats, frames = LogMel().to(device)(waves.to(device), wave_lengths.to(device))

The corpus itself: orthoasr.data.synth.synthesize_corpus (`orthoasr synth`).
"""

from .audio import (
    SAMPLE_RATE,
    AudioError,
    AudioInfo,
    audio_info,
    downmix,
    load_audio,
    load_checked_audio,
    read_audio,
    resample,
    write_wav,
)
from .features import LogMel, SpecAugment, mel_filterbank
from .manifest import ManifestError, Records, load_manifest, normalize_text, write_manifest
from .sampler import (
    BucketBatchSampler,
    ClassedDataset,
    SpeechDataset,
    class_collate,
    collate,
    duration_frames,
    length_batches,
)
from .shapes import ShapeClass, ShapeClasses, padding_fraction, shape_classes
from .tokenizer import BLANK, Tokenizer

__all__ = [
    "SAMPLE_RATE", "AudioError", "AudioInfo", "audio_info", "load_audio", "load_checked_audio",
    "read_audio", "downmix",
    "resample", "write_wav", "LogMel", "SpecAugment", "mel_filterbank", "ManifestError",
    "Records", "load_manifest", "normalize_text", "write_manifest", "BucketBatchSampler",
    "SpeechDataset", "collate", "length_batches", "BLANK", "Tokenizer", "ClassedDataset",
    "class_collate", "duration_frames", "ShapeClass", "ShapeClasses", "padding_fraction",
    "shape_classes",
]
