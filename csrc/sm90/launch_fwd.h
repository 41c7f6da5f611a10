// Host-side launch of the sm90 forward kernel for one (head dim bucket, dtype, causal) instantiation: builds
// the TMA descriptors of Q, K and V (host-only driver call, no device synchronisation) and launches.
#pragma once

#include <algorithm>
#include <limits>

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "params.h"
#include "tile_order.h"
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
    // Persistent (fwd_kernel.h): a CTA per SM, or per item where there are fewer items; otherwise a CTA per item.
    const int64_t items = fwd_item_count<Traits::kBlockM>(params);
    if (items > std::numeric_limits<int>::max()) {
        return "sm90 forward: more than 2^31 - 1 work items (128-row query blocks x sequences x query heads)";
    }
    if (Traits::kPersistent && params.fwd_item_counter == nullptr) {
        return "sm90 forward: the persistent kernel needs a zeroed item counter (FwdParams::fwd_item_counter)";
    }
    const int64_t ctas = Traits::kPersistent && params.num_sms > 0 ? std::min<int64_t>(params.num_sms, items) : items;
    kernel<<<dim3(unsigned(ctas)), Traits::kNThreads, Traits::kSmemBytes, stream>>>(params, tma_q, tma_k, tma_v);
    return nullptr;
}

}  // namespace flash_tree_attn
