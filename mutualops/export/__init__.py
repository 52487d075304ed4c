"""ONNX translations of mutualops' ops (docs/method.md, section 2.6), for a model of your own:

    torch.onnx.export(model, args, dynamo=True, custom_translation_table=mutualops.export.translation_table())

The translations use only the default ONNX domain (NonMaxSuppression, TopK, GatherND, ...), so ONNX Runtime,
TensorRT or OpenVINO run the graph without a custom operator. They need only the `onnx` extra
(`pip install ".[onnx]"`); the detector's export command, `python -m mutualops.export`, is
mutualops.detector.export.
"""

import math
from typing import NamedTuple

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import opset18 as op
import torch

MIN_OPSET = 18


def translation_table():
    """ONNX translations of the mutualops ops, for torch.onnx.export's custom_translation_table."""
    ops = torch.ops.mutualops
    return {
        ops.box_iou.default: _box_iou,
        ops.box_iou_aligned.default: _box_iou_aligned,
        ops.nms.default: _nms,
        ops.batched_nms.default: _batched_nms,
        ops.rescored_nms_dense.default: _rescored_nms_dense,
        ops.rescored_nms_flat.default: _rescored_nms_flat,
    }


# ---- translations ---------------------------------------------------------
# The exporter traces them with symbolic tensors: plain Python around onnxscript's op calls, so that the op's
# attributes (mode, alpha, ...) choose the graph at export time.

_FLOAT = ir.DataType.FLOAT
_DOUBLE = ir.DataType.DOUBLE
_INT64 = ir.DataType.INT64
_NUMPY = {_FLOAT: np.float32, _DOUBLE: np.float64, _INT64: np.int64}


def _const(value, dtype):
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=_NUMPY[dtype])))


def _ints(*values):
    return _const(list(values), _INT64)


def _math_type(dtype):
    """The op's arithmetic type (at::opmath_type): float for the half types, else the tensor's own."""
    return _DOUBLE if dtype == _DOUBLE else _FLOAT


def _as(x, dtype):
    return x if x.dtype == dtype else op.Cast(x, to=dtype)


def _refuse_float64_nms(boxes, name):
    # ONNX NonMaxSuppression takes float32 only; float64 NMS would round IoUs and merge scores differently.
    # The NMS translations compute in float32, as the kernels do for the half types.
    if boxes.dtype == _DOUBLE:
        raise TypeError(f"{name}: float64 inputs cannot be exported (ONNX NonMaxSuppression computes in float32); "
                        f"cast boxes and scores to float32 first")


def _min2(a, b):  # box_math.h's min2/max2/clamp_min0, NaN handling included (ONNX Min/Max leave it open)
    return op.Where(op.Less(a, b), a, b)


def _max2(a, b):
    return op.Where(op.Greater(a, b), a, b)


def _clamp0(v, zero):
    return op.Where(op.Greater(v, zero), v, zero)


def _finite(x):
    """x - x == 0: false for a NaN or an infinity, as box_math.h tests it."""
    return op.Equal(op.Sub(x, x), op.CastLike(_const(0.0, _FLOAT), x))


def _safe_div(a, b, zero, one):
    positive = op.Greater(b, zero)
    return op.Where(positive, op.Div(a, op.Where(positive, b, one)), op.Where(op.LessOrEqual(b, zero), zero, b))


def _sides_and_area(x1, y1, x2, y2, zero, nan):
    """box_math.h's box width, height (flipped sides clamped to 0) and area, NaN for a non-finite box."""
    w, h = _clamp0(op.Sub(x2, x1), zero), _clamp0(op.Sub(y2, y1), zero)
    finite = op.And(op.And(_finite(x1), _finite(y1)), op.And(_finite(x2), _finite(y2)))
    return w, h, op.Where(finite, op.Mul(w, h), nan)


def _enclosing_side(a1, a2, b1, b2, zero):
    """The side of the smallest interval enclosing both boxes' corners along one axis, flipped boxes included."""
    return _clamp0(op.Sub(_max2(_max2(a2, b2), _max2(a1, b1)), _min2(_min2(a1, b1), _min2(a2, b2))), zero)


def _aspect_angle(w, h, zero, one, half_pi):
    """atan(w / h) of CIoU's aspect term, pi / 2 for a box of height 0 and width > 0, 0 for a point."""
    tall = op.Greater(h, zero)
    return op.Where(tall, op.Atan(op.Div(w, op.Where(tall, h, one))), op.Where(op.Greater(w, zero), half_pi, zero))


