#pragma once

// Host-side argument checks shared by the CPU and CUDA NMS kernels.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "checks.h"

namespace mutualops {

// The box layouts NMS takes: values per box, and the shape as messages name it.
struct NmsBoxes {
  int64_t coords;
  const char* shape;
};
constexpr NmsBoxes kXyxyBoxes{4, "[N, 4]"};
constexpr NmsBoxes kXywhrBoxes{5, "[N, 5] (cx, cy, w, h, angle)"};

inline void check_nms_boxes_scores(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                   const NmsBoxes& layout = kXyxyBoxes) {
  check_kernel_float(boxes, "boxes");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == layout.coords, "boxes must have shape ", layout.shape,
                    ", got ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0), "scores must have shape [", boxes.size(0),
                    "], got ", scores.sizes());
  TORCH_CHECK_TYPE(scores.scalar_type() == boxes.scalar_type(), "scores must have the dtype of boxes");
  TORCH_CHECK_VALUE(scores.device() == boxes.device(), "boxes and scores must be on one device");
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0, "iou_threshold must be in [0, 1], got ",
                    iou_threshold);
}

inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold, const NmsBoxes& layout = kXyxyBoxes) {
  check_nms_boxes_scores(boxes, scores, iou_threshold, layout);
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "idxs must have shape [", boxes.size(0),
                    "], got ", idxs.sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false),
                   "idxs must be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.device() == boxes.device(), "boxes, scores and idxs must be on one device");
}

// Without an IoU prediction the ranking score is the class score itself:
// alpha only weighs the two when there are two (docs/method.md, section 1).
inline double rescore_alpha(const std::optional<at::Tensor>& iou, double alpha) {
  return iou.has_value() ? alpha : 0.0;
}

// What rescored NMS does with its candidates, for both layouts and both devices: the op's scalar arguments,
// with alpha 0 when there is no IoU prediction.
struct RescoreParams {
  double alpha, score_threshold, iou_threshold;
  int64_t top_k, max_detections;
  bool class_agnostic, logits;
};

inline RescoreParams rescore_params(const std::optional<at::Tensor>& iou, double alpha, double score_threshold,
                                    double iou_threshold, int64_t pre_nms_top_k, int64_t max_detections,
                                    bool class_agnostic, bool logits) {
  return RescoreParams{
      rescore_alpha(iou, alpha), score_threshold, iou_threshold, pre_nms_top_k, max_detections, class_agnostic, logits};
}

inline void check_rescore_params(double alpha, double score_threshold, double iou_threshold, int64_t max_detections) {
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(score_threshold >= 0.0 && score_threshold <= 1.0, "score_threshold must be in [0, 1], got ",
                    score_threshold);
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0, "iou_threshold must be in [0, 1], got ",
                    iou_threshold);
  TORCH_CHECK_VALUE(max_detections >= 0, "max_detections must be >= 0, got ", max_detections);
}

// A level with no point is empty, so more levels than points means sparse ids; each level costs a top-k pass
// on CUDA, and 2^40 of them asked the CPU allocator for terabytes. 256 keeps any feature pyramid valid on tiny
// inputs.
inline void check_num_levels(int64_t num_levels, int64_t points) {
  const int64_t limit = std::max<int64_t>(points, 256);
  TORCH_CHECK_VALUE(num_levels >= 1 && num_levels <= limit, "num_levels must be in [1, ", limit,
                    "] (at most max(256, the number of points)): renumber sparse level ids; got ", num_levels);
}

// Width of the padded [B, K] outputs. An image cannot have more detections than candidates, so K stops there:
// a larger max_detections would only add padding (10^12 asked the allocator for terabytes).
inline int64_t detection_slots(int64_t max_detections, int64_t candidates) {
  return std::min(max_detections, candidates);
}

inline void check_optional_index(const std::optional<at::Tensor>& t, int64_t n, const at::Tensor& like,
                                 const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK_TYPE(at::isIntegralType(t->scalar_type(), /*includeBool=*/false), name,
                   " must be an integer tensor, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n, name, " must have shape [", n, "], got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == like.device(), name, " must be on ", like.device());
}

inline void check_rescored_dense(const at::Tensor& boxes, const at::Tensor& scores,
                                 const std::optional<at::Tensor>& iou, const std::optional<at::Tensor>& level_index,
                                 int64_t num_levels, double alpha, double score_threshold, double iou_threshold,
                                 int64_t max_detections) {
  check_kernel_float(boxes, "boxes");
  TORCH_CHECK_VALUE(boxes.dim() == 3 && boxes.size(2) == 4, "boxes must have shape [B, N, 4], got ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 3 && scores.size(0) == boxes.size(0) && scores.size(1) == boxes.size(1),
                    "scores must have shape [B, N, C] matching boxes [B, N, 4], got ", scores.sizes());
  TORCH_CHECK_TYPE(scores.scalar_type() == boxes.scalar_type(), "scores must have the dtype of boxes");
  TORCH_CHECK_VALUE(scores.device() == boxes.device(), "scores must be on the device of boxes");
  if (iou.has_value()) {
    TORCH_CHECK_VALUE(iou->dim() == 2 && iou->size(0) == boxes.size(0) && iou->size(1) == boxes.size(1),
                      "iou must have shape [B, N], got ", iou->sizes());
    TORCH_CHECK_TYPE(iou->scalar_type() == boxes.scalar_type(), "iou must have the dtype of boxes");
    TORCH_CHECK_VALUE(iou->device() == boxes.device(), "iou must be on the device of boxes");
  }
  check_optional_index(level_index, boxes.size(1), boxes, "level_index");
  check_num_levels(num_levels, boxes.size(1));
  check_rescore_params(alpha, score_threshold, iou_threshold, max_detections);
}

inline void check_rescored_flat(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                                const std::optional<at::Tensor>& iou, const std::optional<at::Tensor>& batch_index,
                                const std::optional<at::Tensor>& level_index, int64_t num_levels, int64_t num_images,
                                double alpha, double score_threshold, double iou_threshold, int64_t max_detections) {
  check_kernel_float(boxes, "boxes");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [M, 4], got ", boxes.sizes());
  const int64_t m = boxes.size(0);
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == m, "scores must have shape [", m, "], got ", scores.sizes());
  TORCH_CHECK_TYPE(scores.scalar_type() == boxes.scalar_type(), "scores must have the dtype of boxes");
  if (iou.has_value()) {
    TORCH_CHECK_VALUE(iou->dim() == 1 && iou->size(0) == m, "iou must have shape [", m, "], got ", iou->sizes());
    TORCH_CHECK_TYPE(iou->scalar_type() == boxes.scalar_type(), "iou must have the dtype of boxes");
  }
  check_optional_index(labels, m, boxes, "labels");
  check_optional_index(batch_index, m, boxes, "batch_index");
  check_optional_index(level_index, m, boxes, "level_index");
  TORCH_CHECK_VALUE(num_images >= 0, "num_images must be >= 0, got ", num_images);
  check_num_levels(num_levels, m);
  check_rescore_params(alpha, score_threshold, iou_threshold, max_detections);
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
