import math

import pytest
import torch

import mutualops
from helpers import DEVICES, HAS_CUDA, random_boxes
from mutualops import reference
from mutualops.ops.assign import fcos_points, torchvision_fcos_priors

FCOS_SIZES = [(50, 84), (25, 42), (13, 21), (7, 11), (4, 6)]  # a 400 x 672 image
STRIDES = [8, 16, 32, 64, 128]


def torchvision_anchors():
    anchors = []
    for (h, w), s in zip(FCOS_SIZES, STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        c = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
        anchors.append(torch.cat([c - s / 2, c + s / 2], 1))
    return torch.cat(anchors), [h * w for h, w in FCOS_SIZES]


def scene(gen, images=2, gts=40, width=672.0, height=400.0):
    """GT boxes with duplicates, equal areas, nested, tiny and degenerate boxes."""
    out = []
    for _ in range(images):
        xy = torch.rand(gts, 2, generator=gen) * torch.tensor([width, height])
        wh = torch.rand(gts, 2, generator=gen) * 250 + 2
        b = torch.cat([xy, xy + wh], 1)
        b[gts // 2 : gts // 2 + 3] = b[:3]  # duplicates
        b[3, 2:] = b[3, :2] + b[4, 2:] - b[4, :2]  # same area as box 4
        b[5] = torch.tensor([100.0, 100, 100, 300])  # zero width
        b[6] = torch.tensor([300.0, 200, 250, 150])  # flipped
        b[7] = torch.tensor([10.0, 10, 600, 390])  # huge, holds many others
        out.append(b)
    return torch.stack(out)


@pytest.fixture(scope="module")
def fcos_model():
    from torchvision.models.detection import fcos_resnet50_fpn

    model = fcos_resnet50_fpn(weights=None, weights_backbone=None)
    # The real matcher, without the loss: compute_loss hands back matched indices.
    model.head.compute_loss = lambda targets, head_outputs, anchors, matched_idxs: matched_idxs
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fcos_matches_torchvision_exactly(device, dtype, gen, fcos_model):
    # float64 too: torchvision's 1e8 - area is then float64, and close areas no longer tie as in float32.
    from torchvision.models.detection import FCOS

    anchors, per_level = torchvision_anchors()
    anchors = anchors.to(dtype)
    boxes = scene(gen).to(dtype)
    counts = torch.tensor([40, 25])  # the second image padded
    targets = [{"boxes": boxes[i, : counts[i]], "labels": torch.zeros(int(counts[i]), dtype=torch.long)} for i in range(2)]
    targets.append({"boxes": torch.zeros(0, 4, dtype=dtype), "labels": torch.zeros(0, dtype=torch.long)})  # no GT
    expected = FCOS.compute_loss(fcos_model, targets, {}, [anchors] * 3, per_level)
    priors = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
              for k, v in torchvision_fcos_priors(anchors, per_level).items()}
    points = priors.pop("points")
    padded = torch.cat([boxes, torch.zeros(1, 40, 4, dtype=dtype)]).to(device)
    got = mutualops.assign_fcos(points, padded, torch.tensor([40, 25, 0]).to(device), **priors).cpu()
    for i in range(3):
        assert torch.equal(got[i], expected[i]), i
    assert (got >= 0).sum() > 100


def test_fcos_float32_area_ties_follow_torchvision(fcos_model):
    # Two GTs whose areas differ by less than float32's spacing at 1e8: torchvision's
    # 1e8 - area makes them tie and picks the lower index, here the larger box.
    from torchvision.models.detection import FCOS

    anchors, per_level = torchvision_anchors()
    boxes = torch.tensor([[100.0, 100, 300.004, 300], [100.0, 100, 300, 300]])
    expected = FCOS.compute_loss(fcos_model, [{"boxes": boxes, "labels": torch.zeros(2, dtype=torch.long)}], {}, [anchors],
                                 per_level)[0]
    priors = torchvision_fcos_priors(anchors, per_level)
    got = mutualops.assign_fcos(priors.pop("points"), boxes, **priors)
    assert torch.equal(got, expected) and (got == 0).any() and not (got == 1).any()
    # Without the compatibility mode the strictly smaller box wins.
    priors = torchvision_fcos_priors(anchors, per_level)
    priors["torchvision_compat"] = False
    exact = mutualops.assign_fcos(priors.pop("points"), boxes, **priors)
    assert (exact == 1).sum() > 0 and (got[exact == 1] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize("radius", [0.0, 1.5])
def test_fcos_matches_reference(device, inclusive, radius, gen):
    points, strides, ranges, _ = fcos_points(FCOS_SIZES, STRIDES)
    boxes = scene(gen, images=3)
    counts = torch.tensor([40, 0, 17])
    got = mutualops.assign_fcos(points.to(device), boxes.to(device), counts.to(device), strides=strides.to(device),
                                regress_ranges=ranges.to(device), center_sampling_radius=radius, inclusive=inclusive)
    expected = reference.assign_fcos(points, boxes, counts, strides, ranges, radius, inclusive)
    assert torch.equal(got.cpu(), expected)
    assert (got[1] == -1).all()
    # Degenerate GTs (zero width, flipped) match nothing.
    assert not ((got == 5) | (got == 6)).any()


def test_fcos_list_input_and_single_image(gen):
    points, strides, ranges, _ = fcos_points(FCOS_SIZES, STRIDES)
    boxes = scene(gen)
    kw = dict(strides=strides, regress_ranges=ranges)
    batched = mutualops.assign_fcos(points, boxes, torch.tensor([40, 12]), **kw)
    listed = mutualops.assign_fcos(points, [boxes[0], boxes[1, :12]], **kw)
    assert torch.equal(batched, listed)
    assert torch.equal(mutualops.assign_fcos(points, boxes[0], **kw), batched[0])


@pytest.mark.parametrize("device", DEVICES)
def test_max_iou_matches_torchvision_matcher(device, gen):
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    anchors, _ = torchvision_anchors()
    boxes = scene(gen, images=2)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    got, best = mutualops.assign_max_iou(anchors.to(device), boxes.to(device))
    for i in range(2):
        expected = matcher(box_iou(boxes[i], anchors))
        assert torch.equal(got[i].cpu(), expected)
        assert torch.equal(best[i].cpu(), box_iou(boxes[i], anchors).max(dim=0).values)
    # The zero-width GT's best IoU is 0, so torchvision's low-quality rule hands
    # every anchor that overlaps nothing to its argmax GT: reproduced as is.
    assert (got >= 0).sum() > 1000


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low_quality, assign_all", [("none", True), ("torchvision", True), ("mmdet", True),
                                                     ("mmdet", False)])
