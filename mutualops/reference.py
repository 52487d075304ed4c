"""Vectorised pure-PyTorch reference implementations of every mutualops op.

These define the expected results (tests compare the kernels with them) and are
the "plain PyTorch" contestant of the benchmarks. They follow the same
conventions as the kernels (docs/method.md, section 2.1) and make no attempt to save memory.
"""

import math

import numpy as np
import torch

# The formulas the ops' backward passes and the detector run on, re-exported as the oracle's own.
from ._math import (DELTA_CLIP, box_iou_aligned, box_overlap, ciou_alpha, decode_delta,  # noqa: F401
                    decode_distance, math_dtype as _math_dtype, probiou, reduce_loss)


def box_iou(boxes1, boxes2, mode="iou"):
    """[N,4] x [M,4] -> [N,M] or [B,N,4] x [B,M,4] -> [B,N,M] (materialises N x M temporaries)."""
    a = boxes1.to(_math_dtype(boxes1)).unsqueeze(-2)
    b = boxes2.to(_math_dtype(boxes2)).unsqueeze(-3)
    return box_overlap(a, b, mode).to(boxes1.dtype)


def iou_loss(pred, target, mode="giou", reduction="mean", weight=None, eps=1e-7):
    loss = 1 - box_iou_aligned(pred, target, mode, eps)
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction)


def _sorted_runs(x, groups):
    """Sorts x within groups (stable) and locates groups and runs of equal values.

    Returns perm (sorted position -> element), the sorted group ids, and, per
    sorted position, its group's first position, its run's first and one-past-
    last positions, and the number of runs of its group before it.
    """
    n = x.shape[0]
    pos = torch.arange(n, device=x.device)
    perm_v = torch.sort(x, stable=True).indices
    perm = perm_v[torch.sort(groups[perm_v], stable=True).indices]
    g, v = groups[perm], x[perm]
    new_group = torch.ones(n, dtype=torch.bool, device=x.device)
    new_group[1:] = g[1:] != g[:-1]
    new_run = new_group.clone()
    new_run[1:] |= v[1:] != v[:-1]
    last = torch.ones_like(new_run)
    last[:-1] = new_run[1:]
    group_begin = torch.where(new_group, pos, -1).cummax(0).values
    run_begin = torch.where(new_run, pos, -1).cummax(0).values
    run_end = torch.where(last, pos + 1, n).flip(0).cummin(0).values.flip(0)
    runs = new_run.long().cumsum(0)
    return perm, g, pos - group_begin, run_begin - group_begin, run_end - group_begin, runs - runs[group_begin]


def rank(x, groups=None, ties="average"):
    """scipy.stats.rankdata per group, float64, NaN for groups holding a NaN."""
    x = x.double()
    groups = torch.zeros_like(x, dtype=torch.long) if groups is None else groups.long()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    perm, g, pos, run_begin, run_end, dense = _sorted_runs(x, groups)
    ranks = {
        "average": (run_begin + 1 + run_end).double() / 2,
        "min": (run_begin + 1).double(),
        "max": run_end.double(),
        "dense": (dense + 1).double(),
        "ordinal": (pos + 1).double(),
    }[ties]
    has_nan = torch.zeros(int(groups.max()) + 1, dtype=torch.long, device=x.device)
    has_nan.index_add_(0, groups, x.isnan().long())
    out[perm] = torch.where(has_nan[g] > 0, torch.full_like(ranks, math.nan), ranks)
    return out


