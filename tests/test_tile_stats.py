"""tools/tile_stats.py on small trees whose tile counts are known by hand or by bench_lib's pair count. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_quarters_of_the_diagonal_tiles():
    # A chain of 256 tokens in 128 x 128 tiles: 3 non-empty tiles, of which the 2 diagonal ones have their upper
    # right quarter (rows 0-63, keys 64-127) above the diagonal.
    start_q, end_k = ts.tree_arrays([(-1, 256)])
    q = ts.part_stats(start_q, end_k, 128, 128)
    assert (q["tiles"], q["parts"], q["empty_parts"]) == (3, 12, 2)
    assert q["part_area"] == (3 * 4 - 2) * 64 * 64
    assert np.isclose(q["visible_fraction"], 256 * 257 // 2 / q["part_area"])


def test_quarters_of_a_sibling_tile():
    # Two responses of 64 tokens after a 128-token prompt, 3 non-empty 128 x 128 tiles. Empty quarters: rows 0-63 x
    # keys 64-127 (above the diagonal), and in the tile of rows and keys 128-255 the first response's rows x the
    # second's keys (above the diagonal) and the second response's rows x the first's keys (siblings).
    segs = [(-1, 128), (0, 64), (0, 64)]
    start_q, end_k = ts.tree_arrays(segs)
    q = ts.part_stats(start_q, end_k, 128, 128)
    assert (q["tiles"], q["empty_parts"]) == (3, 3)
    assert np.isclose(q["visible_fraction"], bl.count_pairs(segs) / q["part_area"])
    # Key halves of 64 x 128 tiles (the backward's warpgroups): 6 non-empty tiles; unseen are keys 64-127 by rows
    # 0-63 (diagonal), keys 192-255 by the first response's rows and keys 128-191 by the second's (siblings).
    h = ts.part_stats(start_q, end_k, 64, 128, 1, 2)
    assert (h["tiles"], h["parts"], h["empty_parts"]) == (6, 12, 3)
    assert h["part_area"] == 9 * 64 * 64
    assert np.isclose(h["visible_fraction"], bl.count_pairs(segs) / h["part_area"])


def test_parts_that_do_not_divide_the_tile_are_an_error():
    start_q, end_k = ts.tree_arrays([(-1, 256)])
    with pytest.raises(ValueError, match="must divide"):
        ts.part_stats(start_q, end_k, 128, 128, 3, 3)


def test_parts_of_the_partial_tiles_by_what_they_need():
    # A 96-token prompt, a 32-token response and a 128-token one, in 128 x 128 tiles cut into 64 x 64 quarters. The
    # two diagonal tiles are causal only: their upper right quarter empty, lower left full, the other two across
    # the diagonal. Below it, the second response's rows x the first 128 keys: keys 0-63 all seen (full quarters),
    # keys 64-127 seen up to the prompt's end at 95 (two quarters partial below the diagonal).
    start_q, end_k = ts.tree_arrays([(-1, 96), (0, 32), (0, 128)])
    q = ts.part_stats(start_q, end_k, 128, 128)
    assert q["partial_tiles"] == 3
    assert q["partial_tile_parts"] == {"empty": 2, "full": 4, "across_diagonal": 4, "below_diagonal": 2}
