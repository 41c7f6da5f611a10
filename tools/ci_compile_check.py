#!/usr/bin/env python3
"""nvcc compile check of a small kernel subset, without torch (ci.yml's `nvcc` job; also handy locally).

Generates the kernel units of the chosen subset with tools/generate_kernels.py into a temporary directory and
compiles them, plus the torch-free csrc/*.cu files, to object files with nvcc: it catches template and
syntax errors in csrc/ in minutes instead of in a release build. torch_binding.cpp needs torch's headers and
is covered by the wheel build (tests/test_wheel_install.py, build-wheels.yml).

    python tools/ci_compile_check.py --head-dims 64 --dtypes bf16 --archs 80 [--directions fwd] [-j 2]

CUTLASS comes from FLASH_TREE_ATTN_CUTLASS_INCLUDE or the nvidia-cutlass package; nvcc from $CUDA_HOME/bin
(default /usr/local/cuda).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import generate_kernels  # noqa: E402

# Torch-free translation units compiled alongside the generated kernels (if present).
EXTRA_UNITS = ("dispatch.cu", "block_bounds.cu")
NVCC_FLAGS = [
    "-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "-lineinfo", "-DNDEBUG", "-Xcompiler", "-fPIC",
]


def cutlass_include() -> Path:
    override = os.environ.get("FLASH_TREE_ATTN_CUTLASS_INCLUDE")
    if override:
        return Path(override)
    import cutlass_library

    return Path(cutlass_library.__file__).parent / "source" / "include"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dims", default="64")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--directions", default=None, help="default: all")
    ap.add_argument("--archs", default="80", help="';'- or ','-separated, e.g. 80;90")
    ap.add_argument("-j", "--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = ap.parse_args(argv)

    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    inc = cutlass_include()
    if not (inc / "cute" / "tensor.hpp").exists():
        raise SystemExit(f"no CUTLASS/CuTe headers at {inc}")
    archs = [a.strip() for a in args.archs.replace(",", ";").split(";") if a.strip()]
    # As in setup.py: arch 90 means sm_90a cubins and adds the sm90 (Hopper) kernel units.
    kernels = generate_kernels.select(
        generate_kernels.parse_list(args.head_dims, generate_kernels.HEAD_DIMS, int),
        generate_kernels.parse_list(args.dtypes, generate_kernels.DTYPES),
        paths=("sm80", "sm90") if "90" in archs else ("sm80",),
        directions=generate_kernels.parse_list(args.directions, generate_kernels.DIRECTIONS),
    )
    real = ["90a" if a == "90" else a for a in archs]
    gencode = [f for a in real for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")]

    with tempfile.TemporaryDirectory(prefix="fta-compile-check-") as tmp:
        autogen = Path(tmp) / "autogen"
        units = generate_kernels.generate(autogen, kernels)
        units += [ROOT / "csrc" / u for u in EXTRA_UNITS if (ROOT / "csrc" / u).exists()]

        def compile_one(src: Path):
            obj = Path(tmp) / (src.stem + ".o")
            cmd = [str(nvcc), *NVCC_FLAGS, *gencode, "-I", str(ROOT / "csrc"), "-I", str(autogen), "-I", str(inc),
                   "-c", str(src), "-o", str(obj)]
            t = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return src.name, r.returncode, time.monotonic() - t, (r.stdout + r.stderr).strip()

        failed = 0
        print(f"nvcc compile check: {len(units)} units, archs {archs}, {args.jobs} jobs", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for name, rc, secs, out in pool.map(compile_one, units):
                print(f"  {'ok  ' if rc == 0 else 'FAIL'} {name} ({secs:.0f} s)", flush=True)
                if rc != 0:
                    failed += 1
                    print(out[-6000:], flush=True)
    if failed:
        print(f"{failed} of {len(units)} units failed to compile")
        return 1
    print(f"all {len(units)} units compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
