// CUDA kernels of the label-assignment family: one thread per (image, point)
// looping over GTs (or one block per (image, GT) reducing over anchors for the
// per-GT maxima), calling mutualops/assign_math.h and box_math.h. Extra memory is
// O(P + G); results are deterministic (no atomics).
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops/assign.h"
#include "launch.cuh"

namespace mutualops {
namespace {

__device__ __forceinline__ int64_t real_count(const int64_t* counts, int64_t image, int64_t gmax) {
  const int64_t c = counts[image];
  return c < gmax ? (c > 0 ? c : 0) : gmax;
}

template <typename scalar_t>
__global__ void assign_fcos_kernel(const scalar_t* __restrict__ points, const scalar_t* __restrict__ gts,
                                   const int64_t* __restrict__ counts, const scalar_t* __restrict__ strides,
                                   const scalar_t* __restrict__ ranges, int64_t images, int64_t n, int64_t gmax,
                                   double radius, bool inclusive, bool compat, int64_t* __restrict__ matched) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t t = grid_start(); t < images * n; t += grid_stride()) {
    const int64_t image = t / n, p = t % n;
    const int64_t count = real_count(counts, image, gmax);
    const T x = static_cast<T>(points[2 * p]), y = static_cast<T>(points[2 * p + 1]);
    const T stride = static_cast<T>(strides[p]), lower = static_cast<T>(ranges[2 * p]);
    const T upper = static_cast<T>(ranges[2 * p + 1]);
    int64_t arg = kNegative;
    T best = T(0);
    for (int64_t g = 0; g < count; ++g) {
      const Box<T> b = load_box<T>(gts + 4 * (image * gmax + g));
      if (!fcos_point_matches(x, y, b, stride, static_cast<T>(radius), lower, upper, inclusive)) continue;
      const T key = fcos_area_key(b, compat);
      if (arg < 0 || key < best) best = key, arg = g;
    }
    matched[t] = arg >= 0 && fcos_key_acceptable(best, compat) ? arg : kNegative;
  }
}

template <typename T, typename scalar_t>
__device__ __forceinline__ T pair_iou(const scalar_t* anchors, const scalar_t* gts, int64_t p, int64_t gi) {
  return box_iou(load_box<T>(anchors + 4 * p), load_box<T>(gts + 4 * gi));
}

// Anchors mostly inside an ignore box (IoF > threshold).
template <typename scalar_t>
__global__ void ignored_kernel(const scalar_t* __restrict__ anchors, const scalar_t* __restrict__ ign,
                               const int64_t* __restrict__ counts, int64_t images, int64_t n, int64_t imax,
                               double threshold, bool* __restrict__ ignored) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t t = grid_start(); t < images * n; t += grid_stride()) {
    const int64_t image = t / n, p = t % n;
    const int64_t count = real_count(counts, image, imax);
    const Box<T> a = load_box<T>(anchors + 4 * p);
    T best = T(0);
    for (int64_t g = 0; g < count; ++g) {
      best = max2(best, box_overlap<IouMode::kIof>(a, load_box<T>(ign + 4 * (image * imax + g))));
    }
    ignored[t] = best > static_cast<T>(threshold);
  }
}

