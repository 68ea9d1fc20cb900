"""Kernel launches with less host time, and host-side integer helpers.

`kernel[grid](...)` costs 25-60 µs of Python per launch on the H100 machine (binding,
specialisation, option parsing, global checks; bench/results/host_overhead.json), which
made the eager modules host-bound (a paper-model fwd+bwd: 102 ms wall for 45 ms of kernels).
`launch(kernel, grid, *args, **constexprs)` does the same launch: its first call for a given
specialisation goes through Triton (compiling if needed) and keeps the compiled kernel; later
calls with the same specialisation call that kernel's launcher directly.

The specialisation key is at least as fine as Triton's own, so a cached kernel is only
reused where Triton would pick the same one: per tensor its dtype and whether its address is
16-byte aligned; per int whether it is 1, divisible by 16, and its integer type; per TMA
descriptor (`TensorDescriptor`, built on the host) its dtype, block shape and padding, and
the alignment and 16-divisibility of its base, shape and strides (finer than Triton's, which
keys on the first three); keyword arguments (constexprs and options such as num_warps) by
value. Descriptors pass through to the compiled kernel's launcher as Triton's path passes
them: it builds the CUDA tensor map from each at every launch. Runtime arguments must be
positional; keywords are compile-time values. For CPU tensors (the interpreter), with a
launch hook installed (a Triton profiler), on a Triton version outside
`DIRECT_TRITON_VERSIONS`, with `ORTHOASR_DIRECT_LAUNCH=0`, or where the compiled kernel lacks
the launcher interface this was written against, every launch takes Triton's own path.

Programmatic dependent launch (Hopper and newer): a kernel with a `PDL` constexpr parameter
is launched with `PDL=True` and CUDA's programmatic stream serialisation, so that its
programs may be scheduled while the kernel before it in the stream still runs. Each such
kernel's first statement is `await_producers(PDL)` (kernels/common.py): it waits there until
the previous kernel has finished and its writes are visible, then lets the next kernel be
scheduled. Programs of the next kernel thus wait on the SMs instead of being launched after
the previous kernel's last program ends. Since every such kernel waits before it reads or
writes anything, the stream's order holds as without it. `ORTHOASR_PDL=0` (or
`programmatic_launch(False)`) launches them the plain way.

A kernel with a `GPU` constexpr parameter is launched with `GPU=True` on CUDA tensors: code
the interpreter cannot run (inline assembly: common.warp_uniform, common.sigmoid) sits
behind it.
`ORTHOASR_GPU_ASM=0` (or `gpu_asm(False)`) launches them with `GPU=False`, the
interpreter's code, to compare the two in one process.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

_INT32 = range(-2 ** 31, 2 ** 31)
# The direct path calls private pieces of Triton's compiled kernels (the launcher's positional
# signature, packed metadata, the launch hooks in `triton.knobs`), checked on these versions
# only; elsewhere every launch takes Triton's own path (setup.py admits a wider range).
DIRECT_TRITON_VERSIONS = ((3, 6),)
# ORTHOASR_DIRECT_LAUNCH=0 turns the direct path off (benchmarks compare the two; and to rule
# this module out when something looks wrong)
_cache: dict = {}


class Switch:
    """An on/off setting read at each call, on unless the environment variable `env` is
    "0"; `within(on)` sets it for a block (benchmarks compare both ways in one process)."""

    def __init__(self, env: str):
        self.on = os.environ.get(env, "1") != "0"

    @contextlib.contextmanager
    def within(self, on: bool):
        before, self.on = self.on, bool(on)
        try:
            yield
        finally:
            self.on = before


_programmatic = Switch("ORTHOASR_PDL")
_gpu_asm = Switch("ORTHOASR_GPU_ASM")


def direct_launch_enabled() -> bool:
    """Whether launches may skip Triton's per-launch host work (read at each cache miss)."""
    version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    return (os.environ.get("ORTHOASR_DIRECT_LAUNCH", "1") != "0"
            and version in DIRECT_TRITON_VERSIONS)


def programmatic_launch(on: bool):
    """Within the block, kernels that take a `PDL` parameter are launched with programmatic
    dependent launch (on) or the plain way (benchmarks compare the two in one process)."""
    return _programmatic.within(on)


