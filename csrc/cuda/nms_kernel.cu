// CUDA kernel of the NMS family: device sort by (key, score, index), a 64x64
// bitmask IoU kernel that only compares boxes of one key, and an on-device
// greedy reduction over the mask (no copy of the mask to the host). IoU comes
// from mutualops/box_math.h.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops/nms.h"
#include "launch.cuh"
#include "mutualops/box_math.h"

namespace mutualops {
namespace {

constexpr int kMaskBits = 64;
// The greedy pass keeps its "removed" bitmap in shared memory when it fits.
constexpr int64_t kSharedRemovedWords = 6144;  // 48 KiB

// Per sorted position: one past the last position holding the same key.
__global__ void bucket_end_kernel(const int64_t* __restrict__ key, int64_t m, int64_t* __restrict__ end) {
  for (int64_t p = grid_start(); p < m; p += grid_stride()) {
    end[p] = (p == m - 1 || key[p + 1] != key[p]) ? p + 1 : m;
  }
}

// mask[i][w] bit t: box i suppresses box w*64+t (j > i, same key, IoU > threshold).
template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ key, int64_t m,
                                int64_t col_blocks, T threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t row_start = row_block * kMaskBits, col_start = col_block * kMaskBits;
  const int64_t rows = min(m - row_start, (int64_t)kMaskBits);
  const int64_t cols = min(m - col_start, (int64_t)kMaskBits);
  // Keys are sorted: blocks whose key ranges do not meet have no pair.
  if (key[col_start] > key[row_start + rows - 1]) {
    if (threadIdx.x < rows) mask[(row_start + threadIdx.x) * col_blocks + col_block] = 0;
    return;
  }
  __shared__ T tile[kMaskBits * 4];
  __shared__ int64_t tile_key[kMaskBits];
  if (threadIdx.x < cols) {
    for (int c = 0; c < 4; ++c) tile[threadIdx.x * 4 + c] = boxes[(col_start + threadIdx.x) * 4 + c];
    tile_key[threadIdx.x] = key[col_start + threadIdx.x];
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  const int64_t i = row_start + threadIdx.x;
  const Box<T> a = load_box<T>(boxes + 4 * i);
  const int64_t ki = key[i];
  unsigned long long bits = 0;
  for (int64_t t = 0; t < cols; ++t) {
    const int64_t j = col_start + t;
    if (j > i && tile_key[t] == ki && box_iou(a, load_box<T>(tile + 4 * t)) > threshold) bits |= 1ULL << t;
  }
  mask[i * col_blocks + col_block] = bits;
}

// Greedy pass in sorted order, in one block: box i is kept unless an earlier
// kept box removed it; a kept box removes its mask row (within its key).
__global__ void nms_reduce_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ bucket_end,
                                  int64_t m, int64_t col_blocks, unsigned long long* __restrict__ removed_global,
                                  bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed_shared[];
  unsigned long long* removed = col_blocks <= kSharedRemovedWords ? removed_shared : removed_global;
  for (int64_t w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;
  for (int64_t i = 0; i < m; ++i) {
    __syncthreads();
    const bool drop = (removed[i / kMaskBits] >> (i % kMaskBits)) & 1ULL;
    if (threadIdx.x == 0) keep[i] = !drop;
    if (drop) continue;
    const int64_t last_word = (bucket_end[i] - 1) / kMaskBits;
    for (int64_t w = i / kMaskBits + threadIdx.x; w <= last_word; w += blockDim.x) {
      removed[w] |= mask[i * col_blocks + w];
    }
  }
}

template <typename scalar_t>
at::Tensor batched_nms_typed(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                             double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor finite = scores.isfinite().logical_and_(boxes.isfinite().all(1));
  const at::Tensor candidates = finite.nonzero().squeeze(1);  // the output is data-dependent anyway
  const int64_t m = candidates.size(0);
  if (m == 0) return candidates;
  // (key, score descending, index): a stable sort by score, then a stable sort by key.
  const at::Tensor cand_scores = scores.index_select(0, candidates);
  const at::Tensor by_score = std::get<1>(at::sort(cand_scores, /*stable=*/true, 0, /*descending=*/true));
  const at::Tensor by_key = std::get<1>(at::sort(idxs.index_select(0, candidates.index_select(0, by_score)),
                                                 /*stable=*/true, 0, false));
  const at::Tensor order = candidates.index_select(0, by_score.index_select(0, by_key));
  const at::Tensor key = idxs.index_select(0, order).contiguous();
  const at::Tensor sorted_boxes = boxes.index_select(0, order).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();

  at::Tensor bucket_end = at::empty({m}, key.options());
  bucket_end_kernel<<<grid_for(m), kThreads, 0, stream>>>(key.data_ptr<int64_t>(), m, bucket_end.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bucket_end = std::get<0>(bucket_end.flip(0).cummin(0)).flip(0).contiguous();

  const int64_t col_blocks = (m + kMaskBits - 1) / kMaskBits;
  at::Tensor mask = at::empty({m, col_blocks}, key.options());
  const dim3 grid(col_blocks, col_blocks);
  nms_mask_kernel<acc_t><<<grid, kMaskBits, 0, stream>>>(
      sorted_boxes.data_ptr<acc_t>(), key.data_ptr<int64_t>(), m, col_blocks, nms_threshold<acc_t>(iou_threshold),
      reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor removed = at::empty({col_blocks > kSharedRemovedWords ? col_blocks : 1}, key.options());
  at::Tensor keep = at::empty({m}, key.options().dtype(at::kBool));
  const size_t shared = col_blocks <= kSharedRemovedWords ? col_blocks * sizeof(unsigned long long) : 0;
  nms_reduce_kernel<<<1, 256, shared, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), bucket_end.data_ptr<int64_t>(), m,
      col_blocks, reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Output order: score descending, ties to the lower index.
  const at::Tensor kept = std::get<0>(at::sort(order.masked_select(keep), /*stable=*/true, 0, false));
  const at::Tensor by_kept_score =
      std::get<1>(at::sort(scores.index_select(0, kept), /*stable=*/true, 0, /*descending=*/true));
  return kept.index_select(0, by_kept_score);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous(), k = idxs.to(at::kLong).contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "batched_nms_cuda", [&] {
    keep = batched_nms_typed<scalar_t>(b, s, k, iou_threshold);
  });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace mutualops
