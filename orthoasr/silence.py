"""Where a recording is voiced: an energy-based splitter run before decoding.

The demo's model was trained on clips without pauses, so silence in a recording misleads it
(0.3 s of zeros before and after each test clip: 89% WER for its 0.4 subnet, against 22%,
when its features were normalised over all of each utterance's frames; 61% against 18% with
`feature_norm: voiced`, which leaves silence out of the statistics: configs/tiny.yaml).
`voiced_spans` finds the stretches whose 10 ms frames are within `threshold_db` of the level
of the recording's loudest 0.1 s; `Recognizer(silence_db=...)` decodes each stretch alone
and joins their texts.

The defaults were measured with the demo's 0.4 subnet (docs/transcription.md's table): 40 dB
leaves a noise floor 50 dB under the speech out (50 dB let some in: 30% WER on clips with
that noise around them, against 25%; 35 dB cost the long recordings 2-3 points); margins of
10 and 20 ms did best (0 ms: 26%, 50 ms: 35%, against 25-26%, on clips with 0.3 s of zeros
around them), 20 ms on the long recordings; gaps of 0.1 s are longer than any quiet stretch
inside the eSpeak test clips (80 ms) and split the 5-clip recordings' 0.1-0.3 s pauses (25%
WER, against 44% with 0.2 s). A 5 ms click in the silence before each clip cost 3.5 points
when the loudest frame set the level (29.1% WER), and 57 points once the speech was 10 dB
softer (82.1%): weighed against the click, soft speech fell under the threshold. The loudest
0.1 s sets the level now, and segments under 30 ms were dropped: 25.6% and 24.9%
(bench/silence_wer.py). A 60 ms knock after each clip still made a segment, which the model
read as a word (33.0% against 20.6% for the 0.4 subnet with `feature_norm: voiced`):
segments under 0.1 s are dropped now (20.6%), which cost nothing on 19 recordings of real
people (their shortest segment of a word lasts 0.36 s; the release of a final t, 70 ms of
sound after its closure's 0.1 s, is dropped; pocketsphinx's words were the same).

The threshold is relative, so a recording of near-digital silence (a muted microphone, the
dither of a 16-bit file, ~-96 dBFS) was weighed against its own loudest hiss and decoded
whole, into words. A recording whose loudest 0.1 s is under `SILENT_DBFS` (-80 dBFS: a
mean power of 1e-8, samples within [-1, 1]) has no voiced segment: the quietest 10 ms
frames of 19 recordings of real people (bench/silence_real_speech.py) were at -55 to -68
dBFS, 12 dB or more above it. It weighs the recording, not its frames: while every frame
under it was silent, quiet speech lost its weak sounds (the demo's test clips 40 dB softer,
their loudest 0.1 s near -57 dBFS: 85 of 200 split into 2-5 segments, 40.4% WER for the
0.4 subnet against 19.75% read whole; 50 dB softer: 93.4% against 26.9%). Within a
recording over it the threshold is relative alone, as for a loud one, and those clips read
split as whole. So a 16-bit file's dither (~-96 dBFS) is voiced where the speech's loudest
0.1 s is less than 40 dB over it, as noise 40 dB under loud speech is, and such a
recording's pauses were not cut out (the demo's test clips 50 dB softer, 25 to a recording
joined by 0.5-1 s of zeros, written as 16-bit files with dither: 8 segments for 200 clips,
87.9% WER split for the 0.4 subnet, as whole; bench/perturbation_wer.py --joined-dithered).
So where the recording's quietest 0.1 s (its noise floor, below) is itself under
`SILENT_DBFS`, it is no room's noise but dither or a muted input's hiss, and a stretch of
`NOISE_PAUSE_SECONDS` (0.3 s) or more in which no 10 ms frame stands `NOISE_MARGIN_DB`
(3 dB) over that floor is a pause, silent but for its first and last 10 ms
(`NOISE_FADE_SECONDS`). The 10 ms frames of a minute of TPDF dither stood at most 2.5 dB
over its quietest 0.1 s. Shorter stretches lie inside quiet speech: with pauses of 0.2 s
the spans of 1 and 6 of the demo's 200 test clips 50 and 55 dB softer, dithered one by
one, changed; with 0.25 s, 1 (55 dB); with 0.3 s, none (nor at 40 dB). Every frame held
within 0.1 s of one over the margin (a first form of this rule, 1d13fce) left 0.1 s of
dither about each segment, which the model read badly (the joined clips split, 50.9% WER
for the 0.4 subnet, against 27.7% for the clips dithered one by one; in a variant of this
rule, 33.1% with 20 ms kept at a pause's ends, 31.4% with 10 ms, 29.4% with none).
The 10 ms kept at a pause's ends hold quiet speech's weak ends, which fade into the dither:
55 dB softer, the speech-like sound of the tests lost its last 10 ms frame without them. The
joined clips now split at the dithered pauses, 200 segments for 200 clips: 31.38 / 31.25 /
25.50 / 24.81% WER for the subnets 0.4 / 0.6 / 0.8 / 1.0, against 87.88 / 89.38 / 85.62 /
88.69% before and 26.88 / 26.56 / 20.00 / 20.06% for the clips 50 dB softer one by one, not
dithered (the -40 dB and clean joined ones split before, and still do, at the same WER);
every other recording of bench/silence_wer.py, the clips alone at 0, -40 and -50 dB (and
dithered alone at -40, -50 and -55 dB) and the 19 real recordings keep their spans. A room's
noise (over -80 dBFS) is left to the relative threshold: the 10 ms frames of a minute of
pink noise stood up to 6.2 dB over its quietest 0.1 s, and a pause in it stays with the
speech around it, as before.

Above -80 dBFS the threshold was relative alone, so a recording of a room's noise alone
(hiss, a fan, mains hum, at -70 to -40 dBFS) was one segment, decoded whole, and read as
words. Steady noise keeps its level: the mean power of its loudest 0.1 s stretch stands at
most 1.3 dB over its quietest's in a minute of white noise, 3.5 dB in pink noise, nothing
in a hum (measured), while speech rises from its pauses and from a room's noise by far
more (14.5 dB or more in every one of the demo's eSpeak test clips alone, 26.9 dB for the
median clip). So a segment is kept only if its loudest 0.1 s stands `FLOOR_DB` (6 dB) over
the recording's quietest 0.1 s (its noise floor; nothing, if it has 0.1 s of digital
silence: a sound there is no room's noise). Stretches of 0.1 s, not 10 ms frames: a 10 ms
frame holds a phase of a hum's 50 Hz cycle, and taken about its mean its power swung with
that phase by up to 18 dB across frames (a hum with strong harmonics). The floor weighs
whole segments, not frames: a frame voiced only 12 dB over the floor cut speech-like sound
20-30 dB over a room's noise into syllables, its weak ends and consonants under the mark,
and dropped some. A level test is kept rather than a spectral one (flatness): hum and many
fans are not flat, and speech's fricatives are. Noise that swells and fades (brown noise's
rumble: 7.5-9 dB between its 0.1 s stretches) is still decoded.
"""

