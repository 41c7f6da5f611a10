"""tools/host_overhead.py: its arguments. CPU only (the timed calls run on the GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import host_overhead as ho  # noqa: E402


def test_arguments():
    args = ho.parse_args(["new"])
    assert (args.label, args.cases, args.iters) == ("new", ["tiny", "4k"], 1000)
    assert ho.parse_args(["x", "--cases", "4k", "--iters", "10"]).cases == ["4k"]
    with pytest.raises(SystemExit):
        ho.parse_args(["x", "--cases", "huge"])
