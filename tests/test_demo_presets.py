"""The demo picks its preset by device, ends by saying what to try next, and its corpus
grammar holds out sentences."""

import json
from pathlib import Path

import numpy as np
import pytest

from orthoasr.data import write_wav
from orthoasr.data.commands import CommandGenerator
from orthoasr.data.synth import PRESETS, Preset
from orthoasr.demo import DEMO_PRESETS, demo_preset, next_steps
from orthoasr.run_config import load_run_config


def test_each_demo_preset_has_a_corpus_and_a_config():
    assert demo_preset("cpu") == DEMO_PRESETS["cpu"]
    for preset in DEMO_PRESETS.values():
        assert PRESETS[preset.corpus].grammar == "commands"
        load_run_config(preset.config)                       # exists and validates


def test_next_steps_name_a_test_file_and_the_smallest_budget(tmp_path):
    wav = tmp_path / "wav" / "t.wav"
    wav.parent.mkdir()
    write_wav(wav, np.zeros(16000, np.float32))
    (tmp_path / "test.jsonl").write_text(json.dumps(
        {"audio_filepath": "wav/t.wav", "duration": 1.0, "text": "put the cup"}) + "\n")
    text = next_steps(Path("runs/demo"), tmp_path, [0.4, 0.6, 1.0])
    assert f"--budget 0.4 {wav}" in text and "orthoasr transcribe --subnet" in text
    assert "heatmap.png" in text and "--config paper" in text


def test_command_sentences_are_varied_and_deterministic():
    first = [CommandGenerator(seed=3).sentence() for _ in range(1)]
    generator = CommandGenerator(seed=3)
    sentences = [generator.sentence() for _ in range(2000)]
    assert sentences[0] == first[0]
    assert len(set(sentences)) > 1990                         # held-out sentences are possible
    words = {w.strip(".").lower() for s in sentences for w in s.split()}
    assert 60 <= len(words) <= 90


def test_unknown_grammar_is_refused():
    with pytest.raises(ValueError, match="grammar must be one of"):
        Preset(utterances=(1, 1, 1), speakers=(1, 1, 1), grammar="poetry")
