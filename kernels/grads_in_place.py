"""Weight gradients added in place: the eager Triton ops' backwards can add a parameter's
gradient straight into its `.grad` instead of returning it to autograd.

Why: a training step with several passes over the same weights (stage 2's supernet and two
subnets) gives every weight one gradient a pass, which autograd adds up (two fp32 adds a
weight, ~450 launches and ~1.1 ms of a paper-size stage-2 step on the H200), after each
op's backward zeroed accumulators of its own for its atomics (~150 fills). The ops' weight
gradients are already sums by fp32 atomics into zeroed buffers (`wgrad`, `col_sums`, the
LayerNorm backward); given a parameter's `.grad` as that buffer they add into it directly,
and nothing is left for autograd to add.

    grads = accumulate_in_place(model.parameters())   # once: a zeroed fp32 .grad each
    for batch in batches:
        loss = ...                                     # forward
        torch._foreach_zero_(grads)                    # not zero_grad(set_to_none=True)
        loss.backward()                                # the ops add into .grad
        optimizer.step()

Gradients an op does not take this way (cuBLAS's dense products, sums it scales
afterwards) and every other parameter's still reach `.grad` through autograd, which adds
them in place as well. The ops look at a parameter's `.grad` when the forward runs, so it
must stay the same tensor from then to the backward. Only for `loss.backward()`:
`torch.autograd.grad` would not see the gradients added in place, and DistributedDataParallel's
hooks would miss them; `release` ends it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .common import zeroed_fp32

_MARK = "_orthoasr_grad_in_place"


def accumulate_in_place(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Mark the fp32 parameters that need a gradient (others are left as they are), giving
    each a zeroed `.grad` where it has none; -> their `.grad` tensors, to zero before each
    backward."""
    grads = []
    for p in params:
        if p.requires_grad and p.is_leaf and p.dtype == torch.float32:
            if p.grad is None:
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
            setattr(p, _MARK, True)
            grads.append(p.grad)
    return grads


def marked(t: torch.Tensor) -> bool:
    """Whether `accumulate_in_place` marked t (and `release` did not unmark it since)."""
    return getattr(t, _MARK, False)


def release(params: Iterable[torch.Tensor]) -> None:
    """Unmark: the ops return these parameters' gradients to autograd again."""
    for p in params:
        if hasattr(p, _MARK):
            delattr(p, _MARK)


def sinks_of(inputs: dict, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """name -> the `.grad` of that input, for the inputs among `names` whose gradient may be
    added in place (marked, with a contiguous fp32 `.grad` of their shape); none while
    torch.compile traces (its graphs return every gradient)."""
    if torch.compiler.is_compiling():
        return {}
    found = {}
    for name in names:
        t = inputs.get(name)
        if isinstance(t, torch.Tensor) and marked(t):
            grad = t.grad
            if grad is not None and grad.shape == t.shape and grad.dtype == torch.float32 \
                    and grad.is_contiguous():
                found[name] = grad
    return found


def taken(sinks: dict[str, torch.Tensor] | None, names: Iterable[str]
          ) -> dict[str, torch.Tensor]:
    """The sinks among `names`: the gradients an op's backward will add in place (the rest
    of `sinks` it returns, e.g. products it leaves to cuBLAS or sums it scales afterwards)."""
    names = set(names)
    return {name: g for name, g in (sinks or {}).items() if name in names}


def returned(in_place: dict[str, torch.Tensor], name: str, grad: torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor | None:
    """What a backward gives autograd for input `name`: None when its gradient was added in
    place, else the gradient in the parameter's dtype."""
    return None if name in in_place else grad.to(dtype)


def accumulators(sizes: dict[str, int], device: torch.device,
                 given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name -> a zeroed fp32 1-D accumulator of sizes[name] elements: the flattened sink in
    `given` where there is one, else carved from one new zeroed buffer (one memset launch,
    none when every accumulator is a sink)."""
    fresh = [name for name in sizes if name not in given]
    carved = zeroed_fp32([sizes[name] for name in fresh], device) if fresh else []
    out = dict(zip(fresh, carved, strict=True))
    for name in sizes:
        if name in given:
            if given[name].numel() != sizes[name]:
                raise ValueError(f"accumulators: {name}'s .grad has {given[name].numel()} "
                                 f"elements, the op sums {sizes[name]}")
            out[name] = given[name].view(-1)
    return out
