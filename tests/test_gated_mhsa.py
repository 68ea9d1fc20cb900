"""GatedMHSA: Triton backend (interpreter on CPU) vs the PyTorch backend, semantics, bad input."""

import pytest
import torch
import torch.nn.functional as F

from orthoasr import set_backend
from orthoasr.config import SupernetConfig
from orthoasr.graphs import call_without_sync, capture_graph
from orthoasr.kernels.gated_attention import gated_attention_reference
from orthoasr.nn import GatedMHSA
from orthoasr.units import module_cost

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _module(d=48, heads=3, granularity="component", device=DEV, dropout=0.0):
    m = GatedMHSA(d, heads, dropout=dropout, granularity=granularity).to(device)
    with torch.no_grad():   # non-trivial LN and biases
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _run(m, x, lengths, gates, grad_out, backend):
    set_backend(backend)
    m.zero_grad()
    x = x.detach().clone().requires_grad_()
    g = None if gates is None else gates.detach().clone().requires_grad_()
    out = m(x, lengths, g)
    out.backward(grad_out)
    grads = [x.grad] + [p.grad.clone() for p in m.parameters()]
    return out.detach(), grads, None if g is None else g.grad


GATES = {
    "none": None,
    "soft": [0.7, 0.25, 1.3],
    "one_on": [0.0, 1.0, 0.0],
    "some_off": [0.8, 0.0, 1.0],
    "all_off": [0.0, 0.0, 0.0],
}


@pytest.mark.parametrize("shape", [(1, 1, [1]), (2, 37, [37, 1]), (3, 24, [24, 9, 0])],
                         ids=lambda s: f"B{s[0]}T{s[1]}")
@pytest.mark.parametrize("gate_kind", list(GATES))
def test_triton_matches_torch(shape, gate_kind):
    B, T, lengths = shape
    m = _module()
    x = torch.randn(B, T, 48, device=DEV)
    lengths = torch.tensor(lengths, device=DEV)
    gates = None if GATES[gate_kind] is None else torch.tensor(GATES[gate_kind], device=DEV)
    grad_out = torch.randn(B, T, 48, device=DEV)
    out, grads, dg = _run(m, x, lengths, gates, grad_out, "auto")
    ref_out, ref_grads, ref_dg = _run(m, x, lengths, gates, grad_out, "torch")
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
    if dg is not None:
        torch.testing.assert_close(dg, ref_dg, atol=1e-4, rtol=1e-4)
    if gate_kind == "all_off":
        assert torch.equal(out, torch.zeros_like(out))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("gate", [0.6, 0.0])
def test_module_granularity(gate):
    m = _module(granularity="module")
    x = torch.randn(2, 19, 48, device=DEV)
    lengths = torch.tensor([19, 7], device=DEV)
    gates = torch.tensor([gate], device=DEV)
    grad_out = torch.randn_like(x)
    out, grads, dg = _run(m, x, lengths, gates, grad_out, "auto")
    ref_out, ref_grads, ref_dg = _run(m, x, lengths, gates, grad_out, "torch")
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dg, ref_dg, atol=1e-4, rtol=1e-4)
    # the one gate scales the whole output, bias included
    full = m(x, lengths)
    torch.testing.assert_close(out, gate * full.detach(), atol=1e-5, rtol=1e-5)
    if gate == 0:
        assert torch.equal(out, torch.zeros_like(out))


def test_semantics_and_layout():
    """Gated output = sum over live heads of a hand-sliced attention (documents the head-major
    in-projection layout the export relies on) + b_o; b_o only if a gate is on."""
    m = _module(d=48, heads=3)
    x = torch.randn(2, 21, 48, device=DEV)
    lengths = torch.tensor([21, 10], device=DEV)
    gates = torch.tensor([0.5, 0.0, 2.0], device=DEV)
    with torch.no_grad():
        y = F.layer_norm(x, (48,), m.norm.weight, m.norm.bias)
        w = m.in_proj_weight.view(3, 3, 16, 48)
        b = m.in_proj_bias.view(3, 3, 16)
        expected = m.out_proj_bias.expand(2, 21, 48).clone()
        for h in (0, 2):
            q, k, v = ((y @ w[h, j].T + b[h, j]).unsqueeze(1) for j in range(3))
            a = gated_attention_reference(q, k, v, lengths, None, 0.25)[:, 0]
            expected += gates[h] * a @ m.out_proj_weight[:, 16 * h:16 * (h + 1)].T
        out = m(x, lengths, gates)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_params_match_units():
    for d, heads in [(48, 3), (384, 6)]:
        cfg = SupernetConfig(d_model=d, num_heads=heads)
        mc = module_cost(cfg, "mhsa", 10)
        m = GatedMHSA(d, heads)
        assert sum(p.numel() for p in m.parameters()) == \
            mc.num_units * mc.unit_params + mc.shared_params


