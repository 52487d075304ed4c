"""Oriented boxes (docs/method.md, section 2.7): exact and probabilistic IoU, greedy and matrix NMS.

Boxes are xywhr [..., 5]: centre x, centre y, width, height and an angle in radians that turns the width axis
from +x towards +y, as Ultralytics' OBB boxes turn (clockwise on screen, where y points down). mmcv's default
(clockwise=True) is the same; mmcv with clockwise=False and detectron2's (degrees, counter-clockwise) negate
the angle: ``angle = -torch.deg2rad(detectron2_angle)``. A box with w <= 0 or h <= 0 has area 0, a zero union
gives 0, and a box with a non-finite value gives NaN (the NMS ops never keep it and it suppresses nothing).
The rotated ops have no ONNX translation yet.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _math
from .._validate import as_float, check_choice, check_float, check_index, check_same, kept_size, promote, \
    unit_interval

MODES = ("iou", "probiou", "probiou_ciou")


def _check_rotated(x, name, ranks):
    check_float(x, name)
    if x.dim() not in ranks or x.shape[-1] != 5:
        shapes = " or ".join("[" + ", ".join(["B", "N", "5"][3 - r:]) + "]" for r in ranks)
        raise ValueError(f"{name} must have shape {shapes} (cx, cy, w, h, angle), got {list(x.shape)}")


def _check_eps(eps):
    eps = as_float(eps, "eps")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be a number in [0, 1), got {eps}")
    return eps


def _check_floor(floor, mode):
    floor = as_float(floor, "floor")
    if not 0.0 <= floor < math.inf:
        raise ValueError(f"floor must be a finite number >= 0, got {floor}")
    if mode == "iou" and floor != 0.0:
        raise ValueError(f"floor applies to the probiou modes, not to mode 'iou'; got floor {floor}")
    return floor


def box_iou_rotated(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", *, eps: float = 1e-7) -> Tensor:
    """Pairwise overlap of oriented boxes, alone or in batches. The output is the only N x M allocation;
    float16 and bfloat16 compute in float32. Not differentiable (see box_iou_rotated_aligned).

    Args:
        boxes1 (Tensor[N, 5] or Tensor[B, N, 5]): xywhr boxes, floating point.
        boxes2 (Tensor[M, 5] or Tensor[B, M, 5]): xywhr boxes of the same rank, batch size and device.
        mode (str): ``"iou"``, the exact IoU (the area of the rectangles' intersection polygon over their
            union); ``"probiou"``, Ultralytics' probabilistic IoU (its batch_probiou with boxes1 as obb1);
            ``"probiou_ciou"``, that minus CIoU's aspect term.
        eps (float): probiou's epsilon, > 0.

    Returns:
        Tensor[N, M] or Tensor[B, N, M]: the overlaps, in the two inputs' promoted dtype.

    Raises:
        TypeError: a box tensor that is not floating point, or an eps that is not a number.
        ValueError: an unknown mode, a bad eps, or shapes, batch sizes or devices that do not match.
    """
    check_choice(mode, "mode", MODES)
    eps = _check_eps(eps)
    _check_rotated(boxes1, "boxes1", (2, 3))
    _check_rotated(boxes2, "boxes2", (2, 3))
    if boxes1.dim() != boxes2.dim():
        raise ValueError(f"boxes1 and boxes2 must have the same rank, got {list(boxes1.shape)} and {list(boxes2.shape)}")
    if boxes1.dim() == 3 and boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(f"boxes1 and boxes2 must have the same batch size, got {boxes1.shape[0]} and {boxes2.shape[0]}")
    check_same(boxes1, boxes2, "boxes1", "boxes2", dtype=False)
    return torch.ops.mutualops.box_iou_rotated(*promote(boxes1, boxes2), mode, eps)


def box_iou_rotated_aligned(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", *, eps: float = 1e-7,
                            floor: float = 0.0) -> Tensor:
    """Overlap of matching rows of oriented boxes. The probiou modes are differentiable, with Ultralytics'
    autograd gradient; the exact IoU is not (backpropagating through it raises an error).

    Args:
        boxes1 (Tensor[..., 5]): xywhr boxes, floating point.
        boxes2 (Tensor[..., 5]): xywhr boxes of the same shape and device.
        mode (str): ``"iou"``, ``"probiou"`` or ``"probiou_ciou"`` (see box_iou_rotated).
        eps (float): probiou's epsilon, > 0.
        floor (float): added to both Gaussian variances (w^2/12 and h^2/12), as Ultralytics' OBB box loss adds
            0.01 to bound the gradients of tiny boxes; probiou modes only.

    Returns:
        Tensor[...]: the overlaps, in the two inputs' promoted dtype.

    Raises:
        TypeError: a box tensor that is not floating point, or an eps or floor that is not a number.
        ValueError: an unknown mode, a bad eps or floor, a floor with the exact IoU, or shapes or devices that
            do not match.
    """
    check_choice(mode, "mode", MODES)
    eps = _check_eps(eps)
    floor = _check_floor(floor, mode)
    check_float(boxes1, "boxes1")
    check_float(boxes2, "boxes2")
    if boxes1.dim() == 0 or boxes1.shape[-1] != 5:
        raise ValueError(f"boxes1 must have shape [..., 5] (cx, cy, w, h, angle), got {list(boxes1.shape)}")
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape, got {list(boxes1.shape)} and {list(boxes2.shape)}")
    check_same(boxes1, boxes2, "boxes1", "boxes2", dtype=False)
    boxes1, boxes2 = promote(boxes1, boxes2)
    out = torch.ops.mutualops.box_iou_rotated_aligned(boxes1.reshape(-1, 5), boxes2.reshape(-1, 5), mode, eps, floor)
    return out.reshape(boxes1.shape[:-1])


def _check_nms(boxes, scores, iou_threshold):
    _check_rotated(boxes, "boxes", (2,))
    check_float(scores, "scores")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {list(scores.shape)}")
    check_same(boxes, scores, "boxes", "scores", dtype=False)
    if boxes.device.type == "meta":
        raise ValueError("boxes is a meta tensor: the number of kept boxes depends on values it does not hold")
    return unit_interval(iou_threshold, "iou_threshold")


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over the exact rotated IoU, with the semantics of detectron2's and mmcv's nms_rotated.

    Args:
        boxes (Tensor[N, 5]): xywhr boxes, floating point.
        scores (Tensor[N]): their scores, floating point, same device.
        iou_threshold (float): in [0, 1]; a kept box removes later boxes with IoU ``>`` it.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties to the lower index). Boxes or
        scores that are not finite are never kept and suppress nothing.

    Raises:
        TypeError: a tensor that is not floating point.
        ValueError: shapes or devices that do not match, or a threshold outside [0, 1].
    """
    iou_threshold = _check_nms(boxes, scores, iou_threshold)
    return torch.ops.mutualops.nms_rotated(*promote(boxes, scores), iou_threshold)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """nms_rotated within each group.

    Args:
        boxes (Tensor[N, 5]): xywhr boxes, floating point.
        scores (Tensor[N]): their scores, floating point, same device.
        idxs (Tensor[N]): integer group of each box (class, image, ...); boxes suppress only within a group.
        iou_threshold (float): in [0, 1].

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties to the lower index).

    Raises:
        TypeError: boxes or scores not floating point, or idxs not integer.
        ValueError: shapes or devices that do not match, or a threshold outside [0, 1].
    """
    iou_threshold = _check_nms(boxes, scores, iou_threshold)
    check_index(idxs, "idxs", scores.shape, boxes.device)
    return torch.ops.mutualops.batched_nms_rotated(*promote(boxes, scores), idxs, iou_threshold)


