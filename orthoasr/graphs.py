"""CUDA-graph helpers: capture a function once and replay it, and run a function with any
host synchronisation turned into an error (what a capturable step must never do)."""

from __future__ import annotations

import torch


def capture_graph(fn, warmup: int = 3):
    """Warm fn up on a side stream (`warmup` calls: compilation, allocator), then capture one
    call in a CUDA graph. Returns (graph, outputs of the captured call); graph.replay() reruns
    it in place, writing the same output tensors."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def call_without_sync(fn):
    """fn() with torch's sync debug mode set to raise on any host synchronisation."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
