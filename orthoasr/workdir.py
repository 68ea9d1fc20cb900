"""Work-directory safety: a run is never overwritten unless asked (`--overwrite` moves it
aside, nothing is deleted), and a lock file keeps a second process out of a running one.

    moved = prepare_work_dir(work_dir, resume=False, overwrite=True)   # old run -> moved
    with WorkDirLock(work_dir):
        ...train...
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"
# what a training run leaves in its work dir once it has trained a step. Not the
# tokenizer.model a run writes before its first step: alone, it is what a run that failed
# while starting leaves, and a new run trains it again
RUN_FILES = ("checkpoint.pt", "metrics.csv", "checkpoints")


class WorkDirError(RuntimeError):
    """A work dir that cannot be used as asked; the message says what to do."""


def run_files(work_dir: Path) -> list[str]:
    """The names of RUN_FILES present in `work_dir`."""
    return [name for name in RUN_FILES if (work_dir / name).exists()]


def check_work_dir(work_dir: Path) -> None:
    """A WorkDirError if `work_dir` is a file, or a folder that a running run holds."""
    if work_dir.exists() and not work_dir.is_dir():
        raise WorkDirError(f"work dir {work_dir} is a file, not a directory")
    if work_dir.is_dir():
        check_unlocked(work_dir)


def prepare_work_dir(work_dir: str | Path, resume: bool, overwrite: bool) -> Path | None:
    """Check that a run may start (or continue) in `work_dir`; with `overwrite`, move a run
    found there to `<work_dir>.old-<i>` and return that path. A run is never deleted."""
    work_dir = Path(work_dir)
    if resume and overwrite:
        raise WorkDirError("--resume and --overwrite exclude each other: --resume continues "
                           "the run in the work dir, --overwrite moves it aside")
    # first: a running run's files (or their absence, before its first checkpoint) say
    # nothing about what to do
    check_work_dir(work_dir)
    found = run_files(work_dir) if work_dir.is_dir() else []
    if resume or not found:
        return None
    if not overwrite:
        raise WorkDirError(
            f"work dir {work_dir} already holds a run ({', '.join(found)}); add --resume to "
            f"continue it, or --overwrite to move it aside to {_aside_name(work_dir)} and "
            "start a new one")
    aside = _aside_name(work_dir)
    os.rename(work_dir, aside)
    print(f"moved the previous run in {work_dir} to {aside}", flush=True)
    return aside


def remove_if_empty(work_dir: Path) -> None:
    """Remove `work_dir` if nothing is in it."""
    try:
        work_dir.rmdir()
    except OSError:     # not empty, or gone
        pass


def _aside_name(work_dir: Path) -> Path:
    i = 1
    while work_dir.with_name(f"{work_dir.name}.old-{i}").exists():
        i += 1
    return work_dir.with_name(f"{work_dir.name}.old-{i}")


def check_unlocked(work_dir: Path) -> None:
    """Error if a live process holds `work_dir`'s lock."""
    owner = _lock_owner(work_dir / LOCK_NAME)
    if owner is not None and not _is_stale(owner):
        raise _in_use(work_dir, owner)


class WorkDirLock:
    """`<work_dir>/.lock` holding "pid host", created exclusively. A lock whose process is
    gone (same host, pid not running) is stale: it is replaced, with a note."""

    def __init__(self, work_dir: str | Path):
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / LOCK_NAME
        self.held = False

    def __enter__(self) -> WorkDirLock:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # written whole beside the lock, then linked into place: a lock file created empty
        # and written after read as stale to a second process starting at the same moment,
        # which replaced it, and both runs went on
        mine = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.{id(self):x}")
        mine.write_text(f"{os.getpid()} {socket.gethostname()}\n")
        try:
            for _ in range(2):
                try:
                    _link_or_create(mine, self.path)
                except FileExistsError:
                    owner = _lock_owner(self.path)
                    if owner is not None and not _is_stale(owner):
                        raise _in_use(self.work_dir, owner) from None
                    self._remove_stale(owner)
                    continue
                self.held = True
                return self
        finally:
            mine.unlink(missing_ok=True)
        raise WorkDirError(f"could not take the lock {self.path}")

    def _remove_stale(self, seen: tuple[int, str] | None) -> None:
        """Remove the lock judged stale, whose owner read `seen`. It is moved aside first and
        read again: a second process that judged the same lock stale may have replaced it
        meanwhile with its own lock, live, which is put back (unlinking by name removed it,
        and both processes went on)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{id(self):x}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return                       # removed by another process: link again
        moved = _lock_owner(aside)
        try:
            if moved is not None and moved != seen and not _is_stale(moved):
                try:
                    _link_or_create(aside, self.path)
                except FileExistsError:  # a third process took the lock: it is in use all the same
                    pass
                raise _in_use(self.work_dir, moved)
        finally:
            aside.unlink(missing_ok=True)
        print(f"note: removing the stale lock {self.path} (left by "
              f"{'an unreadable owner' if seen is None else f'process {seen[0]}'}"
              ", which is no longer running)", flush=True)

    def __exit__(self, *exc) -> None:
        if self.held and _lock_owner(self.path) == (os.getpid(), socket.gethostname()):
            self.path.unlink(missing_ok=True)
        self.held = False


def _link_or_create(source: Path, lock: Path) -> None:
    """Make `lock` a hard link to `source` (FileExistsError if it exists); where the file
    system has no hard links, create it exclusively and copy `source` in."""
    try:
        os.link(source, lock)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(source.read_text())


def _lock_owner(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in the lock file; None if there is none or it is unreadable."""
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _is_stale(owner: tuple[int, str]) -> bool:
    pid, host = owner
    if host != socket.gethostname():
        return False          # cannot tell from here: assume the other machine still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # exists, owned by someone else
        return False
    return False


def _in_use(work_dir: Path, owner: tuple[int, str]) -> WorkDirError:
    return WorkDirError(
        f"work dir {work_dir} is in use by process {owner[0]} on {owner[1]} (lock file "
        f"{work_dir / LOCK_NAME}); wait for that run to end, or delete the lock file if "
        "no such process runs")


__all__ = ["WorkDirError", "WorkDirLock", "prepare_work_dir", "check_work_dir",
           "check_unlocked", "run_files", "remove_if_empty"]
