"""Pure-PyTorch math the ops and the detector run on (private): the box overlaps' formulas, through which the
double backward of the IoU ops and the rotated probiou backward take their vector-Jacobian products, the
detector's box decoding and loss reduction. mutualops.reference, the tests' oracle, is built on the same
functions, so that what the kernels are checked against and what their backward differentiates is one
formula (docs/method.md, sections 2.1 and 2.7).
"""

import math

import torch

_EPS = 1e-7  # torchvision's eps in the DIoU / CIoU denominators


def math_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def box_overlap(a, b, mode, eps=0.0, alpha=None):
    """Overlap of broadcastable box tensors a and b ([..., 4] each), in a float type; NaN where either box has a
    non-finite coordinate (torchvision's result). eps as in iou_loss; alpha as in box_iou_aligned."""
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    return torch.where(finite, _finite_overlap(a, b, mode, eps, alpha),
                       torch.full((), math.nan, dtype=a.dtype, device=a.device))


def _aspect_angle(box):
    """atan(w / h), pi/2 for h = 0 (0 for a point), as the kernels define the CIoU angle."""
    w, h = (box[..., 2] - box[..., 0]).clamp(min=0), (box[..., 3] - box[..., 1]).clamp(min=0)
    pos = h > 0
    flat = torch.where(w > 0, torch.full_like(w, math.pi / 2), torch.zeros_like(w))
    return torch.where(pos, torch.atan(w / torch.where(pos, h, torch.ones_like(h))), flat)


def _distance_eps(eps):
    return eps if eps > 0 else _EPS


def ciou_alpha(a, b, eps=0.0):
    """CIoU's trade-off weight v / (1 - IoU + v + eps), differentiable (the overlap holds it constant)."""
    v = (4 / math.pi**2) * (_aspect_angle(a) - _aspect_angle(b)) ** 2
    return v / (1 - _finite_overlap(a, b, "iou", eps) + v + _distance_eps(eps))


def _finite_overlap(a, b, mode, eps, alpha=None):
    wa = (a[..., 2] - a[..., 0]).clamp(min=0)
    ha = (a[..., 3] - a[..., 1]).clamp(min=0)
    wb = (b[..., 2] - b[..., 0]).clamp(min=0)
    hb = (b[..., 3] - b[..., 1]).clamp(min=0)
    area_a, area_b = wa * ha, wb * hb
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih

    def safe_div(num, den):  # 0 where den <= 0; a NaN den (an overflowing area) stays NaN, as in the kernels
        pos = den > 0
        return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)),
                           torch.where(den <= 0, torch.zeros_like(num), den))

    if mode == "iof":
        return safe_div(inter, area_a)
    union = area_a + area_b - inter
    iou = safe_div(inter, union + eps)
    if mode == "iou":
        return iou
    def enclosing(i, j):  # over all four coordinates, so that flipped boxes lie inside
        hi = torch.maximum(torch.maximum(a[..., j], b[..., j]), torch.maximum(a[..., i], b[..., i]))
        lo = torch.minimum(torch.minimum(a[..., i], b[..., i]), torch.minimum(a[..., j], b[..., j]))
        return (hi - lo).clamp(min=0)

    cw, ch = enclosing(0, 2), enclosing(1, 3)
    if mode == "giou":
        enclosing = cw * ch
        return torch.where(enclosing + eps > 0, iou - safe_div(enclosing - union, enclosing + eps), iou)
    diag2 = cw * cw + ch * ch + _distance_eps(eps)
    # Centre offsets from the corners' differences (box_math.h's centre_offset): exact for nearby boxes far from
    # the origin, where the centres themselves round.
    dx = ((a[..., 0] - b[..., 0]) + (a[..., 2] - b[..., 2])) / 2
    dy = ((a[..., 1] - b[..., 1]) + (a[..., 3] - b[..., 3])) / 2
    diou = iou - (dx * dx + dy * dy) / diag2
    if mode == "diou":
        return diou
    v = (4 / math.pi**2) * (_aspect_angle(a) - _aspect_angle(b)) ** 2
    if alpha is None:
        with torch.no_grad():  # a constant, as in torchvision's CIoU loss and the kernels' backward
            alpha = v / (1 - iou + v + _distance_eps(eps))
    return diou - alpha * v


