"""`orthoasr synth`: the embedded speech corpus, synthesised locally with eSpeak NG.

libespeak-ng and its voice data come from the `espeakng-loader` package; we call the
library through ctypes (synchronous mode, our own callback collecting the samples).

Design:
- Speakers are identities: an English accent voice (en-us, en, en-gb-scotland, ...), a voice
  variant (m1, f3, klatt2, Annie, ...), a base pitch, pitch range, speaking rate, word gap
  and loudness; each utterance jitters rate and pitch a little. The variants are split
  between train, dev and test, so dev and test speakers use voices never heard in training.
- Sentences come from orthoasr.data.sentences; each text is used once, so dev and test
  sentences never occur in train.
- Everything random is drawn up front from `seed`. eSpeak's waveform depends on state left
  by the previous utterances in the same process, so utterances are synthesised in fixed
  shards of SHARD_SIZE, each in a fresh worker process, and eSpeak's noise generator (which
  it seeds from the clock) is reseeded per utterance: the files are byte-identical for a
  seed, whatever the number of workers.
- Audio is resampled from eSpeak's 22050 Hz to 16 kHz, scaled to the speaker's loudness,
  optionally mixed with white noise at 15-40 dB SNR, written as 16-bit mono wav. A text that
  normalises to nothing, or that eSpeak renders as silence, is reported in the summary and
  no file is written for it.

Output: out/wav/<split>/<speaker>/<utt>.wav, out/{train,dev,test}.jsonl (paths relative to
out/), out/summary.json; out/.corpus.lock keeps runs that read the corpus and a synthesis
that replaces it apart (corpus_lock.py).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checks import check_number
from ..cli import number
from .audio import SAMPLE_RATE, resample, write_wav
from .commands import CommandGenerator
from .corpus_lock import corpus_write_lock
from .manifest import normalize_text
from .sentences import SentenceGenerator

SPLITS = ("train", "dev", "test")
SHARD_SIZE = 48
GRAMMARS = {"open": SentenceGenerator, "commands": CommandGenerator}

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")

# espeak-ng's voice variants (espeak-ng-data/voices/!v), less the robotic, whispered or
# heavily echoed ones that no person sounds like.
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Nguyen", "Reed", "Storm", "Tweaky", "adam", "anika", "antonio", "aunty", "belinda",
    "benjamin", "boris", "croak", "david", "ed", "edward", "edward2", "fast", "grandma",
    "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta",
    "linda", "marcelo", "max", "michel", "miguel", "mike2", "norbert", "pablo", "paul",
    "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "steph3",
    "travis", "victor", "zac", "announcer",
)


@dataclass(frozen=True)
class Preset:
    """Corpus size: utterances and speakers per split (train, dev, test)."""
    utterances: tuple[int, int, int]
    speakers: tuple[int, int, int]
    max_words: int | None = None       # cap on sentence length (short utterances)
    noise_fraction: float = 0.5        # share of utterances mixed with white noise
    held_out_voices: float = 0.15      # share of the variants kept for dev, and for test
    grammar: str = "open"              # "open": sentences.py; "commands": commands.py

    def __post_init__(self) -> None:
        if self.grammar not in GRAMMARS:
            raise ValueError(f"grammar must be one of {sorted(GRAMMARS)}, got {self.grammar!r}")


PRESETS = {
    # a first try: ~500 short open-vocabulary utterances, ~20 minutes of audio, seconds to make
    "tiny": Preset(utterances=(400, 50, 50), speakers=(40, 8, 8), max_words=10),
    # `make demo` on a CPU: small-vocabulary commands (~75 words), enough that every word is
    # heard hundreds of times by many voices; ~2.5 h of audio (configs/tiny.yaml says why)
    "demo": Preset(utterances=(3000, 200, 200), speakers=(60, 10, 10), grammar="commands"),
    # `orthoasr demo` on a GPU machine (configs/demo-gpu.yaml): the same grammar, ~10 h
    "demo-gpu": Preset(utterances=(12000, 400, 400), speakers=(240, 16, 16),
                       grammar="commands"),
    "small": Preset(utterances=(4000, 250, 250), speakers=(200, 16, 16)),
    # tens of hours for GPU training
    "base": Preset(utterances=(48000, 1000, 1000), speakers=(1200, 40, 40)),
}


@dataclass(frozen=True)
class Speaker:
    speaker: str
    split: str
    accent: str
    variant: str
    pitch: int          # espeak 0-100
    pitch_range: int    # espeak 0-100
    rate: int           # words per minute
    word_gap: int       # extra pause between words, units of 10 ms
    loudness: float     # peak amplitude of its utterances

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class Job:
    index: int
    split: str
    utt_id: str
    text: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int
    loudness: float
    snr_db: float | None
    path: str


# ------------------------------------------------------------------------- eSpeak NG

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE, _WORDGAP = 1, 3, 4, 7
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class Espeak:
    """libespeak-ng in synchronous mode; one per process (the library is global state)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:
            raise RuntimeError("speech synthesis needs the `espeakng-loader` package "
                               "(pip install espeakng-loader)") from err
        self.data_path = espeakng_loader.get_data_path()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        # eSpeak seeds its noise generator (breath, roughness) from the clock: we reseed it
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                 self.data_path.encode(), _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (data at {self.data_path})")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)      # keep a reference: C holds a pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50, word_gap: int = 0, seed: int = 0) -> np.ndarray:
        """int16 samples at self.sample_rate. Raises ValueError for an unknown voice."""
        if self._set_seed is not None:
            self._set_seed(seed)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range),
                             (_WORDGAP, word_gap)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                       None, None)
        self.lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def available_variants() -> tuple[str, ...]:
    """VARIANTS that this espeak-ng data holds (checked without loading the library)."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise RuntimeError("speech synthesis needs the `espeakng-loader` package "
                           "(pip install espeakng-loader)") from err
    folder = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    return tuple(v for v in VARIANTS if os.path.isfile(os.path.join(folder, v)))


# ------------------------------------------------------------------------- planning

def plan_corpus(out_dir: str | os.PathLike, preset: Preset, seed: int,
                sentences: list[str] | None = None
                ) -> tuple[list[Speaker], list[Job], list[dict]]:
    """Speakers and jobs for a corpus, all drawn from `seed`; and the texts rejected
    before synthesis (nothing to say). `sentences` are used first, before generated ones."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    variants = list(available_variants())
    rng.shuffle(variants)
    n_held = max(1, round(len(variants) * preset.held_out_voices))
    if len(variants) < 3 * n_held:
        raise RuntimeError(f"only {len(variants)} eSpeak voice variants found")
    split_variants = {"dev": variants[:n_held], "test": variants[n_held:2 * n_held],
                      "train": variants[2 * n_held:]}

    speakers: list[Speaker] = []
    by_split: dict[str, list[Speaker]] = {}
    for split, count in zip(SPLITS, preset.speakers, strict=True):
        pool = split_variants[split]
        chosen = []
        for i in range(count):
            if i % len(pool) == 0:
                order = pool[:]
                rng.shuffle(order)
            chosen.append(Speaker(
                speaker=f"spk{len(speakers) + len(chosen):04d}", split=split,
                accent=rng.choice(ACCENTS), variant=order[i % len(pool)],
                pitch=rng.randint(25, 75), pitch_range=rng.randint(20, 85),
                rate=rng.randint(135, 205), word_gap=rng.choice((0, 0, 0, 1, 2)),
                loudness=round(rng.uniform(0.25, 0.9), 3)))
        by_split[split] = chosen
        speakers.extend(chosen)

    generator = GRAMMARS[preset.grammar](seed=rng.randrange(2**31), max_words=preset.max_words)
    supplied = list(sentences or [])
    seen: set[str] = set()
    rejected: list[dict] = []

    def next_text() -> str:
        while True:
            text = supplied.pop(0) if supplied else generator.sentence()
            key = normalize_text(text)
            if not key:
                rejected.append({"text": text, "reason": "nothing to say after normalisation"})
                continue
            if key not in seen:
                seen.add(key)
                return text

    jobs: list[Job] = []
    for split, count in zip(SPLITS, preset.utterances, strict=True):
        order: list[Speaker] = []
        for _ in range(count):
            if not order:
                order = by_split[split][:]
                rng.shuffle(order)
            spk = order.pop()
            index = len(jobs)
            utt_id = f"{spk.speaker}-{index:06d}"
            jobs.append(Job(
                index=index, split=split, utt_id=utt_id, text=next_text(), voice=spk.voice,
                rate=max(80, round(spk.rate * rng.uniform(0.92, 1.08))),
                pitch=min(100, max(0, spk.pitch + rng.randint(-6, 6))),
                pitch_range=spk.pitch_range, word_gap=spk.word_gap,
                loudness=round(spk.loudness * rng.uniform(0.85, 1.0), 4),
                snr_db=(round(rng.uniform(15.0, 40.0), 2)
                        if rng.random() < preset.noise_fraction else None),
                path=str(out_dir / "wav" / split / spk.speaker / f"{utt_id}.wav")))
    return speakers, jobs, rejected


