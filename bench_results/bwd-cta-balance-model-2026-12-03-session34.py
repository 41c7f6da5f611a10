"""CPU model of the backward's CTA balance (thirty-fourth session, bench_results/RESULTS.md): each CTA's steps are
its key block's non-empty 64 x 128 tiles times the GQA group, plus 2 for its fixed cost; CTAs go to 132 SMs in
launch order, each to the first free one. Printed: the SMs' busy fraction of the makespan for rank blocks of
1, 2, 4, 8 (tile_order.h's kRankBlock), 16 and one (sequence, head) after the other, and for all CTAs sorted
heaviest first. Run from the repository root with the development venv."""
import sys, heapq
sys.path.insert(0, "tools")
import tile_stats as ts, bench_lib as bl
def makespan(order, sms=132):
    heap=[0.0]*sms
    for w in order:
        t=heapq.heappop(heap); heapq.heappush(heap,t+w)
    return max(heap), sum(order)/sms
for name in ["grpo_P1024_n16_R2048","grpo_P4096_n8_R1024","grpo_P8192_n4_R512","deep_64nodes_128to1024","chain_causal_16384"]:
    segs=bl.build_workload(name); hq,hkv,d=bl.workload_heads(name)
    sq,ek=ts.tree_arrays(segs); c=ts.tile_visible_counts(sq,ek,64,128)
    steps=(c>0).sum(0)*(hq//hkv); nb=len(steps)
    out=[]
    for rb in (1,2,4,8,16,nb):
        order=[]
        for r0 in range(0,nb,rb):
            for h in range(hkv):
                for b in range(r0,min(nb,r0+rb)): order.append(steps[b]+2.0)
        mk,avg=makespan(order); out.append(f"rb{rb if rb!=nb else 'all'} {avg/mk:.3f}")
    srt=sorted([steps[b]+2.0 for h in range(hkv) for b in range(nb)],reverse=True)
    mk,avg=makespan(srt); out.append(f"sorted {avg/mk:.3f}")
    print(name, nb, " ".join(out))
