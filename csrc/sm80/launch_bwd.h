// Host-side launch of the sm80 backward for one (head dim bucket, dtype, causal) instantiation:
// D = rowsum(dO * O) -> dK, dV, dQaccum -> dQ.
#pragma once

#include <cuda_runtime.h>

#include "bwd_prepost.h"
#include "params.h"
#include "sm80/bwd_kernel.h"

namespace flash_tree_attn {

template <int kHeadDim, typename Element, bool kCausal>
void run_sm80_bwd(BwdParams &params, cudaStream_t stream) {
    using Traits = typename sm80::BwdConfig<kHeadDim, Element>::Traits;
    static_assert(Traits::kBlockM == sm80::BwdConfig<64, Element>::Traits::kBlockM,
                  "bwd_block_m() assumes one query-block size for every head dim");
    const int64_t rows = int64_t(params.shape.total_q) * params.shape.num_heads_q;
    const int prepost_blocks = int((rows * kPrepostThreadsPerRow + kPrepostThreads - 1) / kPrepostThreads);
    if (prepost_blocks == 0) return;
    bwd_dot_do_o_kernel<Element><<<prepost_blocks, kPrepostThreads, 0, stream>>>(params);

    const int64_t ctas = bwd_grid_size<Traits::kBlockN>(params);
    if (ctas > 0) {
        sm80::launch_with_smem(&sm80::bwd_kernel<Traits, kCausal>, dim3(unsigned(ctas)), Traits::kNThreads,
                               Traits::kSmemBytes, stream, params);
    }
    bwd_convert_dq_kernel<Element><<<prepost_blocks, kPrepostThreads, 0, stream>>>(params, kHeadDim);
}

}  // namespace flash_tree_attn
