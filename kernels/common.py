"""Helpers the kernel files share: whether Triton runs under its CPU interpreter, the
`tl.dot` input precision for a dtype, weights as matmul operands (a module's pair in one
launch, or a whole encoder's at once), the valid-frame mask of padded batches, and zeroed
fp32 accumulators from one buffer."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .launch import Switch, cdiv, launch


@functools.cache
def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors through Triton's interpreter (it must be
    set before triton is imported, so it cannot change during a process)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def await_producers(PDL: tl.constexpr):
    """A kernel's first statement. Launched programmatically (`PDL`, set by `launch` on
    Hopper and newer), the program waits here until the kernel before it in the stream has
    finished and its writes are visible, then lets the next kernel's programs be scheduled
    (they wait in turn). Otherwise nothing (and never under the interpreter)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def warp_uniform(x, GPU: tl.constexpr):
    """x, an int32 scalar that every thread of the program holds (a count of loaded gates,
    say), as lane 0's value passed to the warp by a shuffle: ptxas then knows it is the same
    in every lane, and a loop bounded by it keeps its counter and addresses in uniform
    registers. Computed from loads, a trip count is per thread to ptxas, and every step of
    such a loop moved its TMA coordinates into uniform registers one by one (R2UR): the row
    GEMM's K-chunked loop took 127 SASS instructions a step against 101 with the shuffle
    (sm_90, 64x128 tiles; bench/NOTES.md). x must already be the same in every thread, and
    every lane of the warp must reach the call (a Triton program's scalar code runs in all
    its threads: a branch on a scalar is taken by all or none). GPU (set by `launch` for
    CUDA launches): the interpreter runs no inline assembly, and there x is returned as it
    is."""
    if GPU:
        return tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, 0, 0x1f, 0xffffffff;",
                                         "=r,r", [x.to(tl.int32)], dtype=tl.int32,
                                         is_pure=False, pack=1)
    else:
        return x


@triton.jit
def sigmoid(x, GPU: tl.constexpr):
    """1 / (1 + exp(-x)) of an fp32 tensor. GPU: by the approximate exp2 and reciprocal with
    denormals flushed to zero, 4 SASS instructions an element, where tl.sigmoid's
    full-range division and exp2's denormal scaling took 12 (sm_90); the two agree to an
    ulp or two, and both give 0 and 1 at the ends (the flushed results are under 1e-38).
    Under the interpreter (no inline assembly) tl.sigmoid."""
    if GPU:
        # -log2(e) = 0fBFB8AA3B
        return tl.inline_asm_elementwise(
            "{ .reg .f32 t; mul.ftz.f32 t, $1, 0fBFB8AA3B; ex2.approx.ftz.f32 t, t; "
            "add.ftz.f32 t, t, 0f3F800000; rcp.approx.ftz.f32 $0, t; }",
            "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.sigmoid(x)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: exact products ("ieee"); 16-bit operands ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T] bool, True where t < lengths[b]."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def two_passes(run_rows, ungated_batch: int, gates):
    """What a batch holding two passes computes, by a module's reference:
    run_rows(rows, gates) on the first ungated_batch sequences without gates (None) and on
    the rest with `gates`, concatenated along the batch."""
    return torch.cat([run_rows(slice(0, ungated_batch), None),
                      run_rows(slice(ungated_batch, None), gates)])


def check_lengths(lengths, batch: int, device: torch.device) -> None:
    """ValueError unless `lengths` is an int32/int64 (batch,) tensor on `device` (the
    kernels read it there, without a sync)."""
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,) or \
            lengths.dtype not in (torch.int32, torch.int64) or lengths.device != device:
        raise ValueError(f"lengths must be an int32/int64 tensor of shape ({batch},) on "
                         f"{device}, got {getattr(lengths, 'dtype', type(lengths).__name__)}"
                         f" {tuple(getattr(lengths, 'shape', ()))}")


