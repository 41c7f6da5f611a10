// sm90 forward kernel, warp-specialized. Its work items are (128-row query block, sequence, query head), in the
// order of tile_order.h. Where FwdTraits::kPersistent (head dims 64, 96, 128) a CTA runs on each SM and takes items
// one after the other, the next item's Q and first K loading while the current one is computed; otherwise a CTA
// runs one item. Warpgroup 0 is the producer: one warp hands each item to the
// consumers with its Q, walks the non-empty key blocks of the query block (the same scan and tile classification
// as the sm80 path) and streams K and V into a two-stage ring with TMA, telling the consumers which block each
// stage holds and whether it needs the element mask. Warpgroups 1 and 2 each own 64 query rows: S = Q K^T by wgmma
// from shared memory, online softmax in registers, O += P V by wgmma with P taken straight from the S registers;
// each consumer pipelines its key blocks so that the softmax of one runs while the tensor cores do the PV GEMM of
// the one before. Empty tiles are never loaded; full tiles skip the mask.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "block_range.h"
#include "fragment_convert.h"
#include "params.h"
#include "softmax.h"
#include "tile_order.h"
#include "sm90/fwd_traits.h"
#include "sm90/pipeline.h"
#include "sm90/utils.h"

namespace flash_tree_attn::sm90 {

// Producer warp, per work item: Q into the item's buffer with the item's values, then K and V of every non-empty
// key block, last block first (the causal diagonal block, which needs the mask, goes first so later blocks run
// unmasked), each V one block behind its K, then an end marker. The first K goes out right after Q, before the
// rows' mask values are fetched for the consumers (so that no round trip holds the item's first loads back), and
// with the K of a partial block go its keys' mask values (tree_mask.h), which the lanes load while TMA brings K;
// every lane arrives on the full barrier of what it wrote (pipeline.h). A persistent CTA's producer asks for its
// next item (next_item, in lane 0) once the item's last K is queued.
template <typename Traits, class TmaQ, class TmaK, class TmaV, class Storage>
__forceinline__ __device__ void produce(const FwdParams &params, const SeqMaskInfo &seq, Storage &smem,
                                        TmaQ const &tma_q, TmaK const &tma_k, TmaV const &tma_v, int m_block,
                                        int head, int head_kv, int q_offset, int k_offset, int item, int qb,
                                        uint32_t q_phase, StageCursor<Traits::kStages> &cur,
                                        StageCursor<Traits::kStages> &v_cur, int &next_item) {
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;
    const bool leader = threadIdx.x % 32 == 0;

    Tensor sQ = make_tensor(make_smem_ptr(smem.q[qb]), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutV{});

    // TMA coordinate tensors over the whole packed (tokens, head dim, heads) arrays; a sequence is a window
    // starting at its offset. Rows past the sequence read the next sequence (masked or never stored) or,
    // past the array, zeros.
    const auto &sh = params.shape;
    Tensor mQ = tma_q.get_tma_tensor(make_shape(sh.total_q, sh.head_dim, sh.num_heads_q))(_, _, head);
    Tensor mK = tma_k.get_tma_tensor(make_shape(sh.total_k, sh.head_dim, sh.num_heads_kv))(_, _, head_kv);
    Tensor mV = tma_v.get_tma_tensor(make_shape(sh.total_k, sh.head_dim, sh.num_heads_kv))(_, _, head_kv);
    Tensor gQ = local_tile(domain_offset(make_coord(q_offset, _0{}), mQ), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                           make_coord(m_block, _0{}));
    Tensor gK = local_tile(domain_offset(make_coord(k_offset, _0{}), mK), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_coord(_, _0{}));  // (N, D, n_blocks)
    Tensor gV = local_tile(domain_offset(make_coord(k_offset, _0{}), mV), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_coord(_, _0{}));

    auto [tQgQ, tQsQ] = tma_partition(tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tKgK, tKsK] = tma_partition(tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

    // Requests follow the order in which the consumers need the tiles: K of block j + 1 (for S_{j+1}) before V
    // of block j (for the PV GEMM issued after it), so V of each block is queued one block late. K's stage frees
    // when S_{j-1} has retired, V's only when the PV GEMM of block j - 2 has, so queuing V first held every K
    // back by a PV GEMM.
    // K and V have a cursor each: the end marker takes a K stage and no V stage.
    int v_block = -1;
    auto queue_v = [&]() {
        wait_empty(smem.v_empty[v_cur.stage], v_cur.phase);
        if (leader) {
            TxBarrier::arrive_and_expect_tx(&smem.v_full[v_cur.stage], Traits::kKVBytes);
            copy(tma_v.with(smem.v_full[v_cur.stage]), tVgV(_, v_block), tVsV(_, v_cur.stage));
        }
        v_cur.advance();
    };
    const int lane = threadIdx.x % 32;
    const int *tree_end_k = seq.has_tree() ? params.tree_end_k + k_offset : nullptr;
    // A key block's K goes out as soon as its stage is free; its keys' mask values follow, then the stage's full
    // barrier.
    auto queue_k = [&](int n_block, TileKind kind) {
        const int s = cur.stage;
        wait_empty(smem.k_empty[s], cur.phase);
        if (leader) {
            smem.stage_block[s] = n_block;
            smem.stage_kind[s] = static_cast<int>(kind);
            TxBarrier::expect_transaction(&smem.k_full[s], Traits::kKVBytes);
            copy(tma_k.with(smem.k_full[s]), tKgK(_, n_block), tKsK(_, s));
        }
    };
    auto publish_k = [&](int n_block, TileKind kind) {
        const int s = cur.stage;
        if (kind == TileKind::kPartial) {
            CUTE_UNROLL
            for (int j = lane; j < kBlockN; j += 32) {
                smem.key_value[s][j] =
                    key_mask_value_at(tree_end_k != nullptr, tree_end_k, 0, n_block * kBlockN + j, seq.seqlen_k);
            }
        }
        TxBarrier::arrive(&smem.k_full[s]);
    };
    const int n_end = key_block_end<kBlockM, kBlockN>(seq, m_block);
    const int n_first = diagonal_key_block_unclassified<kBlockM, kBlockN>(seq, m_block, n_end);
    TileWalk<kBlockM, kBlockN, /*kKeysDown=*/true> walk(m_block, (n_first >= 0 ? n_first : n_end) - 1, -1);
    TileKind kind = TileKind::kPartial;
    int n_block = n_first >= 0 ? n_first : walk.next(seq, kind);

    // Q and the first K go out before the rows' mask values are fetched, so that the item's first loads are not
    // held back by that round trip (the consumers may still be computing the item before).
    wait_empty(smem.q_empty[qb], q_phase);  // the O of the item two back has left this buffer
    if (leader) {
        TxBarrier::expect_transaction(&smem.q_full[qb], Traits::kQBytes);
        copy(tma_q.with(smem.q_full[qb]), tQgQ, tQsQ);
        smem.q_item[qb][0] = item;
        smem.q_item[qb][1] = q_offset;
        smem.q_item[qb][2] = seq.seqlen_q;
        smem.q_item[qb][3] = seq.diag;
    }
    if (n_block >= 0) queue_k(n_block, kind);
    {
        // Rows past the sequence are never stored and stay unmasked.
        const bool has_tree = seq.has_tree();
        CUTE_UNROLL
        for (int j = lane; j < kBlockM; j += 32) {
            const int row = m_block * kBlockM + j;
            smem.row_value[qb][j] =
                (has_tree && row < seq.seqlen_q) ? params.tree_start_q[q_offset + row] : kNoTreeStart;
        }
    }
    TxBarrier::arrive(&smem.q_full[qb]);  // every lane publishes its own writes (pipeline.h)

    for (bool first = true; n_block >= 0; first = false) {
        if (!first) queue_k(n_block, kind);  // the first went out with Q
        publish_k(n_block, kind);
        if (v_block >= 0) queue_v();
        v_block = n_block;
        n_block = walk.next(seq, kind);
        cur.advance();
    }
    // Asked for here, not earlier: an item taken while this CTA still has a whole item to compute would wait for it
    // however soon another CTA fell idle, and the launch's tail grew (grpo_P8192: the SMs' last ends 150 us apart,
    // bench_results/RESULTS.md, seventeenth session). The consumers still have this item's last key blocks to
    // compute; the atomic's round trip runs while the last V and the end marker are queued.
    if constexpr (Traits::kPersistent) {
        if (lane == 0) next_item = atomicAdd(params.fwd_item_counter, 1);
    }
    if (v_block >= 0) queue_v();
    wait_empty(smem.k_empty[cur.stage], cur.phase);
    if (leader) smem.stage_block[cur.stage] = kNoBlock;
    TxBarrier::arrive(&smem.k_full[cur.stage]);  // completes the phase with no bytes expected
    cur.advance();
}

// Consumer warpgroups: the attention mainloop and the epilogue for their 64 rows each.
template <typename Traits, bool kCausal, class Storage>
__forceinline__ __device__ void consume(const FwdParams &params, Storage &smem, int m_block, int head, int q_offset,
                                        int seqlen_q, int diag, int qb, StageCursor<Traits::kStages> &cur,
                                        StageCursor<Traits::kStages> &v_cur) {
    using Element = typename Traits::Element;
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;
    const int tid = threadIdx.x - 128;  // 0 .. kConsumerThreads-1

    Tensor sQ = make_tensor(make_smem_ptr(smem.q[qb]), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVt{});

    typename Traits::TiledMmaS mma_s;
    typename Traits::TiledMmaO mma_o;
    auto thr_s = mma_s.get_thread_slice(tid);
    auto thr_o = mma_o.get_thread_slice(tid);
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K) descriptors
    Tensor tSrK = thr_s.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stages)
    Tensor tOrV = thr_o.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stages)
    Tensor acc_o = partition_fragment_C(mma_o, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    clear(acc_o);

    // Tile-local (row, col) of every score this thread holds, as a rows x cols view.
    Tensor tScS_rc = acc_rowcol(thr_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    constexpr int kRows = decltype(size<0>(tScS_rc))::value;
    OnlineSoftmax<kRows> softmax;

    const int row0 = m_block * kBlockM;
    // The mask values of this thread's query rows, for every partial tile of the item; the keys' values come
    // with each partial stage.
    int row_value[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) row_value[r] = smem.row_value[qb][get<0>(tScS_rc(r, 0))];

    // Software pipeline across key blocks: S_j = Q K_j is issued together with O += P_{j-1} V_{j-1}, so the
    // tensor cores run the second GEMM of one block while this warpgroup does the softmax of the next. P_{j-1}
    // lives in its own registers (tOrP) because acc_s is overwritten by S_j while that GEMM still reads P, and
    // acc_o is rescaled between PV GEMMs: after S_j is issued and before O += P_{j-1} V_{j-1} is, so the
    // multiplies run while the tensor cores already have S_j (rescaling before S_j's issue left them idle for
    // that long: up to 2.7% of the forward, bench_results/RESULTS.md). Two stages let K_{j+1} load while S_j reads
    // K_j, and V_j while the PV GEMM of block j - 1 reads V_{j-1}.
    static_assert(Traits::kStages >= 2, "K and V of the next block load while the current block is computed");
    Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor scores = acc_rowcol(acc_s);
    Tensor acc_o_rc = acc_rowcol(acc_o);
    Tensor tOrP = make_tensor<Element>(acc_as_a_operand_layout(acc_s.layout()));

    // Masks a freshly computed score tile if the producer classified it as partial, with the keys' mask values
    // of its stage, in parts of 64 keys: the causal test only where a part crosses the diagonal for this
    // warpgroup's rows, elsewhere the mask values alone (mask_tile_values). On deep trees most partial tiles lie
    // below the diagonal; of the diagonal tile, which every item computes first and alone, the second warpgroup's
    // first part does. Having the producer classify the parts too, so that full parts skip the mask, held back the
    // stage (a round of bound loads ahead of k_full) and cost 0.3-2.1% (bench_results/RESULTS.md, twenty-ninth
    // session). The kind is read right after k_full; the stage is released only after this.
    const int wg = tid / 128;
    auto mask_if_partial = [&](TileKind kind, int n_block, int s) {
        if (kind != TileKind::kPartial) return;
        const int *key_value = smem.key_value[s];
        const int diag_local = diag + row0 - n_block * kBlockN;
        auto key_value_of = [&](int c) { return key_value[get<1>(tScS_rc(0, c))]; };
        constexpr int kPartKeys = 64;
        static_assert(kBlockN % kPartKeys == 0, "key blocks are whole parts");
        constexpr int kParts = kBlockN / kPartKeys;
        constexpr int kPartCols = decltype(size<1>(scores))::value / kParts;
        // The view's columns run left to right (acc_rowcol): key part h is view columns [h, h + 1) * kPartCols.
        for_each(make_seq<kParts>{}, [&](auto h_) {
            constexpr int h = decltype(h_)::value;
            constexpr int kBegin = h * kPartCols, kEnd = (h + 1) * kPartCols;
            // The part's last key against this warpgroup's first row: the pair furthest past the diagonal.
            if ((h + 1) * kPartKeys - 1 - wg * 64 > diag_local) {
                mask_tile_values</*kTransposed=*/false, /*kCausalTest=*/true, kBegin, kEnd>(
                    scores, tScS_rc, diag_local, row_value, key_value_of);
            } else {
                mask_tile_values</*kTransposed=*/false, /*kCausalTest=*/false, kBegin, kEnd>(
                    scores, tScS_rc, diag_local, row_value, key_value_of);
            }
        });
    };
    // P in bf16/fp16, held in the A-operand layout of the PV wgmma (the same registers, reinterpreted).
    auto convert_p = [&]() {
        Tensor p = to_type<Element>(acc_s);
        CUTE_UNROLL
        for (int i = 0; i < size(p); ++i) tOrP(i) = p(i);
    };

    float factor[kRows];  // the rescale the last softmax owes acc_o, applied before the next PV GEMM
    bool rescale_o = false;  // whether any row of the warp owes one (update_scores)
    wait_full(smem.k_full[cur.stage], cur.phase);
    int n_block = smem.stage_block[cur.stage];
    if (n_block != kNoBlock) {
        // Prologue: block 0 alone. acc_o is still zero, so block 0's factor is not applied.
        {
            const int s = cur.stage;
            const TileKind kind = static_cast<TileKind>(smem.stage_kind[s]);
            wgmma_issue</*kZeroInit=*/true>(mma_s, tSrQ, tSrK(_, _, _, s), acc_s);
            warpgroup_wait<0>();
            warpgroup_fence_operand(acc_s);
            mask_if_partial(kind, n_block, s);
            release(smem.k_empty[s]);
            softmax.update_scores(scores, params.softmax_scale_log2, factor);
            convert_p();
        }
        // `v_cur` is the stage holding V of the block whose probabilities sit in tOrP; `cur` is the stage of
        // the next key block, whose k_full has already been waited for when an iteration starts.
        cur.advance();
        wait_full(smem.k_full[cur.stage], cur.phase);
        while (true) {
            const int s = cur.stage;
            n_block = smem.stage_block[s];
            if (n_block == kNoBlock) break;
            const TileKind kind = static_cast<TileKind>(smem.stage_kind[s]);

            wgmma_issue</*kZeroInit=*/true>(mma_s, tSrQ, tSrK(_, _, _, s), acc_s);
            if (rescale_o) softmax.rescale(acc_o_rc, factor);
            wait_full(smem.v_full[v_cur.stage], v_cur.phase);
            wgmma_issue</*kZeroInit=*/false>(mma_o, tOrP, tOrV(_, _, _, v_cur.stage), acc_o);
            // Batches retire in order: one left pending means S_j is done and only the PV GEMM may still run.
            warpgroup_wait<1>();
            warpgroup_fence_operand(acc_s);
            mask_if_partial(kind, n_block, s);
            release(smem.k_empty[s]);
            rescale_o = softmax.update_scores(scores, params.softmax_scale_log2, factor);

            // The next block's K (or the end marker) is waited for here, before waiting for the PV GEMM: ptxas
            // hoists the wgmma wait to the top of its basic block, which would put it ahead of the softmax
            // above and serialise the two again; the mbarrier wait loop ends the block. The producer needs
            // nothing from this iteration to deliver that K: its stage was released when S_{j-1} retired, and
            // the one V load queued before it (V_{j-1}) reuses the stage of V_{j-3}, released two iterations
            // ago, so this cannot deadlock.
            const int v_stage = v_cur.stage;
            v_cur.advance();
            cur.advance();
            wait_full(smem.k_full[cur.stage], cur.phase);

            warpgroup_wait<0>();
            // Keeps tOrP and acc_o pinned to their registers until here: the compiler sees the wgmma read P
            // and write acc_o at issue, and would otherwise reuse or read them while the GEMM is in flight.
            warpgroup_fence_operand(tOrP);
            warpgroup_fence_operand(acc_o);
            release(smem.v_empty[v_stage]);
            convert_p();
        }
        // Epilogue of the pipeline: the last block's O += P V.
        if (rescale_o) softmax.rescale(acc_o_rc, factor);
        wait_full(smem.v_full[v_cur.stage], v_cur.phase);
        wgmma_issue</*kZeroInit=*/false>(mma_o, tOrP, tOrV(_, _, _, v_cur.stage), acc_o);
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_o);
        release(smem.v_empty[v_cur.stage]);
        v_cur.advance();
    }
    // The end marker's stage goes back to the producer (it reads nothing else of it).
    release(smem.k_empty[cur.stage]);
    cur.advance();

    // ---- epilogue: normalise; O goes through this warpgroup's rows of the Q tile (which its S GEMMs no longer
    // read: all of them have retired) and out as 16-byte row pieces; then the LSE ----
    float lse[kRows];
    softmax.finalize(acc_o_rc, params.softmax_scale, lse);
    Tensor rO = to_type<Element>(acc_o);
    store_column_pairs(rO, thr_o.partition_C(sQ), smem.q[qb], smem.q[qb]);
    cutlass::arch::NamedBarrier::sync(128, wg);  // this warpgroup's O rows are in shared memory
    const int wg_row0 = row0 + wg * 64;
    Element *out = static_cast<Element *>(params.out) + int64_t(q_offset + wg_row0) * params.o_row_stride +
                   int64_t(head) * params.o_head_stride;
    store_tile_16b<128>(local_tile(sQ, Shape<_64, Int<kHeadDim>>{}, make_coord(wg, _0{})), out, params.o_row_stride,
                        seqlen_q - wg_row0, params.shape.head_dim, tid % 128);
    // This thread is done with the buffer: its O reads and writes come before the producer's next TMA load
    // into it (async proxy).
    cutlass::arch::fence_view_async_shared();
    release(smem.q_empty[qb]);
    // The thread holding column 0 of a row (first lane of each quad) writes that row's LSE.
    if (get<1>(tScS_rc(0, 0)) == 0) {
        float *lse_out = params.softmax_lse + int64_t(head) * params.shape.total_q + q_offset;
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
            const int row = row0 + get<0>(tScS_rc(r, 0));
            if (row < seqlen_q) lse_out[row] = lse[r];
        }
    }
}