from __future__ import annotations

import math

import torch

from .checks import check_number

SAMPLE_RATE = 16000
POWER_FRAME_SECONDS = 0.01     # the frames whose power is weighed (not the model's 40 ms)
THRESHOLD_DB, MIN_GAP_SECONDS, MARGIN_SECONDS = 40.0, 0.1, 0.02
# a click or pop is shorter than speech: it neither sets the level nor makes a segment
REFERENCE_SECONDS, MIN_SEGMENT_SECONDS = 0.1, 0.1
SILENT_DBFS = -80.0            # under any room's noise floor, over a 16-bit file's dither
FLOOR_DB = 6.0                 # over steady noise's 0.1 s levels' spread (pink's: 3.5 dB)
# where the quietest 0.1 s is under SILENT_DBFS (dither), frames this far over it are sound:
# a minute of TPDF dither's 10 ms frames stood at most 2.5 dB over its quietest 0.1 s
NOISE_MARGIN_DB = 3.0
# and a stretch this long with no frame over it is a pause (0.2 s cut into quiet speech)
NOISE_PAUSE_SECONDS = 0.3
NOISE_FADE_SECONDS = 0.01      # the pause's ends, kept: speech fades into the dither there


def voiced_spans(wave: torch.Tensor, threshold_db: float = THRESHOLD_DB,
                 min_gap_seconds: float = MIN_GAP_SECONDS,
                 margin_seconds: float = MARGIN_SECONDS,
                 sample_rate: int = SAMPLE_RATE,
                 reference_seconds: float = REFERENCE_SECONDS,
                 min_segment_seconds: float = MIN_SEGMENT_SECONDS,
                 silent_dbfs: float = SILENT_DBFS,
                 floor_db: float = FLOOR_DB) -> list[tuple[int, int]]:
    """wave: (S,) float samples at `sample_rate` Hz -> [(start, end), ...] sample spans of
    its voiced segments, in order, disjoint, with 0 <= start < end <= S.

    The wave is cut into non-overlapping 10 ms frames (the last one may be shorter); a frame
    is voiced if its mean power (about its mean, so that a DC offset is not sound) is at
    most `threshold_db` (dB, > 0) under the reference: the power that the wave's loudest
    `reference_seconds` of frames all reach (the 10th loudest frame's by default; all
    frames with any power if fewer), so that a click does not set the level (0: the
    loudest frame's). Voiced frames separated by less than
    `min_gap_seconds` of unvoiced ones form one segment; a segment shorter than
    `min_segment_seconds` (10 frames by default) is a click or a knock, not speech, and is
    dropped, and so is one whose loudest `reference_seconds` of consecutive frames (their
    mean power, `stretch_power`) do not stand `floor_db` (dB, >= 0) over the wave's
    quietest: steady noise.
    Less than `min_gap_seconds` of unvoiced frames at the wave's start or end join the
    first or last segment (gaps and segments are counted in whole frames). Each segment is
    then widened by `margin_seconds` on either side (clipped to the wave; segments that
    then touch are joined). A wave whose reference is under `silent_dbfs` (dB against a
    power of 1, that of samples at +-1; <= 0) has no segments (all zeros, dither, empty),
    nor has a wave of steady noise alone (hiss, hum) over it; over it, frames are weighed
    against the reference alone, however quiet, unless the wave's quietest
    `reference_seconds` is itself under `silent_dbfs` (dither, not a room's noise): then
    `NOISE_PAUSE_SECONDS` or more of frames none of which stands `NOISE_MARGIN_DB` over
    that floor are silent too, but for `NOISE_FADE_SECONDS` at either end, so that pauses
    of dither are cut however quiet the speech. `floor_db` 0 turns both floor rules off
    (steady noise counts as sound).
    """
    wave = _checked_wave(wave, sample_rate, silent_dbfs)
    check_number("threshold_db", threshold_db, above=0.0)
    check_number("floor_db", floor_db, least=0.0)
    check_number("min_gap_seconds", min_gap_seconds, least=0.0)
    check_number("margin_seconds", margin_seconds, least=0.0)
    check_number("reference_seconds", reference_seconds, least=0.0)
    check_number("min_segment_seconds", min_segment_seconds, least=0.0)
    frame = round(POWER_FRAME_SECONDS * sample_rate)
    # about each frame's mean: a constant offset (a cheap microphone's) is inaudible, and
    # weighed as power 0.3% of full scale (-50 dBFS) put the silence between words within
    # 40 dB of them (the recording's mean is no offset: its speech's own is left in zeros)
    power = frame_power(wave.detach().to("cpu", torch.float64), frame, centred=True)  # (F,)
    sounding = int((power > 0).sum())
    if sounding == 0:
        return []
    stretch = max(1, whole_frames(reference_seconds))    # frames of the level's 0.1 s
    reference = float(power.topk(min(sounding, stretch)).values[-1])
    # the fixed floor weighs the recording, not its frames: as a frame's floor it cut quiet
    # speech (its loudest 0.1 s at -57 dBFS) at its weak sounds into pieces
    if reference < 10.0 ** (silent_dbfs / 10):
        return []
    floor = float(stretch_power(power, stretch).min())    # the quietest 0.1 s: steady noise
    voiced = power >= reference * 10.0 ** (-threshold_db / 10)
    if floor_db > 0 and floor < 10.0 ** (silent_dbfs / 10):
        # a floor under silent_dbfs is dither, not a room's noise, and may lie within
        # threshold_db of quiet speech: a long enough stretch that never rises out of it
        # is a pause, but for its ends, where speech fades into the dither
        rises = power >= floor * 10.0 ** (NOISE_MARGIN_DB / 10)
        fade, pause = whole_frames(NOISE_FADE_SECONDS), whole_frames(NOISE_PAUSE_SECONDS)
        for start, end in zip(*true_runs(~rises), strict=True):
            if end - start >= pause:
                voiced[start + fade:end - fade] = False
    starts, ends = true_runs(voiced)
    min_gap, min_segment = whole_frames(min_gap_seconds), whole_frames(min_segment_seconds)
    if not starts:                       # steady noise alone: nothing over its floor
        return []
    runs = [[starts[0], ends[0]]]
    for start, end in zip(starts[1:], ends[1:], strict=True):
        if start - runs[-1][1] < min_gap:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    # the level that a segment's loudest 0.1 s must reach: steady noise stays under it
    least = floor * 10.0 ** (floor_db / 10)
    runs = [run for run in runs if run[1] - run[0] >= min_segment
            and float(stretch_power(power[run[0]:run[1]], stretch).max()) >= least]
    if not runs:
        return []
    # clips start and end with short quiet stretches, as the training clips did: cutting
    # them off cost the demo's 0.8 and 1.0 subnets 0.2-0.4 points of WER on clean clips
    if runs[0][0] < min_gap:
        runs[0][0] = 0
    if len(power) - runs[-1][1] < min_gap:
        runs[-1][1] = len(power)
    margin, samples = round(margin_seconds * sample_rate), len(wave)
    spans: list[tuple[int, int]] = []
    for start, end in runs:
        first, last = max(0, start * frame - margin), min(samples, end * frame + margin)
        if spans and first <= spans[-1][1]:
            spans[-1] = (spans[-1][0], last)
        else:
            spans.append((first, last))
    return spans


