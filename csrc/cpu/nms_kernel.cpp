// CPU kernels of the NMS family. Candidates are ordered by (key, score
// descending, index) and each run of one key is suppressed greedily with a
// vectorised loop; IoU and rescoring come from the shared headers. Memory is
// O(N) (O(levels x top-k) per image for rescored NMS): no N x N matrix.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../ops/nms.h"
#include "mutualops/box_math.h"
#include "mutualops/score_math.h"
#include "scratch.h"
#include "simd.h"

namespace mutualops {
namespace {

// Boxes in candidate order as planes (x1, y1, x2, y2, area), so that the
// suppression loop loads contiguous lanes and vectorizes.
template <typename T>
struct BoxPlanes {
  Scratch<T> data;
  int64_t m;
  explicit BoxPlanes(int64_t count) : data(5 * count), m(count) {}
  void set(int64_t p, const Box<T>& b) {
    data[p] = b.x1, data[m + p] = b.y1, data[2 * m + p] = b.x2, data[3 * m + p] = b.y2;
    data[4 * m + p] = box_area(b);
  }
  Box<T> box(int64_t p) const { return Box<T>{data[p], data[m + p], data[2 * m + p], data[3 * m + p]}; }
  T area(int64_t p) const { return data[4 * m + p]; }
};

// Greedy NMS over positions [begin, end) of one key, already in score order:
// a box that survives removes every later box overlapping it above threshold.
// Plain restrict pointers keep the inner loop vectorizable.
template <typename T>
MUTUALOPS_CPU_CLONES void greedy_nms_run(const BoxPlanes<T>& planes, int64_t begin, int64_t end, T threshold,
                                         uint8_t* removed_ptr) {
  const int64_t m = planes.m;
  const T* __restrict__ x1 = planes.data.ptr;
  const T* __restrict__ y1 = x1 + m;
  const T* __restrict__ x2 = y1 + m;
  const T* __restrict__ y2 = x2 + m;
  const T* __restrict__ area = y2 + m;
  uint8_t* __restrict__ removed = removed_ptr;
  for (int64_t i = begin; i < end; ++i) {
    if (removed[i]) continue;
    const Box<T> a{x1[i], y1[i], x2[i], y2[i]};
    const BoxShape<T> sa{area[i], T(0)};
    for (int64_t j = i + 1; j < end; ++j) {
      const Box<T> b{x1[j], y1[j], x2[j], y2[j]};
      const BoxShape<T> sb{area[j], T(0)};
      removed[j] |= static_cast<uint8_t>(box_overlap<IouMode::kIou>(a, b, sa, sb) > threshold);
    }
  }
}

template <typename scalar_t>
at::Tensor batched_nms_typed(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                             double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* box_data = boxes.data_ptr<scalar_t>();
  const scalar_t* score_data = scores.data_ptr<scalar_t>();
  const int64_t* key_data = idxs.data_ptr<int64_t>();
  auto score = [&](int64_t i) { return static_cast<acc_t>(score_data[i]); };

  // Finite candidates, ordered by (key, score descending, index).
  Scratch<int64_t> order(n);
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(score(i)) && finite_box(load_box<acc_t>(box_data + 4 * i))) order[m++] = i;
  }
  std::sort(order.ptr, order.ptr + m, [&](int64_t a, int64_t b) {
    return key_data[a] != key_data[b] ? key_data[a] < key_data[b] : ranks_before(score(a), a, score(b), b);
  });
  BoxPlanes<acc_t> planes(m);
  Scratch<int64_t> key(m);
  std::vector<int64_t> run_start;
  for (int64_t p = 0; p < m; ++p) {
    planes.set(p, load_box<acc_t>(box_data + 4 * order[p]));
    key[p] = key_data[order[p]];
  }
  for_each_run(key.ptr, m, [&](int64_t s, int64_t) { run_start.push_back(s); });
  run_start.push_back(m);

