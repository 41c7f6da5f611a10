#!/usr/bin/env python3
"""Where a tree workload's forward+backward time goes, kernel by kernel, with the installed extension.

Runs forward+backward of each workload (tools/workloads.json) under torch.profiler and prints, per workload, the
GPU time per call of every kernel launched (our attention kernels, the backward's element-wise kernels before
and after it, the block-bounds kernel, PyTorch's fills and copies), its share of the GPU total, and the wall time
of one call measured without the profiler (do_bench: L2 flushed before each call, where the profiled calls run
back to back, so the two differ by cache and clock effects as well as by any idle time between launches).

    FLASH_TREE_ATTN_PATH=sm90 python3 tools/kernel_breakdown.py [--iters 20] [--workloads a,b]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT = "grpo_P1024_n16_R2048,deep_64nodes_128to1024,grpo_P4096_n8_R1024,grpo_P8192_n4_R512,chain_causal_16384"


def mangled_scope(name: str) -> str | None:
    """The nested name (a::b::c) at the start of an Itanium-mangled name (_ZN<len><id>...), which the profiler
    reports for kernels whose template arguments are too long for it to demangle (the sm90 backward's TMA
    descriptor types); None for other names."""
    if not name.startswith("_ZN"):
        return None
    parts, i = [], 3
    while i < len(name) and name[i].isdigit():
        j = i
        while j < len(name) and name[j].isdigit():
            j += 1
        length = int(name[i:j])
        parts.append(name[j : j + length])
        i = j + length
    return "::".join(parts) if parts else None


def short_name(name: str, width: int = 70) -> str:
    """A kernel's name without its template arguments, cut to `width`."""
    scope = mangled_scope(name)
    if scope is not None:
        return scope[:width]
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    text = "".join(out).replace("void ", "")
    return text[:width]


def summarize(name: str, tokens: int, wall_ms: float, kernel_us: dict[str, float], iters: int) -> list[str]:
    """The printed lines: a header (wall time, GPU busy time and its share), then one line per kernel, the
    largest first, with its GPU ms per call and share of the GPU total. kernel_us: total microseconds per kernel
    name over `iters` calls."""
    total = sum(kernel_us.values()) / iters / 1e3
    lines = [f"{name}: {tokens} tokens, wall {wall_ms:.3f} ms per forward+backward, GPU busy {total:.3f} ms "
             f"({100 * total / wall_ms:.1f}%)"]
    for kname, us in sorted(kernel_us.items(), key=lambda kv: -kv[1]):
        ms = us / iters / 1e3
        lines.append(f"  {ms:8.3f} ms {100 * ms / total:5.1f}%  {kname}")
    return lines


def breakdown(name: str, iters: int) -> list[str]:
    import torch
    import triton
    from torch.profiler import ProfilerActivity, profile
    from tree_timing import workload_inputs

    import flash_tree_attn as fta

    q, k, v, cu, start_q, end_k, n = workload_inputs(name, requires_grad=True)
    grad = torch.randn_like(q)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        out = fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, tree_dfs_order_start_q=start_q,
                                         tree_dfs_order_end_k=end_k)
        out.backward(grad)

    wall = triton.testing.do_bench(fwd_bwd, warmup=50, rep=300)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fwd_bwd()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[short_name(ev.name)] += ev.device_time_total
    return summarize(name, n, wall, per_kernel, iters)


if __name__ == "__main__":
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20, help="profiled forward+backward calls per workload")
    ap.add_argument("--workloads", default=DEFAULT)
    args = ap.parse_args()
    torch.manual_seed(0)
    for w in args.workloads.split(","):
        print("\n".join(breakdown(w, args.iters)), flush=True)
