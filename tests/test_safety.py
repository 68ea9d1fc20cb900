"""Nothing a user does by mistake loses a run (issue 16): work-dir safety and the lock,
signals, wall-time and kept checkpoints, divergence recovery, range-checked config, data
filters, one-line CLI errors, checkpoint errors by kind."""

import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
import torch
from test_train import as_overrides, tiny_run, write_corpus

import orthoasr.train as train_module
import orthoasr.trainer as trainer_module
from orthoasr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from orthoasr.cli import main
from orthoasr.data import load_audio, load_manifest
from orthoasr.data.corpus_lock import LOCK_NAME
from orthoasr.distributed import SINGLE
from orthoasr.evaluate import evaluate
from orthoasr.export import load_subnet
from orthoasr.metrics import read_metrics
from orthoasr.run_config import load_run_config
from orthoasr.run_data import TrainData, make_tokenizer
from orthoasr.train import TrainingDiverged, train
from orthoasr.workdir import WorkDirError, WorkDirLock


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=8)


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """A finished 2-step run (one step per stage) and its checkpoint."""
    work = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1"), work)
    return work


def short_run(corpus, *overrides):
    return tiny_run(corpus, "stage1_steps=2", "stage2_steps=0", *overrides)


def after_step(monkeypatch, step: int, action):
    """Trainer.train_step patched to call action(trainer) once the run is at `step`; returns
    the real train_step."""
    real_step = train_module.Trainer.train_step

    def step_then_act(trainer, batch, on_device=None):
        real_step(trainer, batch, on_device)
        if trainer.step == step:
            action(trainer)

    monkeypatch.setattr(train_module.Trainer, "train_step", step_then_act)
    return real_step


def ours(handler) -> bool:
    """Whether a signal handler is a _stop_signals_caught's (one the run left installed)."""
    return isinstance(getattr(handler, "__self__", None), train_module._stop_signals_caught)


def files_of(folder: Path) -> dict:
    """Each file under `folder`: its inode, modification time and contents. Not a corpus
    lock file, which a run reading a manifest kept there leaves (data/corpus_lock.py)."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def cli_error(capsys, argv) -> str:
    """Run the CLI expecting a user error: exit 2, one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("orthoasr: error: ") and "\n" not in err, err
    return err


# ----------------------------------------------------------------------------- 1: work dir

def test_a_run_is_refused_without_resume_and_moved_aside_by_overwrite(corpus, tmp_path):
    work = tmp_path / "run"
    train(short_run(corpus), work)
    metrics, ckpt = (work / "metrics.csv").read_bytes(), (work / "checkpoint.pt").read_bytes()
    with pytest.raises(WorkDirError, match=r"already holds a run.*--resume.*--overwrite"):
        train(short_run(corpus, "stage1_steps=1"), work)
    assert (work / "metrics.csv").read_bytes() == metrics
    assert (work / "checkpoint.pt").read_bytes() == ckpt
    train(short_run(corpus, "stage1_steps=1"), work, overwrite=True)
    assert (tmp_path / "run.old-1" / "metrics.csv").read_bytes() == metrics
    assert (tmp_path / "run.old-1" / "checkpoint.pt").read_bytes() == ckpt
    assert [r["step"] for r in read_metrics(work / "metrics.csv")] == [1]
    assert not (work / ".lock").exists()
    with pytest.raises(WorkDirError, match="nothing to resume"):
        train(short_run(corpus), tmp_path / "empty", resume=True)


def test_overwrite_of_the_current_folder_moves_it_aside_and_starts_anew_by_name(
        corpus, tmp_path, monkeypatch):
    """`--work-dir . --overwrite` from inside the run: the old run goes to run.old-1 and the
    new one to run, as from the parent folder (it was "PosixPath('.') has an empty name";
    "." also follows the current folder into run.old-1, over the old run's files)."""
    work = tmp_path / "run"
    train(short_run(corpus), work)
    ckpt = (work / "checkpoint.pt").read_bytes()
    monkeypatch.chdir(work)
    train(short_run(corpus, "stage1_steps=1"), ".", overwrite=True)
    assert (tmp_path / "run.old-1" / "checkpoint.pt").read_bytes() == ckpt
    assert [r["step"] for r in read_metrics(tmp_path / "run.old-1" / "metrics.csv")] == [1, 2]
    assert [r["step"] for r in read_metrics(work / "metrics.csv")] == [1]


def test_a_run_that_failed_before_its_first_step_is_started_again(corpus, tmp_path):
    """It left only its tokenizer: no run to resume or move aside, a new one starts there."""
    work = tmp_path / "run"
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run here"):
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("TRITON_INTERPRET", raising=False)
            train(short_run(corpus, "backend=triton"), work)
    assert [p.name for p in work.iterdir() if p.name != ".lock"] == ["tokenizer.model"]
    assert train(short_run(corpus), work).step == 2
    assert not (tmp_path / "run.old-1").exists()


def test_a_start_that_failed_leaves_no_empty_work_dir(corpus, tmp_path, monkeypatch):
    """A work dir the run created, with nothing written in it, is removed again; one that
    was there before stays."""
    def fails(*args, **kwargs):
        raise RuntimeError("no device")

    monkeypatch.setattr(train_module, "Trainer", fails)
    for existed in (False, True):
        work = tmp_path / f"run-{existed}"
        if existed:
            work.mkdir()
        with pytest.raises(RuntimeError, match="no device"):
            train(short_run(corpus), work)
        assert work.exists() == existed
        assert not existed or list(work.iterdir()) == []


