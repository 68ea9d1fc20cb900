"""End-to-end encoder workloads (issue 14 item 6): what one training step of each stage and
one inference call cost on the whole encoder, ours against the method's way of masking.

    python -m bench.e2e [--workloads stage1 stage2 dense half trainer] [--providers ...]
    TRITON_INTERPRET=1 python -m bench.e2e --check     # on the CPU: the equality checks only

The encoder is the paper-size supernet's 12 blocks (d_model 384, budgets 0.3 ... 1.0, dropout
0 so that every provider computes the same thing) on its input after the frontend, B32 x
T'250 (10 s utterances; lengths drawn in [0.8 T', T'], ~10% padding, about what static shape
classes leave), bf16 autocast over fp32 weights. Workloads:
  - `encoder stage-1 pair`: the dense supernet and one soft-gated subnet (gates in (0, 1)
    with gradients, as stage 1's OrthoSoftmax masks), fwd+bwd;
  - `encoder stage-2 triple`: the supernet with stochastic depth (some modules fully off),
    the smallest subnet (~30% of the units) and a middle one (~60%), hard nested 0/1 gates,
    fwd+bwd;
  - `infer dense`, `infer 50%`: eval mode, no grad, fwd only.
fwd+bwd: loss = sum over the outputs of <output, probe> (one fixed random probe, zero at
padded frames), one backward to the input, the blocks' weights and the soft gates.
Providers: `ours` (orthoasr's blocks, Triton backend), `ours_one_batch` (the stage-1 pair
only: both passes as one batch of 2B sequences, as the trainer's `pair_batch` runs them;
not in the default set), `ours_frozen_weights` (the inference workloads only: the weights'
bf16 copies kept between calls, FrozenOperands, as Recognizer.from_checkpoint and `orthoasr
eval` run inference; `ours` copies them in every call), `eager_reference`
(bench/baselines/encoder.py: gates multiplied into weight copies, hard subnets by boolean
indexing with host syncs) and `compile_reference` (its torch.compile, `--compile-mode`
"max-autotune-no-cudagraphs", dynamic=False as in bench_mhsa: with dynamic shapes
max-autotune's bmm broke on the live-head count, torch 2.13). Hard gates graph-break there,
as they would for a user, and recompile per live-unit count (the recompile limit is raised
to 64 and made an error). Before timing, each provider's losses and gradients (or outputs on
valid frames) are compared with ours.

Rows go to <--out or bench/results>/e2e.json (table "e2e"): workload, shape, case, mode, provider,
timing (`graph`: a CUDA-graph replay, where the provider can be captured, i.e. not a
host-syncing hard-gated reference, so ours' graph rows of the hard-gated workloads have no
baseline row; `eager`), ms, audio_s_per_s (seconds of audio, valid frames x 0.04 s, per
second), peak_mem_mb (torch.cuda.max_memory_allocated, reset before the timing: the peak of
the timed calls, warm-up and capture included). The workload `trainer` runs the full
trainer's stages (`trainer stage 1/2`: data, frontend, CTC and optimiser included;
bench/e2e_trainer.py, 100 steps a stage, its providers among those named) into the same
file. Written to bench/results (no --out), the run ends by regenerating bench/RESULTS.md,
whose last table holds issue 14's targets against these rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch

from bench.baselines import EagerEncoder
from bench.e2e_trainer import PROVIDERS as TRAINER_PROVIDERS
from bench.e2e_trainer import run_trainer
from bench.floors import encode_gated
from bench.harness import require_gpu_unless_checking, time_graph_ms, time_ms, write_rows
from bench.report import main as report_main
from orthoasr import set_backend
from orthoasr.backend import use_triton
from orthoasr.config import SupernetConfig
from orthoasr.kernels.common import FrozenOperands, valid_mask
from orthoasr.model import ConformerSupernet, block_layout
from orthoasr.units import unit_costs

BUDGETS = (0.3, 0.45, 0.6, 0.8, 1.0)
SHAPE, B, T = "B32xT250", 32, 250
FRAME_S = 0.04          # one frame after 4x subsampling of 10 ms hops
BF16 = torch.bfloat16
WORKLOADS = {"stage1": "encoder stage-1 pair", "stage2": "encoder stage-2 triple",
             "dense": "infer dense", "half": "infer 50%"}     # --workloads takes the keys
FROZEN = "ours_frozen_weights"    # inference with the weights' copies kept between calls
PROVIDERS = ("ours", FROZEN, "eager_reference", "compile_reference")
ONE_BATCH = "ours_one_batch"      # the stage-1 pair's passes as one batch
TRAINER = "trainer"     # --workloads: the full trainer's stages (bench/e2e_trainer.py)


@dataclass
class Workload:
    mode: str                      # "fwd+bwd" or "fwd"
    subnets: list                  # [(gates (N,) or None, hard, skip)]; skip: ours leaves
                                   # these modules out (a frozen subnet's dead modules)
    soft: torch.Tensor | None = None   # the soft gates that get a gradient
    flops_fraction: float | None = None  # inference: the encoder FLOPs its units keep


def unit_masks(model: ConformerSupernet, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Hard gates (N,) from one ranking of the units, nested as freeze_masks' are: `smallest`
    (30%), `half` (50%), `middle` (60%), and `supernet`: all on but stochastic depth, which
    drops 10% (at least one) of the modules with no unit in the smallest. The ranking is
    random but for the last block's FFN2, conv and MHSA, ranked last: every kind has a module
    that all three subnets leave off (as frozen subnets do, and so the check covers it)."""
    layout, layers = block_layout(model.cfg), len(model.blocks)
    per_block = model.num_units // layers
    position = torch.empty(per_block, dtype=torch.long)   # module of each unit in a block
    for j, (_kind, start, end) in enumerate(layout):
        position[start:end] = j
    module = (torch.arange(layers)[:, None] * len(layout) + position).flatten()   # (N,)
    last = [(layers - 1) * len(layout) + j for j, (kind, _, _) in enumerate(layout)
            if kind in ("ffn2", "conv", "mhsa")]
    rank = torch.randperm(model.num_units, generator=gen)
    rank = torch.cat([rank[~torch.isin(module[rank], torch.tensor(last))],
                      rank[torch.isin(module[rank], torch.tensor(last))]])
    masks = {}
    for name, share in (("smallest", 0.3), ("half", 0.5), ("middle", 0.6)):
        masks[name] = torch.zeros(model.num_units)
        masks[name][rank[:round(share * model.num_units)]] = 1.0
    in_smallest = torch.zeros(layers * len(layout)).index_add_(0, module, masks["smallest"])
    droppable = (in_smallest == 0).nonzero().flatten()
    dropped = droppable[torch.randperm(len(droppable), generator=gen)
                        [:max(1, round(0.1 * len(droppable)))]]
    masks["supernet"] = (~torch.isin(module, dropped)).float()
    return masks


