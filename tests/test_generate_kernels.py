"""The kernel list (tools/generate_kernels.py): which (path, direction, head dim) units exist and what the
dispatch table says about them. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import generate_kernels as g  # noqa: E402


def test_every_path_and_direction_has_every_head_dim():
    kernels = g.select(paths=g.PATHS)
    by = {(p, d): {k.head_dim for k in kernels if (k.path, k.direction) == (p, d)}
          for p in g.PATHS for d in g.DIRECTIONS}
    assert all(dims == set(g.HEAD_DIMS) for dims in by.values())


def test_default_selection_is_the_sm80_path_only():
    assert {k.path for k in g.select()} == {"sm80"}


def test_table_lists_every_generated_unit(tmp_path):
    kernels = g.select([64, 256], ["bf16"], paths=g.PATHS)
    files = g.generate(tmp_path, kernels)
    table = (tmp_path / "kernel_table.h").read_text()
    assert len(files) == len(kernels) == 2 * 2 * 2 * 2  # (sm80, sm90) x (fwd, bwd) x (64, 256) x causal or not
    sm90_bwd = table.split("#define FTA_SM90_BWD_KERNELS(X)")[1].split("#define")[0]
    assert "X(64, cutlass::bfloat16_t, true)" in sm90_bwd and "X(256, cutlass::bfloat16_t, false)" in sm90_bwd
    for k in kernels:
        src = (tmp_path / k.filename).read_text()
        assert f"run_{k.path}_{k.direction}<{k.head_dim}," in src
