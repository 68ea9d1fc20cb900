"""Comparisons of kernels with their references. The low-precision rule (CONVENTIONS.md): a
kernel's error against an fp64 reference may be at most ~2x PyTorch's error in the same
dtype against that reference, plus a small atol."""

import torch

from orthoasr.backend import set_backend
from orthoasr.kernels.common import operand_copies


def assert_error_ratio(ours, torch_low, reference, rtol=1e-3, atol=1e-6):
    """Each tensor of `ours` vs the same of `torch_low`, both against `reference`."""
    for i, (a, b, r) in enumerate(zip(ours, torch_low, reference, strict=True)):
        err = (a.double() - r).abs().max().item()
        err_torch = (b.double() - r).abs().max().item()
        assert err <= 2 * err_torch + rtol * r.abs().max().item() + atol, (i, err, err_torch)


def assert_grads_close(y, y_ref, inputs, atol=5e-5, rtol=1e-4):
    """The gradients of y and of y_ref w.r.t. `inputs` under the same random dy (cast to
    y_ref's dtype) agree; returns y's gradients."""
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, dy)
    for g, g_ref in zip(grads, torch.autograd.grad(y_ref, inputs, dy.to(y_ref.dtype)),
                        strict=True):
        torch.testing.assert_close(g, g_ref, atol=atol, rtol=rtol)
    return grads


def assert_module_autocast_error_ratio(module, x, lengths, gates):
    """`module` under bf16 autocast (fp32 weights) on the auto backend vs the torch backend
    in the same autocast, both against an fp64 run: output and the gradients of x and every
    parameter."""
    dy = torch.randn_like(x)

    def outputs(dtype, backend):
        set_backend(backend)
        try:
            m = module.double() if dtype == torch.float64 else module
            xx = x.to(torch.float64 if dtype == torch.float64 else torch.float32)
            xx = xx.requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype != torch.float64):
                y = m(xx, lengths, gates.to(xx.dtype))
            return [y.detach().double(), *(g.double() for g in torch.autograd.grad(
                y, [xx, *m.parameters()], dy.to(y.dtype)))]
        finally:
            module.float()
            set_backend("auto")

    ours, torch_bf16 = outputs(torch.bfloat16, "auto"), outputs(torch.bfloat16, "torch")
    assert_error_ratio(ours, torch_bf16, outputs(torch.float64, "torch"))


def assert_handed_operands_are_used(outputs, reference, weights, picks):
    """A gated op that takes its GEMM weights as operands made by the caller (one bf16 copy
    per encoder pass) reads them and nothing else. `outputs(operands)` -> [y, *grads] of the
    op (operands None: its own casts); `reference(weights)` -> the same from the fp64
    reference with those weights; `picks`: the indices in `weights` of the two weights the
    operands stand for. Copies of those weights give exactly the op's own result; operands
    of other weights give the reference's result with the other weights."""
    own = outputs(None)
    handed = outputs(operand_copies([weights[i] for i in picks], torch.float32))
    for i, (a, b) in enumerate(zip(own, handed, strict=True)):
        assert a.dtype == b.dtype and torch.equal(a, b), i
    first, second = picks
    other = list(weights)
    other[first], other[second] = (w.detach().requires_grad_()
                                   for w in (1.5 * weights[first], -weights[second]))
    ours = outputs(operand_copies([other[i] for i in picks], torch.float32))
    assert (ours[0] - own[0]).abs().max() > 0.1
    for i, (a, a64) in enumerate(zip(ours, reference(other), strict=True)):
        torch.testing.assert_close(a.double(), a64, atol=5e-5, rtol=1e-4, msg=f"output {i}")
