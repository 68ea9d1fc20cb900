"""One autograd wiring per op, two entry points.

Each op file registers its forward as a `torch.library` custom op (what torch.compile and
CUDA graphs see) with `register_autograd(backward, setup_context=...)`, whose backward calls
the op's backward custom op. Eager calls skip the custom-op dispatch, which cost host time
per call (bench/NOTES.md, 2026-11-25 host overhead): `eager_function` wraps the very same
forward, setup_context and backward in an autograd.Function, handing the backward the plain
launcher instead of the backward op. Saved tensors and gradients travel by name.
"""

from __future__ import annotations

import functools
import inspect

import torch


def eager_function(forward, setup_context, backward, backward_launcher,
                   non_differentiable: tuple[int, ...] | None = None):
    """An autograd.Function running `forward(*inputs)` (a tuple of outputs),
    `setup_context(ctx, inputs, outputs)` and `backward(ctx, *grads, bwd=backward_launcher)`:
    the functions the op registers, not a copy of them. `non_differentiable`: indices of the
    outputs without a gradient (default: all but the first, the activations kept for the
    backward)."""

    class EagerOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            outputs = forward(*inputs)
            setup_context(ctx, inputs, outputs)
            skip = range(1, len(outputs)) if non_differentiable is None else non_differentiable
            ctx.mark_non_differentiable(*(outputs[i] for i in skip))
            ctx.set_materialize_grads(False)
            return outputs

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads, bwd=backward_launcher)

    EagerOp.__name__ = EagerOp.__qualname__ = f"Eager_{forward.__name__}"
    return EagerOp


@functools.cache
def parameter_names(fn) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


@functools.cache
def _defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not p.empty}


def named_inputs(fn, inputs) -> dict:
    """fn's inputs by name, its defaults for those left out (a custom op's setup_context
    sees the inputs given, not the defaulted ones)."""
    return {**_defaults(fn), **dict(zip(parameter_names(fn), inputs))}


def grads_in_order(fn, **grads) -> tuple:
    """The gradients given by input name, in the order of fn's parameters (None for the
    others): what an autograd backward returns for the inputs of fn."""
    return tuple(grads.get(name) for name in parameter_names(fn))


def needs_grad(ctx, fn, name: str) -> bool:
    """ctx.needs_input_grad for fn's input `name`."""
    return ctx.needs_input_grad[parameter_names(fn).index(name)]
