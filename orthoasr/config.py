"""Model configuration: one dataclass whose defaults are the paper-size Conformer-CTC."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

MODULE_KINDS = ("ffn1", "conv", "mhsa", "ffn2")
GRANULARITIES = ("component", "module")
CRITERIA = ("params", "flops")
# LogMel's normalize modes a model may be trained with (orthoasr/data/features.py)
FEATURE_NORMS = ("utterance", "voiced")


@dataclass
class SupernetConfig:
    """Shape of the supernet and how it is cut into prunable units.

    Defaults are the paper-size model (12 blocks, d=384, 6 heads, FFN 1536 in 4 chunks,
    conv kernel 31). `ref_frames` is the length (frames after 4x subsampling) at which
    FLOPs costs are counted. `feature_norm` is how the model's log-mel features are
    normalised (LogMel's `normalize`): "utterance" over all of each utterance's frames (the
    default, and what checkpoints written before the field hold), "voiced" over its voiced
    frames alone, so silence around the speech does not change them. `remove_dc` subtracts
    each recording's mean before its features (LogMel's `remove_dc`), so that a DC offset
    does not change them (docs/transcription.md); False by default, as checkpoints written
    before the field load (their models learned their clips' own offsets, and read clean
    clips worse without them), and True in the presets where new runs start (configs/).
    """

    num_layers: int = 12
    d_model: int = 384
    num_heads: int = 6
    ff_dim: int = 1536
    ff_chunks: int = 4
    conv_kernel: int = 31
    vocab_size: int = 512
    num_mel_bins: int = 80
    frontend_channels: tuple[int, int] = (64, 128)
    granularity: str = "component"
    criterion: str = "params"
    budgets: tuple[float, ...] = (0.3, 0.45, 0.6, 0.8, 1.0)
    module_order: tuple[str, ...] = MODULE_KINDS
    ref_frames: int = 250
    dropout: float = 0.1
    feature_norm: str = "utterance"
    remove_dc: bool = False

    def __post_init__(self) -> None:
        self.frontend_channels = tuple(self.frontend_channels)
        self.budgets = check_budgets(self.budgets)
        self.module_order = tuple(self.module_order)
        self.validate()

    def validate(self) -> None:
        for name in ("num_layers", "d_model", "num_heads", "ff_dim", "ff_chunks",
                     "conv_kernel", "vocab_size", "num_mel_bins", "ref_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (the blank and two tokens at least), "
                             f"got {self.vocab_size}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if self.ff_dim % self.ff_chunks:
            raise ValueError(f"ff_dim ({self.ff_dim}) must be divisible by ff_chunks "
                             f"({self.ff_chunks})")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (same padding), got {self.conv_kernel}")
        if self.num_mel_bins % 4:
            raise ValueError(f"num_mel_bins must be divisible by 4, got {self.num_mel_bins}")
        if len(self.frontend_channels) != 2 or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 1
                for c in self.frontend_channels):
            raise ValueError(f"frontend_channels must be two positive ints, "
                             f"got {self.frontend_channels!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, "
                             f"got {self.granularity!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if sorted(self.module_order) != sorted(MODULE_KINDS):
            raise ValueError(f"module_order must be a permutation of {MODULE_KINDS}, "
                             f"got {self.module_order!r}")
        check_budgets(self.budgets)
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, "
                             f"got {self.feature_norm!r}")
        if not isinstance(self.remove_dc, bool):
            raise ValueError(f"remove_dc must be true or false, got {self.remove_dc!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def chunk_dim(self) -> int:
        return self.ff_dim // self.ff_chunks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SupernetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown SupernetConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**values)


def check_budgets(budgets) -> tuple[float, ...]:
    """Budgets must be strictly increasing fractions in (0, 1]; returns them as floats."""
    if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__iter__"):
        raise ValueError(f"budgets must be a sequence of fractions such as (0.5, 1.0), got "
                         f"{budgets!r}")
    try:
        budgets = tuple(float(b) for b in budgets)
    except (TypeError, ValueError):
        raise ValueError(f"budgets must hold numbers, got {budgets!r}") from None
    if not budgets:
        raise ValueError("budgets must not be empty")
    for b in budgets:
        if not 0.0 < b <= 1.0:
            raise ValueError(f"budgets must be in (0, 1], got {b}")
    if any(a >= b for a, b in zip(budgets, budgets[1:])):
        raise ValueError(f"budgets must be strictly increasing, got {budgets}")
    return budgets


def budget_index(budgets: Sequence[float], budget: float) -> int:
    """Index of `budget` among a run's `budgets` (compared to 1e-9)."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool):
        raise TypeError(f"budget must be a number (one of the run's budgets "
                        f"{list(budgets)}), got {budget!r}")
    for index, value in enumerate(budgets):
        if math.isclose(value, budget, abs_tol=1e-9):
            return index
    raise ValueError(f"budget {budget} is not one of the run's budgets {list(budgets)}")


__all__ = ["SupernetConfig", "check_budgets", "budget_index", "MODULE_KINDS", "GRANULARITIES",
           "CRITERIA", "FEATURE_NORMS"]
