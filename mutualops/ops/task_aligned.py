"""Task-aligned assignment (TOOD), the rule Ultralytics YOLO trains with, as one
fused op with Ultralytics' arguments and results (docs/method.md, section 2.5).

Each real GT ranks every anchor by its alignment t = score^alpha * CIoU^beta
(score: the predicted probability of the GT's class; CIoU with the predicted
box, clamped at 0; both 0 for anchors outside the GT's candidate region) and
keeps its top-k anchors that lie in the region. An anchor kept by several GTs
goes to the GT of highest CIoU. Positives get the GT's box and the soft class
target t * max_CIoU_g / (max_t_g + eps). Extra memory is O(B * (A + G * topk))
besides the outputs, where Ultralytics holds several [B, G, A] planes.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .._validate import as_float, as_int, check_tensor

DEFAULT_STRIDES = (8, 16, 32)


class TaskAlignedTargets(NamedTuple):
    target_labels: torch.Tensor  # [B, A] int64: the assigned GT's class (background: GT 0's, num_classes without GT)
    target_bboxes: torch.Tensor  # [B, A, 4] (rotated: 5) the assigned GT's box (background: GT 0's), gt_bboxes' dtype
    target_scores: torch.Tensor  # [B, A, C] soft one-hot targets; [B, A] alignment with dense_scores=False
    fg_mask: torch.Tensor  # [B, A] bool
    target_gt_idx: torch.Tensor  # [B, A] int64, 0 for background


def _min_side(stride):
    """Ultralytics' stride_val: the second stride, else the first."""
    if stride is None:
        stride = DEFAULT_STRIDES
    if hasattr(stride, "tolist"):  # a tensor or NumPy array of strides
        stride = stride.tolist()
    if isinstance(stride, numbers.Real):
        stride = [stride]
    if not isinstance(stride, (list, tuple)) or not stride:
        raise TypeError(f"stride must be a non-empty list of numbers, got {stride!r}")
    return as_float(stride[1] if len(stride) > 1 else stride[0], "stride")


def assign_task_aligned(pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                        gt_bboxes: Tensor, mask_gt: Tensor, *, topk: int = 13, num_classes: int = 80,
                        alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9,
                        stride: Sequence[float] | Tensor | float | None = None, topk2: int | None = None,
                        dense_scores: bool = True) -> TaskAlignedTargets:
    """Task-aligned assignment with the arguments, defaults and results of Ultralytics'
    ``TaskAlignedAssigner(topk, num_classes, alpha, beta, stride, eps, topk2)(pd_scores, pd_bboxes, anc_points,
    gt_labels, gt_bboxes, mask_gt)``. Scores and boxes may differ in dtype (autocast); the math runs in
    float32, float64 if an input is.

    Args:
        pd_scores (Tensor[B, A, C]): predicted class probabilities in [0, 1] (apply sigmoid to logits first).
        pd_bboxes (Tensor[B, A, 4]): predicted xyxy boxes.
        anc_points (Tensor[A, 2]): anchor points, in the boxes' units.
        gt_labels (Tensor[B, G, 1] or Tensor[B, G]): class indices, float or integer.
        gt_bboxes (Tensor[B, G, 4]): xyxy GT boxes.
        mask_gt (Tensor[B, G, 1] or Tensor[B, G]): nonzero for real GT rows; padding rows are never read.
        topk (int): candidates each GT keeps, in [1, A].
        num_classes (int): C.
        alpha (float): the score's exponent in the alignment ``score^alpha * CIoU^beta``.
        beta (float): the CIoU's exponent.
        eps (float): > 0, keeps the target normalisation finite.
        stride (list of float, Tensor or float, optional): the model's strides (default 8, 16, 32); GT sides
            under the second (else the first) are widened to it when collecting candidates.
        topk2 (int, optional): a second top-k over each GT's positives (Ultralytics' ``topk2 or topk``).
        dense_scores (bool): False returns the [B, A] alignment as target_scores, sparing the [B, A, C] tensor.

    Returns:
        TaskAlignedTargets: target_labels [B, A] int64, target_bboxes [B, A, 4] (gt_bboxes' dtype),
        target_scores [B, A, C] (or [B, A]), fg_mask [B, A] bool, target_gt_idx [B, A] int64.

    Raises:
        TypeError: an argument of the wrong type (a tensor that is not floating point, a non-integer topk...).
        ValueError: shapes or devices that do not match, scores outside [0, 1], labels that are not class
            indices below num_classes on real rows, non-finite boxes or anchors, or a parameter out of range.
    """
    return _assign(torch.ops.mutualops.assign_task_aligned, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                   mask_gt, topk, num_classes, alpha, beta, eps, stride, topk2, dense_scores)


