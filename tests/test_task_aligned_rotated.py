"""Task-aligned assignment of oriented boxes against Ultralytics' RotatedTaskAlignedAssigner (the peer), the dense
reference, and on hostile input."""

import math

import pytest
import torch

import mutualops
from helpers import DEVICES
from mutualops import reference
# The detection assigner's parity rule holds here as well: the CPU kernel takes probiou's and the alignment's
# elementary functions (cos, sin, sqrt, log, exp, pow) from torch, as Ultralytics computes them, so that overlaps
# are Ultralytics' bit for bit and target scores differ only by the rounding of the normalisation.
from test_task_aligned import SETTINGS, SMALL_GRID, STRIDES, YOLO_GRID, anchor_layout, anchors_for, assert_same

try:
    from ultralytics.utils.tal import RotatedTaskAlignedAssigner
except ImportError:  # only on the GPU machine, which has no package registry; CI installs ultralytics
    RotatedTaskAlignedAssigner = None


def rotated_scene(gen, grid=SMALL_GRID, images=2, gts=6, classes=4, kind="random", device="cpu"):
    """(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) as Ultralytics' OBB loss passes them:
    xywhr boxes in pixels, float labels, padded rows (zeros, mask 0) at the end of image 0."""
    anc = anchors_for(grid)
    n, size = anc.shape[0], grid[0][0] * STRIDES[0]
    xy = torch.rand(images, gts, 2, generator=gen) * size
    span = 12.0 if kind == "small" else size / 3
    wh = torch.rand(images, gts, 2, generator=gen) * span + 1
    angle = (torch.rand(images, gts, 1, generator=gen) - 0.5) * math.pi
    if kind == "edges":  # axis-aligned or half-turned rectangles whose edges run through anchor points
        xy = torch.floor(xy / 8) * 8
        wh = 8.0 * torch.randint(2, 8, (images, gts, 2), generator=gen)
        xy = xy + (wh / 2) % 8  # corners on the grid lines x = 8k
        angle = torch.tensor([0.0, math.pi, -math.pi])[torch.randint(0, 3, (images, gts, 1), generator=gen)]
    if kind == "turns":  # angles beyond a half turn, at quarter turns, and large
        angle = torch.tensor([math.pi / 2, -math.pi / 2, 2 * math.pi, 10.0, -7.5, math.pi / 4])[
            torch.randint(0, 6, (images, gts, 1), generator=gen)]
    gt = torch.cat([xy, wh, angle], -1)
    labels = torch.randint(0, classes, (images, gts, 1), generator=gen).float()
    mask = torch.ones(images, gts, 1)
    if gts > 1:
        mask[0, -1] = 0
        gt[0, -1] = 0
        labels[0, -1] = 0
    pxy = anc[None] + torch.randn(images, n, 2, generator=gen) * 8
    pwh = torch.rand(images, n, 2, generator=gen) * (size / 3) + 1
    pangle = (torch.rand(images, n, 1, generator=gen) - 0.5) * math.pi
    pred = torch.cat([pxy, pwh, pangle], -1)
    if kind == "far":  # every probiou is at its floor: top-k among equal alignments, decided by torch's tie order
        pred[..., :2] += 10 * size
    if kind == "crowd":  # many GTs over the same anchors
        gt = gt[:, :1].expand_as(gt) + torch.rand(images, gts, 5, generator=gen) * torch.tensor([6, 6, 6, 6, 0.3])
    if kind == "flipped":  # negative widths and heights, as a buggy augmentation leaves them
        gt[:, ::2, 2] *= -1
        gt[:, 1::3, 3] *= -1
    if kind == "outside":  # GTs partly or wholly beyond the image (and its anchors)
        gt[..., :2] += (torch.rand(images, gts, 2, generator=gen) - 0.5) * 4 * size
    if kind == "degenerate":  # zero sides: widened to the stride, or (stride 0) an unbounded strip
        gt[:, ::2, 2] = 0
        gt[:, 1::2, 3] = 0
        gt[:, ::3, 2:4] = 0
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
    if RotatedTaskAlignedAssigner is None:
        min_side = float(stride[1] if len(stride) > 1 else stride[0])
        return reference.assign_task_aligned_rotated(*args, num_classes=classes, min_side=min_side, **kw)[:5]
    return RotatedTaskAlignedAssigner(num_classes=classes, stride=stride, **kw)(*args)


