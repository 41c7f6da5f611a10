// Prints, on the host, which rows and columns of each GEMM's accumulator tile every warp holds in the sm80 kernels
// at head dim 128 (bf16): the forward's S (queries x keys) and the backward's S/dP (queries x keys), dK/dV (keys x
// head dim) and dQ (queries x head dim). It answers whether the warps could skip a part of a tile that no pair
// reaches (a 64-key half of a backward tile, a 64-row half of a forward tile) with the work staying balanced: a warp
// that holds rows or keys in every part keeps its share of whatever is left (bench_results/RESULTS.md, forty-fifth
// session). Build and run on any machine with nvcc (no GPU needed):
//   nvcc -std=c++17 --expt-relaxed-constexpr -I csrc -I $CUTLASS_INCLUDE -o /tmp/print_warp_tiles \
//       tools/print_warp_tiles.cu && /tmp/print_warp_tiles
// ($CUTLASS_INCLUDE: the nvidia-cutlass package's cutlass_library/source/include.)
#include <cstdio>
#include <set>
#include <string>

#include <cutlass/numeric_types.h>

#include "sm80/bwd_traits.h"
#include "sm80/fwd_traits.h"

using namespace cute;

// "a-b, c-d": the runs of consecutive values in `values`.
static std::string runs(const std::set<int> &values) {
    std::string out;
    int first = -1, last = -2;
    auto flush = [&]() {
        if (first < 0) return;
        out += (out.empty() ? "" : ", ") + std::to_string(first) + "-" + std::to_string(last);
    };
    for (int v : values) {
        if (v != last + 1) {
            flush();
            first = v;
        }
        last = v;
    }
    flush();
    return out;
}

template <class TiledMma, int kRows, int kCols>
void print_warps(const char *name, int threads) {
    TiledMma mma;
    std::printf("%s\n", name);
    for (int warp = 0; warp < threads / 32; ++warp) {
        std::set<int> rows, cols;
        for (int lane = 0; lane < 32; ++lane) {
            Tensor c = mma.get_thread_slice(warp * 32 + lane)
                           .partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));
            for (int i = 0; i < size(c); ++i) {
                rows.insert(get<0>(c(i)));
                cols.insert(get<1>(c(i)));
            }
        }
        std::printf("  warp %d: rows %s; columns %s\n", warp, runs(rows).c_str(), runs(cols).c_str());
    }
}

int main() {
    using Fwd = flash_tree_attn::sm80::FwdConfig<128, cutlass::bfloat16_t>::Traits;
    using Bwd = flash_tree_attn::sm80::BwdConfig<128, cutlass::bfloat16_t>::Traits;
    print_warps<typename Fwd::TiledMma, Fwd::kBlockM, Fwd::kBlockN>("forward S = Q K^T (queries x keys)",
                                                                   Fwd::kNThreads);
    print_warps<typename Bwd::TiledMmaSdP, Bwd::kBlockM, Bwd::kBlockN>("backward S, dP (queries x keys)",
                                                                       Bwd::kNThreads);
    print_warps<typename Bwd::TiledMmadKV, Bwd::kBlockN, Bwd::kHeadDim>("backward dK, dV (keys x head dim)",
                                                                        Bwd::kNThreads);
    print_warps<typename Bwd::TiledMmadQ, Bwd::kBlockM, Bwd::kHeadDim>(
        "backward dQ (queries x head dim; its k-loop runs over the block's keys)", Bwd::kNThreads);
    return 0;
}
