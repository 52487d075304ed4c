// CPU kernels of the oriented-box family: loops over mutualops/rotated_math.h. Pairwise kernels compute each
// box's frame (sine, cosine, area, circumradius) or Gaussian once, not once per pair. Greedy NMS suppresses
// run by run as the axis-aligned kernel does. Matrix NMS has no order dependency (a box goes when any earlier
// box overlaps it, kept or not), so it visits pairs in any order and in parallel, and only pairs that can
// pass: the Bhattacharyya distance grows with the squared distance of the centres, which bounds how far
// apart two boxes above the threshold can be. Memory is O(N) throughout: no N x N matrix.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../ops/nms.h"
#include "../ops/rotated.h"
#include "mutualops/rotated_math.h"
#include "mutualops/score_math.h"
#include "scratch.h"

namespace mutualops {
namespace {

// Rows of the output per task: a rotated pair costs tens of times an axis-aligned one.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(cols, 1)); }

template <typename T, typename S>
void load_boxes(const S* data, int64_t count, RotatedBox<T>* out) {
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) out[k] = load_rotated_box<T>(data + 5 * k);
  });
}

// out[b, i, j] = overlap(boxes1[b, i], boxes2[b, j]); `prepare` maps a box to what the overlap needs of it.
template <typename scalar_t, typename Prepare, typename Overlap>
void pairwise(const scalar_t* boxes1, const scalar_t* boxes2, scalar_t* out, int64_t batch, int64_t n, int64_t m,
              Prepare prepare, Overlap overlap) {
  using acc_t = at::opmath_type<scalar_t>;
  using Prepared = decltype(prepare(RotatedBox<acc_t>{}));
  Scratch<RotatedBox<acc_t>> columns(batch * m);
  Scratch<Prepared> prepared(batch * m);
  load_boxes(boxes2, batch * m, columns.ptr);
  at::parallel_for(0, batch * m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) prepared[k] = prepare(columns[k]);
  });
  at::parallel_for(0, batch * n, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      const RotatedBox<acc_t> a = load_rotated_box<acc_t>(boxes1 + 5 * r);
      const Prepared pa = prepare(a);
      scalar_t* row = out + r * m;
      for (int64_t j = 0; j < m; ++j) {
        row[j] = static_cast<scalar_t>(overlap(a, pa, columns[b * m + j], prepared[b * m + j]));
      }
    }
  });
}

at::Tensor box_iou_rotated_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, double eps) {
  const auto sizes = check_rotated_pairwise(boxes1, boxes2, eps);
  const RotatedMode rotated_mode = parse_rotated_mode(mode);
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor out = boxes1.dim() == 2 ? at::empty({sizes[1], sizes[2]}, b1.options())
                                     : at::empty({sizes[0], sizes[1], sizes[2]}, b1.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_rotated_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t e = static_cast<acc_t>(eps);
    const scalar_t* p1 = b1.data_ptr<scalar_t>();
    const scalar_t* p2 = b2.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    auto gaussian = [](const RotatedBox<acc_t>& b) { return box_gaussian(b); };
    if (rotated_mode == RotatedMode::kIou) {
      pairwise(
          p1, p2, o, sizes[0], sizes[1], sizes[2], [](const RotatedBox<acc_t>& b) { return rotated_frame(b); },
          [](const RotatedBox<acc_t>& a, const RotatedFrame<acc_t>& fa, const RotatedBox<acc_t>& b,
             const RotatedFrame<acc_t>& fb) { return rotated_iou(a, fa, b, fb); });
    } else if (rotated_mode == RotatedMode::kProbiou) {
      pairwise(p1, p2, o, sizes[0], sizes[1], sizes[2], gaussian,
               [e](const RotatedBox<acc_t>& a, const Gaussian<acc_t>& ga, const RotatedBox<acc_t>& b,
                   const Gaussian<acc_t>& gb) { return probiou<RotatedMode::kProbiou>(a, ga, b, gb, e); });
    } else {
      pairwise(p1, p2, o, sizes[0], sizes[1], sizes[2], gaussian,
               [e](const RotatedBox<acc_t>& a, const Gaussian<acc_t>& ga, const RotatedBox<acc_t>& b,
                   const Gaussian<acc_t>& gb) { return probiou<RotatedMode::kProbiouCiou>(a, ga, b, gb, e); });
    }
  });
  return out;
}

at::Tensor box_iou_rotated_aligned_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                                       double eps, double floor) {
  check_rotated_aligned(boxes1, boxes2, eps, floor);
  const RotatedMode rotated_mode = parse_rotated_mode(mode);
  check_rotated_floor(rotated_mode, floor);
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  at::Tensor out = at::empty({b1.size(0)}, b1.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_rotated_aligned_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = b1.data_ptr<scalar_t>();
    const scalar_t* p2 = b2.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, b1.size(0), 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        o[i] = static_cast<scalar_t>(rotated_overlap(load_rotated_box<acc_t>(p1 + 5 * i),
                                                     load_rotated_box<acc_t>(p2 + 5 * i), rotated_mode,
                                                     static_cast<acc_t>(eps), static_cast<acc_t>(floor)));
      }
    });
  });
  return out;
}

