// Small CuTe helpers of the sm90 (wgmma) kernels: issuing a warpgroup GEMM, the register views of the
// wgmma accumulator used by the softmax and by the second GEMM, and the global view TMA descriptors are
// built over.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/array.h>

namespace flash_tree_attn::sm90 {

using namespace cute;

// Issues acc (+)= A * B over every k-slice as one wgmma batch and commits it; the caller waits with
// warpgroup_wait<N>() before reading acc. With kZeroInit the first slice overwrites acc (no clear needed).
// A is either shared-memory descriptors (SS) or a register fragment (RS); register operands are fenced so
// the compiler neither moves their writes past the arrive nor reuses them before the wait.
template <bool kZeroInit, class TiledMma, class FragA, class FragB, class Acc>
__forceinline__ __device__ void wgmma_issue(TiledMma &tiled_mma, FragA const &tCrA, FragB const &tCrB, Acc &acc) {
    constexpr bool kRegA = !std::is_same_v<typename FragA::iterator, GMMA::DescriptorIterator>;
    if constexpr (kRegA) warpgroup_fence_operand(const_cast<FragA &>(tCrA));
    warpgroup_fence_operand(acc);
    warpgroup_arrive();
    if constexpr (kZeroInit) tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
        cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    warpgroup_fence_operand(acc);
    if constexpr (kRegA) warpgroup_fence_operand(const_cast<FragA &>(tCrA));
}

// The index of the first thread of `thread`'s warpgroup, for partitioning shared-memory operands into wgmma
// descriptors: those are the same for all 128 threads of a warpgroup, but partitioned with the thread's own index
// they are computed from its low bits (which the descriptors drop) in every thread. Read from lane 0 so the
// compiler sees one value per warp. The backward's step loop got 5-12% shorter (head dim 128: 618 -> 571
// instructions) and ran up to 2.2% faster; the forward, built the same way, ran up to 5% slower (D=256) and keeps
// per-thread partitions (bench_results/RESULTS.md, twenty-third session).
__forceinline__ __device__ int warpgroup_first_thread(int thread) {
    return __shfl_sync(0xffffffffu, thread & ~127, 0);
}

// The wgmma accumulator of an m64nN atom is ((2 cols, 2 rows, N/8 column groups), MMA_M, MMA_N): like
// mma.sync, each thread holds a column pair in two rows 8 apart, repeated every 8 columns. As (rows, cols) =
// ((2, MMA_M), (2, N/8, MMA_N)) it can be reduced row by row.
template <class Layout>
CUTE_HOST_DEVICE auto acc_rowcol_layout(Layout acc) {
    static_assert(decltype(rank(acc))::value == 3 && decltype(rank<0>(acc))::value == 3);
    return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                       make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

template <class Tensor>
CUTE_HOST_DEVICE auto acc_rowcol(Tensor &&t) {
    return make_tensor(t.data(), acc_rowcol_layout(t.layout()));
}

// The register A operand of an m64nNk16 wgmma holds, per thread, the same (column pair, row pair) values
// for two neighbouring 8-column groups: two column groups of an accumulator form one k-slice. So the
// probabilities feed O += P V without data movement:
// ((2, 2, N/8), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, N/16 * MMA_N).
template <class Layout>
CUTE_HOST_DEVICE auto acc_as_a_operand_layout(Layout acc) {
    static_assert(decltype(rank(acc))::value == 3 && decltype(rank<0>(acc))::value == 3);
    auto groups = logical_divide(layout<0, 2>(acc), Shape<_2>{});  // ((2, N/16))
    return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0, 0>(groups)), get<1>(acc),
                       coalesce(make_layout(get<0, 1>(groups), get<2>(acc))));
}

// Writes an accumulator fragment, converted to T, into buffer `base` of a shared-memory array, through the same
// MMA's partition `partition0` of the buffer at `base0` (for an unbuffered tile, base = base0 = the array): two
// neighbouring columns per store, which every swizzle of the kernels keeps adjacent, as one aligned access. The
// addresses are offsets from those pointers, which keeps them in the shared window for the compiler (shared
// stores; through a partition's own pointers they compile to generic stores with 64-bit addresses,
// bench_results/RESULTS.md, 2026-12-01). Buffers lie whole swizzle periods apart, so an element's offset inside
// buffer 0 is its offset inside every buffer.
template <class Frag, class Partition, typename T>
__forceinline__ __device__ void store_column_pairs(Frag const &frag, Partition const &partition0, T const *base0,
                                                   T *base) {
    using Pair = cutlass::AlignedArray<T, 2>;
    CUTE_UNROLL
    for (int i = 0; i < size(frag); i += 2) {  // (i, i+1): neighbouring columns of one row
        Pair pair;
        pair[0] = T(frag(i));
        pair[1] = T(frag(i + 1));
        *reinterpret_cast<Pair *>(base + (&partition0(i) - base0)) = pair;
    }
}

