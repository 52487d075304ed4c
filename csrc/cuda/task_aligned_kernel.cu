// CUDA kernels of task-aligned assignment, for axis-aligned and oriented boxes:
// the per-element math of mutualops/task_aligned_math.h in the passes of the
// CPU kernel. A GT's top-k
// is found by a block over its anchors (nothing of size A is stored per GT),
// ties going to the lower anchor index as in torch.topk's CUDA kernel. Extra
// memory is O(B * (A + G * topk)); results are deterministic (the atomics only
// count and take maxima).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops/task_aligned.h"
#include "launch.cuh"

namespace mutualops {
namespace {

constexpr int kRowThreads = 256;

template <typename K, typename T>
__global__ void regions_kernel(const T* __restrict__ gt, const T* __restrict__ angles, int64_t rows, T min_side,
                               T* __restrict__ regions) {
  for (int64_t r = grid_start(); r < rows; r += grid_stride()) {
    K::region(gt + K::kCoords * r, angles ? angles + 2 * r : nullptr, min_side, regions + K::kRegion * r);
  }
}

// What each box's overlaps need of it alone (an atan, a Gaussian), for the GTs and the predicted boxes.
template <typename K, typename T>
__global__ void cache_kernel(const T* __restrict__ boxes, const T* __restrict__ angles, int64_t count,
                             T* __restrict__ cache) {
  for (int64_t i = grid_start(); i < count; i += grid_stride()) {
    K::cache(boxes + K::kCoords * i, angles ? angles + 2 * i : nullptr, cache + K::kCache * i);
  }
}

// The block's best (value, anchor) under ranks_before; anchor -1 is "none".
// Every thread must call it; all of them get the result.
template <typename T>
__device__ void block_best(T& value, int64_t& anchor, T* values, int64_t* anchors) {
  const int tid = threadIdx.x;
  values[tid] = value;
  anchors[tid] = anchor;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (tid < half) {
      const T ov = values[tid + half];
      const int64_t oa = anchors[tid + half];
      if (oa >= 0 && (anchors[tid] < 0 || ranks_before(ov, oa, values[tid], anchors[tid]))) {
        values[tid] = ov;
        anchors[tid] = oa;
      }
    }
    __syncthreads();
  }
  value = values[0];
  anchor = anchors[0];
  __syncthreads();
}

// The best k <= kLocalTopk of a thread's anchors, kept in order while it reads them once.
constexpr int kLocalTopk = 16;

// A row's top k as torch.topk's CUDA kernel picks them (ties to the lower index), without storing the row;
// thread 0 calls on_winner(a) for each winner in order; value(a) is anchor a's entry. Every thread of the
// block must call it. For k <= kLocalTopk (Ultralytics uses 10 and 13) each thread reads its anchors
// (threadIdx.x, + blockDim.x, ...) once into its own ordered best k, and k rounds of block_best merge the
// threads' heads: value() costs n calls. Larger k takes k rounds over all anchors, each taking the best
// anchor ranked after the previous winner: k * n calls.
template <typename T, typename Value, typename OnWinner>
__device__ void block_topk(int64_t n, int64_t k, T* values, int64_t* anchors, Value value, OnWinner on_winner) {
  if (k <= kLocalTopk) {
    const int want = static_cast<int>(k);
    T top_value[kLocalTopk];
    int64_t top_anchor[kLocalTopk];
    int held = 0;
    for (int64_t a = threadIdx.x; a < n; a += blockDim.x) {
      const T v = value(a);
      // Anchors come in index order, so an equal value ranks after the ones held.
      if (held == want && !ranks_before(v, a, top_value[want - 1], top_anchor[want - 1])) continue;
      int j = held < want ? held++ : want - 1;
      for (; j > 0 && ranks_before(v, a, top_value[j - 1], top_anchor[j - 1]); --j) {
        top_value[j] = top_value[j - 1];
        top_anchor[j] = top_anchor[j - 1];
      }
      top_value[j] = v;
      top_anchor[j] = a;
    }
    int next = 0;  // this thread's first anchor not yet a winner
    for (int round = 0; round < want; ++round) {
      T best_value = next < held ? top_value[next] : T(0);
      int64_t best_anchor = next < held ? top_anchor[next] : -1;
      block_best(best_value, best_anchor, values, anchors);
      if (best_anchor < 0) return;  // the same for every thread
      if (best_anchor % blockDim.x == threadIdx.x) ++next;
      if (threadIdx.x == 0) on_winner(best_anchor);
    }
    return;
  }
  T prev_value = T(INFINITY);
  int64_t prev_anchor = -1;
  for (int64_t round = 0; round < k; ++round) {
    T best_value = T(0);
    int64_t best_anchor = -1;
    for (int64_t a = threadIdx.x; a < n; a += blockDim.x) {
      const T v = value(a);
      if (ranks_before(prev_value, prev_anchor, v, a) &&
          (best_anchor < 0 || ranks_before(v, a, best_value, best_anchor))) {
        best_value = v;
        best_anchor = a;
      }
    }
    block_best(best_value, best_anchor, values, anchors);
    if (best_anchor < 0) return;
    if (threadIdx.x == 0) on_winner(best_anchor);
    prev_value = best_value;
    prev_anchor = best_anchor;
  }
}

// Pass 1, a block per GT: its top k by alignment; each winner inside the GT's
// region fills the GT's next pick slot.
template <typename K, typename T, typename S>
__global__ void pick_kernel(TaskAlignedView<K, T, S> v, int64_t rows, int64_t topk, int64_t* __restrict__ pick_anchor,
                            T* __restrict__ pick_alignment, T* __restrict__ pick_overlap) {
  __shared__ T values[kRowThreads];
  __shared__ int64_t anchors[kRowThreads];
  // The loop bounds are the same for every thread of a block, so that all of
  // them reach the barriers.
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    if (!v.valid[row]) continue;
    const int64_t image = row / v.gmax, g = row % v.gmax;
    int64_t picked = 0;
    auto alignment_of = [&](int64_t a) {
      T al, o;
      tal_candidate(v, image, g, a, &al, &o);
      return al;
    };
    auto pick = [&](int64_t a) {
      T al, o;
      if (!tal_candidate(v, image, g, a, &al, &o)) return;
      const int64_t slot = row * topk + picked++;
      pick_anchor[slot] = a;
      pick_alignment[slot] = al;
      pick_overlap[slot] = o;
    };
    block_topk<T>(v.n, topk, values, anchors, alignment_of, pick);
  }
}

