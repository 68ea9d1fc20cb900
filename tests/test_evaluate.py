"""`orthoasr eval`: which manifests it scores (the run's recorded ones first, named in its
output), the CSV where --csv says, and the table printed before any file is written; an
exported subnet (`--subnet`) scored as the checkpoint's subnet of its budget."""

import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from test_safety import cli_error
from test_train import finished_tiny_run, level_swings

from orthoasr import set_backend
from orthoasr.checkpoint import load_checkpoint, save_checkpoint
from orthoasr.cli import main
from orthoasr.data import load_audio, load_manifest
from orthoasr.evaluate import eval_manifest, evaluate, evaluate_subnet, transcribe
from orthoasr.export import extract_subnet
from orthoasr.recognizer import Recognizer
from orthoasr.trained import load_trained


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


def test_outputs_that_would_destroy_a_file_are_refused(run_dir, tmp_path, capsys):
    """--csv or --heatmap naming the checkpoint (a hard link to checkpoints/step-N.pt), a
    manifest or an audio file is refused before decoding, the file untouched; an earlier
    CSV and heatmap are replaced."""
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes((run_dir / "checkpoint.pt").read_bytes())
    manifest = load_checkpoint(checkpoint)["manifest_paths"]["test"]
    audio = load_manifest(manifest)[0]["audio_filepath"]
    kept = {path: Path(path).read_bytes() for path in (checkpoint, manifest, audio)}
    for flag, path in (("--csv", checkpoint), ("--csv", manifest), ("--heatmap", checkpoint),
                       ("--heatmap", audio)):
        err = cli_error(capsys, ["eval", "--checkpoint", str(checkpoint), flag, str(path)])
        assert f"{flag} {path} exists and is not an earlier result" in err, err
    assert "the CSV and the heatmap are the same file" in cli_error(
        capsys, ["eval", "--checkpoint", str(checkpoint), "--csv", "x", "--heatmap", "x"])
    assert all(Path(path).read_bytes() == data for path, data in kept.items())
    for _ in range(2):                      # the second run replaces the first's files
        main(["eval", "--checkpoint", str(checkpoint)])
    assert (tmp_path / "eval.csv").read_text().startswith("subnet,budget,units,params,flops")
    assert (tmp_path / "heatmap.png").read_bytes().startswith(b"\x89PNG")


def test_a_heatmap_of_no_image_suffix_is_refused_before_decoding(run_dir, tmp_path, capsys):
    """--heatmap h.csv failed in matplotlib's words ("Format 'csv' is not supported") after
    every clip was decoded; --heatmap h wrote h.png and printed "heatmap -> h". Both are
    refused first, naming the argument; .PNG and .svg are written as named."""
    checkpoint = run_dir / "checkpoint.pt"
    for name in ("h.csv", "h"):
        heatmap = tmp_path / name
        err = cli_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--heatmap",
                                 str(heatmap), "--csv", str(tmp_path / "eval.csv")])
        assert f"--heatmap {heatmap}: " in err and "; end the name in .png" in err, err
        assert not (tmp_path / "eval.csv").exists()
        assert not heatmap.exists() and not heatmap.with_suffix(".png").exists()
    for name in ("h.PNG", "h.svg"):
        main(["eval", "--checkpoint", str(checkpoint), "--heatmap", str(tmp_path / name),
              "--csv", str(tmp_path / "eval.csv")])
        assert f"heatmap -> {tmp_path / name}" in capsys.readouterr().out
        assert (tmp_path / name).stat().st_size > 0


# ----------------------------------------------------------------------------- --subnet

def talkative(state: dict) -> dict:
    """A training checkpoint's `state` with the blank made unlikely in every head, so that
    greedy decoding yields long, gate-dependent transcripts (a barely trained CTC model says
    nothing, which every implementation would agree on)."""
    for key, value in state["model"].items():
        if key.startswith("heads.") and key.endswith(".bias"):
            value[0] -= 20.0
    return state


@pytest.fixture(scope="module")
def talkative_run(run_dir, tmp_path_factory) -> Path:
    """The run's checkpoint, talkative, in a folder of its own (its manifests: the run's)."""
    folder = tmp_path_factory.mktemp("talkative")
    return save_checkpoint(folder / "checkpoint.pt",
                           talkative(load_checkpoint(run_dir / "checkpoint.pt")))


