# The sm90 backward's cost per step (bench_results/RESULTS.md, 2026-12-02, twenty-eighth session), run from the
# repository root with the extension in flash_tree_attn/:
#     python3 bench_results/step-cost-probe-2026-12-02-session28.py layouts [NAME,NAME]   # call 1: head layouts, masks
#     python3 bench_results/step-cost-probe-2026-12-02-session28.py orders [NAME,NAME]    # call 4: MHA trees, batches
# Per case: wall forward and forward+backward (do_bench, L2 flushed), the kernels' GPU time under torch.profiler, the
# backward's us per step per SM (non-empty 64 x 128 tiles x query heads / SMs), kernel-level useful TFLOP/s, and the SM
# clock and power nvidia-smi sampled during the forward+backward loop. `tiles` precomputes the trees' tile counts
# (CPU) into order-probe-tiles.json in the working directory.
import sys, os, subprocess, statistics, shutil
from collections import defaultdict
sys.path.insert(0, "tools")
import torch, triton
from torch.profiler import ProfilerActivity, profile
import flash_tree_attn as fta
from flash_tree_attn import tree as fta_tree
import bench_lib as bl
from tile_stats import tile_stats
from kernel_breakdown import short_name

import json
TILES = json.load(open('order-probe-tiles.json')) if os.path.exists('order-probe-tiles.json') else {}
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132

def causal_tiles(L, bm=64, bn=128):
    return sum((min(bm * m + bm, L) - 1) // bn + 1 for m in range(-(-L // bm)))

def run(label, B, L, hq, hkv, tree=None, trees=None, rep=300, iters=10):
    if trees is not None:
        tree = tuple(trees)
    d = 128
    if tree is not None:
        trees = [bl.build_workload(t) if isinstance(t, str) else t for t in (tree if isinstance(tree, tuple) else [tree])]
        lay = fta_tree.layout_from_segments(trees, device=None)
        tiles, pairs = 0, 0
        for t in trees:
            key = repr(t)
            if key not in TILES:
                l1 = fta_tree.layout_from_segments([t], device=None)
                st = tile_stats(l1.start_q, l1.end_k, 64, 128)
                TILES[key] = int(st["full"] + st["partial"])
            tiles += TILES[key]; pairs += bl.count_pairs(t)
        sq, ek = lay.start_q.cuda().int(), lay.end_k.cuda().int()
        B = len(trees); L = max(sum(x for _, x in t) for t in trees)
        cu_t = lay.cu_seqlens.cuda().int()
    else:
        tiles = causal_tiles(L) * B; sq = ek = None
        pairs = B * L * (L + 1) // 2
    n = B * L if tree is None else int(lay.cu_seqlens[-1])
    q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    cu = torch.arange(0, (B + 1) * L, L, device="cuda", dtype=torch.int32) if tree is None else cu_t
    g = torch.randn_like(q)
    def fwd():
        return fta.flash_attn_varlen_func(q, k, v, cu, cu, L, L, causal=True, tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek)
    def fb():
        q.grad = k.grad = v.grad = None
        fwd().backward(g)
    with torch.no_grad():
        f = triton.testing.do_bench(fwd, warmup=50, rep=rep)
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                "-lms", "50"], stdout=subprocess.PIPE, text=True)
    w = triton.testing.do_bench(fb, warmup=50, rep=rep)
    clk = "-"
    if smi is not None:
        smi.terminate(); out = smi.communicate()[0]
        vals = [l.split(",") for l in out.strip().splitlines() if l.strip()]
        try:
            c = [float(a) for a, _ in vals[2:]]; pw = [float(b) for _, b in vals[2:]]
            clk = f"{statistics.median(c):.0f}MHz {statistics.median(pw):.0f}W"
        except Exception as e:
            clk = f"? {e}"
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters): fb()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[short_name(ev.name)] += ev.device_time_total / iters / 1e3
    bk = sum(v for kname, v in per.items() if "bwd_kernel" in kname)
    fk = sum(v for kname, v in per.items() if "fwd_kernel" in kname)
    ew = sum(v for kname, v in per.items() if "bwd_kernel" not in kname and "fwd_kernel" not in kname)
    steps = tiles * hq
    F = 4 * pairs * d * hq
    print(f"{label:16s} B{B} L{L} H{hq}/{hkv}: wall fwd {f:.3f} f+b {w:.3f} (bwd {w - f:.3f}) | kernels fwd {fk:.3f} "
          f"bwd {bk:.3f} other {ew:.3f} | bwd steps/SM {steps / SMS:.0f}, {bk * 1e3 / (steps / SMS):.3f} us/step, "
          f"kernel TF fwd {F / fk / 1e9:.0f} bwd {2.5 * F / bk / 1e9:.0f} | {clk}", flush=True)
    del q, k, v, g
    torch.cuda.empty_cache()

