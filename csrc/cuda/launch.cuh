#pragma once

// Launch geometry shared by the CUDA kernels: 1-D grid-stride loops with
// 64-bit indices, so that outputs of more than 2^31 elements are covered.
#include <stdint.h>

namespace mutualops {

constexpr int kThreads = 256;

// Blocks of kThreads threads for `work` items, one item per thread and pass.
inline unsigned int grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

// Blocks for kernels whose grid-stride loop hands whole items (a row, a tile) to a block.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline unsigned int blocks_for(int64_t work_blocks) {
  return static_cast<unsigned int>(work_blocks < kMaxBlocks ? (work_blocks > 0 ? work_blocks : 1) : kMaxBlocks);
}

__device__ __forceinline__ int64_t grid_start() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }

__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace mutualops
