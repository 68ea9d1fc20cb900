"""model.feature_norm: validated, recorded in checkpoints and exported subnets, and passed to
every LogMel built for the model (trainer, eval, Recognizer); checkpoints written before the
field load as "utterance", the normalisation they were trained with."""

import pytest
import torch
from test_train import tiny_run, write_corpus

import orthoasr.data
from orthoasr import Recognizer, SupernetConfig
from orthoasr.checkpoint import check_config
from orthoasr.evaluate import evaluate
from orthoasr.export import extract_subnet, load_subnet
from orthoasr.run_config import RunConfig, load_run_config
from orthoasr.train import train
from orthoasr.trained import load_trained


def test_feature_norm_is_validated():
    assert SupernetConfig().feature_norm == "utterance"
    assert SupernetConfig(feature_norm="voiced").feature_norm == "voiced"
    for bad in ("speech", None, "Voiced"):
        with pytest.raises(ValueError, match=r"feature_norm must be one of \('utterance', "
                                             rf"'voiced'\), got {bad!r}"):
            SupernetConfig(feature_norm=bad)
    with pytest.raises(ValueError, match="feature_norm must be one of"):
        load_run_config("tiny", ["model.feature_norm=loudest"])


@pytest.fixture(scope="module")
def voiced_run(tmp_path_factory):
    """A finished 2-step run with model.feature_norm=voiced, and the normalize of every
    LogMel that computed features for its training."""
    root = tmp_path_factory.mktemp("voiced")
    built = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orthoasr.data, "LogMel", spy_logmel(built))
        train(tiny_run(write_corpus(root / "corpus", n=6), "model.feature_norm=voiced",
                       "stage1_steps=1", "stage2_steps=1"), root / "run")
    return root / "run", built


def spy_logmel(built: list, setting: str = "normalize"):
    """A LogMel class that appends its `setting` to `built` on each call (run_data builds
    others for their hop alone)."""
    class SpyLogMel(orthoasr.data.features.LogMel):
        def forward(self, waves, wave_lengths):
            built.append(getattr(self, setting))
            return super().forward(waves, wave_lengths)
    return SpyLogMel


def exported_subnet(run, path):
    """Subnet 0 of `run`'s checkpoint, exported to `path`."""
    trained = load_trained(run / "checkpoint.pt")
    sub = extract_subnet(trained.model, trained.subnet_gates(0), head=0)
    return sub.save(path, tokenizer=trained.tokenizer_bytes)


def written_before(run, field: str, folder):
    """`run`'s checkpoint and its exported subnet 0 as written before model field `field`
    existed: (folder/old.pt, folder/old_sub.pt), each without the field."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["run_config"]["model"][field]
    torch.save(state, folder / "old.pt")
    state = torch.load(exported_subnet(run, folder / "sub.pt"), weights_only=True)
    del state["config"][field]
    torch.save(state, folder / "old_sub.pt")
    return folder / "old.pt", folder / "old_sub.pt"


def test_training_and_eval_use_the_configs_feature_norm(voiced_run, monkeypatch):
    run, built = voiced_run
    assert built and set(built) == {"voiced"}
    assert load_trained(run / "checkpoint.pt").model.cfg.feature_norm == "voiced"
    built.clear()
    monkeypatch.setattr(orthoasr.data, "LogMel", spy_logmel(built))
    assert len(evaluate(run / "checkpoint.pt", device="cpu")) == 3
    assert built and set(built) == {"voiced"}


def test_recognizer_and_exported_subnet_use_the_configs_feature_norm(voiced_run, tmp_path):
    run, _ = voiced_run
    recognizer = Recognizer.from_checkpoint(run / "checkpoint.pt", budget=0.4)
    assert recognizer.logmel.normalize == "voiced"
    exported_subnet(run, tmp_path / "sub.pt")
    assert load_subnet(tmp_path / "sub.pt").cfg.feature_norm == "voiced"
    assert Recognizer.from_subnet(tmp_path / "sub.pt").logmel.normalize == "voiced"


def test_checkpoints_without_the_field_load_as_utterance(voiced_run, tmp_path):
    """A checkpoint and an exported subnet written before feature_norm existed: their
    models were trained on features normalised over the whole utterance."""
    run, _ = voiced_run
    old, old_sub = written_before(run, "feature_norm", tmp_path)
    assert load_trained(old).model.cfg.feature_norm == "utterance"
    assert Recognizer.from_checkpoint(old).logmel.normalize == "utterance"
    state = torch.load(old, weights_only=True)
    # --resume with the same config, which now says "utterance" by default, is no change
    current = RunConfig.from_dict({**state["run_config"], "model": {
        **state["run_config"]["model"], "feature_norm": "utterance"}})
    assert check_config(state, current, old) == {}
    with pytest.raises(ValueError, match="model.feature_norm: checkpoint 'utterance' vs "
                                         "config 'voiced'"):
        check_config(state, RunConfig.from_dict(torch.load(
            run / "checkpoint.pt", weights_only=True)["run_config"]), old)
    assert load_subnet(old_sub).cfg.feature_norm == "utterance"
    assert Recognizer.from_subnet(old_sub).logmel.normalize == "utterance"
