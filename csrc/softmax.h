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

// Sets masked scores of one tile to -inf. `coord` is the identity tensor partitioned like the scores
// (rowcol view) giving tile-local (row, col). start_q / end_k point at the sequence's tree arrays
// (nullptr without a tree); they are read here, for partial tiles only, rather than held in registers.
template <class S, class C>
__forceinline__ __device__ void mask_tile(S &scores, C const &coord, int row0, int col0, int seqlen_q, int seqlen_k,
                                          int diag, const int *start_q, const int *end_k) {
    constexpr int kRows = decltype(size<0>(scores))::value;
    int row_start[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int row = row0 + get<0>(coord(r, 0));
        row_start[r] = (start_q != nullptr && row < seqlen_q) ? __ldg(start_q + row) : kNoTreeStart;
    }
#pragma unroll
    for (int c = 0; c < size<1>(scores); ++c) {
        const int col = col0 + get<1>(coord(0, c));
        const int col_end = (end_k != nullptr && col < seqlen_k) ? __ldg(end_k + col) : kNoTreeEnd;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const int row = row0 + get<0>(coord(r, 0));
            if (!key_visible(row, col, seqlen_k, diag, row_start[r], col_end)) scores(r, c) = -INFINITY;
        }
    }
}

// The same mask for a transposed tile S^T (rows are keys, columns are queries), as computed by backward
// kernels that own key rows. Arguments keep their meaning: row0 / seqlen_q / start_q are about queries,
// col0 / seqlen_k / end_k about keys; `coord` gives tile-local (key, query).
template <class S, class C>
__forceinline__ __device__ void mask_tile_transposed(S &scores_t, C const &coord, int row0, int col0, int seqlen_q,
                                                     int seqlen_k, int diag, const int *start_q, const int *end_k) {
    constexpr int kKeys = decltype(size<0>(scores_t))::value;
    int key_end[kKeys];
#pragma unroll
    for (int r = 0; r < kKeys; ++r) {
        const int col = col0 + get<0>(coord(r, 0));
        key_end[r] = (end_k != nullptr && col < seqlen_k) ? __ldg(end_k + col) : kNoTreeEnd;
    }
#pragma unroll
    for (int c = 0; c < size<1>(scores_t); ++c) {
        const int row = row0 + get<1>(coord(0, c));
        const int row_start = (start_q != nullptr && row < seqlen_q) ? __ldg(start_q + row) : kNoTreeStart;
#pragma unroll
        for (int r = 0; r < kKeys; ++r) {
            const int col = col0 + get<0>(coord(r, 0));
            if (!key_visible(row, col, seqlen_k, diag, row_start, key_end[r])) scores_t(r, c) = -INFINITY;
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
