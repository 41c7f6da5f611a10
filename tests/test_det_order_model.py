"""tools/det_order_model.py on small trees whose schedules are known by hand. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import det_order_model as dm  # noqa: E402
from tile_stats import tile_visible_counts, tree_arrays  # noqa: E402


def test_launch_order_is_rank_blocks():
    # 10 key blocks, 2 heads: blocks 0-7 of head 0, of head 1, then blocks 8-9 of head 0, of head 1
    order = dm.launch_order(10, 2)
    assert order[:8] == [(b, 0) for b in range(8)] and order[8:16] == [(b, 1) for b in range(8)]
    assert order[16:] == [(8, 0), (9, 0), (8, 1), (9, 1)]


@pytest.mark.parametrize("order", ["head", "qblock", "window2", "window3"])
def test_item_orders(order):
    got = dm.items([0, 1, 2, 5], range(4, 6), order)
    assert sorted(got) == sorted((h, m) for h in (4, 5) for m in (0, 1, 2, 5))
    expected = {
        "head": [(4, 0), (4, 1), (4, 2), (4, 5), (5, 0), (5, 1), (5, 2), (5, 5)],
        "qblock": [(4, 0), (5, 0), (4, 1), (5, 1), (4, 2), (5, 2), (4, 5), (5, 5)],
        "window2": [(4, 0), (4, 1), (5, 0), (5, 1), (4, 2), (5, 2), (4, 5), (5, 5)],
        "window3": [(4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2), (4, 5), (5, 5)],
    }
    assert got == expected[order]


def test_one_cta_per_sm_without_waits():
    # A chain of 2 key blocks (4 query blocks of 64), one head: CTA 0 has 4 items, CTA 1 has 2 (query blocks 2, 3).
    nonempty = tile_visible_counts(*tree_arrays([(-1, 256)]), dm.BLOCK_M, dm.BLOCK_N) > 0
    assert nonempty.tolist() == [[True, False], [True, False], [True, True], [True, True]]
    args = dict(group=1, kv_heads=1, sms=2, add_latency=0.0)
    assert dm.finish_time(nonempty, "head", False, **args) == 4.0
    # deterministic: CTA 1's adds follow CTA 0's on query blocks 2 and 3 (done at 3 and 4): it ends at 4 too
    assert dm.finish_time(nonempty, "head", True, **args) == 4.0
    # one SM: the CTAs run one after the other
    assert dm.finish_time(nonempty, "head", True, **dict(args, sms=1)) == 6.0


def test_query_block_order_helps_a_grpo_tree():
    """A prompt whose key blocks every response sees: head by head, a response's CTA waits for the prompt's CTAs to
    walk a whole head before its second head; query block by query block it does not."""
    segments = [(-1, 256)] + [(0, 256)] * 6
    nonempty = tile_visible_counts(*tree_arrays(segments), dm.BLOCK_M, dm.BLOCK_N) > 0
    args = dict(group=4, kv_heads=2, sms=16, add_latency=0.3)
    base = dm.finish_time(nonempty, "head", False, **args)
    head = dm.finish_time(nonempty, "head", True, **args)
    qblock = dm.finish_time(nonempty, "qblock", True, **args)
    assert base <= qblock < head
    assert np.isclose(dm.finish_time(nonempty, "window1", True, **args), qblock)
