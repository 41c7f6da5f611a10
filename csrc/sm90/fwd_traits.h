// Tile shapes, shared-memory layouts, wgmma atoms and the shared-storage struct of the sm90 forward kernel.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "params.h"

namespace flash_tree_attn::sm90 {

using namespace cute;

// K-major shared-memory atom with the widest swizzle whose row (64, 32 or 16 elements) divides the head dim:
// TMA writes it and wgmma reads it without bank conflicts.
template <typename Element, int kHeadDim>
using KMajorAtom = std::conditional_t<
    kHeadDim % 64 == 0, GMMA::Layout_K_SW128_Atom<Element>,
    std::conditional_t<kHeadDim % 32 == 0, GMMA::Layout_K_SW64_Atom<Element>, GMMA::Layout_K_SW32_Atom<Element>>>;

// setmaxnreg only moves registers between the warpgroups of a CTA: the pool is the kernel's register count
// times its threads, and ptxas gives these __launch_bounds__(threads, 1) kernels the most that bound allows,
// 64K / threads rounded down to whole 8-register units (168 for 384 threads, as it reports for each of them).
// Warpgroups that ask for more than the others gave back wait for it forever (a 48 / 232 split of 384 threads
// hung the forward's tests on the H200), so the split must fit that pool.
constexpr int launch_registers_per_thread(int threads) { return 65536 / threads / 8 * 8; }
constexpr bool register_split_fits(int producer_regs, int consumer_regs, int consumer_threads) {
    return 128 * producer_regs + consumer_threads * consumer_regs <=
           (128 + consumer_threads) * launch_registers_per_thread(128 + consumer_threads);
}

// Warp roles: warpgroup 0 produces (one warp issues TMA, the rest idle with few registers); warpgroups 1..
// kConsumerWarpgroups consume, each owning 64 query rows of the block.
template <int kHeadDim_, int kBlockN_, int kStages_, typename Element_>
struct FwdTraits {
    using Element = Element_;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kConsumerWarpgroups = 2;
    static constexpr int kBlockM = 64 * kConsumerWarpgroups;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kStages = kStages_;
    static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
    static constexpr int kNThreads = 128 + kConsumerThreads;
    static_assert(kBlockM % kBoundsGranule == 0 && kBlockN % kBoundsGranule == 0);

    // Registers per thread after setmaxnreg: the producer gives most of its share to the consumers.
    static constexpr int kProducerRegs = 24;
    static constexpr int kConsumerRegs = 240;
    static_assert(register_split_fits(kProducerRegs, kConsumerRegs, kConsumerThreads),
                  "the warpgroups' registers after setmaxnreg exceed what the CTA is launched with");

    // S = Q K^T: both operands from shared memory. O += P V: P from registers, V read transposed.
    using AtomLayout = Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>;
    using TiledMmaS = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), AtomLayout{}));
    using TiledMmaO = decltype(make_tiled_mma(
        GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                             GMMA::Major::MN>(),
        AtomLayout{}));

    using Atom = KMajorAtom<Element, kHeadDim>;
    using SmemLayoutQ = decltype(tile_to_shape(Atom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    using SmemLayoutK =
        decltype(tile_to_shape(Atom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
    using SmemLayoutV = SmemLayoutK;
    // V as the B operand of O += P V is (head dim, keys), head dim contiguous: the same bytes seen transposed,
    // which is an MN-major wgmma layout.
    using SmemLayoutVt = decltype(composition(
        SmemLayoutV{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

    // A CTA runs several work items (persistent) where the key blocks are 128 wide and shared memory holds a second
    // Q tile (head dims 64, 96, 128): the next item's Q loads into it while the current item is computed. With
    // 64-key blocks a CTA per item ran faster: 3.9% at head dim 192 (eighteenth session), 4.6% at 256 (seventeenth
    // session; bench_results/RESULTS.md).
    static constexpr bool kPersistent =
        kBlockN >= 128 && (2 * kBlockM + 2 * kStages * kBlockN) * kHeadDim * int(sizeof(Element)) + 4096 <= 227 * 1024;
    static constexpr int kQBuffers = kPersistent ? 2 : 1;

    struct SharedStorage {
        alignas(1024) Element q[kQBuffers][cosize_v<SmemLayoutQ>];
        alignas(1024) Element k[cosize_v<SmemLayoutK>];
        alignas(1024) Element v[cosize_v<SmemLayoutV>];
        alignas(8) uint64_t q_full[kQBuffers];
        uint64_t q_empty[kQBuffers];  // every consumer thread, once the item's O has left the buffer
        // The work item whose Q a buffer holds (-1 ends a persistent CTA's work), what the consumers need of its
        // sequence (query offset, length, causal diagonal) and its rows' mask values, written by the producer
        // with the Q load so that an item starts without global loads on the consumers' side.
        int q_item[kQBuffers][4];
        alignas(16) int row_value[kQBuffers][kBlockM];
        uint64_t k_full[kStages];
        uint64_t k_empty[kStages];
        uint64_t v_full[kStages];
        uint64_t v_empty[kStages];
        // Which key block a stage holds and how it must be masked, written by the producer before it arms
        // k_full; kNoBlock ends the consumers' loop.
        int stage_block[kStages];
        int stage_kind[kStages];
        // The mask values (tree_mask.h) of a partial stage's keys, written by the producer with its K.
        alignas(16) int key_value[kStages][kBlockN];
    };
    static constexpr int kSmemBytes = int(sizeof(SharedStorage));
    static_assert(kSmemBytes <= 227 * 1024, "tile configuration exceeds Hopper shared memory");

    static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(Element);
    static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * sizeof(Element);
};

constexpr int kNoBlock = -1;

// Tile configuration per head-dim bucket: 128-row query blocks; key blocks as wide as shared memory allows
// with two stages each for K and V.
template <int kHeadDim, typename Element>
struct FwdConfig;
template <typename Element>
struct FwdConfig<64, Element> { using Traits = FwdTraits<64, 128, 2, Element>; };
template <typename Element>
struct FwdConfig<96, Element> { using Traits = FwdTraits<96, 128, 2, Element>; };
template <typename Element>
struct FwdConfig<128, Element> { using Traits = FwdTraits<128, 128, 2, Element>; };
template <typename Element>
struct FwdConfig<192, Element> { using Traits = FwdTraits<192, 64, 2, Element>; };
template <typename Element>
struct FwdConfig<256, Element> { using Traits = FwdTraits<256, 64, 2, Element>; };

}  // namespace flash_tree_attn::sm90
