"""`orthoasr eval`: which manifests it scores (the run's recorded ones first, named in its
output), the CSV where --csv says, and the table printed before any file is written."""

from pathlib import Path

import pytest
from test_train import finished_tiny_run

from orthoasr import set_backend
from orthoasr.checkpoint import load_checkpoint, save_checkpoint
from orthoasr.cli import main
from orthoasr.evaluate import eval_manifest, evaluate, load_trained


@pytest.fixture(autouse=True)
def torch_backend():
    set_backend("torch")            # conftest puts "auto" back after each test


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step run (one step per stage) on a 6-utterance corpus."""
    return finished_tiny_run(tmp_path_factory.mktemp("evaluate"))


def relocated_checkpoint(run_dir: Path, folder: Path, recorded: dict | None = None) -> Path:
    """The run's checkpoint in `folder`, as if trained with data/<split>.jsonl (relative)
    in its config; `recorded` replaces the absolute paths it recorded."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    state["run_config"].update({f"{split}_manifest": f"data/{split}.jsonl"
                                for split in ("train", "dev", "test")})
    state["manifest_paths"].update(recorded or {})
    del state["format"]
    return save_checkpoint(folder / "checkpoint.pt", state)


def one_utterance_manifests(run_dir: Path, folder: Path) -> None:
    """data/dev.jsonl and data/test.jsonl under `folder`: the first line of the run's."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    (folder / "data").mkdir()
    for split in ("dev", "test"):
        first = Path(state["manifest_paths"][split]).read_text().splitlines()[0]
        (folder / "data" / f"{split}.jsonl").write_text(first + "\n")


def test_eval_scores_the_manifests_the_run_recorded_and_names_them(run_dir, tmp_path,
                                                                    monkeypatch, capsys):
    """From a folder with data/dev.jsonl of its own, the run's recorded manifests are
    scored, not that folder's."""
    checkpoint = relocated_checkpoint(run_dir, tmp_path)
    one_utterance_manifests(run_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    recorded = load_checkpoint(checkpoint)["manifest_paths"]
    trained = load_trained(checkpoint)
    assert [eval_manifest(trained, split, None) for split in ("dev", "test")] == \
        [recorded["dev"], recorded["test"]]
    evaluate(checkpoint)
    out = capsys.readouterr().out
    for split in ("dev", "test"):
        assert f"{split} manifest {recorded[split]}: 6 utterances" in out, out


def test_eval_of_a_moved_run_finds_its_manifests_from_here(run_dir, tmp_path, monkeypatch,
                                                           capsys):
    """A run moved to another machine: its recorded paths are gone, its config's relative
    ones are found from this folder (and named)."""
    gone = {split: f"/elsewhere/{split}.jsonl" for split in ("train", "dev", "test")}
    checkpoint = relocated_checkpoint(run_dir, tmp_path, recorded=gone)
    one_utterance_manifests(run_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    evaluate(checkpoint)
    out = capsys.readouterr().out
    assert f"dev manifest {tmp_path / 'data' / 'dev.jsonl'}: 1 utterances" in out, out
    (tmp_path / "data" / "dev.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"dev manifest data/dev.jsonl of the "
                                                r"checkpoint's run config not found \(looked "
                                                r"at /elsewhere/dev.jsonl and in "):
        evaluate(checkpoint)


def test_eval_writes_the_csv_where_asked(run_dir, tmp_path, capsys):
    csv_path = tmp_path / "results" / "tiny.csv"
    main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--csv", str(csv_path),
          "--heatmap", str(tmp_path / "heatmap.png")])
    assert f"CSV -> {csv_path}" in capsys.readouterr().out
    assert len(csv_path.read_text().splitlines()) == 1 + 3        # header, 3 subnets
    assert "--csv" in main_help(capsys, "eval") and "eval.csv" in main_help(capsys, "eval")


def main_help(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_an_unwritable_output_keeps_the_results(run_dir, tmp_path, capsys):
    """The table is printed before any file is written; a heatmap that cannot be written
    keeps the CSV; each failure names its path and why."""
    checkpoint, csv_path = run_dir / "checkpoint.pt", tmp_path / "eval.csv"
    (tmp_path / "ok.wav").write_bytes(b"RIFF")
    heatmap = tmp_path / "ok.wav" / "heatmap.png"
    with pytest.raises(OSError) as error:
        evaluate(checkpoint, heatmap=heatmap, csv_path=csv_path)
    assert "WER dev" in capsys.readouterr().out
    assert len(csv_path.read_text().splitlines()) == 1 + 3        # header, 3 subnets
    assert (f"could not write the heatmap {heatmap}: {tmp_path / 'ok.wav'} is a file, not a "
            "folder") in str(error.value)
    with pytest.raises(OSError, match=f"could not write the results CSV {tmp_path}: Is a "
                                      "directory"):
        evaluate(checkpoint, csv_path=tmp_path)
    assert "WER dev" in capsys.readouterr().out
