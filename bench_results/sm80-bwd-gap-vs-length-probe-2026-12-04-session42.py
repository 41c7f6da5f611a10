#!/usr/bin/env python3
"""The sm80 backward against FlashAttention-2 (SDPA's flash backend) as the sequence grows, at a fixed token count.

Forty-second session (2026-12-04): the sm80 path's backward is ~5% slower than FlashAttention-2's at dense causal
L=16k and level at L=4k (bench_results/RESULTS.md). This times both at B*L = 64k tokens, H=16, D=128, bf16, for
L = 2k .. 32k, causal and not, to see how the gap moves with the length of the CTAs' walks. Backward ms =
median(forward+backward) - median(forward), as tools/dense_timing.py. Run from the repository root with the sm80
path forced:  FLASH_TREE_ATTN_PATH=sm80 python3 bench_results/sm80-bwd-gap-vs-length-probe-2026-12-04-session42.py
"""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import flash_tree_attn as fta

TOKENS, HEADS, D = 65536, 16, 128


def backward_ms(batch: int, length: int, causal: bool, flash: bool) -> tuple[float, float]:
    if flash:  # SDPA takes (batch, heads, length, head dim)
        q, k, v = (torch.randn(batch, HEADS, length, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))

        def fwd():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        q, k, v = (torch.randn(batch * length, HEADS, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        cu = torch.arange(0, (batch + 1) * length, length, device="cuda", dtype=torch.int32)

        def fwd():
            return fta.flash_attn_varlen_func(q, k, v, cu, cu, length, length, causal=causal)
    grad = torch.randn_like(q)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fwd().backward(grad)

    f = triton.testing.do_bench(fwd, warmup=50, rep=300)
    fb = triton.testing.do_bench(fwd_bwd, warmup=30, rep=600)
    return f, fb - f


for causal in (True, False):
    for length in (2048, 4096, 8192, 16384, 32768):
        ours = backward_ms(TOKENS // length, length, causal, flash=False)
        fa2 = backward_ms(TOKENS // length, length, causal, flash=True)
        print(f"{'causal' if causal else 'non-causal'} B{TOKENS // length} L{length}: fwd ours {ours[0]:.3f} fa2 "
              f"{fa2[0]:.3f} ms; bwd ours {ours[1]:.3f} fa2 {fa2[1]:.3f} ms, ours/fa2 {ours[1] / fa2[1]:.3f}",
              flush=True)
