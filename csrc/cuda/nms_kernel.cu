// CUDA kernels of the NMS family. Candidates are put in detection order (score descending, then index) by one
// radix sort of rank keys (score_math.h), then stably by key when there are classes; a 64x64 bitmask kernel
// compares boxes of one key; an on-device greedy pass (one block per image) reduces the mask, which never
// goes to the host. The mask is built and reduced a tile of rows at a time, so that its memory stays under
// kMaskTileBytes (or one 64-row strip per image) for any number of boxes, and every kernel loops over its
// work with a grid stride, so that no grid dimension limits the images or boxes of a call. IoU and rescoring
// come from the shared headers.
//
// rescored_nms works on static shapes only: each (image, level)'s best pre_nms_top_k candidates are found by
// a radix select over rank keys computed on the fly from the head outputs (no [B, N*C] score buffer), then
// ordered and suppressed as above over a fixed number of slots per image, invalid slots marked. It makes no
// host synchronisation: fixed-shape outputs are CUDA-graph and torch.compile safe.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "../ops/nms.h"
#include "greedy_nms.cuh"
#include "launch.cuh"
#include "mutualops/box_math.h"
#include "mutualops/score_math.h"

namespace mutualops {
namespace {

// ---- detection order --------------------------------------------------------

// Signed rank keys of (score, index) pairs.
__global__ void rank_key_kernel(const float* __restrict__ score, const int64_t* __restrict__ index, int64_t total,
                                int64_t* __restrict__ key) {
  for (int64_t t = grid_start(); t < total; t += grid_stride()) {
    key[t] = signed_rank_key(rank_key(score[t], index[t]));
  }
}

// Positions of each row of `score` [rows, m] (the math type) in detection order: score descending, then
// `index` ascending. One radix sort of rank keys for float scores and indices below 2^32 (`index_bound`);
// two stable sorts otherwise. index must hold distinct values per row.
at::Tensor detection_order(const at::Tensor& score, const at::Tensor& index, int64_t index_bound) {
  if (score.scalar_type() == at::kFloat && index_bound <= kRankKeyIndices) {
    const at::Tensor s = score.contiguous(), i = index.contiguous();
    at::Tensor key = at::empty(s.sizes(), i.options());
    if (key.numel() > 0) {
      rank_key_kernel<<<grid_for(key.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          s.data_ptr<float>(), i.data_ptr<int64_t>(), key.numel(), key.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return std::get<1>(at::sort(key, /*stable=*/false, 1, false));
  }
  at::Tensor perm = std::get<1>(at::sort(index, /*stable=*/true, 1, false));
  return perm.gather(1, std::get<1>(at::sort(score.gather(1, perm), /*stable=*/true, 1, /*descending=*/true)));
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_boxes_scores(boxes, scores, iou_threshold);
  return run_nms<AxisAlignedBoxes>(boxes, scores, std::nullopt, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  return run_nms<AxisAlignedBoxes>(boxes, scores, idxs, iou_threshold);
}

// ---- rescored NMS -------------------------------------------------------

// One call's candidates, contiguous: dense (boxes [B,N,4], scores [B,N,C], iou [B,N]; candidate p of an image
// is point p / C, class p % C) or flat (boxes [M,4], scores, labels, iou and batch_index [M], shared by all
// images; candidate p is element p). Absent optional tensors are undefined.
struct Candidates {
  at::Tensor boxes, scores, iou, labels, batch_index, level_index;
  int64_t num_levels, images, points, classes;
  bool dense;
  int64_t per_image() const { return points * classes; }
  // What the radix select loops over: every (image, candidate) of dense inputs, each flat element once.
  int64_t elements() const { return dense ? images * per_image() : (images > 0 ? per_image() : 0); }
  at::TensorOptions longs() const { return boxes.options().dtype(at::kLong); }
};

Candidates dense_candidates(const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& iou,
                            const std::optional<at::Tensor>& level_index, int64_t num_levels) {
  return Candidates{boxes.contiguous(),
                    scores.contiguous(),
                    iou.has_value() ? iou->contiguous() : at::Tensor(),
                    at::Tensor(),
                    at::Tensor(),
                    level_index.has_value() ? level_index->to(at::kLong).contiguous() : at::Tensor(),
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
                    level_index.has_value() ? level_index->to(at::kLong).contiguous() : at::Tensor(),
                    num_levels,
                    num_images,
                    boxes.size(0),
                    1,
                    false};
}

// What the kernels read of Candidates and RescoreParams to score candidate t = image * per_image + p.
template <typename scalar_t, typename acc_t>
struct ScoreArgs {
  const scalar_t *boxes, *cls, *iou;
  const int64_t *batch_index, *labels, *level_index;
  int64_t points, classes, num_levels, images;
  bool dense, logits;
  acc_t alpha, score_threshold;
  __device__ int64_t per_image() const { return points * classes; }
  // The candidate t = image * per_image + p that element i of Candidates::elements() stands for: a flat
  // element is in its batch_index's image (-1 outside them), so that a flat call costs M, not images * M.
  __device__ int64_t candidate_of(int64_t i) const {
    if (dense) return i;
    const int64_t image = batch_index == nullptr ? 0 : batch_index[i];
    return image >= 0 && image < images ? image * per_image() + i : -1;
  }
  // Dense inputs index boxes, cls and iou by image; flat ones are shared by all images.
  __device__ int64_t point(int64_t image, int64_t p) const { return dense ? image * points + p / classes : p; }
  // The candidate's level, or -1 outside [0, num_levels) (such a candidate is never kept).
  __device__ int64_t level(int64_t p) const {
    if (level_index == nullptr) return 0;
    const int64_t l = level_index[dense ? p / classes : p];
    return l >= 0 && l < num_levels ? l : -1;
  }
  // The rescored score where the candidate passes (finite box and score, score > threshold, right image,
  // a level in range, not padding), -inf elsewhere.
  __device__ acc_t score(int64_t t) const {
    const int64_t image = t / per_image(), p = t % per_image();
    const int64_t at = point(image, p);
    const Box<acc_t> b = load_box<acc_t>(boxes + 4 * at);
    const acc_t quality = iou ? probability(static_cast<acc_t>(iou[at]), logits) : acc_t(1);
    const acc_t s = rescore(probability(static_cast<acc_t>(cls[dense ? t : p]), logits), quality, alpha);
    // A negative (flat) label marks a padding candidate, as in the padded outputs: never kept.
    // Without batch_index every flat element is image 0's, as on the CPU.
    const bool ok = (dense || (batch_index == nullptr ? image == 0 : batch_index[p] == image)) &&
                    (labels == nullptr || labels[p] >= 0) && level(p) >= 0 && s > score_threshold && isfinite(s) &&
                    finite_box(b);
    return ok ? s : -INFINITY;
  }
};

template <typename scalar_t, typename acc_t>
ScoreArgs<scalar_t, acc_t> score_args(const Candidates& c, const RescoreParams& p) {
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<int64_t>() : nullptr; };
  return ScoreArgs<scalar_t, acc_t>{c.boxes.data_ptr<scalar_t>(),
                                    c.scores.data_ptr<scalar_t>(),
                                    c.iou.defined() ? c.iou.data_ptr<scalar_t>() : nullptr,
                                    ptr(c.batch_index),
                                    ptr(c.labels),
                                    ptr(c.level_index),
                                    c.points,
                                    c.classes,
                                    c.num_levels,
                                    c.images,
                                    c.dense,
                                    p.logits,
                                    static_cast<acc_t>(p.alpha),
                                    static_cast<acc_t>(p.score_threshold)};
}

template <typename scalar_t, typename acc_t>
__global__ void candidate_scores_kernel(ScoreArgs<scalar_t, acc_t> args, int64_t total, acc_t* __restrict__ out) {
  for (int64_t t = grid_start(); t < total; t += grid_stride()) out[t] = args.score(t);
}

// [images, per_image] rescored scores of the candidates that pass, -inf for the others.
template <typename scalar_t, typename acc_t>
at::Tensor candidate_scores(const Candidates& c, const RescoreParams& p) {
  const auto accs = c.boxes.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor cand = at::empty({c.images, c.per_image()}, accs);
  if (cand.numel() == 0) return cand;
  candidate_scores_kernel<scalar_t, acc_t><<<grid_for(cand.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      score_args<scalar_t, acc_t>(c, p), cand.numel(), cand.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return cand;
}

// The pre-NMS top-k per (image, level) as a fixed number of slots per image: each slot's score (-inf where
// unused) and candidate index.
struct Slots {
  at::Tensor score, candidate;
};

// ---- pre-NMS top-k by radix select --------------------------------------
// Each (image, level) segment keeps its k best candidates in detection order, which are its k smallest rank
// keys (distinct: the candidate index is in the key). Eight passes find the k-th smallest key a byte at a
// time, from the top: each pass histograms the byte of the keys that share the bytes found so far, and one
// thread per segment walks its histogram. A segment with at most k candidates takes them all. The scores are
// recomputed from the head outputs in every pass, so that memory is O(segments) and not O(B * N * C).
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 64 / kRadixBits;
// Histograms of at most 64 MiB; more segments (sparse level ids on many images) take the top-k path.
constexpr int64_t kMaxRadixSegments = (int64_t(64) << 20) / (kRadixBins * sizeof(unsigned int));

// Per segment: the key bytes found so far, and how many keys with them are still to be taken (0: all).
struct RadixState {
  unsigned long long* prefix;
  long long* need;
  unsigned int* histogram;  // [segments, kRadixBins]
};

// Calls f(t, segment, key, score) for the candidate t of every element (Candidates::elements()), with the
// warp's 32 lanes always together (the loop bound is per warp), so that f may use warp-wide intrinsics;
// invalid lanes get segment -1.
template <typename scalar_t, typename F>
__device__ void for_each_candidate(const ScoreArgs<scalar_t, float>& args, int64_t elements, F&& f) {
  const int lane = threadIdx.x % 32;
  for (int64_t i0 = grid_start() - lane; i0 < elements; i0 += grid_stride()) {
    const int64_t t = i0 + lane < elements ? args.candidate_of(i0 + lane) : -1;
    int64_t segment = -1;
    uint64_t key = 0;
    float s = -INFINITY;
    if (t >= 0) {
      s = args.score(t);
      if (s != -INFINITY) {
        const int64_t image = t / args.per_image(), p = t % args.per_image();
        segment = image * args.num_levels + args.level(p);
        key = rank_key(s, p);
      }
    }
    f(t, segment, key, s);
  }
}

template <typename scalar_t>
__global__ void radix_histogram_kernel(ScoreArgs<scalar_t, float> args, int64_t elements, RadixState state, int shift) {
  for_each_candidate(args, elements, [&](int64_t, int64_t segment, uint64_t key, float) {
    long long bin = -1;
    if (segment >= 0 && state.need[segment] != 0) {
      const bool same_prefix =
          shift + kRadixBits >= 64 || (key >> (shift + kRadixBits)) == (state.prefix[segment] >> (shift + kRadixBits));
      if (same_prefix) bin = segment * kRadixBins + static_cast<long long>((key >> shift) & (kRadixBins - 1));
    }
    // Scores crowd into few bins: one atomic per distinct bin of the warp.
    const unsigned same = __match_any_sync(0xffffffffu, bin);
    if (bin >= 0 && (threadIdx.x % 32) == __ffs(same) - 1)
      atomicAdd(state.histogram + bin, static_cast<unsigned int>(__popc(same)));
  });
}

// One thread per segment: the bin holding its need-th smallest key becomes the next prefix byte.
__global__ void radix_scan_kernel(RadixState state, int64_t segments, int shift) {
  for (int64_t seg = grid_start(); seg < segments; seg += grid_stride()) {
    unsigned int* h = state.histogram + seg * kRadixBins;
    const long long need = state.need[seg];
    if (need != 0) {
      long long total = 0;
      for (int b = 0; b < kRadixBins; ++b) total += h[b];
      if (shift + kRadixBits >= 64 && total <= need) {
        state.need[seg] = 0;
      } else {
        long long before = 0;
        for (int b = 0; b < kRadixBins; ++b) {
          if (before + h[b] >= need) {
            state.prefix[seg] |= static_cast<unsigned long long>(b) << shift;
            state.need[seg] = need - before;
            break;
          }
          before += h[b];
        }
      }
    }
    for (int b = 0; b < kRadixBins; ++b) h[b] = 0;
  }
}

// Writes each selected candidate (key at most the segment's k-th smallest, or every one of a segment that
// takes all) into its segment's k slots of the image.
template <typename scalar_t>
__global__ void radix_compact_kernel(ScoreArgs<scalar_t, float> args, int64_t elements, RadixState state, int64_t k,
                                     unsigned long long* __restrict__ filled, float* __restrict__ slot_score,
                                     int64_t* __restrict__ slot_candidate) {
  for_each_candidate(args, elements, [&](int64_t t, int64_t segment, uint64_t key, float score) {
    if (segment < 0 || (state.need[segment] != 0 && key > state.prefix[segment])) return;
    const int64_t slot = segment * k + static_cast<int64_t>(atomicAdd(filled + segment, 1ULL));
    slot_score[slot] = score;
    slot_candidate[slot] = t % args.per_image();
  });
}

template <typename scalar_t>
Slots radix_top_k(const Candidates& c, const RescoreParams& p, int64_t k) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t segments = c.images * c.num_levels, elements = c.elements();
  const auto longs = c.longs();
  Slots slots{at::full({c.images, c.num_levels * k}, -std::numeric_limits<float>::infinity(),
                       c.boxes.options().dtype(at::kFloat)),
              at::zeros({c.images, c.num_levels * k}, longs)};
  if (elements == 0 || k == 0) return slots;
  at::Tensor prefix = at::zeros({segments}, longs), need = at::full({segments}, k, longs);
  at::Tensor histogram = at::zeros({segments * kRadixBins}, c.boxes.options().dtype(at::kInt));
  const RadixState state{reinterpret_cast<unsigned long long*>(prefix.data_ptr<int64_t>()),
                         reinterpret_cast<long long*>(need.data_ptr<int64_t>()),
                         reinterpret_cast<unsigned int*>(histogram.data_ptr<int32_t>())};
  const auto args = score_args<scalar_t, float>(c, p);
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const int shift = 64 - kRadixBits * (pass + 1);
    radix_histogram_kernel<scalar_t><<<grid_for(elements), kThreads, 0, stream>>>(args, elements, state, shift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    radix_scan_kernel<<<grid_for(segments), kThreads, 0, stream>>>(state, segments, shift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor filled = at::zeros({segments}, longs);
  radix_compact_kernel<scalar_t><<<grid_for(elements), kThreads, 0, stream>>>(
      args, elements, state, k, reinterpret_cast<unsigned long long*>(filled.data_ptr<int64_t>()),
      slots.score.data_ptr<float>(), slots.candidate.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return slots;
}

// The same slots by one torch top-k per level over a [B, N*C] score buffer: for float64 scores, more than
// 2^32 candidates per image, or more segments than the radix histograms hold.
template <typename scalar_t, typename acc_t>
Slots buffered_top_k(const Candidates& c, const RescoreParams& p, int64_t k) {
  const at::Tensor cand = candidate_scores<scalar_t, acc_t>(c, p);
  std::vector<at::Tensor> scores, candidates;
  for (int64_t level = 0; level < c.num_levels; ++level) {
    at::Tensor level_scores = cand;
    if (!c.level_index.defined() && level > 0) {
      level_scores = at::full_like(cand, -INFINITY);  // without level ids every candidate is level 0's
    } else if (c.level_index.defined()) {
      const at::Tensor point_of = at::arange(c.per_image(), c.longs()).div_(c.classes, "floor");
      const at::Tensor in_level = c.level_index.index_select(0, point_of).eq(level);
      level_scores = cand.masked_fill(in_level.logical_not().unsqueeze(0), -INFINITY);
    }
    auto top = at::topk(level_scores, k, 1, /*largest=*/true, /*sorted=*/false);
    scores.push_back(std::get<0>(top));
    candidates.push_back(std::get<1>(top));
  }
  return Slots{at::cat(scores, 1), at::cat(candidates, 1)};
}

// The slots of every image: each candidate once when the top-k keeps them all, else the best k per
// (image, level).
template <typename scalar_t, typename acc_t>
Slots select_slots(const Candidates& c, const RescoreParams& p) {
  const int64_t k = p.top_k < 0 ? c.per_image() : std::min(p.top_k, c.per_image());
  if (k == c.per_image()) {
    return Slots{candidate_scores<scalar_t, acc_t>(c, p),
                 at::arange(c.per_image(), c.longs()).unsqueeze(0).expand({c.images, -1}).contiguous()};
  }
  // Fewer than 2^32 candidates per image: the 32-bit histogram bins cannot wrap.
  if (std::is_same<acc_t, float>::value && c.per_image() < kRankKeyIndices &&
      c.images * c.num_levels <= kMaxRadixSegments) {
    return radix_top_k<scalar_t>(c, p, k);
  }
  return buffered_top_k<scalar_t, acc_t>(c, p, k);
}

// Row offset of each image's points in the flattened boxes: dense boxes are per image, flat ones shared.
at::Tensor image_point_offset(const Candidates& c) {
  return c.dense ? at::arange(c.images, c.longs()).mul_(c.points).unsqueeze(1) : at::zeros({c.images, 1}, c.longs());
}

using DetectionTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

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
  const at::Tensor det_box_row = (det_point + image_point_offset(c)).reshape(-1);
  at::Tensor det_boxes = c.boxes.reshape({-1, 4}).index_select(0, det_box_row).view({c.images, take, 4});
  det_boxes = det_boxes.masked_fill(filled.logical_not().unsqueeze(2), 0);
  at::Tensor out_boxes = c.boxes.new_zeros({c.images, width, 4});
  out_boxes.narrow(1, 0, take).copy_(det_boxes);
  const at::Tensor source = c.dense ? det_point : slots.candidate.gather(1, pick);
  return {out_boxes, pad(slots.score.gather(1, pick).to(c.boxes.scalar_type()), 0), pad(slot_label.gather(1, pick), -1),
          pad(source, -1), counts};
}

// Rescoring, threshold and top-k in static shapes, then one NMS over all slots (detection order, then by key
// for class-aware NMS; invalid slots last), then the first survivors in detection order: no host
// synchronisation.
template <typename scalar_t>
DetectionTensors rescored_typed(const Candidates& c, const RescoreParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const Slots slots = select_slots<scalar_t, acc_t>(c, p);
  const int64_t slot_count = slots.score.size(1);
  const at::Tensor valid = slots.score.isfinite();
  const at::Tensor slot_point = c.dense ? slots.candidate.div(c.classes, "floor") : slots.candidate;
  const at::Tensor slot_label = c.dense
                                    ? slots.candidate.remainder(c.classes)
                                    : c.labels.index_select(0, slots.candidate.reshape(-1)).view_as(slots.candidate);
  // order: slot positions in detection order; sorted: the same grouped by key (stably) for NMS.
  const at::Tensor order = detection_order(slots.score, slots.candidate, c.per_image());
  at::Tensor sorted = order, by_key;
  std::optional<at::Tensor> sorted_key;
  if (!p.class_agnostic) {
    auto [key, positions] =
        at::sort(slot_label.masked_fill(valid.logical_not(), kInvalidKey).gather(1, order), /*stable=*/true, 1, false);
    sorted_key = key.contiguous();
    by_key = positions;
    sorted = order.gather(1, by_key);
  }
  const at::Tensor box_row = (slot_point.gather(1, sorted) + image_point_offset(c)).reshape(-1);
  const at::Tensor sorted_boxes = c.boxes.reshape({-1, 4})
                                      .index_select(0, box_row)
                                      .to(c10::CppTypeToScalarType<acc_t>::value)
                                      .view({c.images, slot_count, 4})
                                      .contiguous();
  const at::Tensor keep = greedy_nms_sorted<AxisAlignedBoxes, acc_t>(
      sorted_boxes, sorted_key, valid.gather(1, sorted).contiguous(), p.iou_threshold);
  const at::Tensor kept_in_order = p.class_agnostic ? keep : at::zeros_like(keep).scatter_(1, by_key, keep);
  // Detection d of an image is its d-th survivor in detection order; the others go to a spare column.
  const int64_t width = detection_slots(p.max_detections, c.per_image());
  const int64_t take = std::min(width, slot_count);
  const at::Tensor rank = kept_in_order.cumsum(1).sub_(1);
  const at::Tensor column = rank.masked_fill(kept_in_order.logical_not().logical_or_(rank.ge(take)), take);
  at::Tensor position = at::zeros({c.images, take + 1}, c.longs());
  position.scatter_(1, column, at::arange(slot_count, c.longs()).unsqueeze(0).expand({c.images, -1}));
  const at::Tensor pick = order.gather(1, position.narrow(1, 0, take));  // slot index of each detection
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
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("rescored_nms_dense", &rescored_nms_dense_cuda);
  m.impl("rescored_nms_flat", &rescored_nms_flat_cuda);
}

}  // namespace mutualops
