// Tile shapes, shared-memory layouts, wgmma atoms and the shared-storage struct of the sm90 backward.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "params.h"
#include "sm90/fwd_traits.h"

namespace flash_tree_attn::sm90 {

using namespace cute;

// What both backward configurations share: one producer warpgroup (the TMA warp and, in BwdTraits, the dQ writer
// warp) and two consumer warpgroups with their register split, a ring of two Q / dO stages, and the state the
// producer hands over with each stage (SharedStorage of each configuration derives from StageState).
// The register split after setmaxnreg is each configuration's (kProducerRegs_ / kConsumerRegs_): ptxas spills
// where either side has too few, and which side that is depends on the configuration.
template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kProducerRegs_, int kConsumerRegs_>
struct BwdTraitsBase {
    using Element = Element_;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kBlockM = kBlockM_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kConsumerWarpgroups = 2;
    static constexpr int kStages = 2;
    static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
    static constexpr int kNThreads = 128 + kConsumerThreads;
    static constexpr int kProducerRegs = kProducerRegs_;
    static constexpr int kConsumerRegs = kConsumerRegs_;
    static_assert(register_split_fits(kProducerRegs, kConsumerRegs, kConsumerThreads),
                  "the warpgroups' registers after setmaxnreg exceed what the CTA is launched with");
    static_assert(kBlockM % kBoundsGranule == 0 && kBlockN % kBoundsGranule == 0);

    static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(Element);
    static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * sizeof(Element);

