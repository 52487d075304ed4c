"""Oriented boxes: exact IoU against shapely, probiou and matrix NMS against Ultralytics, greedy NMS against
the reference, on random and adversarial boxes; hostile input; opcheck and torch.compile."""

import math

import numpy as np
import pytest
import torch

import mutualops
from mutualops import reference

from helpers import DEVICES

shapely = pytest.importorskip("shapely")

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}


def random_rotated(n, gen, *, extent=100.0, dtype=torch.float32, device="cpu", min_side=2.0, max_side=60.0):
    """Crowded xywhr boxes: centres uniform in [0, extent), sides log-uniform in [min_side, max_side], angles
    uniform in [-pi, pi)."""
    centre = torch.rand(n, 2, generator=gen, dtype=torch.float64) * extent
    log_side = torch.rand(n, 2, generator=gen, dtype=torch.float64) * math.log(max_side / min_side)
    side = min_side * log_side.exp()
    angle = (torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    return torch.cat((centre, side, angle), 1).to(dtype=dtype, device=device)


def polygons(boxes):
    """shapely polygons of xywhr boxes, corners from the boxes' own values in float64; a negative side is 0,
    as the ops define it."""
    boxes = boxes.detach().cpu().double().clone()
    boxes[:, 2:4] = boxes[:, 2:4].clamp(min=0)
    corners = reference.rotated_corners(boxes).numpy()
    return shapely.polygons(corners)


def shapely_iou(boxes1, boxes2):
    """The exact pairwise IoU (0 where the union is 0)."""
    p1, p2 = polygons(boxes1)[:, None], polygons(boxes2)[None, :]
    inter = shapely.area(shapely.intersection(p1, p2))
    union = shapely.area(p1) + shapely.area(p2) - inter
    return torch.from_numpy(np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0))


