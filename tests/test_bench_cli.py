"""The benchmarks' command lines as a kernel engineer meets them (`python -m bench.<name>`, in a
process: tests import nothing from bench): `--help` prints the usage and runs nothing, and a
GPU-only benchmark started where no GPU is says so and exits before any work, leaving
bench/results as it was (it used to fail with a traceback, or, bench_ortho_softmax, to print
a failure per size, exit 0 and rewrite bench/results/ortho_softmax.json)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GPU_ONLY = ["bench_attention", "bench_ctc", "bench_mhsa", "bench_modules_ffn_conv",
            "bench_ortho_softmax", "bench_residual_norm", "gemm_probe", "gemm_sweep",
            "profile_host", "profile_kernels", "profile_ortho_softmax", "sweep_col_sums",
            "sweep_conv", "sweep_in_proj", "sweep_layer_norm"]


def _start(module: str, *args: str) -> subprocess.Popen:
    # no GPU visible, kernels interpreted: the CPU machine's setting, also on a GPU host
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}
    return subprocess.Popen([sys.executable, "-m", f"bench.{module}", *args], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _bench(module: str, *args: str) -> subprocess.CompletedProcess:
    return _finish(_start(module, *args))


def _gpu_env() -> dict[str, str]:
    """Kernels compiled, bench found on PYTHONPATH, for a benchmark run from elsewhere: from
    the repo's root its orthoasr/ (no kernels/ inside: setup.py maps them in) shadows a
    non-editable install's (the GPU machine's)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    return env


def _results_digest() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "bench" / "results").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("module", GPU_ONLY)
def test_a_gpu_benchmark_has_help_and_says_it_needs_a_gpu(module):
    before = _results_digest()
    # both at once: each is mostly its imports, on a CPU core of its own
    helping, running = _start(module, "--help"), _start(module)
    helped, done = _finish(helping), _finish(running)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert helped.stdout.startswith("usage:"), helped.stdout[-2000:]
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"bench.{module}" in done.stderr and "needs a GPU" in done.stderr, done.stderr
    assert _results_digest() == before, "a run without a GPU changed bench/results"


@pytest.mark.parametrize("module, args", [
    ("bench_floor", ["--modules", "ffn", "--cases", "B32xT250", "--gates", "all-on"]),
    ("e2e", ["--workloads", "dense", "--providers", "eager_reference"]),
    ("e2e_trainer", ["--steps", "2", "--warmup", "1"]),
    ("ddp_scaling", ["--steps", "2", "--warmup-steps", "0"]),
])
def test_a_timing_run_without_a_gpu_exits_before_any_work(module, args, tmp_path):
    """bench_floor and e2e used to run their equality checks, fail every timing and (e2e)
    regenerate bench/RESULTS.md; e2e_trainer and ddp_scaling to synthesise their corpus
    (minutes) first, ddp_scaling then to train on the CPU."""
    work = tmp_path / "work"
    extra = ["--work-dir", str(work)] if module in ("e2e_trainer", "ddp_scaling") else []
    before = {**_results_digest(), "RESULTS.md": (ROOT / "bench" / "RESULTS.md").read_text()}
    done = _bench(module, *args, *extra, "--out", str(tmp_path / "out"))
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"bench.{module}" in done.stderr and "GPU" in done.stderr, done.stderr[-2000:]
    assert not work.exists() and not (tmp_path / "out").exists()
    assert {**_results_digest(), "RESULTS.md": (ROOT / "bench" / "RESULTS.md").read_text()} \
        == before


@pytest.mark.parametrize("module, args", [("bench_floor", ["--modules", "ffn"]),
                                          ("e2e", ["--workloads", "dense"])])
def test_a_cpu_check_needs_the_interpreter(module, args):
    """Without TRITON_INTERPRET=1 `ours` is the PyTorch path: bench_floor's --check passed
    without ever running a kernel (e2e's refused already)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", "--check", *args],
                          env={**env, "CUDA_VISIBLE_DEVICES": ""}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout[-2000:]
    assert "TRITON_INTERPRET=1" in done.stderr and "Traceback" not in done.stderr, \
        done.stderr[-2000:]


def test_targets_read_a_card_by_any_part_of_its_name_and_refuse_one_without_rows():
    """`bench.targets --gpu h100` read no rows (the match was case-sensitive) and printed
    every target as "not measured", as did a card with no rows at all (exit 0);
    `--gpu "NVIDIA H200"`, the target card by its full name, left out issue 14's table."""
    def targets(*args):
        return _bench("targets", *args)
    assert targets("--gpu", "h100").stdout == targets("--gpu", "H100").stdout
    assert "| yes |" in targets("--gpu", "H100").stdout
    assert targets("--gpu", "NVIDIA H200").stdout == targets().stdout
    assert "trainer stage 1" in targets().stdout
    done = targets("--gpu", "A100")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "A100" in done.stderr and "NVIDIA H200" in done.stderr, done.stderr


