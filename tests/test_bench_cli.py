"""The benchmarks' command lines as a kernel engineer meets them (`python -m bench.<name>`, in a
process: tests import nothing from bench): `--help` prints the usage and runs nothing, and a
GPU-only benchmark started where no GPU is says so and exits before any work, leaving
bench/results as it was (it used to fail with a traceback, or, bench_ortho_softmax, to print
a failure per size, exit 0 and rewrite bench/results/ortho_softmax.json)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GPU_ONLY = ["bench_attention", "bench_ctc", "bench_mhsa", "bench_modules_ffn_conv",
            "bench_ortho_softmax", "bench_residual_norm", "gemm_probe", "gemm_sweep",
            "profile_host", "profile_kernels", "profile_ortho_softmax", "sweep_col_sums",
            "sweep_conv", "sweep_in_proj", "sweep_layer_norm"]


def _bench(module: str, *args: str) -> subprocess.CompletedProcess:
    # no GPU visible, kernels interpreted: the CPU machine's setting, also on a GPU host
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", f"bench.{module}", *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _results_digest() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "bench" / "results").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("module", GPU_ONLY)
def test_a_gpu_benchmark_has_help_and_says_it_needs_a_gpu(module):
    helped = _bench(module, "--help")
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert helped.stdout.startswith("usage:"), helped.stdout[-2000:]
    before = _results_digest()
    done = _bench(module)
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"bench.{module}" in done.stderr and "needs a GPU" in done.stderr, done.stderr
    assert _results_digest() == before, "a run without a GPU changed bench/results"
