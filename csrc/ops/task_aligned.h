#pragma once

// Host side of task-aligned assignment shared by the CPU and CUDA kernels:
// argument checks, one data check (one host read), the inputs in the layout
// and types the kernels read, and the outputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "checks.h"
#include "mutualops/task_aligned_math.h"

namespace mutualops {

using TaskAlignedResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct TaskAlignedParams {
  int64_t topk, topk2, classes;
  double alpha, beta, eps, min_side;
  bool with_scores;
};

// [B, G] or [B, G, 1] viewed as [B, G].
inline at::Tensor per_gt(const at::Tensor& t, int64_t images, int64_t gmax, const char* name) {
  const bool ok = (t.dim() == 2 || (t.dim() == 3 && t.size(2) == 1)) && t.size(0) == images && t.size(1) == gmax;
  TORCH_CHECK_VALUE(ok, name, " must have shape [", images, ", ", gmax, ", 1] or [", images, ", ", gmax, "], got ",
                    t.sizes());
  return t.reshape({images, gmax});
}

// `coords` values per box: 4 (xyxy) or 5 (xywhr).
inline void check_task_aligned(int64_t coords, const at::Tensor& scores, const at::Tensor& boxes,
                               const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& gt,
                               const at::Tensor& mask, const TaskAlignedParams& p) {
  for (auto [t, name] :
       {std::pair{&scores, "pd_scores"}, {&boxes, "pd_bboxes"}, {&anchors, "anc_points"}, {&gt, "gt_bboxes"}}) {
    check_kernel_float(*t, name);
    TORCH_CHECK_VALUE(t->device() == scores.device(), name, " must be on the device of pd_scores (", scores.device(),
                      "), got ", t->device());
  }
  for (auto [t, name] : {std::pair{&labels, "gt_labels"}, {&mask, "mask_gt"}}) {
    TORCH_CHECK_TYPE(!t->is_complex(), name, " must be a real tensor");
    TORCH_CHECK_VALUE(t->device() == scores.device(), name, " must be on the device of pd_scores (", scores.device(),
                      "), got ", t->device());
  }
  TORCH_CHECK_VALUE(scores.dim() == 3, "pd_scores must have shape [B, A, C], got ", scores.sizes());
  const int64_t images = scores.size(0), n = scores.size(1);
  TORCH_CHECK_VALUE(scores.size(2) == p.classes, "pd_scores has ", scores.size(2),
                    " classes in its last dimension but num_classes is ", p.classes);
  TORCH_CHECK_VALUE(boxes.dim() == 3 && boxes.size(0) == images && boxes.size(1) == n && boxes.size(2) == coords,
                    "pd_bboxes must have shape [", images, ", ", n, ", ", coords, "], got ", boxes.sizes());
  TORCH_CHECK_VALUE(anchors.dim() == 2 && anchors.size(0) == n && anchors.size(1) == 2, "anc_points must have shape [",
                    n, ", 2], got ", anchors.sizes());
  TORCH_CHECK_VALUE(gt.dim() == 3 && gt.size(0) == images && gt.size(2) == coords, "gt_bboxes must have shape [",
                    images, ", G, ", coords, "], got ", gt.sizes());
  per_gt(labels, images, gt.size(1), "gt_labels");
  per_gt(mask, images, gt.size(1), "mask_gt");
  TORCH_CHECK_VALUE(p.classes >= 1, "num_classes must be >= 1, got ", p.classes);
  TORCH_CHECK_VALUE(p.topk >= 1 && p.topk <= n, "topk must be in [1, ", n, "] (the number of anchors), got ", p.topk);
  TORCH_CHECK_VALUE(p.topk2 >= 1 && p.topk2 <= n, "topk2 must be in [1, ", n, "] (the number of anchors), got ",
                    p.topk2);
  for (auto [v, name] : {std::pair{p.alpha, "alpha"}, {p.beta, "beta"}}) {
    TORCH_CHECK_VALUE(std::isfinite(v) && v >= 0, name, " must be finite and >= 0, got ", v);
  }
  // eps keeps a GT whose positives all align at 0 from dividing 0 by 0 (NaN targets).
  TORCH_CHECK_VALUE(std::isfinite(p.eps) && p.eps > 0, "eps must be finite and > 0, got ", p.eps);
  TORCH_CHECK_VALUE(std::isfinite(p.min_side) && p.min_side >= 0, "stride must be finite and >= 0, got ", p.min_side);
}

// The kernels' math type: float64 if any floating input is, float32 otherwise.
inline at::ScalarType task_aligned_math_type(const at::Tensor& scores, const at::Tensor& boxes,
                                             const at::Tensor& anchors, const at::Tensor& gt) {
  for (const at::Tensor* t : {&scores, &boxes, &anchors, &gt}) {
    if (t->scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

// What the kernels read: scores in their own dtype (no copy of [B, A, C]),
// the rest contiguous in the math type, labels as int64 (float labels
// truncated, as Ultralytics' .long()), the mask as bool; for a kind of box
// with angles, the cosine and sine of each angle ([B, G, 2], [B, A, 2]; see
// task_aligned_math.h), and null pointers otherwise.
struct TaskAlignedInputs {
  at::Tensor scores, boxes, anchors, labels, gt, valid, gt_trig, box_trig;

  template <typename T>
  const T* gt_angles() const {
    return gt_trig.defined() ? gt_trig.data_ptr<T>() : nullptr;
  }
  template <typename T>
  const T* box_angles() const {
    return box_trig.defined() ? box_trig.data_ptr<T>() : nullptr;
  }
};

// cos and sin of the angle column of xywhr boxes, by torch's own functions on this device.
inline at::Tensor angle_cos_sin(const at::Tensor& boxes) {
  const at::Tensor angle = boxes.select(-1, 4);
  return at::stack({at::cos(angle), at::sin(angle)}, -1).contiguous();
}

// `magnitude`: the largest |value| the kernels take in a box's first four fields (centre and size for oriented
// boxes, whose Gaussians' determinants grow as the fourth power of the sides), infinity for no bound.
inline TaskAlignedInputs prepare_task_aligned(const at::Tensor& scores, const at::Tensor& boxes,
                                              const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& gt,
                                              const at::Tensor& mask, at::ScalarType math, int64_t classes,
                                              double magnitude) {
  const int64_t images = scores.size(0), gmax = gt.size(1);
  TaskAlignedInputs in;
  in.scores = scores.contiguous();
  in.boxes = boxes.to(math).contiguous();
  in.anchors = anchors.to(math).contiguous();
  in.gt = gt.to(math).contiguous();
  const at::Tensor raw_mask = per_gt(mask, images, gmax, "mask_gt");
  in.valid = raw_mask.ne(0).contiguous();
  const at::Tensor raw_labels = per_gt(labels, images, gmax, "gt_labels");
  in.labels = raw_labels.to(at::kLong).contiguous();
  // One host read for every data check. Padding rows (mask 0) are not looked at.
  const at::Tensor real_labels = at::where(in.valid, raw_labels.to(at::kDouble), 0.0);
  const at::Tensor real_gt = at::where(in.valid.unsqueeze(-1), in.gt, at::zeros({}, in.gt.options()));
  auto finite = [](const at::Tensor& t) {
    if (t.numel() == 0) return at::ones({}, t.options().dtype(at::kBool));
    const auto [lo, hi] = at::aminmax(t);
    return (lo > -INFINITY).logical_and(hi < INFINITY);  // false for NaN too
  };
  // Boxes: every field finite, the first four within `magnitude`.
  auto box_values = [&](const at::Tensor& t) {
    if (!std::isfinite(magnitude) || t.numel() == 0) return finite(t);
    const auto [lo, hi] = at::aminmax(t.narrow(-1, 0, 4));
    return finite(t).logical_and(lo >= -magnitude).logical_and(hi <= magnitude);
  };
  // A NaN mask is neither a real row nor padding (Ultralytics reads it as both).
  auto mask_values = [&]() {
    return raw_mask.is_floating_point() ? raw_mask.isnan().any().logical_not()
                                        : at::ones({}, raw_mask.options().dtype(at::kBool));
  };
  // Probabilities: a score above 1 raised to alpha > 1 can overflow to inf, and inf * 0 (a CIoU of 0) is a
  // NaN alignment, which no top-k ranks.
  auto probabilities = [](const at::Tensor& t) {
    if (t.numel() == 0) return at::ones({}, t.options().dtype(at::kBool));
    const auto [lo, hi] = at::aminmax(t);
    return (lo >= 0).logical_and(hi <= 1);
  };
  // Flipped GT rows (x2 < x1 or y2 < y1; for oriented boxes a negative width or height) pass, as in
  // Ultralytics: their regions are widened like any thin box, and (axis-aligned) their CIoU clamps to 0, so
  // that they keep at most zero-alignment candidates.
  const at::Tensor flags =
      at::stack({real_labels.eq(real_labels.trunc()).all().logical_and(real_labels.ge(0).all()),
                 real_labels.lt(static_cast<double>(classes)).all(), box_values(real_gt), finite(in.anchors),
                 box_values(in.boxes), probabilities(in.scores), mask_values()})
          .cpu();
  const bool* ok = flags.data_ptr<bool>();
  TORCH_CHECK_VALUE(ok[0], "gt_labels must hold non-negative whole class indices on the real GT rows (mask_gt != 0)");
  TORCH_CHECK_VALUE(ok[1], "gt_labels must be < num_classes (", classes, ") on the real GT rows (mask_gt != 0)");
  const std::string bound = std::isfinite(magnitude)
                                ? c10::str(" or a centre or side beyond +-", magnitude, " (where probiou overflows)")
                                : "";
  TORCH_CHECK_VALUE(ok[2], "gt_bboxes holds a non-finite value", bound, " on a real GT row (mask_gt != 0)");
  TORCH_CHECK_VALUE(ok[3], "anc_points holds a non-finite coordinate");
  TORCH_CHECK_VALUE(ok[4], "pd_bboxes holds a non-finite value", bound);
  TORCH_CHECK_VALUE(ok[5], "pd_scores must be probabilities in [0, 1] (apply sigmoid to logits first)");
  TORCH_CHECK_VALUE(ok[6], "mask_gt holds NaN: a row must be real (nonzero) or padding (0)");
  return in;
}

// Outputs, filled by the kernels: every anchor background to begin with.
struct TaskAlignedOutputs {
  at::Tensor labels, bboxes, scores, fg, gt_index, alignment;
  TaskAlignedResult result() const { return {labels, bboxes, scores, fg, gt_index, alignment}; }
};

inline TaskAlignedOutputs task_aligned_outputs(const at::Tensor& scores, const at::Tensor& gt, at::ScalarType math,
                                               const TaskAlignedParams& p) {
  const int64_t coords = gt.size(2);
  const int64_t images = scores.size(0), n = scores.size(1);
  const auto opts = scores.options();
  TaskAlignedOutputs out;
  out.labels = at::empty({images, n}, opts.dtype(at::kLong));
  out.bboxes = at::empty({images, n, coords}, opts.dtype(gt.scalar_type()));
  out.scores = at::zeros({images, n, p.with_scores ? p.classes : 0}, opts.dtype(math));
  out.fg = at::zeros({images, n}, opts.dtype(at::kBool));
  out.gt_index = at::zeros({images, n}, opts.dtype(at::kLong));
  out.alignment = at::zeros({images, n}, opts.dtype(math));
  return out;
}

// The op's host side on every backend and kind of box K (task_aligned_math.h):
// checks, the case without GT rows (every anchor background with label
// num_classes, as in Ultralytics), the inputs and the outputs.
// `kernel(T(), S(), in, p, out)` is the backend's kernel for math type T and
// score storage type S.
template <typename K, typename Kernel>
TaskAlignedResult assign_task_aligned_host(const at::Tensor& scores, const at::Tensor& boxes, const at::Tensor& anchors,
                                           const at::Tensor& labels, const at::Tensor& gt, const at::Tensor& mask,
                                           const TaskAlignedParams& p, Kernel kernel) {
  check_task_aligned(K::kCoords, scores, boxes, anchors, labels, gt, mask, p);
  const at::ScalarType math = task_aligned_math_type(scores, boxes, anchors, gt);
  TaskAlignedOutputs out = task_aligned_outputs(scores, gt, math, p);
  if (gt.size(1) == 0 || scores.size(0) == 0) {
    out.labels.fill_(p.classes);
    out.bboxes.zero_();
    return out.result();
  }
  TaskAlignedInputs in = prepare_task_aligned(scores, boxes, anchors, labels, gt, mask, math, p.classes,
                                              K::max_magnitude(math == at::kDouble));
  if constexpr (K::kAngles) {
    in.gt_trig = angle_cos_sin(in.gt);
    in.box_trig = angle_cos_sin(in.boxes);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scores.scalar_type(), "assign_task_aligned", [&] {
    if (math == at::kDouble) {
      kernel(double(), scalar_t(), in, p, out);
    } else {
      kernel(float(), scalar_t(), in, p, out);
    }
  });
  return out.result();
}

}  // namespace mutualops
