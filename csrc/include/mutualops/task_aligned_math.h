#pragma once

// Task-aligned assignment math (TOOD's rule, the one Ultralytics YOLO trains
// with; docs/method.md, sections 2.5 and 2.7), shared by the CPU and CUDA
// kernels, for axis-aligned and oriented boxes. Every expression keeps the
// operation order of Ultralytics 8.4's TaskAlignedAssigner and
// RotatedTaskAlignedAssigner, so that fp32 results agree with them bit for bit
// wherever the elementary functions (atan, pow, cos, sin) do, and to the last
// ulp elsewhere.

#include <math.h>
#include <stdint.h>

#include "mutualops/box_math.h"
#include "mutualops/rotated_math.h"
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

// The alignment metric t = score^alpha * overlap^beta of one candidate (the overlap: CIoU, or probiou for
// oriented boxes).
template <typename T>
MUTUALOPS_HD T tal_alignment(T score, T overlap, T alpha, T beta) {
  return torch_scalar_pow(score, alpha) * torch_scalar_pow(overlap, beta);
}

// The soft classification target of a positive: its alignment rescaled so
// that the GT's best-aligned anchor gets the GT's best overlap.
template <typename T>
MUTUALOPS_HD T tal_normalised(T alignment, T gt_best_overlap, T gt_best_alignment, T eps) {
  return alignment * gt_best_overlap / (gt_best_alignment + eps);
}

// ---- oriented boxes (RotatedTaskAlignedAssigner) ------------------------------------------------------------

// The candidate region of an oriented GT (xywhr; cs and sn the cosine and sine of its angle): the rectangle
// with each side under `min_side` widened to it, held as its corner a and the edge vectors ab and ad with their
// squared lengths, each computed in the operation order of Ultralytics' xywhr2xyxyxyxy and
// select_candidates_in_gts (a, b, d are its corners 1, 2 and 4), so that anchors on an edge fall on the same
// side.
template <typename T>
struct RotatedRegion {
  T ax, ay, abx, aby, adx, ady, ab2, ad2;
};

template <typename T>
MUTUALOPS_HD RotatedRegion<T> rotated_tal_region(const RotatedBox<T>& g, T cs, T sn, T min_side) {
  const T w = g.w < min_side ? min_side : g.w, h = g.h < min_side ? min_side : g.h;
  const T ux = w / T(2) * cs, uy = w / T(2) * sn;    // half the width axis
  const T vx = -h / T(2) * sn, vy = h / T(2) * cs;   // half the height axis
  const T ax = g.cx + ux + vx, ay = g.cy + uy + vy;  // corner 1: centre + u + v
  const T bx = g.cx + ux - vx, by = g.cy + uy - vy;  // corner 2: centre + u - v
  const T dx = g.cx - ux + vx, dy = g.cy - uy + vy;  // corner 4: centre - u + v
  const T abx = bx - ax, aby = by - ay, adx = dx - ax, ady = dy - ay;
  return RotatedRegion<T>{ax, ay, abx, aby, adx, ady, abx * abx + aby * aby, adx * adx + ady * ady};
}

// A point is a candidate when its projections on both edges lie within them, edges included.
template <typename T>
MUTUALOPS_HD bool rotated_tal_inside(T x, T y, const RotatedRegion<T>& r) {
  const T px = x - r.ax, py = y - r.ay;
  const T along_ab = px * r.abx + py * r.aby, along_ad = px * r.adx + py * r.ady;
  return (along_ab >= T(0)) & (along_ab <= r.ab2) & (along_ad >= T(0)) & (along_ad <= r.ad2);
}