def test_max_iou_matches_reference(device, low_quality, assign_all, gen):
    anchors = random_boxes(3000, generator=gen, scale=600.0)
    boxes = scene(gen, images=3)
    counts = torch.tensor([40, 0, 9])
    ignore = torch.tensor([[[0.0, 0, 200, 200]], [[300.0, 100, 500, 300]], [[0.0, 0, 0, 0]]])
    kw = dict(pos_iou_threshold=0.5, neg_iou_threshold=0.3, low_quality=low_quality, min_pos_iou=0.2,
              gt_max_assign_all=assign_all, ignore_iof_threshold=0.6)
    got, best = mutualops.assign_max_iou(anchors.to(device), boxes.to(device), counts.to(device),
                                         ignore_boxes=ignore.to(device), num_ignore=torch.tensor([1, 1, 0]).to(device),
                                         **kw)
    expected, expected_best = reference.assign_max_iou(anchors, boxes, counts, ignore_boxes=ignore,
                                                       num_ignore=torch.tensor([1, 1, 0]), **kw)
    assert torch.equal(got.cpu(), expected)
    torch.testing.assert_close(best.cpu(), expected_best, rtol=0, atol=0)
    assert (got[0] == -2).any() and not (got[1] >= 0).any()
    if low_quality == "mmdet":
        # mmdetection's MaxIoUAssigner: an image without GT is all background with max overlap 0, its ignore
        # boxes notwithstanding.
        assert (got[1] == -1).all() and (best[1] == 0).all()
    else:
        assert (got[1] == -2).any() and (best[1][got[1] == -2] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("box_coding", ["distance", "delta"])
@pytest.mark.parametrize("gammas", [(1.0, 1.0), (2.0, 0.5)])
def test_mutual_targets_match_reference(device, box_coding, gammas, gen):
    images, n, classes = 2, 500, 7
    boxes = scene(gen, images=images, gts=20)
    labels = torch.randint(0, classes, (images, 20), generator=gen)
    matched = torch.randint(-2, 20, (images, n), generator=gen)
    if box_coding == "distance":
        priors = torch.rand(n, 2, generator=gen) * 600
        pred = torch.rand(images, n, 4, generator=gen) * 10
        scale = torch.full((n,), 8.0)
    else:
        priors = random_boxes(n, generator=gen, scale=600.0)
        pred = torch.randn(images, n, 4, generator=gen) * 0.3
        scale = None
    logits = torch.randn(images, n, classes, generator=gen)
    got = mutualops.mutual_targets(matched.to(device), boxes.to(device), labels.to(device), pred.to(device),
                                   logits.to(device), priors.to(device), scale=None if scale is None else scale.to(device),
                                   box_coding=box_coding, gamma_cls=gammas[0], gamma_loc=gammas[1])
    expected = reference.mutual_targets(matched, boxes, labels, pred, logits, priors, scale, box_coding, *gammas)
    # CUDA's expf (delta decoding) is within 2 ulp of glibc's, not equal to it;
    # scaled by anchors of ~600 px that is ~1e-4 px.
    tol = dict(rtol=1e-6, atol=1e-6) if device == "cpu" else dict(rtol=2e-5, atol=2e-4)
    for g, e in zip(got[:4], expected):
        torch.testing.assert_close(g.cpu(), e, **tol)
    assert torch.equal(got.positive.cpu(), matched >= 0)
    assert abs(float(got.box_weight[got.positive].mean()) - 1) < 1e-5
    assert (got.cls_target[~got.positive] == 0).all() and (got.box_weight[~got.positive] == 0).all()


def test_mutual_targets_no_positive(gen):
    boxes = scene(gen, images=1, gts=10)
    t = mutualops.mutual_targets(torch.full((1, 50), -1), boxes, torch.zeros(1, 10, dtype=torch.long),
                                 torch.rand(1, 50, 4), torch.randn(1, 50, 3), torch.rand(50, 2))
    assert (t.box_weight == 0).all() and (t.cls_target == 0).all() and torch.isfinite(t.decoded).all()


def test_assign_and_label_in_one_call(gen):
    points, strides, ranges, _ = fcos_points(FCOS_SIZES, STRIDES)
    boxes = scene(gen, images=2)
    labels = torch.randint(0, 5, (2, 40), generator=gen)
    pred = torch.rand(2, points.shape[0], 4, generator=gen) * 5
    logits = torch.randn(2, points.shape[0], 5, generator=gen)
    matched, targets = mutualops.assign_and_label(points, boxes, labels, pred, logits,
                                                  assign_kwargs=dict(strides=strides, regress_ranges=ranges))
    assert torch.equal(matched, mutualops.assign_fcos(points, boxes, strides=strides, regress_ranges=ranges))
    separate = mutualops.mutual_targets(matched, boxes, labels, pred, logits, points, scale=strides)
    for a, b in zip(targets, separate):
        assert torch.equal(a, b)
    anchors = random_boxes(800, generator=gen, scale=600.0)
    matched, targets = mutualops.assign_and_label(anchors, boxes, labels, torch.randn(2, 800, 4, generator=gen) * 0.1,
                                                  torch.randn(2, 800, 5, generator=gen), assigner="max_iou")
    assert targets.cls_target.shape == (2, 800, 5) and torch.equal(targets.positive, matched >= 0)


def test_bad_input(gen):
    points, strides, ranges, _ = fcos_points(FCOS_SIZES[:2], STRIDES[:2])
    boxes = scene(gen, images=1)
    kw = dict(strides=strides, regress_ranges=ranges)
    bad = boxes.clone()
    bad[0, 2, 1] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        mutualops.assign_fcos(points, bad, **kw)
    with pytest.raises(ValueError, match="strides"):
        mutualops.assign_fcos(points, boxes, strides=strides[:5], regress_ranges=ranges)
    with pytest.raises(ValueError, match="points"):
        mutualops.assign_fcos(points[:, :1], boxes, **kw)
    with pytest.raises(ValueError, match="device"):
        mutualops.assign_fcos(points.to("meta"), boxes, **kw)
    with pytest.raises(ValueError, match="num_gt"):
        mutualops.assign_fcos(points, boxes, torch.tensor([1, 2]), **kw)
    with pytest.raises(ValueError, match="low_quality"):
        mutualops.assign_max_iou(random_boxes(10), boxes, low_quality="best")
    with pytest.raises(ValueError, match="neg_iou_threshold"):
        mutualops.assign_max_iou(random_boxes(10), boxes, pos_iou_threshold=0.3, neg_iou_threshold=0.5)
    labels = torch.full((1, 40), 9)
    with pytest.raises(ValueError, match="gt_labels"):
        mutualops.mutual_targets(torch.zeros(1, 10, dtype=torch.long), boxes, labels, torch.rand(1, 10, 4),
                                 torch.randn(1, 10, 5), torch.rand(10, 2))
    with pytest.raises(ValueError, match="priors"):
        mutualops.mutual_targets(torch.zeros(1, 10, dtype=torch.long), boxes, labels % 5, torch.rand(1, 10, 4),
                                 torch.randn(1, 10, 5), torch.rand(10, 2), box_coding="delta")
    # Accepted without a word before: now each names the argument.
    for radius, error in ((math.nan, ValueError), (-1.0, ValueError), (None, TypeError)):
        with pytest.raises(error, match="center_sampling_radius"):
            mutualops.assign_fcos(points, boxes, center_sampling_radius=radius, **kw)
    for counts in (torch.tensor([-1]), torch.tensor([41])):
        with pytest.raises(ValueError, match="num_gt must count rows of gt_boxes"):
            mutualops.assign_fcos(points, boxes, counts, **kw)
        with pytest.raises(ValueError, match="num_gt must count rows of gt_boxes"):
            torch.ops.mutualops.assign_max_iou(random_boxes(10), boxes, counts, None, None, 0.5, 0.4, "none", 0.0,
                                               True, 0.5)
    with pytest.raises(ValueError, match="num_ignore must count rows of ignore_boxes"):
        mutualops.assign_max_iou(random_boxes(10), boxes, ignore_boxes=boxes[:, :2], num_ignore=torch.tensor([-1]))
    odd = random_boxes(10)
    odd[3, 1] = math.nan
    with pytest.raises(ValueError, match="anchors holds a non-finite"):
        mutualops.assign_max_iou(odd, boxes)
    odd_points = points.clone()
    odd_points[5, 0] = math.inf
    with pytest.raises(ValueError, match="points holds a non-finite"):
        mutualops.assign_fcos(odd_points, boxes, **kw)
    with pytest.raises(ValueError, match="pass ignore_boxes too"):
        mutualops.assign_max_iou(random_boxes(10), boxes, num_ignore=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must have shape \[40\]"):
        mutualops.mutual_targets(torch.zeros(1, 10, dtype=torch.long), [boxes[0]], [labels[0, :39] % 5],
                                 torch.rand(1, 10, 4), torch.randn(1, 10, 5), torch.rand(10, 2))
    # Parameters of the wrong type or out of range name themselves, on the wrapper and the raw op.
    for name, value, error in (("pos_iou_threshold", None, TypeError), ("min_pos_iou", "0.2", TypeError),
                               ("ignore_iof_threshold", math.nan, ValueError)):
        with pytest.raises(error, match=name):
            mutualops.assign_max_iou(random_boxes(10), boxes, **{name: value})
    target_args = (torch.zeros(1, 10, dtype=torch.long), boxes, labels % 5, torch.rand(1, 10, 4), torch.randn(1, 10, 5),
                   torch.rand(10, 2))
    for name, value, error in (("gamma_cls", None, TypeError), ("gamma_cls", math.nan, ValueError),
                               ("gamma_loc", -1.0, ValueError), ("gamma_loc", math.inf, ValueError)):
        with pytest.raises(error, match=name):
            mutualops.mutual_targets(*target_args, **{name: value})
    with pytest.raises(ValueError, match="gamma_cls"):
        torch.ops.mutualops.mutual_targets(*target_args, None, "distance", math.nan, 1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device, gen):
    points, strides, ranges, _ = (t.to(device) for t in fcos_points(FCOS_SIZES[3:], STRIDES[3:]))
    boxes = scene(gen, images=2, gts=10).to(device)
    counts = torch.tensor([10, 4]).to(device)
    torch.library.opcheck(torch.ops.mutualops.assign_fcos.default,
                          (points, boxes, counts, strides, ranges, 1.5, False, False))
    anchors = random_boxes(60, generator=gen, scale=600.0).to(device)
    torch.library.opcheck(torch.ops.mutualops.assign_max_iou.default,
                          (anchors, boxes, counts, None, None, 0.5, 0.4, "torchvision", 0.0, True, 0.5))
    matched = torch.randint(-1, 4, (2, 60), generator=gen).to(device)
    torch.library.opcheck(torch.ops.mutualops.mutual_targets.default,
                          (matched, boxes, torch.zeros(2, 10, dtype=torch.long, device=device),
                           torch.rand(2, 60, 4, device=device), torch.randn(2, 60, 3, device=device),
                           torch.rand(60, 2, device=device) * 500, None, "distance", 1.0, 1.0))
    torch._dynamo.reset()

    def fn(a, b, c):
        m, q = torch.ops.mutualops.assign_max_iou(a, b, c, None, None, 0.5, 0.4, "torchvision", 0.0, True, 0.5)
        return (m >= 0).sum() + q.sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(anchors, boxes, counts), fn(anchors, boxes, counts))

    # The public wrappers too: their data checks live in the ops, so nothing breaks the graph.
    labels = torch.randint(0, 3, (2, 10), generator=gen).to(device)
    pred = torch.rand(2, points.shape[0], 4, generator=gen).to(device)
    logits = torch.randn(2, points.shape[0], 3, generator=gen).to(device)

    def public(b, c):
        m = mutualops.assign_fcos(points, b, c, strides=strides, regress_ranges=ranges)
        a, q = mutualops.assign_max_iou(anchors, b, c)
        t = mutualops.mutual_targets(m, b, labels, pred, logits, points, num_gt=c, scale=strides)
        return m, a, q, t.cls_target, t.box_weight

    torch._dynamo.reset()
    for x, y in zip(torch.compile(public, fullgraph=True, backend="aot_eager")(boxes, counts), public(boxes, counts)):
        torch.testing.assert_close(x, y)

    # dynamic=True: shapes and Python floats (the centre-sampling radius) are symbolic; the radius check must
    # trace (math.isfinite of a symbolic float did not).
    def fcos(b, c, radius):
        return mutualops.assign_fcos(points, b, c, strides=strides, regress_ranges=ranges,
                                     center_sampling_radius=radius)

    torch._dynamo.reset()
    dynamic = torch.compile(fcos, fullgraph=True, dynamic=True, backend="aot_eager")
    for radius in (1.5, 2.5):
        torch.testing.assert_close(dynamic(boxes, counts, radius), fcos(boxes, counts, radius))
    with pytest.raises(Exception, match="center_sampling_radius must be finite and >= 0"):
        dynamic(boxes, counts, -1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_raw_mutual_targets_checks_indices(device):
    # Each of these read or wrote out of bounds (or into a neighbour's class row) before.
    op = torch.ops.mutualops.mutual_targets
    gt = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10]]], device=device)
    pred, logits = torch.ones(1, 1, 4, device=device), torch.zeros(1, 1, 5, device=device)
    points = torch.tensor([[5.0, 5]], device=device)
    for label, index, message in [(7, 0, "gt_labels must be in"), (10**12, 0, "gt_labels must be in"),
                                  (-3, 1, "gt_labels must be in"), (0, 10**9, "matched holds a GT index >= 2")]:
        labels = torch.tensor([[0, label]], device=device) if index == 1 else torch.tensor([[label, 0]], device=device)
        with pytest.raises(ValueError, match=message):
            op(torch.tensor([[index]], device=device), gt, labels, pred, logits, points, None, "distance", 1.0, 1.0)
    # A padding row's label is checked too when matched reaches it.
    with pytest.raises(ValueError, match="gt_labels must be in"):
        mutualops.mutual_targets(torch.tensor([[1]]), gt.cpu(), torch.tensor([[0, 10**9]]), pred.cpu()[:, :1],
                                 logits.cpu()[:, :, :2], points.cpu(), num_gt=torch.tensor([1]))
    with pytest.raises(TypeError, match="matched must be an integer"):
        mutualops.mutual_targets(torch.tensor([[0.0]]), gt.cpu(), torch.tensor([[0, 0]]), pred.cpu(), logits.cpu(),
                                 points.cpu())
    out = op(torch.tensor([[-1]], device=device), gt, torch.tensor([[0, 10**9]], device=device), pred, logits, points,
             None, "distance", 1.0, 1.0)
    assert not out[2].any()  # background never reads a label


