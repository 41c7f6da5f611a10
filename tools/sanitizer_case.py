#!/usr/bin/env python3
"""Small forward + backward cases for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tools/sanitizer_case.py [--no-repeat]
    (tools/run_gpu_checks.sh sanitize does this with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that every tensor is
    its own allocation and out-of-bounds accesses are not hidden inside the caching allocator's blocks)

Three packed trees (ragged lengths that do not fill the tiles, a one-token leaf, a chain), bf16, GQA 4/2 heads,
every head-dim bucket the extension was built with (64, 96, 128, 192, 256; on Hopper 192 and 256 run the backward
whose warpgroups split the head dim, and 96 the one whose dQ stores exchange no column groups), tree-masked and
plain causal, plus a deterministic backward; and, at one head dim (128 where built), the three trees repeated 24
times, so that the forward and backward have more tiles than the GPU has SMs and each persistent CTA of the sm90
path runs several, one after the other (with the backward deterministic too: CTAs then wait on each other's dQ
additions). --no-repeat skips those (racecheck takes minutes over each; run_gpu_checks.sh passes it to racecheck
only). Each output is checked against flash_tree_attn.reference.attention_ref (fp32).
Exit status 0 when every case ran and matched, 1 otherwise; a head dim the build lacks is skipped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
try:
    import flash_tree_attn  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))
from flash_tree_attn import _ops, flash_attn_varlen_func  # noqa: E402
from flash_tree_attn.reference import attention_ref  # noqa: E402
from flash_tree_attn.tree import layout_from_segments  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
import generate_kernels  # noqa: E402

TREES = [
    [(-1, 70), (0, 33), (0, 50), (1, 17), (2, 40), (2, 1)],  # 211 tokens
    [(-1, 5), (0, 130), (0, 64)],  # 199 tokens: a short prompt, long branches
    [(-1, 37)],  # a chain
]
HQ, HKV = 4, 2
TOL = 1e-2


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_case(d: int, tree: bool, deterministic: bool, device="cuda", dtype=torch.bfloat16,
             repeat: int = 1) -> list[str]:
    dev = torch.device(device)
    lay = layout_from_segments(TREES * repeat, device=dev)
    n = int(lay.cu_seqlens[-1].item())
    q = torch.randn(n, HQ, d, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(n, HKV, d, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(n, HKV, d, device=dev, dtype=dtype, requires_grad=True)
    sq, ek = (lay.start_q, lay.end_k) if tree else (None, None)
    out = flash_attn_varlen_func(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen,
                                 causal=True, tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek,
                                 deterministic=deterministic)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    if dev.type == "cuda":
        torch.cuda.synchronize()

    qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    ref = attention_ref(qf, kf, vf, cu_seqlens_q=lay.cu_seqlens, cu_seqlens_k=lay.cu_seqlens, causal=True,
                        tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek)
    rq, rk, rv = torch.autograd.grad(ref, (qf, kf, vf), g.float())
    problems = []
    for name, got, want in (("out", out, ref), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        if not torch.isfinite(got).all():
            problems.append(f"{name} has non-finite values")
            continue
        e = rel(got, want)
        if e > TOL:
            problems.append(f"{name} rel err {e:.2e} > {TOL}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-repeat", action="store_true",
                    help="skip the repeated trees (racecheck takes minutes over each of them)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitizer_case: no CUDA GPU")
        return 1
    _ops.require_extension()
    # Every head-dim bucket the build holds, of those tools/generate_kernels.py lists.
    built = _ops.build_info().get("head_dims") or generate_kernels.HEAD_DIMS
    dims = [d for d in generate_kernels.HEAD_DIMS if d in built]
    if not dims:
        print(f"sanitizer_case: the extension has none of head dims {generate_kernels.HEAD_DIMS} (built: {built})")
        return 1
    torch.manual_seed(0)
    failed = ran = 0
    # The repeated trees at one head dim only, to keep the sanitizer runs short: D=128 where built (the persistent
    # sm90 forward covers 64-128).
    many = 128 if 128 in dims else min(dims)
    for d in dims:
        cases = [(True, False, 1), (False, False, 1), (True, True, 1)]
        cases += [(True, False, 24), (True, True, 24)] if d == many and not args.no_repeat else []
        for tree, det, repeat in cases:
            label = f"D={d} {'tree' if tree else 'causal'}{' deterministic' if det else ''}"
            label += f" x{repeat}" if repeat > 1 else ""
            start = time.monotonic()
            try:
                problems = run_case(d, tree, det, repeat=repeat)
            except Exception as e:  # noqa: BLE001 - report every case
                problems = [f"{type(e).__name__}: {e}"]
            ran += 1
            failed += bool(problems)
            verdict = "OK" if not problems else "FAIL " + "; ".join(problems)
            print(f"sanitizer_case: {label}: {verdict} ({time.monotonic() - start:.0f} s)", flush=True)
    print(f"sanitizer_case: {ran - failed}/{ran} cases OK")
    return 0 if failed == 0 and ran else 1


if __name__ == "__main__":
    sys.exit(main())
