#pragma once

// Host-side argument checks and the mode switch shared by the CPU and CUDA kernels of the oriented-box family.
#include <ATen/ATen.h>

#include <array>
#include <cmath>

#include "checks.h"
#include "mutualops/rotated_math.h"
#include "nms.h"

namespace mutualops {

inline RotatedMode parse_rotated_mode(c10::string_view mode) {
  if (mode == "iou") return RotatedMode::kIou;
  if (mode == "probiou") return RotatedMode::kProbiou;
  if (mode == "probiou_ciou") return RotatedMode::kProbiouCiou;
  TORCH_CHECK_VALUE(false, "mode must be one of iou, probiou, probiou_ciou; got '", mode, "'");
}

inline void check_rotated_eps(double eps) {
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < 1.0, "eps must be a number in [0, 1), got ", eps);
}

inline void check_rotated_boxes(const at::Tensor& boxes, const char* name) {
  check_kernel_float(boxes, name);
  TORCH_CHECK_VALUE(boxes.dim() >= 1 && boxes.size(-1) == 5, name,
                    " must have 5 values (cx, cy, w, h, angle) in its last dimension, got shape ", boxes.sizes());
}

// Validates a pairwise call and returns (B, N, M); B is 1 for 2-D inputs.
inline std::array<int64_t, 3> check_rotated_pairwise(const at::Tensor& boxes1, const at::Tensor& boxes2, double eps) {
  check_rotated_eps(eps);
  check_rotated_boxes(boxes1, "boxes1");
  check_rotated_boxes(boxes2, "boxes2");
  TORCH_CHECK_VALUE(boxes1.dim() == boxes2.dim() && (boxes1.dim() == 2 || boxes1.dim() == 3),
                    "boxes1 and boxes2 must both be [N,5]/[M,5] or both [B,N,5]/[B,M,5], got ", boxes1.sizes(), " and ",
                    boxes2.sizes());
  TORCH_CHECK_TYPE(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 must have the same dtype, got ",
                   boxes1.scalar_type(), " and ", boxes2.scalar_type());
  TORCH_CHECK_VALUE(boxes1.device() == boxes2.device(), "boxes1 and boxes2 must be on the same device, got ",
                    boxes1.device(), " and ", boxes2.device());
  if (boxes1.dim() == 2) return {1, boxes1.size(0), boxes2.size(0)};
  TORCH_CHECK_VALUE(boxes1.size(0) == boxes2.size(0), "boxes1 and boxes2 must have the same batch size, got ",
                    boxes1.size(0), " and ", boxes2.size(0));
  return {boxes1.size(0), boxes1.size(1), boxes2.size(1)};
}

inline void check_rotated_aligned(const at::Tensor& boxes1, const at::Tensor& boxes2, double eps, double floor) {
  check_rotated_eps(eps);
  TORCH_CHECK_VALUE(floor >= 0.0 && floor < INFINITY, "floor must be a finite number >= 0, got ", floor);
  check_rotated_boxes(boxes1, "boxes1");
  check_rotated_boxes(boxes2, "boxes2");
  TORCH_CHECK_VALUE(boxes1.dim() == 2 && boxes1.sizes() == boxes2.sizes(),
                    "boxes1 and boxes2 must both be [N,5] with the same N, got ", boxes1.sizes(), " and ",
                    boxes2.sizes());
  TORCH_CHECK_TYPE(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 must have the same dtype");
  TORCH_CHECK_VALUE(boxes1.device() == boxes2.device(), "boxes1 and boxes2 must be on the same device");
}

// The Gaussian's floor belongs to probiou; the exact IoU has no use for it.
inline void check_rotated_floor(RotatedMode mode, double floor) {
  TORCH_CHECK_VALUE(mode != RotatedMode::kIou || floor == 0.0,
                    "floor applies to the probiou modes, not to mode 'iou'; got floor ", floor);
}

// The Bhattacharyya distance below which probiou exceeds `iou_threshold`: 1 - sqrt(1 - exp(-bd) + eps) > t
// exactly when bd < -log(1 + eps - (1 - t)^2). Negative when no pair can pass (t near 1).
inline double probiou_distance_bound(double iou_threshold, double eps) {
  const double keep = 1.0 - iou_threshold;
  return -std::log(1.0 + eps - keep * keep);
}

}  // namespace mutualops
