"""Prebuilt-wheel identity, lookup, download and verification for flash-tree-attn.

One module answers "which wheel fits this environment" for setup.py (at install time), the release
workflows (tools/matrix.py, tools/ci_wheels.py) and the tests. It uses the standard library only and
never imports torch in-process, so setup.py can load it by file path inside an isolated build.

A prebuilt wheel is identified by:
  package version, the CUDA major.minor that the torch build uses, torch major.minor, the C++11 ABI flag
  of that torch, and the platform (manylinux_2_28 x86_64 / aarch64). The extension is built against
  the limited Python API, so one wheel (tag cp310-abi3) serves every CPython >= 3.10.
  File name:  flash_tree_attn-0.1.0+cu130torch2.14cxx11abiTRUE-cp310-abi3-manylinux_2_28_x86_64.whl

Install-time flow (setup.py's bdist_wheel, see `fetch_prebuilt`):
  probe the target interpreter's torch -> WheelId -> is it a published cell? -> download SHA256SUMS and
  the wheel from the base URL -> verify the SHA-256 and the wheel's recorded build -> hand it to pip.
  Any failure raises PrebuiltUnavailable whose one-line message says why; setup.py then builds from source.

Environment variables:
  FLASH_TREE_ATTN_WHEEL_URL=URL            base URL of the wheels and SHA256SUMS (http(s)://, file:// or a
                                           directory); default: this project's GitHub release of the version
  FLASH_TREE_ATTN_FORCE_BUILD=TRUE         never download; build from source
  FLASH_TREE_ATTN_DOWNLOAD_TIMEOUT=S       give up when the server sends nothing for S seconds (default 30)
  FLASH_TREE_ATTN_DOWNLOAD_DEADLINE=S      give up when the whole download takes longer (default 900)
  FLASH_TREE_ATTN_TARGET_PYTHON=PATH       interpreter whose torch decides the wheel (default: the one
                                           running the build, outside pip's build isolation)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

DIST_NAME = "flash_tree_attn"  # distribution name as it appears in wheel file names
PROJECT_NAME = "flash-tree-attn"
PYTHON_TAG = "cp310"
ABI_TAG = "abi3"
MIN_PYTHON = (3, 10)
MANYLINUX = "manylinux_2_28"  # torch >= 2.6 wheels need glibc 2.28 too, so nothing is lost
MIN_GLIBC = (2, 28)
ARCHES = ("x86_64", "aarch64")
SUMS_FILE = "SHA256SUMS"

# Where releases are published: https://github.com/<GITHUB_REPOSITORY>/releases/download/v<version>/.
# build-wheels.yml checks on every tag that this matches the repository that publishes the release.
GITHUB_REPOSITORY = "flash-tree-attn/flash-tree-attn"

ENV_URL = "FLASH_TREE_ATTN_WHEEL_URL"
ENV_FORCE_BUILD = "FLASH_TREE_ATTN_FORCE_BUILD"
ENV_TIMEOUT = "FLASH_TREE_ATTN_DOWNLOAD_TIMEOUT"
ENV_DEADLINE = "FLASH_TREE_ATTN_DOWNLOAD_DEADLINE"
ENV_TARGET_PYTHON = "FLASH_TREE_ATTN_TARGET_PYTHON"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 900.0

_PKG_DIR = Path(__file__).resolve().parent
_LOCAL_RE = re.compile(r"^cu(\d{2})(\d+)torch(\d+)\.(\d+)cxx11abi(TRUE|FALSE)$", re.IGNORECASE)
_FILENAME_RE = re.compile(
    r"^(?P<dist>[A-Za-z0-9_]+)-(?P<version>[^-]+)-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


def env_flag(name: str, environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(name, "").strip().upper() in ("1", "TRUE", "YES", "ON")


def major_minor(version: str) -> str:
    """'2.14.1+cu130' -> '2.14';  '13.0' -> '13.0'."""
    parts = re.split(r"[.+]", version.strip())
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError(f"not a version with major.minor: {version!r}")
    return f"{int(parts[0])}.{int(parts[1])}"


def cuda_tag(cuda: str) -> str:
    """'13.0' -> 'cu130', '12.8' -> 'cu128' (the tag torch uses for its CUDA variants)."""
    major, minor = major_minor(cuda).split(".")
    return f"cu{major}{minor}"


# --------------------------------------------------------------------------------------------------
# Identity


@dataclasses.dataclass(frozen=True)
class WheelId:
    version: str  # public package version, e.g. "0.1.0"
    cuda: str  # CUDA major.minor of the torch build, e.g. "13.0"
    torch: str  # torch major.minor, e.g. "2.14"
    cxx11_abi: bool
    arch: str  # "x86_64" or "aarch64"

    def __post_init__(self):
        if "+" in self.version:
            raise ValueError(f"WheelId.version must be the public version, got {self.version!r}")
        object.__setattr__(self, "cuda", major_minor(self.cuda))
        object.__setattr__(self, "torch", major_minor(self.torch))
        if self.arch not in ARCHES:
            raise ValueError(f"unsupported arch {self.arch!r}; prebuilt wheels exist for {ARCHES}")

    @property
    def local_version(self) -> str:
        return f"{cuda_tag(self.cuda)}torch{self.torch}cxx11abi{'TRUE' if self.cxx11_abi else 'FALSE'}"

    @property
    def full_version(self) -> str:
        return f"{self.version}+{self.local_version}"

    @property
    def platform_tag(self) -> str:
        return f"{MANYLINUX}_{self.arch}"

    @property
    def filename(self) -> str:
        return f"{DIST_NAME}-{self.full_version}-{PYTHON_TAG}-{ABI_TAG}-{self.platform_tag}.whl"

    def describe(self) -> str:
        abi = "" if self.cxx11_abi else ", pre-cxx11 ABI"
        return f"torch {self.torch}, CUDA {self.cuda}, {self.arch}{abi}"

    @classmethod
    def from_local_version(cls, version: str, local: str, arch: str) -> WheelId:
        m = _LOCAL_RE.match(local)
        if not m:
            raise ValueError(f"not a flash-tree-attn local version: {local!r}")
        cu_major, cu_minor, t_major, t_minor, abi = m.groups()
        return cls(version, f"{int(cu_major)}.{int(cu_minor)}", f"{t_major}.{t_minor}", abi.upper() == "TRUE", arch)

    @classmethod
    def parse(cls, filename: str) -> WheelId:
        """Inverse of `.filename` (case-insensitive in the local version, as PEP 440 is)."""
        m = _FILENAME_RE.match(os.path.basename(filename))
        if not m or m["dist"].lower() != DIST_NAME:
            raise ValueError(f"not a {DIST_NAME} wheel file name: {filename!r}")
        public, _, local = m["version"].partition("+")
        if not local:
            raise ValueError(f"{filename!r} has no local version (+cuXYZtorchA.Bcxx11abiTRUE|FALSE)")
        if (m["py"], m["abi"]) != (PYTHON_TAG, ABI_TAG) or not m["plat"].startswith(MANYLINUX + "_"):
            raise ValueError(f"{filename!r}: expected tags {PYTHON_TAG}-{ABI_TAG}-{MANYLINUX}_<arch>")
        return cls.from_local_version(public, local, m["plat"][len(MANYLINUX) + 1:])

    @classmethod
    def from_build_info(cls, info: dict, arch: str) -> WheelId:
        return cls(info["version"], info["cuda"], info["torch"], bool(info["cxx11_abi"]), arch)


def read_package_version(version_file=None) -> str:
    """__version__ from flash_tree_attn/_version.py, without importing the package (which imports torch)."""
    text = Path(version_file or _PKG_DIR / "_version.py").read_text()
    m = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.MULTILINE)
    if not m:
        raise ValueError("no __version__ in flash_tree_attn/_version.py")
    return m.group(1)


def default_base_url(version: str) -> str:
    return f"https://github.com/{GITHUB_REPOSITORY}/releases/download/v{version}/"


def normalize_base_url(base: str) -> str:
    """Accept http(s)://, file:// or a plain directory; always return a URL ending in '/'."""
    base = base.strip()
    if "://" not in base:
        base = Path(base).expanduser().resolve().as_uri()
    return base if base.endswith("/") else base + "/"


