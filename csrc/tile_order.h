// Order of the backward's CTAs, both paths: which (key block, sequence, key/value head) each linear block
// index runs. The GPU hands out CTAs in increasing index, so this is the order in which work starts, and it
// has to serve two things:
// - Heaviest first. Under a tree mask (depth-first order) earlier key blocks can be seen by many times more
//   queries than the average one. A grid that walked one head after another would start the heavy key
//   blocks of the last heads when the GPU is nearly done, and they would set the run time alone; in a GRPO
//   tree the prompt's key blocks carry tens of times the work of a response's, so that tail was most of the
//   backward (31% of it on grpo_P1024_n16_R2048, measured on the H200).
// - Reuse in L2. The key blocks of one (sequence, head) stream the same Q, dO and dQ rows; run side by side
//   they share those reads. Ordering by weight alone over every head (tried) spreads the SMs over all heads
//   at once and cost 12% of the dense causal backward.
// So, with a tree, key blocks are taken in rank blocks of kRankBlock: key blocks 0..7 of every (sequence,
// head), one (sequence, head) after the other, then key blocks 8..15, and so on. About sixteen heads are in
// flight at a time, each with eight key blocks sharing their loads, and every head's heavy blocks start in
// the first rank block (rank blocks of 16 measured the same). Without a tree no key block sees more than
// twice the average number of queries (causal) or all see the same (not causal), so the tail is short and
// L2 reuse weighs more: the rank block is the whole (sequence, head), i.e. one (sequence, head) after the
// other, key block 0 (the heaviest under causality) first. (The forward keeps one (sequence, head) at a
// time, last query block first: its tiles weigh about the same across heads, and the K/V reuse of that
// order measured faster there; fwd_item below is that order for the sm90 forward's work items.)
#pragma once

#include <cstdint>

#include "params.h"

namespace flash_tree_attn {

constexpr int kRankBlock = 8;

struct TileCoord {
    int block;  // key block (backward) or query block (forward)
    int batch;
    int head;   // key/value head (backward) or query head (forward)
};

// Number of tiles (CTAs, or the forward's work items) for `blocks` blocks per (sequence, head); the caller checks
// that it fits in int.
__host__ __device__ inline int64_t tile_grid_size(int blocks, int batch, int heads) {
    return int64_t(blocks) * batch * heads;
}
inline bool tile_grid_fits(int blocks, int batch, int heads) { return tile_grid_size(blocks, batch, heads) <= INT32_MAX; }

// The tile of linear block index `index`, for rank blocks of `rank_block` key blocks (1 <= rank_block <= blocks;
// rank_block == blocks is one (sequence, head) after the other).
__device__ __forceinline__ TileCoord tile_at(int index, int blocks, int batch, int heads, int rank_block) {
    const int units = batch * heads;
    const int per_rank_block = rank_block * units;
    const int rank = index / per_rank_block;
    const int within = index - rank * per_rank_block;
    const int first = rank * rank_block;
    const int ranks = min(rank_block, blocks - first);  // the last rank block may be short
    const int unit = within / ranks;
    TileCoord t;
    t.block = first + (within - unit * ranks);
    t.batch = unit / heads;
    t.head = unit - t.batch * heads;
    return t;
}

// The backward's grid and the tile of each of its CTAs, for key blocks of kBlockN: the launchers and the
// kernels of both paths derive the block count from the same shape here.
template <int kBlockN>
inline int64_t bwd_grid_size(const BwdParams &p) {
    return tile_grid_size(ceil_div(p.shape.max_seqlen_k, kBlockN), p.shape.batch, p.shape.num_heads_kv);
}
// The deterministic backward without a tree takes each (sequence, head)'s key blocks last first instead, the
// order its dQ additions follow (dq_order.h).
template <int kBlockN>
__device__ __forceinline__ TileCoord bwd_tile(const BwdParams &p) {
    const int blocks = ceil_div(p.shape.max_seqlen_k, kBlockN);
    const bool tree = p.tree_start_q != nullptr;
    const int rank_block = tree ? min(kRankBlock, blocks) : blocks;
    TileCoord t = tile_at(blockIdx.x, blocks, p.shape.batch, p.shape.num_heads_kv, rank_block);
    if (p.deterministic && !tree) t.block = blocks - 1 - t.block;
    return t;
}

// The sm90 forward's work items (query block, sequence, query head) in the order its CTAs take them: one
// (sequence, head) after the other, the last query block (the heaviest under causality) first.
template <int kBlockM>
__host__ __device__ inline int64_t fwd_item_count(const FwdParams &p) {
    return tile_grid_size(ceil_div(p.shape.max_seqlen_q, kBlockM), p.shape.batch, p.shape.num_heads_q);
}
template <int kBlockM>
__device__ __forceinline__ TileCoord fwd_item(const FwdParams &p, int index) {
    const int blocks = ceil_div(p.shape.max_seqlen_q, kBlockM);
    const int unit = index / blocks;
    TileCoord t;
    t.block = blocks - 1 - (index - unit * blocks);
    t.batch = unit % p.shape.batch;
    t.head = unit / p.shape.batch;
    return t;
}

}  // namespace flash_tree_attn