def test_padding_invariance():
    m = _module()
    x = torch.randn(2, 30, 48, device=DEV)
    lengths = torch.tensor([30, 12], device=DEV)
    gates = torch.tensor([1.0, 0.3, 0.0], device=DEV)
    out = m(x, lengths, gates)
    x2 = x.clone()
    x2[1, 12:] = 1e3 * torch.randn_like(x2[1, 12:])
    out2 = m(x2, lengths, gates)
    torch.testing.assert_close(out[:, :12], out2[:, :12], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], out2[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out2).all()


def test_dropout_only_in_training():
    m = _module(dropout=0.5)
    x = torch.randn(2, 9, 48, device=DEV)
    lengths = torch.tensor([9, 5], device=DEV)
    m.eval()
    assert torch.equal(m(x, lengths), m(x, lengths))
    m.train()
    assert not torch.equal(m(x, lengths), m(x, lengths))


@pytest.mark.parametrize("kwargs, error", [
    (dict(x=torch.randn(9, 48)), ValueError),
    (dict(x=torch.randn(2, 9, 40)), ValueError),
    (dict(x=torch.randn(2, 9, 48).to(torch.int32)), TypeError),
    (dict(lengths=torch.tensor([9.0, 3.0])), TypeError),
    (dict(lengths=torch.tensor([9, 3, 3])), ValueError),
    (dict(lengths=torch.tensor([10, 3])), ValueError),
    (dict(lengths=torch.tensor([9, -1])), ValueError),
    (dict(gates=torch.ones(2)), ValueError),
    (dict(gates=torch.ones(3, dtype=torch.int64)), TypeError),
    (dict(x=torch.randn(2, 9, 48, device="meta")), ValueError),
])
def test_bad_input(kwargs, error):
    m = GatedMHSA(48, 3)
    args = dict(x=torch.randn(2, 9, 48), lengths=torch.tensor([9, 3]), gates=torch.ones(3))
    args.update(kwargs)
    with pytest.raises(error):
        m(args["x"], args["lengths"], args["gates"])


def test_constructor_errors():
    with pytest.raises(ValueError):
        GatedMHSA(50, 3)
    with pytest.raises(ValueError):
        GatedMHSA(48, 3, granularity="heads")


# ----------------------------------------------------------------------------- GPU

def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_error_ratio(dtype):
    """Paper-size module under autocast: error vs the fp64 reference <= 2x PyTorch's own."""
    B, T = 8, 250
    m = _module(d=384, heads=6)
    x = torch.randn(B, T, 384, device="cuda")
    lengths = torch.randint(T // 2, T + 1, (B,), device="cuda")
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.8, 1.2], device="cuda")
    grad_out = torch.randn(B, T, 384, device="cuda")
    m64 = _module(d=384, heads=6).double()
    m64.load_state_dict(m.state_dict())
    gold, gold_grads, gold_dg = _run(m64, x.double(), lengths, gates.double(),
                                     grad_out.double(), "torch")
    results = {}
    for backend in ("auto", "torch"):
        with torch.autocast("cuda", dtype=dtype):
            results[backend] = _run(m, x, lengths, gates, grad_out, backend)
    (out, grads, dg), (ref, ref_grads, ref_dg) = results["auto"], results["torch"]
    assert _err(out, gold) <= 2 * _err(ref, gold) + 1e-3 * gold.abs().max().item()
    for a, r, g in zip(grads + [dg], ref_grads + [ref_dg], gold_grads + [gold_dg], strict=True):
        assert _err(a, g) <= 2 * _err(r, g) + 1e-3 * g.abs().max().item()


