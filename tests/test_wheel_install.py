"""End to end on this machine: what build-wheels.yml does for one matrix cell, then what a user's
`pip install` does with the result. No GitHub, no GPU; nvcc runs on the CPU.

1. A base venv with torch 2.14.1 (CUDA build, from the local wheel mirror) and the build tools.
2. sdist of a copy of this tree; a real wheel built from that sdist against torch 2.14.1 with a small kernel
   subset (head dim 64, bf16, forward, sm_80), named by its identity (+cu130torch2.14cxx11abiTRUE) and
   retagged manylinux_2_28 by tools/ci_wheels.py (the workflow uses auditwheel for that, which cannot be
   used here: this host's glibc is newer than 2.28); SHA256SUMS beside it.
3. The wheelhouse is served on 127.0.0.1 and the sdist is installed into fresh venvs with
   FLASH_TREE_ATTN_WHEEL_URL pointing there. CUDA_HOME and PYTORCH_NVCC point at a stub nvcc that records
   every call and fails any compile:
   - prebuilt (pip's default build isolation, and --no-build-isolation where a source build could run):
     installs in seconds, the stub saw no call, the installed extension is byte-identical to the served
     one, loads into torch 2.14.1 and reports its build; a torch mismatch gives the ImportError.
   - wheel missing (404) / SHA256SUMS corrupted: one line says which, then the source build starts
     (the stub records nvcc being invoked on a kernel unit) and is stopped there by the stub; nothing is
     installed. The fallback is asserted to start compiling, not to finish.

Each fresh venv sees the base venv's site-packages through a .pth file instead of installing torch (5 GB)
three more times. Slow (about 5-8 minutes on 2 cores, most of it nvcc); runs in CI (`.ci/run` runs all tests).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import matrix  # noqa: E402
from ci_wheel_server import WheelServer  # noqa: E402
from _subproc import run_bounded  # noqa: E402

W = matrix.wheel
VERSION = W.read_package_version()
TORCH_PIN = "2.14.1"  # on local disk as a CUDA 13.0 build for cp311
WID = W.WheelId(VERSION, "13.0", "2.14", True, "x86_64")
BUILD_TOOLS = ["setuptools>=70.1", "wheel", "packaging", "ninja", "nvidia-cutlass==4.2.0.0", "build", "einops"]
REAL_CUDA_HOME = Path(os.environ.get("FLASH_TREE_ATTN_TEST_CUDA_HOME", "/usr/local/cuda"))
SUBSET = {
    "FLASH_TREE_ATTN_HEAD_DIMS": "64",
    "FLASH_TREE_ATTN_DTYPES": "bf16",
    "FLASH_TREE_ATTN_DIRECTIONS": "fwd",
    "FLASH_TREE_ATTN_CUDA_ARCHS": "80",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86_64 Linux only"),
    pytest.mark.skipif(not (REAL_CUDA_HOME / "bin" / "nvcc").exists(), reason=f"no nvcc under {REAL_CUDA_HOME}"),
    pytest.mark.skipif(
        not all((ROOT / "csrc" / "sm80" / f"launch_{d}.h").exists() for d in ("fwd", "bwd")),
        reason="the kernel sources (csrc/sm80/launch_*.h) are not there yet",
    ),
]

TIMINGS: dict = {}


def _timed(name):
    class _T:
        def __enter__(self):
            self.t = time.monotonic()

        def __exit__(self, *exc):
            TIMINGS[name] = round(time.monotonic() - self.t, 1)
            print(f"[wheel-install timing] {name}: {TIMINGS[name]} s", flush=True)

    return _T()


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLASH_TREE_ATTN_", "PYTORCH_NVCC", "VIRTUAL_ENV", "PYTHONPATH", "CUDA_"))}
    env["CI"] = "1"  # setup.py: no /dev/tty echo
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _run(cmd, env=None, cwd=None, timeout=1800, check=True) -> subprocess.CompletedProcess:
    """Run in a new process group; on timeout the whole group (pip, ninja, nvcc) is killed, none is left behind."""
    cmd = [str(c) for c in cmd]
    r = run_bounded(cmd, timeout, env=env or _clean_env(), cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd[:4]} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def base_venv() -> Path:
    """torch 2.14.1 (CUDA) + build tools; cached across runs (keyed by what is installed)."""
    key = hashlib.sha256(json.dumps([TORCH_PIN, BUILD_TOOLS, sys.version, 1]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("FLASH_TREE_ATTN_TEST_CACHE", Path.home() / ".cache" / "flash-tree-attn-tests"))
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"venv-torch{TORCH_PIN}-{key}"
    stamp = venv / ".complete"
    with open(cache / ".lock", "w") as lock, _timed("base venv (torch + build tools)"):
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run([sys.executable, "-m", "venv", venv])
            _run([venv / "bin" / "python", "-m", "pip", "install", "-q", f"torch=={TORCH_PIN}", *BUILD_TOOLS],
                 timeout=3000)
            stamp.write_text("ok\n")
    probe = W.probe_interpreter(str(venv / "bin" / "python"))
    assert (probe.torch or "").startswith(TORCH_PIN) and probe.torch_cuda == WID.cuda, probe
    return venv


@pytest.fixture(scope="module")
def release(base_venv, tmp_path_factory) -> dict:
    """sdist + the cell's wheel (built from the sdist) + SHA256SUMS: what a release holds for this cell."""
    work = tmp_path_factory.mktemp("release")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "autogen", "__pycache__", ".so", ".whl", ".benchmarks",
        "bench_results", ".ruff_cache", ".pytest_cache", ".hypothesis", "_C*.so", "_build_info.json"))
    py = base_venv / "bin" / "python"
    with _timed("sdist"):
        _run([py, "-m", "build", "--sdist", "--no-isolation", "--outdir", work / "dist", src],
             env=_clean_env(FLASH_TREE_ATTN_SKIP_CUDA_BUILD="TRUE"))
    sdist = next((work / "dist").glob("*.tar.gz"))
    env = _clean_env(
        CUDA_HOME=str(REAL_CUDA_HOME),
        CPATH=_nvidia_includes(base_venv),
        FLASH_TREE_ATTN_FORCE_BUILD="TRUE",
        FLASH_TREE_ATTN_WHEEL_LOCAL_VERSION="auto",
        FLASH_TREE_ATTN_GIT_COMMIT="0123456789abcdef0123456789abcdef01234567",
        MAX_JOBS="2",
        **SUBSET,
    )
    with _timed("wheel build (nvcc, small kernel subset)"):
        _run([py, "-m", "pip", "wheel", "--no-cache-dir", "--no-build-isolation", "--no-deps", "-w", work / "built",
              sdist], env=env, timeout=3000)
    built = next((work / "built").glob("*.whl"))
    house = work / "wheelhouse"
    _run([py, ROOT / "tools" / "ci_wheels.py", "finalize", built, "--out", house,
          "--retag-platform", WID.platform_tag])
    _run([py, ROOT / "tools" / "ci_wheels.py", "sums", house])
    wheel_path = house / WID.filename
    assert wheel_path.exists(), sorted(p.name for p in house.iterdir())
    return {"sdist": sdist, "wheelhouse": house, "wheel": wheel_path, "work": work}


