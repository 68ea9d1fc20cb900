"""EXPERIMENTS.md and the WER-against-FLOPs plot from experiments/results.json (issue 17).

    python -m experiments.report [--results experiments/results.json] [--out EXPERIMENTS.md]

The newest row per (arm, budget) counts. Per arm: a table (budget, FLOPs, params, WER and
CER, units kept per kind, updates, minutes, card, commit, config and checkpoint hashes).
Then the goal's comparisons, computed: each subnet of arm 1 against the individually
trained model of its budget (relative WER), and each arm's mean test WER over the budgets
it shares with arm 1. The plot: test WER against FLOPs, one line per arm. An
`analysis.md` beside the results (the reading of the numbers, by hand) comes after the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from experiments.arms import ARMS, FIRST

HERE = Path(__file__).resolve().parent
INDIVIDUAL = "individual-flops-component"
KINDS = ("ffn", "conv", "mhsa")
KIND_NAMES = {"ffn": "FFN units", "conv": "conv modules", "mhsa": "attention units"}


def total(kept: int | list[int]) -> int:
    """Units kept of one kind: rows hold a count per layer (older rows one count)."""
    return sum(kept) if isinstance(kept, list) else kept


def survival(rows: dict[float, dict]) -> list[str]:
    """Per budget: the share of each unit kind kept, and the share of heads kept in the lower
    and the upper half of the layers (the supernet row, budget 1.0, holds every unit)."""
    full = rows.get(1.0)
    if full is None or not all(isinstance(full["kept"].get(k), list) for k in KINDS):
        return []
    layers = len(full["kept"]["mhsa"])
    half = layers // 2

    def share(kept, whole):
        return sum(kept) / sum(whole) if sum(whole) else float("nan")
    lines = ["| budget | " + " | ".join(KIND_NAMES[k] + " kept" for k in KINDS) +
             f" | attention kept, layers 1-{half} | attention kept, layers {half + 1}-{layers} |",
             "|---" * (len(KINDS) + 3) + "|"]
    for budget in sorted(rows):
        kept = rows[budget]["kept"]
        cells = [share(kept[k], full["kept"][k]) for k in KINDS]
        cells += [share(kept["mhsa"][:half], full["kept"]["mhsa"][:half]),
                  share(kept["mhsa"][half:], full["kept"]["mhsa"][half:])]
        lines.append(f"| {budget:.2f} | " + " | ".join(f"{100 * c:.0f}%" for c in cells) + " |")
    return lines


def repeats(rows: list[dict]) -> list[str]:
    """(arm, budget) pairs trained more than once: each run's test WER and the spread, the
    measure of noise between reruns of one config."""
    runs: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["arm"], float(row["budget"])), []).append(row)
    lines = []
    for (arm, budget), group in sorted(runs.items()):
        if len(group) < 2:
            continue
        wers = [100 * r["wer_test"] for r in group]
        same = "same" if len({r["config_hash"] for r in group}) == 1 else "different"
        lines.append(f"| {arm} | {budget:.2f} | " + ", ".join(f"{w:.1f}%" for w in wers) +
                     f" | {max(wers) - min(wers):.1f} | {same} |")
    if lines:
        lines = ["| arm | budget | test WER of each run | spread (points) | configs |",
                 "|---|---|---|---|---|"] + lines
    return lines


def newest(rows: list[dict]) -> dict[str, dict[float, dict]]:
    """{arm: {budget: the last row written for it}}."""
    table: dict[str, dict[float, dict]] = {}
    for row in rows:
        table.setdefault(row["arm"], {})[float(row["budget"])] = row
    return table


def arm_table(rows: dict[float, dict]) -> list[str]:
    lines = ["| budget | MFLOPs | params | WER dev | WER test | CER test | kept (ffn / conv / "
             "heads) | updates | minutes | card | commit | config | checkpoint |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for budget in sorted(rows):
        r = rows[budget]
        kept = " / ".join(str(total(r["kept"].get(k, 0))) for k in KINDS)
        lines.append(f"| {budget:.2f} | {r['flops'] / 1e6:,.1f} | {r['params']:,} | "
                     f"{100 * r['wer_dev']:.1f}% | {100 * r['wer_test']:.1f}% | "
                     f"{100 * r['cer_test']:.1f}% | {kept} | {r['updates']} | "
                     f"{r['gpu_minutes']:.1f} | {r['gpu']} | {r['commit']} | "
                     f"`{r['config_hash'][:10]}` | `{r['checkpoint_sha256'][:10]}` |")
    return lines


def comparisons(table: dict[str, dict[float, dict]]) -> list[str]:
    first = table.get(FIRST, {})
    lines = []
    if first and INDIVIDUAL in table:
        lines += ["| budget | arm 1 WER test | individually trained | relative | within 5% |",
                  "|---|---|---|---|---|"]
        for budget, alone in sorted(table[INDIVIDUAL].items()):
            if budget not in first:
                continue
            ours, theirs = first[budget]["wer_test"], alone["wer_test"]
            rel = ours / theirs - 1 if theirs > 0 else float("inf")
            lines.append(f"| {budget:.2f} | {100 * ours:.1f}% | {100 * theirs:.1f}% | "
                         f"{100 * rel:+.1f}% | {'yes' if rel <= 0.05 else 'no'} |")
        lines.append("")
    if first:
        lines += ["| arm | mean WER test over arm 1's budgets | arm 1's, same budgets |",
                  "|---|---|---|"]
        for arm, rows in table.items():
            shared = sorted(set(rows) & set(first))
            if arm == FIRST or not shared:
                continue
            mean = statistics.fmean(rows[b]["wer_test"] for b in shared)
            ref = statistics.fmean(first[b]["wer_test"] for b in shared)
            lines.append(f"| {arm} | {100 * mean:.1f}% | {100 * ref:.1f}% |")
    return lines


def plot(table: dict[str, dict[float, dict]], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in [a for a in ARMS if a in table] + [a for a in table if a not in ARMS]:
        rows = sorted(table[arm].values(), key=lambda r: r["flops"])
        ax.plot([r["flops"] / 1e6 for r in rows], [100 * r["wer_test"] for r in rows],
                marker="o", label=arm)
    ax.set_xlabel("MFLOPs per utterance")
    ax.set_ylabel("test WER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--out", default=str(HERE.parent / "EXPERIMENTS.md"))
    args = parser.parse_args()
    results = Path(args.results)
    if not results.is_file():
        parser.error(f"--results {results} not found: `python -m experiments.run` writes it")
    rows = json.loads(results.read_text())
    table = newest(rows)
    out = Path(args.out)
    figure = plot(table, results.parent / "wer_vs_flops.png")

    def link(path: Path) -> str:
        return os.path.relpath(path, out.parent)
    lines = ["# Experiments (issue 17)", "",
             f"Generated by `python -m experiments.report` from `{link(results)}`; each row "
             "comes from `python -m experiments.run` (config and checkpoint hashes below).",
             "", f"![test WER against FLOPs]({link(figure)})", ""]
    analysis = results.parent / "analysis.md"       # written by hand, after the runs
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    for arm in [a for a in ARMS if a in table] + [a for a in table if a not in ARMS]:
        lines += [f"## {arm}", "", *arm_table(table[arm]), ""]
        heatmap = results.parent / f"heatmap-{arm}.png"
        if heatmap.exists():
            lines += [f"![units kept, {arm}]({link(heatmap)})", ""]
        kinds = survival(table[arm])
        if kinds:
            lines += ["Share of each unit kind kept, by budget:", "", *kinds, ""]
    lines += ["## Against the goal", "", *comparisons(table), ""]
    reruns = repeats(rows)
    if reruns:
        lines += ["## Reruns", "", *reruns, ""]
    out.write_text("\n".join(lines))
    print(f"{out} and {figure}")


if __name__ == "__main__":
    main()
