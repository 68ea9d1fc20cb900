"""`orthoasr train`: two-stage OrthoSoftmax supernet training (docs/design.md §5), its loop
and its command line. The trainer (one run's state and its step) is in trainer.py, its
checkpoints and metrics in trainer_checkpoints.py.

The loop reads the device only every `log_every` steps (losses, NaN check) and before a
checkpoint; the temperature lives in a device tensor, so a step has no host sync.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import threading
import time
from pathlib import Path

from .checkpoint import TRAINING_KIND, CheckpointError, kept_checkpoints, load_checkpoint
from .cli import number
from .data import AudioError
from .data.corpus_lock import corpus_read_lock
from .devices import resolve_device
from .distributed import FailureShared, init_world, left_on_error, shutdown
from .run_config import (
    RunConfig,
    apply_overrides,
    config_differences,
    load_run_config,
    presets,
    split_fixed_gates,
)
from .run_data import TrainData, check_manifests, make_tokenizer, prefetch_to_device
from .trainer import Trainer
from .trainer_checkpoints import (
    CHECKPOINT,
    CHECKPOINTS,
    RESUME_KEYS,
    TrainingDiverged,
    load_fixed_gates,
    remove_partial_writes,
)
from .workdir import WorkDirError, WorkDirLock, prepare_work_dir, remove_if_empty, run_files

# Ctrl-C, kill, and (POSIX only) the hangup of a terminal that closes: an ssh session that drops
HANGUP = getattr(signal, "SIGHUP", None)
STOP_SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, HANGUP) if sig is not None)


# ----------------------------------------------------------------------------- the loop

def train(run: RunConfig, work_dir: str | Path, resume: bool = False,
          stop_at: int | None = None, overwrite: bool = False,
          resume_from: str | Path | None = None,
          allow_schedule_change: bool = False, allow_data_change: bool = False) -> Trainer:
    """Train both stages, or continue the run in `work_dir` with `resume` (from its newest
    checkpoint, or from `resume_from`; `allow_schedule_change` lets the optimiser schedule
    differ from the checkpoint's, `allow_data_change` the training manifest's contents, each
    change recorded). A work dir holding a run needs `resume` or
    `overwrite` (which moves the old run aside). `stop_at` ends after that step with a
    checkpoint, as an interrupted run would; SIGINT/SIGTERM/SIGHUP end the run at the next
    step with a checkpoint (`trainer.stopped_by` names the signal). Returns the trainer.
    The corpus folders of its three manifests are locked for reading until the run ends
    (corpus_lock.py): `orthoasr synth --overwrite` cannot replace their audio under it."""
    with corpus_read_lock((run.train_manifest, run.dev_manifest, run.test_manifest)):
        return _start(run, work_dir, resume, stop_at, overwrite, resume_from,
                      allow_schedule_change, allow_data_change)


def _start(run: RunConfig, work_dir: str | Path, resume: bool, stop_at: int | None,
           overwrite: bool, resume_from: str | Path | None, allow_schedule_change: bool,
           allow_data_change: bool) -> Trainer:
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int)
                                or stop_at < 1):
        raise ValueError(f"stop_at must be a step >= 1 (or None: run to the end), got "
                         f"{stop_at!r}")
    if not run.fixed_gates:
        _check_scores_train(run)
    work_dir = Path(work_dir)
    if overwrite:
        # by absolute path, taken before the old run is moved aside: "." (run from inside
        # it) has no name to move it by, and would follow the current folder into
        # <work-dir>.old-N, where the new run would write over the old one's files
        work_dir = Path(os.path.abspath(work_dir))
    resume = resume or resume_from is not None
    for name, given in (("schedule", allow_schedule_change), ("data", allow_data_change)):
        if given and not resume:
            raise ValueError(f"--allow-{name}-change (allow_{name}_change) lets a resume differ "
                             "from its checkpoint: pass --resume or --resume-from too")
    if not resume:      # before --overwrite moves a run aside: a mistyped path moves nothing
        _check_inputs(run, work_dir, overwrite)
    # joined before rank 0 alone takes the work dir, so that its refusal reaches every rank
    device_type = resolve_device(run.device).type
    world = init_world(device_type)
    with left_on_error(world):     # on every rank, before its error propagates
        refused = f"rank 0 could not start the run in --work-dir {work_dir} (its error is above)"
        with FailureShared(world, device_type, refused):
            if world.is_main:
                prepare_work_dir(work_dir, resume, overwrite)
        checkpoint = Path(resume_from) if resume_from is not None else work_dir / CHECKPOINT
        if resume and not checkpoint.exists():
            # "start anew" would be refused where the run left other files
            fresh = (" (start a new run without --resume)" if not run_files(work_dir) else
                     " (start a new run with --overwrite, which moves the old one aside)")
            raise WorkDirError(f"nothing to resume: {checkpoint} not found"
                               f"{_kept_checkpoints_advice(work_dir, checkpoint) or fresh}")
        if resume:          # after the lock and the checkpoint: those say more
            try:
                check_manifests(run)
            except FileNotFoundError as err:
                raise FileNotFoundError(_started_elsewhere(checkpoint, run) or str(err)) from None
        if resume_from is not None and world.is_main and not run_files(work_dir):
            _note_branch(checkpoint, work_dir)
        created = world.is_main and not work_dir.exists()
        lock = WorkDirLock(work_dir) if world.is_main else None
        with FailureShared(world, device_type, refused):
            if lock:
                work_dir.mkdir(parents=True, exist_ok=True)
                lock.__enter__()
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            if lock and (removed := remove_partial_writes(work_dir)):
                print(f"note: removed what a run killed while saving left: {', '.join(removed)}",
                      flush=True)
            with _stop_signals_caught() as caught:
                trainer = _train(run, work_dir, resume, stop_at, checkpoint,
                                 allow_schedule_change, allow_data_change, caught)
        finally:
            if lock:
                lock.__exit__()
            if created:
                remove_if_empty(work_dir)     # a start that failed leaves no empty work dir
    return trainer


def _check_scores_train(run: RunConfig) -> None:
    """ValueError for a config under which the OrthoSoftmax scores that choose a subnet's
    units never train (fixed_gates runs take another run's subnet and are not checked)."""
    budgets = list(run.model.budgets)
    if budgets[-1] != 1.0:
        # stage 1 trains the supernet (every unit on) beside the budgets below the largest,
        # so the scores that would pick the largest budget's extra units never train
        raise ValueError(f"model.budgets must end with 1.0 (the supernet) to train, got "
                         f"{budgets}: stage 1 draws the subnets below the largest budget, so "
                         "the largest one's units would be chosen by untrained scores")
    if run.stage1_steps == 0 and len(budgets) > 1:
        raise ValueError(f"stage1_steps must be > 0 to train the subnets of model.budgets "
                         f"{budgets}, got 0: stage 1 trains the scores that choose their "
                         "units, which would be frozen from their random initial values. Set "
                         "stage1_steps > 0, or give fixed_gates=CHECKPOINT@BUDGET to train a "
                         "subnet that another run froze")


def _check_inputs(run: RunConfig, work_dir: Path, overwrite: bool) -> None:
    """A new run's inputs, checked before `overwrite` moves an earlier run aside: a manifest
    or fixed_gates checkpoint that is missing or does not fit moves nothing, and one in the
    run moved aside (where the new run would not find it) is refused."""
    check_manifests(run)
    inputs = {f"{name}_manifest": getattr(run, f"{name}_manifest")
              for name in ("train", "dev", "test")}
    if run.fixed_gates:
        load_fixed_gates(run.fixed_gates, run.model)
        inputs["fixed_gates"] = split_fixed_gates(run.fixed_gates)[0]
    if not (overwrite and run_files(work_dir)):
        return
    work = work_dir.resolve()
    # from inside the run, a relative path follows the current folder into the moved run
    follows = Path.cwd().resolve().is_relative_to(work)
    for name, path in inputs.items():
        if (Path(path).is_absolute() or not follows) and \
                Path(path).resolve().is_relative_to(work):
            raise ValueError(f"{name} {path} is in the work dir {work_dir}, whose run "
                             f"--overwrite moves aside (to {work_dir.name}.old-N), where the "
                             "new run would not find it: copy it out of the work dir first "
                             "and give the copy's path")


class _stop_signals_caught:
    """Within: STOP_SIGNALS are recorded (the trainer stops at the next step) instead of
    ending the process; a second one acts as usual, but under torchrun, which passes every
    signal it gets on to the ranks, later ones are ignored: a Ctrl-C or a signal to the
    process group reaches each rank twice, and the copy ended the rank before its
    checkpoint (torchrun kills the ranks 30 s after passing one on). A signal ignored when
    the run starts stays ignored (`nohup` ignores SIGHUP so that the run outlives its
    terminal). Main thread only (signal's rule)."""

    def __enter__(self):
        self.trainer, self.previous, self.hung_up = None, {}, False
        self.stopping = False
        self.under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ    # set by torchrun's agent
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if signum == HANGUP:
            self.hung_up = True
            _drop_dead_outputs()
        self.stopping = True
        self.restore()
        if self.trainer is not None:
            self.trainer.stop_signal = signum
            again = ("torchrun's copy of it and later ones are ignored" if self.under_torchrun
                     else "SIGTERM stops at once" if signum == HANGUP
                     else "send it again to stop at once")
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a "
                  f"checkpoint ({again})", flush=True)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def restore(self) -> None:
        """The handlers from before, but SIGHUP ignored from a hangup on, here and after: it
        comes twice (the terminal's, then the shell's passing it on to its jobs), and the
        second ended the run before its checkpoint, or the process after it. Under torchrun
        every stop signal is ignored from the first on, for torchrun's copy of it."""
        for sig, handler in self.previous.items():
            ignored = (sig == HANGUP and self.hung_up) or (self.under_torchrun and self.stopping)
            signal.signal(sig, signal.SIG_IGN if ignored else handler)

    def __exit__(self, *exc):
        self.restore()