    struct StageState {
        // Per stage, for the query rows it holds: log2-domain LSE (+inf where the row sees nothing or lies past
        // the sequence, so P = 0 there) and D = rowsum(dO * O) - dLSE.
        alignas(16) float lse_log2[kStages][kBlockM];
        alignas(16) float dsum[kStages][kBlockM];
        // The mask values (tree_mask.h) of a stage's query rows: their tree starts, kQueryOutside past the
        // sequence.
        alignas(16) int query_value[kStages][kBlockM];
        alignas(8) uint64_t kv_full;
        uint64_t q_full[kStages];  // Q, dO (TMA) and the row statistics of a stage
        uint64_t q_empty[kStages];
        int stage_block[kStages];  // query block, or kNoBlock to end the consumers' loop
        int stage_kind[kStages];
    };
};

// One CTA owns kBlockN = 128 keys of one key/value head (64 per consumer warpgroup) and walks the query
// blocks (kBlockM = 64 rows) that see them. Scores are computed transposed, S^T = K Q^T, so that each
// warpgroup holds whole key rows: P^T and dS^T then feed dV += P^T dO and dK += dS^T Q straight from
// registers, and dK/dV stay in registers for the whole CTA. dQ = dS K needs every key, so dS^T goes through
// shared memory and the two warpgroups split dQ's head dim; the dQ tile then goes through shared memory to a
// writer warp of the producer warpgroup, which adds it to the fp32 accumulator with TMA reduce-adds, so the
// consumers never wait on global atomics.
// Registers: 56 for the producer warpgroup, 224 for the consumers. With 24 / 240 the producer's walks, TMA
// issue and dQ writes spilled (ptxas, head dim 128: 400 bytes stored, 448 loaded, all in the producer); the
// consumers' step needs no more than 224 up to head dim 128, and 56 leave the producer without spills.
template <int kHeadDim_, typename Element_>
struct BwdTraits : BwdTraitsBase<Element_, kHeadDim_, /*kBlockM=*/64, /*kBlockN=*/128, /*kProducerRegs=*/56,
                                 /*kConsumerRegs=*/224> {
    using Base = typename BwdTraits::BwdTraitsBase;  // the base named above, not its arguments again
    using typename Base::Element;
    using Base::kBlockM, Base::kBlockN, Base::kConsumerWarpgroups, Base::kHeadDim, Base::kStages;
    static constexpr bool kSplitHeadDim = false;
    static_assert(kHeadDim <= 128, "dK and dV accumulators of 64 x kHeadDim per warpgroup must fit in registers");

    using TiledMmaSdP = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockM>, Int<kHeadDim>>>(),
        Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>{}));
    using TiledMmadKV = decltype(make_tiled_mma(
        GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockM>>, GMMA::Major::K,
                             GMMA::Major::MN>(),
        Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>{}));
    using TiledMmadQ = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float,
                             Shape<Int<kBlockM>, Int<kHeadDim / kConsumerWarpgroups>, Int<kBlockN>>, GMMA::Major::MN,
                             GMMA::Major::MN>(),
        Layout<Shape<_1, Int<kConsumerWarpgroups>, _1>>{}));

    using Atom = KMajorAtom<Element, kHeadDim>;
    using SmemLayoutK = decltype(tile_to_shape(Atom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    // K as the B operand of dQ = dS K: (head dim, keys), the same bytes seen transposed.
    using SmemLayoutKt =
        decltype(composition(SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Step<_2, _1>{})));
    using SmemLayoutQ = decltype(tile_to_shape(Atom{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
    // Q and dO as the B operands of dK += dS^T Q and dV += P^T dO: (head dim, queries).
    using SmemLayoutQt = decltype(composition(
        SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{}, Step<_2, _1, _3>{})));
    // dS as the A operand of dQ = dS K, queries contiguous (two buffers, alternating by step), and the same
    // bytes as (keys, queries) for the warpgroups that write dS^T.
    using SmemLayoutdS = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<Element>{},
                                                Shape<Int<kBlockM>, Int<kBlockN>, _2>{}));
    using SmemLayoutdSt = decltype(composition(
        SmemLayoutdS{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, _2>{}, Step<_2, _1, _3>{})));
    // dQ of one step in fp32, 128-byte swizzled, which TMA reads as boxes of 32 columns; the consumers' column-pair
    // stores fall in different banks where they exchange the pairs of odd rows (kDqExchange below).
    using SmemLayoutdQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float>{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    // The dQ stores' exchange for odd rows (store_column_pairs_xor): a thread's value pairs i and i ^ 8 lie two
    // 8-column groups apart in one 32-column swizzle row where each warpgroup's columns start on one, i.e. at head
    // dims 64 and 128; at 96 the stores keep their conflicts.
    static constexpr int kDqExchange = (kHeadDim / kConsumerWarpgroups) % 32 == 0 ? 8 : 0;

    struct SharedStorage : Base::StageState {
        alignas(1024) Element k[cosize_v<SmemLayoutK>];
        alignas(1024) Element v[cosize_v<SmemLayoutK>];
        alignas(1024) Element q[cosize_v<SmemLayoutQ>];
        alignas(1024) Element dout[cosize_v<SmemLayoutQ>];
        alignas(1024) Element ds[cosize_v<SmemLayoutdS>];
        // dQ of a step, handed from the consumers to the dQ writer warp; two buffers, alternating by step, so
        // the consumers write one while TMA still reads the other.
        alignas(1024) float dq[2][cosize_v<SmemLayoutdQ>];
    };
    static constexpr int kSmemBytes = int(sizeof(SharedStorage));
    static_assert(kSmemBytes <= 227 * 1024, "tile configuration exceeds Hopper shared memory");
};

// Backward for head dims whose dK and dV do not fit in registers per 64 keys (192, 256): one CTA owns kBlockN =
// 64 keys and the two consumer warpgroups split the head dim of dK, dV and dQ instead of the keys. Each
// warpgroup computes S^T and dP^T for the 64 keys and its 32 of the block's 64 queries (the two halves of a
// 64 x 64 tile), writes P^T and dS^T to shared memory, and after one barrier both run dV += P^T dO, dK += dS^T Q
// and dQ = dS K over their half of the head dim with every operand from shared memory. dK and dV stay in
// registers for the whole CTA (2 x 64 x kHeadDim / 2 per warpgroup); dQ (64 x kHeadDim / 2 per warpgroup) is
// added to the fp32 accumulator by global reductions through a small per-warp staging tile, as shared memory
// has no room for a dQ tile beside the two-stage Q and dO ring (208 KB of K, V, Q and dO at head dim 256).
// Registers: 24 / 240; the consumers' step spills with 224 at head dim 256.
template <int kHeadDim_, typename Element_>
struct BwdSplitDimTraits : BwdTraitsBase<Element_, kHeadDim_, /*kBlockM=*/64, /*kBlockN=*/64, /*kProducerRegs=*/24,
                                         /*kConsumerRegs=*/240> {
    using Base = typename BwdSplitDimTraits::BwdTraitsBase;
    using typename Base::Element;
    using Base::kBlockM, Base::kBlockN, Base::kConsumerThreads, Base::kHeadDim, Base::kStages;
    static constexpr bool kSplitHeadDim = true;
    static constexpr int kHalfDim = kHeadDim / 2;
    static_assert(kHalfDim % 32 == 0, "each warpgroup's half of the head dim must be whole 64-byte swizzle rows");

    // S^T and dP^T: (64 keys, 64 queries), the warpgroups side by side along the queries.
    using TiledMmaSdP = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockM / 2>, Int<kHeadDim>>>(),
        Layout<Shape<_1, _2, _1>>{}));
    // dV += P^T dO and dK += dS^T Q: (64 keys, head dim), the warpgroups side by side along the head dim.
    using TiledMmadKV = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kHalfDim>, Int<kBlockM>>, GMMA::Major::K,
                             GMMA::Major::MN>(),
        Layout<Shape<_1, _2, _1>>{}));
    // dQ = dS K: (64 queries, head dim), likewise.
    using TiledMmadQ = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, Shape<Int<kBlockM>, Int<kHalfDim>, Int<kBlockN>>,
                             GMMA::Major::MN, GMMA::Major::MN>(),
        Layout<Shape<_1, _2, _1>>{}));

    // The swizzle row divides each warpgroup's half of the head dim, so its B operands (dO, Q and K seen
    // transposed, the head dim contiguous) start on a swizzle row.
    using Atom = KMajorAtom<Element, kHalfDim>;
    using SmemLayoutK = decltype(tile_to_shape(Atom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    using SmemLayoutKt =
        decltype(composition(SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Step<_2, _1>{})));
    using SmemLayoutQ = decltype(tile_to_shape(Atom{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
    using SmemLayoutQt = decltype(composition(
        SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{}, Step<_2, _1, _3>{})));
    // P^T and dS^T as (keys, queries), queries contiguous: the A operand of dV / dK (K-major). dS is the same
    // bytes as (queries, keys): dQ's A operand, MN-major. One buffer each (shared memory holds no second).
    using SmemLayoutPt = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{}, Shape<Int<kBlockN>, Int<kBlockM>>{}));
    using SmemLayoutdS =
        decltype(composition(SmemLayoutPt{}, make_ordered_layout(Shape<Int<kBlockM>, Int<kBlockN>>{}, Step<_2, _1>{})));
    // dQ reaches the accumulator through a per-warp staging tile of 8 rows x 32 columns: each lane holds two
    // neighbouring columns of a row in the wgmma accumulator, which as 8-byte reductions updates one 32-byte
    // sector of 8 rows per instruction; read back row-contiguous, each reduction instruction updates four whole
    // 128-byte lines (the L2 ran at 85% of its throughput on the 8-byte form). Rows padded to 40 floats: a half
    // warp's 8-byte stores (4 rows x 8 columns) then start 8 banks apart and cover the 32 banks once, 2 wavefronts
    // per store (with 36, rows r and r + 1 shared 4 banks: 4 wavefronts); each 16-byte load reads whole rows, 4
    // wavefronts whatever the padding.
    static constexpr int kDqStageRows = 8;
    static constexpr int kDqStageCols = 32;
    static constexpr int kDqStageStride = kDqStageCols + 8;

    struct SharedStorage : Base::StageState {
        alignas(1024) Element k[cosize_v<SmemLayoutK>];
        alignas(1024) Element v[cosize_v<SmemLayoutK>];
        alignas(1024) Element q[cosize_v<SmemLayoutQ>];
        alignas(1024) Element dout[cosize_v<SmemLayoutQ>];
        alignas(1024) Element pt[cosize_v<SmemLayoutPt>];
        alignas(1024) Element dst[cosize_v<SmemLayoutPt>];
        alignas(16) float dq_stage[kConsumerThreads / 32][kDqStageRows][kDqStageStride];
        int stage_head[kStages];  // per stage, the query head of its work item: where its dQ goes
    };
    static constexpr int kSmemBytes = int(sizeof(SharedStorage));
    static_assert(kSmemBytes <= 227 * 1024, "tile configuration exceeds Hopper shared memory");
};

