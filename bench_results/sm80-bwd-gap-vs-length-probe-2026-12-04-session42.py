#!/usr/bin/env python3
"""The sm80 backward against FlashAttention-2 (SDPA's flash backend) as the sequence grows, at a fixed token count.

Forty-second session (2026-12-04): the sm80 path's backward is ~5% slower than FlashAttention-2's at dense causal
L=16k and level at L=4k (bench_results/RESULTS.md). This times both at B*L = 64k tokens, H=16, D=128, bf16, for
L = 2k .. 32k, causal and not, to see how the gap moves with the length of the CTAs' walks. Backward ms =
median(forward+backward) - median(forward), through tools/dense_timing.py's helpers (call 6 ran the same code
written out here). Run from the repository root with the sm80 path forced:
    FLASH_TREE_ATTN_PATH=sm80 python3 bench_results/sm80-bwd-gap-vs-length-probe-2026-12-04-session42.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from dense_timing import dense_inputs, time_ms  # noqa: E402

TOKENS, HEADS = 65536, 16

for causal in (True, False):
    for length in (2048, 4096, 8192, 16384, 32768):
        batch = TOKENS // length
        ours = time_ms(*dense_inputs(batch, length, HEADS, causal=causal), rep=300)
        fa2 = time_ms(*dense_inputs(batch, length, HEADS, causal=causal, sdpa_flash=True), rep=300)
        print(f"{'causal' if causal else 'non-causal'} B{batch} L{length}: fwd ours {ours[0]:.3f} fa2 "
              f"{fa2[0]:.3f} ms; bwd ours {ours[1]:.3f} fa2 {fa2[1]:.3f} ms, ours/fa2 {ours[1] / fa2[1]:.3f}",
              flush=True)
