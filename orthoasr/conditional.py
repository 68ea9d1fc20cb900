"""CUDA-graph IF/ELSE nodes on device gates: inside a `torch.cuda.graph` capture,
`if_any_nonzero(gates, then, otherwise)` captures `then()` into one branch and
`otherwise(out)` into the other of a conditional node, and at every replay the GPU runs the
first iff any gate is non-zero, with no host sync. (Used by `run_blocks(skip_dead_blocks=)`:
a Conformer block whose gates are all 0 costs its final LayerNorm, not its launches.)

torch 2.11 cannot capture into a conditional node itself, so this goes through the CUDA
runtime (cuda-bindings, an optional dependency): a one-thread kernel, compiled once a device
by NVRTC, sets the node's condition from the gates; each branch is captured on a side
stream into the node's body graph (`cudaStreamBeginCaptureToGraph`), with the thread's
allocations routed to a memory pool kept for all branches on that device. Needs a CUDA 12.8+
driver (an IF node with an ELSE branch).

Memory: the branches of every graph captured on a device share one pool, as graphs sharing
a torch pool do: graphs that use it must not replay at the same time on different streams.
Within one graph, branches made on different capturing streams (concurrent chains) are
captured on different side streams, so they never reuse each other's freed blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import torch

from .kernels.common import side_stream

_SET_CONDITION = rb"""
typedef unsigned long long cudaGraphConditionalHandle;
extern "C" __device__ __cudart_builtin__ void cudaGraphSetConditional(
    cudaGraphConditionalHandle handle, unsigned int value);
// the conditional node's value for this replay: 1 iff any of the n gates is non-zero
extern "C" __global__ void any_nonzero(cudaGraphConditionalHandle handle, const float* gates,
                                       int n) {
  unsigned int live = 0;
  for (int i = 0; i < n; ++i) live |= gates[i] != 0.0f;
  cudaGraphSetConditional(handle, live);
}
"""
_MIN_DRIVER = 12080      # cudaGraphCondTypeIf with an ELSE body (size 2)


def _bindings():
    try:
        from cuda.bindings import driver, nvrtc, runtime
    except ImportError as err:
        raise RuntimeError("skipping dead blocks on the device needs the cuda-bindings "
                           "package (pip install cuda-bindings)") from err
    return driver, nvrtc, runtime


def _check(result):
    """A cuda-bindings call's (error, *values) -> its value(s), or a RuntimeError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err!r}")
    return values[0] if len(values) == 1 else values


def check_available() -> None:
    """Raise a RuntimeError that says what is missing (cuda-bindings, a CUDA 12.8+ driver)
    unless conditional nodes can be made here."""
    runtime = _bindings()[2]
    version = _check(runtime.cudaDriverGetVersion())
    if version < _MIN_DRIVER:
        raise RuntimeError(f"skipping dead blocks on the device needs a CUDA 12.8+ driver, "
                           f"this one is {version // 1000}.{version % 1000 // 10}")


@functools.cache
def _device_state(device: int):
    """(set-condition kernel, branch memory pool) of a CUDA device, made once."""
    check_available()
    driver, nvrtc, runtime = _bindings()
    program = _check(nvrtc.nvrtcCreateProgram(_SET_CONDITION, b"set_condition.cu", 0, [], []))
    major, minor = torch.cuda.get_device_capability(device)
    options = [f"-arch=sm_{major}{minor}".encode()]
    if int(nvrtc.nvrtcCompileProgram(program, len(options), options)[0]) != 0:
        log = b" " * _check(nvrtc.nvrtcGetProgramLogSize(program))
        nvrtc.nvrtcGetProgramLog(program, log)
        raise RuntimeError(f"NVRTC could not build the set-condition kernel: {log.decode()}")
    cubin = b" " * _check(nvrtc.nvrtcGetCUBINSize(program))
    _check(nvrtc.nvrtcGetCUBIN(program, cubin))
    with torch.cuda.device(device):
        module = _check(driver.cuModuleLoadData(cubin))
        kernel = _check(driver.cuModuleGetFunction(module, b"any_nonzero"))
        return kernel, torch.cuda.MemPool()


