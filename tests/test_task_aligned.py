"""Task-aligned assignment against Ultralytics' TaskAlignedAssigner (the peer),
the dense reference, and on hostile input."""

import pytest
import torch

import mutualops
from helpers import DEVICES
from mutualops import reference

try:
    from ultralytics.utils.tal import TaskAlignedAssigner
except ImportError:  # only on the GPU machine, which has no package registry; CI installs ultralytics
    TaskAlignedAssigner = None

SMALL_GRID = ((8, 8), (4, 4), (2, 2))  # 84 anchors: torch.topk takes its nth_element path
YOLO_GRID = ((80, 80), (40, 40), (20, 20))  # 8400 anchors: its partial_sort path
STRIDES = (8, 16, 32)


def anchors_for(grid, device="cpu"):
    """Ultralytics' anchor points in pixels: cell centres of each level, row-major."""
    points = []
    for (h, w), s in zip(grid, STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * s)
    return torch.cat(points).to(device)


def scene(gen, grid=SMALL_GRID, images=2, gts=6, classes=4, kind="random", device="cpu"):
    """(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) as Ultralytics' loss passes them:
    float labels, padded rows (zeros, mask 0) at the end of image 0."""
    anc = anchors_for(grid)
    n, size = anc.shape[0], grid[0][0] * STRIDES[0]
    xy = torch.rand(images, gts, 2, generator=gen) * size
    span = 12.0 if kind == "small" else size / 3
    wh = torch.rand(images, gts, 2, generator=gen) * span + 1
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    if kind == "edges":  # anchor points exactly on GT edges
        gt[..., :2] = torch.floor(gt[..., :2] / 8) * 8 + 4
        gt[..., 2:] = gt[..., :2] + 8 * torch.randint(2, 8, (images, gts, 2), generator=gen)
    labels = torch.randint(0, classes, (images, gts, 1), generator=gen).float()
    mask = torch.ones(images, gts, 1)
    if gts > 1:
        mask[0, -1] = 0
        gt[0, -1] = 0
        labels[0, -1] = 0
    pxy = anc[None] + torch.randn(images, n, 2, generator=gen) * 8
    pwh = torch.rand(images, n, 2, generator=gen) * (size / 3) + 1
    pred = torch.cat([pxy - pwh / 2, pxy + pwh / 2], -1)
    if kind == "far":  # every CIoU clamps to 0: top-k among zero alignments, decided by torch's tie order
        pred = pred + 10 * size
    if kind == "crowd":  # many GTs over the same anchors
        gt = gt[:, :1].expand_as(gt) + torch.rand(images, gts, 4, generator=gen) * 6
        gt[..., 2:] = torch.maximum(gt[..., 2:], gt[..., :2] + 2)
    if kind == "corner":  # GTs over the first anchors, most of them with CIoU 0: ties among the first k entries
        gt[:, :, :2] = 0
        gt[:, :, 2:] = torch.rand(images, gts, 2, generator=gen) * 60 + 40
        far = torch.rand(images, n, 1, generator=gen) < 0.9
        pred = torch.where(far, pred + 10 * size, pred)
    if kind == "flipped":  # real rows with x2 < x1 or y2 < y1, as a buggy augmentation leaves them
        gt[:, ::2] = gt[:, ::2][..., [2, 1, 0, 3]]
        gt[:, 1::3] = gt[:, 1::3][..., [0, 3, 2, 1]]
    if kind == "outside":  # GTs partly or wholly beyond the image (and its anchors)
        gt = gt + torch.tensor([-1.0, 1.0, -1.0, 1.0]) * size * torch.rand(images, gts, 1, generator=gen) * 2
    if kind == "degenerate":  # zero-area GTs: points, lines
        gt[:, ::2, 2] = gt[:, ::2, 0]
        gt[:, 1::2, 3] = gt[:, 1::2, 1]
        gt[:, ::3, 2:] = gt[:, ::3, :2]
    if kind == "padding":  # every row padding, with leftover labels and boxes in it
        mask[:] = 0
    scores = torch.rand(images, n, classes, generator=gen)
    if kind == "ties":  # identical predictions: equal alignments everywhere
        scores[:] = 0.5
        pred[:] = gt[:, :1].mean(1, keepdim=True)
    return tuple(t.to(device) for t in (scores, pred, anc, labels, gt, mask))