def _write_stale_lock(work: Path) -> None:
    """A lock in `work` left by a process of this host that has ended."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (work / ".lock").write_text(f"{gone.pid} {socket.gethostname()}\n")


def test_lock_keeps_a_second_process_out_and_stale_locks_are_replaced(corpus, tmp_path,
                                                                     capsys):
    work = tmp_path / "run"
    with WorkDirLock(work):
        with pytest.raises(WorkDirError, match=rf"in use by process {os.getpid()}.*lock file"):
            WorkDirLock(work).__enter__()
        with pytest.raises(WorkDirError, match="in use by process"):
            train(short_run(corpus), work)
        # before its first checkpoint: not "nothing to resume ... start a new run"
        with pytest.raises(WorkDirError, match="in use by process"):
            train(short_run(corpus), work, resume=True)
    assert not (work / ".lock").exists()
    _write_stale_lock(work)
    train(short_run(corpus), work)
    assert f"stale lock {work / '.lock'}" in capsys.readouterr().out
    assert load_checkpoint(work / "checkpoint.pt")["step"] == 2


def test_a_lock_being_taken_is_not_taken_by_a_second_process(tmp_path, monkeypatch):
    """A second lock that looks while the first is being written: the lock file was created
    empty and then written, and an empty one read as stale, so both took it."""
    work, taken = tmp_path / "run", []
    first, second = WorkDirLock(work), WorkDirLock(work)
    hostname = socket.gethostname

    def second_looks_now():        # called as the first lock writes its owner
        monkeypatch.setattr(socket, "gethostname", hostname)
        try:
            taken.append(second.__enter__())
        except WorkDirError:
            pass
        return hostname()

    monkeypatch.setattr(socket, "gethostname", second_looks_now)
    try:
        taken.append(first.__enter__())
    except WorkDirError:
        pass
    assert len(taken) == 1
    assert [p.name for p in work.iterdir()] == [".lock"]



def test_a_stale_lock_found_by_two_processes_is_taken_by_one(tmp_path, monkeypatch):
    """Two processes that judge one stale lock at once: the first replaces it with its own;
    the second, going on, removed that by name and took the lock too."""
    from orthoasr import workdir
    work = tmp_path / "run"
    work.mkdir()
    _write_stale_lock(work)
    first, second, looked = WorkDirLock(work), WorkDirLock(work), []
    judge = workdir._is_stale

    def first_takes_it_meanwhile(owner):   # the second has read the stale owner
        if not looked:
            looked.append(owner)
            first.__enter__()
        return judge(owner)

    monkeypatch.setattr(workdir, "_is_stale", first_takes_it_meanwhile)
    with pytest.raises(WorkDirError, match=rf"in use by process {os.getpid()}"):
        second.__enter__()
    assert first.held and not second.held
    assert (work / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert [p.name for p in work.iterdir()] == [".lock"]
    first.__exit__()
    assert list(work.iterdir()) == []


# ----------------------------------------------------------------------------- 5: signals

# Ctrl-C, kill, and (POSIX) the hangup of a terminal that closes
SIGNALS = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]


@pytest.fixture
def restored_after_a_hangup():
    """stdout, stderr and the signals' handlers as they were: a hangup leaves SIGHUP ignored
    (a stop under torchrun, every stop signal) and sends outputs that are neither a file nor
    a live terminal (pytest -s piped) to /dev/null."""
    saved = [os.dup(fd) for fd in (1, 2)]
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restored_after_a_hangup")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda sig: sig.name)
def test_signal_checkpoints_at_the_next_step_and_exits_cleanly(corpus, tmp_path, monkeypatch,
                                                               capsys, sig):
    real_step = after_step(monkeypatch, 2, lambda trainer: os.kill(os.getpid(), sig))
    config = tmp_path / "run.yaml"
    config.write_text("{}")
    overrides = as_overrides(tiny_run(corpus, "stage1_steps=5", "ckpt_every=100"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run"),
              *overrides])
    assert exit_info.value.code == 128 + sig
    assert f"stopped by {signal.Signals(sig).name} at step 2" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    assert not ours(signal.getsignal(sig))        # handlers restored
    monkeypatch.setattr(train_module.Trainer, "train_step", real_step)
    trainer = train(tiny_run(corpus, "stage1_steps=5", "ckpt_every=100"), tmp_path / "run",
                    resume=True)
    assert trainer.step == 8


@pytest.mark.usefixtures("restored_after_a_hangup")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda sig: sig.name)
def test_a_signal_during_the_last_checkpoint_lets_it_be_written(corpus, tmp_path,
                                                                monkeypatch, sig):
    """Ctrl-C (or a scheduler's SIGTERM at its time limit) while the finished run wrote its
    last checkpoint stopped the write: the steps since the last checkpoint were lost. The
    signal still stops the caller (the demo, the CLI's exit status) after the write."""
    real_save = train_module.Trainer.save

    def signal_then_save(trainer):
        if trainer.step == 3:
            os.kill(os.getpid(), sig)
        return real_save(trainer)

    monkeypatch.setattr(train_module.Trainer, "save", signal_then_save)
    try:
        trainer = train(short_run(corpus, "stage1_steps=3", "ckpt_every=100"), tmp_path / "run")
    except (KeyboardInterrupt, SystemExit) as stopped:
        pytest.fail(f"the last checkpoint's write was stopped: {stopped!r}")
    assert trainer.step == 3 and trainer.stopped_by == signal.Signals(sig).name
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    assert not ours(signal.getsignal(sig))


@pytest.mark.usefixtures("restored_after_a_hangup")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda sig: sig.name)
def test_under_torchrun_a_signal_that_comes_twice_still_checkpoints(corpus, tmp_path,
                                                                    monkeypatch, sig):
    """Under torchrun a Ctrl-C (or a signal to the process group, as schedulers send) reaches
    each rank twice: directly, and from torchrun, which passes on every signal it gets. The
    copy, taken as a second signal, stopped the rank at once, often while it wrote the
    checkpoint: the steps since the last one were lost."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")       # as torchrun sets it

    def signal_twice(trainer):
        signal.raise_signal(sig)     # its handler runs before the copy comes
        signal.raise_signal(sig)

    after_step(monkeypatch, 2, signal_twice)
    if sig != signal.SIGINT:        # raise where the default would end pytest too
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    try:
        trainer = train(short_run(corpus, "stage1_steps=5", "ckpt_every=100"), tmp_path / "run")
    except (KeyboardInterrupt, SystemExit) as stopped:
        pytest.fail(f"torchrun's copy of the signal stopped the rank: {stopped!r}")
    assert trainer.step == 2 and trainer.stopped_by == signal.Signals(sig).name
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2


# the child takes the pty as its controlling terminal, as a shell's job has one
IN_A_TERMINAL = """import fcntl, runpy, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
sys.argv[0] = "orthoasr"
runpy.run_module("orthoasr", run_name="__main__")"""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP (not POSIX)")
def test_a_closed_terminal_checkpoints_and_exits(corpus, tmp_path):
    """A terminal that closes (an ssh session that drops) hangs up: SIGHUP comes (twice: the
    terminal's, then the shell's passing it on to its jobs) and writing to the terminal fails
    (EIO). The run died at once, without a checkpoint of the steps since the last one."""
    config, work = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text("{}")
    overrides = as_overrides(tiny_run(corpus, "stage1_steps=2000", "ckpt_every=5000",
                                      "ckpt_minutes=60"))
    master, terminal = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", IN_A_TERMINAL, "train", "--config",
                             str(config), "--work-dir", str(work), *overrides],
                            stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 300
    try:
        while b"step 2/" not in shown and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                shown += os.read(master, 4096)
    except OSError:                 # EIO: the child closed the terminal (it ended)
        pass
    assert b"step 2/" in shown, shown.decode(errors="replace")[-3000:]
    os.close(master)                # the hangup: SIGHUP to the terminal's session leader
    time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)   # the shell's
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    assert 2 <= load_checkpoint(work / "checkpoint.pt")["step"] < 2000


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP (not POSIX)")
@pytest.mark.usefixtures("restored_after_a_hangup")
def test_a_run_started_with_nohup_goes_on_after_a_hangup(corpus, tmp_path, monkeypatch):
    """`nohup orthoasr train ...` starts the run with SIGHUP ignored so that it outlives the
    terminal: the run keeps it ignored (catching it to stop would end every nohup run at
    logout), and its outputs are left alone."""
    after_step(monkeypatch, 2, lambda trainer: os.kill(os.getpid(), signal.SIGHUP))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stdout = os.fstat(1)
    run = tiny_run(corpus, "stage1_steps=4", "ckpt_every=100")
    trainer = train(run, tmp_path / "run")
    assert trainer.step == run.stage1_steps + run.stage2_steps and trainer.stopped_by is None
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    assert os.path.samestat(os.fstat(1), stdout)


def test_a_run_ends_saying_where_its_checkpoint_is_and_what_comes_next(corpus, tmp_path,
                                                                         capsys):
    """A finished run, or one ended by --stop-at, printed nothing after its last step line:
    its last line names the checkpoint, and how to score it or go on."""
    work = tmp_path / "run"
    run = short_run(corpus, "stage1_steps=3")
    train(run, work, stop_at=2)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"stopped at step 2: checkpoint {work / 'checkpoint.pt'}; continue with --resume"
    train(run, work, resume=True)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"finished at step {run.total_steps}: checkpoint {work / 'checkpoint.pt'}; "
                    f"score it: orthoasr eval --checkpoint {work / 'checkpoint.pt'}")


def test_checkpoints_go_out_by_wall_time_and_the_last_k_are_kept(corpus, tmp_path):
    work = tmp_path / "run"
    train(short_run(corpus, "stage1_steps=4", "ckpt_every=100", "ckpt_minutes=1e-9",
                    "keep_checkpoints=3"), work)
    kept = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert kept == ["step-0000002.pt", "step-0000003.pt", "step-0000004.pt"]
    assert os.path.samefile(work / "checkpoint.pt", work / "checkpoints" / kept[-1])


def test_a_copied_run_keeps_its_newest_checkpoints_by_step(corpus, tmp_path):
    """A run copied or restored with other modification times (here its newest checkpoint
    looks the oldest): by write time, its resume pruned that newest checkpoint and kept an
    older one."""
    work = tmp_path / "run"
    run = short_run(corpus, "stage1_steps=3", "ckpt_every=1", "keep_checkpoints=2")
    train(run, work, stop_at=2)
    os.utime(work / "checkpoints" / "step-0000002.pt", (1_700_000_000,) * 2)
    assert train(run, work, resume=True).step == 3
    kept = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert kept == ["step-0000002.pt", "step-0000003.pt"]


# ----------------------------------------------------------------------------- 4: divergence

def test_divergence_names_a_kept_checkpoint_and_resumes_from_it_with_a_lower_lr(
        corpus, tmp_path, monkeypatch):
    real_ctc = trainer_module.ctc_loss
    calls = {"n": 0}

    def ctc_nan_from_step_3(*args):
        calls["n"] += 1                    # 2 CTC terms per stage-1 step
        return real_ctc(*args) * (math.nan if calls["n"] > 4 else 1.0)

    monkeypatch.setattr(trainer_module, "ctc_loss", ctc_nan_from_step_3)
    work = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(short_run(corpus, "stage1_steps=4", "ckpt_every=1"), work)
    message = str(info.value)
    oldest = work / "checkpoints" / "step-0000001.pt"
    assert "at step 3" in message and f"--resume-from {oldest} " in message
    assert "--allow-schedule-change lr=0.0001" in message and oldest.exists()
    monkeypatch.setattr(trainer_module, "ctc_loss", real_ctc)
    lower = short_run(corpus, "stage1_steps=4", "ckpt_every=1", "lr=1e-4")
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.001 vs config 0\.0001; .*"
                                         r"--allow-schedule-change"):
        train(lower, work, resume_from=oldest)
    trainer = train(lower, work, resume_from=oldest, allow_schedule_change=True)
    state = load_checkpoint(work / "checkpoint.pt")
    assert trainer.step == 4 and state["step"] == 4
    assert state["schedule_changes"] == [{"step": 1, "changes": {"lr": [1e-3, 1e-4]}}]
    assert {g["base_lr"] for g in state["optimizer"]["param_groups"][:2]} == {1e-4}
    assert [r["step"] for r in read_metrics(work / "metrics.csv")] == [1, 2, 3, 4]


def test_a_resume_that_fails_while_starting_keeps_the_metrics(corpus, tmp_path, monkeypatch):
    """The rows after the resumed step go only when the resumed run writes its own: its
    first flush or checkpoint (then the checkpoint and the metrics agree on the step)."""
    work = tmp_path / "run"
    train(short_run(corpus, "ckpt_every=1"), work)
    step_1 = work / "checkpoints" / "step-0000001.pt"

    def unreadable_corpus(*args, **kwargs):
        raise FileNotFoundError("train.jsonl:1: audio file not found")

    monkeypatch.setattr(train_module, "TrainData", unreadable_corpus)
    with pytest.raises(FileNotFoundError):
        train(short_run(corpus, "ckpt_every=1"), work, resume_from=step_1)
    assert [r["step"] for r in read_metrics(work / "metrics.csv")] == [1, 2]
    assert load_checkpoint(work / "checkpoint.pt")["step"] == 2
    monkeypatch.undo()
    train(short_run(corpus, "ckpt_every=1"), work, resume_from=step_1, stop_at=1)
    assert [r["step"] for r in read_metrics(work / "metrics.csv")] == [1]
    assert load_checkpoint(work / "checkpoint.pt")["step"] == 1


def test_a_resume_without_a_readable_checkpoint_pt_names_the_kept_ones(corpus, tmp_path,
                                                                       capsys):
    """A truncated or missing checkpoint.pt: the error names the run's other checkpoints and
    the --resume-from that continues from one (not "start a new run", which is refused)."""
    work, kept = tmp_path / "run", tmp_path / "run" / "checkpoints"
    run = short_run(corpus, "ckpt_every=1")
    train(run, work)
    argv = ["train", "--work-dir", str(work), "--resume", *as_overrides(run)]
    with open(work / "checkpoint.pt", "r+b") as f:     # and step 2's, its hard link
        f.truncate(1000)
    err = cli_error(capsys, argv)
    assert "corrupt or truncated" in err and "keeps step-0000001.pt:" in err
    assert err.endswith(f"--resume-from {kept / 'step-0000001.pt'}")
    (work / "checkpoint.pt").unlink()
    err = cli_error(capsys, argv)
    assert "checkpoint.pt not found" in err and "without --resume" not in err
    assert err.endswith(f"--resume-from {kept / 'step-0000002.pt'}")
    assert train(run, work, resume_from=kept / "step-0000001.pt").step == 2
    shutil.rmtree(kept)
    (work / "checkpoint.pt").unlink()
    assert "start a new run with --overwrite" in cli_error(capsys, argv)


def test_a_resume_without_config_continues_the_checkpoints_config(corpus, tmp_path, capsys):
    """`train --work-dir W --resume` without --config read configs/tiny.yaml, whose manifests
    (data/synth-tiny) were not the run's: "dev_manifest ... not found", or a config mismatch.
    It now continues the checkpoint's own config, overrides on top (a resumable one here)."""
    work = tmp_path / "run"
    train(tiny_run(corpus, "stage1_steps=2", "stage2_steps=1"), work, stop_at=1)
    main(["train", "--work-dir", str(work), "--resume", "log_every=2"])
    state = load_checkpoint(work / "checkpoint.pt")
    assert state["step"] == 3 and state["run_config"]["log_every"] == 2
    assert "resumed from" in capsys.readouterr().out
    err = cli_error(capsys, ["train", "--work-dir", str(work), "--resume", "lr=1.0"])
    assert "mismatching fields: lr" in err       # overrides are still checked against it


def test_a_stop_before_the_resumed_step_is_refused(corpus, finished, tmp_path, capsys):
    """It did nothing and exited 0 (the checkpoint rewritten at its own step)."""
    run = tiny_run(corpus, "stage1_steps=1", "stage2_steps=1")
    err = cli_error(capsys, ["train", "--work-dir", str(finished), "--resume", "--stop-at",
                             "1", *as_overrides(run)])
    assert "--stop-at 1 (stop_at) is before the step of the checkpoint resumed, 2" in err


def test_a_resume_removes_partial_writes_and_says_when_the_run_is_done(corpus, finished,
                                                                       tmp_path, capsys):
    """A run killed while saving leaves a checkpoint's temporary file (as large as a
    checkpoint) and the link meant to replace checkpoint.pt; nothing removed them. A resume
    of a finished run said only "resumed"."""
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    leftovers = [work / "checkpoints" / "step-0000003.pt.k2x9q1ab.tmp",
                 work / "checkpoint.pt.4242.link"]
    others = [work / "checkpoints" / "notes.tmp", work / "step-0000003.pt.k2x9q1ab.tmp"]
    for path in leftovers + others:
        path.write_bytes(b"partial")
    train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1"), work, resume=True)
    out = capsys.readouterr().out
    assert "note: removed what a run killed while saving left: " in out
    assert "the run was already complete (2 steps): nothing to train" in out
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in others)