def write_wav(path: Path, samples: np.ndarray) -> dict:
    """16-bit 16 kHz `samples` (int16 values) at `path`: its manifest record, text "a word"."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.astype(np.int16).tobytes())
    return {"audio_filepath": str(path), "duration": len(samples) / 16000, "text": "a word"}


def awkward_manifest(manifest: str, folder: Path) -> Path:
    """`manifest`'s records and, in `folder`, a 20 ms clip (under the frontend's 40 ms), its
    first two clips with 0.5 s of zeros between (two voiced segments for the silence
    splitter) and 36 s of noise (more than transcribe's 30 s pieces and 2 s either side)."""
    records = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    first, second = (load_audio(r["audio_filepath"]).numpy() * 32768 for r in records[:2])
    noise = np.random.default_rng(0).standard_normal(36 * 16000) * 2000 * \
        level_swings(36 * 16000)
    records += [write_wav(folder / "short.wav", noise[:320]),
                write_wav(folder / "two.wav", np.concatenate([first, np.zeros(8000), second])),
                write_wav(folder / "long.wav", noise)]
    path = folder / "awkward.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def export_subnet(checkpoint: Path, index: int, out: Path) -> Path:
    main(["export", "--checkpoint", str(checkpoint), "--subnet", str(index), "--out", str(out)])
    return out


SHORT_NOTE = "note: 1 clip(s) shorter than 0.04 s (4 frames, the frontend's minimum) get an " \
             "empty transcript, e.g. "


def test_an_exported_subnet_scores_as_the_checkpoints_subnet_of_its_budget(
        talkative_run, tmp_path, capsys):
    """Units, params, FLOPs, WER and CER on dev and on a test manifest with a clip too short
    for the frontend, one with a silence and a long one (decoded in pieces): the exported
    subnet's row is the checkpoint's row for its budget."""
    recorded = load_checkpoint(talkative_run)["manifest_paths"]
    test = awkward_manifest(recorded["test"], tmp_path)
    rows = evaluate(talkative_run, test_manifest=str(test), csv_path=tmp_path / "eval.csv")
    assert SHORT_NOTE + str(tmp_path / "short.wav") in capsys.readouterr().out
    assert len({row["cer_test"] for row in rows}) == len(rows)     # each says other things
    for index in (0, 1):
        sub = export_subnet(talkative_run, index, tmp_path / f"sub{index}.pt")
        row = evaluate_subnet(sub, recorded["dev"], str(test))
        assert row == {**rows[index], "subnet": "exported"}
        out = capsys.readouterr().out
        assert SHORT_NOTE + str(tmp_path / "short.wav") in out
        assert f"exported subnet {sub} (FLOPs per utterance" in out


def test_eval_reads_as_transcribe_whole_split_and_in_pieces(talkative_run, tmp_path,
                                                             capsys):
    """Eval's texts are the Recognizer's, subnet by subnet: each clip whole, or
    (`--silence-db`) its voiced segments decoded alone and their texts joined; either way a
    clip or segment longer than 34 s (36 s of noise) in pieces whose labels are joined
    (`--chunk-seconds`; 0: whole, which reads otherwise; `--context-seconds` either side of
    each piece), and the short clip empty."""
    test = awkward_manifest(load_checkpoint(talkative_run)["manifest_paths"]["test"],
                            tmp_path)
    records, trained = load_manifest(test), load_trained(talkative_run)
    # three clips, the longest in the middle and the shortest last: the batches, shortest
    # first, decode them in neither their order nor its reverse
    short, middle, long = sorted((load_audio(r["audio_filepath"]).numpy() * 32768
                                  for r in records[:3]), key=len)
    gap = np.zeros(8000)
    records.append(write_wav(tmp_path / "three.wav",
                             np.concatenate([middle, gap, long, gap, short])))
    records.append(write_wav(tmp_path / "silent.wav", np.zeros(16000)))   # "" either way
    subnets = [(trained.subnet_gates(i), i) for i in range(trained.num_subnets)]

    def texts(silence_db, chunk_seconds=30.0, **context):
        return transcribe(trained.model, records, trained.tokenizer(), subnets,
                          torch.device("cpu"), 20000, bf16=False, silence_db=silence_db,
                          chunk_seconds=chunk_seconds, **context)
    split, whole = texts(40.0), texts(None)
    paths = [record["audio_filepath"] for record in records]
    for index, budget in enumerate(trained.model.cfg.budgets):
        for silence_db, got in ((40.0, split), (None, whole)):
            recognizer = Recognizer.from_checkpoint(talkative_run, budget,
                                                    silence_db=silence_db)
            assert got[index] == recognizer.transcribe(paths)
    main(["eval", "--checkpoint", str(talkative_run), "--test", str(test), "--silence-db",
          "40", "--csv", str(tmp_path / "split.csv"), "--heatmap", str(tmp_path / "h.png")])
    assert f"subnets at step {trained.step}, clips split at silences (40 dB) (FLOPs" in \
        capsys.readouterr().out
    for name in ("two.wav", "three.wav"):
        clip = paths.index(str(tmp_path / name))
        assert split[0][clip] != whole[0][clip]
    assert split[0][:3] == whole[0][:3]           # clips without a silence
    silent = paths.index(str(tmp_path / "silent.wav"))
    assert [texts[silent] for texts in split + whole] == [""] * 2 * len(subnets)
    noise = paths.index(str(tmp_path / "long.wav"))
    in_one_piece = texts(None, chunk_seconds=None)
    assert in_one_piece[0][noise] != whole[0][noise]
    assert in_one_piece[0][:noise] == whole[0][:noise]
    # `--context-seconds`: the pieces hear that much either side, as the Recognizer's do
    no_context = texts(None, context_seconds=0.0)
    assert no_context[0][noise] != whole[0][noise]
    assert no_context[0] == Recognizer.from_checkpoint(
        talkative_run, trained.model.cfg.budgets[0], silence_db=None,
        context_seconds=0.0).transcribe(paths)


def test_a_silent_clip_scored_whole_is_not_decoded(talkative_run, tmp_path, monkeypatch):
    """A clip with no sound at all, scored whole, reads "" (as the Recognizer's): it was
    still read through the frontend and the encoder, its labels computed and dropped. Now
    it is left out of its batch; a batch of silent clips alone (one long enough to be cut
    in pieces) decodes nothing, and the other clips' texts are unchanged."""
    trained = load_trained(talkative_run)
    records = load_manifest(load_checkpoint(talkative_run)["manifest_paths"]["test"])[:3]
    silent = [write_wav(tmp_path / f"silent{seconds}.wav", np.zeros(seconds * 16000))
              for seconds in (1, 40)]
    subnets = [(trained.subnet_gates(i), i) for i in range(trained.num_subnets)]
    embed, rows = trained.model.embed, []

    def counted_embed(feats, lengths):
        rows.append(len(lengths))
        return embed(feats, lengths)
    monkeypatch.setattr(trained.model, "embed", counted_embed)

    def texts(records):
        rows.clear()
        return transcribe(trained.model, records, trained.tokenizer(), subnets,
                          torch.device("cpu"), 40000, bf16=False, silence_db=None)
    audible = texts(records)
    assert all(all(subnet) for subnet in audible) and sum(rows) == len(records)
    mixed = [silent[0], *records[:2], silent[1], records[2]]
    assert texts(mixed) == [["", *subnet[:2], "", subnet[2]] for subnet in audible]
    assert sum(rows) == len(records)
    assert texts(silent) == [["", ""]] * len(subnets) and rows == []


def test_eval_of_an_exported_subnet_writes_its_own_csv(talkative_run, tmp_path, capsys):
    """<stem>.eval.csv beside the subnet, never the run's eval.csv; --csv elsewhere."""
    sub = export_subnet(talkative_run, 0, tmp_path / "sub.pt")
    (tmp_path / "eval.csv").write_text("a run's table\n")
    test = load_checkpoint(talkative_run)["manifest_paths"]["test"]
    main(["eval", "--subnet", str(sub), "--test", test])
    assert f"CSV -> {tmp_path / 'sub.eval.csv'}" in capsys.readouterr().out
    header, row = (tmp_path / "sub.eval.csv").read_text().splitlines()
    assert header == "subnet,budget,units,params,flops,wer_test,cer_test"
    assert row.startswith("exported,0.4,")
    assert (tmp_path / "eval.csv").read_text() == "a run's table\n"
    main(["eval", "--subnet", str(sub), "--dev", test, "--csv", str(tmp_path / "x" / "a.csv")])
    assert (tmp_path / "x" / "a.csv").read_text().splitlines()[0] == \
        "subnet,budget,units,params,flops,wer_dev,cer_dev"


def test_eval_subnet_usage_errors(talkative_run, tmp_path, capsys):
    checkpoint = str(talkative_run)
    sub = str(export_subnet(talkative_run, 0, tmp_path / "sub.pt"))
    trained = load_trained(talkative_run)
    bare = extract_subnet(trained.model, trained.subnet_gates(0), head=0)
    bare.tokenizer_bytes = None     # extract_subnet gave it the checkpoint's
    bare = bare.save(tmp_path / "bare.pt")
    test = load_checkpoint(talkative_run)["manifest_paths"]["test"]
    (tmp_path / "empty.jsonl").write_text("")
    for argv, message in [
            ([], "one of the arguments --checkpoint --subnet is required"),
            (["--checkpoint", checkpoint, "--subnet", sub],
             "argument --subnet: not allowed with argument --checkpoint"),
            (["--subnet", sub, "--test", test, "--silence-db", "-3"],
             "argument --silence-db: expected a finite number of dB > 0, or 'off', got "
             "'-3'"),
            (["--checkpoint", checkpoint, "--chunk-seconds", "0.01"],
             "argument --chunk-seconds: expected 0 or a number of seconds >= 0.04, got "
             "'0.01'")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    for argv, message in [
            (["--subnet", sub], "an exported subnet has no manifests of its own: pass --dev "
                                f"and/or --test to score {sub}"),
            (["--subnet", sub, "--dev", test, "--test", "gone.jsonl"],
             "--test manifest gone.jsonl not found"),
            (["--subnet", sub, "--dev", str(tmp_path / "empty.jsonl")],
             f"dev manifest {tmp_path / 'empty.jsonl'} is empty"),
            (["--subnet", sub, "--test", test, "--heatmap", "h.png"],
             "--heatmap draws the frozen masks of a --checkpoint"),
            (["--subnet", str(bare), "--test", test],
             f"subnet {bare} was saved without its tokenizer")]:
        assert message in cli_error(capsys, ["eval", *argv])
    assert not list(tmp_path.glob("*.csv"))
    assert "not with --subnet" in main_help(capsys, "eval")


@pytest.mark.parametrize("options, message", [
    ({"chunk_seconds": 0.01}, "chunk_seconds must be a number of seconds >= 0.04, got 0.01"),
    ({"chunk_seconds": -30.0}, "chunk_seconds must be a number of seconds >= 0.04, got -30.0"),
    ({"silence_db": -3.0}, "silence_db must be a finite number > 0.0, got -3.0"),
    ({"context_seconds": -2.0}, "context_seconds must be a number of seconds >= 0")])
def test_eval_names_a_bad_cutting_argument(talkative_run, tmp_path, options, message):
    """Checked before the checkpoint is read, as the Recognizer checks them."""
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate(tmp_path / "no-such-checkpoint.pt", **options)
    trained = load_trained(talkative_run)
    with pytest.raises(ValueError, match=re.escape(message)):
        transcribe(trained.model, [], trained.tokenizer(), [], torch.device("cpu"), 20000,
                   bf16=False, **options)


def test_a_fixed_gates_run_is_scored_on_the_subnet_it_trained(run_dir, tmp_path, capsys):
    """A fixed_gates run keeps its source run's masks: the other budgets' rows were scored
    too, on weights and heads that run never trained, as if they were its results."""
    from test_train import tiny_run

    from orthoasr.train import train
    train(tiny_run(run_dir.parent / "corpus", f"fixed_gates={run_dir / 'checkpoint.pt'}@0.7",
                   "stage1_steps=1", "stage2_steps=0"), tmp_path / "alone")
    rows = evaluate(tmp_path / "alone" / "checkpoint.pt", device="cpu")
    assert [(r["subnet"], r["budget"]) for r in rows] == [(1, 0.7)]
    assert f"only the subnet of budget 0.7 (fixed_gates {run_dir / 'checkpoint.pt'}@0.7) " \
        "was trained" in capsys.readouterr().out
    # before its freeze it holds no masks: the supernet's row, as for any stage-1 checkpoint
    train(tiny_run(run_dir.parent / "corpus", f"fixed_gates={run_dir / 'checkpoint.pt'}@0.7",
                   "stage1_steps=3", "stage2_steps=0"), tmp_path / "early", stop_at=1)
    rows = evaluate(tmp_path / "early" / "checkpoint.pt", device="cpu")
    assert [r["subnet"] for r in rows] == ["supernet"]


@pytest.mark.parametrize("silence_db", [None, 40.0])
def test_a_clip_holding_nan_is_named_not_scored_as_silence(run_dir, tmp_path, silence_db):
    """A float WAV with a NaN sample gave an empty transcript (its words all counted as
    deletions) without a word; it is named, as transcribe names it."""
    import soundfile

    from orthoasr.data import AudioError
    record = load_manifest(load_checkpoint(run_dir / "checkpoint.pt")["manifest_paths"]
                           ["dev"])[0]
    samples = load_audio(record["audio_filepath"]).numpy()
    samples[50] = np.nan
    bad = tmp_path / "nan.wav"
    soundfile.write(bad, samples, 16000, subtype="FLOAT")
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text(json.dumps({**record, "audio_filepath": str(bad)}) + "\n")
    with pytest.raises(AudioError, match=f"{re.escape(str(bad))}: holds NaN or inf samples"):
        evaluate(run_dir / "checkpoint.pt", dev_manifest=str(manifest),
                 test_manifest=str(manifest), device="cpu", silence_db=silence_db,
                 csv_path=tmp_path / "eval.csv", heatmap=tmp_path / "units.png")
