#!/usr/bin/env python3
"""Short summary of a compute-sanitizer log (tools/run_gpu_checks.sh sanitize writes one): the summary line of each
tool run, then the racecheck hazards grouped by the pair of source locations they name, most frequent first,
with template arguments and parameter lists dropped from the function names. A full racecheck report of the sm90
kernels is tens of kilobytes of mangled templates; grouped, a hazard points at the two source lines to compare
with the barrier rules of csrc/sm90/pipeline.h.

    python tools/sanitizer_summary.py gpu_out/sanitizer.log [--most 20]
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

RACE = re.compile(r"(?:Error|Warning): Race reported between (\w+) access at (.*)")
OTHER_SIDE = re.compile(r"and (\w+) access at (.*)")


def short_location(text: str) -> str:
    """'void ns::f<...>(T1, ...)::[lambda...]+0x10 in file.h:42 [N hazards]' -> 'ns::f()::[lambda]+0x10 in
    file.h:42' (nested <> and () removed; the hazard count is kept apart)."""
    text = re.sub(r"\s*\[\d+ hazards?\]\s*$", "", text.strip())
    prev = None
    while prev != text:
        prev = text
        text = re.sub(r"<[^<>]*>", "", text)
        text = re.sub(r"\([^()]*\)", "()", text)
    return re.sub(r"^void\s+", "", text).strip()


def summarize(log: str, most: int = 20) -> str:
    lines = log.splitlines()
    out = [ln.strip() for ln in lines if ln.startswith("---") or "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
    pairs: collections.Counter = collections.Counter()
    for i, line in enumerate(lines):
        m = RACE.search(line)
        if not m:
            continue
        other = ""
        for nxt in lines[i + 1 : i + 4]:
            mm = OTHER_SIDE.search(nxt)
            if mm:
                other = f"{mm.group(1)} {short_location(mm.group(2))}"
                break
        pairs[(f"{m.group(1)} {short_location(m.group(2))}", other)] += 1
    if pairs:
        out.append(f"racecheck hazards by location pair ({sum(pairs.values())} reports):")
        for (a, b), n in pairs.most_common(most):
            out.append(f"{n:5d}  {a}\n       <-> {b}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--most", type=int, default=20, help="location pairs shown")
    args = ap.parse_args(argv)
    with open(args.log, errors="replace") as f:
        print(summarize(f.read(), args.most))
    return 0


if __name__ == "__main__":
    sys.exit(main())
