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
