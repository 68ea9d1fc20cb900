"""Gated modules and the encoder against their dense floors (issue 13), every provider
timed as a CUDA-graph replay (GPU time) and as eager calls, bf16 autocast over fp32 weights.

    python -m bench.bench_floor [--cases B32xT250 B16xT750] [--modules ffn conv mhsa
        attention encoder] && python -m bench.report

Providers: `ours` (orthoasr's modules on the Triton backend), `dense_floor` (bench/floors.py:
the live units only, from cuBLAS / SDPA / cuDNN ops on bf16 weights cast once),
`compile_floor` (torch.compile(mode="max-autotune-no-cudagraphs") of the floor), and for
the attention core `sdpa_mask` / `sdpa_nomask` (and `ours_unpacked`: ours through the
separate-q/k/v entry point, which first copies them into the packed layout the MHSA runs
it on; `ours` is given that layout); for a module with all units on also
`ours_bf16_weights` (ours on a bf16 copy of the module: what the fp32 weights' cast costs);
for the encoder also `ours_unstaged_copies` (every bf16 weight copy made ahead of the pass
on one stream: what staged_operand_copies saves) and, for gated inference on a GPU,
`ours_skip_dead_blocks` (each block in a CUDA-graph IF node on its gates:
`run_blocks(skip_dead_blocks=True)`; `ours_skip_dead_blocks_two_streams` with the batch on
two streams too) and `ours_one_stream` (the inference's batch as one
chain: `ours` splits it in two groups on concurrent streams, as GraphedEncoder does,
`run_blocks(batch_streams=2)`); on a GPU `ours_plain_launch` (no
programmatic dependent launch) and `ours_no_gpu_asm` (the kernels' `GPU` flag off: no
inline assembly, so no warp_uniform trip counts). Those run with their setting off for
forward and backward.
Gates: all-on, dense (no gates at all: the supernet's pass in training and dense inference;
its floor is all-on's, the same work, and has no compiled twin), half (every other FFN chunk and
head; conv on), off, soft (ours only: random gates with gradients, as in stage 1). Before
timing, each floor is checked against ours on valid frames (the same work). Rows go to
bench/results/kernels.json (table "floors"): case, mode (fwd or fwd+bwd, both with
gradients on; for the encoder also infer: no grad, ours with the weights' bf16 copies kept
between calls as Recognizer runs), gates, provider, timing (graph or eager), ms, tflops
(FLOPs of the live units; attention over all T x T). fwd+bwd's output gradient is given in
the output's dtype, so that no provider's backward times autograd's cast of it.
`--check` runs only the equality checks (works on the CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
import torch.nn.functional as F

from bench.floors import EncoderFloor, check_floor, compiled_floor, module_floor
from bench.harness import require_gpu_unless_checking, time_graph_ms, time_ms, write_rows
from orthoasr import set_backend
from orthoasr.config import SupernetConfig
from orthoasr.kernels.common import FrozenOperands, staged_copies
from orthoasr.kernels.gated_attention import gated_attention, gated_attention_packed
from orthoasr.kernels.launch import gpu_asm, programmatic_launch
from orthoasr.model import ConformerSupernet, block_layout, make_module

SHAPES = {"B32xT250": (32, 250), "B16xT750": (16, 750)}
KINDS = ("ffn", "conv", "mhsa", "attention", "encoder")     # what --modules names
GATE_PATTERNS = ("all-on", "dense", "half", "off", "soft")   # gate_patterns' names
BF16 = torch.bfloat16
# providers that are ours with one setting off for the whole call, forward and backward:
# what that setting saves, measured in the same run (GPU only)
SETTINGS_OFF = {
    "ours_plain_launch": lambda: programmatic_launch(False),   # kernels/launch.py
    "ours_no_gpu_asm": lambda: gpu_asm(False),                 # kernels/launch.py
    "ours_unstaged_copies": lambda: staged_copies(False),      # the encoder's only
}
# every provider a row may name (--providers picks some); bench.targets reads ours,
# dense_floor, compile_floor, sdpa_mask, sdpa_nomask, ours_host_masks, ours_skip_dead_blocks
PROVIDERS = ("ours", *SETTINGS_OFF, "ours_host_masks", "ours_one_stream",
             "ours_skip_dead_blocks", "ours_skip_dead_blocks_two_streams", "ours_bf16_weights",
             "ours_unpacked", "dense_floor", "compile_floor", "sdpa_mask", "sdpa_nomask")


def gate_patterns(n: int, device) -> dict[str, torch.Tensor | None]:
    """all-on, dense (None: no gates), half (every other unit; a single unit stays on), off,
    soft."""
    half = torch.ones(n, device=device)
    if n > 1:
        half[1::2] = 0.0
    return {"all-on": torch.ones(n, device=device), "dense": None, "half": half,
            "off": torch.zeros(n, device=device),
            "soft": torch.rand(n, device=device) * 0.8 + 0.1}


def model_gate_patterns(model: ConformerSupernet) -> dict[str, torch.Tensor | None]:
    """Per-unit gates of the whole encoder: each module's own pattern (gate_patterns)."""
    device = next(model.parameters()).device
    per_block: dict[str, list] = {}
    for _kind, start, end in block_layout(model.cfg):
        for name, g in gate_patterns(end - start, device).items():
            per_block.setdefault(name, []).append(g)
    return {name: None if parts[0] is None else torch.cat(parts).repeat(len(model.blocks))
            for name, parts in per_block.items()}


