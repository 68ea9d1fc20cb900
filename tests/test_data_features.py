import math

import pytest
import torch

from orthoasr.data import LogMel, SpecAugment
from orthoasr.data.features import VOICED_FLOOR, voiced_frames


def _htk_mel(hz):
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _htk_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _centre_hz(bin_index, n_mels=80, f_min=20.0, f_max=8000.0):
    lo, hi = _htk_mel(f_min), _htk_mel(f_max)
    return _htk_hz(lo + (hi - lo) * (bin_index + 1) / (n_mels + 1))


@pytest.mark.parametrize("mel_bin", [10, 25, 40, 55, 70])
def test_tone_peaks_in_its_mel_bin(mel_bin):
    freq = _centre_hz(mel_bin)
    t = torch.arange(16000) / 16000
    wave = 0.5 * torch.sin(2 * math.pi * freq * t)
    feats, frames = LogMel(normalize=None)(wave[None], torch.tensor([16000]))
    assert feats.shape == (1, 100, 80) and frames.tolist() == [100]
    peaks = feats[0, 5:-5].argmax(dim=-1)
    assert (peaks == mel_bin).all(), (freq, peaks.unique())


def test_shapes_lengths_and_padding_invariance():
    torch.manual_seed(1)
    long, short = torch.randn(16000), torch.randn(5123)
    waves = torch.zeros(2, 16000)
    waves[0], waves[1, :5123] = long, short
    waves[1, 5123:] = 0.0
    lengths = torch.tensor([16000, 5123])
    for normalize in (None, "utterance", "voiced"):
        mel = LogMel(normalize=normalize)
        feats, frames = mel(waves, lengths)
        assert feats.shape == (2, 100, 80) and frames.tolist() == [100, 32]
        alone, alone_frames = mel(short[None], torch.tensor([5123]))
        assert alone_frames.tolist() == [32] and alone.shape == (1, 32, 80)
        torch.testing.assert_close(feats[1, :32], alone[0], rtol=1e-4, atol=1e-4)
        assert (feats[1, 32:] == 0).all()
        assert torch.isfinite(feats).all()


def test_utterance_normalisation():
    waves = torch.randn(2, 8000) * torch.linspace(0.01, 1, 8000)
    feats, frames = LogMel()(waves, torch.tensor([8000, 4000]))
    for b, n in enumerate(frames.tolist()):
        valid = feats[b, :n]
        torch.testing.assert_close(valid.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
        torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(80), atol=1e-2,
                                   rtol=0)


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Noise shaped like speech: syllables of rising and falling loudness (4 a second) with
    quiet stretches 30 dB down between them, and a changing spectral tilt."""
    generator = torch.Generator().manual_seed(seed)
    samples = int(16000 * seconds)
    t = torch.arange(samples) / 16000
    noise = torch.randn(samples, generator=generator)
    tilted = noise + 0.9 * torch.roll(noise, 1) * torch.sin(2 * math.pi * 1.3 * t)
    syllables = 0.03 + torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    return 0.1 * tilted * syllables


def relative_change(mel: LogMel, wave: torch.Tensor, before: torch.Tensor,
                    after: torch.Tensor) -> float:
    """mean |change| / mean |value| of `wave`'s frames' features once `before` and `after`
    (a whole number of 10 ms hops each) surround it."""
    alone, frames = mel(wave[None], torch.tensor([len(wave)]))
    joined = torch.cat([before, wave, after])
    surrounded, _ = mel(joined[None], torch.tensor([len(joined)]))
    start = len(before) // mel.hop
    inner = slice(2, int(frames) - 2)         # frames whose window reaches the silence differ
    speech = surrounded[0, start:start + int(frames)]
    return float((speech[inner] - alone[0, inner]).abs().mean() / alone[0, inner].abs().mean())


def test_voiced_normalisation_ignores_silence_around_the_speech():
    """0.3 s of zeros (or of noise 50 dB under the speech) on each side changes the speech
    frames' features by ~60% when normalised over the utterance, ~1% over voiced frames."""
    wave = speech_like(2.0)
    zeros = torch.zeros(4800)
    hiss = 1e-4 * torch.randn(4800, generator=torch.Generator().manual_seed(1))
    for before, after in ((zeros, zeros), (hiss, hiss), (zeros, torch.zeros(0))):
        assert relative_change(LogMel(normalize="utterance"), wave, before, after) > 0.15
        assert relative_change(LogMel(normalize="voiced"), wave, before, after) < 0.02