__global__ void count_kernel(const int64_t* __restrict__ pick_anchor, int64_t slots, int64_t per_image, int64_t n,
                             int32_t* __restrict__ picks, int64_t* __restrict__ entry) {
  for (int64_t e = grid_start(); e < slots; e += grid_stride()) {
    const int64_t a = pick_anchor[e];
    if (a < 0) continue;
    const int64_t i = (e / per_image) * n + a;
    atomicAdd(picks + i, 1);
    entry[i] = e;  // read only where one GT picked the anchor
  }
}

// Pass 2, per anchor: its GT (-1 for background) and that pair's alignment
// and overlap.
template <typename K, typename T, typename S>
__global__ void resolve_kernel(TaskAlignedView<K, T, S> v, int64_t images, int64_t topk,
                               const int32_t* __restrict__ picks, const int64_t* __restrict__ entry,
                               const T* __restrict__ pick_alignment, const T* __restrict__ pick_overlap,
                               int64_t* __restrict__ gt_of, T* __restrict__ alignment, T* __restrict__ overlap) {
  for (int64_t i = grid_start(); i < images * v.n; i += grid_stride()) {
    gt_of[i] = -1;
    alignment[i] = T(0);
    overlap[i] = T(0);
    if (picks[i] == 1) {
      gt_of[i] = (entry[i] / topk) % v.gmax;
      alignment[i] = pick_alignment[entry[i]];
      overlap[i] = pick_overlap[entry[i]];
    } else if (picks[i] > 1) {
      gt_of[i] = tal_resolve_conflict(v, i / v.n, i % v.n, TalAllGts{v.gmax}, alignment + i, overlap + i);
    }
  }
}

// The optional second top-k, a block per GT over the alignments of its
// anchors (0 for the others): its anchors outside it lose their GT.
template <typename T>
__global__ void second_topk_kernel(const int64_t* __restrict__ gt_of, const T* __restrict__ alignment, int64_t rows,
                                   int64_t gmax, int64_t n, int64_t topk2, bool* __restrict__ kept) {
  __shared__ T values[kRowThreads];
  __shared__ int64_t anchors[kRowThreads];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t image = row / gmax, g = row % gmax;
    const int64_t* owner = gt_of + image * n;
    block_topk<T>(
        n, topk2, values, anchors, [&](int64_t a) { return owner[a] == g ? alignment[image * n + a] : T(0); },
        [&](int64_t a) {
          if (owner[a] == g) kept[image * n + a] = true;
        });
  }
}

