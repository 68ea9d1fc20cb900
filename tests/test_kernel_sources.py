"""kernels/__init__.py: under the interpreter the kernels' sources are read when the package
is imported, so a kernel file edited during a test run leaves the kernels as imported."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# In a copy of kernels/: the forward kernel launched, then frontend.py rewritten with a line
# above everything (its kernels one line lower), then the backward kernel's first launch.
EDITED_BETWEEN_LAUNCHES = """
import pathlib
import torch
from kernels import frontend
assert pathlib.Path(frontend.__file__).parent.parent == pathlib.Path.cwd(), frontend.__file__
x = torch.randn(2, 4, 10, 8).to(memory_format=torch.channels_last).requires_grad_()
lengths = torch.tensor([10, 3])
(y,) = frontend.masked_relu_pool_fwd_triton(x.detach(), lengths, True)
path = pathlib.Path(frontend.__file__)
path.write_text("# edited\\n" + path.read_text())
dy = torch.randn_like(y)
dx, _ = frontend.masked_relu_pool_bwd_triton(dy, x.detach(), lengths, True)
y_ref = frontend.masked_relu_pool_reference(x, lengths, True)
(dx_ref,) = torch.autograd.grad(y_ref, x, dy)
assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
"""


def test_a_kernel_file_edited_between_launches_runs_as_imported(tmp_path):
    """The interpreter used to read a kernel's source at its first launch, where the file
    then had another function (the forward) at the backward kernel's line: KeyError
    '_masked_relu_pool_bwd_kernel', as a test run hit on 2026-12-06 (most likely so: the file
    was rewritten that day with no commit touching it). Fails before the eager read."""
    shutil.copytree(ROOT / "kernels", tmp_path / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-c", EDITED_BETWEEN_LAUNCHES], cwd=tmp_path,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
