import pytest
import torch
import torchvision.ops as tvo
from torchvision.ops.boxes import _batched_nms_vanilla


import mutualops
from helpers import DEVICES, random_boxes
from mutualops import reference

NMS_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def clustered_case(gen, n=300, clusters=8):
    """Heavily overlapping clusters: jittered copies of a few boxes."""
    centres = random_boxes(clusters, generator=gen, scale=200.0)
    pick = torch.randint(0, clusters, (n,), generator=gen)
    boxes = centres[pick] + torch.randn(n, 4, generator=gen) * 3
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    return boxes, torch.rand(n, generator=gen)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_torchvision_on_1000_random_cases(device, gen):
    for case in range(1000):
        n = int(torch.randint(1, 300, (1,), generator=gen))
        if case % 2:
            boxes, scores = clustered_case(gen, n)
        else:
            boxes, scores = random_boxes(n, generator=gen), torch.rand(n, generator=gen)
        thr = float(torch.rand(1, generator=gen))
        idxs = torch.randint(0, 6, (n,), generator=gen)
        keep = mutualops.nms(boxes.to(device), scores.to(device), thr).cpu()
        assert torch.equal(keep, tvo.nms(boxes, scores, thr)), case
        keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), thr).cpu()
        # Below 4000 boxes torchvision.ops.batched_nms offsets boxes per class and runs one
        # NMS; the offset's float rounding can flip an IoU at the threshold. Its per-class
        # path (used above 4000 boxes) is the exact semantics, and the one we match.
        assert torch.equal(keep, _batched_nms_vanilla(boxes, scores, idxs, thr)), case


@pytest.mark.parametrize("device", DEVICES)
def test_large_batched_case_matches_torchvision(device, gen):
    # Above 4000 boxes torchvision switches to its per-class loop.
    boxes, scores = clustered_case(gen, n=6000, clusters=300)
    idxs = torch.randint(0, 80, (6000,), generator=gen)
    keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu()
    assert torch.equal(keep, tvo.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_and_duplicates(device):
    # Exact score ties and duplicate boxes: the higher score wins, then the lower index.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.5])
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert keep.tolist() == [2, 3]
    assert torch.equal(keep, reference.nms(boxes, scores, 0.5))
    # Same kept boxes as torchvision (which index of a duplicate it keeps follows torch.sort).
    tv = tvo.nms(boxes, scores, 0.5)
    assert torch.equal(boxes[keep], boxes[tv])
    keep = mutualops.nms(boxes.to(device), scores.to(device), 1.0).cpu()
    assert keep.tolist() == [2, 0, 1, 3, 4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", NMS_DTYPES)
def test_dtypes_match_reference(device, dtype, gen):
    boxes, scores = clustered_case(gen, 400)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    idxs = torch.randint(0, 3, (400,), generator=gen)
    keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.6).cpu()
    assert torch.equal(keep, reference.batched_nms(boxes, scores, idxs, 0.6))


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_never_kept_and_suppress_nothing(device):
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, nan], [0, 0, 10, 10], [0, 0, inf, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.5, 0.99, nan, 0.9, 0.4])
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert keep.tolist() == [0]
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.9).cpu()
    assert keep.tolist() == [0, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_non_contiguous(device, gen):
    e = torch.zeros(0, 4, device=device)
    assert mutualops.nms(e, torch.zeros(0, device=device), 0.5).shape == (0,)
    boxes = random_boxes(100, generator=gen).to(device)
    scores = torch.rand(200, generator=gen).to(device)[::2]
    strided = boxes.t().contiguous().t()
    assert torch.equal(mutualops.nms(strided, scores, 0.3), mutualops.nms(boxes, scores.contiguous(), 0.3))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda b, s, i: mutualops.nms(b[:, :3], s, 0.5), ValueError, "boxes"),
        (lambda b, s, i: mutualops.nms(b, s[:-1], 0.5), ValueError, "scores"),
        (lambda b, s, i: mutualops.nms(b, s.double(), 0.5), TypeError, "dtype"),
        (lambda b, s, i: mutualops.nms(b.long(), s, 0.5), TypeError, "boxes"),
        (lambda b, s, i: mutualops.nms(b, s, 1.5), ValueError, "iou_threshold"),
        (lambda b, s, i: mutualops.batched_nms(b, s, i.float(), 0.5), TypeError, "idxs"),
        (lambda b, s, i: mutualops.batched_nms(b, s, i[:-1], 0.5), ValueError, "idxs"),
        (lambda b, s, i: mutualops.nms(b, s, None), TypeError, "iou_threshold"),
        (lambda b, s, i: mutualops.nms(b.to(torch.float8_e4m3fn), s, 0.5), TypeError, "boxes.*float16"),
        (lambda b, s, i: torch.ops.mutualops.batched_nms(b.to(torch.float8_e5m2), s.to(torch.float8_e5m2), i, 0.5),
         TypeError, "boxes.*float16"),
        (lambda b, s, i: mutualops.nms(b.to("meta"), s.to("meta"), 0.5), ValueError, "meta"),
        (lambda b, s, i: mutualops.batched_nms(b.to("meta"), s.to("meta"), i.to("meta"), 0.5), ValueError, "meta"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(random_boxes(6), torch.rand(6), torch.arange(6))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device, gen):
    boxes, scores = clustered_case(gen, 50)
    idxs = torch.randint(0, 3, (50,), generator=gen)
    args = (boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    torch.library.opcheck(torch.ops.mutualops.batched_nms.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    torch._dynamo.reset()
    fn = lambda b, s, i: mutualops.batched_nms(b, s, i, 0.5)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args[:3]), fn(*args[:3]))


