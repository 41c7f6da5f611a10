#!/usr/bin/env python3
"""A/B of prebuilt extensions on one GPU: each variant's `_C.abi3.so` (with its build-info file when given) is
put in place in turn and `tools/bench.py` runs on it in a fresh process; variants alternate round by round
(A B A B ...), so the machine's drift shows as the spread between rounds instead of as a difference between
variants. Prints ours' rows, forward / forward+backward TFLOP/s, one line per workload, method and variant.

This is how this project compares a kernel change with its base (bench_results/RESULTS.md, the A/B tables):
build both extensions on a development machine (`tools/dev_build.sh DEST` leaves the .so and its build info
in DEST; a head-dim / dtype subset keeps that short), carry them to the GPU machine, and run there

    python tools/ab_bench.py --variant base=.so/base.so --variant new=.so/new.so:.so/new_build_info.json \\
        --rounds 2 -- --quick --paths sm90 --only ours,dense_ours --workloads chain_causal_16384

Everything after `--` goes to tools/bench.py (not --out-json: each run writes its own). The extension that
was in place (and its build info) is put back at the end, also after an error or Ctrl-C; where there was none,
none is left.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flash_tree_attn"
EXTENSION = PACKAGE / "_C.abi3.so"
BUILD_INFO = PACKAGE / "_build_info.json"


def parse_variant(text: str) -> tuple[str, Path, Path | None]:
    """'NAME=SO[:BUILD_INFO]' -> (name, so path, build-info path or None)."""
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.so[:BUILD_INFO.json], got {text!r}")
    so, _, info = paths.partition(":")
    return name, Path(so), Path(info) if info else None


def ours_rows(bench_json: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """{(workload, method): (fwd TFLOP/s, fwd+bwd TFLOP/s)} of the `ours*` rows a bench.py JSON holds (nan
    where a number is missing, e.g. a row that failed or was skipped)."""
    out = {}
    for r in bench_json.get("rows", []):
        if str(r.get("method", "")).startswith("ours"):
            ok = r.get("status") == "ok"
            out[(r["workload"], r["method"])] = (float(r.get("fwd_tflops") or "nan") if ok else float("nan"),
                                                 float(r.get("fwdbwd_tflops") or "nan") if ok else float("nan"))
    return out


def table(results: dict[str, list[dict[tuple[str, str], tuple[float, float]]]]) -> str:
    """results[variant][round] = ours_rows(...) -> one line per (workload, method, variant), rounds side by side."""
    keys: list[tuple[str, str]] = []
    for runs in results.values():
        for rows in runs:
            keys += [k for k in rows if k not in keys]
    width = max([len(n) for n in results] + [7])
    lines = ["fwd / fwd+bwd TFLOP/s, one column per round"]
    for workload, method in keys:
        lines.append(f"-- {workload} {method}")
        for name, runs in results.items():
            cells = []
            for rows in runs:
                f, fb = rows.get((workload, method), (float("nan"), float("nan")))
                cells.append(f"{f:7.1f} / {fb:6.1f}")
            lines.append(f"   {name:{width}}  " + "   ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", type=parse_variant, action="append", required=True,
                    help="NAME=PATH.so[:BUILD_INFO.json]; give two or more")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if any(a == "--out-json" or a.startswith("--out-json=") for a in bench_args):
        ap.error("--out-json is set per run by ab_bench.py; leave it out of the bench.py arguments")
    for name, so, info in args.variant:
        for path in (so, info):
            if path is not None and not path.is_file():
                ap.error(f"variant {name}: {path} is not a file")

    results: dict[str, list] = {name: [] for name, _, _ in args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {p: Path(tmp) / ("saved_" + p.name) for p in (EXTENSION, BUILD_INFO) if p.is_file()}
        for p, keep in saved.items():
            shutil.copy2(p, keep)
        try:
            for rnd in range(args.rounds):
                for name, so, info in args.variant:
                    shutil.copy2(so, EXTENSION)
                    if info is not None:
                        shutil.copy2(info, BUILD_INFO)
                    elif BUILD_INFO in saved:
                        shutil.copy2(saved[BUILD_INFO], BUILD_INFO)
                    out_json = Path(tmp) / f"{name}_{rnd}.json"
                    cmd = [sys.executable, str(ROOT / "tools" / "bench.py"), *bench_args, "--out-json", str(out_json)]
                    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                    rows = ours_rows(json.loads(out_json.read_text())) if out_json.is_file() else {}
                    print(f"round {rnd + 1} {name}: bench.py rc {r.returncode}, {len(rows)} rows of ours", flush=True)
                    if r.returncode != 0:
                        print(r.stdout[-1500:] + r.stderr[-1500:], file=sys.stderr)
                    results[name].append(rows)
        finally:
            for p in (EXTENSION, BUILD_INFO):
                if p in saved:
                    shutil.copy2(saved[p], p)
                else:
                    p.unlink(missing_ok=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