def fast_nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float, *, eps: float = 1e-7) -> Tensor:
    """Matrix ("fast") NMS over probiou, Ultralytics' rotated NMS (TorchNMS.fast_nms with batch_probiou), in
    memory that grows with N where Ultralytics builds the N x N matrix. A box goes when any box before it in
    score order, kept or not, has probiou ``>`` iou_threshold with it. Ultralytics separates classes by
    offsetting the centres by class * 7680 before the call; so can you.

    Args:
        boxes (Tensor[N, 5]): xywhr boxes, floating point.
        scores (Tensor[N]): their scores, floating point, same device.
        iou_threshold (float): in [0, 1].
        eps (float): probiou's epsilon, > 0.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score; the same keeps as Ultralytics'.

    Raises:
        TypeError: a tensor that is not floating point, or an eps that is not a number.
        ValueError: shapes or devices that do not match, a threshold outside [0, 1] or a bad eps.
    """
    iou_threshold = _check_nms(boxes, scores, iou_threshold)
    return torch.ops.mutualops.fast_nms_rotated(*promote(boxes, scores), iou_threshold, _check_eps(eps))


def _check_raw(boxes1, boxes2, ranks, mode, eps):
    """What the kernels check of a raw call, for the fake kernels: meta tensors and torch.compile's fake ones
    get the same TypeError or ValueError as real ones."""
    check_choice(mode, "mode", MODES)
    _check_eps(eps)
    _check_rotated(boxes1, "boxes1", ranks)
    _check_rotated(boxes2, "boxes2", ranks)
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}")
    check_same(boxes1, boxes2, "boxes1", "boxes2", dtype=False)