def ultralytics_assign(args, **kw):
    """Ultralytics' assigner where installed, else the dense reference (torch.topk ranks ties there too)."""
    stride = kw.pop("stride", list(STRIDES))
    classes = args[0].shape[2]
    if TaskAlignedAssigner is None:
        return reference.assign_task_aligned(*args, num_classes=classes, min_side=float(stride[1]), **kw)[:5]
    return TaskAlignedAssigner(num_classes=classes, stride=stride, **kw)(*args)


def assert_same(ours, theirs):
    labels, bboxes, scores, fg, idx = theirs
    torch.testing.assert_close(ours.fg_mask, fg.bool(), rtol=0, atol=0)
    torch.testing.assert_close(ours.target_gt_idx, idx.long(), rtol=0, atol=0)
    torch.testing.assert_close(ours.target_labels, labels.long(), rtol=0, atol=0)
    torch.testing.assert_close(ours.target_bboxes, bboxes, rtol=0, atol=0)
    torch.testing.assert_close(ours.target_scores, scores.to(ours.target_scores.dtype), rtol=0, atol=1e-6)


SETTINGS = [dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0), dict(topk=3, alpha=1.0, beta=2.0),
            dict(topk=10, alpha=0.5, beta=6.0, topk2=4), dict(topk=1, alpha=0.5, beta=6.0),
            # Above the CUDA kernel's per-thread top-k (16): its k rounds over all anchors.
            dict(topk=20, alpha=1.0, beta=6.0, topk2=17)]
