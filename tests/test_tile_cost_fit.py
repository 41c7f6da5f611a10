"""tools/tile_cost_fit.py: reading tree_timing.py lines and the least-squares fit of tile costs. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import tile_cost_fit as tcf  # noqa: E402

LINES = [
    "# a header line | with a bar",
    "pytest s10c hd128 bf16 sm90 rc 0 24s: 26 passed",
    "base | wl_a 2.000 | wl_b 3.000",
    "base | wl_a 2.100 | wl_b 3.100",
    "base-sm90 | wl_a 2.071 / bwd 6.639 | wl_b 3.716 / bwd 12.085",
    "base | B4 L16384 H16 D128: fwd 6.963 ms (632 TF) bwd 23.286 ms (472 TF)",
]


def test_forward_times_are_averaged_per_label_and_other_lines_skipped():
    t = tcf.parse_timings(LINES, backward=False)
    assert t["base"] == pytest.approx({"wl_a": 2.05, "wl_b": 3.05})
    assert t["base-sm90"] == pytest.approx({"wl_a": 2.071, "wl_b": 3.716})  # the forward part of --backward lines
    assert set(t) == {"base", "base-sm90"}


def test_backward_times_come_only_from_backward_lines():
    assert tcf.parse_timings(LINES, backward=True) == {"base-sm90": pytest.approx({"wl_a": 6.639, "wl_b": 12.085})}


def test_fit_recovers_exact_costs():
    counts = {"a": (100, 10, 5), "b": (300, 5, 2), "c": (50, 40, 9), "d": (200, 20, 1)}
    cost = np.array([0.002, 0.0035, 0.01])  # ms per full tile step, partial tile step, CTA
    times = {w: float(np.dot(c, cost)) for w, c in counts.items()}
    coef, resid = tcf.fit(times, counts)
    assert coef == pytest.approx(cost * 1000.0)  # microseconds
    assert all(abs(r) < 1e-9 for r in resid.values())
    coef2, resid2 = tcf.fit(times, counts, with_cta=False)
    assert len(coef2) == 2 and any(abs(r) > 1e-3 for r in resid2.values())  # the CTA term was needed


def test_fit_needs_as_many_workloads_as_terms():
    with pytest.raises(ValueError, match="needs at least 3"):
        tcf.fit({"a": 1.0, "b": 2.0}, {"a": (1, 2, 3), "b": (2, 1, 3)})


def test_workload_counts_count_tile_steps_per_query_head_in_the_backward(monkeypatch):
    chain = [(-1, 300)]
    monkeypatch.setattr(tcf, "KERNELS", {"t-fwd": (64, 64, False), "t-bwd": (64, 64, True)})
    import bench_lib as bl
    monkeypatch.setattr(bl, "build_workload", lambda name: chain)
    monkeypatch.setattr(bl, "workload_heads", lambda name: (32, 8, 128))
    # 300 tokens in 64 x 64 tiles: 10 full + 5 partial, 5 query (or key) blocks (tools/tile_stats.py's test).
    assert tcf.workload_counts(["x"], "t-fwd") == {"x": (10, 5, 5)}
    assert tcf.workload_counts(["x"], "t-bwd") == {"x": (40, 20, 5)}


def test_unknown_label_is_a_usage_error(tmp_path):
    f = tmp_path / "ab.txt"
    f.write_text("\n".join(LINES))
    with pytest.raises(SystemExit) as e:
        tcf.main([str(f), "--kernel", "sm90-fwd", "--label", "nope"])
    assert e.value.code == 2


def test_file_without_backward_lines_is_a_usage_error(tmp_path):
    f = tmp_path / "ab.txt"
    f.write_text("base | wl_a 2.000 | wl_b 3.000\n")
    with pytest.raises(SystemExit) as e:
        tcf.main([str(f), "--kernel", "sm90-bwd"])
    assert e.value.code == 2