def spearman(x, y, groups=None, num_groups=None):
    """scipy.stats.spearmanr per group: float64 [num_groups], NaN where undefined."""
    if num_groups is None:
        num_groups = 1 if groups is None else (int(groups.max()) + 1 if groups.numel() else 0)
    groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if groups is None else groups.long()
    rx, ry = rank(x, groups), rank(y, groups)
    sizes = torch.zeros(num_groups, dtype=torch.long, device=x.device).index_add_(0, groups, torch.ones_like(groups))
    cx = rx - (sizes[groups] + 1).double() / 2
    cy = ry - (sizes[groups] + 1).double() / 2
    sums = torch.zeros(3, num_groups, dtype=torch.float64, device=x.device)
    for k, term in enumerate((cx * cy, cx * cx, cy * cy)):
        sums[k].index_add_(0, groups, term)
    rho = (sums[0] / torch.sqrt(sums[1] * sums[2])).clamp(-1, 1)
    defined = (sizes >= 2) & (sums[1] > 0) & (sums[2] > 0)
    return torch.where(defined, rho, torch.full_like(rho, math.nan))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """Greedy NMS within each idxs value on a full IoU matrix: kept indices by score
    descending, ties to the lower index; non-finite boxes or scores are dropped."""
    finite = torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
    cand = finite.nonzero().squeeze(1)
    cand = cand[torch.sort(scores[cand].to(_math_dtype(scores)), descending=True, stable=True).indices]
    b = boxes[cand]
    same = idxs[cand][:, None] == idxs[cand][None, :]
    b = b.to(_math_dtype(b))
    over = (box_iou(b, b) > iou_threshold) & same
    removed = torch.zeros(len(cand), dtype=torch.bool)
    keep = []
    for i in range(len(cand)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i].cpu()
    return cand[torch.tensor(keep, dtype=torch.long, device=cand.device)] if keep else cand[:0]


def nms(boxes, scores, iou_threshold):
    return batched_nms(boxes, scores, torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device), iou_threshold)


def rescored_nms(boxes, scores, iou=None, *, labels=None, batch_index=None, num_images=None, level_index=None,
                 alpha=0.5, score_threshold=0.05, iou_threshold=0.5, pre_nms_top_k=1000, max_detections=100,
                 class_agnostic=False):
    """Plain-PyTorch rescored NMS: returns per image a list of (boxes, scores, labels, indices),
    ordered by score descending, ties to the lower candidate index. Without iou the score is the class
    score (alpha does not apply); a negative flat label marks a padding candidate, never kept."""
    if iou is None:
        alpha = 0
    if boxes.dim() == 3:  # dense: every (point, class) pair, candidate order n * C + c
        b_, n, c = scores.shape
        q = torch.ones(b_, n, dtype=scores.dtype, device=scores.device) if iou is None else iou
        flat_scores = rescore(scores, q[..., None], alpha).reshape(-1)
        points = torch.arange(n, device=boxes.device).repeat_interleave(c)
        images = torch.arange(b_, device=boxes.device).repeat_interleave(n * c)
        cand = dict(
            boxes=boxes[images, points.repeat(b_)], scores=flat_scores,
            labels=torch.arange(c, device=boxes.device).repeat(b_ * n),
            images=images, order=torch.arange(n * c, device=boxes.device).repeat(b_), source=points.repeat(b_),
            levels=(level_index.long().repeat_interleave(c).repeat(b_) if level_index is not None else None),
        )
        num_images = b_
    else:
        m = boxes.shape[0]
        q = torch.ones_like(scores) if iou is None else iou
        images = torch.zeros(m, dtype=torch.long, device=boxes.device) if batch_index is None else batch_index.long()
        rescored = rescore(scores, q, alpha)
        rescored = torch.where(labels >= 0, rescored, torch.full_like(rescored, -math.inf))  # padding candidates
        cand = dict(boxes=boxes, scores=rescored, labels=labels.long(), images=images,
                    order=torch.arange(m, device=boxes.device), source=torch.arange(m, device=boxes.device),
                    levels=level_index.long() if level_index is not None else None)
        # As the wrapper: max(batch_index) + 1 images (none for an empty batch_index), one without batch_index.
        num_images = num_images if num_images is not None else (
            int(images.max()) + 1 if m else (1 if batch_index is None else 0))
    results = []
    for img in range(num_images):
        s = cand["scores"]
        ok = (cand["images"] == img) & torch.isfinite(s) & (s > score_threshold) & torch.isfinite(cand["boxes"]).all(1)
        idx = ok.nonzero().squeeze(1)
        levels = cand["levels"][idx] if cand["levels"] is not None else torch.zeros_like(idx)
        chosen = []
        for lv in levels.unique().tolist():
            sub = idx[levels == lv]
            rank = _rank_order(s[sub], cand["order"][sub])
            chosen.append(sub[rank[: pre_nms_top_k] if pre_nms_top_k >= 0 else rank])
        # Candidate order again (the levels' picks came level by level), so that ties go to the lower index.
        idx = torch.cat(chosen).sort().values if chosen else idx
        keys = torch.zeros_like(idx) if class_agnostic else cand["labels"][idx]
        keep = batched_nms(cand["boxes"][idx], s[idx], keys, iou_threshold)
        idx = idx[keep]
        idx = idx[_rank_order(s[idx], cand["order"][idx])][:max_detections]
        results.append((cand["boxes"][idx], s[idx], cand["labels"][idx], cand["source"][idx]))
    return results


