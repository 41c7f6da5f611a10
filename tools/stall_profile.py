#!/usr/bin/env python3
"""Where a kernel's warps wait: the SASS instructions with the most warp-stall samples, from Nsight Compute's
PC sampling, each with its two main stall reasons, and the totals per reason.

How the sm90 backward's dQ hand-off was found (bench_results/RESULTS.md, 2026-11-30): 17% of all samples sat
on the first shared-memory store after the consumers' barrier with the dQ writer warp. A stall is charged to
the instruction that waits, so a barrier's wait shows on the instruction after it.

On the GPU machine (one launch of the kernel, here the second backward of a script):

    ncu --clock-control none -k regex:bwd_kernel --launch-skip 2 --launch-count 1 \\
        --section SourceCounters --section WarpStateStats -f -o /tmp/rep python3 my_case.py
    ncu -i /tmp/rep.ncu-rep --page source --csv --print-source sass > /tmp/src.csv
    python tools/stall_profile.py /tmp/src.csv [--top 40]

The CSV may start with a "Kernel Name" line; the table starts at the "Address" header. CPU only.
tools/profile_case.py is such a script for dense causal attention: ours, FlashAttention-2's or cuDNN's.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys

ALL_SAMPLES = "Warp Stall Sampling (All Samples)"
NOT_ISSUED = " (Not Issued)"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_table(text: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the source page: the CSV from its "Address" header on, rows of the header's width."""
    start = text.find('"Address"')
    if start < 0:
        raise ValueError('no "Address" header: not an `ncu --page source --csv` export')
    rows = list(csv.reader(io.StringIO(text[start:])))
    header = rows[0]
    if ALL_SAMPLES not in header or "Source" not in header:
        raise ValueError(f'the export has no "{ALL_SAMPLES}" / "Source" columns (was --section SourceCounters collected?)')
    return header, [r for r in rows[1:] if len(r) == len(header)]


def profile(text: str, top: int = 40) -> str:
    header, rows = read_table(text)
    i_addr, i_src, i_all = header.index("Address"), header.index("Source"), header.index(ALL_SAMPLES)
    # Reasons counted over all samples; the "(Not Issued)" columns are a subset of them.
    reasons = [i for i, h in enumerate(header) if h.startswith("stall_") and not h.endswith(NOT_ISSUED)]
    total = sum(number(r[i_all]) for r in rows)
    if total == 0:
        return "no warp-stall samples in the export"
    by_reason = sorted(((sum(number(r[i]) for r in rows), header[i]) for i in reasons), reverse=True)
    out = [f"{int(total)} samples over {len(rows)} instructions",
           "by reason: " + ", ".join(f"{name[6:]} {v / total:.1%}" for v, name in by_reason if v > 0)]
    for r in sorted(rows, key=lambda r: -number(r[i_all]))[:top]:
        if number(r[i_all]) == 0:
            break
        main = sorted(((number(r[i]), header[i][6:]) for i in reasons), reverse=True)[:2]
        why = " ".join(f"{name} {v / number(r[i_all]):.0%}" for v, name in main if v > 0)
        out.append(f"{number(r[i_all]) / total:6.1%}  {r[i_addr]:>18}  {r[i_src].strip()[:72]:72}  {why}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="`ncu -i REPORT --page source --csv --print-source sass` output")
    ap.add_argument("--top", type=int, default=40, help="instructions to list (default 40)")
    args = ap.parse_args(argv)
    with open(args.csv, errors="replace") as f:
        try:
            print(profile(f.read(), args.top))
        except ValueError as e:
            print(f"stall_profile: {args.csv}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
