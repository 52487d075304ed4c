#pragma once

// Host-side argument checks shared by the CPU and CUDA assignment kernels: types and shapes here; values by
// each backend's kernel over assign_faults_at (mutualops/assign_math.h), one host read, reported here.
#include <ATen/ATen.h>

#include <string>

#include "checks.h"
#include "mutualops/assign_math.h"

namespace mutualops {

inline void check_gt(const at::Tensor& gt_boxes, const at::Tensor& num_gt, const char* boxes_name,
                     const char* count_name) {
  check_kernel_float(gt_boxes, boxes_name);
  TORCH_CHECK_VALUE(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, boxes_name, " must have shape [B, G, 4], got ",
                    gt_boxes.sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(num_gt.scalar_type(), false), count_name, " must be an integer tensor");
  TORCH_CHECK_VALUE(num_gt.dim() == 1 && num_gt.size(0) == gt_boxes.size(0), count_name, " must have shape [",
                    gt_boxes.size(0), "], got ", num_gt.sizes());
  TORCH_CHECK_VALUE(num_gt.device() == gt_boxes.device(), count_name, " must be on the device of ", boxes_name);
}

inline void check_priors(const at::Tensor& priors, const at::Tensor& gt_boxes, int64_t width, const char* name) {
  TORCH_CHECK_TYPE(priors.scalar_type() == gt_boxes.scalar_type(), name, " must have the dtype of gt_boxes");
  TORCH_CHECK_VALUE(priors.dim() == 2 && priors.size(1) == width, name, " must have shape [P, ", width, "], got ",
                    priors.sizes());
  TORCH_CHECK_VALUE(priors.device() == gt_boxes.device(), name, " must be on the device of gt_boxes");
}

inline void check_assign_fcos(const at::Tensor& points, const at::Tensor& gt_boxes, const at::Tensor& num_gt,
                              const at::Tensor& strides, const at::Tensor& regress_ranges) {
  check_gt(gt_boxes, num_gt, "gt_boxes", "num_gt");
  check_priors(points, gt_boxes, 2, "points");
  const int64_t n = points.size(0);
  TORCH_CHECK_VALUE(strides.dim() == 1 && strides.size(0) == n, "strides must have shape [", n, "]");
  TORCH_CHECK_VALUE(regress_ranges.dim() == 2 && regress_ranges.size(0) == n && regress_ranges.size(1) == 2,
                    "regress_ranges must have shape [", n, ", 2]");
}

inline void check_assign_max_iou(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& num_gt,
                                 const std::optional<at::Tensor>& ignore_boxes,
                                 const std::optional<at::Tensor>& num_ignore) {
  check_gt(gt_boxes, num_gt, "gt_boxes", "num_gt");
  check_priors(anchors, gt_boxes, 4, "anchors");
  TORCH_CHECK_VALUE(ignore_boxes.has_value() == num_ignore.has_value(), "ignore_boxes and num_ignore go together");
  if (!ignore_boxes.has_value()) return;
  TORCH_CHECK_VALUE(ignore_boxes->device() == gt_boxes.device(), "ignore_boxes must be on the device of gt_boxes");
  check_gt(*ignore_boxes, *num_ignore, "ignore_boxes", "num_ignore");
  TORCH_CHECK_VALUE(ignore_boxes->size(0) == gt_boxes.size(0), "ignore_boxes must have one entry per image (",
                    gt_boxes.size(0), "), got ", ignore_boxes->size(0));
}

// The tensors whose values an assignment op checks, as its kernels read them: contiguous, the boxes in the
// priors' dtype, the counts int64 (the ignore counts as given, before mmdetection's rule drops some).
struct CheckedInputs {
  at::Tensor priors, gts, counts, ignore, ignore_counts;  // ignore ones undefined without ignore boxes
  bool iou;
};

template <typename S>
AssignInputs<S> assign_inputs(const CheckedInputs& c) {
  const bool has_ignore = c.ignore.defined();
  return AssignInputs<S>{c.priors.data_ptr<S>(),
                         c.priors.size(0),
                         c.priors.size(1),
                         c.gts.data_ptr<S>(),
                         c.counts.data_ptr<int64_t>(),
                         c.gts.size(0),
                         c.gts.size(1),
                         has_ignore,
                         has_ignore ? c.ignore.data_ptr<S>() : nullptr,
                         has_ignore ? c.ignore_counts.data_ptr<int64_t>() : nullptr,
                         has_ignore ? c.ignore.size(1) : 0,
                         c.iou};
}

// Raises a ValueError for the first fault of `faults` (AssignFault bits), naming the argument.
inline void raise_assign_faults(int faults, const CheckedInputs& c, const char* prior_name) {
  if (faults == 0) return;
  const char* math = kernel_float_name(c.priors.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  auto overflow = [&](const char* name) {
    return std::string(name) + " holds a box whose area overflows " + math + " (the type its IoUs are computed in)";
  };
  TORCH_CHECK_VALUE(!(faults & kGtCountOutOfRange), "num_gt must count rows of gt_boxes: each in [0, ", c.gts.size(1),
                    "]");
  TORCH_CHECK_VALUE(!(faults & kGtNonFinite), "gt_boxes holds a non-finite coordinate in a row that num_gt counts");
  TORCH_CHECK_VALUE(!(faults & kGtAreaOverflow), overflow("gt_boxes"), " in a row that num_gt counts");
  TORCH_CHECK_VALUE(!(faults & kPriorNonFinite), prior_name, " holds a non-finite coordinate");
  TORCH_CHECK_VALUE(!(faults & kPriorAreaOverflow), overflow(prior_name));
  TORCH_CHECK_VALUE(!(faults & kIgnoreCountOutOfRange), "num_ignore must count rows of ignore_boxes: each in [0, ",
                    c.ignore.defined() ? c.ignore.size(1) : 0, "]");
  // The kernels read the ignore boxes in the anchors' dtype: a coordinate finite in a wider one may not be.
  TORCH_CHECK_VALUE(!(faults & kIgnoreNonFinite), "ignore_boxes holds a coordinate that is not finite in the anchors' ",
                    kernel_float_name(c.priors.scalar_type()), " in a row that num_ignore counts");
  TORCH_CHECK_VALUE(!(faults & kIgnoreAreaOverflow), overflow("ignore_boxes"), " in a row that num_ignore counts");
}

enum class LowQuality : int { kNone = 0, kTorchvision = 1, kMmdet = 2 };

inline LowQuality parse_low_quality(c10::string_view mode) {
  if (mode == "none") return LowQuality::kNone;
  if (mode == "torchvision") return LowQuality::kTorchvision;
  if (mode == "mmdet") return LowQuality::kMmdet;
  TORCH_CHECK_VALUE(false, "low_quality must be one of none, torchvision, mmdet; got '", mode, "'");
}

// How many ignore boxes of each image take effect. mmdetection puts every anchor of an image without GT in the
// background before it looks at ignore regions (max overlap 0, nothing ignored); in that mode such an image's
// ignore boxes count for nothing. torchvision and "none" ignore them in every image.
inline at::Tensor active_ignore_counts(const at::Tensor& num_ignore, const at::Tensor& num_gt, LowQuality lq) {
  const at::Tensor counts = num_ignore.to(at::kLong);
  if (lq != LowQuality::kMmdet) return counts.contiguous();
  return counts.masked_fill(num_gt.eq(0), 0).contiguous();
}

inline BoxCoding parse_box_coding(c10::string_view coding) {
  if (coding == "distance") return BoxCoding::kDistance;
  if (coding == "delta") return BoxCoding::kDelta;
  TORCH_CHECK_VALUE(false, "box_coding must be distance or delta; got '", coding, "'");
}

// The kernels index GT rows by `matched` and class rows by those GTs' labels:
// every positive entry must name a GT row, and every named GT a class in
// [0, C). One host read for both.
inline void check_matched_indices(const at::Tensor& matched, const at::Tensor& gt_labels, int64_t gmax,
                                  int64_t classes) {
  if (matched.numel() == 0) return;
  const at::Tensor positive = matched.ge(0);
  at::Tensor bad_label = at::zeros({}, matched.options().dtype(at::kBool));
  if (gmax > 0) {
    const at::Tensor labels = gt_labels.to(at::kLong).gather(1, matched.clamp(0, gmax - 1));
    bad_label = positive.logical_and(labels.lt(0).logical_or(labels.ge(classes))).any();
  }
  const at::Tensor flags = at::stack({matched.max().lt(gmax), bad_label.logical_not()}).cpu();
  TORCH_CHECK_VALUE(flags[0].item<bool>(), "matched holds a GT index >= ", gmax,
                    " (the number of GT rows in gt_boxes); use a negative value for background");
  TORCH_CHECK_VALUE(flags[1].item<bool>(), "gt_labels must be in [0, ", classes,
                    ") (the classes of cls_logits) for every GT that matched refers to");
}

inline void check_mutual_targets(const at::Tensor& matched, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                                 const at::Tensor& box_pred, const at::Tensor& cls_logits, const at::Tensor& priors,
                                 const std::optional<at::Tensor>& scale, BoxCoding coding, double gamma_cls,
                                 double gamma_loc) {
  // The targets raise q and p to these powers: a negative one makes q = 0 infinite, NaN makes every target NaN.
  TORCH_CHECK_VALUE(gamma_cls >= 0.0 && gamma_cls < INFINITY, "gamma_cls must be a finite number >= 0, got ",
                    gamma_cls);
  TORCH_CHECK_VALUE(gamma_loc >= 0.0 && gamma_loc < INFINITY, "gamma_loc must be a finite number >= 0, got ",
                    gamma_loc);
  TORCH_CHECK_VALUE(matched.dim() == 2 && matched.scalar_type() == at::kLong, "matched must be int64 [B, P]");
  const int64_t images = matched.size(0), n = matched.size(1);
  TORCH_CHECK_VALUE(gt_boxes.dim() == 3 && gt_boxes.size(0) == images && gt_boxes.size(2) == 4,
                    "gt_boxes must have shape [B, G, 4], got ", gt_boxes.sizes());
  TORCH_CHECK_VALUE(gt_labels.dim() == 2 && gt_labels.size(0) == images && gt_labels.size(1) == gt_boxes.size(1),
                    "gt_labels must have shape [B, G], got ", gt_labels.sizes());
  TORCH_CHECK_VALUE(box_pred.dim() == 3 && box_pred.size(0) == images && box_pred.size(1) == n && box_pred.size(2) == 4,
                    "box_pred must have shape [B, P, 4], got ", box_pred.sizes());
  TORCH_CHECK_VALUE(cls_logits.dim() == 3 && cls_logits.size(0) == images && cls_logits.size(1) == n,
                    "cls_logits must have shape [B, P, C], got ", cls_logits.sizes());
  TORCH_CHECK_VALUE(priors.dim() == 2 && priors.size(0) == n && priors.size(1) == (coding == BoxCoding::kDelta ? 4 : 2),
                    "priors must be points [P, 2] for distance coding or anchors [P, 4] for delta coding, got ",
                    priors.sizes());
  TORCH_CHECK_VALUE(!scale.has_value() || (scale->dim() == 1 && scale->size(0) == n), "scale must have shape [P]");
  for (const at::Tensor* t : {&gt_boxes, &cls_logits, &priors}) {
    TORCH_CHECK_TYPE(t->scalar_type() == box_pred.scalar_type(),
                     "gt_boxes, cls_logits and priors must have the dtype of box_pred");
  }
  TORCH_CHECK_TYPE(at::isIntegralType(gt_labels.scalar_type(), false), "gt_labels must be an integer tensor, got ",
                   gt_labels.scalar_type());
  for (auto [t, name] : {std::pair{&matched, "matched"},
                         {&gt_boxes, "gt_boxes"},
                         {&gt_labels, "gt_labels"},
                         {&cls_logits, "cls_logits"},
                         {&priors, "priors"}}) {
    TORCH_CHECK_VALUE(t->device() == box_pred.device(), name, " must be on the device of box_pred (", box_pred.device(),
                      "), got ", t->device());
  }
  check_matched_indices(matched, gt_labels, gt_boxes.size(1), cls_logits.size(2));
}

// The pass's pointers for tensors already made contiguous by the caller.
template <typename S>
MutualTargetArgs<S> mutual_target_args(const at::Tensor& matched, const at::Tensor& gt_boxes, const at::Tensor& labels,
                                       const at::Tensor& pred, const at::Tensor& logits, const at::Tensor& priors,
                                       const at::Tensor& scale, BoxCoding coding, double gamma_cls, double gamma_loc,
                                       at::Tensor& decoded, at::Tensor& iou_target, at::Tensor& cls_target,
                                       at::Tensor& raw_weight) {
  return MutualTargetArgs<S>{matched.data_ptr<int64_t>(),
                             gt_boxes.data_ptr<S>(),
                             labels.data_ptr<int64_t>(),
                             pred.data_ptr<S>(),
                             logits.data_ptr<S>(),
                             priors.data_ptr<S>(),
                             scale.defined() ? scale.data_ptr<S>() : nullptr,
                             matched.size(1),
                             gt_boxes.size(1),
                             logits.size(2),
                             coding,
                             gamma_cls,
                             gamma_loc,
                             decoded.data_ptr<S>(),
                             iou_target.data_ptr<S>(),
                             cls_target.data_ptr<S>(),
                             raw_weight.data_ptr<S>()};
}

// Normalises box-loss weights over the positives of the batch so that they
// average 1 (docs/method.md, section 1); all zeros when there is no positive. Device-side,
// no synchronisation.
inline at::Tensor normalise_over_positives(const at::Tensor& raw, const at::Tensor& positive) {
  const at::Tensor count = positive.sum().to(raw.scalar_type());
  const at::Tensor total = raw.sum();
  return at::where(total > 0, raw * count / total, at::zeros_like(raw));
}

}  // namespace mutualops
