// sm80 backward: dK and dV for one key block of one key/value head per CTA, looping over the query heads
// that share it (GQA is accumulated in registers, no per-query-head copies) and over the non-empty query
// blocks; dQ is accumulated in fp32 with atomics (whole tiles in line order, dq_lines.h), in
// a fixed key-block order when deterministic (dq_order.h).
#pragma once

#include <cute/tensor.hpp>

#include "block_range.h"
#include "dq_order.h"
#include "dq_reduce.h"
#include "params.h"
#include "softmax.h"
#include "tile_order.h"
#include "sm80/bwd_traits.h"
#include "sm80/dq_lines.h"
#include "sm80/utils.h"

namespace flash_tree_attn::sm80 {

template <typename Traits, bool kCausal>
__global__ void __launch_bounds__(Traits::kNThreads, 1) bwd_kernel(const __grid_constant__ BwdParams params) {
    using Element = typename Traits::Element;
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;
    constexpr int kStages = Traits::kStages;

    extern __shared__ __align__(128) char smem_raw[];

    // Heavy key blocks first, across heads (tile_order.h); the deterministic mode's dQ order relies on it
    // (dq_order.h).
    const TileCoord tile = bwd_tile<kBlockN>(params);
    const int n_block = tile.block;
    const int head_kv = tile.head;
    const int batch = tile.batch;
    const int tid = threadIdx.x;

    const int q_offset = params.cu_seqlens_q[batch];
    const int seqlen_q = params.cu_seqlens_q[batch + 1] - q_offset;
    const int k_offset = params.cu_seqlens_k[batch];
    const int seqlen_k = params.cu_seqlens_k[batch + 1] - k_offset;
    if (n_block * kBlockN >= seqlen_k) return;
    const int group = params.shape.num_heads_q / params.shape.num_heads_kv;
    const int head_dim = params.shape.head_dim;
    const int m_blocks = ceil_div(seqlen_q, kBlockM);
    const int col0 = n_block * kBlockN;

    const SeqMaskInfo seq = make_seq_mask_info(params, kCausal, batch, seqlen_q, seqlen_k);
    const bool has_tree = kCausal && seq.has_tree();
    const int *start_q = has_tree ? params.tree_start_q + q_offset : nullptr;
    const int *end_k = has_tree ? params.tree_end_k + k_offset : nullptr;

    // ---- shared memory ----
    // Layout: Q[kStages], dO[kStages], K, V, P, dS, then the per-row values (Traits::RowData).
    constexpr int kQSize = decltype(size(typename Traits::SmemLayoutQ{}))::value;
    Element *smem = reinterpret_cast<Element *>(smem_raw);
    Element *smem_do = smem + kStages * kQSize;
    Element *smem_k = smem_do + kStages * kQSize;
    auto sQ_at = [&](int stage) { return make_tensor(make_smem_ptr(smem + stage * kQSize), typename Traits::SmemLayoutQ{}); };
    auto sdO_at = [&](int stage) {
        return make_tensor(make_smem_ptr(smem_do + stage * kQSize), typename Traits::SmemLayoutQ{});
    };
    auto sQt_at = [&](int stage) {
        return make_tensor(make_smem_ptr(smem + stage * kQSize), typename Traits::SmemLayoutQt{});
    };
    auto sdOt_at = [&](int stage) {
        return make_tensor(make_smem_ptr(smem_do + stage * kQSize), typename Traits::SmemLayoutQt{});
    };
    Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::SmemLayoutKV{});
    Tensor sKt = make_tensor(sK.data(), typename Traits::SmemLayoutKt{});
    Tensor sKtNoSwizzle = make_tensor(sK.data().get(), typename Traits::SmemLayoutKtNoSwizzle{});
    Tensor sP = make_tensor(sV.data() + size(sV), typename Traits::SmemLayoutP{});
    Tensor sPt = make_tensor(sP.data(), typename Traits::SmemLayoutPt{});
    Tensor sPtNoSwizzle = make_tensor(sP.data().get(), typename Traits::SmemLayoutPtNoSwizzle{});
    Tensor sdS = make_tensor(sP.data() + size(sP), typename Traits::SmemLayoutP{});
    Tensor sdSt = make_tensor(sdS.data(), typename Traits::SmemLayoutPt{});
    Tensor sdStNoSwizzle = make_tensor(sdS.data().get(), typename Traits::SmemLayoutPtNoSwizzle{});
    auto &rows = *reinterpret_cast<typename Traits::RowData *>(smem_raw + Traits::kSmemTileBytes);

