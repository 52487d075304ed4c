"""The label-assignment family (docs/method.md, section 2.3): FCOS and max-IoU assignment, and the
mutual targets of section 1, for whole batches with O(P + G) extra memory.

Ground truth is given per batch as padded boxes [B, Gmax, 4] with `num_gt` [B]
real boxes per image (rows past the count are ignored), as [G, 4] for a single
image, or as a list of per-image [G_i, 4] tensors.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .._validate import as_float, check_boxes, check_choice, check_float, check_same, check_tensor, promote, unit_interval

LOW_QUALITY = ("none", "torchvision", "mmdet")
BOX_CODINGS = ("distance", "delta")
# FCOS's regression ranges per pyramid level (strides 8 to 128).
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))


def pad_gt(gt_boxes: Tensor | Sequence[Tensor], num_gt: Tensor | None = None,
           gt_labels: Tensor | Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """GT in the padded form the kernels read, from any form the assigners accept.

    Args:
        gt_boxes (Tensor[B, Gmax, 4], Tensor[G, 4] or list of Tensor[G_i, 4]): xyxy boxes, floating point.
        num_gt (Tensor[B], optional): integer count of real rows per image of padded boxes (default: all).
        gt_labels (Tensor[B, Gmax], Tensor[G] or list of Tensor[G_i], optional): class indices, in the form of
            gt_boxes.

    Returns:
        tuple: boxes [B, Gmax, 4], num_gt [B] int64, labels [B, Gmax] (None without gt_labels).

    Raises:
        TypeError: boxes that are not floating point, or a label entry that is not a tensor.
        ValueError: an empty list, or shapes that do not match.
    """
    if isinstance(gt_boxes, (list, tuple)):
        if not gt_boxes:
            raise ValueError("gt_boxes must hold at least one image")
        for i, b in enumerate(gt_boxes):
            check_boxes(b, f"gt_boxes[{i}]")
        ref = gt_boxes[0]
        gmax = max(b.shape[0] for b in gt_boxes)
        padded = ref.new_zeros((len(gt_boxes), gmax, 4))
        for i, b in enumerate(gt_boxes):
            padded[i, : b.shape[0]] = b
        counts = torch.tensor([b.shape[0] for b in gt_boxes], dtype=torch.long, device=ref.device)
        labels = None
        if gt_labels is not None:
            if len(gt_labels) != len(gt_boxes):
                raise ValueError(f"gt_labels must hold one tensor per image ({len(gt_boxes)}), got {len(gt_labels)}")
            labels = torch.zeros((len(gt_boxes), gmax), dtype=torch.long, device=ref.device)
            for i, (lab, b) in enumerate(zip(gt_labels, gt_boxes)):
                check_tensor(lab, f"gt_labels[{i}]")
                if lab.shape != (b.shape[0],):
                    raise ValueError(f"gt_labels[{i}] must have shape [{b.shape[0]}] (one per box), got {list(lab.shape)}")
                labels[i, : lab.shape[0]] = lab
        return padded, counts, labels
    check_float(gt_boxes, "gt_boxes")
    if gt_boxes.dim() == 2:
        check_boxes(gt_boxes, "gt_boxes")
        counts = torch.full((1,), gt_boxes.shape[0], dtype=torch.long, device=gt_boxes.device)
        return gt_boxes[None], counts, (gt_labels[None] if gt_labels is not None else None)
    check_boxes(gt_boxes, "gt_boxes", ranks=(3,))
    if num_gt is None:
        num_gt = torch.full((gt_boxes.shape[0],), gt_boxes.shape[1], dtype=torch.long, device=gt_boxes.device)
    check_tensor(num_gt, "num_gt")
    if num_gt.shape != (gt_boxes.shape[0],) or num_gt.is_floating_point():
        raise ValueError(f"num_gt must be an integer tensor of shape [{gt_boxes.shape[0]}]")
    return gt_boxes, num_gt.to(device=gt_boxes.device), gt_labels


def fcos_points(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[float],
                regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES, offset: float = 0.5,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The points of an FPN, level by level, row-major, with what assign_fcos needs of them.

    Args:
        feature_sizes (list of (H, W)): each level's feature map size.
        strides (list of float): each level's stride.
        regress_ranges (list of (low, high)): each level's regression range (FCOS's by default).
        offset (float): a point's position in its cell, in strides (0.5: the cell centre).
        device, dtype: of the returned tensors.

    Returns:
        tuple: points [P, 2], strides [P], regress_ranges [P, 2], level_index [P] int64.
    """
    pts, st, rg, lv = [], [], [], []
    for level, ((h, w), s, r) in enumerate(zip(feature_sizes, strides, regress_ranges)):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device),
                                indexing="ij")
        pts.append(torch.stack([(xs.reshape(-1) + offset) * s, (ys.reshape(-1) + offset) * s], 1))
        st.append(torch.full((h * w,), float(s), dtype=dtype, device=device))
        rg.append(torch.tensor(r, dtype=dtype, device=device).expand(h * w, 2))
        lv.append(torch.full((h * w,), level, dtype=torch.long, device=device))
    return tuple(torch.cat(t) for t in (pts, st, rg, lv))


