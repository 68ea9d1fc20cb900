"""Every kernel of the gated modules, the LayerNorm, the CTC, OrthoSoftmax and the attention
compiles for sm_90 at its launcher's configuration (bench/compile_check_*.py, in a process without
TRITON_INTERPRET): the interpreter runs code that the compiler rejects (a loop-carried
variable changing type from int32 to int64 did, 2026-11-30)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("check", ["compile_check_modules", "compile_check_attention"])
def test_kernels_compile_for_sm90_within_shared_memory(check):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", f"bench.{check}"], env=env,
                          capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all kernels compiled" in done.stdout, done.stdout[-3000:]
