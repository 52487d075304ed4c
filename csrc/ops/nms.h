#pragma once

// Host-side argument checks shared by the CPU and CUDA NMS kernels.
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace mutualops {

inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  TORCH_CHECK_TYPE(at::isFloatingType(boxes.scalar_type()), "boxes must be a floating-point tensor, got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0), "scores must have shape [",
                    boxes.size(0), "], got ", scores.sizes());
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "idxs must have shape [", boxes.size(0),
                    "], got ", idxs.sizes());
  TORCH_CHECK_TYPE(scores.scalar_type() == boxes.scalar_type(), "scores must have the dtype of boxes");
  TORCH_CHECK_TYPE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false),
                   "idxs must be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK_VALUE(scores.device() == boxes.device() && idxs.device() == boxes.device(),
                    "boxes, scores and idxs must be on one device");
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0, "iou_threshold must be in [0, 1], got ",
                    iou_threshold);
}

// The threshold in the IoU's type T such that (iou > t) == (double(iou) >
// threshold) for every T iou: torchvision compares float IoUs with a double.
template <typename T>
T nms_threshold(double threshold) {
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

}  // namespace mutualops
