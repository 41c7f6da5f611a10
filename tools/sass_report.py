#!/usr/bin/env python3
"""Static report of a compiled kernel: registers and spills (ptxas), and the instruction mix of its loops.

How this session's backward gains were found (bench_results/RESULTS.md, 2026-11-30): the main loop of a
kernel, counted by opcode, next to the same loop of another build or of another library's kernel, shows
where instructions go (address arithmetic, bounds checks, value-returning atomics) without a GPU.

    python tools/sass_report.py --path sm80 --direction bwd --head-dim 128 --dtype bf16 --causal
    python tools/sass_report.py --cubin other.cubin --function 'flash_bwd_dq_dk_dv'   # any cubin, e.g. one
                                                  # extracted from a library with `cuobjdump -xelf`

The first form generates that one kernel unit (tools/generate_kernels.py), compiles it to an sm_90a cubin with
the flags of tools/ci_compile_check.py and disassembles it. Needs nvcc and nvdisasm ($CUDA_HOME/bin, or
--nvdisasm; triton wheels carry one under triton/backends/nvidia/bin) and, to compile, the CUTLASS headers.
Prints per loop (a backward branch and its target): instructions, then the most frequent opcodes.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\s+(?:`\()?(\.L_x_\d+)")
_SECTION = re.compile(r"^\s*\.section\s+\.text\.(\S+?),")
_PREDICATE = re.compile(r"^@!?U?P\w+\s+")
CUDA_BIN = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin"


def split_functions(sass: str) -> dict[str, list[str]]:
    """nvdisasm output -> {mangled function name: its lines}."""
    functions: dict[str, list[str]] = {}
    current = None
    for line in sass.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            functions[current] = []
        elif current is not None:
            functions[current].append(line)
    return functions


def opcode(text: str) -> str:
    """'@!P1 LDG.E.CONSTANT R6, [R2]' -> 'LDG'."""
    return _PREDICATE.sub("", text).split()[0].split(".")[0]


def loops(lines: list[str]) -> list[tuple[int, int, collections.Counter]]:
    """(first address, last address, opcode counts) of every backward branch's range, largest first."""
    instrs: list[tuple[int, str]] = []
    label_at: dict[str, int] = {}
    pending: list[str] = []
    for line in lines:
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                label_at[name] = addr
            pending = []
            instrs.append((addr, m.group(2)))
    found = []
    for addr, text in instrs:
        m = _BRANCH.search(text)
        if m and m.group(1) in label_at and label_at[m.group(1)] < addr:
            lo = label_at[m.group(1)]
            counts = collections.Counter(opcode(t) for a, t in instrs if lo <= a <= addr)
            found.append((lo, addr, counts))
    return sorted(found, key=lambda f: -sum(f[2].values()))


def report(sass: str, function_pattern: str, top: int = 24, max_loops: int = 6) -> str:
    out = []
    pattern = re.compile(function_pattern)
    for name, lines in split_functions(sass).items():
        if not pattern.search(name):
            continue
        total = collections.Counter(opcode(m.group(2)) for m in map(_INSTR.match, lines) if m)
        out.append(f"{name}\n  whole function: {sum(total.values())} instructions")
        for lo, hi, counts in loops(lines)[:max_loops]:
            mix = ", ".join(f"{k} {v}" for k, v in counts.most_common(top))
            out.append(f"  loop {lo:#x}-{hi:#x}: {sum(counts.values())} instructions; {mix}")
    return "\n".join(out) if out else f"no function matches {function_pattern!r}"


def ptxas_summary(log: str, function_pattern: str) -> str:
    """The stack/spill and register lines `ptxas -v` printed for the functions that match."""
    pattern = re.compile(function_pattern)
    out, name = [], None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
        elif name and pattern.search(name) and ("spill" in line or "Used" in line):
            out.append(f"ptxas: {line.split(':', 1)[-1].strip()}")
    return "\n".join(out)


def compile_unit(args, tmp: Path) -> tuple[Path, str]:
    import ci_compile_check
    import generate_kernels

    kernels = [k for k in generate_kernels.select([args.head_dim], [args.dtype], paths=(args.path,),
                                                  directions=[args.direction]) if k.causal == args.causal]
    if not kernels:
        raise SystemExit(f"no {args.path} {args.direction} unit for head dim {args.head_dim} {args.dtype}")
    unit = generate_kernels.generate(tmp / "autogen", kernels)[0]
    cubin = tmp / (unit.stem + ".cubin")
    flags = [f for f in ci_compile_check.NVCC_FLAGS if f not in ("-Xcompiler", "-fPIC")]
    cmd = [str(CUDA_BIN / "nvcc"), *flags, "-arch=sm_90a", "-cubin", "-Xptxas", "-v", "-I", str(ROOT / "csrc"),
           "-I", str(tmp / "autogen"), "-I", str(ci_compile_check.cutlass_include()), str(unit), "-o", str(cubin)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit((r.stdout + r.stderr)[-6000:])
    return cubin, ptxas_summary(r.stdout + r.stderr, args.function)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cubin", help="report on this cubin instead of compiling a unit")
    ap.add_argument("--function", default=r"[bf]wd_kernel", help="regex over mangled function names")
    ap.add_argument("--path", default="sm80", choices=["sm80", "sm90"])
    ap.add_argument("--direction", default="bwd", choices=["fwd", "bwd"])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--nvdisasm", default=str(CUDA_BIN / "nvdisasm"))
    ap.add_argument("--top", type=int, default=24, help="opcodes shown per loop")
    ap.add_argument("--loops", type=int, default=6,
                    help="loops shown, largest first (a warp-specialized kernel's role branches also count as loops)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fta-sass-") as tmp:
        ptxas = ""
        cubin = Path(args.cubin) if args.cubin else None
        if cubin is None:
            cubin, ptxas = compile_unit(args, Path(tmp))
        if not Path(args.nvdisasm).exists():
            raise SystemExit(f"no nvdisasm at {args.nvdisasm} (pass --nvdisasm)")
        sass = subprocess.run([args.nvdisasm, "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    if ptxas:
        print(ptxas)
    print(report(sass, args.function, args.top, args.loops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