which = sys.argv[1] if len(sys.argv) > 1 else "layouts"
names = sys.argv[2].split(",") if len(sys.argv) > 2 else None
chain = [(-1, 16384)]
def grpo(p, n, r): return [(-1, p)] + [(0, r)] * n
SETS = {
    "layouts": [
        ("chain_tree", dict(B=1, L=16384, hq=32, hkv=8, tree=chain)),
        ("chain_plain", dict(B=1, L=16384, hq=32, hkv=8)),
        ("chain_mha_plain", dict(B=1, L=16384, hq=32, hkv=32)),
        ("chain_mha_tree", dict(B=1, L=16384, hq=32, hkv=32, tree=chain)),
        ("dense_row", dict(B=4, L=16384, hq=16, hkv=16)),
        ("dense_gqa4", dict(B=4, L=16384, hq=16, hkv=4)),
        ("P1024_tree", dict(B=1, L=0, hq=32, hkv=8, tree="grpo_P1024_n16_R2048")),
        ("P1024_mha_tree", dict(B=1, L=0, hq=32, hkv=32, tree="grpo_P1024_n16_R2048")),
    ],
    "orders": [
        ("chain_mha_tree", dict(B=1, L=16384, hq=32, hkv=32, tree=chain)),
        ("P1024_mha_tree", dict(B=1, L=0, hq=32, hkv=32, tree="grpo_P1024_n16_R2048")),
        ("deep_mha_tree", dict(B=1, L=0, hq=32, hkv=32, tree="deep_64nodes_128to1024")),
        ("4xP4096_gqa", dict(B=1, L=0, hq=32, hkv=8, trees=("grpo_P4096_n8_R1024",) * 4)),
        ("8xP1024n8R512", dict(B=1, L=0, hq=32, hkv=8, trees=(grpo(1024, 8, 512),) * 8)),
        ("2xdeep_gqa", dict(B=1, L=0, hq=32, hkv=8, trees=("deep_64nodes_128to1024",) * 2)),
        ("P1024_gqa", dict(B=1, L=0, hq=32, hkv=8, tree="grpo_P1024_n16_R2048")),
        ("chain_gqa", dict(B=1, L=16384, hq=32, hkv=8, tree=chain)),
    ],
}
if which == "tiles":
    for label, kw in SETS["layouts"] + SETS["orders"]:
        if kw.get("tree") is not None or kw.get("trees") is not None:
            for t in (kw["trees"] if kw.get("trees") else [kw["tree"]]):
                t = bl.build_workload(t) if isinstance(t, str) else t
                if repr(t) not in TILES:
                    l1 = fta_tree.layout_from_segments([t], device=None)
                    st = tile_stats(l1.start_q, l1.end_k, 64, 128)
                    TILES[repr(t)] = int(st["full"] + st["partial"])
    json.dump(TILES, open("order-probe-tiles.json", "w"))
    sys.exit(0)
for label, kw in SETS[which]:
    if names is None or label in names:
        run(label, **kw)