  Scratch<uint8_t> removed(m, 0);
  const acc_t threshold = nms_threshold<acc_t>(iou_threshold);
  at::parallel_for(0, static_cast<int64_t>(run_start.size()) - 1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      greedy_nms_run(planes, run_start[r], run_start[r + 1], threshold, removed.ptr);
  });

  at::Tensor out = at::empty({m}, at::TensorOptions().dtype(at::kLong));
  int64_t* kept = out.data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t p = 0; p < m; ++p) {
    if (!removed[p]) kept[count++] = order[p];
  }
  std::sort(kept, kept + count, [&](int64_t a, int64_t b) { return ranks_before(score(a), a, score(b), b); });
  return out.narrow(0, 0, count);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous(), k = idxs.to(at::kLong).contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "batched_nms_cpu",
                                  [&] { keep = batched_nms_typed<scalar_t>(b, s, k, iou_threshold); });
  return keep;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_boxes_scores(boxes, scores, iou_threshold);
  return batched_nms_cpu(boxes, scores, at::zeros({boxes.size(0)}, boxes.options().dtype(at::kLong)), iou_threshold);
}

// ---- rescored NMS -------------------------------------------------------

// One detection candidate of an image. `order` is its position in the
// image's candidate stream (the tie-breaker), `source` the box it reads.
template <typename T>
struct Candidate {
  T score;
  int64_t order;
  int64_t source;
  int64_t label;
};

template <typename T>
bool candidate_before(const Candidate<T>& a, const Candidate<T>& b) {
  return ranks_before(a.score, a.order, b.score, b.order);
}

// The best `k` candidates of one level (all of them when k < 0), kept in a
// bounded heap whose top is the worst: O(k) memory however many pass.
// Candidates arrive in increasing `order`, so once the heap is full a newcomer
// must beat the worst score strictly: `floor` lets the scan test one float.
template <typename T>
struct TopK {
  int64_t k;
  T floor;  // a candidate needs score > floor
  std::vector<Candidate<T>> heap;
  TopK(int64_t k_, T score_threshold) : k(k_), floor(score_threshold) {}
  void offer(const Candidate<T>& c) {
    if (!std::isfinite(c.score)) return;
    if (k < 0) {
      heap.push_back(c);
      return;
    }
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), candidate_before<T>);
    } else if (k > 0) {
      std::pop_heap(heap.begin(), heap.end(), candidate_before<T>);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), candidate_before<T>);
    }
    if (k > 0 && static_cast<int64_t>(heap.size()) == k) floor = std::max(floor, heap.front().score);
  }
};

// Padded outputs of rescored NMS, written image by image.
struct PaddedDetections {
  at::Tensor boxes, scores, labels, indices, counts;
  PaddedDetections(int64_t images, int64_t k, const at::TensorOptions& opts)
      : boxes(at::zeros({images, k, 4}, opts)),
        scores(at::zeros({images, k}, opts)),
        labels(at::full({images, k}, -1, opts.dtype(at::kLong))),
        indices(at::full({images, k}, -1, opts.dtype(at::kLong))),
        counts(at::zeros({images}, opts.dtype(at::kLong))) {}
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {boxes, scores, labels, indices, counts};
  }
};

