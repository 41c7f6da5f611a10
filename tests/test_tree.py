"""CPU tests of flash_tree_attn.tree: layouts checked against token-level trees built here from parent pointers."""
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flash_tree_attn.reference import count_visible_pairs, visible_mask
from flash_tree_attn.tree import TreeLayout, layout_from_segments, pack_token_groups

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------
# Independent model of a segment tree
# ----------------------------------------------------------------------------------------------------------

@st.composite
def segment_trees(draw, max_segments=9, max_len=4, min_len=0):
    n = draw(st.integers(1, max_segments))
    segs = [(-1, draw(st.integers(min_len, max_len)))]
    for i in range(1, n):
        segs.append((draw(st.integers(0, i - 1)), draw(st.integers(min_len, max_len))))
    return segs


def model_tree(segs):
    """Token-level model of one tree: DFS order of segments, segment offsets (local), and for each packed token
    its parent token (-1 for none). Written recursively, token by token."""
    children = {i: [] for i in range(len(segs))}
    for i, (p, _) in enumerate(segs):
        if p >= 0:
            children[p].append(i)
    order, offsets, parent_tok = [], {}, []

    def visit(i, last_token):
        order.append(i)
        offsets[i] = len(parent_tok)
        for _ in range(segs[i][1]):
            parent_tok.append(last_token)
            last_token = len(parent_tok) - 1
        for c in children[i]:
            visit(c, last_token)

    if segs:
        visit(0, -1)
    return order, [offsets[i] for i in range(len(segs))], parent_tok


def ancestors_or_self(parent_tok):
    n = len(parent_tok)
    rel = np.zeros((n, n), dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    for t in range(n):
        a = t
        while a >= 0:
            rel[t, a] = True
            a = parent_tok[a]
        depth[t] = rel[t].sum() - 1
    return rel, depth


def check_masks(layout: TreeLayout, models):
    cu = layout.cu_seqlens.tolist()
    for b, parent_tok in enumerate(models):
        lo, hi = cu[b], cu[b + 1]
        assert hi - lo == len(parent_tok)
        s = layout.start_q[lo:hi]
        e = layout.end_k[lo:hi]
        assert s.tolist() == list(range(hi - lo))
        rel, depth = ancestors_or_self(parent_tok)
        mask = visible_mask(hi - lo, hi - lo, True, s, e).numpy()
        np.testing.assert_array_equal(mask, rel)
        assert layout.position_ids[lo:hi].tolist() == depth.tolist()


# ----------------------------------------------------------------------------------------------------------
# layout_from_segments
# ----------------------------------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(segment_trees(), min_size=1, max_size=4))
def test_layout_matches_parent_pointer_model(trees):
    layout = layout_from_segments(trees)
    assert layout.start_q.dtype == layout.end_k.dtype == layout.position_ids.dtype == torch.int32
    assert layout.cu_seqlens.dtype == torch.int32
    models = []
    cu = layout.cu_seqlens.tolist()
    for b, segs in enumerate(trees):
        order, offsets, parent_tok = model_tree(segs)
        models.append(parent_tok)
        assert layout.segment_order[b] == order
        assert layout.segment_offsets[b] == [cu[b] + o for o in offsets]
        assert layout.segments[b] == [tuple(x) for x in segs]
    assert cu == [0] + np.cumsum([len(m) for m in models]).tolist()
    assert layout.max_seqlen == max(len(m) for m in models)
    check_masks(layout, models)


@SETTINGS
@given(segment_trees(max_segments=12, max_len=5, min_len=1))
def test_count_visible_pairs_is_sum_of_depths(segs):
    layout = layout_from_segments([segs, segs])
    got = count_visible_pairs(layout.cu_seqlens, layout.cu_seqlens, True, layout.start_q, layout.end_k)
    assert got == int((layout.position_ids.long() + 1).sum())


def test_layout_examples():
    layout = layout_from_segments([[(-1, 3), (0, 2), (0, 2), (1, 1)], [(-1, 2)], []])
    assert layout.start_q.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert layout.end_k.tolist() == [7, 7, 7, 5, 5, 5, 7, 7, 1, 1]
    assert layout.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 0, 1]
    assert layout.cu_seqlens.tolist() == [0, 8, 10, 10]
    assert layout.segment_order == [[0, 1, 3, 2], [0], []]
    assert layout.segment_offsets == [[0, 3, 6, 5], [8], []]
    assert layout.seqlens == [8, 2, 0] and layout.num_sequences == 3 and layout.total_tokens == 10


