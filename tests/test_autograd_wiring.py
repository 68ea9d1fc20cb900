"""kernels/autograd.py: an op's eager path and its torch.library op share one forward,
setup_context and backward, with saved tensors and gradients by name. Names only land on the
right inputs if each launcher's parameters are its op's arguments, in order."""

import inspect

import pytest
import torch

from orthoasr.kernels import gated_attention as ga
from orthoasr.kernels import gated_conv as gc
from orthoasr.kernels import gated_ffn as gf
from orthoasr.kernels.autograd import grads_in_order


def _schema_names(op) -> tuple[str, ...]:
    overload = getattr(torch.ops.orthoasr, op._name).default
    return tuple(a.name for a in overload._schema.arguments)


@pytest.mark.parametrize("op, launcher", [
    (gf.gated_ffn_fwd, gf.gated_ffn_fwd_triton), (gf.gated_ffn_bwd, gf.gated_ffn_bwd_triton),
    (gc.gated_conv_fwd, gc.gated_conv_fwd_triton), (gc.gated_conv_bwd, gc.gated_conv_bwd_triton),
    (ga.gated_attention_packed_fwd, ga.attention_packed_fwd),
    (ga.gated_attention_packed_bwd, ga.attention_packed_bwd),
], ids=lambda x: getattr(x, "_name", ""))
def test_launcher_parameters_are_the_op_arguments(op, launcher):
    """Keyword-only parameters are the eager path's own (e.g. the backwards' `sinks`)."""
    positional = tuple(name for name, p in inspect.signature(launcher).parameters.items()
                       if p.kind != p.KEYWORD_ONLY)
    assert positional == _schema_names(op)


def test_grads_in_order_places_gradients_by_name():
    def f(x, lengths, w, gates, flag):
        pass
    gx, gw = torch.ones(1), torch.zeros(1)
    assert grads_in_order(f, w=gw, x=gx) == (gx, None, gw, None, None)