def _branch_stream(capturing: torch.cuda.Stream, runtime) -> torch.cuda.Stream:
    """The side stream that branches are captured on for nodes made on `capturing`, one
    per capturing stream. The caching allocator reuses a freed block only for allocations
    on the stream that made it, so the branches of chains captured on different streams
    (orthoasr.batch_streams), which replay concurrently, never share temporaries. With one
    side stream for all, they did, and raced at replay (wrong values, H200, 2026-12-04).
    It is never a stream that captures now (torch's pool may hand out the capture's own
    streams again): a branch's capture cannot begin on one."""
    avoid = [capturing]
    while True:
        side = side_stream(capturing.device, ("IF branches", capturing.cuda_stream), avoid)
        status = _check(runtime.cudaStreamIsCapturing(side.cuda_stream))
        if status == runtime.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone:
            return side
        avoid.append(side)


def if_any_nonzero(gates: torch.Tensor, then, otherwise):
    """Capture `out = then()` and `otherwise(out)` (which must write out's tensors in place)
    as the two branches of a conditional node on the current, capturing stream: a replay
    runs `then` iff any element of `gates` is non-zero, else `otherwise`. Returns out.
    gates: (n,) float32 on the stream's device, read at every replay."""
    if gates.dtype != torch.float32 or gates.dim() != 1 or not gates.is_contiguous():
        raise ValueError(f"gates must be a contiguous 1-d float32 tensor, got "
                         f"{tuple(gates.shape)} {gates.dtype}")
    if not (gates.is_cuda and torch.cuda.is_current_stream_capturing()):
        raise RuntimeError(f"if_any_nonzero makes a conditional node of a CUDA graph: call it "
                           f"while the current stream captures one, with gates on that GPU "
                           f"(got gates on {gates.device})")
    driver, _, runtime = _bindings()
    kernel, pool = _device_state(gates.device.index)
    capturing = torch.cuda.current_stream(gates.device)
    side = _branch_stream(capturing, runtime)
    stream = capturing.cuda_stream
    graph = _check(runtime.cudaStreamGetCaptureInfo(stream))[2]
    handle = _check(runtime.cudaGraphConditionalHandleCreate(graph, 0, 0))
    _check(driver.cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, stream,
                                 ((int(handle), gates.data_ptr(), gates.numel()),
                                  (ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_int)), 0))
    info = _check(runtime.cudaStreamGetCaptureInfo(stream))   # now after that kernel
    params = runtime.cudaGraphNodeParams()
    params.type = runtime.cudaGraphNodeType.cudaGraphNodeTypeConditional
    params.conditional.handle = handle
    params.conditional.type = runtime.cudaGraphConditionalNodeType.cudaGraphCondTypeIf
    params.conditional.size = 2                                 # [then, else]
    node = _check(runtime.cudaGraphAddNode(graph, info[3], None, info[-1], params))
    _check(runtime.cudaStreamUpdateCaptureDependencies(
        stream, [node], None, 1,
        runtime.cudaStreamUpdateCaptureDependenciesFlags.cudaStreamSetCaptureDependencies))
    then_body, else_body = params.conditional.phGraph_out[0], params.conditional.phGraph_out[1]
    with _capturing_into(then_body, side, pool, runtime):
        out = then()
    with _capturing_into(else_body, side, pool, runtime):
        otherwise(out)
    return out


@contextlib.contextmanager
def _capturing_into(body, side, pool, runtime):
    """Work on the current stream inside the block goes to `body` (a conditional node's
    graph), captured on `side`; this thread's allocations come from `pool`."""
    _check(runtime.cudaStreamBeginCaptureToGraph(
        side.cuda_stream, body, None, None, 0,
        runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
    try:
        with torch.cuda.use_mem_pool(pool), torch.cuda.stream(side):
            yield
    finally:
        _check(runtime.cudaStreamEndCapture(side.cuda_stream))