def wheel_url(base: str, filename: str) -> str:
    return normalize_base_url(base) + urllib.parse.quote(filename, safe="+")


# --------------------------------------------------------------------------------------------------
# The environment being installed into


@dataclasses.dataclass
class TargetEnv:
    python: str = ""  # the interpreter that was probed
    python_version: tuple = ()
    system: str = ""
    arch: str = ""
    glibc: tuple | None = None  # None: not glibc (musl) or unknown
    torch: str | None = None  # full torch.__version__
    torch_cuda: str | None = None
    cxx11_abi: bool | None = None
    torch_error: str = ""  # why torch is missing or unreadable


# Runs in the target interpreter. Prints one JSON object.
_PROBE = r"""
import json, os, platform, sys
out = {"python": sys.executable, "python_version": list(sys.version_info[:2]), "system": platform.system(),
       "arch": platform.machine(), "glibc": None, "torch": None, "torch_cuda": None, "cxx11_abi": None,
       "torch_error": ""}
try:
    lib, ver = platform.libc_ver()
    if lib == "glibc" and ver:
        out["glibc"] = [int(x) for x in ver.split(".")[:2]]
except Exception:
    pass
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
print("FTA_PROBE " + json.dumps(out))
"""


def _outside_build_isolation(environ) -> dict:
    """The environment minus pip's build-isolation overlay, so the probe sees the target's site-packages.

    pip runs the build backend with PYTHONPATH pointing at a temporary `pip-build-env-*` directory whose
    sitecustomize hides the environment's own site-packages, and with PYTHONNOUSERSITE=1.
    """
    env = dict(environ)
    pp = env.get("PYTHONPATH", "")
    if "pip-build-env" in pp:
        kept = [p for p in pp.split(os.pathsep) if p and "pip-build-env" not in p]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            env.pop("PYTHONPATH", None)
        env.pop("PYTHONNOUSERSITE", None)
    if "pip-build-env" in env.get("PATH", ""):
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "pip-build-env" not in p)
    return env


