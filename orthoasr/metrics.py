"""The training metrics CSV (`<work-dir>/metrics.csv`): one row per step with the losses,
schedule values and throughput; written by the trainer, read by benchmarks and tests."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import write_atomically

METRICS = "metrics.csv"
METRIC_NAMES = ("loss", "loss_sup", "loss_sub", "penalty")


def write_metrics(path: Path, rows: list[dict], keep_until: int | None = None) -> None:
    """Append rows to the CSV; with keep_until, first drop rows after that step (resume).
    That rewrite is atomic (a full disk or a kill leaves the old file, where truncating it
    first lost the run's history) and keeps any column of the file that this version no
    longer writes (writing its rows had failed after the truncation)."""
    path = Path(path)
    if keep_until is not None or not path.exists() or path.stat().st_size == 0:
        old, columns = [], _metric_columns()
        if path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                old = [r for r in reader if keep_until is not None and
                       int(r["step"]) <= keep_until]
                columns += [c for c in reader.fieldnames or () if c not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(old + rows)
        write_atomically(path, lambda f: f.write(text.getvalue().encode()), "metrics")
        return
    with path.open(newline="") as f:
        columns = next(csv.reader(f))          # the file's own, as written at its start
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=columns).writerows(rows)


def _metric_columns() -> list[str]:
    return ["step", "stage", "budget", *METRIC_NAMES, "tau", "lr", "ms_per_step", "utt_per_s",
            "audio_per_s"]


def read_metrics(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        # a column added since a resumed run's first rows were written reads as NaN there
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                for row in csv.DictReader(f)]


def plateau_exit(losses: Sequence[float], level: float = 1.0, window: int = 50) -> int | None:
    """Index of the first loss whose mean with the `window` - 1 losses before it is below
    `level` (None if none): where a CTC curve left the blank plateau. The defaults are the
    learning check's (`bench.train_step`): the paper model on the small corpus stays above
    1.0 a frame while every frame reads blank."""
    for end in range(window, len(losses) + 1):
        if statistics.fmean(losses[end - window:end]) < level:
            return end - 1
    return None
