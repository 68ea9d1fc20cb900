"""The selection-only demo trains OrthoSoftmax scores and freezes nested, in-budget subnets;
the demo's options reach what they are for or are refused."""

import os
import shlex
import signal
import socket

import pytest
import torch
from test_train import as_overrides, tiny_run, write_corpus

import orthoasr
import orthoasr.data.synth as synth
import orthoasr.demo as demo
import orthoasr.train as train_module
from orthoasr.checkpoint import load_checkpoint
from orthoasr.cli import main as cli_main
from orthoasr.demo import select_subnets
from orthoasr.workdir import WorkDirError


def test_selection_demo_yields_nested_subnets_within_budget(capsys):
    cfg = orthoasr.SupernetConfig(num_layers=2, criterion="params", budgets=(0.4, 0.7, 1.0))
    gates = select_subnets(cfg, steps=40)
    _, _, total = orthoasr.unit_costs(cfg)
    for b, budget in enumerate(cfg.budgets):
        assert orthoasr.subnet_cost(cfg, gates[b]) <= budget * total
        if b:
            assert bool((gates[b - 1] <= gates[b]).all())
    assert torch.equal(gates[-1], torch.ones_like(gates[-1]))
    printed = capsys.readouterr().out
    assert "budget" in printed and "layer  2" in printed


@pytest.fixture
def calls(monkeypatch):
    """The demo's two entry points, recorded instead of run."""
    calls = {}
    monkeypatch.setattr(demo, "run_demo", lambda work_dir: calls.update(run_demo=work_dir))
    monkeypatch.setattr(demo, "select_subnets", lambda cfg, steps, seed: calls.update(
        select_subnets=(cfg.criterion, cfg.budgets, steps, seed)))
    return calls