def as_operands(weights: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """`weights` as matmul operands in `dtype` (the compute dtype): themselves (contiguous)
    when in it already, else copies outside autograd (the op takes the weights too and gives
    them their gradients); a module's two CUDA matrices by one launch (`cast_pair`), others
    one cast each. One cast per call beats casting every tile in registers: with bf16 weights
    the gated FFN ran 409 instead of 584 us fwd+bwd on the H200 (bench/NOTES.md,
    2026-11-30). Not operand_copies for a module's few weights: its multi_tensor_apply gives
    each 64K elements one thread block, ~9 blocks for the MHSA's two matrices, and the
    module's forward took 75.3 instead of 64.1 us (H200, 2026-12-02). The op keeps the
    operands for its backward: no second cast. A whole encoder pass makes all its operands
    at once (operand_copies: ~620 blocks)."""
    weights = [w.contiguous() for w in weights]
    if all(w.dtype == dtype for w in weights):
        return weights
    if len(weights) == 2 and weights[0].is_cuda and weights[1].is_cuda \
            and not torch.compiler.is_compiling():      # torch.compile traces the casts
        return list(cast_pair(weights[0], weights[1], dtype))
    return [w if w.dtype == dtype else w.detach().to(dtype) for w in weights]


# elements a program of _cast_pair_kernel copies: 16 a thread at 4 warps, four 16-byte fp32
# loads each; 576 programs for the FFN's two paper-size matrices (1.18M elements)
_CAST_BLOCK = 2048


@triton.jit
def _cast_pair_kernel(src0, dst0, n0, src1, dst1, n1, BLOCK: tl.constexpr,
                      PDL: tl.constexpr = False):
    # dst0[:n0] = src0 in dst0's dtype, dst1[:n1] likewise: the first cdiv(n0, BLOCK)
    # programs copy the first tensor, the others the second
    await_producers(PDL)
    pid = tl.program_id(0)
    first = tl.cdiv(n0, BLOCK)
    if pid < first:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n0
        tl.store(dst0 + offs, tl.load(src0 + offs, mask=ok).to(dst0.dtype.element_ty),
                 mask=ok)
    else:
        offs = (pid - first) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n1
        tl.store(dst1 + offs, tl.load(src1 + offs, mask=ok).to(dst1.dtype.element_ty),
                 mask=ok)


def cast_pair(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the contiguous tensors a and b in `dtype`, each of its own shape, made by
    one launch (two casts cost two launches of ~2 us each on the H200 for 0.15-0.6M
    elements). Nothing tracks them for autograd. Under the interpreter bf16 results may
    differ in the last bit (it does not round to nearest even): CPU callers use `.to`."""
    if not (a.is_contiguous() and b.is_contiguous()) or a.device != b.device or \
            max(a.numel(), b.numel()) > 2 ** 31 - _CAST_BLOCK:      # int32 offsets
        raise ValueError(f"cast_pair: a and b must be contiguous and on one device, with "
                         f"fewer than 2**31 elements, got strides {a.stride()} / {b.stride()} "
                         f"on {a.device} / {b.device}, {a.numel()} / {b.numel()} elements")
    out_a = torch.empty(a.shape, dtype=dtype, device=a.device)
    out_b = torch.empty(b.shape, dtype=dtype, device=b.device)
    n_a, n_b = a.numel(), b.numel()
    grid = (max(1, cdiv(n_a, _CAST_BLOCK) + cdiv(n_b, _CAST_BLOCK)),)
    launch(_cast_pair_kernel, grid, a, out_a, n_a, b, out_b, n_b,
           BLOCK=_CAST_BLOCK, num_warps=4)
    return out_a, out_b


def operand_copies(weights: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """`weights` as matmul operands in `dtype`, all copied at once (outside autograd) into
    views of one buffer, each of its weight's shape. On CUDA
    torch._foreach_copy_ casts fp32 to bf16 in one multi_tensor_apply launch per 320
    chunks of 64K elements (3 for the paper encoder's 96 matrices, 40.7M elements), where
    a cast per weight cost ~2 us each, most of it launch latency at 0.15-0.6M elements.
    Made anew at every call, never cached: a CUDA graph that captured the call copies the
    current weights at every replay."""
    copies = _empty_copies(weights, dtype)
    _copy_into(copies, weights)
    return copies


def _empty_copies(weights: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Uninitialised tensors of the weights' shapes in `dtype`, views of one buffer."""
    parts = _carved([w.numel() for w in weights], dtype, weights[0].device)
    return [part.view(w.shape) for part, w in zip(parts, weights, strict=True)]


def _copy_into(copies: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
    """copies[i] = weights[i], cast to the copies' dtype, outside autograd."""
    with torch.no_grad():
        torch._foreach_copy_(copies, weights)


_side_streams: dict[tuple[int, object], torch.cuda.Stream] = {}
_staging = Switch("ORTHOASR_STAGED_COPIES")


# torch.cuda.Stream hands out the streams of a pool, 32 a priority, round robin: two asked
# for 32 calls apart are the same CUDA stream
_POOL_DRAWS = 64


def side_stream(device: torch.device, key, avoid=()) -> torch.cuda.Stream:
    """A side stream of `device` for `key` (its user's name for it), kept for the process:
    the same stream for the same (device, key) at every call, unless that stream is now
    one of `avoid` (streams it must not be, e.g. the one the caller runs on). A kept stream
    is never the CUDA stream of another key's, nor of `avoid` when made: torch's pool hands
    the same stream out again (a graph's capturing stream given as its own IF-branch
    stream fails the branch's capture; two concurrent chains given one branch stream race
    at replay, orthoasr.conditional)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _side_streams.get((index, key))
    taken = {s.cuda_stream for s in avoid} | {
        s.cuda_stream for (i, k), s in _side_streams.items() if i == index and k != key}
    if stream is None or stream.cuda_stream in taken:
        for _ in range(_POOL_DRAWS):
            stream = torch.cuda.Stream(index)
            if stream.cuda_stream not in taken:
                break
        else:
            raise RuntimeError(f"side_stream: every stream torch's pool gave is taken "
                               f"({len(taken)} kept or avoided)")
        _side_streams[index, key] = stream
    return stream


def staged_copies(on: bool):
    """Within the block, `staged_operand_copies` stages (on) or makes every copy on the
    current stream (benchmarks compare the two in one process)."""
    return _staging.within(on)


def staged_operand_copies(weights: list[torch.Tensor], dtype: torch.dtype, ahead: int
                          ) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """`operand_copies` of `weights` in two stages: the first `ahead` on the current
    stream, the rest on a side stream, where they are made while the current stream runs
    the work that reads only the first ones (an encoder pass's first block, while the
    copies for the other blocks are made: the paper encoder's copy took 85 us of its
    forward on the H200 in one launch ahead of everything).
    -> (copies, ready): the current stream must wait on the event `ready` before it reads
    copies[ahead:] (`torch.cuda.current_stream().wait_event(ready)`; inside a CUDA-graph
    capture that wait also joins the side stream back, which the capture requires). ready
    is None where all were copied on the current stream: on the CPU, under torch.compile,
    with `ahead` covering every weight, or with `staged_copies(False)`
    (`ORTHOASR_STAGED_COPIES=0`)."""
    if not (_staging.on and 0 < ahead < len(weights) and weights[0].is_cuda) \
            or torch.compiler.is_compiling():
        return operand_copies(weights, dtype), None
    first = operand_copies(weights[:ahead], dtype)
    # the side stream starts after all the current stream has queued, so that it reads
    # the weights' last update and writes memory no earlier kernel reads. The buffer is
    # the current stream's; recorded on the side stream too, it is not handed out again
    # before the side stream's copy ends, even where the caller drops the copies without
    # waiting on `ready` (an error mid-pass): a later allocation would be written over
    rest = _empty_copies(weights[ahead:], dtype)
    main = torch.cuda.current_stream()
    side = side_stream(main.device, "staged copies", avoid=(main,))
    side.wait_stream(main)
    with torch.cuda.stream(side):
        _copy_into(rest, weights[ahead:])
    rest[0].record_stream(side)      # the views share one allocation: its lifetime
    ready = torch.cuda.Event()
    ready.record(side)
    return first + rest, ready


class FrozenOperands:
    """Matmul operands of weights that inference keeps as they are: the compute-dtype copies
    of one weight list, made once per dtype (operand_copies) and reused by every pass, so a
    CUDA graph captured on them copies nothing at replay (the paper encoder's copy took 85
    us of its 3.1 ms forward on the H200). The same buffers are written again, before a
    pass or a replay (`refresh`), where a weight was replaced, moved to other storage
    (`.data =`, `.to()`) or changed in place by a PyTorch call since: torch counts such
    writes in each tensor's version (an inference tensor has none: it is copied at every
    call). A change that no PyTorch call makes, one replayed from a CUDA graph, is not seen:
    for weights that nothing trains meanwhile (a loaded checkpoint's)."""

    def __init__(self):
        # dtype -> [weights, their states (_state), copies]
        self._entries: dict[torch.dtype, list] = {}

    def __call__(self, weights: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """The copies of `weights` in `dtype`: the same tensors at every call."""
        entry = self._entries.get(dtype)
        if entry is None:
            _no_copy_in_capture()
            with torch.inference_mode(False):    # buffers that later refreshes may write
                copies = operand_copies(weights, dtype)
            self._entries[dtype] = [list(weights), [_state(w) for w in weights], copies]
            return copies
        self._refresh(entry, weights)
        return entry[2]

    def refresh(self, weights: list[torch.Tensor]) -> None:
        """Copy `weights` (the list every call gave) into each dtype's copies where any
        differs from what they hold."""
        for entry in self._entries.values():
            self._refresh(entry, weights)

    def record_stream(self, stream) -> None:
        """Mark the copies as used on CUDA `stream` (they were made on another, e.g. a graph
        capture's warm-up stream): freeing them then waits for its work."""
        for _, _, copies in self._entries.values():
            for copy in copies:
                copy.record_stream(stream)

    @staticmethod
    def _refresh(entry: list, weights: list[torch.Tensor]) -> None:
        held, states, copies = entry
        now = [_state(w) for w in weights]
        if now != states or None in now or \
                any(w is not h for w, h in zip(weights, held, strict=True)):
            # a weight of another shape or device is new storage: checked only here
            shapes = [c.shape for c in copies]
            if [w.shape for w in weights] != shapes or any(
                    w.device != c.device for w, c in zip(weights, copies, strict=True)):
                raise ValueError(f"FrozenOperands: the weights changed shape or device "
                                 f"(copies {shapes} on {copies[0].device}, weights "
                                 f"{[w.shape for w in weights]} on {weights[0].device}); "
                                 "make a new one for this model")
            _no_copy_in_capture()
            # inference_mode(False) turns grad mode on: no_grad inside it
            with torch.inference_mode(False):
                _copy_into(copies, weights)
            entry[0], entry[1] = list(weights), now


def _state(weight: torch.Tensor) -> tuple[int, int] | None:
    """What tells that a weight's values may have changed: its storage and torch's count of
    in-place writes to it; None for an inference tensor, which keeps no count."""
    return None if weight.is_inference() else (weight.data_ptr(), weight._version)


def _no_copy_in_capture() -> None:
    """A copy inside a CUDA-graph capture would only be recorded, not run, and the copies
    marked current would hold the old values for every other caller."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("FrozenOperands: the weights' copies must be made or refreshed "
                           "before a CUDA-graph capture (call it once outside the capture)")


def zeroed_fp32(sizes: list[int], device: torch.device) -> list[torch.Tensor]:
    """Zeroed fp32 1-D tensors of `sizes` carved from one buffer (one launch)."""
    return _carved(sizes, torch.float32, device, _zeros)


# elements a program of _zero_kernel writes: 32 a thread at 4 warps, eight 16-byte stores
# each (at 1024, 4600 programs for the FFN's 4.7 MB of accumulators took 2.2 us against
# torch's fill's 1.9; H200, 2026-12-03)
_ZERO_BLOCK = 4096


@triton.jit
def _zero_kernel(ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    # ptr[:n] = 0
    await_producers(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, tl.zeros([BLOCK], dtype=ptr.dtype.element_ty), mask=offs < n)


def _zeros(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros(n): on CUDA by a kernel of ours, so that it joins the chain of
    programmatically launched kernels (torch's fill kernel is launched the plain way: the
    kernel after it could not start early, and it could not start during the one before)."""
    buf = torch.empty(n, dtype=dtype, device=device)
    if not buf.is_cuda or n >= 2 ** 31 - _ZERO_BLOCK:        # int32 offsets
        return buf.zero_()
    if n:
        launch(_zero_kernel, (cdiv(n, _ZERO_BLOCK),), buf, n, BLOCK=_ZERO_BLOCK, num_warps=4)
    return buf


def _carved(sizes: list[int], dtype: torch.dtype, device: torch.device,
            new=torch.empty) -> list[torch.Tensor]:
    """1-D tensors of `sizes` carved from one new buffer (`new`: torch.empty or _zeros),
    each starting on a 128-byte boundary: Triton specialises pointer arguments on 16-byte
    alignment, and a weight gradient written at an unaligned offset ran 3x slower (the MHSA
    in-projection's, 31 -> 98 us on the H200, bench/NOTES.md session 10)."""
    step = 128 // dtype.itemsize
    padded = [-(-n // step) * step for n in sizes]
    buf = new(sum(padded), dtype=dtype, device=device)
    return [part[:n] for part, n in zip(buf.split(padded), sizes)]
