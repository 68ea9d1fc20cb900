"""What a training run keeps and how it continues: the checkpoint's contents, writing it
(after a check for NaN/inf: TrainingDiverged, whose message names the checkpoints kept and
how to resume from one with a lower learning rate), restoring a run from one, when one is
due, and the metrics.csv rows that go out with them; `TrainerCheckpoints` holds these as
methods of `Trainer` (trainer.py), whose __init__ sets up the state they read. Rank 0
writes; a checkpoint resumes on any number of ranks. Also `load_fixed_gates`: the frozen
masks of another run's checkpoint, for `fixed_gates`."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import time
from pathlib import Path

import torch

from .checkpoint import (
    TRAINING_KIND,
    as_tuples,
    check_config,
    checkpoint_step,
    find_nonfinite,
    kept_checkpoints,
    link_atomically,
    load_checkpoint,
    partial_writes,
    prune_checkpoints,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from .config import SupernetConfig
from .distributed import all_reduce_sum, barrier
from .metrics import METRIC_NAMES, METRICS, write_metrics
from .ortho import temperature
from .run_config import RunConfig, config_differences, split_fixed_gates
from .schedule import apply_schedule, lr_factor

CHECKPOINT = "checkpoint.pt"          # the newest checkpoint (a hard link into CHECKPOINTS)
CHECKPOINTS = "checkpoints"           # the last `keep_checkpoints`: step-0000040.pt, ...

# steps between the ranks' agreements on a stop signal or a timed save (checkpoint_due)
AGREE_EVERY = 10

# what a resume reads besides a training checkpoint's REQUIRED_KEYS (a cut-down one, as
# experiments/run.py's frozen_masks.pt, is refused with the names of those it lacks)
RESUME_KEYS = ("tokenizer", "model", "selector", "optimizer", "epoch", "plan_position", "rng")


def remove_partial_writes(work_dir: Path) -> list[str]:
    """Delete what a run killed while saving left behind (a checkpoint's temporary file,
    as large as a checkpoint; the link that was to replace checkpoint.pt) and return their
    names. Only with the work dir's lock held: no other run is writing them then."""
    leftovers = [*partial_writes(work_dir / CHECKPOINTS, "step-*.pt"),
                 *partial_writes(work_dir, CHECKPOINT)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return [path.name for path in leftovers]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or weights: training stops; the message names the checkpoints kept
    and how to resume from one with a lower learning rate."""


def load_fixed_gates(spec: str, cfg: SupernetConfig) -> tuple[torch.Tensor, int]:
    """`fixed_gates` "PATH@BUDGET" -> (the frozen masks (M, N) of that run, the index of
    BUDGET): the run must have frozen its subnets and have this run's model config."""
    path, budget = split_fixed_gates(spec)
    state = load_checkpoint(path, "cpu", TRAINING_KIND)
    if state["frozen_masks"] is None:
        raise ValueError(f"fixed_gates: the run of {path} has not frozen its subnets yet "
                         f"(step {state['step']})")
    theirs = RunConfig.from_dict(state["run_config"]).model.to_dict()
    ours = cfg.to_dict()
    differences = config_differences(theirs, ours)
    if differences:
        # named, so that a preset's new default (model.remove_dc) reads as what it is
        details = ", ".join(f"model.{name}: {theirs[name]!r} there, {ours[name]!r} here"
                            for name in differences)
        raise ValueError(f"fixed_gates: {path} was trained with another model config than "
                         f"this run's ({details}; the subnet's units and features must match "
                         "its; set those fields as it had them)")
    try:
        index = [float(b) for b in cfg.budgets].index(float(budget))
    except ValueError:
        raise ValueError(f"fixed_gates: budget {budget!r} is not one of the run's budgets "
                         f"{list(cfg.budgets)}") from None
    return state["frozen_masks"].float(), index


class TrainerCheckpoints:
    """Trainer's checkpoints and metrics: what it saves, restores and logs."""

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "run_config": self.run.to_dict(),
            "tokenizer": self.tokenizer.to_bytes(),
            "model": self.model.state_dict(),
            "selector": self.selector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "frozen_masks": None if self.frozen_masks is None else self.frozen_masks.cpu(),
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
            "plan_position": self.batch_index * self.batches_per_index,
            "plan_batches_per_step": self.batches_per_index,
            "schedule": {"gamma": self.gamma, "tau": temperature(self.step, self.run.tau0,
                                                                 self.gamma, self.run.tau_min),
                         "lr_factor": lr_factor(self.step, self.run)},
            "rng": {**rng_states(), "budget": self.budget_rng.getstate()},
            "schedule_changes": self.schedule_changes,
            "data_changes": self.data_changes,
            # where the manifests were, for `orthoasr eval` run from another folder
            "manifest_paths": {name: os.path.abspath(getattr(self.run, name + "_manifest"))
                               for name in ("train", "dev", "test")},
            "train_manifest_sha256": self.train_manifest_digest,
        }

    @functools.cached_property
    def train_manifest_digest(self) -> str | None:
        """sha256 of the training manifest: a resume checks that it trains on the data the
        run began with, wherever that lies now. For a LibriSpeech-layout folder, of its
        transcripts (each one's path in the folder and its contents), which list its
        utterances."""
        path = Path(self.run.train_manifest)
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
        if not path.is_dir():
            return None
        digest = hashlib.sha256()
        for trans in sorted(path.rglob("*.trans.txt")):
            contents = hashlib.sha256(trans.read_bytes()).hexdigest()
            digest.update(f"{trans.relative_to(path).as_posix()} {contents}\n".encode())
        return digest.hexdigest()

    def check_same_training_data(self, state: dict, allow_change: bool = False) -> None:
        """ValueError if the checkpoint's run trained on another manifest than the config's,
        as read from this folder (the same relative path in another folder, say), unless
        `allow_change`: the change is then recorded in `data_changes` and said."""
        recorded = state.get("train_manifest_sha256")
        if recorded is None or self.train_manifest_digest in (None, recorded):
            return
        here = os.path.abspath(self.run.train_manifest)
        there = state.get("manifest_paths", {}).get("train", "?")
        if not allow_change:
            raise ValueError(
                f"train_manifest {self.run.train_manifest} is {here} from this folder, and it "
                f"is not the manifest the checkpoint's run trained on ({there}): their "
                "contents differ. Resume from the folder the run was started in, or, if the "
                "manifest was changed on purpose (a broken clip's line removed), add "
                "--allow-data-change")
        self.data_changes.append({"step": state["step"], "train_manifest": here,
                                  "sha256": [recorded, self.train_manifest_digest]})
        if self.world.is_main:
            print(f"resuming on a changed training manifest {here} (recorded in the "
                  f"checkpoints): from epoch {state['epoch']}, the batches differ from an "
                  "uninterrupted run's")

    def save(self) -> Path:
        """Check the losses since the last flush and the weights and optimiser state for
        NaN/inf (TrainingDiverged), then write checkpoints/step-N.pt, point checkpoint.pt at
        it and keep the newest `keep_checkpoints`."""
        self.flush()
        path = self.work_dir / CHECKPOINT
        if self.world.is_main:
            bad = find_nonfinite([("model", self.model.state_dict()),
                                  ("selector", self.selector.state_dict()),
                                  ("optimizer", self.optimizer.state_dict()["state"])])
            if bad:
                raise TrainingDiverged(
                    f"non-finite values in {', '.join(bad[:3])}"
                    f"{' ...' if len(bad) > 3 else ''} at step {self.step}; the checkpoint of "
                    f"this step was not written. {self.recovery_advice()}")
            step_path = self.work_dir / CHECKPOINTS / f"step-{self.step:07d}.pt"
            save_checkpoint(step_path, self.state())
            link_atomically(step_path, path)
            self.write_metrics([])      # the checkpoint and the metrics agree on the step
            prune_checkpoints(self.work_dir / CHECKPOINTS, self.run.keep_checkpoints,
                              self.step)
        self.last_save = time.monotonic()
        barrier(self.world)
        return path

    def recovery_advice(self) -> str:
        """Which checkpoints exist and the command that resumes the oldest with a lower lr."""
        kept = kept_checkpoints(self.work_dir / CHECKPOINTS)
        lower = f"lr={self.run.lr / 10:g}"
        if not kept:
            return (f"No checkpoint was written before it; start again with a lower learning "
                    f"rate: orthoasr train --work-dir {self.work_dir} --overwrite {lower} "
                    "(with your --config and overrides)")
        steps = ", ".join(f"step {checkpoint_step(p)}" for p in kept)
        return (f"Checkpoints kept: {steps} in {kept[0].parent}; the newest may already hold "
                f"diverging weights. Resume from an earlier one with a lower learning rate: "
                f"orthoasr train --work-dir {self.work_dir} --resume-from {kept[0]} "
                f"--allow-schedule-change {lower} (with your --config and overrides)")

    def restore(self, state: dict, path: Path, allow_schedule_change: bool = False,
                allow_data_change: bool = False) -> None:
        """Continue from `state`, a checkpoint holding RESUME_KEYS."""
        changes = check_config(state, self.run, path, allow_schedule_change,
                               allow_data_change)
        self.data_changes = list(state.get("data_changes", []))
        self.check_same_training_data(state, allow_data_change)
        from .data import Tokenizer
        self.tokenizer = Tokenizer.from_bytes(state["tokenizer"])
        self.model.load_state_dict(state["model"])
        self.selector.load_state_dict(state["selector"])
        self.optimizer.load_state_dict(state["optimizer"])
        apply_schedule(self.optimizer, self.run, capturable=self.step_graphs is not None)
        self.schedule_changes = list(state.get("schedule_changes", []))
        if changes:
            self.schedule_changes.append({"step": state["step"], "changes": changes})
            if self.world.is_main:
                print("resuming with a changed optimiser schedule (recorded in the checkpoints):"
                      f" {', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())}")
        masks = state["frozen_masks"]
        self.frozen_masks = None if masks is None else masks.to(self.device)
        self.step, self.epoch = state["step"], state["epoch"]
        # the position in the epoch's batch plan, whatever the number of ranks that resumes
        self.batch_index = state["plan_position"] // self.batches_per_index
        self.note_step_change(state.get("plan_batches_per_step"))
        set_rng_states(state["rng"])
        self.budget_rng.setstate(as_tuples(state["rng"]["budget"]))
        if self.world.distributed:
            self.reseed_rank()

    @property
    def batches_per_index(self) -> int:
        """Batches of the epoch's plan that one step of this run consumes."""
        return self.world.size * self.run.buckets_per_step

    def note_step_change(self, before: int | None) -> None:
        """Say so where a step of this run takes another number of the plan's batches than
        one of the checkpoint's run took (`before`; None in checkpoints from before it was
        kept): a run resumes on any number of ranks, but its steps then train on more or
        less data at the same learning rate."""
        now, ranks = self.batches_per_index, self.world.size
        if before in (None, now) or not self.world.is_main:
            return
        keep = (f": buckets_per_step={before // ranks} keeps its steps" if before % ranks == 0
                else "")
        print(f"note: a step of the checkpoint's run trained on {before} of the plan's "
              f"batches, one of this run trains on {now} ({ranks} rank(s) x buckets_per_step="
              f"{self.run.buckets_per_step}){keep}", flush=True)

    # ------------------------------------------------------------------ metrics
    def write_metrics(self, rows: list[dict]) -> None:
        """Append rows to metrics.csv, first dropping the rows this run replaces."""
        write_metrics(self.work_dir / METRICS, rows, keep_until=self.metrics_kept_until)
        self.metrics_kept_until = None

    def flush(self) -> None:
        """Read the pending losses (one sync), stop on a non-finite one, log and print.
        Throughput counts every rank's utterances and audio (summed with the losses)."""
        if not self.pending:
            return
        losses = torch.stack([torch.stack([p[k] for k in METRIC_NAMES])
                              for p in self.pending])
        counts = torch.tensor([[p["utts"], p["audio_s"]] for p in self.pending],
                              dtype=losses.dtype).to(self.device, non_blocking=True)
        summed = all_reduce_sum(torch.cat([losses, counts], dim=1), self.world).tolist()
        now = time.perf_counter()
        elapsed, self.last_flush = now - self.last_flush, now
        ms_per_step = 1000 * elapsed / len(self.pending)
        utt_per_s = sum(row[-2] for row in summed) / max(elapsed, 1e-9)
        audio_per_s = sum(row[-1] for row in summed) / max(elapsed, 1e-9)
        rows = []
        for p, row in zip(self.pending, summed):
            vals = [v / self.world.size for v in row[:len(METRIC_NAMES)]]   # rank mean
            row = {"step": p["step"], "stage": p["stage"], "budget": p["budget"],
                   **dict(zip(METRIC_NAMES, vals)), "tau": p["tau"], "lr": p["lr"],
                   "ms_per_step": ms_per_step, "utt_per_s": utt_per_s,
                   "audio_per_s": audio_per_s}
            if not all(math.isfinite(v) for v in vals):
                self.pending = []
                raise TrainingDiverged(
                    f"non-finite loss {dict(zip(METRIC_NAMES, vals))} at step {p['step']}; "
                    f"stopping. {self.recovery_advice()}")
            rows.append(row)
        self.pending = []
        self.history += rows
        if not self.world.is_main:
            return
        self.write_metrics(rows)
        last = rows[-1]
        print(f"step {last['step']}/{self.run.total_steps} [stage {last['stage']}] "
              f"loss {last['loss']:.3f} (sup {last['loss_sup']:.3f} sub {last['loss_sub']:.3f} "
              f"pen {last['penalty']:.4f}) tau {last['tau']:.3f} lr {last['lr']:.2e} | "
              f"{ms_per_step:.1f} ms/step {utt_per_s:.1f} utt/s {audio_per_s:.0f}x real time",
              flush=True)

    # ------------------------------------------------------------------ stopping
    def checkpoint_due(self) -> tuple[bool, bool]:
        """(stop, save now): a stop signal arrived / `ckpt_minutes` passed since the last
        save. In a distributed run every rank must agree: the flags are summed over the
        ranks (one small all-reduce and a host read) every min(log_every, AGREE_EVERY)
        steps, so that a signal is acted on within torchrun's grace period (30 s before it
        kills the ranks) however long the log interval."""
        stop = self.stop_signal is not None
        timed = time.monotonic() - self.last_save >= 60 * self.run.ckpt_minutes
        if not self.world.distributed:
            return stop, timed
        if self.step % min(self.run.log_every, AGREE_EVERY):
            return False, False
        flags = torch.tensor([float(stop), float(timed)], device=self.device)
        stop, timed = (v > 0 for v in all_reduce_sum(flags, self.world).tolist())
        return stop, timed
