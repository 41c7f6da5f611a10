#!/usr/bin/env python3
"""A CPU model of the deterministic backward's waits, for choosing the order in which a CTA takes its items.

The backward runs a CTA per (key block, key/value head), launched in tile_order.h's order for a tree (every
workload is one: rank blocks of 8 key blocks), each on the first free SM of --sms. A CTA's items are (query head,
query block) pairs of unit cost; deterministic=True adds their dQ tiles to each (query head, query block) in
increasing key block (csrc/dq_order.h), so an item's add waits for the add of the key block before it, and two dQ
buffers let a CTA's compute run at most two items ahead of its adds (each add takes --add-latency items).
Printed: the finish time with deterministic=True over the time without it, per item order:
  head      every query block of one head, then the next head (the non-deterministic backward's order)
  qblock    every head of one query block, then the next block (the deterministic backward's order)
  windowW   windows of W query blocks aligned on multiples of W, head by head inside a window
The model has no memory system: an order's cost in locality (bench_results/RESULTS.md, 2026-12-02: query block by
query block ran 1.4-5.6% slower without deterministic=True) is not in it, nor the cost of the code that walks an
order (twenty-sixth session: windows of 16, the model's pick, gained 0.7-3.5% on the trees through a runtime knob
and lost 0.4-4.4% compiled in, a build that also changed the dQ writer; the producer warpgroup has 24 registers
per thread).

    python tools/det_order_model.py [--workloads a,b] [--orders head,qblock,window16] [--add-latency 0.3]
"""
from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lib as bl  # noqa: E402
from tile_stats import tile_visible_counts, tree_arrays  # noqa: E402

BLOCK_M, BLOCK_N, RANK_BLOCK = 64, 128, 8  # the sm90 backward's tiles at head dim 128; tile_order.h's kRankBlock


def launch_order(key_blocks: int, kv_heads: int) -> list[tuple[int, int]]:
    """(key block, key/value head) of each CTA in launch order, for a tree (tile_order.h's rank blocks)."""
    order = []
    for first in range(0, key_blocks, RANK_BLOCK):
        ranks = min(RANK_BLOCK, key_blocks - first)
        order += [(first + r, h) for h in range(kv_heads) for r in range(ranks)]
    return order


def items(query_blocks: list[int], heads: range, order: str) -> list[tuple[int, int]]:
    """A CTA's (query head, query block) items in the given order."""
    if order == "head":
        return [(h, m) for h in heads for m in query_blocks]
    if order == "qblock":
        return [(h, m) for m in query_blocks for h in heads]
    if order.startswith("window"):
        width = int(order[len("window"):])
        windows: dict[int, list[int]] = {}
        for m in query_blocks:
            windows.setdefault(m // width, []).append(m)
        return [(h, m) for w in sorted(windows) for h in heads for m in windows[w]]
    raise ValueError(f"unknown order {order!r}")


def predecessors(nonempty: np.ndarray) -> dict[tuple[int, int], int]:
    """(query block, key block) -> the key block adding just before it in the deterministic order, or -1."""
    prev = {}
    for m in range(nonempty.shape[0]):
        last = -1
        for n in np.nonzero(nonempty[m])[0]:
            prev[(m, int(n))] = last
            last = int(n)
    return prev


def finish_time(nonempty: np.ndarray, order: str, deterministic: bool, group: int, kv_heads: int, sms: int,
                add_latency: float, prev: dict[tuple[int, int], int] | None = None) -> float:
    """Model time (in items) at which the last CTA ends; nonempty is the (query block, key block) tile map, prev
    its predecessors(), computed here when not given and deterministic."""
    if deterministic and prev is None:
        prev = predecessors(nonempty)
    free = [0.0] * sms
    added = {}  # (query head, query block, key block) -> time its add completes
    launched = finish = 0.0
    for n, kv in launch_order(nonempty.shape[1], kv_heads):
        work = items([int(m) for m in np.nonzero(nonempty[:, n])[0]], range(kv * group, (kv + 1) * group), order)
        launched = max(launched, heapq.heappop(free))  # in-order dispatch onto the first free SM
        computed, adds = launched, []
        for i, (h, m) in enumerate(work):
            computed = max(computed, adds[i - 2] if i >= 2 else 0.0) + 1.0
            ready = max(computed, adds[-1] if adds else 0.0)
            if deterministic and prev[(m, n)] >= 0:
                ready = max(ready, added[(h, m, prev[(m, n)])])
            adds.append(ready + add_latency)
            added[(h, m, n)] = adds[-1]
        end = adds[-1] if adds else launched
        heapq.heappush(free, end)
        finish = max(finish, end)
    return finish


def model(name: str, orders: list[str], sms: int, add_latency: float) -> dict[str, float]:
    """deterministic / non-deterministic finish time of each order for one workload."""
    hq, hkv, _ = bl.workload_heads(name)
    start_q, end_k = tree_arrays(bl.build_workload(name))
    nonempty = tile_visible_counts(start_q, end_k, BLOCK_M, BLOCK_N) > 0
    args = dict(group=hq // hkv, kv_heads=hkv, sms=sms, add_latency=add_latency)
    base = finish_time(nonempty, "head", False, **args)
    prev = predecessors(nonempty)
    return {order: finish_time(nonempty, order, True, prev=prev, **args) / base for order in orders}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", help="comma-separated names (default: every workload of tools/workloads.json)")
    ap.add_argument("--orders", default="head,qblock,window16")
    ap.add_argument("--sms", type=int, default=132, help="SMs (the H200 has 132)")
    ap.add_argument("--add-latency", type=float, default=0.3, help="time of one dQ add, in items")
    args = ap.parse_args(argv)
    names = args.workloads.split(",") if args.workloads else bl.workload_names()
    orders = args.orders.split(",")
    print(f"{'workload':26s} " + " ".join(f"{o:>10s}" for o in orders) + "   (deterministic / non-deterministic)")
    for name in names:
        ratios = model(name, orders, args.sms, args.add_latency)
        print(f"{name:26s} " + " ".join(f"{ratios[o]:10.3f}" for o in orders), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
