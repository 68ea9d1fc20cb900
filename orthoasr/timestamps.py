"""Word timestamps of greedy CTC transcripts: when the model emitted each word.

Greedy CTC gives each 40 ms output frame a label; a token is a run of one non-blank label
(`decoding.token_runs`). A word runs from the first frame of its first token to the end of
the last frame of its last token. CTC models emit a token in a spike of a frame or two,
often a little after its sound begins, and blanks fill the rest, so the times say where the
model emitted each word, at 40 ms resolution, not where the word's sound begins and ends.
A word's first token can be a word boundary alone (sentencepiece's "▁" before "r", "e", "d").

    rec.transcribe(["a.wav"], timestamps=True)
    # -> [Transcript(text="put the red ball", words=[Word("put", 0.52, 0.6), ...])]

Words are split from the transcript's text at whitespace, so they read as its words: each
token's text is how it reads inside a transcript (`label_texts`), and a word's characters
name the tokens that wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .data.tokenizer import BLANK, Tokenizer


class Word(NamedTuple):
    """A word and when the model emitted it: seconds from the start of the recording."""
    text: str
    start: float
    end: float


class Transcript(NamedTuple):
    """A recording's text and its words in order: the words are `text.split()`, and they
    join by single spaces into the text."""
    text: str
    words: list[Word]


def label_texts(tokenizer: Tokenizer) -> list[str]:
    """Each label's text as it reads after a word, by tokenizer.decode: sentencepiece's
    "▁the" -> " the", "ed" -> "ed", "▁" -> " ", the blank (0) -> "". A transcript decodes
    to its tokens' texts one after the other (sentencepiece drops a leading space, which
    no word holds). The reading is taken after the first label that decodes to more than
    whitespace."""
    tokens = range(BLANK + 1, tokenizer.vocab_size)
    anchor = next((label for label in tokens if tokenizer.decode([label]).strip()), None)
    if anchor is None:
        raise ValueError("the tokenizer decodes every label to whitespace")
    head = tokenizer.decode([anchor])
    texts = [""]
    for label in tokens:
        text = tokenizer.decode([anchor, label])
        if not text.startswith(head):
            raise ValueError(f"the tokenizer decodes label {label} after label {anchor} into "
                             f"{text!r}, which does not start with {head!r}")
        texts.append(text[len(head):])
    return texts


def word_frames(runs: Sequence[tuple[int, int, int]], texts: Sequence[str]
                ) -> list[tuple[str, int, int]]:
    """runs: [(label, first frame, end frame)] of a transcript's tokens (token_runs);
    texts: each label's text (label_texts) -> [(word, first frame, end frame)]: the words
    of the tokens' texts joined, split at whitespace. A word starts with its first token:
    the word boundaries alone ("▁") just before it, else the token of its first character;
    it ends with the token of its last character."""
    words: list[tuple[str, int, int]] = []
    chars: list[str] = []                   # the word being read
    first = end = 0
    opening = None      # the first frame of the boundaries read since the last character
    for label, run_first, run_end in runs:
        text = texts[label]
        if text.isspace() and opening is None:
            opening = run_first
        for char in text:
            if char.isspace():              # str.split's whitespace
                if chars:
                    words.append(("".join(chars), first, end))
                    chars = []
                continue
            if not chars:
                first = run_first if opening is None else opening
            opening = None
            chars.append(char)
            end = run_end
    if chars:
        words.append(("".join(chars), first, end))
    return words


__all__ = ["Word", "Transcript", "label_texts", "word_frames"]
