"""The data of a training run: the training utterances in length buckets (`TrainData`),
what the frontend can take (`min_duration`, `filter_records`), the dev and test manifests
checked up front, and the BPE tokenizer trained on the transcripts (`make_tokenizer`)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import NamedTuple

import torch

from .distributed import SINGLE, World, barrier
from .run_config import RunConfig


class TrainData:
    """Training utterances in buckets; batch order is a function of (seed, epoch), so a run
    resumed at (epoch, batch index) sees the same batches as an uninterrupted one."""

    def __init__(self, run: RunConfig, tokenizer, pin_memory: bool = False,
                 world: World = SINGLE):
        from .data import (
            BucketBatchSampler,
            ClassedDataset,
            SpeechDataset,
            class_collate,
            collate,
            load_manifest,
        )
        records = filter_records(load_manifest(run.train_manifest), run, tokenizer,
                                 world.is_main)
        self.run, self.collate, self.pin_memory = run, collate, pin_memory
        self.dataset = SpeechDataset(records, tokenizer)
        self.durations = [r["duration"] for r in records]
        self.classes = None
        if run.shape_classes:
            self.classes = training_shape_classes(records, tokenizer, run, world.is_main)
            self.dataset, self.collate = ClassedDataset(self.dataset), class_collate(self.classes)
        self.dataset = ReportingDataset(self.dataset)
        self.sampler = BucketBatchSampler(self.durations, run.max_frames, shuffle=True,
                                          seed=run.seed, num_replicas=world.size,
                                          rank=world.rank, classes=self.classes)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        plan, group = list(self.sampler), self.run.buckets_per_step
        return [sum(plan[i:i + group], []) for i in range(0, len(plan) - group + 1, group)]

    def batches(self, epoch: int, index: int):
        """Yield (epoch, index of the next batch, batch) forever, from batch `index`. One
        DataLoader serves every epoch, so its workers start once: a loader per epoch started
        new workers at each epoch boundary, and on the H200 that step took 1.5x the median
        (bench/NOTES.md, session 10)."""
        plans = _EpochPlans(self, epoch, index)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=plans, collate_fn=CollateOrReport(self.collate),
            num_workers=self.run.num_workers, pin_memory=self.pin_memory,
            generator=torch.Generator())
        for batch in loader:        # in the order the plans were drawn
            epoch, index = plans.positions.popleft()
            if isinstance(batch, UnreadableAudio):
                from .data import AudioError
                raise AudioError(batch.message)
            yield epoch, index, batch


class UnreadableAudio(NamedTuple):
    """In place of an item, or of the batch that holds it, whose audio could not be read:
    the reason, carried out of a loader worker as a value. Raised there, the error would
    reach the main process with the worker's whole traceback in its message."""
    message: str


class ReportingDataset(torch.utils.data.Dataset):
    """dataset[key], or UnreadableAudio where its audio cannot be read (AudioError)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        from .data import AudioError
        try:
            return self.dataset[key]
        except AudioError as err:
            return UnreadableAudio(str(err))


class CollateOrReport:
    """collate(items), or the first UnreadableAudio among them (a class, not a closure: a
    loader worker started by spawn pickles it)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        failed = [item for item in items if isinstance(item, UnreadableAudio)]
        return failed[0] if failed else self.collate(items)


def prefetch_to_device(batches, device):
    """(epoch, index, batch) -> (epoch, index, batch, on_device). On CUDA each batch's copy
    to `device` is issued on a side stream before the step ahead of it runs, so that it
    overlaps that step (from pinned host memory: the copy, ~1 ms of a paper-size step on the
    H200, had sat on the step's critical path; bench/NOTES.md, session 12); the step's
    stream waits for it. Elsewhere on_device is None. The host batch stays for host-side
    counts (reading a device tensor there would sync)."""
    if torch.device(device).type != "cuda":
        try:
            for item in batches:
                yield (*item, None)
        finally:
            batches.close()
        return
    side = torch.cuda.Stream(device)

    def issue(item):
        with torch.cuda.stream(side):
            moved = tuple(t.to(device, non_blocking=True) for t in item[2])
        copied = torch.cuda.Event()
        copied.record(side)
        return item, moved, copied

    try:
        ahead = issue(next(batches))
        while ahead is not None:
            (epoch, index, batch), moved, copied = ahead
            ahead = next((issue(item) for item in batches), None)   # the next copy first
            step_stream = torch.cuda.current_stream(device)
            step_stream.wait_event(copied)
            for tensor in moved:          # allocated on the side stream, used on the step's
                tensor.record_stream(step_stream)
            yield epoch, index, batch, moved
    finally:
        batches.close()


