"""ConformerSupernet: shapes, units and parameter counts for both granularities, gates,
padding, bad input."""

import pytest
import torch

import orthoasr.kernels.common as common_module
from orthoasr import SupernetConfig, enumerate_units, set_backend, subnet_cost
from orthoasr.kernels.common import FrozenOperands, as_operands, cast_pair
from orthoasr.model import ConformerSupernet


@pytest.fixture(autouse=True)
def torch_backend():
    set_backend("torch")            # conftest puts "auto" back after each test


def tiny_cfg(**overrides):
    values = dict(num_layers=2, d_model=32, num_heads=4, ff_dim=64, ff_chunks=2, conv_kernel=5,
                  vocab_size=19, frontend_channels=(4, 8), budgets=(0.4, 0.7, 1.0),
                  dropout=0.0, ref_frames=10)
    return SupernetConfig(**{**values, **overrides})


def head_params(cfg):
    return cfg.d_model * cfg.vocab_size + cfg.vocab_size


@pytest.mark.parametrize("granularity,per_block", [("component", 2 * 2 + 1 + 4),
                                                   ("module", 4)])
def test_shapes_units_and_params(granularity, per_block):
    cfg = tiny_cfg(granularity=granularity)
    model = ConformerSupernet(cfg)
    assert model.num_units == cfg.num_layers * per_block
    assert model.units == enumerate_units(cfg)
    assert [u.layer for u in model.units] == [u // per_block for u in range(model.num_units)]
    # the cost model counts one output layer; the supernet has one per budget
    params = sum(p.numel() for p in model.parameters())
    full = subnet_cost(cfg, torch.ones(model.num_units), "params")
    assert params == full + (len(cfg.budgets) - 1) * head_params(cfg)
    feats, lengths = torch.randn(3, 41, 80), torch.tensor([41, 17, 4])
    for head in range(-3, 3):
        log_probs, out_lengths = model(feats, lengths, torch.rand(model.num_units), head)
        assert log_probs.shape == (3, 10, cfg.vocab_size) and log_probs.dtype == torch.float32
        assert out_lengths.tolist() == [10, 4, 1]
        assert torch.isfinite(log_probs).all()
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 10))


def test_gates_none_equals_ones_and_heads_differ():
    model = ConformerSupernet(tiny_cfg()).eval()
    feats, lengths = torch.randn(2, 24, 80), torch.tensor([24, 13])
    a, _ = model(feats, lengths)
    b, _ = model(feats, lengths, torch.ones(model.num_units), -1)
    c, _ = model(feats, lengths, torch.ones(model.num_units), 0)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3


