"""The trainer of a two-stage OrthoSoftmax supernet run (docs/design.md §5): one run's model,
selector, optimiser and schedules, and its training step.

Stage 1 (steps < stage1_steps): each step trains the supernet (all gates 1, largest head) and
one subnet of a random budget below the largest with soft gates m_p from OrthoSoftmax:
    loss = CTC(sup) + s * CTC(sub_p) + lambda_t * penalty_p,   tau_t = max(tau0 gamma^t, tau_min)
Freeze: hard nested masks, one per budget, each within its budget (ortho.freeze_masks).
Stage 2 (sandwich rule): supernet with stochastic depth on the modules outside the smallest
subnet, the smallest subnet and one random middle subnet, hard gates:
    loss = CTC(sup) + s * (CTC(min) + CTC(mid))
s is constant or focal (1 - exp(-L)). Each budget has its own output layer. With
`distill_weight` w > 0 each stage-2 subnet's CTC(sub) becomes CTC(sub) + w * KD(sup || sub),
the per-frame KL divergence from the supernet's output distribution of the same step
(detached): in-place distillation, as in BigNAS / once-for-all networks. Not in stage 1,
where the supernet first outputs only blanks (a teacher that holds the shared weights on the
blank plateau).
The losses and the selector's masks come from objective.py, the optimiser and its
learning-rate schedule from schedule.py, checkpoints and metrics from trainer_checkpoints.py;
train.py holds the loop and the `orthoasr train` command.

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

import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .backend import set_backend
from .devices import resolve_device
from .distributed import all_reduce_sum, average_gradients, broadcast, init_world
from .graphs import StepGraphs
from .kernels.grads_in_place import accumulate_in_place, marked
from .model import ConformerSupernet, block_layout
from .objective import (
    SubnetSelector,
    aux_scale,
    check_feasible_budgets,
    ctc_loss,
    distill_loss,
)
from .ortho import (
    freeze_masks,
    gamma_for,
    temperature,
)
from .run_config import RunConfig
from .schedule import lr_factor, make_optimizer, set_learning_rates
from .trainer_checkpoints import TrainerCheckpoints, load_fixed_gates
from .units import subnet_cost, unit_costs


class _Joint(nn.Module):
    """Model and selector under one DistributedDataParallel: its forward runs the step's
    loss computation (a closure over both), so one forward and one backward per step."""

    def __init__(self, model: nn.Module, selector: nn.Module):
        super().__init__()
        self.model, self.selector = model, selector

    def forward(self, compute):
        return compute()


class Trainer(TrainerCheckpoints):
    """State of one run: model, selector, optimiser, schedules, frozen masks, metrics (its
    checkpoints and metrics rows: TrainerCheckpoints)."""

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
        # metrics.csv's rows to keep (after the step: a resumed run's abandoned rows) when
        # this run first writes to it; None once done. Not earlier: a run that fails while
        # starting leaves the file as it was.
        self.metrics_kept_until: int | None = 0
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
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = run.cudnn_benchmark
        # one CUDA graph per (shapes, stage, drawn budget) of the training step (issue 14)
        use_graphs = run.cuda_graphs and self.device.type == "cuda"
        if use_graphs and self.ddp is not None:
            raise ValueError("cuda_graphs=true needs grad_sync=flat (DistributedDataParallel's "
                             "hooks are not captured); got grad_sync=ddp")
        if use_graphs and run.shape_classes == 0:
            raise ValueError("cuda_graphs=true needs shape_classes > 0 (one graph per batch "
                             "shape: without classes every batch would be a new capture)")
        self.optimizer = make_optimizer(self.model, self.selector, run, self.device,
                                        capturable=use_graphs)
        # the encoder blocks' weight gradients added in place by the kernels (run config
        # `grads_in_place`): every block parameter gets a gradient at every step of either
        # stage (device gates: a dead unit's is 0, not None), so a .grad kept and zeroed
        # leaves the optimiser's steps as they were; not with fixed_gates, whose left-out
        # modules get none
        self.in_place_grads: list[torch.Tensor] = []
        if run.grads_in_place and self.ddp is None and not run.fixed_gates:
            self.in_place_grads = accumulate_in_place(self.model.blocks.parameters())
        self.returned_grad_params = [p for p in self.trained_parameters if not marked(p)]
        self.step_graphs = StepGraphs(self.graph_state, self.device) if use_graphs else None
        self.gamma = run.gamma or gamma_for(run.tau0, run.tau_end, max(1, run.stage1_steps))
        self.tau = torch.full((), run.tau0, device=self.device)
        self.step_tensor = torch.zeros((), device=self.device)   # the step, for schedules
        self.budget_rng = random.Random(run.seed)
        self.frozen_masks = None            # (M, N) float on the device after stage 1
        self.fixed = None                   # fixed_gates: (masks (M, N) on the device, index)
        self.fixed_skip = frozenset()       # its modules whose units are all off
        self.fixed_full = frozenset()       # ... and all on
        if run.fixed_gates:
            masks, index = load_fixed_gates(run.fixed_gates, self.cfg)
            self.fixed = (masks.to(self.device), index)
            self.fixed_skip = self.model.dead_modules(masks[index])
            self.fixed_full = self.model.full_modules(masks[index])
        self.step, self.epoch, self.batch_index = 0, 0, 0
        if self.world.distributed:
            self.reseed_rank()
        self.bf16 = run.bf16 and self.device.type == "cuda"
        self.pending: list[dict] = []
        self.history: list[dict] = []
        self.last_flush = time.perf_counter()
        self.last_save = time.monotonic()
        self.stop_signal: int | None = None     # set by train.py's STOP_SIGNALS handler
        self.stopped_by: str | None = None      # its name once the loop stopped for it
        # stage 2's stochastic-depth tables (prepare_stage2): modules, module of each unit,
        # modules with no unit in the smallest subnet
        self.num_modules = 0
        self.module_of_unit: torch.Tensor | None = None
        self.droppable_modules: torch.Tensor | None = None
        self.schedule_changes: list[dict] = []  # {"step", "changes"} of each resume that
                                                # changed the optimiser schedule
        self.data_changes: list[dict] = []      # {"step", "train_manifest", "sha256"} of
                                                # each resume on a changed manifest
        from .data import LogMel, SpecAugment
        self.logmel = LogMel.of_model(self.cfg).to(self.device)
        self.spec_augment = SpecAugment().to(self.device) if run.spec_augment else None

    def reseed_rank(self) -> None:
        """Per-rank random streams (dropout, SpecAugment, stochastic depth) from (seed, rank,
        step); the budget draws (budget_rng) stay the same on every rank."""
        torch.manual_seed(self.run.seed + 1_000_003 * self.world.rank + self.step)

    def graph_state(self) -> list[torch.Tensor]:
        """What a step changes in place: parameters and optimiser state (restored after the
        warm-up runs that precede a capture)."""
        state = [p.data for p in self.trained_parameters]
        for per_param in self.optimizer.state.values():
            state += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
        return state

    # ------------------------------------------------------------------ one step
    def features(self, waves, wave_lengths):
        with torch.no_grad():
            feats, lengths = self.logmel(waves, wave_lengths)
            if self.spec_augment is not None:
                feats = self.spec_augment(feats, lengths)
        return feats, lengths

    @property
    def frozen_masks(self) -> torch.Tensor | None:
        """(M, N) hard masks on the device after stage 1, else None."""
        return self._frozen_masks

    @frozen_masks.setter
    def frozen_masks(self, masks: torch.Tensor | None) -> None:
        # per subnet, the modules with every unit off, left out of its passes (no launches),
        # and those with every unit on, run ungated (the dense path, whose backward products
        # go to cuBLAS); read on the host once, when the masks are set
        self._frozen_masks = masks
        rows = [] if masks is None else masks.detach().cpu()
        self.frozen_skips = None if masks is None else [
            self.model.dead_modules(row) for row in rows]
        self.frozen_full = None if masks is None else [
            self.model.full_modules(row) for row in rows]

    def draw_budget(self) -> int | None:
        """The index of the budget a step trains beside the supernet (stage 1) or beside the
        supernet and the smallest subnet (stage 2), drawn on the host from budget_rng (the
        same on every rank) before the step; None when there is nothing to draw. Drawn
        outside `losses` so that a step is a function of its inputs (a CUDA graph per draw)."""
        n = len(self.cfg.budgets)
        if self.frozen_masks is None:
            return self.budget_rng.randrange(n - 1) if n > 1 else None
        return self.budget_rng.randrange(1, n - 1) if n > 2 else None

    def losses(self, feats, lengths, targets, target_lengths, frames=None, *,
               drawn: int | None) -> tuple[torch.Tensor, dict]:
        """The step's loss and its parts (0-d device tensors); every length on the device.
        `frames` divides the CTC sums (default: this batch's frames); `drawn`: draw_budget()'s
        index for this step."""
        run, budgets = self.run, self.cfg.budgets
        zero = torch.zeros((), device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16)
        with autocast:              # the frontend is shared: once for every subnet below
            x, out_lengths = self.model.embed(feats, lengths)

        teacher = None              # the supernet's log-probabilities of this step

        def ctc(gates, head, skip=frozenset(), full=frozenset()):
            nonlocal teacher
            with autocast:
                log_probs = self.model.encode(x, out_lengths, gates, head, skip, full)
            loss = ctc_loss(log_probs, out_lengths, targets, target_lengths, frames)
            if teacher is None:                     # the supernet: always the first call
                teacher = log_probs
            elif run.distill_weight > 0 and self.frozen_masks is not None:
                # a stage-2 subnet: in-place distillation
                loss = loss + run.distill_weight * distill_loss(
                    log_probs, teacher, out_lengths, frames)
            return loss

        if self.fixed is not None:              # fixed_gates: one subnet, trained alone
            masks, b = self.fixed
            loss = ctc(masks[b], b, self.fixed_skip, self.fixed_full)
            return loss, {"loss": loss.detach(), "loss_sup": loss.detach(),
                          "loss_sub": zero, "penalty": zero, "budget": budgets[b]}
        if self.frozen_masks is None:                                   # stage 1
            selected = self.selector(self.tau)
            loss_sub, penalty, budget = zero, zero, budgets[-1]
            if len(budgets) == 1:
                loss_sup = ctc(None, 0)
            else:
                b = drawn
                budget = budgets[b]
                if run.pair_batch:          # both passes as one batch of twice the sequences
                    with autocast:
                        both = self.model.encode_pair(x, out_lengths, selected.masks[b], b)
                    loss_sup, loss_sub = (ctc_loss(log_probs, out_lengths, targets,
                                                   target_lengths, frames) for log_probs in both)
                else:
                    loss_sup = ctc(None, len(budgets) - 1)
                    loss_sub = ctc(selected.masks[b], b)
                penalty = self.selector.penalty_scale(selected.penalty[b], self.step_tensor)
            loss = loss_sup + aux_scale(run, loss_sub) * loss_sub + penalty
        else:                                                           # stage 2
            loss_sup = ctc(self.supernet_gates(), len(budgets) - 1, frozenset(),
                           self.supernet_full())
            loss_sub, penalty, budget = zero, zero, budgets[-1]
            if len(budgets) > 1:
                loss_sub = ctc(self.frozen_masks[0], 0, self.frozen_skips[0],
                               self.frozen_full[0])
                budget = budgets[0]
            if len(budgets) > 2:
                b = drawn
                loss_mid = ctc(self.frozen_masks[b], b, self.frozen_skips[b],
                               self.frozen_full[b])
                loss_sub = loss_sub + loss_mid
                budget = budgets[b]
            loss = loss_sup + aux_scale(run, loss_sub) * loss_sub
        return loss, {"loss": loss.detach(), "loss_sup": loss_sup.detach(),
                      "loss_sub": loss_sub.detach(), "penalty": penalty.detach(),
                      "budget": budget}

    def supernet_full(self) -> frozenset[tuple[int, str]]:
        """The supernet pass's modules that run ungated: all units on in the largest subnet
        and never dropped by stochastic depth (each has a unit in the smallest subnet)."""
        return self.frozen_full[-1] - self.frozen_skips[0]

    def supernet_gates(self) -> torch.Tensor:
        """Largest subnet's gates with stochastic depth: each module with no unit in the
        smallest subnet is dropped with probability `stochastic_depth` (drawn on device)."""
        keep = torch.rand(self.num_modules, device=self.device) >= self.run.stochastic_depth
        keep = keep | ~self.droppable_modules
        return self.frozen_masks[-1] * keep[self.module_of_unit].float()

    def train_step(self, batch, on_device=None) -> None:
        """One optimisation step on `batch` (host tensors; `on_device`: the same already on
        the device, as `prefetch_to_device` gives them, else copied here): the schedule's
        values go to the device state (learning rates, tau, the step), then `step_body`
        runs, eagerly or as the replay of the CUDA graph captured for this (shapes, stage,
        drawn budget)."""
        waves, wave_lengths, targets, target_lengths = batch
        audio_s = float(wave_lengths.sum()) / self.logmel.sample_rate   # host tensor: no sync
        factor = lr_factor(self.step, self.run)
        set_learning_rates(self.optimizer, factor)
        tau = temperature(self.step, self.run.tau0, self.gamma, self.run.tau_min)
        self.tau.fill_(tau)
        self.step_tensor.fill_(self.step)
        drawn = self.draw_budget()
        stage = 1 if self.frozen_masks is None else 2
        inputs = list(batch if on_device is None else on_device)
        if self.step_graphs is not None:          # the batch straight into the graph's
            parts = self.step_graphs(inputs, key=(stage, drawn),
                                     body=lambda *static: self.step_body(*static, drawn=drawn))
        else:
            parts = self.step_body(*(t.to(self.device, non_blocking=True) for t in inputs),
                                   drawn=drawn)
        self.pending.append({**parts, "step": self.step + 1, "stage": stage, "tau": tau,
                             "lr": self.run.lr * factor, "utts": waves.shape[0],
                             "audio_s": audio_s})
        self.step += 1

    def step_body(self, waves, wave_lengths, targets, target_lengths, *,
                  drawn: int | None) -> dict:
        """Features, every subnet's loss, backward, gradient averaging and clipping, the
        optimiser step: device tensors in, the loss parts (0-d device tensors) out. It reads
        the schedule from device state only (the optimiser's learning-rate tensors when
        `cuda_graphs` is on, self.tau, self.step_tensor) and reads nothing back to the host,
        so that one capture per (shapes, stage, drawn) replays every later step of them."""
        feats, lengths = self.features(waves, wave_lengths)
        frames = None
        if self.world.distributed:
            # the ranks' gradients are averaged: dividing each rank's CTC sum by the mean
            # frames per rank makes the average the gradient of (sum over ranks) / frames
            frames = (self.logmel.frame_lengths(wave_lengths) // 4).sum().float()
            frames = all_reduce_sum(frames, self.world) / self.world.size

        def compute():
            return self.losses(feats, lengths, targets, target_lengths, frames, drawn=drawn)

        loss, parts = compute() if self.ddp is None else self.ddp(compute)
        # zeroed in place: the kernels add to the .grad the forward found (grads_in_place);
        # every other gradient set to None, as zero_grad(set_to_none=True) would
        if self.in_place_grads:
            torch._foreach_zero_(self.in_place_grads)
        for p in self.returned_grad_params:
            p.grad = None
        loss.backward()
        if self.ddp is None:
            average_gradients(self.trained_parameters, self.world)
        # the model's gradient only: the scores' (penalty-dominated) gradient must not
        # shrink it; Adam normalises the scores' steps anyway
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.grad_clip)
        self.optimizer.step()
        return parts

    # ------------------------------------------------------------------ freeze
    def freeze(self) -> None:
        """End of stage 1: hard nested masks from the current OrthoSoftmax probabilities
        (with fixed_gates: the masks of the run they came from, for eval and export)."""
        if self.fixed is not None:
            self.frozen_masks = self.fixed[0]
            return
        with torch.no_grad():
            self.tau.fill_(temperature(self.step, self.run.tau0, self.gamma, self.run.tau_min))
            selected = self.selector(self.tau)
        probs = selected.probs
        masks = freeze_masks(probs, self.cfg, self.cfg.criterion)
        self.frozen_masks = broadcast(masks.to(self.device), self.world)   # rank 0's
        masks = self.frozen_masks.cpu()
        if not self.world.is_main:
            return
        # how far the rows are from distinct one-hots: the ranking below takes each row's
        # best unit not yet taken, so a duplicated row falls back on its second choice
        for b, budget in enumerate(self.cfg.budgets):
            k = int(selected.k[b])
            distinct = probs[:k].argmax(dim=1).unique().numel()
            print(f"selector at freeze, budget {budget}: penalty "
                  f"{float(selected.penalty[b]):.3f}, the first {k} rows' argmaxes hit "
                  f"{distinct} distinct units, mean row maximum "
                  f"{float(probs[:k].max(dim=1).values.mean()):.3f}")
        for b, budget in enumerate(self.cfg.budgets):
            kept = int(masks[b].sum())
            cost = subnet_cost(self.cfg, masks[b], self.cfg.criterion)
            _, _, total = unit_costs(self.cfg, self.cfg.criterion)
            print(f"frozen subnet {b}: budget {budget}, {kept}/{masks.shape[1]} units, "
                  f"{self.cfg.criterion} {cost / total:.3f} of the supernet")
            if kept == 0:
                print(f"warning: the subnet of budget {budget} kept no unit")

    def prepare_stage2(self) -> None:
        """Device tables for stochastic depth (module of each unit, droppable modules: those
        the smallest subnet leaves out)."""
        layout = block_layout(self.cfg)
        per_block = [m for m, (_, start, end) in enumerate(layout) for _ in range(start, end)]
        module_of_unit = torch.tensor([layer * len(layout) + m
                                       for layer in range(self.cfg.num_layers)
                                       for m in per_block])
        droppable = torch.tensor([(layer, kind) in self.frozen_skips[0]
                                  for layer in range(self.cfg.num_layers)
                                  for kind, _, _ in layout])
        self.num_modules = droppable.numel()
        self.module_of_unit = module_of_unit.to(self.device)
        self.droppable_modules = droppable.to(self.device)
