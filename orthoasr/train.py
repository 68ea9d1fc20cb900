"""`orthoasr train`: two-stage OrthoSoftmax supernet training (DESIGN §5).

Stage 1 (steps < stage1_steps): each step trains the supernet (all gates 1, largest head) and
one subnet of a random budget below the largest with soft gates m_p from OrthoSoftmax:
    loss = CTC(sup) + s * CTC(sub_p) + lambda_t * penalty_p,   tau_t = max(tau0 gamma^t, tau_min)
Freeze: hard nested masks, one per budget, each within its budget (ortho.freeze_masks).
Stage 2 (sandwich rule): supernet with stochastic depth on the modules outside the smallest
subnet, the smallest subnet and one random middle subnet, hard gates:
    loss = CTC(sup) + s * (CTC(min) + CTC(mid))
s is constant or focal (1 - exp(-L)). Each budget has its own output layer.

The loop reads the device only every `log_every` steps (losses, NaN check) and before a
checkpoint; the temperature lives in a device tensor, so a step has no host sync.

Under `torchrun --nproc_per_node=N` each rank trains on every N-th batch of the same plan
(NCCL on GPUs, gloo on the CPU); one all-reduce after the backward averages the gradients
(`grad_sync=flat`), or DistributedDataParallel does during it (`grad_sync=ddp`). The CTC
sum is divided by the frames of all ranks, so a step equals one process training on the N
batches at once (`buckets_per_step=N`). The budget drawn each step is the same on every
rank (same seed), so the OrthoSoftmax scores and the Lagrange multiplier get the same
averaged gradient and stay identical; dropout, SpecAugment and stochastic depth draw per
rank. Rank 0 freezes the masks (broadcast), logs and writes checkpoints, which resume on
any number of ranks.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .backend import set_backend
from .checkpoint import (
    as_tuples,
    check_config,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from .config import SupernetConfig
from .distributed import (
    SINGLE,
    World,
    all_reduce_sum,
    average_gradients,
    barrier,
    broadcast,
    init_world,
    shutdown,
)
from .model import ConformerSupernet, block_layout
from .ortho import PenaltyScale, freeze_masks, gamma_for, ortho_softmax, temperature
from .run_config import RunConfig, load_run_config
from .units import subnet_cost, unit_costs

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
METRIC_NAMES = ("loss", "loss_sup", "loss_sub", "penalty")


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stops, the last good checkpoint stays in place."""


# ----------------------------------------------------------------------------- pieces

class SubnetSelector(nn.Module):
    """The OrthoSoftmax scores S (N, N) and the penalty scale: soft masks for every budget."""

    def __init__(self, cfg: SupernetConfig, run: RunConfig):
        super().__init__()
        costs, self.rest_cost, self.total_cost = unit_costs(cfg, cfg.criterion)
        self.register_buffer("costs", costs.float())
        n = costs.shape[0]
        self.scores = nn.Parameter(torch.randn(n, n) * run.score_init_std)
        self.penalty_scale = PenaltyScale(run.penalty_mode, run.penalty_scale,
                                          run.penalty_warmup, run.penalty_rho)
        self.budgets, self.norm = cfg.budgets, run.penalty_norm

    def forward(self, tau: torch.Tensor):
        """tau: 0-d device tensor -> OrthoSoftmaxResult (.probs, .masks (M, N), .penalty)."""
        return ortho_softmax(self.scores, self.costs, self.rest_cost, self.total_cost,
                             self.budgets, tau, self.norm, validate=False)


def check_feasible_budgets(cfg: SupernetConfig) -> None:
    """Every budget must admit a subnet of at least one unit (exact cost, cfg.criterion)."""
    _, rest, total = unit_costs(cfg, cfg.criterion)
    n = cfg.num_layers * sum(end - start for _, start, end in block_layout(cfg))
    cheapest = rest
    if n:
        cheapest = min(subnet_cost(cfg, torch.eye(n)[u], cfg.criterion)
                       for _, u, _ in block_layout(cfg))
    smallest = cheapest / total
    for budget in cfg.budgets:
        if budget * total < cheapest:
            raise ValueError(
                f"budget {budget} is infeasible for criterion {cfg.criterion!r}: the cheapest "
                f"subnet with one unit costs {smallest:.4f} of the supernet (the frontend, "
                f"norms and output layer alone {rest / total:.4f}); the smallest feasible "
                f"budget is {math.ceil(smallest * 1e4) / 1e4:.4f}")