# ------------------------------------------------------------------------- synthesis

def render(engine: Espeak, job: Job, seed: int) -> np.ndarray:
    """One utterance as float32 at 16 kHz; ValueError when eSpeak produced no speech."""
    raw = engine.synthesize(job.text, job.voice, job.rate, job.pitch, job.pitch_range,
                            job.word_gap, seed=(seed * 1_000_003 + job.index) % 2**31)
    wave = raw.astype(np.float32) / 32768.0
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    voiced = np.flatnonzero(np.abs(wave) > 0.02 * max(peak, 1e-9))
    if peak < 1e-3 or len(voiced) == 0 or (voiced[-1] - voiced[0]) < 0.1 * engine.sample_rate:
        raise ValueError("eSpeak produced no speech")
    wave = resample(wave, engine.sample_rate, SAMPLE_RATE)
    wave *= job.loudness / max(float(np.abs(wave).max()), 1e-9)
    if job.snr_db is not None:
        rng = np.random.default_rng([seed, job.index])
        signal_power = float(np.mean(np.square(wave[wave != 0]))) if np.any(wave) else 0.0
        noise = rng.standard_normal(len(wave)).astype(np.float32)
        wave += noise * np.float32(np.sqrt(signal_power / 10 ** (job.snr_db / 10)))
    return np.clip(wave, -1.0, 1.0)