def test_a_resume_of_a_complete_run_writes_nothing(corpus, finished, tmp_path, monkeypatch,
                                                  capsys):
    """It said "nothing to train" and then built the data pipeline and wrote the checkpoint
    again: checkpoint.pt and its step file replaced, metrics.csv rewritten, and kept
    checkpoints pruned (here by a keep_checkpoints=1 given with the resume). (--resume-from
    an earlier checkpoint still saves it, as the run's newest.)"""
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    (work / "checkpoint.pt").unlink()           # a hard link to the newest, as training left it
    os.link(work / "checkpoints" / "step-0000002.pt", work / "checkpoint.pt")
    files = files_of(work)
    assert len(list((work / "checkpoints").iterdir())) == 2

    def no_data(*args, **kwargs):
        raise AssertionError("the data pipeline was built")

    monkeypatch.setattr(train_module, "TrainData", no_data)
    for resume_from, stop_at in ((None, None), (None, 2),
                                 (work / "checkpoints" / "step-0000002.pt", None)):
        trainer = train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1",
                                 "keep_checkpoints=1"), work, resume=True,
                        resume_from=resume_from, stop_at=stop_at)
        assert trainer.step == 2 and trainer.stopped_by is None
        assert files_of(work) == files
    assert "the run was already complete (2 steps): nothing to train" in capsys.readouterr().out


