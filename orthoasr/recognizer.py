"""`Recognizer`: speech in, text out, with one subnet of a trained supernet or an exported
subnet, its tokenizer and the feature extractor it was trained with.

    rec = Recognizer.from_checkpoint("runs/demo/checkpoint.pt", budget=0.4)
    rec = Recognizer.from_subnet("runs/demo/sub.pt")       # exports carry their tokenizer
    rec.transcribe(["a.wav", "b.flac", waveform_16k])     # -> ["put the red ...", ...]
    rec.transcribe_iter(paths)      # an iterator: each text as soon as it is decoded
    rec.transcribe(paths, timestamps=True)   # -> [Transcript(text, words=[Word(text,
                                             #     start, end), ...]), ...] (seconds)

Files are read and resampled by `orthoasr.data.load_audio`; waveforms are 1-D, at 16 kHz
unless `sample_rate` says otherwise (then resampled the same way).
Items are read as they are needed and decoded in groups of about `group_seconds` of audio,
so a long list of files is never in memory at once and the first texts come out early.
Utterances are decoded greedily in batches of similar length; on a GPU the encoder of a
supernet or an exported subnet is replayed from CUDA graphs of padded shape classes
(orthoasr.graphs.GraphedEncoder, GraphedSubnet).

Long recordings are decoded in pieces (`chunk_windows`): attention's memory and time grow
with the square of a clip's length, and a model sees clips as long as its training data's.
Each piece keeps `chunk_seconds` of output frames and also sees `context_seconds` of audio
on each side; the pieces' frame labels are joined before repeats and blanks are removed, so
a word across a cut is not lost or doubled.

Silence is cut out first (`silence_db`, orthoasr.silence): each voiced segment of a
recording is decoded alone (in pieces if long) and the segments' texts are joined by spaces.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checks import check_number
from .config import budget_index
from .data import SAMPLE_RATE, LogMel, Tokenizer, length_batches, load_audio, resample
from .data.audio import waveform_problem
from .decoding import best_paths, collapse_path, label_text, token_runs
from .devices import resolve_device
from .export import CompactConformer, load_subnet
from .graphs import GraphedEncoder, GraphedSubnet
from .model import ConformerSupernet
from .silence import THRESHOLD_DB, audible, voiced_spans
from .timestamps import Transcript, Word, label_texts, word_frames

Audio = str | os.PathLike | np.ndarray | torch.Tensor
Segments = list[tuple[int, list[int]]]   # a recording's voiced segments: (first sample, the
                                         # best label of each of its output frames)
CHUNK_SECONDS, CONTEXT_SECONDS = 30.0, 2.0
# audio decoded together by transcribe_iter: four full batches at the default batch_frames
# (40,000 10 ms frames: 400 s), enough for batches of similar length to fill up; 100 MB of
# float32 samples; a group's decoding takes ~3 minutes with the paper-size model on 2 CPU
# cores (docs/transcription.md: 64 s for a 10-minute recording)
GROUP_SECONDS = 1600.0
SILENCE_DB = THRESHOLD_DB


class Recognizer:
    """A model that maps log-mel features to CTC log-probs, with the subnet's `gates` and
    `head` for a supernet (None for an exported subnet), and its tokenizer. frozen_weights:
    nothing trains the model while this Recognizer is in use, so a supernet's encoder keeps
    its weights' compute-dtype copies between calls (GraphedEncoder); from_checkpoint's
    model is its own. chunk_seconds, context_seconds: clips longer than chunk_seconds + 2 x
    context_seconds are decoded in pieces (module docstring); chunk_seconds None: whole.
    silence_db: frames more than this many dB under the level of a recording's loudest 0.1 s
    are silence, and only the voiced segments between silences are decoded
    (orthoasr.silence.voiced_spans; one of a room's steady noise alone, hiss or hum, is
    dropped, so a recording of it reads ""); None: each recording is decoded whole, silence
    included, but one with no sound at all (no 10 ms frame at -80 dBFS or over:
    orthoasr.silence.audible) is "" either way. bf16: on a GPU, decode under a bfloat16
    autocast (from_checkpoint's default for a run trained in bf16, as `orthoasr eval`
    scores it); otherwise, and on the CPU, in the weights' dtype (float32 but for a
    subnet saved in float16 or bfloat16: from_subnet)."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, gates: torch.Tensor | None = None,
                 head: int = -1, batch_frames: int = 40000, frozen_weights: bool = False,
                 chunk_seconds: float | None = CHUNK_SECONDS,
                 context_seconds: float = CONTEXT_SECONDS,
                 silence_db: float | None = SILENCE_DB, bf16: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a ConformerSupernet, a CompactConformer or another "
                            f"nn.Module that returns log-probabilities, got "
                            f"{type(model).__name__}")
        check_tokenizer(tokenizer, model)
        if isinstance(model, ConformerSupernet) and gates is None:
            raise ValueError(f"gates are needed with a ConformerSupernet: its subnet's "
                             f"({model.num_units},) unit gates (torch.ones(model.num_units): "
                             f"every unit on), e.g. from orthoasr.freeze_masks")
        if gates is not None and not isinstance(model, ConformerSupernet):
            raise ValueError(f"gates are for a ConformerSupernet only; a "
                             f"{type(model).__name__} has its units fixed: pass gates=None")
        if gates is not None and (not isinstance(gates, torch.Tensor)
                                  or gates.shape != (model.num_units,)):
            got = tuple(gates.shape) if isinstance(gates, torch.Tensor) else \
                type(gates).__name__
            raise ValueError(f"gates must be a tensor of shape ({model.num_units},) (one per "
                             f"unit), got {got}")
        if isinstance(model, ConformerSupernet):
            model.check_head(head)
        check_number("batch_frames", batch_frames, least=1, integer=True)
        check_cutting(chunk_seconds, context_seconds, silence_db)
        self.silence_db = silence_db
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.gates = None if gates is None else gates.to(self.device)
        # modules with every unit off: left out of the encoder's passes (no launches)
        self.skip = frozenset() if gates is None else model.dead_modules(gates)
        self.head, self.batch_frames = head, batch_frames
        self.bf16 = bool(bf16) and self.device.type == "cuda"
        # a supernet's or an exported subnet's encoder: padded to shape classes and replayed
        # from CUDA graphs on a GPU; another model is called as it is
        self.encoder: GraphedEncoder | GraphedSubnet | None = None
        if gates is not None:
            self.encoder = GraphedEncoder(model, frozen_weights=frozen_weights)
        elif isinstance(model, CompactConformer):
            self.encoder = GraphedSubnet(model)
        self.logmel = LogMel.of_model(model.cfg).to(self.device)
        self.min_samples = 4 * self.logmel.hop      # 4 frames: the frontend's 4x subsampling
        # in output frames, each min_samples long
        self.chunk_frames = None if chunk_seconds is None else output_frames(chunk_seconds)
        self.context_frames = output_frames(context_seconds)

    @classmethod
    def from_checkpoint(cls, path: str | Path, budget: float | None = None,
                        device: str = "cpu", *, chunk_seconds: float | None = CHUNK_SECONDS,
                        context_seconds: float = CONTEXT_SECONDS,
                        silence_db: float | None = SILENCE_DB,
                        bf16: bool | None = None) -> Recognizer:
        """The subnet of `budget` (one of the run's budgets; None: the largest, or for a
        `fixed_gates` run the one subnet it trained, the only one allowed) of training
        checkpoint `path`. A stage-1 checkpoint has no frozen subnets: only the full
        supernet (budget None) is available from it. chunk_seconds, context_seconds,
        silence_db, bf16: as in Recognizer (bf16 None: as the run was trained)."""
        from .trained import load_trained
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
            if budget is None and trained.run.fixed_subnet is not None:
                head = trained.run.fixed_subnet     # the one subnet a fixed_gates run trains
            trained.check_trained(head, f"budget {budget}", path)
            gates = trained.subnet_gates(head)
        return cls(trained.model, trained.tokenizer(), gates, head, frozen_weights=True,
                   chunk_seconds=chunk_seconds, context_seconds=context_seconds,
                   silence_db=silence_db, bf16=trained.run.bf16 if bf16 is None else bf16)

    @classmethod
    def from_subnet(cls, path: str | Path, device: str = "cpu", *,
                    chunk_seconds: float | None = CHUNK_SECONDS,
                    context_seconds: float = CONTEXT_SECONDS,
                    silence_db: float | None = SILENCE_DB,
                    bf16: bool | None = None) -> Recognizer:
        """An exported subnet (`orthoasr export`), which carries its tokenizer.
        chunk_seconds, context_seconds, silence_db, bf16: as in Recognizer (bf16 None: as
        its run was trained, which the export records; an export without that record,
        written before 2026-12-06, decodes in float32). A subnet saved in float16 or
        bfloat16 (`sub.half().save(path)`) decodes in its own dtype, on the CPU too, unless
        bf16 is False: then its weights are cast to float32."""
        sub: CompactConformer = load_subnet(path, map_location=resolve_device(device))
        if sub.tokenizer_bytes is None:
            raise ValueError(f"subnet {path} was saved without its tokenizer; export it again "
                             "with `orthoasr export` (which stores it)")
        in_float32 = all(p.dtype == torch.float32 for p in sub.parameters())
        if bf16 is None:
            # the run's autocast is for float32 weights: over float16 ones it computed in
            # bfloat16, 3 mantissa bits short of the dtype the subnet was saved in
            bf16 = sub.trained_in_bf16 and in_float32
        elif not bf16 and not in_float32:
            sub.float()                         # bf16=False, `transcribe --fp32`: float32
        return cls(sub, Tokenizer.from_bytes(sub.tokenizer_bytes), chunk_seconds=chunk_seconds,
                   context_seconds=context_seconds, silence_db=silence_db, bf16=bf16)

    def transcribe(self, paths_or_waveforms: Sequence[Audio], *, timestamps: bool = False,
                   sample_rate: int = SAMPLE_RATE) -> list[str] | list[Transcript]:
        """One transcript per item, in order. Items: audio file paths (WAV, FLAC, MP3, Ogg
        Vorbis or Opus; any rate and channel count) or 1-D float waveforms at `sample_rate`
        Hz (resampled to 16 kHz as files are; a file's own rate is read from it). A
        recording's text is its voiced segments' texts joined by single spaces; all silent,
        or under 40 ms (4 feature frames): "". timestamps: a `Transcript(text, words)` per
        item instead of its text, each `Word(text, start, end)` in seconds from the
        recording's start (where the model emitted it: orthoasr.timestamps). An item
        holding NaN, or peaking over MAX_PEAK (10: samples at 16-bit PCM's scale), is a
        ValueError naming it. Decoded as `transcribe_iter` does, so a long list of paths is
        not read into memory at once."""
        return list(self.transcribe_iter(paths_or_waveforms, timestamps=timestamps,
                                         sample_rate=sample_rate))

    def transcribe_iter(self, paths_or_waveforms: Iterable[Audio],
                        group_seconds: float = GROUP_SECONDS, *, timestamps: bool = False,
                        sample_rate: int = SAMPLE_RATE
                        ) -> Iterator[str] | Iterator[Transcript]:
        """`transcribe` for a stream (any iterable, a generator too): each item's text, in
        order, as soon as it and every item before it are decoded. Items are pulled one at
        a time and decoded in groups of consecutive items; a group is decoded and dropped
        as soon as its audio reaches group_seconds, so less than group_seconds of audio
        plus one item is held at once (an item longer than group_seconds is a group alone,
        or the last of one). 0: each item alone. Grouping does not change the texts
        (tested). A bare path or waveform is a TypeError here; a bad item, a ValueError
        when it is pulled, naming its index in the whole stream. timestamps, sample_rate:
        as in `transcribe`."""
        if isinstance(paths_or_waveforms, (str, os.PathLike, np.ndarray, torch.Tensor)):
            got = type(paths_or_waveforms).__name__
            if getattr(paths_or_waveforms, "ndim", 1) == 2:     # [B, S]: a list in rows
                raise TypeError(f"paths_or_waveforms must be a list of paths or waveforms, "
                                f"got one {got} of shape {tuple(paths_or_waveforms.shape)}: "
                                "pass list(batch), its rows as waveforms")
            raise TypeError("paths_or_waveforms must be a list of paths or waveforms, got one "
                            f"{got}; wrap it in a list")
        _check_seconds("group_seconds", group_seconds, 0.0)
        if not isinstance(timestamps, bool):    # "no" would read as True
            raise TypeError(f"timestamps must be True or False, got {timestamps!r}")
        check_number("sample_rate", sample_rate, least=1, integer=True)
        finish = self._transcript if timestamps else self._text
        return self._texts_by_group(paths_or_waveforms, finish, sample_rate,
                                    group_samples=group_seconds * self.logmel.sample_rate)

    def _texts_by_group(self, items: Iterable[Audio], finish: Callable[[Segments], Any],
                        sample_rate: int, group_samples: float
                        ) -> Iterator[str] | Iterator[Transcript]:
        group: list[torch.Tensor] = []
        held = 0                                    # samples in group
        for index, item in enumerate(items):        # index: the item's in the whole call
            group.append(self._waveform(index, item, sample_rate))
            held += len(group[-1])
            if held >= group_samples:
                decoded, group, held = self._decode(group), [], 0     # drop the audio
                yield from map(finish, decoded)
        decoded, group = self._decode(group), []       # the last, short group (or none)
        yield from map(finish, decoded)

    def _text(self, segments: Segments) -> str:
        """A recording's text: its segments' texts joined."""
        texts = (label_text(self.tokenizer, collapse_path(path)) for _, path in segments)
        return " ".join(text for text in texts if text)

    def _transcript(self, segments: Segments) -> Transcript:
        """A recording's text and words; frame f of a segment starting at sample s spans
        samples s + [f, f + 1) x min_samples."""
        rate, frame = self.logmel.sample_rate, self.min_samples
        words = [Word(text, (start + first * frame) / rate, (start + end * frame) / rate)
                 for start, path in segments
                 for text, first, end in word_frames(token_runs(path), self._label_texts)]
        return Transcript(self._text(segments), words)

    @cached_property
    def _label_texts(self) -> list[str]:
        return label_texts(self.tokenizer)

    @torch.no_grad()
    def _decode(self, waves: list[torch.Tensor]) -> list[Segments]:
        """Each 1-D waveform's voiced segments: in pieces where long, decoded in batches of
        similar length, each piece's kept frames joined."""
        segments = [(i, start, wave[start:end]) for i, wave in enumerate(waves)
                    for start, end in self._voiced_spans(wave)]    # (item, first, samples)
        pieces = []                     # (segment, its samples, the output frames to keep)
        for s, (_, _, segment) in enumerate(segments):
            if len(segment) >= self.min_samples:
                for first, end, keep in chunk_windows(len(segment), self.min_samples,
                                                      self.chunk_frames, self.context_frames):
                    pieces.append((s, segment[first:end], keep))
        kept: list[list[int]] = [[] for _ in pieces]
        sizes = [len(samples) // self.logmel.hop for _, samples, _ in pieces]
        for batch in length_batches(sizes, self.batch_frames):
            paths = self._best_paths([pieces[j][1] for j in batch])
            for j, path in zip(batch, paths, strict=True):
                kept[j] = path[pieces[j][2]]
        labels: list[list[int]] = [[] for _ in segments]
        for (s, _, _), path in zip(pieces, kept, strict=True):     # pieces are in order
            labels[s] += path
        decoded: list[Segments] = [[] for _ in waves]
        for (i, start, _), path in zip(segments, labels, strict=True):
            decoded[i].append((start, path))
        return decoded

    def _voiced_spans(self, wave: torch.Tensor) -> list[tuple[int, int]]:
        """The [(start, end)] sample spans of `wave` to decode: all of it, or its voiced
        segments; none if it has no sound at all (`audible`), split or not."""
        if self.silence_db is None:
            return [(0, len(wave))] if audible(wave) else []
        return voiced_spans(wave, self.silence_db)

    def _waveform(self, index: int, item: Audio, sample_rate: int = SAMPLE_RATE
                  ) -> torch.Tensor:
        """Item `index` of a transcribe call as a 1-D float32 waveform at 16 kHz (a
        waveform item is at `sample_rate`)."""
        if isinstance(item, (str, os.PathLike)):
            wave, name = load_audio(item), f"item {index} ({os.fspath(item)})"
        else:
            name = f"item {index}"
            try:
                wave = torch.as_tensor(_native(item) if isinstance(item, np.ndarray) else item)
            except (TypeError, ValueError, RuntimeError):   # None, bytes, ragged lists ...
                raise TypeError(f"{name} must be an audio file path or a 1-D float waveform, "
                                f"got {type(item).__name__}") from None
            # integer PCM would be read as samples thousands of times full scale: the
            # features' log floor moves and the words change, so it is refused
            if not wave.is_floating_point():
                raise ValueError(f"{name} has {wave.dtype} samples: pass floats in [-1, 1] "
                                 f"(16-bit PCM: samples / 32768)")
            wave = wave.to(torch.float32)
            if wave.dim() != 1:
                # a recording's channels: averaged by hand, opposite ones would cancel
                raise ValueError(f"waveforms must be 1-D (samples at 16 kHz), got shape "
                                 f"{tuple(wave.shape)} for {name} (channels: mix an array "
                                 "[samples, channels] with orthoasr.data.downmix, as files "
                                 "are mixed)")
        problem = waveform_problem(wave)
        if problem is not None:
            raise ValueError(f"{name} {problem}")
        if sample_rate != SAMPLE_RATE and not isinstance(item, (str, os.PathLike)):
            wave = torch.from_numpy(resample(wave.detach().cpu().numpy(), sample_rate,
                                             SAMPLE_RATE))
        return wave

    def _best_paths(self, waves: list[torch.Tensor]) -> list[list[int]]:
        """Each output frame's most likely label, for one batch of 1-D waveforms."""
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        batch = nn.utils.rnn.pad_sequence(waves, batch_first=True).to(self.device)
        feats, frame_lengths = self.logmel(batch, lengths)
        feats = feats.to(next(self.model.parameters()).dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            if self.encoder is None:
                log_probs, out_lengths = self.model(feats, frame_lengths)
            else:
                x, out_lengths = self.model.embed(feats, frame_lengths)
                log_probs = self.encoder(x, out_lengths) if self.gates is None else \
                    self.encoder(x, out_lengths, self.gates, self.head, self.skip)
        return best_paths(log_probs.float(), out_lengths, vocab_size=self.tokenizer.vocab_size)


FRAME_SECONDS = 0.04        # an output frame: 4 feature frames of 10 ms (LogMel's hop)


def _native(array: np.ndarray) -> np.ndarray:
    """`array` with positive strides, in the machine's byte order and writable (copied only
    if not): torch.as_tensor refuses a reversed view (wave[::-1], np.flip) and big-endian
    data, and warns of a read-only array (memory-mapped, np.frombuffer's) that it shares."""
    native = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    return native if native.flags.writeable else native.copy()


def output_frames(seconds: float) -> int:
    """A length in seconds as a whole number of output frames."""
    return round(seconds / FRAME_SECONDS)


def chunk_windows(num_samples: int, frame_samples: int, chunk_frames: int | None,
                  context_frames: int) -> list[tuple[int, int, slice]]:
    """How to decode a clip of num_samples in pieces: [(first sample, end sample, kept
    frames)], in order. Output frame f of the clip covers samples [f, f + 1) x frame_samples,
    and a piece starts on a frame boundary, so its output frame k is the clip's frame
    first // frame_samples + k. Frames are split into equal spans of at most chunk_frames,
    each widened by context_frames on both sides where the clip has them; the kept slices
    of a piece's output frames tile the clip's frames once each. A clip of at most
    chunk_frames + 2 x context_frames frames (or chunk_frames None) is one piece."""
    frames = num_samples // frame_samples
    if chunk_frames is None or frames <= chunk_frames + 2 * context_frames:
        return [(0, num_samples, slice(0, frames))]
    count = math.ceil(frames / chunk_frames)
    bounds = [frames * k // count for k in range(count + 1)]       # equal spans
    windows = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        first, end = max(0, start - context_frames), min(frames, stop + context_frames)
        end_sample = num_samples if end == frames else end * frame_samples
        windows.append((first * frame_samples, end_sample, slice(start - first, stop - first)))
    return windows


def _check_seconds(name: str, value, least: float) -> None:
    check_number(name, value, least=least, what="number of seconds")


def check_tokenizer(tokenizer, model: nn.Module) -> None:
    """A TypeError unless `tokenizer` can read labels as text (a Tokenizer, not its file's
    path), a ValueError if it has more labels than the model's output layer (a model's layer
    may be wider, as sentencepiece can stop short of the vocab_size asked) or is not the one
    the model was saved with (its `tokenizer_bytes`, where load_trained or load_subnet gave
    it one): each failed only at the first transcribe call, naming no tokenizer, or not at
    all (another run's smaller tokenizer read the labels as the wrong text)."""
    if tokenizer is None:
        raise TypeError("tokenizer is None: the model's Tokenizer is needed to read its "
                        "outputs as text")
    if not (hasattr(tokenizer, "decode") and hasattr(tokenizer, "vocab_size")):
        hint = "; load it with orthoasr.data.Tokenizer(path)" \
            if isinstance(tokenizer, (str, os.PathLike)) else ""
        raise TypeError(f"tokenizer must be a Tokenizer (decode, vocab_size), got "
                        f"{type(tokenizer).__name__}{hint}")
    outputs = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if outputs is not None and tokenizer.vocab_size > outputs:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} labels, more than the model's "
                         f"{outputs} outputs (cfg.vocab_size): it is another model's tokenizer")
    # a smaller tokenizer passes the count (sentencepiece may stop short of vocab_size):
    # where the model came with its own (load_trained, load_subnet), compare the two
    saved = getattr(model, "tokenizer_bytes", None)
    if saved is not None and hasattr(tokenizer, "to_bytes") and tokenizer.to_bytes() != saved:
        raise ValueError("tokenizer is not the one this model was saved with; use that one: "
                         "Tokenizer.from_bytes(model.tokenizer_bytes), or "
                         "Recognizer.from_checkpoint / from_subnet, which read it")


def check_cutting(chunk_seconds: float | None, context_seconds: float,
                  silence_db: float | None) -> None:
    """A ValueError naming the argument unless each is one a recording can be cut by:
    chunk_seconds None or at least one output frame, context_seconds >= 0, silence_db None
    or > 0 dB (the Recognizer's, and `orthoasr eval`'s)."""
    _check_seconds("context_seconds", context_seconds, 0.0)
    if chunk_seconds is not None:
        _check_cut("chunk_seconds", chunk_seconds, "--chunk-seconds", least=FRAME_SECONDS,
                   what="number of seconds")
    if silence_db is not None:
        _check_cut("silence_db", silence_db, "--silence-db", above=0.0)


def _check_cut(name: str, value, flag: str, **bounds) -> None:
    """check_number; a 0, which the command line's flag takes for 'each recording whole',
    is told that None does that here."""
    try:
        check_number(name, value, **bounds)
    except ValueError as error:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            raise ValueError(f"{error} (None, not 0, decodes each recording whole: the "
                             f"command line's {flag} 0)") from None
        raise


__all__ = ["Recognizer", "chunk_windows", "output_frames", "check_cutting"]
