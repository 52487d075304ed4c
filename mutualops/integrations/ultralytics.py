"""mutualops inside an unmodified Ultralytics YOLO (8.4.x) training, validation
and prediction::

    from mutualops.integrations import ultralytics as mo_ultralytics
    mo_ultralytics.install()   # then train / val / predict as usual

or, without touching the script, for every process Ultralytics starts (the
``yolo`` command, its DDP workers, dataloader workers)::

    MUTUALOPS_ULTRALYTICS=1 yolo detect train data=... model=yolov8n.yaml

``install()`` swaps three hot paths for mutualops ops: the task-aligned
assigners inside the detection and OBB losses (``TaskAlignedAssigner.forward``
for the plain detection assigner and ``RotatedTaskAlignedAssigner``; the
segment and pose subclasses, and any other subclass, keep theirs),
``ultralytics.utils.nms.non_max_suppression`` (for axis-aligned boxes;
end-to-end outputs keep Ultralytics' code) and, inside its rotated (OBB)
path, the matrix NMS over probiou (``TorchNMS.fast_nms`` with
``batch_probiou``: mutualops.fast_nms_rotated, the same keeps in O(N) memory
instead of an N x N matrix). ``uninstall()`` restores all three. Results are Ultralytics' own except where documented in
docs/method.md ("Using mutualops in Ultralytics"): the NMS has no time limit
(every image gets its detections), separates classes exactly instead of
offsetting boxes by ``class * max_wh`` in float32, and orders exact score ties
by index. A batch the assignment op refuses (non-finite predictions after an
fp16 overflow, a negative or fractional label, topk above the anchor
count...) goes to Ultralytics' own assigner, so that it gives Ultralytics'
result or raises Ultralytics' own error, and Ultralytics' NaN recovery keeps
working.
"""

from __future__ import annotations

import torch

from .._extension import has_backend
from ..ops.nms import batched_nms
from ..ops.rotated import fast_nms_rotated
from ..ops.task_aligned import assign_task_aligned, assign_task_aligned_rotated

_originals = {}


def _modules():
    try:
        from ultralytics.utils import nms as nms_module
        from ultralytics.utils import tal
    except ImportError as e:
        raise ImportError("mutualops.integrations.ultralytics needs the ultralytics package "
                          "(pip install ultralytics)") from e
    return tal, nms_module


def install(announce: str | None = None) -> None:
    """Routes Ultralytics' detection and OBB assigners and its NMS through mutualops (idempotent).

    Args:
        announce (str, optional): what asked for it, logged once through Ultralytics' logger (the
            MUTUALOPS_ULTRALYTICS hook passes it).

    Raises:
        ImportError: ultralytics is not installed.
    """
    tal, nms_module = _modules()
    if _originals:
        return
    _originals["forward"] = tal.TaskAlignedAssigner.forward
    _originals["non_max_suppression"] = nms_module.non_max_suppression
    _originals["assigner_classes"] = (tal.TaskAlignedAssigner, tal.RotatedTaskAlignedAssigner)
    _originals["fast_nms"] = nms_module.TorchNMS.__dict__["fast_nms"]
    tal.TaskAlignedAssigner.forward = _assigner_forward
    nms_module.non_max_suppression = non_max_suppression
    nms_module.TorchNMS.fast_nms = staticmethod(_fast_nms)
    if announce:
        _logger().info(f"mutualops: Ultralytics' task-aligned assigner and NMS run on mutualops ({announce})")


def uninstall() -> None:
    """Restores Ultralytics' own assigners and NMS (idempotent)."""
    if not _originals:
        return
    tal, nms_module = _modules()
    tal.TaskAlignedAssigner.forward = _originals["forward"]
    nms_module.non_max_suppression = _originals["non_max_suppression"]
    nms_module.TorchNMS.fast_nms = _originals["fast_nms"]
    _originals.clear()
    global _fallbacks
    _fallbacks = 0


def installed() -> bool:
    """Whether install() is in effect."""
    return bool(_originals)


def _has_kernels(device):
    """mutualops has CPU and (when built with them) CUDA kernels; MPS, XPU, NPU... keep Ultralytics' code."""
    return device.type in ("cpu", "cuda") and has_backend(device.type.upper())


def _logger():
    from ultralytics.utils import LOGGER

    return LOGGER


def _assigner_forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra):
    # Other subclasses (segment, pose, a user's) redefine overlaps or candidates, and extra inputs feed those:
    # they keep Ultralytics' implementation.
    detection, rotated = _originals["assigner_classes"]
    assign = {detection: assign_task_aligned, rotated: assign_task_aligned_rotated}.get(type(self))
    if assign is None or extra or not _has_kernels(pd_scores.device):
        return _originals["forward"](self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra)
    try:
        with torch.no_grad():
            return tuple(assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=self.topk,
                                num_classes=self.num_classes, alpha=self.alpha, beta=self.beta, eps=self.eps,
                                stride=[self.stride_val], topk2=self.topk2))
    except (TypeError, ValueError) as e:
        refused = e
    # Outside the except block, so that the traceback does not hold the refused attempt's tensors.
    global _fallbacks
    if not _fallbacks:
        _logger().warning(f"mutualops: {refused}; Ultralytics' own assigner takes such batches")
    _fallbacks += 1
    return _originals["forward"](self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)