def _overlap(a, b, mode, t, eps=0.0):
    """box_math.h's box_overlap of broadcastable [..., 4] boxes of math type t, operation by operation, so
    that every rounding is the kernel's; the result keeps a trailing axis of 1. eps (IoU losses) is added to
    the union and the enclosing area."""
    loss_eps = _const(eps, t) if eps else None
    zero, one, nan = (_const(v, t) for v in (0.0, 1.0, float("nan")))
    ax1, ay1, ax2, ay2 = op.Split(a, num_outputs=4, axis=-1)
    bx1, by1, bx2, by2 = op.Split(b, num_outputs=4, axis=-1)
    wa, ha, area_a = _sides_and_area(ax1, ay1, ax2, ay2, zero, nan)
    wb, hb, area_b = _sides_and_area(bx1, by1, bx2, by2, zero, nan)
    iw = _clamp0(op.Sub(_min2(ax2, bx2), _max2(ax1, bx1)), zero)
    ih = _clamp0(op.Sub(_min2(ay2, by2), _max2(ay1, by1)), zero)
    inter = op.Mul(iw, ih)
    if mode == "iof":
        return op.Where(op.Equal(area_b, area_b), _safe_div(inter, area_a, zero, one), area_b)
    union = op.Sub(op.Add(area_a, area_b), inter)
    iou = _safe_div(inter, union if loss_eps is None else op.Add(union, loss_eps), zero, one)
    if mode == "iou":
        return iou
    cw, ch = _enclosing_side(ax1, ax2, bx1, bx2, zero), _enclosing_side(ay1, ay2, by1, by2, zero)
    if mode == "giou":
        enclosing = op.Mul(cw, ch)
        denominator = enclosing if loss_eps is None else op.Add(enclosing, loss_eps)
        return op.Where(op.Greater(denominator, zero), op.Sub(iou, op.Div(op.Sub(enclosing, union), denominator)), iou)
    # box_math.h's distance_term_eps: the loss's eps, else torchvision's 1e-7.
    eps, two = loss_eps if eps > 0 else _const(1e-7, t), _const(2.0, t)
    diag2 = op.Add(op.Add(op.Mul(cw, cw), op.Mul(ch, ch)), eps)
    dx = op.Div(op.Add(op.Sub(ax1, bx1), op.Sub(ax2, bx2)), two)  # box_math.h's centre_offset
    dy = op.Div(op.Add(op.Sub(ay1, by1), op.Sub(ay2, by2)), two)
    diou = op.Sub(iou, op.Div(op.Add(op.Mul(dx, dx), op.Mul(dy, dy)), diag2))
    if mode == "diou":
        return diou
    half_pi = _const(1.5707963267948966, t)
    dt = op.Sub(_aspect_angle(wa, ha, zero, one, half_pi), _aspect_angle(wb, hb, zero, one, half_pi))
    v = op.Mul(op.Mul(_const(0.40528473456935109, t), dt), dt)
    alpha = op.Div(v, op.Add(op.Add(op.Sub(one, iou), v), eps))
    return op.Sub(diou, op.Mul(alpha, v))


def _check_mode(mode):
    if mode not in ("iou", "giou", "diou", "ciou", "iof"):
        raise ValueError(f"box_iou mode {mode!r} has no ONNX translation")


def _box_iou(boxes1, boxes2, mode="iou"):
    _check_mode(mode)
    t = _math_type(boxes1.dtype)
    a = op.Unsqueeze(_as(boxes1, t), _ints(-2))  # [..., N, 1, 4]
    b = op.Unsqueeze(_as(boxes2, t), _ints(-3))  # [..., 1, M, 4]
    return _as(op.Squeeze(_overlap(a, b, mode, t), _ints(-1)), boxes1.dtype)


def _box_iou_aligned(boxes1, boxes2, mode="iou", eps=0.0):
    _check_mode(mode)
    t = _math_type(boxes1.dtype)
    return _as(op.Squeeze(_overlap(_as(boxes1, t), _as(boxes2, t), mode, t, eps), _ints(-1)), boxes1.dtype)


def _iou_threshold(threshold):
    """The float32 threshold t with (iou > t) == (double(iou) > threshold) for every float32 iou, as
    nms.h's nms_threshold: torchvision compares float IoUs with a double."""
    t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return _const(t, _FLOAT)


def _box_finite(boxes):
    """[..., 4] -> [...]: all four coordinates finite (a sum of x - x is 0, else NaN)."""
    return op.Equal(op.ReduceSum(op.Sub(boxes, boxes), _ints(-1), keepdims=0), _const(0.0, _FLOAT))


