"""Training: OrthoSoftmax masks anneal to binary, budgets, schedules, bad input, the Triton
vs torch convergence check, NaN stop, CLI train/eval/export on a tiny random corpus."""

import json
import math
import random
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from orthoasr import SupernetConfig, gamma_for, set_backend, subnet_cost, temperature
from orthoasr.checkpoint import load_checkpoint
from orthoasr.metrics import read_metrics
from orthoasr.model import ConformerSupernet
from orthoasr.objective import SubnetSelector, check_feasible_budgets
from orthoasr.run_config import RunConfig, load_run_config
from orthoasr.schedule import lr_factor
from orthoasr.train import TrainingDiverged, train

WORDS = ["red", "green", "blue", "one", "two", "three", "stop", "go", "left", "right"]


def level_swings(samples: int) -> np.ndarray:
    """(samples,) float32 gains that fall from 1 to 0.1 (20 dB) and rise again every 0.4 s,
    as speech's level does: noise times them is sound to the silence splitter, which drops
    steady noise alone (orthoasr.silence: FLOOR_DB)."""
    t = np.arange(samples) / 16000
    return (0.55 + 0.45 * np.cos(2 * np.pi * 2.5 * t)).astype(np.float32)


def write_corpus(out_dir, n=12, seed=0):
    """Random-noise wav files (`level_swings`) with short random transcripts: train/dev/test
    manifests."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        with (out_dir / f"{split}.jsonl").open("w") as manifest:
            for i in range(n):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
                samples = int(16000 * (0.35 + 0.06 * len(text)))
                audio = (rng.standard_normal(samples) * level_swings(samples) * 2000
                         ).astype(np.int16)
                path = out_dir / f"{split}_{i}.wav"
                with wave.open(str(path), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(16000)
                    w.writeframes(audio.tobytes())
                manifest.write(json.dumps({"audio_filepath": str(path),
                                           "duration": samples / 16000, "text": text}) + "\n")
    return out_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def tiny_run(corpus, *overrides) -> RunConfig:
    """A 2-layer supernet on the random corpus: 3 stage-1 and 3 stage-2 steps."""
    return load_run_config(None, [
        f"train_manifest={corpus / 'train.jsonl'}", f"dev_manifest={corpus / 'dev.jsonl'}",
        f"test_manifest={corpus / 'test.jsonl'}", "model.num_layers=2", "model.d_model=32",
        "model.num_heads=2", "model.ff_dim=64", "model.ff_chunks=2", "model.conv_kernel=5",
        "model.vocab_size=24", "model.frontend_channels=[4,8]", "model.budgets=[0.4,0.7,1.0]",
        "model.dropout=0.0", "model.ref_frames=50", "max_frames=1500", "warmup_steps=2",
        "stage1_steps=3", "stage2_steps=3", "penalty_warmup=2", "log_every=1",
        "ckpt_every=2", "backend=torch", "score_lr=0.05", *overrides])


def finished_tiny_run(root: Path) -> Path:
    """`root`/run: a finished 2-step run (one step per stage) on a 6-utterance corpus in
    `root`/corpus; its checkpoint.pt is a hard link to checkpoints/step-0000002.pt."""
    train(tiny_run(write_corpus(root / "corpus", n=6), "stage1_steps=1", "stage2_steps=1"),
          root / "run")
    return root / "run"


# a tiny run on the GPU with no random ops (no SpecAugment or stochastic depth; dropout is
# 0 in tiny_run), its batches in two shape classes
GPU_RUN = ("backend=auto", "device=cuda", "spec_augment=false", "stochastic_depth=0",
           "shape_classes=2")


# per-step losses of the runs already trained in this module, by their whole config: the
# interpreter's runs take minutes on the CI's CPUs, and the comparisons below share some
# (the Triton run with the defaults is the reference of three tests)
_trained: dict[str, list[float]] = {}


def losses_by(corpus, tmp_path, key: str, values, *overrides) -> dict[str, list[float]]:
    """value -> the per-step losses of the tiny run with `key` set to it, the rest as
    `overrides` say (a work directory of its own each; a run with the same config as one
    trained before in this module is not trained again)."""
    losses = {}
    for value in values:
        run = tiny_run(corpus, *overrides, f"{key}={value}")
        if repr(run) not in _trained:
            _trained[repr(run)] = [r["loss"] for r in train(run, tmp_path / value).history]
        losses[value] = _trained[repr(run)]
    return losses


# the interpreter's comparisons: two steps a stage (a loss after each stage's update), small
# batches (the interpreter's time grows with the programs of every launch)
INTERPRETED = ("stage1_steps=2", "stage2_steps=2", "max_frames=400")


def tiny_model_cfg(**overrides):
    values = dict(num_layers=2, d_model=32, num_heads=4, ff_dim=64, ff_chunks=2, conv_kernel=5,
                  vocab_size=19, frontend_channels=(4, 8), budgets=(0.4, 0.7, 1.0),
                  dropout=0.0, ref_frames=10)
    return SupernetConfig(**{**values, **overrides})


@pytest.mark.parametrize("seed", range(4))
def test_stage1_masks_become_binary_as_tau_anneals(seed):
    """Toy problem: the penalty alone (a random budget below the largest each step) with tau
    annealed 1 -> 0.05 turns fractional soft masks into nested 0/1 masks. (Norm l1: with l2
    and this fast schedule two rows can saturate on one unit before they separate, a
    duplicate that freeze_masks' de-duplicated ranking absorbs.)"""
    set_backend("torch")
    torch.manual_seed(seed)
    cfg = tiny_model_cfg()
    run = RunConfig(model=cfg, penalty_mode="constant", penalty_norm="l1")
    selector = SubnetSelector(cfg, run)
    optimizer = torch.optim.Adam(selector.parameters(), lr=0.02)
    steps, rng = 200, random.Random(seed)
    gamma = gamma_for(1.0, 0.05, steps)

    def distance_to_binary(masks):
        return float((masks - masks.round()).abs().max())

    with torch.no_grad():
        assert distance_to_binary(selector(torch.tensor(1.0)).masks[:-1]) > 0.2
    for step in range(steps):
        result = selector(torch.tensor(temperature(step, 1.0, gamma, 0.01)))
        b = rng.randrange(len(cfg.budgets) - 1)
        loss = selector.penalty_scale(result.penalty[b], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        result = selector(torch.tensor(0.05))
    masks = result.masks[:-1]
    assert distance_to_binary(masks) < 0.05
    assert float(result.penalty[:-1].max()) < 0.05
    hard = masks.round()
    assert (hard[1] >= hard[0]).all() and hard[0].sum() < hard[1].sum()


def test_clamp_masks_caps_the_soft_masks_at_one():
    """Unclamped, rows that share a unit gate it above 1 (scores far from uniform here);
    clamp_masks caps every mask at 1 and leaves the rest of the result alone."""
    set_backend("torch")
    torch.manual_seed(0)
    cfg = tiny_model_cfg()
    plain = SubnetSelector(cfg, RunConfig(model=cfg, score_init_std=3.0))
    clamped = SubnetSelector(cfg, RunConfig(model=cfg, score_init_std=3.0, clamp_masks=True))
    clamped.load_state_dict(plain.state_dict())
    tau = torch.tensor(0.1)
    out, capped = plain(tau), clamped(tau)
    assert float(out.masks.max()) > 1.5
    assert torch.equal(capped.masks, out.masks.clamp(max=1.0))
    assert torch.equal(capped.penalty, out.penalty) and torch.equal(capped.k, out.k)


def test_infeasible_budget_names_the_smallest_feasible():
    cfg = tiny_model_cfg(budgets=(0.01, 1.0))
    with pytest.raises(ValueError, match=r"budget 0.01 is infeasible.*smallest feasible budget "
                                         r"is 0\.\d+"):
        check_feasible_budgets(cfg)
    check_feasible_budgets(tiny_model_cfg())


def test_run_config_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num_layers: 3\nlr: 0.01\n")
    run = load_run_config(path, ["model.budgets=[0.5,1.0]", "aux_scale=focal"])
    assert (run.model.num_layers, run.lr, run.model.budgets, run.aux_scale) == \
        (3, 0.01, (0.5, 1.0), "focal")
    with pytest.raises(ValueError, match=r"unknown config key 'lrr'.*valid keys.*'lr'"):
        load_run_config(path, ["lrr=1"])
    path.write_text("model:\n  layers: 3\n")
    with pytest.raises(ValueError, match=r"model.layers.*valid keys.*model.num_layers"):
        load_run_config(path)
    with pytest.raises(ValueError, match="aux_scale must be one of"):
        load_run_config(None, ["aux_scale=sometimes"])
    with pytest.raises(ValueError, match=r"grad_sync must be one of \('ddp', 'flat'\), got 'nccl'"):
        load_run_config(None, ["grad_sync=nccl"])
    run = load_run_config(None, ["lr=3e-4", "model.dropout=1e-1", "model.budgets=[5e-1,1]"])
    assert (run.lr, run.model.dropout, run.model.budgets) == (3e-4, 0.1, (0.5, 1.0))
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        load_run_config(None, ["lr=fast"])
    with pytest.raises(ValueError, match=r"budgets must be a list of numbers .*, got 0.5"):
        load_run_config(None, ["model.budgets=0.5"])
    with pytest.raises(ValueError, match="budgets must hold numbers, got 'x'"):
        load_run_config(None, ["model.budgets=[0.5,x]"])


def test_unreadable_config_files_and_overrides_are_named(tmp_path):
    """A config that is not YAML, not text or a folder, a `model:` that is not a mapping,
    and an override that is not YAML: a ValueError naming the file or the override (they
    were yaml's ParserError naming "<unicode string>", UnicodeDecodeError and TypeError)."""
    path = tmp_path / "run.yaml"
    for text, message in (("lr: [1\n", rf"config file {path} is not valid YAML: expected ',' "
                                       r"or '\]', but got '<stream end>' at line 2"),
                          ("model: 3\n", r"model must be a mapping of model keys .*, got 3")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_run_config(path)
    path.write_bytes(b"RIFF\x80\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match=rf"config file {path} is not a YAML text file "
                                         r"\(invalid start byte at byte 4\)"):
        load_run_config(path)
    with pytest.raises(ValueError, match=rf"config file {tmp_path} is a folder"):
        load_run_config(tmp_path)
    with pytest.raises(ValueError, match=r"override 'model.budgets=\[0.4,' is not valid YAML"):
        load_run_config(None, ["model.budgets=[0.4,"])


def test_a_key_set_twice_in_a_config_file_is_named(tmp_path):
    """A key given twice (an `lr:` added at the end of a copied config) is an error naming
    the key and both lines: yaml kept the last one without a word."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3.0e-3\nmodel:\n  num_layers: 2\n  num_layers: 3\n")
    with pytest.raises(ValueError, match=rf"config file {path} is not valid YAML: key "
                                         r"'num_layers' given twice \(first at line 3\) at line 4"):
        load_run_config(path)
    path.write_text("lr: 3.0e-3\nwarmup_steps: 5\nlr: 1.0e-3\n")
    with pytest.raises(ValueError, match=r"key 'lr' given twice \(first at line 1\) at line 3"):
        load_run_config(path)


def test_lr_schedule():
    run = RunConfig(warmup_steps=10, stage1_steps=50, stage2_steps=50, lr_final=0.1)
    factors = [lr_factor(s, run) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("overrides", [
    ["model.granularity=module", "aux_scale=focal", "penalty_mode=lagrange"],
    ["model.criterion=flops", "penalty_norm=l1", "model.budgets=[0.9,1.0]"],
    ["selector=simple_topk"],
])
def test_variants_run_both_stages(corpus, tmp_path, overrides):
    run = tiny_run(corpus, *overrides)
    trainer = train(run, tmp_path)
    assert [r["stage"] for r in trainer.history] == [1, 1, 1, 2, 2, 2]
    masks = load_checkpoint(tmp_path / "checkpoint.pt")["frozen_masks"]
    _, _, total = __import__("orthoasr").unit_costs(run.model, run.model.criterion)
    for budget, gates in zip(run.model.budgets, masks):
        assert subnet_cost(run.model, gates, run.model.criterion) <= budget * total * (1 + 1e-9)


def test_convergence_triton_vs_torch(corpus, tmp_path):
    """The same tiny run on the Triton kernels (interpreter on CPU) and on the PyTorch
    references gives the same losses, step by step."""
    losses = losses_by(corpus, tmp_path, "backend", ("torch", "triton"), *INTERPRETED)
    assert len(losses["torch"]) == 4
    torch.testing.assert_close(losses["triton"], losses["torch"], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_pair_batch_gives_the_two_passes_losses(corpus, tmp_path, backend):
    """pair_batch=true (stage 1's two passes as one batch) trains as the two passes do: the
    same losses, step by step, through both stages."""
    losses = losses_by(corpus, tmp_path, "pair_batch", ("false", "true"), f"backend={backend}",
                       *INTERPRETED)
    assert len(losses["true"]) == 4
    torch.testing.assert_close(losses["true"], losses["false"], rtol=1e-4, atol=1e-4)


def test_grads_in_place_gives_the_returned_gradients_losses(corpus, tmp_path):
    """grads_in_place (the encoder blocks' weight gradients added by the kernels into a kept
    .grad) trains as gradients returned to autograd do: the same losses, step by step,
    through both stages (stage 2: three passes adding into one .grad), on the Triton
    kernels (interpreter on CPU)."""
    losses = losses_by(corpus, tmp_path, "grads_in_place", ("false", "true"), "backend=triton",
                       *INTERPRETED)
    assert len(losses["true"]) == 4
    torch.testing.assert_close(losses["true"], losses["false"], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_grads_in_place_gives_the_returned_gradients_losses_on_the_gpu(corpus, tmp_path):
    """The same on CUDA in bf16, steps replayed from CUDA graphs."""
    losses = losses_by(corpus, tmp_path, "grads_in_place", ("false", "true"), *GPU_RUN,
                       "cuda_graphs=true", "pair_batch=true", "stage1_steps=5",
                       "stage2_steps=3")
    assert len(losses["true"]) == 8
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-2)


def test_pair_batch_needs_component_granularity(corpus):
    with pytest.raises(ValueError, match="pair_batch needs the model's granularity"):
        tiny_run(corpus, "pair_batch=true", "model.granularity=module")


@pytest.mark.gpu
def test_pair_batch_gives_the_two_passes_losses_on_the_gpu(corpus, tmp_path):
    """The same on CUDA in bf16, steps replayed from CUDA graphs."""
    losses = losses_by(corpus, tmp_path, "pair_batch", ("false", "true"), *GPU_RUN,
                       "cuda_graphs=true", "stage1_steps=5", "stage2_steps=2")
    assert len(losses["true"]) == 7
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-2)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(corpus, tmp_path,
                                                                       monkeypatch):
    import orthoasr.trainer as trainer_module
    real_ctc = trainer_module.ctc_loss
    calls = {"n": 0}

    def ctc_nan_at_step_4(*args):
        calls["n"] += 1                    # 2 CTC terms in each of the 3 stage-1 steps
        loss = real_ctc(*args)
        return loss * math.nan if calls["n"] > 2 * 3 else loss

    monkeypatch.setattr(trainer_module, "ctc_loss", ctc_nan_at_step_4)
    with pytest.raises(TrainingDiverged, match="at step 4"):
        train(tiny_run(corpus, "ckpt_every=3"), tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")] == [1, 2, 3]


def test_empty_manifest_is_an_error(corpus, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty|no utterances"):
        train(tiny_run(corpus, f"train_manifest={empty}"), tmp_path / "run")


def test_cli_train_eval_export(corpus, tmp_path, capsys):
    from orthoasr.cli import main
    from orthoasr.export import load_subnet
    work = tmp_path / "run"
    overrides = as_overrides(tiny_run(corpus))
    main(["train", "--config", str(_write_yaml(tmp_path, {})), "--work-dir", str(work),
          *overrides])
    main(["eval", "--checkpoint", str(work / "checkpoint.pt")])
    out = capsys.readouterr().out
    assert "WER dev" in out and (work / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    rows = (work / "eval.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
    main(["export", "--checkpoint", str(work / "checkpoint.pt"), "--subnet", "0",
          "--out", str(tmp_path / "sub.pt"), "--pt2", str(tmp_path / "sub.pt2")])
    program = torch.export.load(tmp_path / "sub.pt2")
    sub = load_subnet(tmp_path / "sub.pt")
    state = load_checkpoint(work / "checkpoint.pt")
    cfg = SupernetConfig.from_dict(state["run_config"]["model"])
    assert sub.num_params() == subnet_cost(cfg, state["frozen_masks"][0], "params")
    assert int(rows[1].split(",")[3]) == sub.num_params()
    feats, lengths = torch.randn(2, 200, 80), torch.tensor([200, 163])
    torch.testing.assert_close(program.module()(feats, lengths)[0], sub(feats, lengths)[0])


def as_overrides(run) -> list[str]:
    """A RunConfig as the CLI's key=value overrides (model keys as model.<key>)."""
    return [f"{k}={v}" for k, v in _flat(run.to_dict()).items()]


def _flat(values, prefix=""):
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + key + "."))
        else:
            out[prefix + key] = json.dumps(list(value) if isinstance(value, tuple) else value)
    return out


def _write_yaml(tmp_path, values):
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_train_step_has_no_host_sync(corpus, tmp_path, cuda_graphs):
    """On CUDA (Triton kernels and orthoasr's CTC, bf16 autocast) 50 stage-1 and 50 stage-2
    steps (every budget drawn many times) run under torch.cuda.set_sync_debug_mode("error")
    after the warm-up steps (compilation; with cuda_graphs, every budget's capture),
    eagerly and replayed from CUDA graphs."""
    from orthoasr.run_data import TrainData, make_tokenizer
    from orthoasr.train import Trainer

    run = tiny_run(corpus, "backend=auto", "device=cuda", "spec_augment=true",
                   "stochastic_depth=0.5", "shape_classes=2",
                   f"cuda_graphs={str(cuda_graphs).lower()}")
    trainer = Trainer(run, tmp_path)
    trainer.tokenizer = make_tokenizer(run, tmp_path)
    batch = next(TrainData(run, trainer.tokenizer, pin_memory=True).batches(0, 0))[2]

    def step_without_sync(graphs_after_warmup: int):
        # warm-up: compilation; with cuda_graphs, one capture per drawn budget of the stage
        for _ in range(100):
            trainer.train_step(batch)
            if not cuda_graphs or len(trainer.step_graphs.graphs) == graphs_after_warmup:
                break
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(50):
                trainer.train_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    n = len(run.model.budgets)
    step_without_sync(n - 1)                      # stage 1 draws one of the n - 1 subnets
    trainer.freeze()
    trainer.prepare_stage2()
    step_without_sync(n - 1 + n - 2)              # stage 2 one of the n - 2 middle ones
    trainer.flush()
    stages = [r["stage"] for r in trainer.history]
    assert stages[-50:] == [2] * 50 and stages.count(1) >= 51 and set(stages) == {1, 2}
    assert all(math.isfinite(r["loss"]) for r in trainer.history)


@pytest.mark.gpu
def test_cuda_graph_steps_give_the_eager_steps_losses(corpus, tmp_path):
    """A run replayed from CUDA graphs (one per shape class, stage and drawn budget) gives
    the losses of the same run stepped eagerly, through both stages (no random ops: no
    dropout, SpecAugment or stochastic depth; atomics leave float-rounding differences)."""
    losses = losses_by(corpus, tmp_path, "cuda_graphs", ("false", "true"), *GPU_RUN,
                       "stage1_steps=5", "stage2_steps=5")
    assert len(losses["true"]) == 10
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=2e-3)


def test_cuda_graphs_needs_shape_classes_and_flat_gradient_sync(corpus, tmp_path):
    """cuda_graphs is ignored on the CPU; on CUDA without shape classes it is an error."""
    from orthoasr.train import Trainer
    run = tiny_run(corpus, "cuda_graphs=true", "device=cpu")
    assert Trainer(run, tmp_path).step_graphs is None
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="shape_classes"):
            Trainer(tiny_run(corpus, "cuda_graphs=true", "device=cuda"), tmp_path / "gpu")


