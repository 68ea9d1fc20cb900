"""The shipped run configs read their manifests from where `orthoasr synth` writes them, and
are found by their bare names; any other config path must exist."""

import re
from pathlib import Path

import pytest

from orthoasr.data.synth import PRESETS, default_corpus_dir
from orthoasr.run_config import find_config, load_run_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_manifests_are_a_synth_preset_folder(path):
    run = load_run_config(str(path), [])
    folders = {Path(default_corpus_dir(preset)) for preset in PRESETS}
    for split in ("train", "dev", "test"):
        manifest = Path(getattr(run, f"{split}_manifest"))
        assert manifest.name == f"{split}.jsonl" and manifest.parent in folders, manifest


def test_only_a_bare_name_falls_back_to_a_preset(tmp_path, monkeypatch):
    """A typo in a config's folder is an error naming the path, not the preset of that name."""
    monkeypatch.chdir(tmp_path)   # away from the checkout's configs/
    assert find_config("tiny").name == find_config("tiny.yaml").name == "tiny.yaml"
    assert find_config("configs/tiny.yaml").name == "tiny.yaml"   # the train default
    for missing in (tmp_path / "nonexistent" / "tiny.yaml", Path("experiments/tiny.yaml")):
        with pytest.raises(FileNotFoundError,
                           match=rf"config file {re.escape(str(missing))} not found"):
            load_run_config(missing)


def test_a_key_at_the_wrong_level_is_named_where_it_belongs(tmp_path):
    """`num_layers=4` (a model key without model.), or `lr:` under model:, was refused with
    the list of all ~70 keys and no word of the one meant."""
    with pytest.raises(ValueError, match=r"unknown config key 'num_layers' \(a model key: "
                                         r"model.num_layers\); valid keys"):
        load_run_config(None, ["num_layers=4"])
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  lr: 0.1\nbudgets: [0.5, 1.0]\n")
    with pytest.raises(ValueError, match=r"unknown config keys \['budgets'\] \(a model key: "
                                         r"model.budgets\); valid keys"):
        load_run_config(path)
    path.write_text("model:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config keys \['model.lr'\] \(not a model "
                                         r"key: lr\); valid keys"):
        load_run_config(path)
