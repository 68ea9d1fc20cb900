"""Self-describing training checkpoints: run config, tokenizer, weights, OrthoSoftmax scores,
frozen masks, optimiser state, step, data position and RNG states, so that any checkpoint
loads alone and `--resume` continues exactly where the run stopped.

Written atomically (temp file in the same directory + os.replace); read with
`torch.load(weights_only=True)`: only tensors and plain Python values are stored.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .run_config import RunConfig, config_differences

FORMAT_VERSION = 1


def rng_states() -> dict:
    """CPU, CUDA, Python and NumPy RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(as_tuples(states["python"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def as_tuples(value):
    """random.setstate needs tuples where a round trip may have given lists."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    return value


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically: a reader sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The state saved by `save_checkpoint` (weights_only: no code is unpickled)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an orthoasr checkpoint (format {FORMAT_VERSION})")
    return state


def check_config(state: dict, cfg: RunConfig, path: str | Path = "checkpoint") -> None:
    """Error naming every field where `cfg` differs from the checkpoint's config (fields in
    RunConfig.RESUMABLE_CHANGES may differ)."""
    fields = [name for name in config_differences(state["run_config"], cfg.to_dict())
              if name not in RunConfig.RESUMABLE_CHANGES]
    if fields:
        details = ", ".join(f"{name}: checkpoint {_lookup(state['run_config'], name)!r} vs "
                            f"config {_lookup(cfg.to_dict(), name)!r}" for name in fields)
        raise ValueError(f"checkpoint {path} was written with a different config; "
                         f"mismatching fields: {details}")


def _lookup(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


__all__ = ["save_checkpoint", "load_checkpoint", "check_config", "rng_states",
           "set_rng_states", "as_tuples"]