def test_selection_options_are_refused_by_the_full_demo(calls, capsys):
    for flags in (["--steps", "5"], ["--seed", "1", "--criterion", "params"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["demo", *flags])
        assert exit_.value.code == 2
        error = capsys.readouterr().err
        assert all(flag in error for flag in flags[::2])
        assert "only with --selection-only" in error
    assert calls == {}
    cli_main(["demo", "--work-dir", "runs/elsewhere"])
    assert calls == {"run_demo": "runs/elsewhere"}
    cli_main(["demo"])
    assert calls == {"run_demo": "runs/demo"}


def test_selection_only_refuses_what_it_would_ignore(calls, capsys):
    """--work-dir was ignored by the selection-only demo, and an infeasible budget was
    found only at the freeze, after every step."""
    for flags, expected in ((["--work-dir", "runs/x"], "--work-dir runs/x: the selection-only"),
                            (["--budgets", "0.01,1.0"], "budget 0.01 is infeasible")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["demo", "--selection-only", *flags])
        assert exit_.value.code == 2
        assert expected in capsys.readouterr().err
    assert calls == {}


def test_selection_options_reach_the_selection(calls):
    cli_main(["demo", "--selection-only"])
    assert calls["select_subnets"] == ("flops", (0.5, 0.6, 0.7, 0.85, 1.0), 600, 0)
    cli_main(["demo", "--selection-only", "--steps", "5", "--criterion", "params",
              "--budgets", "0.4,1.0", "--seed", "3"])
    assert calls["select_subnets"] == ("params", (0.4, 1.0), 5, 3)


@pytest.mark.parametrize("command, flag, value, expected", [
    ("demo", "--budgets", "abc", "comma-separated numbers (e.g. 0.5,1.0)"),
    ("demo", "--steps", "0", "an integer >= 1"),
    ("train", "--stop-at", "-1", "an integer >= 1"),
    ("synth", "--workers", "0", "an integer >= 1"),
    # a path ending in / wrote a file of that name (`--out subs/` made a file subs)
    ("export", "--out", "subs/", "a file path (one ending in / names a folder)"),
    ("export", "--pt2", "programs/", "a file path (one ending in / names a folder)"),
    ("eval", "--csv", "results/", "a file path (one ending in / names a folder)"),
    ("eval", "--heatmap", "images/", "a file path (one ending in / names a folder)"),
])
def test_bad_option_values_are_named_by_their_flag(command, flag, value, expected, calls,
                                                   capsys):
    """The parser refuses them, naming the flag and the value, before anything runs (a
    --stop-at of -1 used to start a run that stopped at step 0)."""
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err
    assert calls == {}


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"orthoasr {orthoasr.__version__}"


def test_work_dir_help_says_where_the_corpus_goes(capsys):
    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the corpus goes to data/synth-demo" in help_text


class _Stop(Exception):
    pass


def test_demo_replaces_an_interrupted_corpus_and_reuses_a_finished_one(tmp_path, monkeypatch):
    synthesised = []

    def fake_synthesize(out_dir, **kwargs):
        synthesised.append(kwargs.get("overwrite"))
        (out_dir / "train.jsonl").write_text("")

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(synth, "synthesize_corpus", fake_synthesize)
    monkeypatch.setattr(demo, "train", stop)
    data_dir = tmp_path / "data"
    (data_dir / "wav").mkdir(parents=True)                  # an interrupted synthesis
    for _ in range(2):
        with pytest.raises(_Stop):
            demo.run_demo(tmp_path / "run", data_dir=data_dir, device="cpu")
    assert synthesised == [True]                              # once, replacing; then reused


def test_a_demo_work_dir_that_is_a_file_is_refused_before_the_corpus(tmp_path, monkeypatch):
    """It synthesised the whole corpus (~20 s on 2 cores) and only then said so."""
    def synthesise(*args, **kwargs):
        raise AssertionError("the corpus was synthesised first")

    monkeypatch.setattr(synth, "synthesize_corpus", synthesise)
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(WorkDirError, match="notes.txt is a file"):
        demo.run_demo(tmp_path / "notes.txt", data_dir=tmp_path / "data", device="cpu")


def test_an_interrupted_demo_stops_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the demo's training: it went on to score the half-trained model, said
    "demo finished", suggested the subnets of a freeze not yet made and exited 0; and the
    "--resume" it named is not an option of `orthoasr demo`. Now it exits 130 and prints
    the `orthoasr train` command that continues the run (tested here) and the eval after."""
    real_step = train_module.Trainer.train_step

    def step_then_interrupt(trainer, batch, on_device=None):
        real_step(trainer, batch, on_device)
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module.Trainer, "train_step", step_then_interrupt)
    data_dir = write_corpus(tmp_path / "data", n=6)
    overrides = as_overrides(tiny_run(data_dir, "stage1_steps=2", "stage2_steps=1"))
    work = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        demo.run_demo(work, config=None, overrides=overrides, data_dir=data_dir,
                      device="cpu")
    assert exit_.value.code == 128 + signal.SIGINT
    out = capsys.readouterr().out
    assert "demo finished" not in out and not (work / "eval.csv").exists()
    command = next(line.strip() for line in out.splitlines()
                   if line.strip().startswith("orthoasr train "))
    assert f"orthoasr eval --checkpoint {work / 'checkpoint.pt'}" in out
    monkeypatch.setattr(train_module.Trainer, "train_step", real_step)
    cli_main(shlex.split(command)[1:])
    assert load_checkpoint(work / "checkpoint.pt")["step"] == 3


def test_a_demo_in_the_current_folder_scores_and_names_the_new_run(tmp_path, monkeypatch,
                                                                   capsys):
    """`orthoasr demo --work-dir .` from inside an earlier demo run: training moved the old
    run aside to run.old-1 and trained the new one in run, but "." followed the current
    folder into run.old-1, so the demo scored the old run, wrote its heatmap there and
    printed commands for the old run's checkpoint."""
    data_dir = write_corpus(tmp_path / "data", n=6)
    overrides = as_overrides(tiny_run(data_dir, "stage1_steps=1", "stage2_steps=1"))
    work = tmp_path / "run"
    demo.run_demo(work, overrides=overrides, data_dir=data_dir, device="cpu")
    old = load_checkpoint(work / "checkpoint.pt")["model"]
    (work / "heatmap.png").unlink()
    monkeypatch.chdir(work)
    demo.run_demo(".", overrides=overrides + ["seed=1"], data_dir=data_dir, device="cpu")
    new = load_checkpoint(work / "checkpoint.pt")["model"]
    assert any(not torch.equal(new[k], old[k]) for k in old)          # a new run is there
    assert (work / "heatmap.png").exists()
    assert not (tmp_path / "run.old-1" / "heatmap.png").exists()
    assert f"--checkpoint {work / 'checkpoint.pt'} " in capsys.readouterr().out


def test_a_corpus_being_synthesised_is_not_synthesised_again(tmp_path, monkeypatch):
    """A second demo started while the first synthesised the corpus (no train.jsonl yet)
    synthesised it too, deleting the wav/ folder the first was writing; its run lock came
    only after. The synthesis now holds the corpus folder's lock: the second is refused."""
    def synthesise(*args, **kwargs):
        raise AssertionError("synthesised while another demo synthesises")

    monkeypatch.setattr(synth, "synthesize_corpus", synthesise)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / ".lock").write_text(f"1 {socket.gethostname()}\n")   # a live process
    with pytest.raises(WorkDirError, match=rf"{data_dir} is in use by process 1"):
        demo.run_demo(tmp_path / "run", data_dir=data_dir, device="cpu")