class _EpochPlans:
    """The batch sampler of `TrainData.batches`: each epoch's plan in turn, from (epoch,
    index), forever. `positions` gets (epoch, index after the batch) of each batch as the
    loader draws it, for the loop to pop when that batch arrives."""

    def __init__(self, data: TrainData, epoch: int, index: int):
        self.data, self.epoch, self.index = data, epoch, index
        self.positions: collections.deque[tuple[int, int]] = collections.deque()

    def __iter__(self):
        epoch, index = self.epoch, self.index
        while True:
            plan = self.data.epoch_batches(epoch)
            if not plan:
                run, ranks = self.data.run, self.data.sampler.num_replicas
                raise ValueError(
                    f"training manifest {run.train_manifest}: epoch {epoch} makes fewer "
                    f"batches of max_frames={run.max_frames} than one step takes, {ranks} "
                    f"rank(s) x buckets_per_step={run.buckets_per_step}; lower max_frames "
                    "or train on more utterances")
            for batch in plan[index:]:
                index += 1
                self.positions.append((epoch, index))
                yield batch
            epoch, index = epoch + 1, 0


def training_shape_classes(records: list[dict], tokenizer, run: RunConfig,
                           report: bool = True):
    """The run's static shape classes, from its training utterances' frames and token
    counts (the same on every rank and on resume: a function of the manifest)."""
    from .data import duration_frames, padding_fraction, shape_classes
    frames = duration_frames([r["duration"] for r in records])
    tokens = [len(tokenizer.encode(r["text"])) for r in records]
    classes = shape_classes(frames, tokens, run.max_frames, run.shape_classes)
    if report:
        shapes = ", ".join(f"{c.batch}x{c.frames}" for c in classes)
        print(f"shape classes (utterances x frames): {shapes}; padding "
              f"{padding_fraction(frames, classes):.1%} of the frames", flush=True)
    return classes


def min_duration(logmel=None) -> float:
    """Seconds of the shortest clip the frontend takes: 4 feature frames (4x subsampling)."""
    from .data import LogMel
    logmel = logmel or LogMel()
    return 4 * logmel.hop / logmel.sample_rate


def output_frames(duration: float, logmel=None) -> int:
    """Encoder output frames of a clip of `duration` s, as the model counts them: LogMel's
    samples // hop feature frames, then the frontend's two 2x poolings (lengths // 2 // 2)."""
    from .data import LogMel
    logmel = logmel or LogMel()
    return round(duration * logmel.sample_rate) // logmel.hop // 2 // 2


def ctc_frames_needed(token_ids: list[int]) -> int:
    """The fewest output frames CTC can align `token_ids` to: one per token, plus a blank
    between each pair of equal adjacent tokens."""
    return len(token_ids) + sum(a == b for a, b in zip(token_ids, token_ids[1:]))