KINDS = ["random", "small", "edges", "turns", "far", "crowd", "ties", "flipped", "outside", "degenerate", "padding"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", [SMALL_GRID, YOLO_GRID], ids=["84-anchors", "8400-anchors"])
def test_matches_ultralytics(device, kind, grid, gen):
    for case in range(4 if grid is SMALL_GRID else 1):
        args = rotated_scene(gen, grid=grid, kind=kind, gts=[1, 6, 30, 3][case], device=device)
        for kw in SETTINGS:
            ours = mutualops.assign_task_aligned_rotated(*args, num_classes=4, stride=list(STRIDES), **kw)
            assert_same(ours, ultralytics_assign(args, **kw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [[0], [4], [64, 128]])
def test_strides_including_none_widened(device, stride, gen):
    # Stride 0 widens nothing: a GT of zero width is then an unbounded strip (its empty edge constrains no
    # projection), which Ultralytics' test accepts and the CPU kernel's bucket grid must not cut.
    for kind in ("degenerate", "random", "small"):
        args = rotated_scene(gen, kind=kind, gts=8, device=device)
        kw = dict(topk=10, alpha=0.5, beta=6.0)
        ours = mutualops.assign_task_aligned_rotated(*args, num_classes=4, stride=stride, **kw)
        assert_same(ours, ultralytics_assign(args, stride=stride, **kw))


@pytest.mark.parametrize("layout", ["scattered", "duplicates", "column", "single", "outlier"])
def test_anchor_layouts_match_ultralytics(layout, gen):
    for gts in (1, 5, 40):
        anc = anchor_layout(layout, gen)
        n = anc.shape[0]
        gt = torch.cat([torch.rand(2, gts, 2, generator=gen) * 64, torch.rand(2, gts, 2, generator=gen) * 30 + 1,
                        (torch.rand(2, gts, 1, generator=gen) - 0.5) * math.pi], -1)
        gt[:, ::3, :4] = gt[:, ::3, :4].round()  # edges on the anchors' lines
        gt[:, ::3, 4] = 0
        # Predicted centres near their anchors, the outlier's too far for probiou (refused): kept in range.
        centres = (anc[None].repeat(2, 1, 1) + torch.randn(2, n, 2, generator=gen)).clamp(-1e6, 1e6)
        pred = torch.cat([centres, torch.full((2, n, 2), 6.0), torch.randn(2, n, 1, generator=gen)], -1)
        args = (torch.rand(2, n, 3, generator=gen), pred, anc, torch.randint(0, 3, (2, gts, 1), generator=gen).float(),
                gt, torch.ones(2, gts, 1))
        for kw in (dict(topk=min(n, 10), alpha=0.5, beta=6.0), dict(topk=1, alpha=1.0, beta=6.0)):
            ours = mutualops.assign_task_aligned_rotated(*args, num_classes=3, stride=[4], **kw)
            assert_same(ours, ultralytics_assign(args, stride=[4], **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_many_large_overlapping_gts_match_ultralytics(device, gen):
    # 300 GTs each over most of the image, at every angle: the CPU kernel visits every GT when it resolves the
    # anchors several GTs picked, as bucketing them by cell would outgrow its memory bound.
    scores, pred, anc, labels, gt, mask = rotated_scene(gen, grid=YOLO_GRID, gts=300, device=device)
    gt = torch.cat([320 + torch.randn(2, 300, 2, generator=gen).to(device) * 30,
                    400 + torch.rand(2, 300, 2, generator=gen).to(device) * 200, gt[..., 4:] * 4], -1)
    args = (scores, pred, anc, labels, gt, mask)
    for kw in (dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0, topk2=5)):
        assert_same(mutualops.assign_task_aligned_rotated(*args, num_classes=4, **kw), ultralytics_assign(args, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_predictions_near_their_gts_match_ultralytics(device, gen):
    # Late in training predictions sit within a fraction of a pixel of their GTs and probiou nears 1, where
    # 1 - sqrt(1 - exp(-bd) + eps) cancels: one ulp of any elementary function moves it by 1e-4, enough to
    # hand an anchor to the other of two near-duplicate GTs. Near-duplicate GTs of other classes included.
    anc = anchors_for(((16, 16), (8, 8), (4, 4)))
    for _ in range(6):
        gt = torch.cat([torch.rand(2, 8, 2, generator=gen) * 128, torch.rand(2, 8, 2, generator=gen) * 60 + 20,
                        (torch.rand(2, 8, 1, generator=gen) - 0.5) * math.pi], -1)
        gt[:, 4:] = gt[:, :4] + torch.randn(2, 4, 5, generator=gen) * torch.tensor([0.02, 0.02, 0.02, 0.02, 1e-4])
        owner = torch.randint(0, 8, (2, anc.shape[0]), generator=gen)
        pred = gt.gather(1, owner[..., None].expand(-1, -1, 5)) + torch.randn(2, anc.shape[0], 5, generator=gen) * \
            torch.tensor([0.05, 0.05, 0.05, 0.05, 1e-3])
        args = tuple(t.to(device) for t in (torch.rand(2, anc.shape[0], 3, generator=gen), pred, anc,
                                             torch.randint(0, 3, (2, 8, 1), generator=gen).float(), gt,
                                             torch.ones(2, 8, 1)))
        for kw in (dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0, topk2=4)):
            assert_same(mutualops.assign_task_aligned_rotated(*args, num_classes=3, **kw),
                        ultralytics_assign(args, **kw))


def test_regions_rounding_turns_into_strips_match_ultralytics():
    # Sides of a few float32 steps at x ~ 1000 with stride 0: the rounded corners give parallel edge vectors,
    # and Ultralytics' test accepts a whole line of anchors; a stride of 1e20 makes |ab|^2 overflow, and the
    # test a half-plane. The CPU kernel's bucket grids must not cut either.
    xs, ys = torch.arange(64.0) * 8 + 754, torch.arange(64.0) * 8 + 1154
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    gt = torch.tensor([[[1007.9565, 1400.8835, 1.2e-4, 1.6e-4, 0.835]]])
    corner = reference.rotated_corners(gt[0])[0, 0]
    anc = torch.cat([grid, torch.stack([torch.full((64,), float(corner[0])), ys], -1), torch.tensor([[-1e30, 0.0]])])
    n = anc.shape[0]
    pred = torch.cat([anc, torch.full((n, 2), 20.0), torch.zeros(n, 1)], -1).clamp(-1e6, 1e6)[None]
    pred[0, grid.shape[0]:-1] = gt[0]
    args = (torch.rand(1, n, 1, generator=torch.Generator().manual_seed(0)), pred, anc, torch.zeros(1, 1, 1), gt,
            torch.ones(1, 1, 1))
    for stride in ([0], [1e20]):
        for kw in (dict(topk=10, alpha=0.5, beta=6.0), dict(topk=80, alpha=1.0, beta=6.0)):
            ours = mutualops.assign_task_aligned_rotated(*args, num_classes=1, stride=stride, **kw)
            assert_same(ours, ultralytics_assign(args, stride=stride, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_reference_matches_ultralytics(device, gen):
    if RotatedTaskAlignedAssigner is None:
        pytest.skip("needs ultralytics, the peer the reference is checked against")
    for kind in KINDS:
        args = rotated_scene(gen, kind=kind, device=device)
        for kw in SETTINGS:
            labels, bboxes, scores, fg, idx, alignment = reference.assign_task_aligned_rotated(*args, num_classes=4,
                                                                                               **kw)
            assert_same(mutualops.TaskAlignedTargets(labels, bboxes, scores, fg, idx), ultralytics_assign(args, **kw))
            torch.testing.assert_close(alignment, scores.amax(-1))


@pytest.mark.parametrize("device", DEVICES)
def test_without_gt_and_without_real_gt(device, gen):
    scores, pred, anc, labels, gt, mask = rotated_scene(gen, device=device)
    empty = mutualops.assign_task_aligned_rotated(scores, pred, anc, labels[:, :0], gt[:, :0], mask[:, :0],
                                                  num_classes=4)
    assert (empty.target_labels == 4).all() and not empty.fg_mask.any() and not empty.target_scores.any()
    assert empty.target_bboxes.shape == pred.shape and not empty.target_bboxes.any()
    labels[:] = 10**9
    gt[:] = float("nan")
    out = mutualops.assign_task_aligned_rotated(scores, pred, anc, labels, gt, torch.zeros_like(mask), num_classes=4)
    assert not out.fg_mask.any() and not out.target_scores.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_inputs_compute_in_float32(device, dtype, gen):
    scores, pred, anc, labels, gt, mask = rotated_scene(gen, device=device)
    low = scores.to(dtype)
    ours = mutualops.assign_task_aligned_rotated(low, pred, anc, labels, gt, mask, num_classes=4, topk=10, alpha=0.5)
    assert ours.target_scores.dtype == torch.float32
    assert_same(ours, ultralytics_assign((low.float(), pred, anc, labels, gt, mask), topk=10, alpha=0.5))
    with torch.autocast(device_type=device, dtype=dtype):
        again = mutualops.assign_task_aligned_rotated(low, pred.to(dtype), anc, labels, gt, mask, num_classes=4,
                                                      topk=10, alpha=0.5)
    assert again.target_scores.dtype == torch.float32 and again.target_bboxes.dtype == gt.dtype


@pytest.mark.parametrize("device", DEVICES)
def test_float64_inputs(device, gen):
    args = tuple(t.double() for t in rotated_scene(gen, device=device))
    ours = mutualops.assign_task_aligned_rotated(*args, num_classes=4, topk=10, alpha=0.5)
    assert ours.target_scores.dtype == torch.float64
    assert_same(ours, ultralytics_assign(args, topk=10, alpha=0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_scores_and_integer_labels(device, gen):
    args = rotated_scene(gen, device=device)
    dense = mutualops.assign_task_aligned_rotated(*args, num_classes=4)
    scores, pred, anc, labels, gt, mask = args
    sparse = mutualops.assign_task_aligned_rotated(scores, pred, anc, labels.long()[..., 0], gt, mask.bool()[..., 0],
                                                   num_classes=4, dense_scores=False)
    assert sparse.target_scores.shape == scores.shape[:2]
    torch.testing.assert_close(sparse.target_scores, dense.target_scores.gather(2, dense.target_labels[..., None])[..., 0])
    for a, b in zip(sparse[3:], dense[3:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device, gen):
    args = rotated_scene(gen, device=device)
    scores, pred, anc, labels, gt, mask = args
    names = ["pd_scores", "pd_bboxes", "anc_points", "gt_labels", "gt_bboxes", "mask_gt"]
    nan_pred = pred.clone()
    nan_pred[0, 3, 4] = float("nan")
    inf_gt = gt.clone()
    inf_gt[1, 2, 4] = float("inf")
    wrong_label = labels.clone()
    wrong_label[1, 0] = 4
    huge_side = torch.tensor([1, 1, 1e10, 1, 1.0], device=device)
    far_centre = torch.tensor([2e9, 0, 0, 0, 0.0], device=device)
    cases = [
        (ValueError, r"pd_bboxes must have shape \[2, 84, 5\]", dict(pd_bboxes=pred[..., :4])),
        (ValueError, r"gt_bboxes must have shape \[2, G, 5\]", dict(gt_bboxes=gt[..., :4])),
        (ValueError, "pd_bboxes holds a non-finite", dict(pd_bboxes=nan_pred)),
        (ValueError, "gt_bboxes holds a non-finite", dict(gt_bboxes=inf_gt)),
        # Sides or centres where float32 probiou overflows (NaN in Ultralytics): refused, not turned into 0.
        (ValueError, r"gt_bboxes holds .* beyond \+-1e\+09", dict(gt_bboxes=gt * huge_side)),
        (ValueError, r"pd_bboxes holds .* beyond \+-1e\+09", dict(pd_bboxes=pred + far_centre)),
        (ValueError, "mask_gt holds NaN", dict(mask_gt=mask * float("nan"))),
        (ValueError, r"pd_scores must be probabilities in \[0, 1\]", dict(pd_scores=scores * 2)),
        (ValueError, "gt_labels must be < num_classes", dict(gt_labels=wrong_label)),
        (ValueError, "topk must be in", dict(topk=0)),
        (ValueError, "stride must be finite and >= 0", dict(stride=[-8])),
        (TypeError, "pd_bboxes must be a floating-point tensor", dict(pd_bboxes=pred.long())),
        (TypeError, "gt_bboxes must be a torch.Tensor", dict(gt_bboxes=gt.tolist())),
    ]
    for error, message, changes in cases:
        values = dict(zip(names, args))
        values.update({k: v for k, v in changes.items() if k in names})
        kw = {"num_classes": 4, **{k: v for k, v in changes.items() if k not in names}}
        with pytest.raises(error, match=message):
            mutualops.assign_task_aligned_rotated(*values.values(), **kw)


def test_bad_input_on_the_raw_op(gen):
    scores, pred, anc, labels, gt, mask = rotated_scene(gen)
    op = torch.ops.mutualops.assign_task_aligned_rotated
    with pytest.raises(ValueError, match=r"gt_bboxes must have shape \[2, G, 5\]"):
        op(scores, pred, anc, labels, gt[..., :4], mask, 10, 10, 4, 0.5, 6.0, 1e-9, 16.0, True)
    labels[1, 0] = -3
    with pytest.raises(ValueError, match="non-negative whole class indices"):
        op(scores, pred, anc, labels, gt, mask, 10, 10, 4, 0.5, 6.0, 1e-9, 16.0, True)
    with pytest.raises(ValueError, match="min_side|stride"):
        op(scores, pred, anc, labels.abs(), gt, mask, 10, 10, 4, 0.5, 6.0, 1e-9, math.nan, True)


def test_meta_tensors_follow_the_fake():
    meta = dict(device="meta")
    out = torch.ops.mutualops.assign_task_aligned_rotated(
        torch.empty(2, 84, 4, **meta), torch.empty(2, 84, 5, **meta), torch.empty(84, 2, **meta),
        torch.empty(2, 6, 1, **meta), torch.empty(2, 6, 5, dtype=torch.float64, **meta), torch.empty(2, 6, 1, **meta),
        10, 10, 4, 0.5, 6.0, 1e-9, 16.0, True)
    assert [tuple(t.shape) for t in out] == [(2, 84), (2, 84, 5), (2, 84, 4), (2, 84), (2, 84), (2, 84)]
    assert out[1].dtype == torch.float64 and out[2].dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device, gen):
    args = rotated_scene(gen, device=device)
    op = torch.ops.mutualops.assign_task_aligned_rotated.default
    torch.library.opcheck(op, (*args, 10, 10, 4, 0.5, 6.0, 1e-9, 16.0, True))
    torch.library.opcheck(op, (*args, 10, 4, 4, 0.5, 6.0, 1e-9, 16.0, False))

    def fn(*a):
        return mutualops.assign_task_aligned_rotated(*a, num_classes=4, topk=10, alpha=0.5)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for x, y in zip(compiled(*args), fn(*args)):
        torch.testing.assert_close(x, y)
