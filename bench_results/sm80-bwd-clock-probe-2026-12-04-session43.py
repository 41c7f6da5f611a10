#!/usr/bin/env python3
"""The sm80 backward or FlashAttention-2's, looped alone for a few seconds at the GPU's sustained clock.

Forty-third session (2026-12-04). The forty-second session found the sm80 path's backward 4% faster than
FlashAttention-2's (SDPA's flash backend) at dense causal L=2k and 5% slower from L=16k, at 64k tokens, H=16, D=128
(bench_results/RESULTS.md). Both were timed in short do_bench loops, which the H200 runs against its 700 W cap at a
clock that depends on the power a kernel draws. This loops one backward (torch.autograd.grad on one forward's
graph, retained, so no forward runs in the loop) for --seconds and prints its mean ms; run under
tools/gpu_clocks.py, the sampled SM clock times the ms gives the cycles. Run from the repository root:
    FLASH_TREE_ATTN_PATH=sm80 python3 tools/gpu_clocks.py --skip-s 4 -- \
        python3 bench_results/sm80-bwd-clock-probe-2026-12-04-session43.py ours --length 32768
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from dense_timing import dense_inputs  # noqa: E402

TOKENS, HEADS = 65536, 16

ap = argparse.ArgumentParser()
ap.add_argument("impl", choices=("ours", "fa2"))
ap.add_argument("--length", type=int, default=32768)
ap.add_argument("--seconds", type=float, default=8.0)
ap.add_argument("--non-causal", action="store_true")
args = ap.parse_args()

torch.manual_seed(0)
fwd, leaves, grad = dense_inputs(TOKENS // args.length, args.length, HEADS, causal=not args.non_causal,
                                 sdpa_flash=args.impl == "fa2")
out = fwd()


def backward():
    torch.autograd.grad(out, leaves, grad, retain_graph=True)


for _ in range(5):  # warm-up
    backward()
torch.cuda.synchronize()
# Iterations per second, from a short timed batch, so that the loop below runs about --seconds.
t0 = time.perf_counter()
for _ in range(5):
    backward()
torch.cuda.synchronize()
iters = max(10, int(args.seconds / ((time.perf_counter() - t0) / 5)))
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(iters):
    backward()
end.record()
torch.cuda.synchronize()
print(f"{args.impl} {'non-causal' if args.non_causal else 'causal'} B{TOKENS // args.length} L{args.length}: "
      f"backward {start.elapsed_time(end) / iters:.3f} ms mean over {iters} back-to-back", flush=True)
