// The producer/consumer handshake of the sm90 kernels, on shared-memory mbarriers. Each stage of a ring
// buffer has a "full" barrier (armed by the producer with the bytes TMA will deliver; completes when they
// land) and an "empty" barrier (every consumer warp arrives once it no longer reads the stage). Both sides
// walk the ring with a StageCursor; the phase bit flips each time the ring wraps.
#pragma once

#include <cutlass/arch/barrier.h>

namespace flash_tree_attn::sm90 {

template <int kStages>
struct StageCursor {
    int stage = 0;
    uint32_t phase = 0;

    __forceinline__ __device__ void advance() {
        if (++stage == kStages) {
            stage = 0;
            phase ^= 1u;
        }
    }
};

using TxBarrier = cutlass::arch::ClusterTransactionBarrier;

// Producer side: wait until the consumers released the stage. A fresh barrier counts as released: waiting
// for the parity opposite to the current phase returns at once the first time round.
__forceinline__ __device__ void wait_empty(uint64_t &empty, uint32_t phase) { TxBarrier::wait(&empty, phase ^ 1u); }

// Consumer side: wait for the stage's data, then (after its last read of the stage) release it. Called by
// every consumer thread; lane 0 of each warp arrives, so the empty barrier counts consumer warps.
__forceinline__ __device__ void wait_full(uint64_t &full, uint32_t phase) { TxBarrier::wait(&full, phase); }
__forceinline__ __device__ void release(uint64_t &empty) {
    __syncwarp();
    if (threadIdx.x % 32 == 0) TxBarrier::arrive(&empty);
}

}  // namespace flash_tree_attn::sm90