def test_voiced_normalisation_statistics():
    """Zero mean and unit variance over the voiced frames; silent frames, which lie far
    under, are raised to the floor."""
    wave = torch.cat([torch.zeros(8000), speech_like(1.0), torch.zeros(8000)])
    feats, frames = LogMel(normalize="voiced")(wave[None], torch.tensor([len(wave)]))
    assert int(frames) == 200
    speech = feats[0, 53:147]                     # frames whose window holds speech alone
    assert speech.mean().abs() < 0.2 and 0.7 < speech.std() < 1.2
    silent = torch.cat([feats[0, :45], feats[0, 155:]])
    assert silent.max() < speech.mean(0).min() - 2 and feats.min() >= VOICED_FLOOR
    # steady noise varies little per bin: the silence around it is raised to the floor
    steady = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(2))
    wave = torch.cat([torch.zeros(8000), steady, torch.zeros(8000)])
    feats, _ = LogMel(normalize="voiced")(wave[None], torch.tensor([len(wave)]))
    assert (feats[0, :45] == VOICED_FLOOR).all() and (feats[0, 155:] == VOICED_FLOOR).all()
    assert feats[0, 53:147].min() > VOICED_FLOOR


def test_a_click_does_not_set_the_voiced_reference():
    """A click 50 dB over the speech, in the silence before it: the reference is the level
    that the loudest 0.1 s all reach, so the speech stays voiced (were the loudest frame the
    reference, none of it would be) and its features hardly move."""
    energy = torch.cat([torch.full((30,), 1e-9), torch.full((3,), 1e5),
                        torch.full((60,), 1.0), torch.full((30,), 1e-9)])[None]
    voiced = voiced_frames(energy, torch.tensor([123]))
    assert voiced[0, 30:93].all() and not voiced[0, :30].any() and not voiced[0, 93:].any()
    assert not voiced_frames(energy, torch.tensor([123]), reference_frames=1)[0, 33:93].any()
    wave = speech_like(1.0)
    before = torch.zeros(4800)
    before[2000:2080] = 30.0 * wave.abs().max()          # 5 ms, 30 dB over the loudest sample
    # the click's own frames are voiced and counted: 8% (the loudest frame as the
    # reference: 220%, the speech then out of the statistics; "utterance": 49%)
    assert relative_change(LogMel(normalize="voiced"), wave, before, torch.zeros(0)) < 0.15


