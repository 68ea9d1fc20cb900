"""orthoasr.graphs.StepGraphs: the bookkeeping around capturing a training step, on the CPU
with a stand-in for CUDA graphs whose capture runs nothing (as a real capture) and whose
replay reruns the captured call on the static inputs. Steps through it must equal eager
steps: the warm-up runs before a capture leave no trace (parameters and optimiser state
restored, optimiser state they created zeroed), a replay is one step, keys reuse their
graph, and the outputs are copies. The GPU tests in tests/test_train.py run real graphs."""

import contextlib
import gc

import pytest
import torch

import orthoasr.graphs as graphs_module
from orthoasr.graphs import StepGraphs


class _FakeCuda:
    """torch.cuda's stream and graph API, run on the CPU: `graph(g)` marks a capture; the
    body called inside it registers itself (see `_recording`) and its effects on the state
    are undone on exit, since a real capture launches nothing."""

    def __init__(self, state):
        self.state, self.capturing, self.recorded = state, None, None
        self.gc_paused, self.capture_modes = [], []
        self._real = torch.cuda

    def __getattr__(self, name):          # the rest of torch.cuda (is_available, ...)
        return getattr(self._real, name)

    def Stream(self):  # noqa: N802 - torch.cuda's name
        return type("S", (), {"wait_stream": lambda self, other: None})()

    def current_stream(self):
        return self.Stream()

    def stream(self, _stream):
        return contextlib.nullcontext()

    def CUDAGraph(self):  # noqa: N802
        fake = self

        class Graph:
            def replay(self):
                body, args, outputs = self.recorded
                fresh = body(*args)
                for key, value in outputs.items():
                    if isinstance(value, torch.Tensor):
                        value.copy_(fresh[key])

            def pool(self):
                return "pool"
        graph = Graph()
        graph.fake = fake
        return graph

    @contextlib.contextmanager
    def graph(self, graph, pool=None, capture_error_mode="global"):
        before = [t.clone() for t in self.state()]
        self.capture_modes.append(capture_error_mode)
        self.capturing = graph
        self.gc_paused.append(not gc.isenabled())   # no collection may free a graph now
        yield
        self.capturing = None
        graph.recorded = self.recorded
        with torch.no_grad():                        # nothing ran during a real capture
            for t, saved in zip(self.state(), before):
                t.copy_(saved)


def _problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)

    def body(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "note": "host value"}

    def state():
        tensors = [p.data for p in model.parameters()]
        for per_param in optimizer.state.values():
            tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
        return tensors
    return model, body, state


def _batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 6), (5, 6)]                       # two shape classes: two graphs
    return [(torch.randn(shapes[i % 2], generator=gen),
             torch.randn(shapes[i % 2][0], 3, generator=gen)) for i in range(n)]


@pytest.mark.parametrize("warmup", [1, 3])
def test_replayed_steps_equal_eager_steps(monkeypatch, warmup):
    eager_model, eager_body, _ = _problem()
    eager_losses = [float(eager_body(x, y)["loss"]) for x, y in _batches(7)]

    model, body, state = _problem()
    fake = _FakeCuda(state)
    monkeypatch.setattr(graphs_module.torch, "cuda", fake)

    def recording(*args):
        outputs = body(*args)
        if fake.capturing is not None:
            fake.recorded = (body, args, outputs)
        return outputs

    steps = StepGraphs(state, "cpu", warmup=warmup)
    results = [steps([x, y], key="stage 1", body=recording) for x, y in _batches(7)]
    monkeypatch.undo()

    assert len(steps.graphs) == 2                   # one per input shape
    assert fake.gc_paused == [True, True] and gc.isenabled()
    # thread-local: the DataLoader's pin-memory thread may query CUDA events meanwhile
    assert fake.capture_modes == ["thread_local"] * 2
    assert [r["note"] for r in results] == ["host value"] * 7
    assert results[0]["loss"] is not results[2]["loss"]           # copies, not the buffers
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]),
                               torch.tensor(eager_losses), rtol=1e-6, atol=1e-7)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    steps.release()                                 # the end of a run: graphs freed now
    assert not steps.graphs and steps.pool is None
