// Consumer warpgroups of the sm90 backward for the large head dims (BwdSplitDimTraits): the two warpgroups
// share the CTA's 64 keys and split the queries of S^T / dP^T and the head dim of dK, dV and dQ.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "dq_order.h"
#include "dq_reduce.h"
#include "fragment_convert.h"
#include "params.h"
#include "softmax.h"
#include "sm90/bwd_traits.h"
#include "sm90/pipeline.h"
#include "sm90/utils.h"

namespace flash_tree_attn::sm90 {

// Adds one warp's part of a warpgroup's dQ tile (the wgmma accumulator of 64 queries x kHalfDim: the warp's 16
// rows) to the fp32 accumulator through the warp's staging tile (BwdSplitDimTraits::dq_stage). Each pass takes
// one of the two rows a lane holds (lane / 4, lane / 4 + 8) in 32 columns: the lanes store their column pairs,
// then read the 8 x 32 tile back as 16-byte row pieces, 8 lanes per row, and reduce those. `dq` is the
// accumulator's element of the warp's first row and the warpgroup's first column; rows from `rows` on (past
// the sequence) are not added.
template <typename Traits, class Acc>
__forceinline__ __device__ void reduce_dq_staged(Acc const &acc_dq, float (*stage)[Traits::kDqStageStride], float *dq,
                                                 int64_t row_stride, int rows, int lane) {
    constexpr int kRows = Traits::kDqStageRows;
    constexpr int kCols = Traits::kDqStageCols;
    Tensor dq_rc = acc_rowcol(acc_dq);  // (row of the pair: 2, (column pair, 8-column group): kHalfDim / 4)
    static_assert(decltype(size<0>(dq_rc))::value == 2 && decltype(size<1>(dq_rc))::value == Traits::kHalfDim / 4);
    static_assert(kRows == 8 && kCols % 8 == 0 && (kRows * kCols) % (4 * 32) == 0);
    CUTE_UNROLL
    for (int chunk = 0; chunk < Traits::kHalfDim / kCols; ++chunk) {
        CUTE_UNROLL
        for (int half = 0; half < 2; ++half) {
            CUTE_UNROLL
            for (int g = 0; g < kCols / 8; ++g) {
                const int c = 2 * (chunk * (kCols / 8) + g);
                *reinterpret_cast<float2 *>(&stage[lane / 4][8 * g + 2 * (lane % 4)]) =
                    make_float2(dq_rc(half, c), dq_rc(half, c + 1));
            }
            __syncwarp();
            CUTE_UNROLL
            for (int i = 0; i < kRows * kCols / (4 * 32); ++i) {
                const int r = i * (32 * 4 / kCols) + lane / (kCols / 4);
                const int col = 4 * (lane % (kCols / 4));
                const float4 v = *reinterpret_cast<const float4 *>(&stage[r][col]);
                const int row = r + 8 * half;
                if (row < rows) red_add_quad(dq + int64_t(row) * row_stride + chunk * kCols + col, v);
            }
            __syncwarp();  // the next pass overwrites the tile
        }
    }
}

template <typename Traits, bool kCausal, class Storage>
__forceinline__ __device__ void consume_bwd_split(const BwdParams &params, const SeqMaskInfo &seq, Storage &smem,
                                                  int n_block, int head_kv, int batch, int q_offset, int k_offset) {
    using Element = typename Traits::Element;
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;
    constexpr int kHalfDim = Traits::kHalfDim;
    const int tid = threadIdx.x - 128;

    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutKt{});
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQt{});
    Tensor sdO = make_tensor(make_smem_ptr(smem.dout), typename Traits::SmemLayoutQ{});
    Tensor sdOt = make_tensor(make_smem_ptr(smem.dout), typename Traits::SmemLayoutQt{});
    Tensor sPt = make_tensor(make_smem_ptr(smem.pt), typename Traits::SmemLayoutPt{});
    Tensor sdSt = make_tensor(make_smem_ptr(smem.dst), typename Traits::SmemLayoutPt{});
    Tensor sdS = make_tensor(make_smem_ptr(smem.dst), typename Traits::SmemLayoutdS{});

    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmadKV mma_dkv;
    typename Traits::TiledMmadQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(tid);
    auto thr_dkv = mma_dkv.get_thread_slice(tid);
    // Accumulators are partitioned per thread, shared-memory operands per warpgroup (warpgroup_first_thread).
    const int wg_thread = warpgroup_first_thread(tid);
    auto wg_sdp = mma_sdp.get_thread_slice(wg_thread);
    auto wg_dkv = mma_dkv.get_thread_slice(wg_thread);
    auto wg_dq = mma_dq.get_thread_slice(wg_thread);

    Tensor tSrK = wg_sdp.partition_fragment_A(sK);       // S^T = K Q^T, this warpgroup's 32 queries
    Tensor tSrQ = wg_sdp.partition_fragment_B(sQ);       // (MMA, MMA_N, MMA_K, stages)
    Tensor tdPrV = wg_sdp.partition_fragment_A(sV);      // dP^T = V dO^T
    Tensor tdPrdO = wg_sdp.partition_fragment_B(sdO);
    Tensor tdVrPt = wg_dkv.partition_fragment_A(sPt);    // dV += P^T dO, this warpgroup's half of the head dim
    Tensor tdVrdO = wg_dkv.partition_fragment_B(sdOt);
    Tensor tdKrdSt = wg_dkv.partition_fragment_A(sdSt);  // dK += dS^T Q
    Tensor tdKrQ = wg_dkv.partition_fragment_B(sQt);
    Tensor tdQrdS = wg_dq.partition_fragment_A(sdS);     // dQ = dS K
    Tensor tdQrK = wg_dq.partition_fragment_B(sKt);
    // Where this thread's P^T and dS^T values go (the same offsets in both arrays).
    Tensor tPsPt = thr_sdp.partition_C(sPt);

    Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
    Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
    clear(acc_dk);
    clear(acc_dv);

    // Tile-local (key, query) of every S^T value this thread holds.
    Tensor tScS_rc = acc_rowcol(thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{})));

    const int seqlen_q = seq.seqlen_q;
    const int seqlen_k = seq.seqlen_k;
    const int col0 = n_block * kBlockN;
    const int head_dim = params.shape.head_dim;
    const bool has_tree = kCausal && seq.has_tree();
    constexpr int kRows = decltype(size<0>(tScS_rc))::value;
    int key_value[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
        key_value[r] = key_mask_value_at(has_tree, params.tree_end_k, k_offset, col0 + get<0>(tScS_rc(r, 0)), seqlen_k);
    }
    // The fp32 dQ accumulator is (tokens, query heads, bucket); this warp adds rows warp_row0.. of each query
    // block (wgmma: warp w of a warpgroup holds accumulator rows 16 w .. 16 w + 15), columns from dim0 on.
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int warp_row0 = 16 * (warp % 4);
    const int dim0 = (tid / 128) * kHalfDim;
    const int64_t dq_row_stride = int64_t(params.shape.num_heads_q) * kHeadDim;
    float *dq_seq = params.dq_accum + int64_t(q_offset + warp_row0) * dq_row_stride + dim0;

    wait_full(smem.kv_full, 0);
    StageCursor<Traits::kStages> cur;
    for (;;) {
        const int s = cur.stage;
        wait_full(smem.q_full[s], cur.phase);
        const int m_block = smem.stage_block[s];
        if (m_block == kNoBlock) break;
        const TileKind kind = static_cast<TileKind>(smem.stage_kind[s]);
        const int head = smem.stage_head[s];
        const int row0 = m_block * kBlockM;

        Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
        Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
        wgmma_issue</*kZeroInit=*/true>(mma_sdp, tSrK, tSrQ(_, _, _, s), acc_s);
        wgmma_issue</*kZeroInit=*/true>(mma_sdp, tdPrV, tdPrdO(_, _, _, s), acc_dp);

        // P^T = exp(scale * S^T - LSE) while dP^T is still being computed.
        warpgroup_wait<1>();
        warpgroup_fence_operand(acc_s);
        Tensor st = acc_rowcol(acc_s);
        if (kind == TileKind::kPartial) {
            const int *query_value = smem.query_value[s];
            mask_tile_values</*kTransposed=*/true>(st, tScS_rc, seq.diag + row0 - col0, key_value,
                                                   [&](int c) { return query_value[get<1>(tScS_rc(0, c))]; });
        }
        probabilities_transposed(st, tScS_rc, smem.lse_log2[s], params.softmax_scale_log2);
        // dS^T = P^T * (dP^T - D)
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_dp);
        Tensor dpt = acc_rowcol(acc_dp);
        score_gradients_transposed(dpt, st, tScS_rc, smem.dsum[s]);

        // Both halves of P^T and dS^T into shared memory, once the other warpgroup's GEMMs of the previous step
        // no longer read them, and visible to wgmma.
        Tensor rP = to_type<Element>(acc_s);
        Tensor rdS = to_type<Element>(acc_dp);
        cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kPtFree);
        store_column_pairs(rP, tPsPt, smem.pt, smem.pt);
        store_column_pairs(rdS, tPsPt, smem.pt, smem.dst);
        cutlass::arch::fence_view_async_shared();
        cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kDsReady);

        // dQ first, so that its reductions go out while the dV and dK GEMMs run.
        Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
        wgmma_issue</*kZeroInit=*/true>(mma_dq, tdQrdS, tdQrK, acc_dq);
        wgmma_issue</*kZeroInit=*/false>(mma_dkv, tdVrPt, tdVrdO(_, _, _, s), acc_dv);
        wgmma_issue</*kZeroInit=*/false>(mma_dkv, tdKrdSt, tdKrQ(_, _, _, s), acc_dk);
        // The deterministic mode's dQ order (dq_order.h): one warp finds the turn while the GEMMs run, one thread
        // waits for it, and every thread's additions are fenced before the turn passes on.
        DqTurn turn{};
        if (params.deterministic && warp == 0) {
            turn = dq_turn<kBlockM, kBlockN>(params, seq, batch, head, m_block, n_block);
        }
        warpgroup_wait<2>();
        warpgroup_fence_operand(acc_dq);
        if (params.deterministic) {
            if (tid == 0) wait_turn(turn);
            cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kDqTurn);
        }
        // Rows past the sequence hold zeros (their queries are masked) and are not added.
        reduce_dq_staged<Traits>(acc_dq, smem.dq_stage[warp], dq_seq + int64_t(row0) * dq_row_stride + head * kHeadDim,
                                 dq_row_stride, seqlen_q - row0 - warp_row0, lane);
        if (params.deterministic) {
            __threadfence();
            cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kDqTurn);
            if (tid == 0) pass_turn(turn, n_block);
        }
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_dk);
        warpgroup_fence_operand(acc_dv);
        release(smem.q_empty[s]);
        cur.advance();
    }

    // ---- epilogue: dK (scaled) and dV go through the K and V tiles, once neither warpgroup's wgmma reads
    // them any more, each warpgroup writing and then storing its half of the head dim as 16-byte row pieces ----
    cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kConsumersDone);
    CUTE_UNROLL
    for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= params.softmax_scale;
    Tensor rdK = to_type<Element>(acc_dk);
    Tensor rdV = to_type<Element>(acc_dv);
    store_column_pairs(rdK, thr_dkv.partition_C(sK), smem.k, smem.k);
    store_column_pairs(rdV, thr_dkv.partition_C(sV), smem.v, smem.v);
    const int wg = tid / 128;
    cutlass::arch::NamedBarrier::sync(128, kEpilogue + wg);
    auto store = [&](auto const &tile, void *base, int64_t row_stride, int64_t head_stride) {
        Element *out = static_cast<Element *>(base) + int64_t(k_offset + col0) * row_stride +
                       int64_t(head_kv) * head_stride + dim0;
        store_tile_16b<128>(local_tile(tile, Shape<Int<kBlockN>, Int<kHalfDim>>{}, make_coord(_0{}, wg)), out,
                            row_stride, seqlen_k - col0, head_dim - dim0, tid % 128);
    };
    store(sK, params.dk, params.dk_row_stride, params.dk_head_stride);
    store(sV, params.dv, params.dv_row_stride, params.dv_head_stride);
}

}  // namespace flash_tree_attn::sm90