def test_a_resume_from_another_runs_checkpoint_leaves_the_work_dirs_run(corpus, finished,
                                                                          tmp_path):
    """--resume-from a checkpoint of another run into a work dir holding a run: that run's
    checkpoint.pt was replaced, its metrics.csv cut at the other checkpoint's step with the
    other run's rows added, and its kept checkpoints pruned. A copy of the run's own
    checkpoint still continues it, and another run's branches off into a new work dir."""
    work = tmp_path / "run"
    train(short_run(corpus, "seed=1", "ckpt_every=1"), work)
    files = files_of(work)
    other = finished / "checkpoints" / "step-0000001.pt"
    with pytest.raises(WorkDirError, match=rf"--resume-from {other} is not a checkpoint of the "
                                           rf"run in {work}: .*seed, stage1_steps"):
        train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1"), work, resume_from=other)
    assert files_of(work) == files
    backup = tmp_path / "backup.pt"
    shutil.copy(work / "checkpoints" / "step-0000001.pt", backup)
    assert train(short_run(corpus, "seed=1", "ckpt_every=1"), work,
                 resume_from=backup).step == 2
    branch = train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1"), tmp_path / "branch",
                   resume_from=other)
    assert branch.step == 2


def test_a_resume_from_another_work_dirs_checkpoint_says_where_the_run_goes_on(
        corpus, finished, tmp_path, capsys, monkeypatch):
    """`--resume-from runs/a/checkpoints/step-N.pt` with --work-dir left out continued the
    run in runs/default without a word; runs/a's checkpoint.pt stayed as it was."""
    monkeypatch.chdir(tmp_path)
    other = finished / "checkpoints" / "step-0000001.pt"
    main(["train", "--resume-from", str(other)])
    assert f"note: continuing the run of {finished} in runs/default, which held no run; " \
        f"{finished} is left as it is" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "runs" / "default" / "checkpoint.pt")["step"] == 2


