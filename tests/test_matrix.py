"""tools/matrix.py: the supported prebuilt-wheel matrix and the GitHub Actions matrices made from it.

Offline checks always run (CI is deterministic). Where the network answers, and not in CI unless
FLASH_TREE_ATTN_NETWORK_TESTS=1, the table is also checked against the real indexes: PyPI (each release's
pinned build exists for both platforms, and its Requires-Dist names the CUDA the table calls the PyPI
default) and, if reachable, download.pytorch.org/whl/cuXYZ (each non-default variant exists).
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import urllib.request
import warnings
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import matrix  # noqa: E402

W = matrix.wheel
VERSION = matrix.package_version()
# CUDA versions torch has shipped Linux wheels for, 2.x era (a typo such as "12.7" or "13.1" fails here).
KNOWN_TORCH_CUDA = {"11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0", "13.2"}


def _v(s: str) -> tuple:
    return tuple(int(x) for x in s.split("."))


# ---------------------------------------------------------------------------------------------------
# the table


def test_six_latest_consecutive_minor_releases():
    minors = [r.minor for r in matrix.releases()]
    assert len(minors) == matrix.N_RELEASES == 6
    assert minors == sorted(minors, key=_v), "oldest first"
    majors = {m.split(".")[0] for m in minors}
    assert len(majors) == 1 and [_v(m)[1] for m in minors] == list(range(_v(minors[0])[1], _v(minors[0])[1] + 6))


@pytest.mark.parametrize("rel", matrix.releases(), ids=lambda r: r.minor)
def test_release_rows_are_consistent(rel):
    assert W.major_minor(rel.build_pin) == rel.minor
    assert re.fullmatch(r"\d+\.\d+\.\d+", rel.build_pin)
    assert rel.cuda and len(set(rel.cuda)) == len(rel.cuda) and list(rel.cuda) == sorted(rel.cuda, key=_v)
    assert set(rel.cuda) <= KNOWN_TORCH_CUDA, set(rel.cuda) - KNOWN_TORCH_CUDA
    assert rel.pypi_default in rel.cuda
    assert rel.cxx11_abi is True  # every Linux torch wheel since 2.7


def test_cells_are_the_full_product_of_the_table():
    cells = matrix.cells()
    expected = {(r.minor, c, a) for r in matrix.releases() for c in r.cuda for a in matrix.PLATFORMS}
    assert {(c.release.minor, c.cuda, c.arch) for c in cells} == expected
    assert len(cells) == len(expected)
    assert set(matrix.PLATFORMS) == set(W.ARCHES) == {"x86_64", "aarch64"}
    names = [c.wheel_id(VERSION).filename for c in cells]
    assert len(set(names)) == len(names)
    for c, name in zip(cells, names, strict=True):
        assert W.WheelId.parse(name) == c.wheel_id(VERSION)
        assert matrix.is_supported(c.wheel_id(VERSION))


def test_is_supported_rejects_unpublished_combinations():
    newest = matrix.releases()[-1]
    assert not matrix.is_supported(W.WheelId(VERSION, "12.8", "2.9", True, "x86_64"))  # too old
    assert not matrix.is_supported(W.WheelId(VERSION, "11.8", newest.minor, True, "x86_64"))  # not a variant
    assert not matrix.is_supported(W.WheelId(VERSION, newest.pypi_default, newest.minor, False, "x86_64"))


def test_github_build_matrix():
    m = matrix.github_matrix(VERSION)
    assert len(m["include"]) == len(matrix.cells()) <= 256  # GitHub's limit per matrix
    keys = {"key", "torch", "torch_pin", "cuda", "cuda_tag", "arch", "runner", "torch_index", "gcc_toolset", "wheel"}
    for row in m["include"]:
        assert set(row) == keys
        assert row["runner"] == matrix.RUNNERS[row["arch"]]
        assert row["torch_index"] == f"https://download.pytorch.org/whl/{row['cuda_tag']}"
        assert W.WheelId.parse(row["wheel"]).arch == row["arch"]
        assert row["gcc_toolset"] == ("13" if row["cuda"] == "12.6" else "14")
    smoke = matrix.github_matrix(VERSION, "smoke")["include"]
    assert len(smoke) == 1 and smoke[0] in m["include"] and smoke[0]["arch"] == "x86_64"


def test_gpu_matrix_tests_built_cells_on_both_gpu_archs():
    built = {row["wheel"] for row in matrix.github_matrix(VERSION)["include"]}
    rows = matrix.gpu_matrix(VERSION)["include"]
    assert {r["gpu"] for r in rows} == set(matrix.GPU_RUNNER_ARCHES) == {"sm80", "sm90"}
    for r in rows:
        assert r["wheel"] in built and W.WheelId.parse(r["wheel"]).arch == "x86_64"
    assert {r["torch"] for r in rows} == {matrix.releases()[0].minor, matrix.releases()[-1].minor}
    smoke_built = {row["wheel"] for row in matrix.github_matrix(VERSION, "smoke")["include"]}
    smoke = matrix.gpu_matrix(VERSION, "smoke")["include"]
    assert {r["wheel"] for r in smoke} == smoke_built and {r["gpu"] for r in smoke} == {"sm80", "sm90"}


def test_cli_emits_json_for_github_outputs():
    for args in (["github"], ["github", "--subset", "smoke"], ["gpu"]):
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "matrix.py"), *args], capture_output=True,
                             text=True, check=True).stdout
        assert len(out.strip().splitlines()) == 1 and json.loads(out)["include"]
    wheels = subprocess.run([sys.executable, str(ROOT / "tools" / "matrix.py"), "wheels"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert wheels == [c.wheel_id(VERSION).filename for c in matrix.cells()]


def test_workflows_take_their_matrix_from_here():
    wf = (ROOT / ".github" / "workflows" / "build-wheels.yml").read_text()
    assert "tools/matrix.py github" in wf and "fromJSON(" in wf
    assert "tools/matrix.py gpu" in (ROOT / ".github" / "workflows" / "gpu-tests.yml").read_text()


# ---------------------------------------------------------------------------------------------------
# the real indexes (only where the network answers; never in CI unless asked)


def _network_allowed() -> bool:
    if os.environ.get("FLASH_TREE_ATTN_NETWORK_TESTS") == "1":
        return True
    return not os.environ.get("CI") and os.environ.get("FLASH_TREE_ATTN_NETWORK_TESTS") != "0"


def _get(url: str, headers=None, timeout=20) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "flash-tree-attn-tests", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


@pytest.fixture(scope="module")
def pypi_torch_files():
    if not _network_allowed():
        pytest.skip("network checks are off in CI (set FLASH_TREE_ATTN_NETWORK_TESTS=1 to run them)")
    try:
        data = json.loads(_get("https://pypi.org/simple/torch/",
                               {"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=10))
    except Exception as e:  # noqa: BLE001 - offline is a skip, not a failure
        pytest.skip(f"PyPI did not answer: {e}")
    return {f["filename"]: f for f in data["files"]}


def _remote_wheel_metadata(url: str, size: int) -> str:
    """METADATA of a remote wheel via HTTP range requests (its central directory, then one member)."""
    def rng(a, b):
        return _get(url, {"Range": f"bytes={a}-{b}"}, timeout=60)

    tail = rng(max(0, size - 65536), size - 1)
    eocd = tail.rfind(b"PK\x05\x06")
    cd_size, cd_off = struct.unpack("<II", tail[eocd + 12:eocd + 20])
    cd = rng(cd_off, cd_off + cd_size - 1)
    p = 0
    while p < len(cd):
        method, csize = struct.unpack("<H", cd[p + 10:p + 12])[0], struct.unpack("<I", cd[p + 20:p + 24])[0]
        nlen, elen, clen = struct.unpack("<HHH", cd[p + 28:p + 34])
        off = struct.unpack("<I", cd[p + 42:p + 46])[0]
        name = cd[p + 46:p + 46 + nlen].decode()
        p += 46 + nlen + elen + clen
        if name.endswith(".dist-info/METADATA"):
            n, e = struct.unpack("<HH", rng(off + 26, off + 29))
            data = rng(off + 30 + n + e, off + 30 + n + e + csize - 1)
            return (zlib.decompress(data, -15) if method == 8 else data).decode()
    raise AssertionError(f"no METADATA in {url}")


def _cuda_of_requires(metadata: str) -> str | None:
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        m = re.search(r"nvidia-cuda-runtime(?:-cu\d+)?==(\d+)\.(\d+)", line) or re.search(
            r"cuda-toolkit\[[^\]]*\]==(\d+)\.(\d+)", line)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


@pytest.mark.parametrize("rel", matrix.releases(), ids=lambda r: r.minor)
def test_pypi_has_the_build_pin_with_the_default_cuda(pypi_torch_files, rel):
    for arch in matrix.PLATFORMS:
        name = f"torch-{rel.build_pin}-cp311-cp311-manylinux_2_28_{arch}.whl"
        assert name in pypi_torch_files, f"{name} is not on PyPI"
        f = pypi_torch_files[name]
        try:
            cuda = _cuda_of_requires(_remote_wheel_metadata(f["url"], f["size"]))
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"could not read {name}'s metadata: {e}")
        assert cuda == rel.pypi_default, f"{name} uses CUDA {cuda}, the table says {rel.pypi_default}"


def test_table_is_not_behind_pypi(pypi_torch_files):
    minors = {W.major_minor(m.group(1)) for f in pypi_torch_files
              if (m := re.match(r"torch-(\d+\.\d+\.\d+)-", f))}
    newest = max(minors, key=_v)
    if _v(newest) > _v(matrix.releases()[-1].minor):
        warnings.warn(f"torch {newest} is on PyPI but tools/matrix.py ends at {matrix.releases()[-1].minor}",
                      stacklevel=1)


def test_pytorch_index_has_the_other_variants():
    if not _network_allowed():
        pytest.skip("network checks are off in CI")
    try:
        _get("https://download.pytorch.org/whl/", timeout=5)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"download.pytorch.org did not answer: {e}")
    for rel in matrix.releases():
        for cuda in rel.cuda:
            tag = W.cuda_tag(cuda)
            page = _get(f"https://download.pytorch.org/whl/{tag}/torch/", timeout=30).decode()
            for arch in matrix.PLATFORMS:
                pattern = rf"torch-{re.escape(rel.build_pin)}(%2B|\+){tag}-cp\d+-cp\d+t?-manylinux_2_28_{arch}\.whl"
                assert re.search(pattern, page), f"no torch {rel.build_pin}+{tag} for {arch} on the PyTorch index"
