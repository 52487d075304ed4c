"""ctest: the CMake-built library registers working ops when torch loads it."""

import sys

import torch

torch.ops.load_library(sys.argv[1])
boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
iou = torch.ops.mutualops.box_iou(boxes, boxes, "iou")
expected = torch.tensor([[1.0, 1 / 7], [1 / 7, 1.0]])
assert torch.allclose(iou, expected), iou
print("ops_load: 1 passed, 0 failed")