def gpu_asm(on: bool):
    """Within the block, kernels that take a `GPU` parameter are launched on CUDA with it
    on (their inline assembly) or off (the interpreter's code; benchmarks compare the two in
    one process)."""
    return _gpu_asm.within(on)


@functools.cache
def _programmatic_capable(kernel, device: int) -> bool:
    """Whether `kernel` takes a `PDL` parameter and the device has grid dependency control
    (compute capability 9.0 or newer)."""
    return "PDL" in kernel.arg_names and torch.cuda.get_device_capability(device)[0] >= 9


@functools.cache
def _takes_gpu_flag(kernel) -> bool:
    """Whether `kernel` takes a `GPU` parameter: code the interpreter cannot run (inline
    assembly) that a CUDA launch turns on."""
    return "GPU" in kernel.arg_names


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host ints (triton.cdiv goes through constexpr unwrapping: slower)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), for host ints."""
    return 1 << (n - 1).bit_length()


def _spec(arg):
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return bool, arg
    if isinstance(arg, int):     # Triton types an int i32, i64 or u64 by its value
        return arg == 1, arg % 16 == 0, arg in _INT32, arg >= 2 ** 63
    if isinstance(arg, float):
        return float
    if isinstance(arg, TensorDescriptor):
        return (TensorDescriptor, arg.base.dtype, tuple(arg.block_shape), arg.padding,
                arg.base.data_ptr() % 16 == 0,
                tuple(v % 16 == 0 for v in (*arg.shape, *arg.strides)))
    return arg          # None, strings


def _hook_installed(hook) -> bool:
    """Triton 3.6 keeps launch hooks in a HookChain that is never None: empty = none."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _direct_launcher(kernel, compiled, args: tuple, meta: dict):
    """(launcher, function, packed metadata, trailing argument values, stream getter, enter
    hook, exit hook), or None where the direct launch does not apply."""
    if not direct_launch_enabled():
        return None
    try:
        from triton import knobs
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    except (ImportError, AttributeError):
        return None
    if _hook_installed(enter) or _hook_installed(leave):
        return None
    needed = ("run", "function", "packed_metadata")
    if compiled is None or not all(hasattr(compiled, name) for name in needed):
        return None
    params = list(kernel.signature.parameters.values())
    tail = []
    for param in params[len(args):]:
        if param.name in meta:
            tail.append(meta[param.name])
        elif param.default is not param.empty:
            tail.append(param.default)
        else:
            return None
    from triton.runtime import driver
    return (compiled.run, compiled.function, compiled.packed_metadata, tuple(tail),
            driver.active.get_current_stream, enter, leave)


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """kernel[grid](*args, **meta), with Triton's per-launch host work done once per
    specialisation. args: runtime arguments (tensors, ints, floats, None), positional; meta:
    constexprs and launch options, by keyword."""
    first = args[0].base if args and isinstance(args[0], TensorDescriptor) else \
        args[0] if args else None
    if not isinstance(first, torch.Tensor) or not first.is_cuda:
        kernel[grid](*args, **meta)
        return
    device = torch.cuda.current_device()     # where Triton loads and launches the kernel
    programmatic = _programmatic.on and _programmatic_capable(kernel, device)
    if programmatic:
        meta = {**meta, "PDL": True, "launch_pdl": True}
    if _gpu_asm.on and _takes_gpu_flag(kernel):
        meta = {**meta, "GPU": True}
    key = (kernel, device, tuple(map(_spec, args)), tuple(meta.items()))
    entry = _cache.get(key)
    if entry is None:
        if any(isinstance(value, torch.Tensor) for value in meta.values()):
            raise TypeError(f"{kernel.__name__}: pass tensors positionally, not by keyword")
        compiled = kernel[grid](*args, **meta)
        _cache[key] = _direct_launcher(kernel, compiled, args, meta) or False
        return
    if entry is False:
        kernel[grid](*args, **meta)
        return
    run, function, packed, tail, current_stream, enter, leave = entry
    stream = current_stream(device)
    run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
        function, packed, None, enter, leave, *args, *tail)
