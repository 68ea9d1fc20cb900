"""Weight gradients added in place (kernels/grads_in_place.py): a Conformer block on the
Triton backend whose parameters are marked gives the same `.grad` as autograd's
accumulation over two backward passes, added to what `.grad` held; the gradients the ops
take in place never reach autograd (no hook fires for them), the others still do."""

import pytest
import torch

import orthoasr.model as model_module
from orthoasr.config import SupernetConfig
from orthoasr.kernels.common import zeroed_fp32
from orthoasr.kernels.grads_in_place import accumulate_in_place, accumulators, release, sinks_of

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# what autograd still receives with marked parameters: cuBLAS's dense products (no gates, or
# gates that need a gradient), and the conv sums that are scaled or laid out otherwise
_FFN_DENSE = {f"modules_by_kind.{ffn}.{name}" for ffn in ("ffn1", "ffn2")
              for name in ("linear1.weight", "linear1.bias", "linear2.weight")}
_CONV_ALWAYS = {f"modules_by_kind.conv.{name}" for name in (
    "depthwise_weight", "depthwise_bias", "norm_conv.weight", "norm_conv.bias")}
_CONV_DENSE = {"modules_by_kind.conv.pointwise1.weight", "modules_by_kind.conv.pointwise1.bias"}
RETURNED = {"none": _FFN_DENSE | _CONV_ALWAYS | _CONV_DENSE,
            "hard": _CONV_ALWAYS,
            "soft": _FFN_DENSE | _CONV_ALWAYS | _CONV_DENSE}


def _block_case():
    cfg = SupernetConfig(num_layers=1, d_model=36, num_heads=2, ff_dim=64, conv_kernel=5,
                         num_mel_bins=80, vocab_size=11, frontend_channels=(4, 8),
                         budgets=(1.0,), dropout=0.0, ref_frames=10)
    torch.manual_seed(3)
    block = model_module.ConformerBlock(cfg).to(DEV).eval()
    x = torch.randn(2, 9, 36, device=DEV)
    return block, x, torch.tensor([9, 5], device=DEV), torch.randn(2, 9, 36, device=DEV)


def _gates(case: str, units: int):
    if case == "none":
        return None
    if case == "hard":        # an FFN chunk and a head off, everything else on
        gates = torch.ones(units, device=DEV)
        gates[[1, 5]] = 0.0
        return gates
    return (torch.rand(units, device=DEV) + 0.2).requires_grad_()


def _two_backwards(block, x, lengths, grad_out, gates, in_place: bool):
    """-> ({name: .grad after two forward/backward passes}, names autograd gave a gradient);
    in place: the marked .grad starts at 0.5."""
    params = dict(block.named_parameters())
    for p in params.values():
        p.grad = None
    arrived = set()

    def seen(name):
        def hook(grad):      # (also run, with None, for a gradient an op returned as None)
            if grad is not None:
                arrived.add(name)
        return hook
    hooks = [p.register_hook(seen(name)) for name, p in params.items()]
    try:
        if in_place:
            for grad in accumulate_in_place(params.values()):
                grad.fill_(0.5)
        for _ in range(2):
            block(x, lengths, gates).backward(grad_out)
    finally:
        release(params.values())
        for hook in hooks:
            hook.remove()
    return {name: p.grad.clone() for name, p in params.items()}, arrived


@pytest.mark.parametrize("case", list(RETURNED))
def test_block_gradients_added_in_place(case):
    block, x, lengths, grad_out = _block_case()
    gates = _gates(case, max(end for _, _, end in block.layout))
    ref, ref_arrived = _two_backwards(block, x, lengths, grad_out, gates, in_place=False)
    ours, arrived = _two_backwards(block, x, lengths, grad_out, gates, in_place=True)
    assert ref_arrived == set(ref)
    assert arrived == RETURNED[case]
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name] + 0.5, atol=1e-5, rtol=1e-5,
                                   msg=name)
    # released: the next backward returns every gradient to autograd again
    _, arrived = _two_backwards(block, x, lengths, grad_out, gates, in_place=False)
    assert arrived == set(ref)


