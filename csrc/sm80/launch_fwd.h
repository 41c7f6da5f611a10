// Host-side launch of the sm80 forward kernel for one (head dim bucket, dtype, causal) instantiation.
#pragma once

#include <cuda_runtime.h>

#include "grid_units.h"
#include "params.h"
#include "sm80/fwd_kernel.h"

namespace flash_tree_attn {

template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm80_fwd(FwdParams &params, cudaStream_t stream) {
    using Traits = typename sm80::FwdConfig<kHeadDim, Element>::Traits;
    if (const char *err = sm80::smem_shortfall(params, Traits::kSmemBytes, /*backward=*/false)) return err;
    const int m_blocks = ceil_div(params.shape.max_seqlen_q, Traits::kBlockM);
    if (m_blocks == 0 || params.shape.batch == 0 || params.shape.num_heads_q == 0) return nullptr;
    const dim3 grid = unit_grid(m_blocks, int64_t(params.shape.batch) * params.shape.num_heads_q);
    sm80::launch_with_smem(&sm80::fwd_kernel<Traits, kCausal>, grid, Traits::kNThreads, Traits::kSmemBytes, stream,
                           params);
    return nullptr;
}

}  // namespace flash_tree_attn
