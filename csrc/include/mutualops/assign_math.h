#pragma once

// Label-assignment and box-coding math shared by the CPU and CUDA kernels:
// the FCOS point rule, the max-IoU rule's thresholds, box decoding and the
// mutual targets. IoU itself comes from box_math.h.

#include <math.h>
#include <stdint.h>

#include "mutualops/box_math.h"
#include "mutualops/score_math.h"

namespace mutualops {

// Assignment codes of the max-IoU rule.
constexpr int64_t kNegative = -1;
constexpr int64_t kIgnore = -2;

// The FCOS rule for one (point, GT) pair (docs/method.md, section 2.3): the point lies strictly
// inside the GT; with centre sampling (radius > 0) it also lies strictly
// within radius * stride of the GT's centre (the sampling region clipped to
// the box); and its largest regression distance lies in the level's range,
// exclusive (torchvision) or inclusive (mmdetection) of the bounds.
// Written with bitwise operators and no early return, so that CPU loops over
// GTs vectorize.
template <typename T>
MUTUALOPS_HD bool fcos_point_matches(T x, T y, const Box<T>& g, T stride, T radius, T lower, T upper, bool inclusive) {
  const T l = x - g.x1, t = y - g.y1, r = g.x2 - x, b = g.y2 - y;
  const bool inside = min2(min2(l, t), min2(r, b)) > T(0);
  const T dx = x - (g.x1 + g.x2) / T(2), dy = y - (g.y1 + g.y2) / T(2);
  const bool near = !(radius > T(0)) | (max2(dx > T(0) ? dx : -dx, dy > T(0) ? dy : -dy) < radius * stride);
  const T d = max2(max2(l, t), max2(r, b));
  const bool in_range = (inclusive & (d >= lower) & (d <= upper)) | (!inclusive & (d > lower) & (d < upper));
  return inside & near & in_range;
}

// The quantity the FCOS rule minimises among a point's matching GTs: the GT
// area, or, to reproduce torchvision exactly, -(1e8 - area) in the boxes' type
// (in float32 its rounding makes close areas tie; ties go to the lower GT index).
template <typename T>
MUTUALOPS_HD T fcos_area_key(const Box<T>& g, bool torchvision_compat) {
  if (!torchvision_compat) return box_area(g);
  const T area = (g.x2 - g.x1) * (g.y2 - g.y1);
  return -(T(1e8) - area);  // in the boxes' type, as torchvision: float64 boxes tie less
}

// torchvision leaves a point unmatched when its best 1e8 - area is below 1e-5.
template <typename T>
MUTUALOPS_HD bool fcos_key_acceptable(T key, bool torchvision_compat) {
  return !torchvision_compat || -key >= T(1e-5f);
}

// Max-IoU thresholds (torchvision Matcher, mmdetection MaxIoUAssigner):
// >= positive: matched; < negative: negative; in between: ignored. The
// thresholds come rounded to the IoU's type, as a Python float compared with
// a float32 tensor is in torch: an IoU of exactly float32(0.7) meets 0.7.
template <typename T>
MUTUALOPS_HD int64_t max_iou_code(T iou, int64_t best_gt, T positive, T negative) {
  if (iou >= positive) return best_gt;
  return iou < negative ? kNegative : kIgnore;
}

// Low-quality matches (docs/method.md, section 2.3). An anchor whose IoU with GT g equals g's best IoU over all
// anchors is one of g's best anchors. torchvision counts every GT (floor -inf), mmdetection only the GTs whose
// best reaches min_pos_iou.
template <typename T>
MUTUALOPS_HD T low_quality_floor(bool torchvision, double min_pos_iou) {
  return torchvision ? T(-INFINITY) : static_cast<T>(min_pos_iou);
}

template <typename T>
MUTUALOPS_HD bool is_best_of_gt(T iou, T gt_best, T floor) {
  return (iou == gt_best) & (gt_best >= floor);
}

// The match of an anchor that is the best of some GTs (the last of which is last_gt): torchvision gives back
// the anchor's own best GT, mmdetection that last GT.
MUTUALOPS_HD int64_t low_quality_match(bool torchvision, int64_t own_best_gt, int64_t last_gt) {
  return torchvision ? own_best_gt : last_gt;
}

// Box decoding. "distance": (l, t, r, b) from a point, times a scale (the
// stride when the head predicts normalised distances, else 1).
template <typename T>
MUTUALOPS_HD Box<T> decode_distance(T x, T y, const T* ltrb, T scale) {
  return Box<T>{x - ltrb[0] * scale, y - ltrb[1] * scale, x + ltrb[2] * scale, y + ltrb[3] * scale};
}

// "delta": (dx, dy, dw, dh) relative to an anchor, as torchvision's BoxCoder
// with weights (1, 1, 1, 1) and dw, dh clamped at log(1000 / 16).
template <typename T>
MUTUALOPS_HD Box<T> decode_delta(const Box<T>& anchor, const T* d) {
  const T w = anchor.x2 - anchor.x1, h = anchor.y2 - anchor.y1;
  const T cx = anchor.x1 + T(0.5) * w, cy = anchor.y1 + T(0.5) * h;
  const T clip = T(4.135166556742356);  // log(1000 / 16)
  // Written so that a NaN delta stays NaN (as torch.clamp keeps it), not the clip.
  const T dw = d[2] > clip ? clip : d[2], dh = d[3] > clip ? clip : d[3];
  const T pcx = d[0] * w + cx, pcy = d[1] * h + cy;
  const T pw = exp_of(dw) * w, ph = exp_of(dh) * h;
  return Box<T>{pcx - T(0.5) * pw, pcy - T(0.5) * ph, pcx + T(0.5) * pw, pcy + T(0.5) * ph};
}

// The mutual labels of one positive (docs/method.md, section 1): q = IoU(decoded, GT);
// classification target q^gamma_cls at the GT's class; box-loss weight
// p^gamma_loc with p = sigmoid(logit of the GT's class), to be normalised over
// the positives of the batch.
template <typename T>
MUTUALOPS_HD T soft_class_target(T q, T gamma_cls) {
  return gamma_cls == T(1) ? q : pow_of(q, gamma_cls);
}

template <typename T>
MUTUALOPS_HD T box_loss_weight(T class_logit, T gamma_loc) {
  const T p = sigmoid(class_logit);
  return gamma_loc == T(1) ? p : pow_of(p, gamma_loc);
}

enum class BoxCoding : int { kDistance = 0, kDelta = 1 };

// Inputs and outputs of the mutual-target pass, contiguous; element
// i = image * n + prior p. S is the storage type.
template <typename S>
struct MutualTargetArgs {
  const int64_t* matched;    // [B, n]
  const S* gt_boxes;         // [B, gmax, 4]
  const int64_t* gt_labels;  // [B, gmax]
  const S* box_pred;         // [B, n, 4]
  const S* cls_logits;       // [B, n, classes]
  const S* priors;           // points [n, 2] or anchors [n, 4]
  const S* scale;            // [n] or null
  int64_t n, gmax, classes;
  BoxCoding coding;
  double gamma_cls, gamma_loc;
  S* decoded;     // [B, n, 4]
  S* iou_target;  // [B, n], zeros on entry
  S* cls_target;  // [B, n, classes], zeros on entry
  S* raw_weight;  // [B, n], zeros on entry
};

// One element of the pass: decode its box, and for a positive write q, the
// soft class target and the (unnormalised) box-loss weight. T is the math type.
template <typename T, typename S>
MUTUALOPS_HD void mutual_targets_at(const MutualTargetArgs<S>& a, int64_t i) {
  const int64_t image = i / a.n, p = i % a.n;
  const S* d = a.box_pred + 4 * i;
  const T delta[4] = {static_cast<T>(d[0]), static_cast<T>(d[1]), static_cast<T>(d[2]), static_cast<T>(d[3])};
  const Box<T> box = a.coding == BoxCoding::kDistance
                         ? decode_distance(static_cast<T>(a.priors[2 * p]), static_cast<T>(a.priors[2 * p + 1]), delta,
                                           a.scale ? static_cast<T>(a.scale[p]) : T(1))
                         : decode_delta(load_box<T>(a.priors + 4 * p), delta);
  store_box(box, a.decoded + 4 * i);
  const int64_t g = a.matched[i];
  if (g < 0) return;
  const int64_t label = a.gt_labels[image * a.gmax + g];
  const T q = box_iou(box, load_box<T>(a.gt_boxes + 4 * (image * a.gmax + g)));
  a.iou_target[i] = static_cast<S>(q);
  a.cls_target[i * a.classes + label] = static_cast<S>(soft_class_target(q, static_cast<T>(a.gamma_cls)));
  a.raw_weight[i] =
      static_cast<S>(box_loss_weight(static_cast<T>(a.cls_logits[i * a.classes + label]), static_cast<T>(a.gamma_loc)));
}

// Value checks of the assignment inputs, one bit per fault, in the order they are reported: the CPU and CUDA
// kernels OR the faults of every element and the op reads one integer back to the host.
enum AssignFault : int {
  kGtCountOutOfRange = 1 << 0,
  kGtNonFinite = 1 << 1,
  kGtAreaOverflow = 1 << 2,
  kPriorNonFinite = 1 << 3,
  kPriorAreaOverflow = 1 << 4,
  kIgnoreCountOutOfRange = 1 << 5,
  kIgnoreNonFinite = 1 << 6,
  kIgnoreAreaOverflow = 1 << 7,
};

// The checked inputs, contiguous, in one storage type S: priors [points, width] (points 2, anchors 4), GT
// boxes [images, gmax, 4] with counts, ignore boxes [images, imax, 4] with counts (null without). Rows past
// an image's count are padding and are not looked at. With iou, the kernels compute IoUs of these boxes,
// so that their areas must be finite in the math type as well as their corners: with finite corners an
// area of inf (a width that overflows) or NaN (inf x 0) is the only way to a NaN IoU.
template <typename S>
struct AssignInputs {
  const S* priors;
  int64_t points, width;
  const S* gts;
  const int64_t* counts;
  int64_t images, gmax;
  bool has_ignore;
  const S* ignore;
  const int64_t* ignore_counts;
  int64_t imax;
  bool iou;
  MUTUALOPS_HD int64_t size() const { return images * (1 + gmax) + points + (has_ignore ? images * (1 + imax) : 0); }
};

template <typename T, typename S>
MUTUALOPS_HD int box_faults(const S* row, bool iou, int non_finite, int overflow) {
  const Box<T> b = load_box<T>(row);
  if (!finite_box(b)) return non_finite;
  const T area = box_area(b);
  return iou && !(area - area == T(0)) ? overflow : 0;
}

// Element i of the checks: the counts, then the GT rows, the priors, the ignore counts and the ignore rows.
template <typename T, typename S>
MUTUALOPS_HD int assign_faults_at(const AssignInputs<S>& in, int64_t i) {
  if (i < in.images) return in.counts[i] < 0 || in.counts[i] > in.gmax ? kGtCountOutOfRange : 0;
  i -= in.images;
  if (i < in.images * in.gmax) {
    return i % in.gmax < in.counts[i / in.gmax] ? box_faults<T>(in.gts + 4 * i, in.iou, kGtNonFinite, kGtAreaOverflow)
                                                : 0;
  }
  i -= in.images * in.gmax;
  if (i < in.points) {
    if (in.width == 4) return box_faults<T>(in.priors + 4 * i, in.iou, kPriorNonFinite, kPriorAreaOverflow);
    const T x = static_cast<T>(in.priors[2 * i]), y = static_cast<T>(in.priors[2 * i + 1]);
    return finite_box(Box<T>{x, y, x, y}) ? 0 : kPriorNonFinite;
  }
  i -= in.points;
  if (i < in.images) return in.ignore_counts[i] < 0 || in.ignore_counts[i] > in.imax ? kIgnoreCountOutOfRange : 0;
  i -= in.images;
  return i % in.imax < in.ignore_counts[i / in.imax]
             ? box_faults<T>(in.ignore + 4 * i, in.iou, kIgnoreNonFinite, kIgnoreAreaOverflow)
             : 0;
}

}  // namespace mutualops
