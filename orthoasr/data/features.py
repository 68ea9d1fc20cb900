"""Log-mel features and SpecAugment as nn.Modules that run on the waves' device (CPU or GPU),
without host synchronisation, so features are computed on the GPU when training there."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_number
from .audio import SAMPLE_RATE

NORMALIZE_MODES = ("utterance", "voiced", None)
# "voiced": frames more than this many dB under the reference level are left out of the
# statistics (orthoasr/silence.py's splitter uses the same 40 dB)
VOICED_THRESHOLD_DB = 40.0
# the reference level is the one the loudest 0.1 s of frames (10 hops of 10 ms) all reach,
# so that a click or pop shorter than that cannot set it
REFERENCE_FRAMES = 10
# "voiced" floors the normalised features here: silent frames would otherwise lie up to ~20
# sigmas under the speech (the demo's clean clips: 0.4% of values under -4); trained with,
# the floor took the demo's WER on clips in silence, split, up to 1.8 points lower
# (configs/tiny.yaml)
VOICED_FLOOR = -4.0


def hz_to_mel(hz):
    """HTK mel scale."""
    if isinstance(hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel):
    if isinstance(mel, torch.Tensor):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float,
                   f_max: float) -> torch.Tensor:
    """Triangular filters [n_fft // 2 + 1, n_mels]: filter m rises from mel point m to its
    peak at point m + 1 and falls to point m + 2, the n_mels + 2 points equally spaced in mel
    between f_min and f_max."""
    bin_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2,
                                      dtype=torch.float64))
    lo, mid, hi = points[:-2], points[1:-1], points[2:]
    rising = (bin_hz[:, None] - lo) / (mid - lo)
    falling = (hi - bin_hz[:, None]) / (hi - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """waves [B, S] float, wave_lengths [B] -> (feats [B, T, n_mels], frame_lengths [B]).

    25 ms Hann window, 10 ms hop, 512-point FFT, power spectrum, HTK mel filters, log.
    One frame per hop: T = S // hop and frame_lengths = wave_lengths // hop; frame t is
    centred on sample t * hop + hop / 2 with zero padding at both ends, so a valid frame's
    value does not depend on how far the batch was padded. normalize="utterance" (default)
    gives every mel bin zero mean and unit variance over each utterance's valid frames;
    "voiced" takes the mean and variance over its voiced frames alone and applies them to
    every valid frame, so silence around the speech does not change the speech's features
    (`voiced_frames`), then raises values under VOICED_FLOOR (-4) to it, where silent
    frames land; None leaves the log-mels as they are. remove_dc=True first subtracts
    each utterance's mean over its valid samples, so that a DC offset (a cheap
    microphone's, which the Hann window leaks into the lowest mel bins) does not move the
    features; off by default, as for the models trained before it (SupernetConfig's
    `remove_dc`). Frames past frame_lengths are 0. Computed in float32 whatever the
    autocast state.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, win_ms: float = 25.0,
                 hop_ms: float = 10.0, n_fft: int = 512, f_min: float = 20.0,
                 f_max: float | None = None, normalize: str | None = "utterance",
                 remove_dc: bool = False, eps: float = 1e-6):
        super().__init__()
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        self.sample_rate, self.n_mels, self.n_fft = sample_rate, n_mels, n_fft
        self.win = int(round(sample_rate * win_ms / 1000))
        self.hop = int(round(sample_rate * hop_ms / 1000))
        if self.win > n_fft:
            fitting = 2 ** math.ceil(math.log2(self.win))
            raise ValueError(f"window of {self.win} samples ({win_ms} ms at {sample_rate} Hz) "
                             f"exceeds n_fft={n_fft}; pass n_fft >= {self.win}, e.g. "
                             f"LogMel(sample_rate={sample_rate}, n_fft={fitting})")
        self.normalize, self.remove_dc, self.eps = normalize, remove_dc, eps
        f_max = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("window", torch.hann_window(self.win, periodic=False),
                             persistent=False)
        self.register_buffer("filters", mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max),
                             persistent=False)

    def frame_lengths(self, wave_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(wave_lengths, self.hop, rounding_mode="floor")

    @classmethod
    def of_model(cls, cfg) -> LogMel:
        """The features a model of `cfg` (a SupernetConfig) is trained and decoded with: its
        mel bins, its `feature_norm` and its `remove_dc`."""
        return cls(n_mels=cfg.num_mel_bins, normalize=cfg.feature_norm,
                   remove_dc=cfg.remove_dc)

    def forward(self, waves: torch.Tensor, wave_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(waves, torch.Tensor) or waves.dim() != 2:
            raise ValueError(f"waves must be [B, S], got shape "
                             f"{tuple(getattr(waves, 'shape', ())) or type(waves).__name__}")
        if not waves.is_floating_point():
            raise TypeError(f"waves must be floating point (samples in [-1, 1]; 16-bit PCM: "
                            f"samples / 32768), got {waves.dtype}")
        if not isinstance(wave_lengths, torch.Tensor) or wave_lengths.is_floating_point() \
                or wave_lengths.is_complex() or wave_lengths.dtype == torch.bool:
            got = wave_lengths.dtype if isinstance(wave_lengths, torch.Tensor) else \
                type(wave_lengths).__name__
            raise TypeError(f"wave_lengths must be an integer tensor, got {got}")
        batch, samples = waves.shape
        if wave_lengths.shape != (batch,):    # [1] would broadcast over the batch
            raise ValueError(f"wave_lengths must be [B] = [{batch}], got shape "
                             f"{tuple(wave_lengths.shape)}")
        if wave_lengths.device.type == "cpu" and batch:   # on a GPU reading them would sync
            shortest, longest = int(wave_lengths.min()), int(wave_lengths.max())
            if shortest < 0 or longest > samples:
                raise ValueError(f"wave_lengths must be in [0, S={samples}], got "
                                 f"{shortest if shortest < 0 else longest}")
        if batch == 0:                 # torch.fft.rfft fails on an empty batch
            return (waves.new_zeros(0, samples // self.hop, self.n_mels, dtype=torch.float32),
                    self.frame_lengths(wave_lengths.to(waves.device)))
        with torch.autocast(device_type=waves.device.type, enabled=False):
            return self._forward(waves.float(), wave_lengths)

    def _forward(self, waves, wave_lengths):
        batch, samples = waves.shape
        num_frames = samples // self.hop
        lead = (self.win - self.hop) // 2
        wave_lengths = wave_lengths.to(waves.device)
        # the last valid frames' windows reach past wave_lengths: zeros there, as for the
        # utterance alone, whatever the batch holds (a NaN, or the rest of a recording)
        inside = torch.arange(samples, device=waves.device)[None, :] < wave_lengths[:, None]
        waves = torch.where(inside, waves, 0.0)                              # [B, S]
        if self.remove_dc:            # the mean over the valid samples (the rest is 0 now)
            mean = waves.sum(1, keepdim=True) / wave_lengths.clamp(min=1)[:, None]  # [B, 1]
            waves = torch.where(inside, waves - mean, 0.0)
        padded = nn.functional.pad(waves, (lead, self.win))
        frames = padded.unfold(1, self.win, self.hop)[:, :num_frames]        # [B, T, win]
        frame_lengths = self.frame_lengths(wave_lengths)
        if num_frames == 0:                       # shorter than one hop (a static shape)
            return waves.new_zeros(batch, 0, self.n_mels), frame_lengths
        spectrum = torch.fft.rfft(frames * self.window, n=self.n_fft)        # [B, T, F]
        power = spectrum.real.square() + spectrum.imag.square()
        feats = torch.log(power @ self.filters + self.eps)                   # [B, T, n_mels]
        valid = (torch.arange(num_frames, device=waves.device)[None, :]
                 < frame_lengths[:, None]).unsqueeze(-1)                     # [B, T, 1]
        if self.normalize is None:
            return torch.where(valid, feats, 0.0), frame_lengths
        counted = valid if self.normalize == "utterance" else \
            voiced_frames(power.sum(-1), frame_lengths).unsqueeze(-1)
        count = counted.sum(1, keepdim=True).clamp(min=1).to(feats.dtype)      # [B, 1, 1]
        mean = torch.where(counted, feats, 0.0).sum(1, keepdim=True) / count
        centred = torch.where(valid, feats - mean, 0.0)
        variance = torch.where(counted, centred, 0.0).square().sum(1, keepdim=True) / count
        feats = centred / torch.sqrt(variance + 1e-5)
        if self.normalize == "voiced":
            feats = torch.where(valid, feats.clamp(min=VOICED_FLOOR), 0.0)
        return feats, frame_lengths


def voiced_frames(energy: torch.Tensor, frame_lengths: torch.Tensor,
                  threshold_db: float = VOICED_THRESHOLD_DB,
                  reference_frames: int = REFERENCE_FRAMES) -> torch.Tensor:
    """energy [B, T] (each frame's power, >= 0), frame_lengths [B] -> voiced [B, T] bool.

    A valid frame is voiced if its energy is at most `threshold_db` under the reference:
    the energy that the utterance's `reference_frames` loudest valid frames all reach (the
    quietest valid frame's when it has fewer), so a click shorter than that does not set
    it. Those loudest frames are always voiced, so the statistics of a voiced normalisation
    come from at least min(reference_frames, length) frames: an utterance too short or too
    quiet to tell voiced from silent counts all its frames. Batched, with static shapes and
    no host sync; a frame's result does not depend on the batch padding.
    """
    frames = energy.shape[1]
    valid = torch.arange(frames, device=energy.device)[None, :] < frame_lengths[:, None]
    # dB with a floor far under any sound, so digital silence is finite and compares
    level = 10.0 * torch.log10(energy.clamp(min=1e-20))
    loudest = level.masked_fill(~valid, -math.inf).topk(min(reference_frames, frames),
                                                        dim=1).values          # [B, K]
    rank = (frame_lengths.clamp(min=1, max=loudest.shape[1]) - 1).long()[:, None]
    reference = loudest.gather(1, rank)                                        # [B, 1]
    return valid & (level >= reference - threshold_db)


class SpecAugment(nn.Module):
    """feats [B, T, F], lengths [B] -> feats with random frequency and time masks (set to 0).

    Only in training mode (identity in eval). Each utterance gets `freq_masks` bands of
    width 0..freq_width and `time_masks` spans of width 0..time_width * its own length,
    placed inside its valid frames; drawn on the features' device with no host sync.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 5,
                 time_width: float = 0.05):
        super().__init__()
        for name, count in (("freq_masks", freq_masks), ("freq_width", freq_width),
                            ("time_masks", time_masks)):
            check_number(name, count, least=0, integer=True)
        check_number("time_width", time_width, least=0, most=1)
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            raise ValueError(f"feats must be [B, T, F], got "
                             f"{tuple(getattr(feats, 'shape', ())) or type(feats).__name__}")
        if not isinstance(lengths, torch.Tensor) or lengths.shape != feats.shape[:1]:
            # [1] would broadcast one length over the batch
            raise ValueError(f"lengths must be [B] = [{feats.shape[0]}], got "
                             f"{tuple(getattr(lengths, 'shape', ())) or type(lengths).__name__}")
        if not self.training:
            return feats
        batch, frames, bins = feats.shape
        device = feats.device
        masked = torch.zeros(batch, frames, bins, dtype=torch.bool, device=device)
        if self.freq_masks:
            width = torch.floor(torch.rand(batch, self.freq_masks, device=device)
                                * (min(self.freq_width, bins) + 1))
            start = torch.floor(torch.rand(batch, self.freq_masks, device=device)
                                * (bins - width + 1))
            masked |= _spans(start, width, bins)[:, None, :]
        if self.time_masks:
            lengths = lengths.to(device=device, dtype=torch.float32)
            max_width = torch.floor(lengths * self.time_width)[:, None]
            width = torch.floor(torch.rand(batch, self.time_masks, device=device)
                                * (max_width + 1))
            start = torch.floor(torch.rand(batch, self.time_masks, device=device)
                                * (lengths[:, None] - width + 1).clamp(min=1))
            masked |= _spans(start, width, frames)[:, :, None]
        return feats.masked_fill(masked, 0.0)


def _spans(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """[B, K] starts and widths -> [B, size] True inside any of the K spans."""
    index = torch.arange(size, device=start.device, dtype=start.dtype)
    inside = (index >= start[..., None]) & (index < (start + width)[..., None])
    return inside.any(dim=1)