def audible(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE,
            silent_dbfs: float = SILENT_DBFS) -> bool:
    """Whether any 10 ms frame of `wave` (S,) reaches `silent_dbfs`, its power taken about
    its mean as `voiced_spans` weighs it. A wave that does not (zeros, a DC offset, a 16-bit
    file's dither, a muted microphone, none) has no sound and no voiced segments: decoded
    even whole, its features are those of nothing (all zeros once normalised), and any
    text read from them is the model's invention. (A room's steady noise alone is sound,
    decoded whole; `voiced_spans` finds no segment in it.)"""
    wave = _checked_wave(wave, sample_rate, silent_dbfs)
    frame = round(POWER_FRAME_SECONDS * sample_rate)
    power = frame_power(wave.detach().to("cpu", torch.float64), frame, centred=True)
    return bool((power >= 10.0 ** (silent_dbfs / 10)).any())


def true_runs(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """mask: (F,) bool -> (starts, ends): the first index of each run of True values, in
    order, and one past its last."""
    edges = torch.diff(mask.to(torch.int8), prepend=mask.new_zeros(1, dtype=torch.int8),
                       append=mask.new_zeros(1, dtype=torch.int8))
    return (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()


def stretch_power(power: torch.Tensor, frames: int) -> torch.Tensor:
    """power: (F,) frames' powers, F >= 1 -> (max(1, F - frames + 1),) the mean power of
    each run of `frames` consecutive frames (of all F, if fewer)."""
    frames = min(frames, len(power))
    return power.unfold(0, frames, 1).mean(1)


def _checked_wave(wave, sample_rate, silent_dbfs: float) -> torch.Tensor:
    """`wave` as a tensor (S,), checked with the sample rate and floor that voiced_spans and
    audible both take: a ValueError naming any that is wrong."""
    wave = torch.as_tensor(wave)
    if wave.dim() != 1:
        raise ValueError(f"wave must be 1-D (samples), got shape {tuple(wave.shape)}")
    check_number("silent_dbfs", silent_dbfs, most=0.0)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 100:
        raise ValueError(f"sample_rate must be an integer number of Hz >= 100, got "
                         f"{sample_rate!r}")
    return wave


def whole_frames(seconds: float) -> int:
    """The number of 10 ms power frames that `seconds` fills (rounded up; float-safe)."""
    return math.ceil(seconds / POWER_FRAME_SECONDS - 1e-9)


def frame_power(wave: torch.Tensor, frame: int, centred: bool = False) -> torch.Tensor:
    """wave: (S,) -> (ceil(S / frame),) mean square of each frame of `frame` samples
    (centred: about the frame's mean, its variance); the last frame is the mean over the
    samples it has."""
    count = -(-len(wave) // frame)
    padded = torch.nn.functional.pad(wave, (0, count * frame - len(wave))).reshape(count, frame)
    sizes = torch.full((count,), float(frame), dtype=wave.dtype)
    if count:
        sizes[-1] = len(wave) - (count - 1) * frame
    power = padded.square().sum(1) / sizes
    if centred:
        power = (power - (padded.sum(1) / sizes).square()).clamp(min=0.0)
    return power


__all__ = ["voiced_spans", "audible", "stretch_power", "frame_power", "THRESHOLD_DB",
           "MIN_GAP_SECONDS", "MARGIN_SECONDS", "REFERENCE_SECONDS", "MIN_SEGMENT_SECONDS",
           "SILENT_DBFS", "FLOOR_DB", "NOISE_MARGIN_DB", "NOISE_PAUSE_SECONDS",
           "NOISE_FADE_SECONDS"]
