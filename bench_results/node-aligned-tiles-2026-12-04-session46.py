# Visible fraction of the non-empty tiles' area with tiles on the block grid against tiles that start at each tree
# node's first token (a node split into blocks of up to the tile size), for the deep tree, grpo_P1024 and the chain.
# Forty-sixth session, 2026-12-04, CPU; run from the repository root with the development venv. Output:
# node-aligned-tiles-2026-12-04-session46.txt.
import sys

sys.path.insert(0, "tools")
sys.path.insert(0, ".")
import bench_lib as bl  # noqa: E402
from flash_tree_attn import reference, tree  # noqa: E402

# (label, query rows, keys, query blocks aligned to nodes, key blocks aligned to nodes)
SHAPES = [
    ("bwd 64x128 grid", 64, 128, False, False),
    ("bwd 64x128 key-aligned", 64, 128, False, True),
    ("bwd 64x128 both", 64, 128, True, True),
    ("fwd 128x64 grid", 128, 64, False, False),
    ("fwd 128x64 q-aligned", 128, 64, True, False),
    ("fwd 128x64 both", 128, 64, True, True),
    ("sm90 fwd 128x128 grid", 128, 128, False, False),
    ("sm90 fwd q-aligned", 128, 128, True, False),
]


def visibility(segs):
    """The tree's whole (query, key) visibility matrix, numpy bool."""
    lay = tree.layout_from_segments([segs], device=None)
    n = len(lay.start_q)
    return reference.visible_mask(n, n, True, lay.start_q, lay.end_k).numpy()


def node_starts(segs):
    """Where each node starts in the DFS-packed sequence, and the sequence's length."""
    pos, starts = 0, []
    for i in bl.dfs_segment_order(segs):
        starts.append(pos)
        pos += segs[i][1]
    return starts, pos


def blocks(n, size, starts=None):
    """(first, end) of blocks of up to `size` tokens: on the grid, or restarting at every node start."""
    bounds = [0, n] if starts is None else sorted(starts) + [n]
    return [(c, min(c + size, b)) for a, b in zip(bounds[:-1], bounds[1:]) for c in range(a, b, size)]


def visible_fraction(vis, q_blocks, k_blocks, block_m, block_n):
    """Visible pairs over the full area (block_m x block_n, short blocks included) of the non-empty tiles."""
    pairs = area = 0
    for q0, q1 in q_blocks:
        rows = vis[q0:q1]
        for k0, k1 in k_blocks:
            c = int(rows[:, k0:k1].sum())
            if c:
                pairs += c
                area += block_m * block_n
    return pairs / area


for name in ["deep_64nodes_128to1024", "grpo_P1024_n16_R2048", "chain_causal_16384"]:
    segs = bl.build_workload(name)
    vis = visibility(segs)
    starts, n = node_starts(segs)
    assert n == vis.shape[0]
    print(name, n, "tokens")
    for label, bm, bn, q_aligned, k_aligned in SHAPES:
        qb = blocks(n, bm, starts if q_aligned else None)
        kb = blocks(n, bn, starts if k_aligned else None)
        print(f"  {label:24s} visible fraction {visible_fraction(vis, qb, kb, bm, bn):.4f}, "
              f"{len(qb)} query blocks, {len(kb)} key blocks")
