#pragma once

// The one place where box overlap is defined. Every kernel (CPU and CUDA,
// IoU, NMS, assignment) calls these functions; nothing else computes IoU.
//
// Conventions (docs/method.md, section 2.1): boxes are xyxy without the +1 pixel offset; a box
// with x2 < x1 or y2 < y1 has area 0; a zero denominator gives 0, not NaN.
// The order of floating-point operations follows torchvision.ops so that
// valid boxes give bit-identical IoU and GIoU in fp32.

#include <math.h>
#include <stdint.h>

#include "mutualops/float_math.h"
#include "mutualops/macros.h"

namespace mutualops {

enum class IouMode : int { kIou = 0, kGiou = 1, kDiou = 2, kCiou = 3, kIof = 4 };

// torchvision's eps for the DIoU/CIoU denominators; kept so that results agree.
template <typename T>
MUTUALOPS_HD T distance_eps() {
  return T(1e-7);
}

// The overlaps take an `eps` that torchvision's IoU losses add to the union and the enclosing area (its
// default 1e-7); 0 is the plain overlap, where a zero denominator gives 0. The DIoU/CIoU denominators always
// carry one: the loss's eps, else distance_eps.
template <typename T>
MUTUALOPS_HD T distance_term_eps(T eps) {
  return eps > T(0) ? eps : distance_eps<T>();
}

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// Reads four consecutive coordinates of any storage type into the math type.
template <typename T, typename S>
MUTUALOPS_HD Box<T> load_box(const S* p) {
  return Box<T>{static_cast<T>(p[0]), static_cast<T>(p[1]), static_cast<T>(p[2]), static_cast<T>(p[3])};
}

template <typename T, typename S>
MUTUALOPS_HD void store_box(const Box<T>& b, S* p) {
  p[0] = static_cast<S>(b.x1);
  p[1] = static_cast<S>(b.y1);
  p[2] = static_cast<S>(b.x2);
  p[3] = static_cast<S>(b.y2);
}

template <typename T>
MUTUALOPS_HD T min2(T a, T b) {
  return a < b ? a : b;
}

template <typename T>
MUTUALOPS_HD T max2(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
MUTUALOPS_HD T clamp_min0(T v) {
  return v > T(0) ? v : T(0);
}

// a / b where b > 0, else 0. Written without a branch around the division so
// that compilers vectorize loops over it.
template <typename T>
MUTUALOPS_HD T safe_div(T a, T b) {
  const T q = a / (b > T(0) ? b : T(1));
  return b > T(0) ? q : (b <= T(0) ? T(0) : b);  // a NaN denominator stays NaN (see box_shape)
}

template <typename T>
MUTUALOPS_HD T box_width(const Box<T>& b) {
  return clamp_min0(b.x2 - b.x1);
}

template <typename T>
MUTUALOPS_HD T box_height(const Box<T>& b) {
  return clamp_min0(b.y2 - b.y1);
}

template <typename T>
MUTUALOPS_HD T box_area(const Box<T>& b) {
  return box_width(b) * box_height(b);
}

template <typename T>
MUTUALOPS_HD T intersection_area(const Box<T>& a, const Box<T>& b) {
  const T w = clamp_min0(min2(a.x2, b.x2) - max2(a.x1, b.x1));
  const T h = clamp_min0(min2(a.y2, b.y2) - max2(a.y1, b.y1));
  return w * h;
}

// Extent along one axis of the smallest box holding both boxes. It spans all
// four coordinates, not just the outer ones, so that a flipped box (x2 < x1)
// lies inside too and the DIoU distance term stays within [0, 1].
template <typename T>
MUTUALOPS_HD T enclosing_extent(T a1, T a2, T b1, T b2) {
  return clamp_min0(max2(max2(a2, b2), max2(a1, b1)) - min2(min2(a1, b1), min2(a2, b2)));
}

// The offset between two boxes' centres along one axis, (a1 + a2) / 2 - (b1 + b2) / 2, taken as the mean of
// the corners' differences: far from the origin the sums lose the low bits that tell nearby boxes apart (at
// 1e7 in float32 a centre moves in steps of 1), where the difference of two nearby coordinates is exact.
template <typename T>
MUTUALOPS_HD T centre_offset(T a1, T a2, T b1, T b2) {
  return ((a1 - b1) + (a2 - b2)) / T(2);
}

// atan(w / h), the CIoU aspect angle, defined as pi/2 (or 0 for a point) when
// h is 0 instead of dividing by zero.
template <typename T>
MUTUALOPS_HD T aspect_angle(T w, T h) {
  if (h > T(0)) return atan_of(w / h);
  return w > T(0) ? T(1.5707963267948966) : T(0);
}

// True when all four coordinates are finite: x - x is 0 for finite x and NaN
// for an infinity or a NaN (no isfinite, which differs between host and device).
template <typename T>
MUTUALOPS_HD bool finite_box(const Box<T>& b) {
  return (b.x1 - b.x1 == T(0)) & (b.y1 - b.y1 == T(0)) & (b.x2 - b.x2 == T(0)) & (b.y2 - b.y2 == T(0));
}

// What the overlap formulas need of one box besides its corners: its area and,
// for CIoU, its aspect angle. Pairwise kernels compute it once per box rather
// than once per pair (the angle costs an atan).
template <typename T>
struct BoxShape {
  T area;
  T angle;
};

// A box with a non-finite coordinate gets area NaN, which makes its overlap
// with any box NaN in every mode (torchvision's result), where the clamps
// and min/max below would otherwise drop the NaN and report an IoU above 1.
template <IouMode M, typename T>
MUTUALOPS_HD BoxShape<T> box_shape(const Box<T>& b) {
  return BoxShape<T>{finite_box(b) ? box_area(b) : T(NAN),
                     M == IouMode::kCiou ? aspect_angle(box_width(b), box_height(b)) : T(0)};
}

// Overlap of a and b for one mode. The mode is a template parameter so that a
// kernel's inner loop carries no switch.
template <IouMode M, typename T>
MUTUALOPS_HD T box_overlap(const Box<T>& a, const Box<T>& b, const BoxShape<T>& sa, const BoxShape<T>& sb,
                           T eps = T(0)) {
  const T inter = intersection_area(a, b);
  // b's NaN area marks a non-finite b (an overflowing area of finite corners is inf, not NaN).
  if (M == IouMode::kIof) return sb.area == sb.area ? safe_div(inter, sa.area) : sb.area;
  const T uni = sa.area + sb.area - inter;
  const T iou = safe_div(inter, uni + eps);
  if (M == IouMode::kIou) return iou;
  const T cw = enclosing_extent(a.x1, a.x2, b.x1, b.x2);
  const T ch = enclosing_extent(a.y1, a.y2, b.y1, b.y2);
  if (M == IouMode::kGiou) {
    const T enclosing = cw * ch;
    return enclosing + eps > T(0) ? iou - (enclosing - uni) / (enclosing + eps) : iou;
  }
  const T diag2 = cw * cw + ch * ch + distance_term_eps(eps);
  const T dx = centre_offset(a.x1, a.x2, b.x1, b.x2), dy = centre_offset(a.y1, a.y2, b.y1, b.y2);
  const T diou = iou - (dx * dx + dy * dy) / diag2;
  if (M == IouMode::kDiou) return diou;
  const T dt = sa.angle - sb.angle;
  const T v = T(0.40528473456935109) * dt * dt;  // 4 / pi^2
  const T alpha = v / (T(1) - iou + v + distance_term_eps(eps));
  return diou - alpha * v;
}

template <IouMode M, typename T>
MUTUALOPS_HD T box_overlap(const Box<T>& a, const Box<T>& b, T eps = T(0)) {
  return box_overlap<M>(a, b, box_shape<M>(a), box_shape<M>(b), eps);
}

template <typename T>
MUTUALOPS_HD T box_overlap(const Box<T>& a, const Box<T>& b, IouMode mode, T eps = T(0)) {
  switch (mode) {
    case IouMode::kGiou:
      return box_overlap<IouMode::kGiou>(a, b, eps);
    case IouMode::kDiou:
      return box_overlap<IouMode::kDiou>(a, b, eps);
    case IouMode::kCiou:
      return box_overlap<IouMode::kCiou>(a, b, eps);
    case IouMode::kIof:
      return box_overlap<IouMode::kIof>(a, b, eps);
    default:
      return box_overlap<IouMode::kIou>(a, b, eps);
  }
}

// Plain IoU, the quantity NMS and assignment threshold on.
template <typename T>
MUTUALOPS_HD T box_iou(const Box<T>& a, const Box<T>& b) {
  return box_overlap<IouMode::kIou>(a, b);
}

// Gradient of one clamped extent max(hi - lo, 0) into its two coordinates.
template <typename T>
MUTUALOPS_HD void extent_backward(T hi, T lo, T g, T* g_hi, T* g_lo) {
  if (hi - lo > T(0)) {
    *g_hi += g;
    *g_lo -= g;
  }
}

// Gradient of max(p, q) (larger = true) or min(p, q) into p and q as torch
// splits it: all to the selected argument, half to each on a tie. With the
// tie split, identical boxes are a stationary point of every IoU loss.
template <typename T>
MUTUALOPS_HD void select_backward(T p, T q, bool larger, T g, T* g_p, T* g_q) {
  if (p == q) {
    *g_p += g / T(2);
    *g_q += g / T(2);
  } else if ((p > q) == larger) {
    *g_p += g;
  } else {
    *g_q += g;
  }
}

// Gradient of enclosing_extent, through its nesting: hi = max(max(a2, b2),
// max(a1, b1)) gets +g, lo = min(min(a1, b1), min(a2, b2)) gets -g.
template <typename T>
MUTUALOPS_HD void enclosing_extent_backward(T a1, T a2, T b1, T b2, T g, T* g_a1, T* g_a2, T* g_b1, T* g_b2) {
  if (g == T(0) || !(enclosing_extent(a1, a2, b1, b2) > T(0))) return;
  T g_far = T(0), g_near = T(0), g_low = T(0), g_high = T(0);
  select_backward(max2(a2, b2), max2(a1, b1), true, g, &g_far, &g_near);
  select_backward(a2, b2, true, g_far, g_a2, g_b2);
  select_backward(a1, b1, true, g_near, g_a1, g_b1);
  select_backward(min2(a1, b1), min2(a2, b2), false, -g, &g_low, &g_high);
  select_backward(a1, b1, false, g_low, g_a1, g_b1);
  select_backward(a2, b2, false, g_high, g_a2, g_b2);
}

// Backward of box_overlap(a, b, mode) for one pair: adds grad * d(overlap)/d(a)
// to g_a and likewise for b. As in torchvision's CIoU, the trade-off weight
// alpha is a constant (no gradient through it).
template <typename T>
MUTUALOPS_HD void box_overlap_backward(const Box<T>& a, const Box<T>& b, IouMode mode, T grad, Box<T>* g_a, Box<T>* g_b,
                                       T eps = T(0)) {
  const T wa = box_width(a), ha = box_height(a);
  const T wb = box_width(b), hb = box_height(b);
  const T area_a = wa * ha, area_b = wb * hb;
  const T ix1 = max2(a.x1, b.x1), ix2 = min2(a.x2, b.x2);
  const T iy1 = max2(a.y1, b.y1), iy2 = min2(a.y2, b.y2);
  const T iw = clamp_min0(ix2 - ix1), ih = clamp_min0(iy2 - iy1);
  const T inter = iw * ih;
  const T uni = area_a + area_b - inter;

  // Partial derivatives of the output with respect to the intermediates.
  T g_inter = T(0), g_area_a = T(0), g_area_b = T(0), g_wa = T(0), g_ha = T(0), g_wb = T(0), g_hb = T(0), g_cw = T(0),
    g_ch = T(0);

  if (mode == IouMode::kIof) {
    if (area_a > T(0)) {
      g_inter = grad / area_a;
      g_area_a = -grad * inter / (area_a * area_a);
    }
  } else {
    T g_uni = T(0);
    const T uni_eps = uni + eps;
    const T iou = safe_div(inter, uni_eps);
    if (uni_eps > T(0)) {
      g_inter = grad / uni_eps;
      g_uni = -grad * inter / (uni_eps * uni_eps);
    }
    const T cw = enclosing_extent(a.x1, a.x2, b.x1, b.x2);
    const T ch = enclosing_extent(a.y1, a.y2, b.y1, b.y2);
    if (mode == IouMode::kGiou) {
      // giou = iou - (enclosing - uni) / (enclosing + eps)
      const T enclosing = cw * ch + eps;
      if (enclosing > T(0)) {
        g_uni += grad / enclosing;
        const T g_enclosing = -grad * (uni + eps) / (enclosing * enclosing);
        g_cw += g_enclosing * ch;
        g_ch += g_enclosing * cw;
      }
    } else if (mode == IouMode::kDiou || mode == IouMode::kCiou) {
      const T diag2 = cw * cw + ch * ch + distance_term_eps(eps);
      const T dx = centre_offset(a.x1, a.x2, b.x1, b.x2), dy = centre_offset(a.y1, a.y2, b.y1, b.y2);
      const T rho2 = dx * dx + dy * dy;
      const T g_rho2 = -grad / diag2;
      const T g_diag2 = grad * rho2 / (diag2 * diag2);
      g_cw += g_diag2 * T(2) * cw;
      g_ch += g_diag2 * T(2) * ch;
      // Each centre is the mean of two coordinates.
      const T gx = g_rho2 * dx, gy = g_rho2 * dy;
      g_a->x1 += gx;
      g_a->x2 += gx;
      g_a->y1 += gy;
      g_a->y2 += gy;
      g_b->x1 -= gx;
      g_b->x2 -= gx;
      g_b->y1 -= gy;
      g_b->y2 -= gy;
      if (mode == IouMode::kCiou) {
        const T dt = aspect_angle(wa, ha) - aspect_angle(wb, hb);
        const T v = T(0.40528473456935109) * dt * dt;
        const T alpha = v / (T(1) - iou + v + distance_term_eps(eps));
        const T g_dt = -grad * alpha * T(0.40528473456935109) * T(2) * dt;
        const T na = wa * wa + ha * ha, nb = wb * wb + hb * hb;
        if (ha > T(0) && na > T(0)) {
          g_wa += g_dt * ha / na;
          g_ha -= g_dt * wa / na;
        }
        if (hb > T(0) && nb > T(0)) {
          g_wb -= g_dt * hb / nb;
          g_hb += g_dt * wb / nb;
        }
      }
    }
    g_inter -= g_uni;
    g_area_a += g_uni;
    g_area_b += g_uni;
  }

  enclosing_extent_backward(a.x1, a.x2, b.x1, b.x2, g_cw, &g_a->x1, &g_a->x2, &g_b->x1, &g_b->x2);
  enclosing_extent_backward(a.y1, a.y2, b.y1, b.y2, g_ch, &g_a->y1, &g_a->y2, &g_b->y1, &g_b->y2);
  // Intersection extents: min(a.x2, b.x2) - max(a.x1, b.x1), clamped.
  const T g_iw = g_inter * ih, g_ih = g_inter * iw;
  if (ix2 - ix1 > T(0)) {
    select_backward(a.x2, b.x2, false, g_iw, &g_a->x2, &g_b->x2);
    select_backward(a.x1, b.x1, true, -g_iw, &g_a->x1, &g_b->x1);
  }
  if (iy2 - iy1 > T(0)) {
    select_backward(a.y2, b.y2, false, g_ih, &g_a->y2, &g_b->y2);
    select_backward(a.y1, b.y1, true, -g_ih, &g_a->y1, &g_b->y1);
  }
  g_wa += g_area_a * ha;
  g_ha += g_area_a * wa;
  g_wb += g_area_b * hb;
  g_hb += g_area_b * wb;
  extent_backward(a.x2, a.x1, g_wa, &g_a->x2, &g_a->x1);
  extent_backward(a.y2, a.y1, g_ha, &g_a->y2, &g_a->y1);
  extent_backward(b.x2, b.x1, g_wb, &g_b->x2, &g_b->x1);
  extent_backward(b.y2, b.y1, g_hb, &g_b->y2, &g_b->y1);
}

// Offset of element (batch, row, col) in a contiguous [B, N, M] output.
// 64-bit throughout: N * M passes 2^31 for realistic sizes (50k x 50k).
MUTUALOPS_HD int64_t pair_offset(int64_t batch, int64_t row, int64_t col, int64_t n, int64_t m) {
  return (batch * n + row) * m + col;
}

}  // namespace mutualops
