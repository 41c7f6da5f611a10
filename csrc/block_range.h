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

// Walks the non-empty tiles of one row or column of the tile grid in the order the kernels visit them: the
// key blocks of a query block downward (kKeysDown: the forward) or the query blocks of a key block upward
// (the backward). A scan classifies 32 candidate blocks at once, one per lane, and keeps two warp ballots,
// the non-empty candidates and those that need the element mask; the following tiles and their kinds come
// from those bits without touching memory until the 32 candidates are used up. Skipping the many empty tiles
// of a tree (sibling branches) and walking a run of non-empty ones both cost one round of loads per 32
// blocks. Every thread of a warp calls next() together (each warp computes the same answers).
template <int kBlockM, int kBlockN, bool kKeysDown>
struct TileWalk {
    int fixed;              // the query block (kKeysDown) or the key block
    int limit;              // returned when no tile is left: -1 going down, the query block count going up
    int window = 0;         // block of bit 0 of the ballots
    int next_window;        // first block of the next scan
    unsigned live = 0u;     // non-empty blocks of the window not returned yet
    unsigned partial = 0u;  // blocks of the window that need the element mask

    // The walk starts at block `first` (included) and stops before `limit`.
    __device__ __forceinline__ TileWalk(int fixed_block, int first, int limit_block)
        : fixed(fixed_block), limit(limit_block), next_window(first) {}

    // The next non-empty tile's block, or `limit` when there is none; its kind in `kind`.
    __device__ __forceinline__ int next(const SeqMaskInfo &s, TileKind &kind) {
        while (live == 0u) {
            if (kKeysDown ? next_window <= limit : next_window >= limit) return limit;
            const int lane = threadIdx.x % 32;
            const int b = kKeysDown ? next_window - lane : next_window + lane;
            TileKind k = TileKind::kEmpty;
            if (kKeysDown ? b > limit : b < limit) {
                k = kKeysDown ? classify_tile<kBlockM, kBlockN>(s, fixed, b) : classify_tile<kBlockM, kBlockN>(s, b, fixed);
            }
            live = __ballot_sync(0xffffffffu, k != TileKind::kEmpty);
            partial = __ballot_sync(0xffffffffu, k == TileKind::kPartial);
            window = next_window;
            next_window += kKeysDown ? -32 : 32;
        }
        const int bit = __ffs(live) - 1;
        live &= live - 1u;
        kind = ((partial >> bit) & 1u) ? TileKind::kPartial : TileKind::kFull;
        return kKeysDown ? window - bit : window + bit;
    }
};

// Largest non-empty key block below `n_block` (exclusive) for query block m_block, or -1 (the deterministic
// backward's predecessor in dQ order).
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int prev_key_block(const SeqMaskInfo &s, int m_block, int n_block) {
    TileKind kind;
    return TileWalk<kBlockM, kBlockN, /*kKeysDown=*/true>(m_block, n_block - 1, -1).next(s, kind);
}

}  // namespace flash_tree_attn
