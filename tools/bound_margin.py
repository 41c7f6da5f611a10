#!/usr/bin/env python3
"""How close out, dq, dk and dv come to the kernel tests' error bound, over many fresh draws of one test case.

tests/test_kernels.py accepts an output when max |ours - fp32 reference| <= 2 x max |reference in the input
precision - fp32 reference| + a small atol (the FlashAttention test convention). A single failure says little
about whether the kernel or the margin is at fault, so this script draws test_grpo_tree's case (two GRPO trees,
2 x group query heads, 2 key/value heads) many times, each draw seeded so it can be regenerated, and prints per
output the distribution of max error / bound (above 1 the test fails) and the seed of the worst draw.

With --emulate the kernels are replaced by an emulation of their numerics: scores, the softmax and dP in
fp32, P and dS rounded to the input dtype before the GEMMs that take them, every gradient summed in fp32 and
rounded once. It shows how close correct numerics alone come to the bound, to set a GPU run's ratios against.
The references (and the emulation) run on the GPU when there is one, as in the tests, else on the CPU.

    python tools/bound_margin.py --runs 200 --path sm80      # the GPU, our kernels on the given path
    python tools/bound_margin.py --runs 200 --emulate         # the emulation (--device cpu|cuda to choose)
    options: --group 1 --head-dim 128 --dtype bf16 --seed 0 --save-worst FILE.pt (that draw's inputs)
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flash_tree_attn.reference import attention_ref, error_bound, visible_mask  # noqa: E402
from flash_tree_attn.tree import layout_from_segments  # noqa: E402

OUTPUTS = ("out", "dq", "dk", "dv")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def draw(seed: int, group: int, head_dim: int, dtype, device):
    """test_grpo_tree's case for one seed: the layout and q, k, v, the output gradient g."""
    rng = random.Random(seed)
    trees = [[(-1, rng.randint(100, 700))] + [(0, rng.randint(1, 400)) for _ in range(rng.randint(2, 6))]
             for _ in range(2)]
    lay = layout_from_segments(trees, device=device)
    gen = torch.Generator().manual_seed(seed)
    n = lay.total_tokens
    q = torch.randn(n, 2 * group, head_dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(n, 2, head_dim, generator=gen).to(device, dtype) for _ in range(2))
    g = torch.randn(n, 2 * group, head_dim, generator=gen).to(device, dtype)
    return lay, q, k, v, g


def emulate(lay, q, k, v, g):
    """out, dq, dk, dv with the kernels' roundings (module docstring), fp32 sums, one rounding at the end."""
    dtype, group = q.dtype, q.shape[1] // k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1])
    acc = {name: torch.zeros(t.shape, dtype=torch.float32, device=q.device)
           for name, t in (("out", q), ("dq", q), ("dk", k), ("dv", v))}
    cu = lay.cu_seqlens.tolist()
    for b in range(len(cu) - 1):
        lo, hi = cu[b], cu[b + 1]
        mask = visible_mask(hi - lo, hi - lo, True, lay.start_q[lo:hi], lay.end_k[lo:hi])
        for h in range(q.shape[1]):
            hk = h // group
            qh, kh, vh, gh = (t[lo:hi, i].float() for t, i in ((q, h), (k, hk), (v, hk), (g, h)))
            s = ((qh @ kh.T) * scale).masked_fill(~mask, float("-inf"))
            lse = torch.logsumexp(s, -1, keepdim=True)
            p = torch.exp(s - lse).nan_to_num(0.0)  # rows that see nothing: P = 0
            p_low = p.to(dtype).float()
            out = p_low @ vh
            acc["out"][lo:hi, h] = out
            dsum = (gh * out.to(dtype).float()).sum(-1, keepdim=True)
            ds_low = (p * (gh @ vh.T - dsum)).to(dtype).float()
            acc["dq"][lo:hi, h] = ds_low @ kh * scale
            acc["dk"][lo:hi, hk] += ds_low.T @ qh * scale
            acc["dv"][lo:hi, hk] += p_low.T @ gh
    return {name: t.to(dtype) for name, t in acc.items()}


