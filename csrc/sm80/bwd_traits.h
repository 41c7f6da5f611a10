// Tile shapes, shared-memory layouts and MMA/copy atoms of the sm80 backward kernel.
#pragma once

#include "sm80/fwd_traits.h"

namespace flash_tree_attn::sm80 {

template <int kNWarps, int kAtomM, typename Element>
using WarpTiledMma = TiledMMA<MMA_Atom<Sm80MmaOp<Element>>, Layout<Shape<Int<kAtomM>, Int<kNWarps / kAtomM>, _1>>,
                              Tile<Int<16 * kAtomM>, Int<16 * (kNWarps / kAtomM)>, _16>>;

template <class Layout, int kRows, int kCols>
using TransposedView = decltype(composition(Layout{}, make_layout(Shape<Int<kCols>, Int<kRows>>{}, GenRowMajor{})));

// kAtomMSdP / kAtomNdKV / kAtomMdQ: warps along the first mode of the S/dP, dK/dV and dQ GEMMs.
// kLateRowStats: the step reads its rows' LSE and D from shared memory after the S and dP GEMMs rather than
// before, so they hold no registers across them. Chosen per configuration by ptxas's spills: at head dim 128 it
// takes the kernel from a 32-byte stack to none; at 192 and in one of head dim 64's two configurations the stack
// grows with it, at 256 it stays.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kAtomMSdP, int kAtomNdKV, int kAtomMdQ,
          int kStages_, typename Element_, bool kLateRowStats_ = false>
struct BwdTraits : Sm80TileCopies<kHeadDim_, kNWarps_ * 32, Element_> {
    using Element = Element_;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kBlockM = kBlockM_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kNWarps = kNWarps_;
    static constexpr int kNThreads = kNWarps * 32;
    static constexpr int kStages = kStages_;  // Q / dO buffers: 2 overlaps the next loads with compute
    static constexpr bool kLateRowStats = kLateRowStats_;
    static_assert(kBlockM % kBoundsGranule == 0 && kBlockN % kBoundsGranule == 0);
    static_assert(kStages == 1 || kStages == 2);

    using TiledMmaSdP = WarpTiledMma<kNWarps, kAtomMSdP, Element>;  // (M, N) = Q K^T, dO V^T
    using TiledMmadKV = WarpTiledMma<kNWarps, kAtomNdKV, Element>;  // (N, D) = P^T dO, dS^T Q
    using TiledMmadQ = WarpTiledMma<kNWarps, kAtomMdQ, Element>;    // (M, D) = dS K

    using Panel = SmemPanel<kHeadDim, Element>;
    using SmemLayoutQ = decltype(tile_to_shape(typename Panel::Atom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    using SmemLayoutKV = decltype(tile_to_shape(typename Panel::Atom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    using SmemLayoutQt = TransposedView<SmemLayoutQ, kBlockM, kHeadDim>;     // (D, M)
    using SmemLayoutKt = TransposedView<SmemLayoutKV, kBlockN, kHeadDim>;    // (D, N)
    using SmemLayoutQtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutQt{}));
    using SmemLayoutKtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutKt{}));

    using PanelP = SmemPanel<kBlockN, Element>;
    using SmemLayoutP = decltype(tile_to_shape(typename PanelP::Atom{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));
    using SmemLayoutPt = TransposedView<SmemLayoutP, kBlockM, kBlockN>;      // (N, M)
    using SmemLayoutPtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutPt{}));

    static constexpr int kSmemQBytes = kBlockM * kHeadDim * int(sizeof(Element));
    static constexpr int kSmemKVBytes = kBlockN * kHeadDim * int(sizeof(Element));
    static constexpr int kSmemPBytes = kBlockM * kBlockN * int(sizeof(Element));
    // Q and dO (kStages each), K, V, P, dS.
    static constexpr int kSmemTileBytes = 2 * kStages * kSmemQBytes + 2 * kSmemKVBytes + 2 * kSmemPBytes;

    // Per-row values loaded with the tiles they belong to (cp.async, in the same group), after the tiles:
    // read from global memory right before use, their latency sat in every step.
    struct RowData {
        float lse[kStages][kBlockM];      // the forward's LSE of the stage's query rows (natural log)
        float dsum[kStages][kBlockM];     // D = rowsum(dO * O) - dLSE of those rows
        int start_q[kStages][kBlockM];    // their tree starts (tree masks only)
        int end_k[kBlockN];               // tree ends of the CTA's keys (tree masks only)
    };
    static constexpr int kSmemBytes = kSmemTileBytes + int(sizeof(RowData));
};

// Shared memory per block: Hopper 227 KB, an A100 163 KB, sm_86/89 99 KB. Every head dim has a configuration
// that fits an A100 (CompactTraits); where a faster one needs more (Traits), the launch takes it only on a GPU
// that has the room.
constexpr int kAmpereSmemBytes = 163 * 1024;

// Chosen by same-run timings on the H200 (bench_results/RESULTS.md). Head dim 64 takes 128-row query blocks,
// which halve the steps (and their barriers) per key block and cut the dQ GEMM's shared-memory reads,
// single-buffered (faster than two Q/dO stages there; 130 KB, so sm_86/89 keep the 64-row blocks that fit
// them). Head dims 192 and 256 split their 64 x 64 score tile over 4 warps along the queries and the dK/dV and
// dQ tiles over 2 along their rows, so each warp reads less of the wide B operands, and double-buffer Q/dO
// (head dim 256 only where the GPU has the 210 KB that takes).
template <int kHeadDim, typename Element>
struct BwdConfig;
template <typename Element>
struct BwdConfig<64, Element> {
    using Traits = BwdTraits<64, 128, 128, 8, 2, 4, 4, 1, Element>;
    using CompactTraits = BwdTraits<64, 64, 128, 8, 2, 4, 4, 2, Element>;
};
template <typename Element>
struct BwdConfig<96, Element> {
    using Traits = BwdTraits<96, 64, 128, 8, 2, 4, 4, 2, Element>;
    using CompactTraits = Traits;
};
template <typename Element>
struct BwdConfig<128, Element> {
    using Traits = BwdTraits<128, 64, 128, 8, 2, 4, 2, 2, Element, /*kLateRowStats=*/true>;
    using CompactTraits = Traits;
};
template <typename Element>
struct BwdConfig<192, Element> {
    using Traits = BwdTraits<192, 64, 64, 8, 4, 2, 2, 2, Element>;  // 162 KB
    using CompactTraits = Traits;
};
template <typename Element>
struct BwdConfig<256, Element> {
    using Traits = BwdTraits<256, 64, 64, 8, 4, 2, 2, 2, Element>;
    using CompactTraits = BwdTraits<256, 64, 64, 8, 4, 2, 2, 1, Element>;
};

}  // namespace flash_tree_attn::sm80
