#pragma once

// The one place where oriented-box overlap is defined (docs/method.md, section 2.7): the exact IoU of two
// rotated rectangles and Ultralytics' Gaussian "probabilistic IoU". The CPU and CUDA kernels of the rotated
// family (IoU, greedy NMS, matrix NMS) call these functions; nothing else computes them.
//
// Boxes are xywhr: centre, width, height and an angle in radians that turns the width axis from +x towards
// +y, as Ultralytics' xywhr2xyxyxyxy turns it (clockwise on screen, where y points down). A box with w <= 0 or
// h <= 0 has area 0; a zero union gives 0; a box with a non-finite field gives NaN.

#include <math.h>
#include <stdint.h>

#include "mutualops/box_math.h"
#include "mutualops/float_math.h"
#include "mutualops/macros.h"

namespace mutualops {

enum class RotatedMode : int { kIou = 0, kProbiou = 1, kProbiouCiou = 2 };

template <typename T>
struct RotatedBox {
  T cx, cy, w, h, angle;
};

template <typename T, typename S>
MUTUALOPS_HD RotatedBox<T> load_rotated_box(const S* p) {
  return RotatedBox<T>{static_cast<T>(p[0]), static_cast<T>(p[1]), static_cast<T>(p[2]), static_cast<T>(p[3]),
                       static_cast<T>(p[4])};
}

template <typename T>
MUTUALOPS_HD bool finite_rotated_box(const RotatedBox<T>& b) {
  return (b.cx - b.cx == T(0)) & (b.cy - b.cy == T(0)) & (b.w - b.w == T(0)) & (b.h - b.h == T(0)) &
         (b.angle - b.angle == T(0));
}

// ---- exact IoU ------------------------------------------------------------------------------------------------

// What the exact overlap needs of one box besides its centre and angle, computed once per box by pairwise
// kernels: the cosine and sine of its angle, half extents along its own axes, its area (NaN for a non-finite
// box) and the radius of its circumscribed circle, which rejects far pairs without any trigonometry.
template <typename T>
struct RotatedFrame {
  T cos, sin, half_w, half_h, area, radius;
};

template <typename T>
MUTUALOPS_HD RotatedFrame<T> rotated_frame(const RotatedBox<T>& b) {
  const T hw = clamp_min0(b.w) / T(2), hh = clamp_min0(b.h) / T(2);
  const T area = finite_rotated_box(b) ? T(4) * hw * hh : T(NAN);
  return RotatedFrame<T>{
      cos_of(b.angle), sin_of(b.angle), hw, hh, area, sqrt_of(hw * hh > T(0) ? hw * hw + hh * hh : T(0))};
}

template <typename T>
struct Point {
  T x, y;
};

// Polygon buffers of the clipping below. Clipping a convex polygon by a half-plane adds at most one vertex
// (4 -> 8 after four clips); the spare room absorbs the extra crossings rounding can make of nearly collinear
// vertices, and a full buffer drops further vertices rather than writing past it.
constexpr int kClipCapacity = 16;

// Clips the closed polygon in[0, n) to the half-plane nx * x + ny * y <= k (Sutherland-Hodgman) into out;
// returns out's vertex count. A vertex on the line is inside; a crossing needs a vertex strictly on each side,
// so that no vertex is emitted twice.
template <typename T>
MUTUALOPS_HD int clip_half_plane(const Point<T>* in, int n, T nx, T ny, T k, Point<T>* out) {
  if (n == 0) return 0;
  int m = 0;
  Point<T> s = in[n - 1];
  T fs = nx * s.x + ny * s.y - k;
  for (int i = 0; i < n; ++i) {
    const Point<T> e = in[i];
    const T fe = nx * e.x + ny * e.y - k;
    if ((fs < T(0) && fe > T(0)) || (fs > T(0) && fe < T(0))) {
      const T t = fs / (fs - fe);
      if (m < kClipCapacity) out[m++] = Point<T>{s.x + t * (e.x - s.x), s.y + t * (e.y - s.y)};
    }
    if (fe <= T(0) && m < kClipCapacity) out[m++] = e;
    s = e;
    fs = fe;
  }
  return m;
}

// Shoelace area of a simple polygon, taken about its first vertex (smaller products, less cancellation).
template <typename T>
MUTUALOPS_HD T polygon_area(const Point<T>* p, int n) {
  T twice = T(0);
  for (int i = 1; i + 1 < n; ++i) {
    const T ax = p[i].x - p[0].x, ay = p[i].y - p[0].y;
    const T bx = p[i + 1].x - p[0].x, by = p[i + 1].y - p[0].y;
    twice += ax * by - ay * bx;
  }
  return (twice < T(0) ? -twice : twice) / T(2);
}

// Area of the intersection of two finite rotated rectangles: a's four corners clipped by the four sides of b, in
// b's own frame, where b is the axis-aligned [-w/2, w/2] x [-h/2, h/2]. Two choices keep float32 exact enough:
// a is placed by the difference of the centres (far from the origin, 1e6 and beyond, the coordinates
// themselves would round away what tells nearby boxes apart) and turned by the difference of the angles (the
// sines and cosines of two nearly equal angles, taken apart, round by more than a thin box is wide).
template <typename T>
MUTUALOPS_HD T rotated_intersection(const RotatedBox<T>& a, const RotatedFrame<T>& fa, const RotatedBox<T>& b,
                                    const RotatedFrame<T>& fb) {
  if (!(fa.area > T(0)) || !(fb.area > T(0))) return T(0);
  const T dx = a.cx - b.cx, dy = a.cy - b.cy;
  const T reach = fa.radius + fb.radius;
  if (dx * dx + dy * dy > reach * reach) return T(0);
  const T px = fb.cos * dx + fb.sin * dy, py = fb.cos * dy - fb.sin * dx;  // a's centre in b's frame
  const T turn = a.angle - b.angle;
  const T c = cos_of(turn), s = sin_of(turn);
  const T ux = fa.half_w * c, uy = fa.half_w * s;   // half of a's width axis
  const T vx = -fa.half_h * s, vy = fa.half_h * c;  // half of a's height axis
  Point<T> p[kClipCapacity], q[kClipCapacity];
  p[0] = Point<T>{px + ux + vx, py + uy + vy};
  p[1] = Point<T>{px + ux - vx, py + uy - vy};
  p[2] = Point<T>{px - ux - vx, py - uy - vy};
  p[3] = Point<T>{px - ux + vx, py - uy + vy};
  int n = clip_half_plane(p, 4, T(1), T(0), fb.half_w, q);
  n = clip_half_plane(q, n, T(-1), T(0), fb.half_w, p);
  n = clip_half_plane(p, n, T(0), T(1), fb.half_h, q);
  n = clip_half_plane(q, n, T(0), T(-1), fb.half_h, p);
  // Rounding must not let the overlap exceed either box (IoU above 1).
  return min2(polygon_area(p, n), min2(fa.area, fb.area));
}

template <typename T>
MUTUALOPS_HD T rotated_iou(const RotatedBox<T>& a, const RotatedFrame<T>& fa, const RotatedBox<T>& b,
                           const RotatedFrame<T>& fb) {
  if (!(fa.area == fa.area) || !(fb.area == fb.area)) return T(NAN);
  const T inter = rotated_intersection(a, fa, b, fb);
  return safe_div(inter, fa.area + fb.area - inter);
}

template <typename T>
MUTUALOPS_HD T rotated_iou(const RotatedBox<T>& a, const RotatedBox<T>& b) {
  return rotated_iou(a, rotated_frame(a), b, rotated_frame(b));
}

// ---- probabilistic IoU ----------------------------------------------------------------------------------------

// A box as the covariance [[a, c], [c, b]] of the uniform distribution over it (w^2 / 12 and h^2 / 12 turned
// by the angle), as Ultralytics' _get_covariance_matrix builds it; `det` is a b - c^2 clamped at 0. `floor`
// is added to both variances, as Ultralytics' OBB loss adds 0.01 to bound the gradients of tiny boxes.
template <typename T>
struct Gaussian {
  T a, b, c, det;
};

// `cs` and `sn`: the cosine and sine of the box's angle, where a caller takes them from elsewhere.
template <typename T>
MUTUALOPS_HD Gaussian<T> box_gaussian(const RotatedBox<T>& r, T cs, T sn, T floor = T(0)) {
  const T p = r.w * r.w / T(12) + floor, q = r.h * r.h / T(12) + floor;
  const T cos2 = cs * cs, sin2 = sn * sn;
  const T a = p * cos2 + q * sin2, b = p * sin2 + q * cos2, c = (p - q) * cs * sn;
  return Gaussian<T>{a, b, c, clamp_min0(a * b - c * c)};
}

template <typename T>
MUTUALOPS_HD Gaussian<T> box_gaussian(const RotatedBox<T>& r, T floor = T(0)) {
  return box_gaussian(r, cos_of(r.angle), sin_of(r.angle), floor);
}

// The Bhattacharyya distance of two boxes' Gaussians, bd = t1 + t2 + t3 clamped to [eps, 100], in
// Ultralytics' order of operations (probiou and batch_probiou, ICCV 2021 "Gaussian bounding boxes"): box 1 is
// their obb1, box 2 their obb2. It and probiou are written in stages around their four elementary functions
// (t3's sqrt and log, probiou's exp and sqrt), so that a kernel can take those from elsewhere: the rotated
// task-aligned CPU kernel takes torch's own, as Ultralytics computes them, since near probiou = 1 one ulp of
// any of them grows to 1e-4. First t1 + t2, det S and det Sigma1 * det Sigma2 (whose sqrt t3 takes).
template <typename T>
struct BhattacharyyaTerms {
  T t12, det, det_product;
};

template <typename T>
MUTUALOPS_HD BhattacharyyaTerms<T> bhattacharyya_terms(const RotatedBox<T>& r1, const Gaussian<T>& g1,
                                                       const RotatedBox<T>& r2, const Gaussian<T>& g2, T eps) {
  const T sa = g1.a + g2.a, sb = g1.b + g2.b, sc = g1.c + g2.c;
  const T dx = r1.cx - r2.cx, dy = r1.cy - r2.cy;
  const T det = sa * sb - sc * sc;
  const T t1 = ((sa * (dy * dy) + sb * (dx * dx)) / (det + eps)) * T(0.25);
  const T t2 = ((sc * (r2.cx - r1.cx) * dy) / (det + eps)) * T(0.5);
  return BhattacharyyaTerms<T>{t1 + t2, det, g1.det * g2.det};
}

// The argument of t3's log, from det S and the sqrt of det Sigma1 * det Sigma2.
template <typename T>
MUTUALOPS_HD T bhattacharyya_log_argument(T det, T sqrt_det_product, T eps) {
  return det / (T(4) * sqrt_det_product + eps) + eps;
}

// bd from t1 + t2 and the log of t3's argument. NaN stays NaN (a non-finite box), as torch's clamp keeps it.
template <typename T>
MUTUALOPS_HD T bhattacharyya_from_log(T t12, T log_value, T eps) {
  const T bd = t12 + log_value * T(0.5);
  return bd < eps ? eps : (bd > T(100) ? T(100) : bd);
}

template <typename T>
MUTUALOPS_HD T bhattacharyya_distance(const RotatedBox<T>& r1, const Gaussian<T>& g1, const RotatedBox<T>& r2,
                                      const Gaussian<T>& g2, T eps) {
  const BhattacharyyaTerms<T> t = bhattacharyya_terms(r1, g1, r2, g2, eps);
  return bhattacharyya_from_log(t.t12, log_of(bhattacharyya_log_argument(t.det, sqrt_of(t.det_product), eps)), eps);
}

// probiou = 1 - the Hellinger distance: 1 - sqrt(1 - exp(-bd) + eps), in [0, 1) up to eps, 1 - sqrt(eps) for
// identical boxes. First the square of the distance, from exp(-bd).
template <typename T>
MUTUALOPS_HD T hellinger_square(T exp_minus_bd, T eps) {
  return T(1) - exp_minus_bd + eps;
}

template <typename T>
MUTUALOPS_HD T probiou_of_distance(T bd, T eps) {
  return T(1) - sqrt_of(hellinger_square(exp_of(-bd), eps));
}

// Ultralytics' CIoU variant of probiou: the aspect term of CIoU subtracted, its weight alpha a constant.
// atan(w / h) of a zero height is pi/2, as torch's atan of inf gives.
template <typename T>
MUTUALOPS_HD T probiou_ciou_term(const RotatedBox<T>& r1, const RotatedBox<T>& r2, T iou, T eps) {
  const T dt = atan_of(r2.w / r2.h) - atan_of(r1.w / r1.h);
  const T v = T(0.40528473456935109) * (dt * dt);  // 4 / pi^2
  const T alpha = v / (v - iou + (T(1) + eps));
  return iou - v * alpha;
}

template <RotatedMode M, typename T>
MUTUALOPS_HD T probiou(const RotatedBox<T>& r1, const Gaussian<T>& g1, const RotatedBox<T>& r2, const Gaussian<T>& g2,
                       T eps) {
  const T iou = probiou_of_distance(bhattacharyya_distance(r1, g1, r2, g2, eps), eps);
  return M == RotatedMode::kProbiouCiou ? probiou_ciou_term(r1, r2, iou, eps) : iou;
}

// The overlap of one mode, for aligned pairs (pairwise kernels cache the per-box frame or Gaussian instead).
template <typename T>
MUTUALOPS_HD T rotated_overlap(const RotatedBox<T>& a, const RotatedBox<T>& b, RotatedMode mode, T eps,
                               T floor = T(0)) {
  if (mode == RotatedMode::kIou) return rotated_iou(a, b);
  const Gaussian<T> ga = box_gaussian(a, floor), gb = box_gaussian(b, floor);
  return mode == RotatedMode::kProbiou ? probiou<RotatedMode::kProbiou>(a, ga, b, gb, eps)
                                       : probiou<RotatedMode::kProbiouCiou>(a, ga, b, gb, eps);
}

}  // namespace mutualops