def test_fixed_gates_are_checked_before_overwrite_moves_a_run(corpus, finished, tmp_path):
    """--overwrite moved the run aside and only then read fixed_gates: a mistyped path, or
    one in the run moved aside ("checkpoint run/checkpoint.pt not found", the file being in
    run.old-1 by then), left the work dir empty."""
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    files = files_of(work)
    for spec, error, message in (
            (f"{tmp_path / 'typo.pt'}@0.4", FileNotFoundError, "typo.pt not found"),
            (f"{work / 'checkpoint.pt'}@0.5", ValueError, r"budget '0.5' is not one"),
            (f"{work / 'checkpoint.pt'}@0.4", ValueError,
             rf"fixed_gates {work}/checkpoint.pt is in the work dir {work}, whose run "
             r"--overwrite moves aside")):
        with pytest.raises(error, match=message):
            train(tiny_run(corpus, f"fixed_gates={spec}"), work, overwrite=True)
        assert files_of(work) == files and not (tmp_path / "run.old-1").exists()
    gates = tmp_path / "gates.pt"
    shutil.copy(work / "checkpoint.pt", gates)
    trainer = train(tiny_run(corpus, f"fixed_gates={gates}@0.4", "stage1_steps=1",
                             "stage2_steps=0"), work, overwrite=True)
    assert trainer.step == 1 and (tmp_path / "run.old-1" / "checkpoint.pt").exists()


def test_a_manifest_in_the_run_that_overwrite_moves_is_refused_first(corpus, finished,
                                                                       tmp_path, monkeypatch):
    """A manifest kept in the work dir: --overwrite moved the run, the manifest with it, and
    the new run failed with "manifest not found", leaving the work dir empty. From inside
    the run, a relative path follows the current folder into the moved run, and works."""
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    shutil.copy(corpus / "dev.jsonl", work / "dev.jsonl")
    files = files_of(work)
    with pytest.raises(ValueError, match=rf"dev_manifest {work}/dev.jsonl is in the work dir "
                                         rf"{work}, whose run --overwrite moves aside"):
        train(tiny_run(corpus, f"dev_manifest={work / 'dev.jsonl'}"), work, overwrite=True)
    assert files_of(work) == files and not (tmp_path / "run.old-1").exists()
    monkeypatch.chdir(work)
    train(tiny_run(corpus, "dev_manifest=dev.jsonl", "stage1_steps=1", "stage2_steps=0"), ".",
          overwrite=True)
    assert load_checkpoint(work / "checkpoint.pt")["manifest_paths"]["dev"] == \
        str(tmp_path / "run.old-1" / "dev.jsonl")


