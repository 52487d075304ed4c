"""The NMS family (docs/method.md, section 2.2): torchvision drop-ins and rescored NMS.

Kept indices come ordered by score descending, ties to the lower index (on
exact score ties torchvision follows torch.sort's unstable order instead).
Boxes or scores that are not finite are never kept and suppress nothing.
IoU is compared with `> iou_threshold`, as in torchvision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._validate import as_int, check_boxes, check_float, check_index, check_same, kept_size, unit_interval


def _check_nms(boxes, scores, iou_threshold):
    check_boxes(boxes, "boxes")
    check_float(scores, "scores")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {list(scores.shape)}")
    check_same(boxes, scores, "boxes", "scores")
    _check_has_data(boxes, "boxes")
    return unit_interval(iou_threshold, "iou_threshold")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, a drop-in for ``torchvision.ops.nms``.

    Args:
        boxes (Tensor[N, 4]): xyxy boxes, floating point.
        scores (Tensor[N]): their scores, same dtype and device.
        iou_threshold (float): in [0, 1]; a kept box removes later boxes with IoU ``>`` it.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties to the lower index). Boxes or
        scores that are not finite are never kept and suppress nothing.

    Raises:
        TypeError: a tensor that is not floating point, or boxes and scores of different dtypes.
        ValueError: shapes or devices that do not match, or a threshold outside [0, 1].
    """
    iou_threshold = _check_nms(boxes, scores, iou_threshold)
    return torch.ops.mutualops.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group, a drop-in for ``torchvision.ops.batched_nms``.

    Args:
        boxes (Tensor[N, 4]): xyxy boxes, floating point.
        scores (Tensor[N]): their scores, same dtype and device.
        idxs (Tensor[N]): integer group of each box (class, image, ...); boxes suppress only within a group.
        iou_threshold (float): in [0, 1].

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties to the lower index).

    Raises:
        TypeError: boxes or scores not floating point or of different dtypes, or idxs not integer.
        ValueError: shapes or devices that do not match, or a threshold outside [0, 1].
    """
    iou_threshold = _check_nms(boxes, scores, iou_threshold)
    check_index(idxs, "idxs", scores.shape, boxes.device)
    return torch.ops.mutualops.batched_nms(boxes, scores, idxs, iou_threshold)


@torch.library.register_fake("mutualops::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return _nms_fake(boxes, scores, iou_threshold)


@torch.library.register_fake("mutualops::nms")
def _nms_fake(boxes, scores, iou_threshold):
    return scores.new_empty((kept_size(boxes, scores),), dtype=torch.long)


class Detections(NamedTuple):
    """Detections of a batch. Flat: [D] tensors ordered by image, then score
    descending (`counts` [B] says how many each image has). Fixed-shape: [B, K]
    tensors padded with score 0, label -1, index -1 and zero boxes."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    batch_index: torch.Tensor  # flat mode: image of each detection; fixed-shape mode: None
    indices: torch.Tensor  # dense input: point index n; flat input: element index
    counts: torch.Tensor