def dense_case(gen, images=2, points=300, classes=5):
    xy = torch.rand(images, points, 2, generator=gen) * 100
    wh = torch.rand(images, points, 2, generator=gen) * 40 + 1
    boxes = torch.cat([xy, xy + wh], -1)
    return boxes, torch.rand(images, points, classes, generator=gen), torch.rand(images, points, generator=gen)


def assert_matches_reference(det, expected):
    for img, (boxes, scores, labels, indices) in enumerate(expected):
        mine = det.batch_index == img
        assert torch.equal(det.indices[mine].cpu(), indices)
        assert torch.equal(det.labels[mine].cpu(), labels)
        torch.testing.assert_close(det.scores[mine].cpu(), scores, rtol=2e-7, atol=0)
        assert torch.equal(det.boxes[mine].cpu(), boxes)
        assert int(det.counts[img]) == len(indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.3, 1.0])
@pytest.mark.parametrize("class_agnostic", [False, True])
def test_rescored_dense_matches_reference(device, alpha, class_agnostic, gen):
    boxes, scores, iou = dense_case(gen)
    levels = torch.randint(0, 3, (boxes.shape[1],), generator=gen)
    kwargs = dict(alpha=alpha, score_threshold=0.2, iou_threshold=0.5, pre_nms_top_k=60, max_detections=25,
                  class_agnostic=class_agnostic)
    det = mutualops.rescored_nms(boxes.to(device), scores.to(device), iou.to(device), level_index=levels.to(device), **kwargs)
    assert_matches_reference(det, reference.rescored_nms(boxes, scores, iou, level_index=levels, **kwargs))
    # Output order: by image, then score descending.
    assert torch.all(det.batch_index[1:] >= det.batch_index[:-1])
    same = det.batch_index[1:] == det.batch_index[:-1]
    assert torch.all(det.scores[1:][same] <= det.scores[:-1][same])


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_flat_matches_reference_and_dense(device, gen):
    boxes, scores, iou = dense_case(gen, images=3, points=200, classes=4)
    kwargs = dict(alpha=0.5, score_threshold=0.1, iou_threshold=0.6, pre_nms_top_k=100, max_detections=30)
    dense = mutualops.rescored_nms(boxes.to(device), scores.to(device), iou.to(device), **kwargs)
    # The same candidates, flattened: element e = (image * N + n) * C + c.
    b, n, c = scores.shape
    flat_boxes = boxes[:, :, None, :].expand(b, n, c, 4).reshape(-1, 4)
    flat_labels = torch.arange(c).repeat(b * n)
    flat_iou = iou[:, :, None].expand(b, n, c).reshape(-1)
    flat_image = torch.arange(b).repeat_interleave(n * c)
    flat = mutualops.rescored_nms(flat_boxes.to(device), scores.reshape(-1).to(device), flat_iou.to(device),
                                  labels=flat_labels.to(device), batch_index=flat_image.to(device), **kwargs)
    assert torch.equal(flat.counts, dense.counts) and torch.equal(flat.labels, dense.labels)
    assert torch.equal(flat.indices.cpu() % (n * c) // c, dense.indices.cpu())
    assert torch.equal(flat.scores, dense.scores) and torch.equal(flat.boxes, dense.boxes)
    expected = reference.rescored_nms(flat_boxes, scores.reshape(-1), flat_iou, labels=flat_labels,
                                      batch_index=flat_image, num_images=b, **kwargs)
    assert_matches_reference(flat, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_from_logits(device, gen):
    boxes, scores, iou = dense_case(gen)
    logit = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
    kwargs = dict(alpha=0.5, score_threshold=0.3, pre_nms_top_k=50, max_detections=20)
    det = mutualops.rescored_nms(boxes.to(device), logit(scores).to(device), logit(iou).to(device), logits=True, **kwargs)
    expected = reference.rescored_nms(boxes, scores, iou, **kwargs)
    for img, (_, exp_scores, labels, indices) in enumerate(expected):
        mine = det.batch_index == img
        assert torch.equal(det.indices[mine].cpu(), indices) and torch.equal(det.labels[mine].cpu(), labels)
        torch.testing.assert_close(det.scores[mine].cpu(), exp_scores, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_fixed_shape(device, gen):
    boxes, scores, iou = dense_case(gen)
    args = (boxes.to(device), scores.to(device), iou.to(device))
    kwargs = dict(score_threshold=0.3, max_detections=40)
    fixed = mutualops.rescored_nms(*args, fixed_shape=True, **kwargs)
    flat = mutualops.rescored_nms(*args, **kwargs)
    assert fixed.boxes.shape == (2, 40, 4) and fixed.scores.shape == (2, 40) and fixed.counts.shape == (2,)
    for img in range(2):
        k = int(fixed.counts[img])
        assert torch.equal(fixed.scores[img, :k], flat.scores[flat.batch_index == img])
        assert torch.all(fixed.labels[img, k:] == -1) and torch.all(fixed.indices[img, k:] == -1)
        assert torch.all(fixed.scores[img, k:] == 0) and torch.all(fixed.boxes[img, k:] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_special_values(device):
    nan = float("nan")
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, nan], [1, 1, 10, 10], [20, 20, 30, 30]]])
    scores = torch.tensor([[[0.6], [0.99], [0.6], [nan]]])
    det = mutualops.rescored_nms(boxes.to(device), scores.to(device), alpha=0.0, score_threshold=0.1)
    # The NaN box is never kept nor suppresses; of the tied pair the lower index wins.
    assert det.indices.tolist() == [0]
    empty = mutualops.rescored_nms(boxes.to(device), scores.to(device), alpha=0.0, score_threshold=0.99)
    assert empty.boxes.shape == (0, 4) and empty.counts.tolist() == [0]
    none = mutualops.rescored_nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                                  labels=torch.zeros(0, dtype=torch.long, device=device))
    assert none.counts.tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_rescored_dtypes(device, dtype, gen):
    boxes, scores, iou = dense_case(gen)
    boxes, scores, iou = boxes.to(dtype), scores.to(dtype), iou.to(dtype)
    kwargs = dict(alpha=0.5, score_threshold=0.2, pre_nms_top_k=80, max_detections=20)
    det = mutualops.rescored_nms(boxes.to(device), scores.to(device), iou.to(device), **kwargs)
    assert det.scores.dtype == dtype and det.boxes.dtype == dtype
    expected = reference.rescored_nms(boxes.float(), scores.float(), iou.float(), **kwargs)
    for img, (_, _, labels, indices) in enumerate(expected):
        mine = det.batch_index == img
        assert torch.equal(det.indices[mine].cpu(), indices) and torch.equal(det.labels[mine].cpu(), labels)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha=1.5), ValueError, "alpha"),
        (dict(score_threshold=-0.1), ValueError, "score_threshold"),
        (dict(iou_threshold=2.0), ValueError, "iou_threshold"),
        (dict(max_detections=-1), ValueError, "max_detections"),
        (dict(pre_nms_top_k=-5), ValueError, "pre_nms_top_k"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, "flat"),
        (dict(level_index=torch.zeros(7, dtype=torch.long)), ValueError, "level_index"),
        (dict(alpha=None), TypeError, "alpha"),
        (dict(score_threshold="0.1"), TypeError, "score_threshold"),
        (dict(max_detections=2.5), TypeError, "max_detections"),
        (dict(pre_nms_top_k=None), TypeError, "pre_nms_top_k"),
        (dict(level_index=torch.zeros(5, dtype=torch.long), num_levels=2.5), TypeError, "num_levels"),
        # One level per point at most (beyond 256): 2^40 asked the allocator for terabytes.
        (dict(level_index=torch.zeros(5, dtype=torch.long), num_levels=2**40), ValueError, "num_levels"),
        (dict(level_index=torch.full((5,), 2**40)), ValueError, "num_levels"),
        (dict(level_index=torch.full((5,), 300)), ValueError, "num_levels"),
    ],
)
def test_rescored_bad_input(kwargs, error, match, gen):
    boxes, scores, iou = dense_case(gen, images=1, points=5, classes=2)
    with pytest.raises(error, match=match):
        mutualops.rescored_nms(boxes, scores, iou, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_output_width_stops_at_the_candidates(device, gen):
    # An image has at most N * C (dense) or M (flat) detections: a larger max_detections pads nothing more,
    # and 10^12 no longer asks the allocator for terabytes.
    boxes, scores, iou = (t.to(device) for t in dense_case(gen, images=2, points=5, classes=2))
    wide = mutualops.rescored_nms(boxes, scores, iou, score_threshold=0.0, max_detections=10**12, fixed_shape=True)
    assert wide.scores.shape == (2, 10) and wide.boxes.shape == (2, 10, 4)
    narrow = mutualops.rescored_nms(boxes, scores, iou, score_threshold=0.0, max_detections=10, fixed_shape=True)
    for got, want in zip(wide, narrow):
        assert got is None and want is None or torch.equal(got, want)
    flat = mutualops.rescored_nms(boxes[0], scores[0, :, 0], iou[0], labels=torch.zeros(5, dtype=torch.long,
                                  device=device), max_detections=10**12, fixed_shape=True)
    assert flat.scores.shape == (1, 5)
    assert mutualops.rescored_nms(boxes, scores, max_detections=4, fixed_shape=True).scores.shape == (2, 4)
    raw = torch.ops.mutualops.rescored_nms_dense(boxes, scores, None, None, 1, 0.5, 0.05, 0.5, 1000, 10**12, False)
    assert raw[1].shape == (2, 10)


def test_rescored_raw_op_checks_levels(gen):
    boxes, scores, _ = dense_case(gen, images=1, points=5, classes=2)
    levels = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="num_levels"):
        torch.ops.mutualops.rescored_nms_dense(boxes, scores, None, levels, 2**40, 0.5, 0.05, 0.5, 1000, 100, False)
    with pytest.raises(ValueError, match="num_levels"):
        torch.ops.mutualops.rescored_nms_flat(boxes[0], scores[0, :, 0], levels, None, None, levels, 2**40, 1, 0.5,
                                              0.05, 0.5, 1000, 100, False)
    # 256 levels stay valid however few the points: any feature pyramid fits.
    torch.ops.mutualops.rescored_nms_dense(boxes, scores, None, levels + 255, 256, 0.5, 0.05, 0.5, 1000, 100, False)


