import sys, heapq
sys.path.insert(0, "tools")
import numpy as np
import tile_stats as ts, bench_lib as bl
for name in ["grpo_P1024_n16_R2048","grpo_P4096_n8_R1024","grpo_P8192_n4_R512","deep_64nodes_128to1024","chain_causal_16384"]:
    segs = bl.build_workload(name)
    hq, hkv, d = bl.workload_heads(name)
    sq, ek = ts.tree_arrays(segs)
    c = ts.tile_visible_counts(sq, ek, 64, 128)  # (m blocks, n blocks)
    steps = (c > 0).sum(0) * (hq // hkv)  # per key block CTA, walking the group's q heads
    nb = len(steps)
    # CTA order: rank blocks of 8 over (kv heads)
    order = []
    for r0 in range(0, nb, 8):
        for h in range(hkv):
            for b in range(r0, min(nb, r0 + 8)):
                order.append(steps[b] + 2.0)  # + ~2 steps fixed per CTA
    sms = 132
    heap = [0.0] * sms
    for w in order:
        t = heapq.heappop(heap); heapq.heappush(heap, t + w)
    mk = max(heap); avg = sum(order) / sms
    print(f"{name}: ctas {len(order)} max CTA {max(order):.0f} steps, avg per SM {avg:.0f}, greedy makespan {mk:.0f} -> {avg/mk:.3f} busy")
