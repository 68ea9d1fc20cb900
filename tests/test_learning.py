"""Does a model trained through the Triton kernels learn like the PyTorch references?
(Issue 11: the paper-size model did not, while every kernel test passed.)

The fault was in the attention backward under 16-bit inputs, and only showed on activations
that share a large component across time, as a speech encoder's do on the blank plateau;
random inputs hide it. So these tests feed such activations:

- every gated module, forward and backward (input, weight, bias and gate gradients), at the
  paper's and the tiny config's shapes, fp32 and bf16 (autocast over fp32 weights), with
  padding and a dropout-sparse upstream gradient, against fp64 by the error-ratio rule;
- one training step of a whole model, every parameter's gradient, Triton vs fp64 within
  twice PyTorch's own error (GPU: paper size in bf16; CPU: a small model, interpreter);
- a convergence test: a paper-width model learns a toy CTC task through both backends with
  the same loss curve.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from orthoasr import set_backend
from orthoasr.config import SupernetConfig
from orthoasr.kernels import gated_attention as ga
from orthoasr.metrics import plateau_exit
from orthoasr.model import ConformerSupernet
from orthoasr.nn import GatedConvModule, GatedFeedForward, GatedMHSA

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu


def shared_across_time(B, T, D, offset, spread=0.3, device=DEV, dtype=torch.float64):
    """(B, T, D): a component shared by all frames of a sequence (size `offset`) plus small
    per-frame variation (`spread`)."""
    common = offset * torch.randn(B, 1, D, device=device, dtype=dtype)
    return common + spread * torch.randn(B, T, D, device=device, dtype=dtype)


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


# ----------------------------------------------------------------------------- attention core

@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,offset", [(87, 1.0), (87, 3.0), (250, 3.0)])
def test_attention_backward_on_values_shared_across_time(dtype, T, offset):
    """q, k, v and dout share a component across frames: FlashAttention's delta from the
    16-bit output (f6d7667) made dq 25-250x less accurate than PyTorch's in the same dtype."""
    B, H, Dh = 4, 6, 64
    lengths = torch.tensor([T, T - 5, T // 2, 1], device="cuda")

    def heads(scale):
        return shared_across_time(B * H, T, Dh, offset * scale).view(B, H, T, Dh)

    q, k, v, dout = heads(1.0), heads(1.0), heads(1.0), heads(0.3)
    gates = torch.tensor([1.0, 0.5, 1.0, 1.2, 0.8, 1.0], device="cuda", dtype=torch.float64)

    def grads(fn, dt):
        inputs = [t.to(dt).requires_grad_() for t in (q, k, v)]
        g = gates.to(torch.float32 if dt != torch.float64 else dt).requires_grad_()
        out = fn(*inputs, lengths, g, Dh ** -0.5)
        return [out.detach(), *torch.autograd.grad(out, [*inputs, g], dout.to(out.dtype))]

    gold = grads(ga.gated_attention_reference, torch.float64)
    ours = grads(ga.gated_attention, dtype)
    ref = grads(ga.gated_attention_reference, dtype)
    for name, o, r, g in zip(("out", "dq", "dk", "dv", "dgates"), ours, ref, gold, strict=True):
        assert rel_err(o, g) <= 2 * rel_err(r, g) + 1e-3, (name, rel_err(o, g), rel_err(r, g))


# ----------------------------------------------------------------------------- modules

SIZES = {"paper": dict(d=384, heads=6, ff=1536, kernel=31),
         "tiny": dict(d=64, heads=4, ff=256, kernel=15)}


def make_module(kind, size, device=DEV):
    s = SIZES[size]
    if kind == "ffn":
        m, n_gates = GatedFeedForward(s["d"], s["ff"], chunks=4, dropout=0.1), 4
    elif kind == "conv":
        m, n_gates = GatedConvModule(s["d"], s["kernel"], dropout=0.1), 1
    else:
        m, n_gates = GatedMHSA(s["d"], s["heads"], dropout=0.1), s["heads"]
    with torch.no_grad():       # LayerNorms and biases away from their initial 1 and 0
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.to(device), n_gates


def module_errors(m, x, lengths, gates, dy, low):
    """{name: (err of the auto backend in `low`, err of torch in `low`)} against fp64, for the
    output and the gradients of x, every parameter and the gates. `low`: torch.float32, or
    torch.bfloat16 for autocast over the fp32 weights."""
    names = ["out", "dx", *(n for n, _ in m.named_parameters()), "dgates"]

    def run(backend, dtype):
        set_backend(backend)
        mm = m.double() if dtype == torch.float64 else m.float()
        xx = x.to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
        g = gates.to(xx.dtype).requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = mm(xx, lengths, g)
        grads = torch.autograd.grad(y, [xx, *mm.parameters(), g], dy.to(y.dtype))
        m.float()
        return [y.detach(), *grads]

    gold, ours, ref = run("torch", torch.float64), run("auto", low), run("torch", low)
    return {n: (rel_err(o, g), rel_err(r, g)) for n, o, r, g in zip(names, ours, ref, gold,
                                                                      strict=True)}


def module_case(kind, size, B, T, lengths, device=DEV):
    torch.manual_seed(0)
    m, n_gates = make_module(kind, size, device)
    m.eval()                    # dropout's effect on the kernels: the sparse dy below
    x = shared_across_time(B, T, SIZES[size]["d"], 3.0, device=device)
    lengths = torch.tensor(lengths, device=device)
    gates = torch.rand(n_gates, device=device, dtype=torch.float64) + 0.2
    keep = torch.rand(B, T, SIZES[size]["d"], device=device) >= 0.1
    dy = torch.randn(B, T, SIZES[size]["d"], device=device, dtype=torch.float64) * keep / 0.9
    return m, x, lengths, gates, dy


@gpu
@pytest.mark.parametrize("low", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("size", ["paper", "tiny"])
@pytest.mark.parametrize("kind", ["ffn", "conv", "mhsa"])
def test_module_error_ratio_on_speech_like_activations(kind, size, low):
    m, x, lengths, gates, dy = module_case(kind, size, 6, 150, [150, 149, 120, 77, 33, 1],
                                           device="cuda")
    errors = module_errors(m, x, lengths, gates, dy, low)
    atol = 1e-3 if low == torch.bfloat16 else 1e-4       # relative to the largest value
    bad = {n: e for n, e in errors.items() if e[0] > 2 * e[1] + atol}
    assert not bad, bad


def test_module_error_ratio_on_the_cpu():
    """The same check under the interpreter, fp32, at a small width."""
    for kind in ("ffn", "conv", "mhsa"):
        m, x, lengths, gates, dy = module_case(kind, "tiny", 3, 24, [24, 17, 1])
        errors = module_errors(m, x, lengths, gates, dy, torch.float32)
        bad = {n: e for n, e in errors.items() if e[0] > 2 * e[1] + 1e-5}
        assert not bad, (kind, bad)


def test_module_dropout_in_training_mode():
    """Training mode: with the same seed both backends drop the same outputs."""
    for kind in ("ffn", "conv", "mhsa"):
        m, x, lengths, gates, _ = module_case(kind, "tiny", 2, 16, [16, 9])
        m.train()
        outs = []
        for backend in ("auto", "torch"):
            set_backend(backend)
            torch.manual_seed(3)
            outs.append(m(x.float(), lengths, gates.float()))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
        assert (outs[0] == 0).float().mean() > 0.05      # dropout did drop


# ----------------------------------------------------------------------------- whole model

def model_batch(cfg, B, frames, device, seed=0):
    """Features that stay close to one spectrum for long stretches (like speech on the
    blank plateau) with random CTC targets."""
    gen = torch.Generator().manual_seed(seed)
    base = 3 * torch.randn(B, 1, cfg.num_mel_bins, generator=gen)
    feats = base + 0.5 * torch.randn(B, frames, cfg.num_mel_bins, generator=gen)
    lengths = torch.randint(frames // 2, frames + 1, (B,), generator=gen)
    lengths[0] = frames
    target_lengths = (lengths // 4 // 4).clamp(min=1)
    targets = torch.randint(1, cfg.vocab_size, (int(target_lengths.sum()),), generator=gen)
    return feats.to(device), lengths.to(device), targets, target_lengths


def model_grads(model, batch, backend, dtype):
    """Every parameter's gradient of one CTC step, eval mode (fp64: torch backend)."""
    feats, lengths, targets, target_lengths = batch
    set_backend(backend)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        log_probs, out_lengths = model(feats.to(next(model.parameters()).dtype), lengths)
    loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths.cpu(), target_lengths,
                      zero_infinity=True, reduction="sum") / out_lengths.sum()
    loss.backward()
    return {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}


def assert_model_grads_error_ratio(cfg, batch, low, device):
    """Triton's gradients vs fp64 within 2x PyTorch's own error, parameter by parameter
    (norm-wise relative error)."""
    torch.manual_seed(0)
    model = ConformerSupernet(cfg).to(device).eval()
    gold = model_grads(model.double(), batch, "torch", torch.float64)
    model.float()
    ours, ref = model_grads(model, batch, "auto", low), model_grads(model, batch, "torch", low)

    def err(a, b):
        return float((a - b).norm() / b.norm().clamp(min=1e-30))

    bad = {n: (err(ours[n], g), err(ref[n], g)) for n, g in gold.items()
           if err(ours[n], g) > 2 * err(ref[n], g) + 1e-4}
    assert not bad, bad


@gpu
def test_paper_model_step_gradients_bf16():
    cfg = SupernetConfig(budgets=(1.0,), dropout=0.0)
    assert_model_grads_error_ratio(cfg, model_batch(cfg, 12, 600, "cuda"), torch.bfloat16,
                                   "cuda")


def test_small_model_step_gradients_cpu():
    cfg = SupernetConfig(num_layers=2, d_model=32, num_heads=4, ff_dim=64, conv_kernel=7,
                         vocab_size=17, frontend_channels=(4, 8), budgets=(1.0,), dropout=0.0)
    assert_model_grads_error_ratio(cfg, model_batch(cfg, 3, 64, DEV), torch.float32, DEV)


# ----------------------------------------------------------------------------- convergence

def toy_ctc_batches(cfg, count, B, frames, device, seed=0):
    """A learnable CTC task: each token has a spectrum; an utterance says 3-8 tokens, each
    held for 12-28 frames, over a speaker's own background spectrum."""
    gen = torch.Generator().manual_seed(seed)
    tokens = 3 * torch.randn(cfg.vocab_size, cfg.num_mel_bins, generator=gen)
    batches = []
    for _ in range(count):
        feats = 2 * torch.randn(B, 1, cfg.num_mel_bins, generator=gen).expand(
            B, frames, cfg.num_mel_bins).clone()
        targets, target_lengths, lengths = [], [], []
        for b in range(B):
            t, said = 0, []
            for _ in range(int(torch.randint(3, 9, (), generator=gen))):
                token = int(torch.randint(1, cfg.vocab_size, (), generator=gen))
                hold = int(torch.randint(12, 29, (), generator=gen))
                if t + hold > frames:
                    break
                feats[b, t:t + hold] += tokens[token]
                said.append(token)
                t += hold
            targets += said
            target_lengths.append(len(said))
            lengths.append(max(t, 4))
        feats += 0.5 * torch.randn(B, frames, cfg.num_mel_bins, generator=gen)
        batches.append((feats.to(device), torch.tensor(lengths, device=device),
                        torch.tensor(targets), torch.tensor(target_lengths)))
    return batches


def train_curve(cfg, batches, backend, steps, device, lr=1e-3, warmup=50):
    """Per-step CTC losses of `steps` AdamW steps (bf16 autocast on the GPU, dropout on)."""
    set_backend(backend)
    torch.manual_seed(0)
    model = ConformerSupernet(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        feats, lengths, targets, target_lengths = batches[step % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            log_probs, out_lengths = model(feats, lengths)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths.cpu(),
                          target_lengths, zero_infinity=True, reduction="sum")
        loss = loss / out_lengths.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).float().cpu()


def test_plateau_exit_is_the_first_window_under_the_level():
    """The learning check's `left_plateau` criterion: the first loss whose 50-loss mean is
    under 1.0; None for a curve that never gets there or is shorter than one window."""
    leaving = [1.25] * 100 + [0.5] * 100    # means: 1.25 - 0.015 k after k low losses
    assert plateau_exit(leaving) == 100 + 17 - 1    # k = 17: 1.25 - 0.255 < 1.0
    assert plateau_exit(leaving, level=0.6) == 100 + 44 - 1    # k = 44: 1.25 - 0.66
    assert plateau_exit(leaving, window=20) == 100 + 7 - 1     # 1.25 - 0.0375 k, k = 7
    assert plateau_exit([1.25] * 300) is None
    assert plateau_exit([0.5] * 49) is None, "fewer losses than one window: no verdict"


@gpu
def test_paper_width_model_learns_the_same_through_both_backends():
    """Paper width (d=384, 6 heads, FFN 1536, conv 31) in 4 blocks: 12 did not leave the
    toy task's blank plateau within 400 steps through either backend."""
    cfg = SupernetConfig(num_layers=4, budgets=(1.0,), vocab_size=24)
    batches = toy_ctc_batches(cfg, 8, 16, 480, "cuda")
    curves = {b: train_curve(cfg, batches, b, 400, "cuda") for b in ("auto", "torch")}
    windows = {b: c.view(-1, 40).mean(1) for b, c in curves.items()}   # 10 windows of 40
    start = float(windows["torch"][0])
    escape = {b: plateau_exit(c.tolist(), 0.5 * start, window=20) for b, c in curves.items()}
    print({b: [round(float(x), 3) for x in w] for b, w in windows.items()}, escape)
    assert windows["torch"][-1] < 0.5 * start, "the reference did not learn: the test is void"
    assert escape["auto"] is not None, "the Triton backend never left the blank plateau"
    # the same curve: when the plateau ends is chaotic (here both backends, each within the
    # error-ratio rule, left it ~30 steps apart on the H200; the paper model in fp32 had not
    # left it after 1600 steps where bf16 runs left it near step 1000, bench/NOTES.md
    # 2026-11-30), so the exits may differ by 15% of the run; both end within 10% of the
    # start loss
    assert abs(escape["auto"] - escape["torch"]) <= 60, (escape, windows)
    assert abs(float(windows["auto"][-1] - windows["torch"][-1])) < 0.1 * start, windows
    assert math.isfinite(float(curves["auto"].sum()))