def test_voiced_frames_of_short_silent_and_padded_utterances():
    """Fewer frames than the reference's 10: all are voiced (the statistics are those of
    "utterance"); digital silence is finite; frames past the length are never voiced."""
    energy = torch.tensor([[1.0, 1e-8, 0.0, 5.0, 7.0, 7.0, 7.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    voiced = voiced_frames(energy, torch.tensor([4, 7, 0]))
    assert voiced.tolist() == [[True] * 4 + [False] * 3, [True] * 7, [False] * 7]
    wave = speech_like(0.08)
    utterance, _ = LogMel()(wave[None], torch.tensor([len(wave)]))
    voiced_feats, _ = LogMel(normalize="voiced")(wave[None], torch.tensor([len(wave)]))
    torch.testing.assert_close(voiced_feats, utterance)
    feats, _ = LogMel(normalize="voiced")(torch.zeros(1, 1600), torch.tensor([1600]))
    assert torch.isfinite(feats).all()


def test_unknown_normalize_is_refused():
    with pytest.raises(ValueError, match=r"normalize must be one of \('utterance', 'voiced', "
                                         r"None\), got 'speech'"):
        LogMel(normalize="speech")


def test_short_and_autocast_inputs():
    feats, frames = LogMel()(torch.randn(2, 100), torch.tensor([100, 50]))
    assert feats.shape == (2, 0, 80) and frames.tolist() == [0, 0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = LogMel()(torch.randn(1, 1600), torch.tensor([1600]))
    assert feats.dtype == torch.float32
    with pytest.raises(ValueError, match="waves must be"):
        LogMel()(torch.randn(1600), torch.tensor([1600]))


@pytest.mark.parametrize("lengths,message", [
    ([1600], r"wave_lengths must be \[B\] = \[2\], got shape \(1,\)"),
    ([[1600, 800]], r"wave_lengths must be \[B\] = \[2\], got shape \(1, 2\)"),
    ([1600, 1601], r"wave_lengths must be in \[0, S=1600\], got 1601"),
    ([-1, 800], r"wave_lengths must be in \[0, S=1600\], got -1"),
])
def test_bad_wave_lengths_are_refused(lengths, message):
    """A [1] broadcast over the batch, or lengths past the waves, would normalise each
    utterance over the wrong frames."""
    with pytest.raises(ValueError, match=message):
        LogMel()(torch.randn(2, 1600), torch.tensor(lengths))


def test_empty_batch():
    feats, frames = LogMel()(torch.randn(0, 1600), torch.zeros(0, dtype=torch.long))
    assert feats.shape == (0, 10, 80) and feats.dtype == torch.float32
    assert frames.shape == (0,)


def test_window_longer_than_n_fft_says_what_to_pass():
    with pytest.raises(ValueError, match=r"window of 551 samples \(25.0 ms at 22050 Hz\) "
                                         r"exceeds n_fft=512; pass n_fft >= 551, e.g. "
                                         r"LogMel\(sample_rate=22050, n_fft=1024\)"):
        LogMel(sample_rate=22050)
    assert LogMel(sample_rate=22050, n_fft=1024).win == 551


def test_specaugment_masks_inside_valid_frames():
    torch.manual_seed(3)
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=4, time_width=0.1)
    feats = torch.randn(4, 200, 80).abs() + 1.0                # nowhere zero before masking
    lengths = torch.tensor([200, 150, 60, 1])
    aug.eval()
    assert aug(feats, lengths) is feats
    aug.train()
    saw_time_mask = False
    for _ in range(20):
        out = aug(feats, lengths)
        zero = out == 0
        assert torch.equal(out[~zero], feats[~zero])           # only zeros are written
        bins_masked = zero.all(dim=1).sum(dim=1)                 # per utterance
        assert (bins_masked <= 20).all()
        frames_masked = zero.all(dim=2)                          # [B, T]
        for b, n in enumerate(lengths.tolist()):
            assert not frames_masked[b, n:].any()
            assert frames_masked[b, :n].sum() <= 4 * int(n * 0.1)
        saw_time_mask |= bool(frames_masked.any())
    assert saw_time_mask


@pytest.mark.gpu
def test_logmel_and_specaugment_on_cuda_match_cpu():
    waves = torch.randn(3, 24000)
    lengths = torch.tensor([24000, 17000, 3000])
    waves[1, :8000] = 0.0                          # silence, for the voiced frames' reference
    waves[2] += 0.01                               # an offset, for remove_dc
    for normalize, remove_dc in (("utterance", False), ("voiced", False), ("voiced", True)):
        mel = LogMel(normalize=normalize, remove_dc=remove_dc)
        cpu, cpu_frames = mel(waves, lengths)
        gpu, gpu_frames = mel.cuda()(waves.cuda(), lengths.cuda())
        assert gpu.is_cuda and torch.equal(gpu_frames.cpu(), cpu_frames)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    out = SpecAugment().cuda().train()(gpu, gpu_frames)
    assert out.is_cuda and out.shape == gpu.shape