def ctc_loss(log_probs, out_lengths, targets, target_lengths, frames=None) -> torch.Tensor:
    """CTC (blank 0), summed over the batch and divided by `frames` (default: the batch's
    number of frames)."""
    loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths,
                      blank=0, reduction="sum", zero_infinity=True)
    return loss / (out_lengths.sum().clamp(min=1) if frames is None else frames)


def aux_scale(run: RunConfig, loss: torch.Tensor) -> torch.Tensor | float:
    """s: constant, or focal 1 - exp(-L) (treated as a constant in the backward)."""
    if run.aux_scale == "focal":
        return 1.0 - torch.exp(-loss.detach())
    return run.aux_value


def lr_factor(step: int, run: RunConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `lr_final` at the last step."""
    if step < run.warmup_steps:
        return (step + 1) / run.warmup_steps
    progress = min(1.0, (step - run.warmup_steps) / max(1, run.total_steps - run.warmup_steps))
    return run.lr_final + (1.0 - run.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, selector: nn.Module, run: RunConfig, device):
    """AdamW; weight decay on matrices and conv kernels only, none on the scores."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": run.weight_decay, "base_lr": run.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": run.lr},
              {"params": list(selector.parameters()), "weight_decay": 0.0,
               "base_lr": run.score_lr}]
    return torch.optim.AdamW(groups, lr=run.lr, betas=run.betas,
                             fused=device.type == "cuda")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


class TrainData:
    """Training utterances in buckets; batch order is a function of (seed, epoch), so a run
    resumed at (epoch, batch index) sees the same batches as an uninterrupted one."""

    def __init__(self, run: RunConfig, tokenizer, pin_memory: bool = False,
                 world: World = SINGLE):
        from .data import BucketBatchSampler, SpeechDataset, collate, load_manifest
        records = load_manifest(run.train_manifest)
        records = [r for r in records if r["duration"] <= run.max_duration]
        if not records:
            raise ValueError(f"training manifest {run.train_manifest} has no utterances of at "
                             f"most {run.max_duration} s")
        self.run, self.collate, self.pin_memory = run, collate, pin_memory
        self.dataset = SpeechDataset(records, tokenizer)
        self.durations = [r["duration"] for r in records]
        self.sampler = BucketBatchSampler(self.durations, run.max_frames, shuffle=True,
                                          seed=run.seed, num_replicas=world.size,
                                          rank=world.rank)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        plan, group = list(self.sampler), self.run.buckets_per_step
        return [sum(plan[i:i + group], []) for i in range(0, len(plan) - group + 1, group)]

    def batches(self, epoch: int, index: int):
        """Yield (epoch, index of the next batch, batch) forever, from batch `index`."""
        while True:
            order = self.epoch_batches(epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=order[index:], collate_fn=self.collate,
                num_workers=self.run.num_workers, pin_memory=self.pin_memory,
                generator=torch.Generator())
            for batch in loader:
                index += 1
                yield epoch, index, batch
            epoch, index = epoch + 1, 0


