#!/usr/bin/env python3
"""The sm80 path with Q, K and V head-major in memory against token-major, and FlashAttention-2, at 64k tokens.

Forty-second session (2026-12-04). The benchmark hands FlashAttention-2 (SDPA's flash backend) tensors of shape
(batch, heads, length, D), contiguous: each head's rows are contiguous. The varlen API takes (tokens, heads, D);
packed token-major, one head's rows are a row stride of heads x D apart. Here q, k and v are the same values either
token-major (contiguous) or head-major (a (heads, tokens, D) allocation seen as (tokens, heads, D)); the incoming
gradient is token-major in both (the autograd makes dO contiguous). Run from the repository root:
    FLASH_TREE_ATTN_PATH=sm80 python3 bench_results/sm80-layout-probe-2026-12-04-session42.py
"""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import flash_tree_attn as fta

TOKENS, HEADS, D = 65536, 16, 128


def times(batch: int, length: int, causal: bool, layout: str) -> tuple[float, float]:
    if layout == "fa2":
        q, k, v = (torch.randn(batch, HEADS, length, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))

        def fwd():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        grad = torch.randn_like(q)
    else:
        def make():
            if layout == "token-major":
                return torch.randn(TOKENS, HEADS, D, device="cuda", dtype=torch.bfloat16).requires_grad_()
            return torch.randn(HEADS, TOKENS, D, device="cuda", dtype=torch.bfloat16).transpose(0, 1).requires_grad_()
        q, k, v = make(), make(), make()
        cu = torch.arange(0, (batch + 1) * length, length, device="cuda", dtype=torch.int32)

        def fwd():
            return fta.flash_attn_varlen_func(q, k, v, cu, cu, length, length, causal=causal)
        grad = torch.randn(TOKENS, HEADS, D, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fwd().backward(grad)

    f = triton.testing.do_bench(fwd, warmup=50, rep=300)
    fb = triton.testing.do_bench(fwd_bwd, warmup=30, rep=600)
    return f, fb - f


for causal, length in ((True, 16384), (False, 16384), (True, 4096)):
    row = []
    for layout in ("token-major", "head-major", "fa2"):
        f, b = times(TOKENS // length, length, causal, layout)
        row.append(f"{layout} fwd {f:.3f} bwd {b:.3f}")
    print(f"{'causal' if causal else 'non-causal'} B{TOKENS // length} L{length} ms: " + "; ".join(row), flush=True)