def flops_kept(cfg: SupernetConfig, gates: torch.Tensor) -> float:
    """The share of the encoder units' FLOPs at T frames (unit_costs, each unit with its
    share of its module's weights) that hard `gates` keep: issue 14's f for a subnet's
    inference time (<= (f + 0.05) x dense)."""
    costs, _rest, _total = unit_costs(cfg, "flops", T)
    return float((costs * (gates.cpu() != 0)).sum() / costs.sum())


def make_workloads(model, names, device, gen) -> dict[str, Workload]:
    masks = {k: v.to(device) for k, v in unit_masks(model, gen).items()}
    soft = (0.05 + 0.9 * torch.rand(model.num_units, generator=gen)).to(device)
    none = frozenset()

    def frozen(k):     # as the trainer (stage 2) and Recognizer run a frozen subnet
        return masks[k], True, model.dead_modules(masks[k])
    table = {
        "encoder stage-1 pair": lambda: Workload("fwd+bwd", [(None, False, none),
                                                             (soft, False, none)],
                                                 soft.requires_grad_()),
        # the supernet's stochastic depth is drawn per step on the device: nothing left out
        "encoder stage-2 triple": lambda: Workload(
            "fwd+bwd", [(masks["supernet"], True, none), frozen("smallest"), frozen("middle")]),
        "infer dense": lambda: Workload("fwd", [(None, False, none)], flops_fraction=1.0),
        "infer 50%": lambda: Workload("fwd", [frozen("half")],
                                      flops_fraction=flops_kept(model.cfg, masks["half"])),
    }
    return {name: table[name]() for name in names}


def step(encoder, work: Workload, x, lengths, probe, inputs, device):
    """One call of the workload through `encoder(x, lengths, gates, hard, skip)`: fwd+bwd
    returns (loss, *gradients of inputs), fwd the outputs."""
    def call():
        with torch.autocast(device.type, dtype=BF16, enabled=device.type == "cuda"), \
                torch.set_grad_enabled(work.mode == "fwd+bwd"):
            if getattr(encoder, "one_batch", False):
                outs = encoder(x, lengths, work.subnets)
            else:
                outs = [encoder(x, lengths, g, hard, skip) for g, hard, skip in work.subnets]
        if work.mode == "fwd":
            return tuple(outs)
        loss = sum((out.float() * probe).sum() for out in outs)
        return (loss, *torch.autograd.grad(loss, inputs, allow_unused=True))
    return call


