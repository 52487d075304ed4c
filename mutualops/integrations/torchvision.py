"""rescored_nms as the post-processing of torchvision's FCOS and RetinaNet.

    model = torchvision.models.detection.fcos_resnet50_fpn(weights=None)
    from mutualops.integrations import torchvision as mo_torchvision
    mo_torchvision.install(model)   # model.postprocess_detections replaced

The replacement gives the model's own detections (same boxes, scores, labels,
order) in one fused call instead of a Python loop over images and levels:

- FCOS scores sqrt(sigmoid(cls) * sigmoid(centerness)), which is IoU
  rescoring with alpha = 0.5 and centerness in place of the IoU prediction;
- RetinaNet scores sigmoid(cls).

Both keep each level's best `topk_candidates` above `score_thresh`, then run
class-aware NMS per image and keep `detections_per_img`, all of which
rescored_nms does with level_index. Scores are computed per image and level
with torch ops, as torchvision does, so that they are bit-identical: torch's
CPU sqrt is not correctly rounded (1 ulp off on about a sixth of float inputs),
while rescored_nms's own alpha = 0.5 path is, so FCOS's sqrt is taken here and
passed with alpha = 0. Among exactly tied scores the order is ours (lower
index first), where torchvision's follows torch.sort.
"""

from __future__ import annotations

import types

import torch
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.ops import boxes as box_ops

from ..ops.nms import rescored_nms


def install(model: FCOS | RetinaNet) -> FCOS | RetinaNet:
    """Replaces the model's ``postprocess_detections`` with one rescored_nms call.

    Args:
        model (FCOS or RetinaNet): a torchvision detector instance; changed in place.

    Returns:
        The same model.

    Raises:
        TypeError: a model that is neither FCOS nor RetinaNet.
    """
    if isinstance(model, FCOS):
        model.postprocess_detections = types.MethodType(_fcos_postprocess, model)
    elif isinstance(model, RetinaNet):
        model.postprocess_detections = types.MethodType(_retinanet_postprocess, model)
    else:
        raise TypeError(f"model must be a torchvision FCOS or RetinaNet, got {type(model).__name__}")
    return model


def _per_image_and_level(fn, *per_level):
    """[B, N, K] from per-level [B, HWA, *] head outputs, fn applied per image and level."""
    images = per_level[0][0].shape[0]
    levels = range(len(per_level[0]))
    return torch.stack([torch.cat([fn(*(t[lv][b] for t in per_level)) for lv in levels]) for b in range(images)])


def _level_index(per_level):
    return torch.cat([torch.full((t.shape[1],), i, dtype=torch.long, device=t.device) for i, t in enumerate(per_level)])


def _clip(boxes, image_shapes):
    return torch.stack([box_ops.clip_boxes_to_image(boxes[b], shape) for b, shape in enumerate(image_shapes)])


def _detections(model, boxes, scores, per_level):
    det = rescored_nms(
        boxes, scores, alpha=0.0, level_index=_level_index(per_level), num_levels=len(per_level),
        score_threshold=float(model.score_thresh),
        iou_threshold=float(model.nms_thresh), pre_nms_top_k=int(model.topk_candidates),
        max_detections=int(model.detections_per_img), fixed_shape=True,
    )
    return [
        {"boxes": det.boxes[b, :n], "scores": det.scores[b, :n], "labels": det.labels[b, :n]}
        for b, n in enumerate(det.counts.tolist())
    ]


def _fcos_postprocess(self, head_outputs, anchors, image_shapes):
    scores = _per_image_and_level(
        lambda cls, ctr: torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)),
        head_outputs["cls_logits"], head_outputs["bbox_ctrness"],
    )
    regression = torch.cat(head_outputs["bbox_regression"], dim=1)
    points = torch.stack([torch.cat(a) for a in anchors])
    boxes = _clip(self.box_coder.decode(regression, points), image_shapes)
    return _detections(self, boxes, scores, head_outputs["cls_logits"])


def _retinanet_postprocess(self, head_outputs, anchors, image_shapes):
    scores = _per_image_and_level(torch.sigmoid, head_outputs["cls_logits"])
    regression = torch.cat(head_outputs["bbox_regression"], dim=1)
    anchor_boxes = torch.stack([torch.cat(a) for a in anchors])
    decoded = self.box_coder.decode_single(regression.reshape(-1, 4), anchor_boxes.reshape(-1, 4))
    boxes = _clip(decoded.reshape(anchor_boxes.shape), image_shapes)
    return _detections(self, boxes, scores, head_outputs["cls_logits"])