// Named barriers of the backward (ids above the one hardware barrier __syncthreads uses are offset by
// CUTLASS's NamedBarrier, which leaves ids 0-7). kDsReady: the consumers' dS^T (and, split by head dim, P^T)
// halves are in shared memory. kDqFull + b / kDqEmpty + b: the handshake between the consumers and the dQ
// writer warp over dQ buffer b. kEpilogue + w: consumer warpgroup w's dK and dV rows are in shared memory.
// kConsumersDone: both consumer warpgroups have retired their last wgmma (the split kernel's epilogue then
// reuses K and V). In the split kernel only, which has no dQ writer and so takes the ids of kDqFull and kDqEmpty:
// kPtFree, both warpgroups' GEMMs of the previous step have read P^T and dS^T; kDqTurn, the deterministic mode's
// dQ turn (dq_order.h) has come, and then, all of the step's dQ additions are done.
enum BwdBarrier : uint32_t {
    kDsReady = 0,
    kDqFull = 1,
    kDqEmpty = 3,
    kEpilogue = 5,
    kConsumersDone = 7,
    kPtFree = 1,
    kDqTurn = 3
};

// The configuration of each head-dim bucket: warpgroups split the keys up to 128, the head dim above.
template <int kHeadDim, typename Element>
struct BwdConfig {
    using Traits = std::conditional_t<(kHeadDim <= 128), BwdTraits<kHeadDim, Element>,
                                      BwdSplitDimTraits<kHeadDim, Element>>;
};

}  // namespace flash_tree_attn::sm90