def one_batch_encoder(model):
    """The stage-1 pair's two passes (ungated, then soft gates) through our blocks as one
    batch of 2B sequences: subnets -> [supernet output, subnet output]."""
    def encode(x, lengths, subnets):
        (none, _, _), (gates, _, _) = subnets
        assert none is None, "one batch: the supernet's pass first, ungated"
        B = x.shape[0]
        both = model.run_blocks(torch.cat([x, x]), torch.cat([lengths, lengths]), gates,
                                ungated_batch=B)
        return list(both.split(B))
    encode.one_batch = True
    return encode


def rel_error(theirs, ours) -> float:
    """||theirs - ours|| / ||ours||, a missing gradient (None) counting as zeros; the norm
    of the difference when ours is 0."""
    if theirs is None and ours is None:
        return 0.0
    a, b = (torch.zeros_like(other) if t is None else t for t, other in
            ((theirs, ours), (ours, theirs)))
    diff, norm = (a.detach().float() - b.detach().float()).norm(), b.detach().float().norm()
    return float(diff / norm if norm > 0 else diff)


def compare(name: str, ours: tuple, theirs: tuple, labels: list[str], valid,
            tol: float) -> str:
    """Raise AssertionError if `theirs` differs from `ours` by more than tol anywhere: the
    relative norm of each output on valid frames, or of the loss and each gradient. Returns
    the worst error per label."""
    worst = {}
    for label, o, t in zip(labels, ours, theirs, strict=True):
        if label == "output":
            o, t = o.float() * valid, t.float() * valid
        err = rel_error(t, o)
        worst[label] = max(worst.get(label, 0.0), err)
        if not err <= tol:                      # NaN fails too
            raise AssertionError(f"{name}: {label} differs from ours by {err:.1e} (tol {tol})")
    return ", ".join(f"{k} {v:.1e}" for k, v in worst.items())


