"""The NMS family (SPEC 2.2): torchvision drop-ins and rescored NMS.

Kept indices come ordered by score descending, ties to the lower index (on
exact score ties torchvision follows torch.sort's unstable order instead).
Boxes or scores that are not finite are never kept and suppress nothing.
IoU is compared with `> iou_threshold`, as in torchvision.
"""

import torch

from ._validate import check_boxes, check_float, check_same, check_tensor


def _check_nms(boxes, scores, iou_threshold):
    check_boxes(boxes, "boxes")
    check_float(scores, "scores")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {list(scores.shape)}")
    check_same(boxes, scores, "boxes", "scores")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")


def nms(boxes, scores, iou_threshold):
    """torchvision.ops.nms: indices of the kept boxes, by decreasing score."""
    _check_nms(boxes, scores, iou_threshold)
    idxs = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    return torch.ops.mutualops.batched_nms(boxes, scores, idxs, float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms: NMS within each value of `idxs` (class, image...)."""
    _check_nms(boxes, scores, iou_threshold)
    check_tensor(idxs, "idxs")
    if idxs.is_floating_point() or idxs.dtype == torch.bool:
        raise TypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape [{boxes.shape[0]}], got {list(idxs.shape)}")
    check_same(boxes, idxs, "boxes", "idxs", dtype=False)
    return torch.ops.mutualops.batched_nms(boxes, scores, idxs, float(iou_threshold))


@torch.library.register_fake("mutualops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    size = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((size,), dtype=torch.long)
