#!/usr/bin/env python3
"""Where an sm90 CTA's time goes: per-CTA timestamps of the backward and per-work-item timestamps of the
forward, summarised.

Needs an extension built from sources with `tools/cta_trace.patch` applied (development only; the patch adds a
trace pointer to the parameter structs, read from FTA_TRACE_FWD / FTA_TRACE_BWD at launch, and timestamps at
fixed points of each CTA or work item). One forward+backward of each workload is traced after ten untraced ones:

    git apply tools/cta_trace.patch && <build>   # e.g. FLASH_TREE_ATTN_PATHS=sm90 FLASH_TREE_ATTN_HEAD_DIMS=128
    FLASH_TREE_ATTN_PATH=sm90 python3 tools/cta_trace.py grpo_P1024_n16_R2048,chain_causal_16384

Slots (16 int64 per row; cycles are the SM's clock64, ns the global timer). A backward row is a CTA (linear block
index); a forward row is a work item (tile_order.h's fwd_item index), since a persistent forward CTA runs several,
and its "start" is when the consumers begin the item (for the CTA's first item, at the CTA's start):
  0 start (cycles), 8 start (ns), 9 end (ns), 10 SM id, 11 steps (forward: key blocks; backward: query tiles over
  all query heads of the group);
  forward: 1 Q in shared memory, 5 the consumers' setup done (their first K wait begins), 2 first K in shared memory,
  3 last PV GEMM retired, 4 epilogue done; and from the producer: 14 it knows the item, 12 it enters produce(), 6 it
  issues Q, 13 it starts waiting for the first K's stage, 7 it issues that K (cycles);
  backward: 1 K/V in shared memory, 2 first stage in, 3 end marker seen, 4 dQ buffers drained, 5 dK/dV stored,
  6 dQ writer done, 7 producer starts its first tile, 12 producer's end marker (cycles).
Rows of no work (query or key blocks past their sequence) leave slot 4 (forward) / 5 (backward) zero and are
skipped; the summary calls every row a CTA. The buffers hold MAX_CTAS rows per launch (the standard workloads
have at most 9024).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SLOTS = 16
MAX_CTAS = 1 << 18  # per traced launch: the kernels write past the buffer for larger grids
END_SLOT = {"fwd": 4, "bwd": 5}
PHASES = {
    "fwd": [("Q ready", 0, 1), ("first K ready", 0, 2), ("mainloop", 2, 3), ("epilogue", 3, 4)],
    "bwd": [("K/V ready", 0, 1), ("first stage ready", 0, 2), ("producer's first tile", 0, 7), ("mainloop", 2, 3),
            ("dQ drain", 3, 4), ("dK/dV epilogue", 4, 5)],
}
# The forward item's timeline around its start, in cycles from the consumers' start (slot 0); negative = before it.
# Where the producer waited for the first K's stage and how long that K was in flight show whether an item's first
# wait is the consumers' setup, the stage or the load (bench_results/RESULTS.md, thirty-ninth session).
ITEM_EVENTS = [("producer knows the item", 14), ("producer enters produce()", 12), ("Q issued", 6),
               ("first K's stage wait begins", 13), ("first K issued", 7), ("Q in shared memory", 1),
               ("consumers' setup done", 5), ("first K in shared memory", 2)]


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y = a x + b."""
    design = np.stack([x, np.ones_like(x)], 1).astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)
    return float(a), float(b)