// An axis-aligned box holding every point rotated_tal_inside accepts, rounding included. The test accepts the
// points whose projections on ab and ad lie in [0, |ab|^2] and [0, |ad|^2]: for perpendicular edges the
// rectangle a + s ab + t ad, in general the parallelogram whose vertices solve ab.p = 0 or |ab|^2 and
// ad.p = 0 or |ad|^2. Its box is widened by a margin far above the rounding of the projections. Edges that
// rounding made far from perpendicular (sides of a few float steps, which Ultralytics' test turns into a long
// or an unbounded strip), a zero or overflowing edge, or a non-finite vertex leave the whole plane to the
// exact test.
template <typename T>
MUTUALOPS_HD Box<T> rotated_tal_bounds(const RotatedRegion<T>& r) {
  const Box<T> plane{T(-INFINITY), T(-INFINITY), T(INFINITY), T(INFINITY)};
  const T det = r.abx * r.ady - r.aby * r.adx;
  if (!(r.ab2 > T(0)) || !(r.ad2 > T(0)) || !(abs_of(det) >= T(0.01) * sqrt_of(r.ab2) * sqrt_of(r.ad2))) {
    return plane;
  }
  const T ux = r.ady * r.ab2 / det, uy = -r.adx * r.ab2 / det;  // the vertex where ab.p = |ab|^2, ad.p = 0
  const T vx = -r.aby * r.ad2 / det, vy = r.abx * r.ad2 / det;  // the vertex where ab.p = 0, ad.p = |ad|^2
  const T scale = abs_of(r.ax) + abs_of(r.ay) + abs_of(ux) + abs_of(uy) + abs_of(vx) + abs_of(vy);
  if (!(scale < T(INFINITY))) return plane;
  const T margin = scale * T(1e-4);
  const T x1 = min2(min2(T(0), ux), min2(vx, ux + vx)), x2 = max2(max2(T(0), ux), max2(vx, ux + vx));
  const T y1 = min2(min2(T(0), uy), min2(vy, uy + vy)), y2 = max2(max2(T(0), uy), max2(vy, uy + vy));
  return Box<T>{r.ax + x1 - margin, r.ay + y1 - margin, r.ax + x2 + margin, r.ay + y2 + margin};
}

// ---- the two kinds of box --------------------------------------------------------------------------------------

// What the assignment passes need of a kind of box: kCoords values per box; a candidate region of kRegion
// values per GT, its exact membership test and an axis-aligned box bounding it (for the CPU's bucket grids);
// kCache values computed once per box (a GT, a predicted box) that the pair overlap reads; and the overlap
// itself (Ultralytics' iou_calculation), clamped at 0, a NaN counting as 0. A kind with kAngles reads the
// cosine and sine of each box's angle from `trig` (2 values per box), which the host takes from torch's own
// cos and sin: the C library's differ from them in the last bit for about one angle in twenty, enough to move
// an anchor across an edge or, for a box of zero width, to turn its Gaussian's determinant (rounding noise
// about 0) from one value into another.
struct AxisAlignedTal {
  static constexpr int kCoords = 4, kRegion = 4, kCache = 1;
  static constexpr bool kAngles = false;
  static constexpr bool kStagedOverlap = false;
  // Any finite box: CIoU's areas and distances overflow to inf, which its clamps and comparisons handle.
  static double max_magnitude(bool /*double_math*/) { return INFINITY; }
  template <typename T>
  static MUTUALOPS_HD void region(const T* gt, const T*, T min_side, T* out) {
    store_box(tal_candidate_region(load_box<T>(gt), min_side), out);
  }
  template <typename T>
  static MUTUALOPS_HD bool inside(T x, T y, const T* region) {
    return tal_inside(x, y, load_box<T>(region));
  }
  template <typename T>
  static MUTUALOPS_HD Box<T> bounds(const T* region) {
    return load_box<T>(region);
  }
  template <typename T>
  static MUTUALOPS_HD void cache(const T* box, const T*, T* out) {
    out[0] = tal_aspect_angle(load_box<T>(box));
  }
  template <typename T>
  static MUTUALOPS_HD T overlap(const T* gt, const T* gt_cache, const T* pred, const T* pred_cache) {
    return tal_complete_iou(load_box<T>(gt), gt_cache[0], load_box<T>(pred), pred_cache[0]);
  }
};

