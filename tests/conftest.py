import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter where there is no GPU; this must be
# set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_backend():
    """Each test starts from seed 0 and leaves the backend at "auto" whatever it set."""
    torch.manual_seed(0)
    yield
    import orthoasr
    orthoasr.set_backend("auto")


@pytest.fixture
def nan_filled_memory():
    """Fresh tensors (torch.empty and kin) come filled with NaN during the test (torch's
    deterministic mode does that): a kernel output's unwritten rows then show when read."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def twin_gradients(monkeypatch):
    """A list that gets, at each LayerNorm backward launch of masked_layer_norm's op,
    whether the kernel was given the gradient of the output's twin."""
    import orthoasr.kernels.layer_norm as ln
    calls, kernel_backward = [], ln.layer_norm_bwd

    def spy(*args, dy_twin=None, **kwargs):
        calls.append(dy_twin is not None)
        return kernel_backward(*args, dy_twin=dy_twin, **kwargs)

    monkeypatch.setattr(ln, "layer_norm_bwd", spy)
    return calls