def _drop_dead_outputs() -> None:
    """After a hangup, point stdout and stderr at /dev/null unless they are a file or a live
    terminal: a write to the hung-up terminal fails (EIO), as does one to a pipe whose reader
    the hangup ended (`| tee log`: EPIPE), and the failure ended the run before its
    checkpoint."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        try:
            if not (stat.S_ISREG(os.fstat(fd).st_mode) or os.isatty(fd)):
                os.dup2(devnull, fd)
        except OSError:         # closed
            pass
    os.close(devnull)


def _train(run: RunConfig, work_dir: Path, resume: bool, stop_at: int | None,
           checkpoint: Path, allow_schedule_change: bool, allow_data_change: bool,
           caught) -> Trainer:
    trainer = Trainer(run, work_dir)
    world = trainer.world
    if resume:
        try:
            state = load_checkpoint(checkpoint, trainer.device, TRAINING_KIND,
                                    needs=RESUME_KEYS)
        except CheckpointError as err:
            raise CheckpointError(f"{err}{_kept_checkpoints_advice(work_dir, checkpoint)}"
                                  ) from None
        _check_same_run(work_dir, checkpoint, state)
        trainer.restore(state, checkpoint, allow_schedule_change, allow_data_change)
        trainer.metrics_kept_until = trainer.step
        if stop_at is not None and stop_at < trainer.step:
            raise ValueError(f"--stop-at {stop_at} (stop_at) is before the step of the "
                             f"checkpoint resumed, {trainer.step} ({checkpoint}): give a "
                             "later step, or resume from an earlier checkpoint with "
                             "--resume-from")
        if world.is_main:
            done = trainer.step >= run.total_steps
            print(f"resumed from {checkpoint} at step {trainer.step}" +
                  (f"; the run was already complete ({run.total_steps} steps): nothing to "
                   "train" if done else ""))
    else:
        trainer.tokenizer = make_tokenizer(run, work_dir, world)
    last = run.total_steps if stop_at is None else min(stop_at, run.total_steps)
    if trainer.step >= last and not _freeze_due(trainer) and _is_newest(checkpoint, work_dir):
        # a complete run (or --stop-at its step): its files stay as they are; saving again
        # replaced the checkpoint and pruned kept ones (keep_checkpoints) for nothing. An
        # earlier checkpoint (--resume-from) is still saved: it becomes the run's newest
        _release(trainer)
        return trainer
    data = TrainData(run, trainer.tokenizer, pin_memory=trainer.device.type == "cuda",
                     world=world)
    if trainer.frozen_masks is not None:
        trainer.prepare_stage2()
    batches = prefetch_to_device(data.batches(trainer.epoch, trainer.batch_index),
                                 trainer.device)
    trainer.last_flush, trainer.last_save = time.perf_counter(), time.monotonic()
    caught.trainer = trainer
    while trainer.step < last:
        if trainer.step == run.stage1_steps and trainer.frozen_masks is None:
            trainer.freeze()
            trainer.prepare_stage2()
            trainer.save()
        try:
            trainer.epoch, trainer.batch_index, batch, on_device = next(batches)
        except AudioError as err:
            raise unreadable_training_audio(trainer, err) from None
        trainer.train_step(batch, on_device)
        if trainer.step % run.log_every == 0:
            trainer.flush()
        stop, timed = trainer.checkpoint_due()
        if stop:
            trainer.stopped_by = signal.Signals(trainer.stop_signal or signal.SIGTERM).name
            break
        if trainer.step % run.ckpt_every == 0 or timed:
            trainer.save()
    if _freeze_due(trainer):
        trainer.freeze()
    path = trainer.save()
    # not before the save: a signal during the last one (a scheduler's time limit) stopped
    # its write, and the steps since the one before were lost. It still stops the caller
    caught.trainer = None
    if trainer.stop_signal is not None and not trainer.stopped_by:
        trainer.stopped_by = signal.Signals(trainer.stop_signal).name
    if world.is_main:          # the last line says where the run is and what comes next
        print(_closing_line(trainer, path), flush=True)
    batches.close()
    _release(trainer)
    return trainer


def _closing_line(trainer: Trainer, path: Path) -> str:
    """Where a run that ended (finished, --stop-at, a stop signal) left its checkpoint
    `path`, and what comes next."""
    done = trainer.step >= trainer.run.total_steps
    if trainer.stopped_by:
        more = "" if done else "; continue with --resume"
        return f"stopped by {trainer.stopped_by} at step {trainer.step}: checkpoint {path}{more}"
    more = f"score it: orthoasr eval --checkpoint {path}" if done else "continue with --resume"
    return (f"{'finished' if done else 'stopped'} at step {trainer.step}: checkpoint {path}; "
            f"{more}")


def _freeze_due(trainer: Trainer) -> bool:
    """Stage 1 is done and its masks are not frozen yet (a run stopped, or killed after the
    checkpoint of its last stage-1 step, before the freeze)."""
    return trainer.step == trainer.run.stage1_steps and trainer.frozen_masks is None


def _is_newest(checkpoint: Path, work_dir: Path) -> bool:
    """Whether `checkpoint` is the work dir's checkpoint.pt (or its hard link in
    checkpoints/)."""
    newest = work_dir / CHECKPOINT
    return newest.exists() and os.path.samefile(checkpoint, newest)


def _release(trainer: Trainer) -> None:
    """Release what holds threads or the process group (DDP's reducer, the step graphs;
    the loader's workers are the caller's) and end the group: freed later, at interpreter
    exit, gloo's threads could abort the process ("terminate called without an active
    exception")."""
    trainer.ddp = None
    if trainer.step_graphs is not None:
        trainer.step_graphs.release()
    shutdown(trainer.world)


