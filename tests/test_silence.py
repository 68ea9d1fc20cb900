"""`voiced_spans` on synthetic signals (tones between zeros and between low noise, short and
long gaps, margins at the ends, silence alone, bad arguments), and `Recognizer(silence_db=)`
with stand-in models: a clip without silence reads the same, and the silence that makes a
level-reading model misread speech is cut out."""

import math
import re

import pytest
import torch
from test_train import level_swings as swings
from test_transcribe import FrameLocalModel, LabelTokenizer

from orthoasr import Recognizer
from orthoasr.silence import audible, voiced_spans

RATE, FRAME = 16000, 160                            # samples a second, in a 10 ms frame


def tone(seconds, amplitude=0.5, hz=440.0):
    t = torch.arange(round(seconds * RATE)) / RATE
    return amplitude * torch.sin(2 * math.pi * hz * t)


def layout(parts):
    """parts: [(kind, seconds)] with kind "tone", "zeros" or "noise" (60 dB under the tones)
    -> (wave, [(start, end)] sample spans of the tones)."""
    noise = torch.Generator().manual_seed(len(parts))
    waves, tones, at = [], [], 0
    for kind, seconds in parts:
        n = round(seconds * RATE)
        if kind == "tone":
            waves.append(tone(seconds))
            tones.append((at, at + n))
        else:
            level = 0.0 if kind == "zeros" else 0.5 * 10 ** (-60 / 20)
            waves.append(level * torch.randn(n, generator=noise))
        at += n
    return torch.cat(waves), tones


def level_swings(samples):
    return torch.from_numpy(swings(samples))


def random_seconds(generator, low, high):
    """A length in seconds that is no whole number of frames, so edges fall inside frames."""
    return low + (high - low) * float(torch.rand(1, generator=generator)) + 37 / RATE


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tones_between_zeros_and_low_noise_are_found_within_a_frame(seed):
    draw = torch.Generator().manual_seed(seed)
    gap, noise_gap = random_seconds(draw, 0.3, 0.6), random_seconds(draw, 0.3, 0.6)
    wave, tones = layout([("zeros", random_seconds(draw, 0.2, 0.5)),
                          ("tone", random_seconds(draw, 0.2, 0.6)), ("zeros", gap),
                          ("tone", random_seconds(draw, 0.2, 0.6)), ("noise", noise_gap),
                          ("tone", random_seconds(draw, 0.2, 0.6)),
                          ("zeros", random_seconds(draw, 0.2, 0.5))])
    spans = voiced_spans(wave, threshold_db=40, min_gap_seconds=0.2, margin_seconds=0)
    assert len(spans) == 3
    for (start, end), (tone_start, tone_end) in zip(spans, tones, strict=True):
        assert abs(start - tone_start) < FRAME and abs(end - tone_end) < FRAME
    # the noise 60 dB down is voiced once the threshold reaches under it: two segments
    assert len(voiced_spans(wave, threshold_db=70, min_gap_seconds=0.2, margin_seconds=0)) == 2
    widened = voiced_spans(wave, threshold_db=40, min_gap_seconds=0.2, margin_seconds=0.05)
    for (start, end), (inner_start, inner_end) in zip(widened, spans, strict=True):
        assert (inner_start - start, end - inner_end) == (800, 800)     # 50 ms each side


def test_gaps_shorter_than_min_gap_do_not_split():
    wave, tones = layout([("zeros", 0.5), ("tone", 0.3), ("zeros", 0.08), ("tone", 0.3),
                          ("zeros", 0.15), ("tone", 0.3), ("zeros", 0.5)])
    spans = voiced_spans(wave, min_gap_seconds=0.1, margin_seconds=0)
    assert spans == [(tones[0][0], tones[1][1]), (tones[2][0], tones[2][1])]
    assert len(voiced_spans(wave, min_gap_seconds=0.2, margin_seconds=0)) == 1
    assert len(voiced_spans(wave, min_gap_seconds=0.0, margin_seconds=0)) == 3
    # margins that make segments touch join them
    assert len(voiced_spans(wave, min_gap_seconds=0.1, margin_seconds=0.08)) == 1


