"""Attention core benchmark (issue 3): our gated attention vs SDPA (key-padding mask), SDPA's
flash backend without any mask, and FlexAttention with a block mask; bf16, H100.

    python -m bench.bench_attention [--variants] [--no-flex]

Rows go to bench/results/kernels.json (table "attention"); `ms` is the median of
triton.testing.do_bench (host launch overhead included), `graph_ms` the same call replayed
from a CUDA graph (GPU time only). baseline = SDPA flash without mask (the issue's target);
`vs_sdpa_mask` is the speed-up over SDPA with the key-padding mask from the same run.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from bench.harness import require_gpu, time_graph_ms, time_ms, write_rows
from orthoasr.kernels.gated_attention import gated_attention

CASES = [  # name, B, H, T, Dh, padded, modes
    ("B32·H6·T250·d64", 32, 6, 250, 64, True, ("fwd", "fwd+bwd")),
    ("B16·H6·T750·d64", 16, 6, 750, 64, True, ("fwd", "fwd+bwd")),
    ("B16·H16·T2048·d64 no padding", 16, 16, 2048, 64, False, ("fwd",)),
]
# block-size variants (env overrides read by kernels/gated_attention._config at each launch)
VARIANTS = {  # BLOCK_M,BLOCK_N,warps,stages per kernel
    "fwd": ["64,32,4,2", "128,64,4,3", "128,64,8,3", "64,64,4,3"],
    "dkdv": ["32,64,4,2", "64,64,4,2", "32,128,4,2"],
    "dq": ["64,32,4,2", "64,64,4,2", "128,32,4,2"],
}


def _providers(q, k, v, lengths, flex: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, T, _ = q.shape
    key_ok = (torch.arange(T, device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
    gates = torch.ones(H, device=q.device)

    def ours():
        return gated_attention(q, k, v, lengths, gates)

    def sdpa_mask():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok)

    def sdpa_flash_nomask():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    providers = {"ours": ours, "sdpa_mask": sdpa_mask, "sdpa_flash_nomask": sdpa_flash_nomask}
    if flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def key_padding(b, h, q_idx, kv_idx):
                return kv_idx < lengths[b]

            block_mask = create_block_mask(key_padding, B, None, T, T, device=q.device)
            compiled = torch.compile(flex_attention)
            providers["flex_block_mask"] = lambda: compiled(q, k, v, block_mask=block_mask)
        except Exception as exc:  # noqa: BLE001 - report and go on without it
            print(f"flex attention unavailable: {exc!r}")
    return providers


def _timed(fn, mode, q, k, v, grad):
    if mode == "fwd":
        return fn
    return lambda: torch.autograd.grad(fn(), (q, k, v), grad)


def run(variants: bool, flex: bool):
    """Yields the rows of each case in turn."""
    gen = torch.Generator().manual_seed(0)
    for name, B, H, T, Dh, padded, modes in CASES:
        q, k, v = (torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        if padded:
            lengths = torch.randint(T // 2, T + 1, (B,), generator=gen).cuda()
        else:
            lengths = torch.full((B,), T).cuda()
        grad = torch.randn_like(q)
        providers = _providers(q, k, v, lengths, flex and padded)
        rows = []
        for mode in modes:
            times = {}
            for provider, fn in providers.items():
                timed = _timed(fn, mode, q, k, v, grad)
                row = dict(table="attention", case=name, mode=mode, provider=provider,
                           baseline="sdpa_flash_nomask")
                row["ms"] = time_ms(timed)
                if provider != "flex_block_mask":
                    row["graph_ms"] = round(time_graph_ms(timed), 5)
                times[provider] = row
                rows.append(row)
                print(f"{name:32s} {mode:8s} {provider:20s} {row['ms'] * 1e3:9.1f} us"
                      f"  graph {row.get('graph_ms', float('nan')) * 1e3:9.1f} us", flush=True)
            ours = times["ours"]
            ours["vs_sdpa_mask"] = round(times["sdpa_mask"]["ms"] / ours["ms"], 3)
            ours["vs_sdpa_mask_graph"] = round(times["sdpa_mask"]["graph_ms"] / ours["graph_ms"],
                                               3)
            ours["vs_flash_graph"] = round(times["sdpa_flash_nomask"]["graph_ms"]
                                           / ours["graph_ms"], 3)
            if variants and name.startswith("B32"):
                rows += _variants(name, mode, providers["ours"], q, k, v, grad)
            if variants and name.startswith("B16·H16") and mode == "fwd":
                rows += _variants(name, mode, providers["ours"], q, k, v, grad)
        yield rows


def _variants(name, mode, ours, q, k, v, grad) -> list[dict]:
    rows = []
    kinds = ("fwd",) if mode == "fwd" else ("dkdv", "dq")
    for kind in kinds:
        for cfg in VARIANTS[kind]:
            os.environ[f"ORTHOASR_ATTN_{kind.upper()}"] = cfg
            try:
                ms = time_graph_ms(_timed(ours, mode, q, k, v, grad))
            except Exception as exc:  # noqa: BLE001 - a config may not fit in shared memory
                print(f"variant {kind} {cfg} failed: {exc!r}")
                continue
            finally:
                del os.environ[f"ORTHOASR_ATTN_{kind.upper()}"]
            print(f"{name:32s} {mode:8s} {kind}[{cfg}] graph {ms * 1e3:9.1f} us", flush=True)
            rows.append(dict(table="attention_variants", case=name, mode=mode,
                             provider=f"ours {kind}[{cfg}]", ms=ms, baseline=None,
                             timing="cuda graph"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", action="store_true", help="also time block-size variants")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    args = parser.parse_args()
    require_gpu("bench_attention")
    for rows in run(args.variants, not args.no_flex):   # written case by case
        print(write_rows("kernels", rows))


if __name__ == "__main__":
    main()
