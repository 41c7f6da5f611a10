// Element-wise kernels around the backward of both kernel paths: D = rowsum(dO * O) - dLSE before it (which
// also zeroes the fp32 dQ accumulator the backward adds into, saving a fill kernel over the same rows, unless
// p.dq_first_store), and dQ = scale * dQaccum converted to the input dtype after it. Memory-bound; 16-byte
// accesses.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cutlass/numeric_types.h>

#include "params.h"

namespace flash_tree_attn {

constexpr int kPrepostThreads = 256;
constexpr int kPrepostThreadsPerRow = 16;  // one (token, head) row per 16 threads, 8 elements per access

template <typename Element>
__global__ void __launch_bounds__(kPrepostThreads) bwd_dot_do_o_kernel(const __grid_constant__ BwdParams p,
                                                                       int bucket) {
    const int heads = p.shape.num_heads_q;
    const int64_t rows = int64_t(p.shape.total_q) * heads;
    const int64_t row = (int64_t(blockIdx.x) * kPrepostThreads + threadIdx.x) / kPrepostThreadsPerRow;
    const int lane = threadIdx.x % kPrepostThreadsPerRow;
    float acc = 0.f;
    int token = 0, head = 0;
    if (row < rows) {
        token = int(row / heads);
        head = int(row % heads);
        const Element *dout = static_cast<const Element *>(p.dout) + token * p.do_row_stride + head * p.do_head_stride;
        const Element *out = static_cast<const Element *>(p.out) + token * p.o_row_stride + head * p.o_head_stride;
        if (!p.dq_first_store) {
            float *accum = p.dq_accum + row * bucket;
            for (int c = lane * 8; c < bucket; c += kPrepostThreadsPerRow * 8) {
                *reinterpret_cast<float4 *>(accum + c) = make_float4(0.f, 0.f, 0.f, 0.f);
                *reinterpret_cast<float4 *>(accum + c + 4) = make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
        for (int c = lane * 8; c < p.shape.head_dim; c += kPrepostThreadsPerRow * 8) {
            const uint4 a = *reinterpret_cast<const uint4 *>(dout + c);
            const uint4 b = *reinterpret_cast<const uint4 *>(out + c);
            const Element *ea = reinterpret_cast<const Element *>(&a);
            const Element *eb = reinterpret_cast<const Element *>(&b);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc += float(ea[j]) * float(eb[j]);
        }
    }
#pragma unroll
    for (int off = kPrepostThreadsPerRow / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (row < rows && lane == 0) {
        const int64_t idx = int64_t(head) * p.shape.total_q + token;
        if (p.dsoftmax_lse != nullptr) acc -= p.dsoftmax_lse[idx];
        p.dsoftmax_sum[idx] = acc;
    }
}

// With p.dq_first_store, whether any key block wrote the accumulator rows of (token, head): its query block's
// ticket counter (sm90/bwd_kernel.h) is not zero. Rows no key block sees were never written.
__device__ __forceinline__ bool dq_rows_written(const BwdParams &p, int token, int head) {
    int lo = 0, hi = p.shape.batch;  // the sequence of the token: cu_seqlens_q[lo] <= token < cu_seqlens_q[hi]
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (p.cu_seqlens_q[mid] <= token) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    const int m_block = (token - p.cu_seqlens_q[lo]) / kBwdSemaphoreBlockM;
    const int m_slots = ceil_div(p.shape.max_seqlen_q, kBwdSemaphoreBlockM);
    // A block past max_seqlen_q (a call that understates it) has no counter and reads as written.
    return m_block >= m_slots || *dq_counter(p, m_slots, lo, head, m_block) != 0;
}

template <typename Element>
__global__ void __launch_bounds__(kPrepostThreads) bwd_convert_dq_kernel(const __grid_constant__ BwdParams p,
                                                                        int bucket) {
    const int heads = p.shape.num_heads_q;
    const int64_t rows = int64_t(p.shape.total_q) * heads;
    const int64_t row = (int64_t(blockIdx.x) * kPrepostThreads + threadIdx.x) / kPrepostThreadsPerRow;
    const int lane = threadIdx.x % kPrepostThreadsPerRow;
    if (row >= rows) return;
    const int token = int(row / heads);
    const int head = int(row % heads);
    const float *src = p.dq_accum + row * bucket;
    Element *dst = static_cast<Element *>(p.dq) + token * p.dq_row_stride + head * p.dq_head_stride;
    if (p.dq_first_store && !dq_rows_written(p, token, head)) {
        for (int c = lane * 8; c < p.shape.head_dim; c += kPrepostThreadsPerRow * 8) {
            *reinterpret_cast<uint4 *>(dst + c) = make_uint4(0u, 0u, 0u, 0u);
        }
        return;
    }
    for (int c = lane * 8; c < p.shape.head_dim; c += kPrepostThreadsPerRow * 8) {
        const float4 a = *reinterpret_cast<const float4 *>(src + c);
        const float4 b = *reinterpret_cast<const float4 *>(src + c + 4);
        const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        uint4 packed;
        Element *e = reinterpret_cast<Element *>(&packed);
#pragma unroll
        for (int j = 0; j < 8; ++j) e[j] = Element(v[j] * p.softmax_scale);
        *reinterpret_cast<uint4 *>(dst + c) = packed;
    }
}

}  // namespace flash_tree_attn
