// sm90 backward: one CTA per (key block, key/value head, sequence), warp-specialized like the forward.
// The producer warp loads K and V once, then walks the work items (query head of the GQA group, non-empty
// query block: the same scan and tile classification as the sm80 backward) and streams Q, dO and the rows'
// softmax statistics into a two-stage ring. Up to head dim 128 (BwdTraits) each consumer warpgroup owns 64
// of the block's 128 keys: S^T and dP^T by wgmma from shared memory, P^T and dS^T in registers, dV and dK
// accumulated by register-A wgmma over all work items; dS^T is staged in shared memory so both warpgroups
// compute half of dQ = dS K, which a second producer-side warp adds to the fp32 dQ accumulator by TMA
// (write_dq). Above it (BwdSplitDimTraits) the warpgroups split the head dim instead: bwd_consume_split.h.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "block_range.h"
#include "dq_order.h"
#include "fragment_convert.h"
#include "params.h"
#include "softmax.h"
#include "tile_order.h"
#include "sm90/bwd_consume_split.h"
#include "sm90/bwd_traits.h"
#include "sm90/pipeline.h"
#include "sm90/utils.h"

namespace flash_tree_attn::sm90 {

// The work items of a CTA in the order the producer streams them: each query head of the key/value head's
// group in turn, and for each the non-empty query blocks that see key block n_block, upward; in the
// deterministic mode each of those query blocks in turn, and for each every head of the group (dq_order.h).
// The dQ writer warp walks the same sequence, so no tile coordinates travel to it through shared memory.
// Called by a whole warp; f(head, m_block, kind) for each item.
template <int kBlockM, int kBlockN, class F>
__forceinline__ __device__ void for_each_query_tile(const BwdParams &params, const SeqMaskInfo &seq, int n_block,
                                                    int head_kv, F &&f) {
    // The non-empty query blocks are the same for every query head of the group: each head walks them anew,
    // the heads after the first only up to the last block the first found, so the scan past it (the empty
    // blocks of later branches, often most of the sequence) is made once per CTA, not once per head. The sm80
    // backward's loop applies the same rule inline (it prefetches one item ahead).
    const int m_start = query_block_begin<kBlockM, kBlockN>(seq, n_block);
    const int group = params.shape.num_heads_q / params.shape.num_heads_kv;
    int m_end = ceil_div(seq.seqlen_q, kBlockM);
    if (params.deterministic) {
        TileWalk<kBlockM, kBlockN, /*kKeysDown=*/false> walk(n_block, m_start, m_end);
        TileKind kind;
        for (int m_block = walk.next(seq, kind); m_block < m_end; m_block = walk.next(seq, kind)) {
            for (int head = head_kv * group; head < (head_kv + 1) * group; ++head) f(head, m_block, kind);
        }
        return;
    }
    for (int head = head_kv * group; head < (head_kv + 1) * group; ++head) {
        TileWalk<kBlockM, kBlockN, /*kKeysDown=*/false> walk(n_block, m_start, m_end);
        TileKind kind;
        int m_last = m_start - 1;
        for (int m_block = walk.next(seq, kind); m_block < m_end; m_block = walk.next(seq, kind)) {
            f(head, m_block, kind);
            m_last = m_block;
        }
        m_end = m_last + 1;
    }
}

template <typename Traits, class TmaQ, class TmaDO, class TmaK, class TmaV, class Storage>
__forceinline__ __device__ void produce_bwd(const BwdParams &params, const SeqMaskInfo &seq, Storage &smem,
                                            TmaQ const &tma_q, TmaDO const &tma_do, TmaK const &tma_k,
                                            TmaV const &tma_v, int n_block, int head_kv, int q_offset,
                                            int k_offset) {
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;
    const int lane = threadIdx.x % 32;
    const bool leader = lane == 0;
    const auto &sh = params.shape;

    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutK{});
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(smem.dout), typename Traits::SmemLayoutQ{});

    if (leader) {
        Tensor mK = tma_k.get_tma_tensor(make_shape(sh.total_k, sh.head_dim, sh.num_heads_kv))(_, _, head_kv);
        Tensor mV = tma_v.get_tma_tensor(make_shape(sh.total_k, sh.head_dim, sh.num_heads_kv))(_, _, head_kv);
        Tensor gK = local_tile(domain_offset(make_coord(k_offset, _0{}), mK), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                               make_coord(n_block, _0{}));
        Tensor gV = local_tile(domain_offset(make_coord(k_offset, _0{}), mV), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                               make_coord(n_block, _0{}));
        auto [tKgK, tKsK] = tma_partition(tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
        auto [tVgV, tVsV] = tma_partition(tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
        TxBarrier::expect_transaction(&smem.kv_full, 2 * Traits::kKVBytes);
        copy(tma_k.with(smem.kv_full), tKgK, tKsK);
        copy(tma_v.with(smem.kv_full), tVgV, tVsV);
    }
    TxBarrier::arrive(&smem.kv_full);
    const bool has_tree = seq.has_tree();

    const int seqlen_q = seq.seqlen_q;
    Tensor mQ_all = tma_q.get_tma_tensor(make_shape(sh.total_q, sh.head_dim, sh.num_heads_q));
    Tensor mdO_all = tma_do.get_tma_tensor(make_shape(sh.total_q, sh.head_dim, sh.num_heads_q));
    StageCursor<Traits::kStages> cur;
    for_each_query_tile<kBlockM, kBlockN>(params, seq, n_block, head_kv, [&](int head, int m_block, TileKind kind) {
        // TMA loads the whole tile: the rows of a query block that runs past the sequence are the next
        // sequence's, and the element mask keeps them out (mask_tile), whatever their scores.
        if ((m_block + 1) * kBlockM > seqlen_q) kind = TileKind::kPartial;
        const int s = cur.stage;
        wait_empty(smem.q_empty[s], cur.phase);
        // Q and dO first: their loads then overlap the row statistics' global loads below.
        if (leader) {
            TxBarrier::expect_transaction(&smem.q_full[s], 2 * Traits::kQBytes);
            Tensor gQ = local_tile(domain_offset(make_coord(q_offset, _0{}), mQ_all(_, _, head)),
                                   Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, _0{}));
            Tensor gdO = local_tile(domain_offset(make_coord(q_offset, _0{}), mdO_all(_, _, head)),
                                    Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, _0{}));
            auto [tQgQ, tQsQ] =
                tma_partition(tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
            auto [tdOgdO, tdOsdO] =
                tma_partition(tma_do, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
            copy(tma_q.with(smem.q_full[s]), tQgQ, tQsQ(_, s));
            copy(tma_do.with(smem.q_full[s]), tdOgdO, tdOsdO(_, s));
        }
        CUTE_UNROLL
        for (int i = lane; i < kBlockM; i += 32) {
            const int row = m_block * kBlockM + i;
            float lse_log2 = INFINITY, dsum = 0.f;
            if (row < seqlen_q) {
                const int64_t idx = int64_t(head) * sh.total_q + q_offset + row;
                const float lse = params.softmax_lse[idx];
                lse_log2 = lse == -INFINITY ? INFINITY : lse * float(M_LOG2E);
                dsum = params.dsoftmax_sum[idx];
            }
            smem.lse_log2[s][i] = lse_log2;
            smem.dsum[s][i] = dsum;
            // kQueryOutside past the sequence, whose rows TMA loaded from the next sequence: they see no key.
            smem.query_value[s][i] = query_mask_value_at(has_tree, params.tree_start_q, q_offset, row, seqlen_q);
        }
        if (leader) {
            smem.stage_block[s] = m_block;
            smem.stage_kind[s] = static_cast<int>(kind);
            if constexpr (Traits::kSplitHeadDim) smem.stage_head[s] = head;
        }
        TxBarrier::arrive(&smem.q_full[s]);  // every lane publishes its own writes
        cur.advance();
    });
    wait_empty(smem.q_empty[cur.stage], cur.phase);
    if (leader) smem.stage_block[cur.stage] = kNoBlock;
    TxBarrier::arrive(&smem.q_full[cur.stage]);
}

// First stores (params.dq_first_store): every (query head, query block) has a ticket counter (a dq_semaphore slot,
// zeroed by the binding). The writer that draws ticket 0 stores its tile instead of adding it, so nothing has to
// zero the accumulator beforehand, and marks the counter once the store is complete; the other writers wait for
// that mark before they add. The holder of ticket 0 needs only its own CTA's consumers to finish the store (it
// drew the ticket after its previous items were done), so every wait ends. A counter left at zero tells the
// conversion that no key block reached the block (bwd_prepost.h).
constexpr int kDqStored = 1 << 30;
__forceinline__ __device__ void wait_dq_stored(const int *counter) {
    while ((load_acquire(counter) & kDqStored) == 0) {
    }
}
__forceinline__ __device__ void mark_dq_stored(int *counter) {
    asm volatile("red.release.gpu.global.or.b32 [%0], %1;" ::"l"(counter), "r"(kDqStored) : "memory");
}

// dQ writer warp: adds every dQ tile the consumers hand over to the fp32 accumulator with one TMA reduce-add
// (its rows past the sequence hold zeros, those queries being masked, so the adds they make to the next
// sequence's rows change nothing, or land before that sequence's first store overwrites them; rows past the
// array are clipped), or stores it when it is the block's first (above), and frees the buffer once TMA has read
// it.
// It walks the work items itself (for_each_query_tile), in the order the consumers process them. In the
// deterministic mode each add waits for its turn (dq_order.h) and passes it on once complete, not only read;
// the zeros added to the next sequence's rows come outside that sequence's order and still change no bit (an
// accumulator zeroed to +0 never holds -0, and adding +0 or -0 changes no other value).
template <typename Traits, class TmaDQ, class TmaDQStore, class Storage>
__forceinline__ __device__ void write_dq(const BwdParams &params, const SeqMaskInfo &seq, Storage &smem,
                                         TmaDQ const &tma_dq, TmaDQStore const &tma_dq_store, int n_block,
                                         int head_kv, int batch, int q_offset) {
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kHeadDim = Traits::kHeadDim;
    static_assert(kBlockM == kBwdSemaphoreBlockM, "the conversion reads the counters of 64-row query blocks");
    constexpr uint32_t kHandshake = Traits::kConsumerThreads + 32;
    const auto &sh = params.shape;
    const int lane = threadIdx.x % 32;
    const int m_slots = ceil_div(sh.max_seqlen_q, kBlockM);
    Tensor mdQ = tma_dq.get_tma_tensor(make_shape(sh.total_q, Int<kHeadDim>{}, sh.num_heads_q));
    cutlass::arch::NamedBarrier::arrive(kHandshake, kDqEmpty + 0);  // both buffers start free
    cutlass::arch::NamedBarrier::arrive(kHandshake, kDqEmpty + 1);
    int b = 0;
    auto add_tile = [&](int head, int m_block, TileKind) {
        // The query block's counter and, in the deterministic mode, the value that lets this add go (dq_order.h),
        // otherwise the first-store ticket drawn (lane 0; -1 without one: add). One pair for both, as the warp
        // has few registers (Traits::kProducerRegs).
        DqTurn turn{nullptr, -1};
        if (params.deterministic) {  // found while the consumers still compute the tile
            turn = dq_turn<kBlockM, Traits::kBlockN>(params, seq, batch, head, m_block, n_block);
        } else if (params.dq_first_store && m_block < m_slots) {  // (a call understating max_seqlen_q adds)
            turn.counter = dq_counter(params, m_slots, batch, head, m_block);
            if (lane == 0) {  // also while the consumers still compute the tile
                turn.ready_value = atomicAdd(turn.counter, 1);
                if (turn.ready_value > 0) {
                    wait_dq_stored(turn.counter);
                    fence_proxy_async_global();  // the first store, seen here, comes before this add
                }
            }
        }
        const bool first = !params.deterministic && __shfl_sync(0xffffffffu, turn.ready_value, 0) == 0;
        // A first tile that runs past the sequence is not stored: that would overwrite the next sequence's rows.
        // The lanes zero the sequence's rows with global stores instead, while the consumers still compute (the
        // tile in shared memory is read by TMA only), and the tile is added to them.
        const bool store = first && (m_block + 1) * kBlockM <= seq.seqlen_q;
        if (first && !store) {
            constexpr int kPieces = kHeadDim / 4;  // 16 bytes each
            const int rows = seq.seqlen_q - m_block * kBlockM;
            const int64_t row_stride = int64_t(sh.num_heads_q) * kHeadDim;
            float *dst =
                params.dq_accum + int64_t(q_offset + m_block * kBlockM) * row_stride + int64_t(head) * kHeadDim;
            for (int piece = lane; piece < rows * kPieces; piece += 32) {
                *reinterpret_cast<float4 *>(dst + (piece / kPieces) * row_stride + (piece % kPieces) * 4) =
                    make_float4(0.f, 0.f, 0.f, 0.f);
            }
            __threadfence();             // the zeros before the mark, for the other writers
            fence_proxy_async_global();  // and before this writer's reduce-add
            __syncwarp();
            if (lane == 0) mark_dq_stored(turn.counter);
        }
        cutlass::arch::NamedBarrier::sync(kHandshake, kDqFull + b);
        Tensor sdQ = make_tensor(make_smem_ptr(smem.dq[b]), typename Traits::SmemLayoutdQ{});
        if (lane == 0 && params.deterministic) {
            wait_turn(turn);
            fence_proxy_async_global();  // the predecessor's adds, seen here, come before this one's
        }
        if (lane == 0) {
            auto issue = [&](auto const &tma) {
                Tensor gdQ = local_tile(domain_offset(make_coord(q_offset, _0{}), mdQ(_, _, head)),
                                        Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, _0{}));
                auto [tdQgdQ, tdQsdQ] =
                    tma_partition(tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdQ), group_modes<0, 2>(gdQ));
                copy(tma, tdQsdQ, tdQgdQ);
            };
            if (store) {
                issue(tma_dq_store);
            } else {
                issue(tma_dq);
            }
            tma_store_arrive();  // commit the store or reduce-add
            if (params.deterministic || store) {
                bulk_wait_complete();  // the writes are done in L2, not only read from shared memory
                fence_proxy_async_global();
                if (params.deterministic) {
                    pass_turn(turn, n_block);
                } else {
                    mark_dq_stored(turn.counter);
                }
            } else {
                tma_store_wait<0>();  // wait until it has read shared memory
            }
        }
        __syncwarp();
        cutlass::arch::NamedBarrier::arrive(kHandshake, kDqEmpty + b);
        b ^= 1;
    };
    for_each_query_tile<kBlockM, Traits::kBlockN>(params, seq, n_block, head_kv, add_tile);
    bulk_wait_complete();  // writes complete before the CTA retires
}