def flops(kind: str, cfg: SupernetConfig, B: int, T: int, live: torch.Tensor) -> float:
    """Forward matmul / conv FLOPs of the live units (2 x MACs)."""
    M, D = B * T, cfg.d_model
    on = float(live.bool().float().mean()) if live.numel() else 0.0
    if kind == "ffn":
        return 4 * M * D * cfg.ff_dim * on
    if kind == "conv":
        return (2 * M * D * 3 * D + 2 * M * D * cfg.conv_kernel) * on
    if kind in ("mhsa", "attention"):
        heads = cfg.num_heads * on
        attention = 4 * B * heads * T * T * cfg.head_dim
        return attention if kind == "attention" else \
            2 * M * D * 4 * D * on + attention
    return 0.0


def _modules(cfg: SupernetConfig, device):
    torch.manual_seed(0)
    return {kind: make_module(cfg, kind).to(device) for kind in ("ffn1", "conv", "mhsa")}


def grad_in_output_dtype(fn, grad: torch.Tensor, setting=contextlib.nullcontext
                         ) -> torch.Tensor:
    """`grad` in the dtype of fn()'s output under the timed calls' autocast, found by one
    untimed call. A gradient of another dtype is cast by autograd inside every timed
    backward: at B32xT250 an fp32 gradient of a module's bf16 output added a ~6-9 us copy
    kernel to every provider's fwd+bwd (H100, session 74), a cost of the harness, not of
    the module (in the encoder the residual add's backward makes that cast)."""
    with setting(), torch.autocast("cuda", dtype=BF16):
        dtype = fn().dtype
    return grad if grad.dtype == dtype else grad.to(dtype)