// The element offsets of a swizzled shared-memory layout as a tensor (its value at a coordinate is the offset
// from the tile's start): the kernels' tiles start on whole swizzle periods (alignas(1024)), where the swizzle
// of the address and that of the offset agree. Partitioned and sliced like the tile itself.
template <class SmemLayout>
CUTE_HOST_DEVICE auto smem_offsets(SmemLayout const &layout) {
    return make_tensor(counting_iterator<int>(0), as_position_independent_swizzle_layout(layout));
}

// The bits any consumer thread's first offset into a tile may have: the OR of the offsets of the threads whose
// index is a power of two, which covers every thread where the thread's part of an offset is XOR-linear in its
// index (power-of-two modes with disjoint strides, then a swizzle; tools/check_smem_offsets.cu checks it for
// every thread). A compile-time constant.
template <class TiledMma, class Offsets>
constexpr int thread_offset_bits() {
    int bits = 0;
    for (int t = 1; t < int(size(TiledMma{})); t *= 2) bits |= TiledMma{}.get_thread_slice(t).partition_C(Offsets{})(0);
    return bits;
}

// A thread's first offset into a tile (its fragment's element 0), given to store_column_pairs_xor: computed once
// outside the loop that stores.
template <class TiledMma, class Offsets>
__forceinline__ __device__ int first_offset(TiledMma const &mma, int thread, Offsets const &offsets) {
    return mma.get_thread_slice(thread).partition_C(offsets)(0);
}

// Whether a thread's wgmma accumulator rows are odd: lanes 4-7 of every 8 hold rows 1, 3, 5, 7 of each 8 (the
// accumulator layout). The threads store_column_pairs_xor exchanges pairs for; tools/check_smem_offsets.cu checks
// the exchange with the same function.
CUTE_HOST_DEVICE constexpr bool accumulator_rows_odd(int thread) { return (thread >> 2) & 1; }

// store_column_pairs for the stores of the backward's step loop, with fewer integer instructions: an element's
// offset is swizzle(t + e), t from the thread and e from the element's index in the fragment, and the swizzles
// are XOR maps, so where t and e share no bit swizzle(t + e) = swizzle(t) ^ swizzle(e), the thread's first
// offset XOR thread 0's offset of the element (a constant). The constant's bits that no thread's offset has
// (the row 8 below, the next panel of swizzle-row width) are added instead, so the compiler folds them into the
// store's immediate and only the few distinct XORs (the column groups a swizzle row permutes) take a register.
// That holds for the tiles stored this way in every configuration (tools/check_smem_offsets.cu checks each
// thread and element), not for every tile (the backward's dK and dV at head dim 192 break it). Computed whole
// per element, the swizzle took four integer instructions per store, a fifth of the backward's step loop
// (bench_results/RESULTS.md, twenty-first session). `offsets` are the tile's smem_offsets (buffer 0's for a
// buffered tile), `thread_offset` the thread's first offset (first_offset above, computed once outside the
// loop), `base` the buffer written. The other stores keep store_column_pairs above: whole offsets through
// smem_offsets made ptxas spill in the forward and in the head-dim-256 backward, where the pointer form spills
// nothing.
//
// kExchange (0: none) staggers the stores of odd rows: a thread with `exchange` set (its rows are odd) stores, in
// the place of its pair i, its pair i ^ kExchange, whose offset is pair i's XOR one constant (thread 0's
// first(kExchange) ^ first(0); tools/check_smem_offsets.cu checks every thread and pair). For the fp32 dQ tile
// (128-byte swizzle, 8-byte pairs) the 4 rows of a half warp otherwise fall on the same banks in pairs, rows r and
// r ^ 1, and each store takes 4 shared-memory wavefronts instead of 2; with the odd rows two column groups over,
// each half warp's 4 rows cover the 32 banks once. The cost, one select per stored value, bought a 0.3-2.4% faster
// backward (bench_results/RESULTS.md, thirty-eighth session).
template <int kExchange = 0, class Frag, class TiledMma, class Offsets, typename T>
__forceinline__ __device__ void store_column_pairs_xor(Frag const &frag, TiledMma const &mma, int thread_offset,
                                                       Offsets const &offsets, T *base, bool exchange = false) {
    using Pair = cutlass::AlignedArray<T, 2>;
    constexpr int kThreadBits = thread_offset_bits<TiledMma, Offsets>();
    Tensor first = mma.get_thread_slice(0).partition_C(offsets);
    static_assert(decltype(size(first))::value == decltype(size(frag))::value);
    static_assert(kExchange % 2 == 0 && kExchange < decltype(size(frag))::value);
    if constexpr (kExchange != 0) {
        if (exchange) thread_offset ^= first(kExchange) ^ first(0);
    }
    CUTE_UNROLL
    for (int i = 0; i < size(frag); i += 2) {  // (i, i+1): neighbouring columns of one row
        Pair pair;
        if constexpr (kExchange != 0) {
            pair[0] = T(exchange ? frag(i ^ kExchange) : frag(i));
            pair[1] = T(exchange ? frag((i ^ kExchange) + 1) : frag(i + 1));
        } else {
            pair[0] = T(frag(i));
            pair[1] = T(frag(i + 1));
        }
        const int e = first(i);
        *reinterpret_cast<Pair *>(base + ((thread_offset ^ (e & kThreadBits)) + (e & ~kThreadBits))) = pair;
    }
}

