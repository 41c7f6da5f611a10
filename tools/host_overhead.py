#!/usr/bin/env python3
"""Host (CPU) time of one call of the installed extension, and the wall time of calls issued back to back.

A trainer calls attention once per layer and step; where the GPU work of a call is short, the host time of the call
(argument checks, dispatch, autograd, allocations, kernel launches) is what the step waits for. For each case this
prints, per call: the CPU time of a loop of calls that never waits for the GPU, and the wall time of the same loop
including the GPU's finish. With tiny shapes (the default first cases) the loop is bound by the CPU and both figures
are the host time; at the 4k-token cases the wall time is the GPU's, unless a call takes the host longer than the
GPU (then the two figures meet). Dense cases also time PyTorch SDPA's FlashAttention-2 backend (C++ all the way) on
the same shapes, for scale. CPU times move by tens of percent from run to run: compare variants alternated in one
call.

    python3 tools/host_overhead.py LABEL [--cases tiny,4k] [--iters 1000]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

CASES = {"tiny": (256, 4, 4), "4k": (4096, 32, 8)}  # tokens, query heads, key/value heads (head dim 128)


def loop_times(f, iters: int) -> tuple[float, float]:
    """(CPU us, wall us) per call of `iters` back-to-back calls of f, after 20 warm-up calls."""
    for _ in range(20):
        f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    cpu = time.perf_counter() - t0
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return cpu / iters * 1e6, wall / iters * 1e6


def tree_arrays(n: int):
    """A GRPO-shaped tree of n tokens: a prompt of n/4 and three responses."""
    from flash_tree_attn.tree import layout_from_segments

    p = n // 4
    r = (n - p) // 3
    lay = layout_from_segments([[(-1, p), (0, r), (0, r), (0, n - p - 2 * r)]], device="cuda")
    return lay.cu_seqlens, lay.start_q, lay.end_k


def case_rows(label: str, name: str, tree: bool, iters: int) -> list[str]:
    import flash_tree_attn as fta

    n, hq, hkv = CASES[name]
    q = torch.randn(n, hq, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(n, hkv, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    if tree:
        cu, start_q, end_k = tree_arrays(n)
    else:
        cu, start_q, end_k = torch.tensor([0, n], device="cuda", dtype=torch.int32), None, None

    def fwd():
        return fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, tree_dfs_order_start_q=start_q,
                                          tree_dfs_order_end_k=end_k)

    def fwd_no_grad():
        with torch.no_grad():
            return fwd()

    def fwd_bwd():
        return torch.autograd.grad(fwd(), (q, k, v), g)

    timed = [("fwd no_grad", fwd_no_grad), ("fwd", fwd), ("fwd+bwd", fwd_bwd)]
    if not tree:  # SDPA's flash backend on the same dense problem (heads repeated: it takes equal head counts)
        qs, ks, vs = (t.detach().repeat_interleave(hq // t.shape[1], 1).transpose(0, 1).unsqueeze(0).requires_grad_()
                      for t in (q, k, v))
        gs = g.transpose(0, 1).unsqueeze(0)

        def sdpa():
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

        def sdpa_bwd():
            return torch.autograd.grad(sdpa(), (qs, ks, vs), gs)

        timed += [("sdpa-flash fwd", sdpa), ("sdpa-flash fwd+bwd", sdpa_bwd)]
    rows = []
    for what, f in timed:
        cpu, wall = loop_times(f, iters if name == "tiny" else max(iters // 5, 1))
        kind = "tree" if tree else "dense"
        rows.append(f"{label} {name} {kind} {what}: CPU {cpu:.1f} us/call, wall {wall:.1f} us/call")
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("label")
    ap.add_argument("--cases", default="tiny,4k", help=f"comma-separated, of {sorted(CASES)}")
    ap.add_argument("--iters", type=int, default=1000, help="calls per timed loop (the 4k cases take a fifth)")
    args = ap.parse_args(argv)
    args.cases = args.cases.split(",")
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("host_overhead.py times CUDA calls: no CUDA device here")
    for name in args.cases:
        for tree in (True, False):
            for row in case_rows(args.label, name, tree, args.iters):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
