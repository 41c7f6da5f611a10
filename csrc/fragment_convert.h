// Register-fragment type conversion shared by the sm80 and sm90 kernels (fp32 accumulators to fp16/bf16
// operands and outputs).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace flash_tree_attn {

// Writes `src` converted to `To` into a fresh register tensor of the same layout.
template <typename To, class Tensor>
__forceinline__ __device__ auto to_type(Tensor const &src) {
    auto dst = cute::make_tensor<To>(src.layout());
    constexpr int N = decltype(cute::size(src))::value;
    using From = typename Tensor::value_type;
    cutlass::NumericArrayConverter<To, From, N> op;
    *reinterpret_cast<cutlass::Array<To, N> *>(dst.data()) =
        op(*reinterpret_cast<const cutlass::Array<From, N> *>(src.data()));
    return dst;
}

}  // namespace flash_tree_attn
