// CPU kernels of the label-assignment family: loops over points (parallel)
// and GTs (vectorised), calling mutualops/assign_math.h and box_math.h. Extra
// memory is O(P + G) per image: per-GT planes and per-thread GT maxima.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../ops/assign.h"
#include "simd.h"

namespace mutualops {
namespace {

// An image's real GT boxes as planes, in the math type.
template <typename T>
struct GtPlanes {
  std::vector<T> x1, y1, x2, y2;
  template <typename S>
  GtPlanes(const S* boxes, int64_t n) : x1(n), y1(n), x2(n), y2(n) {
    for (int64_t g = 0; g < n; ++g) {
      const Box<T> b = load_box<T>(boxes + 4 * g);
      x1[g] = b.x1, y1[g] = b.y1, x2[g] = b.x2, y2[g] = b.y2;
    }
  }
  Box<T> box(int64_t g) const { return Box<T>{x1[g], y1[g], x2[g], y2[g]}; }
};

// The loops below take plain restrict pointers (stores then cannot alias the
// planes) and write a row per point before reducing it: gcc vectorizes the
// element-wise loop, and the min/max reduction runs as its own `omp simd`
// loop. Fused, neither vectorizes.

// Smallest key among the GTs that a point matches, +inf when none.
template <typename T>
MUTUALOPS_CPU_CLONES T fcos_best_key(T x, T y, T stride, T radius, T lower, T upper, bool inclusive,
                                     const T* __restrict__ x1, const T* __restrict__ y1, const T* __restrict__ x2,
                                     const T* __restrict__ y2, const T* __restrict__ key, T* __restrict__ row,
                                     int64_t count) {
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t g = 0; g < count; ++g) {
    const bool ok =
        fcos_point_matches(x, y, Box<T>{x1[g], y1[g], x2[g], y2[g]}, stride, radius, lower, upper, inclusive);
    const T k = key[g];  // loaded unconditionally, so that the select vectorizes
    row[g] = ok ? k : inf;
  }
  T best = inf;
#pragma omp simd reduction(min : best)
  for (int64_t g = 0; g < count; ++g) best = min2(best, row[g]);
  return best;
}

// IoU of one anchor with every GT into row[g]; returns the largest and folds
// the row into the per-GT maxima.
template <typename T>
MUTUALOPS_CPU_CLONES T iou_row(const Box<T>& a, T area_a, const T* __restrict__ x1, const T* __restrict__ y1,
                               const T* __restrict__ x2, const T* __restrict__ y2, const T* __restrict__ garea,
                               T* __restrict__ row, T* __restrict__ gt_best, int64_t count) {
  for (int64_t g = 0; g < count; ++g) {
    const T iou = box_overlap<IouMode::kIou>(a, Box<T>{x1[g], y1[g], x2[g], y2[g]}, BoxShape<T>{area_a, T(0)},
                                             BoxShape<T>{garea[g], T(0)});
    row[g] = iou;
    gt_best[g] = max2(gt_best[g], iou);
  }
  T best = T(-1);
#pragma omp simd reduction(max : best)
  for (int64_t g = 0; g < count; ++g) best = max2(best, row[g]);
  return best;
}

// First g with row[g] == value (count when none).
template <typename T>
MUTUALOPS_CPU_CLONES int64_t first_equal(const T* __restrict__ row, T value, int64_t count) {
  int64_t first = count;
#pragma omp simd reduction(min : first)
  for (int64_t g = 0; g < count; ++g) first = min2(first, row[g] == value ? g : count);
  return first;
}

// Last g where the anchor is GT g's best (row[g] == gt_best[g]) and that best
// qualifies (>= floor), -1 when none.
template <typename T>
MUTUALOPS_CPU_CLONES int64_t last_best_of_gt(const T* __restrict__ row, const T* __restrict__ gt_best, T floor,
                                             int64_t count) {
  int64_t last = -1;
#pragma omp simd reduction(max : last)
  for (int64_t g = 0; g < count; ++g) {
    last = max2(last, is_best_of_gt(row[g], gt_best[g], floor) ? g : int64_t(-1));
  }
  return last;
}

int64_t point_grain(int64_t gts) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(gts, 1)); }

