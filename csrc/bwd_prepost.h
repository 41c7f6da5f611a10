// Element-wise kernels around the backward of both kernel paths: D = rowsum(dO * O) - dLSE before it (which
// also zeroes the dQ counters and, unless p.dq_first_store, the fp32 dQ accumulator the backward adds into, saving
// a fill kernel for each), and dQ = scale * dQaccum converted to the input dtype after it. Memory-bound: 16-byte
// accesses, each thread's loads for several rows issued together.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cutlass/numeric_types.h>

#include "params.h"

namespace flash_tree_attn {

constexpr int kPrepostThreads = 256;
constexpr int kPrepostThreadsPerRow = 16;  // one (token, head) row per 16 threads, 8 elements per access
// Rows each 16-thread group takes, their loads issued before any arithmetic: one row's 16-byte loads a thread leave
// too few bytes in flight to keep the memory busy. On the H200 (grpo_P1024, bench_results/RESULTS.md, 2026-12-03),
// D = rowsum(dO O) ran fastest with 2 (4: +4%, 8: +21%) and the dQ conversion with 4 (2: +3%, 8: +25%).
constexpr int kDotRowsPerGroup = 2;
constexpr int kConvertRowsPerGroup = 4;
constexpr int kPrepostGroups = kPrepostThreads / kPrepostThreadsPerRow;

// The (token, query head) rows both kernels cover.
__host__ __device__ __forceinline__ int64_t prepost_rows(const BwdParams &p) {
    return int64_t(p.shape.total_q) * p.shape.num_heads_q;
}

template <int kRowsPerGroup>
inline int prepost_blocks(int64_t rows) {
    constexpr int kRowsPerBlock = kPrepostGroups * kRowsPerGroup;
    return int((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

// A thread's accesses per row: ceil(bucket / 128) of 8 elements each (head dims up to 256).
template <int kBucket>
constexpr int kPrepostChunks = (kBucket + kPrepostThreadsPerRow * 8 - 1) / (kPrepostThreadsPerRow * 8);

// The i-th row of the thread's group: the block's groups take 16 consecutive rows per pass (4 KB at D=128, bf16).
template <int kRowsPerGroup>
__device__ __forceinline__ int64_t prepost_row(int i) {
    return (int64_t(blockIdx.x) * kRowsPerGroup + i) * kPrepostGroups + threadIdx.x / kPrepostThreadsPerRow;
}

// The first of the 8 consecutive columns a lane of a row's 16 threads covers in its j-th access of that row: the
// lanes sit side by side, so the group's j-th access covers 128 consecutive columns.
__device__ __forceinline__ int prepost_column(int j, int lane) { return (j * kPrepostThreadsPerRow + lane) * 8; }

template <typename Element, int kBucket>
__global__ void __launch_bounds__(kPrepostThreads) bwd_dot_do_o_kernel(const __grid_constant__ BwdParams p) {
    constexpr int kChunks = kPrepostChunks<kBucket>;
    const int heads = p.shape.num_heads_q;
    const int64_t rows = prepost_rows(p);
    const int lane = threadIdx.x % kPrepostThreadsPerRow;
    uint4 dout_v[kDotRowsPerGroup][kChunks], out_v[kDotRowsPerGroup][kChunks];
#pragma unroll
    for (int i = 0; i < kDotRowsPerGroup; ++i) {
        const int64_t row = prepost_row<kDotRowsPerGroup>(i);
        const int token = int(row / heads), head = int(row % heads);
        const Element *dout = static_cast<const Element *>(p.dout) + token * p.do_row_stride + head * p.do_head_stride;
        const Element *out = static_cast<const Element *>(p.out) + token * p.o_row_stride + head * p.o_head_stride;
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
            const int c = prepost_column(j, lane);
            const bool in = row < rows && c < p.shape.head_dim;
            dout_v[i][j] = in ? *reinterpret_cast<const uint4 *>(dout + c) : make_uint4(0u, 0u, 0u, 0u);
            out_v[i][j] = in ? *reinterpret_cast<const uint4 *>(out + c) : make_uint4(0u, 0u, 0u, 0u);
        }
    }
#pragma unroll
    for (int i = 0; i < kDotRowsPerGroup; ++i) {
        const int64_t row = prepost_row<kDotRowsPerGroup>(i);
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
            const Element *ea = reinterpret_cast<const Element *>(&dout_v[i][j]);
            const Element *eb = reinterpret_cast<const Element *>(&out_v[i][j]);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc += float(ea[e]) * float(eb[e]);
        }
#pragma unroll
        for (int off = kPrepostThreadsPerRow / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (row >= rows) continue;
        if (lane == 0) {
            const int64_t idx = int64_t(row % heads) * p.shape.total_q + row / heads;
            if (p.dsoftmax_lse != nullptr) acc -= p.dsoftmax_lse[idx];
            p.dsoftmax_sum[idx] = acc;
        }
        if (!p.dq_first_store) {
            float *accum = p.dq_accum + row * kBucket;
#pragma unroll
            for (int j = 0; j < kChunks; ++j) {
                const int c = prepost_column(j, lane);
                if (c >= kBucket) continue;
                *reinterpret_cast<float4 *>(accum + c) = make_float4(0.f, 0.f, 0.f, 0.f);
                *reinterpret_cast<float4 *>(accum + c + 4) = make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
    }
    // The dQ counters: one per 64 rows of each head and sequence, so far fewer than this grid's threads except in a
    // batch of many sequences shorter than its longest (the loop covers any count).
    const int64_t threads = int64_t(gridDim.x) * kPrepostThreads;
    for (int64_t i = int64_t(blockIdx.x) * kPrepostThreads + threadIdx.x; i < p.dq_semaphore_ints; i += threads) {
        p.dq_semaphore[i] = 0;
    }
}

// Two values in the input dtype, the first in the low half: one 32-bit word of a 16-byte store.
template <typename Element>
__device__ __forceinline__ uint32_t pack_pair(float first, float second) {
    return uint32_t(Element(first).raw()) | (uint32_t(Element(second).raw()) << 16);
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

template <typename Element, int kBucket>
__global__ void __launch_bounds__(kPrepostThreads) bwd_convert_dq_kernel(const __grid_constant__ BwdParams p) {
    constexpr int kChunks = kPrepostChunks<kBucket>;
    const int heads = p.shape.num_heads_q;
    const int64_t rows = prepost_rows(p);
    const int lane = threadIdx.x % kPrepostThreadsPerRow;
    // Every row's accumulator is read before any is known to be written: rows no key block reached hold whatever
    // the allocation held, and are replaced by zeros below.
    float4 half0[kConvertRowsPerGroup][kChunks], half1[kConvertRowsPerGroup][kChunks];
#pragma unroll
    for (int i = 0; i < kConvertRowsPerGroup; ++i) {
        const int64_t row = prepost_row<kConvertRowsPerGroup>(i);
        const float *src = p.dq_accum + row * kBucket;
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
            const int c = prepost_column(j, lane);
            const bool in = row < rows && c < p.shape.head_dim;
            half0[i][j] = in ? *reinterpret_cast<const float4 *>(src + c) : make_float4(0.f, 0.f, 0.f, 0.f);
            half1[i][j] = in ? *reinterpret_cast<const float4 *>(src + c + 4) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    // The counters too are read for all rows before any store (a store could alias them for all the compiler knows).
    bool written[kConvertRowsPerGroup];
#pragma unroll
    for (int i = 0; i < kConvertRowsPerGroup; ++i) {
        const int64_t row = prepost_row<kConvertRowsPerGroup>(i);
        written[i] = !p.dq_first_store || (row < rows && dq_rows_written(p, int(row / heads), int(row % heads)));
    }
#pragma unroll
    for (int i = 0; i < kConvertRowsPerGroup; ++i) {
        const int64_t row = prepost_row<kConvertRowsPerGroup>(i);
        if (row >= rows) continue;
        const int token = int(row / heads), head = int(row % heads);
        const float scale = p.softmax_scale;
        Element *dst = static_cast<Element *>(p.dq) + token * p.dq_row_stride + head * p.dq_head_stride;
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
            const int c = prepost_column(j, lane);
            if (c >= p.shape.head_dim) continue;
            const float4 a = half0[i][j], b = half1[i][j];
            *reinterpret_cast<uint4 *>(dst + c) =
                written[i] ? make_uint4(pack_pair<Element>(a.x * scale, a.y * scale),
                                        pack_pair<Element>(a.z * scale, a.w * scale),
                                        pack_pair<Element>(b.x * scale, b.y * scale),
                                        pack_pair<Element>(b.z * scale, b.w * scale))
                           : make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// Host side, shared by both backwards' launchers: D before the attention kernel, the conversion after it. Each
// assumes prepost_rows(p) > 0 (a zero-block launch is an error).
template <typename Element, int kBucket>
void launch_bwd_dot_do_o(const BwdParams &p, cudaStream_t stream) {
    bwd_dot_do_o_kernel<Element, kBucket>
        <<<prepost_blocks<kDotRowsPerGroup>(prepost_rows(p)), kPrepostThreads, 0, stream>>>(p);
}

template <typename Element, int kBucket>
void launch_bwd_convert_dq(const BwdParams &p, cudaStream_t stream) {
    bwd_convert_dq_kernel<Element, kBucket>
        <<<prepost_blocks<kConvertRowsPerGroup>(prepost_rows(p)), kPrepostThreads, 0, stream>>>(p);
}

}  // namespace flash_tree_attn