// Maxima of non-negative floats by their bit patterns, which order alike.
// Adding +0 first turns a -0 (sign bit set: the largest pattern as unsigned)
// into +0.
__device__ __forceinline__ void atomic_max_non_negative(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), __float_as_int(value + 0.0f));
}

__device__ __forceinline__ void atomic_max_non_negative(double* address, double value) {
  atomicMax(reinterpret_cast<unsigned long long*>(address),
            static_cast<unsigned long long>(__double_as_longlong(value + 0.0)));
}

template <typename T>
__global__ void gt_maxima_kernel(int64_t* __restrict__ gt_of, const bool* __restrict__ kept, bool second_topk,
                                 const T* __restrict__ alignment, const T* __restrict__ overlap, int64_t images,
                                 int64_t n, int64_t gmax, T* __restrict__ best_alignment,
                                 T* __restrict__ best_overlap) {
  for (int64_t i = grid_start(); i < images * n; i += grid_stride()) {
    if (gt_of[i] >= 0 && second_topk && !kept[i]) gt_of[i] = -1;
    if (gt_of[i] < 0) continue;
    const int64_t row = (i / n) * gmax + gt_of[i];
    atomic_max_non_negative(best_alignment + row, alignment[i]);
    atomic_max_non_negative(best_overlap + row, overlap[i]);
  }
}

template <typename K, typename T, typename G>
__global__ void targets_kernel(const int64_t* __restrict__ gt_of, const T* __restrict__ alignment,
                               const T* __restrict__ best_alignment, const T* __restrict__ best_overlap,
                               const int64_t* __restrict__ gt_labels, const T* __restrict__ gt, int64_t images,
                               int64_t n, int64_t gmax, int64_t classes, T eps, int64_t* __restrict__ labels,
                               G* __restrict__ bboxes, T* __restrict__ scores, bool* __restrict__ fg,
                               int64_t* __restrict__ gt_index, T* __restrict__ norm) {
  for (int64_t i = grid_start(); i < images * n; i += grid_stride()) {
    const bool positive = gt_of[i] >= 0;
    const int64_t row = (i / n) * gmax + (positive ? gt_of[i] : 0);
    const int64_t label = gt_labels[row] > 0 ? gt_labels[row] : 0;
    const T value = positive ? tal_normalised(alignment[i], best_overlap[row], best_alignment[row], eps) : T(0);
    fg[i] = positive;
    gt_index[i] = row % gmax;
    labels[i] = label;
    norm[i] = value;
    for (int c = 0; c < K::kCoords; ++c) bboxes[K::kCoords * i + c] = static_cast<G>(gt[K::kCoords * row + c]);
    if (scores && positive && label < classes) scores[i * classes + label] = value;
  }
}

