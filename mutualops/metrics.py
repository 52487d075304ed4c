"""The localization-classification divergence metric (docs/method.md, section 1).

For each ground-truth object j with at least `min_size` predictions assigned to
it, rho_j is Spearman's rank correlation between those predictions' scores and
their IoUs with the object. Harmony aggregates rho_j over objects (NaN-skipping);
divergence = 1 - harmony. Report `num_objects` beside every figure.

Which predictions belong to an object is the caller's choice, through
`gt_index` (one object id per prediction, -1 for none):

- `gt_index_from_assignment`: the training assigner's positives (the default
  of docs/method.md);
- `gt_index_from_iou`: for evaluation, every pre-NMS prediction whose best IoU
  (>= a threshold, 0.5 by default) is with that object, whatever its score.

`paired_harmony` compares two models on the same objects: the mean per-object
difference of rho over the objects both cover, with a bootstrap confidence
interval.

Example::

    gt_index = mutualops.metrics.gt_index_from_iou(pred_boxes, gt_boxes)
    ious = mutualops.box_iou_aligned(pred_boxes, gt_boxes[gt_index.clamp(min=0)])
    h = mutualops.metrics.harmony(scores, ious, gt_index)
    print(f"harmony {h.harmony:.3f} over {h.num_objects} objects")
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._validate import check_boxes, check_choice, check_float, check_index, check_tensor
from .ops.box_iou import box_iou
from .ops.ranking import spearman

AGGREGATES = ("mean", "count_weighted")


class Harmony(NamedTuple):
    harmony: float  # NaN when no object qualifies
    divergence: float  # 1 - harmony
    num_objects: int  # objects whose rho entered the aggregate
    per_object: torch.Tensor  # float64 [num object ids], NaN where skipped
    counts: torch.Tensor  # int64 [num object ids], predictions per object
    min_size: int  # objects with fewer predictions were skipped


def harmony(scores: Tensor, ious: Tensor, gt_index: Tensor, min_size: int = 2, aggregate: str = "mean",
            num_ids: int | None = None) -> Harmony:
    """Harmony of classification scores and localization IoUs: Spearman's rho of the two over each object's
    predictions, aggregated over the objects.

    Args:
        scores (Tensor[P]): each prediction's classification score, floating point.
        ious (Tensor[P]): its IoU with its object, floating point, same device.
        gt_index (Tensor[P]): integer object id of each prediction, negative for none.
        min_size (int): objects with fewer predictions are skipped (rho needs 2).
        aggregate (str): ``"mean"`` (each object counts once, the method's default) or ``"count_weighted"``
            (objects weigh by their number of predictions).
        num_ids (int, optional): the number of object ids, fixing the length of the per-object outputs so that
            two models' results line up.

    Returns:
        Harmony: harmony (NaN when no object qualifies), divergence, num_objects, per_object [num ids] float64,
        counts [num ids] int64 and min_size.

    Raises:
        TypeError: scores or ious not floating point, or gt_index not integer.
        ValueError: shapes or devices that do not match, an id beyond num_ids, a bad min_size or aggregate.
    """
    check_float(scores, "scores")
    check_float(ious, "ious")
    check_tensor(gt_index, "gt_index")
    if scores.dim() != 1 or ious.shape != scores.shape or gt_index.shape != scores.shape:
        raise ValueError(
            f"scores, ious and gt_index must be 1-D of one length, got {list(scores.shape)}, "
            f"{list(ious.shape)} and {list(gt_index.shape)}"
        )
    check_index(gt_index, "gt_index", scores.shape, scores.device)
    check_choice(aggregate, "aggregate", AGGREGATES)
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2 (a rank correlation needs two elements), got {min_size}")
    keep = gt_index >= 0
    ids = gt_index[keep].long()
    largest = int(ids.max()) + 1 if ids.numel() else 0
    if num_ids is not None and num_ids < largest:
        raise ValueError(f"num_ids ({num_ids}) must exceed the largest object id ({largest - 1})")
    num_ids = largest if num_ids is None else num_ids
    rho = spearman(scores[keep], ious[keep], ids, num_groups=num_ids)
    counts = torch.bincount(ids, minlength=num_ids)
    rho = torch.where(counts >= min_size, rho, torch.full_like(rho, float("nan")))
    used = ~torch.isnan(rho)
    num_objects = int(used.sum())
    if num_objects == 0:
        value = float("nan")
    elif aggregate == "mean":
        value = float(rho[used].mean())
    else:
        w = counts[used].double()
        value = float((rho[used] * w).sum() / w.sum())
    return Harmony(value, 1.0 - value, num_objects, rho, counts, min_size)


class PairedHarmony(NamedTuple):
    difference: float  # mean over the common objects of rho_b - rho_a; NaN when there are none
    low: float  # the confidence interval of the difference (percentile bootstrap over objects)
    high: float
    level: float
    num_objects: int  # objects both models cover
    harmony_a: float  # each model's harmony over the common objects
    harmony_b: float


def paired_harmony(a: Harmony, b: Harmony, level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> PairedHarmony:
    """Model b's harmony against model a's, object by object: the mean of rho_b - rho_a over the objects for
    which both have a rho, with a bootstrap interval that resamples those objects.

    Args:
        a (Harmony): model a's harmony, over the same object ids (the same ``num_ids``) and ``min_size`` as b.
        b (Harmony): model b's.
        level (float): the interval's confidence level, in (0, 1).
        resamples (int): bootstrap resamples.
        seed (int): the resampling's seed, so that the result repeats.

    Returns:
        PairedHarmony: difference, low, high, level, num_objects, and each model's harmony over the common
        objects.

    Raises:
        ValueError: results over different ids or min_size, or a bad level or resamples.
    """
    if not (isinstance(a, Harmony) and isinstance(b, Harmony)):
        raise TypeError("a and b must be results of harmony()")
    if a.min_size != b.min_size:
        raise ValueError(f"a and b must use one min_size, got {a.min_size} and {b.min_size}")
    if a.per_object.numel() != b.per_object.numel():
        raise ValueError(f"a and b must cover the same objects (num_ids), got {a.per_object.numel()} and "
                         f"{b.per_object.numel()} ids")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    both = ~torch.isnan(a.per_object) & ~torch.isnan(b.per_object)
    ra, rb = a.per_object[both].cpu(), b.per_object[both].cpu()
    n = int(both.sum())
    if n == 0:
        nan = float("nan")
        return PairedHarmony(nan, nan, nan, level, 0, nan, nan)
    diff = rb - ra
    generator = torch.Generator().manual_seed(seed)
    means = torch.cat([diff[torch.randint(n, (chunk, n), generator=generator)].mean(dim=1)
                       for chunk in _chunks(resamples, max(1, 2_000_000 // n))])
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype)).tolist()
    return PairedHarmony(float(diff.mean()), low, high, level, n, float(ra.mean()), float(rb.mean()))


def _chunks(total, size):
    """Sizes that add up to total, none above size: bounds the bootstrap's [chunk, n] index tensor."""
    return [min(size, total - start) for start in range(0, total, size)]


def gt_index_from_assignment(matched: Tensor, num_gt: int | None = None) -> Tensor:
    """Object ids for harmony from an assigner's output.

    Args:
        matched (Tensor[P] or Tensor[B, P]): integer GT indices, negative for background or ignored.
        num_gt (int, optional): Gmax, the padded GT count (default: the largest index + 1).

    Returns:
        Tensor[P] or Tensor[B * P] (int64): ids; in a batch image b's object j is ``b * Gmax + j``; -1 for none.

    Raises:
        TypeError: matched not integer.
        ValueError: an index at or beyond num_gt.
    """
    check_tensor(matched, "matched")
    if matched.dim() == 1:
        return torch.where(matched >= 0, matched.long(), -1)
    if matched.dim() != 2:
        raise ValueError(f"matched must have shape [P] or [B, P], got {list(matched.shape)}")
    gmax = num_gt if num_gt is not None else int(matched.max()) + 1 if matched.numel() else 0
    offset = torch.arange(matched.shape[0], device=matched.device)[:, None] * gmax
    return torch.where(matched >= 0, matched.long() + offset, -1).reshape(-1)


def gt_index_from_iou(pred_boxes: Tensor, gt_boxes: Tensor, iou_threshold: float = 0.5,
                      num_gt: Tensor | None = None) -> Tensor:
    """Object ids for evaluation: each prediction belongs to the GT it overlaps most, when that IoU is at least
    iou_threshold.

    Args:
        pred_boxes (Tensor[P, 4] or Tensor[B, P, 4]): xyxy predictions, floating point.
        gt_boxes (Tensor[G, 4] or Tensor[B, Gmax, 4]): xyxy GT of the same rank and device.
        iou_threshold (float): in [0, 1].
        num_gt (Tensor[B], optional): real GT rows per image of a batch (the rest is padding).

    Returns:
        Tensor[P] or Tensor[B * P] (int64): ids (``b * Gmax + j`` in a batch), -1 for no object.

    Raises:
        TypeError: boxes not floating point, or num_gt not integer.
        ValueError: shapes or devices that do not match, or a threshold outside [0, 1].
    """
    check_boxes(pred_boxes, "pred_boxes", ranks=(2, 3))
    check_boxes(gt_boxes, "gt_boxes", ranks=(2, 3))
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    batched = pred_boxes.dim() == 3
    preds = pred_boxes if batched else pred_boxes[None]
    gts = gt_boxes if batched else gt_boxes[None]
    if gts.shape[1] == 0:
        return torch.full((preds.shape[0] * preds.shape[1],), -1, dtype=torch.long, device=preds.device)
    iou = box_iou(preds, gts.to(preds.dtype))  # [B, P, G]: evaluation-sized, not a training hot path
    if num_gt is not None:
        padding = torch.arange(gts.shape[1], device=iou.device)[None, :] >= num_gt.to(iou.device)[:, None]
        iou = iou.masked_fill(padding[:, None, :], -1)
    best, j = iou.max(dim=2)
    offset = torch.arange(preds.shape[0], device=iou.device)[:, None] * gts.shape[1]
    return torch.where(best >= iou_threshold, j + offset, -1).reshape(-1)
