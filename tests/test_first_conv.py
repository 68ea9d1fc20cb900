"""kernels/first_conv.py: the frontend's first conv (one input channel) with its bias, ReLU
and padding mask, against conv2d and the torch ops (interpreter on the CPU), forward and
the weight and bias gradients against fp64."""

import pytest
import torch
from error_ratio import assert_error_ratio
from sm90 import assert_compiles_for_sm90

from orthoasr.kernels.first_conv import (
    first_conv_bwd,
    first_conv_fwd,
    first_conv_relu,
    first_conv_relu_reference,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CL = torch.channels_last


def _case(B=3, T=13, Fq=20, C=6, dtype=torch.float32):
    torch.manual_seed(0)
    feats = torch.randn(B, T, Fq, device=DEV)
    lengths = torch.tensor([T, 5, 0][:B], device=DEV)
    weight = torch.randn(C, 1, 3, 3, device=DEV, dtype=dtype)
    bias = torch.randn(C, device=DEV, dtype=dtype)
    return feats, lengths, weight, bias


def _run(fn, feats, lengths, weight, bias, dy, out_dtype):
    w, b = (t.detach().clone().requires_grad_() for t in (weight, bias))
    y = fn(feats, lengths, w, b, out_dtype)
    return [y.detach(), *torch.autograd.grad(y, (w, b), dy.to(y.dtype))]


@pytest.mark.parametrize("Fq,C", [(20, 6), (7, 4), (80, 64)])
def test_matches_reference_and_fp64_gradients(Fq, C):
    """Awkward sizes (F not a multiple of the tile, C not a power of two), a sequence of
    length 0 and one of 5; NaN in the padded frames of the input is never read."""
    feats, lengths, weight, bias = _case(Fq=Fq, C=C)
    feats[1, 5:] = float("nan")
    dy = torch.randn(3, C, 13, Fq, device=DEV)
    ours = _run(first_conv_relu, feats, lengths, weight, bias, dy, torch.float32)
    assert ours[0].is_contiguous(memory_format=CL) and ours[0].dtype == torch.float32
    ref = _run(first_conv_relu_reference, feats.double(), lengths, weight.double(),
               bias.double(), dy.double(), torch.float64)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[0][1, :, 5:], torch.zeros_like(ours[0][1, :, 5:]))
    assert torch.equal(ours[0][2], torch.zeros_like(ours[0][2]))


def test_backward_sums_over_several_programs_and_tiles():
    """Enough rows for several backward programs of several row tiles each."""
    feats, lengths, weight, bias = _case(B=2, T=70, Fq=33, C=5)
    lengths = torch.tensor([70, 41], device=DEV)
    dy = torch.randn(2, 5, 70, 33, device=DEV)
    ours = _run(first_conv_relu, feats, lengths, weight, bias, dy, torch.float32)
    ref = _run(first_conv_relu_reference, feats.double(), lengths, weight.double(),
               bias.double(), dy.double(), torch.float64)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)


def test_bad_input():
    feats, lengths, weight, bias = _case()
    with pytest.raises(ValueError, match="feats must be"):
        first_conv_relu(feats[0], lengths, weight, bias, torch.float32)
    with pytest.raises(ValueError, match="lengths must be"):
        first_conv_relu(feats, lengths.float(), weight, bias, torch.float32)
    with pytest.raises(ValueError, match="feats must not require grad"):
        first_conv_relu(feats.requires_grad_(), lengths, weight, bias, torch.float32)
    feats.requires_grad_(False)
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, 3, 3\)"):
        first_conv_relu(feats, lengths, weight[:, :, :2], bias, torch.float32)


def test_registered_ops_pass_opcheck():
    feats, lengths, weight, bias = _case(T=6, Fq=5, C=3)
    weight.requires_grad_(), bias.requires_grad_()
    torch.library.opcheck(first_conv_fwd, (feats, lengths, weight, bias, torch.float32),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))
    y = first_conv_fwd(feats, lengths, weight.detach(), bias.detach(), torch.float32)[0]
    torch.library.opcheck(first_conv_bwd, (torch.randn_like(y), y, feats, lengths),
                          test_utils=("test_schema", "test_faketensor"))


SM90_COMPILE = """
from orthoasr.kernels import first_conv as fc
types = {"feats_ptr": "*fp32", "w_ptr": "*fp32", "bias_ptr": "*fp32", "part_ptr": "*fp32",
         "len_ptr": "*i64"}
for kernel, backward in ((fc._first_conv_fwd_kernel, False), (fc._first_conv_bwd_kernel, True)):
    blk = fc._blocks(64, backward)
    warps, tiles = blk.pop("num_warps"), blk.pop("TILES")
    blk["DOT_PRECISION"] = "tf32"
    compile_sm90(kernel, dict(blk, TILES=tiles) if backward else blk, types, warps)
"""


def test_kernels_compile_for_sm90():
    """Both kernels, bf16 activations, at the paper frontend's 64 channels (tests/sm90.py)."""
    assert_compiles_for_sm90(SM90_COMPILE)


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_gpu_bf16_error_ratio():
    """bf16 output at the paper frontend's size (64 channels, 80 mels): against fp64, at
    most ~2x the error of cuDNN's bf16 conv with torch's ReLU and mask (output, weight and
    bias gradients)."""
    feats, _, weight, bias = _case(B=4, T=301, Fq=80, C=64)
    lengths = torch.tensor([301, 150, 1, 0], device="cuda")
    dy = torch.randn(4, 64, 301, 80, device="cuda")
    ours = _run(first_conv_relu, feats, lengths, weight, bias, dy, torch.bfloat16)
    torch_bf16 = _run(first_conv_relu_reference, feats, lengths, weight, bias, dy,
                      torch.bfloat16)
    ref = [t.double() for t in _run(first_conv_relu_reference, feats.double(), lengths,
                                    weight.double(), bias.double(), dy.double(),
                                    torch.float64)]
    assert_error_ratio([t.float() for t in ours], [t.float() for t in torch_bf16], ref)


@pytest.mark.gpu
def test_gpu_cuda_graph_and_no_sync():
    """Forward and backward without a host sync; a captured graph replayed with new lengths
    and features gives what an eager call gives."""
    from orthoasr.graphs import call_without_sync, capture_graph
    feats, _, weight, bias = _case(B=4, T=101, Fq=80, C=64)
    lengths = torch.tensor([101, 60, 1, 77], device="cuda")
    weight.requires_grad_(), bias.requires_grad_()

    def step():
        y = first_conv_relu(feats, lengths, weight, bias, torch.bfloat16)
        return (y, *torch.autograd.grad(y, (weight, bias), torch.ones_like(y)))

    step()
    call_without_sync(step)
    graph, outputs = capture_graph(step)
    feats.copy_(torch.randn_like(feats))
    lengths.copy_(torch.tensor([50, 101, 3, 0], device="cuda"))
    graph.replay()
    for a, b in zip(outputs, step(), strict=True):
        assert torch.equal(a, b)
