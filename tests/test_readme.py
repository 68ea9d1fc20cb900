"""The README's examples run as written (they must stay true as features land): the library
example, and the command-line sequence synth -> train -> eval -> export -> eval of the
export."""

import re
import shlex
from pathlib import Path

import pytest

import orthoasr

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    example = re.search(r"## Using the library\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)   # it saves runs/sub.pt in the working folder
    orthoasr.set_backend("torch")  # the paper-size model under the Triton interpreter is slow
    try:
        exec(compile(example, str(README), "exec"), {})
    finally:
        orthoasr.set_backend("auto")
    assert (tmp_path / "runs" / "sub.pt").exists()


def readme_commands() -> list[str]:
    """The `orthoasr synth|train|eval|export` lines of the README's command-line block."""
    block = re.search(r"## Command line\n.*?```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.split()[1:2] != ["demo"] and line]


def test_readme_command_sequence_runs_as_written(tmp_path, monkeypatch):
    """From a fresh folder: the commands as the README prints them; only the corpus and the
    model are made smaller (a 20-utterance preset, a 2-layer model trained 4 steps)."""
    pytest.importorskip("espeakng_loader")
    from test_train import tiny_run

    import orthoasr.data.synth as synth
    import orthoasr.train as train_module
    from orthoasr.cli import main

    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["synth", "train", "eval", "export", "eval"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(synth.PRESETS, "tiny", synth.Preset(
        utterances=(12, 4, 4), speakers=(3, 2, 2), max_words=4))
    real_load = train_module.load_run_config

    def smaller(path, overrides=()):
        """The config the README names, with the tiny test model and 2 + 2 steps."""
        cfg = real_load(path, list(overrides))
        manifests = [f"{k}={getattr(cfg, k)}" for k in ("train_manifest", "dev_manifest",
                                                        "test_manifest")]
        return tiny_run(Path("."), "stage1_steps=2", "stage2_steps=2", "model.vocab_size=40",
                        "model.budgets=[0.4,1.0]", *manifests)

    monkeypatch.setattr(train_module, "load_run_config", smaller)
    for command in commands:
        main(shlex.split(command)[1:])
    assert (tmp_path / "runs" / "tiny" / "eval.csv").exists()
    assert (tmp_path / "runs" / "tiny" / "sub.pt").exists()
    assert (tmp_path / "runs" / "tiny" / "sub.eval.csv").exists()