def _note_branch(checkpoint: Path, work_dir: Path) -> None:
    """Say so when --resume-from takes another work dir's checkpoint into `work_dir`, which
    holds no run (with --work-dir left out: runs/default): that run stays as it is."""
    folder = checkpoint.resolve().parent
    if folder.name == CHECKPOINTS:
        folder = folder.parent
    if run_files(folder) and folder != work_dir.resolve():
        print(f"note: continuing the run of {folder} in {work_dir}, which held no run; "
              f"{folder} is left as it is", flush=True)


def _check_same_run(work_dir: Path, checkpoint: Path, state: dict) -> None:
    """WorkDirError if `work_dir` holds another run than the one `checkpoint` (`state`, a
    --resume-from outside the work dir's checkpoints/) continues: its checkpoint.pt's config
    differs in what a resume of one run cannot change. Continuing there would replace that
    run's checkpoint.pt, cut its metrics.csv and prune its kept checkpoints."""
    own, kept = work_dir / CHECKPOINT, work_dir / CHECKPOINTS
    if not own.exists() or os.path.samefile(checkpoint, own) or \
            (kept.is_dir() and os.path.samefile(checkpoint.parent, kept)):
        return
    try:
        theirs = load_checkpoint(own, "cpu", TRAINING_KIND)["run_config"]
    except CheckpointError:
        return                # unreadable (why a run is resumed from elsewhere): no run to keep
    changeable = (*RunConfig.RESUMABLE_CHANGES, *RunConfig.SCHEDULE_CHANGES, "train_manifest")
    fields = [name for name in config_differences(RunConfig.from_dict(theirs).to_dict(),
                                                  RunConfig.from_dict(state["run_config"])
                                                  .to_dict())
              if name not in changeable]
    if fields:
        raise WorkDirError(
            f"--resume-from {checkpoint} is not a checkpoint of the run in {work_dir}: their "
            f"configs differ in {', '.join(fields)}. Continuing it there would replace that "
            f"run's {CHECKPOINT} and metrics; give another (new) --work-dir, or move the run "
            "aside first")