def torchvision_fcos_priors(anchors: Tensor, num_anchors_per_level: Sequence[int],
                            center_sampling_radius: float = 1.5) -> dict:
    """The assign_fcos arguments that reproduce torchvision's FCOS matcher.

    Args:
        anchors (Tensor[P, 4]): torchvision's FCOS anchors (one square of side `stride` per point).
        num_anchors_per_level (list of int): the points per level, as torchvision passes them.
        center_sampling_radius (float): torchvision's radius.

    Returns:
        dict: points, strides, regress_ranges, center_sampling_radius and torchvision_compat, for
        ``assign_fcos(gt_boxes=..., **priors)``.
    """
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = anchors[:, 2] - anchors[:, 0]
    lower, upper = sizes * 4, sizes * 8
    lower[: num_anchors_per_level[0]] = 0
    upper[-num_anchors_per_level[-1]:] = float("inf")
    return dict(points=points, strides=sizes, regress_ranges=torch.stack([lower, upper], 1),
                center_sampling_radius=center_sampling_radius, torchvision_compat=True)


def assign_fcos(points: Tensor, gt_boxes: Tensor | Sequence[Tensor], num_gt: Tensor | None = None, *,
                strides: Tensor, regress_ranges: Tensor, center_sampling_radius: float = 1.5,
                inclusive: bool = False, torchvision_compat: bool = False) -> Tensor:
    """FCOS assignment: the matched GT of every point, in O(P + G) extra memory.

    A point matches a GT when it lies strictly inside it, within ``center_sampling_radius * stride`` of its
    centre, and its largest regression distance lies in its regress range. Among several matches the smallest
    GT wins, ties to the lower index.

    Args:
        points (Tensor[P, 2]): point coordinates, floating point.
        gt_boxes (Tensor[B, Gmax, 4], Tensor[G, 4] or list of Tensor[G_i, 4]): xyxy GT (see pad_gt).
        num_gt (Tensor[B], optional): real rows per image of padded GT.
        strides (Tensor[P]): each point's stride.
        regress_ranges (Tensor[P, 2]): each point's (low, high) regression range.
        center_sampling_radius (float): in strides; 0 turns centre sampling off.
        inclusive (bool): closed regress-range bounds, as mmdetection (default: open, as torchvision).
        torchvision_compat (bool): reproduce torchvision's FCOS matcher exactly, its float32 ``1e8 - area``
            ties included.

    Returns:
        Tensor[B, P] (or Tensor[P] for one [G, 4] image), int64: the matched GT index, -1 for background.

    Raises:
        TypeError: a tensor that is not floating point, or num_gt not integer.
        ValueError: shapes or devices that do not match, or a count beyond the padded rows.
    """
    single = isinstance(gt_boxes, torch.Tensor) and gt_boxes.dim() == 2
    boxes, counts, _ = pad_gt(gt_boxes, num_gt)
    check_float(points, "points")
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape [P, 2], got {list(points.shape)}")
    check_same(points, boxes, "points", "gt_boxes")
    n = points.shape[0]
    check_float(strides, "strides")
    check_float(regress_ranges, "regress_ranges")
    if strides.shape != (n,):
        raise ValueError(f"strides must have shape [{n}], got {list(strides.shape)}")
    if regress_ranges.shape != (n, 2):
        raise ValueError(f"regress_ranges must have shape [{n}, 2], got {list(regress_ranges.shape)}")
    center_sampling_radius = as_float(center_sampling_radius, "center_sampling_radius")
    # Comparisons, not math.isfinite: under torch.compile(dynamic=True) the radius is symbolic (NaN fails both).
    if not 0 <= center_sampling_radius < math.inf:
        raise ValueError(f"center_sampling_radius must be finite and >= 0, got {center_sampling_radius}")
    matched = torch.ops.mutualops.assign_fcos(points, boxes, counts, strides.to(points), regress_ranges.to(points),
                                              float(center_sampling_radius), bool(inclusive), bool(torchvision_compat))
    return matched[0] if single else matched


