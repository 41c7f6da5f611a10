// Checks, on the host, the premise of store_column_pairs_xor (csrc/sm90/utils.h): for every configuration of
// the sm90 backward, every consumer thread and every element of the fragments stored that way (dS^T and dQ,
// head dims up to 128), the element's offset in the swizzled shared-memory tile equals the thread's first
// offset XOR thread 0's offset of the element, and equals it with the constant's bits outside
// thread_offset_bits (which no thread's first offset has) added instead of XORed. The other stores of the sm90
// kernels (the forward's O; the backward's dK and dV, and P^T and dS^T where its warpgroups split the head dim)
// take whole offsets and are printed for information only: dK and dV at head dim 192 break the premise. Build
// and run on any machine with nvcc (no GPU needed):
//   nvcc -std=c++17 --expt-relaxed-constexpr -I csrc -I $CUTLASS_INCLUDE -o /tmp/check_smem_offsets \
//       tools/check_smem_offsets.cu && /tmp/check_smem_offsets
// ($CUTLASS_INCLUDE: the nvidia-cutlass package's cutlass_library/source/include.) Prints one line per store
// site and exits non-zero if any offset breaks the premise.
#include <cstdio>

#include <cutlass/numeric_types.h>

#include "sm90/bwd_traits.h"
#include "sm90/fwd_traits.h"
#include "sm90/utils.h"

using namespace cute;
using namespace flash_tree_attn::sm90;

static int failures = 0;

template <class TiledMma, class Offsets>
void check(const char *site, bool required, int threads, TiledMma const &mma, Offsets const &offsets) {
    Tensor first = mma.get_thread_slice(0).partition_C(offsets);
    constexpr int kThreadBits = thread_offset_bits<TiledMma, Offsets>();
    int bad = 0, elements = 0;
    for (int t = 0; t < threads; ++t) {
        Tensor mine = mma.get_thread_slice(t).partition_C(offsets);
        for (int i = 0; i < size(mine); ++i, ++elements) {
            const int e = first(i);
            bad += mine(i) != (mine(0) ^ e) || mine(i) != ((mine(0) ^ (e & kThreadBits)) + (e & ~kThreadBits));
        }
    }
    std::printf("%-40s %6d elements, %5d break the premise%s\n", site, elements, bad,
                required ? "" : " (whole offsets, for information)");
    if (required) failures += bad;
}

template <int kHeadDim, typename Element>
void check_head_dim(const char *dtype) {
    char site[64];
    using Fwd = typename FwdConfig<kHeadDim, Element>::Traits;
    std::snprintf(site, sizeof(site), "fwd D=%d %s: O", kHeadDim, dtype);
    check(site, false, Fwd::kConsumerThreads, typename Fwd::TiledMmaO{}, smem_offsets(typename Fwd::SmemLayoutQ{}));
    using Bwd = typename BwdConfig<kHeadDim, Element>::Traits;
    std::snprintf(site, sizeof(site), "bwd D=%d %s: dK, dV", kHeadDim, dtype);
    check(site, false, Bwd::kConsumerThreads, typename Bwd::TiledMmadKV{}, smem_offsets(typename Bwd::SmemLayoutK{}));
    if constexpr (Bwd::kSplitHeadDim) {
        std::snprintf(site, sizeof(site), "bwd D=%d %s: P^T, dS^T", kHeadDim, dtype);
        check(site, false, Bwd::kConsumerThreads, typename Bwd::TiledMmaSdP{},
              smem_offsets(typename Bwd::SmemLayoutPt{}));
    } else {
        std::snprintf(site, sizeof(site), "bwd D=%d %s: dS^T", kHeadDim, dtype);
        check(site, true, Bwd::kConsumerThreads, typename Bwd::TiledMmaSdP{},
              smem_offsets(typename Bwd::SmemLayoutdSt{})(_, _, 0));
        std::snprintf(site, sizeof(site), "bwd D=%d %s: dQ", kHeadDim, dtype);
        check(site, true, Bwd::kConsumerThreads, typename Bwd::TiledMmadQ{},
              smem_offsets(typename Bwd::SmemLayoutdQ{}));
    }
}

template <typename Element>
void check_dtype(const char *dtype) {
    check_head_dim<64, Element>(dtype);
    check_head_dim<96, Element>(dtype);
    check_head_dim<128, Element>(dtype);
    check_head_dim<192, Element>(dtype);
    check_head_dim<256, Element>(dtype);
}

int main() {
    check_dtype<cutlass::bfloat16_t>("bf16");
    check_dtype<cutlass::half_t>("fp16");
    std::printf(failures ? "FAILED: %d offsets of XOR-offset stores break the premise\n"
                         : "every XOR-offset store holds\n", failures);
    return failures ? 1 : 0;
}
