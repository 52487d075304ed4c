// Schema of task-aligned assignment (docs/method.md, section 2.5), the rule of
// TOOD and Ultralytics YOLO. Kernels live in cpu/ and cuda/. Nothing of size B x G x A is allocated: extra memory is
// O(B * (A + G * topk)) besides the outputs.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // pd_scores [B, A, C] probabilities, pd_bboxes [B, A, 4] xyxy, anc_points
  // [A, 2], gt_labels [B, G] (or [B, G, 1]), gt_bboxes [B, G, 4], mask_gt
  // [B, G] (or [B, G, 1]; nonzero marks a real GT). min_side is Ultralytics'
  // stride_val. Returns (target_labels [B, A], target_bboxes [B, A, 4],
  // target_scores [B, A, C], or [B, A, 0] without with_scores, fg_mask [B, A],
  // target_gt_idx [B, A], alignment [B, A]: the normalised alignment of each
  // positive, 0 elsewhere).
  m.def(
      "assign_task_aligned(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, int topk, int topk2, int num_classes, float alpha, float beta, float eps, "
      "float min_side, bool with_scores) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same for oriented boxes, Ultralytics' RotatedTaskAlignedAssigner: pd_bboxes [B, A, 5] and gt_bboxes
  // [B, G, 5] xywhr (docs/method.md, section 2.7), candidates inside the GT's rectangle (edges included) with
  // sides under min_side widened to it, probiou in place of CIoU; target_bboxes [B, A, 5].
  m.def(
      "assign_task_aligned_rotated(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, int topk, int topk2, int num_classes, float alpha, float beta, float eps, "
      "float min_side, bool with_scores) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// Not differentiable (indices, selections, ranks, targets): autograd hands the call straight to the kernels,
// so that no output claims requires_grad (torch's fallback would set it and then backpropagate nothing).
TORCH_LIBRARY_IMPL(mutualops, Autograd, m) {
  m.impl("assign_task_aligned", torch::CppFunction::makeFallthrough());
  m.impl("assign_task_aligned_rotated", torch::CppFunction::makeFallthrough());
}
