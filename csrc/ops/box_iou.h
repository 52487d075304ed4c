#pragma once

// Host-side helpers shared by the CPU and CUDA box-IoU kernels: argument
// checks and the run-time-to-compile-time switch over the IoU mode.
#include <ATen/ATen.h>

#include <type_traits>

#include "checks.h"
#include "mutualops/box_math.h"

namespace mutualops {

inline IouMode parse_iou_mode(c10::string_view mode) {
  if (mode == "iou") return IouMode::kIou;
  if (mode == "giou") return IouMode::kGiou;
  if (mode == "diou") return IouMode::kDiou;
  if (mode == "ciou") return IouMode::kCiou;
  if (mode == "iof") return IouMode::kIof;
  TORCH_CHECK_VALUE(false, "mode must be one of iou, giou, diou, ciou, iof; got '", mode, "'");
}

template <IouMode M>
using IouModeTag = std::integral_constant<IouMode, M>;

// Calls f(IouModeTag<mode>{}) so that kernels get the mode as a template argument.
template <typename F>
void dispatch_iou_mode(IouMode mode, F&& f) {
  switch (mode) {
    case IouMode::kIou:
      return f(IouModeTag<IouMode::kIou>{});
    case IouMode::kGiou:
      return f(IouModeTag<IouMode::kGiou>{});
    case IouMode::kDiou:
      return f(IouModeTag<IouMode::kDiou>{});
    case IouMode::kCiou:
      return f(IouModeTag<IouMode::kCiou>{});
    case IouMode::kIof:
      return f(IouModeTag<IouMode::kIof>{});
  }
}

inline void check_boxes(const at::Tensor& boxes, const char* name) {
  check_kernel_float(boxes, name);
  TORCH_CHECK_VALUE(boxes.dim() >= 1 && boxes.size(-1) == 4, name,
                    " must have 4 coordinates (x1, y1, x2, y2) in its last dimension, got shape ", boxes.sizes());
}

// Validates a pairwise call and returns (B, N, M); B is 1 for 2-D inputs.
inline std::array<int64_t, 3> check_pairwise(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1");
  check_boxes(boxes2, "boxes2");
  TORCH_CHECK_VALUE(boxes1.dim() == boxes2.dim() && (boxes1.dim() == 2 || boxes1.dim() == 3),
                    "boxes1 and boxes2 must both be [N,4]/[M,4] or both [B,N,4]/[B,M,4], got ", boxes1.sizes(), " and ",
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

inline void check_aligned(const at::Tensor& boxes1, const at::Tensor& boxes2, double eps) {
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < INFINITY, "eps must be a finite number >= 0, got ", eps);
  check_boxes(boxes1, "boxes1");
  check_boxes(boxes2, "boxes2");
  TORCH_CHECK_VALUE(boxes1.dim() == 2 && boxes1.sizes() == boxes2.sizes(),
                    "boxes1 and boxes2 must both be [N,4] with the same N, got ", boxes1.sizes(), " and ",
                    boxes2.sizes());
  TORCH_CHECK_TYPE(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 must have the same dtype");
  TORCH_CHECK_VALUE(boxes1.device() == boxes2.device(), "boxes1 and boxes2 must be on the same device");
}

inline void check_aligned_backward(const at::Tensor& grad, const at::Tensor& boxes1, const at::Tensor& boxes2,
                                   double eps) {
  check_aligned(boxes1, boxes2, eps);
  check_kernel_float(grad, "grad");
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == boxes1.size(0), "grad must have shape [", boxes1.size(0),
                    "] (one per pair of boxes), got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == boxes1.device(), "grad must be on the device of boxes1");
}

}  // namespace mutualops