def rescored_nms(
    boxes: Tensor,
    scores: Tensor,
    iou: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    batch_index: Tensor | None = None,
    num_images: int | None = None,
    level_index: Tensor | None = None,
    num_levels: int | None = None,
    alpha: float = 0.5,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    pre_nms_top_k: int = 1000,
    max_detections: int = 100,
    class_agnostic: bool = False,
    logits: bool = False,
    fixed_shape: bool = False,
) -> Detections:
    """Detector post-processing in one call: IoU rescoring, score threshold, per-image top-k, class-aware NMS
    and a per-image cap (docs/method.md, section 2.2).

    The ranking score is ``s = scores^(1 - alpha) * iou^alpha`` (plain scores with alpha 0 or no iou; FCOS's
    sqrt(cls * centerness) is alpha 0.5 with centerness as iou). Candidates need ``s > score_threshold``; the
    best ``pre_nms_top_k`` per image (per image and level with ``level_index``) survive; NMS suppresses IoU
    ``> iou_threshold`` within a class (within the image if ``class_agnostic``); at most ``max_detections``
    per image remain. Ties go to the lower index; boxes or scores that are not finite are never kept and
    suppress nothing.

    Args:
        boxes (Tensor[B, N, 4] or Tensor[M, 4]): xyxy boxes, floating point: a dense head's output (every
            (point, class) pair is a candidate) or flat candidates.
        scores (Tensor[B, N, C] or Tensor[M]): class probabilities (logits with ``logits=True``).
        iou (Tensor[B, N] or Tensor[M], optional): predicted IoUs (or centerness) for the rescoring.
        labels (Tensor[M], optional): integer class of each flat candidate; required for flat input.
        batch_index (Tensor[M], optional): integer image of each flat candidate (default: one image).
        num_images (int, optional): the batch size of flat input (default: inferred from batch_index).
        level_index (Tensor[N] or Tensor[M], optional): integer pyramid level of each point or candidate, for
            a top-k per level.
        num_levels (int, optional): the number of levels; spares a host synchronisation on CUDA.
        alpha (float): the rescoring exponent, in [0, 1].
        score_threshold (float): in [0, 1].
        iou_threshold (float): in [0, 1].
        pre_nms_top_k (int): candidates kept per image (and level) before NMS; -1 for no limit.
        max_detections (int): detections kept per image.
        class_agnostic (bool): suppress across classes.
        logits (bool): scores and iou are logits; the sigmoid is taken in the same pass, and no [B, N, C]
            probability tensor is allocated.
        fixed_shape (bool): pad every output to [B, K] (no data-dependent shape: CUDA graphs, torch.compile,
            ONNX); K is max_detections, or the number of candidates per image when smaller.

    Returns:
        Detections: flat [D] tensors ordered by image, then score, with ``counts`` [B]; or, with
        ``fixed_shape=True``, [B, K] tensors padded with score 0, label -1, index -1 and zero boxes.

    Raises:
        TypeError: a tensor of the wrong kind (floating point for boxes, scores, iou; integer for labels and
            indices) or an argument of the wrong type.
        ValueError: shapes or devices that do not match, values out of range, or an index beyond its count.
    """
    check_float(boxes, "boxes")
    check_float(scores, "scores")
    alpha, score_threshold, iou_threshold = (
        unit_interval(value, name) for value, name in
        ((alpha, "alpha"), (score_threshold, "score_threshold"), (iou_threshold, "iou_threshold")))
    max_detections, pre_nms_top_k = as_int(max_detections, "max_detections"), as_int(pre_nms_top_k, "pre_nms_top_k")
    if max_detections < 0:
        raise ValueError(f"max_detections must be a non-negative int, got {max_detections}")
    if pre_nms_top_k < -1:
        raise ValueError(f"pre_nms_top_k must be an int >= -1 (-1: no limit), got {pre_nms_top_k}")
    _check_has_data(boxes, "boxes", fixed_shape)
    if iou is not None:
        check_float(iou, "iou")
        check_same(boxes, iou, "boxes", "iou")
    check_same(boxes, scores, "boxes", "scores")
    if level_index is None:
        num_levels = 1
    elif num_levels is None:
        _given_when_exporting("num_levels", "level_index")
        if level_index.device.type == "meta":
            raise ValueError("num_levels must be given with a meta level_index (it has no values to count)")
        num_levels = int(level_index.max()) + 1 if level_index.numel() else 1
    else:
        num_levels = as_int(num_levels, "num_levels")
    _check_ids(level_index, "level_index", "num_levels", num_levels, fixed_shape)
    common = (alpha, score_threshold, iou_threshold, pre_nms_top_k, max_detections, bool(class_agnostic), bool(logits))
    if boxes.dim() == 3:
        if labels is not None or batch_index is not None:
            raise ValueError("labels and batch_index are for flat inputs; dense scores [B,N,C] carry both")
        check_boxes(boxes, "boxes", ranks=(3,))
        if scores.dim() != 3 or scores.shape[:2] != boxes.shape[:2]:
            raise ValueError(f"scores must have shape [B, N, C] = [{boxes.shape[0]}, {boxes.shape[1]}, C], "
                             f"got {list(scores.shape)}")
        if iou is not None and iou.shape != boxes.shape[:2]:
            raise ValueError(f"iou must have shape {list(boxes.shape[:2])}, got {list(iou.shape)}")
        check_index(level_index, "level_index", (boxes.shape[1],), boxes.device)
        out = torch.ops.mutualops.rescored_nms_dense(boxes, scores, iou, level_index, num_levels, *common)
    else:
        check_boxes(boxes, "boxes")
        m = boxes.shape[0]
        if scores.shape != (m,):
            raise ValueError(f"scores must have shape [{m}] for flat boxes [M, 4], got {list(scores.shape)}")
        if labels is None:
            raise ValueError("labels are required with flat boxes [M, 4]")
        check_index(labels, "labels", (m,), boxes.device)
        if iou is not None and iou.shape != (m,):
            raise ValueError(f"iou must have shape [{m}], got {list(iou.shape)}")
        check_index(batch_index, "batch_index", (m,), boxes.device)
        check_index(level_index, "level_index", (m,), boxes.device)
        if num_images is None and batch_index is not None:
            _given_when_exporting("num_images", "batch_index")
            if batch_index.device.type == "meta":
                raise ValueError("num_images must be given with a meta batch_index (it has no values to count)")
        if num_images is None:
            num_images = 1 if batch_index is None else (int(batch_index.max()) + 1 if m else 0)
        num_images = as_int(num_images, "num_images")
        _check_ids(batch_index, "batch_index", "num_images", num_images, fixed_shape)
        out = torch.ops.mutualops.rescored_nms_flat(boxes, scores, labels, iou, batch_index, level_index,
                                                    num_levels, num_images, *common)
    det_boxes, det_scores, det_labels, det_indices, counts = out
    if fixed_shape:
        return Detections(det_boxes, det_scores, det_labels, None, det_indices, counts)
    valid = det_labels >= 0
    image = torch.arange(counts.shape[0], device=counts.device)[:, None].expand_as(det_labels)
    return Detections(det_boxes[valid], det_scores[valid], det_labels[valid], image[valid], det_indices[valid], counts)


