// Host-side launch of the sm90 backward for one (head dim bucket, dtype, causal) instantiation:
// D = rowsum(dO * O) -> dK, dV, dQaccum (TMA descriptors for Q, dO, K, V) -> dQ.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "bwd_prepost.h"
#include "params.h"
#include "sm90/bwd_kernel.h"

namespace flash_tree_attn {

template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm90_bwd(BwdParams &params, cudaStream_t stream) {
    using namespace cute;
    using Traits = typename sm90::BwdConfig<kHeadDim, Element>::Traits;
    const auto &sh = params.shape;
    if (prepost_rows(params) == 0) return nullptr;
    // The kernel that adds dQ by TMA stores each (query head, query block)'s first tile; the deterministic mode
    // keeps the zeroed accumulator, whose +0 the order's argument relies on (write_dq).
    params.dq_first_store = !Traits::kSplitHeadDim && !params.deterministic;
    launch_bwd_dot_do_o<Element, kHeadDim>(params, stream);

    const int64_t ctas = bwd_grid_size<Traits::kBlockN>(params);
    if (ctas > 0) {
        auto packed = [&](const void *ptr, int tokens, int heads, int64_t row_stride, int64_t head_stride) {
            return sm90::packed_gmem_tensor<Element>(ptr, tokens, sh.head_dim, heads, row_stride, head_stride);
        };
        using QTile = Shape<Int<Traits::kBlockM>, Int<kHeadDim>>;
        using KTile = Shape<Int<Traits::kBlockN>, Int<kHeadDim>>;
        auto q_smem = take<0, 2>(typename Traits::SmemLayoutQ{});
        auto tma_q = make_tma_copy(SM90_TMA_LOAD{},
                                   packed(params.q, sh.total_q, sh.num_heads_q, params.q_row_stride, params.q_head_stride),
                                   q_smem, QTile{}, _1{});
        auto tma_do = make_tma_copy(
            SM90_TMA_LOAD{}, packed(params.dout, sh.total_q, sh.num_heads_q, params.do_row_stride, params.do_head_stride),
            q_smem, QTile{}, _1{});
        auto tma_k = make_tma_copy(SM90_TMA_LOAD{},
                                   packed(params.k, sh.total_k, sh.num_heads_kv, params.k_row_stride, params.k_head_stride),
                                   typename Traits::SmemLayoutK{}, KTile{}, _1{});
        auto tma_v = make_tma_copy(SM90_TMA_LOAD{},
                                   packed(params.v, sh.total_k, sh.num_heads_kv, params.v_row_stride, params.v_head_stride),
                                   typename Traits::SmemLayoutK{}, KTile{}, _1{});
        // The fp32 dQ accumulator, (tokens, bucket, heads): the target of the writer warp's reduce-adds and first
        // stores. The kernel that splits the head dim adds to it from registers and gets no descriptors.
        auto dq_accum_tma = [&](auto op) {
            if constexpr (Traits::kSplitHeadDim) {
                return sm90::NoTmaDescriptor{};
            } else {
                Tensor dq_accum =
                    make_tensor(make_gmem_ptr(params.dq_accum), make_shape(sh.total_q, Int<kHeadDim>{}, sh.num_heads_q),
                                make_stride(int64_t(sh.num_heads_q) * kHeadDim, _1{}, int64_t(kHeadDim)));
                return make_tma_copy(op, dq_accum, typename Traits::SmemLayoutdQ{}, QTile{}, _1{});
            }
        };
        auto tma_dq = dq_accum_tma(SM90_TMA_REDUCE_ADD{});
        auto tma_dq_store = dq_accum_tma(SM90_TMA_STORE{});
        auto kernel = &sm90::bwd_kernel<Traits, kCausal, decltype(tma_q), decltype(tma_do), decltype(tma_k),
                                        decltype(tma_v), decltype(tma_dq), decltype(tma_dq_store)>;
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
        kernel<<<dim3(unsigned(ctas)), Traits::kNThreads, Traits::kSmemBytes, stream>>>(params, tma_q, tma_do, tma_k, tma_v,
                                                                                         tma_dq, tma_dq_store);
    }
    launch_bwd_convert_dq<Element, kHeadDim>(params, stream);
    return nullptr;
}

}  // namespace flash_tree_attn
