// Plain parameter structs handed from the binding to the kernels. No torch types here: the kernels
// see raw pointers, strides and sizes only, so the same structs serve the sm80 and sm90 paths.
#pragma once

#include <cstdint>

namespace flash_tree_attn {

// Granularity (in tokens) of the per-block tree bounds computed by block_bounds.cu. Every kernel tile
// is a multiple of it, so a tile's bounds are the min/max over one or a few granules.
constexpr int kBoundsGranule = 64;

// The backward's dQ counters (one per sequence, query head and query block: the deterministic mode's turns, or the
// sm90 backward's first-store tickets) are allocated for 64-row query blocks; a backward with larger query blocks
// lays out fewer of them and uses a prefix of the array.
constexpr int kBwdSemaphoreBlockM = 64;

// Per-granule tree bounds. Granule g of sequence b covers local tokens [g*64, g*64+64) and is stored at
// index `granule_base(b, cu_seqlens[b]) + g`, a layout that needs no prefix sum over the batch.
struct TreeBounds {
    const int *q_start_min = nullptr;  // min over the granule's queries of tree_dfs_order_start_q
    const int *q_start_max = nullptr;  // max of the same
    const int *k_end_min = nullptr;    // min over the granule's keys of tree_dfs_order_end_k
    const int *k_end_max = nullptr;    // max of the same
};

// floor(cu/64) + b is an upper bound on the granules used by sequences before b, so these bases never
// overlap; the arrays hold total/64 + batch + 1 entries.
__host__ __device__ inline int granule_base(int batch_idx, int cu_seqlen) {
    return cu_seqlen / kBoundsGranule + batch_idx;
}

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

inline int64_t num_granule_slots(int64_t total_tokens, int batch) {
    return total_tokens / kBoundsGranule + batch + 1;
}

struct AttnShape {
    int batch = 0;
    int num_heads_q = 0;
    int num_heads_kv = 0;
    int head_dim = 0;          // actual head dim (multiple of 8, <= 256)
    int max_seqlen_q = 0;
    int max_seqlen_k = 0;
    int total_q = 0;
    int total_k = 0;
};

struct FwdParams {
    AttnShape shape;

    // Packed varlen tensors: row index = token, then head, then head dim (contiguous).
    const void *q = nullptr;
    const void *k = nullptr;
    const void *v = nullptr;
    void *out = nullptr;
    int64_t q_row_stride = 0, q_head_stride = 0;
    int64_t k_row_stride = 0, k_head_stride = 0;
    int64_t v_row_stride = 0, v_head_stride = 0;
    int64_t o_row_stride = 0, o_head_stride = 0;

    float *softmax_lse = nullptr;  // (num_heads_q, total_q), natural log; -inf for rows that see no key
    int *fwd_item_counter = nullptr;  // sm90 forward: zeroed, counts the work items taken after the first wave

    const int *cu_seqlens_q = nullptr;  // (batch + 1)
    const int *cu_seqlens_k = nullptr;

    // Tree arrays (per token, values per sequence) or nullptr for plain (causal) attention.
    const int *tree_start_q = nullptr;  // (total_q)
    const int *tree_end_k = nullptr;    // (total_k)
    TreeBounds bounds;

    float softmax_scale = 1.f;
    float softmax_scale_log2 = 1.f;  // softmax_scale * log2(e)
    bool causal = false;
    bool is_bf16 = false;
    int num_sms = 0;
    int device_arch = 0;  // compute capability of the GPU, major * 10 + minor: picks the kernel path
    int max_smem_per_block = 0;  // the GPU's opt-in shared memory per block: picks a configuration that fits
};

struct BwdParams : FwdParams {
    const void *dout = nullptr;
    void *dq = nullptr;
    void *dk = nullptr;
    void *dv = nullptr;
    int64_t do_row_stride = 0, do_head_stride = 0;
    int64_t dq_row_stride = 0, dq_head_stride = 0;
    int64_t dk_row_stride = 0, dk_head_stride = 0;
    int64_t dv_row_stride = 0, dv_head_stride = 0;

    const float *dsoftmax_lse = nullptr;  // (num_heads_q, total_q) gradient w.r.t. the LSE output, or nullptr
    float *dq_accum = nullptr;      // (total_q, num_heads_q, head_dim_bucket) fp32, zeroed by the preprocess (or below)
    float *dsoftmax_sum = nullptr;  // (num_heads_q, total_q): rowsum(dO * O) - dLSE, written by the preprocess
    // (batch, num_heads_q, query blocks) counters (dq_order.h, dq_first_store), dq_semaphore_ints of them, zeroed by
    // the preprocess (bwd_prepost.h)
    int *dq_semaphore = nullptr;
    int64_t dq_semaphore_ints = 0;
    bool deterministic = false;
    // Set by the launcher: the first key block to add to a (query head, query block) of dq_accum stores its tile
    // instead, so the preprocess does not zero the accumulator, and the conversion writes zeros for the blocks no
    // key block reached (sm90/bwd_kernel.h, write_dq).
    bool dq_first_store = false;
};

// The dQ counter of (sequence, query head, query block) when each head has m_slots of them (dq_order.h, the sm90
// writer's first-store tickets, the conversion).
__host__ __device__ inline int *dq_counter(const BwdParams &p, int m_slots, int batch, int head, int m_block) {
    return p.dq_semaphore + (int64_t(batch) * p.shape.num_heads_q + head) * m_slots + m_block;
}

}  // namespace flash_tree_attn
