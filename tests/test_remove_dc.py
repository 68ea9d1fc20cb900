"""model.remove_dc: LogMel subtracts each recording's mean before framing, so a DC offset
(a cheap microphone's) does not move the features. Recorded with the model: the presets
turn it on, checkpoints and exported subnets written before it existed load with it off
(their models were trained on features that kept the offset), and every LogMel built for
the model (trainer, eval, Recognizer) follows it."""

import math

import pytest
import torch
from test_feature_norm import exported_subnet, spy_logmel, written_before
from test_train import tiny_run, write_corpus

import orthoasr.data
from orthoasr import Recognizer, SupernetConfig
from orthoasr.checkpoint import check_config
from orthoasr.cli import main
from orthoasr.data import LogMel
from orthoasr.evaluate import evaluate
from orthoasr.export import load_subnet
from orthoasr.run_config import RunConfig, load_run_config, presets
from orthoasr.train import train
from orthoasr.trained import load_trained

OFFSET = 1e-2      # of full scale (-40 dBFS): docs/transcription.md measured this one


def speech_like(seconds: float = 1.5, seed: int = 0) -> torch.Tensor:
    """A wave (S,) of harmonics under a syllable-rate envelope, with 0.2 s of quiet at each
    end, so the voiced normalisation has both voiced and silent frames."""
    t = torch.arange(int(16000 * seconds)) / 16000
    draw = torch.Generator().manual_seed(seed)
    wave = sum(torch.sin(2 * math.pi * 140 * k * t + float(torch.rand(1, generator=draw)) * 6)
               / k for k in range(1, 12))
    envelope = torch.sin(math.pi * 4 * t).abs() * ((t > 0.2) & (t < seconds - 0.2))
    return 0.1 * wave * envelope + 1e-4 * torch.randn(len(t), generator=draw)


@pytest.mark.parametrize("normalize", ["utterance", "voiced", None])
def test_an_offset_changes_nothing_with_remove_dc(normalize):
    wave = speech_like()
    lengths = torch.tensor([len(wave)])
    removed = LogMel(normalize=normalize, remove_dc=True)
    clean, _ = removed(wave[None], lengths)
    offset, _ = removed((wave + OFFSET)[None], lengths)
    torch.testing.assert_close(offset, clean, atol=1e-3, rtol=1e-3)
    # what the setting is for: without it the offset moves the lowest mel bins
    kept = LogMel(normalize=normalize)
    assert not kept.remove_dc
    clean, _ = kept(wave[None], lengths)
    offset, _ = kept((wave + OFFSET)[None], lengths)
    assert (offset - clean).abs().max() > 0.5


def test_the_mean_is_each_utterances_own_over_its_valid_samples():
    """Padding past wave_lengths (here the rest of a recording, at another offset) and the
    other utterances of the batch do not enter an utterance's mean."""
    short, long = speech_like(1.0, seed=1), speech_like(1.5, seed=2)
    waves = torch.full((2, len(long)), 0.5)
    waves[0] = long - 2 * OFFSET
    waves[1, :len(short)] = short + OFFSET
    mel = LogMel(remove_dc=True)
    feats, frames = mel(waves, torch.tensor([len(long), len(short)]))
    for b, wave in enumerate((long, short)):
        alone, _ = mel(wave[None], torch.tensor([len(wave)]))
        torch.testing.assert_close(feats[b, :frames[b]], alone[0], atol=1e-3, rtol=1e-3)


