"""Issue 13's speed targets checked against the newest `floors` rows (bench/bench_floor.py),
every time a CUDA-graph replay on one card. Used by bench/report.py; also

    python -m bench.targets        (prints the table)

Each target compares ours with a limit built from rows of the newest run of its case (a
ratio) or with a fixed time (the whole encoder). A target whose rows are missing is listed
as "not measured".
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import newest_by_case

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
MODULES = ("ffn", "conv", "mhsa")
SHAPES = ("B32xT250", "B16xT750")
ENCODER_MS = {("fwd+bwd", "all-on"): 10.0, ("fwd+bwd", "soft"): 11.0,
              ("fwd+bwd", "half"): 6.0, ("fwd", "all-on"): 2.5, ("fwd", "off"): 0.3}


def newest_graph_rows(rows: list[dict]) -> dict:
    """(case, mode, gates, provider) -> its graph-timed floors row from the newest run that
    measured the case (so that a ratio never mixes runs)."""
    newest = newest_by_case([r for r in rows if r.get("table") == "floors"])
    return {(r["case"], r["mode"], r["gates"], r["provider"]): r
            for case_rows in newest.values() for r in case_rows if r.get("timing") == "graph"}


def checks(rows: list[dict]) -> list[tuple[str, float | None, float | None, str]]:
    """[(target, ours in µs or None, limit in µs or None, commit)]."""
    t = newest_graph_rows(rows)

    def us(case, mode, gates, provider):
        r = t.get((case, mode, gates, provider))
        return (r["ms"] * 1e3, r["commit"]) if r else (None, "")

    out = []

    def add(name, ours, limit):
        (value, commit), limit_us = ours, limit
        out.append((name, value, limit_us, commit))

    for shape in SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            for kind in MODULES:
                case = f"{kind} {shape}"
                on, _ = us(case, mode, "all-on", "ours")
                floors = [v for p in ("dense_floor", "compile_floor")
                          if (v := us(case, mode, "all-on", p)[0]) is not None]
                add(f"{case} {mode} all-on <= 0.9x best floor", us(case, mode, "all-on", "ours"),
                    0.9 * min(floors) if floors else None)
                add(f"{case} {mode} soft <= 1.10x all-on", us(case, mode, "soft", "ours"),
                    1.10 * on if on else None)
                if kind != "conv":   # one unit: "half" is all-on
                    add(f"{case} {mode} half <= 0.60x all-on", us(case, mode, "half", "ours"),
                        0.60 * on if on else None)
                add(f"{case} {mode} off <= 0.05x all-on + 10 us", us(case, mode, "off", "ours"),
                    0.05 * on + 10 if on else None)
            case = f"attention {shape}"
            for provider, factor in (("sdpa_mask", 1.0), ("sdpa_nomask", 1.10)):
                ref, _ = us(case, mode, "all-on", provider)
                add(f"{case} {mode} <= {factor:.2f}x {provider}",
                    us(case, mode, "all-on", "ours"), factor * ref if ref else None)
    for (mode, gates), ms in ENCODER_MS.items():
        add(f"encoder B32xT250 {mode} {gates} <= {ms} ms",
            us("encoder B32xT250", mode, gates, "ours"), ms * 1e3)
    # the same all-off inference where the gates are known on the host (dead modules left
    # out, as in Recognizer and eval): a second row, the device-gated one above stays
    add("encoder B32xT250 fwd off, dead modules left out <= 0.3 ms",
        us("encoder B32xT250", "fwd", "off", "ours_host_masks"), 0.3e3)
    return out


def render(rows: list[dict]) -> str:
    lines = ["| target | ours (µs) | limit (µs) | met | commit |", "|---|---|---|---|---|"]
    for name, ours, limit, commit in checks(rows):
        if ours is None or limit is None:
            lines.append(f"| {name} | not measured | | | |")
            continue
        lines.append(f"| {name} | {ours:.1f} | {limit:.1f} | {'yes' if ours <= limit else 'no'} "
                     f"| {commit} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(render(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