def test_budgets_below_a_supernet_are_refused(corpus, tmp_path):
    """Stage 1 draws the budgets below the largest: with the largest under 1.0 its extra
    units (with one budget, all of them) were picked by the scores' untrained noise."""
    for budgets in ("[0.5]", "[0.4,0.7]"):
        with pytest.raises(ValueError, match=r"model.budgets must end with 1.0 .*untrained"):
            train(tiny_run(corpus, f"model.budgets={budgets}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_without_stage_1_is_refused_unless_its_gates_are_fixed(corpus, finished,
                                                                      tmp_path):
    """stage1_steps=0 froze the subnets from the OrthoSoftmax scores' random initial values,
    and stage 2 trained those, silently. With fixed_gates (another run's subnet) or a lone
    supernet budget no score chooses anything."""
    with pytest.raises(ValueError, match=r"stage1_steps must be > 0 .*model.budgets \[0.4, "
                                         r"0.7, 1.0\], got 0: .*stage1_steps > 0, or .*fixed_g"):
        train(tiny_run(corpus, "stage1_steps=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    fixed = f"fixed_gates={finished / 'checkpoint.pt'}@0.4"
    for overrides in ((fixed,), ("model.budgets=[1.0]",)):
        trainer = train(tiny_run(corpus, "stage1_steps=0", "stage2_steps=1", *overrides),
                        tmp_path / overrides[0].split("=")[0])
        assert trainer.step == 1


def test_a_resume_names_what_a_cut_down_checkpoint_lacks(corpus, finished, tmp_path):
    state = load_checkpoint(finished / "checkpoint.pt")
    del state["optimizer"], state["rng"], state["format"]
    save_checkpoint(tmp_path / "cut.pt", state)
    with pytest.raises(CheckpointError, match=r"cut.pt is not a complete orthoasr checkpoint: "
                                              r"it lacks optimizer, rng"):
        train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=1"), tmp_path / "run",
              resume_from=tmp_path / "cut.pt")


def test_a_resume_from_another_folder_must_find_the_same_training_data(tmp_path, monkeypatch):
    """The config's relative train_manifest names another corpus from another folder: the
    resume is refused, not trained on that corpus."""
    for folder, seed in (("a", 0), ("b", 1)):
        write_corpus(tmp_path / folder / "corpus", n=8, seed=seed)
    work = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    train(short_run(Path("corpus")), work, stop_at=1)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ValueError, match=r"train_manifest corpus/train.jsonl is .*b/corpus/"
                                         r"train.jsonl from this folder, and it is not the "
                                         r"manifest the checkpoint's run trained on"):
        train(short_run(Path("corpus")), work, resume=True)
    monkeypatch.chdir(tmp_path / "a")
    assert train(short_run(Path("corpus")), work, resume=True).step == 2


def test_a_resume_from_another_folder_names_the_folder_the_run_started_in(tmp_path,
                                                                            monkeypatch):
    """Its relative manifests, not found from here, were named with "set
    train_manifest=PATH", which a resume then refused as another manifest (a third try
    needed --allow-data-change); the folder the run was started in is what to say."""
    write_corpus(tmp_path / "a" / "corpus", n=8)
    work = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    train(short_run(Path("corpus")), work, stop_at=1)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=rf"train_manifest corpus/train.jsonl not found "
                                                rf".*: the run was started in {tmp_path / 'a'}"
                                                r", where it is .*resume from there"):
        train(short_run(Path("corpus")), work, resume=True)


def test_a_manifest_edited_in_place_needs_allow_data_change(tmp_path, capsys):
    """A resume on the same manifest path with other contents (a line removed) is refused,
    naming the way on; with allow_data_change it trains on, says so and records it."""
    corpus = write_corpus(tmp_path / "corpus", n=8)
    work = tmp_path / "run"
    train(short_run(corpus), work, stop_at=1)
    manifest = corpus / "train.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[1:]))
    with pytest.raises(ValueError, match=r"their contents differ\. Resume from the folder the "
                                         r"run was started in, or, if the manifest was changed "
                                         r"on purpose \(a broken clip's line removed\), add "
                                         r"--allow-data-change"):
        train(short_run(corpus), work, resume=True)
    assert train(short_run(corpus), work, resume=True, allow_data_change=True).step == 2
    assert "resuming on a changed training manifest" in capsys.readouterr().out
    changes = load_checkpoint(work / "checkpoint.pt")["data_changes"]
    assert [(c["step"], c["train_manifest"]) for c in changes] == [(1, str(manifest))]
    for flag in ("--allow-data-change", "--allow-schedule-change"):     # not a resume
        assert f"{flag} (allow_" in cli_error(capsys, ["train", "--work-dir",
                                                      str(tmp_path / "new"), flag])


def test_a_librispeech_folder_edited_in_place_needs_allow_data_change(tmp_path):
    """A LibriSpeech-layout training folder whose transcripts changed between the stop and
    the resume was read without a word (only a manifest file's sha256 was recorded)."""
    corpus = write_corpus(tmp_path / "corpus", n=8)
    chapter = tmp_path / "libri" / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for i, record in enumerate(load_manifest(corpus / "train.jsonl")):
        shutil.copy(record["audio_filepath"], chapter / f"19-198-{i:04d}.wav")
        lines.append(f"19-198-{i:04d} {record['text'].upper()}\n")
    trans = chapter / "19-198.trans.txt"
    trans.write_text("".join(lines))
    run, work = short_run(corpus, f"train_manifest={tmp_path / 'libri'}"), tmp_path / "run"
    train(run, work, stop_at=1)
    assert train(run, work, resume=True, stop_at=1).step == 1     # unchanged: resumes
    trans.write_text("".join(lines[1:]))
    with pytest.raises(ValueError, match=r"their contents differ.*--allow-data-change"):
        train(run, work, resume=True)
    assert train(run, work, resume=True, allow_data_change=True).step == 2


