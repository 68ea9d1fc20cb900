"""Self-describing training checkpoints: run config, tokenizer, weights, OrthoSoftmax scores,
frozen masks, optimiser state, step, data position and RNG states, so that any checkpoint
loads alone and `--resume` continues exactly where the run stopped.

Written atomically (temp file in the same directory + os.replace); read with
`torch.load(weights_only=True)`: only tensors and plain Python values are stored.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .run_config import RunConfig, config_differences

FORMAT_VERSION = 1
TRAINING_KIND = "orthoasr-training"
SUBNET_KIND = "orthoasr-subnet"
KIND_NAMES = {TRAINING_KIND: "a training checkpoint (<work-dir>/checkpoint.pt)",
              SUBNET_KIND: "an exported subnet (`orthoasr export --out`)"}
# the fields every reader of a kind uses; a reader that needs more names them (`needs`).
# A training checkpoint may be cut down to these (experiments/run.py's frozen_masks.pt)
REQUIRED_KEYS = {TRAINING_KIND: ("run_config", "step", "frozen_masks"),
                 SUBNET_KIND: ("config", "widths", "budget", "state_dict", "tokenizer")}
# how torch.save's zip format begins, which every file orthoasr writes uses
ZIP_SIGNATURE = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, empty, corrupt, of the wrong kind, holding
    code, or not writable. The message names the path."""


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
    # generator states are CPU byte tensors; a checkpoint loaded onto the GPU moved them
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
    random.setstate(as_tuples(states["python"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))


def as_tuples(value):
    """random.setstate needs tuples where a round trip may have given lists."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    return value


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically (`write_atomically`)."""
    state = {"format": FORMAT_VERSION, **state}
    return write_atomically(path, lambda f: torch.save(state, f))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None],
                     what: str = "checkpoint") -> Path:
    """Write `path` with `write(file)` atomically: a reader sees the old file or the new one.
    The file gets the usual mode of a new file (0666 less the umask), not mkstemp's 0600.
    A failure to write is a CheckpointError naming `path` (`what` it is) and the reason."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        _remove(tmp)
        if not _is_write_failure(err):
            raise
        raise CheckpointError(
            f"could not write {what} {path}: {write_failure_reason(path, err)}; the previous "
            "file at that path, if any, is unchanged") from err
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_failure_reason(path: Path, err: Exception) -> str:
    """Why writing `path` failed, for a message that names `path`: a file where one of its
    folders should be, the OS's reason (not its temp file's name), the free space when the
    disk may be full."""
    in_the_way = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        return f"{in_the_way} is a file, not a folder"
    if isinstance(err, OSError) and err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return err.strerror or str(err)
    reason = err.strerror if isinstance(err, OSError) else str(err)
    free = shutil.disk_usage(path.parent).free / 2**20
    return f"{reason} ({free:.0f} MiB free on its disk)"


def _is_write_failure(err: Exception) -> bool:
    """An OSError, or torch's zip writer failing to write (a full disk reads "unexpected pos
    4128640 vs 4128532" or "PytorchStreamWriter failed writing file")."""
    return isinstance(err, OSError) or any(
        text in str(err) for text in ("unexpected pos", "PytorchStreamWriter", "file write"))


