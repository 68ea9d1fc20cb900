"""CUDA-graph helpers: capture a function once and replay it; run a function with any host
synchronisation turned into an error (what a capturable step must never do);
`GraphedEncoder`, the supernet's encoder under given gates replayed from graphs, one per
padded shape class (inference: orthoasr.Recognizer, orthoasr eval), and `GraphedSubnet`, an
exported subnet's the same way (the Recognizer); `StepGraphs`, a whole
training step replayed from graphs, one per (shape class, stage, drawn budget)."""

from __future__ import annotations

import contextlib
import gc

import torch

from .batch_streams import check_groups
from .conditional import check_available
from .kernels.common import FrozenOperands
from .nn.common import check_module_inputs


@contextlib.contextmanager
def capturing(graph, pool=None):
    """`torch.cuda.graph(graph, pool=pool)` with Python's garbage collector run before and
    paused during the capture: torch no longer collects there, and a collection inside the
    capture that frees an unreachable CUDA graph (a finished run's, say) destroys it while
    the stream captures, which invalidates the capture. The capture is thread-local: the
    DataLoader's pin-memory thread queries CUDA events while it pins the next batches, and
    in the default global mode such a call from any thread invalidates the capture. (Issue
    17's individually trained subnets failed their first capture on the H200 in global mode
    and ran through in thread-local mode, 2026-11-30; the thread is our reading.)"""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            yield
    finally:
        if enabled:
            gc.enable()


