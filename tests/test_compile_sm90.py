"""Every kernel of the gated modules, the LayerNorm, the CTC, OrthoSoftmax and the attention
compiles for sm_90 at its launcher's configuration (bench/compile_check_*.py, in a process without
TRITON_INTERPRET): the interpreter runs code that the compiler rejects (a loop-carried
variable changing type from int32 to int64 did, 2026-11-30)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = ("compile_check_modules", "compile_check_attention")


def _compiler_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def compile_checks(tmp_path_factory):
    """check -> (its process, stdout file, stderr file), both started together: each compiles
    one kernel after another on one core (~80 and ~120 s alone on a 2-core CI machine), so
    side by side they take the longer one's time, not the sum. Output goes to files, not
    pipes: a pipe left unread while the other check is awaited could fill and stall it."""
    logs = tmp_path_factory.mktemp("compile_checks")
    running = {}
    for check in CHECKS:
        out, err = open(logs / f"{check}.out", "w+"), open(logs / f"{check}.err", "w+")
        running[check] = (subprocess.Popen([sys.executable, "-m", f"bench.{check}"],
                                           env=_compiler_env(), cwd=ROOT, text=True,
                                           stdout=out, stderr=err), out, err)
    yield running
    for proc, out, err in running.values():
        proc.kill()
        proc.wait()
        out.close()
        err.close()


@pytest.mark.parametrize("check", CHECKS)
def test_kernels_compile_for_sm90_within_shared_memory(compile_checks, check):
    proc, out, err = compile_checks[check]
    proc.wait(timeout=900)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, stderr[-3000:]
    assert "all kernels compiled" in stdout, stdout[-3000:]


# the SiLU / GLU row GEMMs of compile_check_modules whose epilogues call common.sigmoid:
# the SiLU gate in row halves (SUBTILE) with and without FINAL's zeros, the SiLU backward in
# row halves, the GLU on the whole tile
SIGMOID_EPILOGUES = """
import triton
from bench import compile_check_modules as ccm
from orthoasr.kernels import gated_matmul

compiled = []
compile_ = triton.compile
def spy(*args, **kwargs):
    compiled.append(compile_(*args, **kwargs))
    return compiled[-1]
triton.compile = spy
for gemm in ccm.ROW_GEMMS:
    if gemm[0] in ("ffn GEMM1", "ffn GEMM1, zero-padded", "ffn dH", "conv PW1"):
        ccm._row_gemm(*gemm, dict(gated_matmul._rows_blocks(ccm.BF16, gemm[2], gemm[1])))
        ptx = compiled[-1].asm["ptx"]
        assert "rcp.approx.ftz.f32" in ptx and "ex2.approx.f32" not in ptx, gemm[0]
assert len(compiled) == 4, len(compiled)
print("sigmoid epilogues compiled")
"""


def test_gemm_epilogues_take_the_gpu_sigmoid():
    """Launched on CUDA (GPU on), every SiLU-gate, SiLU-backward and GLU epilogue of the row
    GEMM (both row halves, FINAL's zeros) computes its sigmoids by common.sigmoid's inline
    PTX (ex2.approx.ftz, rcp.approx.ftz), none by tl.sigmoid (ex2.approx without ftz): the
    two agree to an ulp or two, so no numerical test sees a call site that passes GPU=False
    on, nor one that calls tl.sigmoid."""
    done = subprocess.run([sys.executable, "-c", SIGMOID_EPILOGUES], env=_compiler_env(),
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sigmoid epilogues compiled" in done.stdout, done.stdout[-3000:]