def _remove(path: str | None) -> None:
    if path is not None and os.path.exists(path):
        os.unlink(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_exported_program(path: str | Path) -> bool:
    """Whether `path` is a torch.export.save archive (its <name>/archive_format reads "pt2"),
    which torch.load cannot read."""
    try:
        with zipfile.ZipFile(path) as archive:
            formats = [name for name in archive.namelist() if name.endswith("/archive_format")]
            return bool(formats) and archive.read(formats[0]) == b"pt2"
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint(path: str | Path, map_location="cpu", kind: str | None = None,
                    needs: tuple[str, ...] = ()) -> dict:
    """The state saved by `save_checkpoint` (weights_only: no code is unpickled). `kind`
    (TRAINING_KIND or SUBNET_KIND) is checked when given, with the fields it requires
    (REQUIRED_KEYS) and those in `needs`. Every failure is a CheckpointError
    (FileNotFoundError when missing) naming the path."""
    path = Path(path)
    wanted = f"; this needs {KIND_NAMES[kind]}" if kind is not None else ""
    what = "exported subnet" if kind == SUBNET_KIND else "checkpoint"   # as the user asked
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    if path.is_dir():
        newest = path / "checkpoint.pt"          # a work dir given for its checkpoint
        meant = f" (the run's checkpoint: {newest})" if newest.is_file() and \
            kind in (None, TRAINING_KIND) else ""
        raise CheckpointError(f"{what} {path} is a directory, not a file{meant}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): it was not written "
                              "by orthoasr, or its copy was cut short")
    with path.open("rb") as f:
        if f.read(len(ZIP_SIGNATURE)) != ZIP_SIGNATURE:
            # torch.load would try the legacy format and fail at random (KeyError: 101)
            raise CheckpointError(f"{path} is not an orthoasr checkpoint (not a file "
                                  f"torch.save wrote){wanted}")
    if is_exported_program(path):
        raise CheckpointError(
            f"{path} is a torch.export program (`orthoasr export --pt2`): the encoder alone, "
            f"log-mel features in and log-probabilities out, for torch.export.load, with no "
            f"tokenizer{wanted}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False: never follow that for a file whose
        # origin is unknown, it would run the code the file carries
        raise CheckpointError(
            f"{what} {path} holds Python objects besides tensors and plain values; "
            "orthoasr never writes those, so it was not written by orthoasr (or was "
            "altered). It was not loaded: loading it could run code") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError) as err:
        # its first sentence: torch goes on with advice on how checkpoints get corrupted
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({reason})"
                              ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an orthoasr checkpoint (format "
                              f"{FORMAT_VERSION}){wanted}")
    found = checkpoint_kind(state)
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} is {KIND_NAMES.get(found, 'of an unknown kind')}; "
                              f"this needs {KIND_NAMES[kind]}")
    missing = [key for key in REQUIRED_KEYS.get(kind, ()) + tuple(needs) if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete orthoasr checkpoint: it lacks "
                              f"{', '.join(missing)}{wanted}")
    return state


def checkpoint_kind(state: dict) -> str | None:
    """TRAINING_KIND, SUBNET_KIND or None (training checkpoints carry no "kind" field)."""
    if "kind" in state:
        return state["kind"]
    return TRAINING_KIND if "run_config" in state else None