def test_config_presets_are_found_by_name_and_unknown_ones_listed(tmp_path, monkeypatch):
    from orthoasr.run_config import find_config
    monkeypatch.chdir(tmp_path)   # away from the checkout's configs/
    assert find_config("tiny").name == "tiny.yaml"
    assert find_config("configs/paper.yaml").name == "paper.yaml"
    presets = r"presets: \['demo-gpu', 'experiment', 'paper', 'tiny'\]"
    with pytest.raises(FileNotFoundError, match=presets):
        find_config("configs/huge.yaml")


def test_fixed_gates_train_one_frozen_subnet_alone(corpus, tmp_path):
    """fixed_gates=CHECKPOINT@BUDGET (issue 17's individually trained arm): the subnet the
    first run froze for 0.4, trained from step 0 alone; errors name the problem."""
    first = train(tiny_run(corpus), tmp_path / "supernet")
    masks = first.frozen_masks.cpu()
    ckpt = tmp_path / "supernet" / "checkpoint.pt"
    alone = train(tiny_run(corpus, f"fixed_gates={ckpt}@0.4"), tmp_path / "alone")
    assert [r["budget"] for r in alone.history] == [0.4] * 6
    assert all(r["loss_sub"] == 0 and r["penalty"] == 0 for r in alone.history)
    assert all(math.isfinite(r["loss"]) for r in alone.history)
    assert torch.equal(alone.frozen_masks.cpu(), masks)        # eval and export see them
    assert alone.selector.scores.grad is None                  # no selector in the loss
    with pytest.raises(ValueError, match="not one of the run's budgets"):
        train(tiny_run(corpus, f"fixed_gates={ckpt}@0.5"), tmp_path / "a")
    # the differing field named, as the checkpoint and this run have it
    named = r"another model config .*model\.ff_dim: \d+ there, 32 here"
    with pytest.raises(ValueError, match=named):
        train(tiny_run(corpus, f"fixed_gates={ckpt}@0.4", "model.ff_dim=32"), tmp_path / "b")
    with pytest.raises(ValueError, match="CHECKPOINT@BUDGET"):
        train(tiny_run(corpus, f"fixed_gates={ckpt}"), tmp_path / "c")
    train(tiny_run(corpus, "stage1_steps=4"), tmp_path / "early", stop_at=2)
    with pytest.raises(ValueError, match="has not frozen"):
        train(tiny_run(corpus, f"fixed_gates={tmp_path / 'early' / 'checkpoint.pt'}@0.4"),
              tmp_path / "d")


