"""Where a recording is voiced: an energy-based splitter run before decoding.

The demo's model was trained on clips without pauses, and its features are normalised over
each utterance, so silence in a recording misleads it (0.3 s of zeros before and after each
test clip: 89% WER for its 0.4 subnet, against 22%). `voiced_spans` finds the stretches
whose 10 ms frames are within `threshold_db` of the recording's loudest frame;
`Recognizer(silence_db=...)` decodes each stretch alone and joins their texts.

The defaults were measured with the demo's 0.4 subnet (README's table): 40 dB leaves a
noise floor 50 dB under the speech out (50 dB let some in: 30% WER on clips with that noise
around them, against 25%; 35 dB cost the long recordings 2-3 points); margins of 10 and 20
ms did best (0 ms: 26%, 50 ms: 35%, against 25-26%, on clips with 0.3 s of zeros around
them), 20 ms on the long recordings; gaps of 0.1 s are longer than any quiet stretch inside
the eSpeak test clips (80 ms) and split the 5-clip recordings' 0.1-0.3 s pauses (25% WER,
against 44% with 0.2 s).
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16000
POWER_FRAME_SECONDS = 0.01     # the frames whose power is weighed (not the model's 40 ms)
THRESHOLD_DB, MIN_GAP_SECONDS, MARGIN_SECONDS = 40.0, 0.1, 0.02


def voiced_spans(wave: torch.Tensor, threshold_db: float = THRESHOLD_DB,
                 min_gap_seconds: float = MIN_GAP_SECONDS,
                 margin_seconds: float = MARGIN_SECONDS,
                 sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """wave: (S,) float samples at `sample_rate` Hz -> [(start, end), ...] sample spans of
    its voiced segments, in order, disjoint, with 0 <= start < end <= S.

    The wave is cut into non-overlapping 10 ms frames (the last one may be shorter); a frame
    is voiced if its mean power is at most `threshold_db` (dB, > 0) under the loudest
    frame's. Voiced frames separated by less than `min_gap_seconds` of unvoiced ones form
    one segment, and less than `min_gap_seconds` of unvoiced frames at the wave's start or
    end join the first or last segment (gaps are counted in whole frames). Each segment is
    then widened by `margin_seconds` on either side (clipped to the wave; segments that
    then touch are joined). A wave with no power at all (all zeros, or empty) has no
    segments; the threshold is relative, so a wave of noise alone is voiced throughout.
    """
    wave = torch.as_tensor(wave)
    if wave.dim() != 1:
        raise ValueError(f"wave must be 1-D (samples), got shape {tuple(wave.shape)}")
    check_number("threshold_db", threshold_db, above=0.0)
    check_number("min_gap_seconds", min_gap_seconds, least=0.0)
    check_number("margin_seconds", margin_seconds, least=0.0)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 100:
        raise ValueError(f"sample_rate must be an integer number of Hz >= 100, got "
                         f"{sample_rate!r}")
    frame = round(POWER_FRAME_SECONDS * sample_rate)
    power = frame_power(wave.detach().to("cpu", torch.float64), frame)         # (F,)
    if power.numel() == 0 or not bool(power.max() > 0):
        return []
    voiced = power >= power.max() * 10.0 ** (-threshold_db / 10)
    edges = torch.diff(voiced.to(torch.int8), prepend=voiced.new_zeros(1, dtype=torch.int8),
                       append=voiced.new_zeros(1, dtype=torch.int8))
    starts = (edges == 1).nonzero().flatten().tolist()          # first voiced frame of a run
    ends = (edges == -1).nonzero().flatten().tolist()           # one past its last
    min_gap = math.ceil(min_gap_seconds / POWER_FRAME_SECONDS - 1e-9)   # frames; float-safe
    runs = [[starts[0], ends[0]]]
    for start, end in zip(starts[1:], ends[1:], strict=True):
        if start - runs[-1][1] < min_gap:
            runs[-1][1] = end
        else:
            runs.append([start, end])
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


def frame_power(wave: torch.Tensor, frame: int) -> torch.Tensor:
    """wave: (S,) -> (ceil(S / frame),) mean square of each frame of `frame` samples; the
    last frame is the mean over the samples it has."""
    count = -(-len(wave) // frame)
    padded = torch.nn.functional.pad(wave, (0, count * frame - len(wave)))
    sums = padded.square().reshape(count, frame).sum(1)
    sizes = torch.full((count,), float(frame), dtype=wave.dtype)
    if count:
        sizes[-1] = len(wave) - (count - 1) * frame
    return sums / sizes


def check_number(name: str, value, least: float | None = None,
                 above: float | None = None, what: str = "finite number") -> None:
    """A ValueError naming `name` (and saying it must be a `what`) unless value is a finite
    int or float >= least (> above)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or (least is not None and value < least) \
            or (above is not None and value <= above):
        bound = f">= {least}" if least is not None else f"> {above}"
        raise ValueError(f"{name} must be a {what} {bound}, got {value!r}")


__all__ = ["voiced_spans", "frame_power", "check_number", "THRESHOLD_DB", "MIN_GAP_SECONDS",
           "MARGIN_SECONDS"]
