"""The folded form of the element mask (csrc/tree_mask.h) agrees with the rule it stands for. CPU only.

The kernels test a (query, key) pair as masked_pair_visible(key - query, diag, query value, key value), where the
values carry the tree start / end with the sequence bounds folded in (kKeyOutside past the keys' end, optionally
kQueryOutside past the queries'), and kNoTreeStart / kNoTreeEnd stand for tokens without a tree. This compiles
the header with the host C++ compiler and checks, over every pair of a grid of indices, diagonals and tree values
(sentinels included), that the folded test equals key_visible, that the values alone (mask_values_visible) do on
and below the causal diagonal, that an outside query sees nothing, and that key_mask_value_at and
query_mask_value_at read a key's and a query's value as the kernels need them.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "tree_mask.h"

PROGRAM = r"""
#define __host__
#define __device__
#define __forceinline__ inline
#include <cstdio>
#include <vector>
#include "tree_mask.h"
using namespace flash_tree_attn;

int main() {
    const int seqlen_q = 7, seqlen_k = 9;
    const std::vector<int> diags = {0, 2, -3, causal_diagonal(true, seqlen_q, seqlen_k), causal_diagonal(false, 1, 1)};
    // Tree values: real DFS positions and the no-tree sentinels (both sides use one or the other per run).
    const std::vector<std::pair<int, int>> trees = {{0, 0}, {0, 8}, {3, 2}, {5, 5}, {8, 0}, {kNoTreeStart, kNoTreeEnd}};
    long checked = 0, wrong = 0;
    for (int diag : diags)
        for (auto [start, end] : trees)
            for (int row = 0; row < seqlen_q; ++row)
                for (int col = 0; col < seqlen_k + 3; ++col) {  // keys past the sequence too
                    const bool want = key_visible(row, col, seqlen_k, diag, start, end);
                    const bool got = masked_pair_visible(col - row, diag, query_mask_value(true, start),
                                                         key_mask_value(col < seqlen_k, end));
                    const bool outside = masked_pair_visible(col - row, diag, query_mask_value(false, start),
                                                             key_mask_value(col < seqlen_k, end));
                    // On or below the diagonal the values alone decide (the sm90 forward's parts that do not
                    // cross it).
                    const bool below = col - row <= diag;
                    const bool values = mask_values_visible(query_mask_value(true, start),
                                                            key_mask_value(col < seqlen_k, end));
                    ++checked;
                    if (want != got || outside || (below && values != want)) {
                        ++wrong;
                        std::printf("diag %d start %d end %d row %d col %d: rule %d folded %d outside %d values %d\n",
                                    diag, start, end, row, col, want, got, outside, values);
                    }
                }
    // key_mask_value_at and query_mask_value_at, the kernels' reads of a key's and a query's value: the batch's
    // tree value at offset + index inside the sequence, the no-tree sentinel without a tree, the outside value past
    // the sequence (the array is not read there). Both sequences have three tokens and follow earlier ones.
    const int ends[] = {-5, -6, 11, 12, 13}, starts[] = {-7, 4, 5, 6};
    for (int has_tree = 0; has_tree < 2; ++has_tree)
        for (int i = 0; i < 5; ++i) {
            const int key_want = i >= 3 ? kKeyOutside : (has_tree ? ends[2 + i] : kNoTreeEnd);
            const int query_want = i >= 3 ? kQueryOutside : (has_tree ? starts[1 + i] : kNoTreeStart);
            checked += 2;
            if (key_mask_value_at(has_tree, ends, 2, i, 3) != key_want ||
                query_mask_value_at(has_tree, starts, 1, i, 3) != query_want) {
                ++wrong;
                std::printf("key_mask_value_at / query_mask_value_at: has_tree %d index %d\n", has_tree, i);
            }
        }
    std::printf("checked %ld wrong %ld\n", checked, wrong);
    return wrong == 0 ? 0 : 1;
}
"""


def test_folded_mask_values_agree_with_the_rule(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    src = tmp_path / "rule.cpp"
    src.write_text(PROGRAM)
    exe = tmp_path / "rule"
    build = subprocess.run([cxx, "-std=c++17", "-O1", f"-I{HEADER.parent}", str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "wrong 0" in run.stdout