def _started_elsewhere(checkpoint: Path, run: RunConfig) -> str | None:
    """For a resume whose relative manifest is not found from here: the folder the run was
    started in, where the checkpoint recorded it (None if none such). Another path to the
    same manifest would be refused as another training manifest."""
    try:
        recorded = load_checkpoint(checkpoint, "cpu", TRAINING_KIND).get("manifest_paths", {})
    except CheckpointError:
        return None
    for name in ("train", "dev", "test"):
        path, there = Path(getattr(run, f"{name}_manifest")), recorded.get(name)
        if path.is_absolute() or path.exists() or not there or not Path(there).exists() or \
                not Path(there).as_posix().endswith("/" + path.as_posix()):
            continue
        folder = there[:-len(path.as_posix()) - 1]
        return (f"{name}_manifest {path} not found from {Path.cwd()}: the run was started in "
                f"{folder}, where it is {there}; resume from there (cd {folder})")
    return None


def _kept_checkpoints_advice(work_dir: Path, failed: Path) -> str:
    """The run's kept checkpoints other than `failed` (checkpoint.pt is a hard link to the
    newest) and how to continue from one; "" if there are none."""
    kept = [p for p in kept_checkpoints(work_dir / CHECKPOINTS)
            if not (failed.exists() and os.path.samefile(p, failed))]
    if not kept:
        return ""
    return (f"; {work_dir / CHECKPOINTS} keeps {', '.join(p.name for p in kept)}: continue "
            f"from the newest that loads with --resume-from {kept[-1]}")


