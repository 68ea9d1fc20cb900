"""One harness for every benchmark: timing by median of triton.testing.do_bench (optionally
over CUDA-graph replays) and JSON rows stamped with the card, versions, commit and date.

A row: {"table", "case", "mode", "provider", "ms", ...extra metrics} + environment fields.
bench/report.py turns bench/results/*.json into bench/RESULTS.md.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import uuid
from pathlib import Path

import torch

from orthoasr.graphs import capture_graph
from orthoasr.kernels.common import interpreting

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUN_ID = uuid.uuid4().hex[:8]


def environment() -> dict:
    import triton
    # the device machine's copy has a .git of the session's first commit under later
    # changes, so a commit named by the caller (bench/gpu_*.sh: from .commit) comes first
    commit = os.environ.get("ORTHOASR_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            commit = ""
    return {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "triton": triton.__version__,
        "commit": commit or _commit_file(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_id": RUN_ID,
    }


def require_gpu(name: str, gpus: int = 1) -> None:
    """Exit with a message, before any work or any row written, where fewer than `gpus` CUDA
    GPUs are: the module times CUDA kernels (bench/gpu_all.sh runs it on the device
    machine)."""
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < gpus:
        need = "a GPU" if gpus == 1 else f"{gpus} CUDA GPUs, found {found}"
        raise SystemExit(f"bench.{name} times CUDA kernels: it needs {need} (bench/gpu_all.sh "
                         "runs it on the device machine); nothing was run or written")


def require_gpu_unless_checking(name: str, check: bool) -> None:
    """Where no CUDA GPU is, only `--check` runs, and only under TRITON_INTERPRET=1 (else
    `ours` is the PyTorch path and the check never reaches the kernels): anything else exits
    with a message before any work."""
    if torch.cuda.is_available():
        return
    if not check:
        raise SystemExit(f"bench.{name} times CUDA kernels: it needs a GPU; on the CPU "
                         f"`TRITON_INTERPRET=1 python -m bench.{name} --check` runs its "
                         "equality checks. Nothing was run or written")
    if not interpreting():
        raise SystemExit(f"bench.{name} --check on the CPU: run it with TRITON_INTERPRET=1 "
                         "(else `ours` is the PyTorch path and the check never reaches the "
                         "Triton kernels)")


def _commit_file() -> str:
    """The commit written to .commit by whoever sent this checkout to the device machine."""
    path = Path(__file__).resolve().parent.parent / ".commit"
    return path.read_text().strip() if path.exists() else "unknown"


def time_ms(fn, warmup_ms: int = 50, rep_ms: int = 300) -> float:
    """Median milliseconds of fn() on the GPU (events around each call)."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def time_graph_ms(fn, warmup_ms: int = 50, rep_ms: int = 300, captures: int = 1) -> float:
    """Median milliseconds of one replay of fn() captured in a CUDA graph: GPU time without
    the host's launch overhead. fn must be capturable (no host sync, static shapes). With
    captures > 1, fn is captured that many times, one after the other, and the least of the
    graphs' medians is returned: on the H200 the first two captures of the paper encoder's
    two-stream inference made after an eager pass of the cuBLAS floor replayed ~4% slower
    than every later one (bench/NOTES.md, session 41)."""
    times = []
    for _ in range(captures):
        graph, _ = capture_graph(fn)
        times.append(time_ms(graph.replay, warmup_ms, rep_ms))
        del graph
    return min(times)


def write_rows(name: str, rows: list[dict], out_dir: str | os.PathLike | None = None) -> Path:
    """Append rows (stamped with the environment) to <out_dir or bench/results>/<name>.json."""
    env = environment()
    path = Path(out_dir or RESULTS_DIR) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    old += [{**row, **env} for row in rows]
    path.write_text(json.dumps(old, indent=1) + "\n")
    return path
