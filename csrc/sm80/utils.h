// Small CuTe helpers shared by the sm80 forward and backward kernels.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "fragment_convert.h"
#include "params.h"

namespace flash_tree_attn::sm80 {

using namespace cute;

// nullptr when the GPU gives a block smem_bytes of shared memory (FwdParams::max_smem_per_block), else a static
// message naming the kernel (the binding adds the head dim and what the GPU gives).
inline const char *smem_shortfall(const FwdParams &params, int smem_bytes, bool backward) {
    if (smem_bytes <= params.max_smem_per_block) return nullptr;
    return backward ? "the sm80 backward kernel of this head dim needs more shared memory per block than the GPU gives"
                    : "the sm80 forward kernel of this head dim needs more shared memory per block than the GPU gives";
}

// Launches a kernel that takes its parameter struct by value, raising the dynamic shared-memory limit first
// when the kernel needs more than the default 48 KB.
template <typename Kernel, typename Params>
void launch_with_smem(Kernel kernel, dim3 grid, int threads, int smem_bytes, cudaStream_t stream, const Params &params) {
    if (smem_bytes > 48 * 1024) {
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    }
    kernel<<<grid, threads, smem_bytes, stream>>>(params);
}

// The accumulator of SM80 16x8 MMAs is ((2 cols, 2 rows), MMA_M, MMA_N): each thread holds a column pair
// in two rows 8 apart. Viewed as (rows, cols) = ((2, MMA_M), (2, MMA_N)) it can be reduced row by row.
template <class Layout>
__forceinline__ __device__ auto acc_rowcol_layout(Layout acc) {
    static_assert(decltype(rank(acc))::value == 3);
    auto l = logical_divide(acc, Shape<_2>{});
    return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

template <class Tensor>
__forceinline__ __device__ auto acc_rowcol(Tensor &&t) {
    return make_tensor(t.data(), acc_rowcol_layout(t.layout()));
}

// Two neighbouring 16x8 accumulator tiles (columns n and n+8) hold exactly the registers of one 16x16
// A operand, so an accumulator is reused as the A operand of the next GEMM without shuffles:
// ((2,2), MMA_M, MMA_N) -> (((2,2),2), MMA_M, MMA_N / 2).
template <class Layout>
__forceinline__ __device__ auto acc_as_a_operand_layout(Layout acc) {
    static_assert(decltype(rank(acc))::value == 3);
    auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});
    return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

// acc += A * B with both operands streamed from shared memory one k-slice ahead of the MMAs.
template <class Acc, class RA, class RB, class SA, class SB, class TiledMma, class CopyA, class CopyB, class ThrCopyA,
          class ThrCopyB>
__forceinline__ __device__ void gemm_ss(Acc &acc, RA &tCrA, RB &tCrB, SA const &tCsA, SB const &tCsB,
                                        TiledMma &tiled_mma, CopyA const &copy_a, CopyB const &copy_b,
                                        ThrCopyA const &thr_copy_a, ThrCopyB const &thr_copy_b) {
    auto tCrA_view = thr_copy_a.retile_D(tCrA);
    auto tCrB_view = thr_copy_b.retile_D(tCrB);
    constexpr int K = decltype(size<2>(tCrA))::value;
    copy(copy_a, tCsA(_, _, 0), tCrA_view(_, _, 0));
    copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
#pragma unroll
    for (int k = 0; k < K; ++k) {
        if (k < K - 1) {
            copy(copy_a, tCsA(_, _, k + 1), tCrA_view(_, _, k + 1));
            copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
        }
        cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
    }
}

// acc += A * B with A already in registers and B streamed from shared memory.
template <class Acc, class RA, class RB, class SB, class TiledMma, class CopyB, class ThrCopyB>
__forceinline__ __device__ void gemm_rs(Acc &acc, RA const &tCrA, RB &tCrB, SB const &tCsB, TiledMma &tiled_mma,
                                        CopyB const &copy_b, ThrCopyB const &thr_copy_b) {
    auto tCrB_view = thr_copy_b.retile_D(tCrB);
    constexpr int K = decltype(size<2>(tCrA))::value;
    copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
#pragma unroll
    for (int k = 0; k < K; ++k) {
        if (k < K - 1) copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
        cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
    }
}

// Global -> shared tile copy (zero-filling cp.async, 16 bytes per vector). Rows >= max_rows and columns >=
// max_cols are zero-filled in shared memory so that padded rows never feed NaN/Inf garbage into the MMAs.
// src/dst are partitions (CPY, CPY_M, CPY_K) of one tile, coord the identity partition of the same tile.
template <class TiledCopy, class S, class D, class C>
__forceinline__ __device__ void copy_tile_async(TiledCopy const &tiled_copy, S const &src, D &dst, C const &coord,
                                                int max_rows, int max_cols) {
#pragma unroll
    for (int m = 0; m < size<1>(dst); ++m) {
        const bool row_ok = get<0>(coord(0, m, 0)) < max_rows;
#pragma unroll
        for (int k = 0; k < size<2>(dst); ++k) {
            copy(tiled_copy.with(row_ok && get<1>(coord(0, m, k)) < max_cols), src(_, m, k), dst(_, m, k));
        }
    }
}

// One 4-byte global -> shared cp.async, in the thread's current cp.async group; writes zero and reads nothing
// when !valid (src must still be a valid address).
__forceinline__ __device__ void cp_async_4(void *smem_dst, const void *gmem_src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(cast_smem_ptr_to_uint(smem_dst)),
                 "l"(gmem_src), "r"(valid ? 4 : 0));
}

// dst[j] = src[first + j] for j < kCount, by 4-byte cp.async spread over the kThreads threads of the CTA (this
// one is tid), zero where first + j >= limit: the tree values of a tile's rows or keys, loaded in the same
// cp.async group as the tile.
template <int kCount, int kThreads>
__forceinline__ __device__ void copy_values_async(int *dst, const int *src, int first, int limit, int tid) {
    CUTE_UNROLL
    for (int it = 0; it < (kCount + kThreads - 1) / kThreads; ++it) {
        const int j = tid + it * kThreads;
        if (kCount % kThreads == 0 || j < kCount) {
            const bool valid = first + j < limit;
            cp_async_4(&dst[j], src + (valid ? first + j : 0), valid);
        }
    }
}

// Shared -> global tile copy through registers, rows/columns outside the bounds are not written.
template <class TiledCopy, class S, class D, class C>
__forceinline__ __device__ void store_tile(TiledCopy const &tiled_copy, S const &src, D &dst, C const &coord,
                                           int max_rows, int max_cols) {
    auto staged = make_tensor<typename D::value_type>(shape(src));
    copy(tiled_copy, src, staged);
#pragma unroll
    for (int m = 0; m < size<1>(dst); ++m) {
        if (get<0>(coord(0, m, 0)) < max_rows) {
#pragma unroll
            for (int k = 0; k < size<2>(dst); ++k) {
                if (get<1>(coord(0, m, k)) < max_cols) copy(tiled_copy, staged(_, m, k), dst(_, m, k));
            }
        }
    }
}

}  // namespace flash_tree_attn::sm80