def test_an_unreadable_training_clip_stops_the_run_with_a_checkpoint(tmp_path, capsys):
    """A clip whose audio cannot be read though its header can (a FLAC with corrupt frames)
    in the epoch's second batch: one line naming it, read in a loader worker too
    (the worker's traceback stays out of it), a checkpoint of the step before, and a resume
    once the file is readable again ends with the losses of a run that never stopped. Or
    its line is removed from the manifest: the resume is refused until
    --allow-data-change, which then trains to the end and records the change."""
    corpus = write_corpus(tmp_path / "corpus", n=8)
    argv = ["train", "--work-dir", str(tmp_path / "run"),
            *as_overrides(tiny_run(corpus, "stage1_steps=4", "stage2_steps=0",
                                   "ckpt_every=100", "num_workers=1", "max_frames=300"))]
    run = load_run_config(None, argv[3:])
    (tmp_path / "tok").mkdir()
    data = TrainData(run, make_tokenizer(run, tmp_path / "tok", SINGLE))
    records = load_manifest(corpus / "train.jsonl")          # all kept
    second = records[data.epoch_batches(0)[1][0]]["audio_filepath"]
    flac = str(Path(second).with_suffix(".flac"))       # its header reads well, its body not
    soundfile.write(flac, load_audio(second).numpy(), 16000, format="FLAC")
    manifest = corpus / "train.jsonl"
    manifest.write_text(manifest.read_text().replace(second, flac))
    whole = Path(flac).read_bytes()
    Path(flac).write_bytes(whole[:len(whole) // 2] + bytes(len(whole) - len(whole) // 2))
    message = cli_error(capsys, argv)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert re.fullmatch(
        rf"orthoasr: error: {re.escape(flac)}: cannot decode FLAC: .*\. Training stopped "
        rf"before step 2: checkpoint "
        rf"{re.escape(str(checkpoint))} holds the steps done; replace the file at that path "
        r"with a readable copy and continue with --resume \(or remove its line from the "
        r"manifest and add --allow-data-change\)", message), message
    assert load_checkpoint(checkpoint)["step"] == 1
    # the line removed instead, in a copy of the run
    shutil.copytree(tmp_path / "run", tmp_path / "edited", symlinks=True)
    edited = corpus / "edited.jsonl"
    edited.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                              if flac not in line))
    argv_edited = [str(edited) if arg == str(manifest) else
                   arg.replace(str(manifest), str(edited)) for arg in argv]
    argv_edited[2] = str(tmp_path / "edited")
    assert "--allow-data-change" in cli_error(capsys, argv_edited + ["--resume"])
    main(argv_edited + ["--resume", "--allow-data-change"])
    assert "resuming on a changed training manifest" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "edited" / "checkpoint.pt")
    assert state["step"] == 4 and [c["step"] for c in state["data_changes"]] == [1]
    Path(flac).write_bytes(whole)
    main(argv + ["--resume"])
    main(argv[:2] + [str(tmp_path / "again")] + argv[3:])
    losses = [[row["loss"] for row in read_metrics(tmp_path / folder / "metrics.csv")]
              for folder in ("run", "again")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_non_finite_weights_are_never_saved(corpus, tmp_path, monkeypatch):

    def poison(trainer):
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(math.inf)

    after_step(monkeypatch, 2, poison)
    work = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite values in model\..* at step 2.*"
                                               r"--resume-from .*step-0000001\.pt"):
        train(short_run(corpus, "stage1_steps=3", "ckpt_every=1"), work)
    assert not (work / "checkpoints" / "step-0000002.pt").exists()
    assert load_checkpoint(work / "checkpoint.pt")["step"] == 1


# ----------------------------------------------------------------------------- 6: config

@pytest.mark.parametrize("override, message", [
    ("grad_clip=-1", r"grad_clip must be a finite number in \(0, inf\), got -1"),
    ("score_lr=-5", r"score_lr must be a finite number in \(0, inf\), got -5"),
    ("tau_end=2", r"tau_end must be <= tau0 \(1.0\)"),
    ("seed=abc", r"seed must be an int >= 0, got 'abc'"),
    ("lr=inf", r"lr must be a finite number in \(0, inf\), got inf"),
    ("lr_final=1.5", r"lr_final must be a finite number in \[0, 1\], got 1.5"),
    ("betas=[0.9,1.0]", r"betas\[1\] must be a finite number in \[0, 1\)"),
    ("keep_checkpoints=0", r"keep_checkpoints must be an int >= 1, got 0"),
    ("spec_augment=3", r"spec_augment must be true or false, got 3"),
])
def test_config_values_are_range_checked_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_run_config("tiny", [override])


# ----------------------------------------------------------------------------- 8: data

def test_data_filters_are_counted_and_dropping_everything_is_an_error(corpus, tmp_path,
                                                                      capsys):
    with pytest.raises(ValueError, match=r"8 utterances, 0 kept; skipped 8 longer than "
                                         r"max_duration=0.1 s: nothing left"):
        train(short_run(corpus, "max_duration=0.1"), tmp_path / "a")
    train(short_run(corpus, "max_duration=0.55", "stage1_steps=1"), tmp_path / "b")
    out = capsys.readouterr().out
    assert "8 utterances" in out and "longer than max_duration=0.55 s" in out


def test_too_short_clips_are_reported_and_skipped(corpus, tmp_path, capsys):
    import json
    import wave
    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x01\x00" * 400)            # 25 ms: 2 feature frames
    manifest = tmp_path / "train.jsonl"
    lines = (corpus / "train.jsonl").read_text().splitlines()
    manifest.write_text("\n".join(lines + [json.dumps(
        {"audio_filepath": str(short), "duration": 0.025, "text": "go"})] * 1) + "\n")
    train(short_run(corpus, f"train_manifest={manifest}"), tmp_path / "run")
    assert f"1 shorter than 0.04 s (4 frames, the minimum of the 4x subsampling), e.g. " \
           f"{short}" in capsys.readouterr().out
    only_short = tmp_path / "only_short.jsonl"
    only_short.write_text(json.dumps({"audio_filepath": str(short), "text": "go"}) + "\n")
    with pytest.raises(ValueError, match="1 shorter than 0.04 s.*nothing left"):
        train(short_run(corpus, f"train_manifest={only_short}"), tmp_path / "run2")


def test_truncated_wav_without_duration_is_an_error(corpus, tmp_path):
    from orthoasr.data import ManifestError, load_manifest
    wav = tmp_path / "cut.wav"
    wav.write_bytes((corpus / "train_0.wav").read_bytes()[:3000])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "cut.wav", "text": "go"}\n')
    with pytest.raises(ManifestError, match=r"cut.wav: truncated wav: its header declares"):
        load_manifest(manifest)


def test_dev_and_test_manifests_are_checked_before_training(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="dev_manifest /nonexistent.jsonl not found"):
        train(short_run(corpus, "dev_manifest=/nonexistent.jsonl"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_mistyped_manifest_leaves_the_run_that_overwrite_would_move(corpus, tmp_path):
    """--overwrite moved the earlier run aside, then found the new run's manifest missing:
    no run left in the work dir. The manifests are now checked first."""
    work = tmp_path / "run"
    train(short_run(corpus), work)
    for name in ("dev_manifest", "train_manifest"):
        with pytest.raises(FileNotFoundError, match=f"{name} /nonexistent.jsonl not found"):
            train(short_run(corpus, f"{name}=/nonexistent.jsonl"), work, overwrite=True)
        assert (work / "checkpoint.pt").exists() and not (tmp_path / "run.old-1").exists()


# ----------------------------------------------------------------------------- 3: eval

def test_eval_from_another_folder_finds_the_manifests_and_a_missing_one_is_an_error(
        finished, tmp_path, monkeypatch, capsys):
    state = load_checkpoint(finished / "checkpoint.pt")   # as if trained with relative paths
    relative = {k: os.path.relpath(v, finished) for k, v in state["manifest_paths"].items()}
    state["run_config"].update({f"{k}_manifest": v for k, v in relative.items()})
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k != "format"})
    monkeypatch.chdir(tmp_path)
    rows = evaluate(ckpt)
    assert {"wer_dev", "wer_test"} <= set(rows[0])
    before = (tmp_path / "eval.csv").read_text()
    err = cli_error(capsys, ["eval", "--checkpoint", str(ckpt), "--dev", "/nonexistent"])
    assert "--dev manifest /nonexistent not found" in err
    assert (tmp_path / "eval.csv").read_text() == before


