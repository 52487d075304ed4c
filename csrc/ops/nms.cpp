// Schemas of the NMS family (SPEC 2.2). Kernels live in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // Greedy NMS within each idxs value. Returns kept indices ordered by score
  // descending, ties to the lower index. Boxes or scores that are not finite
  // are never kept and suppress nothing.
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
