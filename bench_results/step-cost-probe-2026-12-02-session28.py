# Per-step cost of the sm90 backward across head layouts and masks: GQA vs MHA, tree arrays vs plain causal.
# Prints per config: wall fwd / f+b (do_bench), profiled kernel ms (fwd, bwd, elementwise), bwd us per step per SM.
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

SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132

def causal_tiles(L, bm=64, bn=128):
    return sum((min(bm * m + bm, L) - 1) // bn + 1 for m in range(-(-L // bm)))

def run(label, B, L, hq, hkv, tree=None, rep=300, iters=10):
    d = 128
    if tree is not None:
        segs = bl.build_workload(tree) if isinstance(tree, str) else tree
        lay = fta_tree.layout_from_segments([segs], device=None)
        L = lay.start_q.numel(); B = 1
        tiles = int(tile_stats(lay.start_q, lay.end_k, 64, 128)["full"] + tile_stats(lay.start_q, lay.end_k, 64, 128)["partial"])
        sq, ek = lay.start_q.cuda().int(), lay.end_k.cuda().int()
        pairs = bl.count_pairs(segs)
    else:
        tiles = causal_tiles(L) * B; sq = ek = None
        pairs = B * L * (L + 1) // 2
    n = B * L
    q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    cu = torch.arange(0, (B + 1) * L, L, device="cuda", dtype=torch.int32)
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

which = sys.argv[1] if len(sys.argv) > 1 else "all"
chain = [(-1, 16384)]
cfgs = [
    ("chain_tree", dict(B=1, L=16384, hq=32, hkv=8, tree=chain)),
    ("chain_plain", dict(B=1, L=16384, hq=32, hkv=8)),
    ("chain_mha_plain", dict(B=1, L=16384, hq=32, hkv=32)),
    ("chain_mha_tree", dict(B=1, L=16384, hq=32, hkv=32, tree=chain)),
    ("dense_row", dict(B=4, L=16384, hq=16, hkv=16)),
    ("dense_gqa4", dict(B=4, L=16384, hq=16, hkv=4)),
    ("P1024_tree", dict(B=1, L=0, hq=32, hkv=8, tree="grpo_P1024_n16_R2048")),
    ("P1024_mha_tree", dict(B=1, L=0, hq=32, hkv=32, tree="grpo_P1024_n16_R2048")),
]
for label, kw in cfgs:
    if which == "all" or label in which.split(","):
        run(label, **kw)
