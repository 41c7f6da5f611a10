// Maps a runtime (path, head dim, dtype, causal) to the kernel instantiations listed in the generated
// kernel_table.h. Torch-free.
#include <type_traits>

#include <cutlass/numeric_types.h>

#include "kernel_api.h"
#include "kernel_table.h"
#include "tile_order.h"

namespace flash_tree_attn {

template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm80_fwd(FwdParams &params, cudaStream_t stream);
template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm80_bwd(BwdParams &params, cudaStream_t stream);
template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm90_fwd(FwdParams &params, cudaStream_t stream);
template <int kHeadDim, typename Element, bool kCausal>
const char *run_sm90_bwd(BwdParams &params, cudaStream_t stream);

namespace {

constexpr int kCompiledHeadDims[] = FTA_COMPILED_HEAD_DIMS;

// Whether any sm90 kernel is in this build (the generated list is empty otherwise).
#define FTA_COUNT(hd, T, c) +1
constexpr bool kSm90Compiled = (0 FTA_SM90_FWD_KERNELS(FTA_COUNT)) > 0;
#undef FTA_COUNT

// Checks a forced sm90 path; nullptr when the call may go on.
const char *check_forced_sm90(const FwdParams &params, KernelPath path) {
    if (path != KernelPath::kSm90) return nullptr;
    if (!kSm90Compiled) return "the sm90 (Hopper) kernel path is not compiled into this build";
    if (params.device_arch != 90) return "the sm90 (Hopper) kernel path needs a GPU of compute capability 9.0";
    return nullptr;
}

// The backward's grid is one-dimensional (tile_order.h): key blocks x sequences x key/value heads. No
// backward key block is shorter than one bounds granule, so this bounds it for both paths (and the products
// tile_at() forms, whose rank blocks are at most that many blocks).
const char *check_bwd_grid(const BwdParams &params) {
    const auto &sh = params.shape;
    const int blocks = ceil_div(sh.max_seqlen_k, kBoundsGranule);
    if (tile_grid_fits(blocks, sh.batch, sh.num_heads_kv)) return nullptr;
    return "the backward needs (64-key blocks x sequences x key/value heads) below 2^31 CTAs; split the batch";
}

template <typename Element>
constexpr bool is_bf16() {
    return std::is_same_v<Element, cutlass::bfloat16_t>;
}

// One entry of a generated kernel list: runs FTA_RUN<hd, T, c> (defined around each use) when it matches and
// returns its result (nullptr, or why it could not run).
#define FTA_CASE(hd, T, c)                                                        \
    if (bucket == hd && params.is_bf16 == is_bf16<T>() && params.causal == c) {  \
        return FTA_RUN<hd, T, c>(params, stream);                               \
    }

}  // namespace

int head_dim_bucket(int head_dim) {
    for (int hd : kCompiledHeadDims) {
        if (head_dim <= hd) return hd;
    }
    return -1;
}

const char *compiled_head_dims() { return FTA_COMPILED_HEAD_DIMS_STR; }

// Every backward configuration's query block, on both paths, is a multiple of it (checked in dq_order.h).
int bwd_block_m(int /*head_dim_bucket*/) { return kBwdSemaphoreBlockM; }

const char *run_fwd(FwdParams &params, KernelPath path, cudaStream_t stream) {
    if (const char *err = check_forced_sm90(params, path)) return err;
    const int bucket = head_dim_bucket(params.shape.head_dim);
    if (path != KernelPath::kSm80 && params.device_arch == 90) {
#define FTA_RUN run_sm90_fwd
        FTA_SM90_FWD_KERNELS(FTA_CASE)
#undef FTA_RUN
        if (path == KernelPath::kSm90) {
            return "no sm90 forward kernel was compiled for this head dim / dtype / causal combination";
        }
    }
#define FTA_RUN run_sm80_fwd
    FTA_SM80_FWD_KERNELS(FTA_CASE)
#undef FTA_RUN
    return "no forward kernel was compiled for this head dim / dtype / causal combination";
}

const char *run_bwd(BwdParams &params, KernelPath path, cudaStream_t stream) {
    if (const char *err = check_forced_sm90(params, path)) return err;
    if (const char *err = check_bwd_grid(params)) return err;
    const int bucket = head_dim_bucket(params.shape.head_dim);
    if (path != KernelPath::kSm80 && params.device_arch == 90) {
#define FTA_RUN run_sm90_bwd
        FTA_SM90_BWD_KERNELS(FTA_CASE)
#undef FTA_RUN
        if (path == KernelPath::kSm90) {
            return "no sm90 backward kernel was compiled for this head dim / dtype / causal combination";
        }
    }
#define FTA_RUN run_sm80_bwd
    FTA_SM80_BWD_KERNELS(FTA_CASE)
#undef FTA_RUN
    return "no backward kernel was compiled for this head dim / dtype / causal combination";
}

}  // namespace flash_tree_attn
