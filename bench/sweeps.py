"""What the launch-configuration sweeps share (bench/sweep_*.py): each configuration of a
kernel run once, checked, then timed as CUDA-graph replays, one result row per configuration,
and the rows written and printed."""

from __future__ import annotations

import os

import torch

from bench.harness import time_graph_ms, write_rows

# a paper step's frames after subsampling (max_frames 80000); SWEEP_BATCH=32: issue 13's
# B32xT250 module benchmarks' frames
B, T = int(os.environ.get("SWEEP_BATCH", 80)), 250


def step_lengths() -> torch.Tensor:
    """(B,) int64 lengths on the GPU, 80-100% of T, as in a paper step's batches."""
    return torch.randint(int(0.8 * T), T + 1, (B,), device="cuda")


def config_name(config: dict) -> str:
    """'BM=4 num_warps=2', or 'default' for the launcher's own configuration ({})."""
    return " ".join(f"{key}={value}" for key, value in config.items()) or "default"


def time_configs(base: dict, configs: list[dict], call, check=None) -> list[dict]:
    """One row per configuration: base (table, case, mode, ...) plus provider "ours", the
    configuration's name and the graph-replay time of call(config). check(config, output)
    sees each configuration's first output before it is timed."""
    rows = []
    for config in configs:
        output = call(config)
        if check is not None:
            check(config, output)
        rows.append({**base, "provider": "ours", "config": config_name(config),
                     "timing": "graph", "ms": time_graph_ms(lambda c=config: call(c))})
    return rows


def report(rows: list[dict], label=lambda row: row["case"]) -> None:
    """Append the rows to bench/results/kernels.json and print one line each."""
    path = write_rows("kernels", rows)
    for row in rows:
        print(f"{label(row)} {row['provider']:>6} {row['config']:>44} "
              f"{row['ms'] * 1e3:8.1f} us")
    print(f"wrote {path}")
