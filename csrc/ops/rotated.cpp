// Schemas of the oriented-box family (docs/method.md, section 2.7). Boxes are xywhr [..., 5]. Kernels live in
// cpu/rotated_kernel.cpp and cuda/rotated_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // [N,5] x [M,5] -> [N,M], or [B,N,5] x [B,M,5] -> [B,N,M]; mode iou (exact polygon overlap), probiou or
  // probiou_ciou (Ultralytics' Gaussian overlap, eps its epsilon).
  m.def("box_iou_rotated(Tensor boxes1, Tensor boxes2, str mode=\"iou\", float eps=1e-7) -> Tensor");
  // [N,5] x [N,5] -> [N]; the probiou modes are differentiable (Python autograd, mutualops/ops/rotated.py). floor is
  // added to both Gaussian variances, as Ultralytics' OBB loss does (its probiou's floor).
  m.def(
      "box_iou_rotated_aligned(Tensor boxes1, Tensor boxes2, str mode=\"iou\", float eps=1e-7, float floor=0.0) "
      "-> Tensor");
  // Greedy NMS over the exact IoU (detectron2's and mmcv's nms_rotated): kept indices by score descending, ties
  // to the lower index; boxes or scores that are not finite are never kept and suppress nothing.
  m.def("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms_rotated(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Matrix ("fast") NMS over probiou (Ultralytics' TorchNMS.fast_nms with batch_probiou): a box goes when any
  // box before it in score order, kept or not, overlaps it above the threshold. Same order and finiteness rules.
  m.def("fast_nms_rotated(Tensor boxes, Tensor scores, float iou_threshold, float eps=1e-7) -> Tensor");
}

// Only the aligned overlap has a gradient (registered from Python); the rest fall through autograd, so that
// no output claims requires_grad.
TORCH_LIBRARY_IMPL(mutualops, Autograd, m) {
  m.impl("box_iou_rotated", torch::CppFunction::makeFallthrough());
  m.impl("nms_rotated", torch::CppFunction::makeFallthrough());
  m.impl("batched_nms_rotated", torch::CppFunction::makeFallthrough());
  m.impl("fast_nms_rotated", torch::CppFunction::makeFallthrough());
}
