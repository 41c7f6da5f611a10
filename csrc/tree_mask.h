// The element mask: whether query row `row` may attend to key `col` of the same sequence.
// This and tile_classify.h are the only places that know what a tree is; both kernel paths call them.
#pragma once

#include <climits>

namespace flash_tree_attn {

// Offset of the causal diagonal: query row i sees keys j <= i + diag. Bottom-right aligned, so a
// sequence with fewer queries than keys lets its last query see every key.
__host__ __device__ __forceinline__ int causal_diagonal(bool causal, int seqlen_q, int seqlen_k) {
    return causal ? seqlen_k - seqlen_q : INT_MAX / 2;
}

// Tree values of tokens outside a tree (or when no tree is given): they never hide anything.
constexpr int kNoTreeStart = INT_MIN;
constexpr int kNoTreeEnd = INT_MAX;

// row_start = tree_dfs_order_start_q of the query, col_end = tree_dfs_order_end_k of the key. With tokens
// in DFS order, causality gives start[key] <= start[query], so start[query] <= end[key] says the key's
// node is an ancestor of (or is) the query's node.
__host__ __device__ __forceinline__ bool key_visible(int row, int col, int seqlen_k, int diag, int row_start,
                                                     int col_end) {
    return col < seqlen_k && col <= row + diag && row_start <= col_end;
}

}  // namespace flash_tree_attn
