#!/usr/bin/env python3
"""Tile statistics of the standard tree workloads (tools/workloads.json) for the kernels' tile shapes, on the CPU.

For each workload and tile shape (query rows x keys): how many tiles are non-empty, how many of those are partial
(need the element mask), the fraction of the non-empty tiles' area that is visible (query, key) pairs, and the
non-empty tiles per CTA (a forward CTA owns a query block, a backward CTA a key block; custom shapes count per
query block). Useful TFLOP/s count visible pairs only, so a kernel's tree figure over its dense-causal figure
cannot exceed about this workload's visible fraction over the chain's; and a fixed cost per CTA weighs more where
a CTA has fewer tiles.

    python tools/tile_stats.py                       # every workload, the tile shapes of both kernel paths
    python tools/tile_stats.py --workloads deep_64nodes_128to1024 --tiles 128x128
    python tools/tile_stats.py --tiles 128x128 --parts 2x2   # and the quarters of the tiles that no pair reaches,
                                                             # and what the mask needs in the partial tiles' quarters
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lib as bl  # noqa: E402
from bench import import_package  # noqa: E402

# (name, query rows, keys, whether a CTA owns a key block) of the kernels' tiles at head dim 128.
KERNEL_TILES = [("sm80 fwd", 128, 64, False), ("sm80 bwd", 64, 128, True), ("sm90 fwd", 128, 128, False),
                ("sm90 bwd", 64, 128, True)]


def tree_arrays(segments) -> tuple[torch.Tensor, torch.Tensor]:
    """start_q and end_k of one tree (flash_tree_attn.tree.layout_from_segments)."""
    lay = import_package().tree.layout_from_segments([segments], device=None)
    return lay.start_q, lay.end_k


def tile_visible_counts(start_q, end_k, block_m: int, block_n: int) -> np.ndarray:
    """Visible (query, key) pairs of every block_m x block_n tile of one sequence's causal tree mask
    (flash_tree_attn.reference.visible_mask): an int array (query blocks, key blocks)."""
    visible_mask = import_package().reference.visible_mask
    n = len(start_q)
    n_blocks = -(-n // block_n)
    counts = np.zeros((-(-n // block_m), n_blocks), dtype=np.int64)
    for i, m0 in enumerate(range(0, n, block_m)):
        m1 = min(m0 + block_m, n)
        tiles = min(-(-m1 // block_n), n_blocks)  # key blocks up to the diagonal
        vis = visible_mask(n, n, True, start_q, end_k, rows=(m0, m1))[:, : tiles * block_n]
        vis = torch.nn.functional.pad(vis, (0, tiles * block_n - vis.shape[1]))  # keys past the sequence: hidden
        counts[i, :tiles] = vis.reshape(m1 - m0, tiles, block_n).sum(dim=(0, 2)).numpy()
    return counts


def full_tiles(counts: np.ndarray, n: int, block_m: int, block_n: int) -> np.ndarray:
    """Which block_m x block_n tiles of a sequence of n tokens, with visible-pair counts `counts`, are full: every
    pair of the tile's rows and of its keys inside the sequence is visible (rows past the end are not computed on;
    keys past the end need the mask, as in classify_tile)."""
    rows = np.minimum(np.arange(1, counts.shape[0] + 1) * block_m, n) - np.arange(counts.shape[0]) * block_m
    whole = (np.arange(counts.shape[1]) + 1) * block_n <= n
    return whole[None, :] & (counts == rows[:, None] * block_n)


def tile_stats(start_q, end_k, block_m: int, block_n: int) -> dict:
    """The causal tree mask of one sequence (flash_tree_attn.reference.visible_mask) cut into block_m x block_n
    tiles."""
    n = len(start_q)
    counts = tile_visible_counts(start_q, end_k, block_m, block_n)
    nonempty = counts > 0
    is_full = full_tiles(counts, n, block_m, block_n)
    visible_pairs = int(counts.sum())
    area = int(nonempty.sum()) * block_m * block_n
    return {"visible_pairs": visible_pairs, "tile_area": area, "visible_fraction": visible_pairs / max(area, 1),
            "full": int(is_full.sum()), "partial": int((nonempty & ~is_full).sum()),
            "tiles_per_query_block": nonempty.sum(axis=1), "tiles_per_key_block": nonempty.sum(axis=0)}


def part_stats(start_q, end_k, block_m: int, block_n: int, row_parts: int = 2, col_parts: int = 2) -> dict:
    """The non-empty block_m x block_n tiles cut into row_parts x col_parts parts: how many parts hold no visible
    pair, and the visible fraction of the non-empty parts' area, i.e. of the work left if a kernel skipped the parts
    no pair reaches (parts past the end of the sequence among them). 2 x 2 are the quarters of the sm90 forward's
    tiles, whose two warpgroups own row halves; 1 x 2 the halves of the sm90 backward's, whose warpgroups own key
    halves."""
    if row_parts < 1 or col_parts < 1 or block_m % row_parts or block_n % col_parts:
        raise ValueError(f"parts {row_parts}x{col_parts} must divide the {block_m}x{block_n} tiles evenly")
    pm, pn = block_m // row_parts, block_n // col_parts
    n = len(start_q)
    counts = tile_visible_counts(start_q, end_k, pm, pn)
    full = full_tiles(counts, n, pm, pn)
    tm, tn = -(-counts.shape[0] // row_parts), -(-counts.shape[1] // col_parts)
    pad = ((0, tm * row_parts - counts.shape[0]), (0, tn * col_parts - counts.shape[1]))
    counts, full = np.pad(counts, pad), np.pad(full, pad)
    seen = counts.reshape(tm, row_parts, tn, col_parts) > 0
    full = full.reshape(tm, row_parts, tn, col_parts)
    tiles = seen.any(axis=(1, 3))
    empty = int((tiles[:, None, :, None] & ~seen).sum())
    area = int(seen.sum()) * pm * pn
    # The parts of the partial tiles (non-empty, some part not full; parts whose rows all lie past the sequence do
    # not count, as those rows are never stored), by what the element mask needs there: nothing (empty or full), or
    # a comparison per pair, with the causal test where the part's last key lies past its first row (across the
    # diagonal) or the tree's values alone (below it).
    r_idx = np.arange(tm * row_parts).reshape(tm, row_parts)[:, :, None, None]
    c_idx = np.arange(tn * col_parts).reshape(tn, col_parts)[None, None, :, :]
    partial_tiles = tiles & ~(full | (r_idx * pm >= n)).all(axis=(1, 3))
    in_partial = np.broadcast_to(partial_tiles[:, None, :, None], seen.shape)
    across = (c_idx + 1) * pn - 1 > r_idx * pm
    masked = in_partial & seen & ~full
    return {"tiles": int(tiles.sum()), "parts": int(tiles.sum()) * row_parts * col_parts, "empty_parts": empty,
            "part_area": area, "visible_fraction": int(counts.sum()) / max(area, 1),
            "partial_tiles": int(partial_tiles.sum()),
            "partial_tile_parts": {"empty": int((in_partial & ~seen).sum()), "full": int((in_partial & full).sum()),
                                   "across_diagonal": int((masked & across).sum()),
                                   "below_diagonal": int((masked & ~across).sum())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", help="comma-separated names (default: all of tools/workloads.json)")
    ap.add_argument("--tiles", help="comma-separated MxN tile shapes (default: the kernels' head-dim-128 tiles)")
    ap.add_argument("--parts", help="RxC: also the parts of the non-empty tiles (R x C to a tile) that no visible pair "
                    "reaches, and the kinds of the partial tiles' parts (part_stats); 2x2 for the sm90 forward's "
                    "warpgroups, 1x2 for the backward's")
    args = ap.parse_args(argv)
    names = args.workloads.split(",") if args.workloads else bl.workload_names()
    parts = tuple(map(int, args.parts.lower().split("x"))) if args.parts else None
    tiles = KERNEL_TILES
    if args.tiles:
        tiles = [(t, *map(int, t.lower().split("x")), False) for t in args.tiles.split(",")]
    print(f"{'workload':26s} {'tiles':16s} {'visible':>8s} {'full':>7s} {'partial':>7s}  tiles per CTA")
    for name in names:
        start_q, end_k = tree_arrays(bl.build_workload(name))
        for label, bm, bn, per_key_block in tiles:
            s = tile_stats(start_q, end_k, bm, bn)
            per_cta = s["tiles_per_key_block"] if per_key_block else s["tiles_per_query_block"]
            print(f"{name:26s} {f'{label} {bm}x{bn}':16s} {s['visible_fraction']:8.3f} {s['full']:7d} {s['partial']:7d}  "
                  f"mean {per_cta.mean():5.1f}, max {per_cta.max()}", flush=True)
            if parts:
                rp, cp = parts
                q = part_stats(start_q, end_k, bm, bn, rp, cp)
                print(f"{'':26s} {f'  parts {rp}x{cp}':16s} {q['visible_fraction']:8.3f}  {q['empty_parts']} of "
                      f"{q['parts']} parts empty ({100 * q['empty_parts'] / max(q['parts'], 1):.1f}%)", flush=True)
                k = q["partial_tile_parts"]
                print(f"{'':26s} {'':16s} {'':8s}  parts of the {q['partial_tiles']} partial tiles: {k['empty']} "
                      f"empty, {k['full']} full, {k['across_diagonal']} partial across the diagonal, "
                      f"{k['below_diagonal']} partial below it", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