def ours(lay, q, k, v, g):
    import flash_tree_attn as fta

    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fta.flash_attn_varlen_func(*leaves, **lay.varlen_kwargs())
    dq, dk, dv = torch.autograd.grad(out, leaves, g)
    return {"out": out.detach(), "dq": dq, "dk": dk, "dv": dv}


def references(lay, q, k, v, g):
    """The fp32 reference and the reference in the input precision, as the kernel tests compute them."""
    kw = dict(cu_seqlens_q=lay.cu_seqlens, cu_seqlens_k=lay.cu_seqlens, causal=True,
              tree_dfs_order_start_q=lay.start_q, tree_dfs_order_end_k=lay.end_k)
    result = []
    for upcast in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = attention_ref(*leaves, upcast=upcast, **kw)
        grads = torch.autograd.grad(out, leaves, g.float() if upcast else g)
        result.append(dict(zip(OUTPUTS, (out.detach(), *grads))))
    return result


def ratios(got: dict, ref: dict, ref_lowp: dict) -> dict:
    """max error / bound per output (test_kernels.py's assert_close_conv passes where this is <= 1)."""
    r = {}
    for name in OUTPUTS:
        a, b, c = got[name].float(), ref[name].float(), ref_lowp[name].float()
        r[name] = (a - b).abs().max().item() / error_bound(name, (c - b).abs().max().item())
    return r


def _quantile(sorted_vals: list[float], f: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(f * len(sorted_vals)))]


def summarize(rows: list[tuple[int, dict]]) -> list[str]:
    lines = []
    for name in OUTPUTS:
        vals = sorted(r[name] for _, r in rows)
        worst_seed = max(rows, key=lambda sr: sr[1][name])[0]
        lines.append(f"{name}: median {_quantile(vals, 0.5):.2f}  p90 {_quantile(vals, 0.9):.2f}  max {vals[-1]:.2f}  "
                     f"above 1: {sum(v > 1 for v in vals)} of {len(vals)}  (worst seed {worst_seed})")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="seed of the first draw; draw i uses seed + i")
    ap.add_argument("--group", type=int, default=1, help="query heads per key/value head")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--emulate", action="store_true", help="the emulation instead of the kernels")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="where the references (and the emulation) run; default the GPU when there is one")
    ap.add_argument("--path", default=None, help="kernel path (FLASH_TREE_ATTN_PATH) for the GPU runs")
    ap.add_argument("--save-worst", default=None, help="torch.save the worst draw's inputs (by dq) here")
    args = ap.parse_args(argv)
    if args.path:
        os.environ["FLASH_TREE_ATTN_PATH"] = args.path
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (device == "cuda" or not args.emulate) and not torch.cuda.is_available():
        print("bound_margin: no GPU; pass --emulate (and --device cpu) for the CPU emulation", file=sys.stderr)
        return 2
    if not args.emulate and device != "cuda":
        print("bound_margin: our kernels run on the GPU; --device cpu goes with --emulate", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    rows = []
    for i in range(args.runs):
        seed = args.seed + i
        lay, q, k, v, g = draw(seed, args.group, args.head_dim, dtype, device)
        got = emulate(lay, q, k, v, g) if args.emulate else ours(lay, q, k, v, g)
        rows.append((seed, ratios(got, *references(lay, q, k, v, g))))
    what = f"emulation ({device})" if args.emulate else (
        f"kernels, path {os.environ.get('FLASH_TREE_ATTN_PATH', 'auto')}")
    print(f"bound_margin: {what}, {args.runs} draws from seed {args.seed}, group {args.group}, head dim "
          f"{args.head_dim}, {args.dtype}; max error / bound per output:")
    for line in summarize(rows):
        print("  " + line)
    if args.save_worst and rows:
        seed = max(rows, key=lambda sr: sr[1]["dq"])[0]
        lay, q, k, v, g = draw(seed, args.group, args.head_dim, dtype, "cpu")
        torch.save({"seed": seed, "segments": lay.segments, "q": q, "k": k, "v": v, "g": g}, args.save_worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