def assign_max_iou(anchors: Tensor, gt_boxes: Tensor | Sequence[Tensor], num_gt: Tensor | None = None, *,
                   pos_iou_threshold: float = 0.5, neg_iou_threshold: float = 0.4, low_quality: str = "torchvision",
                   min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                   ignore_boxes: Tensor | Sequence[Tensor] | None = None, num_ignore: Tensor | None = None,
                   ignore_iof_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Max-IoU assignment (RetinaNet), each IoU computed once and no [P, G] matrix held.

    Args:
        anchors (Tensor[P, 4]): xyxy anchors, floating point.
        gt_boxes (Tensor[B, Gmax, 4], Tensor[G, 4] or list of Tensor[G_i, 4]): xyxy GT (see pad_gt).
        num_gt (Tensor[B], optional): real rows per image of padded GT.
        pos_iou_threshold (float): IoU at or above which an anchor is positive, in [0, 1].
        neg_iou_threshold (float): IoU below which it is negative, in [0, pos_iou_threshold].
        low_quality (str): ``"torchvision"`` (``Matcher(..., allow_low_quality_matches=True)``), ``"mmdet"``
            (MaxIoUAssigner with ``min_pos_iou`` and ``gt_max_assign_all``) or ``"none"``.
        min_pos_iou (float): mmdet's least IoU of a low-quality match.
        gt_max_assign_all (bool): mmdet's: every anchor tied at a GT's best IoU gets the GT.
        ignore_boxes (Tensor or list, optional): crowd boxes in a GT form; anchors whose IoF with one exceeds
            ignore_iof_threshold are ignored, as in mmdetection.
        num_ignore (Tensor[B], optional): real rows per image of padded ignore boxes.
        ignore_iof_threshold (float): in [0, 1].

    Returns:
        tuple: matched [B, P] int64 (the GT index, -1 negative, -2 ignored) and max_iou [B, P] (-1 where
        ignored by a crowd box); [P] each for one [G, 4] image.

    Raises:
        TypeError: a tensor that is not floating point, or a count not integer.
        ValueError: shapes or devices that do not match, thresholds out of range, or an unknown low_quality.
    """
    single = isinstance(gt_boxes, torch.Tensor) and gt_boxes.dim() == 2
    boxes, counts, _ = pad_gt(gt_boxes, num_gt)
    check_boxes(anchors, "anchors")
    check_same(anchors, boxes, "anchors", "gt_boxes")
    check_choice(low_quality, "low_quality", LOW_QUALITY)
    pos_iou_threshold, neg_iou_threshold, min_pos_iou, ignore_iof_threshold = (
        unit_interval(value, name) for value, name in
        ((pos_iou_threshold, "pos_iou_threshold"), (neg_iou_threshold, "neg_iou_threshold"),
         (min_pos_iou, "min_pos_iou"), (ignore_iof_threshold, "ignore_iof_threshold")))
    if neg_iou_threshold > pos_iou_threshold:
        raise ValueError("neg_iou_threshold must not exceed pos_iou_threshold")
    ign = ign_counts = None
    if ignore_boxes is None and num_ignore is not None:
        raise ValueError("num_ignore counts rows of ignore_boxes: pass ignore_boxes too")
    if ignore_boxes is not None:
        if single:
            ignore_boxes = ignore_boxes[None] if isinstance(ignore_boxes, torch.Tensor) else ignore_boxes
        ign, ign_counts, _ = pad_gt(ignore_boxes, num_ignore)
        if ign.shape[0] != boxes.shape[0]:
            raise ValueError("ignore_boxes must have one entry per image")
        check_same(ign, boxes, "ignore_boxes", "gt_boxes")
    matched, max_iou = torch.ops.mutualops.assign_max_iou(
        anchors, boxes, counts, ign, ign_counts, pos_iou_threshold, neg_iou_threshold, low_quality, min_pos_iou,
        bool(gt_max_assign_all), ignore_iof_threshold)
    return (matched[0], max_iou[0]) if single else (matched, max_iou)


class MutualTargets(NamedTuple):
    decoded: torch.Tensor  # [B, P, 4] predicted boxes, decoded (detached)
    iou_target: torch.Tensor  # [B, P] q = IoU(decoded, GT) for positives, 0 elsewhere; the IoU-branch target
    cls_target: torch.Tensor  # [B, P, C] q^gamma_cls at the GT's class, 0 elsewhere
    box_weight: torch.Tensor  # [B, P] sigmoid(logit of GT class)^gamma_loc, mean 1 over positives
    positive: torch.Tensor  # [B, P] bool


def mutual_targets(matched: Tensor, gt_boxes: Tensor | Sequence[Tensor], gt_labels: Tensor | Sequence[Tensor],
                   box_pred: Tensor, cls_logits: Tensor, priors: Tensor, *, num_gt: Tensor | None = None,
                   scale: Tensor | None = None, box_coding: str = "distance", gamma_cls: float = 1.0,
                   gamma_loc: float = 1.0) -> MutualTargets:
    """The mutual labels of an assignment in one pass (docs/method.md, section 1): the classification target
    of a positive is its box's IoU with its GT, and its box-loss weight its predicted probability of the GT's
    class. Everything is detached: targets carry no gradient.

    Args:
        matched (Tensor[B, P]): the GT index of each prior, negative for background or ignored.
        gt_boxes (Tensor[B, Gmax, 4], Tensor[G, 4] or list): xyxy GT (see pad_gt).
        gt_labels (Tensor[B, Gmax] or list): class indices of the GT.
        box_pred (Tensor[B, P, 4]): (l, t, r, b) distances from points for ``"distance"``, or (dx, dy, dw, dh)
            deltas of anchors for ``"delta"``.
        cls_logits (Tensor[B, P, C]): class logits.
        priors (Tensor[P, 2] or Tensor[P, 4]): points (``"distance"``) or anchors (``"delta"``).
        num_gt (Tensor[B], optional): real rows per image of padded GT.
        scale (Tensor[P], optional): multiplies normalised distances (the stride).
        box_coding (str): ``"distance"`` or ``"delta"``.
        gamma_cls (float): exponent of the IoU in the classification target.
        gamma_loc (float): exponent of the probability in the box weight.

    Returns:
        MutualTargets: decoded [B, P, 4], iou_target [B, P], cls_target [B, P, C], box_weight [B, P] (mean 1
        over positives) and positive [B, P] bool.

    Raises:
        TypeError: a tensor of the wrong kind.
        ValueError: shapes or devices that do not match, an index beyond its GT or class count, or an unknown
            box coding.
    """
    boxes, counts, labels = pad_gt(gt_boxes, num_gt, gt_labels)
    check_tensor(matched, "matched")
    if matched.dim() == 1:
        matched = matched[None]
    if matched.dim() != 2 or matched.shape[0] != boxes.shape[0]:
        raise ValueError(f"matched must have shape [B, P] with B = {boxes.shape[0]}, got {list(matched.shape)}")
    check_tensor(labels, "gt_labels")
    if labels.is_floating_point() or labels.shape != boxes.shape[:2]:
        raise ValueError(f"gt_labels must be an integer tensor of shape {list(boxes.shape[:2])}")
    check_float(box_pred, "box_pred")
    check_float(cls_logits, "cls_logits")
    check_choice(box_coding, "box_coding", BOX_CODINGS)
    b, n = matched.shape
    if box_pred.shape != (b, n, 4):
        raise ValueError(f"box_pred must have shape [{b}, {n}, 4], got {list(box_pred.shape)}")
    if cls_logits.dim() != 3 or cls_logits.shape[:2] != (b, n):
        raise ValueError(f"cls_logits must have shape [{b}, {n}, C], got {list(cls_logits.shape)}")
    width = 2 if box_coding == "distance" else 4
    check_float(priors, "priors")
    if priors.shape != (n, width):
        raise ValueError(f"priors must have shape [{n}, {width}] for {box_coding} coding, got {list(priors.shape)}")
    for name, t in (("gt_boxes", boxes), ("cls_logits", cls_logits), ("priors", priors)):
        check_same(box_pred, t, "box_pred", name, dtype=False)
    if scale is not None:
        check_float(scale, "scale")
        if scale.shape != (n,):
            raise ValueError(f"scale must have shape [{n}], got {list(scale.shape)}")
    # Under autocast the head's outputs are half precision and the GT float32: the targets are computed in
    # the wider type.
    box_pred, cls_logits, boxes, priors, scale = promote(box_pred, cls_logits, boxes, priors,
                                                         scale.to(box_pred.device) if scale is not None else None)
    if matched.dtype == torch.bool or matched.is_floating_point() or matched.is_complex():
        raise TypeError(f"matched must be an integer tensor of GT indices, got {matched.dtype}")
    # Indices into gt_boxes and class indices are checked by the op itself (one host read), for
    # wrapper and raw op alike.
    decoded, iou_target, cls_target, box_weight = torch.ops.mutualops.mutual_targets(
        matched.long().detach(), boxes.detach(), labels.to(box_pred.device).long(), box_pred.detach(),
        cls_logits.detach(), priors.detach(), scale.detach() if scale is not None else None, box_coding,
        as_float(gamma_cls, "gamma_cls"), as_float(gamma_loc, "gamma_loc"))
    return MutualTargets(decoded, iou_target, cls_target, box_weight, matched >= 0)


def assign_and_label(priors: Tensor, gt_boxes: Tensor | Sequence[Tensor], gt_labels: Tensor | Sequence[Tensor],
                     box_pred: Tensor, cls_logits: Tensor, *, num_gt: Tensor | None = None, assigner: str = "fcos",
                     assign_kwargs: dict | None = None, scale: Tensor | None = None, box_coding: str | None = None,
                     gamma_cls: float = 1.0, gamma_loc: float = 1.0) -> tuple[Tensor, MutualTargets]:
    """Assignment and mutual targets in one call.

    Args:
        priors (Tensor[P, 2] or Tensor[P, 4]): points for ``assigner="fcos"``, anchors for ``"max_iou"``.
        gt_boxes, gt_labels, box_pred, cls_logits, num_gt, gamma_cls, gamma_loc: as in mutual_targets.
        assigner (str): ``"fcos"`` (assign_kwargs must hold strides and regress_ranges) or ``"max_iou"``.
        assign_kwargs (dict, optional): keyword arguments of assign_fcos or assign_max_iou.
        scale (Tensor[P], optional): as in mutual_targets (default for FCOS: the strides).
        box_coding (str, optional): default ``"distance"`` for FCOS, ``"delta"`` for max-IoU.

    Returns:
        tuple: matched [B, P] int64 and MutualTargets.

    Raises:
        TypeError, ValueError: as the assigner and mutual_targets.
    """
    check_choice(assigner, "assigner", ("fcos", "max_iou"))
    kwargs = dict(assign_kwargs or {})
    boxes, counts, labels = pad_gt(gt_boxes, num_gt, gt_labels)
    if assigner == "fcos":
        matched = assign_fcos(priors, boxes, counts, **kwargs)
        coding = box_coding or "distance"
        if scale is None and coding == "distance":
            scale = kwargs["strides"]
    else:
        matched, _ = assign_max_iou(priors, boxes, counts, **kwargs)
        coding = box_coding or "delta"
    targets = mutual_targets(matched, boxes, labels, box_pred, cls_logits, priors, num_gt=counts, scale=scale,
                             box_coding=coding, gamma_cls=gamma_cls, gamma_loc=gamma_loc)
    return matched, targets


@torch.library.register_fake("mutualops::assign_fcos")
def _assign_fcos_fake(points, gt_boxes, num_gt, strides, regress_ranges, center_radius, inclusive, compat):
    return points.new_empty((gt_boxes.shape[0], points.shape[0]), dtype=torch.long)


@torch.library.register_fake("mutualops::assign_max_iou")
def _assign_max_iou_fake(anchors, gt_boxes, num_gt, ignore_boxes, num_ignore, pos_iou, neg_iou, low_quality,
                         min_pos_iou, gt_max_assign_all, ignore_iof):
    shape = (gt_boxes.shape[0], anchors.shape[0])
    return anchors.new_empty(shape, dtype=torch.long), anchors.new_empty(shape)


@torch.library.register_fake("mutualops::mutual_targets")
def _mutual_targets_fake(matched, gt_boxes, gt_labels, box_pred, cls_logits, priors, scale, box_coding, gamma_cls,
                         gamma_loc):
    b, n = matched.shape
    return (box_pred.new_empty((b, n, 4)), box_pred.new_empty((b, n)), cls_logits.new_empty(cls_logits.shape),
            box_pred.new_empty((b, n)))
