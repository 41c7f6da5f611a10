// Grids over more units (sequences, or (sequence, head) pairs) than one grid dimension past x takes.
//
// CUDA caps a grid's y and z at 65535 blocks each. A kernel that gives every unit its own row of CTAs puts the unit
// index in y and z together: y runs fastest, so a grid of at most 65535 units is launched in the order a plain
// y-indexed grid would be, and larger calls (an RL batch of many short sequences, or MQA with many query heads)
// still launch. CTAs past the last unit (at most gridDim.y - 1 of them) return at once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace flash_tree_attn {

constexpr int64_t kMaxGridY = 65535;

// x CTAs per unit; the y and z that cover `units` (at most 65535^2, about 4.3e9).
inline dim3 unit_grid(unsigned x, int64_t units) {
    const int64_t y = units < kMaxGridY ? units : kMaxGridY;
    return dim3(x, unsigned(y), unsigned(y == 0 ? 0 : (units + y - 1) / y));
}

// The unit of this CTA under unit_grid. Below 65535^2 < 2^32, so 32 bits hold it and the kernels split it into
// (sequence, head) with 32-bit divisions (a 64-bit division is a ~300-instruction subroutine in SASS).
__device__ __forceinline__ uint32_t grid_unit() { return blockIdx.y + gridDim.y * blockIdx.z; }

}  // namespace flash_tree_attn
