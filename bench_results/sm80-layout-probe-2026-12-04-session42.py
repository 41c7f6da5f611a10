#!/usr/bin/env python3
"""The sm80 path with Q, K and V head-major in memory against token-major, and FlashAttention-2, at 64k tokens.

Forty-second session (2026-12-04). The benchmark hands FlashAttention-2 (SDPA's flash backend) tensors of shape
(batch, heads, length, D), contiguous: each head's rows are contiguous. The varlen API takes (tokens, heads, D);
packed token-major, one head's rows are a row stride of heads x D apart. Here q, k and v are either token-major or
head-major (tools/dense_timing.dense_inputs); the incoming gradient is token-major in both (the autograd makes dO
contiguous). Call 7 ran the same code written out here. Run from the repository root:
    FLASH_TREE_ATTN_PATH=sm80 python3 bench_results/sm80-layout-probe-2026-12-04-session42.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from dense_timing import dense_inputs, time_ms  # noqa: E402

TOKENS, HEADS = 65536, 16

for causal, length in ((True, 16384), (False, 16384), (True, 4096)):
    row = []
    for layout in ("token-major", "head-major", "fa2"):
        inputs = dense_inputs(TOKENS // length, length, HEADS, causal=causal, sdpa_flash=layout == "fa2",
                              head_major=layout == "head-major")
        f, b = time_ms(*inputs, rep=300)
        row.append(f"{layout} fwd {f:.3f} bwd {b:.3f}")
    print(f"{'causal' if causal else 'non-causal'} B{TOKENS // length} L{length} ms: " + "; ".join(row), flush=True)
