// Tiny prep kernel: per-granule min/max of the tree arrays, read by classify_tile(), and the zeroed counter at the
// end of the scratch (kernel_api.h). One block of kBoundsGranule threads per (granule, sequence, array); cost is
// one pass over 2 int32 arrays, far below 1% of an attention forward.
#include <climits>

#include "grid_units.h"
#include "kernel_api.h"

namespace flash_tree_attn {

namespace {

constexpr int kThreads = kBoundsGranule;
static_assert(kThreads % 32 == 0, "granule must be whole warps");

__global__ void __launch_bounds__(kThreads) block_bounds_kernel(const int *__restrict__ values_q,
                                                                const int *__restrict__ cu_seqlens_q,
                                                                int *out_q_min, int *out_q_max,
                                                                const int *__restrict__ values_k,
                                                                const int *__restrict__ cu_seqlens_k,
                                                                int *out_k_min, int *out_k_max, int batch,
                                                                int *counter) {
    const uint32_t unit = grid_unit();  // sequences fastest, then the array (grid_units.h)
    if (unit == 0 && blockIdx.x == 0 && threadIdx.x == 0) *counter = 0;  // the CTA every launch has
    if (unit >= 2 * int64_t(batch)) return;
    const bool is_k = unit >= uint32_t(batch);
    const int *values = is_k ? values_k : values_q;
    const int *cu = is_k ? cu_seqlens_k : cu_seqlens_q;
    int *out_min = is_k ? out_k_min : out_q_min;
    int *out_max = is_k ? out_k_max : out_q_max;

    const int b = int(unit % uint32_t(batch));
    const int g = blockIdx.x;
    const int start = cu[b];
    const int len = cu[b + 1] - start;
    if (g * kBoundsGranule >= len) return;
    const int tok = g * kBoundsGranule + threadIdx.x;
    int vmin = INT_MAX, vmax = INT_MIN;
    if (tok < len) vmin = vmax = values[start + tok];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        vmin = min(vmin, __shfl_xor_sync(0xffffffffu, vmin, off));
        vmax = max(vmax, __shfl_xor_sync(0xffffffffu, vmax, off));
    }
    __shared__ int smin[kThreads / 32], smax[kThreads / 32];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
        smin[warp] = vmin;
        smax[warp] = vmax;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int w = 1; w < kThreads / 32; ++w) {
            vmin = min(vmin, smin[w]);
            vmax = max(vmax, smax[w]);
        }
        const int idx = granule_base(b, start) + g;
        out_min[idx] = vmin;
        out_max[idx] = vmax;
    }
}

}  // namespace

int64_t block_bounds_scratch_ints(int64_t total_q, int64_t total_k, int batch) {
    return 2 * num_granule_slots(total_q, batch) + 2 * num_granule_slots(total_k, batch) + 1;
}

TreeBounds block_bounds_view(const int *scratch, int64_t total_q, int64_t total_k, int batch) {
    const int64_t slots_q = num_granule_slots(total_q, batch);
    const int64_t slots_k = num_granule_slots(total_k, batch);
    TreeBounds b;
    b.q_start_min = scratch;
    b.q_start_max = scratch + slots_q;
    b.k_end_min = scratch + 2 * slots_q;
    b.k_end_max = scratch + 2 * slots_q + slots_k;
    return b;
}

int *block_bounds_counter(int *scratch, int64_t total_q, int64_t total_k, int batch) {
    return scratch + block_bounds_scratch_ints(total_q, total_k, batch) - 1;
}

void launch_block_bounds(const FwdParams &p, int *scratch, cudaStream_t stream) {
    const TreeBounds view = block_bounds_view(scratch, p.shape.total_q, p.shape.total_k, p.shape.batch);
    int *counter = block_bounds_counter(scratch, p.shape.total_q, p.shape.total_k, p.shape.batch);
    const int max_len = p.shape.max_seqlen_q > p.shape.max_seqlen_k ? p.shape.max_seqlen_q : p.shape.max_seqlen_k;
    const int granules = (max_len + kBoundsGranule - 1) / kBoundsGranule;
    if (granules == 0 || p.shape.batch == 0) {  // no bounds to compute; the counter is zeroed all the same
        cudaMemsetAsync(counter, 0, sizeof(int), stream);
        return;
    }
    block_bounds_kernel<<<unit_grid(granules, 2 * int64_t(p.shape.batch)), kThreads, 0, stream>>>(
        p.tree_start_q, p.cu_seqlens_q, const_cast<int *>(view.q_start_min), const_cast<int *>(view.q_start_max),
        p.tree_end_k, p.cu_seqlens_k, const_cast<int *>(view.k_end_min), const_cast<int *>(view.k_end_max),
        p.shape.batch, counter);
}

}  // namespace flash_tree_attn