// ---- greedy NMS over the exact IoU ------------------------------------------------------------------------------

// Positions of the finite candidates (finite box and score) ordered by (key, score descending, index).
template <typename acc_t, typename scalar_t>
int64_t finite_candidates(const scalar_t* box_data, const scalar_t* score_data, const int64_t* key_data, int64_t n,
                          int64_t* order) {
  auto score = [&](int64_t i) { return static_cast<acc_t>(score_data[i]); };
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(score(i)) && finite_rotated_box(load_rotated_box<acc_t>(box_data + 5 * i))) order[m++] = i;
  }
  std::sort(order, order + m, [&](int64_t a, int64_t b) {
    if (key_data && key_data[a] != key_data[b]) return key_data[a] < key_data[b];
    return ranks_before(score(a), a, score(b), b);
  });
  return m;
}

// The kept candidates' source indices, by score descending (ties to the lower index).
template <typename acc_t, typename scalar_t>
at::Tensor kept_in_score_order(const int64_t* order, const uint8_t* removed, int64_t m, const scalar_t* score_data) {
  at::Tensor out = at::empty({m}, at::TensorOptions().dtype(at::kLong));
  int64_t* kept = out.data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t p = 0; p < m; ++p) {
    if (!removed[p]) kept[count++] = order[p];
  }
  auto score = [&](int64_t i) { return static_cast<acc_t>(score_data[i]); };
  std::sort(kept, kept + count, [&](int64_t a, int64_t b) { return ranks_before(score(a), a, score(b), b); });
  return out.narrow(0, 0, count);
}

template <typename scalar_t>
at::Tensor batched_nms_rotated_typed(const at::Tensor& boxes, const at::Tensor& scores, const int64_t* key_data,
                                     double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* box_data = boxes.data_ptr<scalar_t>();
  const scalar_t* score_data = scores.data_ptr<scalar_t>();
  Scratch<int64_t> order(n);
  const int64_t m = finite_candidates<acc_t>(box_data, score_data, key_data, n, order.ptr);
  Scratch<RotatedBox<acc_t>> box(m);
  Scratch<RotatedFrame<acc_t>> frame(m);
  Scratch<int64_t> key(m);
  for (int64_t p = 0; p < m; ++p) {
    box[p] = load_rotated_box<acc_t>(box_data + 5 * order[p]);
    frame[p] = rotated_frame(box[p]);
    key[p] = key_data ? key_data[order[p]] : 0;
  }
  std::vector<int64_t> run_start;
  for_each_run(key.ptr, m, [&](int64_t s, int64_t) { run_start.push_back(s); });
  run_start.push_back(m);
  Scratch<uint8_t> removed(m, 0);
  const acc_t threshold = nms_threshold<acc_t>(iou_threshold);
  at::parallel_for(0, static_cast<int64_t>(run_start.size()) - 1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = run_start[r]; i < run_start[r + 1]; ++i) {
        if (removed[i]) continue;
        for (int64_t j = i + 1; j < run_start[r + 1]; ++j) {
          if (!removed[j] && rotated_iou(box[i], frame[i], box[j], frame[j]) > threshold) removed[j] = 1;
        }
      }
    }
  });
  return kept_in_score_order<acc_t>(order.ptr, removed.ptr, m, score_data);
}

at::Tensor run_nms_rotated(const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
                           double iou_threshold) {
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  const at::Tensor k = idxs.has_value() ? idxs->to(at::kLong).contiguous() : at::Tensor();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "nms_rotated_cpu", [&] {
    keep = batched_nms_rotated_typed<scalar_t>(b, s, k.defined() ? k.data_ptr<int64_t>() : nullptr, iou_threshold);
  });
  return keep;
}

at::Tensor nms_rotated_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_boxes_scores(boxes, scores, iou_threshold, kXywhrBoxes);
  return run_nms_rotated(boxes, scores, std::nullopt, iou_threshold);
}

at::Tensor batched_nms_rotated_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                   double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold, kXywhrBoxes);
  return run_nms_rotated(boxes, scores, idxs, iou_threshold);
}

// ---- matrix NMS over probiou ------------------------------------------------------------------------------------

// Above this ratio of a box's Gaussian variances ((long side / short side)^2) the computed determinants lose
// more than about 1e-3 of their value to cancellation in T, so the distance bound below may not hold for the
// computed probiou: such boxes are compared with every box instead.
template <typename T>
double max_variance_ratio() {
  return 1e-3 / std::numeric_limits<T>::epsilon();
}

