#!/usr/bin/env python3
"""Dense causal attention, forward and backward, a few times: the process to run under Nsight Compute when a
kernel of ours is compared with FlashAttention-2's or cuDNN's (PyTorch SDPA's flash and cuDNN backends) on the
same shape.

    FLASH_TREE_ATTN_PATH=sm80 ncu --clock-control none -k regex:"bwd_kernel|dq_dk_dv" --launch-skip 1 \\
        --launch-count 1 --set full -f -o /tmp/ours python3 tools/profile_case.py ours --head-dim 256
    ncu --clock-control none -k regex:"bwd_kernel|dq_dk_dv" --launch-skip 1 --launch-count 1 --set full \\
        -f -o /tmp/fa2 python3 tools/profile_case.py fa2 --head-dim 256
    ncu -i /tmp/ours.ncu-rep --page details     # and the same for /tmp/fa2.ncu-rep

The regex takes the backward kernel of ours or FlashAttention-2, and `--launch-skip 1` leaves out the first
call's. cuDNN's kernel names vary with its version: profile `cudnn` without `-k` (`--launch-count 40` covers two
calls) and pick its backward by name and duration. For where the warps wait, collect `--section SourceCounters`
and rank the export with tools/stall_profile.py. The heads default to 2048 / head dim, the benchmark's dense rows.
bench_results/RESULTS.md compares the sm80 backward with FlashAttention-2's this way (fourteenth session) and the
sm90 backward with cuDNN's (nineteenth session).
"""
from __future__ import annotations

import argparse


def default_heads(head_dim: int) -> int:
    """Query heads of the benchmark's dense rows: heads x head dim = 2048."""
    if head_dim <= 0 or 2048 % head_dim:
        raise ValueError(f"--head-dim must divide 2048 to default the heads, got {head_dim}; pass --heads")
    return 2048 // head_dim


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("impl", choices=["ours", "fa2", "cudnn"],
                   help="flash_tree_attn (path from FLASH_TREE_ATTN_PATH), SDPA flash or SDPA cuDNN")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=None, help="default: 2048 / head dim")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--calls", type=int, default=3, help="forward+backward calls (the first warms up)")
    args = p.parse_args(argv)
    if args.heads is None:
        args.heads = default_heads(args.head_dim)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    b, n, h, d = args.batch, args.length, args.heads, args.head_dim
    if args.impl == "ours":
        import flash_tree_attn as fta

        q, k, v = (torch.randn(b * n, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        cu = torch.arange(0, (b + 1) * n, n, device="cuda", dtype=torch.int32)

        def run():
            return fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True)
    else:
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

        backend = SDPBackend.FLASH_ATTENTION if args.impl == "fa2" else SDPBackend.CUDNN_ATTENTION

        def run():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    grad = None
    for _ in range(args.calls):
        out = run()
        grad = torch.randn_like(out) if grad is None else grad
        out.backward(grad)
    torch.cuda.synchronize()
    print(f"{args.impl}: {args.calls} forward+backward calls, B={b} L={n} H={h} D={d} causal bf16")


if __name__ == "__main__":
    main()
