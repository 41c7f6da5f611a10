// Online softmax over accumulator rows, the backward's softmax on a transposed tile, and the element mask
// applied to a partial tile. All work on (rows, cols) views of an MMA accumulator (sm80/utils.h and
// sm90/utils.h build them); in both the mma.sync and the wgmma accumulator a row is spread over the 4 threads
// of a quad. The masking rule itself is masked_pair_visible() in tree_mask.h.
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

// Sets the masked scores of one tile to -inf: masked_pair_visible (tree_mask.h) for every score. `coord` is
// the identity tensor partitioned like the scores (rowcol view), giving tile-local (row, col). With kTransposed
// the tile is S^T, as the sm90 backward computes it: its rows are keys and its columns queries. row_value[r] is
// the mask value of view row r and col_value(c) that of view column c (tree_mask.h: query values for queries,
// key values for keys); diag_local is the causal diagonal in tile-local indices, diag + (first query) - (first
// key): the pair (local key k, local query q) passes the causal test iff k - q <= diag_local.
// A pair costs two comparisons and a select: masked_pair_visible is given the column's offset from this thread's
// first column (a constant of the unrolled loop) as the pair's key - query, and a limit per row as the diagonal:
//   not transposed (rows queries i, columns keys j):  j - i <= diag_local  <=>    j - j0  <= diag_local + i - j0;
//   transposed (rows keys i, columns queries j):      i - j <= diag_local  <=>  -(j - j0) <= diag_local - i + j0.
// [kColBegin, kColEnd) restricts it to those view columns (by default all); without kCausalTest only the mask values
// are compared, which is exact where every pair of those columns lies on or below the causal diagonal.
template <bool kTransposed, bool kCausalTest = true, int kColBegin = 0, int kColEnd = -1, int kRows, class S, class C,
          class ColValue>
__forceinline__ __device__ void mask_tile_values(S &scores, C const &coord, int diag_local,
                                                 const int (&row_value)[kRows], ColValue &&col_value) {
    static_assert(decltype(size<0>(scores))::value == kRows);
    constexpr int kColStop = kColEnd < 0 ? int(decltype(size<1>(scores))::value) : kColEnd;
    const int j0 = get<1>(coord(0, 0));
    int limit[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int i = get<0>(coord(r, 0));
        limit[r] = kTransposed ? diag_local - i + j0 : diag_local + i - j0;
    }
#pragma unroll
    for (int c = kColBegin; c < kColStop; ++c) {
        const int dj = get<1>(coord(0, c)) - j0;
        const int value = col_value(c);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            bool visible;
            if constexpr (!kCausalTest) {
                visible = kTransposed ? mask_values_visible(value, row_value[r])
                                      : mask_values_visible(row_value[r], value);
            } else {
                visible = kTransposed ? masked_pair_visible(-dj, limit[r], value, row_value[r])
                                      : masked_pair_visible(dj, limit[r], row_value[r], value);
            }
            if (!visible) scores(r, c) = -INFINITY;
        }
    }
}