@pytest.fixture()
def nvcc_stub(tmp_path) -> dict:
    """A CUDA_HOME whose nvcc records every call, answers --version, and fails every compile loudly."""
    home = tmp_path / "cuda-stub"
    (home / "bin").mkdir(parents=True)
    for entry in REAL_CUDA_HOME.iterdir():
        if entry.name != "bin":
            (home / entry.name).symlink_to(entry.resolve())
    log = tmp_path / "nvcc-calls.log"
    log.write_text("")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> "{log}"\n'
        'case " $* " in *" --version "*|*" -V "*) '
        f'exec "{REAL_CUDA_HOME.resolve()}/bin/nvcc" --version;; esac\n'
        'echo "NVCC STUB: compile attempted: $*" >&2\n'
        "exit 97\n"
    )
    nvcc.chmod(0o755)
    return {"CUDA_HOME": str(home), "PYTORCH_NVCC": str(nvcc), "log": log}


def _fresh_venv(base_venv: Path, where: Path) -> Path:
    _run([sys.executable, "-m", "venv", where])
    # torch (and the build tools) come from the base venv; everything else is this venv's own.
    (_site_packages(where) / "_fta_test_base.pth").write_text(str(_site_packages(base_venv)) + "\n")
    return where


def _nvidia_includes(venv: Path) -> str:
    """torch's CUDA headers (cusparse.h & co.) ship in the nvidia-* wheels; this host's toolkit lacks them."""
    return os.pathsep.join(str(p) for p in _site_packages(venv).glob("nvidia/*/include"))


def _pip_install(venv: Path, sdist: Path, url: str, stub: dict, *, isolated: bool, cache: Path, base: Path):
    env = _clean_env(
        FLASH_TREE_ATTN_WHEEL_URL=url,
        CPATH=_nvidia_includes(base),
        FLASH_TREE_ATTN_DOWNLOAD_TIMEOUT="20",
        CUDA_HOME=stub["CUDA_HOME"],
        PYTORCH_NVCC=stub["PYTORCH_NVCC"],
        MAX_JOBS="1",  # the first compile job is the one the stub stops
        **SUBSET,
    )
    cmd = [venv / "bin" / "python", "-m", "pip", "install", "-v", "--cache-dir", cache]
    if not isolated:
        cmd.append("--no-build-isolation")
    return _run([*cmd, sdist], env=env, timeout=1800, check=False)


def _decision_lines(r: subprocess.CompletedProcess) -> list:
    out = r.stdout + r.stderr
    # distinct lines: pip may echo a failed build's output a second time
    return sorted({ln.strip() for ln in out.splitlines()
                   if "flash-tree-attn: installing the prebuilt wheel" in ln or "flash-tree-attn: not using a prebuilt" in ln})


