"""Eager baselines written the way the method's public code masks, for the benchmarks."""
from .encoder import EagerEncoder, eager_mhsa

__all__ = ["EagerEncoder", "eager_mhsa"]
