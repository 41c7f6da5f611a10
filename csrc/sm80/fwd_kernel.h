// sm80 forward kernel: one CTA per (query block, sequence, query head). K/V tiles stream through one
// shared-memory buffer each with cp.async: V of the current tile loads during S = Q K^T, K of the next
// non-empty tile during softmax and O += P V. Empty tiles are never loaded; full tiles skip the mask.
#pragma once

#include <cute/tensor.hpp>

#include "block_range.h"
#include "grid_units.h"
#include "params.h"
#include "softmax.h"
#include "sm80/fwd_traits.h"
#include "sm80/utils.h"

namespace flash_tree_attn::sm80 {

template <typename Traits, bool kCausal>
__global__ void __launch_bounds__(Traits::kNThreads, 1) fwd_kernel(const __grid_constant__ FwdParams params) {
    using Element = typename Traits::Element;
    constexpr int kBlockM = Traits::kBlockM;
    constexpr int kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim;

    extern __shared__ __align__(128) char smem_raw[];

    // Heavier query blocks (later rows see more keys) are launched first.
    const int m_block = gridDim.x - 1 - blockIdx.x;
    const uint32_t unit = grid_unit();  // sequences fastest, then query heads (grid_units.h)
    if (unit >= int64_t(params.shape.batch) * params.shape.num_heads_q) return;
    const int batch = int(unit % uint32_t(params.shape.batch));
    const int head = int(unit / uint32_t(params.shape.batch));
    const int tid = threadIdx.x;

    const int q_offset = params.cu_seqlens_q[batch];
    const int seqlen_q = params.cu_seqlens_q[batch + 1] - q_offset;
    if (m_block * kBlockM >= seqlen_q) return;
    const int k_offset = params.cu_seqlens_k[batch];
    const int seqlen_k = params.cu_seqlens_k[batch + 1] - k_offset;
    const int head_kv = head / (params.shape.num_heads_q / params.shape.num_heads_kv);
    const int head_dim = params.shape.head_dim;

    const SeqMaskInfo seq = make_seq_mask_info(params, kCausal, batch, seqlen_q, seqlen_k);
    const bool has_tree = kCausal && seq.has_tree();

    // ---- global and shared tensors ----
    Tensor mQ = make_tensor(make_gmem_ptr(static_cast<const Element *>(params.q) + int64_t(q_offset) * params.q_row_stride +
                                          int64_t(head) * params.q_head_stride),
                            make_shape(seqlen_q, Int<kHeadDim>{}), make_stride(params.q_row_stride, _1{}));
    Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));
    Tensor mK = make_tensor(make_gmem_ptr(static_cast<const Element *>(params.k) + int64_t(k_offset) * params.k_row_stride +
                                          int64_t(head_kv) * params.k_head_stride),
                            make_shape(seqlen_k, Int<kHeadDim>{}), make_stride(params.k_row_stride, _1{}));
    Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (N, D, n_blocks)
    Tensor mV = make_tensor(make_gmem_ptr(static_cast<const Element *>(params.v) + int64_t(k_offset) * params.v_row_stride +
                                          int64_t(head_kv) * params.v_head_stride),
                            make_shape(seqlen_k, Int<kHeadDim>{}), make_stride(params.v_row_stride, _1{}));
    Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));

    Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element *>(smem_raw)), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(sQ.data() + size(sQ), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::SmemLayoutKV{});
    Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});
    Tensor sVtNoSwizzle = make_tensor(sV.data().get(), typename Traits::SmemLayoutVtNoSwizzle{});
    auto &tree = *reinterpret_cast<typename Traits::TreeData *>(smem_raw + Traits::kSmemTileBytes);

    typename Traits::GmemCopyLoad gmem_copy;
    auto gmem_thr = gmem_copy.get_thread_slice(tid);
    Tensor tQgQ = gmem_thr.partition_S(gQ);
    Tensor tQsQ = gmem_thr.partition_D(sQ);
    Tensor tKgK = gmem_thr.partition_S(gK);  // (CPY, CPY_N, CPY_K, n_blocks)
    Tensor tKsK = gmem_thr.partition_D(sK);
    Tensor tVgV = gmem_thr.partition_S(gV);
    Tensor tVsV = gmem_thr.partition_D(sV);
    Tensor tQcQ = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tKVcKV = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));

    typename Traits::TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK);
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);
    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    clear(acc_o);

    auto smem_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_q = smem_copy_q.get_thread_slice(tid);
    Tensor tSsQ = smem_thr_q.partition_S(sQ);
    auto smem_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_k = smem_copy_k.get_thread_slice(tid);
    Tensor tSsK = smem_thr_k.partition_S(sK);
    auto smem_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
    auto smem_thr_v = smem_copy_v.get_thread_slice(tid);
    Tensor tOsVt = smem_thr_v.partition_S(sVt);

    // Tile-local (row, col) of every score this thread holds, as a rows x cols view.
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor tScS_rc = acc_rowcol(tScS);
    constexpr int kRows = decltype(size<0>(tScS_rc))::value;

    OnlineSoftmax<kRows> softmax;
    const int row0 = m_block * kBlockM;

    // ---- mainloop over non-empty key blocks, last to first ----
    TileWalk<kBlockM, kBlockN, /*kKeysDown=*/true> walk(m_block, key_block_end<kBlockM, kBlockN>(seq, m_block) - 1, -1);
    TileKind kind;
    int n_block = walk.next(seq, kind);
    if (n_block >= 0) {
        // K of key block n and the tree ends of its keys (zeros past the sequence), in the caller's group.
        auto load_k = [&](int n) {
            copy_tile_async(gmem_copy, tKgK(_, _, _, n), tKsK, tKVcKV, seqlen_k - n * kBlockN, head_dim);
            if (has_tree) {
                copy_values_async<kBlockN, Traits::kNThreads>(tree.end_k, params.tree_end_k + k_offset, n * kBlockN,
                                                              seqlen_k, tid);
            }
        };
        copy_tile_async(gmem_copy, tQgQ, tQsQ, tQcQ, seqlen_q - row0, head_dim);
        if (has_tree) {
            copy_values_async<kBlockM, Traits::kNThreads>(tree.start_q, params.tree_start_q + q_offset, row0, seqlen_q,
                                                          tid);
        }
        load_k(n_block);
        cute::cp_async_fence();

        while (n_block >= 0) {
            Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
            clear(acc_s);

            cute::cp_async_wait<0>();
            __syncthreads();  // K[n] (and Q) landed; every warp is done reading V of the previous tile
            copy_tile_async(gmem_copy, tVgV(_, _, _, n_block), tVsV, tKVcKV, seqlen_k - n_block * kBlockN, head_dim);
            cute::cp_async_fence();

            gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_copy_q, smem_copy_k, smem_thr_q, smem_thr_k);

            Tensor scores = acc_rowcol(acc_s);
            if (kind == TileKind::kPartial) {
                mask_tile</*kPerPair=*/false>(scores, tScS_rc, row0, n_block * kBlockN, seqlen_q, seqlen_k,
                                              seq.diag, has_tree ? tree.start_q : nullptr,
                                              has_tree ? tree.end_k : nullptr);
            }

            TileKind next_kind;
            const int n_next = walk.next(seq, next_kind);
            cute::cp_async_wait<0>();
            __syncthreads();  // V[n] landed; every warp is done reading K[n] and its tree ends
            if (n_next >= 0) {
                load_k(n_next);
                cute::cp_async_fence();
            }

            Tensor acc_o_rc = acc_rowcol(acc_o);
            softmax.update(scores, acc_o_rc, params.softmax_scale_log2);

            Tensor p = to_type<Element>(acc_s);
            Tensor tOrP = make_tensor(p.data(), acc_as_a_operand_layout(p.layout()));
            gemm_rs(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_copy_v, smem_thr_v);
            n_block = n_next;
            kind = next_kind;
        }
    }

    // ---- epilogue: normalise, stage O through shared memory, write O and LSE ----
    float lse[kRows];
    Tensor acc_o_rc = acc_rowcol(acc_o);
    softmax.finalize(acc_o_rc, params.softmax_scale, lse);

    Tensor rO = to_type<Element>(acc_o);
    Tensor sO = make_tensor(sQ.data(), typename Traits::SmemLayoutQ{});
    auto smem_copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomStore{}, tiled_mma);
    auto smem_thr_o = smem_copy_o.get_thread_slice(tid);
    Tensor taccOrO = smem_thr_o.retile_S(rO);
    Tensor taccOsO = smem_thr_o.partition_D(sO);
    __syncthreads();  // all warps are done with sQ
    copy(smem_copy_o, taccOrO, taccOsO);

    Tensor mO = make_tensor(make_gmem_ptr(static_cast<Element *>(params.out) + int64_t(q_offset) * params.o_row_stride +
                                          int64_t(head) * params.o_head_stride),
                            make_shape(seqlen_q, Int<kHeadDim>{}), make_stride(params.o_row_stride, _1{}));
    Tensor gO = local_tile(mO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));
    typename Traits::GmemCopyStore gmem_copy_o;
    auto gmem_thr_o = gmem_copy_o.get_thread_slice(tid);
    Tensor tOsO = gmem_thr_o.partition_S(sO);
    Tensor tOgO = gmem_thr_o.partition_D(gO);
    Tensor tOcO = gmem_thr_o.partition_D(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    __syncthreads();
    store_tile(gmem_copy_o, tOsO, tOgO, tOcO, seqlen_q - row0, head_dim);

    // The thread holding column 0 of a row (first lane of each quad) writes that row's LSE.
    if (get<1>(tScS_rc(0, 0)) == 0) {
        float *lse_out = params.softmax_lse + int64_t(head) * params.shape.total_q + q_offset;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const int row = row0 + get<0>(tScS_rc(r, 0));
            if (row < seqlen_q) lse_out[row] = lse[r];
        }
    }
}

}  // namespace flash_tree_attn::sm80