def _timed_rows(base: dict, providers: dict, inputs_of, grad_out, modes, timings,
                out=None, captures: int = 1, only=None) -> list:
    """Time every (mode, provider, timing); each row is written as soon as it is measured
    (a call cut short by its time limit keeps what it measured). grad_out: the output's
    gradient, or a function of the provider giving it. captures: graph timings take the
    best of that many captures (harness.time_graph_ms). only: the providers to time (None:
    all)."""
    rows = []
    for mode in modes:
        for provider, fn in providers.items():
            if only is not None and provider not in only:
                continue
            if mode == "fwd+bwd" and provider == "dense_floor" and base["gates"] == "off":
                continue          # the floor of a dead module is a constant: no backward
            if provider.startswith(("ours_skip_dead_blocks", "ours_one_stream")) \
                    and mode != "infer":
                continue          # the IF nodes and the streams are inference's (run_blocks)
            inputs = inputs_of(provider)
            grad = grad_out(provider) if callable(grad_out) else grad_out

            setting = SETTINGS_OFF.get(provider, contextlib.nullcontext)
            if mode == "fwd+bwd":
                try:
                    grad = grad_in_output_dtype(fn, grad, setting)
                except Exception as exc:  # noqa: BLE001 - as a failed timing below
                    print(f"{base['case']} {mode} {base['gates']} {provider}: failed "
                          f"({exc!r})", flush=True)
                    continue

            def call(fn=fn, inputs=inputs, mode=mode, grad=grad, setting=setting):
                with setting():
                    with torch.autocast("cuda", dtype=BF16), \
                            torch.set_grad_enabled(mode != "infer"):
                        out = fn()
                    if mode != "fwd+bwd":
                        return out
                    return torch.autograd.grad(out, inputs, grad, allow_unused=True)

            for timing in timings:
                try:
                    ms = time_graph_ms(call, captures=captures) if timing == "graph" \
                        else time_ms(call)
                except Exception as exc:  # noqa: BLE001 - a provider that cannot be captured
                    print(f"{base['case']} {mode} {base['gates']} {provider} {timing}: "
                          f"failed ({exc!r})", flush=True)
                    continue
                factor = 3 if mode == "fwd+bwd" else 1
                row = {**base, "mode": mode, "provider": provider, "timing": timing,
                       "ms": ms, "tflops": factor * base["flops"] / ms / 1e9}
                print(f"{row['case']:22s} {mode:8s} {row['gates']:7s} {provider:14s} "
                      f"{timing:6s} {ms * 1e3:10.1f} us {row['tflops']:7.1f} TFLOP/s",
                      flush=True)
                rows.append(row)
                write_rows("kernels", [row], out)
    return rows