@pytest.mark.parametrize("device", DEVICES)
def test_max_iou_thresholds_round_to_the_iou_dtype(device):
    # IoU exactly float32(0.7): torchvision's Matcher(0.7, 0.3) (the RPN setting) matches it.
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 7.0], [0.0, 0.0, 10.0, 2.0]], device=device)
    iou = box_iou(gt, anchors)
    assert iou[0, 0] == torch.tensor(0.7, dtype=torch.float32)
    theirs = Matcher(0.7, 0.3)(iou)
    ours, _ = mutualops.assign_max_iou(anchors, gt, pos_iou_threshold=0.7, neg_iou_threshold=0.3, low_quality="none")
    assert torch.equal(ours, theirs)
    assert ours[0] == 0


@pytest.mark.parametrize("device", DEVICES)
def test_max_iou_more_than_65535_images(device, gen):
    # CUDA grids hold at most 65535 blocks in height, where the images were.
    images = 70_000
    anchors = random_boxes(40, generator=gen, scale=100.0)
    boxes = random_boxes(2, batch=images, generator=gen, scale=100.0)
    counts = torch.randint(0, 3, (images,), generator=gen)
    kw = dict(pos_iou_threshold=0.5, neg_iou_threshold=0.3, low_quality="torchvision")
    got, best = mutualops.assign_max_iou(anchors.to(device), boxes.to(device), counts.to(device), **kw)
    pick = torch.tensor([0, 65534, 65535, 65536, images - 1])
    expected, expected_best = reference.assign_max_iou(anchors, boxes[pick], counts[pick], **kw)
    assert torch.equal(got.cpu()[pick], expected)
    torch.testing.assert_close(best.cpu()[pick], expected_best, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("low_quality, assign_all", [("torchvision", True), ("mmdet", True), ("mmdet", False)])
def test_max_iou_best_anchors_across_chunks(device, dtype, low_quality, assign_all, gen):
    # The CUDA pass keeps each GT's best IoU per chunk of 512 anchors and looks again only in the chunks that
    # hold it: a GT's best anchor repeated in far chunks (mmdet without assign_all takes the first), GTs past
    # the first shared-memory tile of 256, best anchors that an ignore box hides, a GT that overlaps nothing
    # (its best, 0, is in every chunk), an image without GT, and a ragged last chunk.
    n = 5 * 512 + 37
    anchors = random_boxes(n, generator=gen, scale=600.0, dtype=torch.float64)
    boxes = random_boxes(300, batch=3, generator=gen, scale=600.0, min_size=20.0, dtype=torch.float64)
    for image in range(3):
        boxes[image, 5] = boxes[0, 5]
        boxes[image, 290] = boxes[0, 290]
    anchors[[10, 10 + 512, n - 1]] = boxes[0, 5]
    anchors[[700, 2000]] = boxes[0, 290]
    boxes[0, 7] = torch.tensor([2000.0, 2000, 2010, 2010], dtype=torch.float64)  # far from every anchor
    # GT 150's best IoU, 1/3, is a low-quality match held by three anchors in three chunks.
    boxes[0, 150] = torch.tensor([1000.0, 1000, 1010, 1010], dtype=torch.float64)
    low = [100, 100 + 1024, n - 2]
    anchors[low] = torch.tensor([1000.0, 1000, 1010, 1030], dtype=torch.float64)
    boxes[1, 8] = torch.tensor([100.0, 100, 100, 300], dtype=torch.float64)  # zero width: IoU 0 with every anchor
    counts = torch.tensor([300, 270, 0])
    ignore = torch.zeros(3, 1, 4, dtype=torch.float64)
    ignore[1, 0] = boxes[0, 5]  # in image 1 the copies of GT 5 are ignored
    kw = dict(pos_iou_threshold=0.5, neg_iou_threshold=0.3, low_quality=low_quality, min_pos_iou=0.1,
              gt_max_assign_all=assign_all, ignore_iof_threshold=0.9, num_ignore=torch.tensor([0, 1, 0]))
    anchors, boxes, ignore = anchors.to(dtype), boxes.to(dtype), ignore.to(dtype)
    got, best = mutualops.assign_max_iou(anchors.to(device), boxes.to(device), counts.to(device),
                                         ignore_boxes=ignore.to(device), **{**kw, "num_ignore": kw["num_ignore"].to(device)})
    expected, expected_best = reference.assign_max_iou(anchors, boxes, counts, ignore_boxes=ignore, **kw)
    assert torch.equal(got.cpu(), expected)
    torch.testing.assert_close(best.cpu(), expected_best, rtol=0, atol=0)
    assert (got[0, [10, 10 + 512, n - 1]] == 5).all() and (got[1, [10, 10 + 512, n - 1]] == -2).all()
    assert (got[0, [700, 2000]] == 290).all() and (got[2] == -1).all()
    if assign_all:
        assert (got[0, low] == 150).all()
    else:
        assert got[0, low].tolist() == [150, -2, -2]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_raw_max_iou_ignore_boxes_on_another_device(gen):
    # The CUDA kernel would read the host pointer of CPU ignore boxes.
    anchors = random_boxes(20, generator=gen, device="cuda")
    boxes = random_boxes(3, batch=1, generator=gen, device="cuda")
    counts = torch.tensor([3], device="cuda")
    with pytest.raises(ValueError, match="ignore_boxes must be on the device of gt_boxes"):
        torch.ops.mutualops.assign_max_iou(anchors, boxes, counts, boxes[:, :1].cpu(), torch.tensor([1]), 0.5, 0.4,
                                           "torchvision", 0.0, True, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_max_iou_refuses_boxes_whose_area_overflows(device):
    # Finite corners whose area is inf (or inf x 0 = NaN) in the math type make IoUs NaN, which the CPU and
    # CUDA maxima would skip at different places. bfloat16 boxes are computed in float32 and overflow there.
    good = torch.tensor([[0.0, 0, 10, 10]], device=device)
    wide = torch.tensor([[-3e38, 0, 3e38, 10]], device=device)
    flat = torch.tensor([[-3e38, 0, 3e38, 0]], device=device)
    cases = [(wide, good, None, "anchors"), (flat, good, None, "anchors"), (good, wide[None], None, "gt_boxes"),
             (good.bfloat16(), wide[None].bfloat16(), None, "gt_boxes"), (good, good, wide, "ignore_boxes")]
    for anchors, gt, ignore, name in cases:
        with pytest.raises(ValueError, match=f"{name} holds a box whose area overflows float"):
            mutualops.assign_max_iou(anchors, gt, ignore_boxes=ignore)
    # Padding rows are not looked at, and float64 holds the area.
    padded = torch.cat([good, wide])[None]
    assert mutualops.assign_max_iou(good, padded, torch.tensor([1], device=device))[0].tolist() == [[0]]
    assert mutualops.assign_max_iou(wide.double(), good.double())[0].tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_raw_max_iou_ignore_boxes_per_image(device, gen):
    # One ignore entry for three images: the kernels would read ignore rows and counts past their end.
    anchors = random_boxes(20, generator=gen, device=device)
    boxes = random_boxes(3, batch=3, generator=gen, device=device)
    counts = torch.tensor([3, 3, 3], device=device)
    with pytest.raises(ValueError, match=r"ignore_boxes must have one entry per image \(3\), got 1"):
        torch.ops.mutualops.assign_max_iou(anchors, boxes, counts, boxes[:1], torch.tensor([1], device=device), 0.5,
                                           0.4, "torchvision", 0.0, True, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_raw_max_iou_value_checks(device):
    op = torch.ops.mutualops.assign_max_iou
    anchors = torch.tensor([[0.0, 0, 10, 10]], device=device)
    gt = torch.tensor([[[0.0, 0, 5, 5], [0, 0, math.nan, 1]]], device=device)
    one = torch.tensor([1], device=device)
    args = (0.5, 0.4, "torchvision", 0.0, True, 0.5)
    # Values are checked after types and shapes and before the other arguments' values.
    with pytest.raises(ValueError, match=r"num_gt must count rows of gt_boxes: each in \[0, 2\]"):
        op(anchors, gt, torch.tensor([3], device=device), None, None, 0.5, 0.4, "best", 0.0, True, 0.5)
    # Ignore boxes are read in the anchors' dtype: 1e300 is finite in float64, not in float32.
    ignore = torch.tensor([[[0.0, 0, 1e300, 1e300], [math.nan] * 4]], dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="ignore_boxes holds a coordinate that is not finite in the anchors' float32"):
        op(anchors, gt, one, ignore, one, *args)
    # NaN in padding rows (past num_gt and num_ignore) is never read.
    matched, best = op(anchors, gt, one, ignore[:, 1:], torch.tensor([0], device=device), *args)
    assert matched.tolist() == [[0]] and best.tolist() == [[0.25]]  # a low-quality match
    with pytest.raises(ValueError, match=r"num_ignore must count rows of ignore_boxes: each in \[0, 1\]"):
        op(anchors, gt, one, ignore[:, 1:], torch.tensor([2], device=device), *args)