def _check_ids(ids, name, count_name, count, fixed_shape):
    """Ids outside [0, count) are an error. The CPU kernel checks them itself; on CUDA a check reads the data
    on the host, which the flat output does anyway but fixed-shape mode must not: there, as in an exported
    graph, such a candidate is never kept (README, "Rescored NMS")."""
    if (ids is None or fixed_shape or ids.numel() == 0 or ids.device.type in ("cpu", "meta")
            or torch.compiler.is_compiling()):
        return
    lo, hi = torch.aminmax(ids)
    if int(lo) < 0 or int(hi) >= count:
        raise ValueError(f"{name} must be in [0, {count_name} = {count}), got values in [{int(lo)}, {int(hi)}]")


def _given_when_exporting(name, source):
    """An exported graph (torch.export, ONNX) cannot read a count from tensor data on the host."""
    if torch.compiler.is_exporting():
        raise ValueError(f"rescored_nms needs {name} to be exported with {source}: it would be read from "
                         f"the data, which an exported graph cannot do")


def _check_has_data(boxes, name, fixed_shape=False):
    """Meta tensors carry shapes but no values, and the number of kept boxes depends on the values."""
    if boxes.device.type == "meta" and not fixed_shape:
        raise ValueError(f"{name} is a meta tensor: the number of kept boxes depends on values it does not hold "
                         "(rescored_nms with fixed_shape=True has a static shape)")


def _padded_fake(boxes, images, k):
    return (
        boxes.new_empty((images, k, 4)),
        boxes.new_empty((images, k)),
        boxes.new_empty((images, k), dtype=torch.long),
        boxes.new_empty((images, k), dtype=torch.long),
        boxes.new_empty((images,), dtype=torch.long),
    )


@torch.library.register_fake("mutualops::rescored_nms_dense")
def _rescored_nms_dense_fake(boxes, scores, iou, level_index, num_levels, alpha, score_threshold, iou_threshold,
                             pre_nms_top_k, max_detections, class_agnostic, logits=False):
    return _padded_fake(boxes, boxes.shape[0], torch.sym_min(max_detections, boxes.shape[1] * scores.shape[2]))


@torch.library.register_fake("mutualops::rescored_nms_flat")
def _rescored_nms_flat_fake(boxes, scores, labels, iou, batch_index, level_index, num_levels, num_images, alpha, score_threshold,
                            iou_threshold, pre_nms_top_k, max_detections, class_agnostic, logits=False):
    return _padded_fake(boxes, num_images, torch.sym_min(max_detections, boxes.shape[0]))
