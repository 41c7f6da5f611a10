// The fp32 dQ accumulator's reductions from registers: the sm80 backward's and those of the sm90 backward of
// the large head dims (sm90/bwd_consume_split.h).
#pragma once

namespace flash_tree_attn {

// Adds two neighbouring fp32 values to global memory without returning anything (fire-and-forget
// reductions, RED; atomicAdd compiled to a value-returning ATOM here). On sm_90 one 8-byte vector reduction:
// the 4 lanes that hold a row's 8 consecutive columns then fill whole 32-byte sectors, where 4-byte
// reductions fill half of twice as many.
__forceinline__ __device__ void red_add_pair(float *p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b));
#else
    asm volatile("red.global.add.f32 [%0], %1;" ::"l"(p), "f"(a));
    asm volatile("red.global.add.f32 [%0], %1;" ::"l"(p + 1), "f"(b));
#endif
}

// Four neighbouring fp32 values (16-byte aligned) in one 16-byte vector reduction; sm_90 only.
__forceinline__ __device__ void red_add_quad(float *p, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w));
#else
    __trap();
#endif
}

}  // namespace flash_tree_attn
