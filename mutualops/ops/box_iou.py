"""The box-IoU family (docs/method.md, section 2.1): pairwise, batched and aligned overlap, and IoU losses.

A zero union (two zero-area boxes) gives 0 where torchvision gives NaN; a zero
enclosing box makes GIoU equal IoU. Boxes are xyxy and a box with x2 < x1 or
y2 < y1 has area 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _math
from .._math import reduce_loss
from .._validate import as_float, check_boxes, check_choice, check_float, check_same, promote

MODES = ("iou", "giou", "diou", "ciou", "iof")
LOSS_MODES = ("iou", "giou", "diou", "ciou")
REDUCTIONS = ("none", "mean", "sum")


def box_iou(boxes1: Tensor, boxes2: Tensor, mode: str = "iou") -> Tensor:
    """Pairwise overlap of two sets of boxes, alone or in batches.

    The output is the only N x M allocation; float16 and bfloat16 accumulate in float32. A zero union gives 0
    and a box with a non-finite coordinate gives NaN. Differentiable (the backward expands the pairs).

    Args:
        boxes1 (Tensor[N, 4] or Tensor[B, N, 4]): xyxy boxes, floating point (integer boxes are taken as
            float32, as torchvision takes them).
        boxes2 (Tensor[M, 4] or Tensor[B, M, 4]): xyxy boxes of the same rank, batch size and device.
        mode (str): ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"`` or ``"iof"`` (intersection over the area of
            boxes1).

    Returns:
        Tensor[N, M] or Tensor[B, N, M]: the overlap of every pair, in the two inputs' promoted dtype.

    Raises:
        TypeError: a box tensor that is not floating point (or integer).
        ValueError: an unknown mode, or shapes, batch sizes or devices that do not match.
    """
    check_choice(mode, "mode", MODES)
    boxes1, boxes2 = _integer_as_float(boxes1), _integer_as_float(boxes2)
    check_boxes(boxes1, "boxes1", ranks=(2, 3))
    check_boxes(boxes2, "boxes2", ranks=(2, 3))
    if boxes1.dim() != boxes2.dim():
        raise ValueError(f"boxes1 and boxes2 must have the same rank, got {list(boxes1.shape)} and {list(boxes2.shape)}")
    if boxes1.dim() == 3 and boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(f"boxes1 and boxes2 must have the same batch size, got {boxes1.shape[0]} and {boxes2.shape[0]}")
    check_same(boxes1, boxes2, "boxes1", "boxes2", dtype=False)
    return torch.ops.mutualops.box_iou(*promote(boxes1, boxes2), mode)


def _integer_as_float(boxes):
    """Integer boxes as float32, as torchvision's box_iou takes them (exact below 2^24)."""
    integer = isinstance(boxes, torch.Tensor) and not (boxes.is_floating_point() or boxes.is_complex()
                                                       or boxes.dtype == torch.bool)
    return boxes.float() if integer else boxes


def box_iou_aligned(boxes1: Tensor, boxes2: Tensor, mode: str = "iou") -> Tensor:
    """Overlap of matching rows: ``boxes1[i]`` with ``boxes2[i]``. Differentiable, twice.

    Args:
        boxes1 (Tensor[..., 4]): xyxy boxes, floating point.
        boxes2 (Tensor[..., 4]): xyxy boxes of the same shape and device.
        mode (str): ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"`` or ``"iof"``.

    Returns:
        Tensor[...]: the overlaps, in the two inputs' promoted dtype.

    Raises:
        TypeError: a box tensor that is not floating point.
        ValueError: an unknown mode, or shapes or devices that do not match.
    """
    return _aligned(boxes1, boxes2, mode, 0.0)


def _aligned(boxes1, boxes2, mode, eps):
    check_choice(mode, "mode", MODES)
    check_float(boxes1, "boxes1")
    check_float(boxes2, "boxes2")
    if boxes1.dim() == 0 or boxes1.shape[-1] != 4:
        raise ValueError(f"boxes1 must have shape [..., 4], got {list(boxes1.shape)}")
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape, got {list(boxes1.shape)} and {list(boxes2.shape)}")
    check_same(boxes1, boxes2, "boxes1", "boxes2", dtype=False)
    boxes1, boxes2 = promote(boxes1, boxes2)
    out = torch.ops.mutualops.box_iou_aligned(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), mode, eps)
    return out.reshape(boxes1.shape[:-1])