def summarize(trace: np.ndarray, kind: str) -> dict:
    """Per-CTA phases of one traced kernel launch: `trace` is (CTAs, SLOTS) int64 as the patched kernel wrote it."""
    rows = trace.reshape(-1, SLOTS).astype(np.int64)
    done = rows[rows[:, END_SLOT[kind]] != 0]
    if len(done) < 2:
        raise ValueError(f"{kind}: fewer than two traced CTAs; is the extension built with tools/cta_trace.patch?")
    steps = done[:, 11].astype(np.float64)
    total = done[:, END_SLOT[kind]] - done[:, 0]
    per_step, fixed = linear_fit(steps, total)
    phases = {name: done[:, b] - done[:, a] for name, a, b in PHASES[kind]}
    loop_per_step, loop_fixed = linear_fit(steps, phases["mainloop"])
    # Item events (forward), where the build records them (traces of older patches leave the producer's slots zero).
    events = {}
    if kind == "fwd" and np.all(done[:, 14] != 0):
        events = {name: done[:, slot] - done[:, 0] for name, slot in ITEM_EVENTS}
        events["first K in flight"] = events["first K in shared memory"] - events["first K issued"]
    # Gaps between consecutive CTAs on one SM, and how much of the launch's SM time CTAs occupy.
    sm, start, end = done[:, 10], done[:, 8], done[:, 9]
    order = np.lexsort((start, sm))
    sm, start, end = sm[order], start[order], end[order]
    same_sm = sm[1:] == sm[:-1]
    gaps = (start[1:] - end[:-1])[same_sm]
    span = end.max() - start.min()
    sms = np.unique(sm)
    last_end = np.array([end[sm == s].max() for s in sms]) - start.min()
    return {
        "ctas": len(done), "steps_mean": steps.mean(), "steps_max": steps.max(),
        "cycles_per_step": per_step, "fixed_cycles": fixed, "loop_cycles_per_step": loop_per_step,
        "loop_fixed_cycles": loop_fixed, "phases": phases, "events": events, "gaps_ns": gaps, "span_ns": float(span),
        "occupied": float((end - start).sum() / (span * len(sms))), "last_end_ns": last_end,
    }


def report(name: str, kind: str, s: dict) -> str:
    def dist(x):
        return f"med {np.median(x):8.0f} mean {np.mean(x):8.0f} p90 {np.percentile(x, 90):8.0f}"

    lines = [f"== {name} {kind}: {s['ctas']} CTAs, steps mean {s['steps_mean']:.1f} max {s['steps_max']:.0f}",
             f"   total cycles = {s['cycles_per_step']:.0f} * steps + {s['fixed_cycles']:.0f}  (fixed = "
             f"{s['fixed_cycles'] / s['cycles_per_step']:.2f} steps)"]
    lines += [f"   {k:24s} {dist(v)}" for k, v in s["phases"].items()]
    if s["events"]:
        lines.append("   item timeline, cycles from the consumers' start:")
        lines += [f"     {k:30s} {dist(v)}" for k, v in s["events"].items()]
    lines.append(f"   mainloop cycles = {s['loop_cycles_per_step']:.0f} * steps + {s['loop_fixed_cycles']:.0f}")
    g = s["gaps_ns"]
    gap = f"med {np.median(g):.0f} mean {g.mean():.0f}" if len(g) else "none"
    lines.append(f"   launch span {s['span_ns'] / 1e3:.1f} us; CTAs occupy {s['occupied']:.3f} of the SMs' time; "
                 f"gap between CTAs on an SM (ns): {gap}")
    last = s["last_end_ns"] / 1e3
    lines.append(f"   per-SM last CTA end (us): min {last.min():.1f} med {np.median(last):.1f} max {last.max():.1f}")
    return "\n".join(lines)


def main(workloads: list[str]) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tree_timing import workload_inputs

    import flash_tree_attn as fta

    for name in workloads:
        torch.manual_seed(0)
        q, k, v, cu, start_q, end_k, n = workload_inputs(name, True)
        grad = torch.randn_like(q)
        buffers = {kind: torch.zeros(MAX_CTAS * SLOTS, dtype=torch.int64, device="cuda") for kind in ("fwd", "bwd")}

        def run():
            q.grad = k.grad = v.grad = None
            fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, tree_dfs_order_start_q=start_q,
                                       tree_dfs_order_end_k=end_k).backward(grad)

        for _ in range(10):
            run()
        torch.cuda.synchronize()
        os.environ["FTA_TRACE_FWD"] = str(buffers["fwd"].data_ptr())
        os.environ["FTA_TRACE_BWD"] = str(buffers["bwd"].data_ptr())
        run()
        torch.cuda.synchronize()
        del os.environ["FTA_TRACE_FWD"], os.environ["FTA_TRACE_BWD"]
        for kind, buf in buffers.items():
            print(report(name, kind, summarize(buf.cpu().numpy(), kind)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    main(sys.argv[1].split(","))
