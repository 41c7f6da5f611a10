// The producer/consumer handshake of the sm90 kernels, on shared-memory mbarriers. Each stage of a ring
// buffer has a "full" barrier (armed by the producer with the bytes TMA will deliver; completes when they
// land) and an "empty" barrier (every consumer thread arrives once it no longer reads the stage). Both sides
// walk the ring with a StageCursor; the phase bit flips each time the ring wraps.
//
// compute-sanitizer's racecheck orders a thread's shared-memory accesses only by that thread's own arrival:
// a write by lane 5 followed by __syncwarp and lane 0's arrival is reported as a race with the reader on the
// other side (bench_results/racecheck-patterns-h200-2026-11-30.txt). So every thread that writes data a
// barrier hands over arrives on it itself, and every consumer thread that read a stage with ordinary loads
// (metadata, row statistics) arrives on its empty barrier: the empty barriers count consumer threads.
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
// every consumer thread, and each one arrives.
__forceinline__ __device__ void wait_full(uint64_t &full, uint32_t phase) { TxBarrier::wait(&full, phase); }
__forceinline__ __device__ void release(uint64_t &empty) { TxBarrier::arrive(&empty); }

}  // namespace flash_tree_attn::sm90