def box_iou_aligned(boxes1, boxes2, mode="iou", eps=0.0, alpha=None):
    """[..., 4] x [..., 4] -> [...], differentiable through autograd. CIoU's alpha is a constant computed from the
    boxes unless given (the double backward passes ciou_alpha of the boxes, which its outer level differentiates)."""
    out = box_overlap(boxes1.to(math_dtype(boxes1)), boxes2.to(math_dtype(boxes2)), mode, eps, alpha)
    return out.to(boxes1.dtype)


def reduce_loss(loss, reduction):
    """none, sum, or mean over elements; an empty mean is 0 with a gradient path."""
    if reduction == "none":
        return loss
    if reduction == "sum" or loss.numel() == 0:
        return loss.sum()
    return loss.mean()


# torchvision's BoxCoder clamp of dw and dh, as assign_math.h has it.
DELTA_CLIP = math.log(1000.0 / 16)


def decode_distance(points, ltrb, scale=None):
    """Boxes [..., P, 4] from (l, t, r, b) distances [..., P, 4] to points [P, 2], times scale [P] (the stride
    for normalised distances). Differentiable: the detector decodes its predictions with it."""
    s = torch.ones_like(points[:, 0]) if scale is None else scale
    x, y = points[:, 0], points[:, 1]
    return torch.stack([x - ltrb[..., 0] * s, y - ltrb[..., 1] * s, x + ltrb[..., 2] * s, y + ltrb[..., 3] * s], -1)


def decode_delta(anchors, deltas):
    """Boxes [..., P, 4] from (dx, dy, dw, dh) deltas [..., P, 4] relative to anchors [P, 4], as torchvision's
    BoxCoder with weights (1, 1, 1, 1) (dw, dh clamped at DELTA_CLIP). Differentiable."""
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    dw, dh = deltas[..., 2].clamp(max=DELTA_CLIP), deltas[..., 3].clamp(max=DELTA_CLIP)
    pcx, pcy = deltas[..., 0] * w + cx, deltas[..., 1] * h + cy
    pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)


def _gaussian(boxes, floor=0.0):
    """Ultralytics' covariance of an xywhr box: (a, b, c) of [[a, c], [c, b]], floor added to the variances."""
    p, q = boxes[..., 2].pow(2) / 12 + floor, boxes[..., 3].pow(2) / 12 + floor
    cos, sin = boxes[..., 4].cos(), boxes[..., 4].sin()
    cos2, sin2 = cos.pow(2), sin.pow(2)
    return p * cos2 + q * sin2, p * sin2 + q * cos2, (p - q) * cos * sin


def probiou(obb1, obb2, mode="probiou", eps=1e-7, floor=0.0):
    """Probabilistic IoU (Gaussian Bhattacharyya distance, ICCV 2021) of broadcastable xywhr boxes, as
    Ultralytics' probiou defines it; mode probiou_ciou subtracts CIoU's aspect term with a constant weight."""
    x1, y1, x2, y2 = obb1[..., 0], obb1[..., 1], obb2[..., 0], obb2[..., 1]
    a1, b1, c1 = _gaussian(obb1, floor)
    a2, b2, c2 = _gaussian(obb2, floor)
    sa, sb, sc = a1 + a2, b1 + b2, c1 + c2
    det = sa * sb - sc.pow(2)
    t1 = ((sa * (y1 - y2).pow(2) + sb * (x1 - x2).pow(2)) / (det + eps)) * 0.25
    t2 = ((sc * (x2 - x1) * (y1 - y2)) / (det + eps)) * 0.5
    t3 = (det / (4 * ((a1 * b1 - c1.pow(2)).clamp(0) * (a2 * b2 - c2.pow(2)).clamp(0)).sqrt() + eps) + eps).log() * 0.5
    bd = (t1 + t2 + t3).clamp(eps, 100.0)
    iou = 1 - (1.0 - (-bd).exp() + eps).sqrt()
    if mode == "probiou_ciou":
        v = (4 / math.pi**2) * ((obb2[..., 2] / obb2[..., 3]).atan() - (obb1[..., 2] / obb1[..., 3]).atan()).pow(2)
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        iou = iou - v * alpha
    return iou
