"""The label-assignment family (docs/method.md, section 2.3): FCOS and max-IoU assignment, and the
mutual targets of section 1, for whole batches with O(P + G) extra memory.

Ground truth is given per batch as padded boxes [B, Gmax, 4] with `num_gt` [B]
real boxes per image (rows past the count are ignored), as [G, 4] for a single
image, or as a list of per-image [G_i, 4] tensors.
"""

import math
from typing import NamedTuple

import torch

from ._validate import as_float, check_boxes, check_choice, check_float, check_same, check_tensor, promote, unit_interval

LOW_QUALITY = ("none", "torchvision", "mmdet")
BOX_CODINGS = ("distance", "delta")
# FCOS's regression ranges per pyramid level (strides 8 to 128).
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))


def pad_gt(gt_boxes, num_gt=None, gt_labels=None):
    """(boxes [B, Gmax, 4], num_gt [B], labels [B, Gmax] or None) from any accepted GT form."""
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


def fcos_points(feature_sizes, strides, regress_ranges=FCOS_REGRESS_RANGES, offset=0.5, device=None, dtype=torch.float32):
    """Points of an FPN, level by level, row-major: (points [P, 2], strides [P],
    regress_ranges [P, 2], level_index [P]). feature_sizes: [(H, W), ...]."""
    pts, st, rg, lv = [], [], [], []
    for level, ((h, w), s, r) in enumerate(zip(feature_sizes, strides, regress_ranges)):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device),
                                indexing="ij")
        pts.append(torch.stack([(xs.reshape(-1) + offset) * s, (ys.reshape(-1) + offset) * s], 1))
        st.append(torch.full((h * w,), float(s), dtype=dtype, device=device))
        rg.append(torch.tensor(r, dtype=dtype, device=device).expand(h * w, 2))
        lv.append(torch.full((h * w,), level, dtype=torch.long, device=device))
    return tuple(torch.cat(t) for t in (pts, st, rg, lv))


def torchvision_fcos_priors(anchors, num_anchors_per_level, center_sampling_radius=1.5):
    """The assign_fcos arguments that reproduce torchvision's FCOS matcher from its
    anchors [P, 4] (one square anchor of side `stride` per point) and level sizes:
    dict(points, strides, regress_ranges, center_sampling_radius, torchvision_compat)."""
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = anchors[:, 2] - anchors[:, 0]
    lower, upper = sizes * 4, sizes * 8
    lower[: num_anchors_per_level[0]] = 0
    upper[-num_anchors_per_level[-1]:] = float("inf")
    return dict(points=points, strides=sizes, regress_ranges=torch.stack([lower, upper], 1),
                center_sampling_radius=center_sampling_radius, torchvision_compat=True)


def assign_fcos(points, gt_boxes, num_gt=None, *, strides, regress_ranges, center_sampling_radius=1.5,
                inclusive=False, torchvision_compat=False):
    """FCOS assignment: the matched GT index of every point, -1 for background.

    A point matches a GT when it lies strictly inside it, within
    center_sampling_radius * stride of its centre (0 turns this off), and its
    largest regression distance lies in its regress range (exclusive bounds as
    torchvision, `inclusive=True` as mmdetection). Among several matches the
    smallest GT wins, ties to the lower index. `torchvision_compat` reproduces
    torchvision's FCOS matcher exactly, including its float32 `1e8 - area` ties.
    Returns [B, P] (or [P] for a single [G, 4] image).
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


def assign_max_iou(anchors, gt_boxes, num_gt=None, *, pos_iou_threshold=0.5, neg_iou_threshold=0.4,
                   low_quality="torchvision", min_pos_iou=0.0, gt_max_assign_all=True, ignore_boxes=None,
                   num_ignore=None, ignore_iof_threshold=0.5):
    """Max-IoU assignment (RetinaNet): (matched, max_iou), each [B, P] (or [P]).

    matched is the GT index for IoU >= pos_iou_threshold, -1 (negative) below
    neg_iou_threshold, -2 (ignored) in between. Low-quality matches:
    "torchvision" as `Matcher(..., allow_low_quality_matches=True)`, "mmdet" as
    MaxIoUAssigner (`min_pos_iou`, `gt_max_assign_all`), or "none". Anchors
    whose IoF with an ignore (crowd) box exceeds ignore_iof_threshold are
    ignored (-2, max_iou -1), as in mmdetection.
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


def mutual_targets(matched, gt_boxes, gt_labels, box_pred, cls_logits, priors, *, num_gt=None, scale=None,
                   box_coding="distance", gamma_cls=1.0, gamma_loc=1.0):
    """The mutual labels of an assignment, in one pass (docs/method.md, section 1).

    matched [B, P] (GT index, negative for background or ignored); box_pred
    [B, P, 4]: (l, t, r, b) distances from points [P, 2] (times `scale` [P], e.g.
    the stride, when normalised) for "distance", or (dx, dy, dw, dh) deltas of
    anchors [P, 4] for "delta"; cls_logits [B, P, C]; gt_labels [B, Gmax] class
    indices. Everything is detached: targets carry no gradient.
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


def assign_and_label(priors, gt_boxes, gt_labels, box_pred, cls_logits, *, num_gt=None, assigner="fcos",
                     assign_kwargs=None, scale=None, box_coding=None, gamma_cls=1.0, gamma_loc=1.0):
    """Assignment and mutual targets in one call: (matched [B, P], MutualTargets).

    assigner "fcos": priors are points [P, 2] and assign_kwargs must hold
    strides and regress_ranges; box coding defaults to "distance" with scale =
    strides. assigner "max_iou": priors are anchors [P, 4], coding "delta".
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