def _size(x, axis):
    return op.Shape(x, start=axis, end=axis + 1)  # [1] int64


def _scalar(x):
    return op.Squeeze(x, _ints(0))


def _greedy_keep(boxes, valid, classes, num_classes, iou_threshold):
    """[B, K] kept flags of greedy NMS over candidate lists [B, K] already in detection order (score
    descending, ties to the lower index): ONNX NonMaxSuppression ranks by a score and leaves the order of equal
    scores open, so it sees each candidate's rank instead (K .. 1, exact in float32 up to 2^24 candidates) and
    never a tie. classes [B, K] in [0, num_classes), or None for one class."""
    k = _size(valid, 1)
    rank = op.Cast(op.Sub(k, op.Range(_scalar(_ints(0)), _scalar(k), _scalar(_ints(1)))), to=_FLOAT)
    zero = _const(0.0, _FLOAT)
    ranked = op.Where(valid, op.Unsqueeze(rank, _ints(0)), zero)
    if classes is None:
        by_class = op.Unsqueeze(ranked, _ints(1))
    else:
        ids = op.Reshape(op.Range(_scalar(_ints(0)), _scalar(num_classes), _scalar(_ints(1))), _ints(1, -1, 1))
        by_class = op.Where(op.Equal(op.Unsqueeze(classes, _ints(1)), ids), op.Unsqueeze(ranked, _ints(1)), zero)
    # ONNX NonMaxSuppression orders each box's corners itself; ours give a flipped box zero width instead.
    x1, y1, x2, y2 = op.Split(boxes, num_outputs=4, axis=-1)
    corners = op.Concat(x1, y1, _max2(x1, x2), _max2(y1, y2), axis=-1)
    selected = op.NonMaxSuppression(corners, by_class, _scalar(k), _iou_threshold(iou_threshold), zero)
    where = op.Gather(selected, _ints(0, 2), axis=1)  # (image, candidate)
    ones = op.Expand(_const(1.0, _FLOAT), _size(selected, 0))
    kept = op.ScatterND(op.Mul(ranked, zero), where, ones)
    return op.Greater(kept, zero), ranked


def _nms_kept(boxes, scores, iou_threshold, idxs, name):
    """Kept indices of greedy NMS, within each idxs value (idxs None: one class), in detection order."""
    _refuse_float64_nms(boxes, name)
    t = _FLOAT
    b, s = _as(boxes, t), _as(scores, t)
    ok = op.And(_finite(s), _box_finite(b))
    order_scores, order = op.TopK(op.Unsqueeze(op.Where(ok, s, _const(-np.inf, t)), _ints(0)), _size(s, 0), axis=1)
    classes = num_classes = None
    if idxs is not None:
        values, _, ids, _ = op.Unique(op.Cast(idxs, to=_INT64), sorted=1)
        classes, num_classes = op.Gather(ids, order, axis=0), _size(values, 0)
    valid = op.Greater(order_scores, _const(-np.inf, t))
    kept, _ = _greedy_keep(op.Gather(b, order, axis=0), valid, classes, num_classes, iou_threshold)
    return op.Compress(op.Squeeze(order, _ints(0)), op.Squeeze(kept, _ints(0)), axis=0)


def _nms(boxes, scores, iou_threshold):
    return _nms_kept(boxes, scores, iou_threshold, None, "nms")


def _batched_nms(boxes, scores, idxs, iou_threshold):
    return _nms_kept(boxes, scores, iou_threshold, idxs, "batched_nms")


def _probability(x, logits):
    """score_math.h's probability: the value, or 1 / (1 + exp(-x)) for a logit."""
    if not logits:
        return x
    one = _const(1.0, _FLOAT)
    return op.Div(one, op.Add(one, op.Exp(op.Neg(x))))


def _rescore(cls, quality, alpha):
    """score_math.h's rescore, its special cases decided on alpha in float32 as the kernel decides them."""
    a = np.float32(alpha) if quality is not None else np.float32(0.0)
    if a == 0:
        return cls
    if a == 1:
        return op.Expand(quality, op.Shape(cls))
    if a == 0.5:
        return op.Sqrt(op.Mul(cls, quality))
    return op.Mul(op.Pow(cls, _const(np.float32(1) - a, _FLOAT)), op.Pow(quality, _const(a, _FLOAT)))