class _Joint(nn.Module):
    """Model and selector under one DistributedDataParallel: its forward runs the step's
    loss computation (a closure over both), so one forward and one backward per step."""

    def __init__(self, model: nn.Module, selector: nn.Module):
        super().__init__()
        self.model, self.selector = model, selector

    def forward(self, compute):
        return compute()


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """State of one run: model, selector, optimiser, schedules, frozen masks, metrics."""

    def __init__(self, run: RunConfig, work_dir: str | Path):
        self.run, self.cfg = run, run.model
        self.work_dir = Path(work_dir)
        self.device = resolve_device(run.device)
        self.world = init_world(self.device.type)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        set_backend(run.backend)
        check_feasible_budgets(self.cfg)
        torch.manual_seed(run.seed)
        random.seed(run.seed)
        self.tokenizer = None               # trained on the transcripts, or restored
        self.model = ConformerSupernet(self.cfg).to(self.device)
        self.selector = SubnetSelector(self.cfg, run).to(self.device)
        self.ddp = None
        if self.world.distributed and run.grad_sync == "ddp":
            # the heads of the budgets a step does not draw (and the scores in stage 2) get
            # no gradient: DDP must look for unused parameters
            self.ddp = DistributedDataParallel(
                _Joint(self.model, self.selector), find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.trained_parameters = [*self.model.parameters(), *self.selector.parameters()]
        self.optimizer = make_optimizer(self.model, self.selector, run, self.device)
        self.gamma = run.gamma or gamma_for(run.tau0, run.tau_end, max(1, run.stage1_steps))
        self.tau = torch.full((), run.tau0, device=self.device)
        self.budget_rng = random.Random(run.seed)
        self.frozen_masks = None            # (M, N) float on the device after stage 1
        self.step, self.epoch, self.batch_index = 0, 0, 0
        if self.world.distributed:
            self.reseed_rank()
        self.bf16 = run.bf16 and self.device.type == "cuda"
        self.pending: list[dict] = []
        self.history: list[dict] = []
        self.last_flush = time.perf_counter()
        from .data import LogMel, SpecAugment
        self.logmel = LogMel().to(self.device)
        self.spec_augment = SpecAugment().to(self.device) if run.spec_augment else None

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
            "schedule": {"gamma": self.gamma, "tau": temperature(self.step, self.run.tau0,
                                                                 self.gamma, self.run.tau_min),
                         "lr_factor": lr_factor(self.step, self.run)},
            "rng": {**rng_states(), "budget": self.budget_rng.getstate()},
        }

    def save(self) -> Path:
        self.flush()                        # checks the losses since the last flush first
        path = self.work_dir / CHECKPOINT
        if self.world.is_main:
            save_checkpoint(path, self.state())
        barrier(self.world)
        return path

    def restore(self, state: dict) -> None:
        check_config(state, self.run, self.work_dir / CHECKPOINT)
        from .data import Tokenizer
        self.tokenizer = Tokenizer.from_bytes(state["tokenizer"])
        self.model.load_state_dict(state["model"])
        self.selector.load_state_dict(state["selector"])
        self.optimizer.load_state_dict(state["optimizer"])
        masks = state["frozen_masks"]
        self.frozen_masks = None if masks is None else masks.to(self.device)
        self.step, self.epoch = state["step"], state["epoch"]
        # the position in the epoch's batch plan, whatever the number of ranks that resumes
        self.batch_index = state["plan_position"] // self.batches_per_index
        set_rng_states(state["rng"])
        self.budget_rng.setstate(as_tuples(state["rng"]["budget"]))
        if self.world.distributed:
            self.reseed_rank()

    @property
    def batches_per_index(self) -> int:
        """Batches of the epoch's plan that one step of this run consumes."""
        return self.world.size * self.run.buckets_per_step

    def reseed_rank(self) -> None:
        """Per-rank random streams (dropout, SpecAugment, stochastic depth) from (seed, rank,
        step); the budget draws (budget_rng) stay the same on every rank."""
        torch.manual_seed(self.run.seed + 1_000_003 * self.world.rank + self.step)

    # ------------------------------------------------------------------ one step
    def features(self, waves, wave_lengths):
        with torch.no_grad():
            feats, lengths = self.logmel(waves, wave_lengths)
            if self.spec_augment is not None:
                feats = self.spec_augment(feats, lengths)
        return feats, lengths

    def losses(self, feats, lengths, targets, target_lengths, out_lengths, frames=None
               ) -> tuple[torch.Tensor, dict]:
        """The step's loss and its parts (0-d device tensors). CTC takes the lengths on the
        host (`target_lengths`, `out_lengths`: CPU tensors), so it copies nothing back;
        `frames` divides the CTC sums (default: this batch's frames)."""
        run, budgets = self.run, self.cfg.budgets
        zero = torch.zeros((), device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16)
        with autocast:              # the frontend is shared: once for every subnet below
            x, lengths = self.model.embed(feats, lengths)

        def ctc(gates, head):
            with autocast:
                log_probs = self.model.encode(x, lengths, gates, head)
            return ctc_loss(log_probs, out_lengths, targets, target_lengths, frames)

        if self.frozen_masks is None:                                   # stage 1
            selected = self.selector(self.tau)
            loss_sup = ctc(None, len(budgets) - 1)
            loss_sub, penalty, budget = zero, zero, budgets[-1]
            if len(budgets) > 1:
                b = self.budget_rng.randrange(len(budgets) - 1)
                budget = budgets[b]
                loss_sub = ctc(selected.masks[b], b)
                penalty = self.selector.penalty_scale(selected.penalty[b], self.step)
            loss = loss_sup + aux_scale(run, loss_sub) * loss_sub + penalty
        else:                                                           # stage 2
            loss_sup = ctc(self.supernet_gates(), len(budgets) - 1)
            loss_sub, penalty, budget = zero, zero, budgets[-1]
            if len(budgets) > 1:
                loss_sub = ctc(self.frozen_masks[0], 0)
                budget = budgets[0]
            if len(budgets) > 2:
                b = self.budget_rng.randrange(1, len(budgets) - 1)
                loss_mid = ctc(self.frozen_masks[b], b)
                loss_sub = loss_sub + loss_mid
                budget = budgets[b]
            loss = loss_sup + aux_scale(run, loss_sub) * loss_sub
        return loss, {"loss": loss.detach(), "loss_sup": loss_sup.detach(),
                      "loss_sub": loss_sub.detach(), "penalty": penalty.detach(),
                      "budget": budget}

    def supernet_gates(self) -> torch.Tensor:
        """Largest subnet's gates with stochastic depth: each module with no unit in the
        smallest subnet is dropped with probability `stochastic_depth` (drawn on device)."""
        keep = torch.rand(self.num_modules, device=self.device) >= self.run.stochastic_depth
        keep = keep | ~self.droppable_modules
        return self.frozen_masks[-1] * keep[self.module_of_unit].float()

    def train_step(self, batch) -> None:
        waves, wave_lengths, targets, target_lengths = batch
        out_lengths = self.logmel.frame_lengths(wave_lengths) // 4     # the model's, on the host
        audio_s = float(wave_lengths.sum()) / self.logmel.sample_rate   # host tensor: no sync
        waves, wave_lengths, targets = [t.to(self.device, non_blocking=True)
                                        for t in (waves, wave_lengths, targets)]
        feats, lengths = self.features(waves, wave_lengths)
        factor = lr_factor(self.step, self.run)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        tau = temperature(self.step, self.run.tau0, self.gamma, self.run.tau_min)
        self.tau.fill_(tau)
        frames = None
        if self.world.distributed:
            # the ranks' gradients are averaged: dividing each rank's CTC sum by the mean
            # frames per rank makes the average the gradient of (sum over ranks) / frames
            # (counted on the device: copying the host's count would sync with the stream,
            # holding the host until the previous step's all-reduce is done)
            frames = (self.logmel.frame_lengths(wave_lengths) // 4).sum().float()
            frames = all_reduce_sum(frames, self.world) / self.world.size

        def compute():
            return self.losses(feats, lengths, targets, target_lengths, out_lengths, frames)

        loss, parts = compute() if self.ddp is None else self.ddp(compute)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.ddp is None:
            average_gradients(self.trained_parameters, self.world)
        # the model's gradient only: the scores' (penalty-dominated) gradient must not
        # shrink it; Adam normalises the scores' steps anyway
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.grad_clip)
        self.optimizer.step()
        self.pending.append({**parts, "step": self.step + 1,
                             "stage": 1 if self.frozen_masks is None else 2, "tau": tau,
                             "lr": self.run.lr * factor,
                             "utts": waves.shape[0],
                             "audio_s": audio_s})
        self.step += 1

    # ------------------------------------------------------------------ freeze
    def freeze(self) -> None:
        """End of stage 1: hard nested masks from the current OrthoSoftmax probabilities."""
        with torch.no_grad():
            self.tau.fill_(temperature(self.step, self.run.tau0, self.gamma, self.run.tau_min))
            probs = self.selector(self.tau).probs
        masks = freeze_masks(probs, self.cfg, self.cfg.criterion)
        self.frozen_masks = broadcast(masks.to(self.device), self.world)   # rank 0's
        masks = self.frozen_masks.cpu()
        if not self.world.is_main:
            return
        for b, budget in enumerate(self.cfg.budgets):
            kept = int(masks[b].sum())
            cost = subnet_cost(self.cfg, masks[b], self.cfg.criterion)
            _, _, total = unit_costs(self.cfg, self.cfg.criterion)
            print(f"frozen subnet {b}: budget {budget}, {kept}/{masks.shape[1]} units, "
                  f"{self.cfg.criterion} {cost / total:.3f} of the supernet")
            if kept == 0:
                print(f"warning: the subnet of budget {budget} kept no unit")

    def prepare_stage2(self) -> None:
        """Device tables for stochastic depth (module of each unit, droppable modules)."""
        layout = block_layout(self.cfg)
        per_block = [m for m, (_, start, end) in enumerate(layout) for _ in range(start, end)]
        module_of_unit = torch.tensor([layer * len(layout) + m
                                       for layer in range(self.cfg.num_layers)
                                       for m in per_block])
        in_smallest = torch.zeros(self.cfg.num_layers * len(layout), dtype=torch.bool)
        in_smallest[module_of_unit[self.frozen_masks[0].cpu() != 0]] = True
        self.num_modules = in_smallest.numel()
        self.module_of_unit = module_of_unit.to(self.device)
        self.droppable_modules = (~in_smallest).to(self.device)

    # ------------------------------------------------------------------ metrics
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
                    f"stopping. The last good checkpoint is {self.work_dir / CHECKPOINT}")
            rows.append(row)
        self.pending = []
        self.history += rows
        if not self.world.is_main:
            return
        write_metrics(self.work_dir / METRICS, rows)
        last = rows[-1]
        print(f"step {last['step']}/{self.run.total_steps} [stage {last['stage']}] "
              f"loss {last['loss']:.3f} (sup {last['loss_sup']:.3f} sub {last['loss_sub']:.3f} "
              f"pen {last['penalty']:.4f}) tau {last['tau']:.3f} lr {last['lr']:.2e} | "
              f"{ms_per_step:.1f} ms/step {utt_per_s:.1f} utt/s {audio_per_s:.0f}x real time",
              flush=True)