// Class-aware greedy NMS over one image's selected candidates, then its best
// max_detections survivors into row `image` of the padded outputs.
template <typename scalar_t, typename BoxAt>
void suppress_and_write(std::vector<Candidate<at::opmath_type<scalar_t>>>& cands, BoxAt box_at, const RescoreParams& p,
                        int64_t image, PaddedDetections& out) {
  using acc_t = at::opmath_type<scalar_t>;
  auto key_of = [&](const Candidate<acc_t>& c) { return p.class_agnostic ? int64_t(0) : c.label; };
  std::sort(cands.begin(), cands.end(), [&](const Candidate<acc_t>& a, const Candidate<acc_t>& b) {
    return key_of(a) != key_of(b) ? key_of(a) < key_of(b) : candidate_before(a, b);
  });
  const int64_t m = static_cast<int64_t>(cands.size());
  BoxPlanes<acc_t> planes(m);
  Scratch<int64_t> key(m);
  for (int64_t i = 0; i < m; ++i) {
    planes.set(i, box_at(cands[i].source));
    key[i] = key_of(cands[i]);
  }
  Scratch<uint8_t> removed(m, 0);
  const acc_t threshold = nms_threshold<acc_t>(p.iou_threshold);
  for_each_run(key.ptr, m, [&](int64_t s, int64_t e) { greedy_nms_run(planes, s, e, threshold, removed.ptr); });
  std::vector<Candidate<acc_t>> kept;
  for (int64_t i = 0; i < m; ++i) {
    if (!removed[i]) kept.push_back(cands[i]);
  }
  const int64_t count = std::min<int64_t>(static_cast<int64_t>(kept.size()), p.max_detections);
  std::partial_sort(kept.begin(), kept.begin() + count, kept.end(), candidate_before<acc_t>);
  scalar_t* ob = out.boxes[image].data_ptr<scalar_t>();
  scalar_t* os = out.scores[image].data_ptr<scalar_t>();
  int64_t* ol = out.labels[image].data_ptr<int64_t>();
  int64_t* oi = out.indices[image].data_ptr<int64_t>();
  for (int64_t d = 0; d < count; ++d) {
    store_box(box_at(kept[d].source), ob + 4 * d);
    os[d] = static_cast<scalar_t>(kept[d].score);
    ol[d] = kept[d].label;
    oi[d] = kept[d].source;
  }
  out.counts.data_ptr<int64_t>()[image] = count;
}

