"""bench/gemm_probe.py's product with the FFN's epilogues (TMA both ways, persistent or a
program per tile) against its fp32 reference, so that a GPU run times a correct kernel
(interpreter on the CPU; the probe checks every result on the GPU again before timing)."""

import pytest
import torch

from bench import gemm_probe as gp
from orthoasr.kernels import gated_matmul as gm

DEV = "cuda" if torch.cuda.is_available() else "cpu"
M, K, N = 90, 64, 96          # M ends inside a row tile: the descriptors clip it
TILES = dict(BM=32, BN=32, BK=32, GROUP_M=2)


@pytest.mark.parametrize("programs", [None, 3])      # a program per tile; 3 walk them all
@pytest.mark.parametrize("epi", [gm.EPI_SILU_GATE, gm.EPI_SILU_BWD])
def test_epilogue_product_matches_reference(epi, programs):
    torch.manual_seed(3)
    a = torch.randn(M, K, device=DEV)
    w = torch.randn(N, K, device=DEV) / 8
    bias = torch.randn(N, device=DEV)
    saved = torch.randn(M, N, device=DEV)                # pre, read by the SiLU backward
    aux = saved.clone() if epi == gm.EPI_SILU_BWD else torch.full_like(saved, float("nan"))
    out = torch.full((M, N), float("nan"), device=DEV)
    gp.tma_epi_mm(a, w, out, aux, bias, epi, programs, num_warps=4, num_stages=1,
                  tiles=TILES)
    expected, pre = gp.epilogue_reference(a, w, saved, bias, epi)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(aux, pre, atol=1e-4, rtol=1e-4)     # written, or left alone