// The distance between centres beyond which a box and any other cannot have a probiou above the threshold
// (infinity: no such distance is known). With S the sum of the two covariances, t1 + t2 = d' adj(S) d /
// (4 (det S + eps)) >= |d|^2 / (4 (lmax(S) + eps / lmin(S))), and lmax(S) + eps / lmin(S) <= the larger of
// the two boxes' 2 lmax + eps / lmin; t3 >= -log(1 + eps / (4 det)) / 2, which is under 0.008 once det >= 16
// eps (smaller boxes are compared with every box). So the pair needs |d|^2 < 4 u (bound + 0.008), where u is
// the larger box term; the reach doubles the slack and adds 10% for rounding.
//
// The bound is the exact formula's; the computed one must not stray from it. Besides the variance ratio, that
// rules out boxes whose covariance determinant passes a quarter of the square root of T's largest value: the
// product of two such determinants inside t3 overflows to infinity in T, which sends t3 to log(eps) / 2 and
// the computed probiou of two far-apart boxes near 1 (Ultralytics computes that value too, and suppresses).
template <typename T>
double probiou_reach(const RotatedBox<T>& b, double bound, double eps) {
  const double p = double(b.w) * double(b.w) / 12.0, q = double(b.h) * double(b.h) / 12.0;
  const double lo = std::min(p, q), hi = std::max(p, q);
  const double largest_det = std::sqrt(double(std::numeric_limits<T>::max())) / 4.0;
  if (!(lo > 0.0) || hi > lo * max_variance_ratio<T>() || lo * hi < 16.0 * eps || !(hi * hi <= largest_det)) {
    return std::numeric_limits<double>::infinity();
  }
  const double u = 2.0 * hi + eps / lo;
  return std::sqrt(4.0 * u * (bound + 0.016) * 1.1);
}

template <typename scalar_t>
at::Tensor fast_nms_rotated_typed(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* box_data = boxes.data_ptr<scalar_t>();
  const scalar_t* score_data = scores.data_ptr<scalar_t>();
  Scratch<int64_t> order(n);
  const int64_t m = finite_candidates<acc_t>(box_data, score_data, nullptr, n, order.ptr);
  Scratch<RotatedBox<acc_t>> box(m);
  Scratch<Gaussian<acc_t>> gauss(m);
  Scratch<double> reach(m);
  const double bound = std::max(probiou_distance_bound(iou_threshold, eps), 0.0);
  at::parallel_for(0, m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      box[p] = load_rotated_box<acc_t>(box_data + 5 * order[p]);
      gauss[p] = box_gaussian(box[p]);
      reach[p] = probiou_reach(box[p], bound, eps);
    }
  });
  // Positions by centre x, so that the boxes within a reach of a centre are one binary search away.
  Scratch<int64_t> by_x(m);
  Scratch<double> xs(m);
  for (int64_t p = 0; p < m; ++p) by_x[p] = p;
  std::sort(by_x.ptr, by_x.ptr + m, [&](int64_t a, int64_t b) { return box[a].cx < box[b].cx; });
  for (int64_t k = 0; k < m; ++k) xs[k] = double(box[by_x[k]].cx);

  Scratch<uint8_t> removed(m, 0);
  // Rounded to the math type as torch rounds a Python float it compares a tensor with: Ultralytics' rule.
  const acc_t threshold = static_cast<acc_t>(iou_threshold);
  const acc_t e = static_cast<acc_t>(eps);
  // The pair as the matrix holds it: the earlier box is obb1 (the row), the later obb2 (the column). Several
  // threads may mark one box; each writes the same value.
  auto compare = [&](int64_t p, int64_t q) {
    const int64_t first = std::min(p, q), second = std::max(p, q);
    if (first == second || __atomic_load_n(&removed[second], __ATOMIC_RELAXED)) return;
    if (probiou<RotatedMode::kProbiou>(box[first], gauss[first], box[second], gauss[second], e) > threshold) {
      __atomic_store_n(&removed[second], uint8_t(1), __ATOMIC_RELAXED);
    }
  };
  // Every pair that can pass is within the larger of its two reaches, so it is met from that box's side.
  at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t p = by_x[k];
      const double r = reach[p];
      if (!std::isfinite(r)) {
        for (int64_t q = 0; q < m; ++q) compare(p, q);
        continue;
      }
      const double cx = double(box[p].cx), cy = double(box[p].cy);
      const int64_t lo = std::lower_bound(xs.ptr, xs.ptr + m, cx - r) - xs.ptr;
      const int64_t hi = std::upper_bound(xs.ptr, xs.ptr + m, cx + r) - xs.ptr;
      for (int64_t kk = lo; kk < hi; ++kk) {
        const int64_t q = by_x[kk];
        const double dx = double(box[q].cx) - cx, dy = double(box[q].cy) - cy;
        if (dx * dx + dy * dy <= r * r) compare(p, q);
      }
    }
  });
  return kept_in_score_order<acc_t>(order.ptr, removed.ptr, m, score_data);
}

at::Tensor fast_nms_rotated_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double eps) {
  check_nms_boxes_scores(boxes, scores, iou_threshold, kXywhrBoxes);
  check_rotated_eps(eps);
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "fast_nms_rotated_cpu",
                                  [&] { keep = fast_nms_rotated_typed<scalar_t>(b, s, iou_threshold, eps); });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("box_iou_rotated", &box_iou_rotated_cpu);
  m.impl("box_iou_rotated_aligned", &box_iou_rotated_aligned_cpu);
  m.impl("nms_rotated", &nms_rotated_cpu);
  m.impl("batched_nms_rotated", &batched_nms_rotated_cpu);
  m.impl("fast_nms_rotated", &fast_nms_rotated_cpu);
}

}  // namespace mutualops
