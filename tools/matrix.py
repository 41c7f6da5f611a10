#!/usr/bin/env python3
"""The supported prebuilt-wheel matrix: one table, and the GitHub Actions matrices made from it.

Every cell is (torch minor release, a CUDA variant that torch release publishes, platform). The table
below is the only place the matrix is written; build-wheels.yml, gpu-tests.yml, setup.py (to say "no
prebuilt wheel for this torch" without asking the network) and tests/test_matrix.py read it from here.

Usage:
  python tools/matrix.py table                       human-readable list of cells and wheel names
  python tools/matrix.py github [--subset smoke]      {"include": [...]} for build-wheels.yml
  python tools/matrix.py gpu                          {"include": [...]} for gpu-tests.yml
  python tools/matrix.py wheels [--version V]         expected wheel file names, one per line

Updating for a new torch release: add its row (with the sources of its CUDA variants), drop the oldest so
that six minor releases remain, and run `pytest tests/test_matrix.py` (checks PyPI where it answers).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_wheel_module():
    """flash_tree_attn/wheel.py by file path: importing the package would import torch."""
    name = "_flash_tree_attn_wheel"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "flash_tree_attn" / "wheel.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


wheel = _load_wheel_module()

PLATFORMS = ("x86_64", "aarch64")
N_RELEASES = 6  # the six latest torch minor releases


@dataclasses.dataclass(frozen=True)
class TorchRelease:
    minor: str  # "2.14"
    build_pin: str  # the exact torch the wheels are built against (latest patch of the minor)
    cuda: tuple  # CUDA major.minor variants torch publishes for this release on Linux x86_64 and aarch64
    pypi_default: str  # the variant `pip install torch` gets from PyPI (the others come from the PyTorch index)
    cxx11_abi: bool = True  # all Linux torch wheels since 2.7 use the C++11 ABI


# Sources for the CUDA variants:
#  [R] pytorch/pytorch RELEASE.md, "Release Compatibility Matrix" (Stable CUDA + Experimental CUDA
#      columns) and "PyTorch CUDA Support Matrix" (for 2.12-2.14 it lists the same CUDA versions for the
#      Linux x86 and the Linux aarch64 builds);
#  [P] PyPI: the Requires-Dist of torch-<pin>-cp311-cp311-manylinux_2_28_{x86_64,aarch64}.whl
#      (nvidia-cuda-runtime-cu12==12.8.* means CUDA 12.8; cuda-toolkit[...]==13.0.* means CUDA 13.0).
#      tests/test_matrix.py re-reads these from PyPI when the network answers.
#  The non-default variants live on https://download.pytorch.org/whl/cuXYZ (not reachable from our dev
#  machines, so they are taken from [R]). A variant that neither source confirms is left out: a missing
#  cell costs a source build; a wrong cell costs a broken release job.
TORCH_RELEASES = (
    # 2.10: [R] stable 12.6, 12.8; experimental 13.0.  [P] 2.10.0 -> 12.8 (both platforms)
    TorchRelease("2.10", "2.10.0", ("12.6", "12.8", "13.0"), "12.8"),
    # 2.11: [R] stable 12.6, 12.8, 13.0.  [P] 2.11.0 -> 13.0
    TorchRelease("2.11", "2.11.0", ("12.6", "12.8", "13.0"), "13.0"),
    # 2.12: [R] stable 12.6, 13.0; experimental 13.2 (12.8 dropped).  [P] 2.12.0, 2.12.1 -> 13.0
    TorchRelease("2.12", "2.12.1", ("12.6", "13.0", "13.2"), "13.0"),
    # 2.13: [R] stable 12.6, 13.0; experimental 13.2.  [P] 2.13.0 -> 13.0
    TorchRelease("2.13", "2.13.0", ("12.6", "13.0", "13.2"), "13.0"),
    # 2.14: [R] stable 12.6, 13.0, 13.2.  [P] 2.14.0, 2.14.1 -> 13.0
    TorchRelease("2.14", "2.14.1", ("12.6", "13.0", "13.2"), "13.0"),
    # 2.15: [P] 2.15.0 -> 13.2. Its RELEASE.md row was not yet available to us, so only the PyPI variant
    #       is listed; add the PyTorch-index variants once the row confirms them.
    TorchRelease("2.15", "2.15.0", ("13.2",), "13.2"),
)

# Host compiler for nvcc in the manylinux_2_28 container (/opt/rh/gcc-toolset-N): CUDA 12.6 accepts gcc <= 13,
# CUDA 12.8 and 13.x accept gcc 14; torch's cpp_extension refuses a gcc newer than the CUDA it builds with.
def gcc_toolset(cuda: str) -> str:
    return "13" if tuple(int(x) for x in cuda.split(".")) < (12, 8) else "14"


# GitHub-hosted runners that build each platform natively (cibuildwheel runs the manylinux container).
RUNNERS = {"x86_64": "ubuntu-24.04", "aarch64": "ubuntu-24.04-arm"}
# GPU runners for gpu-tests.yml (self-hosted; labels [self-hosted, linux, x64, gpu, <sm>]).
GPU_RUNNER_ARCHES = ("sm80", "sm90")


@dataclasses.dataclass(frozen=True)
class Cell:
    release: TorchRelease
    cuda: str
    arch: str

    def wheel_id(self, version: str):
        return wheel.WheelId(version, self.cuda, self.release.minor, self.release.cxx11_abi, self.arch)

    @property
    def torch_index(self) -> str:
        return f"https://download.pytorch.org/whl/{wheel.cuda_tag(self.cuda)}"

    @property
    def key(self) -> str:
        return f"torch{self.release.minor}-{wheel.cuda_tag(self.cuda)}-{self.arch}"


def releases() -> tuple:
    return TORCH_RELEASES


def cells() -> list:
    return [Cell(r, c, a) for r in TORCH_RELEASES for c in r.cuda for a in PLATFORMS]


def is_supported(wid) -> bool:
    """Is a prebuilt wheel published for this WheelId (version aside)?"""
    for c in cells():
        if (c.release.minor, c.cuda, c.arch, c.release.cxx11_abi) == (wid.torch, wid.cuda, wid.arch, wid.cxx11_abi):
            return True
    return False


def package_version() -> str:
    return wheel.read_package_version()


def github_matrix(version: str, subset: str = "full") -> dict:
    """The build-wheels.yml matrix. `smoke`: the newest torch with its PyPI CUDA, x86_64 only."""
    chosen = cells()
    if subset == "smoke":
        newest = TORCH_RELEASES[-1]
        chosen = [c for c in chosen if c.release is newest and c.cuda == newest.pypi_default and c.arch == "x86_64"]
    elif subset != "full":
        raise ValueError(f"unknown subset {subset!r}")
    include = []
    for c in chosen:
        wid = c.wheel_id(version)
        include.append(
            {
                "key": c.key,
                "torch": c.release.minor,
                "torch_pin": c.release.build_pin,
                "cuda": c.cuda,
                "cuda_tag": wheel.cuda_tag(c.cuda),
                "arch": c.arch,
                "runner": RUNNERS[c.arch],
                "torch_index": c.torch_index,
                "gcc_toolset": gcc_toolset(c.cuda),
                "wheel": wid.filename,
            }
        )
    return {"include": include}


def gpu_matrix(version: str, subset: str = "full") -> dict:
    """Cells to test on the GPU runners: the newest and the oldest torch, each with its PyPI CUDA, x86_64.
    `smoke`: the newest only (the one cell a smoke build makes)."""
    picks = []
    for r in (TORCH_RELEASES[-1], TORCH_RELEASES[0]) if subset == "full" else (TORCH_RELEASES[-1],):
        c = Cell(r, r.pypi_default, "x86_64")
        if c not in picks:
            picks.append(c)
    include = []
    for gpu in GPU_RUNNER_ARCHES:
        for c in picks:
            include.append(
                {
                    "gpu": gpu,
                    "key": c.key,
                    "torch": c.release.minor,
                    "torch_pin": c.release.build_pin,
                    "cuda": c.cuda,
                    "torch_index": c.torch_index,
                    "wheel": c.wheel_id(version).filename,
                }
            )
    return {"include": include}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["table", "github", "gpu", "wheels"])
    ap.add_argument("--version", default=None, help="package version (default: flash_tree_attn/_version.py)")
    ap.add_argument("--subset", default="full", choices=["full", "smoke"])
    args = ap.parse_args(argv)
    version = args.version or package_version()
    if args.command == "github":
        print(json.dumps(github_matrix(version, args.subset), separators=(",", ":")))
    elif args.command == "gpu":
        print(json.dumps(gpu_matrix(version, args.subset), separators=(",", ":")))
    elif args.command == "wheels":
        for c in cells():
            print(c.wheel_id(version).filename)
    else:
        for c in cells():
            default = " (PyPI default)" if c.cuda == c.release.pypi_default else ""
            print(f"{c.key:28s} build torch=={c.release.build_pin:8s} {c.wheel_id(version).filename}{default}")
        print(f"{len(cells())} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
