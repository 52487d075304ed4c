// Schemas of the NMS family (docs/method.md, section 2.2). Kernels live in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // Greedy NMS of one class (torchvision.ops.nms): batched_nms with one idxs value, without a key to sort by.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // Greedy NMS within each idxs value. Returns kept indices ordered by score
  // descending, ties to the lower index. Boxes or scores that are not finite
  // are never kept and suppress nothing.
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");

  // Fused post-processing (docs/method.md, section 2.2): rescoring s = cls^(1-alpha) * iou^alpha,
  // s > score_threshold, top-k per image (and per level when level_index is
  // given, with values in [0, num_levels)), class-aware greedy NMS per image,
  // at most max_detections per image. pre_nms_top_k < 0 means no limit. With
  // logits, scores and iou are logits and go through a sigmoid in the same pass.
  // Outputs are padded per image: boxes [B,K,4], scores [B,K], labels [B,K]
  // (-1 padding), indices [B,K] (source index, -1 padding) and counts [B];
  // K = min(max_detections, candidates per image: N*C dense, M flat).
  //
  // Dense head outputs: boxes [B,N,4], scores [B,N,C] class probabilities,
  // iou [B,N], level_index [N]; indices are point indices n.
  m.def(
      "rescored_nms_dense(Tensor boxes, Tensor scores, Tensor? iou, Tensor? level_index, int num_levels, float alpha, "
      "float score_threshold, float iou_threshold, int pre_nms_top_k, int max_detections, bool class_agnostic, "
      "bool logits=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Flat candidates: boxes [M,4], scores [M], labels [M], iou [M], batch_index
  // [M] in [0, num_images), level_index [M]; indices are element indices.
  m.def(
      "rescored_nms_flat(Tensor boxes, Tensor scores, Tensor labels, Tensor? iou, Tensor? batch_index, "
      "Tensor? level_index, int num_levels, int num_images, float alpha, float score_threshold, float iou_threshold, "
      "int pre_nms_top_k, int max_detections, bool class_agnostic, bool logits=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// Not differentiable (indices, selections, ranks, targets): autograd hands the call straight to the kernels,
// so that no output claims requires_grad (torch's fallback would set it and then backpropagate nothing).
TORCH_LIBRARY_IMPL(mutualops, Autograd, m) {
  m.impl("nms", torch::CppFunction::makeFallthrough());
  m.impl("batched_nms", torch::CppFunction::makeFallthrough());
  m.impl("rescored_nms_dense", torch::CppFunction::makeFallthrough());
  m.impl("rescored_nms_flat", torch::CppFunction::makeFallthrough());
}
