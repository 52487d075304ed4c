// CUDA kernels of the label-assignment family: threads over (image, point) looping over GTs, calling
// mutualops/assign_math.h and box_math.h. Extra memory is O(P + G), plus P/512 * G for the max-IoU rule's
// per-chunk GT maxima; results are deterministic (no atomics).
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>

#include "../ops/assign.h"
#include "launch.cuh"

namespace mutualops {
namespace {

// The value checks (assign_faults_at), ORed over every element: one atomic per thread that found a fault.
template <typename scalar_t>
__global__ void assign_faults_kernel(AssignInputs<scalar_t> in, int* __restrict__ faults) {
  int found = 0;
  for (int64_t i = grid_start(); i < in.size(); i += grid_stride()) {
    found |= assign_faults_at<at::opmath_type<scalar_t>>(in, i);
  }
  if (found) atomicOr(faults, found);
}

void check_assign_data(const CheckedInputs& c, const char* prior_name) {
  at::Tensor faults = at::zeros({}, c.priors.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.priors.scalar_type(), "assign_check_values", [&] {
    const AssignInputs<scalar_t> in = assign_inputs<scalar_t>(c);
    assign_faults_kernel<scalar_t>
        <<<grid_for(in.size()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(in, faults.data_ptr<int>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_assign_faults(faults.item<int>(), c, prior_name);
}

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

// Max-IoU assignment reads every (anchor, GT) IoU once. The low-quality rule needs each GT's best IoU over all
// anchors before it can decide any anchor, so the one pass over the IoUs also leaves, for every chunk of
// kChunkAnchors anchors, each GT's best IoU within the chunk (chunk_best, [B, chunks, G]: 1/kChunkAnchors of
// the IoU matrix). gt_best_kernel reduces those to each GT's best, and low_quality_kernel recomputes IoUs only
// in the chunks holding one of a GT's best anchors: usually one chunk per GT. (A GT that overlaps no anchor
// has best IoU 0, and then every chunk holds its best; the rule is torchvision's, and so is the work.)
// blockIdx.y is the image, so that a block stages that image's GTs in shared memory, a tile at a time, for
// all the anchors of its chunk. --fmad=false makes a recomputed IoU round as the first one did.
constexpr int kAnchorThreads = 256;
constexpr int kAnchorsPerThread = 2;  // two independent IoUs per GT read from shared memory
constexpr int kChunkAnchors = kAnchorThreads * kAnchorsPerThread;
constexpr int kWarps = kAnchorThreads / 32;

// The maximum over a warp of v, an IoU or -1 (never NaN: the callers only take IoUs above -1).
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, float>) {
    // Non-negative floats order as their bits do as ints, and -1 is a negative int below them (+ 0 turns a
    // -0, which would be the lowest int of all, into +0): one redux instruction instead of five shuffles.
    return __int_as_float(__reduce_max_sync(0xffffffffu, __float_as_int(v + 0.0f)));
  }
#endif
  for (int offset = 16; offset > 0; offset /= 2) v = max2(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ int64_t warp_min(int64_t v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const int64_t other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other < v ? other : v;
  }
  return v;
}

// The anchors of one chunk a thread holds: the k-th is chunk * kChunkAnchors + k * kAnchorThreads + threadIdx.x,
// so that a warp's loads are contiguous. `use` is false for padding past n and for ignored anchors.
template <typename T, typename scalar_t>
struct ChunkAnchors {
  Box<T> box[kAnchorsPerThread];
  bool use[kAnchorsPerThread];

  __device__ ChunkAnchors(const scalar_t* anchors, const bool* ignored, int64_t image, int64_t chunk, int64_t n) {
    for (int k = 0; k < kAnchorsPerThread; ++k) {
      const int64_t p = index(chunk, k);
      use[k] = p < n && !ignored[image * n + p];
      box[k] = p < n ? load_box<T>(anchors + 4 * p) : Box<T>{T(0), T(0), T(0), T(0)};
    }
  }

  static __device__ int64_t index(int64_t chunk, int k) {
    return chunk * kChunkAnchors + k * kAnchorThreads + threadIdx.x;
  }
};

// Per (image, anchor): best IoU over GTs and its first GT (-1 when ignored) and the max-IoU code; with
// chunk_best, each GT's best over the chunk's non-ignored anchors (-1 if none); with best_gt, the anchor's
// first best GT whatever its code (torchvision's low-quality rule gives it back).
template <typename scalar_t>
__global__ void __launch_bounds__(kAnchorThreads)
    anchor_pass_kernel(const scalar_t* __restrict__ anchors, const scalar_t* __restrict__ gts,
                       const int64_t* __restrict__ counts, const bool* __restrict__ ignored, int64_t images, int64_t n,
                       int64_t gmax, int64_t chunks, double pos_iou, double neg_iou,
                       at::opmath_type<scalar_t>* __restrict__ chunk_best, int32_t* __restrict__ best_gt,
                       int64_t* __restrict__ matched, scalar_t* __restrict__ best_out) {
  using T = at::opmath_type<scalar_t>;
  __shared__ Box<T> tile[kAnchorThreads];
  __shared__ T warp_best[kWarps][kAnchorThreads];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Every thread of a block runs the same iterations (the bounds are per block), so that all of them reach
  // the barriers and the warp reductions. Images stride by the grid's height, which holds at most 65535.
  for (int64_t image = blockIdx.y; image < images; image += gridDim.y) {
    const int64_t count = real_count(counts, image, gmax);
    for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
      const ChunkAnchors<T, scalar_t> own(anchors, ignored, image, chunk, n);
      T best[kAnchorsPerThread];
      int64_t arg[kAnchorsPerThread];
      for (int k = 0; k < kAnchorsPerThread; ++k) best[k] = T(-1), arg[k] = 0;
      for (int64_t g0 = 0; g0 < count; g0 += kAnchorThreads) {
        const int tile_size = static_cast<int>(min(count - g0, static_cast<int64_t>(kAnchorThreads)));
        __syncthreads();  // the previous tile's readers of tile and warp_best are done
        if (threadIdx.x < tile_size) tile[threadIdx.x] = load_box<T>(gts + 4 * (image * gmax + g0 + threadIdx.x));
        __syncthreads();
        for (int j = 0; j < tile_size; ++j) {
          T top = T(-1);
          for (int k = 0; k < kAnchorsPerThread; ++k) {
            const T iou = box_iou(own.box[k], tile[j]);
            if (!own.use[k]) continue;
            if (iou > best[k]) best[k] = iou, arg[k] = g0 + j;
            if (iou > top) top = iou;
          }
          if (chunk_best == nullptr) continue;
          top = warp_max(top);
          if (lane == 0) warp_best[warp][j] = top;
        }
        if (chunk_best == nullptr) continue;
        __syncthreads();
        if (threadIdx.x < tile_size) {
          T top = warp_best[0][threadIdx.x];
          for (int w = 1; w < kWarps; ++w) top = max2(top, warp_best[w][threadIdx.x]);
          chunk_best[(image * chunks + chunk) * gmax + g0 + threadIdx.x] = top;
        }
      }
      for (int k = 0; k < kAnchorsPerThread; ++k) {
        const int64_t p = ChunkAnchors<T, scalar_t>::index(chunk, k);
        if (p >= n) continue;
        const int64_t t = image * n + p;
        const bool is_ignored = ignored[t];
        // No GT: IoU 0 (as on the CPU); an ignored anchor reports -1.
        best_out[t] = static_cast<scalar_t>(count == 0 && !is_ignored ? T(0) : best[k]);
        matched[t] =
            is_ignored ? kIgnore
                       : (count == 0 ? kNegative
                                     : max_iou_code(best[k], arg[k], static_cast<T>(pos_iou), static_cast<T>(neg_iou)));
        if (best_gt) best_gt[t] = static_cast<int32_t>(arg[k]);
      }
    }
  }
}

// Per (image, GT), one warp: its best IoU over the non-ignored anchors (-1 if none, or for a padding row) from
// the chunk maxima; with gt_first, the first anchor holding it (-1 if none), found in the first chunk that
// holds it. A warp, not a thread, so that a few GTs over many chunks do not wait on one load after another.
template <typename scalar_t>
__global__ void gt_best_kernel(const scalar_t* __restrict__ anchors, const scalar_t* __restrict__ gts,
                               const int64_t* __restrict__ counts, const bool* __restrict__ ignored, int64_t images,
                               int64_t n, int64_t gmax, int64_t chunks,
                               const at::opmath_type<scalar_t>* __restrict__ chunk_best,
                               at::opmath_type<scalar_t>* __restrict__ gt_best, int64_t* __restrict__ gt_first) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  const int lane = threadIdx.x % 32;
  // The loop bounds are the same for the 32 lanes of a warp, so all of them reach the shuffles.
  for (int64_t t = grid_start() / 32; t < images * gmax; t += grid_stride() / 32) {
    const int64_t image = t / gmax, g = t % gmax;
    T best = T(-1);
    int64_t first_chunk = kNone;
    if (g < real_count(counts, image, gmax)) {
      for (int64_t c = lane; c < chunks; c += 32) {
        const T v = chunk_best[(image * chunks + c) * gmax + g];
        if (v > best) best = v, first_chunk = c;
      }
    }
    const T top = warp_max(best);
    first_chunk = warp_min(best == top ? first_chunk : kNone);
    if (lane == 0) gt_best[t] = top;
    if (gt_first == nullptr) continue;
    int64_t first = kNone;
    if (first_chunk != kNone) {
      const int64_t end = min(n, (first_chunk + 1) * kChunkAnchors);
      for (int64_t p = first_chunk * kChunkAnchors + lane; p < end && first == kNone; p += 32) {
        if (!ignored[image * n + p] && pair_iou<T>(anchors, gts, p, t) == top) first = p;
      }
    }
    first = warp_min(first);
    if (lane == 0) gt_first[t] = first == kNone ? -1 : first;
  }
}

// The low-quality rule (torchvision, or mmdetection with gt_max_assign_all): an anchor with IoU equal to some
// GT's best (when that best reaches floor) takes its own best GT (best_gt, torchvision) or the last such GT
// (best_gt null, mmdetection). Only the GTs whose best lies in this chunk cost IoUs.
template <typename scalar_t>
__global__ void __launch_bounds__(kAnchorThreads)
    low_quality_kernel(const scalar_t* __restrict__ anchors, const scalar_t* __restrict__ gts,
                       const int64_t* __restrict__ counts, const bool* __restrict__ ignored, int64_t images, int64_t n,
                       int64_t gmax, int64_t chunks, const at::opmath_type<scalar_t>* __restrict__ chunk_best,
                       const at::opmath_type<scalar_t>* __restrict__ gt_best, at::opmath_type<scalar_t> floor,
                       const int32_t* __restrict__ best_gt, int64_t* __restrict__ matched) {
  using T = at::opmath_type<scalar_t>;
  __shared__ Box<T> tile[kAnchorThreads];
  __shared__ T tile_best[kAnchorThreads];  // the GT's best IoU if this chunk holds it, else NaN
  for (int64_t image = blockIdx.y; image < images; image += gridDim.y) {
    const int64_t count = real_count(counts, image, gmax);
    for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
      const ChunkAnchors<T, scalar_t> own(anchors, ignored, image, chunk, n);
      int64_t last[kAnchorsPerThread];
      for (int k = 0; k < kAnchorsPerThread; ++k) last[k] = -1;
      for (int64_t g0 = 0; g0 < count; g0 += kAnchorThreads) {
        const int tile_size = static_cast<int>(min(count - g0, static_cast<int64_t>(kAnchorThreads)));
        __syncthreads();
        if (threadIdx.x < tile_size) {
          const int64_t gi = image * gmax + g0 + threadIdx.x;
          const T b = gt_best[gi];
          const bool here = chunk_best[(image * chunks + chunk) * gmax + g0 + threadIdx.x] == b;
          tile[threadIdx.x] = load_box<T>(gts + 4 * gi);
          tile_best[threadIdx.x] = here ? b : T(NAN);
        }
        __syncthreads();
        for (int j = 0; j < tile_size; ++j) {
          const T b = tile_best[j];
          if (!(b >= floor)) continue;  // not here (NaN), or below the floor: the same for the whole block
          for (int k = 0; k < kAnchorsPerThread; ++k) {
            if (own.use[k] && is_best_of_gt(box_iou(own.box[k], tile[j]), b, floor)) last[k] = g0 + j;
          }
        }
      }
      for (int k = 0; k < kAnchorsPerThread; ++k) {
        const int64_t p = ChunkAnchors<T, scalar_t>::index(chunk, k);
        if (p >= n || last[k] < 0) continue;
        const int64_t t = image * n + p;
        const bool torchvision = best_gt != nullptr;
        matched[t] = low_quality_match(torchvision, torchvision ? best_gt[t] : 0, last[k]);
      }
    }
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
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  check_assign_data(CheckedInputs{pts, gts, counts, at::Tensor(), at::Tensor(), false}, "points");
  const at::Tensor str = strides.to(points.scalar_type()).contiguous();
  const at::Tensor rng = regress_ranges.to(points.scalar_type()).contiguous();
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
  const c10::cuda::CUDAGuard guard(anchors.device());
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = anchors.size(0);
  const at::Tensor anc = anchors.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  const at::Tensor ign = ignore_boxes.has_value() ? ignore_boxes->to(anc.scalar_type()).contiguous() : at::Tensor();
  check_assign_data(
      CheckedInputs{anc, gts, counts, ign, ign.defined() ? num_ignore->to(at::kLong).contiguous() : at::Tensor(), true},
      "anchors");
  const LowQuality lq = parse_low_quality(low_quality);
  const auto longs = anc.options().dtype(at::kLong);
  at::Tensor matched = at::empty({images, n}, longs);
  at::Tensor max_iou = at::empty({images, n}, anc.options());
  at::Tensor ignored = at::zeros({images, n}, anc.options().dtype(at::kBool));
  if (matched.numel() == 0) return {matched, max_iou};
  const auto stream = at::cuda::getCurrentCUDAStream();
  TORCH_CHECK_VALUE(gmax <= std::numeric_limits<int32_t>::max(), "gt_boxes must have at most 2^31 - 1 rows per image");
  const int64_t chunks = (n + kChunkAnchors - 1) / kChunkAnchors;
  const bool torchvision = lq == LowQuality::kTorchvision;
  // The rule that decides anchors in low_quality_kernel; mmdetection's other rule (each GT takes its first
  // best anchor) goes GT by GT afterwards.
  const bool low_quality_pass = torchvision || (lq == LowQuality::kMmdet && gt_max_assign_all);
  const bool per_gt = lq != LowQuality::kNone && gmax > 0;
  const dim3 grid(static_cast<unsigned int>(std::min<int64_t>(chunks, 65535)),
                  static_cast<unsigned int>(std::min<int64_t>(images, 65535)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anc.scalar_type(), "assign_max_iou_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto math = anc.options().dtype(c10::CppTypeToScalarType<T>::value);
    if (ign.defined() && ign.size(1) > 0) {
      const at::Tensor ign_counts = active_ignore_counts(*num_ignore, num_gt, lq);
      ignored_kernel<scalar_t><<<grid_for(images * n), kThreads, 0, stream>>>(
          anc.data_ptr<scalar_t>(), ign.data_ptr<scalar_t>(), ign_counts.data_ptr<int64_t>(), images, n, ign.size(1),
          ignore_iof, ignored.data_ptr<bool>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor chunk_best = per_gt ? at::empty({images, chunks, gmax}, math) : at::Tensor();
    const at::Tensor best_gt = per_gt && torchvision ? at::empty({images, n}, longs.dtype(at::kInt)) : at::Tensor();
    anchor_pass_kernel<scalar_t><<<grid, kAnchorThreads, 0, stream>>>(
        anc.data_ptr<scalar_t>(), gts.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), ignored.data_ptr<bool>(),
        images, n, gmax, chunks, pos_iou, neg_iou, per_gt ? chunk_best.data_ptr<T>() : nullptr,
        best_gt.defined() ? best_gt.data_ptr<int32_t>() : nullptr, matched.data_ptr<int64_t>(),
        max_iou.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!per_gt) return;
    const at::Tensor gt_best = at::empty({images, gmax}, math);
    const at::Tensor gt_first = low_quality_pass ? at::Tensor() : at::empty({images, gmax}, longs);
    gt_best_kernel<scalar_t><<<grid_for(images * gmax * 32), kThreads, 0, stream>>>(
        anc.data_ptr<scalar_t>(), gts.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), ignored.data_ptr<bool>(),
        images, n, gmax, chunks, chunk_best.data_ptr<T>(), gt_best.data_ptr<T>(),
        gt_first.defined() ? gt_first.data_ptr<int64_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (low_quality_pass) {
      low_quality_kernel<scalar_t><<<grid, kAnchorThreads, 0, stream>>>(
          anc.data_ptr<scalar_t>(), gts.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), ignored.data_ptr<bool>(),
          images, n, gmax, chunks, chunk_best.data_ptr<T>(), gt_best.data_ptr<T>(),
          low_quality_floor<T>(torchvision, min_pos_iou), best_gt.defined() ? best_gt.data_ptr<int32_t>() : nullptr,
          matched.data_ptr<int64_t>());
    } else {
      first_best_anchor_kernel<T><<<1, 32, 0, stream>>>(gt_best.data_ptr<T>(), gt_first.data_ptr<int64_t>(),
                                                        counts.data_ptr<int64_t>(), images, n, gmax, min_pos_iou,
                                                        matched.data_ptr<int64_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
