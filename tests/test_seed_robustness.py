"""The VGG frontend's initialisation (orthoasr/model.py, VGGFrontend): He-uniform ReLU
convolutions with zero biases, so that the signal neither vanishes through the four
convolutions nor drowns under the sinusoidal positions added to the frontend's output.

With nn.Conv2d's default init (weights and biases U(+-1/sqrt(fan_in))) each conv shrank the
signal ~2x while its bias did not shrink, many channels of convs 3-4 were dead or always on
(which ones depending on the seed), and the frontend's output was ~1/10 of the positions'
norm; the tiny config then left the CTC blank plateau late for some seeds (configs/tiny.yaml,
"The outcome depends on the training seed"). CPU, ~1 s."""

import math

import torch

from orthoasr.model import VGGFrontend


def conv_outputs(frontend: VGGFrontend, feats: torch.Tensor) -> list[torch.Tensor]:
    """Each conv's output before its ReLU (torch ops; the frontend's order of ops)."""
    x, outs = feats[:, None], []
    for i, conv in enumerate(frontend.convs):
        y = conv(x)
        outs.append(y)
        x = torch.relu(y)
        if i % 2 == 1:
            x = torch.nn.functional.max_pool2d(x, 2)
    return outs


@torch.no_grad()
def test_frontend_init_keeps_the_signal_for_every_seed():
    # utterance-normalised log-mel features have zero mean and unit variance per bin
    feats = torch.randn(4, 400, 80, generator=torch.Generator().manual_seed(0))
    lengths = torch.full((4,), 400)
    d_model = 64
    positions_norm = math.sqrt(d_model / 2)       # sinusoidal_positions: sin^2 + cos^2 = 1
    for seed in range(8):
        torch.manual_seed(seed)
        frontend = VGGFrontend(80, (4, 16), d_model, kernels=False)
        stds = [y.std().item() for y in conv_outputs(frontend, feats)]
        # the default init: the last conv's output ~0.1x the first's; He: ~1x
        assert stds[-1] > 0.3 * stds[0], (seed, stds)
        out, _ = frontend(feats, lengths)
        ratio = out.norm(dim=-1).mean().item() / positions_norm
        # the default init: 0.06-0.13 (seeds 0-7); He: 0.7-2.5
        assert 0.3 < ratio < 5, (seed, ratio)