KINDS = ["random", "small", "edges", "far", "crowd", "ties", "corner", "flipped", "outside", "degenerate", "padding"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", [SMALL_GRID, YOLO_GRID], ids=["84-anchors", "8400-anchors"])
def test_matches_ultralytics(device, kind, grid, gen):
    for case in range(4 if grid is SMALL_GRID else 1):
        args = scene(gen, grid=grid, kind=kind, gts=[1, 6, 30, 3][case], device=device)
        for kw in SETTINGS:
            ours = mutualops.assign_task_aligned(*args, num_classes=4, stride=list(STRIDES), **kw)
            assert_same(ours, ultralytics_assign(args, **kw))


def anchor_layout(kind, gen):
    """Anchor points that are not Ultralytics' grid: the CPU kernel buckets anchors by position, and must find
    every candidate whatever their layout."""
    if kind == "scattered":
        return torch.rand(300, 2, generator=gen) * 64
    if kind == "duplicates":  # every point twice, on a grid whose lines GT edges fall on
        return (torch.randint(0, 16, (150, 2), generator=gen).float() * 4).repeat_interleave(2, 0)
    if kind == "column":  # one x for all: a single column of cells
        return torch.stack([torch.full((200,), 30.0), torch.rand(200, generator=gen) * 64], 1)
    if kind == "single":
        return torch.tensor([[20.0, 20.0]])
    # "outlier": one anchor far away stretches the grid so that the rest share a few cells
    anc = torch.rand(200, 2, generator=gen) * 64
    anc[7] = torch.tensor([1e30, -1e30])
    return anc


@pytest.mark.parametrize("layout", ["scattered", "duplicates", "column", "single", "outlier"])
def test_anchor_layouts_match_ultralytics(layout, gen):
    for gts in (1, 5, 40):
        anc = anchor_layout(layout, gen)
        n = anc.shape[0]
        xy = torch.rand(2, gts, 2, generator=gen) * 64
        gt = torch.cat([xy, xy + torch.rand(2, gts, 2, generator=gen) * 30], -1)
        gt[:, ::3] = gt[:, ::3].round()  # corners on the anchors' lines
        pred = torch.cat([anc - 3, anc + 3], -1)[None].repeat(2, 1, 1) + torch.randn(2, n, 4, generator=gen)
        args = (torch.rand(2, n, 3, generator=gen), pred, anc, torch.randint(0, 3, (2, gts, 1), generator=gen).float(),
                gt, torch.ones(2, gts, 1))
        for kw in (dict(topk=min(n, 10), alpha=0.5, beta=6.0), dict(topk=1, alpha=1.0, beta=6.0)):
            ours = mutualops.assign_task_aligned(*args, num_classes=3, stride=[4], **kw)
            assert_same(ours, ultralytics_assign(args, stride=[4], **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_many_large_overlapping_gts_match_ultralytics(device, gen):
    # 300 GTs each over most of the image: too many for the CPU kernel to bucket by cell when it resolves the
    # anchors several GTs picked, so that it visits every GT there instead.
    scores, pred, anc, labels, gt, mask = scene(gen, grid=YOLO_GRID, gts=300, device=device)
    corner = torch.rand(2, 300, 2, generator=gen, device=device) * 100
    gt = torch.cat([corner, 640 - corner.flip(-1)], -1)
    args = (scores, pred, anc, labels, gt, mask)
    for kw in (dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0, topk2=5)):
        assert_same(mutualops.assign_task_aligned(*args, num_classes=4, **kw), ultralytics_assign(args, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_reference_matches_ultralytics(device, gen):
    for kind in KINDS:
        args = scene(gen, kind=kind, device=device)
        for kw in SETTINGS:
            labels, bboxes, scores, fg, idx, alignment = reference.assign_task_aligned(*args, num_classes=4, **kw)
            assert_same(mutualops.TaskAlignedTargets(labels, bboxes, scores, fg, idx), ultralytics_assign(args, **kw))
            torch.testing.assert_close(alignment, scores.amax(-1))


@pytest.mark.parametrize("device", DEVICES)
def test_without_gt_and_without_real_gt(device, gen):
    scores, pred, anc, labels, gt, mask = scene(gen, device=device)
    empty = mutualops.assign_task_aligned(scores, pred, anc, labels[:, :0], gt[:, :0], mask[:, :0], num_classes=4)
    assert (empty.target_labels == 4).all() and not empty.fg_mask.any() and not empty.target_scores.any()
    assert empty.target_scores.shape == scores.shape
    # Rows that are all padding, with labels and boxes no GT could have: never read.
    labels[:] = 10**9
    gt[:] = float("nan")
    out = mutualops.assign_task_aligned(scores, pred, anc, labels, gt, torch.zeros_like(mask), num_classes=4)
    assert not out.fg_mask.any() and not out.target_scores.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_inputs_compute_in_float32(device, dtype, gen):
    scores, pred, anc, labels, gt, mask = scene(gen, device=device)
    low = scores.to(dtype)
    ours = mutualops.assign_task_aligned(low, pred, anc, labels, gt, mask, num_classes=4, topk=10, alpha=0.5)
    assert ours.target_scores.dtype == torch.float32
    assert_same(ours, ultralytics_assign((low.float(), pred, anc, labels, gt, mask), topk=10, alpha=0.5))
    with torch.autocast(device_type=device, dtype=dtype):
        again = mutualops.assign_task_aligned(low, pred.to(dtype), anc, labels, gt, mask, num_classes=4, topk=10,
                                              alpha=0.5)
    assert again.target_scores.dtype == torch.float32 and again.target_bboxes.dtype == gt.dtype


@pytest.mark.parametrize("device", DEVICES)
def test_float64_inputs(device, gen):
    args = tuple(t.double() for t in scene(gen, device=device))
    ours = mutualops.assign_task_aligned(*args, num_classes=4, topk=10, alpha=0.5)
    assert ours.target_scores.dtype == torch.float64
    assert_same(ours, ultralytics_assign(args, topk=10, alpha=0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_scores_and_integer_labels(device, gen):
    args = scene(gen, device=device)
    dense = mutualops.assign_task_aligned(*args, num_classes=4)
    scores, pred, anc, labels, gt, mask = args
    sparse = mutualops.assign_task_aligned(scores, pred, anc, labels.long()[..., 0], gt, mask.bool()[..., 0],
                                           num_classes=4, dense_scores=False)
    assert sparse.target_scores.shape == scores.shape[:2]
    torch.testing.assert_close(sparse.target_scores, dense.target_scores.gather(2, dense.target_labels[..., None])[..., 0])
    for a, b in zip(sparse[3:], dense[3:]):
        assert torch.equal(a, b)


def bad(args, **changes):
    names = ["pd_scores", "pd_bboxes", "anc_points", "gt_labels", "gt_bboxes", "mask_gt"]
    values = dict(zip(names, args))
    values.update({k: v for k, v in changes.items() if k in names})
    kw = {k: v for k, v in changes.items() if k not in names}
    kw.setdefault("num_classes", 4)
    return lambda: mutualops.assign_task_aligned(*values.values(), **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device, gen):
    args = scene(gen, device=device)
    scores, pred, anc, labels, gt, mask = args
    nan_scores = scores.clone()
    nan_scores[1, 5, 2] = float("nan")
    wrong_label = labels.clone()
    wrong_label[1, 0] = 4
    half_label = labels.clone()
    half_label[1, 0] = 1.5
    nan_gt = gt.clone()
    nan_gt[1, 2, 0] = float("inf")
    cases = [
        (ValueError, r"pd_scores must be probabilities in \[0, 1\]", dict(pd_scores=nan_scores)),
        (ValueError, r"pd_scores must be probabilities in \[0, 1\]", dict(pd_scores=-scores)),
        # Above 1, score^alpha overflows for alpha > 1 and times a CIoU of 0 makes a NaN alignment.
        (ValueError, r"pd_scores must be probabilities in \[0, 1\]", dict(pd_scores=scores + 1e20)),
        (ValueError, "num_classes", dict(num_classes=5)),
        (ValueError, "gt_labels must be < num_classes", dict(gt_labels=wrong_label)),
        (ValueError, "whole class indices", dict(gt_labels=half_label)),
        (ValueError, "gt_labels must be < num_classes", dict(gt_labels=wrong_label.long())),
        (ValueError, "gt_bboxes holds a non-finite", dict(gt_bboxes=nan_gt)),
        (ValueError, "mask_gt holds NaN", dict(mask_gt=mask * float("nan"))),
        (ValueError, "pd_bboxes must have shape", dict(pd_bboxes=pred[:, :-1])),
        (ValueError, "anc_points must have shape", dict(anc_points=anc[:-1])),
        (ValueError, "gt_labels must have shape", dict(gt_labels=labels[:, :-1])),
        (ValueError, "mask_gt must have shape", dict(mask_gt=mask[:1])),
        (ValueError, "topk must be in", dict(topk=anc.shape[0] + 1)),
        (ValueError, "topk must be in", dict(topk=0)),
        (ValueError, "topk2 must be in", dict(topk2=-1)),
        (ValueError, "beta must be finite", dict(beta=float("nan"))),
        (ValueError, "alpha must be finite", dict(alpha=-1.0)),
        (TypeError, "topk must be an int", dict(topk=2.5)),
        (TypeError, "alpha must be a number", dict(alpha=None)),
        (TypeError, "pd_bboxes must be a floating-point tensor \\(float16", dict(pd_bboxes=pred.long())),
        (TypeError, "gt_bboxes must be a torch.Tensor", dict(gt_bboxes=gt.tolist())),
        (TypeError, "stride must", dict(stride="8")),
        (TypeError, "stride must be a number", dict(stride=[8, None])),
    ]
    for error, message, changes in cases:
        with pytest.raises(error, match=message):
            bad(args, **changes)()


def test_bad_input_on_the_raw_op(gen):
    scores, pred, anc, labels, gt, mask = scene(gen)
    labels[1, 0] = 10**6
    op = torch.ops.mutualops.assign_task_aligned
    with pytest.raises(ValueError, match="gt_labels must be < num_classes"):
        op(scores, pred, anc, labels, gt, mask, 10, 10, 4, 0.5, 6.0, 1e-9, 16.0, True)
    with pytest.raises(ValueError, match="pd_scores must be on the device|num_classes"):
        op(scores, pred, anc, labels, gt, mask, 10, 10, 5, 0.5, 6.0, 1e-9, 16.0, True)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device, gen):
    args = scene(gen, device=device)
    op = torch.ops.mutualops.assign_task_aligned.default
    torch.library.opcheck(op, (*args, 10, 10, 4, 0.5, 6.0, 1e-9, 16.0, True))
    torch.library.opcheck(op, (*args, 10, 4, 4, 0.5, 6.0, 1e-9, 16.0, False))

    def fn(*a):
        return mutualops.assign_task_aligned(*a, num_classes=4, topk=10, alpha=0.5)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for x, y in zip(compiled(*args), fn(*args)):
        torch.testing.assert_close(x, y)


def test_numpy_scalars_and_topk2_zero_as_ultralytics(gen):
    import numpy as np

    args = scene(gen)
    base = mutualops.assign_task_aligned(*args, num_classes=4, topk=10, alpha=0.5)
    same = mutualops.assign_task_aligned(*args, num_classes=np.int64(4), topk=np.int32(10), alpha=np.float32(0.5),
                                         stride=np.array([8, 16, 32]), topk2=0)  # Ultralytics: topk2 or topk
    for a, b in zip(base, same):
        assert torch.equal(a, b)