def probe_interpreter(python: str, environ=None, timeout: float = 180.0) -> TargetEnv:
    environ = os.environ if environ is None else environ
    env = _outside_build_isolation(environ)
    try:
        proc = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=tempfile.gettempdir(), check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return TargetEnv(python=python, torch_error=f"could not run {python}: {e}")
    for line in proc.stdout.splitlines():
        if line.startswith("FTA_PROBE "):
            d = json.loads(line[len("FTA_PROBE "):])
            d["python_version"] = tuple(d["python_version"])
            d["glibc"] = tuple(d["glibc"]) if d["glibc"] else None
            return TargetEnv(**d)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return TargetEnv(python=python, torch_error=f"probing {python} failed: {tail[0]}")


def probe_target_environment(environ=None) -> TargetEnv:
    """Describe the environment pip is installing into: its platform and its torch.

    Tried in order: FLASH_TREE_ATTN_TARGET_PYTHON, the interpreter running this build (seen without pip's
    build isolation), then $VIRTUAL_ENV's interpreter (front-ends that build in a separate venv). The first
    that has torch wins; otherwise the first answer is returned with torch_error set.
    """
    environ = os.environ if environ is None else environ
    candidates = []
    if environ.get(ENV_TARGET_PYTHON):
        candidates.append(environ[ENV_TARGET_PYTHON])
    candidates.append(sys.executable)
    venv = environ.get("VIRTUAL_ENV")
    if venv:
        candidates.append(str(Path(venv) / "bin" / "python"))
    first = None
    seen = set()
    for py in candidates:
        if py in seen or not (Path(py).exists() or shutil.which(py)):
            continue
        seen.add(py)
        env = probe_interpreter(py, environ)
        if env.torch:
            return env
        first = first or env
    return first or TargetEnv(python=sys.executable, torch_error="no interpreter to probe")


# --------------------------------------------------------------------------------------------------
# Decisions


