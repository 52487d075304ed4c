// CUDA kernels of the oriented-box family: grid-stride loops over mutualops/rotated_math.h. Pairwise overlap is
// one thread per output element; greedy NMS is the axis-aligned machinery of greedy_nms.cuh run on rotated
// boxes; matrix NMS gives each box a thread that walks the boxes before it in score order, a shared-memory tile
// at a time, until one suppresses it. Memory is O(N): no N x N matrix.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../ops/rotated.h"
#include "greedy_nms.cuh"
#include "launch.cuh"
#include "mutualops/rotated_math.h"

namespace mutualops {
namespace {

template <typename scalar_t>
__global__ void pairwise_rotated_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                        scalar_t* __restrict__ out, int64_t n, int64_t m, int64_t total,
                                        RotatedMode mode, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = grid_start(); idx < total; idx += grid_stride()) {
    const int64_t col = idx % m;
    const int64_t row = idx / m;  // batch * n + i
    const int64_t b = row / n;
    out[idx] = static_cast<scalar_t>(rotated_overlap(load_rotated_box<acc_t>(boxes1 + 5 * row),
                                                     load_rotated_box<acc_t>(boxes2 + 5 * (b * m + col)), mode,
                                                     static_cast<acc_t>(eps)));
  }
}

template <typename scalar_t>
__global__ void aligned_rotated_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                       scalar_t* __restrict__ out, int64_t n, RotatedMode mode, double eps,
                                       double floor) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    out[i] = static_cast<scalar_t>(rotated_overlap(load_rotated_box<acc_t>(boxes1 + 5 * i),
                                                   load_rotated_box<acc_t>(boxes2 + 5 * i), mode,
                                                   static_cast<acc_t>(eps), static_cast<acc_t>(floor)));
  }
}

at::Tensor box_iou_rotated_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, double eps) {
  const auto bnm = check_rotated_pairwise(boxes1, boxes2, eps);
  const RotatedMode rotated_mode = parse_rotated_mode(mode);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor out =
      boxes1.dim() == 2 ? at::empty({bnm[1], bnm[2]}, b1.options()) : at::empty({bnm[0], bnm[1], bnm[2]}, b1.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_rotated_cuda", [&] {
    pairwise_rotated_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), bnm[1], bnm[2], total, rotated_mode,
        eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor box_iou_rotated_aligned_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                                        double eps, double floor) {
  check_rotated_aligned(boxes1, boxes2, eps, floor);
  const RotatedMode rotated_mode = parse_rotated_mode(mode);
  check_rotated_floor(rotated_mode, floor);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  const int64_t n = b1.size(0);
  at::Tensor out = at::empty({n}, b1.options());
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_rotated_aligned_cuda", [&] {
    aligned_rotated_kernel<scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, rotated_mode, eps, floor);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- greedy NMS over the exact IoU ------------------------------------------------------------------------------

at::Tensor nms_rotated_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_boxes_scores(boxes, scores, iou_threshold, kXywhrBoxes);
  return run_nms<RotatedBoxes>(boxes, scores, std::nullopt, iou_threshold);
}

at::Tensor batched_nms_rotated_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                    double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold, kXywhrBoxes);
  return run_nms<RotatedBoxes>(boxes, scores, idxs, iou_threshold);
}

// ---- matrix NMS over probiou ------------------------------------------------------------------------------------

// The Gaussian of each sorted box, so that the suppression kernel reads it instead of taking a sine and a
// cosine per pair.
template <typename T>
__global__ void gaussian_kernel(const T* __restrict__ boxes, int64_t m, Gaussian<T>* __restrict__ out) {
  for (int64_t i = grid_start(); i < m; i += grid_stride()) out[i] = box_gaussian(load_rotated_box<T>(boxes + 5 * i));
}