@pytest.mark.parametrize("module, args", [
    ("bench_floor", ["--gates", "hlaf"]), ("bench_floor", ["--modules", "attn"]),
    ("bench_floor", ["--modes", "bwd"]), ("bench_floor", ["--timings", "graphs"]),
    ("bench_floor", ["--providers", "compiled_floor"]),
    ("profile_kernels", ["--gates", "on"]), ("profile_kernels", ["--modules", "ffn1"]),
    ("gemm_sweep", ["--families", "wgrad-tma"]),
])
def test_a_misspelt_choice_is_refused(module, args):
    """A gate pattern, module, mode, timing or GEMM family that no case has used to match
    nothing: those cases were left out without a word (bench_floor's --modules: a KeyError
    after the model was built)."""
    done = _bench(module, *args)
    assert done.returncode == 2 and "invalid choice" in done.stderr, done.stderr[-2000:]


@pytest.mark.gpu
def test_bench_floor_writes_attention_rows_once_and_only_to_out(tmp_path):
    """The attention core's rows were written as measured to bench/results (the timing
    helper was not handed --out) and once more, all together, to --out: with --out
    elsewhere bench/results still changed, and without it every row was there twice."""
    before = _results_digest()
    env = _gpu_env()        # run from elsewhere (see _gpu_env)
    done = subprocess.run([sys.executable, "-m", "bench.bench_floor", "--modules", "attention",
                           "--cases", "B32xT250", "--timings", "eager", "--out", str(tmp_path)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _results_digest() == before, "bench_floor --out changed bench/results"
    rows = json.loads((tmp_path / "kernels.json").read_text())
    keys = [(r["mode"], r["provider"], r["timing"]) for r in rows]
    assert rows and len(keys) == len(set(keys)), keys


@pytest.mark.gpu
def test_bench_floor_times_only_the_providers_named(tmp_path):
    """--providers: the rows the targets read without the diagnostic providers (settings
    off, one stream, the unpacked attention), so that one device call holds more cases."""
    env = _gpu_env()
    done = subprocess.run([sys.executable, "-m", "bench.bench_floor", "--modules", "attention",
                           "--cases", "B32xT250", "--timings", "eager", "--out", str(tmp_path),
                           "--providers", "ours", "sdpa_mask"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "kernels.json").read_text())
    assert {(r["mode"], r["provider"]) for r in rows} == {
        (mode, provider) for mode in ("fwd", "fwd+bwd") for provider in ("ours", "sdpa_mask")}


def test_report_names_each_rows_unit_where_a_tables_runs_differ(tmp_path):
    """RESULTS.md's ddp table headed every time with its first row's unit (s per utt), so
    the newer runs' ms per audio s read as s per utt. Rendered by bench.report from a copy
    of it (its results folder is its own: the repo's RESULTS.md stays as it is)."""
    (tmp_path / "bench" / "results").mkdir(parents=True)
    for name in ("__init__.py", "report.py", "targets.py"):
        shutil.copy(ROOT / "bench" / name, tmp_path / "bench" / name)
    env = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2", "triton": "3", "commit": "abc1234"}
    rows = [{"table": "ddp", "case": "old", "mode": "train", "provider": "1 GPU",
             "baseline": "1 GPU", "time_unit": "s per utt", "ms": 0.002,
             "date": "2026-11-25T19:00:00+00:00", "run_id": "r1", **env},
            {"table": "ddp", "case": "new", "mode": "train", "provider": "1 GPU",
             "baseline": "1 GPU", "time_unit": "ms per audio s", "ms": 0.25,
             "date": "2026-11-25T21:00:00+00:00", "run_id": "r2", **env},
            {"table": "ctc", "case": "c", "mode": "fwd", "provider": "ours", "ms": 0.05,
             "date": "2026-11-25T21:00:00+00:00", "run_id": "r3", **env}]
    (tmp_path / "bench" / "results" / "rows.json").write_text(json.dumps(rows))
    done = subprocess.run([sys.executable, "-m", "bench.report"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "| old | train | 1 GPU | H100 | 0.002 s per utt |" in text, text
    assert "| new | train | 1 GPU | H100 | 0.25 ms per audio s |" in text, text
    assert "| case | mode | provider | card | time (µs) |" in text        # one unit: as before
    assert "| c | fwd | ours | H100 | 50.0 |" in text


@pytest.mark.gpu
def test_module_backward_profiles_time_no_cast_of_the_output_gradient(tmp_path):
    """The module benchmarks gave an fp32 gradient to a module's bf16 output, so autograd
    cast it inside every timed backward: a bfloat16 copy kernel of ~6-9 us in each
    provider's fwd+bwd at B32xT250 (H100, 2026-12-07), the harness's work, not the
    module's. The gradient now comes in the output's dtype (bench_floor's
    grad_in_output_dtype, which profile_kernels shares)."""
    env = _gpu_env()
    out = tmp_path / "kernels.txt"
    done = subprocess.run([sys.executable, "-m", "bench.profile_kernels", "--modules", "ffn",
                           "--gates", "all-on", "--modes", "fwd+bwd", "--iters", "3",
                           "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "_rows_gemm_kernel" in table, table
    assert "bfloat16_copy" not in table, table