class PrebuiltUnavailable(Exception):
    """A prebuilt wheel cannot be used. `kind` is a short machine-readable label; str() is one line."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def wheel_for_environment(env: TargetEnv, version: str, supported=None) -> WheelId:
    """The WheelId that fits `env`, or PrebuiltUnavailable. `supported(WheelId) -> bool` is the matrix."""
    if env.system and env.system != "Linux":
        raise PrebuiltUnavailable("no-matching-wheel", f"prebuilt wheels are Linux-only, this is {env.system}")
    if env.arch and env.arch not in ARCHES:
        raise PrebuiltUnavailable("no-matching-wheel", f"no prebuilt wheels for {env.arch} (only {', '.join(ARCHES)})")
    if env.system == "Linux" and (env.glibc is None or env.glibc < MIN_GLIBC):
        have = "not glibc" if env.glibc is None else "glibc " + ".".join(map(str, env.glibc))
        raise PrebuiltUnavailable("no-matching-wheel", f"prebuilt wheels need glibc >= 2.28 ({have})")
    if env.python_version and tuple(env.python_version) < MIN_PYTHON:
        raise PrebuiltUnavailable("no-matching-wheel", "prebuilt wheels need Python >= 3.10")
    if not env.torch:
        why = f" ({env.torch_error})" if env.torch_error else ""
        raise PrebuiltUnavailable(
            "no-torch", f"torch is not importable in the target environment{why}; install torch first"
        )
    if not env.torch_cuda:
        raise PrebuiltUnavailable("no-matching-wheel", f"torch {env.torch} is a CPU-only build")
    wid = WheelId(version, env.torch_cuda, major_minor(env.torch), bool(env.cxx11_abi), env.arch or "x86_64")
    if supported is not None and not supported(wid):
        raise PrebuiltUnavailable("no-matching-wheel", f"no prebuilt wheel is published for {wid.describe()}")
    return wid


def parse_sha256sums(text: str) -> dict:
    """Parse `sha256sum` output ("<hex>  <name>" or "<hex> *<name>") into {name: hex}."""
    sums = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(.+)$", line)
        if not m:
            raise ValueError(f"malformed {SUMS_FILE} line: {line[:100]!r}")
        sums[os.path.basename(m.group(2).strip())] = m.group(1).lower()
    return sums


def format_sha256sums(paths) -> str:
    return "".join(f"{sha256_file(p)}  {Path(p).name}\n" for p in sorted(paths, key=lambda p: Path(p).name))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Download


def _ssl_context():
    import ssl

    for var in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(var)
        if path and Path(path).is_file():
            return ssl.create_default_context(cafile=path)
    ctx = ssl.create_default_context()
    if not ctx.get_ca_certs():
        try:
            import certifi  # available in most build environments through pip's own dependency tree

            ctx = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            pass
    return ctx


def _open(url: str, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": f"{PROJECT_NAME}-setup"})
    if url.startswith("https:"):
        return urllib.request.urlopen(req, timeout=timeout, context=_ssl_context())
    return urllib.request.urlopen(req, timeout=timeout)


def _describe_error(url: str, e: BaseException) -> PrebuiltUnavailable:
    if isinstance(e, urllib.error.HTTPError):
        kind = "not-found" if e.code in (404, 410) else "http-error"
        return PrebuiltUnavailable(kind, f"HTTP {e.code} {e.reason} for {url}")
    reason = getattr(e, "reason", e)
    if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return PrebuiltUnavailable("timeout", f"no answer within the time limit from {url}")
    if isinstance(reason, FileNotFoundError) or (url.startswith("file:") and "No such file" in str(reason)):
        return PrebuiltUnavailable("not-found", f"no such file: {url}")
    return PrebuiltUnavailable("network-error", f"{type(reason).__name__}: {reason} ({url})")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Progress:
    """Download progress on `stream`: a live line on a terminal, otherwise a line every 10%."""

    def __init__(self, name: str, total: int | None, stream):
        self.name, self.total, self.stream = name, total, stream
        self.start = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.next_step = 10
        self.last_draw = 0.0
        size = _human(total) if total else "unknown size"
        self._write(f"flash-tree-attn: downloading {name} ({size})\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def update(self, done: int) -> None:
        now = time.monotonic()
        rate = done / max(now - self.start, 1e-6)
        if self.total:
            pct = 100.0 * done / self.total
            text = f"  {pct:5.1f}%  {_human(done)} / {_human(self.total)}  {_human(rate)}/s"
        else:
            pct = None
            text = f"  {_human(done)}  {_human(rate)}/s"
        if self.tty:
            if now - self.last_draw >= 0.2:
                self.last_draw = now
                self._write("\r" + text)
        elif pct is not None and pct >= self.next_step:
            while self.next_step <= pct:
                self.next_step += 10
            self._write(text + "\n")

    def finish(self, done: int) -> None:
        secs = time.monotonic() - self.start
        end = "\r" if self.tty else ""
        self._write(f"{end}  done: {_human(done)} in {secs:.1f} s\n")


def download(url: str, dest: Path, *, timeout: float, deadline: float, progress_stream=None,
             expected_size: int | None = None) -> str:
    """Stream `url` into `dest` and return the SHA-256 of what was written. Raises PrebuiltUnavailable."""
    t_end = time.monotonic() + deadline
    h = hashlib.sha256()
    done = 0
    try:
        with _open(url, timeout) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(length) if length and length.isdigit() else expected_size
            progress = _Progress(Path(dest).name, total, progress_stream) if progress_stream else None
            while True:
                if time.monotonic() > t_end:
                    raise PrebuiltUnavailable(
                        "timeout", f"download of {url} did not finish within {deadline:.0f} s ({_human(done)} received)"
                    )
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress.update(done)
            if progress:
                progress.finish(done)
            if total and done != total:
                raise PrebuiltUnavailable("network-error", f"{url}: got {done} of {total} bytes")
    except PrebuiltUnavailable:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _describe_error(url, e) from None
    return h.hexdigest()


def fetch_text(url: str, timeout: float, limit: int = 1 << 20) -> str:
    try:
        with _open(url, timeout) as resp:
            data = resp.read(limit + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _describe_error(url, e) from None
    if len(data) > limit:
        raise PrebuiltUnavailable("bad-checksum-file", f"{url} is larger than {limit} bytes")
    return data.decode("utf-8", "replace")


def read_wheel_build_info(path) -> dict:
    """The _build_info.json recorded inside a flash-tree-attn wheel ({} if absent)."""
    with zipfile.ZipFile(path) as zf:
        try:
            return json.loads(zf.read(f"{DIST_NAME}/_build_info.json"))
        except KeyError:
            return {}


def check_wheel_contents(path, wid: WheelId) -> None:
    """The downloaded wheel is a zip holding the extension, built for what its name says."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise PrebuiltUnavailable("invalid-wheel", f"{Path(path).name} is not a readable wheel: {e}") from None
    if bad:
        raise PrebuiltUnavailable("invalid-wheel", f"{Path(path).name}: corrupt member {bad}")
    if not any(n.startswith(f"{DIST_NAME}/_C") and n.endswith(".so") for n in names):
        raise PrebuiltUnavailable("invalid-wheel", f"{Path(path).name} contains no compiled extension")
    info = read_wheel_build_info(path)
    try:
        recorded = WheelId.from_build_info(info, wid.arch)
    except (KeyError, TypeError, ValueError):
        raise PrebuiltUnavailable("invalid-wheel", f"{Path(path).name} has no usable _build_info.json") from None
    if recorded != wid:
        raise PrebuiltUnavailable(
            "invalid-wheel", f"{Path(path).name} records a build for {recorded.full_version}, not {wid.full_version}"
        )


