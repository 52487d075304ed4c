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
    const T best = gt_best[g];
    last = max2(last, (row[g] == best) & (best >= floor) ? g : int64_t(-1));
  }
  return last;
}

int64_t point_grain(int64_t gts) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(gts, 1)); }

at::Tensor assign_fcos_cpu(const at::Tensor& points, const at::Tensor& gt_boxes, const at::Tensor& num_gt,
                           const at::Tensor& strides, const at::Tensor& regress_ranges, double center_radius,
                           bool inclusive, bool torchvision_compat) {
  check_assign_fcos(points, gt_boxes, num_gt, strides, regress_ranges);
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = points.size(0);
  const at::Tensor pts = points.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor str = strides.to(points.scalar_type()).contiguous();
  const at::Tensor rng = regress_ranges.to(points.scalar_type()).contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  at::Tensor matched = at::full({images, n}, kNegative, pts.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pts.scalar_type(), "assign_fcos_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pp = pts.data_ptr<scalar_t>();
    const scalar_t* ps = str.data_ptr<scalar_t>();
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
          const T stride = static_cast<T>(ps[p]), lower = static_cast<T>(pr[2 * p]),
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

std::tuple<at::Tensor, at::Tensor> assign_max_iou_cpu(const at::Tensor& anchors, const at::Tensor& gt_boxes,
                                                      const at::Tensor& num_gt,
                                                      const std::optional<at::Tensor>& ignore_boxes,
                                                      const std::optional<at::Tensor>& num_ignore, double pos_iou,
                                                      double neg_iou, c10::string_view low_quality, double min_pos_iou,
                                                      bool gt_max_assign_all, double ignore_iof) {
  check_assign_max_iou(anchors, gt_boxes, num_gt, ignore_boxes, num_ignore);
  const LowQuality lq = parse_low_quality(low_quality);
  const int64_t images = gt_boxes.size(0), gmax = gt_boxes.size(1), n = anchors.size(0);
  const at::Tensor anc = anchors.contiguous(), gts = gt_boxes.contiguous();
  const at::Tensor counts = num_gt.to(at::kLong).contiguous();
  const at::Tensor ign = ignore_boxes.has_value() ? ignore_boxes->to(gts.scalar_type()).contiguous() : at::Tensor();
  const at::Tensor ign_counts = num_ignore.has_value() ? active_ignore_counts(*num_ignore, num_gt, lq) : at::Tensor();
  at::Tensor matched = at::full({images, n}, kNegative, anc.options().dtype(at::kLong));
  at::Tensor max_iou = at::zeros({images, n}, anc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anc.scalar_type(), "assign_max_iou_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pa = anc.data_ptr<scalar_t>();
    // Anchors as planes with their areas: the IoU loops vectorize over GTs.
    std::vector<Box<T>> abox(n);
    std::vector<T> aarea(n);
    for (int64_t p = 0; p < n; ++p) abox[p] = load_box<T>(pa + 4 * p), aarea[p] = box_area(abox[p]);
    std::vector<uint8_t> ignored(n);
    for (int64_t img = 0; img < images; ++img) {
      const int64_t count = std::min(counts.data_ptr<int64_t>()[img], gmax);
      int64_t* out = matched.data_ptr<int64_t>() + img * n;
      scalar_t* out_iou = max_iou.data_ptr<scalar_t>() + img * n;
      // Crowd / ignore regions: anchors mostly inside one (IoF) are ignored.
      std::fill(ignored.begin(), ignored.end(), 0);
      if (ign.defined()) {
        const int64_t icount = std::min(ign_counts.data_ptr<int64_t>()[img], ign.size(1));
        const GtPlanes<T> ig(ign.data_ptr<scalar_t>() + img * ign.size(1) * 4, icount);
        at::parallel_for(0, n, point_grain(icount), [&](int64_t begin, int64_t end) {
          for (int64_t p = begin; p < end; ++p) {
            T best = T(0);
            for (int64_t g = 0; g < icount; ++g) {
              best = max2(best, box_overlap<IouMode::kIof>(abox[p], ig.box(g), BoxShape<T>{aarea[p], T(0)},
                                                           BoxShape<T>{T(0), T(0)}));
            }
            ignored[p] = best > static_cast<T>(ignore_iof);
          }
        });
      }
      if (count <= 0) {
        for (int64_t p = 0; p < n; ++p) out[p] = ignored[p] ? kIgnore : kNegative;
        for (int64_t p = 0; p < n; ++p) out_iou[p] = static_cast<scalar_t>(ignored[p] ? -1 : 0);
        continue;
      }
      const GtPlanes<T> gt(gts.data_ptr<scalar_t>() + img * gmax * 4, count);
      std::vector<T> garea(count);
      for (int64_t g = 0; g < count; ++g) garea[g] = box_area(gt.box(g));
      // Pass 1: each anchor's best GT (first on ties) and each GT's best IoU
      // (per-thread maxima, then reduced: O(threads x G)).
      std::vector<T> anchor_best(n);
      std::vector<int64_t> anchor_arg(n);
      const int64_t threads = at::get_num_threads();
      std::vector<T> gt_best_per_thread(threads * count, T(-1));
      std::vector<T> rows_per_thread(threads * count);
      at::parallel_for(0, n, point_grain(count), [&](int64_t begin, int64_t end) {
        const int64_t thread = at::get_thread_num();
        T* gt_best = gt_best_per_thread.data() + thread * count;
        T* row = rows_per_thread.data() + thread * count;
        for (int64_t p = begin; p < end; ++p) {
          if (ignored[p]) {
            anchor_best[p] = T(-1), anchor_arg[p] = 0;
            continue;
          }
          const T best = iou_row(abox[p], aarea[p], gt.x1.data(), gt.y1.data(), gt.x2.data(), gt.y2.data(),
                                 garea.data(), row, gt_best, count);
          const int64_t first = first_equal(row, best, count);
          anchor_best[p] = best;
          anchor_arg[p] = first < count ? first : 0;
        }
      });
      std::vector<T> gt_best(count, T(-1));
      for (int64_t t = 0; t < threads; ++t) {
        for (int64_t g = 0; g < count; ++g) gt_best[g] = max2(gt_best[g], gt_best_per_thread[t * count + g]);
      }
      for (int64_t p = 0; p < n; ++p) {
        out[p] = ignored[p]
                     ? kIgnore
                     : max_iou_code(anchor_best[p], anchor_arg[p], static_cast<T>(pos_iou), static_cast<T>(neg_iou));
        out_iou[p] = static_cast<scalar_t>(anchor_best[p]);
      }
      if (lq == LowQuality::kNone) continue;
      // Pass 2: low-quality matches. torchvision: an anchor that is some GT's
      // best (ties included) gets back its own best GT. mmdetection: it gets
      // the last such GT whose best IoU reaches min_pos_iou (all tied anchors
      // with gt_max_assign_all, else only the GT's first best anchor).
      std::vector<T> unused(count, T(-1));
      if (lq == LowQuality::kMmdet && !gt_max_assign_all) {
        std::vector<int64_t> first_best_anchor(count, -1);
        T* row = rows_per_thread.data();
        for (int64_t p = 0; p < n; ++p) {
          if (ignored[p]) continue;
          iou_row(abox[p], aarea[p], gt.x1.data(), gt.y1.data(), gt.x2.data(), gt.y2.data(), garea.data(), row,
                  unused.data(), count);
          for (int64_t g = 0; g < count; ++g) {
            if (first_best_anchor[g] < 0 && row[g] == gt_best[g]) first_best_anchor[g] = p;
          }
        }
        for (int64_t g = 0; g < count; ++g) {
          if (gt_best[g] >= static_cast<T>(min_pos_iou) && first_best_anchor[g] >= 0) out[first_best_anchor[g]] = g;
        }
        continue;
      }
      // torchvision counts every GT's best, mmdetection only those >= min_pos_iou.
      const T floor =
          lq == LowQuality::kTorchvision ? -std::numeric_limits<T>::infinity() : static_cast<T>(min_pos_iou);
      // An anchor can be GT g's best only if its own best IoU reaches gt_best[g]:
      // anchors below every GT's best (most negatives) skip the second pass.
      const T prune = *std::min_element(gt_best.begin(), gt_best.end());
      at::parallel_for(0, n, point_grain(count), [&](int64_t begin, int64_t end) {
        const int64_t thread = at::get_thread_num();
        T* row = rows_per_thread.data() + thread * count;
        std::vector<T> unused_here(count, T(-1));
        for (int64_t p = begin; p < end; ++p) {
          if (ignored[p] || anchor_best[p] < prune) continue;
          iou_row(abox[p], aarea[p], gt.x1.data(), gt.y1.data(), gt.x2.data(), gt.y2.data(), garea.data(), row,
                  unused_here.data(), count);
          const int64_t last = last_best_of_gt(row, gt_best.data(), floor, count);
          if (last >= 0) out[p] = lq == LowQuality::kTorchvision ? anchor_arg[p] : last;
        }
      });
    }
  });
  return {matched, max_iou};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mutual_targets_cpu(
    const at::Tensor& matched, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& box_pred,
    const at::Tensor& cls_logits, const at::Tensor& priors, const std::optional<at::Tensor>& scale,
    c10::string_view box_coding, double gamma_cls, double gamma_loc) {
  const BoxCoding coding = parse_box_coding(box_coding);
  check_mutual_targets(matched, gt_boxes, gt_labels, box_pred, cls_logits, priors, scale, coding);
  const int64_t images = matched.size(0), n = matched.size(1), classes = cls_logits.size(2);
  const at::Tensor m = matched.contiguous(), gts = gt_boxes.contiguous(), labels = gt_labels.to(at::kLong).contiguous();
  const at::Tensor pred = box_pred.contiguous(), logits = cls_logits.contiguous(), pri = priors.contiguous();
  const at::Tensor sc = scale.has_value() ? scale->to(pred.scalar_type()).contiguous() : at::Tensor();
  at::Tensor decoded = at::empty({images, n, 4}, pred.options());
  at::Tensor iou_target = at::zeros({images, n}, pred.options());
  at::Tensor cls_target = at::zeros({images, n, classes}, logits.options());
  at::Tensor raw_weight = at::zeros({images, n}, pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "mutual_targets_cpu", [&] {
    const auto args = mutual_target_args<scalar_t>(m, gts, labels, pred, logits, pri, sc, coding, gamma_cls, gamma_loc,
                                                   decoded, iou_target, cls_target, raw_weight);
    at::parallel_for(0, images * n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) mutual_targets_at<at::opmath_type<scalar_t>>(args, i);
    });
  });
  return {decoded, iou_target, cls_target, normalise_over_positives(raw_weight, m >= 0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("assign_fcos", &assign_fcos_cpu);
  m.impl("assign_max_iou", &assign_max_iou_cpu);
  m.impl("mutual_targets", &mutual_targets_cpu);
}

}  // namespace mutualops
