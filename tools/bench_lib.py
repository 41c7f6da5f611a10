"""Shared helpers for tools/bench.py and its tests: the standard workloads and their bookkeeping.

Nothing here needs a GPU or the compiled extension. A tree is a list of segments (parent, length);
segment 0 is the root (parent -1) and every parent index is smaller than its child's. Tokens are laid out
in depth-first (pre-)order of segments, children visited in increasing segment index; a token sees its own
earlier tokens, itself, and every token of its ancestor segments.
"""
from __future__ import annotations

import json
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
WORKLOADS_PATH = TOOLS_DIR / "workloads.json"
ANCHORS_PATH = TOOLS_DIR / "anchors-h200-2026-11-29.json"

# Dense causal rows: (L, B, H, D) with B * L = 65536 tokens and H * D = 2048 model width.
DENSE_CONFIGS_D128 = [(4096, 16, 16, 128), (16384, 4, 16, 128)]
DENSE_CONFIGS_OTHER = [(4096, 16, 32, 64), (16384, 4, 32, 64), (4096, 16, 8, 256), (16384, 4, 8, 256)]


# --------------------------------------------------------------------------------------------- workloads

def load_workloads(path: Path | str = WORKLOADS_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def workload_names(path: Path | str = WORKLOADS_PATH) -> list[str]:
    return list(load_workloads(path)["workloads"])


def workload_heads(name: str, path: Path | str = WORKLOADS_PATH) -> tuple[int, int, int]:
    """(query_heads, kv_heads, head_dim) of a workload: its own values, else the file's defaults."""
    data = load_workloads(path)
    spec = dict(data["defaults"])
    spec.update(data["workloads"][name])
    return int(spec["query_heads"]), int(spec["kv_heads"]), int(spec["head_dim"])


def _randint(low: int, high: int, gen) -> int:
    import torch

    return int(torch.randint(low, high, (1,), generator=gen).item())


def segments_from_spec(spec: dict) -> list[tuple[int, int]]:
    """Segments (parent, length) of one workload spec from workloads.json."""
    kind = spec["kind"]
    if kind == "grpo":
        return [(-1, int(spec["prompt"]))] + [(0, int(spec["response_len"]))] * int(spec["responses"])
    if kind == "chain":
        return [(-1, int(spec["length"]))]
    if kind == "random_tree":
        import torch

        gen = torch.Generator().manual_seed(int(spec["seed"]))
        lo, hi = int(spec["min_len"]), int(spec["max_len"])
        segs = [(-1, _randint(lo, hi, gen))]
        for i in range(1, int(spec["nodes"])):
            parent = _randint(0, i, gen)  # drawn first ...
            length = _randint(lo, hi, gen)  # ... then the length
            segs.append((parent, length))
        return segs
    raise ValueError(f"unknown workload kind {kind!r}")


def build_workload(name: str, path: Path | str = WORKLOADS_PATH) -> list[tuple[int, int]]:
    """Segments (parent, length) of the named standard workload."""
    data = load_workloads(path)
    if name not in data["workloads"]:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(data['workloads'])}")
    return segments_from_spec(data["workloads"][name])


def scale_segments(segments, factor: float) -> list[tuple[int, int]]:
    """Same tree shape, every length multiplied by factor (at least 1 token). Used by --dry-run."""
    return [(p, max(1, int(round(n * factor)))) for p, n in segments]


def check_segments(segments) -> None:
    if not segments:
        raise ValueError("a tree needs at least one segment")
    for i, (p, n) in enumerate(segments):
        if i == 0 and p != -1:
            raise ValueError(f"segment 0 must be the root (parent -1), got parent {p}")
        if i > 0 and not (0 <= p < i):
            raise ValueError(f"segment {i}: parent {p} must be in [0, {i})")
        if n < 1:
            raise ValueError(f"segment {i}: length {n} must be >= 1")


def children_of(segments) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in segments]
    for i, (p, _) in enumerate(segments):
        if i > 0:
            kids[p].append(i)
    return kids