def rescore(cls, q, alpha):
    """The ranking score cls^(1 - alpha) * q^alpha, rounded as the kernels round it at alpha 0, 0.5 (a
    correctly rounded sqrt(cls * q)) and 1. Other alphas are within one ulp of the kernels', whose powf/pow come
    from the C library, which neither torch's nor NumPy's pow reproduces exactly (float32 goes through float64:
    2 values in 2000 differ, against 57 with torch's float32 pow): exact near-ties can order differently there."""
    if alpha == 0:
        return cls * torch.ones_like(q)
    if alpha == 1:
        return q * torch.ones_like(cls)
    if alpha == 0.5:
        return ieee_sqrt(cls * q)
    a = torch.tensor(alpha, dtype=_math_dtype(cls))
    exponents = (float(1 - a), float(a))
    if cls.dtype == torch.float64:
        return cls ** exponents[0] * q ** exponents[1]
    return (cls.double() ** exponents[0]).to(cls.dtype) * (q.double() ** exponents[1]).to(q.dtype)


def ieee_sqrt(x):
    """The correctly rounded square root, as the kernels' sqrtf/sqrt give it. torch 2.14's vectorised CPU sqrt is
    not: one float32 value in five (one float64 in seventy) comes out one ulp off, which reorders near-tied scores.
    float32 and the half types go through float64 (exact: double rounding is harmless for sqrt); float64 through
    NumPy, whose sqrt is the hardware's."""
    if x.dtype == torch.float64:
        with np.errstate(invalid="ignore"):  # a negative input is NaN, as torch.sqrt gives it, without a warning
            return torch.from_numpy(np.sqrt(x.detach().cpu().numpy())).to(x.device)
    return x.double().sqrt().to(x.dtype)


def _rank_order(scores, order):
    """Positions sorted by score descending, then order ascending."""
    by_order = torch.sort(order, stable=True).indices
    return by_order[torch.sort(scores[by_order], descending=True, stable=True).indices]


def assign_fcos(points, gt_boxes, num_gt, strides, regress_ranges, center_sampling_radius=1.5, inclusive=False,
                torchvision_compat=False):
    """FCOS assignment on full [P, G] matrices: matched [B, P], -1 background."""
    out = torch.full((gt_boxes.shape[0], points.shape[0]), -1, dtype=torch.long, device=points.device)
    x, y = points[:, 0:1], points[:, 1:2]
    for b in range(gt_boxes.shape[0]):
        g = gt_boxes[b, : int(num_gt[b])]
        if g.shape[0] == 0:
            continue
        dist = torch.stack([x - g[:, 0], y - g[:, 1], g[:, 2] - x, g[:, 3] - y], dim=2)
        match = dist.min(dim=2).values > 0
        if center_sampling_radius > 0:
            centres = (g[:, :2] + g[:, 2:]) / 2
            reach = (points[:, None, :] - centres[None]).abs().max(dim=2).values
            match &= reach < center_sampling_radius * strides[:, None]
        d = dist.max(dim=2).values
        lo, hi = regress_ranges[:, 0:1], regress_ranges[:, 1:2]
        match &= ((d >= lo) & (d <= hi)) if inclusive else ((d > lo) & (d < hi))
        if torchvision_compat:  # in the kernels' math type: float32, or float64 for float64 boxes
            gm = g.to(_math_dtype(g))
            key = -(1e8 - (gm[:, 2] - gm[:, 0]) * (gm[:, 3] - gm[:, 1]))
        else:
            key = (g[:, 2] - g[:, 0]).clamp(min=0) * (g[:, 3] - g[:, 1]).clamp(min=0)
        keys = torch.where(match, key[None, :], torch.full((), math.inf, dtype=key.dtype, device=key.device))
        best, arg = keys.min(dim=1)
        ok = best < math.inf
        if torchvision_compat:
            ok &= -best >= 1e-5
        out[b] = torch.where(ok, arg, -1)
    return out


