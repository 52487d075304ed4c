#pragma once

// Marks the shared math so that nvcc compiles it for host and device while
// gcc sees plain inline functions: CPU and CUDA kernels then run one body.
#if defined(__CUDACC__)
#define MUTUALOPS_HD __host__ __device__ __forceinline__
#else
#define MUTUALOPS_HD inline
#endif
