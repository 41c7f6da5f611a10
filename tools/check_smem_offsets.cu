// Checks, on the host, the premise of store_column_pairs_xor (csrc/sm90/utils.h): for every configuration of
// the sm90 backward, every consumer thread and every element of the fragments stored that way (dS^T and dQ,
// head dims up to 128), the element's offset in the swizzled shared-memory tile equals the thread's first
// offset XOR thread 0's offset of the element, and equals it with the constant's bits outside
// thread_offset_bits (which no thread's first offset has) added instead of XORed; where the dQ stores exchange
// the pairs of odd rows (kDqExchange), every exchanged offset too. The other stores of the sm90
// kernels (the forward's O; the backward's dK and dV, and P^T and dS^T where its warpgroups split the head dim)
// take whole offsets and are printed for information only: dK and dV at head dim 192 break the premise. Build
// and run on any machine with nvcc (no GPU needed):
//   nvcc -std=c++17 --expt-relaxed-constexpr -I csrc -I $CUTLASS_INCLUDE -o /tmp/check_smem_offsets \
//       tools/check_smem_offsets.cu && /tmp/check_smem_offsets
// ($CUTLASS_INCLUDE: the nvidia-cutlass package's cutlass_library/source/include.) Prints one line per store
// site, with the shared-memory wavefronts of a warp's store there, and exits non-zero if any offset breaks the
// premise or dQ's exchanged or staging stores take more than the 2 wavefronts their bytes need.
#include <cstdio>

#include <cutlass/numeric_types.h>

#include "sm90/bwd_traits.h"
#include "sm90/fwd_traits.h"
#include "sm90/utils.h"

using namespace cute;
using namespace flash_tree_attn::sm90;

static int failures = 0;

// The shared-memory wavefronts of one warp's store of pair i: lanes in groups of 128 bytes (16 lanes for 8-byte
// pairs), per group the most distinct 4-byte words any bank takes.
template <int kPairBytes>
int wavefronts(const int (&word)[32]) {
    constexpr int kGroup = 128 / kPairBytes;
    int total = 0;
    for (int g = 0; g < 32; g += kGroup) {
        int most = 0;
        for (int bank = 0; bank < 32; ++bank) {
            int words[64], n = 0;
            for (int l = g; l < g + kGroup; ++l) {
                for (int w = word[l]; w < word[l] + kPairBytes / 4; ++w) {
                    bool seen = w % 32 != bank;
                    for (int k = 0; k < n && !seen; ++k) seen = words[k] == w;
                    if (!seen) words[n++] = w;
                }
            }
            most = n > most ? n : most;
        }
        total += most;
    }
    return total;
}

// Checks the premise for every thread and element, and prints the wavefronts per warp store of column pairs of
// kElementBytes-byte elements.
template <int kElementBytes, class TiledMma, class Offsets>
void check(const char *site, bool required, int threads, TiledMma const &mma, Offsets const &offsets) {
    Tensor first = mma.get_thread_slice(0).partition_C(offsets);
    constexpr int kThreadBits = thread_offset_bits<TiledMma, Offsets>();
    int bad = 0, elements = 0, waves = 0, stores = 0;
    for (int t = 0; t < threads; ++t) {
        Tensor mine = mma.get_thread_slice(t).partition_C(offsets);
        for (int i = 0; i < size(mine); ++i, ++elements) {
            const int e = first(i);
            bad += mine(i) != (mine(0) ^ e) || mine(i) != ((mine(0) ^ (e & kThreadBits)) + (e & ~kThreadBits));
        }
    }
    for (int i = 0; i < size(first); i += 2) {
        for (int warp = 0; warp < threads / 32; ++warp, ++stores) {
            int word[32];
            for (int lane = 0; lane < 32; ++lane) {
                word[lane] = mma.get_thread_slice(warp * 32 + lane).partition_C(offsets)(i) * kElementBytes / 4;
            }
            waves += wavefronts<2 * kElementBytes>(word);
        }
    }
    std::printf("%-40s %6d elements, %5d break the premise, wavefronts per store %.2f%s\n", site, elements, bad,
                double(waves) / stores, required ? "" : " (whole offsets, for information)");
    if (required) failures += bad;
}