def assign_max_iou(anchors, gt_boxes, num_gt, pos_iou_threshold=0.5, neg_iou_threshold=0.4, low_quality="torchvision",
                   min_pos_iou=0.0, gt_max_assign_all=True, ignore_boxes=None, num_ignore=None,
                   ignore_iof_threshold=0.5):
    """Max-IoU assignment on full [G, P] IoU matrices: (matched [B, P], max_iou [B, P])."""
    images, n = gt_boxes.shape[0], anchors.shape[0]
    matched = torch.full((images, n), -1, dtype=torch.long, device=anchors.device)
    max_iou = torch.zeros((images, n), dtype=anchors.dtype, device=anchors.device)
    for b in range(images):
        ignored = torch.zeros(n, dtype=torch.bool, device=anchors.device)
        # mmdetection sends every anchor of an image without GT to the background, ignore regions or not.
        no_gt_mmdet = low_quality == "mmdet" and int(num_gt[b]) == 0
        if ignore_boxes is not None and int(num_ignore[b]) > 0 and not no_gt_mmdet:
            iof = box_iou(anchors, ignore_boxes[b, : int(num_ignore[b])], "iof")
            ignored = iof.max(dim=1).values > ignore_iof_threshold
        g = gt_boxes[b, : int(num_gt[b])]
        if g.shape[0] == 0 or n == 0:  # no GT (or no anchor: nothing to reduce over)
            matched[b] = torch.where(ignored, -2, -1)
            max_iou[b] = torch.where(ignored, -1.0, 0.0).to(anchors.dtype)
            continue
        iou = box_iou(g, anchors)  # [G, P]
        iou[:, ignored] = -1
        best, arg = iou.max(dim=0)
        codes = torch.where(best >= pos_iou_threshold, arg, torch.where(best < neg_iou_threshold, -1, -2))
        codes[ignored] = -2
        gt_best = iou.max(dim=1).values
        is_best = (iou == gt_best[:, None]) & ~ignored[None, :]
        if low_quality == "torchvision":
            restore = is_best.any(dim=0)
            codes[restore] = arg[restore]
        elif low_quality == "mmdet":
            for j in range(g.shape[0]):
                if gt_best[j] < min_pos_iou:
                    continue
                if gt_max_assign_all:
                    codes[is_best[j]] = j
                else:
                    codes[int(iou[j].argmax())] = j
        matched[b], max_iou[b] = codes, best
    return matched, max_iou