def _candidates(scores, ok, level, num_levels, pre_nms_top_k):
    """[B, P] scores with their candidate flags -> (values, positions) [B, K] of the candidates that enter
    NMS, in detection order (score descending, then position): the best pre_nms_top_k per image, or per image
    and level when level [P] is given. Non-candidates carry -inf."""
    masked = op.Where(ok, scores, _const(-np.inf, _FLOAT))
    p = _size(scores, 1)
    k = p if pre_nms_top_k < 0 else op.Min(_ints(pre_nms_top_k), p)
    if level is None or pre_nms_top_k < 0 or num_levels == 1:
        return op.TopK(masked, k, axis=1)
    values, positions = [], []
    for lv in range(num_levels):
        v, i = op.TopK(op.Where(op.Equal(level, _ints(lv)), masked, _const(-np.inf, _FLOAT)), k, axis=1)
        values.append(v)
        positions.append(i)
    # Back to detection order: by position, then stably by score (TopK puts the lower index first on ties).
    total = op.Mul(_size(values[0], 1), _ints(num_levels))
    positions, perm = op.TopK(op.Concat(*positions, axis=1), total, axis=1, largest=0)
    values, perm = op.TopK(op.GatherElements(op.Concat(*values, axis=1), perm, axis=1), total, axis=1)
    return values, op.GatherElements(positions, perm, axis=1)


def _padded(values, pad, width, slots, ndim=2):
    """[B, width, ...] of ndim axes -> [B, slots, ...], padded with `pad`."""
    # ONNX Pad's pads are every axis' begin, then every axis' end: ndim begins and axis 0's end are 0, axis 1
    # ends slots - width later, the remaining ndim - 2 ends are 0.
    pads = op.Concat(_ints(*([0] * (ndim + 1))), op.Sub(slots, width), _ints(*([0] * (ndim - 2))), axis=0)
    return op.Pad(values, pads, op.CastLike(_const(pad, _FLOAT), values))


def _declared_slots(max_detections, candidate_dims, candidates):
    """The padded width min(max_detections, candidates) [1] as the exported graph declares it (nms.h's
    detection_slots; the op's fake in nms.py). torch.export's symbols for dynamic dimensions are positive
    integers, which turns min(1, candidates) into 1 in the declared shape: with max_detections 1 the graph pads
    to one slot even for no candidate, so that its outputs keep their declared shapes. Other widths stay
    min(max_detections, candidates) in the declared shape and in the graph alike."""
    dynamic = any(not isinstance(d, int) for d in candidate_dims)
    if dynamic and max_detections == 1 and math.prod(d for d in candidate_dims if isinstance(d, int)) > 0:
        return _ints(1)
    return op.Min(_ints(max_detections), candidates)


class _Candidates(NamedTuple):
    """What rescored NMS chose to enter NMS, [B, K] each in detection order (score descending, then position)."""

    values: object  # ranking scores; -inf where the slot holds no candidate
    index: object  # source index of each: the point n (dense) or the element m (flat)
    labels: object  # the candidates' labels, as the outputs report them
    classes: object  # their NMS classes in [0, num_classes): suppression happens within one
    num_classes: object  # [1] int64
    boxes: object  # dense [B, N, 4] or flat [M, 4]: the boxes that index points into

    def boxes_at(self, index):
        """[B, K] source indices -> [B, K, 4] boxes."""
        if self.boxes.shape.rank() == 3:
            return op.GatherND(self.boxes, op.Unsqueeze(index, _ints(-1)), batch_dims=1)
        return op.Gather(self.boxes, index, axis=0)


def _detections(c, slots, iou_threshold, class_agnostic):
    """rescored NMS's padded outputs (boxes, scores, labels, indices, counts) from its candidates c, with
    `slots` [1] per image (_declared_slots)."""
    valid = op.Greater(c.values, _const(-np.inf, _FLOAT))
    kept, ranked = _greedy_keep(_as(c.boxes_at(c.index), _FLOAT), valid, None if class_agnostic else c.classes,
                                c.num_classes, iou_threshold)
    # The first slots hold the kept candidates in detection order: the highest ranks among the kept.
    width = op.Min(slots, _size(c.values, 1))
    top, pick = op.TopK(op.Where(kept, ranked, _const(0.0, _FLOAT)), width, axis=1)
    found = op.Greater(top, _const(0.0, _FLOAT))
    det_index = op.Where(found, op.GatherElements(c.index, pick, axis=1), _ints(-1))
    det_boxes = c.boxes_at(op.Max(det_index, _ints(0)))
    det_boxes = op.Where(op.Unsqueeze(found, _ints(-1)), det_boxes, op.CastLike(_const(0.0, _FLOAT), det_boxes))
    det_scores = _as(op.Where(found, op.GatherElements(c.values, pick, axis=1), _const(0.0, _FLOAT)), c.boxes.dtype)
    det_labels = op.Where(found, op.GatherElements(c.labels, pick, axis=1), _ints(-1))
    counts = op.ReduceSum(op.Cast(found, to=_INT64), _ints(1), keepdims=0)
    return (_padded(det_boxes, 0.0, width, slots, ndim=3), _padded(det_scores, 0.0, width, slots),
            _padded(det_labels, -1, width, slots), _padded(det_index, -1, width, slots), counts)


