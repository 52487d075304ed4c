#pragma once

// Task-aligned assignment math (TOOD's rule, the one Ultralytics YOLO trains
// with; docs/method.md, section 2.5), shared by the CPU and CUDA
// kernels. Every expression keeps the operation order of Ultralytics 8.4's
// TaskAlignedAssigner, so that fp32 results agree with it bit for bit wherever
// the elementary functions (atan, pow) do, and to the last ulp elsewhere.

#include <math.h>
#include <stdint.h>

#include "mutualops/box_math.h"
#include "mutualops/score_math.h"

namespace mutualops {

// The region in which a GT collects candidate anchors: the box, taken through
// centre and size and back, with each side under `min_side` (Ultralytics'
// stride_val) widened to it about the centre. The round trip is kept even for
// wide boxes because its rounding decides anchors lying on an edge.
template <typename T>
MUTUALOPS_HD Box<T> tal_candidate_region(const Box<T>& g, T min_side) {
  const T cx = (g.x1 + g.x2) / T(2), cy = (g.y1 + g.y2) / T(2);
  T w = g.x2 - g.x1, h = g.y2 - g.y1;
  if (w < min_side) w = min_side;
  if (h < min_side) h = min_side;
  const T half_w = w / T(2), half_h = h / T(2);
  return Box<T>{cx - half_w, cy - half_h, cx + half_w, cy + half_h};
}

// An anchor point is a candidate when it lies inside the region by more than
// 1e-9 on all four sides (so a point on an edge is not).
template <typename T>
MUTUALOPS_HD bool tal_inside(T x, T y, const Box<T>& region) {
  const T eps = T(1e-9);
  return (x - region.x1 > eps) & (y - region.y1 > eps) & (region.x2 - x > eps) & (region.y2 - y > eps);
}

// The aspect angle of a box in the CIoU term, with Ultralytics' 1e-7 added to
// the height. Kernels compute it once per GT, and the CPU once per predicted box.
template <typename T>
MUTUALOPS_HD T tal_aspect_angle(const Box<T>& b) {
  return atan_of((b.x2 - b.x1) / (b.y2 - b.y1 + T(1e-7)));
}

// Complete IoU of a GT and a predicted box (each with its tal_aspect_angle)
// with Ultralytics' epsilons (1e-7 added to the heights, the union and the
// squared diagonal), clamped at 0. A NaN (only degenerate boxes give one) also
// counts as 0: with scores in [0, 1] (checked) the alignments are never NaN, so
// that the top-k rankings always meet a total order.
template <typename T>
MUTUALOPS_HD T tal_complete_iou(const Box<T>& gt, T gt_angle, const Box<T>& pred, T pred_angle) {
  const T eps = T(1e-7);
  const T w1 = gt.x2 - gt.x1, h1 = gt.y2 - gt.y1 + eps;
  const T w2 = pred.x2 - pred.x1, h2 = pred.y2 - pred.y1 + eps;
  const T inter =
      clamp_min0(min2(gt.x2, pred.x2) - max2(gt.x1, pred.x1)) * clamp_min0(min2(gt.y2, pred.y2) - max2(gt.y1, pred.y1));
  const T uni = w1 * h1 + w2 * h2 - inter + eps;
  const T iou = inter / uni;
  const T cw = max2(gt.x2, pred.x2) - min2(gt.x1, pred.x1);
  const T ch = max2(gt.y2, pred.y2) - min2(gt.y1, pred.y1);
  const T c2 = cw * cw + ch * ch + eps;
  const T dx = pred.x1 + pred.x2 - gt.x1 - gt.x2, dy = pred.y1 + pred.y2 - gt.y1 - gt.y2;
  const T rho2 = (dx * dx + dy * dy) / T(4);
  const T dt = pred_angle - gt_angle;
  const T v = T(0.40528473456935109) * (dt * dt);  // 4 / pi^2
  const T alpha = v / (T(1) - iou + v + eps);
  const T ciou = iou - (rho2 / c2 + v * alpha);
  return ciou > T(0) ? ciou : T(0);
}

// x^e as torch.pow(tensor, python float) computes it: exponents 0, 1, 2, 3 and
// 0.5 are exact special cases there, so they are here (Ultralytics' alpha 0.5
// is a square root, not powf).
template <typename T>
MUTUALOPS_HD T torch_scalar_pow(T x, T e) {
  if (e == T(0)) return T(1);
  if (e == T(1)) return x;
  if (e == T(2)) return x * x;
  if (e == T(3)) return x * x * x;
  if (e == T(0.5)) return sqrt_of(x);
  return pow_of(x, e);
}

// The alignment metric t = score^alpha * ciou^beta of one candidate.
template <typename T>
MUTUALOPS_HD T tal_alignment(T score, T ciou, T alpha, T beta) {
  return torch_scalar_pow(score, alpha) * torch_scalar_pow(ciou, beta);
}

// The soft classification target of a positive: its alignment rescaled so
// that the GT's best-aligned anchor gets the GT's best CIoU.
template <typename T>
MUTUALOPS_HD T tal_normalised(T alignment, T gt_best_ciou, T gt_best_alignment, T eps) {
  return alignment * gt_best_ciou / (gt_best_alignment + eps);
}

// The inputs of one assignment as the kernels read them (contiguous; scores
// in their own storage type S, everything else in the math type T).
template <typename T, typename S>
struct TaskAlignedView {
  const S* scores;        // [B, A, C]
  const T* boxes;         // [B, A, 4] predicted
  const T* anchors;       // [A, 2]
  const int64_t* labels;  // [B, G]
  const T* gt;            // [B, G, 4]
  const T* regions;       // [B, G, 4] candidate regions
  const T* gt_angles;     // [B, G] tal_aspect_angle of each GT
  const T* pred_angles;   // [B, A] tal_aspect_angle of each predicted box, or null: computed per pair
  const bool* valid;      // [B, G] real GT rows
  int64_t n, gmax, classes;
  T alpha, beta;
};

// The alignment and CIoU of GT row `row` (image * gmax + g) with anchor `a`
// of the same image, for a pair known to be a candidate.
template <typename T, typename S>
MUTUALOPS_HD void tal_pair(const TaskAlignedView<T, S>& v, int64_t row, int64_t a, T* alignment, T* ciou) {
  const int64_t box = row / v.gmax * v.n + a;
  const Box<T> pred = load_box<T>(v.boxes + 4 * box);
  *ciou = tal_complete_iou(load_box<T>(v.gt + 4 * row), v.gt_angles[row], pred,
                           v.pred_angles ? v.pred_angles[box] : tal_aspect_angle(pred));
  const T score = static_cast<T>(v.scores[box * v.classes + v.labels[row]]);
  *alignment = tal_alignment(score, *ciou, v.alpha, v.beta);
}

// Whether anchor `a` is a candidate of GT `g` (a real GT whose region holds
// it) and, if so, the pair's alignment and CIoU; both are 0 otherwise, as in
// Ultralytics' dense planes.
template <typename T, typename S>
MUTUALOPS_HD bool tal_candidate(const TaskAlignedView<T, S>& v, int64_t image, int64_t g, int64_t a, T* alignment,
                                T* ciou) {
  const int64_t row = image * v.gmax + g;
  *alignment = T(0);
  *ciou = T(0);
  if (!v.valid[row] || !tal_inside(v.anchors[2 * a], v.anchors[2 * a + 1], load_box<T>(v.regions + 4 * row))) {
    return false;
  }
  tal_pair(v, row, a, alignment, ciou);
  return true;
}

// GT indices 0, 1, ..., count - 1, as a range.
struct TalAllGts {
  struct Iter {
    int64_t g;
    MUTUALOPS_HD int64_t operator*() const { return g; }
    MUTUALOPS_HD Iter& operator++() {
      ++g;
      return *this;
    }
    MUTUALOPS_HD bool operator!=(const Iter& o) const { return g != o.g; }
  };
  int64_t count;
  MUTUALOPS_HD Iter begin() const { return {0}; }
  MUTUALOPS_HD Iter end() const { return {count}; }
};

// The GT of an anchor in several GTs' top-k: the one of highest CIoU among
// every GT (0 for those it is no candidate of), the first on a tie, so GT 0
// when all are 0; this is Ultralytics' argmax over the anchor's column, which
// may name a GT that did not pick the anchor. `gts` lists GT indices in
// increasing order, among them every GT whose region holds the anchor (the
// others have CIoU 0 and never win): all of them (TalAllGts), or those a
// spatial index returns.
template <typename T, typename S, typename GtRange>
MUTUALOPS_HD int64_t tal_resolve_conflict(const TaskAlignedView<T, S>& v, int64_t image, int64_t a, const GtRange& gts,
                                          T* alignment, T* ciou) {
  int64_t best = 0;
  tal_candidate(v, image, 0, a, alignment, ciou);
  for (const int64_t g : gts) {
    if (g == 0) continue;
    T al, o;
    tal_candidate(v, image, g, a, &al, &o);
    if (o > *ciou) best = g, *ciou = o, *alignment = al;
  }
  return best;
}

}  // namespace mutualops
