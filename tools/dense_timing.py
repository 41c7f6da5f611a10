#!/usr/bin/env python3
"""Forward and backward time of dense causal attention (bf16) with the installed extension, one line.

The same-run A/Bs of bench_results/RESULTS.md: swap the extension between runs, alternate the variants, compare
the lines. Backward = median(forward + backward) - median(forward), triton's do_bench. Head dim 128 times two
shapes; --head-dims 64,96,192,256 times the benchmark's D=64 / D=256 dense shapes (D=96 like D=128, D=192 like
D=256) instead. --sdpa-flash times PyTorch SDPA's FlashAttention-2 backend on the same shapes instead of the
extension, for the same-run comparison of the sm80 path with FlashAttention-2. Scripts time other dense cases
(non-causal, other shapes, head-major inputs) through dense_inputs() and time_ms().

    FLASH_TREE_ATTN_PATH=sm90 python3 tools/dense_timing.py LABEL [--head-dims 128,64,256] [--forward-only]
        [--deterministic] [--sdpa-flash]
"""
import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import flash_tree_attn as fta

SHAPES = {  # head dim -> (batch, length, heads): workloads.json's dense rows, D=96 shaped like D=128's first and
    # D=192 like D=256
    128: [(4, 16384, 16), (16, 4096, 16)],
    64: [(4, 16384, 32)],
    96: [(4, 16384, 16)],
    192: [(4, 16384, 8)],
    256: [(4, 16384, 8)],
}


def dense_inputs(batch: int, length: int, heads: int, d: int = 128, causal: bool = True, deterministic: bool = False,
                 sdpa_flash: bool = False, head_major: bool = False):
    """One dense case: its forward as a closure, the leaf tensors it differentiates and an incoming gradient.

    SDPA takes (batch, heads, length, D). The extension takes (tokens, heads, D): token-major, or with head_major
    each head's rows contiguous (a (heads, tokens, D) allocation seen as (tokens, heads, D)), the way SDPA hands
    its inputs to FlashAttention-2. The extension's gradient is token-major either way."""
    if sdpa_flash:
        q, k, v = (torch.randn(batch, heads, length, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))

        def fwd():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return fwd, (q, k, v), torch.randn_like(q)

    def leaf():
        if head_major:
            t = torch.randn(heads, batch * length, d, device="cuda", dtype=torch.bfloat16).transpose(0, 1)
            return t.requires_grad_()
        return torch.randn(batch * length, heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = leaf(), leaf(), leaf()
    cu = torch.arange(0, (batch + 1) * length, length, device="cuda", dtype=torch.int32)

    def fwd():
        return fta.flash_attn_varlen_func(q, k, v, cu, cu, length, length, causal=causal, deterministic=deterministic)
    return fwd, (q, k, v), torch.randn(batch * length, heads, d, device="cuda", dtype=torch.bfloat16)


def time_ms(fwd, leaves, grad, rep: int = 400, backward: bool = True) -> tuple[float, float | None]:
    """Median forward ms and, with backward, median(forward + backward) - median(forward) (triton's do_bench)."""
    f = triton.testing.do_bench(fwd, warmup=50, rep=rep)
    if not backward:
        return f, None

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fwd().backward(grad)
    return f, triton.testing.do_bench(fwd_bwd, warmup=30, rep=2 * rep) - f


def case(batch: int, length: int, heads: int, d: int = 128, backward: bool = True, deterministic: bool = False,
         sdpa_flash: bool = False) -> str:
    f, b = time_ms(*dense_inputs(batch, length, heads, d, deterministic=deterministic, sdpa_flash=sdpa_flash),
                   backward=backward)
    flops = 4 * batch * length * (length + 1) / 2 * d * heads
    line = f"B{batch} L{length} H{heads} D{d}: fwd {f:.3f} ms ({flops / f / 1e9:.0f} TF)"
    return line if b is None else line + f" bwd {b:.3f} ms ({2.5 * flops / b / 1e9:.0f} TF)"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", nargs="?", default="current")
    parser.add_argument("--head-dims", default="128", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--forward-only", action="store_true", help="time the forward alone")
    parser.add_argument("--deterministic", action="store_true", help="the backward with deterministic=True")
    parser.add_argument("--sdpa-flash", action="store_true",
                        help="time SDPA's FlashAttention-2 backend on the same shapes instead of the extension")
    args = parser.parse_args()
    head_dims = [int(x) for x in args.head_dims.split(",")]
    unknown = [d for d in head_dims if d not in SHAPES]
    if unknown:
        parser.error(f"--head-dims: no shape for {unknown}; choose from {sorted(SHAPES)}")
    torch.manual_seed(0)
    cases = [(*shape, d) for d in head_dims for shape in SHAPES[d]]
    if args.sdpa_flash and args.deterministic:
        parser.error("--deterministic applies to the extension, not to --sdpa-flash")
    rows = [case(*c, backward=not args.forward_only, deterministic=args.deterministic, sdpa_flash=args.sdpa_flash)
            for c in cases]
    print(args.label, "|", " | ".join(rows), flush=True)