_fallbacks = 0  # batches handed back to Ultralytics' assigner since install(); the first is logged


def fallbacks() -> int:
    """How many assignments since install() went to Ultralytics' own assigner because mutualops refused them."""
    return _fallbacks


def _fast_nms(boxes, scores, iou_threshold, use_triu=True, iou_func=None, exit_early=True):
    """``TorchNMS.fast_nms``: with ``batch_probiou`` (the rotated path of non_max_suppression) on mutualops'
    matrix NMS; any other overlap, the export-friendly ``use_triu=False`` form, a device without kernels or
    input the op refuses keep Ultralytics' code. Non-finite boxes or scores are never kept (Ultralytics keeps
    a NaN box, which its NaN overlaps never suppress)."""
    original = _originals["fast_nms"].__func__
    nms_module = _modules()[1]
    if iou_func is None:
        return original(boxes, scores, iou_threshold, use_triu, exit_early=exit_early)
    if (use_triu and iou_func is nms_module.batch_probiou and isinstance(boxes, torch.Tensor)
            and _has_kernels(boxes.device) and not torch.compiler.is_compiling()):
        try:
            return fast_nms_rotated(boxes, scores, iou_threshold)
        except (TypeError, ValueError):
            pass
    return original(boxes, scores, iou_threshold, use_triu, iou_func, exit_early)


def non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, max_det=300, nc=0, max_time_img=0.05, max_nms=30000, max_wh=7680,
                        rotated=False, end2end=False, return_idxs=False):
    """Ultralytics' ``non_max_suppression`` on mutualops' batched NMS: the
    same arguments and results (a list of [n, 6 + extra] rows (x1, y1, x2, y2,
    conf, class, extra...) per image, and the kept input indices with
    ``return_idxs``), one NMS call per image and no time limit. ``max_time_img`` and ``max_wh`` are accepted and unused."""
    pred = prediction[0] if isinstance(prediction, (list, tuple)) else prediction
    # Rotated boxes keep Ultralytics' loop, whose matrix NMS install() routes to mutualops.
    if rotated or end2end or pred.shape[-1] == 6 or not _has_kernels(pred.device):
        return _originals.get("non_max_suppression", _modules()[1].non_max_suppression)(
            prediction, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, nc, max_time_img, max_nms,
            max_wh, rotated, end2end, return_idxs)
    for name, value in (("conf_thres", conf_thres), ("iou_thres", iou_thres)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if pred.dim() != 3:
        raise ValueError(f"prediction must have shape [B, 4 + nc + extra, N], got {list(pred.shape)}")
    bs, channels, _ = pred.shape
    nc = nc or channels - 4
    if nc < 1 or 4 + nc > channels:
        raise ValueError(f"nc must be in [1, {channels - 4}] for {channels} channels, got {nc}")
    out_dtype = torch.promote_types(pred.dtype, torch.float32)
    rows = pred.transpose(1, 2)  # [B, N, 4 + nc + extra]
    candidates = pred[:, 4:4 + nc].amax(1) > conf_thres  # [B, N]
    # Compared as numbers, as Ultralytics compares its float class column: class 0.5 matches nothing.
    wanted = None if classes is None else torch.as_tensor(classes, device=pred.device).reshape(-1).double()
    output, kept = [], []
    # One image at a time, as Ultralytics' loop, so that only one image's candidates are held.
    for i in range(bs):
        anchor = candidates[i].nonzero()[:, 0]
        detections, index = _image_detections(rows[i], anchor, nc, conf_thres, iou_thres, wanted, agnostic,
                                              multi_label and nc > 1, max_det, max_nms)
        if detections is None:  # no candidate: Ultralytics' placeholders
            output.append(torch.zeros((0, 2 + channels - nc), device=pred.device))
            kept.append(torch.zeros((0, 1), device=pred.device))
        else:
            output.append(detections.to(out_dtype))
            kept.append(index)
    return (output, kept) if return_idxs else output


def _image_detections(rows, anchor, nc, conf_thres, iou_thres, wanted, agnostic, multi_label, max_det, max_nms):
    """One image's detections [n, 6 + extra] and their input indices, by decreasing score; (None, None) when
    no candidate passes the thresholds and the class filter."""
    cls = rows[anchor, 4:4 + nc]
    if multi_label:
        row, label = torch.where(cls > conf_thres)
        anchor, score = anchor[row], cls[row, label]
    else:
        score, label = cls.max(1)
    if wanted is not None:
        keep = torch.isin(label.double(), wanted)
        anchor, label, score = anchor[keep], label[keep], score[keep]
    if score.numel() == 0:
        return None, None
    if score.numel() > max_nms:  # the highest scores, ties to the lower index, back in input order
        top = torch.sort(torch.sort(score, descending=True, stable=True).indices[:max_nms]).values
        anchor, label, score = anchor[top], label[top], score[top]
    xywh = rows[anchor, :4]
    half = xywh[:, 2:] / 2
    boxes = torch.cat([xywh[:, :2] - half, xywh[:, :2] + half], 1)
    keep = batched_nms(boxes, score, torch.zeros_like(label) if agnostic else label, float(iou_thres))[:max_det]
    detections = torch.cat([boxes[keep], score[keep, None], label[keep, None].float(), rows[anchor[keep], 4 + nc:]], 1)
    return detections, anchor[keep]
