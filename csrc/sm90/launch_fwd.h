// Host-side launch of the sm90 forward kernel for one (head dim bucket, dtype, causal) instantiation: builds
// the TMA descriptors of Q, K and V (host-only driver call, no device synchronisation) and launches.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "params.h"
#include "sm90/fwd_kernel.h"

namespace flash_tree_attn {

template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm90_fwd(FwdParams &params, cudaStream_t stream) {
    using namespace cute;
    using Traits = typename sm90::FwdConfig<kHeadDim, Element>::Traits;
    const auto &sh = params.shape;
    const int m_blocks = ceil_div(sh.max_seqlen_q, Traits::kBlockM);
    if (m_blocks == 0 || sh.batch == 0 || sh.num_heads_q == 0) return nullptr;

    auto packed = [&](const void *ptr, int tokens, int heads, int64_t row_stride, int64_t head_stride) {
        return sm90::packed_gmem_tensor<Element>(ptr, tokens, sh.head_dim, heads, row_stride, head_stride);
    };
    auto tma_q = make_tma_copy(SM90_TMA_LOAD{}, packed(params.q, sh.total_q, sh.num_heads_q, params.q_row_stride,
                                                       params.q_head_stride),
                               typename Traits::SmemLayoutQ{}, Shape<Int<Traits::kBlockM>, Int<kHeadDim>>{}, _1{});
    auto tma_k = make_tma_copy(SM90_TMA_LOAD{}, packed(params.k, sh.total_k, sh.num_heads_kv, params.k_row_stride,
                                                       params.k_head_stride),
                               take<0, 2>(typename Traits::SmemLayoutK{}), Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{},
                               _1{});
    auto tma_v = make_tma_copy(SM90_TMA_LOAD{}, packed(params.v, sh.total_k, sh.num_heads_kv, params.v_row_stride,
                                                       params.v_head_stride),
                               take<0, 2>(typename Traits::SmemLayoutV{}), Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{},
                               _1{});

    auto kernel = &sm90::fwd_kernel<Traits, kCausal, decltype(tma_q), decltype(tma_k), decltype(tma_v)>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
    dim3 grid(m_blocks, sh.batch, sh.num_heads_q);
    kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(params, tma_q, tma_k, tma_v);
    return nullptr;
}

}  // namespace flash_tree_attn