def filter_records(records: list[dict], run: RunConfig, tokenizer, report: bool = True
                   ) -> list[dict]:
    """The training records of at most `max_duration` s and at least `min_duration()`, whose
    transcript `tokenizer` encodes without its unknown piece and CTC can align to their
    audio; the counts dropped are printed, and dropping everything is an error that gives
    them.

    An unalignable transcript has an infinite CTC loss, which the trainer's zero_infinity
    turns into a zero loss and no gradient: kept, such utterances would train on nothing
    while the logged loss looked converged."""
    from .data import LogMel
    logmel = LogMel()
    shortest = min_duration(logmel)
    too_long = [r for r in records if r["duration"] > run.max_duration]
    too_short = [r for r in records if r["duration"] < shortest]
    fitting = [r for r in records if shortest <= r["duration"] <= run.max_duration]
    kept, too_many_tokens, unknown = [], [], []
    for record in fitting:
        ids = tokenizer.encode(record["text"])
        needed = ctc_frames_needed(ids)
        if tokenizer.unknown_id in ids:
            unknown.append(record)
        elif needed <= output_frames(record["duration"], logmel):
            kept.append(record)
        else:
            too_many_tokens.append((record, needed))
    dropped = []
    if too_long:
        dropped.append(f"{len(too_long)} longer than max_duration={run.max_duration} s")
    if too_short:
        dropped.append(f"{len(too_short)} shorter than {shortest} s (4 frames, the minimum "
                       f"of the 4x subsampling), e.g. {too_short[0]['audio_filepath']}")
    if too_many_tokens:
        record, needed = too_many_tokens[0]
        dropped.append(
            f"{len(too_many_tokens)} utterance(s) whose transcript is longer than their audio "
            f"allows (CTC needs an output frame per token, and one more between repeated "
            f"tokens, after the 4x subsampling), e.g. {record['audio_filepath']}: "
            f"{needed} frames needed, {output_frames(record['duration'], logmel)} in its "
            f"{record['duration']:.2f} s (fast speech, or, if many, texts and audio paired "
            "wrongly)")
    if unknown:
        # the tokenizer has a piece for every character of the transcripts it was trained
        # on: a resume's changed manifest may bring others, which would train the model to
        # output the unknown piece
        text = unknown[0]["text"]
        missing = "".join(c for c in sorted(set(text) - {" "})
                          if tokenizer.unknown_id in tokenizer.encode(c))
        dropped.append(f"{len(unknown)} whose transcript holds characters that the run's "
                       f"tokenizer has no piece for, e.g. {missing!r} in "
                       f"{unknown[0]['audio_filepath']}")
    summary = (f"training manifest {run.train_manifest}: {len(records)} utterances, "
               f"{len(kept)} kept" + (f"; skipped {', '.join(dropped)}" if dropped else ""))
    if not kept:
        raise ValueError(f"{summary}: nothing left to train on")
    if report:
        print(summary, flush=True)
    return kept


def check_manifests(run: RunConfig) -> None:
    """The three manifests exist, and the dev and test manifests parse (no audio read):
    checked before training, so that evaluating the run does not fail at its end and a
    mistyped path fails before `--overwrite` moves an earlier run aside."""
    from .data import load_manifest
    for name in ("train_manifest", "dev_manifest", "test_manifest"):
        path = getattr(run, name)
        if not Path(path).exists():
            raise FileNotFoundError(f"{name} {path} not found ({_synth_hint(path)}set "
                                    f"{name}=PATH)")
        if name != "train_manifest" and not load_manifest(path, check_audio=False):
            raise ValueError(f"{name} {path} is empty")


def _synth_hint(manifest: str | Path) -> str:
    """For a manifest of a corpus that `orthoasr synth` makes (<folder>/synth-<preset>/), the
    command that makes it, as the start of a clause; else ""."""
    from .data.synth import PRESETS, default_corpus_dir
    folder = Path(manifest).parent
    preset = folder.name.removeprefix("synth-")
    if not folder.name.startswith("synth-") or preset not in PRESETS:
        return ""
    out = "" if folder == Path(default_corpus_dir(preset)) else f" --out {folder}"
    return f"`orthoasr synth --preset {preset}{out}` makes that corpus, or "


def make_tokenizer(run: RunConfig, work_dir: Path, world: World = SINGLE):
    """A BPE tokenizer trained on the training transcripts, vocab = model.vocab_size (by
    rank 0; the other ranks load what it wrote)."""
    from .data import Tokenizer
    if not world.is_main:
        barrier(world)
        return Tokenizer(str(work_dir / "tokenizer.model"))
    tokenizer = _train_tokenizer(run, work_dir)
    barrier(world)
    return tokenizer


def _train_tokenizer(run: RunConfig, work_dir: Path):
    from .data import Tokenizer, load_manifest
    records = load_manifest(run.train_manifest)
    if not records:
        raise ValueError(f"training manifest {run.train_manifest} is empty")
    texts = [r["text"] for r in records]
    tokenizer = Tokenizer.train(texts, run.model.vocab_size, str(work_dir / "tokenizer.model"))
    if tokenizer.vocab_size > run.model.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is "
                         f"{run.model.vocab_size}")
    if tokenizer.vocab_size < run.model.vocab_size:   # sentencepiece's limit is soft
        print(f"note: the transcripts gave a {tokenizer.vocab_size}-id vocabulary (blank "
              f"included); the output layers keep model.vocab_size={run.model.vocab_size}")
    return tokenizer
