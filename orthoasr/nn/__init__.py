"""Gated Conformer modules (DESIGN §6): each chooses a backend and calls its op in kernels/."""
from .conv import GatedConvModule
from .ffn import GatedFeedForward
from .mhsa import GatedMHSA

__all__ = ["GatedConvModule", "GatedFeedForward", "GatedMHSA"]
