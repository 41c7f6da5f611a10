// Tile shapes, shared-memory layouts, wgmma atoms and the shared-storage struct of the sm90 backward.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "params.h"
#include "sm90/fwd_traits.h"

namespace flash_tree_attn::sm90 {

using namespace cute;

// One CTA owns kBlockN = 128 keys of one key/value head (64 per consumer warpgroup) and walks the query
// blocks (kBlockM = 64 rows) that see them. Scores are computed transposed, S^T = K Q^T, so that each
// warpgroup holds whole key rows: P^T and dS^T then feed dV += P^T dO and dK += dS^T Q straight from
// registers, and dK/dV stay in registers for the whole CTA. dQ = dS K needs every key, so dS^T goes through
// shared memory and the two warpgroups split dQ's head dim; the dQ tile then goes through shared memory to a
// writer warp of the producer warpgroup, which adds it to the fp32 accumulator with TMA reduce-adds, so the
// consumers never wait on global atomics.
template <int kHeadDim_, typename Element_>
struct BwdTraits {
    using Element = Element_;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kConsumerWarpgroups = 2;
    static constexpr int kBlockM = 64;
    static constexpr int kBlockN = 64 * kConsumerWarpgroups;
    static constexpr int kStages = 2;
    static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
    static constexpr int kNThreads = 128 + kConsumerThreads;
    static constexpr int kProducerRegs = 24;
    static constexpr int kConsumerRegs = 240;
    static_assert(register_split_fits(kProducerRegs, kConsumerRegs, kConsumerThreads),
                  "the warpgroups' registers after setmaxnreg exceed what the CTA is launched with");
    static_assert(kBlockM % kBoundsGranule == 0 && kBlockN % kBoundsGranule == 0);
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
    // dQ of one step in fp32, 128-byte swizzled: the consumers' column-pair stores of 8 rows fall in different
    // banks, and TMA reads it as boxes of 32 columns.
    using SmemLayoutdQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float>{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));

    struct SharedStorage {
        alignas(1024) Element k[cosize_v<SmemLayoutK>];
        alignas(1024) Element v[cosize_v<SmemLayoutK>];
        alignas(1024) Element q[cosize_v<SmemLayoutQ>];
        alignas(1024) Element dout[cosize_v<SmemLayoutQ>];
        alignas(1024) Element ds[cosize_v<SmemLayoutdS>];
        // Per stage, for the 64 query rows it holds: log2-domain LSE (+inf where the row sees nothing or
        // lies past the sequence, so P = 0 there) and D = rowsum(dO * O) - dLSE.
        alignas(16) float lse_log2[kStages][kBlockM];
        alignas(16) float dsum[kStages][kBlockM];
        // The mask values (tree_mask.h) of a stage's query rows: their tree starts, kQueryOutside past the
        // sequence.
        alignas(16) int query_value[kStages][kBlockM];
        // dQ of a step, handed from the consumers to the dQ writer warp; two buffers, alternating by step, so
        // the consumers write one while TMA still reads the other.
        alignas(1024) float dq[2][cosize_v<SmemLayoutdQ>];
        alignas(8) uint64_t kv_full;
        uint64_t q_full[kStages];  // Q, dO (TMA) and the row statistics of a stage
        uint64_t q_empty[kStages];
        int stage_block[kStages];  // query block, or kNoBlock to end the consumers' loop
        int stage_kind[kStages];
    };
    static constexpr int kSmemBytes = int(sizeof(SharedStorage));
    static_assert(kSmemBytes <= 227 * 1024, "tile configuration exceeds Hopper shared memory");

    static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(Element);
    static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * sizeof(Element);
};

// One configuration for every head dim the sm90 backward implements: up to 128 (the static_assert above;
// tools/generate_kernels.py generates only those units). Larger head dims run the sm80 backward.
template <int kHeadDim, typename Element>
struct BwdConfig {
    using Traits = BwdTraits<kHeadDim, Element>;
};

}  // namespace flash_tree_attn::sm90
