"""A training checkpoint, loaded and ready to use: `load_trained(path) -> Trained` (its run
config, supernet in eval mode, tokenizer, frozen masks, step and manifest paths), for eval,
export and `Recognizer.from_checkpoint`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import TRAINING_KIND, load_checkpoint
from .devices import resolve_device
from .model import ConformerSupernet
from .run_config import RunConfig


@dataclass
class Trained:
    """What a training checkpoint holds, ready to use."""

    run: RunConfig
    model: ConformerSupernet
    tokenizer_bytes: bytes
    masks: torch.Tensor | None      # (M, N) frozen 0/1 gates; None before the end of stage 1
    step: int
    manifest_paths: dict            # {"dev": absolute path at training time, ...}

    @property
    def num_subnets(self) -> int:
        return 0 if self.masks is None else self.masks.shape[0]

    def subnet_gates(self, index: int) -> torch.Tensor:
        if self.masks is None:
            raise ValueError(f"the checkpoint (step {self.step}) is from stage 1: no frozen "
                             "subnets yet")
        return self.masks[index]

    def check_trained(self, index: int, given: str, path: str | Path) -> None:
        """ValueError naming `given` (what picked subnet `index` of checkpoint `path`) unless
        the run trained that subnet: a fixed_gates run trains one, its other masks being
        the source run's, with weights and heads it never trained."""
        alone = self.run.fixed_subnet
        if alone is not None and index != alone:
            raise ValueError(f"{given}: the run of {path} trained only the subnet of budget "
                             f"{self.run.model.budgets[alone]:g} (fixed_gates "
                             f"{self.run.fixed_gates}); the other subnets' weights and heads "
                             "are untrained")

    def tokenizer(self):
        from .data import Tokenizer
        return Tokenizer.from_bytes(self.tokenizer_bytes)


def load_trained(path: str | Path, device="cpu") -> Trained:
    """The training checkpoint at `path`, its supernet in eval mode on `device` ('cpu',
    'cuda', 'cuda:N', 'auto' or a torch.device; one this machine lacks is a ValueError
    naming it, as load_subnet's)."""
    # checked first: torch.load's error for a missing GPU would read as a corrupt file
    device = resolve_device(device)
    state = load_checkpoint(path, map_location=device, kind=TRAINING_KIND,
                            needs=("model", "tokenizer"))
    run = RunConfig.from_dict(state["run_config"])
    model = ConformerSupernet(run.model).to(device)
    model.load_state_dict(state["model"])
    model.tokenizer_bytes = state["tokenizer"]
    masks = state["frozen_masks"]
    return Trained(run, model.eval(), state["tokenizer"],
                   None if masks is None else masks.float().cpu(), state["step"],
                   state.get("manifest_paths", {}))


__all__ = ["Trained", "load_trained"]
