"""tools/ab_bench.py: variant parsing, the rows it takes from a bench.py JSON, and its table. CPU only (the
extension swapping and bench runs happen on the GPU machine)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import ab_bench  # noqa: E402


def test_parse_variant():
    assert ab_bench.parse_variant("base=a/b.so") == ("base", Path("a/b.so"), None)
    assert ab_bench.parse_variant("new=x.so:x.json") == ("new", Path("x.so"), Path("x.json"))
    for bad in ("a.so", "=a.so", "name="):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
            ab_bench.parse_variant(bad)


BENCH = {"rows": [
    {"workload": "chain", "method": "ours_sm90", "status": "ok", "fwd_tflops": 618.6, "fwdbwd_tflops": 501.8},
    {"workload": "chain", "method": "flex", "status": "ok", "fwd_tflops": 418.1, "fwdbwd_tflops": 393.6},
    {"workload": "deep", "method": "ours_sm90", "status": "error", "fwd_tflops": None, "fwdbwd_tflops": None},
]}


def test_ours_rows_keeps_ours_and_marks_failures_nan():
    rows = ab_bench.ours_rows(BENCH)
    assert rows[("chain", "ours_sm90")] == (618.6, 501.8)
    assert ("chain", "flex") not in rows
    assert all(math.isnan(v) for v in rows[("deep", "ours_sm90")])


def test_table_lists_rounds_side_by_side():
    a = ab_bench.ours_rows(BENCH)
    b = {("chain", "ours_sm90"): (620.0, 510.0)}
    out = ab_bench.table({"base": [a, a], "new": [b, b]}).splitlines()
    assert out[1] == "-- chain ours_sm90"
    assert out[2].split() == ["base", "618.6", "/", "501.8", "618.6", "/", "501.8"]
    assert out[3].split() == ["new", "620.0", "/", "510.0", "620.0", "/", "510.0"]
    assert out[4] == "-- deep ours_sm90"
    assert "nan" in out[6]  # new has no deep row


def test_main_refuses_missing_files_and_out_json(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ab_bench.main(["--variant", f"a={tmp_path / 'missing.so'}"])
    assert "is not a file" in capsys.readouterr().err
    so = tmp_path / "a.so"
    so.write_bytes(b"")
    with pytest.raises(SystemExit):
        ab_bench.main(["--variant", f"a={so}", "--", "--out-json", "x.json"])
    assert "--out-json" in capsys.readouterr().err


def test_main_alternates_variants_and_restores_the_extension(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    monkeypatch.setattr(ab_bench, "EXTENSION", pkg / "_C.abi3.so")
    monkeypatch.setattr(ab_bench, "BUILD_INFO", pkg / "_build_info.json")
    ab_bench.EXTENSION.write_bytes(b"original")
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    seen = []

    def fake_run(cmd, **kwargs):  # a bench.py run: reports the extension in place as its TFLOP/s
        value = float(ab_bench.EXTENSION.read_bytes())
        seen.append(value)
        out = Path(cmd[cmd.index("--out-json") + 1])
        out.write_text(ab_bench.json.dumps({"rows": [{"workload": "w", "method": "ours_sm90", "status": "ok",
                                                      "fwd_tflops": value, "fwdbwd_tflops": value}]}))
        return ab_bench.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ab_bench.subprocess, "run", fake_run)
    assert ab_bench.main(["--variant", f"a={a}", "--variant", f"b={b}", "--rounds", "2", "--", "--quick"]) == 0
    assert seen == [1.0, 2.0, 1.0, 2.0]
    assert ab_bench.EXTENSION.read_bytes() == b"original"
    assert not ab_bench.BUILD_INFO.exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].split() == ["a", "1.0", "/", "1.0", "1.0", "/", "1.0"]
    assert lines[-1].split() == ["b", "2.0", "/", "2.0", "2.0", "/", "2.0"]