    // ---- global tensors of this key block ----
    auto kv_tile = [&](const void *base, int64_t row_stride, int64_t head_stride) {
        Tensor m = make_tensor(make_gmem_ptr(static_cast<const Element *>(base) + int64_t(k_offset) * row_stride +
                                             int64_t(head_kv) * head_stride),
                               make_shape(seqlen_k, Int<kHeadDim>{}), make_stride(row_stride, _1{}));
        return local_tile(m, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, 0));
    };
    Tensor gK = kv_tile(params.k, params.k_row_stride, params.k_head_stride);
    Tensor gV = kv_tile(params.v, params.v_row_stride, params.v_head_stride);

    typename Traits::GmemCopyLoad gmem_copy;
    auto gmem_thr = gmem_copy.get_thread_slice(tid);
    Tensor tQcQ = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tKVcKV = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    {
        Tensor tKsK = gmem_thr.partition_D(sK);
        Tensor tVsV = gmem_thr.partition_D(sV);
        copy_tile_async(gmem_copy, gmem_thr.partition_S(gK), tKsK, tKVcKV, seqlen_k - col0, head_dim);
        copy_tile_async(gmem_copy, gmem_thr.partition_S(gV), tVsV, tKVcKV, seqlen_k - col0, head_dim);
        if (has_tree) copy_values_async<kBlockN, Traits::kNThreads>(rows.end_k, end_k, col0, seqlen_k, tid);
    }

    // Q and dO tiles of (query head, query block), and their rows' LSE, D and tree starts (zeros past the
    // sequence).
    auto load_q_do = [&](int head, int m_block, int stage) {
        const int row0 = m_block * kBlockM;
        Tensor mQ = make_tensor(make_gmem_ptr(static_cast<const Element *>(params.q) + int64_t(q_offset) * params.q_row_stride +
                                              int64_t(head) * params.q_head_stride),
                                make_shape(seqlen_q, Int<kHeadDim>{}), make_stride(params.q_row_stride, _1{}));
        Tensor mdO = make_tensor(make_gmem_ptr(static_cast<const Element *>(params.dout) +
                                               int64_t(q_offset) * params.do_row_stride + int64_t(head) * params.do_head_stride),
                                 make_shape(seqlen_q, Int<kHeadDim>{}), make_stride(params.do_row_stride, _1{}));
        Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));
        Tensor gdO = local_tile(mdO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));
        Tensor tQsQ = gmem_thr.partition_D(sQ_at(stage));
        Tensor tdOsdO = gmem_thr.partition_D(sdO_at(stage));
        copy_tile_async(gmem_copy, gmem_thr.partition_S(gQ), tQsQ, tQcQ, seqlen_q - row0, head_dim);
        copy_tile_async(gmem_copy, gmem_thr.partition_S(gdO), tdOsdO, tQcQ, seqlen_q - row0, head_dim);
        // 3 * kBlockM values (LSE, D, tree start per row), spread over the threads.
        constexpr int kValues = 3 * kBlockM;
        CUTE_UNROLL
        for (int it = 0; it < (kValues + Traits::kNThreads - 1) / Traits::kNThreads; ++it) {
            const int j = tid + it * Traits::kNThreads;
            const int i = j % kBlockM;
            const int which = j / kBlockM;  // 0: LSE, 1: D, 2: tree start
            const bool valid = row0 + i < seqlen_q;
            const int row = valid ? row0 + i : 0;
            const int64_t idx = int64_t(head) * params.shape.total_q + q_offset + row;
            if (which == 0) {
                cp_async_4(&rows.lse[stage][i], params.softmax_lse + idx, valid);
            } else if (which == 1) {
                cp_async_4(&rows.dsum[stage][i], params.dsoftmax_sum + idx, valid);
            } else if (which == 2 && has_tree) {
                cp_async_4(&rows.start_q[stage][i], start_q + row, valid);
            }
        }
    };

    // ---- MMA partitions ----
    typename Traits::TiledMmaSdP mma_sdp;
    auto thr_sdp = mma_sdp.get_thread_slice(tid);
    typename Traits::TiledMmadKV mma_dkv;
    auto thr_dkv = mma_dkv.get_thread_slice(tid);
    typename Traits::TiledMmadQ mma_dq;
    auto thr_dq = mma_dq.get_thread_slice(tid);

    Tensor tSrQ = thr_sdp.partition_fragment_A(sQ_at(0));
    Tensor tSrK = thr_sdp.partition_fragment_B(sK);
    Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO_at(0));
    Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
    Tensor tdVrPt = thr_dkv.partition_fragment_A(sPtNoSwizzle);
    Tensor tdVrdOt = thr_dkv.partition_fragment_B(make_tensor(smem_do, typename Traits::SmemLayoutQtNoSwizzle{}));
    Tensor tdKrdSt = thr_dkv.partition_fragment_A(sdStNoSwizzle);
    Tensor tdKrQt = thr_dkv.partition_fragment_B(make_tensor(smem, typename Traits::SmemLayoutQtNoSwizzle{}));
    Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
    Tensor tdQrKt = thr_dq.partition_fragment_B(sKtNoSwizzle);

    Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
    Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
    clear(acc_dk);
    clear(acc_dv);

    // shared -> register copies
    auto copy_a_sdp = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, mma_sdp);
    auto thr_copy_a_sdp = copy_a_sdp.get_thread_slice(tid);
    auto copy_b_sdp = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, mma_sdp);
    auto thr_copy_b_sdp = copy_b_sdp.get_thread_slice(tid);
    Tensor tSsK = thr_copy_b_sdp.partition_S(sK);
    Tensor tdPsV = thr_copy_b_sdp.partition_S(sV);

    auto copy_a_dkv = make_tiled_copy_A(typename Traits::SmemCopyAtomTransposed{}, mma_dkv);
    auto thr_copy_a_dkv = copy_a_dkv.get_thread_slice(tid);
    auto copy_b_dkv = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, mma_dkv);
    auto thr_copy_b_dkv = copy_b_dkv.get_thread_slice(tid);
    Tensor tdVsPt = thr_copy_a_dkv.partition_S(sPt);
    Tensor tdKsdSt = thr_copy_a_dkv.partition_S(sdSt);

    auto copy_a_dq = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, mma_dq);
    auto thr_copy_a_dq = copy_a_dq.get_thread_slice(tid);
    auto copy_b_dq = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, mma_dq);
    auto thr_copy_b_dq = copy_b_dq.get_thread_slice(tid);
    Tensor tdQsdS = thr_copy_a_dq.partition_S(sdS);
    Tensor tdQsKt = thr_copy_b_dq.partition_S(sKt);

    // register -> shared copies of P and dS
    auto copy_p = make_tiled_copy_C(typename Traits::SmemCopyAtomStore{}, mma_sdp);
    auto thr_copy_p = copy_p.get_thread_slice(tid);
    Tensor tPsP = thr_copy_p.partition_D(sP);
    Tensor tdSsdS = thr_copy_p.partition_D(sdS);

    // Tile-local coordinates of the S/dP accumulators (rows x cols) and of the dQ accumulator.
    Tensor tScS_rc = acc_rowcol(thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    constexpr int kRows = decltype(size<0>(tScS_rc))::value;
    Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    // dQaccum is (token, query head, kHeadDim) fp32. Offsets of the thread's accumulator elements from its
    // first one are the same for every tile; only the tile's base moves.
    const int dq_row_stride = params.shape.num_heads_q * kHeadDim;
    auto dq_offset = [&](int i) {
        return (get<0>(tdQcdQ(i)) - get<0>(tdQcdQ(0))) * dq_row_stride + (get<1>(tdQcdQ(i)) - get<1>(tdQcdQ(0)));
    };

    const int head_q0 = head_kv * group;
    // Work items are (query head, query block); the non-empty query blocks are the same for every head, each
    // head walks them anew, the heads after the first only up to the last block the first found (m_end), so
    // the scan past it (the empty blocks of later branches) is made once per CTA, not once per head. The sm90
    // backward's for_each_query_tile walks the same items; one shared walker (tried, bench_results/RESULTS.md,
    // eleventh session) cost this kernel 0.8-2.3% through the registers its state held across the loop.
    using Walk = TileWalk<kBlockM, kBlockN, /*kKeysDown=*/false>;
    const int m_start = query_block_begin<kBlockM, kBlockN>(seq, n_block);
    int m_end = m_blocks;
    Walk walk(n_block, m_start, m_end);
    TileKind kind;
    int m_block = walk.next(seq, kind);

    if (m_block < m_end) {
        int head = head_q0, stage = 0;
        load_q_do(head, m_block, 0);
        cute::cp_async_fence();

        while (true) {
            // Next work item, prefetched into the other stage when double-buffered. The deterministic mode
            // takes the items query block by query block instead, every head of the group in turn (dq_order.h).
            int next_head = head;
            TileKind next_kind;
            int next_m;
            if (params.deterministic) {
                next_kind = kind;
                next_m = m_block;
                if (++next_head == head_q0 + group) {
                    next_m = walk.next(seq, next_kind);
                    next_head = next_m < m_end ? head_q0 : head_q0 + group;
                }
            } else {
                next_m = walk.next(seq, next_kind);
                if (next_m >= m_end && ++next_head < head_q0 + group) {
                    if (head == head_q0) m_end = m_block + 1;  // m_block: the first head's last block
                    walk = Walk(n_block, m_start, m_end);
                    next_m = walk.next(seq, next_kind);
                }
            }
            const bool has_next = next_head < head_q0 + group;
            if (kStages == 2 && has_next) {
                load_q_do(next_head, next_m, stage ^ 1);
                cute::cp_async_fence();
                cute::cp_async_wait<1>();
            } else {
                cute::cp_async_wait<0>();
            }
            __syncthreads();

            const int row0 = m_block * kBlockM;

            // Per-row softmax statistics: log2-domain LSE (+inf for rows that see nothing or lie past the
            // sequence, so P = 0) and D = rowsum(dO * O) - dLSE. Read before the two GEMMs, or after them where
            // the registers they would hold across the GEMMs are the ones ptxas spills (Traits::kLateRowStats).
            auto row_stats = [&](int r, float &lse_log2, float &dsum) {
                const int i = get<0>(tScS_rc(r, 0));
                const float lse = rows.lse[stage][i];
                lse_log2 = (row0 + i >= seqlen_q || lse == -INFINITY) ? INFINITY : lse * float(M_LOG2E);
                dsum = rows.dsum[stage][i];
            };
            float early_lse_log2[kRows], early_dsum[kRows];
            if constexpr (!Traits::kLateRowStats) {
#pragma unroll
                for (int r = 0; r < kRows; ++r) row_stats(r, early_lse_log2[r], early_dsum[r]);
            }

            Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
            Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
            clear(acc_s);
            clear(acc_dp);
            Tensor tSsQ = thr_copy_a_sdp.partition_S(sQ_at(stage));
            Tensor tdPsdO = thr_copy_a_sdp.partition_S(sdO_at(stage));
            gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK, mma_sdp, copy_a_sdp, copy_b_sdp, thr_copy_a_sdp, thr_copy_b_sdp);
            gemm_ss(acc_dp, tdPrdO, tdPrV, tdPsdO, tdPsV, mma_sdp, copy_a_sdp, copy_b_sdp, thr_copy_a_sdp,
                    thr_copy_b_sdp);

            Tensor s = acc_rowcol(acc_s);
            Tensor dp = acc_rowcol(acc_dp);
            if (kind == TileKind::kPartial) {
                mask_tile</*kPerPair=*/true>(s, tScS_rc, row0, col0, seqlen_q, seqlen_k, seq.diag,
                                             has_tree ? rows.start_q[stage] : nullptr,
                                             has_tree ? rows.end_k : nullptr);
            }
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                float lse_log2, dsum;
                if constexpr (Traits::kLateRowStats) {
                    row_stats(r, lse_log2, dsum);
                } else {
                    lse_log2 = early_lse_log2[r];
                    dsum = early_dsum[r];
                }
#pragma unroll
                for (int c = 0; c < size<1>(s); ++c) {
                    const float p = exp2f(fmaf(s(r, c), params.softmax_scale_log2, -lse_log2));
                    s(r, c) = p;
                    dp(r, c) = p * (dp(r, c) - dsum);
                }
            }
            Tensor rP = to_type<Element>(acc_s);
            Tensor rdS = to_type<Element>(acc_dp);
            copy(copy_p, thr_copy_p.retile_S(rP), tPsP);
            copy(copy_p, thr_copy_p.retile_S(rdS), tdSsdS);
            __syncthreads();

            // dV += P^T dO, dK += dS^T Q
            Tensor tdVsdOt = thr_copy_b_dkv.partition_S(sdOt_at(stage));
            gemm_ss(acc_dv, tdVrPt, tdVrdOt, tdVsPt, tdVsdOt, mma_dkv, copy_a_dkv, copy_b_dkv, thr_copy_a_dkv,
                    thr_copy_b_dkv);
            Tensor tdKsQt = thr_copy_b_dkv.partition_S(sQt_at(stage));
            gemm_ss(acc_dk, tdKrdSt, tdKrQt, tdKsdSt, tdKsQt, mma_dkv, copy_a_dkv, copy_b_dkv, thr_copy_a_dkv,
                    thr_copy_b_dkv);

            // dQ(tile) = dS K, added to the fp32 accumulator.
            Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
            clear(acc_dq);
            gemm_ss(acc_dq, tdQrdS, tdQrKt, tdQsdS, tdQsKt, mma_dq, copy_a_dq, copy_b_dq, thr_copy_a_dq, thr_copy_b_dq);

            DqTurn turn{};
            if (params.deterministic) {
                turn = dq_turn<kBlockM, kBlockN>(params, seq, batch, head, m_block, n_block);
                if (tid == 0) wait_turn(turn);
                __syncthreads();
            }
            // (i, i + 1) are neighbouring columns of one row in the MMA accumulator.
            if (row0 + kBlockM <= seqlen_q) {
                // A whole tile: two whole 128-byte lines per warp instruction (dq_lines.h).
                float *dq_lines = dq_accum_row<kHeadDim>(params, q_offset + row0, head);
#pragma unroll
                for (int i = 0; i < size(acc_dq); i += 2) {
                    red_add_pair(dq_lines + DqLines<Traits>::offset(tid / 32, tid % 32, i / 2, dq_row_stride),
                                 acc_dq(i), acc_dq(i + 1));
                }
            } else {
                // The sequence's last, cut tile stays row-major (its places past the sequence are the next one's
                // rows). The thread's first element in row-major order; every other element is a fixed offset from
                // it (columns past head_dim are bucket padding: K is zero there, so they add zeros).
                float *dq_tile =
                    dq_accum_row<kHeadDim>(params, q_offset + row0 + get<0>(tdQcdQ(0)), head) + get<1>(tdQcdQ(0));
#pragma unroll
                for (int i = 0; i < size(acc_dq); i += 2) {
                    if (row0 + get<0>(tdQcdQ(i)) < seqlen_q) {
                        red_add_pair(dq_tile + dq_offset(i), acc_dq(i), acc_dq(i + 1));
                    }
                }
            }
            if (params.deterministic) {
                __threadfence();
                __syncthreads();
                if (tid == 0) pass_turn(turn, n_block);
            }

            if (!has_next) break;
            __syncthreads();  // every warp is done with P, dS and this stage before they are overwritten
            if (kStages == 1) {
                load_q_do(next_head, next_m, 0);
                cute::cp_async_fence();
            } else {
                stage ^= 1;
            }
            head = next_head;
            m_block = next_m;
            kind = next_kind;
        }
    }

    // ---- epilogue: dK (scaled) and dV through shared memory ----
    cute::cp_async_wait<0>();  // K/V may still be in flight when this block saw no query block
    __syncthreads();