def test_sinks_only_for_marked_contiguous_fp32_grads(monkeypatch):
    w, b, other = (torch.zeros(4, 3, requires_grad=True) for _ in range(3))
    grads = accumulate_in_place([w, b, torch.zeros(3, dtype=torch.float64,
                                                   requires_grad=True)])
    assert [g.data_ptr() for g in grads] == [w.grad.data_ptr(), b.grad.data_ptr()]
    b.grad = torch.zeros(3, 4).t()                         # not contiguous: returned instead
    assert list(sinks_of(dict(w=w, b=b, other=other), ("w", "b", "other"))) == ["w"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert sinks_of(dict(w=w), ("w",)) == {}
    release([w, b])


def test_accumulators_carve_the_rest():
    sink = torch.full((2, 3), 7.0)
    acc = accumulators(dict(a=5, s=6, z=0), torch.device("cpu"), dict(s=sink))
    assert acc["s"].data_ptr() == sink.data_ptr() and acc["s"].shape == (6,)
    assert torch.equal(acc["a"], torch.zeros(5)) and acc["z"].numel() == 0
    with pytest.raises(ValueError, match="s's .grad has 6 elements"):
        accumulators(dict(s=5), torch.device("cpu"), dict(s=sink))
    assert zeroed_fp32([3], torch.device("cpu"))[0].sum() == 0


@pytest.mark.gpu
def test_gpu_zeroed_fp32_zeroes_reused_memory():
    """On CUDA the accumulators are zeroed by a kernel of ours (programmatically launched):
    every element of every carved part is 0, over memory that held NaNs just before (the
    caching allocator hands the same block back), eagerly and replayed in a CUDA graph
    after the memory was dirtied again; a buffer ending inside a program's block too."""
    from orthoasr.graphs import capture_graph
    sizes = [5, 1024, 1536 * 384 + 3]
    total = sum(-(-n // 32) * 32 for n in sizes)
    torch.empty(total, device="cuda").fill_(float("nan"))      # freed: its block reused
    parts = zeroed_fp32(sizes, torch.device("cuda"))
    assert [p.numel() for p in parts] == sizes
    assert all(torch.equal(p, torch.zeros_like(p)) for p in parts)
    graph, graphed = capture_graph(lambda: zeroed_fp32(sizes, torch.device("cuda")))
    for p in graphed:
        p.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(p, torch.zeros_like(p)) for p in graphed)


def test_stage1_pair_gradients_added_in_place():
    """encode_pair (the stage-1 pair as one batch: ungated rows, then soft gates) with the
    blocks' parameters marked: every parameter's .grad and the gates' gradient as autograd
    gives them, over two backwards."""
    cfg = SupernetConfig(num_layers=2, d_model=32, num_heads=4, ff_dim=64, ff_chunks=2,
                         conv_kernel=5, vocab_size=19, frontend_channels=(4, 8),
                         budgets=(0.4, 0.7, 1.0), dropout=0.0, ref_frames=10)
    torch.manual_seed(13)
    model = model_module.ConformerSupernet(cfg).to(DEV)
    x, lengths = torch.randn(2, 9, 32, device=DEV), torch.tensor([9, 5], device=DEV)
    gates = torch.rand(model.num_units, device=DEV) + 0.1
    gates[::3] = 0.0
    weights = torch.randn(2, 2, 9, 19, device=DEV)
    results = []
    for in_place in (False, True):
        for p in model.parameters():
            p.grad = None
        if in_place:
            accumulate_in_place(model.blocks.parameters())
        g = gates.clone().requires_grad_()
        try:
            for _ in range(2):
                outs = model.encode_pair(x, lengths, g, 1)
                sum((w * o).sum() for w, o in zip(weights, outs, strict=True)).backward()
        finally:
            release(model.blocks.parameters())
        results.append((g.grad, {n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.grad is not None}))
    (ref_dg, ref), (dg, ours) = results
    torch.testing.assert_close(dg, ref_dg, atol=1e-5, rtol=1e-5)
    assert set(ours) == set(ref)
    for name, grad in ref.items():
        torch.testing.assert_close(ours[name], grad, atol=1e-5, rtol=1e-5, msg=name)
