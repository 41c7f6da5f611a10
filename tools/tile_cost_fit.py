#!/usr/bin/env python3
"""What a tree tile costs: fits a kernel's times over the standard tree workloads to its tiles, on the CPU.

Takes the lines that tools/tree_timing.py printed on the GPU machine (`LABEL | workload ms | ...`, with
--backward `workload ms / bwd ms`) and, for each label, fits

    time = a * full tiles + b * partial tiles + c * CTAs

over the workloads by least squares, with the tiles and CTAs of each workload counted for the kernel's tile
shape (tools/tile_stats.py). It prints a, b and c (microseconds of the kernel's time per tile step or CTA),
partial / full and CTA / full, and each workload's residual, then the same without the CTA term. A tile step
is one tile for one query head: a backward CTA owns a key block of one key/value head and visits each tile
once per query head of its group. Repeated lines of one label are averaged. With five workloads and three
terms the fit is a description, not a proof: a kind of tile costs what the time of the workloads that have
many of them says, whatever happens there (bench_results/RESULTS.md, 2026-11-30, has the fits of the sm90
and sm80 kernels and what else was measured).

    python tools/tile_cost_fit.py --kernel sm90-bwd bench_results/bench-h200-2026-11-30-experiment-session10-call-a.txt
    python tools/tile_cost_fit.py --kernel sm90-fwd --label s10kfirst FILE
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tile_stats  # noqa: E402

# Tile shape (query rows, keys) of each kernel at head dim 128, and whether its CTA owns a key block (the
# backward, whose '/ bwd' times it fits): tile_stats.py's list, named sm80-fwd, sm80-bwd, ...
KERNELS = {label.replace(" ", "-"): (bm, bn, per_key_block) for label, bm, bn, per_key_block in tile_stats.KERNEL_TILES}
_ENTRY = re.compile(r"^(\S+) ([0-9.]+)(?: / bwd ([0-9.]+))?$")


def parse_timings(lines, backward: bool) -> dict[str, dict[str, float]]:
    """{label: {workload: mean ms}} from tree_timing.py lines; other lines (headers, summaries) are skipped.
    `backward` takes the `/ bwd` times, which only --backward lines have."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 2 or not parts[0] or " " in parts[0]:
            continue
        for entry in parts[1:]:
            m = _ENTRY.match(entry)
            if not m:
                continue
            value = m.group(3) if backward else m.group(2)
            if value is not None:
                sums[parts[0]][m.group(1)].append(float(value))
    return {label: {w: sum(v) / len(v) for w, v in per.items()} for label, per in sums.items() if per}


def fit(times: dict[str, float], counts: dict[str, tuple[float, float, float]], with_cta: bool = True):
    """Least squares of times[w] (ms) on counts[w] = (full tile steps, partial tile steps, CTAs).
    Returns (coefficients in microseconds, {workload: predicted / measured - 1})."""
    names = [w for w in times if w in counts]
    terms = 3 if with_cta else 2
    if len(names) < terms:
        raise ValueError(f"{len(names)} workload(s) with both a time and tile counts; the fit of {terms} terms "
                         f"needs at least {terms}")
    a = np.array([counts[w][:terms] for w in names], dtype=float)
    y = np.array([times[w] for w in names], dtype=float)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    pred = a @ coef
    return coef * 1000.0, {w: float(p / t - 1.0) for w, p, t in zip(names, pred, y)}


def workload_counts(names, kernel: str) -> dict[str, tuple[float, float, float]]:
    """(full tile steps, partial tile steps, CTAs) per workload for the kernel's tiles (tile_stats.py)."""
    import bench_lib as bl

    block_m, block_n, backward = KERNELS[kernel]
    counts = {}
    for name in names:
        hq, hkv, _ = bl.workload_heads(name)
        s = tile_stats.tile_stats(*tile_stats.tree_arrays(bl.build_workload(name)), block_m, block_n)
        steps = hq // hkv if backward else 1  # tile visits per CTA's tile: each query head of the group
        ctas = len(s["tiles_per_key_block"] if backward else s["tiles_per_query_block"])
        counts[name] = (s["full"] * steps, s["partial"] * steps, ctas)
    return counts


def report(label: str, times: dict[str, float], counts) -> list[str]:
    out = [f"{label}: {len(times)} workloads"]
    for with_cta in (True, False):
        coef, resid = fit(times, counts, with_cta)
        line = f"  full {coef[0]:.4f} us, partial {coef[1]:.4f} us (x{coef[1] / coef[0]:.2f})"
        line += f", CTA {coef[2]:.4f} us (x{coef[2] / coef[0]:.1f} full)" if with_cta else ", no CTA term"
        out.append(line + "; residuals " + ", ".join(f"{w} {r:+.1%}" for w, r in resid.items()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", help="tree_timing.py output (other lines are ignored)")
    ap.add_argument("--kernel", required=True, choices=sorted(KERNELS),
                    help="whose tiles to count; the -bwd kernels fit the '/ bwd' times")
    ap.add_argument("--label", action="append", help="fit only these labels (default: every label)")
    args = ap.parse_args(argv)
    timings = parse_timings(Path(args.file).read_text().splitlines(), KERNELS[args.kernel][2])
    if args.label:
        missing = [x for x in args.label if x not in timings]
        if missing:
            ap.error(f"no timings for label(s) {missing} in {args.file}; it has {sorted(timings)}")
        timings = {x: timings[x] for x in args.label}
    if not timings:
        ap.error(f"no tree_timing.py lines{' with / bwd times' if KERNELS[args.kernel][2] else ''} in {args.file}")
    counts = workload_counts(sorted({w for t in timings.values() for w in t}), args.kernel)
    for label, times in timings.items():
        try:
            print("\n".join(report(label, times, counts)))
        except ValueError as e:
            print(f"{label}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
