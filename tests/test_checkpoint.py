"""Checkpoints: a resumed run repeats the uninterrupted run's losses exactly; config
mismatches are named; writes are atomic; loading is weights_only."""

import os

import pytest
import torch
from test_train import tiny_run, write_corpus

from orthoasr import Recognizer, set_backend
from orthoasr.checkpoint import (
    SUBNET_KIND,
    TRAINING_KIND,
    CheckpointError,
    kept_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from orthoasr.export import load_subnet
from orthoasr.metrics import read_metrics
from orthoasr.train import train
from orthoasr.trained import load_trained


@pytest.fixture(autouse=True)
def restore_backend():
    yield
    set_backend("auto")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def losses(work_dir):
    return [(int(r["step"]), r["loss"], r["loss_sup"], r["loss_sub"], r["penalty"])
            for r in read_metrics(work_dir / "metrics.csv")]


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(corpus, tmp_path):
    """Interrupted once in stage 1 and once in stage 2 (SpecAugment, stochastic depth and the
    budget draws all consume RNG), the loss sequence equals the uninterrupted one."""
    run = tiny_run(corpus, "stage1_steps=4", "stage2_steps=4", "spec_augment=true",
                   "stochastic_depth=0.5", "ckpt_every=100")
    train(run, tmp_path / "straight")
    train(run, tmp_path / "resumed", stop_at=2)
    train(run, tmp_path / "resumed", resume=True, stop_at=6)
    trainer = train(run, tmp_path / "resumed", resume=True)
    assert trainer.step == 8
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [s[0] for s in resumed] == list(range(1, 9))
    assert resumed == straight
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    torch.testing.assert_close(a["frozen_masks"], b["frozen_masks"])
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0)


@pytest.mark.gpu
def test_resume_with_cuda_graphs_gives_the_same_losses(corpus, tmp_path):
    """Steps replayed from CUDA graphs, interrupted in each stage (the resumed run captures
    its graphs anew; its optimiser's learning rates become device tensors again), against
    an uninterrupted run; and a graph run's checkpoint resumes without graphs. No random
    ops, so the sequences agree but for float rounding (atomics)."""
    import numpy as np
    common = ("stage1_steps=4", "stage2_steps=4", "spec_augment=false", "stochastic_depth=0",
              "ckpt_every=100", "backend=auto", "device=cuda", "shape_classes=2")
    run = tiny_run(corpus, *common, "cuda_graphs=true")
    train(run, tmp_path / "straight")
    train(run, tmp_path / "resumed", stop_at=2)
    train(run, tmp_path / "resumed", resume=True, stop_at=6)
    train(tiny_run(corpus, *common, "cuda_graphs=false"), tmp_path / "resumed", resume=True)
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [s[0] for s in resumed] == list(range(1, 9))
    np.testing.assert_allclose(np.array(resumed)[:, 1:], np.array(straight)[:, 1:], rtol=2e-3)


def test_resume_with_a_different_config_names_the_fields(corpus, tmp_path):
    run = tiny_run(corpus, "stage1_steps=1", "stage2_steps=0")
    train(run, tmp_path)
    changed = tiny_run(corpus, "stage1_steps=1", "stage2_steps=0", "lr=0.5",
                       "model.d_model=64", "log_every=7")
    with pytest.raises(ValueError, match=r"mismatching fields: lr: checkpoint 0\.001 vs config "
                                         r"0\.5, model\.d_model: checkpoint 32 vs config 64; "
                                         r"to continue the run as it was written, resume "
                                         r"without --config .* without overrides of these "
                                         r"fields$"):
        train(changed, tmp_path, resume=True)


def test_a_resume_on_another_training_manifest_first_offers_the_runs_own(tmp_path):
    """A resume whose config names another corpus (the wrong --config: the demo's run
    resumed with configs/tiny.yaml) was told only to add --allow-data-change, which trains
    the run on that other corpus; the run's own manifest and config come first."""
    first, other = write_corpus(tmp_path / "a", n=6), write_corpus(tmp_path / "b", n=6, seed=1)
    train(tiny_run(first, "stage1_steps=1", "stage2_steps=0"), tmp_path / "run")
    with pytest.raises(ValueError) as info:
        train(tiny_run(other, "stage1_steps=1", "stage2_steps=0"), tmp_path / "run",
              resume=True)
    assert str(info.value).endswith(
        f"; the run trained on {first / 'train.jsonl'}: give that path (a resume without "
        "--config continues the checkpoint's own config), or add --allow-data-change to "
        "resume on another training manifest on purpose"), str(info.value)