def test_rescored_bad_shapes(gen):
    boxes, scores, iou = dense_case(gen, images=1, points=5, classes=2)
    with pytest.raises(ValueError, match="scores"):
        mutualops.rescored_nms(boxes, scores[:, :4], iou)
    with pytest.raises(ValueError, match="iou"):
        mutualops.rescored_nms(boxes, scores, iou[:, :4])
    with pytest.raises(ValueError, match="labels"):
        mutualops.rescored_nms(boxes[0], scores[0, :, 0])
    with pytest.raises(ValueError, match="batch_index"):
        mutualops.rescored_nms(boxes[0], scores[0, :, 0], labels=torch.zeros(5, dtype=torch.long),
                               batch_index=torch.full((5,), 3), num_images=2)


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_opcheck_and_compile(device, gen):
    boxes, scores, iou = (t.to(device) for t in dense_case(gen, images=2, points=40, classes=3))
    levels = (torch.arange(40) % 2).to(device)
    torch.library.opcheck(torch.ops.mutualops.rescored_nms_dense.default,
                          (boxes, scores, iou, levels, 2, 0.5, 0.1, 0.5, 10, 8, False))
    flat_labels = torch.randint(0, 3, (40,), generator=gen).to(device)
    flat_images = (torch.arange(40) % 2).to(device)
    torch.library.opcheck(torch.ops.mutualops.rescored_nms_flat.default,
                          (boxes[0], scores[0, :, 0], flat_labels, iou[0], flat_images, None, 1, 2, 0.5, 0.1, 0.5, -1, 8, True))
    torch._dynamo.reset()

    def fn(b, s, q):
        det = mutualops.rescored_nms(b, s, q, score_threshold=0.1, max_detections=8, fixed_shape=True)
        return det.boxes.sum(-1) * det.scores, det.counts

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(boxes, scores, iou), fn(boxes, scores, iou)):
        assert torch.equal(got, want)