// The element mask of a tile of S (rows are queries) whose tree values are staged in shared memory:
// tile_start_q[i] and tile_end_k[j] of the tile's i-th query and j-th key (tile-local), nullptr without a
// tree; entries past the sequence are never read. Queries past the sequence are left unmasked, as their rows
// are never stored (the sm80 kernels load zeros there). The values of the view's rows are read once into
// registers, those of its columns inside the loop. kPerPair evaluates key_visible pair by pair instead of
// going through mask_tile_values: the sm80 backward, whose loop runs at 255 registers, spills more and runs
// 1.4-2.4% slower with mask_tile_values' per-row limits (bench_results/RESULTS.md, 2026-11-30).
template <bool kPerPair, class S, class C>
__forceinline__ __device__ void mask_tile(S &scores, C const &coord, int row0, int col0, int seqlen_q, int seqlen_k,
                                          int diag, const int *tile_start_q, const int *tile_end_k) {
    constexpr int kRows = decltype(size<0>(scores))::value;
    int row_value[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        const int i = get<0>(coord(r, 0));
        row_value[r] = (tile_start_q != nullptr && row0 + i < seqlen_q) ? tile_start_q[i] : kNoTreeStart;
    }
    auto end_of = [&](int j) {  // tree end of the tile's j-th key
        return (tile_end_k != nullptr && col0 + j < seqlen_k) ? tile_end_k[j] : kNoTreeEnd;
    };
    if constexpr (kPerPair) {
#pragma unroll
        for (int c = 0; c < size<1>(scores); ++c) {
            const int j = get<1>(coord(0, c));
            const int col_end = end_of(j);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                const int i = get<0>(coord(r, 0));
                if (!key_visible(row0 + i, col0 + j, seqlen_k, diag, row_value[r], col_end)) scores(r, c) = -INFINITY;
            }
        }
    } else {
        mask_tile_values</*kTransposed=*/false>(scores, coord, diag + row0 - col0, row_value, [&](int c) {
            const int j = get<1>(coord(0, c));
            return key_mask_value(col0 + j < seqlen_k, end_of(j));
        });
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

    // Folds one tile of raw scores into the running max/sum, rescales the output accumulator where a row's max
    // moved, and overwrites the scores with unnormalised probabilities exp(scale * (s - max)).
    template <class S, class O>
    __forceinline__ __device__ void update(S &scores, O &acc_o, float scale_log2) {
        float factor[kRows];
        if (update_scores(scores, scale_log2, factor)) rescale(acc_o, factor);
    }

    // update() in two halves, for kernels that overlap the softmax with an in-flight O += P V, which still
    // writes the output accumulator: this half folds the tile into the running max/sum and turns the scores
    // into probabilities, recording the factor each output row must be scaled by; rescale() applies it once
    // the accumulator may be touched again. It returns, the same in every lane of the warp, whether any of the
    // warp's rows has a factor other than 1; where none has, rescale() may be skipped.
    // A row keeps its running max while a tile raises it by at most kMaxGrowthLog2 (log2 units, after scaling):
    // the tile's probabilities are then at most 2^8, exact enough in fp32 and in bf16/fp16 (whose rounding is
    // relative), and the LSE is computed from the max actually subtracted. So after a row's first few key blocks
    // its max rarely moves, and the warp skips the multiplies of the output rescale. The sm90 forward ran 1.9-2.6%
    // faster on every workload at head dim 128 in two same-run A/Bs on the H200, 1.7% at 64 and 6.5% at 256; the
    // sm80 forward level (bench_results/RESULTS.md, thirty-sixth session).
    static constexpr float kMaxGrowthLog2 = 8.f;
    template <class S>
    __forceinline__ __device__ bool update_scores(S &scores, float scale_log2, float (&factor)[kRows]) {
        bool moved = false;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            float m = row_max[r];
#pragma unroll
            for (int c = 0; c < size<1>(scores); ++c) m = fmaxf(m, scores(r, c));
            m = quad_max(m);
            // -inf - -inf is NaN, which fails the comparison: a row that has seen no visible key yet takes the
            // tile's max (-inf again if the tile hides every key from it).
            const bool keep = (m - row_max[r]) * scale_log2 <= kMaxGrowthLog2;
            if (keep) m = row_max[r];
            moved |= !keep;
            // A row that has seen only masked keys keeps max -inf; subtracting 0 instead keeps its
            // probabilities (and factor) at 0 rather than NaN.
            const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
            factor[r] = keep ? 1.f : exp2f(row_max[r] * scale_log2 - m_scaled);
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
        return __any_sync(0xffffffffu, moved);
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

// The backward's softmax on a transposed tile (rows keys, columns queries; the sm90 backward's S^T and dP^T),
// in two halves so that the first can run while dP^T is still being computed. Columns (c, c+1) are neighbouring
// queries, so their row statistics are one 8-byte load; `coord` gives each column's tile-local query, and
// lse_log2 / dsum are the query rows' statistics in shared memory.
// P^T = exp2(S^T * scale_log2 - LSE_log2), in place of S^T (a row past the sequence or without keys has LSE_log2
// = +inf, so its P is 0).
template <class S, class C>
__forceinline__ __device__ void probabilities_transposed(S &st, C const &coord, const float *lse_log2,
                                                         float scale_log2) {
#pragma unroll
    for (int c = 0; c < size<1>(st); c += 2) {
        const float2 lse = *reinterpret_cast<const float2 *>(&lse_log2[get<1>(coord(0, c))]);
#pragma unroll
        for (int r = 0; r < size<0>(st); ++r) {
            st(r, c) = exp2f(fmaf(st(r, c), scale_log2, -lse.x));
            st(r, c + 1) = exp2f(fmaf(st(r, c + 1), scale_log2, -lse.y));
        }
    }
}

// dS^T = P^T (dP^T - D), in place of dP^T, where D = rowsum(dO * O) - dLSE of each query.
template <class S, class C>
__forceinline__ __device__ void score_gradients_transposed(S &dpt, S const &pt, C const &coord, const float *dsum) {
#pragma unroll
    for (int c = 0; c < size<1>(dpt); c += 2) {
        const float2 d = *reinterpret_cast<const float2 *>(&dsum[get<1>(coord(0, c))]);
#pragma unroll
        for (int r = 0; r < size<0>(dpt); ++r) {
            dpt(r, c) = pt(r, c) * (dpt(r, c) - d.x);
            dpt(r, c + 1) = pt(r, c + 1) * (dpt(r, c + 1) - d.y);
        }
    }
}

}  // namespace flash_tree_attn