// The dQ stores with odd rows exchanged (kDqExchange): where every thread stores, at each pair i, its pair
// i ^ kExchange if its rows are odd (accumulator_rows_odd), the offset store_column_pairs_xor computes must be that
// pair's, and each warp store must take 2 wavefronts, the fewest for its 256 bytes; the wavefronts with and
// without the exchange are printed (fp32 pairs).
template <int kExchange, class TiledMma, class Offsets>
void check_exchange(const char *site, int threads, TiledMma const &mma, Offsets const &offsets) {
    Tensor first = mma.get_thread_slice(0).partition_C(offsets);
    constexpr int kThreadBits = thread_offset_bits<TiledMma, Offsets>();
    const int flip = first(kExchange) ^ first(0);
    int bad = 0, elements = 0, plain = 0, staggered = 0, stores = 0;
    for (int i = 0; i < size(first); i += 2) {
        for (int warp = 0; warp < threads / 32; ++warp, ++stores) {
            int word_plain[32], word_staggered[32];
            for (int lane = 0; lane < 32; ++lane, ++elements) {
                const int t = warp * 32 + lane;
                Tensor mine = mma.get_thread_slice(t).partition_C(offsets);
                const bool odd = accumulator_rows_odd(t);
                const int base = odd ? mine(0) ^ flip : mine(0);
                const int e = first(i);
                const int at = (base ^ (e & kThreadBits)) + (e & ~kThreadBits);
                bad += at != mine(odd ? i ^ kExchange : i);
                word_plain[lane] = mine(i);  // fp32: the offset in floats is the word
                word_staggered[lane] = at;
            }
            plain += wavefronts<8>(word_plain);
            staggered += wavefronts<8>(word_staggered);
        }
    }
    std::printf("%-40s %6d pairs, %5d break the exchange; wavefronts per store %.2f -> %.2f\n", site, elements,
                bad, double(plain) / stores, double(staggered) / stores);
    failures += bad + (staggered != 2 * stores);
}

template <int kHeadDim, typename Element>
void check_head_dim(const char *dtype) {
    char site[64];
    using Fwd = typename FwdConfig<kHeadDim, Element>::Traits;
    std::snprintf(site, sizeof(site), "fwd D=%d %s: O", kHeadDim, dtype);
    check<sizeof(Element)>(site, false, Fwd::kConsumerThreads, typename Fwd::TiledMmaO{},
                           smem_offsets(typename Fwd::SmemLayoutQ{}));
    using Bwd = typename BwdConfig<kHeadDim, Element>::Traits;
    std::snprintf(site, sizeof(site), "bwd D=%d %s: dK, dV", kHeadDim, dtype);
    check<sizeof(Element)>(site, false, Bwd::kConsumerThreads, typename Bwd::TiledMmadKV{},
                           smem_offsets(typename Bwd::SmemLayoutK{}));
    if constexpr (Bwd::kSplitHeadDim) {
        std::snprintf(site, sizeof(site), "bwd D=%d %s: P^T, dS^T", kHeadDim, dtype);
        check<sizeof(Element)>(site, false, Bwd::kConsumerThreads, typename Bwd::TiledMmaSdP{},
              smem_offsets(typename Bwd::SmemLayoutPt{}));
        // dQ's per-warp staging tile (reduce_dq_staged): the lanes' 8-byte column-pair stores, which must take 2
        // wavefronts (the fewest), then 16-byte loads of whole rows.
        constexpr int kCols = Bwd::kDqStageCols, kStride = Bwd::kDqStageStride;
        int store[32], load[32];
        for (int lane = 0; lane < 32; ++lane) {
            store[lane] = (lane / 4) * kStride + 2 * (lane % 4);
            load[lane] = (lane / (kCols / 4)) * kStride + 4 * (lane % (kCols / 4));
        }
        const int store_waves = wavefronts<8>(store);
        std::printf("bwd D=%d %s: dQ staging, rows of %d floats  wavefronts per store %d, per load %d\n", kHeadDim,
                    dtype, kStride, store_waves, wavefronts<16>(load));
        failures += store_waves != 2;
    } else {
        std::snprintf(site, sizeof(site), "bwd D=%d %s: dS^T", kHeadDim, dtype);
        check<sizeof(Element)>(site, true, Bwd::kConsumerThreads, typename Bwd::TiledMmaSdP{},
              smem_offsets(typename Bwd::SmemLayoutdSt{})(_, _, 0));
        std::snprintf(site, sizeof(site), "bwd D=%d %s: dQ", kHeadDim, dtype);
        check<4>(site, true, Bwd::kConsumerThreads, typename Bwd::TiledMmadQ{},
              smem_offsets(typename Bwd::SmemLayoutdQ{}));
        if constexpr (Bwd::kDqExchange != 0) {
            std::snprintf(site, sizeof(site), "bwd D=%d %s: dQ, odd rows exchanged", kHeadDim, dtype);
            check_exchange<Bwd::kDqExchange>(site, Bwd::kConsumerThreads, typename Bwd::TiledMmadQ{},
                                             smem_offsets(typename Bwd::SmemLayoutdQ{}));
        }
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
    std::printf(failures ? "FAILED: %d offsets break the premise or stores take more wavefronts than needed\n"
                         : "every XOR-offset store holds\n", failures);
    return failures ? 1 : 0;
}