template <typename Traits, bool kCausal, class TmaQ, class TmaK, class TmaV>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    fwd_kernel(const __grid_constant__ FwdParams params, const __grid_constant__ TmaQ tma_q,
               const __grid_constant__ TmaK tma_k, const __grid_constant__ TmaV tma_v) {
#if defined(__CUDA_ARCH__) && !defined(CUTE_ARCH_MMA_SM90A_ENABLED)
    // This unit is also compiled for the other targets of the build; the dispatcher launches the sm90 path
    // only on compute capability 9.0, where the sm_90a code runs.
    __trap();
#else
    using Storage = typename Traits::SharedStorage;
    extern __shared__ __align__(1024) char smem_raw[];
    Storage &smem = *reinterpret_cast<Storage *>(smem_raw);

    // A CTA runs items blockIdx.x, then (persistent) whichever the item counter hands its producer.
    const int items = int(fwd_item_count<Traits::kBlockM>(params));  // the launcher checked that it fits
    auto live = [&](TileCoord it) {  // rows of the query block within its sequence
        return it.block * Traits::kBlockM < params.cu_seqlens_q[it.batch + 1] - params.cu_seqlens_q[it.batch];
    };
    if constexpr (!Traits::kPersistent) {
        if (!live(fwd_item<Traits::kBlockM>(params, blockIdx.x))) return;
    }

    if (threadIdx.x == 0) {
        CUTE_UNROLL
        for (int b = 0; b < Traits::kQBuffers; ++b) {
            TxBarrier::init(&smem.q_full[b], 32);  // every producer lane: they write the item's row values
            TxBarrier::init(&smem.q_empty[b], Traits::kConsumerThreads);
        }
        CUTE_UNROLL
        for (int s = 0; s < Traits::kStages; ++s) {
            TxBarrier::init(&smem.k_full[s], 32);  // every producer lane (pipeline.h): they write the key values
            TxBarrier::init(&smem.v_full[s], 1);
            TxBarrier::init(&smem.k_empty[s], Traits::kConsumerThreads);  // pipeline.h: every consumer thread
            TxBarrier::init(&smem.v_empty[s], Traits::kConsumerThreads);
        }
        cutlass::arch::fence_barrier_init();
    }
    __syncthreads();

    // The K and V rings' cursors carry over from item to item (a cursor each: an item's end marker takes a K stage
    // and no V stage); item k of the CTA uses Q buffer k % kQBuffers.
    StageCursor<Traits::kStages> k_cur, v_cur;
    auto q_buffer = [](int k) { return k % Traits::kQBuffers; };
    auto q_phase = [](int k) { return uint32_t(k / Traits::kQBuffers) & 1u; };
    if (threadIdx.x < 128) {
        cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
        if (threadIdx.x < 32) {
            const int group = params.shape.num_heads_q / params.shape.num_heads_kv;
            int k = 0;
            for (int item = blockIdx.x; item < items;) {
                const TileCoord it = fwd_item<Traits::kBlockM>(params, item);
                int next = 0;
                if (live(it)) {
                    const int q_offset = params.cu_seqlens_q[it.batch];
                    const int seqlen_q = params.cu_seqlens_q[it.batch + 1] - q_offset;
                    const int k_offset = params.cu_seqlens_k[it.batch];
                    const int seqlen_k = params.cu_seqlens_k[it.batch + 1] - k_offset;
                    const SeqMaskInfo seq = make_seq_mask_info(params, kCausal, it.batch, seqlen_q, seqlen_k);
                    produce<Traits>(params, seq, smem, tma_q, tma_k, tma_v, it.block, it.head, it.head / group,
                                    q_offset, k_offset, item, q_buffer(k), q_phase(k), k_cur, v_cur, next);
                    ++k;
                } else if constexpr (Traits::kPersistent) {
                    if (threadIdx.x == 0) next = atomicAdd(params.fwd_item_counter, 1);
                }
                if constexpr (!Traits::kPersistent) break;
                item = int(gridDim.x) + __shfl_sync(0xffffffffu, next, 0);
            }
            if constexpr (Traits::kPersistent) {
                // End of the work: item -1 in the next Q buffer, with no bytes.
                wait_empty(smem.q_empty[q_buffer(k)], q_phase(k));
                if (threadIdx.x == 0) smem.q_item[q_buffer(k)][0] = -1;
                TxBarrier::arrive(&smem.q_full[q_buffer(k)]);
            }
        }
    } else {
        cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
        for (int k = 0;; ++k) {
            const int qb = q_buffer(k);
            wait_full(smem.q_full[qb], q_phase(k));
            const int item = smem.q_item[qb][0];
            if (item < 0) break;
            const TileCoord it = fwd_item<Traits::kBlockM>(params, item);
            consume<Traits, kCausal>(params, smem, it.block, it.head, smem.q_item[qb][1], smem.q_item[qb][2],
                                     smem.q_item[qb][3], qb, k_cur, v_cur);
            if constexpr (!Traits::kPersistent) break;
        }
    }
#endif
}

}  // namespace flash_tree_attn::sm90