def test_zero_length_root_is_a_forest():
    layout = layout_from_segments([[(-1, 0), (0, 2), (0, 3)]])
    assert layout.position_ids.tolist() == [0, 1, 0, 1, 2]
    m = visible_mask(5, 5, True, layout.start_q, layout.end_k)
    assert not m[2:, :2].any()


def test_accepts_arrays_and_tensors():
    segs = [(-1, 2), (0, 3), (0, 1), (1, 2)]
    a = layout_from_segments([segs])
    b = layout_from_segments([np.array(segs)])
    c = layout_from_segments([torch.tensor(segs)])
    for x in (b, c):
        assert torch.equal(a.start_q, x.start_q) and torch.equal(a.end_k, x.end_k)
        assert torch.equal(a.position_ids, x.position_ids)


def test_empty_inputs():
    a = layout_from_segments([])
    assert a.cu_seqlens.tolist() == [0] and a.total_tokens == 0 and a.max_seqlen == 0
    b = layout_from_segments([[], [(-1, 0)]])
    assert b.cu_seqlens.tolist() == [0, 0, 0] and b.total_tokens == 0


def test_deep_and_wide_trees():
    deep = [(-1, 1)] + [(i, 1) for i in range(2000)]
    wide = [(-1, 1)] + [(0, 1) for _ in range(2000)]
    layout = layout_from_segments([deep, wide])
    assert layout.position_ids[:2001].tolist() == list(range(2001))
    assert layout.end_k[:2001].tolist() == [2000] * 2001
    assert layout.position_ids[2001:].tolist() == [0] + [1] * 2000
    assert layout.end_k[2001:].tolist() == [2000] + list(range(1, 2001))


BAD_TREES = [
    ([[(0, 3)]], "tree 0, segment 0: segment 0 is the root and must have parent_index -1, got 0"),
    ([[(-1, 1), (0, 1)], [(-1, 1), (-1, 2)]], "tree 1, segment 1: parent_index -1 but only segment 0"),
    ([[(-1, 1), (0, 1), (5, 1)]], "tree 0, segment 2: parent_index 5 is out of range"),
    ([[(-1, 1), (-4, 1)]], "tree 0, segment 1: parent_index -4 is out of range"),
    ([[(-1, 1), (2, 1), (1, 1)]], "tree 0, segment 1: segment 1 has parent 2, which is not listed before it"),
    ([[(-1, 1), (1, 1)]], "tree 0, segment 1: segment 1 is its own parent"),
    ([[(-1, 1), (0, 2)], [(-1, 1), (0, -2)]], "tree 1, segment 1: length must be >= 0, got -2"),
    ([[(-1, 1), (0, 1, 2)]], "tree 0, segment 1: expected a (parent_index, length) pair"),
    ([[(-1, 1), 3]], "tree 0, segment 1: expected a (parent_index, length) pair"),
    ([[(-1, 1), (0, 1.5)]], "tree 0, segment 1: length must be an integer, got 1.5"),
    ([[(-1, 1), ("0", 1)]], "tree 0, segment 1: parent_index must be an integer"),
    ([[(-1, 1)], np.array([[-1.0, 1.0]])], "tree 1, segment 0: parent_index must be an integer"),
    ([[(-1, 1), (0, 2**70)]], "tree 0, segment 1: length=.* is out of range"),
    ([[(-1, 1), (0, 2**40)]], "tree 0, segment 1: length 1099511627776 is too large"),
    ([[(-1, 2)], 5], "tree 1: expected a list of"),
    ([(-1, 2), (0, 3)], "tree 0, segment 0: expected a (parent_index, length) pair"),
]


@pytest.mark.parametrize("trees,message", BAD_TREES)
def test_bad_trees_raise(trees, message):
    with pytest.raises(ValueError, match=message if ".*" in message else re.escape(message)):
        layout_from_segments(trees)