template <typename K, typename T, typename S>
void task_aligned_cuda_impl(const TaskAlignedInputs& in, const TaskAlignedParams& p, TaskAlignedOutputs& out) {
  const int64_t images = in.scores.size(0), n = in.scores.size(1), gmax = in.gt.size(1), rows = images * gmax;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto opts = in.gt.options();
  at::Tensor regions = at::empty({rows, K::kRegion}, opts), gt_cache = at::empty({rows, K::kCache}, opts),
             pred_cache = at::empty({images * n, K::kCache}, opts);
  regions_kernel<K, T><<<grid_for(rows), kThreads, 0, stream>>>(in.gt.data_ptr<T>(), in.gt_angles<T>(), rows,
                                                                static_cast<T>(p.min_side), regions.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cache_kernel<K, T>
      <<<grid_for(rows), kThreads, 0, stream>>>(in.gt.data_ptr<T>(), in.gt_angles<T>(), rows, gt_cache.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cache_kernel<K, T><<<grid_for(images * n), kThreads, 0, stream>>>(in.boxes.data_ptr<T>(), in.box_angles<T>(),
                                                                    images * n, pred_cache.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const TaskAlignedView<K, T, S> v{in.scores.data_ptr<S>(),
                                   in.boxes.data_ptr<T>(),
                                   in.anchors.data_ptr<T>(),
                                   in.labels.data_ptr<int64_t>(),
                                   in.gt.data_ptr<T>(),
                                   regions.data_ptr<T>(),
                                   gt_cache.data_ptr<T>(),
                                   pred_cache.data_ptr<T>(),
                                   in.valid.data_ptr<bool>(),
                                   n,
                                   gmax,
                                   p.classes,
                                   static_cast<T>(p.alpha),
                                   static_cast<T>(p.beta)};

  const int64_t slots = rows * p.topk;
  at::Tensor pick_anchor = at::full({slots}, -1, opts.dtype(at::kLong));
  at::Tensor pick_alignment = at::zeros({slots}, opts), pick_overlap = at::zeros({slots}, opts);
  pick_kernel<K, T, S><<<blocks_for(rows), kRowThreads, 0, stream>>>(
      v, rows, p.topk, pick_anchor.data_ptr<int64_t>(), pick_alignment.data_ptr<T>(), pick_overlap.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor picks = at::zeros({images * n}, opts.dtype(at::kInt)),
             entry = at::empty({images * n}, opts.dtype(at::kLong));
  count_kernel<<<grid_for(slots), kThreads, 0, stream>>>(pick_anchor.data_ptr<int64_t>(), slots, gmax * p.topk, n,
                                                         picks.data_ptr<int32_t>(), entry.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor gt_of = at::empty({images * n}, opts.dtype(at::kLong));
  at::Tensor alignment = at::empty({images * n}, opts), overlap = at::empty({images * n}, opts);
  resolve_kernel<K, T, S><<<grid_for(images * n), kThreads, 0, stream>>>(
      v, images, p.topk, picks.data_ptr<int32_t>(), entry.data_ptr<int64_t>(), pick_alignment.data_ptr<T>(),
      pick_overlap.data_ptr<T>(), gt_of.data_ptr<int64_t>(), alignment.data_ptr<T>(), overlap.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const bool second_topk = p.topk2 != p.topk;
  at::Tensor kept = at::zeros({second_topk ? images * n : 1}, opts.dtype(at::kBool));
  if (second_topk) {
    second_topk_kernel<T><<<blocks_for(rows), kRowThreads, 0, stream>>>(
        gt_of.data_ptr<int64_t>(), alignment.data_ptr<T>(), rows, gmax, n, p.topk2, kept.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor best_alignment = at::zeros({rows}, opts), best_overlap = at::zeros({rows}, opts);
  gt_maxima_kernel<T><<<grid_for(images * n), kThreads, 0, stream>>>(
      gt_of.data_ptr<int64_t>(), kept.data_ptr<bool>(), second_topk, alignment.data_ptr<T>(), overlap.data_ptr<T>(),
      images, n, gmax, best_alignment.data_ptr<T>(), best_overlap.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.bboxes.scalar_type(), "tal_targets_cuda", [&] {
    targets_kernel<K, T, scalar_t><<<grid_for(images * n), kThreads, 0, stream>>>(
        gt_of.data_ptr<int64_t>(), alignment.data_ptr<T>(), best_alignment.data_ptr<T>(), best_overlap.data_ptr<T>(),
        in.labels.data_ptr<int64_t>(), in.gt.data_ptr<T>(), images, n, gmax, p.classes, static_cast<T>(p.eps),
        out.labels.data_ptr<int64_t>(), out.bboxes.data_ptr<scalar_t>(),
        p.with_scores ? out.scores.data_ptr<T>() : nullptr, out.fg.data_ptr<bool>(), out.gt_index.data_ptr<int64_t>(),
        out.alignment.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename K>
TaskAlignedResult assign_task_aligned_cuda(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                                           const at::Tensor& anc_points, const at::Tensor& gt_labels,
                                           const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
                                           int64_t topk2, int64_t num_classes, double alpha, double beta, double eps,
                                           double min_side, bool with_scores) {
  const c10::cuda::CUDAGuard guard(pd_scores.device());
  return assign_task_aligned_host<K>(
      pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
      TaskAlignedParams{topk, topk2, num_classes, alpha, beta, eps, min_side, with_scores},
      [](auto math, auto storage, const TaskAlignedInputs& in, const TaskAlignedParams& p, TaskAlignedOutputs& out) {
        task_aligned_cuda_impl<K, decltype(math), decltype(storage)>(in, p, out);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("assign_task_aligned", &assign_task_aligned_cuda<AxisAlignedTal>);
  m.impl("assign_task_aligned_rotated", &assign_task_aligned_cuda<RotatedTal>);
}

}  // namespace mutualops