def canonical(det):
    """Detections sorted by (score descending, label, box): the order among exactly
    tied scores is torch.sort's in torchvision and lower-index-first in ours."""
    key = torch.cat([-det["scores"][:, None].double(), det["labels"][:, None].double(), det["boxes"].double()], 1)
    order = sorted(range(len(key)), key=lambda i: key[i].tolist())
    return {k: v[order] for k, v in det.items()}


@pytest.mark.parametrize("name, score_thresh", [("fcos_resnet50_fpn", 0.05), ("retinanet_resnet50_fpn", 0.0)])
def test_torchvision_postprocess_replacement(name, score_thresh):
    import torchvision

    from mutualops.integrations import torchvision as torchvision_postprocess

    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, min_size=192,
                                                        max_size=256).eval()
    # Random heads score about 0.01: lower the threshold so that NMS has real work.
    model.score_thresh = score_thresh
    images = [torch.rand(3, 200, 240), torch.rand(3, 180, 256)]
    with torch.no_grad():
        expected = model(images)
        torchvision_postprocess.install(model)
        got = model(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 50
        e, g = canonical(e), canonical(g)
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(g[key], e[key]), key
    with pytest.raises(TypeError, match="FCOS or RetinaNet"):
        torchvision_postprocess.install(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_without_iou_ranks_plain_scores(device, gen):
    # No IoU prediction: alpha has nothing to weigh, so a 0.01 probability stays 0.01 (not its square root).
    boxes = random_boxes(50, generator=gen, device=device)
    scores = torch.rand(50, generator=gen).to(device) * 0.2
    labels = torch.randint(0, 3, (50,), generator=gen).to(device)
    for alpha in (0.0, 0.5, 1.0):
        det = mutualops.rescored_nms(boxes, scores, labels=labels, alpha=alpha, score_threshold=0.05)
        assert torch.equal(det.scores, scores[det.indices])
        assert (det.scores > 0.05).all() and det.scores.numel() == int(torchvision_kept(boxes, scores, labels))
        for ours, theirs in zip((det.boxes, det.scores, det.labels), reference.rescored_nms(
                boxes, scores, labels=labels, alpha=alpha, score_threshold=0.05)[0][:3]):
            torch.testing.assert_close(ours, theirs)
    dense = mutualops.rescored_nms(boxes[None], scores[None, :, None], score_threshold=0.05)
    assert torch.equal(dense.scores, scores[dense.indices])


def torchvision_kept(boxes, scores, labels):
    above = scores > 0.05
    return min(tvo.batched_nms(boxes[above], scores[above], labels[above], 0.5).numel(), 100)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed_shape", [False, True])
def test_rescored_flat_negative_labels_are_padding(device, fixed_shape, gen):
    boxes = random_boxes(40, generator=gen, device=device)
    scores = torch.rand(40, generator=gen).to(device)
    labels = torch.randint(0, 3, (40,), generator=gen).to(device)
    labels[::2] = -1
    batch_index = (torch.arange(40, device=device) % 2)
    det = mutualops.rescored_nms(boxes, scores, labels=labels, batch_index=batch_index, num_images=2,
                                 score_threshold=0.0, fixed_shape=fixed_shape)
    kept = det.labels >= 0
    assert int(det.counts.sum()) == int(kept.sum())
    assert det.counts[0] == 0  # every candidate of image 0 was padding
    real = labels >= 0
    alone = mutualops.rescored_nms(boxes[real], scores[real], labels=labels[real], batch_index=batch_index[real],
                                   num_images=2, score_threshold=0.0, fixed_shape=fixed_shape)
    if fixed_shape:  # the width is min(max_detections, M): the padding rows widen it, with padding only
        width = alone.scores.shape[1]
        assert (det.labels[:, width:] == -1).all()
        det = type(det)(*(t[:, :width] if t is not None and t.dim() > 1 else t for t in det))
    torch.testing.assert_close(det.scores, alone.scores)
    torch.testing.assert_close(det.boxes, alone.boxes)


def test_reference_rescores_with_a_correctly_rounded_sqrt():
    # torch 2.14's vectorised CPU sqrt is one ulp off for about one float32 value in five; the kernels' sqrtf is
    # correctly rounded, and so must the reference be, or near-tied scores come out in another order. These two
    # candidates tie exactly under IEEE sqrt (lower index first); torch.sqrt ranks the second higher.
    import numpy as np

    cls = torch.tensor([0.7896854281425476, 0.4939534664154053] * 8)
    quality = torch.tensor([0.16989880800247192, 0.27161794900894165] * 8)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(100_000, dtype=dtype)
        assert np.array_equal(reference.ieee_sqrt(x).numpy(), np.sqrt(x.numpy()))
    boxes = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]]).repeat(8, 1) + torch.arange(16)[:, None] * 200
    det = mutualops.rescored_nms(boxes, cls, quality, labels=torch.zeros(16, dtype=torch.long), alpha=0.5,
                                 score_threshold=0.0)
    expected = reference.rescored_nms(boxes, cls, quality, labels=torch.zeros(16, dtype=torch.long), alpha=0.5,
                                      score_threshold=0.0)[0]
    assert det.indices.tolist() == expected[3].tolist() == list(range(16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_agrees_with_the_kernel_on_ties_levels_and_rounding(dtype):
    # The reference is the tests' oracle: ties go to the lower index also when levels are given, and float64
    # scores are ranked in float64.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10]]], dtype=dtype)
    for scores, levels in ((torch.tensor([[[0.8], [0.8]]], dtype=dtype), [1, 0]),
                           (torch.tensor([[[0.6000000001], [0.6000000002]]], dtype=dtype), [0, 1])):
        level_index = torch.tensor(levels)
        det = mutualops.rescored_nms(boxes, scores, level_index=level_index, num_levels=2, score_threshold=0.0)
        expected = reference.rescored_nms(boxes, scores, level_index=level_index, score_threshold=0.0)[0][3]
        assert det.indices.tolist() == expected.tolist()
    # A general alpha: the C library's powf/pow, which the reference reproduces to one ulp, not exactly.
    gen = torch.Generator().manual_seed(0)
    cls, q = torch.rand(2000, generator=gen, dtype=dtype), torch.rand(2000, generator=gen, dtype=dtype)
    boxes = torch.rand(2000, 2, generator=gen, dtype=dtype) * 1000
    boxes = torch.cat([boxes, boxes + 1], 1)
    det = mutualops.rescored_nms(boxes, cls, q, labels=torch.zeros(2000, dtype=torch.long), alpha=0.7,
                                 score_threshold=0.0, pre_nms_top_k=-1, max_detections=2000, fixed_shape=True)
    kept = det.indices[0, : det.counts[0]]
    ulp = torch.finfo(dtype).eps  # relative to the binade's top: one ulp is up to 2 eps of the value
    torch.testing.assert_close(det.scores[0, : det.counts[0]], reference.rescore(cls, q, 0.7)[kept], rtol=2 * ulp,
                               atol=0)


def test_meta_level_index_needs_num_levels():
    boxes, scores = torch.zeros(1, 3, 4, device="meta"), torch.zeros(1, 3, 2, device="meta")
    with pytest.raises(ValueError, match="num_levels"):
        mutualops.rescored_nms(boxes, scores, level_index=torch.zeros(3, dtype=torch.long, device="meta"),
                               fixed_shape=True)
    det = mutualops.rescored_nms(boxes, scores, level_index=torch.zeros(3, dtype=torch.long, device="meta"),
                                 num_levels=1, fixed_shape=True)
    assert det.scores.shape == (1, 6)


# ---- sizes that reach the CUDA kernels' tiling and grid limits -----------------------------------------------

def spread_clusters(gen, n, clusters):
    """n jittered copies of `clusters` boxes, with distinct scores (torchvision's sort breaks ties its own way)."""
    centres = random_boxes(clusters, generator=gen, scale=20000.0, min_size=20.0)
    boxes = centres[torch.randint(0, clusters, (n,), generator=gen)] + torch.randn(n, 4, generator=gen) * 2
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes, torch.randperm(n, generator=gen).float() / n


@pytest.mark.parametrize("device", DEVICES)
def test_nms_of_200000_boxes(device, gen):
    # On CUDA the suppression mask of 200000 boxes (5 GB at once) is built a few hundred rows at a time: a
    # kept box must still remove its cluster's boxes in later tiles.
    boxes, scores = spread_clusters(gen, 200_000, clusters=400)
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert torch.equal(keep, tvo.nms(boxes, scores, 0.5))
    idxs = torch.randint(0, 80, (200_000,), generator=gen)
    keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu()
    assert torch.equal(keep, _batched_nms_vanilla(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_nms_of_more_than_65535_images(device, gen):
    # A grid dimension holds 65535 blocks: images must not be one.
    images = 70_000
    boxes, scores, iou = dense_case(gen, images=images, points=3, classes=2)
    boxes[:, 1] = boxes[:, 0] + 0.5  # a suppressed twin in every image
    kwargs = dict(score_threshold=0.0, pre_nms_top_k=4, max_detections=3, fixed_shape=True)
    det = mutualops.rescored_nms(boxes.to(device), scores.to(device), iou.to(device), **kwargs)
    assert det.scores.shape == (images, 3)
    for img in (0, 1, 65535, 65536, images - 1):
        alone = mutualops.rescored_nms(boxes[img:img + 1], scores[img:img + 1], iou[img:img + 1], **kwargs)
        for got, want in zip(det, alone):
            assert (got is None and want is None) or torch.equal(got[img:img + 1].cpu(), want), img


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rescored_top_k_ties_at_the_cut(device, dtype, gen):
    # Scores on a coarse grid tie across the pre-NMS top-k cut of each level: the lower candidate index wins
    # (the CUDA radix select orders by score, then index, like the CPU heap and the reference).
    boxes, scores, iou = dense_case(gen, images=3, points=400, classes=6)
    scores = (scores * 8).round() / 8
    levels = torch.randint(0, 4, (400,), generator=gen)
    kwargs = dict(alpha=0.0, score_threshold=0.1, iou_threshold=0.5, pre_nms_top_k=37, max_detections=50)
    det = mutualops.rescored_nms(boxes.to(device, dtype), scores.to(device, dtype), iou.to(device, dtype),
                                 level_index=levels.to(device), num_levels=4, **kwargs)
    expected = reference.rescored_nms(boxes.to(dtype), scores.to(dtype), iou.to(dtype), level_index=levels, **kwargs)
    for img, (_, _, labels, indices) in enumerate(expected):
        mine = det.batch_index == img
        assert torch.equal(det.indices[mine].cpu(), indices) and torch.equal(det.labels[mine].cpu(), labels)


def test_nms_op_opcheck_and_raw_input(gen):
    boxes, scores = clustered_case(gen, 50)
    torch.library.opcheck(torch.ops.mutualops.nms.default, (boxes, scores, 0.5),
                          test_utils=("test_schema", "test_faketensor"))
    assert torch.equal(torch.ops.mutualops.nms(boxes, scores, 0.5), tvo.nms(boxes, scores, 0.5))
    with pytest.raises(ValueError, match="scores must have shape"):
        torch.ops.mutualops.nms(boxes, scores[:-1], 0.5)
    with pytest.raises(TypeError, match="scores must have the dtype"):
        torch.ops.mutualops.nms(boxes, scores.double(), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        torch.ops.mutualops.nms(boxes, scores, float("nan"))


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_flat_without_batch_index_is_image_0(device, gen):
    boxes, scores, iou = dense_case(gen, images=1, points=200, classes=1)
    b, s, q, labels = boxes[0].to(device), scores[0, :, 0].to(device), iou[0].to(device), torch.zeros(200, dtype=torch.long)
    one = mutualops.rescored_nms(b, s, q, labels=labels.to(device), fixed_shape=True)
    two = mutualops.rescored_nms(b, s, q, labels=labels.to(device), num_images=2, fixed_shape=True)
    assert two.counts.tolist() == [int(one.counts[0]), 0]
    assert torch.equal(two.indices[0], one.indices[0]) and (two.indices[1] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fixed_shape", [False, True])
def test_rescored_zero_images(device, fixed_shape):
    boxes, scores = torch.zeros(0, 5, 4, device=device), torch.zeros(0, 5, 3, device=device)
    det = mutualops.rescored_nms(boxes, scores, torch.zeros(0, 5, device=device), pre_nms_top_k=4,
                                 fixed_shape=fixed_shape)
    assert det.counts.shape == (0,) and det.scores.shape == ((0, 15) if fixed_shape else (0,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_raw_rescored_levels_without_level_index_are_level_0(device, dtype, gen):
    # Without level ids every candidate is level 0's, whatever num_levels says (float64 takes the CUDA
    # top-k path, float32 the radix select).
    boxes, scores, iou = (t.to(device, dtype) for t in dense_case(gen, images=2, points=100, classes=3))
    args = (0.5, 0.05, 1.0, 20, 100, False, False)
    one = torch.ops.mutualops.rescored_nms_dense(boxes, scores, iou, None, 1, *args)
    three = torch.ops.mutualops.rescored_nms_dense(boxes, scores, iou, None, 3, *args)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_rescored_ids_out_of_range_are_value_errors(device, gen):
    boxes, scores, iou = (t.to(device) for t in dense_case(gen, images=1, points=20, classes=2))
    with pytest.raises(ValueError, match="level_index must be in"):
        mutualops.rescored_nms(boxes, scores, iou, level_index=torch.full((20,), 3, device=device), num_levels=2)
    flat = dict(labels=torch.zeros(20, dtype=torch.long, device=device),
                batch_index=torch.full((20,), 5, device=device), num_images=2)
    with pytest.raises(ValueError, match="batch_index must be in"):
        mutualops.rescored_nms(boxes[0], scores[0, :, 0], iou[0], **flat)
