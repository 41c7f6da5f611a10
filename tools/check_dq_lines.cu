// Checks, on the host, the line order of the sm80 backward's dQ tiles (csrc/sm80/dq_lines.h) for every sm80
// backward configuration it applies to: DqLines::offset maps (thread, pair) one to one onto the pairs of a
// kBlockM x kHeadDim tile, and each warp instruction (one pair per lane) covers exactly two whole 128-byte lines.
// Every configuration takes the line order (DqLines asserts that its warp instructions can fill whole lines). Build
// and run on any machine with nvcc (no GPU needed):
//   nvcc -std=c++17 --expt-relaxed-constexpr -I csrc -I $CUTLASS_INCLUDE -o /tmp/check_dq_lines \
//       tools/check_dq_lines.cu && /tmp/check_dq_lines
// ($CUTLASS_INCLUDE: the nvidia-cutlass package's cutlass_library/source/include.) Exits non-zero on a failure.
#include <cstdio>
#include <set>
#include <vector>

#include <cutlass/numeric_types.h>

#include "sm80/bwd_traits.h"
#include "sm80/dq_lines.h"

using namespace flash_tree_attn::sm80;

static int failures = 0;

template <typename Traits>
void check(const char *name) {
    using Lines = DqLines<Traits>;
    constexpr int kRowStride = Traits::kHeadDim;  // one head: the tile's rows back to back
    std::vector<int> hits(Traits::kBlockM * Traits::kHeadDim / 2, 0);
    int bad_lines = 0;
    for (int warp = 0; warp < Traits::kNThreads / 32; ++warp) {
        for (int p = 0; p < Lines::kPairsPerThread; ++p) {
            std::set<int64_t> lines;
            for (int lane = 0; lane < 32; ++lane) {
                const int64_t off = Lines::offset(warp, lane, p, kRowStride);
                if (off < 0 || off % 2 != 0 || off / 2 >= int64_t(hits.size())) {
                    ++failures;
                    continue;
                }
                ++hits[off / 2];
                lines.insert(off / 32);  // 32 floats per 128-byte line (tiles and rows start on one)
            }
            // The 32 pairs are distinct (every pair is hit once, checked below), so 64 floats in two lines fill both.
            if (lines.size() != 2) ++bad_lines;
        }
    }
    int wrong = 0;
    for (int h : hits) wrong += h != 1;
    failures += wrong + bad_lines;
    std::printf("%-28s %s: %d pairs hit other than once, %d warp instructions not on two whole lines\n", name,
                wrong + bad_lines ? "FAILED" : "ok", wrong, bad_lines);
}

template <int kHeadDim>
void check_head_dim() {
    using Config = BwdConfig<kHeadDim, cutlass::bfloat16_t>;
    char name[64];
    std::snprintf(name, sizeof(name), "head dim %d", kHeadDim);
    check<typename Config::Traits>(name);
    std::snprintf(name, sizeof(name), "head dim %d (compact)", kHeadDim);
    check<typename Config::CompactTraits>(name);
}

int main() {
    check_head_dim<64>();
    check_head_dim<96>();
    check_head_dim<128>();
    check_head_dim<192>();
    check_head_dim<256>();
    std::printf(failures ? "FAILED: %d\n" : "the dQ line order holds\n", failures);
    return failures ? 1 : 0;
}
