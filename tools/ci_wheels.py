#!/usr/bin/env python3
"""Release-wheel chores shared by build-wheels.yml and tests/test_wheel_install.py.

  finalize WHEEL... --out DIR [--retag-platform TAG]
      Check a built (and auditwheel-repaired) wheel against its recorded build (flash_tree_attn/
      _build_info.json inside it): version with the identity local part, tags cp310-abi3-manylinux_2_28_<arch>,
      no torch or CUDA library vendored. Write it to DIR under its canonical name (wheel.WheelId.filename).
      --retag-platform rewrites a linux_<arch> tag to TAG (for local test builds that skip auditwheel).
  sums DIR
      Write DIR/SHA256SUMS for every *.whl and *.tar.gz in DIR.
  check-release DIR [--version V]
      Every wheel of the matrix (tools/matrix.py) is present, the sdist too, and SHA256SUMS matches.
  check-tag TAG
      TAG is v<package version>, and wheel.GITHUB_REPOSITORY is $GITHUB_REPOSITORY (the default download URL
      points at the releases this workflow publishes).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matrix  # noqa: E402  (tools/matrix.py; loads flash_tree_attn/wheel.py by path)

wheel = matrix.wheel

# Libraries that must come from the user's torch / CUDA installation, never from our wheel.
FORBIDDEN_VENDORED = re.compile(r"lib(torch|c10|cudart|cuda|cublas|cusparse|cusolver|curand|nvrtc|nvToolsExt)[\w.-]*\.so")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _dist_info(names) -> str:
    infos = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    if len(infos) != 1:
        raise SystemExit(f"expected one .dist-info directory, found {sorted(infos)}")
    return infos.pop()


def finalize(path: Path, out_dir: Path, retag_platform: str | None = None) -> Path:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        members = {n: zf.read(n) for n in names}
        infos = {n: zf.getinfo(n) for n in names}
    dist_info = _dist_info(names)
    info = wheel.read_wheel_build_info(path)
    if not info or info.get("cuda_extension") is False:
        raise SystemExit(f"{path.name}: no CUDA build recorded in flash_tree_attn/_build_info.json")
    so = [n for n in names if n.startswith("flash_tree_attn/_C") and n.endswith(".so")]
    if len(so) != 1 or ".abi3." not in so[0]:
        raise SystemExit(f"{path.name}: expected one flash_tree_attn/_C.abi3.so, found {so}")
    vendored = [n for n in names if FORBIDDEN_VENDORED.search(n.rsplit("/", 1)[-1])]
    if vendored:
        raise SystemExit(f"{path.name}: torch/CUDA libraries were vendored (auditwheel --exclude missing?): {vendored}")

    wheel_text = members[f"{dist_info}/WHEEL"].decode()
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    plats = {t.split("-")[2] for t in tags}
    if retag_platform:
        plats = {retag_platform}
        wheel_text = "".join(
            line for line in wheel_text.splitlines(keepends=True) if not line.startswith("Tag:")
        ) + f"Tag: {wheel.PYTHON_TAG}-{wheel.ABI_TAG}-{retag_platform}\n"
        wheel_text = wheel_text.replace("Root-Is-Purelib: true", "Root-Is-Purelib: false")
    if {"-".join(t.split("-")[:2]) for t in tags} != {f"{wheel.PYTHON_TAG}-{wheel.ABI_TAG}"}:
        raise SystemExit(f"{path.name}: tags {tags}, expected {wheel.PYTHON_TAG}-{wheel.ABI_TAG}-*")
    arches = {p.split("_", 3)[-1] if p.startswith("manylinux_") else "" for p in plats}
    if len(plats) != 1 or not next(iter(plats)).startswith(wheel.MANYLINUX + "_") or len(arches) != 1:
        raise SystemExit(f"{path.name}: platform tags {sorted(plats)}, expected exactly {wheel.MANYLINUX}_<arch> "
                         "(auditwheel repair --plat ... --only-plat)")
    wid = wheel.WheelId.from_build_info(info, arches.pop())

    metadata = members[f"{dist_info}/METADATA"].decode()
    m = re.search(r"^Version: (.+)$", metadata, re.MULTILINE)
    if not m or m.group(1).strip().lower() != wid.full_version.lower():
        got = m.group(1).strip() if m else "?"
        raise SystemExit(f"{path.name}: METADATA version {got}, but the recorded build is {wid.full_version} "
                         "(build with FLASH_TREE_ATTN_WHEEL_LOCAL_VERSION=auto)")

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wid.filename
    if retag_platform:
        members[f"{dist_info}/WHEEL"] = wheel_text.encode()
        record_name = f"{dist_info}/RECORD"
        lines = []
        for n in names:
            if n == record_name:
                lines.append(f"{n},,")
            else:
                lines.append(f"{n},{_record_hash(members[n])},{len(members[n])}")
        members[record_name] = ("\n".join(lines) + "\n").encode()
        tmp = target.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for n in names:  # keep the original order: dist-info (with RECORD) last, as it was
                zi = zipfile.ZipInfo(n, date_time=infos[n].date_time)
                zi.external_attr = infos[n].external_attr
                zi.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zi, members[n])
        os.replace(tmp, target)
    elif path.resolve() != target.resolve():
        target.write_bytes(path.read_bytes())
    wheel.check_wheel_contents(target, wid)
    print(f"{path.name} -> {target}")
    return target


def write_sums(directory: Path) -> Path:
    files = sorted(p for p in directory.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    if not files:
        raise SystemExit(f"nothing to checksum in {directory}")
    out = directory / wheel.SUMS_FILE
    out.write_text(wheel.format_sha256sums(files))
    print(out.read_text(), end="")
    return out


def check_release(directory: Path, version: str) -> None:
    expected = {c.wheel_id(version).filename for c in matrix.cells()}
    present = {p.name for p in directory.glob("*.whl")}
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    problems = [f"missing wheel {n}" for n in missing] + [f"wheel not in the matrix {n}" for n in unexpected]
    sdists = [directory / f"{stem}-{version}.tar.gz" for stem in ("flash_tree_attn", "flash-tree-attn")]
    if not any(p.exists() for p in sdists):
        problems.append(f"missing sdist {sdists[0].name}")
    sums_path = directory / wheel.SUMS_FILE
    if not sums_path.exists():
        problems.append(f"missing {wheel.SUMS_FILE}")
    else:
        sums = wheel.parse_sha256sums(sums_path.read_text())
        for p in sorted(directory.iterdir()):
            if p.name.endswith((".whl", ".tar.gz")) and sums.get(p.name) != wheel.sha256_file(p):
                problems.append(f"{wheel.SUMS_FILE} does not match {p.name}")
    for p in sorted(directory.glob("*.whl")):
        try:
            wheel.check_wheel_contents(p, wheel.WheelId.parse(p.name))
        except (ValueError, wheel.PrebuiltUnavailable) as e:
            problems.append(f"{p.name}: {e}")
    if problems:
        raise SystemExit("release check failed:\n  " + "\n  ".join(problems))
    print(f"release {version}: {len(expected)} wheels, sdist and {wheel.SUMS_FILE} OK")


def check_tag(tag: str) -> None:
    version = matrix.package_version()
    if tag != f"v{version}":
        raise SystemExit(f"tag {tag} does not match flash_tree_attn/_version.py ({version}); expected v{version}")
    repo = os.environ.get("GITHUB_REPOSITORY")
    if repo and repo != wheel.GITHUB_REPOSITORY:
        raise SystemExit(f"flash_tree_attn/wheel.py GITHUB_REPOSITORY is {wheel.GITHUB_REPOSITORY!r} but this release "
                         f"is published by {repo!r}: installs would look for wheels in the wrong place")
    print(f"tag {tag} OK; wheels will be found at {wheel.default_base_url(version)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finalize")
    f.add_argument("wheels", nargs="+", type=Path)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--retag-platform", default=None)
    s = sub.add_parser("sums")
    s.add_argument("directory", type=Path)
    c = sub.add_parser("check-release")
    c.add_argument("directory", type=Path)
    c.add_argument("--version", default=None)
    t = sub.add_parser("check-tag")
    t.add_argument("tag")
    args = ap.parse_args(argv)
    if args.command == "finalize":
        for w in args.wheels:
            finalize(w, args.out, args.retag_platform)
    elif args.command == "sums":
        write_sums(args.directory)
    elif args.command == "check-release":
        check_release(args.directory, args.version or matrix.package_version())
    else:
        check_tag(args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
