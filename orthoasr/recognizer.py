"""`Recognizer`: speech in, text out, with one subnet of a trained supernet or an exported
subnet, its tokenizer and the feature extractor it was trained with.

    rec = Recognizer.from_checkpoint("runs/demo/checkpoint.pt", budget=0.4)
    rec = Recognizer.from_subnet("runs/demo/sub.pt")       # exports carry their tokenizer
    rec.transcribe(["a.wav", "b.flac", waveform_16k])     # -> ["put the red ...", ...]

Files are read and resampled by `orthoasr.data.load_audio`; waveforms are 1-D at 16 kHz.
Utterances are decoded greedily in batches of similar length; on a GPU a supernet's encoder
is replayed from CUDA graphs of padded shape classes (orthoasr.graphs.GraphedEncoder).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import LogMel, Tokenizer, length_batches, load_audio
from .decoding import greedy_ctc_decode
from .devices import resolve_device
from .export import CompactConformer, load_subnet
from .graphs import GraphedEncoder
from .model import ConformerSupernet

Audio = str | os.PathLike | np.ndarray | torch.Tensor


class Recognizer:
    """A model that maps log-mel features to CTC log-probs, with the subnet's `gates` and
    `head` for a supernet (None for an exported subnet), and its tokenizer. frozen_weights:
    nothing trains the model while this Recognizer is in use, so a supernet's encoder keeps
    its weights' compute-dtype copies between calls (GraphedEncoder); from_checkpoint's
    model is its own."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, gates: torch.Tensor | None = None,
                 head: int = -1, batch_frames: int = 40000, frozen_weights: bool = False):
        if isinstance(model, ConformerSupernet) == (gates is None):
            raise ValueError("gates are needed with a ConformerSupernet and only with it")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.gates = None if gates is None else gates.to(self.device)
        # modules with every unit off: left out of the encoder's passes (no launches)
        self.skip = frozenset() if gates is None else model.dead_modules(gates)
        self.head, self.batch_frames = head, batch_frames
        # a supernet's encoder: padded to shape classes and replayed from CUDA graphs on a GPU
        self.encoder = GraphedEncoder(model, frozen_weights=frozen_weights) \
            if gates is not None else None
        self.logmel = LogMel(n_mels=model.cfg.num_mel_bins).to(self.device)
        self.min_samples = 4 * self.logmel.hop      # 4 frames: the frontend's 4x subsampling

    @classmethod
    def from_checkpoint(cls, path: str | Path, budget: float | None = None,
                        device: str = "cpu") -> Recognizer:
        """The subnet of `budget` (one of the run's budgets; None: the largest) of training
        checkpoint `path`. A stage-1 checkpoint has no frozen subnets: only the full
        supernet (budget None) is available from it."""
        from .evaluate import load_trained
        trained = load_trained(path, resolve_device(device))
        budgets = list(trained.model.cfg.budgets)
        if trained.masks is None:
            if budget is not None:
                raise ValueError(f"budget {budget}: {path} is from stage 1 (step "
                                 f"{trained.step}), before subnets are chosen; leave the "
                                 "budget out for the full supernet")
            gates, head = torch.ones(trained.model.num_units), len(budgets) - 1
        else:
            head = budgets.index(max(budgets)) if budget is None else budget_index(budgets,
                                                                                  budget)
            gates = trained.subnet_gates(head)
        return cls(trained.model, trained.tokenizer(), gates, head, frozen_weights=True)

    @classmethod
    def from_subnet(cls, path: str | Path, device: str = "cpu") -> Recognizer:
        """An exported subnet (`orthoasr export`), which carries its tokenizer."""
        sub: CompactConformer = load_subnet(path, map_location=resolve_device(device))
        if sub.tokenizer_bytes is None:
            raise ValueError(f"subnet {path} was saved without its tokenizer; export it again "
                             "with `orthoasr export` (which stores it)")
        return cls(sub, Tokenizer.from_bytes(sub.tokenizer_bytes))

    @torch.no_grad()
    def transcribe(self, paths_or_waveforms: Sequence[Audio]) -> list[str]:
        """One transcript per item, in order. Items: audio file paths (WAV, FLAC; any rate
        and channel count) or 1-D waveforms at 16 kHz. Clips under 40 ms (4 feature
        frames) get an empty transcript."""
        if isinstance(paths_or_waveforms, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise TypeError("paths_or_waveforms must be a list of paths or waveforms, got one "
                            f"{type(paths_or_waveforms).__name__}; wrap it in a list")
        waves = [self._waveform(i, item) for i, item in enumerate(paths_or_waveforms)]
        texts = [""] * len(waves)
        decodable = [i for i, w in enumerate(waves) if len(w) >= self.min_samples]
        sizes = [len(waves[i]) // self.logmel.hop for i in decodable]
        for batch in length_batches(sizes, self.batch_frames):
            items = [decodable[j] for j in batch]
            for i, text in zip(items, self._decode([waves[i] for i in items]), strict=True):
                texts[i] = text
        return texts

    def _waveform(self, index: int, item: Audio) -> torch.Tensor:
        """Item `index` of a transcribe call as a 1-D float32 waveform at 16 kHz."""
        if isinstance(item, (str, os.PathLike)):
            wave, name = load_audio(item), f"item {index} ({os.fspath(item)})"
        else:
            wave, name = torch.as_tensor(item, dtype=torch.float32), f"item {index}"
            if wave.dim() != 1:
                raise ValueError(f"waveforms must be 1-D (samples at 16 kHz), got shape "
                                 f"{tuple(wave.shape)} for {name}")
        # a NaN sample spreads over its whole utterance's features: the transcript would
        # come out empty without a word
        if not bool(torch.isfinite(wave).all()):
            raise ValueError(f"{name} holds NaN or inf samples")
        return wave

    def _decode(self, waves: list[torch.Tensor]) -> list[str]:
        """Greedy transcripts of one batch of 1-D waveforms."""
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        batch = nn.utils.rnn.pad_sequence(waves, batch_first=True).to(self.device)
        feats, frame_lengths = self.logmel(batch, lengths)
        feats = feats.to(next(self.model.parameters()).dtype)
        if self.gates is None:
            log_probs, out_lengths = self.model(feats, frame_lengths)
        else:
            x, out_lengths = self.model.embed(feats, frame_lengths)
            log_probs = self.encoder(x, out_lengths, self.gates, self.head, self.skip)
        best = greedy_ctc_decode(log_probs, out_lengths, vocab_size=self.tokenizer.vocab_size)
        return [self.tokenizer.decode(ids) for ids in best]


def budget_index(budgets: Sequence[float], budget: float) -> int:
    """Index of `budget` among a run's `budgets` (compared to 1e-9)."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool):
        raise TypeError(f"budget must be a number (one of the run's budgets "
                        f"{list(budgets)}), got {budget!r}")
    for index, value in enumerate(budgets):
        if math.isclose(value, budget, abs_tol=1e-9):
            return index
    raise ValueError(f"budget {budget} is not one of the run's budgets {list(budgets)}")


__all__ = ["Recognizer", "budget_index"]
