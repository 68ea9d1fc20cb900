"""Gated Conformer modules (docs/design.md §6): each checks its input, chooses the backend
(common.triton_runs) and calls its op in kernels/ or the op's PyTorch reference."""
from .conv import GatedConvModule
from .ffn import GatedFeedForward
from .mhsa import GatedMHSA

__all__ = ["GatedConvModule", "GatedFeedForward", "GatedMHSA"]
