"""One forward+backward's kernels on the GPU timeline: start offset, duration, gap after the previous kernel;
and whether the caching allocator calls cudaMalloc during steady-state calls."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "tools"))
import torch
import triton
from torch.profiler import ProfilerActivity, profile

import flash_tree_attn as fta
from tree_timing import workload_inputs

for name in sys.argv[1].split(","):
    q, k, v, cu, sq, ek, n = workload_inputs(name, requires_grad=True)
    g = torch.randn_like(q)

    def fb():
        out = fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, tree_dfs_order_start_q=sq,
                                         tree_dfs_order_end_k=ek)
        return torch.autograd.grad(out, (q, k, v), g)

    wall = triton.testing.do_bench(fb, warmup=50, rep=300)
    s0 = torch.cuda.memory_stats()
    for _ in range(20):
        fb()
    torch.cuda.synchronize()
    s1 = torch.cuda.memory_stats()
    print(f"== {name}: wall {wall:.3f} ms; cudaMalloc calls in 20 calls: "
          f"{s1.get('num_device_alloc', 0) - s0.get('num_device_alloc', 0)}, frees "
          f"{s1.get('num_device_free', 0) - s0.get('num_device_free', 0)}")
    cache = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for flush in (False, True):
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                if flush:
                    cache.zero_()
                fb()
            torch.cuda.synchronize()
        ev = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
        t0 = ev[0].time_range.start
        prev = None
        print(f"-- flush={flush}: kernel, start us, duration us, gap us")
        for e in ev:
            st, en = e.time_range.start, e.time_range.end
            gap = st - prev if prev is not None else 0
            print(f"  {e.name[:60]:60s} {st - t0:10.1f} {en - st:9.1f} {gap:8.1f}")
            prev = en