#pragma unroll
    for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= params.softmax_scale;
    Tensor rdK = to_type<Element>(acc_dk);
    Tensor rdV = to_type<Element>(acc_dv);
    Tensor sdK = make_tensor(sK.data(), typename Traits::SmemLayoutKV{});
    Tensor sdV = make_tensor(sV.data(), typename Traits::SmemLayoutKV{});
    auto copy_dkv = make_tiled_copy_C(typename Traits::SmemCopyAtomStore{}, mma_dkv);
    auto thr_copy_dkv = copy_dkv.get_thread_slice(tid);
    copy(copy_dkv, thr_copy_dkv.retile_S(rdK), thr_copy_dkv.partition_D(sdK));
    copy(copy_dkv, thr_copy_dkv.retile_S(rdV), thr_copy_dkv.partition_D(sdV));
    __syncthreads();

    auto out_tile = [&](void *base, int64_t row_stride, int64_t head_stride) {
        Tensor m = make_tensor(make_gmem_ptr(static_cast<Element *>(base) + int64_t(k_offset) * row_stride +
                                             int64_t(head_kv) * head_stride),
                               make_shape(seqlen_k, Int<kHeadDim>{}), make_stride(row_stride, _1{}));
        return local_tile(m, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, 0));
    };
    typename Traits::GmemCopyStore gmem_store;
    auto gmem_store_thr = gmem_store.get_thread_slice(tid);
    Tensor gdK = out_tile(params.dk, params.dk_row_stride, params.dk_head_stride);
    Tensor gdV = out_tile(params.dv, params.dv_row_stride, params.dv_head_stride);
    Tensor tdKgdK = gmem_store_thr.partition_D(gdK);
    Tensor tdVgdV = gmem_store_thr.partition_D(gdV);
    Tensor tcKV = gmem_store_thr.partition_D(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    store_tile(gmem_store, gmem_store_thr.partition_S(sdK), tdKgdK, tcKV, seqlen_k - col0, head_dim);
    store_tile(gmem_store, gmem_store_thr.partition_S(sdV), tdVgdV, tcKV, seqlen_k - col0, head_dim);
}

}  // namespace flash_tree_attn::sm80