// The value checks (assign_faults_at), ORed over every element.
void check_assign_data(const CheckedInputs& c, const char* prior_name) {
  int faults = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.priors.scalar_type(), "assign_check_values", [&] {
    const AssignInputs<scalar_t> in = assign_inputs<scalar_t>(c);
    faults = at::parallel_reduce(
        0, in.size(), 16384, 0,
        [&](int64_t begin, int64_t end, int acc) {
          for (int64_t i = begin; i < end; ++i) acc |= assign_faults_at<at::opmath_type<scalar_t>>(in, i);
          return acc;
        },
        [](int a, int b) { return a | b; });
  });
  raise_assign_faults(faults, c, prior_name);
}

at::Tensor assign_fcos_cpu(const at::Tensor& points, const at::Tensor& gt_boxes, const at::Tensor& num_gt,
                           const at::Tensor& strides, const at::Tensor& regress_ranges, double center_radius,
                           bool inclusive, bool torchvision_compat) {
  check_assign_fcos(points, gt_boxes, num_gt, strides, regress_ranges);
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = points.size(0);
  const at::Tensor pts = points.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  check_assign_data(CheckedInputs{pts, gts, counts, at::Tensor(), at::Tensor(), false}, "points");
  const at::Tensor str = strides.to(points.scalar_type()).contiguous();
  const at::Tensor rng = regress_ranges.to(points.scalar_type()).contiguous();
  at::Tensor matched = at::full({images, n}, kNegative, pts.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pts.scalar_type(), "assign_fcos_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pp = pts.data_ptr<scalar_t>();
    const scalar_t* stride_data = str.data_ptr<scalar_t>();
    const scalar_t* pr = rng.data_ptr<scalar_t>();
    const T radius = static_cast<T>(center_radius);
    for (int64_t img = 0; img < images; ++img) {
      const int64_t count = std::min(counts.data_ptr<int64_t>()[img], gmax);
      if (count <= 0) continue;
      const GtPlanes<T> gt(gts.data_ptr<scalar_t>() + img * gmax * 4, count);
      std::vector<T> key(count);
      for (int64_t g = 0; g < count; ++g) key[g] = fcos_area_key(gt.box(g), torchvision_compat);
      int64_t* out = matched.data_ptr<int64_t>() + img * n;
      at::parallel_for(0, n, point_grain(count), [&](int64_t begin, int64_t end) {
        const T inf = std::numeric_limits<T>::infinity();
        std::vector<T> row(count);
        for (int64_t p = begin; p < end; ++p) {
          const T x = static_cast<T>(pp[2 * p]), y = static_cast<T>(pp[2 * p + 1]);
          const T stride = static_cast<T>(stride_data[p]), lower = static_cast<T>(pr[2 * p]),
                  upper = static_cast<T>(pr[2 * p + 1]);
          // Pass 1 (vectorised): the smallest key among matching GTs.
          const T best = fcos_best_key(x, y, stride, radius, lower, upper, inclusive, gt.x1.data(), gt.y1.data(),
                                       gt.x2.data(), gt.y2.data(), key.data(), row.data(), count);
          if (!(best < inf) || !fcos_key_acceptable(best, torchvision_compat)) continue;
          // Pass 2, rare: the first GT holding it.
          for (int64_t g = 0; g < count; ++g) {
            if (key[g] == best && fcos_point_matches(x, y, gt.box(g), stride, radius, lower, upper, inclusive)) {
              out[p] = g;
              break;
            }
          }
        }
      });
    }
  });
  return matched;
}

