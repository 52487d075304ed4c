"""Ops without a gradient (selections, indices, ranks, assignment targets) return outputs that do not claim
requires_grad when their inputs do: a loss built on one fails at backward() with torch's clear error instead of
training on nothing (torch's fallback for ops without an autograd kernel set requires_grad and warned)."""

import warnings

import pytest
import torch

import mutualops
from helpers import DEVICES, random_boxes


def outputs(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in outputs(item)] if isinstance(value, (tuple, list)) else []


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_of_ops_without_a_gradient_do_not_require_grad(device, gen):
    boxes = random_boxes(30, generator=gen).to(device).requires_grad_()
    scores = torch.rand(30, generator=gen).to(device).requires_grad_()
    dense_scores = torch.rand(2, 30, 3, generator=gen).to(device).requires_grad_()
    gt = random_boxes(5, batch=2, generator=gen).to(device).requires_grad_()
    x = torch.randn(40, generator=gen).to(device).requires_grad_()
    y = torch.randn(40, generator=gen).to(device).requires_grad_()
    groups = torch.arange(40, device=device) // 10
    points = (torch.rand(30, 2, generator=gen) * 100).to(device)
    rotated = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2], scores[:, None]], 1)
    labels, mask = torch.zeros(2, 5, device=device), torch.ones(2, 5, device=device)
    rotated_gt = torch.cat([(gt[..., :2] + gt[..., 2:]) / 2, gt[..., 2:] - gt[..., :2], gt[..., :1] * 0], -1)
    calls = {
        "nms": lambda: mutualops.nms(boxes, scores, 0.5),
        "batched_nms": lambda: mutualops.batched_nms(boxes, scores, groups[:30], 0.5),
        "rescored_nms": lambda: mutualops.rescored_nms(boxes[None].expand(2, -1, -1), dense_scores,
                                                       scores[None].expand(2, -1), score_threshold=0.0),
        "assign_max_iou": lambda: mutualops.assign_max_iou(boxes, gt),
        "assign_fcos": lambda: mutualops.assign_fcos(points, gt, strides=torch.full((30,), 8.0, device=device),
                                                     regress_ranges=torch.tensor([[0.0, 1e8]], device=device)
                                                     .expand(30, 2)),
        "rank": lambda: mutualops.rank(x, groups),
        "spearman": lambda: mutualops.spearman(x, y, groups),
        "box_iou_rotated": lambda: mutualops.box_iou_rotated(rotated, rotated),
        "box_iou_rotated probiou": lambda: mutualops.box_iou_rotated(rotated, rotated, "probiou"),
        "nms_rotated": lambda: mutualops.nms_rotated(rotated, scores, 0.5),
        "batched_nms_rotated": lambda: mutualops.batched_nms_rotated(rotated, scores, groups[:30], 0.5),
        "fast_nms_rotated": lambda: mutualops.fast_nms_rotated(rotated, scores, 0.5),
        "raw assign_task_aligned": lambda: torch.ops.mutualops.assign_task_aligned(
            dense_scores, boxes[None].expand(2, -1, -1), points, labels, gt, mask, 3, 3, 3, 0.5, 6.0, 1e-9, 16.0, True),
        "raw assign_task_aligned_rotated": lambda: torch.ops.mutualops.assign_task_aligned_rotated(
            dense_scores, rotated[None].expand(2, -1, -1), points, labels, rotated_gt, mask, 3, 3, 3, 0.5, 6.0, 1e-9,
            16.0, True),
        "raw rank": lambda: torch.ops.mutualops.rank(x, groups, "average"),
        "raw spearman": lambda: torch.ops.mutualops.spearman(x, y, groups, 4),
    }
    for name, call in calls.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "autograd kernel was not registered" warning included
            result = outputs(call())
        assert result and not any(t.requires_grad for t in result), name
    with pytest.raises(RuntimeError, match="does not require grad"):
        mutualops.spearman(x, y, groups).sum().backward()
