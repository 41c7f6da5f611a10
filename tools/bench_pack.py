#!/usr/bin/env python
"""Time the host-side tree layout tools (CPU only): pack_token_groups and layout_from_segments.

Usage: python tools/bench_pack.py [--repeats N] [--threads T]

Prints one row per case with the best of N wall-clock times in seconds. The headline case is the RL one:
64 groups x 16 sequences x 4096 tokens (a 2048-token prompt shared by 16 sampled 2048-token responses).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flash_tree_attn.tree import layout_from_segments, pack_token_groups  # noqa: E402


def rl_groups(num_groups, per_group, prompt_len, response_len, seed=0, vocab=151_000):
    """Token arrays: each group is one prompt followed by per_group independent responses."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(num_groups):
        prompt = rng.integers(0, vocab, prompt_len)
        groups.append([np.concatenate([prompt, rng.integers(0, vocab, response_len)]) for _ in range(per_group)])
    return groups


def multi_turn_groups(num_groups, per_group, turns, turn_len, seed=1, vocab=151_000):
    """Trajectories that share a growing number of turns: sequence i of a group keeps the first i % turns turns
    of the group's reference trajectory and then diverges."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(num_groups):
        ref = rng.integers(0, vocab, turns * turn_len)
        group = []
        for i in range(per_group):
            keep = (i % turns) * turn_len
            group.append(np.concatenate([ref[:keep], rng.integers(0, vocab, turns * turn_len - keep)]))
        groups.append(group)
    return groups


def random_tree(num_segments, min_len, max_len, seed):
    rng = np.random.default_rng(seed)
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, num_segments)]
    lens = rng.integers(min_len, max_len + 1, num_segments).tolist()
    return list(zip(parents, lens))


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: one CPU core)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []

    def case(name, fn, tokens_in, tokens_out):
        fn()  # warm up
        t = best_of(fn, args.repeats)
        rows.append((name, tokens_in, tokens_out, t))

    groups = rl_groups(64, 16, 2048, 2048)
    n_in = sum(len(s) for g in groups for s in g)
    n_out = pack_token_groups(groups).total_tokens
    case("pack 64x16x(2048+2048), numpy arrays", lambda: pack_token_groups(groups), n_in, n_out)
    groups_t = [[torch.from_numpy(s) for s in g] for g in groups]
    case("pack 64x16x(2048+2048), torch tensors", lambda: pack_token_groups(groups_t), n_in, n_out)
    groups_l = [[s.tolist() for s in g] for g in groups]
    case("pack 64x16x(2048+2048), Python lists", lambda: pack_token_groups(groups_l), n_in, n_out)

    mt = multi_turn_groups(64, 16, 8, 512)
    case("pack 64x16 multi-turn (8 turns x 512)", lambda: pack_token_groups(mt),
         sum(len(s) for g in mt for s in g), pack_token_groups(mt).total_tokens)

    grpo = [[(-1, 2048)] + [(0, 2048)] * 16 for _ in range(64)]
    case("segments 64 trees x (1+16)", lambda: layout_from_segments(grpo), None,
         layout_from_segments(grpo).total_tokens)
    big = random_tree(100_000, 1, 40, seed=2)
    case("segments 1 random tree, 100k segs", lambda: layout_from_segments([big]), None,
         layout_from_segments([big]).total_tokens)
    chain = [(-1, 16)] + [(i, 16) for i in range(100_000 - 1)]
    case("segments 1 chain, 100k segs (deep)", lambda: layout_from_segments([chain]), None,
         layout_from_segments([chain]).total_tokens)
    forest = [random_tree(2000, 1, 64, seed=10 + i) for i in range(64)]
    case("segments 64 random trees x 2k segs", lambda: layout_from_segments(forest), None,
         layout_from_segments(forest).total_tokens)

    print(f"best of {args.repeats}, torch threads={args.threads}")
    print(f"{'case':44s} {'tokens in':>11s} {'packed':>11s} {'seconds':>9s}")
    for name, n_in, n_out, t in rows:
        print(f"{name:44s} {'' if n_in is None else n_in:>11} {n_out:>11} {t:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
