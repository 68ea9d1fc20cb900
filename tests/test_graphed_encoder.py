"""GraphedEncoder (orthoasr/graphs.py): padding to shape classes leaves the real rows'
log-probs unchanged (CPU, both backends); on the GPU, one graph per class, replays that
follow their inputs, and agreement with the eager encoder."""

import pytest
import torch
from test_model import tiny_cfg

from orthoasr import set_backend
from orthoasr.graphs import GraphedEncoder
from orthoasr.model import ConformerSupernet

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _model_and_inputs(B, T, seed=0):
    torch.manual_seed(seed)
    model = ConformerSupernet(tiny_cfg()).to(DEV).eval()
    x = torch.randn(B, T, model.cfg.d_model, device=DEV)
    lengths = torch.randint(1, T + 1, (B,), device=DEV)
    lengths[0] = T
    gates = (torch.rand(model.num_units, device=DEV) > 0.4).float()
    return model, x, lengths, gates


def test_shape_classes():
    encoder = GraphedEncoder(None, frame_step=32)
    assert encoder.shape_class(1, 1) == (1, 32)
    assert encoder.shape_class(3, 37) == (4, 64)
    assert encoder.shape_class(32, 64) == (32, 64)
    assert encoder.shape_class(33, 65) == (64, 96)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@torch.no_grad()
def test_padding_leaves_the_rows_unchanged(backend):
    set_backend(backend)
    model, x, lengths, gates = _model_and_inputs(3, 37)
    encoder = GraphedEncoder(model, use_graphs=False)
    for g, head in ((gates, 0), (None, -1)):
        expected = model.encode(x, lengths, g, head)
        got = encoder(x, lengths, g, head)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_graphs_replay_their_inputs():
    model, x, lengths, gates = _model_and_inputs(5, 70)
    encoder = GraphedEncoder(model)
    first = encoder(x, lengths, gates, 1)
    torch.testing.assert_close(first, model.encode(x, lengths, gates, 1), atol=1e-4, rtol=1e-4)
    _, x2, lengths2, _ = _model_and_inputs(6, 90, seed=1)       # same class (8, 96)
    gates2 = 1 - gates
    second = encoder(x2, lengths2, gates2, 1)
    assert len(encoder.graphs) == 1 and encoder.graphs[next(iter(encoder.graphs))] is not None
    torch.testing.assert_close(second, model.encode(x2, lengths2, gates2, 1), atol=1e-4,
                               rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        encoder(x, lengths, gates, 1)
    assert len(encoder.graphs) == 2                            # autocast: its own graph