def assign_task_aligned_rotated(pd_scores: Tensor, pd_bboxes: Tensor, anc_points: Tensor, gt_labels: Tensor,
                                gt_bboxes: Tensor, mask_gt: Tensor, *, topk: int = 13, num_classes: int = 80,
                                alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9,
                                stride: Sequence[float] | Tensor | float | None = None, topk2: int | None = None,
                                dense_scores: bool = True) -> TaskAlignedTargets:
    """Task-aligned assignment of oriented boxes, with the arguments, defaults and results of Ultralytics'
    ``RotatedTaskAlignedAssigner`` (which YOLO-OBB trains with topk=10, alpha=0.5, beta=6.0).

    As :func:`assign_task_aligned`, with two differences of rule: an anchor is a candidate of a GT when it lies
    in the GT's rectangle, edges included, each side under the stride widened to it; and the overlap is probiou
    (eps 1e-7) in place of CIoU (docs/method.md, section 2.7).

    Args:
        pd_scores (Tensor[B, A, C]): predicted class probabilities in [0, 1].
        pd_bboxes (Tensor[B, A, 5]): predicted xywhr boxes (centre, size, angle in radians).
        anc_points (Tensor[A, 2]): anchor points.
        gt_labels (Tensor[B, G, 1] or Tensor[B, G]): class indices, float or integer.
        gt_bboxes (Tensor[B, G, 5]): xywhr GT boxes.
        mask_gt (Tensor[B, G, 1] or Tensor[B, G]): nonzero for real GT rows.
        topk, num_classes, alpha, beta, eps, stride, topk2, dense_scores: as in assign_task_aligned.

    Returns:
        TaskAlignedTargets: as assign_task_aligned's, with target_bboxes [B, A, 5].

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: as assign_task_aligned.
    """
    return _assign(torch.ops.mutualops.assign_task_aligned_rotated, pd_scores, pd_bboxes, anc_points, gt_labels,
                   gt_bboxes, mask_gt, topk, num_classes, alpha, beta, eps, stride, topk2, dense_scores)


def _assign(op, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, num_classes, alpha, beta, eps,
            stride, topk2, dense_scores):
    for name, t in (("pd_scores", pd_scores), ("pd_bboxes", pd_bboxes), ("anc_points", anc_points),
                    ("gt_labels", gt_labels), ("gt_bboxes", gt_bboxes), ("mask_gt", mask_gt)):
        check_tensor(t, name)
    topk = as_int(topk, "topk")
    topk2 = as_int(topk2, "topk2") if topk2 else topk  # Ultralytics' `topk2 or topk`
    labels, bboxes, scores, fg, gt_idx, alignment = op(
        pd_scores.detach(), pd_bboxes.detach(), anc_points.detach(), gt_labels.detach(), gt_bboxes.detach(),
        mask_gt.detach(), topk, topk2, as_int(num_classes, "num_classes"), as_float(alpha, "alpha"),
        as_float(beta, "beta"), as_float(eps, "eps"), _min_side(stride), bool(dense_scores))
    return TaskAlignedTargets(labels, bboxes, scores if dense_scores else alignment, fg, gt_idx)


def _math_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _fake(coords):
    def fake(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, topk2, num_classes, alpha, beta,
             eps, min_side, with_scores):
        b, n = pd_scores.shape[:2]
        math = _math_dtype(pd_scores, pd_bboxes, anc_points, gt_bboxes)
        return (pd_scores.new_empty((b, n), dtype=torch.long),
                pd_scores.new_empty((b, n, coords), dtype=gt_bboxes.dtype),
                pd_scores.new_empty((b, n, num_classes if with_scores else 0), dtype=math),
                pd_scores.new_empty((b, n), dtype=torch.bool), pd_scores.new_empty((b, n), dtype=torch.long),
                pd_scores.new_empty((b, n), dtype=math))

    return fake


torch.library.register_fake("mutualops::assign_task_aligned")(_fake(4))
torch.library.register_fake("mutualops::assign_task_aligned_rotated")(_fake(5))