def test_short_silence_at_the_ends_stays_and_margins_are_clipped():
    wave, tones = layout([("zeros", 0.05), ("tone", 0.5), ("zeros", 0.07)])
    # (a steady tone with no 0.1 s of silence is a hum, no segment: floor_db=0 keeps it)
    assert voiced_spans(wave, min_gap_seconds=0.1, margin_seconds=0, floor_db=0.0) == [
        (0, len(wave))]
    wave, tones = layout([("zeros", 0.15), ("tone", 0.5), ("zeros", 0.2)])
    assert voiced_spans(wave, min_gap_seconds=0.1, margin_seconds=0) == tones
    assert voiced_spans(wave, min_gap_seconds=0.1, margin_seconds=0.3) == [(0, len(wave))]
    assert voiced_spans(wave, min_gap_seconds=0.1, margin_seconds=0.1) == [
        (tones[0][0] - 1600, tones[0][1] + 1600)]


def test_silence_alone_has_no_segments():
    assert voiced_spans(torch.zeros(16000)) == []
    assert voiced_spans(torch.zeros(0)) == []
    assert voiced_spans(torch.zeros(100)) == []
    assert voiced_spans(tone(0.003)) == []                  # under one frame: a click
    assert voiced_spans(tone(0.003), min_segment_seconds=0, floor_db=0.0) == [(0, 48)]


def test_dither_alone_is_silence_and_a_quiet_voice_over_it_is_found():
    """Samples of a 16-bit file's dither (~-100 dBFS) are silent whatever their own loudest
    0.1 s, which the relative threshold alone would weigh them against; a tone 70 dB over
    them (-33 dBFS) is found within a frame, its dither around it silent too."""
    dither = 1e-5 * torch.randn(RATE, generator=torch.Generator().manual_seed(5))
    assert voiced_spans(dither) == []
    assert voiced_spans(dither, silent_dbfs=-120.0, floor_db=0.0) == [(0, RATE)]  # old rule
    wave = dither.clone()
    wave[4000:8000] += tone(0.25, amplitude=0.03)
    spans = voiced_spans(wave, margin_seconds=0)
    assert len(spans) == 1 and abs(spans[0][0] - 4000) < FRAME and abs(spans[0][1] - 8000) < FRAME