def capture_graph(fn, warmup: int = 3, pool=None):
    """Warm fn up on a side stream (`warmup` calls: compilation, allocator), then capture one
    call in a CUDA graph (in memory pool `pool` if given, shared with other graphs that are
    never replayed at once). Returns (graph, outputs of the captured call); graph.replay()
    reruns it in place, writing the same output tensors."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with capturing(graph, pool):
        out = fn()
    return graph, out


class PaddedGraphs:
    """An encoder function `(x (B, T', D), lengths (B,), gates or None) -> (B, T', V)`
    called with (B, T') padded up to a shape class: B to the next power of two, T' to a
    multiple of `frame_step`. Padding rows repeat the first utterance (no empty rows) and
    padding frames are zeros beyond the lengths, so the real rows' outputs are those of the
    unpadded call (the encoders ignore frames past each length). On CUDA each (class, the
    caller's key, autocast dtype) is captured once as a CUDA graph, all in one memory pool,
    and replayed with the inputs copied into its buffers; on the CPU, or with
    use_graphs=False, the call runs eagerly and unpadded (a batch of 5 padded to 8 would be
    8/5 of the work, for nothing). A shape whose capture fails (a host
    sync on some backend) runs eagerly from then on. Outputs are copies: the next replay rewrites
    the graph's own. The encoders: GraphedEncoder (a supernet's), GraphedSubnet (an
    exported subnet's)."""

    def __init__(self, use_graphs: bool | None = None, frame_step: int = 32):
        if isinstance(frame_step, bool) or not isinstance(frame_step, int) or frame_step < 1:
            raise ValueError(f"frame_step must be an int >= 1, got {frame_step!r}")
        self.use_graphs, self.frame_step = use_graphs, frame_step
        self.graphs: dict[tuple, tuple] = {}     # key -> (graph, inputs, output) or None
        self.pool = None

    def shape_class(self, batch: int, frames: int) -> tuple[int, int]:
        """(B, T') -> the padded (B, T')."""
        padded_batch = 1 << max(0, batch - 1).bit_length()
        return padded_batch, -(-frames // self.frame_step) * self.frame_step

    def _padded_call(self, x: torch.Tensor, lengths: torch.Tensor,
                     gates: torch.Tensor | None, key: tuple, eager, captured) -> torch.Tensor:
        """A replay of captured's graph on the padded inputs (captured: the encoder in the
        form a graph holds), or eager(x, lengths, gates) without graphs. x (B >= 1, T', D)."""
        B, T = x.shape[:2]
        PB, PT = self.shape_class(B, T)
        use_graphs = x.is_cuda if self.use_graphs is None else self.use_graphs
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") \
            else None
        key = (PB, PT, x.dtype, autocast, *key)
        if use_graphs and key not in self.graphs:   # a new class: captured with these inputs
            self.graphs[key] = self._capture(captured, *_padded(x, lengths, PB, PT), gates)
        if not use_graphs or self.graphs[key] is None:
            return eager(x, lengths, gates)      # unpadded: padding pays only in a graph
        graph, (x_in, lengths_in, gates_in), out = self.graphs[key]
        _pad_into(x_in, lengths_in, x, lengths)          # straight into the graph's inputs
        if gates_in is not None:
            gates_in.copy_(gates)
        self._before_replay()
        graph.replay()
        return out[:B, :T].clone()

    def _before_replay(self) -> None:
        """What a replay needs done first (GraphedEncoder: its weights' copies refreshed)."""

    def _after_capture(self) -> None:
        """What a capture leaves to do (GraphedEncoder: its weights' copies handed over)."""

    def _capture(self, encode, x, lengths, gates):
        inputs = (x, lengths, None if gates is None else gates.clone())    # the graph's own
        # autocast's cache off: warmed up inside the caller's autocast, a weight's cast would
        # be made once, cached, and read by the graph, which casts it no more; the cache is
        # freed when that autocast exits, so later replays read freed memory (stale or
        # garbage weights, an illegal address once the allocator gives the memory back)
        no_cast_cache = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                       enabled=torch.is_autocast_enabled("cuda"),
                                       cache_enabled=False)
        try:
            with no_cast_cache:
                graph, out = capture_graph(lambda: encode(*inputs), pool=self.pool)
        except RuntimeError as err:                # e.g. a backend that syncs with the host
            print(f"note: encoder runs eagerly for shape {tuple(x.shape)}: its CUDA-graph "
                  f"capture failed ({err})")
            return None
        self.pool = graph.pool()
        self._after_capture()
        return graph, inputs, out


class GraphedEncoder(PaddedGraphs):
    """`model.encode(x, lengths, gates, head, skip)` of a ConformerSupernet, padded to shape
    classes and replayed from CUDA graphs as PaddedGraphs says; a graph for each (class,
    head, gates given, skip, autocast dtype). An empty batch (B = 0) runs the model's own
    call, which gives (0, T', V).
    frozen_weights: keep the weights' compute-dtype copies between calls (FrozenOperands:
    written again only where a weight was replaced or changed in place by a PyTorch call)
    instead of copying them in every pass and replay; for a model that nothing trains while
    this encoder is in use (a loaded checkpoint's).
    skip_dead_blocks: in the graphs, a block whose gates are all 0 at a replay runs only its
    final norm, decided on the GPU (`run_blocks`; needs cuda-bindings): for gates that
    change between calls without a capture of their own (a graph keys only on whether gates
    are given); where the dead modules are known on the host, `skip` costs nothing at all.
    batch_streams: in the graphs, the padded batch split into up to this many groups of
    sequences whose blocks run on concurrent streams (`run_blocks`; the same output, ~5-10%
    less GPU time at 2 on the H200); 1 runs the batch as one chain.
    """

    def __init__(self, model, use_graphs: bool | None = None, frame_step: int = 32,
                 frozen_weights: bool = False, skip_dead_blocks: bool = False,
                 batch_streams: int = 2):
        super().__init__(use_graphs, frame_step)
        self.model = model
        self.skip_dead_blocks = skip_dead_blocks
        check_groups(batch_streams)
        self.batch_streams = batch_streams
        if skip_dead_blocks and torch.cuda.is_available() and use_graphs is not False:
            check_available()        # what is missing, said now rather than at a capture
        self.operands = FrozenOperands() if frozen_weights else None

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor,
                 gates: torch.Tensor | None = None, head: int = -1,
                 skip: frozenset[tuple[int, str]] = frozenset()) -> torch.Tensor:
        """x (B, T', D), lengths (B,) -> log_probs (B, T', V) float32."""
        # checked before the padding: past it, lengths up to the padded T' would pass, and a
        # replay copies gates into the graph's without the model's checks
        check_module_inputs(x, lengths, None, self.model.cfg.d_model, 0, [])
        self.model._check_gates(x, gates, head)
        if x.shape[0] == 0:  # no first row to pad with, nothing to replay: the model's empty output
            return self.model.encode(x, lengths, gates, head, skip)

        def eager(x, lengths, gates):
            return self.model.encode(x, lengths, gates, head, skip,
                                     frozen_operands=self.operands)

        def captured(x, lengths, gates):
            return self.model.encode(x, lengths, gates, head, skip,
                                     frozen_operands=self.operands,
                                     skip_dead_blocks=self.skip_dead_blocks,
                                     batch_streams=self.batch_streams)
        key = (head, gates is not None, frozenset(skip))
        return self._padded_call(x, lengths, gates, key, eager, captured)

    def _before_replay(self) -> None:
        if self.operands is not None:      # the weights the graph reads, kept current
            self.operands.refresh(self.model.matmul_weights)

    def _after_capture(self) -> None:
        if self.operands is not None:     # made on capture_graph's warm-up stream
            self.operands.record_stream(torch.cuda.current_stream())


class GraphedSubnet(PaddedGraphs):
    """`sub.encode(x, lengths)` of an exported subnet (orthoasr.export.CompactConformer),
    padded to shape classes and replayed from CUDA graphs as PaddedGraphs says; a graph
    for each (class, autocast dtype). Eager PyTorch ops launch one kernel each, so at
    inference sizes the host is the bound: a replay launches them all at once."""

    def __init__(self, sub, use_graphs: bool | None = None, frame_step: int = 32):
        super().__init__(use_graphs, frame_step)
        self.sub = sub

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T', D), lengths (B,) -> log_probs (B, T', V) float32."""
        check_module_inputs(x, lengths, None, self.sub.cfg.d_model, 0, [])
        if x.shape[0] == 0:
            return self.sub.encode(x, lengths)

        def encode(x, lengths, gates):
            return self.sub.encode(x, lengths)
        return self._padded_call(x, lengths, None, (), encode, encode)


def _padded(x: torch.Tensor, lengths: torch.Tensor, PB: int, PT: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, D), lengths (B,) padded as _pad_into pads them: (PB, PT, D), (PB,)."""
    padded, padded_lengths = x.new_empty(PB, PT, x.shape[2]), lengths.new_empty(PB)
    _pad_into(padded, padded_lengths, x, lengths)
    return padded, padded_lengths