def unreadable_training_audio(trainer: Trainer, err: AudioError) -> AudioError:
    """The error for a training clip that cannot be read (a FLAC with a corrupt frame, a
    truncated file): its name and reason, and how to go on. A single process first writes a
    checkpoint of the steps done, so that the run loses none of them (the clip's batch was
    not trained; a resume starts with it). The ranks of a group would wait for the one that
    stopped, so they stop without one."""
    reason = f"{str(err).rstrip('.')}. Training stopped before step {trainer.step + 1}"
    replace = "replace the file at that path with a readable copy"
    if trainer.step == 0:
        return AudioError(f"{reason}; {replace}, or remove its line from the manifest, and "
                          "start the run again")
    edit = "(or remove its line from the manifest and add --allow-data-change)"
    if trainer.world.size == 1:
        path = trainer.save()
        return AudioError(f"{reason}: checkpoint {path} holds the steps done; {replace} and "
                          f"continue with --resume {edit}")
    return AudioError(f"{reason}; {replace} and continue from the last checkpoint with "
                      f"--resume {edit}")


# ----------------------------------------------------------------------------- CLI

DESCRIPTION = """Train the supernet and its subnets (stage 1: supernet + OrthoSoftmax-gated
subnet; freeze; stage 2: sandwich rule). The work dir receives checkpoint.pt (the newest),
checkpoints/ (the last keep_checkpoints), tokenizer.model and metrics.csv.

Safety: a work dir that holds a run is refused unless --resume (continue it) or --overwrite
(move it aside to <work-dir>.old-N; nothing is deleted); a lock file keeps a second process
out. SIGINT/SIGTERM/SIGHUP (Ctrl-C, kill, a terminal that closes) write a checkpoint at the
next step and exit; checkpoints also go out every ckpt_every steps and every ckpt_minutes.
After a divergence the error names the checkpoints kept and the command to resume from one
with a lower lr."""