def find_nonfinite(named_tensors) -> list[str]:
    """Names of the floating-point tensors (from (name, tensor) pairs, nested dicts and lists
    walked) that hold NaN or inf."""
    bad = []
    for name, value in named_tensors:
        if isinstance(value, dict):
            bad += find_nonfinite((f"{name}.{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            bad += find_nonfinite((f"{name}.{i}", v) for i, v in enumerate(value))
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and \
                not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def check_config(state: dict, cfg: RunConfig, path: str | Path = "checkpoint",
                 allow_schedule_change: bool = False, allow_data_change: bool = False) -> dict:
    """Error naming every field where `cfg` differs from the checkpoint's config (fields in
    RunConfig.RESUMABLE_CHANGES may differ, those in RunConfig.SCHEDULE_CHANGES with
    `allow_schedule_change`, and train_manifest with `allow_data_change`). Returns the
    schedule changes {field: [checkpoint, config]}."""
    allowed = RunConfig.RESUMABLE_CHANGES
    if allow_schedule_change:
        allowed = allowed + RunConfig.SCHEDULE_CHANGES
    if allow_data_change:
        allowed = allowed + ("train_manifest",)
    # a key added after the checkpoint was written takes its default (new keys default to
    # the behaviour before them)
    saved = RunConfig.from_dict(state["run_config"]).to_dict()
    differences = config_differences(saved, cfg.to_dict())
    fields = [name for name in differences if name not in allowed]
    if fields:
        details = ", ".join(f"{name}: checkpoint {_lookup(saved, name)!r} vs "
                            f"config {_lookup(cfg.to_dict(), name)!r}" for name in fields)
        hint = ""
        if not allow_schedule_change and set(fields) <= set(RunConfig.SCHEDULE_CHANGES):
            hint = "; to resume with a new optimiser schedule add --allow-schedule-change"
        elif fields == ["train_manifest"]:
            # the run's own manifest first: --allow-data-change alone trained a run resumed
            # with the wrong --config on that config's corpus
            hint = (f"; the run trained on {_lookup(saved, 'train_manifest')}: give that path "
                    "(a resume without --config continues the checkpoint's own config), or "
                    "add --allow-data-change to resume on another training manifest on "
                    "purpose")
        else:
            # e.g. a preset that turned a new model setting on (remove_dc) after the run
            hint = ("; to continue the run as it was written, resume without --config (it "
                    "then takes the checkpoint's own) and without overrides of these fields")
        raise ValueError(f"checkpoint {path} was written with a different config; "
                         f"mismatching fields: {details}{hint}")
    return {name: [_lookup(saved, name), _lookup(cfg.to_dict(), name)]
            for name in differences if name in RunConfig.SCHEDULE_CHANGES}


def _lookup(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def partial_writes(folder: Path, names: str) -> list[Path]:
    """The temporary files that write_atomically and link_atomically leave in `folder` for
    targets matching the glob `names` when their process is killed mid-write."""
    return [*folder.glob(f"{names}.*.tmp"), *folder.glob(f"{names}.*.link")]


def refuse_replacing(name: str, path: Path, kind: str,
                     why_not: Callable[[Path], str | None]) -> None:
    """ValueError if `path` is an existing file that is not an earlier `kind` (`why_not(path)`:
    None for one, else the reason): an output replaces only what an earlier run wrote there.
    `name` names the argument."""
    if path.is_file() and (reason := why_not(path)):
        raise ValueError(f"{name} {path} exists and is not an earlier {kind} ({reason}); it "
                         f"was left as it is: remove it or choose another {name}")


def link_atomically(source: Path, link: Path) -> None:
    """Make `link` the same file as `source` (a hard link; a copy where links fail),
    replacing it atomically."""
    tmp = link.with_name(link.name + f".{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, link)


def checkpoint_step(path: Path) -> int | None:
    """The step a kept checkpoint's name gives (step-0000040.pt -> 40); None for a name that
    gives none, which no run wrote."""
    match = re.fullmatch(r"step-(\d+)\.pt", path.name)
    return int(match[1]) if match else None


def kept_checkpoints(folder: Path) -> list[Path]:
    """checkpoints/step-N.pt, oldest step first (then by name). By the step in the name, not
    the write time, which a copied or restored folder, or a clock change, reorders."""
    steps = {path: checkpoint_step(path) for path in folder.glob("step-*.pt")}
    return sorted((path for path, step in steps.items() if step is not None),
                  key=lambda path: (steps[path], path.name))


def prune_checkpoints(folder: Path, keep: int, step: int) -> None:
    """Keep `keep` of checkpoints/ after writing the one of `step`. Those of later steps,
    left by a continuation abandoned for a resume from an earlier checkpoint, go first (the
    one just written is newer than them), then the oldest steps."""
    kept = kept_checkpoints(folder)
    abandoned = [path for path in kept if checkpoint_step(path) > step]
    current = [path for path in kept if checkpoint_step(path) <= step]
    for old in (abandoned + current)[:-keep]:
        old.unlink()


__all__ = ["link_atomically", "partial_writes", "refuse_replacing", "kept_checkpoints",
           "prune_checkpoints", "checkpoint_step",
           "save_checkpoint", "write_atomically", "write_failure_reason", "load_checkpoint",
           "is_exported_program",
           "check_config", "rng_states", "set_rng_states", "as_tuples", "CheckpointError",
           "checkpoint_kind", "find_nonfinite", "TRAINING_KIND", "SUBNET_KIND", "REQUIRED_KEYS"]
