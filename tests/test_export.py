"""Subnet export: compact model == masked supernet, exact params, FLOPs within 2% of the
cost model, torch.export for any batch and length, save/load; `orthoasr export` refuses to
overwrite the training checkpoint or a file that is not an earlier export."""

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_safety import cli_error
from test_train import finished_tiny_run
from torch.utils.flop_counter import FlopCounterMode

from orthoasr import SupernetConfig, set_backend, subnet_cost
from orthoasr.checkpoint import kept_checkpoints
from orthoasr.cli import main
from orthoasr.export import (
    PROGRAM_FRAMES,
    export_program,
    extract_subnet,
    load_subnet,
    widths_to_gates,
)
from orthoasr.model import ConformerSupernet, block_layout
from orthoasr.trained import load_trained


@pytest.fixture(autouse=True)
def torch_backend():
    set_backend("torch")            # conftest puts "auto" back after each test


def tiny_cfg(**overrides):
    values = dict(num_layers=2, d_model=32, num_heads=4, ff_dim=64, ff_chunks=4, conv_kernel=5,
                  vocab_size=23, frontend_channels=(4, 8), budgets=(0.4, 0.7, 1.0),
                  dropout=0.0, ref_frames=12)
    return SupernetConfig(**{**values, **overrides})


def gate_sets(n):
    hard = (torch.rand(n) > 0.5).float()
    one = torch.zeros(n)
    one[n // 2] = 1.0
    return {"all": torch.ones(n), "hard": hard, "soft": hard * (0.2 + torch.rand(n)),
            "one_unit": one, "none": torch.zeros(n)}


def check_same_outputs(model, sub, gates, head):
    feats, lengths = torch.randn(3, 45, 80), torch.tensor([45, 30, 6])
    expected, expected_lengths = model(feats, lengths, gates, head)
    got, got_lengths = sub(feats, lengths)
    assert got_lengths.tolist() == expected_lengths.tolist()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["component", "module"])
def test_extract_equals_masked_supernet_params_and_flops(granularity):
    cfg = tiny_cfg(granularity=granularity, module_order=("ffn1", "mhsa", "conv", "ffn2"))
    model = ConformerSupernet(cfg).eval()
    for name, gates in gate_sets(model.num_units).items():
        head = 0 if name == "hard" else -1
        sub = extract_subnet(model, gates, head=head)
        check_same_outputs(model, sub, gates, head)
        assert sub.num_params() == subnet_cost(cfg, gates, "params"), name
        frames = cfg.ref_frames
        with FlopCounterMode(display=False) as counter:
            sub(torch.randn(1, 4 * frames, 80), torch.tensor([4 * frames]))
        expected = subnet_cost(cfg, gates, "flops", frames=frames)
        assert abs(counter.get_total_flops() - expected) <= 0.02 * expected, name
    removed = extract_subnet(model, torch.zeros(model.num_units))
    assert all(len(block.modules_by_kind) == 0 for block in removed.blocks)


def module_counts(cfg, gates) -> list[list[int]]:
    """Nonzero gates of each module (per module kind, per layer)."""
    blocks = torch.as_tensor(gates).view(cfg.num_layers, -1)
    return [(blocks[:, start:end] != 0).sum(1).tolist() for _, start, end in block_layout(cfg)]


@pytest.mark.parametrize("granularity", ["component", "module"])
def test_widths_to_gates_keeps_each_modules_count_and_cost(granularity):
    cfg = tiny_cfg(granularity=granularity)
    model = ConformerSupernet(cfg)
    for name, gates in gate_sets(model.num_units).items():
        back = widths_to_gates(cfg, extract_subnet(model, gates).widths)
        assert back.shape == (model.num_units,) and set(back.tolist()) <= {0.0, 1.0}, name
        assert module_counts(cfg, back) == module_counts(cfg, gates), name
        for criterion in ("params", "flops"):
            assert subnet_cost(cfg, back, criterion) == subnet_cost(cfg, gates, criterion), name
    widths = extract_subnet(model, torch.ones(model.num_units)).widths
    with pytest.raises(ValueError, match="widths must have 2 entries"):
        widths_to_gates(cfg, widths[:1])
    widths[1]["mhsa"] = cfg.num_heads + 1
    with pytest.raises(ValueError, match=rf"widths\[1\]\['mhsa'\] must be in "
                                         rf"\[0, {cfg.num_heads}\], got {cfg.num_heads + 1}"):
        widths_to_gates(cfg, widths)