// Per (image, anchor): best IoU over GTs and its first GT (-1 when ignored),
// the max-IoU code, and in the same loop the low-quality matches. torchvision
// restores an anchor's own best GT when it is some GT's best; mmdetection (all
// ties) gives it the last such GT whose best IoU reaches min_pos_iou; gt_best is
// null when neither applies. blockIdx.y is the image, so that the block stages
// that image's GTs in shared memory, a tile at a time, for all its anchors.
constexpr int kAnchorThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kAnchorThreads)
    anchor_match_kernel(const scalar_t* __restrict__ anchors, const scalar_t* __restrict__ gts,
                        const int64_t* __restrict__ counts, const bool* __restrict__ ignored, int64_t images, int64_t n,
                        int64_t gmax, double pos_iou, double neg_iou,
                        const at::opmath_type<scalar_t>* __restrict__ gt_best, bool torchvision, double min_pos_iou,
                        int64_t* __restrict__ matched, scalar_t* __restrict__ best_out) {
  using T = at::opmath_type<scalar_t>;
  __shared__ Box<T> tile[kAnchorThreads];
  __shared__ T tile_best[kAnchorThreads];
  const T floor = low_quality_floor<T>(torchvision, min_pos_iou);
  // Every thread of a block runs the same iterations (the bounds are per
  // block), so that all of them reach the barriers. Images stride by the
  // grid's height, which holds at most 65535.
  for (int64_t image = blockIdx.y; image < images; image += gridDim.y) {
    const int64_t count = real_count(counts, image, gmax);
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * kAnchorThreads; base < n;
         base += static_cast<int64_t>(gridDim.x) * kAnchorThreads) {
      const int64_t p = base + threadIdx.x;
      const bool active = p < n;
      const int64_t t = image * n + p;
      const bool skip = !active || ignored[t];
      const Box<T> a = active ? load_box<T>(anchors + 4 * p) : Box<T>{T(0), T(0), T(0), T(0)};
      T best = T(-1);
      int64_t arg = 0, last = -1;
      for (int64_t g0 = 0; g0 < count; g0 += kAnchorThreads) {
        const int tile_size = static_cast<int>(min(count - g0, static_cast<int64_t>(kAnchorThreads)));
        __syncthreads();
        if (threadIdx.x < tile_size) {
          const int64_t gi = image * gmax + g0 + threadIdx.x;
          tile[threadIdx.x] = load_box<T>(gts + 4 * gi);
          tile_best[threadIdx.x] = gt_best ? gt_best[gi] : T(0);
        }
        __syncthreads();
        if (skip) continue;
        for (int j = 0; j < tile_size; ++j) {
          const T iou = box_iou(a, tile[j]);
          if (iou > best) best = iou, arg = g0 + j;
          if (gt_best && is_best_of_gt(iou, tile_best[j], floor)) last = g0 + j;
        }
      }
      if (!active) continue;
      const bool is_ignored = ignored[t];
      // No GT: IoU 0 (as on the CPU); an ignored anchor reports -1.
      best_out[t] = static_cast<scalar_t>(count == 0 && !is_ignored ? T(0) : best);
      int64_t code =
          is_ignored
              ? kIgnore
              : (count == 0 ? kNegative : max_iou_code(best, arg, static_cast<T>(pos_iou), static_cast<T>(neg_iou)));
      if (!is_ignored && last >= 0) code = low_quality_match(torchvision, arg, last);
      matched[t] = code;
    }
  }
}

// Per (image, GT), one block: best IoU over non-ignored anchors and the first
// anchor holding it. The anchors are split over the block's threads and the
// partial maxima reduced in shared memory, so that a few GTs over 10^5 anchors
// still fill the GPU (a thread per GT left most of it idle).
constexpr int kGtBestThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kGtBestThreads)
    gt_best_kernel(const scalar_t* __restrict__ anchors, const scalar_t* __restrict__ gts,
                   const int64_t* __restrict__ counts, const bool* __restrict__ ignored, int64_t images, int64_t n,
                   int64_t gmax, at::opmath_type<scalar_t>* __restrict__ gt_best,
                   int64_t* __restrict__ gt_first_anchor) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T block_best[kGtBestThreads];
  __shared__ int64_t block_first[kGtBestThreads];
  const int tid = threadIdx.x;
  // The loop bound is the same for every thread of a block, so the
  // __syncthreads inside it are reached by all of them.
  for (int64_t t = blockIdx.x; t < images * gmax; t += gridDim.x) {
    const int64_t image = t / gmax, g = t % gmax;
    T best = T(-1);
    int64_t first = -1;
    if (g < real_count(counts, image, gmax)) {
      for (int64_t p = tid; p < n; p += kGtBestThreads) {
        if (ignored[image * n + p]) continue;
        const T iou = pair_iou<T>(anchors, gts, p, t);
        if (iou > best) best = iou, first = p;
      }
    }
    block_best[tid] = best;
    block_first[tid] = first;
    __syncthreads();
    for (int half = kGtBestThreads / 2; half > 0; half /= 2) {
      if (tid < half) {
        const T other = block_best[tid + half];
        const int64_t other_first = block_first[tid + half];
        const bool earlier = other_first >= 0 && (block_first[tid] < 0 || other_first < block_first[tid]);
        if (other > block_best[tid] || (other == block_best[tid] && earlier)) {
          block_best[tid] = other;
          block_first[tid] = other_first;
        }
      }
      __syncthreads();
    }
    if (tid == 0) {
      gt_best[t] = block_best[0];
      gt_first_anchor[t] = block_first[0];
    }
    __syncthreads();
  }
}

