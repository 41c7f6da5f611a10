#!/usr/bin/env python3
"""Forward and backward time of dense causal attention (D=128 bf16) with the installed extension, one line.

The same-run A/Bs of bench_results/RESULTS.md: swap the extension between runs, alternate the variants, compare
the lines. Backward = median(forward + backward) - median(forward), triton's do_bench, two shapes.

    FLASH_TREE_ATTN_PATH=sm90 python3 tools/dense_timing.py LABEL
"""
import sys

import torch
import triton

import flash_tree_attn as fta

SHAPES = [(4, 16384, 16), (16, 4096, 16)]  # (batch, length, heads)


def case(batch: int, length: int, heads: int, d: int = 128) -> str:
    q, k, v = (torch.randn(batch * length, heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    cu = torch.arange(0, (batch + 1) * length, length, device="cuda", dtype=torch.int32)
    grad = torch.randn_like(q)

    def fwd():
        return fta.flash_attn_varlen_func(q, k, v, cu, cu, length, length, causal=True)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fwd().backward(grad)

    f = triton.testing.do_bench(fwd, warmup=50, rep=400)
    fb = triton.testing.do_bench(fwd_bwd, warmup=30, rep=800)
    flops = 4 * batch * length * (length + 1) / 2 * d * heads
    return (f"B{batch} L{length} H{heads}: fwd {f:.3f} ms ({flops / f / 1e9:.0f} TF) "
            f"bwd {fb - f:.3f} ms ({2.5 * flops / (fb - f) / 1e9:.0f} TF)")


if __name__ == "__main__":
    torch.manual_seed(0)
    label = sys.argv[1] if len(sys.argv) > 1 else "current"
    print(label, "|", " | ".join(case(*s) for s in SHAPES), flush=True)
