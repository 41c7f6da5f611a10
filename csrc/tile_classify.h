// Tile classification: from per-block bounds, decide whether a (query block, key block) tile is empty
// (skipped: no loads, no math), full (every pair visible: no element mask) or partial (element mask).
// Shared by the sm80 and sm90 paths; tree_mask.h holds the element-level rule it must agree with.
#pragma once

#include "params.h"
#include "tree_mask.h"

namespace flash_tree_attn {

enum class TileKind : int { kEmpty = 0, kFull = 1, kPartial = 2 };

// Everything the classification needs about one sequence. Bound pointers are already offset to the
// sequence's first granule; they are nullptr when no tree is given.
struct SeqMaskInfo {
    int seqlen_q = 0;
    int seqlen_k = 0;
    int diag = 0;  // causal_diagonal()
    const int *q_start_min = nullptr;
    const int *q_start_max = nullptr;
    const int *k_end_min = nullptr;
    const int *k_end_max = nullptr;

    __device__ __forceinline__ bool has_tree() const { return q_start_min != nullptr; }
};

// `causal` is passed separately so kernels can make it a compile-time constant; trees imply causal.
__device__ __forceinline__ SeqMaskInfo make_seq_mask_info(const FwdParams &p, bool causal, int batch_idx,
                                                          int seqlen_q, int seqlen_k) {
    SeqMaskInfo s;
    s.seqlen_q = seqlen_q;
    s.seqlen_k = seqlen_k;
    s.diag = causal_diagonal(causal, seqlen_q, seqlen_k);
    if (causal && p.tree_start_q != nullptr) {
        const int qbase = granule_base(batch_idx, p.cu_seqlens_q[batch_idx]);
        const int kbase = granule_base(batch_idx, p.cu_seqlens_k[batch_idx]);
        s.q_start_min = p.bounds.q_start_min + qbase;
        s.q_start_max = p.bounds.q_start_max + qbase;
        s.k_end_min = p.bounds.k_end_min + kbase;
        s.k_end_max = p.bounds.k_end_max + kbase;
    }
    return s;
}

// Tile rows [m0, m0 + kTileM) and columns [n0, n0 + kTileN), local to the sequence.
template <int kTileM, int kTileN>
__device__ __forceinline__ TileKind classify_tile(const SeqMaskInfo &s, int m_block, int n_block) {
    static_assert(kTileM % kBoundsGranule == 0 && kTileN % kBoundsGranule == 0,
                  "tiles must be whole bounds granules");
    const int m0 = m_block * kTileM;
    const int n0 = n_block * kTileN;
    if (m0 >= s.seqlen_q || n0 >= s.seqlen_k) return TileKind::kEmpty;
    const int m_last = min(m0 + kTileM, s.seqlen_q) - 1;
    const int n_last = min(n0 + kTileN, s.seqlen_k) - 1;
    // Columns past the end of the sequence need the element mask.
    bool partial = n0 + kTileN > s.seqlen_k;
    if (n0 > m_last + s.diag) return TileKind::kEmpty;  // above the causal diagonal
    if (n_last > m0 + s.diag) partial = true;           // crosses the diagonal
    if (s.has_tree()) {
        int q_min = INT_MAX, q_max = INT_MIN, k_min = INT_MAX, k_max = INT_MIN;
#pragma unroll
        for (int g = 0; g < kTileM / kBoundsGranule; ++g) {
            if (m0 + g * kBoundsGranule <= m_last) {
                const int idx = m_block * (kTileM / kBoundsGranule) + g;
                q_min = min(q_min, __ldg(s.q_start_min + idx));
                q_max = max(q_max, __ldg(s.q_start_max + idx));
            }
        }
#pragma unroll
        for (int g = 0; g < kTileN / kBoundsGranule; ++g) {
            if (n0 + g * kBoundsGranule <= n_last) {
                const int idx = n_block * (kTileN / kBoundsGranule) + g;
                k_min = min(k_min, __ldg(s.k_end_min + idx));
                k_max = max(k_max, __ldg(s.k_end_max + idx));
            }
        }
        if (q_min > k_max) return TileKind::kEmpty;  // no query starts before any key's subtree ends
        if (q_max > k_min) partial = true;
    }
    return partial ? TileKind::kPartial : TileKind::kFull;
}

// The one tile classified without loading bounds: the forward's first, the key block holding the own key of the
// query block's last row (n_end = key_block_end in block_range.h). With a tree every token sees itself, so that
// tile is never empty, and one that crosses the causal diagonal is partial whatever the tree says; taking it so
// lets the first K load start without waiting for a round of bound loads, which every CTA would otherwise pay
// before its first tile. The element mask keeps the tile exact even for tree arrays that break the rule.
// Returns the block (partial), or -1 where classify_tile must decide (without a tree it loads nothing).
template <int kBlockM, int kBlockN>
__device__ __forceinline__ int diagonal_key_block_unclassified(const SeqMaskInfo &s, int m_block, int n_end) {
    if (!s.has_tree() || n_end <= 0) return -1;
    const int n_block = n_end - 1;
    const int n_last = min((n_block + 1) * kBlockN, s.seqlen_k) - 1;
    return n_last > m_block * kBlockM + s.diag ? n_block : -1;
}

}  // namespace flash_tree_attn