void check_levels(const std::optional<at::Tensor>& level_index, int64_t num_levels) {
  if (!level_index.has_value() || level_index->numel() == 0) return;
  auto [lo, hi] = at::aminmax(*level_index);
  TORCH_CHECK_VALUE(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < num_levels,
                    "level_index must be in [0, num_levels = ", num_levels, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rescored_nms_dense_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& iou,
    const std::optional<at::Tensor>& level_index, int64_t levels, double alpha, double score_threshold,
    double iou_threshold, int64_t pre_nms_top_k, int64_t max_detections, bool class_agnostic, bool logits) {
  check_rescored_dense(boxes, scores, iou, level_index, levels, alpha, score_threshold, iou_threshold, max_detections);
  check_levels(level_index, levels);
  const RescoreParams p =
      rescore_params(iou, alpha, score_threshold, iou_threshold, pre_nms_top_k, max_detections, class_agnostic, logits);
  const int64_t images = boxes.size(0), n = boxes.size(1), c = scores.size(2);
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  const at::Tensor q = iou.has_value() ? iou->contiguous() : at::Tensor();
  const at::Tensor lv = level_index.has_value() ? level_index->to(at::kLong).contiguous() : at::Tensor();
  PaddedDetections out(images, detection_slots(max_detections, n * c), b.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "rescored_nms_dense_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t iou_weight = static_cast<acc_t>(p.alpha);
    const acc_t score_floor = static_cast<acc_t>(score_threshold);
    at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
      for (int64_t img = begin; img < end; ++img) {
        const scalar_t* box_data = b.data_ptr<scalar_t>() + img * n * 4;
        const scalar_t* score_data = s.data_ptr<scalar_t>() + img * n * c;
        const scalar_t* iou_data = q.defined() ? q.data_ptr<scalar_t>() + img * n : nullptr;
        const int64_t* level_data = lv.defined() ? lv.data_ptr<int64_t>() : nullptr;
        auto box_at = [&](int64_t point) { return load_box<acc_t>(box_data + 4 * point); };
        std::vector<TopK<acc_t>> top(levels, TopK<acc_t>(pre_nms_top_k, score_floor));
        // One pass over the image's (point, class) pairs: rescore, threshold, top-k.
        for (int64_t pt = 0; pt < n; ++pt) {
          if (!finite_box(box_at(pt))) continue;
          const acc_t quality = iou_data ? probability(static_cast<acc_t>(iou_data[pt]), logits) : acc_t(1);
          TopK<acc_t>& level_top = top[level_data ? level_data[pt] : 0];
          for (int64_t cls = 0; cls < c; ++cls) {
            const acc_t score =
                rescore(probability(static_cast<acc_t>(score_data[pt * c + cls]), logits), quality, iou_weight);
            if (score > level_top.floor) level_top.offer({score, pt * c + cls, pt, cls});
          }
        }
        std::vector<Candidate<acc_t>> cands;
        for (auto& t : top) cands.insert(cands.end(), t.heap.begin(), t.heap.end());
        suppress_and_write<scalar_t>(cands, box_at, p, img, out);
      }
    });
  });
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rescored_nms_flat_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels, const std::optional<at::Tensor>& iou,
    const std::optional<at::Tensor>& batch_index, const std::optional<at::Tensor>& level_index, int64_t levels,
    int64_t num_images, double alpha, double score_threshold, double iou_threshold, int64_t pre_nms_top_k,
    int64_t max_detections, bool class_agnostic, bool logits) {
  check_rescored_flat(boxes, scores, labels, iou, batch_index, level_index, levels, num_images, alpha, score_threshold,
                      iou_threshold, max_detections);
  check_levels(level_index, levels);
  const RescoreParams p =
      rescore_params(iou, alpha, score_threshold, iou_threshold, pre_nms_top_k, max_detections, class_agnostic, logits);
  const int64_t m = boxes.size(0);
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous(), lab = labels.to(at::kLong).contiguous();
  const at::Tensor q = iou.has_value() ? iou->contiguous() : at::Tensor();
  const at::Tensor img_t =
      batch_index.has_value() ? batch_index->to(at::kLong).contiguous() : at::zeros({m}, lab.options());
  const at::Tensor lv = level_index.has_value() ? level_index->to(at::kLong).contiguous() : at::Tensor();
  PaddedDetections out(num_images, detection_slots(max_detections, m), b.options());
  // Elements bucketed by image (a stable counting sort), then images in parallel.
  const int64_t* pimg = img_t.data_ptr<int64_t>();
  std::vector<int64_t> offsets(num_images + 1, 0);
  Scratch<int64_t> by_image(m);
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_VALUE(pimg[i] >= 0 && pimg[i] < num_images, "batch_index must be in [0, num_images = ", num_images,
                      "), got ", pimg[i]);
    ++offsets[pimg[i] + 1];
  }
  for (int64_t g = 0; g < num_images; ++g) offsets[g + 1] += offsets[g];
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < m; ++i) by_image[cursor[pimg[i]]++] = i;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "rescored_nms_flat_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t iou_weight = static_cast<acc_t>(p.alpha);
    const acc_t score_floor = static_cast<acc_t>(score_threshold);
    const scalar_t* box_data = b.data_ptr<scalar_t>();
    const scalar_t* score_data = s.data_ptr<scalar_t>();
    const scalar_t* iou_data = q.defined() ? q.data_ptr<scalar_t>() : nullptr;
    const int64_t* plab = lab.data_ptr<int64_t>();
    const int64_t* level_data = lv.defined() ? lv.data_ptr<int64_t>() : nullptr;
    auto box_at = [&](int64_t e) { return load_box<acc_t>(box_data + 4 * e); };
    at::parallel_for(0, num_images, 1, [&](int64_t begin, int64_t end) {
      for (int64_t img = begin; img < end; ++img) {
        std::vector<TopK<acc_t>> top(levels, TopK<acc_t>(pre_nms_top_k, score_floor));
        for (int64_t k = offsets[img]; k < offsets[img + 1]; ++k) {
          const int64_t e = by_image[k];
          const acc_t score =
              rescore(probability(static_cast<acc_t>(score_data[e]), logits),
                      iou_data ? probability(static_cast<acc_t>(iou_data[e]), logits) : acc_t(1), iou_weight);
          TopK<acc_t>& level_top = top[level_data ? level_data[e] : 0];
          // A negative label marks a padding candidate, as in the padded outputs: never kept.
          if (score > level_top.floor && plab[e] >= 0 && finite_box(box_at(e))) level_top.offer({score, e, e, plab[e]});
        }
        std::vector<Candidate<acc_t>> cands;
        for (auto& t : top) cands.insert(cands.end(), t.heap.begin(), t.heap.end());
        suppress_and_write<scalar_t>(cands, box_at, p, img, out);
      }
    });
  });
  return out.tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("rescored_nms_dense", &rescored_nms_dense_cpu);
  m.impl("rescored_nms_flat", &rescored_nms_flat_cpu);
}

}  // namespace mutualops