@pytest.mark.gpu
def test_cuda_graph_and_no_sync():
    m = _module(d=384, heads=6)
    x = torch.randn(4, 250, 384, device="cuda", requires_grad=True)
    lengths = torch.tensor([250, 125, 200, 1], device="cuda")
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 2.0], device="cuda", requires_grad=True)
    grad_out = torch.randn(4, 250, 384, device="cuda")
    params = list(m.parameters())

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(x, lengths, gates)
        return torch.autograd.grad(out, [x, gates] + params, grad_out)

    eager = step()
    call_without_sync(step)
    graph, captured = capture_graph(step)
    graph.replay()
    torch.cuda.synchronize()
    # weight grads use fp32 atomics: summation order may differ
    for a, b in zip(eager, captured, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_benchmark_shape_all_off_is_zero():
    m = _module(d=384, heads=6)
    x = torch.randn(32, 250, 384, device="cuda", requires_grad=True)
    lengths = torch.randint(125, 251, (32,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x, lengths, torch.zeros(6, device="cuda"))
    assert torch.equal(out, torch.zeros_like(out))
    out.float().sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x.grad))


def test_handed_operands_are_the_ones_used():
    """operands: W_in, W_o in the compute dtype made by the caller (ConformerSupernet.run_blocks,
    one copy for a whole pass), fp64 weights computed in fp32. Copies of the weights give
    exactly the output and gradients of the op's own casts, the gradients on the fp64
    weights; operands of other weights make forward and backward those of the other
    weights (the fp64 reference with them), so the op reads nothing else."""
    from error_ratio import assert_handed_operands_are_used

    from orthoasr.kernels.gated_mhsa import gated_mhsa, gated_mhsa_reference

    B, T, D, H = 2, 9, 48, 3
    y, lengths = torch.randn(B, T, D, device=DEV), torch.tensor([9, 4], device=DEV)
    gates = torch.tensor([0.7, 0.0, 1.3], device=DEV, requires_grad=True)
    weights = [torch.randn(3 * D, D, dtype=torch.float64, device=DEV) / D ** 0.5,
               0.1 * torch.randn(3 * D, dtype=torch.float64, device=DEV),
               torch.randn(D, D, dtype=torch.float64, device=DEV) / D ** 0.5,
               0.1 * torch.randn(D, dtype=torch.float64, device=DEV)]
    dout = torch.randn(B, T, D, device=DEV)
    inputs = [y.requires_grad_(), gates, *(w.requires_grad_() for w in weights)]

    def outputs(operands):
        out = gated_mhsa(y, lengths, gates, *weights, H, "component", torch.float32,
                         operands=operands)
        return [out, *torch.autograd.grad(out, inputs, dout)]

    def reference(other):
        y64 = y.detach().double().requires_grad_()
        g64 = gates.detach().double().requires_grad_()
        out64 = gated_mhsa_reference(y64, lengths, g64, *other, H)
        return [out64, *torch.autograd.grad(out64, [y64, g64, *other], dout.double())]
    assert_handed_operands_are_used(outputs, reference, weights, (0, 2))


# ----------------------------------------------------------------------------- compile path ops

