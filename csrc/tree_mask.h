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
constexpr int kNoTreeStart = INT_MIN + 1;
constexpr int kNoTreeEnd = INT_MAX - 1;

// The rule for query row `row` and key `col` of one sequence: visible iff col < seqlen_k, col <= row + diag
// and start <= end, where start = tree_dfs_order_start_q of the query and end = tree_dfs_order_end_k of the
// key. With tokens in DFS order, causality gives start[key] <= start[query], so start[query] <= end[key] says
// the key's node is an ancestor of (or is) the query's node.
__host__ __device__ __forceinline__ bool key_visible(int row, int col, int seqlen_k, int diag, int row_start,
                                                     int col_end) {
    return col < seqlen_k && col <= row + diag && row_start <= col_end;
}

// The kernels mostly apply it with the sequence bounds folded into the tree values: each query and each key of a
// tile carries one "mask value", so that a pair's test is one causal comparison of indices and one comparison
// of two values (masked_pair_visible). A key past the sequence (kKeyOutside) is seen by no query; a query past
// the sequence may be given kQueryOutside, which sees no key (the sm90 backward needs that: it loads the next
// sequence's rows there). The values of tokens without a tree lie strictly between the two.
constexpr int kQueryOutside = INT_MAX;
constexpr int kKeyOutside = INT_MIN;

__host__ __device__ __forceinline__ int query_mask_value(bool in_sequence, int tree_start) {
    return in_sequence ? tree_start : kQueryOutside;
}
__host__ __device__ __forceinline__ int key_mask_value(bool in_sequence, int tree_end) {
    return in_sequence ? tree_end : kKeyOutside;
}
// The mask value of query row `row` of a sequence whose first query is token `q_offset` of the batch, read from the
// tree starts of the batch when `has_tree`; kQueryOutside past the sequence (the array is not read there).
__host__ __device__ __forceinline__ int query_mask_value_at(bool has_tree, const int *tree_start, int q_offset, int row,
                                                            int seqlen_q) {
    const bool in_sequence = row < seqlen_q;
    return query_mask_value(in_sequence, (has_tree && in_sequence) ? tree_start[q_offset + row] : kNoTreeStart);
}
// The mask value of key `key` of a sequence whose first key is token `k_offset` of the batch, read from the tree
// ends of the batch when `has_tree`.
__host__ __device__ __forceinline__ int key_mask_value_at(bool has_tree, const int *tree_end, int k_offset, int key,
                                                          int seqlen_k) {
    const bool in_sequence = key < seqlen_k;
    return key_mask_value(in_sequence, (has_tree && in_sequence) ? tree_end[k_offset + key] : kNoTreeEnd);
}
// The tree half of the folded test: all a pair needs where its tile part lies on or below the causal diagonal.
__host__ __device__ __forceinline__ bool mask_values_visible(int query_value, int key_value) {
    return query_value <= key_value;
}
__host__ __device__ __forceinline__ bool masked_pair_visible(int key_minus_query, int diag, int query_value,
                                                             int key_value) {
    return key_minus_query <= diag && mask_values_visible(query_value, key_value);
}

}  // namespace flash_tree_attn
