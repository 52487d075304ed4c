"""mutualops: fused C++/CUDA torch ops for harmonized one-stage object detection."""

import torch

from . import _extension

_BUILD = _extension.load()

from .ops.assign import MutualTargets, assign_and_label, assign_fcos, assign_max_iou, mutual_targets  # noqa: E402
from .ops.box_iou import box_iou, box_iou_aligned, iou_loss  # noqa: E402
from .ops.nms import Detections, batched_nms, nms, rescored_nms  # noqa: E402
from .ops.ranking import rank, spearman  # noqa: E402
from .ops.rotated import (  # noqa: E402
    batched_nms_rotated, box_iou_rotated, box_iou_rotated_aligned, fast_nms_rotated, nms_rotated)
from .ops.task_aligned import TaskAlignedTargets, assign_task_aligned, assign_task_aligned_rotated  # noqa: E402
from . import metrics  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """Versions the extension was built with, and the backends it has kernels for.

    Returns:
        dict: mutualops, torch_built, torch_runtime, cuda_built, cuda_arch_list and backends ("cpu", "cuda").
    """
    return {
        "mutualops": __version__,
        "torch_built": _BUILD.TORCH_VERSION,
        "torch_runtime": torch.__version__,
        "cuda_built": _BUILD.CUDA_VERSION,
        "cuda_arch_list": _BUILD.CUDA_ARCH_LIST,
        "backends": [name for name in ("cpu", "cuda") if _extension.has_backend(name.upper())],
    }


__all__ = [
    "box_iou", "box_iou_aligned", "iou_loss", "nms", "batched_nms", "rescored_nms", "Detections", "assign_fcos",
    "assign_max_iou", "mutual_targets", "assign_and_label", "MutualTargets", "assign_task_aligned",
    "TaskAlignedTargets", "rank", "spearman", "box_iou_rotated", "box_iou_rotated_aligned", "nms_rotated",
    "batched_nms_rotated", "fast_nms_rotated", "assign_task_aligned_rotated", "metrics", "build_info",
]
