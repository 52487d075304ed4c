// Schemas of the box-IoU family (docs/method.md, section 2.1). Kernels live in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // [N,4] x [M,4] -> [N,M], or [B,N,4] x [B,M,4] -> [B,N,M].
  m.def("box_iou(Tensor boxes1, Tensor boxes2, str mode=\"iou\") -> Tensor");
  // [N,4] x [N,4] -> [N]; differentiable through box_iou_aligned_backward. eps is added to the union and the
  // enclosing area as torchvision's IoU losses do (0: the plain overlap).
  m.def("box_iou_aligned(Tensor boxes1, Tensor boxes2, str mode=\"iou\", float eps=0.0) -> Tensor");
  m.def(
      "box_iou_aligned_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str mode, float eps=0.0) "
      "-> (Tensor, Tensor)");
}