def fetch_prebuilt(wid: WheelId, base_url: str, dest_dir, *, timeout: float | None = None,
                   deadline: float | None = None, progress_stream=None) -> Path:
    """Download and verify the wheel `wid` from `base_url` into `dest_dir`; return its path.

    Order: SHA256SUMS (small) -> is the wheel listed? -> the wheel (with progress) -> SHA-256 equal? ->
    readable wheel with the extension and a _build_info.json that matches its name.
    """
    timeout = _env_seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT_S) if timeout is None else timeout
    deadline = _env_seconds(ENV_DEADLINE, DEFAULT_DEADLINE_S) if deadline is None else deadline
    base = normalize_base_url(base_url)
    sums_url = base + SUMS_FILE
    sums_text = fetch_text(sums_url, timeout)
    try:
        sums = parse_sha256sums(sums_text)
    except ValueError as e:
        raise PrebuiltUnavailable("bad-checksum-file", f"{sums_url}: {e}") from None
    expected = _lookup_sum(sums, wid.filename)
    if expected is None:
        raise PrebuiltUnavailable("no-matching-wheel", f"{wid.filename} is not listed in {sums_url}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / (wid.filename + ".part")
    try:
        got = download(wheel_url(base, wid.filename), part, timeout=timeout, deadline=deadline,
                       progress_stream=progress_stream)
        if got != expected:
            raise PrebuiltUnavailable(
                "checksum-mismatch",
                f"SHA-256 of the downloaded {wid.filename} is {got}, but {SUMS_FILE} says {expected}",
            )
        check_wheel_contents(part, wid)
        final = dest_dir / wid.filename
        os.replace(part, final)
        return final
    finally:
        if part.exists():
            part.unlink()


def _lookup_sum(sums: dict, filename: str) -> str | None:
    if filename in sums:
        return sums[filename]
    # PEP 440 local versions are case-insensitive; tolerate a release that lower-cased the file names.
    folded = {k.lower(): v for k, v in sums.items()}
    return folded.get(filename.lower())


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PrebuiltUnavailable("bad-setting", f"{name}={raw!r} is not a number of seconds") from None
    return max(value, 0.1)


# --------------------------------------------------------------------------------------------------
# After installation: what was built, and does it fit the torch that is installed now


def build_info() -> dict:
    """What the installed extension was built with (version, git commit, torch, CUDA, archs, head dims).

    Read from flash_tree_attn/_build_info.json, written by setup.py at build time; {} in a source
    checkout that was never built.
    """
    try:
        return json.loads((_PKG_DIR / "_build_info.json").read_text())
    except (OSError, ValueError):
        return {}


def fix_command(version: str | None = None) -> str:
    pin = f"=={version}" if version else ""
    return f'pip install --no-cache-dir --force-reinstall --no-deps "{PROJECT_NAME}{pin}"'


def compatibility_problem(info: dict, torch_version: str, torch_cuda: str | None,
                          cxx11_abi: bool | None = None) -> str | None:
    """Why an extension built as `info` cannot be loaded into this torch, or None if it can.

    torch's C++ ABI changes between minor releases, so the torch major.minor must match; the CUDA
    runtime major and the C++11 ABI flag must match too. (A CUDA minor difference is tolerated.)
    """
    built_torch = info.get("torch")
    if not built_torch or info.get("cuda_extension") is False:
        return None
    have = torch_version.split("+")[0]
    built_cuda = info.get("cuda")
    problems = []
    if major_minor(built_torch) != major_minor(have):
        problems.append(f"torch {built_torch}")
    if built_cuda and torch_cuda and built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        problems.append(f"CUDA {built_cuda}")
    if built_cuda and not torch_cuda:
        problems.append(f"CUDA {built_cuda} (the installed torch is a CPU-only build)")
    if cxx11_abi is not None and "cxx11_abi" in info and bool(info["cxx11_abi"]) != bool(cxx11_abi):
        problems.append(f"cxx11 ABI {bool(info['cxx11_abi'])}")
    if not problems:
        return None
    have_desc = f"torch {have}" + (f" with CUDA {torch_cuda}" if torch_cuda else " (CPU-only)")
    version = info.get("version")
    return (
        f"flash_tree_attn {version or ''} was built for {', '.join(problems)}, but {have_desc} is installed, "
        f"so its compiled extension cannot be loaded. Fix: reinstall it for the installed torch with "
        f"`{fix_command(version)}` (downloads the matching prebuilt wheel or builds one), or install the "
        f"torch it was built for: `pip install \"torch=={major_minor(built_torch)}.*\"`."
    )


def environment_report() -> dict:
    """build_info() plus the running environment; what `python -m flash_tree_attn` prints."""
    report = {"build": build_info()}
    try:
        import torch

        report["torch"] = torch.__version__
        report["torch_cuda"] = torch.version.cuda
        report["cuda_available"] = bool(torch.cuda.is_available())
        abi = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
        problem = compatibility_problem(report["build"], torch.__version__, torch.version.cuda, abi)
        report["compatible"] = problem is None
        if problem:
            report["problem"] = problem
    except Exception as e:  # noqa: BLE001 - a report must not fail
        report["torch_error"] = f"{type(e).__name__}: {e}"
    b = report["build"]
    if b.get("torch") and b.get("cuda") and b.get("version"):
        import platform

        arch = platform.machine()
        if arch in ARCHES:
            try:
                report["wheel"] = WheelId.from_build_info(b, arch).filename
            except (KeyError, ValueError):
                pass
    return report


if __name__ == "__main__":  # pragma: no cover - convenience for workflows and debugging
    import argparse

    ap = argparse.ArgumentParser(description="flash-tree-attn prebuilt wheel identity")
    ap.add_argument("command", choices=["probe", "name", "report"])
    ap.add_argument("--version", help="package version (default: flash_tree_attn/_version.py)")
    args = ap.parse_args()
    if args.command == "report":
        print(json.dumps(environment_report(), indent=1, sort_keys=True))
        sys.exit(0)
    target = probe_target_environment()
    if args.command == "probe":
        print(json.dumps(dataclasses.asdict(target), indent=1))
        sys.exit(0)
    try:
        print(wheel_for_environment(target, args.version or read_package_version()).filename)
    except PrebuiltUnavailable as e:
        print(f"no prebuilt wheel: {e}", file=sys.stderr)
        sys.exit(1)