template <typename Traits, bool kCausal, class Storage>
__forceinline__ __device__ void consume_bwd(const BwdParams &params, const SeqMaskInfo &seq, Storage &smem,
                                            int n_block, int head_kv, int q_offset, int k_offset) {
    using Element = typename Traits::Element;
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;
    const int tid = threadIdx.x - 128;

    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutKt{});
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQt{});
    Tensor sdO = make_tensor(make_smem_ptr(smem.dout), typename Traits::SmemLayoutQ{});
    Tensor sdOt = make_tensor(make_smem_ptr(smem.dout), typename Traits::SmemLayoutQt{});
    Tensor sdS = make_tensor(make_smem_ptr(smem.ds), typename Traits::SmemLayoutdS{});
    Tensor sdSt = make_tensor(make_smem_ptr(smem.ds), typename Traits::SmemLayoutdSt{});

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

    Tensor tSrK = wg_sdp.partition_fragment_A(sK);      // S^T = K Q^T
    Tensor tSrQ = wg_sdp.partition_fragment_B(sQ);      // (MMA, MMA_N, MMA_K, stages)
    Tensor tdPrV = wg_sdp.partition_fragment_A(sV);     // dP^T = V dO^T
    Tensor tdPrdO = wg_sdp.partition_fragment_B(sdO);
    Tensor tdVrdO = wg_dkv.partition_fragment_B(sdOt);  // dV += P^T dO
    Tensor tdKrQ = wg_dkv.partition_fragment_B(sQt);    // dK += dS^T Q
    Tensor tdQrdS = wg_dq.partition_fragment_A(sdS);    // dQ = dS K, (MMA, MMA_M, MMA_K, buffers)
    Tensor tdQrK = wg_dq.partition_fragment_B(sKt);
    // The element offsets of the tiles this thread stores to (dS^T's and dQ's buffer 0).
    Tensor odSt = smem_offsets(typename Traits::SmemLayoutdSt{})(_, _, 0);
    Tensor odQ = smem_offsets(typename Traits::SmemLayoutdQ{});
    const int dst_first = first_offset(mma_sdp, tid, odSt);
    const int dq_first = first_offset(mma_dq, tid, odQ);
    const bool odd_row = accumulator_rows_odd(tid);
    constexpr size_t kDsBufferBytes = kBlockM * kBlockN * sizeof(Element);

    Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
    Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
    clear(acc_dk);
    clear(acc_dv);

    // Tile-local (key, query) of every S^T value this thread holds.
    Tensor tScS_rc = acc_rowcol(thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{})));

    const int seqlen_k = seq.seqlen_k;
    const int col0 = n_block * kBlockN;
    const int head_dim = params.shape.head_dim;
    const bool has_tree = kCausal && seq.has_tree();
    constexpr uint32_t kDqHandshake = Traits::kConsumerThreads + 32;
    // The mask values (tree_mask.h) of this thread's key rows, for every partial tile of the CTA; the queries'
    // values come with each stage.
    constexpr int kRows = decltype(size<0>(tScS_rc))::value;
    int key_value[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
        key_value[r] = key_mask_value_at(has_tree, params.tree_end_k, k_offset, col0 + get<0>(tScS_rc(r, 0)), seqlen_k);
    }

    // A step's S^T GEMM is issued as soon as its stage is in, and the previous step's dQ goes to shared memory
    // while it runs. The loop carries dQ, not S^T: registers an in-flight wgmma writes may not cross the back edge
    // or a branch that skips the issue without ptxas waiting for the wgmma there (C7517), and the wait<1> before
    // dQ is read shows ptxas that the wgmma which wrote it has retired (it has, since the previous step's wait<0>),
    // where it would otherwise wait for the S^T GEMM. From the seventeenth to the thirty-seventh session head dim
    // 64 handed each step's dQ over at the step's end instead (its shorter S^T GEMM hid the hand-over's
    // bank-conflicted stores badly: 4% slower this way); with the stores free of conflicts this order is 2.5% faster
    // there too (bench_results/RESULTS.md, thirty-eighth session).
    Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    // Hands a step's dQ to the writer warp once it has read the tile this buffer held before.
    auto hand_over_dq = [&](int buf) {
        warpgroup_wait<1>();
        cutlass::arch::NamedBarrier::sync(kDqHandshake, kDqEmpty + buf);
        store_column_pairs_xor<Traits::kDqExchange>(acc_dq, mma_dq, dq_first, odQ, smem.dq[buf], odd_row);
        cutlass::arch::fence_view_async_shared();  // visible to TMA (async proxy)
        cutlass::arch::NamedBarrier::arrive(kDqHandshake, kDqFull + buf);
    };
    wait_full(smem.kv_full, 0);
    StageCursor<Traits::kStages> cur;
    for (int step = 0;; ++step) {
        const int s = cur.stage;
        wait_full(smem.q_full[s], cur.phase);
        const int m_block = smem.stage_block[s];
        if (m_block == kNoBlock) {
            if (step > 0) hand_over_dq((step - 1) & 1);
            break;
        }
        Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
        Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
        wgmma_issue</*kZeroInit=*/true>(mma_sdp, tSrK, tSrQ(_, _, _, s), acc_s);
        if (step > 0) hand_over_dq((step - 1) & 1);
        wgmma_issue</*kZeroInit=*/true>(mma_sdp, tdPrV, tdPrdO(_, _, _, s), acc_dp);
        const TileKind kind = static_cast<TileKind>(smem.stage_kind[s]);
        const int row0 = m_block * kBlockM;

        // P^T = exp(scale * S^T - LSE) while dP^T is still being computed.
        warpgroup_wait<1>();
        warpgroup_fence_operand(acc_s);  // no read of S^T may move above the wait
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

        Tensor rP = to_type<Element>(acc_s);
        Tensor rdS = to_type<Element>(acc_dp);
        wgmma_issue</*kZeroInit=*/false>(mma_dkv, make_tensor(rP.data(), acc_as_a_operand_layout(rP.layout())),
                                         tdVrdO(_, _, _, s), acc_dv);
        // dS^T to shared memory (alternate buffers: the barrier below keeps the warpgroups within one step
        // of each other, so the buffer written now is no longer read), visible to wgmma's async proxy; stored
        // before dK's wgmma reads the same registers, which ptxas would otherwise copy for the stores, while dV's
        // wgmma keeps the tensor cores busy. The buffer's start is an unsigned byte offset: as smem.ds + buf *
        // elements (or a signed byte offset) the compiler added it to each column group's offset, two
        // instructions more per group (bench_results/RESULTS.md, twenty-second session).
        const int buf = step & 1;
        Element *ds_buf = reinterpret_cast<Element *>(reinterpret_cast<char *>(smem.ds) + buf * kDsBufferBytes);
        // S^T's column pairs: neighbouring queries of a key.
        store_column_pairs_xor(rdS, mma_sdp, dst_first, odSt, ds_buf);
        wgmma_issue</*kZeroInit=*/false>(mma_dkv, make_tensor(rdS.data(), acc_as_a_operand_layout(rdS.layout())),
                                         tdKrQ(_, _, _, s), acc_dk);
        cutlass::arch::fence_view_async_shared();
        cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads, kDsReady);

        wgmma_issue</*kZeroInit=*/true>(mma_dq, tdQrdS(_, _, _, buf), tdQrK, acc_dq);
        warpgroup_wait<0>();
        // The register operands P^T and dS^T are read by the dV/dK wgmma until this wait: the fences keep
        // the compiler from reusing their registers earlier, and from reading the accumulators before it.
        warpgroup_fence_operand(rP);
        warpgroup_fence_operand(rdS);
        warpgroup_fence_operand(acc_dq);
        warpgroup_fence_operand(acc_dk);
        warpgroup_fence_operand(acc_dv);
        release(smem.q_empty[s]);
        cur.advance();
    }
    // Both buffers drained: this takes the writer's last arrival on each (one per buffer more than the steps
    // that used it, counting the two it starts with), and waits for both warpgroups' last step.
    cutlass::arch::NamedBarrier::sync(kDqHandshake, kDqEmpty + 0);
    cutlass::arch::NamedBarrier::sync(kDqHandshake, kDqEmpty + 1);

    // ---- epilogue: dK (scaled) and dV go through this warpgroup's key rows of the K and V tiles, which no
    // wgmma reads any more (the sync above waited for both warpgroups' last step), and out as 16-byte row
    // pieces ----
    CUTE_UNROLL
    for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= params.softmax_scale;
    Tensor rdK = to_type<Element>(acc_dk);
    Tensor rdV = to_type<Element>(acc_dv);
    store_column_pairs(rdK, thr_dkv.partition_C(sK), smem.k, smem.k);
    store_column_pairs(rdV, thr_dkv.partition_C(sV), smem.v, smem.v);
    const int wg = tid / 128;
    cutlass::arch::NamedBarrier::sync(128, kEpilogue + wg);  // this warpgroup's dK and dV rows are written
    const int key0 = col0 + wg * 64;
    auto store = [&](auto const &tile, void *base, int64_t row_stride, int64_t head_stride) {
        Element *out = static_cast<Element *>(base) + int64_t(k_offset + key0) * row_stride + int64_t(head_kv) * head_stride;
        store_tile_16b<128>(local_tile(tile, Shape<_64, Int<kHeadDim>>{}, make_coord(wg, _0{})), out, row_stride,
                            seqlen_k - key0, head_dim, tid % 128);
    };
    store(sK, params.dk, params.dk_row_stride, params.dk_head_stride);
    store(sV, params.dv, params.dv_row_stride, params.dv_head_stride);
}

