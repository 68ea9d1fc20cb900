"""The small frame-row case shared by the row GEMM's and the weight gradients' tests:
3 sequences of up to 11 frames (lengths 11, 4, 1), K = 40 and N = 48 in 4 chunks (of 12
along N or 10 along K: tiles that do not divide them)."""

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, T, K, N, CHUNKS = 3, 11, 40, 48, 4


def frames_case(seed=0):
    """(lengths (B,), a (B*T, K), b (K, N), gates (CHUNKS,) with one dead), seeded."""
    torch.manual_seed(seed)
    lengths = torch.tensor([11, 4, 1], device=DEV)
    a = torch.randn(B * T, K, device=DEV)
    b = torch.randn(K, N, device=DEV)
    gates = torch.tensor([0.5, 0.0, 1.5, 1.0], device=DEV)
    return lengths, a, b, gates


def poisoned(*shape):
    """A NaN-filled tensor: an output element a kernel leaves unwritten shows."""
    return torch.full(shape, float("nan"), device=DEV)
