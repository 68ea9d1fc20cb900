"""Issue 17's pipeline, tiny, on the CPU: arm 1, its individually trained subnet and a shrunk
plain model, a few steps each, then the report. A smoke test: no quality is asserted."""

import json
import sys

import pytest
from test_train import write_corpus

from experiments import report, run
from experiments.arms import FIRST, jobs, shrunk_model
from experiments.score_dynamics import score_dynamics
from orthoasr.config import SupernetConfig
from orthoasr.units import unit_costs

TINY = ["model.num_layers=2", "model.d_model=32", "model.num_heads=2", "model.ff_dim=64",
        "model.ff_chunks=2", "model.conv_kernel=5", "model.vocab_size=24",
        "model.frontend_channels=[4,8]", "model.dropout=0.0", "model.ref_frames=50",
        "max_frames=1500", "warmup_steps=2", "stage1_steps=2", "stage2_steps=2",
        "penalty_warmup=1", "log_every=1", "ckpt_every=100", "backend=torch",
        "spec_augment=false"]


def test_shrunk_model_matches_the_budget_flops():
    cfg = SupernetConfig(criterion="flops")
    small = shrunk_model(cfg, 0.5)
    ratio = unit_costs(small, "flops")[2] / unit_costs(cfg, "flops")[2]
    assert abs(ratio - 0.5) < 0.05 and small.d_model % (8 * cfg.num_heads) == 0


@pytest.mark.parametrize("parallel", [1, 2], ids=["in-turn", "side-by-side"])
def test_pipeline_writes_rows_and_the_report(tmp_path, monkeypatch, parallel):
    """In turn, or two jobs at a time in their own processes (--parallel): the same rows,
    arm 1's individually trained subnet last."""
    corpus = write_corpus(tmp_path / "corpus")
    manifests = [f"{s}_manifest={corpus / (s + '.jsonl')}" for s in ("train", "dev", "test")]
    results = tmp_path / "out" / "results.json"
    results.parent.mkdir()
    monkeypatch.setattr(sys, "argv", [
        "run", "--config", "configs/tiny.yaml", "--budgets", "0.9", "1.0",
        "--arms", FIRST, "individual-flops-component", "shrunk",
        "--work-dir", str(tmp_path / "runs"), "--out", str(results),
        "--parallel", str(parallel), "--set", *TINY, *manifests])
    run.main()
    rows = json.loads(results.read_text())
    assert [(r["arm"], r["budget"]) for r in rows] == [
        (FIRST, 0.9), (FIRST, 1.0), ("shrunk", 0.9), ("individual-flops-component", 0.9)]
    assert [r["side_by_side"] for r in rows] == ([1] * 4 if parallel == 1 else [2, 2, 2, 1])
    fields = {"arm", "budget", "flops", "params", "wer_dev", "wer_test", "cer_test",
              "updates", "gpu_minutes", "gpu", "commit", "config_hash", "checkpoint_sha256"}
    assert all(fields <= set(r) and r["updates"] == 4 for r in rows)
    assert rows[0]["flops"] == rows[3]["flops"]          # the same units, trained alone
    assert len(rows[0]["kept"]["mhsa"]) == 2 and sum(rows[1]["kept"]["conv"]) == 2
    out = tmp_path / "EXPERIMENTS.md"
    monkeypatch.setattr(sys, "argv", ["report", "--results", str(results), "--out", str(out)])
    report.main()
    text = out.read_text()
    assert "## individual-flops-component" in text and "| 0.90 |" in text
    assert (tmp_path / "out" / "wer_vs_flops.png").stat().st_size > 0
    assert (tmp_path / "out" / f"heatmap-{FIRST}.png").exists()
    assert "Share of each unit kind kept" in text


