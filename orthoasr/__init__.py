"""orthoasr: Conformer-CTC supernet training with OrthoSoftmax, on Triton kernels."""

from .backend import get_backend, set_backend, set_kernel_masks
from .config import SupernetConfig
from .export import extract_subnet, load_subnet
from .losses import ctc_loss
from .model import ConformerSupernet
from .ortho import (
    OrthoSoftmaxResult,
    PenaltyScale,
    freeze_masks,
    gamma_for,
    ortho_softmax,
    simple_topk,
    temperature,
    unit_ranking,
)
from .recognizer import Recognizer
from .timestamps import Transcript, Word
from .units import Unit, enumerate_units, subnet_cost, unit_costs

__version__ = "0.1.0"

__all__ = [
    "SupernetConfig", "Unit", "enumerate_units", "unit_costs", "subnet_cost",
    "ortho_softmax", "simple_topk", "OrthoSoftmaxResult", "temperature", "gamma_for",
    "PenaltyScale", "unit_ranking", "freeze_masks", "set_backend", "get_backend",
    "set_kernel_masks", "ConformerSupernet", "extract_subnet", "load_subnet", "ctc_loss",
    "Recognizer", "Transcript", "Word",
]