def _rescored_nms_dense(boxes, scores, iou=None, level_index=None, num_levels=1, alpha=0.5, score_threshold=0.05,
                        iou_threshold=0.5, pre_nms_top_k=1000, max_detections=100, class_agnostic=False, logits=False):
    _refuse_float64_nms(boxes, "rescored_nms")
    t = _FLOAT
    cls = _probability(_as(scores, t), logits)  # [B, N, C]
    quality = None if iou is None else op.Unsqueeze(_probability(_as(iou, t), logits), _ints(-1))
    s = _rescore(cls, quality, alpha)
    ok = op.And(op.Unsqueeze(_box_finite(_as(boxes, t)), _ints(-1)),
                op.And(_finite(s), op.Greater(s, _const(np.float32(score_threshold), t))))
    num_classes = _size(scores, 2)
    # Candidate (n, c) sits at position n * C + c: the kernel's candidate order.
    level = None if level_index is None else op.Reshape(
        op.Expand(op.Unsqueeze(op.Cast(level_index, to=_INT64), _ints(-1)), op.Concat(_size(scores, 1), num_classes, axis=0)),
        _ints(-1))
    values, positions = _candidates(op.Reshape(s, _ints(0, -1)), op.Reshape(ok, _ints(0, -1)), level, num_levels,
                                    pre_nms_top_k)
    label = op.Mod(positions, num_classes)
    # Dense labels are class ids 0 .. C - 1 already: they are the NMS classes too.
    c = _Candidates(values, op.Div(positions, num_classes), labels=label, classes=label, num_classes=num_classes,
                    boxes=boxes)
    slots = _declared_slots(max_detections, scores.shape[1:], op.Mul(_size(scores, 1), num_classes))
    return _detections(c, slots, iou_threshold, class_agnostic)


def _rescored_nms_flat(boxes, scores, labels, iou=None, batch_index=None, level_index=None, num_levels=1, num_images=1,
                       alpha=0.5, score_threshold=0.05, iou_threshold=0.5, pre_nms_top_k=1000, max_detections=100,
                       class_agnostic=False, logits=False):
    _refuse_float64_nms(boxes, "rescored_nms")
    t = _FLOAT
    quality = None if iou is None else _probability(_as(iou, t), logits)
    s = _rescore(_probability(_as(scores, t), logits), quality, alpha)  # [M]
    labels = op.Cast(labels, to=_INT64)
    # A negative label marks a padding candidate, as in the kernel: never kept.
    ok = op.And(op.And(_box_finite(_as(boxes, t)), op.GreaterOrEqual(labels, _ints(0))),
                op.And(_finite(s), op.Greater(s, _const(np.float32(score_threshold), t))))
    image = op.Range(_scalar(_ints(0)), _scalar(_ints(num_images)), _scalar(_ints(1)))
    if batch_index is not None:
        ok = op.And(op.Unsqueeze(ok, _ints(0)),
                    op.Equal(op.Unsqueeze(op.Cast(batch_index, to=_INT64), _ints(0)), op.Unsqueeze(image, _ints(-1))))
    else:
        ok = op.And(op.Unsqueeze(ok, _ints(0)), op.Unsqueeze(op.Equal(image, _ints(0)), _ints(-1)))
    s = op.Expand(op.Unsqueeze(s, _ints(0)), op.Shape(ok))  # [I, M]
    level = None if level_index is None else op.Cast(level_index, to=_INT64)
    values, positions = _candidates(s, ok, level, num_levels, pre_nms_top_k)
    # NMS classes must be 0 .. U - 1: the labels' ranks among their distinct values.
    distinct, _, compact, _ = op.Unique(labels, sorted=1)
    c = _Candidates(values, positions, labels=op.Gather(labels, positions, axis=0),
                    classes=op.Gather(compact, positions, axis=0), num_classes=_size(distinct, 0), boxes=boxes)
    slots = _declared_slots(max_detections, boxes.shape[:1], _size(boxes, 0))
    return _detections(c, slots, iou_threshold, class_agnostic)


def max_opset():
    """The newest opset the installed onnx knows, thus the newest its version converter can produce."""
    return onnx.defs.onnx_opset_version()