def test_quiet_speech_is_split_as_it_is_at_full_level():
    """Speech-like sound whose loudest 0.1 s is at -12.5 dBFS, 40-55 dB softer (down to
    -67.5 dBFS: a quiet microphone), between zeros: the same span as at full level. Its
    fricatives and weak ends fell under -80 dBFS while that floor held frame by frame, and
    it was cut short or into its syllables (the demo's test clips 40 dB softer: 85 of 200
    split, 18.4 -> 40.4% WER). Over a 16-bit file's dither (~-96 dBFS) it is one span;
    under -80 dBFS as a whole (70 dB softer) it is silence, as dither is."""
    speech = syllables(1.2, seed=1)
    pad = torch.zeros(RATE // 2)
    loud = voiced_spans(torch.cat([pad, speech, pad]))
    assert len(loud) == 1 and loud[0][0] == RATE // 2 - 320             # a 20 ms margin
    draw = torch.Generator().manual_seed(8)
    for db in (-40, -50, -55):
        quiet = torch.cat([pad, 10 ** (db / 20) * speech, pad])
        assert voiced_spans(quiet) == loud, db
        tpdf = torch.rand(len(quiet), generator=draw) - torch.rand(len(quiet), generator=draw)
        dithered = torch.round(quiet * 32768 + tpdf) / 32768
        spans = voiced_spans(dithered)
        assert len(spans) == 1 and spans[0][0] <= loud[0][0] and spans[0][1] >= loud[0][1], db
    assert voiced_spans(torch.cat([pad, 10 ** (-70 / 20) * speech, pad])) == []


@pytest.mark.parametrize("offset", [0.003, -0.01, 0.05])
def test_a_dc_offset_is_not_sound(offset):
    """A constant offset (a cheap microphone's or sound card's, -50 to -26 dBFS here) is
    inaudible, but it was weighed as power: the zeros between tones were within 40 dB of
    them and the recording one segment, silence and all; a muted microphone's recording
    was decoded. Each frame's power is taken about its mean now."""
    wave, _ = layout([("zeros", 0.3), ("tone", 0.5), ("zeros", 0.4), ("tone", 0.6),
                      ("zeros", 0.3)])
    for clean in (wave, 0.1 * wave):                    # peaks at -6 and -26 dBFS
        assert len(voiced_spans(clean)) == 2
        assert voiced_spans(clean + offset) == voiced_spans(clean)
    assert voiced_spans(torch.full((RATE,), offset)) == []


def click(at_seconds, wave):
    """wave with a 5 ms full-scale click (square wave) added at `at_seconds`."""
    start = round(at_seconds * RATE)
    clicked = wave.clone()
    clicked[start:start + 80] = torch.tensor([1.0, -1.0]).repeat(40)
    return clicked


@pytest.mark.parametrize("amplitude", [0.5, 0.05])
def test_a_click_neither_sets_the_level_nor_makes_a_segment(amplitude):
    """A tone with a soft tail 35 dB under it (the tone's weak end, as speech has), zeros
    around it and a click 0.2 s before it: the click (far louder than a quiet recording)
    must not turn the tail into silence, and is no segment of its own."""
    parts = [torch.zeros(RATE // 2), tone(0.3, amplitude),
             tone(0.2, amplitude * 10 ** (-35 / 20)), torch.zeros(RATE // 2)]
    wave = torch.cat(parts)
    speech = (RATE // 2, RATE // 2 + round(0.5 * RATE))
    assert voiced_spans(wave, margin_seconds=0) == [speech]
    clicked = click(0.3, wave)
    assert voiced_spans(clicked, margin_seconds=0) == [speech]
    # the old rules, for contrast: levels weighed against the click, the click kept
    old = voiced_spans(clicked, margin_seconds=0, reference_seconds=0, min_segment_seconds=0)
    assert old[0][1] - old[0][0] <= 2 * FRAME and old[1:] != [speech]


def test_a_short_sound_joins_its_neighbour_or_must_last_a_tenth_of_a_second():
    """A 20 ms sound within 0.1 s of a tone joins its segment; alone, a 60 ms sound (a
    knock, a key's click: the demo's model read one after each test clip as a word, 20.6 ->
    33.0% WER) is no segment, a 120 ms one (a short word) is."""
    wave, tones = layout([("zeros", 0.3), ("tone", 0.3), ("zeros", 0.05), ("tone", 0.02),
                          ("zeros", 0.3), ("tone", 0.06), ("zeros", 0.3), ("tone", 0.12),
                          ("zeros", 0.3)])
    assert voiced_spans(wave, margin_seconds=0) == [(tones[0][0], tones[1][1]), tones[3]]
    assert voiced_spans(wave, margin_seconds=0, min_segment_seconds=0.03)[1] == tones[2]


@pytest.mark.parametrize("argument,value", [
    ("threshold_db", 0), ("threshold_db", -40.0), ("threshold_db", float("nan")),
    ("threshold_db", True), ("threshold_db", "40"), ("min_gap_seconds", -0.1),
    ("min_gap_seconds", float("inf")), ("margin_seconds", -0.01),
    ("margin_seconds", None), ("sample_rate", 16000.0), ("sample_rate", 0),
    ("silent_dbfs", 3.0), ("silent_dbfs", float("-inf")),
    ("reference_seconds", -0.1), ("min_segment_seconds", float("nan")),
    ("floor_db", -6.0), ("floor_db", float("nan"))])
def test_bad_arguments_are_refused_by_name(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be .*, got {value!r}"):
        voiced_spans(tone(0.5), **{argument: value})


def test_a_waveform_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"wave must be 1-D \(samples\), got shape \(2, 80\)"):
        voiced_spans(torch.ones(2, 80))


class LevelModel(FrameLocalModel):
    """A stand-in that reads loudness as the demo's model came to: output frame f is label 2
    if feature frames 4f..4f+3 lie above the utterance's mean (the features are normalised
    over each utterance), else 1. Silence in a clip lowers that mean, so soft speech near
    it reads as loud."""

    def forward(self, feats, lengths):
        batch, frames = feats.shape[0], feats.shape[1] // 4
        level = feats[:, :4 * frames].reshape(batch, frames, -1).mean(-1)
        labels = 1 + (level > 0).long()
        log_probs = torch.nn.functional.one_hot(labels, 17).float().log()
        return log_probs, torch.div(lengths, 4, rounding_mode="floor")


def bursts(amplitudes, seed):
    """Noise bursts of 0.2 s (5 output frames) at the given amplitudes, one after another."""
    noise = torch.Generator().manual_seed(seed)
    return torch.cat([a * torch.randn(3200, generator=noise) for a in amplitudes])


def test_splitting_cuts_out_the_silence_that_misleads_a_level_reading_model():
    loud_soft = bursts([1.0, 0.1, 1.0, 0.1, 1.0], seed=0)           # 20 dB apart
    soft_loud = bursts([0.1, 1.0, 0.1], seed=1)
    whole = Recognizer(LevelModel(), LabelTokenizer(), silence_db=None)
    assert whole.transcribe([loud_soft, soft_loud]) == ["2 1 2 1 2", "1 2 1"]
    split = Recognizer(LevelModel(), LabelTokenizer())
    low_noise = 10 ** (-60 / 20) * torch.randn(12000, generator=torch.Generator().manual_seed(2))
    recordings = [torch.cat([loud_soft, torch.zeros(8000), soft_loud]),
                  torch.cat([loud_soft, torch.zeros(32000), soft_loud]),
                  torch.cat([loud_soft, low_noise, soft_loud]),
                  torch.cat([torch.zeros(4800), soft_loud, torch.zeros(4800), soft_loud,
                             torch.zeros(4800)])]
    expected = ["2 1 2 1 2 1 2 1"] * 3 + ["1 2 1 1 2 1"]
    assert split.transcribe(recordings) == expected
    misread = whole.transcribe(recordings)
    assert all(m != e for m, e in zip(misread, expected, strict=True)), misread
    split.batch_frames = 1                                  # one segment per batch
    assert split.transcribe(recordings[::-1]) == expected[::-1]


def test_splitting_leaves_clips_without_silence_as_they_were():
    """Noise clips whose level rises and falls by 20 dB as speech's does (every frame
    voiced), one long enough to be decoded in pieces."""
    noise = torch.Generator().manual_seed(3)
    waves = [torch.randn(n, generator=noise) * level_swings(n)
             for n in (16000 * 9 + 333, 16000 * 2, 5000)]
    for chunk_seconds in (None, 1.0):
        whole = Recognizer(FrameLocalModel(), LabelTokenizer(), silence_db=None,
                           chunk_seconds=chunk_seconds)
        split = Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=chunk_seconds)
        expected = whole.transcribe(waves)
        assert len(expected[0].split()) > 100
        assert split.transcribe(waves) == expected


def test_a_silent_recording_transcribes_to_nothing():
    """Split or whole (silence_db None): a recording with no sound at all (zeros, a DC
    offset, dither at -100 dBFS) is never decoded; whole, zeros were read as a label. Split,
    a room's steady noise alone (-60 dBFS hiss, hum) reads "" too, and noise whose level
    swings as speech's does is decoded; whole, both are."""
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(4))
    silent = [torch.zeros(32000), torch.zeros(10), torch.full((16000,), 0.01), 1e-5 * noise,
              torch.zeros(0)]
    steady = [1e-3 * noise, steady_noise("hum50", -60), steady_noise("pink", -40)]
    swinging = [noise * level_swings(len(noise)), 1e-3 * noise * level_swings(len(noise))]
    for silence_db in (40.0, None):
        rec = Recognizer(FrameLocalModel(), LabelTokenizer(), silence_db=silence_db)
        assert rec.transcribe(silent) == [""] * len(silent), silence_db
        assert all(rec.transcribe(swinging)), silence_db
        texts = rec.transcribe(steady)
        assert texts == [""] * len(steady) if silence_db else all(texts), (silence_db, texts)


def test_audible_is_what_the_splitter_finds_any_segment_in():
    """...but for steady noise alone: sound, but no segment (test_steady_noise_alone_...)."""
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(6))
    for wave in (torch.zeros(16000), torch.zeros(0), torch.full((800,), -0.2), 1e-5 * noise):
        assert not audible(wave) and voiced_spans(wave) == []
    swinging = noise * level_swings(len(noise))
    quiet_tone = torch.cat([torch.zeros(RATE // 5), tone(0.2, amplitude=1e-3)])
    for wave in (swinging, 1e-3 * swinging, quiet_tone):
        assert audible(wave) and voiced_spans(wave) != []
    assert audible(1e-5 * noise, silent_dbfs=-120.0)
    assert not audible(quiet_tone, silent_dbfs=-40.0)


@pytest.mark.parametrize("argument, value", [
    ("wave", torch.ones(2, 80)), ("sample_rate", 0), ("sample_rate", 16000.0),
    ("silent_dbfs", 3.0)])
def test_audible_refuses_bad_arguments_by_name_as_the_splitter_does(argument, value):
    """audible took a 2-D wave as frames of its rows (a reshape's RuntimeError or a wrong
    answer), a sample rate of 0 as a ZeroDivisionError and a floor over 0 dBFS silently."""
    arguments = {"wave": tone(0.5), argument: value}
    shown = "shape (2, 80)" if argument == "wave" else repr(value)
    with pytest.raises(ValueError, match=re.escape(f"got {shown}")) as refused:
        audible(**arguments)
    assert str(refused.value).startswith(argument)


@pytest.mark.parametrize("value", [0, -20.0, float("inf"), "40", True])
def test_bad_silence_db_is_refused(value):
    with pytest.raises(ValueError, match=f"silence_db must be .*, got {value!r}"):
        Recognizer(FrameLocalModel(), LabelTokenizer(), silence_db=value)


def steady_noise(kind, dbfs, seconds=2.0, seed=7):
    """A room's noise alone at `dbfs` (RMS): white hiss, pink noise (a fan's rumble), or a
    50/60 Hz mains hum with two harmonics and a little hiss."""
    draw = torch.Generator().manual_seed(seed)
    n = round(seconds * RATE)
    if kind == "white":
        wave = torch.randn(n, generator=draw)
    elif kind == "pink":
        spectrum = torch.fft.rfft(torch.randn(n, generator=draw))
        wave = torch.fft.irfft(spectrum / torch.arange(len(spectrum)).clamp(min=1).sqrt(), n)
    else:
        hz = float(kind.removeprefix("hum"))
        wave = tone(seconds, 1.0, hz) + tone(seconds, 0.5, 2 * hz) + tone(seconds, 0.3, 3 * hz)
        wave = wave + 0.05 * torch.randn(n, generator=draw)
    return wave / wave.square().mean().sqrt() * 10 ** (dbfs / 20)


def syllables(seconds, seed):
    """Speech-like sound, peaking near 0 dBFS: 0.15 s voiced syllables (a 120 Hz buzz, rising
    and falling), each after a 50 ms fricative 20 dB softer, with 40 ms closures between."""
    draw = torch.Generator().manual_seed(seed)
    parts, length = [], 0
    while length < seconds * RATE:
        buzz = sum(tone(0.15, 0.3 / k, 120.0 * k) for k in range(1, 6))
        parts += [0.05 * torch.randn(800, generator=draw), buzz * torch.hann_window(2400),
                  torch.zeros(640)]
        length += 3840
    return torch.cat(parts)[:round(seconds * RATE)]


@pytest.mark.parametrize("kind", ["white", "pink", "hum50", "hum60"])
@pytest.mark.parametrize("dbfs", [-70, -60, -50, -40])
def test_steady_noise_alone_has_no_segments(kind, dbfs):
    """A room's noise alone (hiss, a fan, mains hum) was weighed against its own loudest 0.1 s
    and voiced throughout: one segment, decoded whole, read as words by a trained model. Its
    loudest 0.1 s never stands FLOOR_DB (6 dB) over its quietest 0.1 s, a minute of it
    neither, so it is no segment now (but sound: `audible`, decoded if told to be whole)."""
    noise = steady_noise(kind, dbfs)
    assert voiced_spans(noise) == [] and audible(noise)
    assert voiced_spans(noise, floor_db=0.0) == [(0, len(noise))]      # the old rule
    long = steady_noise(kind, dbfs, seconds=60.0)
    assert voiced_spans(long) == []


@pytest.mark.parametrize("noise_dbfs", [-70, -60, -50])
def test_quiet_speech_over_steady_noise_keeps_its_span(noise_dbfs):
    """Speech-like sound at -30 dBFS (peaks: a quiet talker) over a room's noise (pink, -70
    to -50 dBFS; the speech's fricatives 20 dB under its peaks, at the noise's level or
    under it) stands out of the noise that alone has no segment: its segment is kept whole,
    noise and all, as before. (Frames voiced only 12 dB over the noise, frame by frame, cut
    it into its syllables at -60 dBFS and dropped some.) Where the recording has 0.1 s of
    digital silence, the noise floor is nothing, and noise alone between zeros is a
    segment."""
    noise = steady_noise("pink", noise_dbfs, 2.0)
    assert voiced_spans(noise) == []
    wave = noise.clone()
    wave[RATE // 2:RATE // 2 + round(1.2 * RATE)] += 10 ** (-30 / 20) * syllables(1.2, seed=1)
    assert voiced_spans(wave) == [(0, len(wave))]
    between_zeros = torch.cat([torch.zeros(RATE // 2), noise, torch.zeros(RATE // 2)])
    assert voiced_spans(between_zeros, margin_seconds=0) == [(RATE // 2, RATE // 2 + len(noise))]


@pytest.mark.parametrize("db", [-40, -50, -55])
def test_quiet_speech_is_split_at_pauses_of_16_bit_dither(db):
    """Three stretches of speech-like sound 40-55 dB softer (their loudest 0.1 s at -52.5 to
    -67.5 dBFS), 0.6 s apart, written as a 16-bit file with TPDF dither (~-96 dBFS, in the
    pauses too): split at the pauses, each stretch's span covering its span at full level
    between zeros. The dither lay within 40 dB of the speech from -50 dB down, and the
    recording was one segment, pauses and all (the demo's test clips 50 dB softer, 25 to a
    recording: 8 segments for 200 clips). The pauses are cut within a frame of where they
    are at full level: 0.1 s of dither left about each segment cost the demo's subnets
    19.5-22.8 points of WER on those clips."""
    pad, gap = torch.zeros(RATE // 4), torch.zeros(round(0.6 * RATE))
    parts = [syllables(0.8, seed=k) for k in range(3)]
    speech = torch.cat([pad, parts[0], gap, parts[1], gap, parts[2], pad])
    loud = voiced_spans(speech)
    assert len(loud) == 3
    draw = torch.Generator().manual_seed(9)
    tpdf = torch.rand(len(speech), generator=draw) - torch.rand(len(speech), generator=draw)
    dithered = torch.round(10 ** (db / 20) * speech * 32768 + tpdf) / 32768
    spans = voiced_spans(dithered)
    assert len(spans) == 3, (db, spans)
    for (start, end), (loud_start, loud_end) in zip(spans, loud, strict=True):
        assert start <= loud_start and end >= loud_end, (db, spans, loud)
    inner = [spans[0][1], *spans[1], spans[2][0]]
    loud_inner = [loud[0][1], *loud[1], loud[2][0]]
    assert all(abs(x - y) <= FRAME for x, y in zip(inner, loud_inner, strict=True)), db
