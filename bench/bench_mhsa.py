"""GatedMHSA module benchmark (issue 3): ours vs an eager baseline written the way the
method's public code masks (gate-scaled weight copies each call, masked softmax attention:
bench/baselines/encoder.eager_mhsa, which computes what GatedMHSA computes) and
torch.compile of that baseline; bf16 autocast, paper-size module. (Until 2026-11-30 the
baseline also scaled q, k and v by the gates, a different quantity under soft gates.)

    python -m bench.bench_mhsa

Rows go to bench/results/kernels.json (table "modules"); `ms` is the median of
triton.testing.do_bench, `graph_ms` one CUDA-graph replay of the same call (GPU time only).
"""

from __future__ import annotations

import argparse

import torch

from bench.baselines.encoder import eager_mhsa
from bench.harness import require_gpu, time_graph_ms, time_ms, write_rows
from orthoasr.nn import GatedMHSA

D, H = 384, 6
CASES = [("B32·T250", 32, 250), ("B16·T750", 16, 750)]


def _step(fn, mode, inputs, grad):
    def call():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn()
        if mode == "fwd":
            return out
        return torch.autograd.grad(out, inputs, grad)
    return call


def _time(row, call):
    row["ms"] = time_ms(call)
    try:
        row["graph_ms"] = round(time_graph_ms(call), 5)
    except Exception as exc:  # noqa: BLE001 - e.g. a compiled graph that cannot be captured
        print(f"graph timing failed for {row['provider']}: {exc!r}")
    print(f"{row['case']:24s} {row['mode']:8s} {row['provider']:22s} {row['ms'] * 1e3:9.1f} us"
          f"  graph {row.get('graph_ms', float('nan')) * 1e3:9.1f} us", flush=True)
    return row


def _bind(fn, *args):
    return lambda: fn(*args)


def _soft_providers(m, compiled, x, lengths, soft, params):
    with_gates = [x, soft] + params
    return {
        "ours": (_bind(m, x, lengths, soft), with_gates),
        "ours gates=None": (_bind(m, x, lengths), [x] + params),
        "eager (reference style)": (_bind(eager_mhsa, m, x, lengths, soft),
                                    with_gates),
        "torch.compile(eager)": (_bind(compiled, m, x, lengths, soft), with_gates),
    }


def run():
    """Yields the rows of each case in turn."""
    gen = torch.Generator().manual_seed(0)
    m = GatedMHSA(D, H).cuda()
    params = list(m.parameters())
    compiled = torch.compile(eager_mhsa, dynamic=False)
    for name, B, T in CASES:
        x = torch.randn(B, T, D, device="cuda", requires_grad=True)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=gen).cuda()
        grad = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
        soft = (0.2 + 0.8 * torch.rand(H, generator=gen)).cuda().requires_grad_()
        rows = []
        for mode in ("fwd", "fwd+bwd"):
            case = f"{name} soft gates"
            providers = _soft_providers(m, compiled, x, lengths, soft, params)
            for provider, (fn, inputs) in providers.items():
                rows.append(_time(dict(table="modules", case=case, mode=mode, provider=provider,
                                       baseline="eager (reference style)"),
                                  _step(fn, mode, inputs, grad)))
            by = {r["provider"]: r for r in rows if r["case"] == case and r["mode"] == mode}
            ours = by["ours"]
            ours["vs_compile"] = round(by["torch.compile(eager)"]["ms"] / ours["ms"], 3)
            for key in ("ms", "graph_ms"):
                if key in ours and key in by["ours gates=None"]:
                    ours[f"overhead_vs_none_{key}"] = round(
                        ours[key] / by["ours gates=None"][key] - 1, 4)

            case = f"{name} hard gates"
            hard = {"ours all on": [1.0] * H, "ours half on": [1.0, 0.0] * (H // 2),
                    "ours all off": [0.0] * H}
            for provider, values in hard.items():
                gates = torch.tensor(values, device="cuda")
                rows.append(_time(dict(table="modules", case=case, mode=mode, provider=provider,
                                       baseline="ours all on"),
                                  _step(_bind(m, x, lengths, gates), mode, [x] + params, grad)))
            by = {r["provider"]: r for r in rows if r["case"] == case and r["mode"] == mode}
            on = by["ours all on"]
            for key in ("ms", "graph_ms"):
                if key in on and key in by["ours half on"]:
                    by["ours half on"][f"target_{key}"] = round(0.55 * on[key] + 0.020, 5)
        yield rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    require_gpu("bench_mhsa")
    for rows in run():   # written case by case
        print(write_rows("kernels", rows))


if __name__ == "__main__":
    main()
