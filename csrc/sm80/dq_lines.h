// The sm80 backward's dQ accumulator tiles in line order, and the conversion that reads them back.
//
// A dQ reduction straight from the MMA accumulator covers 8 rows x 32 bytes per warp instruction: 8 sectors in 8
// cache lines. Where a query block's tile lies wholly inside its sequence, the backward instead adds each thread's
// value pairs at places chosen so that every warp instruction covers two whole 128-byte lines (DqLines::offset).
// The tile keeps its place in the (token, query head, bucket) array and every value stays inside it; only the
// order within it changes, and the conversion reads it back with the same thread/pair map. A tile that reaches
// past its sequence stays row-major: its places past the sequence are the next sequence's rows. FlashAttention-2
// reorders its dQ accumulator for the same reason. Every sm80 backward configuration takes it (asserted in DqLines;
// tools/check_dq_lines.cu checks the map). On the H200 at dense causal L=16k it made the backward 5.6% faster at head
// dim 128 and 3-14% at the other head dims (bench_results/RESULTS.md, forty-third and forty-fourth sessions).
#pragma once

#include <cute/tensor.hpp>

#include "bwd_prepost.h"
#include "grid_units.h"
#include "params.h"
#include "sm80/bwd_traits.h"

namespace flash_tree_attn::sm80 {

using namespace cute;

template <typename Traits>
struct DqLines {
    static_assert(Traits::kNThreads % 32 == 0);
    static constexpr int kHeadDim = Traits::kHeadDim;
    static constexpr int kPairsPerThread = Traits::kBlockM * kHeadDim / 2 / Traits::kNThreads;
    static constexpr int kLinesPerRow = kHeadDim / 32;                      // 128-byte lines of fp32
    static constexpr int kRowsPerWarp = kPairsPerThread * 64 / kHeadDim;    // a warp instruction adds 64 floats
    static_assert(kHeadDim % 32 == 0 && (kPairsPerThread * 64) % (2 * kHeadDim) == 0,
                  "the sm80 backward adds whole dQ tiles in line order: every warp instruction must cover two whole "
                  "128-byte lines of the tile's rows");