def mutual_targets(matched, gt_boxes, gt_labels, box_pred, cls_logits, priors, scale=None, box_coding="distance",
                   gamma_cls=1.0, gamma_loc=1.0):
    """Mutual targets with plain tensor ops: (decoded, iou_target, cls_target, box_weight)."""
    if box_coding == "distance":
        decoded = decode_distance(priors, box_pred, scale)
    else:
        decoded = decode_delta(priors, box_pred)
    positive = matched >= 0
    gt_index = matched.clamp(min=0)
    # Background anchors read GT row 0 and its class, which need not exist (no GT rows, no classes): a spare
    # zero row and class column give them something to read; positives never reach either.
    b_ = gt_boxes.shape[0]
    gt_boxes = torch.cat([gt_boxes, gt_boxes.new_zeros(b_, 1, 4)], 1)
    gt_labels = torch.cat([gt_labels.long(), torch.zeros(b_, 1, dtype=torch.long, device=gt_labels.device)], 1)
    spare_class = torch.cat([cls_logits, cls_logits.new_zeros(*cls_logits.shape[:2], 1)], 2)
    gt = torch.gather(gt_boxes, 1, gt_index[..., None].expand(-1, -1, 4))
    labels = torch.where(positive, torch.gather(gt_labels, 1, gt_index), 0)  # background reads no label
    q = torch.where(positive, box_iou_aligned(decoded, gt), torch.zeros_like(decoded[..., 0]))
    cls_target = torch.zeros_like(spare_class)
    soft = q**gamma_cls
    cls_target.scatter_(2, labels[..., None], torch.where(positive, soft, torch.zeros_like(soft))[..., None])
    cls_target = cls_target[..., :-1]
    p = torch.sigmoid(torch.gather(spare_class, 2, labels[..., None])[..., 0])
    raw = torch.where(positive, p**gamma_loc, torch.zeros_like(p))
    total = raw.sum()
    weight = raw * positive.sum() / total if total > 0 else torch.zeros_like(raw)
    return decoded, q, cls_target, weight


def _ultralytics_ciou(gt, pred):
    """CIoU of broadcastable [..., 4] xyxy boxes with Ultralytics' epsilons, clamped at 0 (NaN -> 0)."""
    eps = 1e-7
    w1, h1 = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1] + eps
    w2, h2 = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1] + eps
    inter = (torch.minimum(gt[..., 2], pred[..., 2]) - torch.maximum(gt[..., 0], pred[..., 0])).clamp(0) * (
        torch.minimum(gt[..., 3], pred[..., 3]) - torch.maximum(gt[..., 1], pred[..., 1])).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(gt[..., 2], pred[..., 2]) - torch.minimum(gt[..., 0], pred[..., 0])
    ch = torch.maximum(gt[..., 3], pred[..., 3]) - torch.minimum(gt[..., 1], pred[..., 1])
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((pred[..., 0] + pred[..., 2] - gt[..., 0] - gt[..., 2]).pow(2)
            + (pred[..., 1] + pred[..., 3] - gt[..., 1] - gt[..., 3]).pow(2)) / 4
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    alpha = v / (1 - iou + v + eps)
    ciou = iou - (rho2 / c2 + v * alpha)
    return torch.where(ciou > 0, ciou, torch.zeros_like(ciou))


def assign_task_aligned(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=13, num_classes=80,
                        alpha=1.0, beta=6.0, eps=1e-9, min_side=16.0, topk2=None):
    """Task-aligned assignment with dense [B, G, A] planes: (labels, bboxes, scores [B, A, C], fg, gt_idx,
    alignment [B, A]). torch.topk decides ties, so on each device it ranks as that device's torch does."""

    def candidates(gt, x, y):
        centre, size = (gt[..., :2] + gt[..., 2:]) / 2, gt[..., 2:] - gt[..., :2]
        size = torch.where(size < min_side, torch.full_like(size, min_side), size)
        region = torch.cat([centre - size / 2, centre + size / 2], -1)[:, :, None, :]  # [B, G, 1, 4]
        return ((x - region[..., 0] > 1e-9) & (y - region[..., 1] > 1e-9) & (region[..., 2] - x > 1e-9)
                & (region[..., 3] - y > 1e-9))

    return _assign_task_aligned(candidates, _ultralytics_ciou, pd_scores, pd_bboxes, anc_points, gt_labels,
                                gt_bboxes, mask_gt, topk, num_classes, alpha, beta, eps, topk2)


