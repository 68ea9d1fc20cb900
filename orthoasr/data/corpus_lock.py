"""A corpus folder's readers/writer lock. `orthoasr synth --overwrite` deletes a corpus's
wav/ folder and writes it anew: a training or eval run reading that corpus at the moment
would go on with missing or different audio, silently. So a reader holds a shared advisory
lock (flock LOCK_SH) on `<corpus>/.corpus.lock` for as long as it reads, and synth holds it
exclusively while it writes, refusing at once (CorpusInUse) when it cannot take it.

    with corpus_read_lock([run.train_manifest, run.dev_manifest]):   # files or folders
        ...read the audio...
    with corpus_write_lock(out_dir):       # CorpusInUse while a run reads out_dir
        ...delete and write...

flock belongs to the open file, not the process: a reader and a writer in one process
exclude each other too; forked children (synth's workers, a run's loader workers) share
their parent's lock until they exit; and a lock ends with its holders, so the (empty) lock
file left beside every manifest read is never stale. A folder where the lock file cannot be
created (read-only) is read without the lock: a writer, which must take it, cannot replace
its files either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:       # Windows: no flock; corpora are not guarded there
    fcntl = None

LOCK_NAME = ".corpus.lock"


class CorpusInUse(RuntimeError):
    """A corpus folder that another process reads or writes; the message says which."""


def corpus_folder(manifest: str | os.PathLike) -> Path:
    """The folder of a corpus: a JSONL manifest's folder, or a LibriSpeech-layout folder."""
    path = Path(manifest)
    return path if path.is_dir() else path.parent


@contextlib.contextmanager
def corpus_read_lock(manifests: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Within: a shared lock on the corpus folder of each manifest. CorpusInUse if
    `orthoasr synth` is writing one of them."""
    folders = dict.fromkeys(corpus_folder(m) for m in manifests)
    with contextlib.ExitStack() as held:
        for folder in folders:
            try:
                fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o666)
            except OSError:      # read-only (or missing): nothing can rewrite it
                continue
            held.callback(os.close, fd)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CorpusInUse(
                    f"corpus {folder} is being written by `orthoasr synth` (lock file "
                    f"{folder / LOCK_NAME}); wait for it to finish") from None
            except OSError:      # no locks on this file system: a writer is refused there
                pass
        yield


@contextlib.contextmanager
def corpus_write_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Within: the exclusive lock on corpus `folder` (which must exist). CorpusInUse if a
    run reads it (or another synth writes it); an OSError if it cannot be locked at all."""
    path = Path(folder) / LOCK_NAME
    with contextlib.ExitStack() as held:
        try:
            # opened for writing: NFS emulates flock with fcntl locks, whose exclusive one
            # needs it
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            held.callback(os.close, fd)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CorpusInUse(
                f"corpus {folder} is in use: a run is reading it, or another `orthoasr "
                f"synth` is writing it (lock file {path}); wait for it to end, or choose "
                "another --out") from None
        except OSError as err:
            raise OSError(f"cannot lock {path} ({err.strerror}): a corpus is replaced only "
                          "under its lock, which keeps the runs reading it safe") from None
        yield


__all__ = ["CorpusInUse", "LOCK_NAME", "corpus_folder", "corpus_read_lock",
           "corpus_write_lock"]
