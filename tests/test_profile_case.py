"""tools/profile_case.py: its arguments and default heads. CPU only (the profiled calls run on the GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import profile_case as pc  # noqa: E402


def test_default_heads_match_the_benchmark_dense_rows():
    assert [pc.default_heads(d) for d in (64, 128, 256)] == [32, 16, 8]


def test_head_dim_that_does_not_divide_2048_needs_heads():
    with pytest.raises(ValueError, match="pass --heads"):
        pc.default_heads(96)
    assert pc.parse_args(["fa2", "--head-dim", "96", "--heads", "12"]).heads == 12


def test_arguments():
    args = pc.parse_args(["ours", "--head-dim", "256"])
    assert (args.impl, args.heads, args.batch, args.length, args.calls) == ("ours", 8, 1, 16384, 3)
    assert pc.parse_args(["cudnn"]).impl == "cudnn"
    with pytest.raises(SystemExit):
        pc.parse_args(["flex"])