def write_metrics(path: Path, rows: list[dict], keep_until: int | None = None) -> None:
    """Append rows to the CSV; with keep_until, first drop rows after that step (resume)."""
    old = []
    if path.exists() and keep_until is not None:
        with path.open() as f:
            old = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
    if keep_until is not None or not path.exists():
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_metric_columns())
            writer.writeheader()
            writer.writerows(old)
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=_metric_columns()).writerows(rows)


def _metric_columns() -> list[str]:
    return ["step", "stage", "budget", *METRIC_NAMES, "tau", "lr", "ms_per_step", "utt_per_s",
            "audio_per_s"]


def read_metrics(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        # a column added since a resumed run's first rows were written reads as NaN there
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- the loop

def train(run: RunConfig, work_dir: str | Path, resume: bool = False,
          stop_at: int | None = None) -> Trainer:
    """Train both stages (or continue a run with `resume`); `stop_at` ends after that step
    with a checkpoint, as an interrupted run would. Returns the trainer (history, model)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, work_dir)
    world = trainer.world
    if resume:
        trainer.restore(load_checkpoint(work_dir / CHECKPOINT, map_location=trainer.device))
        if world.is_main:
            write_metrics(work_dir / METRICS, [], keep_until=trainer.step)
            print(f"resumed from {work_dir / CHECKPOINT} at step {trainer.step}")
    else:
        trainer.tokenizer = make_tokenizer(run, work_dir, world)
        if world.is_main:
            write_metrics(work_dir / METRICS, [], keep_until=0)
    data = TrainData(run, trainer.tokenizer, pin_memory=trainer.device.type == "cuda",
                     world=world)
    if trainer.frozen_masks is not None:
        trainer.prepare_stage2()
    last = run.total_steps if stop_at is None else min(stop_at, run.total_steps)
    batches = data.batches(trainer.epoch, trainer.batch_index)
    trainer.last_flush = time.perf_counter()
    while trainer.step < last:
        if trainer.step == run.stage1_steps and trainer.frozen_masks is None:
            trainer.freeze()
            trainer.prepare_stage2()
            trainer.save()
        trainer.epoch, trainer.batch_index, batch = next(batches)
        trainer.train_step(batch)
        if trainer.step % run.log_every == 0:
            trainer.flush()
        if trainer.step % run.ckpt_every == 0:
            trainer.save()
    if trainer.step == run.stage1_steps and trainer.frozen_masks is None:
        trainer.freeze()
    trainer.save()
    # release what holds threads or the process group (the loader's workers, DDP's reducer)
    # before the group is destroyed: freed later, at interpreter exit, gloo's threads could
    # abort the process ("terminate called without an active exception")
    batches.close()
    trainer.ddp = None
    shutdown(world)
    return trainer


def make_tokenizer(run: RunConfig, work_dir: Path, world: World = SINGLE):
    """A BPE tokenizer trained on the training transcripts, vocab = model.vocab_size (by
    rank 0; the other ranks load what it wrote)."""
    from .data import Tokenizer
    if not world.is_main:
        barrier(world)
        return Tokenizer(str(work_dir / "tokenizer.model"))
    tokenizer = _train_tokenizer(run, work_dir)
    barrier(world)
    return tokenizer


def _train_tokenizer(run: RunConfig, work_dir: Path):
    from .data import Tokenizer, load_manifest
    records = load_manifest(run.train_manifest)
    if not records:
        raise ValueError(f"training manifest {run.train_manifest} is empty")
    texts = [r["text"] for r in records]
    tokenizer = Tokenizer.train(texts, run.model.vocab_size, str(work_dir / "tokenizer.model"))
    if tokenizer.vocab_size > run.model.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is "
                         f"{run.model.vocab_size}")
    if tokenizer.vocab_size < run.model.vocab_size:   # sentencepiece's limit is soft
        print(f"note: the transcripts gave a {tokenizer.vocab_size}-id vocabulary (blank "
              f"included); the output layers keep model.vocab_size={run.model.vocab_size}")
    return tokenizer


# ----------------------------------------------------------------------------- demo

DEMO_CONFIG = "configs/tiny.yaml"   # found in the package when not run from the checkout


def run_demo(work_dir: str | Path = "runs/demo", config: str | Path = DEMO_CONFIG,
             overrides: list[str] = ()) -> list[dict]:
    """`make demo`: synthesise the tiny corpus, train both stages, evaluate every subnet,
    print the table and write the heatmap. Returns the evaluation rows."""
    from .data.synth import synthesize_corpus
    from .evaluate import evaluate
    start = time.perf_counter()
    work_dir = Path(work_dir)
    data_dir = work_dir / "data"
    if not (data_dir / "train.jsonl").exists():
        print(f"synthesising the tiny corpus into {data_dir} ...", flush=True)
        synthesize_corpus(data_dir, preset="tiny", seed=0)
    print(f"corpus ready after {time.perf_counter() - start:.0f} s", flush=True)
    paths = [f"{split}_manifest={data_dir / (split + '.jsonl')}"
             for split in ("train", "dev", "test")]
    run_cfg = load_run_config(config, paths + list(overrides))
    train(run_cfg, work_dir)
    print(f"training done after {time.perf_counter() - start:.0f} s", flush=True)
    rows = evaluate(work_dir / CHECKPOINT, heatmap=work_dir / "heatmap.png",
                    device=run_cfg.device)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return rows


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML run config")
    parser.add_argument("--work-dir", default="runs/default",
                        help="checkpoint, tokenizer and metrics.csv go here")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <work-dir>/checkpoint.pt")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop (with a checkpoint) after this step")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. lr=3e-4 model.num_layers=4")


def run(args: argparse.Namespace) -> None:
    run_cfg = load_run_config(args.config, args.overrides)
    train(run_cfg, args.work_dir, resume=args.resume, stop_at=args.stop_at)


__all__ = ["train", "Trainer", "SubnetSelector", "TrainingDiverged", "check_feasible_budgets",
           "ctc_loss", "lr_factor", "read_metrics", "run_demo", "add_arguments", "run"]