def assign_task_aligned_rotated(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=13,
                                num_classes=80, alpha=1.0, beta=6.0, eps=1e-9, min_side=16.0, topk2=None):
    """assign_task_aligned for xywhr boxes: candidates inside the GT's rectangle, edges included (sides under
    min_side widened to it), probiou for CIoU."""

    def candidates(gt, x, y):
        wh = gt[..., 2:4]
        corners = rotated_corners(torch.cat([gt[..., :2], torch.where(wh < min_side, min_side, wh), gt[..., 4:]], -1))
        a, ab, ad = corners[..., 0, :], corners[..., 1, :] - corners[..., 0, :], corners[..., 3, :] - corners[..., 0, :]
        px, py = x - a[..., 0, None], y - a[..., 1, None]
        along_ab = px * ab[..., 0, None] + py * ab[..., 1, None]
        along_ad = px * ad[..., 0, None] + py * ad[..., 1, None]
        return ((along_ab >= 0) & (along_ab <= (ab * ab).sum(-1)[..., None]) & (along_ad >= 0)
                & (along_ad <= (ad * ad).sum(-1)[..., None]))

    def overlap(gt, pred):
        gt, pred = torch.broadcast_tensors(gt, pred)
        return probiou(gt.reshape(-1, 5), pred.reshape(-1, 5)).reshape(gt.shape[:-1]).clamp(min=0)

    return _assign_task_aligned(candidates, overlap, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                                topk, num_classes, alpha, beta, eps, topk2)


def _assign_task_aligned(candidates, overlap, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk,
                         num_classes, alpha, beta, eps, topk2):
    """The rule of both assigners: `candidates(gt, x, y)` the [B, G, A] candidate mask, `overlap(gt, pred)` the
    [B, G, A] overlap (clamped at 0) of broadcast GT and predicted boxes."""
    topk2 = topk2 or topk
    b, n, c = pd_scores.shape
    g, coords = gt_bboxes.shape[1:]
    dt = torch.float64 if any(t.dtype == torch.float64 for t in (pd_scores, pd_bboxes, anc_points, gt_bboxes)) \
        else torch.float32
    dev = pd_scores.device
    if g == 0:
        return (torch.full((b, n), num_classes, dtype=torch.long, device=dev),
                torch.zeros((b, n, coords), dtype=gt_bboxes.dtype, device=dev),
                torch.zeros((b, n, c), dtype=dt, device=dev), torch.zeros((b, n), dtype=torch.bool, device=dev),
                torch.zeros((b, n), dtype=torch.long, device=dev), torch.zeros((b, n), dtype=dt, device=dev))
    labels = gt_labels.reshape(b, g).long()
    valid = mask_gt.reshape(b, g) != 0
    gt = gt_bboxes.to(dt)
    anc = anc_points.to(dt)
    inside = candidates(gt, anc[:, 0], anc[:, 1]) & valid[..., None]  # [B, G, A]
    zero = torch.zeros((), dtype=dt, device=dev)
    # A NaN overlap (only degenerate boxes give one) counts as 0, as in the kernels.
    ov = torch.nan_to_num(overlap(gt[:, :, None, :], pd_bboxes.to(dt)[:, None, :, :]), nan=0.0)
    ov = torch.where(inside, ov, zero)
    score = pd_scores.to(dt).transpose(1, 2).gather(1, labels.clamp(0, c - 1)[:, :, None].expand(b, g, n))
    alignment = torch.where(inside, score.pow(alpha) * ov.pow(beta), zero)
    picked = torch.zeros_like(inside).scatter_(2, alignment.topk(topk, dim=2).indices, True)
    pos = picked & inside
    several = pos.sum(1, keepdim=True) > 1
    best = torch.zeros_like(pos).scatter_(1, ov.argmax(1, keepdim=True), True)
    pos = torch.where(several, best, pos)
    if topk2 != topk:
        pos &= torch.zeros_like(pos).scatter_(2, (alignment * pos).topk(topk2, dim=2).indices, True)
    fg = pos.any(1)
    gt_idx = pos.to(torch.uint8).argmax(1)
    al, ov = alignment * pos, ov * pos
    norm = (al * ov.amax(2, keepdim=True) / (al.amax(2, keepdim=True) + eps)).amax(1)
    norm = torch.where(fg, norm, zero)  # 0 off the positives (0 / 0 with eps=0)
    out_labels = labels.gather(1, gt_idx).clamp(min=0)
    out_boxes = gt_bboxes.gather(1, gt_idx[..., None].expand(b, n, coords))
    scores = torch.zeros((b, n, c), dtype=dt, device=dev).scatter_(2, out_labels.clamp(max=c - 1)[..., None],
                                                                   (norm * fg)[..., None])
    return out_labels, out_boxes, scores, fg, gt_idx, norm * fg