def measure(call, timing: str) -> tuple[float, float]:
    """(median ms, peak MiB allocated) of `call` on the GPU."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = time_graph_ms(call, 100, 1000) if timing == "graph" else time_ms(call, 100, 1000)
    torch.cuda.synchronize()
    return ms, torch.cuda.max_memory_allocated() / 2**20


def run(names, providers, timings, check_only: bool, out=None,
        compile_mode: str = "max-autotune-no-cudagraphs") -> int:
    """Checks each workload's providers against ours, then times them; rows are written per
    workload. Returns the number of failed checks or timings."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on the CPU run with TRITON_INTERPRET=1 (else `ours` is the PyTorch "
                         "reference and the check compares the baseline with itself)")
    set_backend("auto")
    # compile_reference recompiles its graph-break resume functions for each live-unit
    # count; past the limit it would fall back to eager without a word, so that is an error
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    cfg = SupernetConfig(budgets=BUDGETS, dropout=0.0)
    batch, frames, tol = (B, T, 5e-2)    # bf16 against bf16, different operation orders
    if device.type == "cpu":
        cfg = SupernetConfig(num_layers=2, d_model=64, num_heads=4, ff_dim=256,
                             conv_kernel=15, budgets=BUDGETS, dropout=0.0)
        batch, frames, tol = 3, 24, 1e-4
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = ConformerSupernet(cfg).to(device)
    lengths = torch.randint(int(0.8 * frames), frames + 1, (batch,), generator=gen)
    lengths[0] = frames
    audio_s = float(lengths.sum()) * FRAME_S
    lengths = lengths.to(device)
    x = torch.randn(batch, frames, cfg.d_model, generator=gen).to(device).requires_grad_()
    valid = valid_mask(lengths, frames)[..., None].float()
    probe = torch.randn(batch, frames, cfg.d_model, generator=gen).to(device) * valid
    assert use_triton(x, lengths), "ours would not run the Triton kernels"
    eager = EagerEncoder(model)
    compiled = torch.compile(eager, mode=compile_mode, dynamic=False)
    frozen = FrozenOperands()
    encoders = {"ours": lambda xx, ll, g, hard, skip: encode_gated(model, xx, ll, g, skip),
                FROZEN: lambda xx, ll, g, hard, skip: model.run_blocks(
                    xx, ll, g, skip, frozen_operands=frozen),
                "eager_reference": lambda xx, ll, g, hard, skip: eager(xx, ll, g, hard),
                "compile_reference": lambda xx, ll, g, hard, skip: compiled(xx, ll, g, hard),
                ONE_BATCH: one_batch_encoder(model)}
    failures = 0
    for name, work in make_workloads(model, names, device, gen).items():
        model.train(work.mode == "fwd+bwd")
        inputs = [x, *model.blocks.parameters()] + ([work.soft] if work.soft is not None
                                                    else [])
        labels = ["output"] * len(work.subnets) if work.mode == "fwd" else \
            ["loss", "x"] + ["weights"] * (len(inputs) - 1 - (work.soft is not None)) + \
            ["gates"] * (work.soft is not None)
        work_providers = [p for p in providers
                          if (p != ONE_BATCH or name == WORKLOADS["stage1"])
                          and (p != FROZEN or work.mode == "fwd")]
        calls = {p: step(encoders[p], work, x, lengths, probe, inputs, device)
                 for p in ("ours", *work_providers)}
        ours = calls["ours"]()
        checked = ["ours"] if "ours" in providers else []
        for provider in work_providers:
            if provider == "ours":
                continue
            try:
                text = compare(provider, ours, calls[provider](), labels, valid, tol)
                print(f"{name}: {provider} == ours ({text})", flush=True)
                checked.append(provider)
            except Exception as exc:  # noqa: BLE001 - a mismatch, or a compile that fails
                print(f"{name}: {provider} FAILED: {exc!r}", flush=True)
                failures += 1
        del ours                          # its gradients would count in peak_mem_mb
        if check_only:
            continue
        rows = []
        hard = any(h for _, h, _ in work.subnets)
        for provider in checked:
            for timing in timings:
                if timing == "graph" and hard and provider not in ("ours", FROZEN):
                    continue              # boolean indexing syncs with the host
                try:
                    ms, peak = measure(calls[provider], timing)
                except Exception as exc:  # noqa: BLE001 - e.g. a graph that cannot be captured
                    print(f"{name} {provider} {timing}: failed ({exc!r})", flush=True)
                    failures += 1
                    continue
                rows.append({"table": "e2e", "workload": name, "shape": SHAPE,
                             "case": f"{name} {SHAPE}", "mode": work.mode,
                             "provider": provider, "timing": timing, "ms": ms,
                             "audio_s_per_s": audio_s / (ms / 1e3), "peak_mem_mb": peak,
                             "baseline": "eager_reference", "time_unit": "ms"})
                if work.flops_fraction is not None:
                    rows[-1]["flops_fraction"] = work.flops_fraction
                if provider == "compile_reference":
                    rows[-1]["compile_mode"] = compile_mode
                print(f"{name:24s} {provider:18s} {timing:6s} {ms:9.2f} ms "
                      f"{rows[-1]['audio_s_per_s']:9.0f} audio s/s {peak:8.0f} MiB", flush=True)
        if rows:
            print(f"rows -> {write_rows('e2e', rows, out)}", flush=True)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="*", default=[*WORKLOADS, TRAINER],
                        choices=[*WORKLOADS, TRAINER])
    parser.add_argument("--providers", nargs="*", default=list(PROVIDERS),
                        choices=[*PROVIDERS, ONE_BATCH])
    parser.add_argument("--timings", nargs="*", default=["graph", "eager"],
                        choices=["graph", "eager"])
    parser.add_argument("--check", action="store_true", help="equality checks only")
    parser.add_argument("--out", default=None, help="folder for e2e.json "
                        "(default bench/results, and bench/RESULTS.md regenerated)")
    # max-autotune tunes every GEMM shape of every live-unit count's recompile: on a fresh
    # H200 the stage-1 pair alone outlasted a 470 s call (2026-11-30); "default" compiles in
    # a fraction of that. Rows of compile_reference name the mode.
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    parser.add_argument("--trainer-steps", type=int, default=100,
                        help="steps per stage of the full trainer (issue 14 measured 100)")
    args = parser.parse_args()
    # before the checks: a timing run on the CPU would check, fail every timing, and
    # regenerate bench/RESULTS.md
    require_gpu_unless_checking("e2e", args.check)
    encoder_work = [WORKLOADS[w] for w in args.workloads if w != TRAINER]
    failures = run(encoder_work, args.providers, args.timings, args.check, args.out,
                   args.compile_mode) if encoder_work else 0
    if TRAINER in args.workloads and not args.check:
        # the trainer's providers that this run names (it has no compiled reference)
        run_trainer([p for p in args.providers if p in TRAINER_PROVIDERS],
                    steps=args.trainer_steps, out=args.out)
    if args.out is None and not args.check:
        report_main()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
