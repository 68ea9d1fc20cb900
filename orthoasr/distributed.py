"""Multi-process training under torchrun: process group set-up and the few collectives the
training loop needs. One process per GPU (NCCL) or per CPU worker (gloo); a plain
`python -m orthoasr train` is a world of one and calls no collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()   # one process, no collectives


def init_world(device_type: str) -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a world of one
    without them); joins the process group: NCCL for CUDA, gloo for the CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    if world.distributed and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        _import_group_defaults()
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return world


def _import_group_defaults() -> None:
    """Import torch.distributed.nn.functional while no process group exists. Its collectives
    take `group=group.WORLD` as a default argument, bound when the module is imported;
    DistributedDataParallel's constructor imports it (through torch._dynamo). Imported after
    the group was made, those defaults keep the group alive past destroy_process_group, and
    gloo's threads with it, until interpreter exit, where tearing them down could abort a
    rank ("terminate called without an active exception"). Imported first, they hold None."""
    import torch.distributed.nn.functional  # noqa: F401


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks, in place (no-op in a world of one). Asynchronous on the GPU."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: list[torch.Tensor], world: World) -> None:
    """Average the parameters' gradients over ranks in place: the gradients of each dtype are
    copied into one flat buffer, all-reduced at once and copied back (a few launches, where
    per-tensor all-reduces would cost one each). Every rank must hold gradients for the same
    parameters in the same order: the step's stage and budget draw, which decide the unused
    heads, are the same on every rank. A gradient that is None stays None."""
    if not world.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world.size)
        parts = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [part.view(g.shape) for part, g in zip(parts, grads)])


def broadcast(tensor: torch.Tensor, world: World, src: int = 0) -> torch.Tensor:
    """Rank src's tensor on every rank, in place."""
    if world.distributed:
        dist.broadcast(tensor, src)
    return tensor


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


class FailureShared:
    """Around work that rank 0 alone does while the other ranks would wait for it (its
    checks and lock of the work dir): on leaving, the ranks agree on whether it failed (one
    all-reduce, at start-up only). The rank that failed goes on raising its error, the others
    RuntimeError(`message`): else they waited for the rank that ended in their next
    collective, where a signal's Python handler cannot run (torchrun kills them 30 s after
    its SIGTERM). Nothing in a world of one."""

    def __init__(self, world: World, device_type: str, message: str):
        self.world, self.message = world, message
        self.device = torch.device("cuda", world.local_rank) if device_type == "cuda" \
            else torch.device("cpu")

    def __enter__(self) -> FailureShared:
        return self

    def __exit__(self, kind, err, traceback) -> None:
        if not self.world.distributed:
            return
        failed = torch.tensor([float(kind is not None)], device=self.device)
        if float(all_reduce_sum(failed, self.world)) > 0 and kind is None:
            raise RuntimeError(self.message)


def shutdown(world: World) -> None:
    """Leave the process group once every rank is done with its collectives."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def left_on_error(world: World) -> Iterator[None]:
    """Within: an exception leaves the process group before it propagates, so that a caller
    that catches it (a notebook) can join a new one, and no gloo thread is left for
    interpreter exit to tear down. No barrier (shutdown waits at one): the other ranks may
    never reach it."""
    try:
        yield
    except BaseException:
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()
        raise