// Oriented xywhr boxes: the rectangle region above and probiou (Ultralytics' default eps 1e-7, no floor), each
// box's Gaussian cached.
struct RotatedTal {
  static constexpr int kCoords = 5, kRegion = 8, kCache = 4;
  static constexpr bool kAngles = true;
  // probiou multiplies two variances (side^2 / 12 each) and squares centre offsets: sides and centres up to
  // 1e9 (float32) or 1e75 (float64) keep every product finite, where larger ones make it NaN in Ultralytics
  // too.
  static double max_magnitude(bool double_math) { return double_math ? 1e75 : 1e9; }
  // The overlap in stages around probiou's elementary functions (rotated_math.h), which the CPU kernel takes
  // from torch's own over a batch of pairs. With v the batch's values: v = terms.det_product, sqrt;
  // v = log_argument(terms, v), log; v = exponent(terms, v), exp; v = hellinger_square(v), sqrt;
  // overlap_from_root(v).
  static constexpr bool kStagedOverlap = true;
  template <typename T>
  static MUTUALOPS_HD BhattacharyyaTerms<T> overlap_terms(const T* gt, const T* gt_cache, const T* pred,
                                                          const T* pred_cache) {
    const Gaussian<T> g1{gt_cache[0], gt_cache[1], gt_cache[2], gt_cache[3]};
    const Gaussian<T> g2{pred_cache[0], pred_cache[1], pred_cache[2], pred_cache[3]};
    return bhattacharyya_terms(load_rotated_box<T>(gt), g1, load_rotated_box<T>(pred), g2, T(kEps));
  }
  template <typename T>
  static MUTUALOPS_HD T log_argument(const BhattacharyyaTerms<T>& terms, T sqrt_det_product) {
    return bhattacharyya_log_argument(terms.det, sqrt_det_product, T(kEps));
  }
  template <typename T>
  static MUTUALOPS_HD T exponent(const BhattacharyyaTerms<T>& terms, T log_value) {
    return -bhattacharyya_from_log(terms.t12, log_value, T(kEps));
  }
  template <typename T>
  static MUTUALOPS_HD T hellinger(T exp_minus_bd) {
    return hellinger_square(exp_minus_bd, T(kEps));
  }
  template <typename T>
  static MUTUALOPS_HD T overlap_from_root(T root) {
    const T iou = T(1) - root;
    return iou > T(0) ? iou : T(0);
  }
  static constexpr double kEps = 1e-7;  // Ultralytics' probiou default
  template <typename T>
  static MUTUALOPS_HD void region(const T* gt, const T* trig, T min_side, T* out) {
    const RotatedRegion<T> r = rotated_tal_region(load_rotated_box<T>(gt), trig[0], trig[1], min_side);
    out[0] = r.ax, out[1] = r.ay, out[2] = r.abx, out[3] = r.aby;
    out[4] = r.adx, out[5] = r.ady, out[6] = r.ab2, out[7] = r.ad2;
  }
  template <typename T>
  static MUTUALOPS_HD RotatedRegion<T> load_region(const T* p) {
    return RotatedRegion<T>{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
  }
  template <typename T>
  static MUTUALOPS_HD bool inside(T x, T y, const T* region) {
    return rotated_tal_inside(x, y, load_region(region));
  }
  template <typename T>
  static MUTUALOPS_HD Box<T> bounds(const T* region) {
    return rotated_tal_bounds(load_region(region));
  }
  template <typename T>
  static MUTUALOPS_HD void cache(const T* box, const T* trig, T* out) {
    const Gaussian<T> g = box_gaussian(load_rotated_box<T>(box), trig[0], trig[1]);
    out[0] = g.a, out[1] = g.b, out[2] = g.c, out[3] = g.det;
  }
  template <typename T>
  static MUTUALOPS_HD T overlap(const T* gt, const T* gt_cache, const T* pred, const T* pred_cache) {
    const BhattacharyyaTerms<T> t = overlap_terms(gt, gt_cache, pred, pred_cache);
    return overlap_from_root(sqrt_of(hellinger(exp_of(exponent(t, log_of(log_argument(t, sqrt_of(t.det_product))))))));
  }
};

// The inputs of one assignment as the kernels read them (contiguous; scores
// in their own storage type S, everything else in the math type T), for boxes
// of kind K (AxisAlignedTal or RotatedTal).
template <typename K, typename T, typename S>
struct TaskAlignedView {
  const S* scores;        // [B, A, C]
  const T* boxes;         // [B, A, K::kCoords] predicted
  const T* anchors;       // [A, 2]
  const int64_t* labels;  // [B, G]
  const T* gt;            // [B, G, K::kCoords]
  const T* regions;       // [B, G, K::kRegion] candidate regions
  const T* gt_cache;      // [B, G, K::kCache]
  const T* pred_cache;    // [B, A, K::kCache]
  const bool* valid;      // [B, G] real GT rows
  int64_t n, gmax, classes;
  T alpha, beta;
};

// The alignment of GT row `row` with predicted box `box` (image * n + anchor) given their overlap.
template <typename K, typename T, typename S>
MUTUALOPS_HD T tal_pair_alignment(const TaskAlignedView<K, T, S>& v, int64_t row, int64_t box, T overlap) {
  return tal_alignment(static_cast<T>(v.scores[box * v.classes + v.labels[row]]), overlap, v.alpha, v.beta);
}

// The alignment and overlap of GT row `row` (image * gmax + g) with anchor `a`
// of the same image, for a pair known to be a candidate.
template <typename K, typename T, typename S>
MUTUALOPS_HD void tal_pair(const TaskAlignedView<K, T, S>& v, int64_t row, int64_t a, T* alignment, T* overlap) {
  const int64_t box = row / v.gmax * v.n + a;
  *overlap = K::overlap(v.gt + K::kCoords * row, v.gt_cache + K::kCache * row, v.boxes + K::kCoords * box,
                        v.pred_cache + K::kCache * box);
  *alignment = tal_pair_alignment(v, row, box, *overlap);
}

// Whether anchor `a` is a candidate of GT `g` (a real GT whose region holds
// it) and, if so, the pair's alignment and overlap; both are 0 otherwise, as in
// Ultralytics' dense planes.
template <typename K, typename T, typename S>
MUTUALOPS_HD bool tal_candidate(const TaskAlignedView<K, T, S>& v, int64_t image, int64_t g, int64_t a, T* alignment,
                                T* overlap) {
  const int64_t row = image * v.gmax + g;
  *alignment = T(0);
  *overlap = T(0);
  if (!v.valid[row] || !K::inside(v.anchors[2 * a], v.anchors[2 * a + 1], v.regions + K::kRegion * row)) {
    return false;
  }
  tal_pair(v, row, a, alignment, overlap);
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

// The GT of an anchor in several GTs' top-k: the one of highest overlap among
// every GT (0 for those it is no candidate of), the first on a tie, so GT 0
// when all are 0; this is Ultralytics' argmax over the anchor's column, which
// may name a GT that did not pick the anchor. `gts` lists GT indices in
// increasing order, among them every GT whose region holds the anchor (the
// others have overlap 0 and never win): all of them (TalAllGts), or those a
// spatial index returns.
template <typename K, typename T, typename S, typename GtRange>
MUTUALOPS_HD int64_t tal_resolve_conflict(const TaskAlignedView<K, T, S>& v, int64_t image, int64_t a,
                                          const GtRange& gts, T* alignment, T* overlap) {
  int64_t best = 0;
  tal_candidate(v, image, 0, a, alignment, overlap);
  for (const int64_t g : gts) {
    if (g == 0) continue;
    T al, o;
    tal_candidate(v, image, g, a, &al, &o);
    if (o > *overlap) best = g, *overlap = o, *alignment = al;
  }
  return best;
}

}  // namespace mutualops