def run(shapes, kinds, check_only: bool, timings, out=None, gate_names=None,
        compile_floors: bool = True, mode_names=None, provider_names=None) -> int:
    """Checks, then times; every row is written as soon as it is measured. gate_names,
    mode_names, provider_names: the gate patterns, modes and providers to run (default
    all). Returns the number of rows."""
    if provider_names is not None:
        compile_floors = compile_floors and "compile_floor" in provider_names
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SupernetConfig(budgets=(1.0,), dropout=0.0)
    if device.type == "cpu":          # --check under the interpreter: a small model
        cfg = SupernetConfig(num_layers=2, d_model=64, num_heads=4, ff_dim=256,
                             conv_kernel=15, budgets=(1.0,), dropout=0.0)
    modules = _modules(cfg, device)
    model = ConformerSupernet(cfg).to(device).eval()
    written = 0
    for shape in shapes:
        B, T = SHAPES[shape] if device.type == "cuda" else (3, 40)
        torch.manual_seed(1)
        x = torch.randn(B, T, cfg.d_model, device=device)
        lengths = torch.randint(T // 2, T + 1, (B,), device=device)
        lengths[0] = T
        grad_out = torch.randn(B, T, cfg.d_model, device=device)
        for kind in kinds:
            rows, patterns = [], {}
            if kind == "attention":
                # written as measured, to `out` (they used to go to bench/results as well,
                # and be written twice there)
                rows += _attention_rows(cfg, shape, B, T, lengths, device, timings,
                                        check_only, out, provider_names)
            elif kind == "encoder":
                patterns = model_gate_patterns(model)
                ours_module = model
            else:
                ours_module = modules["ffn1" if kind == "ffn" else kind]
                patterns = gate_patterns(ours_module.num_gates if kind != "conv" else 1,
                                         device)
            for name, gates in patterns.items():
                if gate_names and name not in gate_names:
                    continue
                hard = name != "soft"
                # no gates: the floor is all-on's (the same work), timed again, no compile
                dense = gates is None
                floor_gates = patterns["all-on"] if dense else gates
                if kind == "encoder":
                    frozen = FrozenOperands()

                    def ours(xx, ll, g=gates, skip=frozenset(), frozen=frozen, streams=2):
                        # inference (no grad) runs as Recognizer does: the weights' bf16
                        # copies kept between calls, as the floor's are (FrozenOperands),
                        # and the batch in two groups on concurrent streams (GraphedEncoder's
                        # default; only under the graph capture, with no grad)
                        return model.run_blocks(xx, ll, g, skip, frozen_operands=None if
                                                torch.is_grad_enabled() else frozen,
                                                batch_streams=streams)
                    floor = EncoderFloor(model, floor_gates, BF16) if hard else None
                else:
                    def ours(xx, ll, g=gates, m=ours_module):
                        return m(xx, ll, g)
                    floor = module_floor(ours_module, floor_gates, BF16) if hard else None
                set_backend("auto")
                if floor is not None and name != "off":
                    with torch.autocast(device.type, dtype=BF16, enabled=device.type == "cuda"):
                        check_floor(ours, floor, x, lengths, atol=5e-2, rtol=5e-2)
                    print(f"{shape} {kind} {name}: floor == ours on valid frames", flush=True)
                if check_only:
                    continue
                live = floor_gates if hard else torch.ones_like(gates)
                base = {"table": "floors", "case": f"{kind} {shape}", "gates": name,
                        "baseline": "dense_floor",
                        "flops": sum(flops(k, cfg, B, T, live) for k in
                                     (["ffn", "ffn", "conv", "mhsa"] if kind == "encoder"
                                      else [kind])) * (cfg.num_layers if kind == "encoder"
                                                       else 1)}
                soft = None if dense else gates.clone().requires_grad_(not hard)
                xx = x.clone().requires_grad_()
                params = list(ours_module.parameters())
                providers = {"ours": lambda o=ours, s=soft, xx=xx, ll=lengths: o(xx, ll, s)}
                if device.type == "cuda":
                    # ours with one setting off, forward and backward (SETTINGS_OFF)
                    providers["ours_plain_launch"] = providers["ours"]
                    providers["ours_no_gpu_asm"] = providers["ours"]
                if kind == "encoder" and name == "off":
                    # the product's path where the gates are known on the host (a frozen
                    # subnet in Recognizer, eval, stage 2): dead modules left out
                    dead = model.dead_modules(gates)
                    providers["ours_host_masks"] = lambda s=soft, xx=xx, ll=lengths, d=dead: \
                        ours(xx, ll, s, d)
                if kind == "encoder" and device.type == "cuda":
                    providers["ours_unstaged_copies"] = providers["ours"]
                    # the inference's batch as one chain on one stream
                    providers["ours_one_stream"] = \
                        lambda s=soft, xx=xx, ll=lengths: ours(xx, ll, s, streams=1)
                if kind == "encoder" and device.type == "cuda" and gates is not None:
                    # dead blocks skipped on the device: each block in a CUDA-graph IF node
                    providers["ours_skip_dead_blocks"] = \
                        lambda s=soft, xx=xx, ll=lengths, f=frozen: model.run_blocks(
                            xx, ll, s, frozen_operands=f, skip_dead_blocks=True)
                    # and with the batch on two streams, as `ours` runs it
                    providers["ours_skip_dead_blocks_two_streams"] = \
                        lambda s=soft, xx=xx, ll=lengths, f=frozen: model.run_blocks(
                            xx, ll, s, frozen_operands=f, skip_dead_blocks=True,
                            batch_streams=2)
                low = None
                if kind != "encoder" and name == "all-on":
                    low = copy.deepcopy(ours_module).to(BF16)
                    providers["ours_bf16_weights"] = \
                        lambda m=low, s=soft, xx=xx, ll=lengths: m(xx, ll, s)
                if floor is not None:
                    providers["dense_floor"] = lambda f=floor, xx=xx, ll=lengths: f(xx, ll)
                # the targets compare all-on only
                if floor is not None and name == "all-on" and compile_floors:
                    compiled = compiled_floor(floor)
                    providers["compile_floor"] = lambda c=compiled, xx=xx, ll=lengths: c(xx, ll)

                def inputs_of(provider, floor=floor, soft=soft, params=params, hard=hard,
                              xx=xx, low=low):
                    if provider.startswith("ours") and provider != "ours_bf16_weights":
                        return [xx, *params] + ([] if hard else [soft])
                    if provider == "ours_bf16_weights":
                        return [xx, *low.parameters()]
                    return [xx, *floor.parameters()]
                modes = [m for m in ("fwd", "fwd+bwd") + (("infer",) if kind == "encoder"
                                                          else ())
                         if mode_names is None or m in mode_names]
                # the encoder's graphs: the best of three captures (the first ones after the
                # floor's eager check replayed slower: bench/NOTES.md, session 41)
                rows += _timed_rows(base, providers, inputs_of, grad_out, modes, timings, out,
                                    captures=3 if kind == "encoder" else 1,
                                    only=provider_names)
            written += len(rows)
    return written


def _attention_rows(cfg, shape, B, T, lengths, device, timings, check_only,
                    out=None, only=None) -> list:
    """The attention core alone: ours with key padding vs SDPA with the mask and without.
    Each on the layout its projections give it: SDPA separate (B, H, T, Dh) q, k and v; ours
    the packed qkv (B, T, H, 3, Dh) that the MHSA's in-projection writes, its output and
    that output's gradient (B, T, H, Dh), as the out-projection reads and writes them.
    `ours_unpacked`: ours through `gated_attention`, which first stacks separate q, k and v
    into that layout (a copy that only tests and benchmarks make)."""
    H, Dh = cfg.num_heads, cfg.head_dim
    torch.manual_seed(2)
    q, k, v = (torch.randn(B, H, T, Dh, device=device, dtype=BF16 if device.type == "cuda"
                           else torch.float32).requires_grad_() for _ in range(3))
    qkv = torch.stack([q, k, v], dim=3).transpose(1, 2).contiguous().detach().requires_grad_()
    ones = torch.ones(H, device=device)
    mask = (torch.arange(T, device=device)[None, :] < lengths[:, None])[:, None, None, :]
    providers = {"ours": lambda: gated_attention_packed(qkv, lengths, ones,
                                                        Dh ** -0.5).transpose(1, 2),
                 "ours_unpacked": lambda: gated_attention(q, k, v, lengths, ones),
                 "sdpa_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                 "sdpa_nomask": lambda: F.scaled_dot_product_attention(q, k, v)}
    valid = (torch.arange(T, device=device)[None, :] < lengths[:, None])[:, None, :, None]
    with torch.no_grad():
        ref = torch.where(valid, providers["sdpa_mask"](), 0).float()
        for name in ("ours", "ours_unpacked"):
            torch.testing.assert_close(torch.where(valid, providers[name](), 0).float(), ref,
                                       atol=3e-2, rtol=3e-2, msg=name)
    print(f"{shape} attention: ours == sdpa_mask on valid frames", flush=True)
    if check_only:
        return []
    base = {"table": "floors", "case": f"attention {shape}", "gates": "all-on",
            "baseline": "sdpa_mask",
            "flops": flops("attention", cfg, B, T, ones)}
    grad = torch.randn_like(q)
    grad_packed = grad.transpose(1, 2).contiguous().transpose(1, 2)     # same values
    return _timed_rows(base, providers,
                       lambda p: [qkv] if p == "ours" else [q, k, v],
                       lambda p: grad_packed if p == "ours" else grad,
                       ("fwd", "fwd+bwd"), timings, out, only=only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    # choices: a name misspelt would otherwise match nothing and run nothing, silently
    parser.add_argument("--modules", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--timings", nargs="*", default=["graph", "eager"],
                        choices=["graph", "eager"])
    parser.add_argument("--gates", nargs="*", default=None,
                        choices=GATE_PATTERNS, help="gate patterns to run (default all)")
    parser.add_argument("--modes", nargs="*", default=None, choices=["fwd", "fwd+bwd", "infer"],
                        help="modes to time (infer: the encoder's; default all)")
    parser.add_argument("--providers", nargs="*", default=None, choices=PROVIDERS,
                        help="providers to time (default all; the targets read ours, "
                        "dense_floor, compile_floor, sdpa_mask, sdpa_nomask, "
                        "ours_host_masks, ours_skip_dead_blocks)")
    parser.add_argument("--check", action="store_true", help="equality checks only")
    parser.add_argument("--out", default=None, help="folder for kernels.json "
                        "(default bench/results)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out compile_floor (its max-autotune takes ~8 min a shape)")
    args = parser.parse_args()
    require_gpu_unless_checking("bench_floor", args.check)
    run(args.cases, args.modules, args.check, args.timings, args.out, args.gates,
        not args.no_compile, args.modes, args.providers)


if __name__ == "__main__":
    main()