def test_checkpoint_from_before_a_new_key_resumes_with_its_default(corpus, tmp_path):
    """A config key added after a checkpoint was written (shape_classes, distill_weight)
    takes its default on resume; a non-default value is still a mismatch."""
    run = tiny_run(corpus, "stage1_steps=1", "stage2_steps=1")
    train(run, tmp_path, stop_at=1)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    for key in ("shape_classes", "distill_weight"):
        del state["run_config"][key]
    save_checkpoint(path, state)
    assert train(run, tmp_path, resume=True).step == 2
    with pytest.raises(ValueError, match="shape_classes: checkpoint 0 vs config 3"):
        train(tiny_run(corpus, "stage1_steps=1", "stage2_steps=2", "shape_classes=3"),
              tmp_path, resume=True)


def test_checkpoint_is_self_describing_and_loads_weights_only(corpus, tmp_path):
    run = tiny_run(corpus, "stage1_steps=2", "stage2_steps=1")
    train(run, tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["run_config"] == run.to_dict()
    assert isinstance(state["tokenizer"], bytes) and state["tokenizer"]
    assert state["frozen_masks"].shape == (3, 14) and state["step"] == 3
    assert {"torch", "python", "numpy", "budget"} <= set(state["rng"])
    assert state["optimizer"]["state"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    class NotPicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"step": 2, "w": NotPicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an orthoasr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def write_kept(folder, steps_in_write_order):
    """Empty step-N.pt files, each modified a second after the one before."""
    folder.mkdir(exist_ok=True)
    for second, step in enumerate(steps_in_write_order):
        path = folder / f"step-{step:07d}.pt"
        path.write_bytes(b"")
        os.utime(path, (1_700_000_000 + second,) * 2)


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_kept_checkpoints_go_by_their_step_not_their_modification_time(tmp_path):
    """A copied or restored checkpoints/ folder (or a clock change) gives the files other
    modification times: ordered by those, the newest step was taken for the oldest, and
    pruning deleted it. A name that gives no step is no run's: not listed, never pruned."""
    folder = tmp_path / "checkpoints"
    write_kept(folder, [300, 100, 200])
    (folder / "step-best.pt").write_bytes(b"the user's")
    assert [p.name for p in kept_checkpoints(folder)] == \
        ["step-0000100.pt", "step-0000200.pt", "step-0000300.pt"]
    write_kept(folder, [400])
    prune_checkpoints(folder, 2, 400)
    assert names(folder) == ["step-0000300.pt", "step-0000400.pt", "step-best.pt"]


def test_pruning_after_a_resume_from_an_earlier_step_keeps_the_checkpoint_written(tmp_path):
    """Resumed from step 100 of a run that had reached 300: the later steps' checkpoints
    (the continuation abandoned) go before the new line's, the one just written last."""
    folder = tmp_path / "checkpoints"
    write_kept(folder, [100, 200, 300, 150])
    prune_checkpoints(folder, 3, 150)
    assert names(folder) == ["step-0000100.pt", "step-0000150.pt", "step-0000300.pt"]
    prune_checkpoints(folder, 1, 150)
    assert names(folder) == ["step-0000150.pt"]


def test_a_file_that_is_not_a_checkpoint_is_named_by_every_loader(corpus, tmp_path):
    """Text, a WAV file and random bytes are "not an orthoasr checkpoint" (not torch's
    KeyError: 101, IndexError or its "could run code"); a checkpoint missing fields names
    them. Through load_checkpoint, load_trained, load_subnet and Recognizer."""
    text = tmp_path / "text.pt"
    text.write_text("hello\nnot a checkpoint\n")
    wav = tmp_path / "clip.pt"
    wav.write_bytes((corpus / "dev_0.wav").read_bytes())
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(torch.randint(0, 256, (3000,), dtype=torch.uint8).tolist()))
    loaders = [load_checkpoint, load_trained, load_subnet, Recognizer.from_checkpoint,
               Recognizer.from_subnet]
    for path in (text, wav, noise):
        for load in loaders:
            with pytest.raises(CheckpointError) as error:
                load(path)
            assert f"{path} is not an orthoasr checkpoint" in str(error.value), load
            assert "could run code" not in str(error.value)
    fieldless = tmp_path / "fieldless.pt"
    save_checkpoint(fieldless, {"run_config": {}})
    for load in (load_trained, Recognizer.from_checkpoint):
        with pytest.raises(CheckpointError, match=f"{fieldless} is not a complete orthoasr "
                                                  "checkpoint: it lacks step, frozen_masks, "
                                                  "model, tokenizer; this needs a training"):
            load(fieldless)
    subnet = tmp_path / "subnet.pt"
    save_checkpoint(subnet, {"kind": SUBNET_KIND, "config": {}})
    for load in (load_subnet, Recognizer.from_subnet):
        with pytest.raises(CheckpointError, match=f"{subnet} is not a complete orthoasr "
                                                  "checkpoint: it lacks widths, budget, "
                                                  "state_dict, tokenizer; this needs an "
                                                  "exported subnet"):
            load(subnet)


def test_stage1_checkpoint_evaluates_the_supernet_and_refuses_export(corpus, tmp_path,
                                                                     capsys):
    """And says why it writes no heatmap (a --heatmap given was ignored without a word)."""
    from orthoasr.evaluate import evaluate
    run = tiny_run(corpus, "stage1_steps=3", "stage2_steps=3")
    train(run, tmp_path, stop_at=1)
    rows = evaluate(tmp_path / "checkpoint.pt", heatmap=tmp_path / "units.png")
    assert [r["subnet"] for r in rows] == ["supernet"] and rows[0]["units"] == 14
    assert f"no heatmap {tmp_path / 'units.png'}: the checkpoint (step 1) is from stage 1, " \
        "before its subnets are frozen" in capsys.readouterr().out
    assert not (tmp_path / "units.png").exists()
    assert 0.0 <= rows[0]["wer_dev"] and 0.0 <= rows[0]["wer_test"]
    with pytest.raises(ValueError, match="from stage 1: no frozen subnets"):
        load_trained(tmp_path / "checkpoint.pt").subnet_gates(0)


def test_a_work_dir_given_as_the_checkpoint_names_its_checkpoint(tmp_path):
    """`--checkpoint runs/tiny` for runs/tiny/checkpoint.pt was refused as a directory, not
    saying which file was meant."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=rf"checkpoint {run} is a directory, not a "
                                              rf"file$"):
        load_checkpoint(run)
    (run / "checkpoint.pt").write_bytes(b"")
    for kind in (None, TRAINING_KIND):
        with pytest.raises(CheckpointError, match=rf"checkpoint {run} is a directory, not a "
                                                  rf"file \(the run's checkpoint: "
                                                  rf"{run / 'checkpoint.pt'}\)"):
            load_checkpoint(run, kind=kind)


def test_an_exported_subnet_that_is_missing_or_unreadable_is_named_as_one(tmp_path):
    """`transcribe --subnet typo.pt` and `load_subnet("typo.pt")` said "checkpoint typo.pt
    not found", as if a training checkpoint had been asked for; the file is named as what
    was asked for, and a training checkpoint's messages are as before."""
    missing, folder, empty = tmp_path / "typo.pt", tmp_path / "exports", tmp_path / "empty.pt"
    folder.mkdir()
    empty.write_bytes(b"")
    for path, error, what in ((missing, FileNotFoundError, "not found"),
                              (folder, CheckpointError, "is a directory"),
                              (empty, CheckpointError, "is empty")):
        with pytest.raises(error, match=rf"^exported subnet {path} {what}"):
            load_subnet(path)
        with pytest.raises(error, match=rf"^checkpoint {path} {what}"):
            load_checkpoint(path, kind=TRAINING_KIND)