// The anchors as boxes with their areas, in the math type: every step of the max-IoU rule reads them.
template <typename T>
struct AnchorPlanes {
  std::vector<Box<T>> box;
  std::vector<T> area;
  template <typename S>
  AnchorPlanes(const S* anchors, int64_t n) : box(n), area(n) {
    for (int64_t p = 0; p < n; ++p) box[p] = load_box<T>(anchors + 4 * p), area[p] = box_area(box[p]);
  }
  int64_t size() const { return static_cast<int64_t>(box.size()); }
};

// One image's real GTs with their areas; row(p, ...) is anchor p's IoU with each of them.
template <typename T>
struct ImageGts {
  GtPlanes<T> planes;
  std::vector<T> area;
  int64_t count;
  template <typename S>
  ImageGts(const S* boxes, int64_t n) : planes(boxes, n), area(n), count(n) {
    for (int64_t g = 0; g < n; ++g) area[g] = box_area(planes.box(g));
  }
  T row(const AnchorPlanes<T>& anchors, int64_t p, T* row, T* gt_best) const {
    return iou_row(anchors.box[p], anchors.area[p], planes.x1.data(), planes.y1.data(), planes.x2.data(),
                   planes.y2.data(), area.data(), row, gt_best, count);
  }
};

// Crowd / ignore regions: an anchor mostly inside one (IoF above the threshold) is ignored.
template <typename T, typename S>
void mark_ignored(const AnchorPlanes<T>& anchors, const S* ignore_boxes, int64_t count, double iof_threshold,
                  std::vector<uint8_t>& ignored) {
  std::fill(ignored.begin(), ignored.end(), 0);
  if (count <= 0) return;
  const GtPlanes<T> regions(ignore_boxes, count);
  at::parallel_for(0, anchors.size(), point_grain(count), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T best = T(0);
      for (int64_t g = 0; g < count; ++g) {
        best = max2(best, box_overlap<IouMode::kIof>(anchors.box[p], regions.box(g), BoxShape<T>{anchors.area[p], T(0)},
                                                     BoxShape<T>{T(0), T(0)}));
      }
      ignored[p] = best > static_cast<T>(iof_threshold);
    }
  });
}

// Each anchor's best IoU and GT (the first on ties; -1 and 0 when ignored) and each GT's best IoU over the
// anchors that are not ignored. Per-thread GT maxima, then reduced: O(threads x G).
template <typename T>
struct BestMatches {
  std::vector<T> anchor_best;
  std::vector<int64_t> anchor_arg;
  std::vector<T> gt_best;
};

template <typename T>
BestMatches<T> best_matches(const AnchorPlanes<T>& anchors, const ImageGts<T>& gts,
                            const std::vector<uint8_t>& ignored) {
  const int64_t n = anchors.size(), count = gts.count, threads = at::get_num_threads();
  BestMatches<T> best{std::vector<T>(n), std::vector<int64_t>(n), std::vector<T>(count, T(-1))};
  std::vector<T> gt_best_per_thread(threads * count, T(-1));
  std::vector<T> rows_per_thread(threads * count);
  at::parallel_for(0, n, point_grain(count), [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    T* row = rows_per_thread.data() + thread * count;
    for (int64_t p = begin; p < end; ++p) {
      if (ignored[p]) {
        best.anchor_best[p] = T(-1), best.anchor_arg[p] = 0;
        continue;
      }
      const T anchor_max = gts.row(anchors, p, row, gt_best_per_thread.data() + thread * count);
      const int64_t first = first_equal(row, anchor_max, count);
      best.anchor_best[p] = anchor_max;
      best.anchor_arg[p] = first < count ? first : 0;
    }
  });
  for (int64_t t = 0; t < threads; ++t) {
    for (int64_t g = 0; g < count; ++g) best.gt_best[g] = max2(best.gt_best[g], gt_best_per_thread[t * count + g]);
  }
  return best;
}

