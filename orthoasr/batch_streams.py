"""An inference batch split over concurrent CUDA streams inside a graph capture.

A Conformer block is a chain: every kernel waits for the one before it, and each leaves part
of the GPU idle. Its LayerNorms are bound by memory bandwidth, its GEMMs mostly by the
tensor cores, and the first and last wave of every launch run on part of the SMs only. When
the batch is split into groups of sequences, each group's chain captured on its own stream,
the groups' kernels run side by side at replay and fill those gaps. Every row of the output
depends on its own sequence alone, so the values are the unsplit pass's: the same kernels,
on fewer rows. (Paper encoder, dense inference, H200, two groups: 2.74 -> 2.47-2.50 ms at
B32xT250; 4.04 -> 3.42 ms at B16xT750; bench/NOTES.md, session 41. The first two captures
made after an eager pass of cuBLAS-based PyTorch modules replayed ~4% slower.)

Used by `run_blocks(batch_streams=)` under a capture without grad; outside a capture the
split would only add host time, so it is not made there.
"""

from __future__ import annotations

import torch

from .kernels.common import side_stream


def check_groups(batch_streams) -> None:
    """A ValueError naming `batch_streams` unless it is an int >= 1."""
    if isinstance(batch_streams, bool) or not isinstance(batch_streams, int) or \
            batch_streams < 1:
        raise ValueError(f"batch_streams must be an int >= 1, got {batch_streams!r}")


def over_streams(x: torch.Tensor, lengths: torch.Tensor, groups: int, run) -> torch.Tensor:
    """run(x[part], lengths[part]) for `groups` contiguous groups of x's sequences (the
    first on the current stream, each other on a side stream forked from it and joined back
    to it) -> the groups' outputs concatenated along the batch: (B, ...), as run(x,
    lengths) would give. Each group holds at least one sequence (groups <= B)."""
    B = x.shape[0]
    if not 1 <= groups <= B:
        raise ValueError(f"over_streams: groups={groups} needs 1 <= groups <= B={B}")
    bounds = [B * i // groups for i in range(groups + 1)]
    current = torch.cuda.current_stream(x.device)
    # kept streams (a graph captured on them replays on streams of its own; these only
    # carry the capture)
    side = [side_stream(x.device, ("batch group", i), avoid=(current,))
            for i in range(1, groups)]
    for stream in side:
        stream.wait_stream(current)
    outputs = []
    for i, stream in enumerate([current] + side):
        part = slice(bounds[i], bounds[i + 1])
        with torch.cuda.stream(stream):
            outputs.append(run(x[part], lengths[part]))
    for stream in side:
        current.wait_stream(stream)
    return torch.cat(outputs)
