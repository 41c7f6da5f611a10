#!/usr/bin/env python3
"""What the tree machinery costs on a shape with nothing to skip: a chain of 16384 tokens (32 query / 8 key-value
heads, D=128, bf16) run with tree arrays (start_q = 0, end_k = last token: every tile is classified and walked as a
tree) and without them (plain causal), next to dense causal batches; forward and forward+backward time and
TFLOP/s over the causal pairs (forward+backward counted as 3.5 x the forward's FLOPs), on the kernel path in
FLASH_TREE_ATTN_PATH (sm80, sm90 or auto).

    FLASH_TREE_ATTN_PATH=sm80 python3 tools/bench_tree_overhead.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import import_package  # noqa: E402

fta = import_package()


def measure(name: str, batch: int, seqlen: int, hq: int, hkv: int, tree: bool, d: int = 128) -> str:
    import triton

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(batch * seqlen, hq, d, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(batch * seqlen, hkv, d, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(batch * seqlen, hkv, d, device=dev, dtype=dt, requires_grad=True)
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, device=dev, dtype=torch.int32)
    kw = {}
    if tree:
        kw = dict(tree_dfs_order_start_q=torch.zeros(batch * seqlen, device=dev, dtype=torch.int32),
                  tree_dfs_order_end_k=torch.full((batch * seqlen,), seqlen - 1, device=dev, dtype=torch.int32))
    grad = torch.randn(batch * seqlen, hq, d, device=dev, dtype=dt)

    def fwd():
        return fta.flash_attn_varlen_func(q, k, v, cu, cu, seqlen, seqlen, causal=True, **kw)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fwd().backward(grad)

    flops = 4 * batch * seqlen * (seqlen + 1) / 2 * d * hq
    t_f = triton.testing.do_bench(fwd, warmup=50, rep=300)
    t_fb = triton.testing.do_bench(fwd_bwd, warmup=20, rep=300)
    return (f"{name:28s} fwd {t_f:7.3f} ms {flops / t_f / 1e9:6.1f} TF   "
            f"f+b {t_fb:7.3f} ms {3.5 * flops / t_fb / 1e9:6.1f} TF")


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    torch.manual_seed(0)
    print(f"path {os.environ.get('FLASH_TREE_ATTN_PATH', 'auto')}, {torch.cuda.get_device_name()}")
    print(measure("chain L16k Hq32/8 tree", 1, 16384, 32, 8, True), flush=True)
    print(measure("chain L16k Hq32/8 no tree", 1, 16384, 32, 8, False), flush=True)
    print(measure("dense B4 L16k H16", 4, 16384, 16, 16, False), flush=True)
    print(measure("dense B2 L16k Hq32/8", 2, 16384, 32, 8, False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
