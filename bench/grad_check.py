"""One training step's gradients of every parameter, Triton against the PyTorch references,
on the same batch, the same weights and the same dropout masks.

    python -m bench.grad_check [--layers 12] [--batch 16] [--frames 1000] [--train-steps 60]

For each setting (eval or train mode, fp32 or bf16 autocast, all gates on or soft gates) it
prints, per parameter, the relative error ||g - g64|| / ||g64|| of each backend against an
fp64 run of the torch backend (eval mode: no dropout), or of the Triton backend against the
torch backend in the same dtype (train mode: dropout masks are drawn in the run's dtype), and
the parameters where the Triton backend is worst. `--train-steps` then trains the model
with the torch backend on the same random batches (weights and activations grow) and checks
again. Rows go to <out>/grad_check.json.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from orthoasr.backend import set_backend
from orthoasr.config import SupernetConfig
from orthoasr.model import ConformerSupernet


def make_batch(cfg: SupernetConfig, batch: int, frames: int, device, seed: int) -> dict:
    """Random log-mel-like features, lengths from frames/2 to frames (one full), random
    targets about one token per 3 output frames."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, frames, cfg.num_mel_bins, generator=gen)
    lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=gen)
    lengths[0] = frames
    target_lengths = (lengths // 4 // 3).clamp(min=1)
    targets = torch.randint(1, cfg.vocab_size, (int(target_lengths.sum()),), generator=gen)
    return {"feats": feats.to(device), "lengths": lengths.to(device), "targets": targets,
            "target_lengths": target_lengths}


def step_loss(model, batch, gates=None, autocast=False):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        feats = batch["feats"].to(next(model.parameters()).dtype)
        log_probs, out_lengths = model(feats, batch["lengths"], gates)
    loss = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], out_lengths.cpu(),
                      batch["target_lengths"], blank=0, reduction="sum", zero_infinity=True)
    return loss / out_lengths.sum()


def grads_of(model, batch, backend: str, *, train: bool, autocast: bool, seed: int,
             gates=None) -> tuple[float, dict]:
    """(loss, {name: grad as fp64}) of one forward+backward; gates get a grad too."""
    set_backend(backend)
    model.train(train)
    model.zero_grad(set_to_none=True)
    if gates is not None:
        gates = gates.detach().to(next(model.parameters()).dtype).requires_grad_()
    torch.manual_seed(seed)
    loss = step_loss(model, batch, gates, autocast)
    loss.backward()
    out = {name: p.grad.detach().double().clone() for name, p in model.named_parameters()
           if p.grad is not None}
    if gates is not None:
        out["gates"] = gates.grad.detach().double().clone()
    set_backend("auto")
    return float(loss), out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _group(name: str) -> tuple[str, str]:
    """("block 3", "ffn1") for blocks.3.modules_by_kind.ffn1.linear1.weight, else (top, -)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        kind = parts[3] if parts[2] == "modules_by_kind" else parts[2]
        return f"block {int(parts[1]):2d}", kind
    return parts[0], "-"


def compare(label: str, ours: dict, base: dict, other: dict | None, rows: list) -> None:
    """Print, per block and module, the largest relative gradient error of `ours` against
    `base` (and of `other` against `base` beside it), from the output layer down."""
    table: dict = {}
    for name in base:
        e = rel_err(ours[name], base[name]) if name in ours else float("inf")
        e_other = rel_err(other[name], base[name]) if other is not None else float("nan")
        group, kind = _group(name)
        cell = table.setdefault(group, {}).setdefault(kind, [0.0, 0.0, ""])
        if e > cell[0]:
            cell[:] = [e, e_other, ".".join(name.split(".")[-2:])]
    print(f"--- {label}: max rel err per module, triton (torch) [worst parameter]")
    for group in reversed(list(table)):
        cells = "  ".join(f"{kind} {e:.1e} ({eo:.0e}) [{p}]"
                          for kind, (e, eo, p) in table[group].items())
        print(f"  {group:10s} {cells}")
    rows.append({"setting": label, "errors": {g: {k: v[:2] for k, v in kinds.items()}
                                              for g, kinds in table.items()}})


def check(model, model64, batch, rows, tag, gates=None):
    n = len(rows)
    ref64 = None
    if model64 is not None:
        model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        batch64 = dict(batch, feats=batch["feats"].double())
        _, ref64 = grads_of(model64, batch64, "torch", train=False, autocast=False, seed=0,
                            gates=None if gates is None else gates.double())
    for autocast in (False, True):
        dt = "bf16" if autocast else "fp32"
        l_t, g_t = grads_of(model, batch, "auto", train=False, autocast=autocast, seed=0,
                            gates=gates)
        l_r, g_r = grads_of(model, batch, "torch", train=False, autocast=autocast, seed=0,
                            gates=gates)
        print(f"{tag} eval {dt}: loss triton {l_t:.5f} torch {l_r:.5f}")
        if ref64 is not None:
            compare(f"{tag} eval {dt} vs fp64", g_t, ref64, g_r, rows)
        else:
            compare(f"{tag} eval {dt} triton vs torch", g_t, g_r, None, rows)
        l_t, g_t = grads_of(model, batch, "auto", train=True, autocast=autocast, seed=1,
                            gates=gates)
        l_r, g_r = grads_of(model, batch, "torch", train=True, autocast=autocast, seed=1,
                            gates=gates)
        print(f"{tag} train {dt}: loss triton {l_t:.5f} torch {l_r:.5f}")
        compare(f"{tag} train {dt} triton vs torch", g_t, g_r, None, rows)
        # the same Triton step again: later launches take the cached direct path
        _, g_again = grads_of(model, batch, "auto", train=True, autocast=autocast, seed=1,
                              gates=gates)
        compare(f"{tag} train {dt} triton again vs torch", g_again, g_r, None, rows)
    return rows[n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--ff-dim", type=int, default=1536)
    parser.add_argument("--kernel", type=int, default=31)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SupernetConfig(num_layers=args.layers, d_model=args.d_model, num_heads=args.heads,
                         ff_dim=args.ff_dim, conv_kernel=args.kernel, budgets=(1.0,))
    torch.manual_seed(0)
    model = ConformerSupernet(cfg).to(device)
    model64 = copy.deepcopy(model).double()
    batches = [make_batch(cfg, args.batch, args.frames, device, seed) for seed in range(4)]
    rows: list = []
    start = time.perf_counter()
    check(model, model64, batches[0], rows, "init")
    gates = torch.rand(model.num_units, device=device)
    gates[::7] = 0.0
    check(model, model64, batches[0], rows, "init soft gates", gates)
    print(f"init checks done after {time.perf_counter() - start:.0f} s", flush=True)
    if args.train_steps:
        set_backend("torch")
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(args.train_steps):
            loss = step_loss(model, batches[step % len(batches)], autocast=device.type == "cuda")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if step % 10 == 0 or step == args.train_steps - 1:
                print(f"torch-backend training step {step}: loss {float(loss):.4f}", flush=True)
        set_backend("auto")
        check(model, model64, batches[0], rows, f"after {args.train_steps} steps")
    if args.out:
        from bench.harness import write_rows
        write_rows("grad_check", [{"table": "grad_check", "case": r["setting"], **r}
                                  for r in rows], args.out)
    print(f"done after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
