// Online softmax over accumulator rows, and the element mask applied to a partial tile. Both work on
// (rows, cols) views of an MMA accumulator (sm80/utils.h and sm90/utils.h build them); in both the mma.sync
// and the wgmma accumulator a row is spread over the 4 threads of a quad. The masking rule itself is
// key_visible() in tree_mask.h.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "tree_mask.h"

namespace flash_tree_attn {

using cute::get;
using cute::size;

// Reductions across the 4 threads of a quad, which together hold one accumulator row.
__forceinline__ __device__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__forceinline__ __device__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Sets masked scores of one tile to -inf. `coord` is the identity tensor partitioned like the scores (rowcol
// view) giving tile-local (row, col); with kTransposed the tile is S^T, as computed by backward kernels that
// own key rows: its rows are keys and its columns queries. The other arguments keep their meaning either
// way: row0 / seqlen_q / tile_start_q are about queries, col0 / seqlen_k / tile_end_k about keys.
// tile_start_q[i] and tile_end_k[j] are the tree values of the tile's i-th query and j-th key (tile-local
// indices), nullptr without a tree; entries past the sequence are never read. The sm80 kernels and the sm90
// backward stage them in shared memory with the tile, so that a partial tile does not wait on global loads;
// the sm90 forward passes global memory (staging them through its producer warp measured slower on a chain).
// The values of the view's rows are read once into registers, those of its columns inside the loop.
// A transposed tile also masks its queries past the sequence: the sm90 backward, the only kernel that computes
// S^T, loads whole query tiles by TMA, so those are the next sequence's rows, and their scores against this
// sequence's keys may overflow (the kernel marks a query block that runs past the sequence partial).
template <bool kTransposed, class S, class C>
__forceinline__ __device__ void mask_tile(S &scores, C const &coord, int row0, int col0, int seqlen_q, int seqlen_k,
                                          int diag, const int *tile_start_q, const int *tile_end_k) {
    auto start_of = [&](int i) {  // tree start of the tile's i-th query
        return (tile_start_q != nullptr && row0 + i < seqlen_q) ? tile_start_q[i] : kNoTreeStart;
    };
    auto end_of = [&](int j) {  // tree end of the tile's j-th key
        return (tile_end_k != nullptr && col0 + j < seqlen_k) ? tile_end_k[j] : kNoTreeEnd;
    };
    constexpr int kRows = decltype(size<0>(scores))::value;
    int row_tree[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int i = get<0>(coord(r, 0));
        row_tree[r] = kTransposed ? end_of(i) : start_of(i);
    }
#pragma unroll
    for (int c = 0; c < size<1>(scores); ++c) {
        const int j = get<1>(coord(0, c));
        const int col_tree = kTransposed ? start_of(j) : end_of(j);
        const bool query_in_sequence = !kTransposed || row0 + j < seqlen_q;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const int i = get<0>(coord(r, 0));
            const int query = row0 + (kTransposed ? j : i);
            const int key = col0 + (kTransposed ? i : j);
            const bool visible = kTransposed
                                     ? query_in_sequence && key_visible(query, key, seqlen_k, diag, col_tree, row_tree[r])
                                     : key_visible(query, key, seqlen_k, diag, row_tree[r], col_tree);
            if (!visible) scores(r, c) = -INFINITY;
        }
    }
}

template <int kRows>
struct OnlineSoftmax {
    float row_max[kRows];
    float row_sum[kRows];  // per-thread partial sums; reduced across the quad in finalize()

    __forceinline__ __device__ OnlineSoftmax() {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            row_max[r] = -INFINITY;
            row_sum[r] = 0.f;
        }
    }

    // Folds one tile of raw scores into the running max/sum, rescales the output accumulator, and
    // overwrites the scores with unnormalised probabilities exp(scale * (s - max)).
    template <class S, class O>
    __forceinline__ __device__ void update(S &scores, O &acc_o, float scale_log2) {
        float factor[kRows];
        update_scores(scores, scale_log2, factor);
        rescale(acc_o, factor);
    }

    // update() in two halves, for kernels that overlap the softmax with an in-flight O += P V, which still
    // writes the output accumulator: this half folds the tile into the running max/sum and turns the scores
    // into probabilities, recording the factor each output row must be scaled by; rescale() applies it once
    // the accumulator may be touched again.
    template <class S>
    __forceinline__ __device__ void update_scores(S &scores, float scale_log2, float (&factor)[kRows]) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            float m = row_max[r];
#pragma unroll
            for (int c = 0; c < size<1>(scores); ++c) m = fmaxf(m, scores(r, c));
            m = quad_max(m);
            // A row that has seen only masked keys keeps max -inf; subtracting 0 instead keeps its
            // probabilities (and factor) at 0 rather than NaN.
            const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
            factor[r] = exp2f(row_max[r] * scale_log2 - m_scaled);
            row_max[r] = m;
            row_sum[r] *= factor[r];
            float sum = 0.f;
#pragma unroll
            for (int c = 0; c < size<1>(scores); ++c) {
                const float p = exp2f(fmaf(scores(r, c), scale_log2, -m_scaled));
                scores(r, c) = p;
                sum += p;
            }
            row_sum[r] += sum;
        }
    }

    // The other half: scales each output row by the factor update_scores() recorded for it.
    template <class O>
    __forceinline__ __device__ void rescale(O &acc_o, float const (&factor)[kRows]) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
#pragma unroll
            for (int c = 0; c < size<1>(acc_o); ++c) acc_o(r, c) *= factor[r];
        }
    }

    // Normalises the output rows and returns the natural-log LSE per row (-inf for rows with no key;
    // their output is zero).
    template <class O>
    __forceinline__ __device__ void finalize(O &acc_o, float softmax_scale, float (&lse)[kRows]) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const float sum = quad_sum(row_sum[r]);
            const bool empty = sum == 0.f;
            const float inv = empty ? 0.f : 1.f / sum;
            lse[r] = empty ? -INFINITY : row_max[r] * softmax_scale + logf(sum);
#pragma unroll
            for (int c = 0; c < size<1>(acc_o); ++c) acc_o(r, c) *= inv;
        }
    }
};

}  // namespace flash_tree_attn