def test_torch_export_and_save_load(tmp_path):
    cfg = tiny_cfg()
    model = ConformerSupernet(cfg).eval()
    gates = gate_sets(model.num_units)["hard"]
    sub = extract_subnet(model, gates, head=1)
    feats, lengths = torch.randn(2, 48, 80), torch.tensor([48, 21])
    expected, _ = sub(feats, lengths)
    program = torch.export.export(sub, (feats, lengths))
    got, _ = program.module()(feats, lengths)
    torch.testing.assert_close(got, expected)
    path = sub.save(tmp_path / "sub.pt", tokenizer=b"tok")
    loaded = load_subnet(path)
    assert loaded.tokenizer_bytes == b"tok" and loaded.widths == sub.widths
    torch.testing.assert_close(loaded(feats, lengths)[0], expected)
    torch.save({"format": 1, "kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="this needs an exported subnet"):
        load_subnet(tmp_path / "other.pt")
    # an earlier export is replaced; another file (it wrote over any) and a folder are not
    assert sub.save(path, tokenizer=b"again") == path
    assert load_subnet(path).tokenizer_bytes == b"again"
    before = (tmp_path / "other.pt").read_bytes()
    with pytest.raises(ValueError, match="other.pt exists and is not an earlier export"):
        sub.save(tmp_path / "other.pt")
    assert (tmp_path / "other.pt").read_bytes() == before
    with pytest.raises(ValueError, match="is a folder"):
        sub.save(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_subnet_loads_in_the_dtype_it_was_saved_in(dtype, tmp_path):
    """load_subnet copied the saved weights into fresh float32 ones: `sub.half()` saved
    came back float32 (and export_program made float32 example features, refused by a
    half-precision subnet). Now each weight keeps its dtype, mixed ones too (LayerNorms
    kept in float32), and the loaded subnet's outputs and .pt2 program are the saved one's."""
    model = ConformerSupernet(tiny_cfg()).eval()
    sub = extract_subnet(model, gate_sets(model.num_units)["hard"], head=1).to(dtype)
    feats, lengths = torch.randn(2, 48, 80, dtype=dtype), torch.tensor([48, 21])
    loaded = load_subnet(sub.save(tmp_path / "sub.pt"))
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    expected = sub(feats, lengths)[0]
    assert torch.equal(loaded(feats, lengths)[0], expected)
    torch.testing.assert_close(export_program(loaded).module()(feats, lengths)[0], expected)
    for module in sub.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    loaded = load_subnet(sub.save(tmp_path / "sub.pt"))
    assert [p.dtype for p in loaded.parameters()] == [p.dtype for p in sub.parameters()]
    assert torch.equal(loaded(feats, lengths)[0], sub(feats, lengths)[0])


def test_an_exported_subnet_takes_an_empty_batch_as_the_supernet_does():
    """B = 0 was a RuntimeError from inside attention's reshape ("cannot reshape tensor of
    0 elements"); the supernet gives empty outputs."""
    model = ConformerSupernet(tiny_cfg()).eval()
    gates = gate_sets(model.num_units)["all"]
    sub = extract_subnet(model, gates, head=1)
    feats, lengths = torch.randn(0, 40, 80), torch.zeros(0, dtype=torch.long)
    expected, expected_lengths = model(feats, lengths, gates, 1)
    got, got_lengths = sub(feats, lengths)
    assert got.shape == expected.shape == (0, 10, 23) and got_lengths.shape == (0,)


def test_load_subnet_names_a_device_it_cannot_map_to(tmp_path, monkeypatch):
    """map_location="cuda" without a GPU said the file was "corrupt or truncated" (torch's
    deserialisation error, caught as a bad file), and "gpu" alike."""
    model = ConformerSupernet(tiny_cfg())
    path = extract_subnet(model, torch.ones(model.num_units)).save(tmp_path / "sub.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but no CUDA GPU"):
        load_subnet(path, map_location="cuda")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                         "got 'gpu'"):
        load_subnet(path, map_location="gpu")
    assert load_subnet(path, map_location=torch.device("cpu")).widths == \
        load_subnet(path).widths


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("gates", ["hard", "one_unit"])
def test_export_program_takes_any_batch_and_length(gates, device, tmp_path):
    """The .pt2 program is not specialised to its example's shape: other batches and
    lengths, odd and even, give the eager subnet's outputs; too few frames are refused by
    name. (With torch 2.11, the GPU machine's, a program traced straight from the subnet
    took only lengths of its example's parity; torch 2.13 traced it without that guard.)"""
    model = ConformerSupernet(tiny_cfg()).eval()
    sub = extract_subnet(model, gate_sets(model.num_units)[gates], head=1).to(device)
    torch.export.save(export_program(sub), tmp_path / "sub.pt2")
    program = torch.export.load(tmp_path / "sub.pt2").module()
    for lengths in ([37], [203, 8, 150], [45, 46, 47, 44]):
        feats = torch.randn(len(lengths), max(lengths), 80, device=device)
        lengths = torch.tensor(lengths, device=device)
        expected, expected_lengths = sub(feats, lengths)
        got, got_lengths = program(feats, lengths)
        assert got_lengths.tolist() == expected_lengths.tolist()
        torch.testing.assert_close(got, expected)
    if device != "cpu":     # on CUDA the lengths check is a device-side assert
        return
    for bad in ([38, 20], [0, 37]):   # past T, and empty: refused, not read past the end
        with pytest.raises(RuntimeError, match=r"lengths must be in \[1, T\] input frames"):
            program(torch.randn(2, 37, 80), torch.tensor(bad))
    too_short = PROGRAM_FRAMES[0] - 1
    with pytest.raises(AssertionError, match=rf"features.size\(\)\[1\] >= {too_short + 1}"):
        program(torch.randn(1, too_short, 80), torch.tensor([too_short]))
    # the loaders name what it is (torch.load's "corrupt file" error said nothing useful)
    with pytest.raises(ValueError, match=r"sub.pt2 is a torch.export program .*this needs an "
                                         r"exported subnet"):
        load_subnet(tmp_path / "sub.pt2")


def test_bad_gates():
    model = ConformerSupernet(tiny_cfg())
    with pytest.raises(ValueError, match="one per unit"):
        extract_subnet(model, torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        extract_subnet(model, torch.full((model.num_units,), float("nan")))
    for head in (5, True):               # out of range; a bool is not an index
        with pytest.raises(ValueError, match=r"head must be an int .*got " + str(head)):
            extract_subnet(model, torch.ones(model.num_units), head=head)
    with pytest.raises(TypeError, match="gates must be a tensor .*got str"):
        extract_subnet(model, "all")
    with pytest.raises(TypeError, match="model must be a ConformerSupernet, got Linear"):
        extract_subnet(torch.nn.Linear(2, 2), torch.ones(3))


def test_extract_subnet_without_gates_keeps_every_unit():
    """gates None reads as every unit on, as the supernet's own forward reads it."""
    model = ConformerSupernet(tiny_cfg()).eval()
    sub = extract_subnet(model, None)
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 23])
    torch.testing.assert_close(sub(feats, lengths)[0], model(feats, lengths)[0],
                               atol=1e-5, rtol=1e-4)


def test_an_exported_subnet_checks_its_inputs_as_the_supernet_does():
    """Lengths past T gave out_lengths past the output's frames without a word, other mel
    bins a shape error from inside a matmul; now the supernet's errors, by name."""
    model = ConformerSupernet(tiny_cfg()).eval()
    sub = extract_subnet(model, gate_sets(model.num_units)["hard"], head=1)
    feats = torch.randn(2, 40, 80)
    for bad_feats, lengths, error, message in [
            (feats, torch.tensor([80, 40]), ValueError,
             r"lengths must be in \[1, T=40\] input frames, got \[80, 40\]"),
            (feats, torch.tensor([0, 40]), ValueError, r"lengths must be in \[1, T=40\]"),
            (feats, torch.tensor([40]), ValueError,
             r"lengths must be an int tensor of shape \(2,\), got torch.int64 \(1,\)"),
            (torch.randn(2, 40, 64), torch.tensor([40, 40]), ValueError,
             r"features must be \(B, T, 80\), got \(2, 40, 64\)"),
            (feats.double(), torch.tensor([40, 40]), TypeError,
             r"features are torch.float64 but the model's weights are torch.float32")]:
        for net in (model, sub):
            with pytest.raises(error, match=message):
                net(bad_feats, lengths)


@pytest.mark.gpu
def test_extract_on_cuda_matches_masked_supernet_on_both_backends():
    """The compact subnet on CUDA equals the masked supernet on the PyTorch references
    (fp32, TF32 off) tightly, and the Triton-kernel supernet within kernel tolerance."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = tiny_cfg(d_model=64, num_heads=4, ff_dim=128)
    model = ConformerSupernet(cfg).cuda().eval()
    gates = gate_sets(model.num_units)["hard"].cuda()
    sub = extract_subnet(model, gates, head=0)
    feats = torch.randn(3, 200, 80, device="cuda")
    lengths = torch.tensor([200, 131, 9], device="cuda")
    got, _ = sub(feats, lengths)
    expected, _ = model(feats, lengths, gates, 0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    set_backend("auto")
    with torch.no_grad():
        triton_out, out_lengths = model(feats, lengths, gates, 0)
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(triton_out[b, :n], got[b, :n], atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step run: checkpoint.pt is a hard link to checkpoints/step-0000002.pt."""
    return finished_tiny_run(tmp_path_factory.mktemp("export"))


def export(*flags):
    main(["export", "--subnet", "0", *map(str, flags)])


def test_export_refuses_to_overwrite_the_checkpoint_or_another_file(run_dir, tmp_path, capsys):
    checkpoint = run_dir / "checkpoint.pt"
    step_file = kept_checkpoints(run_dir / "checkpoints")[-1]
    assert os.path.samefile(checkpoint, step_file)
    other_run = tmp_path / "other-checkpoint.pt"
    shutil.copyfile(checkpoint, other_run)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    kept = {path: path.read_bytes() for path in (checkpoint, other_run, notes)}
    for flag, path, message in [
            ("--out", checkpoint, "is the same file as --checkpoint"),
            ("--out", step_file, "is the same file as --checkpoint"),   # its hard link
            ("--pt2", checkpoint, "is the same file as --checkpoint"),
            ("--out", other_run, r"is not an earlier export \(.* is a training checkpoint"),
            ("--out", notes, "is not an earlier export"),
            ("--pt2", notes, "is not an earlier export .*not a torch.export program")]:
        out = ["--out", tmp_path / "sub.pt"] if flag == "--pt2" else []
        err = cli_error(capsys, ["export", "--checkpoint", str(checkpoint), "--subnet", "0",
                                 *map(str, out), flag, str(path)])
        assert f"{flag} {path}" in err, err
        assert re.search(message, err), err
    assert {path: path.read_bytes() for path in kept} == kept
    export("--checkpoint", checkpoint, "--out", tmp_path / "sub.pt")
    export("--checkpoint", checkpoint, "--out", tmp_path / "sub.pt")    # a re-export
    assert load_subnet(tmp_path / "sub.pt").budget == 0.4


def test_export_write_errors_name_the_path_and_the_reason(run_dir, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ok.wav").write_bytes(b"RIFF")
    checkpoint = str(run_dir / "checkpoint.pt")
    err = cli_error(capsys, ["export", "--checkpoint", checkpoint, "--subnet", "0",
                             "--out", "ok.wav/x.pt"])
    assert "could not write checkpoint ok.wav/x.pt: ok.wav is a file, not a folder" in err
    if Path("/proc/self").exists():     # a folder that takes no new files, even from root
        err = cli_error(capsys, ["export", "--checkpoint", checkpoint, "--subnet", "0",
                                 "--out", "sub.pt", "--pt2", "/proc/x.pt2"])
        assert "could not write torch.export program /proc/x.pt2: " in err, err
        assert ".tmp" not in err and "enforce fail" not in err


def test_widths_to_gates_gives_back_the_frozen_masks_counts(run_dir):
    trained = load_trained(run_dir / "checkpoint.pt")
    cfg = trained.model.cfg
    for index in range(trained.num_subnets):
        mask = trained.subnet_gates(index)
        sub = extract_subnet(trained.model, mask, head=index)
        assert module_counts(cfg, widths_to_gates(cfg, sub.widths)) == \
            module_counts(cfg, mask)


def test_export_picks_a_subnet_by_budget(run_dir, tmp_path, capsys):
    checkpoint = str(run_dir / "checkpoint.pt")
    budgets = load_trained(checkpoint).model.cfg.budgets
    main(["export", "--checkpoint", checkpoint, "--budget", str(budgets[1] + 1e-12),
          "--out", str(tmp_path / "sub.pt")])               # as Recognizer: to 1e-9
    assert load_subnet(tmp_path / "sub.pt").budget == budgets[1]
    err = cli_error(capsys, ["export", "--checkpoint", checkpoint, "--budget", "0.55",
                             "--out", str(tmp_path / "other.pt")])
    assert f"budget 0.55 is not one of the run's budgets {list(budgets)}" in err, err


def test_a_fixed_gates_run_exports_only_the_subnet_it_trained(run_dir, tmp_path, capsys):
    """A fixed_gates run (one subnet trained alone) keeps its source run's masks: exporting
    another budget gave a subnet whose weights and head that run never trained, unsaid."""
    from test_train import tiny_run

    from orthoasr.train import train
    train(tiny_run(run_dir.parent / "corpus", f"fixed_gates={run_dir / 'checkpoint.pt'}@0.4",
                   "stage1_steps=1", "stage2_steps=0"), tmp_path / "alone")
    checkpoint = str(tmp_path / "alone" / "checkpoint.pt")
    for flags in (["--budget", "1.0"], ["--subnet", "1"]):
        err = cli_error(capsys, ["export", "--checkpoint", checkpoint, *flags,
                                 "--out", str(tmp_path / "sub.pt")])
        assert f"{' '.join(flags)}: the run of {checkpoint} trained only the subnet of budget " \
            f"0.4 (fixed_gates {run_dir / 'checkpoint.pt'}@0.4)" in err, err
    assert not (tmp_path / "sub.pt").exists()
    main(["export", "--checkpoint", checkpoint, "--budget", "0.4", "--out",
          str(tmp_path / "sub.pt")])
    assert load_subnet(tmp_path / "sub.pt").budget == 0.4


def test_an_exported_subnets_encode_checks_its_inputs_as_the_supernets_does():
    """`CompactConformer.encode` took the feature lengths in place of `embed`'s (4x too
    long), lengths of another batch size (broadcast), float or negative lengths, and gave
    outputs without a word; other widths or dtypes failed inside a LayerNorm or a matmul.
    Now the supernet's encode's errors, by name."""
    model = ConformerSupernet(tiny_cfg()).eval()
    gates = gate_sets(model.num_units)["hard"]
    sub = extract_subnet(model, gates, head=1)
    feats, feat_lengths = torch.randn(2, 40, 80), torch.tensor([40, 21])
    x, lengths = sub.embed(feats, feat_lengths)
    torch.testing.assert_close(sub.encode(x, lengths), sub(feats, feat_lengths)[0])
    for bad_x, bad_lengths, error, message in [
            (x, torch.tensor([40, 21]), ValueError, r"lengths must be in \[0, T=10\]"),
            (x, torch.tensor([10, -1]), ValueError, r"lengths must be in \[0, T=10\]"),
            (x, lengths[:1], ValueError, r"lengths must have shape \(2,\), got \(1,\)"),
            (x, lengths.float(), TypeError, "lengths must be int32 or int64"),
            (x, [10, 5], TypeError, "lengths must be a tensor, got list"),
            (x[..., :16], lengths, ValueError, r"x must be a \(B, T, 32\) tensor"),
            (x.double(), lengths, TypeError,
             "x is torch.float64 but the model's weights are torch.float32")]:
        for encode in (lambda a, b: model.encode(a, b, gates, 1), sub.encode):
            with pytest.raises(error, match=message):
                encode(bad_x, bad_lengths)


def test_save_takes_a_tokenizer_or_its_bytes_and_refuses_anything_else(tmp_path):
    """`sub.save(path, tokenizer=Tokenizer)` pickled the object: the file was written, then
    load_subnet refused it as "not written by orthoasr"; a tokenizer's path (a str) was
    saved as the tokenizer and failed in Recognizer.from_subnet. A Tokenizer is now saved as
    its bytes, anything else but bytes refused before the file is touched."""
    from orthoasr.data import Tokenizer
    tokenizer = Tokenizer.train(["turn the light on", "stop the music"], vocab_size=20)
    model = ConformerSupernet(tiny_cfg()).eval()
    sub = extract_subnet(model, None)
    path = sub.save(tmp_path / "sub.pt", tokenizer=tokenizer)
    assert load_subnet(path).tokenizer_bytes == tokenizer.to_bytes()
    assert load_subnet(sub.save(path, tokenizer=bytearray(b"tok"))).tokenizer_bytes == b"tok"
    before = path.read_bytes()
    for bad in ("tokenizer.model", tmp_path / "tokenizer.model", 3):
        with pytest.raises(TypeError, match=r"tokenizer must be a Tokenizer, its bytes or "
                                            rf"None, got {type(bad).__name__}"):
            sub.save(path, tokenizer=bad)
    assert path.read_bytes() == before


def test_load_trained_names_a_device_it_cannot_map_to(run_dir, monkeypatch):
    """load_trained(path, "cuda") without a GPU, or "auto", said the checkpoint was "corrupt
    or truncated" (torch.load's error for the map_location, caught as a bad file);
    load_subnet names the device, and so does load_trained now."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = run_dir / "checkpoint.pt"
    with pytest.raises(ValueError, match="device 'cuda' requested but no CUDA GPU"):
        load_trained(path, "cuda")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                         "got 'gpu'"):
        load_trained(path, "gpu")
    for device in ("auto", torch.device("cpu")):
        assert load_trained(path, device).model.heads[0].weight.device.type == "cpu"