def test_stage2_subnets_leave_out_their_dead_modules(corpus, tmp_path, monkeypatch):
    """After the freeze each subnet's passes leave out the modules with every unit off
    (model.dead_modules of its frozen masks) and run ungated those with every unit on
    (model.full_modules); the supernet's pass leaves out none and runs ungated the full
    modules that stochastic depth never drops (those with a unit in the smallest subnet)."""
    calls = []
    original = ConformerSupernet.encode

    def spy(model, x, lengths, gates=None, head=-1, skip=frozenset(), full=frozenset()):
        calls.append((head, frozenset(skip), frozenset(full)))
        return original(model, x, lengths, gates, head, skip, full)

    monkeypatch.setattr(ConformerSupernet, "encode", spy)
    trainer = train(tiny_run(corpus, "stage1_steps=2", "stage2_steps=2"), tmp_path / "run")
    rows = trainer.frozen_masks.cpu()
    expected = [trainer.model.dead_modules(row) for row in rows]
    expected_full = [trainer.model.full_modules(row) for row in rows]
    assert trainer.frozen_skips == expected and any(expected[:-1])
    assert trainer.frozen_full == expected_full
    supernet_full = expected_full[-1] - expected[0]
    assert supernet_full and supernet_full != expected_full[-1]
    stage2 = calls[-2 * 3:]                  # 2 steps x (supernet, smallest, drawn subnet)
    for i, (head, skip, full) in enumerate(stage2):
        assert skip == expected[head]
        assert full == (supernet_full if i % 3 == 0 else expected_full[head])
    assert expected[-1] == frozenset()       # the largest subnet keeps every module


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_cross_epochs_through_one_loader_in_plan_order(corpus, tmp_path, monkeypatch,
                                                               workers):
    """TrainData.batches walks epoch after epoch through one DataLoader (its workers start
    once, not at every epoch boundary); the batches, epochs and indices are each epoch's plan
    in order, also from a resumed (epoch, index)."""
    from orthoasr.run_data import TrainData, make_tokenizer
    run = tiny_run(corpus, "max_frames=600", f"num_workers={workers}")
    data = TrainData(run, make_tokenizer(run, tmp_path))
    plans = [data.epoch_batches(e) for e in range(3)]
    assert len(plans[0]) >= 2
    expected = [(e, i + 1, plan[i]) for e, plan in enumerate(plans) for i in range(len(plan))]
    loaders = []
    real_loader = torch.utils.data.DataLoader

    def counting_loader(*args, **kwargs):
        loaders.append(1)
        return real_loader(*args, **kwargs)
    monkeypatch.setattr(torch.utils.data, "DataLoader", counting_loader)
    for start in (0, 1):                                   # from the start; resumed at (0, 1)
        batches = data.batches(0, start)
        got = [next(batches) for _ in range(len(expected) - start)]
        batches.close()
        assert [(e, i) for e, i, _ in got] == [(e, i) for e, i, _ in expected[start:]]
        for (_, _, batch), (_, _, ids) in zip(got, expected[start:], strict=True):
            lengths = sorted(len(data.dataset[k][0]) for k in ids)
            assert sorted(batch[1].tolist()) == lengths      # the planned utterances
    assert len(loaders) == 2                              # one per call, not per epoch


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_prefetch_to_device_gives_each_batch_with_its_device_copy(corpus, tmp_path, device):
    """prefetch_to_device yields the same (epoch, index, batch) in the same order, with the
    batch's device copy on CUDA (made one batch ahead on a side stream) and None elsewhere;
    closing it closes the batches under it."""
    from orthoasr.run_data import TrainData, make_tokenizer, prefetch_to_device
    run = tiny_run(corpus, "max_frames=600")
    data = TrainData(run, make_tokenizer(run, tmp_path), pin_memory=device == "cuda")
    plain = data.batches(0, 0)
    expected = [next(plain) for _ in range(3)]
    plain.close()
    inner = data.batches(0, 0)
    prefetched = prefetch_to_device(inner, device)
    got = [next(prefetched) for _ in range(3)]
    prefetched.close()
    assert inner.gi_frame is None                          # the batches under it are closed
    for (epoch, index, batch, on_device), (e, i, b) in zip(got, expected, strict=True):
        assert (epoch, index) == (e, i)
        assert all(torch.equal(x, y) for x, y in zip(batch, b, strict=True))
        if device == "cpu":
            assert on_device is None
        else:
            assert all(t.is_cuda and torch.equal(t.cpu(), x)
                       for t, x in zip(on_device, batch, strict=True))


def test_a_model_of_other_mel_bins_trains_evaluates_and_transcribes(tmp_path):
    """model.num_mel_bins reaches every LogMel: the trainer's, eval's and Recognizer's."""
    from orthoasr import Recognizer
    from orthoasr.evaluate import evaluate
    corpus = write_corpus(tmp_path / "corpus", n=6)
    train(tiny_run(corpus, "model.num_mel_bins=40", "stage1_steps=1", "stage2_steps=1"),
          tmp_path / "run")
    rows = evaluate(tmp_path / "run" / "checkpoint.pt", device="cpu")
    assert len(rows) == 3
    texts = Recognizer.from_checkpoint(tmp_path / "run" / "checkpoint.pt").transcribe(
        [corpus / "train_0.wav"])
    assert len(texts) == 1


def test_train_refuses_a_stop_before_the_first_step(tmp_path):
    for stop_at in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"stop_at must be a step >= 1 .*got {stop_at!r}"):
            train(RunConfig(), tmp_path / "run", stop_at=stop_at)
    assert not (tmp_path / "run").exists()