// mmdetection without gt_max_assign_all: each GT, in order, takes its first best anchor.
template <typename T>
__global__ void first_best_anchor_kernel(const T* __restrict__ gt_best, const int64_t* __restrict__ first,
                                         const int64_t* __restrict__ counts, int64_t images, int64_t n, int64_t gmax,
                                         double min_pos_iou, int64_t* __restrict__ matched) {
  for (int64_t image = grid_start(); image < images; image += grid_stride()) {
    const int64_t count = real_count(counts, image, gmax);
    for (int64_t g = 0; g < count; ++g) {
      const int64_t t = image * gmax + g;
      if (first[t] >= 0 && gt_best[t] >= low_quality_floor<T>(false, min_pos_iou)) matched[image * n + first[t]] = g;
    }
  }
}

template <typename scalar_t>
__global__ void mutual_targets_kernel(MutualTargetArgs<scalar_t> args, int64_t total) {
  for (int64_t i = grid_start(); i < total; i += grid_stride()) {
    mutual_targets_at<at::opmath_type<scalar_t>>(args, i);
  }
}

at::Tensor assign_fcos_cuda(const at::Tensor& points, const at::Tensor& gt_boxes, const at::Tensor& num_gt,
                            const at::Tensor& strides, const at::Tensor& regress_ranges, double center_radius,
                            bool inclusive, bool torchvision_compat) {
  check_assign_fcos(points, gt_boxes, num_gt, strides, regress_ranges);
  const c10::cuda::CUDAGuard guard(points.device());
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = points.size(0);
  const at::Tensor pts = points.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor str = strides.to(points.scalar_type()).contiguous();
  const at::Tensor rng = regress_ranges.to(points.scalar_type()).contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  at::Tensor matched = at::empty({images, n}, pts.options().dtype(at::kLong));
  if (matched.numel() == 0) return matched;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pts.scalar_type(), "assign_fcos_cuda", [&] {
    assign_fcos_kernel<scalar_t><<<grid_for(images * n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        pts.data_ptr<scalar_t>(), gts.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), str.data_ptr<scalar_t>(),
        rng.data_ptr<scalar_t>(), images, n, gmax, center_radius, inclusive, torchvision_compat,
        matched.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return matched;
}

std::tuple<at::Tensor, at::Tensor> assign_max_iou_cuda(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                                       const at::Tensor& num_gt,
                                                       const std::optional<at::Tensor>& ignore_boxes,
                                                       const std::optional<at::Tensor>& num_ignore, double pos_iou,
                                                       double neg_iou, c10::string_view low_quality, double min_pos_iou,
                                                       bool gt_max_assign_all, double ignore_iof) {
  check_assign_max_iou(anchors, gt_boxes, num_gt, ignore_boxes, num_ignore);
  const LowQuality lq = parse_low_quality(low_quality);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = anchors.size(0);
  const at::Tensor anc = anchors.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  const auto longs = anc.options().dtype(at::kLong);
  at::Tensor matched = at::empty({images, n}, longs);
  at::Tensor max_iou = at::empty({images, n}, anc.options());
  at::Tensor ignored = at::zeros({images, n}, anc.options().dtype(at::kBool));
  if (matched.numel() == 0) return {matched, max_iou};
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor gt_first = at::empty({images, gmax}, longs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anc.scalar_type(), "assign_max_iou_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    at::Tensor gt_best = at::empty({images, gmax}, anc.options().dtype(c10::CppTypeToScalarType<T>::value));
    if (ignore_boxes.has_value() && ignore_boxes->size(1) > 0) {
      const at::Tensor ign = ignore_boxes->to(anc.scalar_type()).contiguous();
      const at::Tensor ign_counts = active_ignore_counts(*num_ignore, num_gt, lq);
      ignored_kernel<scalar_t><<<grid_for(images * n), kThreads, 0, stream>>>(
          anc.data_ptr<scalar_t>(), ign.data_ptr<scalar_t>(), ign_counts.data_ptr<int64_t>(), images, n, ign.size(1),
          ignore_iof, ignored.data_ptr<bool>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // The per-GT maxima come first: the anchor pass applies the low-quality rule with them.
    const bool low_quality_in_pass = lq == LowQuality::kTorchvision || (lq == LowQuality::kMmdet && gt_max_assign_all);
    if (lq != LowQuality::kNone && gmax > 0) {
      const int64_t gt_blocks = std::min<int64_t>(images * gmax, 65536);
      gt_best_kernel<scalar_t><<<static_cast<unsigned int>(gt_blocks), kGtBestThreads, 0, stream>>>(
          anc.data_ptr<scalar_t>(), gts.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), ignored.data_ptr<bool>(),
          images, n, gmax, gt_best.data_ptr<T>(), gt_first.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 grid(static_cast<unsigned int>(std::min<int64_t>((n + kAnchorThreads - 1) / kAnchorThreads, 65536)),
                    static_cast<unsigned int>(std::min<int64_t>(images, 65535)));
    anchor_match_kernel<scalar_t><<<grid, kAnchorThreads, 0, stream>>>(
        anc.data_ptr<scalar_t>(), gts.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), ignored.data_ptr<bool>(),
        images, n, gmax, pos_iou, neg_iou, low_quality_in_pass && gmax > 0 ? gt_best.data_ptr<T>() : nullptr,
        lq == LowQuality::kTorchvision, min_pos_iou, matched.data_ptr<int64_t>(), max_iou.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (lq == LowQuality::kMmdet && !gt_max_assign_all && gmax > 0) {
      first_best_anchor_kernel<T><<<1, 32, 0, stream>>>(gt_best.data_ptr<T>(), gt_first.data_ptr<int64_t>(),
                                                        counts.data_ptr<int64_t>(), images, n, gmax, min_pos_iou,
                                                        matched.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {matched, max_iou};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mutual_targets_cuda(
    const at::Tensor& matched, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& box_pred,
    const at::Tensor& cls_logits, const at::Tensor& priors, const std::optional<at::Tensor>& scale,
    c10::string_view box_coding, double gamma_cls, double gamma_loc) {
  const BoxCoding coding = parse_box_coding(box_coding);
  check_mutual_targets(matched, gt_boxes, gt_labels, box_pred, cls_logits, priors, scale, coding, gamma_cls, gamma_loc);
  const c10::cuda::CUDAGuard guard(box_pred.device());
  const int64_t images = matched.size(0), n = matched.size(1), classes = cls_logits.size(2);
  const at::Tensor matches = matched.contiguous(), gts = gt_boxes.contiguous(),
                   labels = gt_labels.to(at::kLong).contiguous();
  const at::Tensor pred = box_pred.contiguous(), logits = cls_logits.contiguous(), pri = priors.contiguous();
  const at::Tensor sc = scale.has_value() ? scale->to(pred.scalar_type()).contiguous() : at::Tensor();
  at::Tensor decoded = at::empty({images, n, 4}, pred.options());
  at::Tensor iou_target = at::zeros({images, n}, pred.options());
  at::Tensor cls_target = at::zeros({images, n, classes}, logits.options());
  at::Tensor raw_weight = at::zeros({images, n}, pred.options());
  if (images * n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "mutual_targets_cuda", [&] {
      const auto args = mutual_target_args<scalar_t>(matches, gts, labels, pred, logits, pri, sc, coding, gamma_cls,
                                                     gamma_loc, decoded, iou_target, cls_target, raw_weight);
      mutual_targets_kernel<scalar_t>
          <<<grid_for(images * n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args, images * n);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {decoded, iou_target, cls_target, normalise_over_positives(raw_weight, matches >= 0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("assign_fcos", &assign_fcos_cuda);
  m.impl("assign_max_iou", &assign_max_iou_cuda);
  m.impl("mutual_targets", &mutual_targets_cuda);
}

}  // namespace mutualops
