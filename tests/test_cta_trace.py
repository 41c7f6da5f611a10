"""tools/cta_trace.py: the summary of per-CTA timestamps (synthetic traces). CPU only (tracing needs the patched
extension on the GPU)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import cta_trace  # noqa: E402


def synthetic(kind: str, per_step: int, fixed: int, gap_ns: int) -> np.ndarray:
    """Two SMs running CTAs back to back; 1 cycle = 1 ns; CTA 3 returned at once (all zeros but its start)."""
    rows = np.zeros((7, cta_trace.SLOTS), dtype=np.int64)
    clock = {0: 1000, 1: 1000}
    for cta, steps in enumerate([4, 9, 2, 0, 7, 5, 12]):
        sm = cta % 2
        start = clock[sm]
        rows[cta, 0], rows[cta, 8], rows[cta, 10] = start, start, sm
        if steps == 0:
            continue
        total = per_step * steps + fixed
        end_slot = cta_trace.END_SLOT[kind]
        # phases split the fixed cost: 40% before the mainloop, 60% after it, spread over the slots in between
        rows[cta, 1:end_slot] = start + np.linspace(0.2, 0.4, end_slot - 1) * fixed
        rows[cta, 2] = start + 0.4 * fixed
        rows[cta, 3] = rows[cta, 2] + per_step * steps
        rows[cta, 4:end_slot + 1] = rows[cta, 3] + np.linspace(0.3, 0.6, end_slot - 3) * fixed
        rows[cta, end_slot] = start + total
        rows[cta, 7] = start + 0.3 * fixed
        rows[cta, 9], rows[cta, 11] = start + total, steps
        clock[sm] = start + total + gap_ns
    return rows


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_summary_recovers_the_cost_model(kind):
    rows = synthetic(kind, per_step=2500, fixed=8000, gap_ns=300)
    s = cta_trace.summarize(rows.ravel(), kind)
    assert s["ctas"] == 6
    assert s["cycles_per_step"] == pytest.approx(2500)
    assert s["fixed_cycles"] == pytest.approx(8000)
    assert s["loop_cycles_per_step"] == pytest.approx(2500) and s["loop_fixed_cycles"] == pytest.approx(0, abs=1e-6)
    assert np.all(s["gaps_ns"] == 300)
    busy = rows[:, 9] - rows[:, 8]
    span = rows[:, 9].max() - rows[:, 8].min()
    assert s["occupied"] == pytest.approx(busy[busy > 0].sum() / (2 * span))
    text = cta_trace.report("synthetic", kind, s)
    assert "fixed = 3.20 steps" in text and "gap between CTAs on an SM (ns): med 300" in text


def test_forward_item_timeline_from_the_producer_slots():
    rows = synthetic("fwd", per_step=2500, fixed=8000, gap_ns=300)
    assert not cta_trace.summarize(rows.ravel(), "fwd")["events"]  # a trace without the producer slots
    live = rows[:, 4] != 0
    start = rows[:, 0]
    for slot, offset in [(14, -4000), (12, -3000), (6, -2600), (13, -2400), (7, -1700), (5, 500)]:
        rows[live, slot] = start[live] + offset
    rows[live, 2] = start[live] + 1600  # first K in shared memory
    s = cta_trace.summarize(rows.ravel(), "fwd")
    assert np.all(s["events"]["first K issued"] == -1700)
    assert np.all(s["events"]["first K in flight"] == 3300)
    text = cta_trace.report("synthetic", "fwd", s)
    assert "item timeline" in text and "first K in flight" in text


def test_an_untraced_launch_is_an_error():
    with pytest.raises(ValueError, match="cta_trace.patch"):
        cta_trace.summarize(np.zeros(cta_trace.SLOTS * 4, dtype=np.int64), "fwd")


def test_the_trace_patch_applies_to_the_sources():
    """The patch edits kernel sources by context: a kernel change that moves its lines must refresh it (apply it with
    --3way, or with --reject and place the rejected hunks; then regenerate it with git diff), or the tool stops
    working unseen (it had, by 3af3769)."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a git checkout")
    r = subprocess.run(["git", "apply", "--check", "tools/cta_trace.patch"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