def _installed_so(venv: Path) -> Path:
    hits = list((_site_packages(venv) / "flash_tree_attn").glob("_C*.so"))
    assert len(hits) == 1, hits
    return hits[0]


# ---------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("isolated", [True, False], ids=["build-isolation", "no-build-isolation"])
def test_prebuilt_wheel_is_installed_without_nvcc(base_venv, release, nvcc_stub, tmp_path, isolated):
    venv = _fresh_venv(base_venv, tmp_path / "venv")
    with WheelServer(release["wheelhouse"]) as srv, _timed(f"install prebuilt ({'isolated' if isolated else 'no isolation'})"):
        r = _pip_install(venv, release["sdist"], srv.url, nvcc_stub, isolated=isolated,
                         cache=release["work"] / "pip-cache", base=base_venv)
        requests = srv.requests
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    lines = _decision_lines(r)
    assert len(lines) == 1 and WID.filename in lines[0] and "SHA-256 verified" in lines[0], lines
    assert f"/{W.SUMS_FILE}" in requests and f"/{WID.filename}" in requests
    assert nvcc_stub["log"].read_text() == "", "nvcc was invoked: " + nvcc_stub["log"].read_text()[:2000]

    # the installed files are the served wheel's
    with zipfile.ZipFile(release["wheel"]) as zf:
        so_member = next(n for n in zf.namelist() if n.startswith("flash_tree_attn/_C") and n.endswith(".so"))
        assert _installed_so(venv).read_bytes() == zf.read(so_member)
    dist_infos = list(_site_packages(venv).glob("flash_tree_attn-*.dist-info"))
    assert len(dist_infos) == 1 and WID.local_version.lower() in dist_infos[0].name.lower()

    # it loads into torch 2.14.1 and reports what it was built with
    py = venv / "bin" / "python"
    report = json.loads(_run([py, "-c", "import json, flash_tree_attn._ops as o, flash_tree_attn.wheel as w; "
                                        "r = w.environment_report(); r['loaded'] = o.EXTENSION_LOADED; "
                                        "r['error'] = o.EXTENSION_ERROR; print(json.dumps(r))"],
                             cwd=tmp_path).stdout)
    assert report["loaded"], report["error"]
    b = report["build"]
    assert (b["version"], b["torch"], b["cuda"], b["head_dims"], b["cuda_archs"]) == (VERSION, TORCH_PIN, "13.0", [64], ["80"])
    assert b["git_commit"].startswith("0123456789abcdef") and report["compatible"] and report["wheel"] == WID.filename
    assert "flash-tree-attn" in _run([py, "-m", "flash_tree_attn"], cwd=tmp_path, check=False).stdout

    if not isolated:
        return
    # A torch that is not the one the extension was built for: an ImportError that names both and the fix,
    # not an undefined-symbol crash. (Simulated by editing the installed build record.)
    info_path = _site_packages(venv) / "flash_tree_attn" / "_build_info.json"
    info = json.loads(info_path.read_text())
    info["torch"] = "2.11.0"
    info_path.write_text(json.dumps(info))
    r = _run([py, "-c", "import flash_tree_attn"], cwd=tmp_path, check=False)
    assert r.returncode != 0 and "ImportError" in r.stderr
    assert "torch 2.11.0" in r.stderr and f"torch {TORCH_PIN}" in r.stderr and W.fix_command(VERSION) in r.stderr


@pytest.mark.parametrize("failure", ["404", "checksum"])
def test_fallback_source_build_says_why(base_venv, release, nvcc_stub, tmp_path, failure):
    house = tmp_path / "wheelhouse"
    shutil.copytree(release["wheelhouse"], house)
    if failure == "404":
        (house / WID.filename).unlink()
        expect = "not-found: HTTP 404 File not found for http://127.0.0.1"
    else:
        (house / W.SUMS_FILE).write_text(f"{'0' * 64}  {WID.filename}\n")
        expect = "checksum-mismatch: SHA-256 of the downloaded " + WID.filename
    venv = _fresh_venv(base_venv, tmp_path / "venv")
    with WheelServer(house) as srv, _timed(f"fallback after {failure}"):
        # no build isolation, so the source build has torch, CUTLASS and (stub) nvcc and really starts compiling
        r = _pip_install(venv, release["sdist"], srv.url, nvcc_stub, isolated=False,
                         cache=release["work"] / "pip-cache", base=base_venv)
    out = r.stdout + r.stderr
    lines = _decision_lines(r)
    assert len(lines) == 1, lines
    print(lines[0])
    assert expect in lines[0] and lines[0].endswith("building from source instead"), lines[0]
    calls = nvcc_stub["log"].read_text().splitlines()
    compiles = [c for c in calls if ".cu" in c and " -c " in f" {c} "]
    assert compiles, f"the fallback build never reached nvcc; calls: {calls}\n{out[-4000:]}"
    assert "NVCC STUB: compile attempted" in out
    # stopped by the stub, so nothing was installed
    assert r.returncode != 0
    assert not (_site_packages(venv) / "flash_tree_attn").exists()
