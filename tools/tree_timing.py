#!/usr/bin/env python3
"""Forward (and backward) time of tree workloads (tools/workloads.json) with the installed extension, one line.

For same-run A/Bs of kernel changes: swap the extension between runs, alternate the variants, compare lines.
The repetition time matters on the H200: with --rep 40 (what `tools/bench.py --quick` uses) grpo_P1024's forward
read 1.86-1.90 ms, with --rep 1500 2.14 ms, for the same build in the same call (bench_results/RESULTS.md,
2026-11-30); compare variants only at the same --rep, and prefer the long one. `tools/bench.py --rep 1500 --only
ours --workloads ...` times the same calls with its checks and baselines; this script is the lean form.

    FLASH_TREE_ATTN_PATH=sm90 python3 tools/tree_timing.py LABEL [--rep 1500] [--warmup 100] [--workloads a,b]
        [--backward [--deterministic]]
"""
import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lib as bl  # noqa: E402

import flash_tree_attn as fta  # noqa: E402
from flash_tree_attn import tree as fta_tree  # noqa: E402

DEFAULT = "grpo_P1024_n16_R2048,deep_64nodes_128to1024,grpo_P4096_n8_R1024"


def workload_inputs(name: str, requires_grad: bool):
    """Random bf16 q, k, v on the GPU for one workload, with its cu_seqlens and tree arrays: (q, k, v, cu,
    start_q, end_k, tokens)."""
    segs = bl.build_workload(name)
    hq, hkv, d = bl.workload_heads(name)
    lay = fta_tree.layout_from_segments([segs], device=None)
    n = lay.start_q.numel()
    q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad)
    k, v = (torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad) for _ in range(2))
    cu, start_q, end_k = (t.to("cuda", torch.int32) for t in (lay.cu_seqlens, lay.start_q, lay.end_k))
    return q, k, v, cu, start_q, end_k, n


def timings(name: str, rep: int, warmup: int, backward: bool, deterministic: bool = False) -> str:
    """Forward ms of one workload, and with `backward` also backward ms (forward+backward - forward), the backward
    with `deterministic` if asked."""
    q, k, v, cu, start_q, end_k, n = workload_inputs(name, backward)

    def fwd():
        return fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, tree_dfs_order_start_q=start_q,
                                          tree_dfs_order_end_k=end_k, deterministic=deterministic)

    with torch.no_grad():
        f = triton.testing.do_bench(fwd, warmup=warmup, rep=rep)
    if not backward:
        return f"{name} {f:.3f}"
    grad = torch.randn_like(q)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fwd().backward(grad)

    fb = triton.testing.do_bench(fwd_bwd, warmup=warmup, rep=rep)
    return f"{name} {f:.3f} / bwd {fb - f:.3f}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("label")
    ap.add_argument("--rep", type=int, default=1500, help="do_bench repetition time, ms")
    ap.add_argument("--warmup", type=int, default=100, help="do_bench warm-up time, ms")
    ap.add_argument("--workloads", default=DEFAULT)
    ap.add_argument("--backward", action="store_true", help="also time forward+backward; prints fwd / bwd ms")
    ap.add_argument("--deterministic", action="store_true", help="the backward with deterministic=True")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [timings(w, args.rep, args.warmup, args.backward, args.deterministic) for w in args.workloads.split(",")]
    print(args.label, "|", " | ".join(rows), flush=True)
