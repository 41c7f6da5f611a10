// Online softmax over accumulator rows (rowcol views from acc_rowcol), and the element mask applied to a
// partial tile. The masking rule itself is key_visible() in tree_mask.h.
#pragma once

#include <cmath>

#include "tree_mask.h"
#include "sm80/utils.h"

namespace flash_tree_attn::sm80 {

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
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            float m = row_max[r];
#pragma unroll
            for (int c = 0; c < size<1>(scores); ++c) m = fmaxf(m, scores(r, c));
            m = quad_max(m);
            // A row that has seen only masked keys keeps max -inf; subtracting 0 instead keeps exp2 at 0
            // rather than NaN.
            const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
            const float factor = exp2f(row_max[r] * scale_log2 - m_scaled);
            row_max[r] = m;
            row_sum[r] *= factor;
#pragma unroll
            for (int c = 0; c < size<1>(acc_o); ++c) acc_o(r, c) *= factor;
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

}  // namespace flash_tree_attn::sm80
