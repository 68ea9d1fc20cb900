"""The shipped run configs read their manifests from where `orthoasr synth` writes them."""

from pathlib import Path

import pytest

from orthoasr.data.synth import PRESETS, default_corpus_dir
from orthoasr.run_config import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_manifests_are_a_synth_preset_folder(path):
    run = load_run_config(str(path), [])
    folders = {Path(default_corpus_dir(preset)) for preset in PRESETS}
    for split in ("train", "dev", "test"):
        manifest = Path(getattr(run, f"{split}_manifest"))
        assert manifest.name == f"{split}.jsonl" and manifest.parent in folders, manifest