def iou_loss(pred: Tensor, target: Tensor, mode: str = "giou", reduction: str = "mean",
             weight: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """``1 - overlap(pred, target)`` for matching rows, optionally weighted: a drop-in for torchvision's
    generalized, distance and complete box IoU losses (same eps and default).

    Args:
        pred (Tensor[..., 4]): predicted xyxy boxes, floating point.
        target (Tensor[..., 4]): target xyxy boxes of the same shape and device.
        mode (str): ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        reduction (str): ``"none"``, ``"mean"`` (the weighted sum over the number of boxes, so that weights
            averaging 1 keep the scale) or ``"sum"``. An empty input gives 0 with a gradient path.
        weight (Tensor[...], optional): per-box weights of the loss's shape.
        eps (float): added to the union and the enclosing area, and the DIoU/CIoU denominators' eps; 0 gives
            ``1 - box_iou_aligned``.

    Returns:
        Tensor: the loss, of shape ``[...]`` with ``reduction="none"``, a scalar otherwise.

    Raises:
        TypeError: a tensor that is not floating point, or an eps that is not a number.
        ValueError: an unknown mode or reduction, a negative or non-finite eps, or shapes or devices that do not
            match.
    """
    check_choice(mode, "mode", LOSS_MODES)
    check_choice(reduction, "reduction", REDUCTIONS)
    eps = as_float(eps, "eps")
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    loss = 1 - _aligned(pred, target, mode, eps)
    if weight is not None:
        check_float(weight, "weight")
        if weight.shape != loss.shape:
            raise ValueError(f"weight must have shape {list(loss.shape)}, got {list(weight.shape)}")
        check_same(weight, loss, "weight", "pred", dtype=False)
        loss = loss * weight
    return reduce_loss(loss, reduction)


@torch.library.register_fake("mutualops::box_iou")
def _box_iou_fake(boxes1, boxes2, mode="iou"):
    if boxes1.dim() == 2:
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))
    return boxes1.new_empty((boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]))


@torch.library.register_fake("mutualops::box_iou_aligned")
def _box_iou_aligned_fake(boxes1, boxes2, mode="iou", eps=0.0):
    return boxes1.new_empty((boxes1.shape[0],))


@torch.library.register_fake("mutualops::box_iou_aligned_backward")
def _box_iou_aligned_backward_fake(grad, boxes1, boxes2, mode, eps=0.0):
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


def _save_boxes_and_mode(ctx, inputs, output):  # box_iou and box_iou_aligned: the boxes, the mode (and eps)
    boxes1, boxes2, mode, *eps = inputs
    ctx.save_for_backward(boxes1, boxes2)
    ctx.mode, ctx.eps = mode, eps[0] if eps else 0.0


def _aligned_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    grad1, grad2 = torch.ops.mutualops.box_iou_aligned_backward(grad, boxes1, boxes2, ctx.mode, ctx.eps)
    return grad1, grad2, None, None


torch.library.register_autograd(
    "mutualops::box_iou_aligned", _aligned_backward, setup_context=_save_boxes_and_mode
)


def _save_backward_inputs(ctx, inputs, output):
    grad, boxes1, boxes2, mode, eps = inputs
    ctx.save_for_backward(grad, boxes1, boxes2)
    ctx.mode, ctx.eps = mode, eps


def _aligned_double_backward(ctx, grad_grad1, grad_grad2):
    # Second order (gradient penalties, Hessian-vector products) is rare enough not to warrant a kernel: it is
    # the vector-Jacobian product of the first derivative as _math writes it in torch ops, whose math and
    # conventions (tie splits, a constant CIoU alpha) the backward kernel follows.
    grad, boxes1, boxes2 = ctx.saved_tensors

    def first_derivative(g, b1, b2):
        # CIoU's alpha is constant to the first derivative but depends on the boxes: the outer level sees it.
        alpha = _math.ciou_alpha(b1.to(grad.dtype), b2.to(grad.dtype), ctx.eps) if ctx.mode == "ciou" else None
        _, pullback = torch.func.vjp(lambda x, y: _math.box_iou_aligned(x, y, ctx.mode, ctx.eps, alpha), b1, b2)
        return pullback(g)

    _, pullback = torch.func.vjp(first_derivative, grad, boxes1, boxes2)
    cotangents = tuple(torch.zeros_like(b) if g is None else g for g, b in ((grad_grad1, boxes1), (grad_grad2, boxes2)))
    return (*pullback(cotangents), None, None)


torch.library.register_autograd(
    "mutualops::box_iou_aligned_backward", _aligned_double_backward, setup_context=_save_backward_inputs
)


def _pairwise_backward(ctx, grad):
    # Every pair's gradient is the aligned op's: the pairs are expanded only here, in the backward pass that
    # DETR-style matching losses need, so the forward keeps its single N x M allocation.
    boxes1, boxes2 = ctx.saved_tensors
    pairs = (*grad.shape, 4)
    grad1, grad2 = torch.ops.mutualops.box_iou_aligned_backward(
        grad.reshape(-1), boxes1.unsqueeze(-2).expand(pairs).reshape(-1, 4),
        boxes2.unsqueeze(-3).expand(pairs).reshape(-1, 4), ctx.mode)
    return grad1.reshape(pairs).sum(-2), grad2.reshape(pairs).sum(-3), None


torch.library.register_autograd("mutualops::box_iou", _pairwise_backward, setup_context=_save_boxes_and_mode)