def test_remove_dc_is_validated_and_the_presets_turn_it_on():
    """The library default is the behaviour before the setting (a config dict without the
    key, a checkpoint's, means it off); the presets where new runs start turn it on. Not
    configs/experiment.yaml: its arms ran without it, and its phase 2 (fixed_gates) takes
    arm 1's masks only from a run of the same model config."""
    assert SupernetConfig().remove_dc is False
    assert SupernetConfig(remove_dc=True).remove_dc is True
    for bad in (1, "true", None):
        with pytest.raises(ValueError, match=rf"remove_dc must be true or false, got {bad!r}"):
            SupernetConfig(remove_dc=bad)
    assert load_run_config(None, ["model.remove_dc=true"]).model.remove_dc is True
    assert {"tiny", "demo-gpu", "paper", "experiment"} <= set(presets())
    for preset in set(presets()) - {"experiment"}:
        assert load_run_config(preset).model.remove_dc is True, preset
    assert load_run_config("experiment").model.remove_dc is False


@pytest.fixture(scope="module")
def removed_run(tmp_path_factory):
    """A finished 2-step run with model.remove_dc=true, and the remove_dc of every LogMel
    that computed features for its training."""
    root = tmp_path_factory.mktemp("remove_dc")
    built = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orthoasr.data, "LogMel", spy_logmel(built, "remove_dc"))
        train(tiny_run(write_corpus(root / "corpus", n=6), "model.remove_dc=true",
                       "stage1_steps=1", "stage2_steps=1"), root / "run")
    return root / "run", built


def test_training_and_eval_use_the_configs_remove_dc(removed_run, monkeypatch):
    run, built = removed_run
    assert built and set(built) == {True}
    assert load_trained(run / "checkpoint.pt").model.cfg.remove_dc is True
    built.clear()
    monkeypatch.setattr(orthoasr.data, "LogMel", spy_logmel(built, "remove_dc"))
    assert len(evaluate(run / "checkpoint.pt", device="cpu")) == 3
    assert built and set(built) == {True}


def test_recognizer_reads_an_offset_recording_as_the_clean_one(removed_run, tmp_path):
    run, _ = removed_run
    wave = speech_like()
    recognizer = Recognizer.from_checkpoint(run / "checkpoint.pt", budget=0.4)
    assert recognizer.logmel.remove_dc is True
    lengths = torch.tensor([len(wave)])
    clean, _ = recognizer.logmel(wave[None], lengths)
    offset, _ = recognizer.logmel((wave + OFFSET)[None], lengths)
    torch.testing.assert_close(offset, clean, atol=1e-3, rtol=1e-3)
    assert recognizer.transcribe([wave + OFFSET]) == recognizer.transcribe([wave])

    exported_subnet(run, tmp_path / "sub.pt")
    assert load_subnet(tmp_path / "sub.pt").cfg.remove_dc is True
    assert Recognizer.from_subnet(tmp_path / "sub.pt").logmel.remove_dc is True


def test_export_names_the_features_a_pt2_program_needs(removed_run, tmp_path, capsys):
    """The .pt2 program holds no config: export prints the LogMel that makes its input."""
    run, _ = removed_run
    main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--subnet", "0",
          "--out", str(tmp_path / "sub.pt"), "--pt2", str(tmp_path / "sub.pt2")])
    assert ("(features: orthoasr.data.LogMel(n_mels=80, normalize='utterance', "
            "remove_dc=True))") in capsys.readouterr().out


def test_checkpoints_without_the_key_load_with_it_off(removed_run, tmp_path):
    """A checkpoint and an exported subnet written before remove_dc existed: their models
    were trained on features that kept each recording's offset."""
    run, _ = removed_run
    old, old_sub = written_before(run, "remove_dc", tmp_path)
    assert load_trained(old).model.cfg.remove_dc is False
    assert Recognizer.from_checkpoint(old).logmel.remove_dc is False
    # --resume of such a checkpoint with a config that turns it on is refused by name
    with pytest.raises(ValueError, match="model.remove_dc: checkpoint False vs config True"):
        check_config(torch.load(old, weights_only=True), RunConfig.from_dict(torch.load(
            run / "checkpoint.pt", weights_only=True)["run_config"]), old)
    assert load_subnet(old_sub).cfg.remove_dc is False
    assert Recognizer.from_subnet(old_sub).logmel.remove_dc is False