// mmdetection with gt_max_assign_all=False: each GT whose best reaches min_pos_iou takes only the first anchor
// holding that best.
template <typename T>
void match_first_best_anchors(const AnchorPlanes<T>& anchors, const ImageGts<T>& gts,
                              const std::vector<uint8_t>& ignored, const std::vector<T>& gt_best, double min_pos_iou,
                              int64_t* out) {
  const int64_t count = gts.count;
  std::vector<int64_t> first_best_anchor(count, -1);
  std::vector<T> row(count), unused(count, T(-1));
  for (int64_t p = 0; p < anchors.size(); ++p) {
    if (ignored[p]) continue;
    gts.row(anchors, p, row.data(), unused.data());
    for (int64_t g = 0; g < count; ++g) {
      if (first_best_anchor[g] < 0 && row[g] == gt_best[g]) first_best_anchor[g] = p;
    }
  }
  for (int64_t g = 0; g < count; ++g) {
    if (gt_best[g] >= low_quality_floor<T>(false, min_pos_iou) && first_best_anchor[g] >= 0) {
      out[first_best_anchor[g]] = g;
    }
  }
}

// torchvision, and mmdetection with gt_max_assign_all: every anchor that is the best of a qualifying GT (ties
// included) is matched, by low_quality_match.
template <typename T>
void match_best_anchors(const AnchorPlanes<T>& anchors, const ImageGts<T>& gts, const std::vector<uint8_t>& ignored,
                        const BestMatches<T>& best, bool torchvision, double min_pos_iou, int64_t* out) {
  const int64_t count = gts.count;
  const T floor = low_quality_floor<T>(torchvision, min_pos_iou);
  // An anchor can be GT g's best only if its own best IoU reaches gt_best[g]: anchors below every GT's best
  // (most negatives) skip the second IoU pass.
  const T prune = *std::min_element(best.gt_best.begin(), best.gt_best.end());
  at::parallel_for(0, anchors.size(), point_grain(count), [&](int64_t begin, int64_t end) {
    std::vector<T> row(count), unused(count, T(-1));
    for (int64_t p = begin; p < end; ++p) {
      if (ignored[p] || best.anchor_best[p] < prune) continue;
      gts.row(anchors, p, row.data(), unused.data());
      const int64_t last = last_best_of_gt(row.data(), best.gt_best.data(), floor, count);
      if (last >= 0) out[p] = low_quality_match(torchvision, best.anchor_arg[p], last);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> assign_max_iou_cpu(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                                      const at::Tensor& num_gt,
                                                      const std::optional<at::Tensor>& ignore_boxes,
                                                      const std::optional<at::Tensor>& num_ignore, double pos_iou,
                                                      double neg_iou, c10::string_view low_quality, double min_pos_iou,
                                                      bool gt_max_assign_all, double ignore_iof) {
  check_assign_max_iou(anchors, gt_boxes, num_gt, ignore_boxes, num_ignore);
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = anchors.size(0);
  const at::Tensor anc = anchors.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  const at::Tensor ign = ignore_boxes.has_value() ? ignore_boxes->to(gts.scalar_type()).contiguous() : at::Tensor();
  check_assign_data(
      CheckedInputs{anc, gts, counts, ign, ign.defined() ? num_ignore->to(at::kLong).contiguous() : at::Tensor(), true},
      "anchors");
  const LowQuality lq = parse_low_quality(low_quality);
  const at::Tensor ign_counts = num_ignore.has_value() ? active_ignore_counts(*num_ignore, num_gt, lq) : at::Tensor();
  at::Tensor matched = at::full({images, n}, kNegative, anc.options().dtype(at::kLong));
  at::Tensor max_iou = at::zeros({images, n}, anc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anc.scalar_type(), "assign_max_iou_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnchorPlanes<T> planes(anc.data_ptr<scalar_t>(), n);
    std::vector<uint8_t> ignored(n);
    for (int64_t img = 0; img < images; ++img) {
      int64_t* out = matched.data_ptr<int64_t>() + img * n;
      scalar_t* out_iou = max_iou.data_ptr<scalar_t>() + img * n;
      const int64_t ignore_count = ign.defined() ? std::min(ign_counts.data_ptr<int64_t>()[img], ign.size(1)) : 0;
      mark_ignored(planes, ign.defined() ? ign.data_ptr<scalar_t>() + img * ign.size(1) * 4 : nullptr, ignore_count,
                   ignore_iof, ignored);
      const int64_t count = std::min(counts.data_ptr<int64_t>()[img], gmax);
      if (count <= 0) {
        for (int64_t p = 0; p < n; ++p) out[p] = ignored[p] ? kIgnore : kNegative;
        for (int64_t p = 0; p < n; ++p) out_iou[p] = static_cast<scalar_t>(ignored[p] ? -1 : 0);
        continue;
      }
      const ImageGts<T> image_gts(gts.data_ptr<scalar_t>() + img * gmax * 4, count);
      const BestMatches<T> best = best_matches(planes, image_gts, ignored);
      for (int64_t p = 0; p < n; ++p) {
        out[p] = ignored[p] ? kIgnore
                            : max_iou_code(best.anchor_best[p], best.anchor_arg[p], static_cast<T>(pos_iou),
                                           static_cast<T>(neg_iou));
        out_iou[p] = static_cast<scalar_t>(best.anchor_best[p]);
      }
      if (lq == LowQuality::kMmdet && !gt_max_assign_all) {
        match_first_best_anchors(planes, image_gts, ignored, best.gt_best, min_pos_iou, out);
      } else if (lq != LowQuality::kNone) {
        match_best_anchors(planes, image_gts, ignored, best, lq == LowQuality::kTorchvision, min_pos_iou, out);
      }
    }
  });
  return {matched, max_iou};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mutual_targets_cpu(
    const at::Tensor& matched, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& box_pred,
    const at::Tensor& cls_logits, const at::Tensor& priors, const std::optional<at::Tensor>& scale,
    c10::string_view box_coding, double gamma_cls, double gamma_loc) {
  const BoxCoding coding = parse_box_coding(box_coding);
  check_mutual_targets(matched, gt_boxes, gt_labels, box_pred, cls_logits, priors, scale, coding, gamma_cls, gamma_loc);
  const int64_t images = matched.size(0), n = matched.size(1), classes = cls_logits.size(2);
  const at::Tensor matches = matched.contiguous(), gts = gt_boxes.contiguous(),
                   labels = gt_labels.to(at::kLong).contiguous();
  const at::Tensor pred = box_pred.contiguous(), logits = cls_logits.contiguous(), pri = priors.contiguous();
  const at::Tensor sc = scale.has_value() ? scale->to(pred.scalar_type()).contiguous() : at::Tensor();
  at::Tensor decoded = at::empty({images, n, 4}, pred.options());
  at::Tensor iou_target = at::zeros({images, n}, pred.options());
  at::Tensor cls_target = at::zeros({images, n, classes}, logits.options());
  at::Tensor raw_weight = at::zeros({images, n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "mutual_targets_cpu", [&] {
    const auto args = mutual_target_args<scalar_t>(matches, gts, labels, pred, logits, pri, sc, coding, gamma_cls,
                                                   gamma_loc, decoded, iou_target, cls_target, raw_weight);
    at::parallel_for(0, images * n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) mutual_targets_at<at::opmath_type<scalar_t>>(args, i);
    });
  });
  return {decoded, iou_target, cls_target, normalise_over_positives(raw_weight, matches >= 0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("assign_fcos", &assign_fcos_cpu);
  m.impl("assign_max_iou", &assign_max_iou_cpu);
  m.impl("mutual_targets", &mutual_targets_cpu);
}

}  // namespace mutualops