def test_zero_gates_ignore_module_weights_and_gate_gradients_flow():
    model = ConformerSupernet(tiny_cfg()).eval()
    feats, lengths = torch.randn(2, 24, 80), torch.tensor([24, 9])
    gates = torch.zeros(model.num_units)
    before, _ = model(feats, lengths, gates)
    with torch.no_grad():
        for block in model.blocks:
            for p in block.modules_by_kind.parameters():
                p.add_(torch.randn_like(p))
    after, _ = model(feats, lengths, gates)
    torch.testing.assert_close(before, after)
    soft = torch.rand(model.num_units, requires_grad=True)
    model(feats, lengths, soft)[0].sum().backward()
    assert soft.grad is not None and (soft.grad != 0).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dead_modules_left_out_give_the_same_output_and_gradients(backend):
    """encode(skip=dead_modules(gates)) leaves out every module whose hard gates are all 0:
    the same log-probs and the same gradients for every parameter it still uses (the
    modules left out get none: all-zero gates give them zeros). No dropout: a module left
    out draws no random numbers, so the later modules' draws would differ."""
    set_backend(backend)
    model = ConformerSupernet(tiny_cfg())
    units = {kind: (start, end) for kind, start, end in model.blocks[0].layout}
    gates = torch.ones(2, model.num_units // 2)
    gates[0, slice(*units["ffn1"])] = 0             # block 0: ffn1 off, one head of mhsa off
    gates[0, units["mhsa"][0]] = 0
    gates[1, slice(*units["mhsa"])] = 0             # block 1: mhsa and conv off
    gates[1, slice(*units["conv"])] = 0
    gates = gates.flatten()
    dead = model.dead_modules(gates)
    assert dead == {(0, "ffn1"), (1, "mhsa"), (1, "conv")}
    x, lengths = torch.randn(2, 9, 32), torch.tensor([9, 5])
    outs, grads = [], []
    for skip in (frozenset(), dead):
        model.zero_grad(set_to_none=True)
        out = model.encode(x, lengths, gates, 0, skip)
        out.exp().sum().backward()
        outs.append(out)
        grads.append({name: p.grad for name, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    for name, full in grads[0].items():
        left_out = grads[1][name]
        if left_out is None and full is not None:   # a module left out: zeros without skip
            assert any(f"blocks.{layer}.modules_by_kind.{kind}." in name for layer, kind in dead)
            assert (full == 0).all(), name
        elif full is None:              # encode() alone: no frontend; the other heads
            assert left_out is None and name.startswith(("heads.", "frontend.")), name
        else:
            torch.testing.assert_close(left_out, full, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_full_modules_run_ungated_give_the_same_output_and_gradients(backend):
    """encode(full=full_modules(gates)) runs every module whose hard gates are all 1 without
    gates (the dense path): the same log-probs and parameter gradients as under the gates.
    A module with one gate below 1 is not full."""
    set_backend(backend)
    model = ConformerSupernet(tiny_cfg())
    units = {kind: (start, end) for kind, start, end in model.blocks[0].layout}
    gates = torch.ones(2, model.num_units // 2)
    gates[0, units["mhsa"][0]] = 0                  # block 0: one head off
    gates[1, units["ffn1"][0]] = 0.5                # block 1: a chunk at 0.5, conv off
    gates[1, slice(*units["conv"])] = 0
    gates = gates.flatten()
    full = model.full_modules(gates)
    assert full == {(0, "ffn1"), (0, "conv"), (0, "ffn2"), (1, "mhsa"), (1, "ffn2")}
    x, lengths = torch.randn(2, 9, 32), torch.tensor([9, 5])
    gated_calls = set()             # (layer, kind) of the modules that were handed gates
    for layer, block in enumerate(model.blocks):
        for kind, module in block.modules_by_kind.items():
            module.register_forward_pre_hook(
                lambda _, args, key=(layer, kind): gated_calls.add(key)
                if args[2] is not None else None)
    outs, grads = [], []
    for ungated in (frozenset(), full):
        model.zero_grad(set_to_none=True)
        gated_calls.clear()
        out = model.encode(x, lengths, gates, 0, model.dead_modules(gates), ungated)
        run = {(layer, kind) for layer, block in enumerate(model.blocks)
               for kind in block.modules_by_kind} - model.dead_modules(gates)
        assert gated_calls == run - ungated
        out.exp().sum().backward()
        outs.append(out)
        grads.append({name: p.grad for name, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    for name, gated in grads[0].items():
        if gated is None:
            assert grads[1][name] is None, name
        else:
            torch.testing.assert_close(grads[1][name], gated, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_encode_pair_equals_two_passes(backend):
    """encode_pair: the supernet's and a subnet's log-probs, and the gradients of every
    parameter (summed over both) and of the soft gates, as two encode calls give them."""
    set_backend(backend)
    model = ConformerSupernet(tiny_cfg())
    torch.manual_seed(13)
    x, lengths = torch.randn(2, 9, 32), torch.tensor([9, 5])
    gates = torch.rand(model.num_units) + 0.1
    gates[::3] = 0.0                                    # units off in the subnet only
    weights = torch.randn(2, 2, 9, 19)                  # a loss that weighs every output
    results = []
    for pair in (False, True):
        model.zero_grad(set_to_none=True)
        g = gates.clone().requires_grad_()
        outs = (model.encode_pair(x, lengths, g, 1) if pair else
                (model.encode(x, lengths), model.encode(x, lengths, g, 1)))
        sum((w * o).sum() for w, o in zip(weights, outs)).backward()
        results.append((outs, g.grad, {n: p.grad for n, p in model.named_parameters()}))
    (two_outs, two_dg, two_grads), (pair_outs, pair_dg, pair_grads) = results
    for a, b in zip(pair_outs, two_outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair_dg, two_dg, atol=1e-5, rtol=1e-5)
    for name, grad in two_grads.items():
        if grad is None:
            assert pair_grads[name] is None, name
        else:
            torch.testing.assert_close(pair_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_encode_pair_needs_component_granularity():
    model = ConformerSupernet(tiny_cfg(granularity="module"))
    with pytest.raises(ValueError, match="granularity 'component'"):
        model.encode_pair(torch.randn(2, 9, 32), torch.tensor([9, 5]),
                          torch.ones(model.num_units), 1)


def test_full_is_checked():
    model = ConformerSupernet(tiny_cfg()).eval()
    x, lengths = torch.randn(1, 6, 32), torch.tensor([6])
    gates = torch.ones(model.num_units)
    for bad in [(2, "conv"), (0, "attention")]:
        with pytest.raises(ValueError, match="full items"):
            model.encode(x, lengths, gates, full={bad})
    with pytest.raises(ValueError, match="both left out"):
        model.encode(x, lengths, gates, skip={(1, "conv")}, full={(1, "conv")})
    with pytest.raises(ValueError, match="hard gates"):
        model.full_modules(torch.ones(model.num_units, requires_grad=True))
    assert model.full_modules(None) == frozenset()


@pytest.mark.parametrize("weights, compute", [(torch.float64, torch.float32),
                                               (torch.float32, torch.float16)])
def test_one_operand_copy_per_pass_gives_the_same_outputs_and_gradients(monkeypatch, weights,
                                                                        compute):
    """Triton backend, weights computed in a lower dtype: fp64 in fp32, as the kernel tests
    do, and fp32 in fp16 under CPU autocast, as training does in bf16 on the GPU (the
    interpreter's bf16 weight-gradient GEMM is off by ~1e10, its fp16 one is not).
    run_blocks copies every running module's matmul weights to the compute dtype in one
    operand_copies call and hands them to the ops: the same output and gradients (in the
    weights' dtype, on the weights) as each op casting its own; other copies handed give
    another output (the ops compute with them)."""
    set_backend("triton")
    model = ConformerSupernet(tiny_cfg()).to(weights)
    x, lengths = torch.randn(2, 9, 32), torch.tensor([9, 5])     # fp32, as the blocks' input
    gates, dy = torch.rand(model.num_units), torch.randn(2, 9, 32)
    skip = frozenset({(1, "conv")})
    calls = []

    def outputs():
        model.zero_grad(set_to_none=True)
        xx, g = x.clone().requires_grad_(), gates.clone().requires_grad_()
        with torch.autocast("cpu", dtype=compute, enabled=compute != torch.float32):
            out = model.run_blocks(xx, lengths, g, skip)
        out.backward(dy)
        grads = [p.grad for p in model.blocks.parameters()]
        assert all(grad is None or grad.dtype == weights for grad in grads)
        return [out, xx.grad, g.grad, *(grad for grad in grads if grad is not None)]

    copies = common_module.operand_copies
    monkeypatch.setattr(common_module, "operand_copies",
                        lambda w, dtype: calls.append((len(w), dtype)) or copies(w, dtype))
    handed = outputs()
    assert calls == [(2 * (4 + 3), compute)]     # two matrices per module, conv 1 left out
    with monkeypatch.context() as m:
        m.setattr(ConformerSupernet, "_matmul_operands",
                  lambda self, *a: ([None, None], (-1, None)))
        own = outputs()
    for i, (a, b) in enumerate(zip(own, handed, strict=True)):
        assert a.dtype == b.dtype and torch.equal(a, b), i
    monkeypatch.setattr(common_module, "operand_copies",
                        lambda w, dtype: [1.5 * c for c in copies(w, dtype)])
    assert (outputs()[0] - handed[0]).abs().max() > 1e-2


def test_a_module_call_casts_its_weights_outside_autograd():
    """as_operands, what a module called on its own casts with: weights already in the
    compute dtype are their own operands; otherwise a copy of each in that dtype, with its
    shape and values, that autograd does not track (the op gives the weights their
    gradients)."""
    weights = [torch.randn(6, 4, dtype=torch.float64, requires_grad=True),
               torch.randn(4, 3, dtype=torch.float64, requires_grad=True)]
    assert all(op is w for op, w in zip(as_operands(weights, torch.float64), weights))
    ops = as_operands(weights, torch.float32)
    for op, w in zip(ops, weights, strict=True):
        assert op.dtype == torch.float32 and op.is_contiguous() and not op.requires_grad
        assert torch.equal(op, w.detach().float())


@pytest.mark.parametrize("sizes", [((2049, 3), (5,)), ((1,), (4096,)), ((0,), (7, 7))])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float16),
                                    (torch.float64, torch.float32)])
def test_cast_pair_copies_both_tensors_in_one_launch(sizes, dtypes, monkeypatch):
    """cast_pair (the kernel as_operands uses for a module's two CUDA weights), under the
    interpreter: each tensor cast exactly by one launch, whatever its size against the
    kernel's block (one element, an exact multiple, a partial last block, none)."""
    launched = []
    real_launch = common_module.launch
    def counted(kernel, *args, **meta):
        launched.append(kernel)
        real_launch(kernel, *args, **meta)
    monkeypatch.setattr(common_module, "launch", counted)
    source, target = dtypes
    a = torch.randn(*sizes[0], dtype=source, requires_grad=True) * 50
    b = torch.randn(*sizes[1], dtype=source)
    out_a, out_b = cast_pair(a, b, target)
    assert launched == [common_module._cast_pair_kernel]
    assert out_a.shape == a.shape and out_b.shape == b.shape and not out_a.requires_grad
    assert torch.equal(out_a, a.detach().to(target)) and torch.equal(out_b, b.to(target))


def test_cast_pair_refuses_what_it_would_copy_wrong():
    """A strided tensor (the kernel reads flat memory) or two devices: a clear error."""
    a, b = torch.randn(4, 6), torch.randn(8)
    for bad_a, bad_b in [(a.t(), b), (a, b[::2]), (a, torch.empty(8, device="meta"))]:
        with pytest.raises(ValueError, match="cast_pair: a and b must be contiguous"):
            cast_pair(bad_a, bad_b, torch.float16)


@pytest.mark.gpu
def test_gpu_module_operands_are_the_weights_cast_to_bf16(monkeypatch):
    """On the GPU a module's two weights go through one cast_pair: bit for bit what
    .to(bf16) gives (round to nearest even), at the FFN's paper sizes and at odd ones."""
    pairs = []
    real_cast_pair = common_module.cast_pair
    monkeypatch.setattr(common_module, "cast_pair",
                        lambda a, b, dtype: (pairs.append(dtype), real_cast_pair(a, b, dtype))[1])
    for shapes in [((1536, 384), (384, 1536)), ((3, 5), (1000, 3))]:
        weights = [torch.randn(*s, device="cuda", requires_grad=True) for s in shapes]
        ops = as_operands(weights, torch.bfloat16)
        for op, w in zip(ops, weights, strict=True):
            assert op.dtype == torch.bfloat16 and not op.requires_grad
            assert torch.equal(op, w.detach().to(torch.bfloat16))
    assert pairs == [torch.bfloat16, torch.bfloat16]


@pytest.fixture
def held_up_copies(monkeypatch):
    """Every weight copy waits first for a ~10 ms sleep queued on its own stream."""
    real_copy = common_module._copy_into

    def held_up(copies, weights):
        torch.cuda._sleep(20_000_000)
        real_copy(copies, weights)
    monkeypatch.setattr(common_module, "_copy_into", held_up)


@pytest.mark.gpu
def test_gpu_staged_operand_copies_are_waited_for(held_up_copies):
    """run_blocks copies the first block's weights on the current stream and the other
    blocks' on a side stream (staged_operand_copies), and waits for them before block 1.
    Each copy is held up here by a ~10 ms sleep queued before it, on its own stream: the
    side stream's copy then ends long after block 1 would have started without the wait,
    which would read memory not yet written. Fwd+bwd (bf16 autocast, padded batch) must
    equal the pass that copies everything on the current stream, eager and replayed in a
    CUDA graph (the atomics' order differs only at fp32 rounding)."""
    from orthoasr.graphs import capture_graph
    set_backend("triton")
    torch.manual_seed(0)      # the CPU's generator (see test_launch.py's graph tests)
    model = ConformerSupernet(SupernetConfig(num_layers=3, budgets=(1.0,), dropout=0.0))
    model = model.cuda()
    B, T = 4, 120
    x = torch.randn(B, T, 384).cuda().requires_grad_()
    lengths = torch.tensor([120, 7, 64, 119], device="cuda")
    dy = torch.randn(B, T, 384).cuda()
    inputs = [x, *model.blocks.parameters()]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.run_blocks(x, lengths)
        return (out, *torch.autograd.grad(out, inputs, dy))

    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        for on in (False, True):
            with common_module.staged_copies(on):
                ready = model._matmul_operands(x, lengths, None, [set()] * 3)[1]
                assert ready[0] == (1 if on else -1) and (ready[1] is not None) == on
    with common_module.staged_copies(False):
        plain = [t.detach().float().clone() for t in step()]
    eager = [t.detach().float().clone() for t in step()]
    graph, graphed = capture_graph(step)
    graph.replay()
    torch.cuda.synchronize()
    for run in (eager, [t.detach().float() for t in graphed]):
        for i, (a, b) in enumerate(zip(plain, run, strict=True)):
            assert torch.linalg.norm(b - a) <= 1e-3 * torch.linalg.norm(a) + 1e-6, i


@pytest.mark.gpu
def test_gpu_staged_copies_dropped_unwaited_write_over_nothing(held_up_copies):
    """A caller that drops staged_operand_copies' copies without waiting on `ready` (an
    error mid-pass; the test above's first loop) frees their memory while the side stream
    may not yet have written it. The allocator must not hand that memory out again before
    the side stream's copy ends: here the copy is held up by a ~10 ms sleep, and tensors of
    the copies' size, allocated at once on the current stream until one lands where the
    copies were (or 64 did not), must keep their values. (Without the side stream's use
    recorded, the H200 failed the test above, at f377eb0.)"""
    weights = [torch.randn(1024, 1024, device="cuda") for _ in range(2)]
    # three rounds: in the first, the kernels' first launches (lazy module loading) may let
    # the copy end before anything else is queued (it did on the H200)
    for _ in range(3):
        torch.cuda.synchronize()
        with common_module.staged_copies(True):
            copies, ready = common_module.staged_operand_copies(weights, torch.bfloat16, 1)
        assert ready is not None
        first, where = copies[0], copies[1].data_ptr()   # first: made on the current stream
        del copies, ready
        later = []
        while len(later) < 64 and (not later or later[-1].data_ptr() != where):
            later.append(torch.full((1024 * 1024,), 3.0, dtype=torch.bfloat16, device="cuda"))
        torch.cuda.synchronize()
        assert all(bool((t == 3.0).all()) for t in later) and first.dtype == torch.bfloat16


def test_frozen_operands_under_inference_mode():
    """FrozenOperands' copies first made under torch.inference_mode are ordinary tensors
    that a refresh outside it may write; weights that are inference tensors (no version
    count) are copied at every call; weights moved to another shape are refused."""
    weights = [torch.randn(4, 3), torch.randn(3, 2)]
    frozen = FrozenOperands()
    with torch.inference_mode():
        copies = frozen(weights, torch.float16)
    assert not copies[0].is_inference()
    with torch.no_grad():
        weights[0].mul_(2.0)
    assert torch.equal(frozen(weights, torch.float16)[0], weights[0].half())
    with torch.inference_mode():
        made_there = [torch.randn(4, 3), torch.randn(3, 2)]
        kept = FrozenOperands()
        kept(made_there, torch.float16)
        made_there[0].mul_(3.0)
        assert torch.equal(kept(made_there, torch.float16)[0], made_there[0].half())
    with pytest.raises(ValueError, match="changed shape or device"):
        frozen([weights[0].t(), weights[1]], torch.float16)


def test_skip_is_honoured_and_checked():
    model = ConformerSupernet(tiny_cfg()).eval()
    x, lengths = torch.randn(1, 6, 32), torch.tensor([6])
    full = model.encode(x, lengths)
    assert (model.encode(x, lengths, skip={(1, "conv")}) - full).abs().max() > 1e-4
    for bad in [(2, "conv"), (0, "attention"), ("0", "conv"), (0,)]:
        with pytest.raises(ValueError, match="skip items"):
            model.encode(x, lengths, skip={bad})
    with pytest.raises(ValueError, match="hard gates"):
        model.dead_modules(torch.zeros(model.num_units, requires_grad=True))
    assert model.dead_modules(None) == frozenset()
    with pytest.raises(TypeError, match="gates must be a tensor or None, got list"):
        model.dead_modules([0.0] * model.num_units)
    with pytest.raises(TypeError, match="lengths must be a tensor, got list"):
        model.encode(x, [6])


@pytest.mark.parametrize("granularity", ["component", "module"])
def test_valid_frames_ignore_padding(granularity):
    model = ConformerSupernet(tiny_cfg(granularity=granularity,
                                       module_order=("mhsa", "ffn1", "conv", "ffn2"))).eval()
    gates = (torch.rand(model.num_units) > 0.3).float()
    feats, lengths = torch.randn(3, 40, 80), torch.tensor([40, 22, 7])
    out, out_lengths = model(feats, lengths, gates)
    noisy = feats.clone()
    for b, n in enumerate(lengths.tolist()):
        noisy[b, n:] = 100 * torch.randn_like(noisy[b, n:])
    out_noisy, _ = model(noisy, lengths, gates)
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(out[b, :n], out_noisy[b, :n])
        alone, _ = model(feats[b:b + 1, :lengths[b]], lengths[b:b + 1], gates)
        torch.testing.assert_close(out[b, :n], alone[0], atol=2e-5, rtol=1e-4)
    assert torch.isfinite(out_noisy).all()


def test_cpu_frontend_channels_last_matches_plain_convolutions():
    """The CPU frontend runs its convolutions channels-last (faster on oneDNN): the same
    outputs and weight gradients as plain contiguous convolutions."""
    import torch.nn.functional as F

    from orthoasr.model import time_mask
    torch.manual_seed(0)
    frontend = ConformerSupernet(tiny_cfg()).frontend
    feats, lengths = torch.randn(3, 41, 80), torch.tensor([41, 17, 4])

    def plain(feats, lengths):
        x = feats.unsqueeze(1)
        for i, conv in enumerate(frontend.convs):
            x = torch.where(time_mask(lengths, x.shape[2])[:, None, :, None], x, 0.0)
            x = torch.relu(F.conv2d(x, conv.weight.contiguous(), conv.bias, padding=1))
            assert x.is_contiguous()
            if i % 2 == 1:
                x, lengths = F.max_pool2d(x, 2), lengths // 2
        x = torch.where(time_mask(lengths, x.shape[2])[:, None, :, None], x, 0.0)
        return frontend.proj(x.permute(0, 2, 1, 3).flatten(2)), lengths

    results = []
    for forward in (frontend, plain):
        frontend.zero_grad()
        y, out_lengths = forward(feats, lengths)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        results.append((y.detach(), out_lengths, [p.grad.clone() for p in frontend.parameters()]))
    (y, out_lengths, grads), (y_ref, lengths_ref, grads_ref) = results
    assert torch.equal(out_lengths, lengths_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)


def test_bad_input():
    model = ConformerSupernet(tiny_cfg())
    feats, lengths = torch.randn(2, 24, 80), torch.tensor([24, 13])
    with pytest.raises(ValueError, match="gates must have shape"):
        model(feats, lengths, torch.ones(model.num_units + 1))
    with pytest.raises(ValueError, match="head must be"):
        model(feats, lengths, head=3)
    with pytest.raises(ValueError, match="features must be"):
        model(torch.randn(2, 24, 40), lengths)
    with pytest.raises(ValueError, match="lengths must be"):
        model(feats, lengths.float())


@pytest.mark.parametrize("scale", [0.5, 1.0])
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
def test_residual_add_matches_autograds_add(scale, y_dtype):
    """residual_add: the output and both gradients of torch.add(x, y, alpha=scale), bit for
    bit, with y's gradient in y's dtype (bf16 under autocast, the residual stream fp32)."""
    from orthoasr.nn.common import residual_add
    x = torch.randn(3, 5, 8, requires_grad=True)
    y = torch.randn(3, 5, 8).to(y_dtype).requires_grad_()
    g = torch.randn(3, 5, 8)
    ours = residual_add(x, y, scale)
    theirs = torch.add(x, y, alpha=scale)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    dx, dy = torch.autograd.grad(ours, (x, y), g)
    dx_ref, dy_ref = torch.autograd.grad(theirs, (x, y), g)
    assert dy.dtype == y_dtype and torch.equal(dx, dx_ref) and torch.equal(dy, dy_ref)
    y_only = residual_add(x.detach(), y, scale)                   # x without a gradient
    assert torch.equal(torch.autograd.grad(y_only, y, g)[0], dy_ref)


@pytest.mark.parametrize("skip", [frozenset(), frozenset({(1, "ffn1")})])
def test_inference_chains_each_final_norm_into_the_next_feed_forward(monkeypatch, skip):
    """Without grad on the Triton backend, each block's final norm also makes the next
    block's first pre-norm where that module is an FFN (one kernel for both), and that FFN
    launches no LayerNorm of its own; the output equals the grad path's, which chains
    nothing. Where the next block's first module is left out (skip) and a conv module comes
    first, that block is not chained."""
    import orthoasr.kernels.gated_ffn as ffn_kernels
    import orthoasr.kernels.layer_norm as ln
    set_backend("triton")
    model = ConformerSupernet(tiny_cfg(num_layers=3)).eval()
    x, lengths = torch.randn(2, 7, 32), torch.tensor([7, 4])
    gates = (torch.rand(model.num_units) > 0.3).float()
    chained, ffn_norms = [], []
    final_norm, ffn_norm = ln.layer_norm_fwd, ffn_kernels.layer_norm_fwd
    monkeypatch.setattr(ln, "layer_norm_fwd", lambda *a, next_norm=None, **k: (
        chained.append(next_norm is not None), final_norm(*a, next_norm=next_norm, **k))[1])
    monkeypatch.setattr(ffn_kernels, "layer_norm_fwd", lambda *a, **k: (
        ffn_norms.append(1), ffn_norm(*a, **k))[1])
    with_grad = model.run_blocks(x, lengths, gates, skip=skip).detach()
    assert not any(chained) and len(ffn_norms) == 2 * 3 - len(skip)
    chained.clear(), ffn_norms.clear()
    with torch.no_grad():
        inferred = model.run_blocks(x, lengths, gates, skip=skip)
    assert chained.count(True) == 2 - len(skip)
    assert len(ffn_norms) == 2 * 3 - len(skip) - (2 - len(skip))
    torch.testing.assert_close(inferred, with_grad, atol=1e-6, rtol=1e-6)


def test_a_normalised_input_is_refused_where_it_cannot_be_used():
    """GatedFeedForward(normed=...) needs the Triton backend, no grad, no residual step and
    the compute dtype; MaskedLayerNorm(next_norm=...) needs the Triton backend without
    grad."""
    model = ConformerSupernet(tiny_cfg())
    ffn, norm = model.blocks[0].modules_by_kind["ffn1"], model.blocks[0].norm
    x, lengths = torch.randn(1, 5, 32), torch.tensor([5])
    with pytest.raises(ValueError, match="normed needs the Triton backend"):
        ffn(x, lengths, normed=x)
    with pytest.raises(ValueError, match="next_norm needs the Triton backend"):
        norm(x, lengths, next_norm=ffn.norm)
    set_backend("triton")
    with pytest.raises(ValueError, match="normed must be LayerNorm"):
        ffn(x, lengths, normed=x)                               # grad on
    with torch.no_grad(), pytest.raises(ValueError, match="normed must be LayerNorm"):
        ffn(x, lengths, normed=x[:, :3])
    with pytest.raises(ValueError, match="next_norm needs the Triton backend"):
        norm(x, lengths, next_norm=ffn.norm)                    # grad on


@pytest.mark.gpu
def test_gpu_chained_inference_keeps_the_error_of_the_unchained_pass():
    """Paper width under bf16 autocast on the H200: the no-grad pass, whose final norms make
    the next blocks' FFN pre-norms (and do not write their steps' sums), against the fp64
    torch reference has at most the error of the grad pass, which chains nothing (and of
    torch's bf16 pass, by the error-ratio rule); padded frames are 0."""
    from error_ratio import assert_error_ratio
    cfg = tiny_cfg(num_layers=4, d_model=384, num_heads=6, ff_dim=1536, ff_chunks=4,
                   conv_kernel=31)
    model = ConformerSupernet(cfg).cuda().eval()
    x = torch.randn(4, 90, 384, device="cuda")
    lengths = torch.tensor([90, 61, 33, 7], device="cuda")
    gates = (torch.rand(model.num_units, device="cuda") > 0.3).float()

    def run(backend, grad, dtype=torch.float32):
        set_backend(backend)
        m = model.double() if dtype == torch.float64 else model.float()
        with torch.set_grad_enabled(grad), torch.autocast(
                "cuda", torch.bfloat16, enabled=dtype != torch.float64):
            return m.run_blocks(x.to(dtype), lengths, gates.to(dtype)).detach().double()

    reference = run("torch", False, torch.float64)
    chained, unchained = run("triton", False), run("triton", True)
    torch_bf16 = run("torch", False)
    err = (chained - reference).abs().max().item()
    assert err <= 1.1 * (unchained - reference).abs().max().item() + 1e-3
    assert_error_ratio([chained], [torch_bf16], [reference])
    assert torch.equal(chained[3, 7:], torch.zeros_like(chained[3, 7:]))