# ----------------------------------------------------------------------------- 7: errors

def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    err = cli_error(capsys, ["train", "--config", str(tmp_path / "none.yaml")])
    assert "none.yaml not found" in err
    with pytest.raises(FileNotFoundError):
        main(["train", "--debug", "--config", str(tmp_path / "none.yaml")])
    monkeypatch.setenv("ORTHOASR_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", "--config", str(tmp_path / "none.yaml")])


def test_checkpoint_errors_name_the_path_and_the_kind(finished, tmp_path, capsys):
    good = finished / "checkpoint.pt"
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    halved = tmp_path / "halved.pt"     # torch's reason then goes on with advice
    halved.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    code = tmp_path / "code.pt"
    torch.save({"format": 1, "obj": CheckpointError("x")}, code)
    sub = tmp_path / "sub.pt"
    main(["export", "--checkpoint", str(good), "--subnet", "0", "--out", str(sub)])
    cases = [(empty, f"checkpoint {empty} is empty (0 bytes)"),
             (truncated, f"checkpoint {truncated} is corrupt or truncated"),
             (halved, f"checkpoint {halved} is corrupt or truncated (PytorchStreamReader"),
             (code, f"checkpoint {code} holds Python objects besides tensors"),
             (sub, f"{sub} is an exported subnet (`orthoasr export --out`); this needs a "
                   "training checkpoint"),
             (tmp_path, f"checkpoint {tmp_path} is a directory")]
    for path, message in cases:
        err = cli_error(capsys, ["eval", "--checkpoint", str(path)])
        assert message in err, err
        assert "weights_only" not in err and "high likelihood" not in err, err
    with pytest.raises(CheckpointError, match=f"{good} is a training checkpoint .*; this needs "
                                              "an exported subnet"):
        load_subnet(good)


def test_a_failed_write_names_the_checkpoint_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos "
                           "4128640 vs 4128532")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=rf"could not write checkpoint {path}: .*"
                                              r"unexpected pos.*MiB free"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and os.listdir(tmp_path) == ["ckpt.pt"]


# ----------------------------------------------------------------------------- 10: edges

def test_checkpoints_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"step": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_run_config("tiny").model.num_layers == 4


def test_overrides_may_follow_options(corpus, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("{}")
    overrides = as_overrides(short_run(corpus))
    main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run"),
          "--stop-at", "1", *overrides])
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1


def test_help_describes_commands_defaults_and_keys(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "orthoasr synth --preset tiny" in out
    for command in ("demo", "synth", "train", "eval", "export"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: configs/tiny.yaml;" in out and "--overwrite" in out
    assert re.search(r"with\s+--resume\s+or\s+--resume-from,\s+the\s+checkpoint's\s+own\s+config",
                     out)
    assert "model.num_layers" in out and "keep_checkpoints" in out



def test_a_resumes_metrics_rewrite_is_atomic_and_keeps_old_columns(tmp_path, monkeypatch):
    """A resume rewrites metrics.csv without the rows after its step. It truncated the file
    first: a full disk then, or a column a later version no longer writes (DictWriter
    refused its rows after the truncation), lost the run's whole history."""
    import csv
    import errno

    from orthoasr.checkpoint import CheckpointError
    from orthoasr.metrics import write_metrics
    path = tmp_path / "metrics.csv"
    row = {"step": 1, "stage": 1, "budget": 1.0, "loss": 2.5}
    write_metrics(path, [row, {**row, "step": 2}, {**row, "step": 3}])
    before = path.read_text()

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("orthoasr.checkpoint.os.fsync", disk_full)
        with pytest.raises(CheckpointError, match="No space left"):
            write_metrics(path, [], keep_until=2)
    assert path.read_text() == before
    with path.open(newline="") as f:                   # a column this version never wrote
        rows = list(csv.DictReader(f))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "retired"])
        writer.writeheader()
        writer.writerows({**r, "retired": f"r{r['step']}"} for r in rows)
    write_metrics(path, [{**row, "step": 3, "loss": 1.5}], keep_until=2)
    write_metrics(path, [{**row, "step": 4}])          # appended under the file's header
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"], r["retired"]) for r in rows] == [
        ("1", "2.5", "r1"), ("2", "2.5", "r2"), ("3", "1.5", ""), ("4", "2.5", "")]


def test_a_training_clip_holding_nan_stops_the_run_naming_it(tmp_path, capsys):
    """A float WAV with a NaN sample made the loss NaN, and training stopped as a
    divergence, advising a lower learning rate; it is named like an unreadable clip."""
    corpus = write_corpus(tmp_path / "corpus", n=8)
    argv = ["train", "--work-dir", str(tmp_path / "run"),
            *as_overrides(tiny_run(corpus, "stage1_steps=2", "stage2_steps=0",
                                   "ckpt_every=100", "num_workers=0"))]
    first = load_manifest(corpus / "train.jsonl")[0]["audio_filepath"]
    wave = load_audio(first).numpy()
    wave[100] = float("nan")
    soundfile.write(first, wave, 16000, subtype="FLOAT")
    message = cli_error(capsys, argv)
    assert f"orthoasr: error: {first}: holds NaN or inf samples. Training stopped before " \
        "step 1" in message, message
    assert "diverg" not in message and "lr=" not in message