@torch.library.register_fake("mutualops::box_iou_rotated")
def _box_iou_rotated_fake(boxes1, boxes2, mode="iou", eps=1e-7):
    _check_raw(boxes1, boxes2, (2, 3), mode, eps)
    if boxes1.dim() != boxes2.dim():
        raise ValueError(f"boxes1 and boxes2 must both be [N,5]/[M,5] or both [B,N,5]/[B,M,5], got "
                         f"{list(boxes1.shape)} and {list(boxes2.shape)}")
    if boxes1.dim() == 3 and boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(f"boxes1 and boxes2 must have the same batch size, got {boxes1.shape[0]} and {boxes2.shape[0]}")
    if boxes1.dim() == 2:
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))
    return boxes1.new_empty((boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]))


@torch.library.register_fake("mutualops::box_iou_rotated_aligned")
def _box_iou_rotated_aligned_fake(boxes1, boxes2, mode="iou", eps=1e-7, floor=0.0):
    _check_raw(boxes1, boxes2, (2,), mode, eps)
    _check_floor(floor, mode)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must both be [N,5] with the same N, got {list(boxes1.shape)} and "
                         f"{list(boxes2.shape)}")
    return boxes1.new_empty((boxes1.shape[0],))


def _kept_fake(boxes, scores, iou_threshold, *rest):
    _check_rotated(boxes, "boxes", (2,))
    check_float(scores, "scores")
    if scores.shape != boxes.shape[:1] or scores.dtype != boxes.dtype:
        raise (ValueError if scores.shape != boxes.shape[:1] else TypeError)(
            f"scores must be [{boxes.shape[0]}] of the dtype of boxes, got {list(scores.shape)} {scores.dtype}")
    unit_interval(iou_threshold, "iou_threshold")
    return scores.new_empty((kept_size(boxes, scores),), dtype=torch.long)


@torch.library.register_fake("mutualops::batched_nms_rotated")
def _batched_kept_fake(boxes, scores, idxs, iou_threshold):
    check_index(idxs, "idxs", scores.shape, boxes.device)
    return _kept_fake(boxes, scores, iou_threshold)


@torch.library.register_fake("mutualops::fast_nms_rotated")
def _fast_kept_fake(boxes, scores, iou_threshold, eps=1e-7):
    _check_eps(eps)
    return _kept_fake(boxes, scores, iou_threshold)


torch.library.register_fake("mutualops::nms_rotated", _kept_fake)


def _save_aligned(ctx, inputs, output):
    boxes1, boxes2, *given = inputs  # the arguments after the boxes, defaults filled in
    mode, eps, floor = (*given, *("iou", 1e-7, 0.0)[len(given):])
    ctx.save_for_backward(boxes1, boxes2)
    ctx.mode, ctx.eps, ctx.floor = mode, eps, floor


def _aligned_backward(ctx, grad):
    if ctx.mode == "iou":
        raise RuntimeError("box_iou_rotated_aligned: the exact rotated IoU has no gradient; "
                           "train with mode='probiou' (or 'probiou_ciou')")
    # The gradient of the same formula in torch ops (_math.probiou, which the kernels follow operation by
    # operation): the loss sees Ultralytics' own gradient, clamps included, in O(N) memory.

    boxes1, boxes2 = ctx.saved_tensors
    compute = boxes1.dtype if boxes1.dtype in (torch.float32, torch.float64) else torch.float32
    _, pullback = torch.func.vjp(lambda a, b: _math.probiou(a, b, ctx.mode, ctx.eps, ctx.floor),
                                 boxes1.to(compute), boxes2.to(compute))
    grad1, grad2 = pullback(grad.to(compute))
    return grad1.to(boxes1.dtype), grad2.to(boxes2.dtype), None, None, None


torch.library.register_autograd("mutualops::box_iou_rotated_aligned", _aligned_backward, setup_context=_save_aligned)