def test_projection_ops_match_linear():
    """The torch.library projection ops (what torch.compile sees) vs F.linear on live heads."""
    from orthoasr.kernels import gated_mhsa as gm

    M, D, Dh = 45, 48, 16
    gates = torch.tensor([0.5, 0.0, 1.2], device=DEV)
    live_in = (gates != 0).repeat_interleave(3 * Dh).float()      # qkv columns, head-major
    live_out = (gates != 0).repeat_interleave(Dh).float()
    y, a = torch.randn(M, D, device=DEV), torch.randn(M, D, device=DEV)
    w_in, b_in = torch.randn(3 * D, D, device=DEV), torch.randn(3 * D, device=DEV)
    w_o, b_o = torch.randn(D, D, device=DEV), torch.randn(D, device=DEV)
    scale = torch.tensor([0.7], device=DEV)
    g_qkv, g_out = torch.randn(M, 3 * D, device=DEV), torch.randn(M, D, device=DEV)

    def grads(fn, *inputs):
        inputs = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*inputs)
        grad = g_qkv if out.shape[1] == 3 * D else g_out
        return [out.detach()] + list(torch.autograd.grad(out, inputs, grad))

    # dead heads' columns are left unwritten by the ops (memory garbage, maybe NaN): select
    # the live ones with `where`, never by multiplying with 0
    live_qkv, live_a = live_in.bool(), live_out.bool()
    ours = grads(lambda y, w, b: torch.where(
        live_qkv, gm.gated_in_proj(y, w, w, b, gates), 0.0), y, w_in, b_in)
    ref = grads(lambda y, w, b: F.linear(y, w, b) * live_in, y, w_in, b_in)
    for x, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(x, r, atol=1e-4, rtol=1e-4)
    for mode, s in ((gm.BIAS_IF_LIVE, None), (gm.BIAS_SCALED, scale)):
        extra = () if s is None else (s,)
        ours = grads(lambda a, w, b, *s, mode=mode: gm.gated_out_proj(
                         a, w, w, b, gates, s[0] if s else None, mode),
                     a, w_o, b_o, *extra)
        ref = grads(lambda a, w, b, *s: F.linear(a * live_out, w, b * (s[0] if s else 1.0)),
                    a, w_o, b_o, *extra)
        # da of dead heads is not written by the op: compare live columns only
        ours[1], ref[1] = torch.where(live_a, ours[1], 0.0), torch.where(live_a, ref[1], 0.0)
        for x, r in zip(ours, ref, strict=True):
            torch.testing.assert_close(x, r, atol=1e-4, rtol=1e-4)
    for w_in_master, w_o_master in ((w_in, w_o), (w_in.double(), w_o.double())):
        torch.library.opcheck(gm.gated_in_proj, (y, w_in_master, w_in, b_in, gates),
                              test_utils=("test_schema", "test_faketensor"))
        torch.library.opcheck(gm.gated_out_proj,
                              (a, w_o_master, w_o, b_o, gates, scale, gm.BIAS_SCALED),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("heads", [3, 4], ids=["Dh16", "Dh12"])
def test_in_projection_by_tma_matches_pointer_loads(heads):
    """The in-projection's operands by tensor descriptors (whole blocks: M 45 and K 48 end
    inside a block, and with Dh 12 the weight block of 16 rows reaches into the next q/k/v
    rows) against masked pointer loads: live heads' columns equal, a dead head's unwritten;
    a NaN row of y stays in its own row. bf16 on the GPU."""
    from orthoasr.kernels import gated_mhsa as gm

    M, D = 45, 48
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    torch.manual_seed(3)
    y = torch.randn(M, D, device=DEV, dtype=dtype)
    y[7] = float("nan")
    w, b = torch.randn(3 * D, D, device=DEV, dtype=dtype), torch.randn(3 * D, device=DEV)
    gates = torch.ones(heads, device=DEV)
    gates[1] = 0.0
    live = (gates != 0).repeat_interleave(3 * D // heads).bool()
    blocks = dict(BLOCK_M=32, BLOCK_K=32, num_warps=4, num_stages=2)
    tma, plain = (torch.where(live, gm.in_proj_fwd_triton(y, w, b, gates, dict(blocks, TMA=t)),
                              0.0) for t in (True, False))
    torch.testing.assert_close(tma, plain, atol=1e-2, rtol=1e-2, equal_nan=True)
    assert tma[7, live].isnan().all() and not tma[torch.arange(M) != 7].isnan().any()
    with pytest.raises(ValueError, match="in_proj_fwd_triton TMA: a strides"):
        gm.in_proj_fwd_triton(y.t().contiguous().t(), w, b, gates, dict(blocks, TMA=True))


@pytest.mark.gpu
def test_gpu_in_projection_default_tma_tile_bf16():
    """At paper width in bf16, the in-projection's default (TMA operands, its own tile)
    against masked pointer loads and against F.linear, on live heads' columns."""
    from orthoasr.kernels import gated_mhsa as gm

    M, D, H = 1499, 384, 6               # M ends inside a 64-row block
    torch.manual_seed(4)
    y = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(3 * D, D, device="cuda") / 20).to(torch.bfloat16)
    b = torch.randn(3 * D, device="cuda")
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 0.0], device="cuda")
    live = (gates != 0).repeat_interleave(3 * D // H)
    default = gm.in_proj_fwd_triton(y, w, b, gates)[:, live]
    plain = gm.in_proj_fwd_triton(y, w, b, gates, dict(TMA=False))[:, live]
    torch.testing.assert_close(default, plain, atol=2e-2, rtol=1e-2)
    ref = torch.nn.functional.linear(y.float(), w.float(), b)[:, live]
    torch.testing.assert_close(default.float(), ref, atol=5e-2, rtol=2e-2)


@pytest.mark.gpu
def test_torch_compile_matches_eager():
    m = _module(d=384, heads=6)
    x = torch.randn(4, 100, 384, device="cuda")
    lengths = torch.tensor([100, 50, 73, 1], device="cuda")
    gates = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 2.0], device="cuda")
    grad_out = torch.randn_like(x)
    eager = _run(m, x, lengths, gates, grad_out, "auto")
    compiled = torch.compile(m)
    ours = _run(compiled, x, lengths, gates, grad_out, "auto")
    torch.testing.assert_close(ours[0], eager[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(ours[1] + [ours[2]], eager[1] + [eager[2]], strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("compile_path", [False, True])
@pytest.mark.parametrize("gate_kind", ["soft", "some_off", "all_off"])
def test_ungated_batch_matches_two_reference_passes(gate_kind, compile_path, monkeypatch):
    """gated_mhsa(ungated_batch=1): the first sequence as if gates were None, the others with
    the head gates, outputs and every gradient (the gates' from the gated sequences only) as
    the fp64 reference's two passes give them; the eager path, and the torch.compile path's
    ops (called eagerly)."""
    from orthoasr.kernels import gated_mhsa as gmh
    d, H = 48, 3
    torch.manual_seed(12)
    y = torch.randn(3, 24, d, device=DEV)
    lengths = torch.tensor([24, 9, 17], device=DEV)
    weights = [torch.randn(3 * d, d, device=DEV) / d ** 0.5, 0.1 * torch.randn(3 * d, device=DEV),
               torch.randn(d, d, device=DEV) / d ** 0.5, 0.1 * torch.randn(d, device=DEV)]
    gates = torch.tensor(GATES[gate_kind], device=DEV)
    grad_out = torch.randn_like(y)

    def grads(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (y, gates, *weights)]
        out = fn(leaves[0], lengths, *leaves[1:])
        return [out, *torch.autograd.grad(out, leaves, grad_out.to(dtype))]

    ref = grads(lambda y, lengths, g, *w: gmh.gated_mhsa_reference(
        y, lengths, g, *w, H, ungated_batch=1), torch.float64)
    if compile_path:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    ours = grads(lambda y, lengths, g, *w: gmh.gated_mhsa(
        y, lengths, g, *w, H, "component", torch.float32, ungated_batch=1), torch.float32)
    for name, a, b in zip(["out", "dy", "dgates", "dw_in", "db_in", "dw_o", "db_o"], ours, ref,
                          strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=2e-4, msg=name)


def test_ungated_batch_needs_head_gates():
    from orthoasr.kernels import gated_mhsa as gmh
    y, lengths = torch.randn(2, 5, 48, device=DEV), torch.tensor([5, 3], device=DEV)
    weights = [torch.randn(144, 48, device=DEV), torch.randn(144, device=DEV),
               torch.randn(48, 48, device=DEV), torch.randn(48, device=DEV)]
    with pytest.raises(ValueError, match="ungated_batch=1 needs head gates"):
        gmh.gated_mhsa(y, lengths, None, *weights, 3, "component", torch.float32,
                       ungated_batch=1)
    with pytest.raises(ValueError, match="granularity 'module'"):
        gmh.gated_mhsa(y, lengths, torch.ones(1, device=DEV), *weights, 3, "module",
                       torch.float32, ungated_batch=1)
