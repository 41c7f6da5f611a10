#!/usr/bin/env python3
"""SM clock, power and clock-event reasons of the GPU while a command runs, sampled with nvidia-smi.

Tells whether a variant that is slower in a sustained benchmark needs more cycles or only ran at a lower clock:
the H200 runs against its 700 W cap in long runs, so a kernel that draws more power gets a lower clock. How it
was used (bench_results/RESULTS.md, 2026-11-30, ninth session): a persistent forward ran the chain at a higher
median clock than the kept forward (1672-1680 vs 1620-1635 MHz) and was still slower, so it needed 7% more cycles.

    python tools/gpu_clocks.py [--interval-ms 50] [--skip-s 1] [--gpu 0] -- python3 tools/tree_timing.py base

The command's own output comes first, then one line: the samples taken while it ran (without its first --skip-s
seconds, its start-up and warm-up), the SM clock's median and minimum, the median power, and the clock-event
reasons seen (nvidia-smi's bit masks: 0x4 is the software power cap, 0x0 none) with their counts. The exit
status is the command's.
"""
from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import threading
import time

# Older drivers call the reasons "clocks_throttle_reasons".
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")


def parse_sample(line: str) -> tuple[float, float, str] | None:
    """One `--format=csv,noheader,nounits` line of clocks.sm, power.draw, reasons -> (MHz, W, reasons), or None
    for anything else (an error message, a value nvidia-smi reports as [N/A])."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3:
        return None
    try:
        return float(parts[0]), float(parts[1]), parts[2]
    except ValueError:
        return None


def summarize(samples: list[tuple[float, float, str]]) -> str:
    """The one-line summary of (MHz, W, reasons) samples."""
    if not samples:
        return "no samples (the command ran shorter than --skip-s, or nvidia-smi reported nothing)"
    clocks = [s[0] for s in samples]
    power = [s[1] for s in samples]
    seen = ", ".join(f"{r} x{n}" for r, n in collections.Counter(s[2] for s in samples).most_common())
    return (f"{len(samples)} samples: SM clock median {statistics.median(clocks):.0f} MHz (min {min(clocks):.0f}), "
            f"power median {statistics.median(power):.0f} W, reasons {seen}")


def reason_field(gpu: str) -> str:
    for field in REASON_FIELDS:
        r = subprocess.run(["nvidia-smi", "-i", gpu, f"--query-gpu={field}", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return field
    raise SystemExit("nvidia-smi knows neither " + " nor ".join(REASON_FIELDS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval-ms", type=int, default=50)
    ap.add_argument("--skip-s", type=float, default=1.0, help="leave out the command's first seconds")
    ap.add_argument("--gpu", default="0", help="nvidia-smi -i index")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    if args.interval_ms < 10:
        ap.error(f"--interval-ms must be at least 10, got {args.interval_ms}")

    if shutil.which("nvidia-smi") is None:
        raise SystemExit("gpu_clocks: nvidia-smi is not on PATH (it samples the GPU's clocks); run this on the GPU "
                         "machine")
    query = f"clocks.sm,power.draw,{reason_field(args.gpu)}"
    smi = subprocess.Popen(["nvidia-smi", "-i", args.gpu, f"--query-gpu={query}", "--format=csv,noheader,nounits",
                            "-lms", str(args.interval_ms)], stdout=subprocess.PIPE, text=True)
    timed: list[tuple[float, str]] = []

    def read() -> None:
        for line in smi.stdout:
            timed.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    try:
        rc = subprocess.run(command).returncode
    finally:
        end = time.monotonic()
        smi.terminate()
        smi.wait()
        reader.join(timeout=5)
    samples = [s for t, line in timed if start + args.skip_s <= t <= end and (s := parse_sample(line)) is not None]
    print("gpu_clocks: " + summarize(samples), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
