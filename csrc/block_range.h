// Which key blocks a query block visits (forward) and which query blocks a key block visits (backward).
// Causality bounds the range; inside it, empty tiles (tile_classify.h) are skipped.
#pragma once

#include "tile_classify.h"

namespace flash_tree_attn {

// One past the last key block that query block m_block can see (0 when it sees none).
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int key_block_end(const SeqMaskInfo &s, int m_block) {
    const int n_blocks = (s.seqlen_k + kBlockN - 1) / kBlockN;
    const int last_row = min((m_block + 1) * kBlockM, s.seqlen_q) - 1;
    const long long last_col = static_cast<long long>(last_row) + s.diag;  // diag is huge when not causal
    if (last_col < 0) return 0;
    const long long end = (last_col + kBlockN) / kBlockN;
    return end < n_blocks ? static_cast<int>(end) : n_blocks;
}

// First query block that can see key block n_block.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int query_block_begin(const SeqMaskInfo &s, int n_block) {
    const long long first_row = static_cast<long long>(n_block) * kBlockN - s.diag;
    return first_row <= 0 ? 0 : static_cast<int>(first_row / kBlockM);
}

// The scans below look at 32 candidate blocks at once, one per lane, and take the nearest non-empty one
// from a warp ballot: skipping the many empty tiles of a tree (sibling branches) then costs one round of
// loads per 32 blocks instead of a dependent chain of loads per block. Every thread of the CTA must call
// them (each warp computes the same answer).

// Largest non-empty key block below `n_block` (exclusive) for query block m_block, or -1.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int prev_key_block(const SeqMaskInfo &s, int m_block, int n_block) {
    const int lane = threadIdx.x % 32;
    for (int base = n_block - 1; base >= 0; base -= 32) {
        const int n = base - lane;
        const bool hit = n >= 0 && classify_tile<kBlockM, kBlockN>(s, m_block, n) != TileKind::kEmpty;
        const unsigned ballot = __ballot_sync(0xffffffffu, hit);
        if (ballot != 0u) return base - (__ffs(ballot) - 1);
    }
    return -1;
}

// Smallest non-empty query block above `m_block` (exclusive) for key block n_block, or m_blocks.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int next_query_block(const SeqMaskInfo &s, int n_block, int m_block, int m_blocks) {
    const int lane = threadIdx.x % 32;
    for (int base = m_block + 1; base < m_blocks; base += 32) {
        const int m = base + lane;
        const bool hit = m < m_blocks && classify_tile<kBlockM, kBlockN>(s, m, n_block) != TileKind::kEmpty;
        const unsigned ballot = __ballot_sync(0xffffffffu, hit);
        if (ballot != 0u) return base + (__ffs(ballot) - 1);
    }
    return m_blocks;
}

}  // namespace flash_tree_attn