def test_not_a_list_of_trees():
    with pytest.raises(ValueError, match="trees must be a list"):
        layout_from_segments(3)


# ----------------------------------------------------------------------------------------------------------
# pack_token_groups
# ----------------------------------------------------------------------------------------------------------

TOKENS = st.sampled_from([0, 1, 2, 7, -3, 2**40])
group_st = st.lists(st.lists(TOKENS, max_size=7), max_size=6)
# Two-letter alphabet, longer and more sequences: deep nesting of branch points.
binary_group_st = st.lists(st.lists(st.integers(0, 1), max_size=12), max_size=10)


def model_trie(group):
    """Packed tokens of a prefix trie with children in first-appearance order, built with nested dicts."""
    root = {}
    for seq in group:
        node = root
        for t in seq:
            node = node.setdefault(t, {})
    tokens = []

    def visit(node):
        for t, child in node.items():
            tokens.append(t)
            visit(child)

    visit(root)
    return tokens


@SETTINGS
@given(st.one_of(st.lists(group_st, min_size=1, max_size=3), st.lists(binary_group_st, min_size=1, max_size=2)),
       st.sampled_from(["list", "numpy", "torch"]))
def test_pack_round_trip_and_masks(groups, kind):
    conv = {"list": list, "numpy": lambda s: np.array(s, dtype=np.int64),
            "torch": lambda s: torch.tensor(s, dtype=torch.int64)}[kind]
    layout = pack_token_groups([[conv(s) for s in g] for g in groups])
    seqs = [s for g in groups for s in g]
    group_of = [gi for gi, g in enumerate(groups) for _ in g]
    assert len(layout.gather_index) == len(seqs)
    assert layout.input_ids.dtype == torch.int64
    cu = layout.cu_seqlens.tolist()
    assert layout.num_sequences == len(groups)
    for gi, g in enumerate(groups):
        expected = model_trie(g)
        # Exact packed order (DFS, children by first appearance) and sharing: one token per distinct prefix.
        assert layout.input_ids[cu[gi]:cu[gi + 1]].tolist() == expected
        prefixes = {tuple(s[:d]) for s in g for d in range(1, len(s) + 1)}
        assert cu[gi + 1] - cu[gi] == len(prefixes)
        assert sum(n for _, n in layout.segments[gi]) == len(prefixes)
    for s, (seq, gi) in enumerate(zip(seqs, group_of)):
        idx = layout.gather_index[s]
        assert idx.dtype == torch.int64 and idx.shape == (len(seq),)
        assert layout.input_ids[idx].tolist() == list(seq)
        assert layout.position_ids[idx].tolist() == list(range(len(seq)))
        if len(seq):
            assert ((idx >= cu[gi]) & (idx < cu[gi + 1])).all()
        # Token d of the sequence sees exactly the sequence's own prefix.
        lo, hi = cu[gi], cu[gi + 1]
        mask = visible_mask(hi - lo, hi - lo, True, layout.start_q[lo:hi], layout.end_k[lo:hi])
        local = (idx - lo).tolist()
        for d, row in enumerate(local):
            assert set(torch.nonzero(mask[row]).flatten().tolist()) == set(local[:d + 1])
    # The segments describe the same layout.
    again = layout_from_segments(layout.segments)
    for name in ("start_q", "end_k", "position_ids", "cu_seqlens"):
        assert torch.equal(getattr(again, name), getattr(layout, name)), name
    assert again.segment_offsets == layout.segment_offsets


