"""Greedy CTC decoding and word error rate."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor,
                      blank: int = 0) -> list[list[int]]:
    """log_probs [B, T, V], lengths [B] -> per utterance the best-path labels: argmax per
    frame over the first lengths[b] frames, repeats merged, then blanks removed (a label
    repeated across a blank is kept twice)."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [B, T, V], got shape {tuple(log_probs.shape)}")
    if lengths.shape != (log_probs.shape[0],):
        raise ValueError(f"lengths must be [B={log_probs.shape[0]}], got {tuple(lengths.shape)}")
    best = log_probs.argmax(dim=-1)                                     # [B, T]
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = changed & (best != blank)
    frame = torch.arange(best.shape[1], device=best.device)
    keep &= frame[None, :] < lengths.to(best.device)[:, None]
    best, keep = best.cpu().tolist(), keep.cpu().tolist()               # one host transfer
    return [[label for label, k in zip(row, mask, strict=True) if k]
            for row, mask in zip(best, keep, strict=True)]


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> tuple[int, int]:
    """(total word edit distance, total reference words)."""
    if len(refs) != len(hyps):
        raise ValueError(f"refs and hyps must pair up, got {len(refs)} refs and {len(hyps)} hyps")
    errors = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_words, hyp_words = ref.split(), hyp.split()
        errors += edit_distance(ref_words, hyp_words)
        words += len(ref_words)
    return errors, words


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER: summed word edit distances over summed reference words (can exceed 1).
    With no reference words at all: 0.0 if every hypothesis is empty too, else inf."""
    errors, words = word_errors(refs, hyps)
    if words == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / words
