// CUDA kernels of the NMS family. Candidates are sorted on the device by
// (key, score descending, index); a 64x64 bitmask kernel compares boxes of one
// key; an on-device greedy pass (one block per image) reduces the mask, which
// never goes to the host. IoU and rescoring come from the shared headers.
//
// rescored_nms works on static shapes only (rescoring and thresholding in one
// kernel, then top-k, sorts and the NMS above over a fixed number of
// candidate slots per image, invalid slots marked), so it makes no host
// synchronisation: fixed-shape outputs are CUDA-graph and torch.compile safe.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../ops/nms.h"
#include "launch.cuh"
#include "mutualops/box_math.h"
#include "mutualops/score_math.h"

namespace mutualops {
namespace {

constexpr int kMaskBits = 64;
// The greedy pass keeps its "removed" bitmap in shared memory when it fits
// (44 KiB, leaving room under the 48 KiB default for the chunk's own arrays).
constexpr int64_t kSharedRemovedWords = 5632;
// Key of an invalid candidate slot: sorts after every real key.
constexpr int64_t kInvalidKey = std::numeric_limits<int64_t>::max();

// Per (image, sorted position): one past the last position with the same key,
// by binary search (keys ascend along each row).
__global__ void run_end_kernel(const int64_t* __restrict__ key, int64_t images, int64_t m, int64_t* __restrict__ end) {
  for (int64_t t = grid_start(); t < images * m; t += grid_stride()) {
    const int64_t* row = key + (t / m) * m;
    const int64_t p = t % m, k = row[p];
    int64_t lo = p + 1, hi = m;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (row[mid] == k) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    end[t] = lo;
  }
}

// mask[b][i][w] bit t: in image b, sorted box i suppresses box w*64+t (later,
// same key, IoU > threshold). blockIdx.z is the image.
template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ key, int64_t m,
                                int64_t col_blocks, T threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x, image = blockIdx.z;
  if (col_block < row_block) return;
  boxes += image * m * 4;
  key += image * m;
  mask += image * m * col_blocks;
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

// Greedy pass in sorted order, one block per image, 64 boxes (one mask word)
// at a time: the block stages the chunk's diagonal words, then one thread
// settles the chunk's boxes among themselves from shared memory, then every
// thread ORs (kept box, later word) pairs of the mask into the "removed"
// bitmap. Three barriers per 64 boxes, and the mask loads of a chunk are issued
// in parallel: a barrier per box, or a thread per word looping over the kept
// boxes, left the pass bound by one load latency after another. Each kept box
// removes only up to the end of its key's run. Invalid slots are never kept.
constexpr int kReduceThreads = 512;

__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ run_end,
                      const int64_t* __restrict__ key, int64_t m, int64_t col_blocks,
                      unsigned long long* __restrict__ removed_global, bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed_shared[];
  __shared__ unsigned long long diagonal[kMaskBits];
  __shared__ bool valid[kMaskBits];
  __shared__ int64_t last_word[kMaskBits];
  __shared__ int kept_list[kMaskBits];
  __shared__ int kept_count;
  __shared__ int64_t chunk_last_word;
  const int64_t image = blockIdx.x;
  const int tid = threadIdx.x;
  mask += image * m * col_blocks;
  run_end += image * m;
  key += image * m;
  keep += image * m;
  unsigned long long* removed =
      col_blocks <= kSharedRemovedWords ? removed_shared : removed_global + image * col_blocks;
  for (int64_t w = tid; w < col_blocks; w += kReduceThreads) removed[w] = 0;
  for (int64_t c = 0; c < col_blocks; ++c) {
    const int64_t begin = c * kMaskBits;
    const int count = static_cast<int>(min(m - begin, static_cast<int64_t>(kMaskBits)));
    if (tid < count) {
      const int64_t i = begin + tid;
      diagonal[tid] = mask[i * col_blocks + c];
      valid[tid] = key[i] != kInvalidKey;
      last_word[tid] = (run_end[i] - 1) / kMaskBits;
    }
    __syncthreads();
    if (tid == 0) {
      unsigned long long word = removed[c];
      int kept = 0;
      int64_t last = c;
      for (int t = 0; t < count; ++t) {
        const bool drop = !valid[t] || ((word >> t) & 1ULL);
        keep[begin + t] = !drop;
        if (drop) continue;
        word |= diagonal[t];
        kept_list[kept++] = t;
        last = max(last, last_word[t]);
      }
      kept_count = kept;
      chunk_last_word = last;
    }
    __syncthreads();
    const int64_t words = chunk_last_word - c;  // words c+1 .. chunk_last_word
    const int64_t pairs = words * kept_count;
    for (int64_t k = tid; k < pairs; k += kReduceThreads) {
      const int64_t w = c + 1 + k % words;
      const int64_t i = begin + kept_list[k / words];
      const unsigned long long bits = mask[i * col_blocks + w];
      if (bits) atomicOr(removed + w, bits);
    }
    __syncthreads();
  }
}

// Greedy NMS of `images` independent rows of m candidates each, already
// sorted by (key, score descending, index): boxes [images, m, 4] in the math
// type, key [images, m] (kInvalidKey for empty slots). Returns keep [images, m].
template <typename T>
at::Tensor greedy_nms_sorted(const at::Tensor& boxes, const at::Tensor& key, double iou_threshold) {
  const int64_t images = key.size(0), m = key.size(1);
  at::Tensor keep = at::zeros({images, m}, key.options().dtype(at::kBool));
  if (images == 0 || m == 0) return keep;
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor run_end = at::empty({images, m}, key.options());
  run_end_kernel<<<grid_for(images * m), kThreads, 0, stream>>>(key.data_ptr<int64_t>(), images, m,
                                                                run_end.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t col_blocks = (m + kMaskBits - 1) / kMaskBits;
  at::Tensor mask = at::empty({images, m, col_blocks}, key.options());
  const dim3 grid(col_blocks, col_blocks, images);
  nms_mask_kernel<T><<<grid, kMaskBits, 0, stream>>>(boxes.data_ptr<T>(), key.data_ptr<int64_t>(), m, col_blocks,
                                                     nms_threshold<T>(iou_threshold),
                                                     reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const bool in_shared = col_blocks <= kSharedRemovedWords;
  at::Tensor removed = at::empty({in_shared ? 1 : images * col_blocks}, key.options());
  nms_reduce_kernel<<<images, kReduceThreads, in_shared ? col_blocks * sizeof(unsigned long long) : 0, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()), run_end.data_ptr<int64_t>(),
      key.data_ptr<int64_t>(), m, col_blocks, reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
      keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

// Positions of each row of `scores` ordered by (score descending, order
// ascending), from two stable sorts; with `key`, by key first.
at::Tensor rank_rows(const at::Tensor& scores, const at::Tensor& order, const std::optional<at::Tensor>& key) {
  at::Tensor perm = std::get<1>(at::sort(order, /*stable=*/true, 1, false));
  perm = perm.gather(1, std::get<1>(at::sort(scores.gather(1, perm), /*stable=*/true, 1, /*descending=*/true)));
  if (key.has_value()) {
    perm = perm.gather(1, std::get<1>(at::sort(key->gather(1, perm), /*stable=*/true, 1, false)));
  }
  return perm;
}

template <typename scalar_t>
at::Tensor batched_nms_typed(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                             double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor finite = scores.isfinite().logical_and_(boxes.isfinite().all(1));
  const at::Tensor candidates = finite.nonzero().squeeze(1);  // the output is data-dependent anyway
  const int64_t m = candidates.size(0);
  if (m == 0) return candidates;
  const at::Tensor order = candidates.unsqueeze(0);
  const at::Tensor perm =
      rank_rows(scores.index_select(0, candidates).unsqueeze(0), order, idxs.index_select(0, candidates).unsqueeze(0));
  const at::Tensor sorted = order.gather(1, perm).squeeze(0);
  const at::Tensor key = idxs.index_select(0, sorted).unsqueeze(0).contiguous();
  const at::Tensor sorted_boxes =
      boxes.index_select(0, sorted).to(c10::CppTypeToScalarType<acc_t>::value).unsqueeze(0).contiguous();
  const at::Tensor keep = greedy_nms_sorted<acc_t>(sorted_boxes, key, iou_threshold).squeeze(0);
  // Output order: score descending, ties to the lower index.
  const at::Tensor kept = sorted.masked_select(keep).unsqueeze(0);
  return kept.gather(1, rank_rows(scores.index_select(0, kept.squeeze(0)).unsqueeze(0), kept, std::nullopt)).squeeze(0);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous(), k = idxs.to(at::kLong).contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "batched_nms_cuda",
                                  [&] { keep = batched_nms_typed<scalar_t>(b, s, k, iou_threshold); });
  return keep;
}

// ---- rescored NMS -------------------------------------------------------

// Candidate scores [images, P] (P = N*C dense, M flat): the rescored score
// where the candidate passes (finite box and score, score > threshold, right
// image), -inf elsewhere. Dense candidate p is (point p / C, class p % C).
template <typename scalar_t, typename acc_t>
__global__ void candidate_scores_kernel(const scalar_t* __restrict__ boxes, const scalar_t* __restrict__ cls,
                                        const scalar_t* __restrict__ iou, const int64_t* __restrict__ batch_index,
                                        const int64_t* __restrict__ labels, int64_t images, int64_t points,
                                        int64_t classes, bool dense, bool logits, acc_t alpha, acc_t score_threshold,
                                        acc_t* __restrict__ out) {
  const int64_t per_image = points * classes;
  for (int64_t t = grid_start(); t < images * per_image; t += grid_stride()) {
    const int64_t image = t / per_image, p = t % per_image;
    // Dense inputs index boxes, cls and iou by image; flat ones are shared by all images.
    const int64_t point = dense ? image * points + p / classes : p;
    const int64_t cls_at = dense ? t : p;
    const Box<acc_t> b = load_box<acc_t>(boxes + 4 * point);
    const acc_t quality = iou ? probability(static_cast<acc_t>(iou[point]), logits) : acc_t(1);
    const acc_t s = rescore(probability(static_cast<acc_t>(cls[cls_at]), logits), quality, alpha);
    // A negative (flat) label marks a padding candidate, as in the padded outputs: never kept.
    const bool ok = (dense || batch_index == nullptr || batch_index[p] == image) &&
                    (labels == nullptr || labels[p] >= 0) && s > score_threshold && isfinite(s) && finite_box(b);
    out[t] = ok ? s : -INFINITY;
  }
}

using DetectionTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// One call's candidates, contiguous: dense (boxes [B,N,4], scores [B,N,C], iou [B,N]; candidate p of an image
// is point p / C, class p % C) or flat (boxes [M,4], scores, labels, iou and batch_index [M], shared by all
// images; candidate p is element p). Absent optional tensors are undefined.
struct Candidates {
  at::Tensor boxes, scores, iou, labels, batch_index;
  std::optional<at::Tensor> level_index;
  int64_t num_levels, images, points, classes;
  bool dense;
  int64_t per_image() const { return points * classes; }
  at::TensorOptions longs() const { return boxes.options().dtype(at::kLong); }
};

Candidates dense_candidates(const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& iou,
                            const std::optional<at::Tensor>& level_index, int64_t num_levels) {
  return Candidates{boxes.contiguous(),
                    scores.contiguous(),
                    iou.has_value() ? iou->contiguous() : at::Tensor(),
                    at::Tensor(),
                    at::Tensor(),
                    level_index,
                    num_levels,
                    boxes.size(0),
                    boxes.size(1),
                    scores.size(2),
                    true};
}

Candidates flat_candidates(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                           const std::optional<at::Tensor>& iou, const std::optional<at::Tensor>& batch_index,
                           const std::optional<at::Tensor>& level_index, int64_t num_levels, int64_t num_images) {
  return Candidates{boxes.contiguous(),
                    scores.contiguous(),
                    iou.has_value() ? iou->contiguous() : at::Tensor(),
                    labels.to(at::kLong).contiguous(),
                    batch_index.has_value() ? batch_index->to(at::kLong).contiguous() : at::Tensor(),
                    level_index,
                    num_levels,
                    num_images,
                    boxes.size(0),
                    1,
                    false};
}

// [images, per_image] rescored scores of the candidates that pass, -inf for the others.
template <typename scalar_t, typename acc_t>
at::Tensor candidate_scores(const Candidates& c, const RescoreParams& p) {
  const auto accs = c.boxes.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor cand = at::empty({c.images, c.per_image()}, accs);
  if (cand.numel() == 0) return cand;
  candidate_scores_kernel<scalar_t, acc_t><<<grid_for(cand.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      c.boxes.data_ptr<scalar_t>(), c.scores.data_ptr<scalar_t>(),
      c.iou.defined() ? c.iou.data_ptr<scalar_t>() : nullptr,
      c.batch_index.defined() ? c.batch_index.data_ptr<int64_t>() : nullptr,
      c.labels.defined() ? c.labels.data_ptr<int64_t>() : nullptr, c.images, c.points, c.classes, c.dense, p.logits,
      static_cast<acc_t>(p.alpha), static_cast<acc_t>(p.score_threshold), cand.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return cand;
}

// The pre-NMS top-k per (image, level) as a fixed number of slots per image: each slot's score (-inf where
// unused) and candidate index.
struct Slots {
  at::Tensor score, candidate;
};

Slots level_top_k(const at::Tensor& cand, const Candidates& c, const at::Tensor& point_of, int64_t top_k) {
  const int64_t k = top_k < 0 ? c.per_image() : std::min(top_k, c.per_image());
  std::vector<at::Tensor> scores, candidates;
  for (int64_t level = 0; level < c.num_levels; ++level) {
    at::Tensor level_scores = cand;
    if (c.level_index.has_value()) {
      const at::Tensor in_level = c.level_index->index_select(0, point_of).eq(level);
      level_scores = cand.masked_fill(in_level.logical_not().unsqueeze(0), -INFINITY);
    }
    auto top = at::topk(level_scores, k, 1, /*largest=*/true, /*sorted=*/false);
    scores.push_back(std::get<0>(top));
    candidates.push_back(std::get<1>(top));
  }
  return Slots{at::cat(scores, 1), at::cat(candidates, 1)};
}

// Row offset of each image's points in the flattened boxes: dense boxes are per image, flat ones shared.
at::Tensor image_point_offset(const Candidates& c) {
  return c.dense ? at::arange(c.images, c.longs()).mul_(c.points).unsqueeze(1) : at::zeros({c.images, 1}, c.longs());
}

// Padded [images, width] outputs: the first `take` picked slots, `filled` where an image has that many.
DetectionTensors write_detections(const Candidates& c, const Slots& slots, const at::Tensor& slot_point,
                                  const at::Tensor& slot_label, const at::Tensor& pick, const at::Tensor& counts,
                                  int64_t width) {
  const int64_t take = pick.size(1);
  const at::Tensor filled = at::arange(take, c.longs()).unsqueeze(0).lt(counts.unsqueeze(1));
  auto pad = [&](const at::Tensor& t, const at::Scalar& fill) {
    at::Tensor out = t.new_full({c.images, width}, fill);
    out.narrow(1, 0, take).copy_(t.masked_fill(filled.logical_not(), fill));
    return out;
  };
  const at::Tensor det_point = slot_point.gather(1, pick);
  const at::Tensor image_offset = image_point_offset(c);
  const at::Tensor det_box_row = (det_point + image_offset).reshape(-1);
  at::Tensor det_boxes = c.boxes.reshape({-1, 4}).index_select(0, det_box_row).view({c.images, take, 4});
  det_boxes = det_boxes.masked_fill(filled.logical_not().unsqueeze(2), 0);
  at::Tensor out_boxes = c.boxes.new_zeros({c.images, width, 4});
  out_boxes.narrow(1, 0, take).copy_(det_boxes);
  const at::Tensor source = c.dense ? det_point : slots.candidate.gather(1, pick);
  return {out_boxes, pad(slots.score.gather(1, pick).to(c.boxes.scalar_type()), 0), pad(slot_label.gather(1, pick), -1),
          pad(source, -1), counts};
}

// Rescoring, threshold and top-k in static shapes, then one class-aware NMS over all slots (sorted by key,
// score descending, candidate index; invalid slots last), then the best survivors: no host synchronisation.
template <typename scalar_t>
DetectionTensors rescored_typed(const Candidates& c, const RescoreParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor cand = candidate_scores<scalar_t, acc_t>(c, p);
  const at::Tensor point_of = at::arange(c.per_image(), c.longs()).div_(c.classes, "floor");
  const Slots slots = level_top_k(cand, c, point_of, p.top_k);
  const at::Tensor valid = slots.score.isfinite();
  const at::Tensor slot_point = point_of.index_select(0, slots.candidate.reshape(-1)).view_as(slots.candidate);
  const at::Tensor slot_label = c.dense
                                    ? slots.candidate.remainder(c.classes)
                                    : c.labels.index_select(0, slots.candidate.reshape(-1)).view_as(slots.candidate);
  at::Tensor key = p.class_agnostic ? at::zeros_like(slot_label) : slot_label;
  key = key.masked_fill(valid.logical_not(), kInvalidKey);
  const at::Tensor perm = rank_rows(slots.score, slots.candidate, key);
  const at::Tensor sorted_key = key.gather(1, perm).contiguous();
  const at::Tensor box_row = (slot_point.gather(1, perm) + image_point_offset(c)).reshape(-1);
  const at::Tensor sorted_boxes = c.boxes.reshape({-1, 4})
                                      .index_select(0, box_row)
                                      .to(c10::CppTypeToScalarType<acc_t>::value)
                                      .view({c.images, -1, 4})
                                      .contiguous();
  const at::Tensor keep = greedy_nms_sorted<acc_t>(sorted_boxes, sorted_key, p.iou_threshold);
  // Survivors by (score descending, candidate index); the first `width`.
  const at::Tensor kept_score = slots.score.gather(1, perm).masked_fill(keep.logical_not(), -INFINITY);
  const at::Tensor best = rank_rows(kept_score, slots.candidate.gather(1, perm), std::nullopt);
  const int64_t width = detection_slots(p.max_detections, c.per_image());
  const int64_t take = std::min(width, best.size(1));
  const at::Tensor pick = perm.gather(1, best.narrow(1, 0, take));  // slot index of each detection
  const at::Tensor counts = keep.sum(1).clamp_max(width);
  return write_detections(c, slots, slot_point, slot_label, pick, counts, width);
}

DetectionTensors rescored_cuda(const Candidates& c, const RescoreParams& p) {
  const c10::cuda::CUDAGuard guard(c.boxes.device());
  DetectionTensors result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.boxes.scalar_type(), "rescored_nms_cuda",
                                  [&] { result = rescored_typed<scalar_t>(c, p); });
  return result;
}

DetectionTensors rescored_nms_dense_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                         const std::optional<at::Tensor>& iou,
                                         const std::optional<at::Tensor>& level_index, int64_t num_levels, double alpha,
                                         double score_threshold, double iou_threshold, int64_t pre_nms_top_k,
                                         int64_t max_detections, bool class_agnostic, bool logits) {
  check_rescored_dense(boxes, scores, iou, level_index, num_levels, alpha, score_threshold, iou_threshold,
                       max_detections);
  return rescored_cuda(dense_candidates(boxes, scores, iou, level_index, num_levels),
                       rescore_params(iou, alpha, score_threshold, iou_threshold, pre_nms_top_k, max_detections,
                                      class_agnostic, logits));
}

DetectionTensors rescored_nms_flat_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                                        const std::optional<at::Tensor>& iou,
                                        const std::optional<at::Tensor>& batch_index,
                                        const std::optional<at::Tensor>& level_index, int64_t num_levels,
                                        int64_t num_images, double alpha, double score_threshold, double iou_threshold,
                                        int64_t pre_nms_top_k, int64_t max_detections, bool class_agnostic,
                                        bool logits) {
  check_rescored_flat(boxes, scores, labels, iou, batch_index, level_index, num_levels, num_images, alpha,
                      score_threshold, iou_threshold, max_detections);
  return rescored_cuda(flat_candidates(boxes, scores, labels, iou, batch_index, level_index, num_levels, num_images),
                       rescore_params(iou, alpha, score_threshold, iou_threshold, pre_nms_top_k, max_detections,
                                      class_agnostic, logits));
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("rescored_nms_dense", &rescored_nms_dense_cuda);
  m.impl("rescored_nms_flat", &rescored_nms_flat_cuda);
}

}  // namespace mutualops