def _pad_into(x_out: torch.Tensor, lengths_out: torch.Tensor, x: torch.Tensor,
              lengths: torch.Tensor) -> None:
    """x (B, T, D), lengths (B,) into x_out (PB, PT, D), lengths_out (PB,): rows past B
    repeat row 0, frames past T are zeros."""
    B, T = x.shape[:2]
    rows = torch.cat([torch.arange(B, device=x.device),
                      torch.zeros(x_out.shape[0] - B, dtype=torch.long, device=x.device)])
    x_out[:, :T] = x[rows]
    x_out[:, T:] = 0
    lengths_out.copy_(lengths[rows])


def call_without_sync(fn):
    """fn() with torch's sync debug mode set to raise on any host synchronisation."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)


class StepGraphs:
    """A training step `body(*inputs) -> dict` captured as one CUDA graph per (key, input
    shapes and dtypes) and replayed: `step_graphs(inputs, key=..., body=...)`. The inputs
    may be host tensors (pinned: copied straight into the graph's inputs on `device`).

    The first call of a new key warms the body up on a side stream (kernel compilation,
    allocator, optimiser state) on copies of the inputs, puts back what those warm-up steps
    changed (`state()`: parameters and optimiser state, restored from a snapshot; state
    created by the warm-up, the optimiser's first moments, zeroed as a fresh optimiser has
    it), then captures one call. Every call copies its inputs into the graph's static
    inputs, replays, and returns the body's outputs: tensors cloned (the next replay
    overwrites them), anything else as captured. All graphs share one memory pool: they are
    never replayed at once. Random ops draw new numbers at each replay (PyTorch's CUDA
    generator is graph-safe); values the body reads from the host are frozen at capture,
    so a body must take its schedule from device tensors."""

    def __init__(self, state, device, warmup: int = 2):
        self.state, self.device, self.warmup = state, device, warmup
        self.graphs: dict = {}
        self.pool = None

    def __call__(self, inputs: list[torch.Tensor], *, key, body) -> dict:
        full_key = (key, *((tuple(t.shape), t.dtype) for t in inputs))
        if full_key not in self.graphs:
            self.graphs[full_key] = self._capture(inputs, body)
        graph, static_inputs, outputs = self.graphs[full_key]
        for static, given in zip(static_inputs, inputs, strict=True):
            static.copy_(given, non_blocking=True)
        graph.replay()
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}

    def release(self) -> None:
        """Drop every graph and their memory pool now (the end of a run), not whenever the
        garbage collector meets them: destroyed during another capture in this process, a
        graph would invalidate that capture. A later call captures anew."""
        self.graphs.clear()
        self.pool = None

    def _capture(self, inputs, body):
        static_inputs = [t.to(self.device, copy=True) for t in inputs]
        before = {t.data_ptr(): t.clone() for t in self.state()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                body(*static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.no_grad():
            for t in self.state():
                saved = before.get(t.data_ptr())
                t.copy_(saved) if saved is not None else t.zero_()
        graph = torch.cuda.CUDAGraph()
        with capturing(graph, self.pool):
            outputs = body(*static_inputs)
        self.pool = graph.pool()
        return graph, static_inputs, outputs

