"""Sentencepiece BPE with the CTC blank at id 0.

Our id = sentencepiece id + 1, so 0 is free for the blank and `vocab_size` counts it.
Texts are normalised (manifest.normalize_text) before training and encoding. The model
travels inside checkpoints as bytes: `to_bytes()` / `Tokenizer.from_bytes(b)`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import sentencepiece as spm

from .manifest import normalize_text

BLANK = 0


class Tokenizer:
    def __init__(self, model_path: str | os.PathLike | None = None, *,
                 model_bytes: bytes | None = None):
        if (model_path is None) == (model_bytes is None):
            raise ValueError("give exactly one of model_path and model_bytes")
        if model_bytes is None:
            with open(model_path, "rb") as f:
                model_bytes = f.read()
        self._load(model_bytes)

    def _load(self, model_bytes: bytes) -> None:
        self._bytes = bytes(model_bytes)
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(self._bytes)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              model_path: str | os.PathLike | None = None) -> Tokenizer:
        """Train BPE on `texts`; `vocab_size` includes the blank. Writes `model_path` if given.

        The vocabulary is a soft limit: on a small corpus sentencepiece may stop earlier,
        and `vocab_size` then reports the smaller size that was reached. Every character of
        `texts` gets a piece, so none of them encodes to the unknown piece: sentencepiece
        would skip texts longer than its max_sentence_length (4192 bytes by default), and
        characters found only in those, so that limit is raised to the longest text.
        """
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (blank, unk, one piece), got {vocab_size}")
        lines = [t for t in (normalize_text(t) for t in texts) if t]
        if not lines:
            raise ValueError("no non-empty text to train the tokenizer on")
        # sentencepiece gives every character (the word boundary too) a piece of its own
        characters = set("".join(lines).replace(" ", "\u2581"))
        if vocab_size < len(characters) + 2:
            raise ValueError(
                f"vocab_size (model.vocab_size in a run config) must be >= "
                f"{len(characters) + 2} for these texts: blank, unknown and one piece for each "
                f"of their {len(characters)} characters with the word boundary; got {vocab_size}")
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer, model_type="bpe",
            vocab_size=vocab_size - 1, character_coverage=1.0, hard_vocab_limit=False,
            max_sentence_length=max(4192, *(len(line.encode()) for line in lines)),
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, normalization_rule_name="identity",
            num_threads=os.cpu_count() or 1, minloglevel=2)
        tokenizer = cls(model_bytes=buffer.getvalue())
        if model_path is not None:
            tokenizer.save(model_path)
        return tokenizer

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> Tokenizer:
        return cls(model_bytes=model_bytes)

    def to_bytes(self) -> bytes:
        return self._bytes

    def save(self, model_path: str | os.PathLike) -> None:
        with open(model_path, "wb") as f:
            f.write(self._bytes)

    @property
    def vocab_size(self) -> int:
        """Number of output classes including the blank."""
        return self.sp.get_piece_size() + 1

    @property
    def unknown_id(self) -> int:
        """The id of the unknown piece, which a character without a piece encodes to."""
        return self.sp.unk_id() + 1

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(normalize_text(text))]

    def decode(self, ids: Iterable[int]) -> str:
        """Blank (0) ids are dropped."""
        return self.sp.decode([int(i) - 1 for i in ids if int(i) != BLANK])

    def __getstate__(self):           # picklable for DataLoader workers
        return {"model_bytes": self._bytes}

    def __setstate__(self, state):
        self._load(state["model_bytes"])
