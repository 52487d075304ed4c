// Schemas of the label-assignment family (docs/method.md, section 2.3). Kernels live in cpu/ and cuda/.
// Ground truth comes padded: gt_boxes [B, G, 4] with num_gt [B] real boxes per
// image. No op allocates anything of size P x G.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // FCOS rule: points [P, 2], strides [P], regress_ranges [P, 2] -> matched
  // GT index [B, P], -1 for background. center_radius <= 0 turns centre
  // sampling off.
  m.def(
      "assign_fcos(Tensor points, Tensor gt_boxes, Tensor num_gt, Tensor strides, Tensor regress_ranges, "
      "float center_radius, bool inclusive, bool torchvision_compat) -> Tensor");
  // Max-IoU rule: anchors [P, 4] -> (matched [B, P]: GT index, -1 negative,
  // -2 ignored; max IoU [B, P]). low_quality: none, torchvision, mmdet.
  // Anchors whose IoF with an ignore box exceeds ignore_iof are ignored.
  m.def(
      "assign_max_iou(Tensor anchors, Tensor gt_boxes, Tensor num_gt, Tensor? ignore_boxes, Tensor? num_ignore, "
      "float pos_iou, float neg_iou, str low_quality, float min_pos_iou, bool gt_max_assign_all, "
      "float ignore_iof) -> (Tensor, Tensor)");
  // Mutual targets of an assignment: box_pred [B, P, 4] decoded against priors
  // (points [P, 2] times scale [P] for "distance", anchors [P, 4] for "delta"),
  // cls_logits [B, P, C], gt_labels [B, G]. Returns (decoded [B, P, 4],
  // iou_target [B, P], cls_target [B, P, C], box_weight [B, P]).
  m.def(
      "mutual_targets(Tensor matched, Tensor gt_boxes, Tensor gt_labels, Tensor box_pred, Tensor cls_logits, "
      "Tensor priors, Tensor? scale, str box_coding, float gamma_cls, float gamma_loc) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

// Not differentiable (indices, selections, ranks, targets): autograd hands the call straight to the kernels,
// so that no output claims requires_grad (torch's fallback would set it and then backpropagate nothing).
TORCH_LIBRARY_IMPL(mutualops, Autograd, m) {
  m.impl("assign_fcos", torch::CppFunction::makeFallthrough());
  m.impl("assign_max_iou", torch::CppFunction::makeFallthrough());
  m.impl("mutual_targets", torch::CppFunction::makeFallthrough());
}