def adversarial_pairs(dtype):
    """(box a, box b) pairs where polygon clipping goes wrong if it is going to."""
    pi = math.pi
    base = [10.0, 20.0, 8.0, 4.0, 0.3]
    pairs = [
        (base, base),  # identical
        ([0, 0, 10, 10, 0], [0, 0, 4, 4, 0.7]),  # nested
        ([0, 0, 10, 10, 0], [10, 0, 10, 10, 0]),  # a shared edge
        ([0, 0, 10, 10, 0], [5, 0, 10, 10, 0]),  # half overlap, collinear edges
        ([0, 0, 10, 10, 0], [10, 10, 10, 10, 0]),  # touching corners
        ([0, 0, 10, 10, 0], [10, 10, 10, 10, pi / 4]),  # a corner touching an edge's end
        ([0, 0, 10, 10, 0], [0, 0, 10, 10, pi / 2]),  # the same square turned a quarter
        ([0, 0, 10, 4, 0], [0, 0, 10, 4, pi]),  # turned half: the same box
        ([0, 0, 10, 4, pi], [0, 0, 10, 4, -pi]),
        ([0, 0, 10, 4, 0], [0, 0, 4, 10, pi / 2]),  # w and h swapped and turned: the same box
        ([0, 0, 10, 10, 0], [0, 0, 10, 10, pi / 4]),  # an octagon
        ([0, 0, 0, 10, 0], [0, 0, 10, 10, 0]),  # zero width
        ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),  # two points: zero union
        ([0, 0, -4, 10, 0], [0, 0, 10, 10, 0]),  # negative width: area 0
        ([1e6, 1e6, 10, 10, 0.2], [1e6 + 3, 1e6 - 2, 12, 6, 1.1]),  # far from the origin
        ([1e6, -1e6, 10, 10, 0], [1e6, -1e6, 10, 10, 0]),
        ([0, 0, 1000, 0.01, 0.4], [0, 0, 1000, 0.01, 0.4001]),  # thin, nearly parallel
        ([0, 0, 20, 10, 1e-7], [20, 0, 20, 10, -1e-7]),  # nearly a shared edge
    ]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64).to(dtype)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64).to(dtype)
    return a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_iou_matches_shapely_on_random_boxes(device, dtype, gen):
    a = random_rotated(70, gen, dtype=dtype, device=device)
    b = random_rotated(50, gen, dtype=dtype, device=device)
    got = mutualops.box_iou_rotated(a, b)
    want = shapely_iou(a, b)
    assert (want > 0).float().mean() > 0.05  # the crowd overlaps
    torch.testing.assert_close(got.cpu().double(), want, atol=TOLERANCE[dtype], rtol=0)
    torch.testing.assert_close(mutualops.box_iou_rotated_aligned(a[:50], b).cpu().double(),
                               want.diagonal(), atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_iou_matches_shapely_on_adversarial_pairs(device, dtype):
    a, b = adversarial_pairs(dtype)
    want = shapely_iou(a, b).diagonal()
    for x, y in ((a, b), (b, a)):
        got = mutualops.box_iou_rotated_aligned(x.to(device), y.to(device)).cpu().double()
        torch.testing.assert_close(got, want, atol=TOLERANCE[dtype], rtol=0)
        torch.testing.assert_close(mutualops.box_iou_rotated(x.to(device), y.to(device)).diagonal().cpu().double(),
                                   want, atol=TOLERANCE[dtype], rtol=0)
    ours = mutualops.box_iou_rotated_aligned(a.to(device), b.to(device)).cpu()
    assert ours[0] == 1 and ours[12] == 0 and ours[13] == 0  # identical; zero union; a negative width is area 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_exact_iou_matches_shapely(dtype, gen):
    a, b = adversarial_pairs(dtype)
    torch.testing.assert_close(reference.box_iou_rotated_aligned(a, b).double(), shapely_iou(a, b).diagonal(),
                               atol=TOLERANCE[dtype], rtol=0)
    a, b = random_rotated(30, gen, dtype=dtype), random_rotated(20, gen, dtype=dtype)
    torch.testing.assert_close(reference.box_iou_rotated(a, b).double(), shapely_iou(a, b),
                               atol=TOLERANCE[dtype], rtol=0)


def test_corners_turn_as_ultralytics_turns_them(gen):
    ops = pytest.importorskip("ultralytics.utils.ops")
    boxes = random_rotated(40, gen, dtype=torch.float64)
    torch.testing.assert_close(reference.rotated_corners(boxes), ops.xywhr2xyxyxyxy(boxes))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(device, dtype, gen):
    a, b = random_rotated(20, gen, device=device), random_rotated(15, gen, device=device)
    for mode in mutualops.ops.rotated.MODES:
        got = mutualops.box_iou_rotated(a.to(dtype), b.to(dtype), mode)
        assert got.dtype == dtype
        want = reference.box_iou_rotated(a.to(dtype).float().cpu(), b.to(dtype).float().cpu(), mode)
        torch.testing.assert_close(got.float().cpu(), want.to(dtype).float(), atol=1e-2, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "probiou", "probiou_ciou"])
def test_batched_equals_stacked_pairwise(device, mode, gen):
    a = random_rotated(3 * 11, gen, device=device).reshape(3, 11, 5)
    b = random_rotated(3 * 7, gen, device=device).reshape(3, 7, 5)
    got = mutualops.box_iou_rotated(a, b, mode)
    torch.testing.assert_close(got, torch.stack([mutualops.box_iou_rotated(a[i], b[i], mode) for i in range(3)]))
    assert mutualops.box_iou_rotated(a[:, :0], b, mode).shape == (3, 0, 7)
    assert mutualops.box_iou_rotated(a[0, :0], b[0, :0], mode).shape == (0, 0)


# ---- probiou against Ultralytics ---------------------------------------------------------------------------------