# ---- oriented boxes (docs/method.md, section 2.7) -------------------------------------------------------------


def rotated_corners(boxes):
    """xywhr [..., 5] -> the corners [..., 4, 2] in the order Ultralytics' xywhr2xyxyxyxy gives them."""
    cx, cy, w, h, r = boxes.unbind(-1)
    c, s = torch.cos(r), torch.sin(r)
    u = torch.stack((w / 2 * c, w / 2 * s), -1)
    v = torch.stack((-h / 2 * s, h / 2 * c), -1)
    centre = torch.stack((cx, cy), -1)
    return torch.stack((centre + u + v, centre + u - v, centre - u - v, centre - u + v), -2)


def _inside_rectangle(points, box, tol):
    """points [..., K, 2] inside the rectangle of box [..., 5] (centre at the origin's offset box[..., :2])."""
    c, s = torch.cos(box[..., 4])[..., None], torch.sin(box[..., 4])[..., None]
    dx, dy = points[..., 0] - box[..., 0, None], points[..., 1] - box[..., 1, None]
    along, across = dx * c + dy * s, -dx * s + dy * c
    return ((along.abs() <= box[..., 2, None].clamp(min=0) / 2 + tol)
            & (across.abs() <= box[..., 3, None].clamp(min=0) / 2 + tol))


def _rotated_intersection(a, b):
    """Intersection area of broadcastable xywhr boxes, float64, by another algorithm than the kernels' (which
    clip a by b's half-planes): the polygon's vertices are collected (corners of either box inside the other,
    crossings of their edges), ordered by angle about their mean and summed by the shoelace formula."""
    a, b = torch.broadcast_tensors(a.double(), b.double())
    origin = a[..., :2]
    a = torch.cat((a[..., :2] - origin, a[..., 2:]), -1)  # relative to a's centre: exact far from the origin
    b = torch.cat((b[..., :2] - origin, b[..., 2:]), -1)
    ca = rotated_corners(torch.cat((a[..., :2], a[..., 2:4].clamp(min=0), a[..., 4:]), -1))
    cb = rotated_corners(torch.cat((b[..., :2], b[..., 2:4].clamp(min=0), b[..., 4:]), -1))
    scale = torch.maximum(a[..., 2:4].abs().amax(-1), b[..., 2:4].abs().amax(-1))[..., None]
    tol = 1e-9 * scale
    in_b, in_a = _inside_rectangle(ca, b, tol), _inside_rectangle(cb, a, tol)
    # Edge crossings: edge i of a (p, p + r) and edge j of b (q, q + t).
    p, q = ca[..., :, None, :], cb[..., None, :, :]
    r = (torch.roll(ca, -1, -2) - ca)[..., :, None, :]
    t = (torch.roll(cb, -1, -2) - cb)[..., None, :, :]
    cross = r[..., 0] * t[..., 1] - r[..., 1] * t[..., 0]
    qp = q - p
    safe = torch.where(cross == 0, torch.ones_like(cross), cross)
    ta = (qp[..., 0] * t[..., 1] - qp[..., 1] * t[..., 0]) / safe
    tb = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    hit = (cross != 0) & (ta >= 0) & (ta <= 1) & (tb >= 0) & (tb <= 1)
    crossings = (p + ta[..., None] * r).flatten(-3, -2)
    points = torch.cat((ca, cb, crossings), -2)
    valid = torch.cat((in_b, in_a, hit.flatten(-2)), -1)
    count = valid.sum(-1, keepdim=True)
    mean = (points * valid[..., None]).sum(-2) / count.clamp(min=1)
    angle = torch.atan2(points[..., 1] - mean[..., None, 1], points[..., 0] - mean[..., None, 0])
    order = torch.where(valid, angle, torch.full_like(angle, math.inf)).argsort(-1)
    points = points.gather(-2, order[..., None].expand_as(points))
    valid = valid.gather(-1, order)
    points = torch.where(valid[..., None], points, points[..., :1, :])  # padding repeats the first vertex
    nxt = torch.roll(points, -1, -2)
    area = (points[..., 0] * nxt[..., 1] - points[..., 1] * nxt[..., 0]).sum(-1).abs() / 2
    area = torch.where(count[..., 0] >= 3, area, torch.zeros_like(area))
    area_a = a[..., 2].clamp(min=0) * a[..., 3].clamp(min=0)
    area_b = b[..., 2].clamp(min=0) * b[..., 3].clamp(min=0)
    return torch.minimum(area, torch.minimum(area_a, area_b)), area_a, area_b