def _run_shard(args: tuple[list[Job], int]) -> list[tuple[int, int, str | None]]:
    """Synthesise and write one shard in this (fresh) process: (index, samples, error)."""
    jobs, seed = args
    engine = Espeak()
    results = []
    for job in jobs:
        try:
            wave = render(engine, job, seed)
        except ValueError as err:
            results.append((job.index, 0, str(err)))
            continue
        os.makedirs(os.path.dirname(job.path), exist_ok=True)
        write_wav(job.path, wave, SAMPLE_RATE)
        results.append((job.index, len(wave), None))
    return results


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def corpus_files(out_dir: Path) -> list[str]:
    """The manifests and the wav/ folder of a corpus that `out_dir` already holds."""
    names = [f"{split}.jsonl" for split in SPLITS] + ["wav"]
    return [name for name in names if (out_dir / name).exists()]


def synthesize_corpus(out_dir: str | os.PathLike, preset: str | Preset = "tiny", seed: int = 0,
                      workers: int | None = None, sentences: list[str] | None = None,
                      progress: bool = True, overwrite: bool = False) -> dict:
    """Synthesise a corpus into `out_dir`; returns (and writes to summary.json) a summary:
    hours, utterances, speakers, vocabulary (distinct words), per-split figures, the voice
    variants of each split, failures, seconds taken and bytes written. A corpus already in
    `out_dir` is refused unless `overwrite`, which deletes its wav/ folder first; a corpus
    that a run is reading (corpus_lock.py) is refused all the same (CorpusInUse)."""
    started = time.time()
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        preset_name, preset = preset, PRESETS[preset]
    else:
        preset_name = "custom"
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # numpy's generators take no negative seed: each utterance that draws noise would fail
    check_number("seed", seed, least=0, integer=True)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    found = corpus_files(out_dir)
    if found and not overwrite:
        # manifests and runs that read the old audio would silently get the new one
        raise FileExistsError(
            f"--out {out_dir} already holds a corpus ({', '.join(found)}); add --overwrite "
            "to replace it (its wav/ folder is deleted), or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    # the lock that runs reading the corpus hold: a corpus is never deleted under them, nor
    # read half-written
    with corpus_write_lock(out_dir):
        if (out_dir / "wav").is_dir():
            shutil.rmtree(out_dir / "wav")       # no file of the old corpus survives
        return _write_corpus(out_dir, preset, preset_name, seed, workers, sentences,
                             progress, started)


def _write_corpus(out_dir: Path, preset: Preset, preset_name: str, seed: int, workers: int,
                  sentences: list[str] | None, progress: bool, started: float) -> dict:
    """synthesize_corpus's work, once `out_dir` is checked, locked and free of old audio."""
    speakers, jobs, failures = plan_corpus(out_dir, preset, seed, sentences)
    shards = [(jobs[i:i + SHARD_SIZE], seed) for i in range(0, len(jobs), SHARD_SIZE)]
    samples = [0] * len(jobs)
    errors: dict[int, str] = {}
    # tqdm: redrawn in place on a terminal; in a log (not a tty) a line every 10 s at most
    bar = tqdm(total=len(jobs), desc=f"synth {preset_name}", unit="utt", file=sys.stderr,
               disable=not progress, mininterval=0.1 if sys.stderr.isatty() else 10.0)
    # a fresh process per shard (maxtasksperchild=1): eSpeak's state never leaks across
    # shards, so the output does not depend on how shards are spread over workers
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with multiprocessing.get_context(method).Pool(workers, maxtasksperchild=1) as pool:
        for results in pool.imap_unordered(_run_shard, shards, chunksize=1):
            for index, count, error in results:
                samples[index] = count
                if error:
                    errors[index] = error
            bar.update(len(results))
    bar.close()
    for index, error in sorted(errors.items()):
        failures.append({"text": jobs[index].text, "voice": jobs[index].voice, "reason": error})

    summary = {"preset": preset_name, "seed": seed, "out_dir": str(out_dir.resolve()),
               "workers": workers, "splits": {}}
    all_words: set[str] = set()
    total_bytes = 0
    for split in SPLITS:
        records = []
        for job in jobs:
            if job.split != split or job.index in errors:
                continue
            speaker = job.utt_id.rsplit("-", 1)[0]
            records.append({"audio_filepath": os.path.relpath(job.path, out_dir),
                            "duration": round(samples[job.index] / SAMPLE_RATE, 4),
                            "text": normalize_text(job.text), "speaker": speaker})
            total_bytes += 44 + 2 * samples[job.index]
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        words = {w for r in records for w in r["text"].split()}
        all_words |= words
        split_speakers = [s for s in speakers if s.split == split]
        summary["splits"][split] = {
            "manifest": str((out_dir / f"{split}.jsonl").resolve()),
            "hours": round(sum(r["duration"] for r in records) / 3600, 4),
            "utterances": len(records),
            "speakers": len({r["speaker"] for r in records}),
            "vocabulary": len(words),
            "voices": sorted({s.variant for s in split_speakers}),
        }
    splits = summary["splits"]
    summary.update({
        "hours": round(sum(s["hours"] for s in splits.values()), 4),
        "utterances": sum(s["utterances"] for s in splits.values()),
        "speakers": sum(s["speakers"] for s in splits.values()),
        "vocabulary": len(all_words),
        "failed": len(failures),
        "failures": failures[:50],
        "bytes": total_bytes,
        "seconds": round(time.time() - started, 2),
    })
    with open(out_dir / "speakers.json", "w", encoding="utf-8") as f:
        json.dump([asdict(s) for s in speakers], f, indent=1)
    with open(out_dir / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


# ------------------------------------------------------------------------- CLI

def default_corpus_dir(preset: str) -> str:
    """Where `orthoasr synth --preset P` writes (the shipped configs read from there)."""
    return os.path.join("data", f"synth-{preset}")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None,
                        help="output folder (default: data/synth-<preset>)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="tiny (a first try), demo / demo-gpu (the demo's commands), "
                             "small, base (tens of hours)")
    parser.add_argument("--seed", type=number(least=0, integer=True), default=0,
                        help="random seed (default 0)")
    parser.add_argument("--workers", type=number(least=1, integer=True), default=None,
                        help="worker processes (default: all CPU cores)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a corpus found in the output folder (its wav/ folder "
                             "is deleted; refused while a train or eval run reads it); "
                             "without it such a folder is refused")


def run(args) -> dict:
    out = args.out or default_corpus_dir(args.preset)
    summary = synthesize_corpus(out, preset=args.preset, seed=args.seed, workers=args.workers,
                                overwrite=args.overwrite)
    print(f"corpus {summary['out_dir']}: {summary['hours']:.2f} h, {summary['utterances']} "
          f"utterances, {summary['speakers']} speakers, {summary['vocabulary']} words, "
          f"{summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s "
          f"({summary['workers']} workers)")
    for split, info in summary["splits"].items():
        print(f"  {split:5s} {info['hours']:8.3f} h {info['utterances']:6d} utterances "
              f"{info['speakers']:4d} speakers {info['vocabulary']:5d} words  "
              f"{info['manifest']}")
    if summary["failed"]:
        print(f"  {summary['failed']} sentence(s) not synthesised (see summary.json), e.g. "
              f"{summary['failures'][0]}")
    return summary