@pytest.mark.parametrize("seed", range(4))
def test_pack_random_larger_groups(seed):
    # Bigger groups than hypothesis draws: sequences built by extending random earlier sequences, so branch
    # points nest deeply and many sequences share runs owned by others.
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(3):
        group = []
        for _ in range(int(rng.integers(1, 40))):
            if group and rng.random() < 0.8:
                base = group[int(rng.integers(0, len(group)))]
                base = base[: int(rng.integers(0, len(base) + 1))]
            else:
                base = []
            group.append(base + rng.integers(0, 3, int(rng.integers(0, 6))).tolist())
        groups.append(group)
    layout = pack_token_groups(groups)
    cu = layout.cu_seqlens.tolist()
    for gi, g in enumerate(groups):
        assert layout.input_ids[cu[gi]:cu[gi + 1]].tolist() == model_trie(g)
    seqs = [s for g in groups for s in g]
    for s, seq in enumerate(seqs):
        assert layout.input_ids[layout.gather_index[s]].tolist() == seq
        assert layout.position_ids[layout.gather_index[s]].tolist() == list(range(len(seq)))
    # Token-level parents from the gather indices: each packed token's parent is the previous token of any
    # sequence passing through it.
    models = []
    s = 0
    for gi, g in enumerate(groups):
        parent = [-1] * (cu[gi + 1] - cu[gi])
        for _ in g:
            idx = (layout.gather_index[s] - cu[gi]).tolist()
            for d in range(1, len(idx)):
                parent[idx[d]] = idx[d - 1]
            s += 1
        models.append(parent)
    check_masks(layout, models)


def test_pack_example():
    groups = [[[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 4], [1, 2], [7, 8], []], [[5]]]
    layout = pack_token_groups(groups)
    assert layout.input_ids.tolist() == [1, 2, 3, 4, 5, 7, 8, 5]
    assert layout.cu_seqlens.tolist() == [0, 7, 8]
    assert [g.tolist() for g in layout.gather_index] == [[0, 1, 2, 3], [0, 1, 4], [0, 1, 2, 3], [0, 1], [5, 6],
                                                         [], [7]]
    assert layout.segments == [[(-1, 0), (0, 2), (1, 2), (1, 1), (0, 2)], [(-1, 1)]]
    assert layout.position_ids.tolist() == [0, 1, 2, 3, 2, 0, 1, 0]


def test_pack_branch_order_is_first_appearance():
    # The branch at depth 1 ("9") appears before the deeper branch ("6") but is visited after the continuation.
    layout = pack_token_groups([[[1, 2, 3, 4], [1, 9], [1, 2, 3, 6], [1, 2, 8], [1, 0]]])
    assert layout.input_ids.tolist() == model_trie([[1, 2, 3, 4], [1, 9], [1, 2, 3, 6], [1, 2, 8], [1, 0]])
    assert layout.input_ids.tolist() == [1, 2, 3, 4, 6, 8, 9, 0]


def test_pack_empty_cases():
    layout = pack_token_groups([[], [[]], [[], [3]]])
    assert layout.cu_seqlens.tolist() == [0, 0, 0, 1]
    assert [g.tolist() for g in layout.gather_index] == [[], [], [3 - 3]]
    assert layout.input_ids.tolist() == [3]
    none = pack_token_groups([])
    assert none.total_tokens == 0 and none.gather_index == []


def test_pack_shares_prompts():
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(4):
        prompt = rng.integers(0, 1000, 50).tolist()
        groups.append([prompt + rng.integers(0, 1000, 30).tolist() for _ in range(8)])
    layout = pack_token_groups(groups)
    assert layout.seqlens == [50 + 8 * 30] * 4
    assert layout.max_seqlen == 290
    for s, seq in enumerate(x for g in groups for x in g):
        assert layout.input_ids[layout.gather_index[s]].tolist() == seq


def test_layout_to_and_kwargs():
    layout = pack_token_groups([[[1, 2], [1, 3]]]).to("cpu")
    kw = layout.varlen_kwargs()
    assert kw["causal"] is True and kw["max_seqlen_q"] == 3
    assert kw["tree_dfs_order_start_q"] is layout.start_q


@pytest.mark.parametrize("groups,message", [
    ([[[1, 2], [1, 2.5]]], "group 0, sequence 1: token ids must be integers"),
    ([[[1]], [[1], "abc"]], "group 1, sequence 1: expected a sequence of token ids"),
    ([[[1]], [np.zeros((2, 2), dtype=np.int64)]], "group 1, sequence 0: expected a 1-D sequence"),
    ([[torch.tensor([1.0])]], "group 0, sequence 0: token ids must be integers"),
    ([[[1]], 7], "group 1: expected a list of token sequences"),
    ([[[True, False]]], "group 0, sequence 0: token ids must be integers"),
])
def test_pack_bad_input(groups, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pack_token_groups(groups)
