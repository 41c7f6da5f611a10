// Host-side launch of the sm80 backward for one (head dim bucket, dtype, causal) instantiation:
// D = rowsum(dO * O) -> dK, dV, dQaccum -> dQ.
#pragma once

#include <cuda_runtime.h>

#include "bwd_prepost.h"
#include "params.h"
#include "sm80/bwd_kernel.h"
#include "sm80/dq_lines.h"

namespace flash_tree_attn {

template <typename Traits, bool kCausal>
void launch_sm80_bwd_kernel(BwdParams &params, cudaStream_t stream) {
    const int64_t ctas = bwd_grid_size<Traits::kBlockN>(params);
    if (ctas > 0) {
        sm80::launch_with_smem(&sm80::bwd_kernel<Traits, kCausal>, dim3(unsigned(ctas)), Traits::kNThreads,
                               Traits::kSmemBytes, stream, params);
    }
}

template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm80_bwd(BwdParams &params, cudaStream_t stream) {
    using Config = sm80::BwdConfig<kHeadDim, Element>;
    using Compact = typename Config::CompactTraits;
    static_assert(Compact::kSmemBytes <= sm80::kAmpereSmemBytes, "must fit an A100");
    const bool roomy = params.max_smem_per_block >= Config::Traits::kSmemBytes;
    if (!roomy) {
        if (const char *err = sm80::smem_shortfall(params, Compact::kSmemBytes, /*backward=*/true)) return err;
    }
    if (prepost_rows(params) == 0) return nullptr;
    launch_bwd_dot_do_o<Element, kHeadDim>(params, stream);
    if (roomy) {
        launch_sm80_bwd_kernel<typename Config::Traits, kCausal>(params, stream);
        sm80::launch_convert_dq_lines<typename Config::Traits>(params, stream);
    } else {
        launch_sm80_bwd_kernel<Compact, kCausal>(params, stream);
        sm80::launch_convert_dq_lines<Compact>(params, stream);
    }
    return nullptr;
}

}  // namespace flash_tree_attn
