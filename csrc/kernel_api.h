// The torch-free entry points of the kernels: the binding fills a params struct and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"

namespace flash_tree_attn {

// Smallest compiled head-dim bucket that holds head_dim, or -1 when none was compiled.
int head_dim_bucket(int head_dim);
// Comma-separated compiled head-dim buckets, for error messages and build info.
const char *compiled_head_dims();

// Tree bounds scratch: block_bounds_scratch_ints() int32s. The bounds, carved up by block_bounds_view(), then one
// counter that launch_block_bounds() zeroes (block_bounds_counter()): on tree calls the sm90 forward takes it as its
// item counter, so that zeroing it costs no fill kernel of its own.
int64_t block_bounds_scratch_ints(int64_t total_q, int64_t total_k, int batch);
TreeBounds block_bounds_view(const int *scratch, int64_t total_q, int64_t total_k, int batch);
int *block_bounds_counter(int *scratch, int64_t total_q, int64_t total_k, int batch);
void launch_block_bounds(const FwdParams &p, int *scratch, cudaStream_t stream);

// Kernel paths. kAuto picks sm90 on compute capability 9.0 when its kernels are compiled, else sm80.
// Forcing kSm90 on another GPU or in a build without it is an error. Under kAuto a head dim / dtype the sm90
// path was not compiled for runs the sm80 kernels; the forward and the backward may then take different paths,
// which is sound because the backward only reads what the forward wrote (O and the LSE), which both paths lay
// out the same way.
enum class KernelPath : int { kAuto = 0, kSm80 = 80, kSm90 = 90 };

// Returns nullptr on success, or a static message naming what is not compiled.
const char *run_fwd(FwdParams &params, KernelPath path, cudaStream_t stream);
const char *run_bwd(BwdParams &params, KernelPath path, cudaStream_t stream);

// Sizes the binding needs to allocate backward scratch.
int bwd_block_m(int head_dim_bucket);  // query rows per dq semaphore slot allocated (divides the backward's block)

}  // namespace flash_tree_attn