template <typename Traits, bool kCausal, class TmaQ, class TmaDO, class TmaK, class TmaV, class TmaDQ,
          class TmaDQStore>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    bwd_kernel(const __grid_constant__ BwdParams params, const __grid_constant__ TmaQ tma_q,
               const __grid_constant__ TmaDO tma_do, const __grid_constant__ TmaK tma_k,
               const __grid_constant__ TmaV tma_v, const __grid_constant__ TmaDQ tma_dq,
               const __grid_constant__ TmaDQStore tma_dq_store) {
#if defined(__CUDA_ARCH__) && !defined(CUTE_ARCH_MMA_SM90A_ENABLED)
    __trap();  // see fwd_kernel: only the sm_90a code is ever launched
#else
    using Storage = typename Traits::SharedStorage;
    extern __shared__ __align__(1024) char smem_raw[];
    Storage &smem = *reinterpret_cast<Storage *>(smem_raw);

    // Heavy key blocks first, across heads (tile_order.h).
    const TileCoord tile = bwd_tile<Traits::kBlockN>(params);
    const int n_block = tile.block;
    const int head_kv = tile.head;
    const int batch = tile.batch;
    const int q_offset = params.cu_seqlens_q[batch];
    const int seqlen_q = params.cu_seqlens_q[batch + 1] - q_offset;
    const int k_offset = params.cu_seqlens_k[batch];
    const int seqlen_k = params.cu_seqlens_k[batch + 1] - k_offset;
    if (n_block * Traits::kBlockN >= seqlen_k) return;
    const SeqMaskInfo seq = make_seq_mask_info(params, kCausal, batch, seqlen_q, seqlen_k);

    if (threadIdx.x == 0) {
        // pipeline.h: every producer lane writes part of what the full barriers hand over, and every consumer
        // thread reads the stages' row statistics.
        TxBarrier::init(&smem.kv_full, 32);
        CUTE_UNROLL
        for (int s = 0; s < Traits::kStages; ++s) {
            TxBarrier::init(&smem.q_full[s], 32);
            TxBarrier::init(&smem.q_empty[s], Traits::kConsumerThreads);
        }
        cutlass::arch::fence_barrier_init();
    }
    __syncthreads();

    if (threadIdx.x < 128) {
        cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
        if (threadIdx.x < 32) {
            produce_bwd<Traits>(params, seq, smem, tma_q, tma_do, tma_k, tma_v, n_block, head_kv, q_offset, k_offset);
        } else if (threadIdx.x < 64) {
            if constexpr (!Traits::kSplitHeadDim) {
                write_dq<Traits>(params, seq, smem, tma_dq, tma_dq_store, n_block, head_kv, batch, q_offset);
            }
        }
    } else {
        cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
        if constexpr (Traits::kSplitHeadDim) {
            consume_bwd_split<Traits, kCausal>(params, seq, smem, n_block, head_kv, batch, q_offset, k_offset);
        } else {
            consume_bwd<Traits, kCausal>(params, seq, smem, n_block, head_kv, q_offset, k_offset);
        }
    }
#endif
}

}  // namespace flash_tree_attn::sm90