def test_individual_models_train_from_the_first_arms_frozen_masks_alone(tmp_path,
                                                                          monkeypatch):
    """Arm 1 on one machine, its individually trained subnets on another: the small
    frozen_masks.pt carried between them stands for arm 1's checkpoint. Run twice, the
    report lists the rerun."""
    corpus = write_corpus(tmp_path / "corpus")
    manifests = [f"{s}_manifest={corpus / (s + '.jsonl')}" for s in ("train", "dev", "test")]
    results = tmp_path / "results.json"
    common = ["--config", "configs/tiny.yaml", "--budgets", "0.9", "1.0", "--out",
              str(results), "--set", *TINY, *manifests]
    monkeypatch.setattr(sys, "argv", ["run", "--arms", FIRST, "--work-dir",
                                      str(tmp_path / "first"), *common])
    run.main()
    masks = tmp_path / "first" / FIRST / "frozen_masks.pt"
    assert masks.stat().st_size * 20 < (masks.parent / "checkpoint.pt").stat().st_size
    for attempt in range(2):
        monkeypatch.setattr(sys, "argv", [
            "run", "--arms", "individual-flops-component", "--first-masks", str(masks),
            "--work-dir", str(tmp_path / f"second{attempt}"), *common])
        run.main()
    rows = json.loads(results.read_text())
    assert [(r["arm"], r["budget"]) for r in rows] == [
        (FIRST, 0.9), (FIRST, 1.0)] + [("individual-flops-component", 0.9)] * 2
    assert rows[0]["flops"] == rows[2]["flops"] == rows[3]["flops"]
    out = tmp_path / "EXPERIMENTS.md"
    monkeypatch.setattr(sys, "argv", ["report", "--results", str(results), "--out", str(out)])
    report.main()
    assert "## Reruns" in out.read_text()


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "two"])
def test_parallel_must_be_a_positive_int(monkeypatch, capsys, bad):
    """--parallel 0 (or less) ran the jobs in turn as if it were 1: now a usage error."""
    monkeypatch.setattr(sys, "argv", ["run", "--parallel", bad])
    with pytest.raises(SystemExit) as exit_:
        run.main()
    assert exit_.value.code == 2
    assert f"argument --parallel: must be an int >= 1, got '{bad}'" in capsys.readouterr().err


def test_individual_arm_needs_the_first_arms_checkpoint():
    with pytest.raises(ValueError, match="run that arm first"):
        jobs("individual-flops-component", (0.5, 1.0), None, SupernetConfig())


def test_clamped_arms_are_their_orthosoftmax_arm_with_clamped_masks():
    cfg = SupernetConfig()
    plain, = jobs(FIRST, (0.5, 1.0), None, cfg)
    clamped, = jobs(f"{FIRST}-clamped", (0.5, 1.0), None, cfg)
    assert clamped.overrides == (*plain.overrides, "clamp_masks=true")
    with pytest.raises(ValueError, match="unknown arm"):
        jobs("simple-topk-flops-component-clamped", (0.5, 1.0), None, cfg)


def test_score_dynamics_reports_every_budget():
    steps = list(score_dynamics("configs/experiment.yaml", ["stage1_steps=3"], every=2))
    assert [s[0] for s in steps] == [0, 2]
    assert all(len(s[2]) == 5 and 1 <= s[3] <= s[4] for s in steps)


def test_a_tagged_variant_stands_beside_its_arm(tmp_path, monkeypatch):
    """--tag: the rows, work directory and heatmap name the arm ARM+TAG; --set carries the
    variant's settings; the variant's individually trained subnets take the variant's arm 1
    masks (there is no untagged arm 1 here), also side by side (--parallel)."""
    corpus = write_corpus(tmp_path / "corpus")
    manifests = [f"{s}_manifest={corpus / (s + '.jsonl')}" for s in ("train", "dev", "test")]
    results = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", [
        "run", "--config", "configs/tiny.yaml", "--budgets", "0.9", "1.0", "--arms", FIRST,
        "individual-flops-component", "--tag", "l2sqrt", "--parallel", "2",
        "--work-dir", str(tmp_path / "runs"), "--out", str(results),
        "--set", *TINY, *manifests, "penalty_norm=l2_sqrt"])
    run.main()
    rows = json.loads(results.read_text())
    assert [(r["arm"], r["budget"]) for r in rows] == [
        (f"{FIRST}+l2sqrt", 0.9), (f"{FIRST}+l2sqrt", 1.0),
        ("individual-flops-component+l2sqrt", 0.9)]
    assert rows[2]["kept"] == rows[0]["kept"]             # the variant's units, trained alone
    assert (tmp_path / "runs" / f"{FIRST}+l2sqrt" / "checkpoint.pt").exists()
    assert (tmp_path / f"heatmap-{FIRST}+l2sqrt.png").exists()
