"""tools/tile_stats.py on small trees whose tile counts are known by hand or by bench_lib's pair count. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_lib as bl  # noqa: E402
import tile_stats as ts  # noqa: E402


def test_chain_is_causal_tiling():
    start_q, end_k = ts.tree_arrays([(-1, 300)])
    s = ts.tile_stats(start_q, end_k, 64, 64)
    # 5 query blocks (the last one 44 rows); block m sees key blocks 0..m: 15 tiles, the 5 diagonal ones partial.
    assert s["visible_pairs"] == 300 * 301 // 2
    assert (s["full"], s["partial"]) == (10, 5)
    assert s["tile_area"] == 15 * 64 * 64
    assert s["tiles_per_query_block"].tolist() == [1, 2, 3, 4, 5]
    assert s["tiles_per_key_block"].tolist() == [5, 4, 3, 2, 1]


def test_siblings_leave_empty_tiles():
    segs = [(-1, 64), (0, 128), (0, 128)]  # a prompt of one block, two responses of two blocks each
    start_q, end_k = ts.tree_arrays(segs)
    s = ts.tile_stats(start_q, end_k, 64, 64)
    assert s["visible_pairs"] == bl.count_pairs(segs)
    # The second response's query blocks (3, 4) skip the first response's key blocks (1, 2).
    assert s["tiles_per_query_block"].tolist() == [1, 2, 3, 2, 3]
    assert s["tiles_per_key_block"].tolist() == [5, 2, 1, 2, 1]
    assert np.isclose(s["visible_fraction"], s["visible_pairs"] / s["tile_area"])