DEFAULT_CONFIG = "configs/tiny.yaml"


def run_config_of(args: argparse.Namespace) -> RunConfig:
    """--config's run config (default DEFAULT_CONFIG) plus the overrides. A resume without
    --config continues the checkpoint's own config plus the overrides: the default file's
    manifests and sizes (which the checkpoint's would be compared with) are not the run's."""
    if args.config is None and (args.resume or args.resume_from):
        checkpoint = Path(args.resume_from or Path(args.work_dir) / CHECKPOINT)
        if checkpoint.exists():                 # else train() says nothing is there
            try:
                saved = load_checkpoint(checkpoint, "cpu", TRAINING_KIND)["run_config"]
            except CheckpointError as err:
                advice = _kept_checkpoints_advice(Path(args.work_dir), checkpoint)
                raise CheckpointError(f"{err}{advice}") from None
            return RunConfig.from_dict(apply_overrides(saved, args.overrides))
    return load_run_config(args.config or DEFAULT_CONFIG, args.overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .run_config import valid_keys
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("config keys (set in the YAML file or as key=value; model keys as "
                     "model.<key>; defaults in orthoasr/run_config.py and "
                     "orthoasr/config.py):\n  " + " ".join(valid_keys()))
    parser.add_argument("--config", default=None,
                        help="YAML run config, or a preset name: "
                             f"{', '.join(presets())} (default: {DEFAULT_CONFIG}; with "
                             "--resume or --resume-from, the checkpoint's own config)")
    parser.add_argument("--work-dir", default="runs/default",
                        help="folder of the run (default: %(default)s)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in the work dir from its checkpoint.pt")
    start.add_argument("--resume-from", default=None, metavar="CKPT",
                       help="continue the run in the work dir from this checkpoint (e.g. one "
                            "of <work-dir>/checkpoints/ after a divergence)")
    start.add_argument("--overwrite", action="store_true",
                       help="move a run found in the work dir aside to <work-dir>.old-N and "
                            "start a new one")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="with --resume or --resume-from: accept a different optimiser "
                             "schedule (lr, lr_final, warmup_steps, weight_decay, betas, "
                             "grad_clip, score_lr) than the checkpoint's; the change is recorded")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="with --resume or --resume-from: accept a training manifest whose "
                             "contents differ from the checkpoint's (a broken clip's line "
                             "removed, say); the run goes on at the same epoch and batch "
                             "number of the new data's plan, so its batches differ from an "
                             "uninterrupted run's; the change is recorded")
    parser.add_argument("--stop-at", type=number(least=1, integer=True), default=None,
                        metavar="STEP",
                        help="stop (with a checkpoint) after this step (default: run to the "
                             "end)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. lr=3e-4 model.num_layers=4")


def run(args: argparse.Namespace) -> None:
    run_cfg = run_config_of(args)
    trainer = train(run_cfg, args.work_dir, resume=args.resume, stop_at=args.stop_at,
                    overwrite=args.overwrite, resume_from=args.resume_from,
                    allow_schedule_change=args.allow_schedule_change,
                    allow_data_change=args.allow_data_change)
    if trainer.stopped_by:
        raise SystemExit(128 + signal.Signals[trainer.stopped_by].value)


__all__ = ["train", "Trainer", "TrainingDiverged", "add_arguments", "run"]
