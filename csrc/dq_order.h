// The order of the deterministic backward's dQ additions, both paths. fp32 addition is not associative, so
// dQ comes out bitwise the same run to run only if every query block's rows receive the key blocks'
// contributions in one fixed order whatever the CTAs' timing. Each (sequence, query head, query block) has a
// counter, zeroed before the backward. A key block adds its dQ tile once the counter holds its predecessor's
// index + 1 (0 when it has none), then stores its own index + 1.
// The order follows the CTAs' launch order (tile_order.h), so a CTA waits only on CTAs the GPU started
// earlier, which wait only on earlier ones still: the wait cannot deadlock.
// - With a tree, increasing key block: the predecessor is the nearest lower key block whose tile in that
//   query block is not empty (prev_key_block). The tree's heavy early key blocks start first, as without
//   deterministic=True, and the CTAs walk their items query block by query block (all heads of a block, then
//   the next), so a later key block's items wait only until the early blocks' walks have passed them.
// - Without a tree, decreasing key block, the CTAs of a (sequence, head) launched last key block first. Under
//   causality a key block's first query block is its diagonal one, where no higher key block adds, so every CTA
//   adds from its first step on and trails the one above it by two query blocks. In increasing order key block n
//   would wait for every lower one to reach its diagonal, about 2n query blocks.
#pragma once

#include "block_range.h"
#include "params.h"

namespace flash_tree_attn {

__forceinline__ __device__ int load_acquire(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__forceinline__ __device__ void store_release(int *p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// The turn of key block n_block on query block m_block of query head `head`: its counter and the value that
// lets it add. Counters are laid out for query blocks of kBlockM rows (the binding allocates them for
// kBwdSemaphoreBlockM rows, which divides kBlockM; larger blocks use a prefix of each head's row). Called by a
// whole warp (prev_key_block scans with warp ballots), and only when params.deterministic.
struct DqTurn {
    int *counter;
    int ready_value;
};
template <int kBlockM, int kBlockN>
__device__ __forceinline__ DqTurn dq_turn(const BwdParams &p, const SeqMaskInfo &seq, int batch, int head, int m_block,
                                          int n_block) {
    static_assert(kBlockM % kBwdSemaphoreBlockM == 0, "the counters are allocated per kBwdSemaphoreBlockM rows");
    const int m_slots = ceil_div(p.shape.max_seqlen_q, kBlockM);
    int *counter = dq_counter(p, m_slots, batch, head, m_block);
    int prev;
    if (p.tree_start_q != nullptr) {
        prev = prev_key_block<kBlockM, kBlockN>(seq, m_block, n_block);
    } else {
        // Without a tree a query block's non-empty key blocks are a prefix of its row: the one above or none.
        prev = classify_tile<kBlockM, kBlockN>(seq, m_block, n_block + 1) != TileKind::kEmpty ? n_block + 1 : -1;
    }
    return {counter, prev + 1};
}

// One thread: spins until the predecessor has added its tile (its additions are then visible to this thread).
__forceinline__ __device__ void wait_turn(const DqTurn &t) {
    while (load_acquire(t.counter) != t.ready_value) {
    }
}
// One thread, once this key block's additions are complete and ordered before it (the caller's fence).
__forceinline__ __device__ void pass_turn(const DqTurn &t, int n_block) { store_release(t.counter, n_block + 1); }

}  // namespace flash_tree_attn
