"""Prebuilt-wheel identity, checksum verification and the download/fallback decisions (CPU only, seconds).

Downloads are served by a loopback HTTP server (127.0.0.1) from a temporary directory; the setup.py tests
run `setup.py bdist_wheel` in a copy of the tree with a stand-in "target interpreter" that reports a
CUDA torch, so they behave the same on a CPU-only CI machine.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import ci_wheels  # noqa: E402
import matrix  # noqa: E402
from ci_wheel_server import WheelServer  # noqa: E402
from _subproc import run_bounded  # noqa: E402

W = matrix.wheel  # flash_tree_attn/wheel.py, loaded by path (no torch import)
VERSION = W.read_package_version()


# ---------------------------------------------------------------------------------------------------
# helpers


def make_wheel(directory: Path, wid, *, build_info: dict | None = None, with_so: bool = True) -> Path:
    """A small wheel shaped like a release wheel: extension stub, _build_info.json, dist-info."""
    info = build_info if build_info is not None else {
        "version": wid.version, "torch": f"{wid.torch}.1", "cuda": wid.cuda, "cxx11_abi": wid.cxx11_abi,
        "cuda_archs": ["80", "90"], "head_dims": [64], "git_commit": "0" * 40,
    }
    dist_info = f"{W.DIST_NAME}-{wid.full_version}.dist-info"
    path = directory / wid.filename
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{W.DIST_NAME}/__init__.py", "")
        if with_so:
            zf.writestr(f"{W.DIST_NAME}/_C.abi3.so", b"\x7fELF stub")
        zf.writestr(f"{W.DIST_NAME}/_build_info.json", json.dumps(info))
        zf.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: flash-tree-attn\nVersion: {wid.full_version}\n")
        zf.writestr(f"{dist_info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp310-abi3-{wid.platform_tag}\n")
        zf.writestr(f"{dist_info}/RECORD", "")
    return path


def wheelhouse(tmp_path: Path, wid, **kw) -> Path:
    d = tmp_path / "wheelhouse"
    d.mkdir(exist_ok=True)
    w = make_wheel(d, wid, **kw)
    (d / W.SUMS_FILE).write_text(W.format_sha256sums([w]))
    return d


def env_for(wid, **over) -> W.TargetEnv:
    e = W.TargetEnv(python="python", python_version=(3, 11), system="Linux", arch=wid.arch, glibc=(2, 35),
                    torch=f"{wid.torch}.0+{W.cuda_tag(wid.cuda)}", torch_cuda=wid.cuda, cxx11_abi=wid.cxx11_abi)
    for k, v in over.items():
        setattr(e, k, v)
    return e


WID = W.WheelId(VERSION, "13.0", "2.14", True, "x86_64")


# ---------------------------------------------------------------------------------------------------
# naming


def test_local_version_matches_the_documented_example():
    wid = W.WheelId("0.1.0", "13.0", "2.11", True, "x86_64")
    assert wid.full_version == "0.1.0+cu130torch2.11cxx11abiTRUE"
    assert wid.filename == "flash_tree_attn-0.1.0+cu130torch2.11cxx11abiTRUE-cp310-abi3-manylinux_2_28_x86_64.whl"
    assert W.WheelId("0.1.0", "12.6", "2.10.0", False, "aarch64").filename == (
        "flash_tree_attn-0.1.0+cu126torch2.10cxx11abiFALSE-cp310-abi3-manylinux_2_28_aarch64.whl"
    )


@pytest.mark.parametrize("cell", matrix.cells(), ids=lambda c: c.key)
def test_every_cell_name_round_trips(cell):
    wid = cell.wheel_id(VERSION)
    assert W.WheelId.parse(wid.filename) == wid
    # PEP 440 local versions are case-insensitive; setuptools writes them lower-case.
    assert W.WheelId.parse(wid.filename.replace("TRUE", "true")) == wid


def test_identity_normalizes_versions_and_rejects_nonsense():
    assert W.WheelId("0.1.0", "13.0.2", "2.14.1+cu130", True, "x86_64") == WID
    assert W.cuda_tag("12.8") == "cu128" and W.cuda_tag("13.2.1") == "cu132"
    with pytest.raises(ValueError):
        W.WheelId("0.1.0+cu130", "13.0", "2.14", True, "x86_64")
    with pytest.raises(ValueError):
        W.WheelId("0.1.0", "13.0", "2.14", True, "ppc64le")
    for bad in ("flash_tree_attn-0.1.0-cp310-abi3-manylinux_2_28_x86_64.whl",  # no local version
                "flash_tree_attn-0.1.0+cu130torch2.14cxx11abiTRUE-cp311-cp311-manylinux_2_28_x86_64.whl",
                "other-0.1.0+cu130torch2.14cxx11abiTRUE-cp310-abi3-manylinux_2_28_x86_64.whl"):
        with pytest.raises(ValueError):
            W.WheelId.parse(bad)


def test_urls_for_http_file_and_directories(tmp_path):
    assert W.default_base_url("0.1.0") == f"https://github.com/{W.GITHUB_REPOSITORY}/releases/download/v0.1.0/"
    assert W.wheel_url("http://h/x", WID.filename) == "http://h/x/" + WID.filename  # '+' stays literal
    assert W.normalize_base_url(str(tmp_path)) == tmp_path.resolve().as_uri() + "/"


# ---------------------------------------------------------------------------------------------------
# checksums


def test_sha256sums_parse_and_format(tmp_path):
    a = tmp_path / "a.whl"
    a.write_bytes(b"hello")
    text = W.format_sha256sums([a])
    assert text == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  a.whl\n"
    sums = W.parse_sha256sums("# comment\n" + text.upper().replace("A.WHL", "a.whl") + f"{'0' * 64} *dir/b.whl\n")
    assert sums == {"a.whl": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "b.whl": "0" * 64}
    with pytest.raises(ValueError):
        W.parse_sha256sums("not a checksum line\n")


# ---------------------------------------------------------------------------------------------------
# which wheel fits an environment


def test_matching_environment_gets_its_wheel():
    assert W.wheel_for_environment(env_for(WID), VERSION, matrix.is_supported) == WID


@pytest.mark.parametrize(
    "over, kind, words",
    [
        ({"torch": None, "torch_error": "ModuleNotFoundError: No module named 'torch'"}, "no-torch", "install torch first"),
        ({"torch_cuda": None}, "no-matching-wheel", "CPU-only"),
        ({"system": "Darwin"}, "no-matching-wheel", "Linux-only"),
        ({"arch": "ppc64le"}, "no-matching-wheel", "ppc64le"),
        ({"glibc": (2, 17)}, "no-matching-wheel", "glibc 2.17"),
        ({"glibc": None}, "no-matching-wheel", "not glibc"),
        ({"torch": "2.9.1+cu128", "torch_cuda": "12.8"}, "no-matching-wheel", "torch 2.9, CUDA 12.8"),
        ({"torch_cuda": "11.8"}, "no-matching-wheel", "CUDA 11.8"),
        ({"cxx11_abi": False}, "no-matching-wheel", "pre-cxx11 ABI"),
    ],
)
def test_no_matching_wheel_says_why(over, kind, words):
    with pytest.raises(W.PrebuiltUnavailable) as e:
        W.wheel_for_environment(env_for(WID, **over), VERSION, matrix.is_supported)
    assert e.value.kind == kind
    assert words in str(e.value) and "\n" not in str(e.value)


def test_build_isolation_overlay_is_removed_for_the_probe():
    env = W._outside_build_isolation({
        "PYTHONPATH": "/tmp/pip-build-env-abc/site:/keep/me", "PYTHONNOUSERSITE": "1",
        "PATH": "/tmp/pip-build-env-abc/overlay/bin:/usr/bin", "HOME": "/root",
    })
    assert env == {"PYTHONPATH": "/keep/me", "PATH": "/usr/bin", "HOME": "/root"}
    plain = {"PYTHONPATH": "/x", "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin"}
    assert W._outside_build_isolation(plain) == plain


def test_probe_reports_the_running_torch():
    import torch

    env = W.probe_interpreter(sys.executable)
    assert env.torch == torch.__version__ and env.torch_cuda == torch.version.cuda
    assert env.python_version == tuple(sys.version_info[:2]) and env.system == "Linux"


# ---------------------------------------------------------------------------------------------------
# download and verification (loopback HTTP server)


def test_download_verifies_and_shows_progress(tmp_path):
    house = wheelhouse(tmp_path, WID)
    out = io.StringIO()
    with WheelServer(house) as srv:
        got = W.fetch_prebuilt(WID, srv.url, tmp_path / "dl", progress_stream=out)
        requests = srv.requests
    assert got.name == WID.filename and got.read_bytes() == (house / WID.filename).read_bytes()
    assert requests == [f"/{W.SUMS_FILE}", f"/{WID.filename}"]
    assert "downloading " + WID.filename in out.getvalue() and "done:" in out.getvalue()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_file_urls_and_plain_directories_work(tmp_path):
    house = wheelhouse(tmp_path, WID)
    assert W.fetch_prebuilt(WID, house.as_uri(), tmp_path / "a").exists()
    assert W.fetch_prebuilt(WID, str(house), tmp_path / "b").exists()
    (house / WID.filename).unlink()
    with pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, str(house), tmp_path / "c")
    assert e.value.kind == "not-found"


def test_missing_wheel_is_a_404(tmp_path):
    house = wheelhouse(tmp_path, WID)
    (house / WID.filename).unlink()
    with WheelServer(house) as srv, pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, srv.url, tmp_path / "dl")
    assert e.value.kind == "not-found" and "HTTP 404" in str(e.value) and WID.filename in str(e.value)


def test_missing_sha256sums_is_a_404(tmp_path):
    house = wheelhouse(tmp_path, WID)
    (house / W.SUMS_FILE).unlink()
    with WheelServer(house) as srv, pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, srv.url, tmp_path / "dl")
    assert e.value.kind == "not-found" and W.SUMS_FILE in str(e.value)


def test_wheel_not_listed_in_sha256sums(tmp_path):
    other = W.WheelId(VERSION, "12.6", "2.14", True, "x86_64")
    house = wheelhouse(tmp_path, other)
    with WheelServer(house) as srv, pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, srv.url, tmp_path / "dl")
    assert e.value.kind == "no-matching-wheel" and "not listed" in str(e.value)


def test_checksum_mismatch_is_refused(tmp_path):
    house = wheelhouse(tmp_path, WID)
    (house / W.SUMS_FILE).write_text(f"{'ab' * 32}  {WID.filename}\n")
    with WheelServer(house) as srv, pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, srv.url, tmp_path / "dl")
    assert e.value.kind == "checksum-mismatch" and "ab" * 32 in str(e.value)
    assert not list((tmp_path / "dl").iterdir()), "a refused download must not be left behind"


def test_slow_server_times_out(tmp_path):
    house = wheelhouse(tmp_path, WID)
    with WheelServer(house, delay_s=3.0) as srv, pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, srv.url, tmp_path / "dl", timeout=0.5)
    assert e.value.kind == "timeout"


def test_unreachable_server_is_a_network_error(tmp_path):
    with WheelServer(tmp_path) as srv:
        url = srv.url  # the port is closed once the server has stopped
    with pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, url, tmp_path / "dl", timeout=5)
    assert e.value.kind == "network-error"


@pytest.mark.parametrize("case", ["wrong-build", "no-extension", "not-a-zip"])
def test_wheel_contents_are_checked(tmp_path, case):
    if case == "wrong-build":
        house = wheelhouse(tmp_path, WID, build_info={"version": VERSION, "torch": "2.11.0", "cuda": "13.0",
                                                       "cxx11_abi": True})
    elif case == "no-extension":
        house = wheelhouse(tmp_path, WID, with_so=False)
    else:
        house = tmp_path / "wheelhouse"
        house.mkdir()
        (house / WID.filename).write_bytes(b"not a zip")
        (house / W.SUMS_FILE).write_text(W.format_sha256sums([house / WID.filename]))
    with pytest.raises(W.PrebuiltUnavailable) as e:
        W.fetch_prebuilt(WID, str(house), tmp_path / "dl")
    assert e.value.kind == "invalid-wheel"


# ---------------------------------------------------------------------------------------------------
# after installation


def test_compatibility_problem_names_both_versions_and_the_fix():
    info = {"version": "0.1.0", "torch": "2.11.0", "cuda": "13.0", "cxx11_abi": True}
    assert W.compatibility_problem(info, "2.11.1+cu130", "13.0", True) is None
    assert W.compatibility_problem(info, "2.11.0", "13.2", True) is None  # CUDA minor differences load fine
    msg = W.compatibility_problem(info, "2.14.1+cu130", "13.0", True)
    assert "torch 2.11.0" in msg and "torch 2.14.1" in msg and W.fix_command("0.1.0") in msg
    assert "CUDA 13.0" in W.compatibility_problem(info, "2.11.0+cu128", "12.8", True)
    assert "CPU-only" in W.compatibility_problem(info, "2.11.0+cpu", None, True)
    assert W.compatibility_problem({"cuda_extension": False, "version": "0.1.0"}, "2.14.1", None) is None
    assert W.compatibility_problem({}, "2.14.1", None) is None


def test_build_info_and_report_are_dicts():
    assert isinstance(W.build_info(), dict)
    report = W.environment_report()
    assert "build" in report and ("torch" in report or "torch_error" in report)


# ---------------------------------------------------------------------------------------------------
# ci_wheels: the release chores


def test_finalize_retags_and_checks_a_local_build(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    w = make_wheel(built, WID)
    local = built / w.name.replace("manylinux_2_28_x86_64", "linux_x86_64").replace("TRUE", "true")
    with zipfile.ZipFile(w) as src, zipfile.ZipFile(local, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            if n.endswith("/WHEEL"):
                data = data.replace(b"manylinux_2_28_x86_64", b"linux_x86_64")
            dst.writestr(n, data)
    w.unlink()
    out = ci_wheels.finalize(local, tmp_path / "out", retag_platform="manylinux_2_28_x86_64")
    assert out.name == WID.filename
    with zipfile.ZipFile(out) as zf:
        dist_info = ci_wheels._dist_info(zf.namelist())
        assert "Tag: cp310-abi3-manylinux_2_28_x86_64" in zf.read(f"{dist_info}/WHEEL").decode()
        record = zf.read(f"{dist_info}/RECORD").decode()
        assert f"{W.DIST_NAME}/_C.abi3.so,sha256=" in record
    ci_wheels.write_sums(tmp_path / "out")
    assert W.parse_sha256sums((tmp_path / "out" / W.SUMS_FILE).read_text()) == {out.name: W.sha256_file(out)}


def test_finalize_refuses_vendored_torch(tmp_path):
    w = make_wheel(tmp_path, WID)
    with zipfile.ZipFile(w, "a") as zf:
        zf.writestr("flash_tree_attn.libs/libtorch_cuda-1234abcd.so", b"")
    with pytest.raises(SystemExit, match="vendored"):
        ci_wheels.finalize(w, tmp_path / "out")


def test_check_release_wants_every_cell(tmp_path):
    (tmp_path / f"flash_tree_attn-{VERSION}.tar.gz").write_bytes(b"sdist")
    for c in matrix.cells()[:-1]:
        make_wheel(tmp_path, c.wheel_id(VERSION))
    ci_wheels.write_sums(tmp_path)
    with pytest.raises(SystemExit) as e:
        ci_wheels.check_release(tmp_path, VERSION)
    assert "missing wheel " + matrix.cells()[-1].wheel_id(VERSION).filename in str(e.value)
    make_wheel(tmp_path, matrix.cells()[-1].wheel_id(VERSION))
    ci_wheels.write_sums(tmp_path)
    ci_wheels.check_release(tmp_path, VERSION)


def test_check_tag(monkeypatch):
    monkeypatch.setenv("GITHUB_REPOSITORY", W.GITHUB_REPOSITORY)
    ci_wheels.check_tag(f"v{VERSION}")
    with pytest.raises(SystemExit, match="does not match"):
        ci_wheels.check_tag("v9.9.9")
    monkeypatch.setenv("GITHUB_REPOSITORY", "someone/fork")
    with pytest.raises(SystemExit, match="wrong place"):
        ci_wheels.check_tag(f"v{VERSION}")


# ---------------------------------------------------------------------------------------------------
# setup.py's bdist_wheel: prebuilt or fallback, with one line saying which


def _source_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "autogen", "__pycache__", ".so", ".whl",
                                    ".benchmarks", "bench_results", ".ruff_cache", ".pytest_cache", ".hypothesis",
                                    "_C*.so", "_build_info.json")
    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


def _fake_target_python(tmp_path: Path, wid) -> Path:
    """A stand-in for the target interpreter: answers the probe as a CUDA torch of `wid` would."""
    probe = {"python": "fake", "python_version": [3, 11], "system": "Linux", "arch": wid.arch, "glibc": [2, 35],
             "torch": f"{wid.torch}.0+{W.cuda_tag(wid.cuda)}", "torch_cuda": wid.cuda, "cxx11_abi": wid.cxx11_abi,
             "torch_error": ""}
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\necho 'FTA_PROBE {json.dumps(probe)}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _has_bdist_wheel() -> bool:
    import importlib.util

    try:
        if importlib.util.find_spec("setuptools.command.bdist_wheel"):
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("wheel") is not None


needs_bdist_wheel = pytest.mark.skipif(not _has_bdist_wheel(), reason="needs setuptools>=70.1 or the wheel package")


def _bdist_wheel(src: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_TREE_ATTN_")}
    full.update(env)
    full["CI"] = "1"  # no /dev/tty echo from the test
    return run_bounded([sys.executable, "setup.py", "-q", "bdist_wheel", "-d", str(out)], cwd=src, env=full,
                       timeout=300)




@needs_bdist_wheel
def test_setup_installs_the_prebuilt_wheel(tmp_path):
    src = _source_copy(tmp_path)
    house = wheelhouse(tmp_path, WID)
    with WheelServer(house) as srv:
        r = _bdist_wheel(src, tmp_path / "out", {W.ENV_URL: srv.url, W.ENV_TARGET_PYTHON: str(_fake_target_python(tmp_path, WID)),
                                                  "FLASH_TREE_ATTN_CUTLASS_INCLUDE": "/nonexistent"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [WID.filename]
    assert (tmp_path / "out" / WID.filename).read_bytes() == (house / WID.filename).read_bytes()
    line = [ln for ln in r.stderr.splitlines() if "installing the prebuilt wheel" in ln]
    assert line and "SHA-256 verified" in line[0]


@needs_bdist_wheel
@pytest.mark.parametrize("case", ["404", "checksum", "force"])
def test_setup_falls_back_to_a_source_build_and_says_why(tmp_path, case):
    src = _source_copy(tmp_path)
    house = wheelhouse(tmp_path, WID)
    env = {W.ENV_TARGET_PYTHON: str(_fake_target_python(tmp_path, WID)),
           # make the source build stop at once where torch+CUDA exist (the pure-Python build where not)
           "FLASH_TREE_ATTN_CUTLASS_INCLUDE": "/nonexistent"}
    if case == "404":
        (house / WID.filename).unlink()
    elif case == "checksum":
        (house / W.SUMS_FILE).write_text(f"{'0' * 64}  {WID.filename}\n")
    else:
        env[W.ENV_FORCE_BUILD] = "TRUE"
    with WheelServer(house) as srv:
        env[W.ENV_URL] = srv.url
        r = _bdist_wheel(src, tmp_path / "out", env)
        requests = srv.requests
    lines = [ln for ln in r.stderr.splitlines() if "not using a prebuilt wheel" in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    want = {"404": "not-found: HTTP 404", "checksum": "checksum-mismatch", "force": "force-build"}[case]
    assert want in lines[0] and lines[0].endswith("building from source instead")
    if case == "force":
        assert requests == [], "FLASH_TREE_ATTN_FORCE_BUILD must not touch the network"
    # What happens next is the ordinary source build: here it either stops on the missing CUTLASS headers
    # (torch with CUDA present) or produces the pure-Python wheel (CPU-only torch / FORCE_BUILD without CUDA).
    built = list((tmp_path / "out").glob("*.whl")) if (tmp_path / "out").exists() else []
    assert all(WID.local_version.lower() not in p.name.lower() for p in built)
    assert r.returncode == 0 or "CUTLASS" in r.stderr or "cute/tensor.hpp" in r.stderr, r.stderr[-3000:]