// keep[j] for the sorted boxes: valid, and no valid box before it has probiou(box i, box j) > threshold. A block
// holds kThreads consecutive boxes; it stages the earlier boxes in shared memory a tile at a time, and stops
// once every thread is settled (suppressed, or out of earlier boxes).
template <typename T>
__global__ void fast_nms_rotated_kernel(const T* __restrict__ boxes, const Gaussian<T>* __restrict__ gauss,
                                        const bool* __restrict__ valid, int64_t m, T threshold, T eps,
                                        bool* __restrict__ keep) {
  __shared__ T tile_box[kThreads * 5];
  __shared__ Gaussian<T> tile_gauss[kThreads];
  __shared__ bool tile_valid[kThreads];
  const int64_t width = blockDim.x;
  for (int64_t block_start = int64_t(blockIdx.x) * width; block_start < m; block_start += int64_t(gridDim.x) * width) {
    const int64_t j = block_start + threadIdx.x;
    const bool active = j < m && valid[j];
    RotatedBox<T> b{};
    Gaussian<T> gb{};
    if (active) {
      b = load_rotated_box<T>(boxes + 5 * j);
      gb = gauss[j];
    }
    bool removed = false;
    // The bounds are the block's, so every thread reaches every barrier.
    for (int64_t tile_start = 0; tile_start < block_start + width; tile_start += width) {
      const int64_t i = tile_start + threadIdx.x;
      if (i < m) {
        for (int c = 0; c < 5; ++c) tile_box[threadIdx.x * 5 + c] = boxes[5 * i + c];
        tile_gauss[threadIdx.x] = gauss[i];
        tile_valid[threadIdx.x] = valid[i];
      }
      __syncthreads();
      if (active && !removed) {
        const int64_t count = min(width, j - tile_start);  // boxes of the tile before j
        for (int64_t t = 0; t < count; ++t) {
          if (tile_valid[t] && probiou<RotatedMode::kProbiou>(load_rotated_box<T>(tile_box + 5 * t), tile_gauss[t], b,
                                                              gb, eps) > threshold) {
            removed = true;
            break;
          }
        }
      }
      const bool settled = !active || removed || j < tile_start + width;
      if (__syncthreads_and(settled)) break;
    }
    if (j < m) keep[j] = active && !removed;
  }
}

template <typename scalar_t>
at::Tensor fast_nms_rotated_typed(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const auto longs = boxes.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, longs);
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor valid = at::empty({n}, boxes.options().dtype(at::kBool));
  nms_candidates_kernel<RotatedBoxes, scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
      boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), n, valid.data_ptr<bool>(), nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Detection order: score descending, ties to the lower index (a stable sort); invalid boxes last.
  const at::Tensor order =
      std::get<1>(at::sort(scores.to(c10::CppTypeToScalarType<acc_t>::value)
                               .masked_fill(valid.logical_not(), -std::numeric_limits<double>::infinity()),
                           /*stable=*/true, 0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const at::Tensor sorted_valid = valid.index_select(0, order).contiguous();
  at::Tensor gauss = at::empty({n * int64_t(sizeof(Gaussian<acc_t>))}, boxes.options().dtype(at::kByte));
  auto* gauss_data = reinterpret_cast<Gaussian<acc_t>*>(gauss.data_ptr<uint8_t>());
  gaussian_kernel<acc_t><<<grid_for(n), kThreads, 0, stream>>>(sorted_boxes.data_ptr<acc_t>(), n, gauss_data);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor keep = at::empty({n}, sorted_valid.options());
  // The threshold rounds to the math type as torch rounds a Python float it compares a tensor with (Ultralytics).
  fast_nms_rotated_kernel<acc_t><<<grid_for(n), kThreads, 0, stream>>>(
      sorted_boxes.data_ptr<acc_t>(), gauss_data, sorted_valid.data_ptr<bool>(), n, static_cast<acc_t>(iou_threshold),
      static_cast<acc_t>(eps), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order.masked_select(keep);  // the output is data-dependent: one host synchronisation
}

at::Tensor fast_nms_rotated_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double eps) {
  check_nms_boxes_scores(boxes, scores, iou_threshold, kXywhrBoxes);
  check_rotated_eps(eps);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "fast_nms_rotated_cuda",
                                  [&] { keep = fast_nms_rotated_typed<scalar_t>(b, s, iou_threshold, eps); });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("box_iou_rotated", &box_iou_rotated_cuda);
  m.impl("box_iou_rotated_aligned", &box_iou_rotated_aligned_cuda);
  m.impl("nms_rotated", &nms_rotated_cuda);
  m.impl("batched_nms_rotated", &batched_nms_rotated_cuda);
  m.impl("fast_nms_rotated", &fast_nms_rotated_cuda);
}

}  // namespace mutualops