// Epilogue of an output tile that sits in shared memory (kRows x kCols, K-major; the swizzles of the kernels
// move whole 16-byte pieces): kThreads threads copy it to global memory 16 bytes per access, consecutive
// threads taking consecutive pieces of a row, so every row is written as whole 32-byte sectors. Rows from
// `rows` on (past the sequence) and columns from `cols` on (past the real head dim, a multiple of 8) are not
// written. `gmem` is the tile's first row; the row stride is a multiple of 8 elements (torch_binding.cpp).
template <int kThreads, class SmemTile, typename Element>
__forceinline__ __device__ void store_tile_16b(SmemTile const &tile, Element *gmem, int64_t row_stride, int rows,
                                               int cols, int thread) {
    constexpr int kRows = decltype(size<0>(tile))::value;
    constexpr int kCols = decltype(size<1>(tile))::value;
    constexpr int kVec = 16 / sizeof(Element);
    constexpr int kPiecesPerRow = kCols / kVec;
    static_assert(kCols % kVec == 0 && (kRows * kPiecesPerRow) % kThreads == 0);
    CUTE_UNROLL
    for (int it = 0; it < kRows * kPiecesPerRow / kThreads; ++it) {
        const int piece = it * kThreads + thread;
        const int r = piece / kPiecesPerRow;
        const int c = (piece % kPiecesPerRow) * kVec;
        if (r < rows && c < cols) {
            *reinterpret_cast<uint4 *>(gmem + int64_t(r) * row_stride + c) =
                *reinterpret_cast<const uint4 *>(&tile(r, c));
        }
    }
}

// The kernel argument in place of a TMA descriptor a kernel configuration does not use.
struct NoTmaDescriptor {};

// (tokens, head dim, heads) view of a packed varlen array: the global tensor TMA descriptors are built over.
// The head-dim extent is the real one, so TMA fills the columns of a larger bucket with zeros.
template <typename Element>
inline auto packed_gmem_tensor(const void *ptr, int tokens, int head_dim, int heads, int64_t row_stride,
                               int64_t head_stride) {
    return make_tensor(make_gmem_ptr(static_cast<const Element *>(ptr)), make_shape(tokens, head_dim, heads),
                       make_stride(row_stride, _1{}, head_stride));
}

// Waits until this thread's committed bulk asynchronous operations (TMA stores and reduce-adds) are complete,
// their writes done in global memory; tma_store_wait waits only until they have read shared memory.
__forceinline__ __device__ void bulk_wait_complete() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// Orders this thread's global accesses of the generic proxy (loads, stores, atomics) with those of the async
// proxy (TMA) on either side of it.
__forceinline__ __device__ void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;" ::: "memory"); }

}  // namespace flash_tree_attn::sm90