    // Offset in floats of pair p of the thread (warp, lane) from the tile's first element, rows `row_stride`
    // floats apart. Each warp owns kRowsPerWarp consecutive rows of the tile; lanes 0-15 add to the first half of
    // them, lanes 16-31 to the second, 16 lanes per 128-byte line, so a thread's pairs lie in kRowsPerWarp / 2
    // rows (fewer addresses to form than one row per instruction).
    CUTE_HOST_DEVICE static int64_t offset(int warp, int lane, int p, int row_stride) {
        const int row = warp * kRowsPerWarp + (lane / 16) * (kRowsPerWarp / 2) + p / kLinesPerRow;
        return int64_t(row) * row_stride + (p % kLinesPerRow) * 32 + (lane % 16) * 2;
    }
};

// The fp32 dQ accumulator's row of (token, query head): (token, query head, bucket) floats, rows bucket apart.
template <int kBucket>
__device__ __forceinline__ float *dq_accum_row(const BwdParams &p, int token, int head) {
    return p.dq_accum + (int64_t(token) * p.shape.num_heads_q + head) * kBucket;
}

// Query blocks per sequence the conversion's grid covers (at least one: a call may understate max_seqlen_q).
template <int kBlockM>
CUTE_HOST_DEVICE int dq_lines_m_blocks(const BwdParams &p) {
    const int m_blocks = ceil_div(p.shape.max_seqlen_q, kBlockM);
    return m_blocks > 1 ? m_blocks : 1;
}

// dQ = scale * dQaccum in the input dtype. A CTA takes one query head (blockIdx.x) of a (query block, sequence) unit
// (grid_units.h), and the sequence's query blocks every m_blocks-th after it. Each thread reads the pairs the
// backward's thread of the same index added (in line order in whole tiles, row-major in the last one) and puts them,
// converted, at their place in a shared-memory tile, which then leaves row by row in 16-byte stores. Query heads
// are fastest, so the CTAs that run together read one stretch of the (token, head, bucket) accumulator. On the H200
// (grpo_P1024, bench_results/RESULTS.md, forty-fourth and forty-fifth sessions) this takes 0.20 ms, as the row-wise
// conversion of a row-major accumulator (0.19 ms); with each load waited for before the next 0.36 ms, with query
// blocks fastest 0.46 ms, and storing 4 bytes per pair straight from registers (32 places per warp instruction) 0.65.
template <typename Traits>
__global__ void __launch_bounds__(Traits::kNThreads) convert_dq_lines_kernel(const __grid_constant__ BwdParams p) {
    using Element = typename Traits::Element;
    using Lines = DqLines<Traits>;
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kHeadDim = Traits::kHeadDim;
    // A row of converted pairs, 4 words of padding after it: the 8 rows x 4 words one warp instruction puts fall
    // in 32 different banks, and rows stay 16-byte aligned.
    constexpr int kRowWords = kHeadDim / 2 + 4;
    constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte stores
    __shared__ __align__(16) uint32_t stage[kBlockM * kRowWords];
    const int m_blocks = dq_lines_m_blocks<kBlockM>(p);
    const uint32_t unit = grid_unit();
    if (unit >= int64_t(p.shape.batch) * m_blocks) return;
    const int head = blockIdx.x, m_first = int(unit % uint32_t(m_blocks)), batch = int(unit / uint32_t(m_blocks));
    const int q_offset = p.cu_seqlens_q[batch];
    const int seqlen_q = p.cu_seqlens_q[batch + 1] - q_offset;
    const int tid = threadIdx.x;
    typename Traits::TiledMmadQ mma;
    Tensor coord = mma.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    const int row_stride = p.shape.num_heads_q * kHeadDim;
    const float scale = p.softmax_scale;
    // Strided over the sequence's query blocks, so that a call whose max_seqlen_q understates a sequence still
    // converts all of it.
    for (int m_block = m_first; m_block * kBlockM < seqlen_q; m_block += m_blocks) {
        const int row0 = m_block * kBlockM;
        const int rows = seqlen_q - row0;
        const bool whole = rows >= kBlockM;
        const float *tile = dq_accum_row<kHeadDim>(p, q_offset + row0, head);
        // Every load is issued before the first put. The compiler cannot tell that `tile` (a generic pointer) does
        // not point into the stage, so in one loop of load-then-put no load went ahead of the put before it: the
        // forty-fourth session's kernel waited out a memory latency per pair (its SASS). The accumulator is read
        // once: streaming loads (evict first).
        float2 v[Lines::kPairsPerThread];
        CUTE_UNROLL
        for (int i = 0; i < Lines::kPairsPerThread; ++i) {
            const int r = get<0>(coord(2 * i)), c = get<1>(coord(2 * i));  // (c, c + 1): one pair
            const int64_t src = whole ? Lines::offset(tid / 32, tid % 32, i, row_stride) : int64_t(r) * row_stride + c;
            v[i] = r < rows ? __ldcs(reinterpret_cast<const float2 *>(tile + src)) : make_float2(0.f, 0.f);
        }
        CUTE_UNROLL
        for (int i = 0; i < Lines::kPairsPerThread; ++i) {
            const int r = get<0>(coord(2 * i)), c = get<1>(coord(2 * i));
            if (r < rows) stage[r * kRowWords + c / 2] = pack_pair<Element>(v[i].x * scale, v[i].y * scale);
        }
        __syncthreads();
        Element *dst =
            static_cast<Element *>(p.dq) + int64_t(q_offset + row0) * p.dq_row_stride + head * p.dq_head_stride;
        for (int chunk = tid; chunk < kBlockM * kChunksPerRow; chunk += Traits::kNThreads) {
            const int r = chunk / kChunksPerRow, c = chunk % kChunksPerRow * 8;
            if (r < rows && c < p.shape.head_dim) {
                *reinterpret_cast<uint4 *>(dst + int64_t(r) * p.dq_row_stride + c) =
                    *reinterpret_cast<const uint4 *>(&stage[r * kRowWords + c / 2]);
            }
        }
        __syncthreads();  // the stage is refilled by the CTA's next query block
    }
}

template <typename Traits>
void launch_convert_dq_lines(const BwdParams &p, cudaStream_t stream) {
    const int64_t units = int64_t(p.shape.batch) * dq_lines_m_blocks<Traits::kBlockM>(p);
    const dim3 grid = unit_grid(unsigned(p.shape.num_heads_q), units);
    convert_dq_lines_kernel<Traits><<<grid, Traits::kNThreads, 0, stream>>>(p);
}

}  // namespace flash_tree_attn::sm80