def dfs_segment_order(segments) -> list[int]:
    """Segment indices in depth-first pre-order, children in increasing index (iterative: deep chains)."""
    check_segments(segments)
    kids = children_of(segments)
    order, stack = [], [0]
    while stack:
        s = stack.pop()
        order.append(s)
        stack.extend(reversed(kids[s]))
    return order


def ancestor_tokens(segments) -> list[int]:
    """For each segment, the number of tokens in its strict ancestors (its prefix length)."""
    check_segments(segments)
    before = [0] * len(segments)
    for i, (p, _) in enumerate(segments):
        if i > 0:
            before[i] = before[p] + segments[p][1]
    return before


def count_pairs(segments) -> int:
    """Visible (query, key) pairs of a tree, diagonal included: per segment L * prefix + L (L + 1) / 2."""
    before = ancestor_tokens(segments)
    return sum(n * before[i] + n * (n + 1) // 2 for i, (_, n) in enumerate(segments))


def root_to_leaf_paths(segments) -> list[list[int]]:
    """Every root-to-leaf path as a list of segment indices, leaves in depth-first order."""
    kids = children_of(segments)
    paths = []
    for leaf in dfs_segment_order(segments):
        if kids[leaf]:
            continue
        path, s = [], leaf
        while s != -1:
            path.append(s)
            s = segments[s][0]
        paths.append(path[::-1])
    return paths


def path_lengths(segments) -> list[int]:
    """Token count of every root-to-leaf path (the duplicated-prefix layout: one causal sequence each)."""
    return [sum(segments[s][1] for s in path) for path in root_to_leaf_paths(segments)]


def tree_stats(segments) -> dict:
    n = sum(length for _, length in segments)
    pairs = count_pairs(segments)
    plens = path_lengths(segments)
    causal_pairs = n * (n + 1) // 2
    return {
        "N": n,
        "segments": len(segments),
        "pairs": pairs,
        "causal_pairs": causal_pairs,
        "density_vs_causal": pairs / causal_pairs,
        "paths": len(plens),
        "path_tokens": sum(plens),
        "longest_path": max(plens),
        # the duplicated-prefix layout computes, per path, a full causal triangle: its own pairs
        "dup_prefix_pairs": sum(p * (p + 1) // 2 for p in plens),
    }


# ------------------------------------------------------------------------------------------- FLOPs etc.

def fwd_flops(pairs: int, head_dim: int, query_heads: int) -> float:
    """Useful forward FLOPs: 2 matmuls x 2 FLOPs per multiply-add over the visible pairs."""
    return 4.0 * pairs * head_dim * query_heads


def fwdbwd_flops(pairs: int, head_dim: int, query_heads: int) -> float:
    return 3.5 * fwd_flops(pairs, head_dim, query_heads)


def dense_pairs(L: int, B: int) -> int:
    """Pairs of a dense causal batch, by the usual FlashAttention benchmark convention (L^2 / 2 per
    sequence), which is what the anchors' dense_causal_* TFLOP/s use."""
    return B * L * L // 2


def tflops(flops: float, ms) -> float | None:
    if ms is None or not ms or ms != ms or ms <= 0:
        return None
    return flops / (ms * 1e-3) / 1e12


def dense_name(L: int, B: int, H: int, D: int) -> str:
    return f"dense_L{L}_B{B}_H{H}_D{D}"


def dense_configs(quick: bool = False) -> list[tuple[int, int, int, int]]:
    return list(DENSE_CONFIGS_D128) if quick else list(DENSE_CONFIGS_D128) + list(DENSE_CONFIGS_OTHER)


# ------------------------------------------------------------------------------------------------ anchors

def load_anchors(path: Path | str = ANCHORS_PATH) -> dict:
    """{(method, key): entry} with key = tree name, or dense_name(L, B, H, D) for dense rows."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    out = {}
    for method, rows in data.get("results", {}).items():
        for row in rows:
            if "tree" in row:
                out[(method, row["tree"])] = row
            elif all(x in row for x in ("L", "B", "H", "D")):
                out[(method, dense_name(row["L"], row["B"], row["H"], row["D"]))] = row
            else:
                out[(method, "")] = row
    return out
