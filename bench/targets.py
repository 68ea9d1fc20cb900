"""Issue 13's speed targets checked against the newest `floors` rows (bench/bench_floor.py),
every time a CUDA-graph replay on one H200 (the card the issues name), and issue 14's
against the `e2e` rows (bench/e2e.py, bench/e2e_trainer.py). Used by bench/report.py.

Run:
    python -m bench.targets                (prints the table)
    python -m bench.targets --gpu H100     (the same targets over another card's rows)

Each target compares ours with a limit built from rows of one run of its case, the newest
that holds them all (a ratio), or with a fixed time (the whole encoder). A target whose rows
no run holds is listed as "not measured".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
MODULES = ("ffn", "conv", "mhsa")
SHAPES = ("B32xT250", "B16xT750")
# the whole encoder's targets: "dense" is the word for the supernet's pass, no gates
# at all (bench_floor's `dense` rows; until session 26 these read the all-on rows, hard
# gates of ones, which take the masked kernels' path). The inference targets read the
# `infer` rows (no grad; until session 33 the `fwd` rows, a training forward that also
# saves what the backward reads)
ENCODER_MS = {("fwd+bwd", "dense"): 10.0, ("fwd+bwd", "soft"): 11.0,
              ("fwd+bwd", "half"): 6.0, ("infer", "dense"): 2.5, ("infer", "off"): 0.3}

# commits whose change was measured slower and reverted: their rows stay in the JSON (what
# was measured), but the tables and targets, which describe the code on main, skip them
REVERTED = {
    "80c0e5b": "the depthwise convs at two channels a thread: slower in the modules and the "
               "encoder than in their sweep (bench/NOTES.md, session 42)",
    "d72458c": "the K-chunked row GEMM's three column tiles a program (N_SUB): faster as a "
               "bare product, slower in the FFN at B32xT250 (bench/NOTES.md, session 43)",
    "bf0ad3a": "d72458c's compile fix, reverted with it",
    "a8d5fd6": "the SiLU gate's whole 128x128 tile and one-mask epilogue (branch wip/next-gpu): "
               "slower in the FFN on an H100, 72.4 against 69.8 us forward (bench/NOTES.md, "
               "session 73); never merged",
    "33df730": "the LayerNorm backward's row as two column tiles, 256 + 128 (branch "
               "wip/ln-parts): 22.1-23.4 against 21.1 us at B32xT250 on an H100, the FFN and "
               "conv no faster (bench/NOTES.md, session 73); never merged",
    "09f7592": "33df730 with its offsets in runs of 4 (a sweep only): its one-tile form "
               "20.7 against main's 21.1 us (fp32 x), 18.0 against 18.1 (bf16), no module "
               "A/B run (bench/NOTES.md, session 73); never merged",
    "23d480c": "the LayerNorm backward's dgamma / dbeta as per-program partials summed by a "
               "second launch (PARTIALS, branch wip/ln-partials): 25.0 against 21.2 us at "
               "B32xT250 on an H100, more warps an SM no faster (session 73); never merged",
    "75bd61a": "a8d5fd6 again (bench/pending/next-gpu.patch) on an H100: 71.8 against main's "
               "69.4 us forward, 210.4-211.4 against 207.8 fwd+bwd (bench/NOTES.md, session "
               "74); never merged",
}


# the issues set their targets on the H200: rows from other cards stay in the JSON and in
# RESULTS.md's tables, but a target reads H200 rows only (an H100's ratio is not the H200's)
TARGET_GPU = "H200"


def on_card(rows: list[dict], gpu: str = TARGET_GPU) -> list[dict]:
    """The rows measured on a card whose name holds `gpu` (any case: "h100", "NVIDIA H200")."""
    return [row for row in rows if gpu.lower() in row.get("gpu", "").lower()]


def rows_of_main(rows: list[dict]) -> list[dict]:
    """The rows not measured on a reverted commit (REVERTED)."""
    return [row for row in rows if row.get("commit") not in REVERTED]


Key = tuple[str, str, str]          # (mode, gates, provider)


def graph_runs(rows: list[dict]) -> dict[str, list[dict[Key, dict]]]:
    """case -> its runs' graph-timed floors rows, newest run first, each run as
    {(mode, gates, provider): row}."""
    runs: dict[tuple[str, str], dict[Key, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("table") == "floors" and r.get("timing") == "graph":
            runs[r["case"], r["run_id"]][r["mode"], r["gates"], r["provider"]] = r
    by_case: dict[str, list[dict[Key, dict]]] = defaultdict(list)
    for (case, _run), run in runs.items():
        by_case[case].append(run)
    for case_runs in by_case.values():
        case_runs.sort(key=lambda run: max(r["date"] for r in run.values()), reverse=True)
    return by_case


def checks(rows: list[dict], gpu: str = TARGET_GPU
           ) -> list[tuple[str, float | None, float | None, str]]:
    """[(target, ours in µs or None, limit in µs or None, commit)]. Each target reads the
    newest run of its case that holds every row it compares (a ratio never mixes runs, and
    a newer run of a few gates alone does not hide an older complete one)."""
    runs = graph_runs(on_card(rows, gpu))
    out = []

    def add(name, case, ours: Key, limit=None, *choices: list[Key]):
        """ours against `limit(rows of the keys in the first choice a run holds)` (µs), or
        against a fixed time when limit is a number."""
        for keys in choices or ([],):
            for run in runs.get(case, []):
                if ours in run and all(k in run for k in keys):
                    value = run[ours]["ms"] * 1e3
                    bound = limit if not callable(limit) else limit(
                        [run[k]["ms"] * 1e3 for k in keys])
                    out.append((name, value, bound, run[ours]["commit"]))
                    return
        out.append((name, None, None, ""))

    for shape in SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            for kind in MODULES:
                case = f"{kind} {shape}"
                on = (mode, "all-on", "ours")
                dense, compiled = ((mode, "all-on", p) for p in ("dense_floor", "compile_floor"))
                add(f"{case} {mode} all-on <= 0.9x best floor", case, on,
                    lambda v: 0.9 * min(v), [dense, compiled], [dense], [compiled])
                add(f"{case} {mode} soft <= 1.10x all-on", case, (mode, "soft", "ours"),
                    lambda v: 1.10 * v[0], [on])
                if kind != "conv":   # one unit: "half" is all-on
                    add(f"{case} {mode} half <= 0.60x all-on", case, (mode, "half", "ours"),
                        lambda v: 0.60 * v[0], [on])
                add(f"{case} {mode} off <= 0.05x all-on + 10 us", case, (mode, "off", "ours"),
                    lambda v: 0.05 * v[0] + 10, [on])
            case = f"attention {shape}"
            for provider, factor in (("sdpa_mask", 1.0), ("sdpa_nomask", 1.10)):
                add(f"{case} {mode} <= {factor:.2f}x {provider}", case,
                    (mode, "all-on", "ours"), lambda v, f=factor: f * v[0],
                    [(mode, "all-on", provider)])
    for (mode, gates), ms in ENCODER_MS.items():
        add(f"encoder B32xT250 {mode} {gates} <= {ms} ms", "encoder B32xT250",
            (mode, gates, "ours"), ms * 1e3)
    # the same all-off inference where the gates are known on the host (dead modules left
    # out, as in Recognizer and eval): a second row, the device-gated one above stays
    add("encoder B32xT250 infer off, dead modules left out <= 0.3 ms", "encoder B32xT250",
        ("infer", "off", "ours_host_masks"), 0.3e3)
    # and with the gates on the device, dead blocks skipped by CUDA-graph IF nodes (opt-in:
    # ~12 us more a live block)
    add("encoder B32xT250 infer off, dead blocks skipped on the device <= 0.3 ms",
        "encoder B32xT250", ("infer", "off", "ours_skip_dead_blocks"), 0.3e3)
    return out


def render(rows: list[dict], gpu: str = TARGET_GPU) -> str:
    lines = ["| target | ours (µs) | limit (µs) | met | commit |", "|---|---|---|---|---|"]
    for name, ours, limit, commit in checks(rows, gpu):
        if ours is None or limit is None:
            lines.append(f"| {name} | not measured | | | |")
            continue
        lines.append(f"| {name} | {ours:.1f} | {limit:.1f} | {'yes' if ours <= limit else 'no'} "
                     f"| {commit} |")
    return "\n".join(lines) + "\n"


# issue 14's trainer targets hold at its own setting: configs/paper.yaml as it is (8 shape
# classes) on the synthetic `base` corpus; rows of quicker settings are left out
TRAINER_CASE_END = "corpus synth-base"
TRAINER_AUDIO_S = {1: 12000.0, 2: 10000.0}


def e2e_checks(rows: list[dict]) -> list[tuple[str, str | None, str | None, bool | None, str]]:
    """[(target, ours, limit, met, commit)] for issue 14, each from the newest run holding
    every row it compares. The references' times are of eager calls (the issue's anchors),
    ours of CUDA-graph replays."""
    runs: dict[str, dict[tuple[str, str, str], dict]] = defaultdict(dict)
    for r in on_card(rows):
        trainer = r.get("workload", "").startswith("trainer")
        if r.get("table") != "e2e" or (trainer and (r.get("settings") or not r["case"].endswith(
                TRAINER_CASE_END))):
            continue
        runs[r["run_id"]][r["workload"], r["provider"], r["timing"]] = r
    newest_first = sorted(runs.values(), reverse=True,
                          key=lambda run: max(r["date"] for r in run.values()))
    out = []

    def add(name, keys, check):
        """check(*rows of keys) -> (ours, limit, met), from the newest run holding keys."""
        for run in newest_first:
            if all(k in run for k in keys):
                out.append((name, *check(*(run[k] for k in keys)), run[keys[0]]["commit"]))
                return
        out.append((name, None, None, None, ""))

    def at_most(fraction):
        return lambda ours, ref: (f"{ours['ms']:.2f} ms", f"{fraction * ref['ms']:.2f} ms",
                                  ours["ms"] <= fraction * ref["ms"])

    pair, triple = "encoder stage-1 pair", "encoder stage-2 triple"
    for provider in ("ours_one_batch", "ours"):
        for ref, fraction in (("eager_reference", 1 / 8), ("compile_reference", 1 / 4)):
            add(f"{pair}, {provider} <= 1/{round(1 / fraction)} {ref}",
                [(pair, provider, "graph"), (pair, ref, "eager")], at_most(fraction))
    add(f"{triple} <= 1/8 eager_reference",
        [(triple, "ours", "graph"), (triple, "eager_reference", "eager")], at_most(1 / 8))
    for stage, audio in TRAINER_AUDIO_S.items():
        ours, ref = (f"trainer stage {stage}", "ours", "stream"), \
            (f"trainer stage {stage}", "eager_reference", "stream")
        add(f"trainer stage {stage} >= {audio:,.0f} audio s/s", [ours],
            lambda r, a=audio: (f"{r['audio_s_per_s']:,.0f}", f"{a:,.0f}", r["audio_s_per_s"] >= a))
        add(f"trainer stage {stage} longest steady step <= 1.5x median", [ours],
            lambda r: (f"{r['max_over_median']:.2f}", "1.50", r["max_over_median"] <= 1.5))
        add(f"trainer stage {stage} peak memory <= eager_reference", [ours, ref],
            lambda r, b: (_gib(r["peak_mem_mb"]), _gib(b["peak_mem_mb"]),
                          r["peak_mem_mb"] <= b["peak_mem_mb"]))
    # the weights' copies kept between calls, as Recognizer.from_checkpoint and `orthoasr
    # eval` run inference, or made in every call
    for provider in ("ours_frozen_weights", "ours"):
        dense, half = ("infer dense", provider, "graph"), ("infer 50%", provider, "graph")
        add(f"infer dense, {provider} <= 3.0 ms", [dense],
            lambda r: (f"{r['ms']:.2f} ms", "3.00 ms", r["ms"] <= 3.0))
        add(f"infer 50%, {provider} <= (f + 0.05) x infer dense", [half, dense],
            lambda h, d: (f"{h['ms']:.2f} ms",
                          f"{(h['flops_fraction'] + 0.05) * d['ms']:.2f} ms",
                          h["ms"] <= (h["flops_fraction"] + 0.05) * d["ms"]))
    return out


def _gib(mb: float) -> str:
    return f"{mb / 1024:.1f} GiB"


def render_e2e(rows: list[dict]) -> str:
    lines = ["| target | ours | limit | met | commit |", "|---|---|---|---|---|"]
    for name, ours, limit, met, commit in e2e_checks(rows):
        if ours is None:
            lines.append(f"| {name} | not measured | | | |")
            continue
        lines.append(f"| {name} | {ours} | {limit} | {'yes' if met else 'no'} | {commit} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default=TARGET_GPU,
                        help=f"the card whose rows to read (a part of its name; default "
                             f"{TARGET_GPU}, the card the targets are set on: elsewhere the "
                             "ratios read the same, the encoder's fixed times do not)")
    args = parser.parse_args()
    for path in (RESULTS, RESULTS.parent / "e2e.json"):
        if not path.is_file():
            raise SystemExit(f"bench.targets: {path} not found; the GPU benchmarks write it "
                             "(bench/gpu_all.sh)")
    rows = rows_of_main(json.loads(RESULTS.read_text()))
    if not on_card(rows, args.gpu):     # else every target would read "not measured"
        cards = sorted({row.get("gpu", "") for row in rows})
        raise SystemExit(f"bench.targets: no rows of a card named like {args.gpu!r} in "
                         f"{RESULTS}; its cards: {', '.join(cards)}")
    print(render(rows, args.gpu))
    if TARGET_GPU.lower() not in args.gpu.lower():      # issue 14's rows are H200 runs only
        return
    print(render_e2e(rows_of_main(json.loads((RESULTS.parent / "e2e.json").read_text()))))


if __name__ == "__main__":
    main()
