// Tile shapes, shared-memory layouts and copy/MMA atoms of the sm80 forward kernel, and the panel layout and
// copy atoms the backward shares with it.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "params.h"

namespace flash_tree_attn::sm80 {

using namespace cute;

template <typename Element>
using Sm80MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, SM80_16x8x16_F32F16F16F32_TN,
                                     SM80_16x8x16_F32BF16BF16F32_TN>;

// Shared-memory tiles are stored row-major in 64- (or 32-) element wide, XOR-swizzled panels so that
// both cp.async writes and ldmatrix reads are free of bank conflicts.
template <int kHeadDim, typename Element>
struct SmemPanel {
    static constexpr int kWidth = kHeadDim % 64 == 0 ? 64 : 32;
    static constexpr int kSwizzleBits = kWidth == 64 ? 3 : 2;
    using Atom = decltype(composition(Swizzle<kSwizzleBits, 3, 3>{},
                                      Layout<Shape<_8, Int<kWidth>>, Stride<Int<kWidth>, _1>>{}));
    // 16-byte vectors per panel row, and the thread arrangement for global <-> shared copies.
    static constexpr int kThreadsPerRow = kWidth / 8;
    template <int kNThreads>
    using GmemThreadLayout =
        Layout<Shape<Int<kNThreads / kThreadsPerRow>, Int<kThreadsPerRow>>, Stride<Int<kThreadsPerRow>, _1>>;
};

// Copy atoms shared by the forward and backward kernels: ldmatrix (plain and transposed) from the swizzled
// panels into MMA fragments, element stores of fragments into shared memory, and 16-byte cp.async loads /
// vector stores between global memory and head-dim-wide panels.
template <int kHeadDim, int kNThreads, typename Element>
struct Sm80TileCopies {
    using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
    using SmemCopyAtomTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
    using SmemCopyAtomStore = Copy_Atom<DefaultCopy, Element>;

    using GmemThreads = typename SmemPanel<kHeadDim, Element>::template GmemThreadLayout<kNThreads>;
    // The zero-filling cp.async: a vector outside the tile's rows / head dim is written as zeros by the same
    // instruction (source size 0, nothing read), instead of a separate shared-memory store.
    using GmemCopyLoad = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<uint128_t>, Element>{},
                                                  GmemThreads{}, Layout<Shape<_1, _8>>{}));
    using GmemCopyStore =
        decltype(make_tiled_copy(Copy_Atom<UniversalCopy<uint128_t>, Element>{}, GmemThreads{}, Layout<Shape<_1, _8>>{}));
};

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, typename Element_>
struct FwdTraits : Sm80TileCopies<kHeadDim_, kNWarps_ * 32, Element_> {
    using Element = Element_;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kBlockM = kBlockM_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kNWarps = kNWarps_;
    static constexpr int kNThreads = kNWarps * 32;
    static_assert(kBlockM % kBoundsGranule == 0 && kBlockN % kBoundsGranule == 0);
    static_assert(kBlockM == 16 * kNWarps || kBlockM == 32 * kNWarps, "each warp owns 16 or 32 query rows");

    // Warps split the query rows; a 16-wide N permutation lets one ldmatrix.x4 feed two MMAs.
    using TiledMma = TiledMMA<MMA_Atom<Sm80MmaOp<Element>>, Layout<Shape<Int<kNWarps>, _1, _1>>,
                              Tile<Int<16 * kNWarps>, _16, _16>>;

    using Panel = SmemPanel<kHeadDim, Element>;
    using SmemLayoutQ = decltype(tile_to_shape(typename Panel::Atom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    using SmemLayoutKV = decltype(tile_to_shape(typename Panel::Atom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    // V read transposed (head dim x keys) for O += P V.
    using SmemLayoutVt =
        decltype(composition(SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
    using SmemLayoutVtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutVt{}));

    static constexpr int kSmemTileBytes = (kBlockM + 2 * kBlockN) * kHeadDim * int(sizeof(Element));
    // Tree values of the query block's rows and of the current key block's keys, loaded with Q and K
    // (cp.async), after the tiles: a partial tile then masks from shared memory.
    struct TreeData {
        int start_q[kBlockM];
        int end_k[kBlockN];
    };
    static constexpr int kSmemBytes = kSmemTileBytes + int(sizeof(TreeData));
};

// Tile configuration per head-dim bucket (tuned on H100/H200-class parts; fits A100 shared memory).
template <int kHeadDim, typename Element>
struct FwdConfig;
template <typename Element>
struct FwdConfig<64, Element> { using Traits = FwdTraits<64, 128, 64, 4, Element>; };
template <typename Element>
struct FwdConfig<96, Element> { using Traits = FwdTraits<96, 128, 64, 4, Element>; };
template <typename Element>
struct FwdConfig<128, Element> { using Traits = FwdTraits<128, 128, 64, 4, Element>; };
template <typename Element>
struct FwdConfig<192, Element> { using Traits = FwdTraits<192, 128, 64, 8, Element>; };
template <typename Element>
struct FwdConfig<256, Element> { using Traits = FwdTraits<256, 128, 64, 8, Element>; };

}  // namespace flash_tree_attn::sm80