metrics = pytest.importorskip("ultralytics.utils.metrics")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probiou_matches_ultralytics(device, dtype, gen):
    a = random_rotated(60, gen, dtype=dtype, device=device)
    b = random_rotated(45, gen, dtype=dtype, device=device)
    tol = dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(mutualops.box_iou_rotated(a, b, "probiou"), metrics.batch_probiou(a, b), **tol)
    for mode, ciou in (("probiou", False), ("probiou_ciou", True)):
        want = metrics.probiou(a[:45], b, CIoU=ciou).squeeze(-1)
        torch.testing.assert_close(mutualops.box_iou_rotated_aligned(a[:45], b, mode), want, **tol)
        torch.testing.assert_close(reference.probiou(a[:45], b, mode), want, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_probiou_on_degenerate_boxes_matches_ultralytics(device):
    a, b = adversarial_pairs(torch.float64)
    a, b = a[:11].to(device), b[:11].to(device)  # no zero or negative sizes: Ultralytics' CIoU divides by h
    torch.testing.assert_close(mutualops.box_iou_rotated_aligned(a, b, "probiou"),
                               metrics.probiou(a, b).squeeze(-1), atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(mutualops.box_iou_rotated(a, b, "probiou"), metrics.batch_probiou(a, b),
                               atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode, ciou", [("probiou", False), ("probiou_ciou", True)])
@pytest.mark.parametrize("floor", [0.0, 0.01])  # 0.01: what Ultralytics' OBB box loss passes
def test_probiou_gradient_is_ultralytics_autograd(device, mode, ciou, floor, gen):
    a = random_rotated(30, gen, dtype=torch.float64, device=device, min_side=0.05)
    b = (a + 0.5 * torch.randn(a.shape, generator=gen, dtype=torch.float64).to(device)).requires_grad_()
    a.requires_grad_()
    ours_value = mutualops.box_iou_rotated_aligned(a, b, mode, floor=floor)
    theirs_value = metrics.probiou(a, b, CIoU=ciou, floor=floor).squeeze(-1)
    torch.testing.assert_close(ours_value, theirs_value, atol=1e-12, rtol=1e-10)
    ours = torch.autograd.grad(ours_value.sum(), (a, b))
    theirs = torch.autograd.grad(theirs_value.sum(), (a, b))
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-8)
    torch.autograd.gradcheck(lambda x, y: mutualops.box_iou_rotated_aligned(x, y, "probiou"), (a[:6], b[:6]))


def test_exact_iou_has_no_gradient_and_says_so(gen):
    a = random_rotated(4, gen).requires_grad_()
    with pytest.raises(RuntimeError, match="probiou"):
        mutualops.box_iou_rotated_aligned(a, a.detach() + 1).sum().backward()
    assert not mutualops.box_iou_rotated(a, a).requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_boxes_give_nan(device, gen):
    a = random_rotated(4, gen, device=device)
    b = a.clone()
    b[1, 0], b[2, 4], b[3, 2] = math.nan, math.inf, -math.inf
    for mode in ("iou", "probiou"):
        out = mutualops.box_iou_rotated_aligned(a, b, mode).cpu()
        assert torch.isfinite(out[0]) and torch.isnan(out[1:]).all(), (mode, out)


# ---- NMS ---------------------------------------------------------------------------------------------------------


def crowd(n, gen, device, dtype=torch.float32, extent=300.0):
    """Overlapping detections: a few hundred objects, each seen several times with jittered boxes."""
    objects = random_rotated(max(n // 6, 1), gen, extent=extent, dtype=torch.float64, min_side=6, max_side=50)
    pick = torch.randint(0, len(objects), (n,), generator=gen)
    boxes = objects[pick] + torch.randn(n, 5, generator=gen, dtype=torch.float64) * torch.tensor(
        [2.0, 2.0, 2.0, 2.0, 0.1], dtype=torch.float64)
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    return boxes.to(dtype=dtype, device=device), scores.to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_rotated_matches_reference(device, dtype, threshold, gen):
    boxes, scores = crowd(400, gen, device, dtype)
    boxes[3, 1] = math.nan
    scores[5] = math.inf
    scores[7:9] = scores[9]  # ties go to the lower index
    keep = mutualops.nms_rotated(boxes, scores, threshold)
    torch.testing.assert_close(keep.cpu(), reference.nms_rotated(boxes.cpu(), scores.cpu(), threshold))
    assert 3 not in keep.tolist() and 5 not in keep.tolist()
    idxs = torch.randint(0, 5, (400,), generator=gen).to(device)
    torch.testing.assert_close(mutualops.batched_nms_rotated(boxes, scores, idxs, threshold).cpu(),
                               reference.batched_nms_rotated(boxes.cpu(), scores.cpu(), idxs.cpu(), threshold))


nms_module = pytest.importorskip("ultralytics.utils.nms")


def ultralytics_fast_nms(boxes, scores, threshold):
    return nms_module.TorchNMS.fast_nms(boxes, scores, threshold, iou_func=metrics.batch_probiou)


# Threshold 0 asks whether 1 - sqrt(1 - exp(-bd) + eps) rounds above 0, which for every pair with bd near 16
# hangs on the last bit of exp: torch's vectorised exp and the C library's differ there in float32, so that
# case is compared in float64 only.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, threshold", [(torch.float32, t) for t in (0.1, 0.45, 0.7, 0.95)]
                         + [(torch.float64, t) for t in (0.0, 0.1, 0.45, 0.7, 0.95)])
def test_fast_nms_rotated_keeps_what_ultralytics_keeps(device, dtype, threshold, gen):
    boxes, scores = crowd(600, gen, device, dtype)
    want = ultralytics_fast_nms(boxes, scores, threshold)
    got = mutualops.fast_nms_rotated(boxes, scores, threshold)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(reference.fast_nms_rotated(boxes.cpu(), scores.cpu(), threshold), want.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_fast_nms_rotated_with_class_offsets_as_ultralytics_separates_classes(device, gen):
    boxes, scores = crowd(500, gen, device)
    labels = torch.randint(0, 15, (500,), generator=gen).to(device)
    offset = boxes.clone()
    offset[:, :2] += labels[:, None].float() * 7680
    torch.testing.assert_close(mutualops.fast_nms_rotated(offset, scores, 0.7), ultralytics_fast_nms(offset, scores, 0.7))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.5, 0.9])
def test_fast_nms_rotated_is_exact_on_boxes_the_distance_bound_cannot_cover(device, threshold, gen):
    # Thin (1:10000), tiny (below the Gaussians' eps), zero-width, huge and ordinary boxes mixed: the pairs the
    # kernel skips by distance must be exactly those that cannot pass, so its keeps are the full matrix's, built
    # from the same kernels' probiou.
    n = 300
    boxes, scores = crowd(n, gen, "cpu", torch.float64, extent=80)
    kind = torch.arange(n) % 6
    boxes[kind == 1, 2] *= 100
    boxes[kind == 1, 3] /= 100
    boxes[kind == 2, 2:4] *= 1e-4
    boxes[kind == 3, 2] = 0
    boxes[kind == 4, 2:4] *= 20
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype=dtype, device=device), scores.to(dtype=dtype, device=device)
        order = torch.sort(s, descending=True, stable=True).indices
        over = (mutualops.box_iou_rotated(b[order], b[order], "probiou") > threshold).triu(diagonal=1)
        want = order[~over.any(0)]
        assert 0 < len(want) < n
        torch.testing.assert_close(mutualops.fast_nms_rotated(b, s, threshold), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_nms_rotated_on_boxes_whose_gaussians_overflow(device, dtype):
    # Two determinants of huge boxes multiply past float32's range inside t3: the computed probiou of far-apart
    # boxes comes out near 1 and Ultralytics suppresses; so must the op, which cannot prune such boxes by distance.
    boxes = torch.tensor([[0.0, 0, 1e8, 1e8, 0], [1e8, 0, 1000, 1000, 0], [0, 0, 3e5, 3e5, 0],
                          [1.5e5, 0, 3e5, 3e5, 0], [6e5, 0, 3e5, 3e5, 0]], device=device).to(dtype)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device).to(dtype)
    want = ultralytics_fast_nms(boxes.float(), scores.float(), 0.7)
    assert len(want) < 5
    torch.testing.assert_close(mutualops.fast_nms_rotated(boxes, scores, 0.7), want)


def test_fast_nms_rotated_rounds_the_threshold_as_ultralytics_compares_it():
    # torch compares a float32 matrix with float32(threshold); a probiou equal to that value is not above it.
    boxes = torch.tensor([[10.0, 10, 20, 8, 0.3], [13, 11, 18, 9, 0.5]])
    scores = torch.tensor([0.9, 0.8])
    value = np.float32(metrics.batch_probiou(boxes, boxes)[0, 1].item())
    threshold = float(value) - float(np.spacing(value)) / 4  # rounds to value in float32
    assert np.float32(threshold) == value and threshold < float(value)
    want = ultralytics_fast_nms(boxes, scores, threshold)
    assert want.tolist() == [0, 1]
    torch.testing.assert_close(mutualops.fast_nms_rotated(boxes, scores, threshold), want)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_nms_rotated_drops_non_finite_candidates(device, gen):
    boxes, scores = crowd(50, gen, device)
    boxes[0, 2], scores[1] = math.nan, math.nan
    keep = mutualops.fast_nms_rotated(boxes, scores, 0.5).tolist()
    assert 0 not in keep and 1 not in keep
    clean = torch.ones(50, dtype=torch.bool)
    clean[:2] = False
    idx = clean.nonzero().squeeze(1).to(device)
    assert keep == idx[ultralytics_fast_nms(boxes[idx], scores[idx], 0.5)].tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_nms_on_empty_and_single_inputs(device):
    empty = torch.zeros(0, 5, device=device)
    for fn in (mutualops.nms_rotated, mutualops.fast_nms_rotated):
        assert fn(empty, torch.zeros(0, device=device), 0.5).shape == (0,)
        one = fn(torch.tensor([[1.0, 1, 2, 2, 0]], device=device), torch.ones(1, device=device), 0.5)
        assert one.tolist() == [0] and one.dtype == torch.long
    assert mutualops.batched_nms_rotated(empty, torch.zeros(0, device=device),
                                         torch.zeros(0, dtype=torch.long, device=device), 0.5).shape == (0,)


def test_mixed_dtypes_compute_in_the_wider_one(gen):
    # Under autocast a half-precision head meets float32 boxes.
    boxes, scores = crowd(100, gen, "cpu")
    half = scores.half()
    for fn in (mutualops.nms_rotated, mutualops.fast_nms_rotated):
        assert torch.equal(fn(boxes, half, 0.5), fn(boxes, half.float(), 0.5))
    torch.testing.assert_close(mutualops.box_iou_rotated(boxes.half(), boxes, "probiou"),
                               mutualops.box_iou_rotated(boxes.half().float(), boxes, "probiou"))


# ---- hostile input, opcheck, compile -----------------------------------------------------------------------------

OP = torch.ops.mutualops
R = torch.tensor([[1.0, 2, 3, 4, 0.5], [2, 2, 3, 3, 0.1], [5, 5, 1, 1, 0]])
S = torch.tensor([0.9, 0.8, 0.7])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: mutualops.box_iou_rotated(R[:, :4], R), ValueError, "boxes1.*5"),
        (lambda: mutualops.box_iou_rotated(R, R[None]), ValueError, "rank"),
        (lambda: mutualops.box_iou_rotated(R[None].expand(2, -1, -1), R[None]), ValueError, "batch"),
        (lambda: mutualops.box_iou_rotated(R.long(), R), TypeError, "boxes1"),
        (lambda: mutualops.box_iou_rotated(R, R.tolist()), TypeError, "boxes2"),
        (lambda: mutualops.box_iou_rotated(R, R, "giou"), ValueError, "mode"),
        (lambda: mutualops.box_iou_rotated(R, R, "probiou", eps=-1), ValueError, "eps"),
        (lambda: mutualops.box_iou_rotated(R, R, "probiou", eps=math.nan), ValueError, "eps"),
        (lambda: mutualops.box_iou_rotated(R, R, "probiou", eps=None), TypeError, "eps"),
        (lambda: mutualops.box_iou_rotated(R, R.to("meta")), ValueError, "device"),
        (lambda: mutualops.box_iou_rotated(R.to(torch.float8_e4m3fn), R), TypeError, "boxes1.*float16"),
        (lambda: mutualops.box_iou_rotated_aligned(R, R[:2]), ValueError, "same shape"),
        (lambda: mutualops.box_iou_rotated_aligned(R[:, :4], R[:, :4]), ValueError, "boxes1"),
        (lambda: mutualops.box_iou_rotated_aligned(R, R, "probiou", floor=-0.01), ValueError, "floor"),
        (lambda: mutualops.box_iou_rotated_aligned(R, R, "probiou", floor=math.inf), ValueError, "floor"),
        (lambda: mutualops.box_iou_rotated_aligned(R, R, floor=0.01), ValueError, "floor applies to the probiou"),
        (lambda: torch.ops.mutualops.box_iou_rotated_aligned(R, R, "iou", 1e-7, 0.01), ValueError, "floor"),
        (lambda: torch.ops.mutualops.box_iou_rotated_aligned(R, R, "probiou", 1e-7, math.nan), ValueError,
         "floor"),
        (lambda: mutualops.nms_rotated(R, S[:2], 0.5), ValueError, "scores"),
        (lambda: mutualops.nms_rotated(R, S, 1.5), ValueError, "iou_threshold"),
        (lambda: mutualops.nms_rotated(R, S, math.nan), ValueError, "iou_threshold"),
        (lambda: mutualops.nms_rotated(R, S.long(), 0.5), TypeError, "scores"),
        (lambda: mutualops.nms_rotated(R[:, :4], S, 0.5), ValueError, "boxes"),
        (lambda: mutualops.nms_rotated(R.to("meta"), S.to("meta"), 0.5), ValueError, "meta"),
        (lambda: mutualops.batched_nms_rotated(R, S, S, 0.5), TypeError, "idxs"),
        (lambda: mutualops.batched_nms_rotated(R, S, torch.zeros(2, dtype=torch.long), 0.5), ValueError, "idxs"),
        (lambda: mutualops.fast_nms_rotated(R, S, -0.1), ValueError, "iou_threshold"),
        (lambda: mutualops.fast_nms_rotated(R, S, 0.5, eps=2.0), ValueError, "eps"),
        (lambda: torch.ops.mutualops.box_iou_rotated(R, R.double(), "iou", 1e-7), TypeError, "dtype"),
        (lambda: torch.ops.mutualops.box_iou_rotated(R[:, :4], R[:, :4], "iou", 1e-7), ValueError, "5 values"),
        (lambda: torch.ops.mutualops.box_iou_rotated(R, R, "dice", 1e-7), ValueError, "mode"),
        (lambda: torch.ops.mutualops.box_iou_rotated(R, R, "probiou", math.inf), ValueError, "eps"),
        (lambda: torch.ops.mutualops.box_iou_rotated_aligned(R, R[:2], "iou", 1e-7), ValueError, "same N"),
        (lambda: torch.ops.mutualops.nms_rotated(R, S.double(), 0.5), TypeError, "dtype"),
        (lambda: torch.ops.mutualops.nms_rotated(R.long(), S.long(), 0.5), TypeError, "floating-point"),
        (lambda: torch.ops.mutualops.batched_nms_rotated(R, S, S, 0.5), TypeError, "idxs"),
        (lambda: torch.ops.mutualops.batched_nms_rotated(R, S, torch.zeros(3, dtype=torch.bool), 0.5), TypeError,
         "idxs"),
        (lambda: torch.ops.mutualops.fast_nms_rotated(R, S, 2.0, 1e-7), ValueError, "iou_threshold"),
        (lambda: torch.ops.mutualops.fast_nms_rotated(R, S, 0.5, -1.0), ValueError, "eps"),
        (lambda: torch.ops.mutualops.fast_nms_rotated(R[None], S, 0.5, 1e-7), ValueError, "boxes"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: OP.box_iou_rotated(meta(4, 4), meta(3, 5), "iou", 1e-7), ValueError, "boxes1"),
        (lambda: OP.box_iou_rotated(meta(4, 5, dtype=torch.int32), meta(3, 5, dtype=torch.int32), "iou", 1e-7),
         TypeError, "boxes1"),
        (lambda: OP.box_iou_rotated(meta(4, 5), meta(3, 5), "zzz", 1e-7), ValueError, "mode"),
        (lambda: OP.box_iou_rotated(meta(4, 5), meta(3, 5), "probiou", 5.0), ValueError, "eps"),
        (lambda: OP.box_iou_rotated(meta(2, 4, 5), meta(3, 5), "iou", 1e-7), ValueError, "both"),
        (lambda: OP.box_iou_rotated(meta(2, 4, 5), meta(3, 3, 5), "iou", 1e-7), ValueError, "batch size"),
        (lambda: OP.box_iou_rotated(meta(4, 5), meta(3, 5, dtype=torch.float64), "iou", 1e-7), TypeError, "dtype"),
        (lambda: OP.box_iou_rotated(meta(4, 5), torch.rand(3, 5), "iou", 1e-7), ValueError, "device"),
        (lambda: OP.box_iou_rotated_aligned(meta(4, 5), meta(7, 5), "iou", 1e-7), ValueError, "same N"),
        (lambda: OP.nms_rotated(meta(4, 5), meta(4), 0.5), ValueError, "meta tensor"),
        (lambda: OP.fast_nms_rotated(meta(4, 5), meta(4), 0.5, 1e-7), ValueError, "meta tensor"),
        (lambda: OP.fast_nms_rotated(torch.rand(4, 5), meta(4), 0.5, 1e-7), ValueError, "device"),
        (lambda: OP.nms_rotated(meta(4, 5), meta(3), 0.5), ValueError, "scores"),
        (lambda: OP.batched_nms_rotated(meta(4, 5), meta(4), meta(4), 0.5), TypeError, "idxs"),
        (lambda: OP.nms(meta(4, 4), meta(4), 0.5), ValueError, "meta tensor"),
    ],
)
def test_raw_ops_on_meta_tensors_check_as_on_real_ones(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, gen):
    a, b = random_rotated(9, gen, device=device), random_rotated(7, gen, device=device)
    scores = torch.rand(9, generator=gen).to(device)
    for mode in mutualops.ops.rotated.MODES:
        torch.library.opcheck(torch.ops.mutualops.box_iou_rotated.default, (a, b, mode, 1e-7))
        torch.library.opcheck(torch.ops.mutualops.box_iou_rotated.default, (a[None], b[None], mode, 1e-7))
    for mode in ("probiou", "probiou_ciou"):
        torch.library.opcheck(torch.ops.mutualops.box_iou_rotated_aligned.default,
                              (a.double().requires_grad_(), a.double().flip(0).requires_grad_(), mode, 1e-7))
        torch.library.opcheck(torch.ops.mutualops.box_iou_rotated_aligned.default,
                              (a.double().requires_grad_(), a.double().flip(0).requires_grad_(), mode, 1e-7, 0.01))
    torch.library.opcheck(torch.ops.mutualops.box_iou_rotated_aligned.default, (a, a.flip(0), "iou", 1e-7))
    torch.library.opcheck(torch.ops.mutualops.nms_rotated.default, (a, scores, 0.5))
    torch.library.opcheck(torch.ops.mutualops.batched_nms_rotated.default,
                          (a, scores, torch.arange(9, device=device) % 2, 0.5))
    torch.library.opcheck(torch.ops.mutualops.fast_nms_rotated.default, (a, scores, 0.5, 1e-7))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device, gen):
    torch._dynamo.reset()

    def fn(a, b):
        return (mutualops.box_iou_rotated(a, b).amax(1) + mutualops.box_iou_rotated(a, b, "probiou").amax(1)
                + 1 - mutualops.box_iou_rotated_aligned(a[:5], b[:5], "probiou_ciou").sum())

    a, b = random_rotated(20, gen, device=device), random_rotated(10, gen, device=device)
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(a, b), fn(a, b))
    torch.testing.assert_close(compiled(a[:13], b[:7]), fn(a[:13], b[:7]))


def test_nms_outputs_do_not_claim_a_gradient(gen):
    boxes, scores = crowd(30, gen, "cpu")
    boxes.requires_grad_()
    for keep in (mutualops.nms_rotated(boxes, scores, 0.5), mutualops.fast_nms_rotated(boxes, scores, 0.5)):
        assert not keep.requires_grad