def _rotated_exact_iou(a, b):
    inter, area_a, area_b = _rotated_intersection(a, b)
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), torch.zeros_like(union))
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    return torch.where(finite, iou, torch.full_like(iou, math.nan))


def _rotated_overlap(a, b, mode, eps, floor=0.0):
    if mode == "iou":
        return _rotated_exact_iou(a, b).to(a.dtype)
    compute = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float32
    return probiou(a.to(compute), b.to(compute), mode, eps, floor).to(a.dtype)


def box_iou_rotated(boxes1, boxes2, mode="iou", eps=1e-7):
    """[N,5] x [M,5] -> [N,M] or [B,N,5] x [B,M,5] -> [B,N,M]."""
    return _rotated_overlap(boxes1[..., :, None, :], boxes2[..., None, :, :], mode, eps)


def box_iou_rotated_aligned(boxes1, boxes2, mode="iou", eps=1e-7, floor=0.0):
    return _rotated_overlap(boxes1, boxes2, mode, eps, floor)


def _rotated_candidates(boxes, scores):
    """Finite candidates in detection order (score descending, ties to the lower index)."""
    finite = torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
    cand = finite.nonzero().squeeze(1)
    return cand[torch.sort(scores[cand].to(_math_dtype(scores)), descending=True, stable=True).indices]


def batched_nms_rotated(boxes, scores, idxs, iou_threshold):
    """Greedy NMS over the exact rotated IoU within each idxs value, on a full IoU matrix."""
    cand = _rotated_candidates(boxes, scores)
    b = boxes[cand].to(_math_dtype(boxes))
    over = (box_iou_rotated(b, b) > iou_threshold) & (idxs[cand][:, None] == idxs[cand][None, :])
    removed = torch.zeros(len(cand), dtype=torch.bool)
    keep = []
    for i in range(len(cand)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i].cpu()
    return cand[torch.tensor(keep, dtype=torch.long, device=cand.device)] if keep else cand[:0]


def nms_rotated(boxes, scores, iou_threshold):
    return batched_nms_rotated(boxes, scores, torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device),
                               iou_threshold)


def fast_nms_rotated(boxes, scores, iou_threshold, eps=1e-7):
    """Matrix NMS over probiou: a candidate goes when any candidate before it (kept or not) overlaps it above
    the threshold (Ultralytics' TorchNMS.fast_nms with batch_probiou), on the full N x N matrix."""
    cand = _rotated_candidates(boxes, scores)
    b = boxes[cand]
    over = (box_iou_rotated(b, b, "probiou", eps) > iou_threshold).triu(diagonal=1)
    return cand[~over.any(0)]
