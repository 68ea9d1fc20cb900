"""Would CUDA-graph conditional (IF) nodes make a dead unit cost nothing? A probe, no change
to the kernels (issue 13: "all off <= 0.05x all-on + 10 us", the encoder's all-off inference
<= 0.3 ms, with the gates on the device).

Today a module whose gates are all 0 on the device still launches every kernel; each reads
the gates and does nothing (masked work). In a CUDA graph each such launch still costs its
node's scheduling and its programs' start: a module's fwd+bwd is 10-19 launches, which is
why the device-gated "off" rows stay far above their limits. CUDA 12.4 added IF nodes, whose
body runs only when a device scalar is nonzero at replay; torch exposes them while capturing
as `CUDAGraph.begin_capture_to_if_node(pred)` / `end_capture_to_conditional_node()`.

Measured, each as a CUDA-graph replay (rows in bench/results/kernels.json, table "graph_if"):
  - `launches N`: N launches of a kernel of 750 programs whose work is masked off by a
    device flag (what a dead module's GEMM tile grid does), for N = 1 and 16;
  - `IF false N` / `IF true N`: the same launches inside one IF node whose predicate is 0 /
    1 (the node's own cost when dead, and when live);
  - the paper FFN module's forward at B32xT250 with all-zero device gates, as today, and with
    its launches inside an IF node on (gates != 0).any() (one tiny reduction more), its
    output zeroed outside the node.

    python -m bench.probe_graph_if
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bench.harness import time_ms, write_rows
from orthoasr.config import SupernetConfig
from orthoasr.model import make_module

PROGRAMS, BLOCK = 750, 128


@triton.jit
def _masked_kernel(flag_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = (offs * 0 + tl.load(flag_ptr)) != 0       # the flag as a block mask
    tl.store(out_ptr + offs, tl.load(out_ptr + offs, mask=live, other=0.0) + 1.0, mask=live)


def _capture(body):
    """A CUDA graph of body(graph) after three warm-up calls of body(None) on a side stream;
    body opens IF nodes on the graph it is given (none while warming up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            body(None)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body(graph)
    return graph


def _inside_if(graph, pred, fn):
    """fn() captured into an IF node of `graph` on pred (a device scalar), or run plainly."""
    if graph is None:
        return fn()
    graph.begin_capture_to_if_node(pred)
    try:
        return fn()
    finally:
        graph.end_capture_to_conditional_node()


def _launch_rows() -> list[dict]:
    flag = torch.zeros((), dtype=torch.int32, device="cuda")
    out = torch.zeros(PROGRAMS * BLOCK, device="cuda")
    rows = []

    def launches(n):
        for _ in range(n):
            _masked_kernel[(PROGRAMS,)](flag, out, BLOCK=BLOCK)

    for n in (1, 16):
        plain = _capture(lambda g, n=n: launches(n))
        rows.append(dict(case=f"{n} masked launches of {PROGRAMS} programs",
                         provider="launches", ms=time_ms(plain.replay)))
        for value in (0, 1):
            pred = torch.full((), value, dtype=torch.int32, device="cuda")
            graph = _capture(lambda g, n=n, p=pred: _inside_if(g, p, lambda: launches(n)))
            rows.append(dict(case=f"{n} masked launches of {PROGRAMS} programs",
                             provider=f"IF {'true' if value else 'false'}",
                             ms=time_ms(graph.replay)))
    return rows


def _ffn_rows() -> list[dict]:
    cfg = SupernetConfig(budgets=(1.0,), dropout=0.0)
    module = make_module(cfg, "ffn1").cuda().eval()
    B, T = 32, 250
    torch.manual_seed(0)
    x = torch.randn(B, T, cfg.d_model, device="cuda")
    lengths = torch.randint(int(0.8 * T), T + 1, (B,), device="cuda")
    gates = torch.zeros(module.num_gates, device="cuda")
    y = torch.empty(B, T, cfg.d_model, device="cuda", dtype=torch.bfloat16)

    def today(graph):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            y.copy_(module(x, lengths, gates))

    def with_if(graph):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            live = (gates != 0).any()
            y.zero_()
            _inside_if(graph, live, lambda: y.copy_(module(x, lengths, gates)))

    case = f"ffn B{B}xT{T} fwd, all gates 0 on the device"
    return [dict(case=case, provider=name, ms=time_ms(_capture(body).replay))
            for name, body in (("today", today), ("IF node", with_if))]


def main() -> None:
    if not hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node"):
        print(f"torch {torch.__version__} has no CUDAGraph.begin_capture_to_if_node")
        return
    rows = []
    for part in (_launch_rows, _ffn_rows):
        try:
            rows += part()
        except Exception as error:    # a probe: say what failed, keep what was measured
            print(f"{part.__name__}: {type(error).__name__}: {error}")
    rows = [dict(table="graph_if", mode="fwd", timing="graph", baseline="launches"
                 if "launches" in r["case"] else "today", time_unit="ms", **r) for r in rows]
    for r in rows:
        print(f"{r['case']:48s} {r['provider']:10s} {r['ms'] * 1e3:8.1f} us")
    if rows:
        print(f"rows -> {write_rows('kernels', rows)}")


if __name__ == "__main__":
    main()
