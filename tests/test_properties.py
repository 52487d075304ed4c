"""Property-based tests of every op on hostile input (issue 11: "every op safe and exact on hostile input").

One property for every public op and every raw `torch.ops.mutualops` op: a call either raises TypeError,
ValueError or IndexError whose message names what is wrong, or returns what `mutualops.reference` returns on the
same input (within a dtype's tolerance, NaN where the reference gives NaN). Any other exception fails the test, and
so does a silent difference from the reference.

Inputs are random shapes (0-size included), dtypes (the four float types and wrong ones), layouts (strided,
transposed, expanded) and values (NaN, +-inf, 1e30, negative, degenerate and duplicate boxes), with indices out of
range. Raw ops with hostile indices run in a subprocess, so that a crash fails a test instead of killing pytest.

Every property runs on each device (CUDA cases skip without a GPU; `make gpu-check` runs them, and runs them again
under compute-sanitizer): the inputs are drawn on the CPU and moved, now and then one is left behind on the CPU (a
wrong device), and the reference always computes on the CPU.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

import mutualops
from mutualops import reference
from mutualops._validate import promote

from helpers import DEVICES

pytest.importorskip("hypothesis", reason="the property tests draw their inputs with hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ALLOWED = (TypeError, ValueError, IndexError)


def examples(n):
    """n examples per property, or fewer where MUTUALOPS_PROPERTY_EXAMPLES caps them (`make gpu-check` does under
    compute-sanitizer, which runs every kernel many times slower)."""
    return min(n, int(os.environ.get("MUTUALOPS_PROPERTY_EXAMPLES", n)))


# Small example counts: the whole file runs in well under two minutes on two CPU cores.
# derandomize: every run draws the same examples, so a red CI run is reproducible, never a flake; set it to
# False locally to explore new ones.
SETTINGS = settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True)
FEW = settings(SETTINGS, max_examples=examples(30))
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
WRONG = [torch.int32, torch.int64, torch.bool, torch.complex64]
SPECIAL = [math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0, -0.0, -7.5]
HOSTILE_INDEX = [-1, -3, 10**12, -(10**12), 2**31, 2**63 - 1]
TOL = {torch.float16: 1e-2, torch.bfloat16: 4e-2, torch.float32: 1e-5, torch.float64: 1e-9}
MODES = ["iou", "giou", "diou", "ciou", "iof"]
OP = torch.ops.mutualops


# --- the property ----------------------------------------------------------------------------------------------


def attempt(call, *names):
    """call()'s result and None, or None and the error. An error must be TypeError/ValueError/IndexError and its
    message must name one of `names` (the arguments it could be about); anything else propagates and fails."""
    try:
        return call(), None
    except ALLOWED as e:
        message = str(e)
        assert any(n in message for n in names), f"{type(e).__name__}({message!r}) names none of {names}"
        return None, e


def assert_same(out, expected, dtype=None, what="result"):
    """out equals expected: integers and bools exactly, floats within dtype's tolerance, NaN where NaN."""
    assert out.shape == expected.shape, f"{what}: shape {list(out.shape)} != reference {list(expected.shape)}"
    out, expected = out.cpu(), expected.cpu()
    if not out.is_floating_point():
        assert torch.equal(out, expected.to(out.dtype)), f"{what}: {out} != reference {expected}"
        return
    tol = TOL[dtype or out.dtype]
    torch.testing.assert_close(out.double(), expected.double(), rtol=tol, atol=tol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def to_device(value, device):
    """value with every tensor in it (in tuples and lists too) on device."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def on_device(draw, device):
    """data.draw for a property on `device`: what it draws goes there, except that now and then a tensor stays on
    the CPU, which must give a clear error naming it or the right result, never a crash."""
    if device == "cpu":
        return draw

    def draw_on(strategy):
        value = draw(strategy)
        if isinstance(value, torch.Tensor) and draw(st.integers(0, 24)) == 0:
            return value
        return to_device(value, device)

    return draw_on


class OnCpu:
    """The reference module, called on CPU copies of its tensor arguments: the expected result does not depend
    on the device under test (nor on its fused multiply-adds)."""

    def __getattr__(self, name):
        fn = getattr(reference, name)

        def call(*args, **kwargs):
            return fn(*to_device(args, "cpu"), **{k: to_device(v, "cpu") for k, v in kwargs.items()})

        return call


ref = OnCpu()


# --- strategies, one per input kind ------------------------------------------------------------------------------


def dtypes(wrong=True):
    """A float type, now and then a wrong one (integer, bool, complex)."""
    return st.sampled_from(FLOATS * 3 + WRONG if wrong else FLOATS)


def cast(t, dtype):
    """A float64 tensor in `dtype`; integer casts see finite values only (casting NaN to int is undefined)."""
    if dtype == torch.bool:
        return t > 50
    if not (dtype.is_floating_point or dtype.is_complex):
        return t.nan_to_num(0.0, 1e9, -1e9).clamp(-1e9, 1e9).to(dtype)
    return t.to(dtype)


@st.composite
def values(draw, shape, dtype, low=0.0, high=1.0, hostile=True):
    """A tensor of `shape` uniform in [low, high), or of small whole numbers (ties), with a few special values
    (NaN, +-inf, 1e30, -7.5, -0) dropped in when hostile."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    t = torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low
    if draw(st.booleans()):  # ties and exact zeros
        t = (t * 4).round() / 4
    if hostile and t.numel():
        for pos, v in draw(st.lists(st.tuples(st.integers(0, t.numel() - 1), st.sampled_from(SPECIAL)), max_size=3)):
            t.view(-1)[pos] = v
    return cast(t, dtype)


@st.composite
def boxes(draw, lead, dtype, hostile=True, scale=50.0):
    """xyxy boxes [*lead, 4]: mostly valid, some flipped or zero-area (negative or zero width), duplicates from
    rounding, and special coordinates when hostile."""
    xy = draw(values(tuple(lead) + (2,), torch.float64, 0.0, scale, hostile=False))
    wh = draw(values(tuple(lead) + (2,), torch.float64, -0.1 * scale, 0.6 * scale, hostile=False))
    b = torch.cat([xy, xy + wh], -1)
    if hostile and b.numel():
        for pos, v in draw(st.lists(st.tuples(st.integers(0, b.numel() - 1), st.sampled_from(SPECIAL)), max_size=3)):
            b.view(-1)[pos] = v
    return cast(b, dtype)


@st.composite
def indices(draw, shape, low, high, hostile=True, dtype=torch.int64, huge=True):
    """Integer indices in [low, high), with out-of-range, negative and (unless huge=False) huge ones dropped in
    when hostile."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    t = torch.randint(low, max(high, low + 1), shape, generator=g, dtype=torch.int64)
    bad = HOSTILE_INDEX + [high] if huge else [-1, -3, high, high + 7]
    if hostile and t.numel():
        for pos, v in draw(st.lists(st.tuples(st.integers(0, t.numel() - 1), st.sampled_from(bad)), max_size=2)):
            t.view(-1)[pos] = v
    if dtype == torch.bool:
        return t > 0
    if dtype.is_floating_point or dtype == torch.int64:
        return t.to(dtype)
    info = torch.iinfo(dtype)  # narrow integers: the hostile values at the type's bounds
    return t.clamp(info.min, info.max).to(dtype)


@st.composite
def layout(draw, t):
    """The same tensor contiguous, strided (every other element of a wider one), transposed (column-major) or
    expanded (its first row broadcast: stride 0, values change but both sides see the same input)."""
    kind = draw(st.sampled_from(["contiguous", "strided", "transposed", "expanded"]))
    if kind == "strided":
        return torch.stack([t, t], -1)[..., 0]
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "expanded" and t.dim() >= 1 and t.shape[0] > 0:
        return t[:1].expand(t.shape)
    return t


def threshold(valid=(0.0, 0.3, 0.5, 0.7, 1.0)):
    """A threshold in [0, 1], or a hostile one (NaN, inf, out of range)."""
    return st.sampled_from(list(valid) * 2 + [math.nan, math.inf, -0.1, 1.5])


sizes = st.integers(0, 5)


def floatish(t):
    """box_iou takes integer boxes as float32 (torchvision's rule); the reference wants floats."""
    integer = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
    return t.float() if integer else t


# --- box IoU --------------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_pairwise_and_batched(device, data):
    draw = on_device(data.draw, device)
    batched = draw(st.booleans())
    b, n, m = draw(st.integers(0, 2)), draw(sizes), draw(sizes)
    d1 = draw(dtypes())
    d2 = draw(st.sampled_from([d1, d1, draw(dtypes())]))  # mixed dtypes compare in the wider one
    a = draw(layout(draw(boxes((b, n) if batched else (n,), d1))))
    c = draw(layout(draw(boxes((b, m) if batched else (m,), d2))))
    if draw(st.integers(0, 9)) == 0:  # a wrong last dimension or rank
        a = a[..., :3] if draw(st.booleans()) else a.reshape(-1)
    mode = draw(st.sampled_from(MODES * 3 + ["xiou"]))
    out, err = attempt(lambda: mutualops.box_iou(a, c, mode), "boxes1", "boxes2", "mode")
    if err is None:
        a32, c32 = promote(floatish(a), floatish(c))
        assert_same(out, ref.box_iou(a32, c32, mode), what=f"box_iou {mode}")
    # The raw op wants one float dtype; it must check everything else itself.
    out, err = attempt(lambda: OP.box_iou(a, a if a.dim() == c.dim() else c, mode), "boxes1", "boxes2", "mode")
    if err is None:
        assert_same(out, ref.box_iou(a, a if a.dim() == c.dim() else c, mode), what=f"raw box_iou {mode}")


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_aligned_and_loss(device, data):
    draw = on_device(data.draw, device)
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    d1 = draw(dtypes())
    d2 = draw(st.sampled_from([d1, d1, draw(dtypes())]))
    a = draw(layout(draw(boxes(lead, d1))))
    c = draw(layout(draw(boxes(lead, d2))))
    if draw(st.integers(0, 9)) == 0:
        c = c[:1] if draw(st.booleans()) and c.dim() > 1 else c[..., :2]
    mode = draw(st.sampled_from(MODES * 3 + ["xiou"]))
    out, err = attempt(lambda: mutualops.box_iou_aligned(a, c, mode), "boxes1", "boxes2", "mode")
    if err is None:
        assert_same(out, ref.box_iou_aligned(*promote(a, c), mode), what=f"box_iou_aligned {mode}")
    a2, c2 = a.reshape(-1, 4) if a.shape[-1:] == (4,) else a, c.reshape(-1, 4) if c.shape[-1:] == (4,) else c
    out, err = attempt(lambda: OP.box_iou_aligned(a2, c2, mode), "boxes1", "boxes2", "mode")
    if err is None:
        assert_same(out, ref.box_iou_aligned(a2, c2, mode), what=f"raw box_iou_aligned {mode}")

    # The losses: 1 - overlap, weighted, reduced.
    weight = None
    if draw(st.booleans()):
        weight = draw(layout(draw(values(lead if draw(st.integers(0, 5)) else lead + (1,), draw(dtypes()), 0, 2))))
    loss_mode = draw(st.sampled_from(["iou", "giou", "diou", "ciou", "iof"]))
    reduction = draw(st.sampled_from(["none", "mean", "sum", "max"]))
    out, err = attempt(lambda: mutualops.iou_loss(a, c, loss_mode, reduction, weight),
                       "boxes1", "boxes2", "mode", "reduction", "weight")
    if err is None:
        expected = ref.iou_loss(*promote(a, c), loss_mode, reduction, weight)
        # A mean or sum of half-precision terms rounds once per term.
        assert_same(out, expected, dtype=torch.bfloat16 if out.dtype in FLOATS[:2] else None, what="iou_loss")


@FEW
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_gradients_match_reference_autograd(device, data):
    # The backward kernels (box_iou_aligned_backward, also behind pairwise box_iou) against torch's autograd of the
    # reference, on finite float64 boxes of continuous coordinates (a min/max tie splits as torch does, but a
    # coordinate exactly at a clamp's kink has two valid subgradients, so no rounding to ties here).
    # Drawn on the CPU and moved whole: a tensor left on the CPU is the other properties' business.
    draw = data.draw
    n, m = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    mode = draw(st.sampled_from(MODES))
    a = draw(boxes((n,), torch.float64, hostile=False)) + 1e-3 * torch.rand(n, 4, dtype=torch.float64)
    c = draw(boxes((m,), torch.float64, hostile=False)) + 1e-3 * torch.rand(m, 4, dtype=torch.float64)
    for fn, ref_fn, x, y in ((mutualops.box_iou, reference.box_iou, a, c),
                             (mutualops.box_iou_aligned, reference.box_iou_aligned, a, a.flip(0))):
        x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
        x, y = x.to(device).requires_grad_(), y.to(device).requires_grad_()
        out = fn(x, y, mode)
        weight = torch.rand(out.shape, dtype=out.dtype)
        ours = torch.autograd.grad(out, (x, y), weight.to(device), allow_unused=True)
        theirs = torch.autograd.grad(ref_fn(x2, y2, mode), (x2, y2), weight, allow_unused=True)
        for g, e in zip(ours, theirs):
            assert_same(g if g is not None else torch.zeros_like(x), e if e is not None else torch.zeros_like(x2),
                        dtype=torch.float32, what=f"{fn.__name__} gradient {mode}")


# --- NMS ------------------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_nms_and_batched_nms(device, data):
    draw = on_device(data.draw, device)
    n = draw(st.integers(0, 8))
    dtype = draw(dtypes())
    b = draw(layout(draw(boxes((n,), dtype))))
    s = draw(layout(draw(values((n,), draw(st.sampled_from([dtype, dtype, dtype, draw(dtypes())])), 0, 1))))
    idx_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.int8, torch.float32, torch.bool]))
    idxs = draw(layout(draw(indices((n,), 0, 3, dtype=idx_dtype))))
    thr = draw(threshold())
    names = ("boxes", "scores", "idxs", "iou_threshold")
    keep, err = attempt(lambda: mutualops.nms(b, s, thr), *names)
    if err is None:
        assert_same(keep, ref.nms(b, s, thr), what="nms")
    keep, err = attempt(lambda: mutualops.batched_nms(b, s, idxs, thr), *names)
    if err is None:
        assert_same(keep, ref.batched_nms(b, s, idxs, thr), what="batched_nms")
    keep, err = attempt(lambda: OP.batched_nms(b, s, idxs, thr), *names)
    if err is None:
        assert_same(keep, ref.batched_nms(b, s, idxs, thr), what="raw batched_nms")
        # NMS never keeps a non-finite box or score.
        assert torch.isfinite(b[keep]).all() and torch.isfinite(s[keep]).all()


def rescored_options(draw):
    """The scalar options of rescored_nms; one of them now and then hostile (several at once would only test
    the first check)."""
    opts = dict(
        alpha=draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
        score_threshold=draw(st.sampled_from([0.0, 0.05, 0.2, 0.5])),
        iou_threshold=draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
        pre_nms_top_k=draw(st.sampled_from([-1, 0, 1, 2, 1000])),
        # 10**12: the padded width stops at the candidates per image.
        max_detections=draw(st.sampled_from([0, 1, 3, 100, 10**12])),
        class_agnostic=draw(st.booleans()),
    )
    hostile = dict(alpha=[math.nan, 1.5, -0.5], score_threshold=[math.nan, math.inf, -0.1],
                   iou_threshold=[math.nan, 1.5], pre_nms_top_k=[-2, 2.5, 10**12], max_detections=[-1, 1.0, None])
    name = draw(st.sampled_from([None] * 6 + list(hostile)))
    if name is not None:
        opts[name] = draw(st.sampled_from(hostile[name]))
    return opts


def assert_detections(det, expected, fixed_shape, dtype, k):
    """Detections (flat or fixed-shape) against reference.rescored_nms's per-image lists; k is the padded width,
    min(max_detections, the candidates per image)."""
    assert det.counts.tolist() == [len(e[3]) for e in expected]
    for img, (boxes_, scores_, labels_, source) in enumerate(expected):
        if fixed_shape:
            c = len(source)
            mine = (det.boxes[img, :c], det.scores[img, :c], det.labels[img, :c], det.indices[img, :c])
            # Padding: score 0, label -1, index -1, a zero box.
            assert (det.labels[img, c:] == -1).all() and (det.indices[img, c:] == -1).all()
            assert (det.scores[img, c:] == 0).all() and (det.boxes[img, c:] == 0).all()
            assert det.labels.shape == (len(expected), k)
        else:
            sel = det.batch_index == img
            mine = (det.boxes[sel], det.scores[sel], det.labels[sel], det.indices[sel])
        assert_same(mine[3], source, what=f"image {img} indices")
        assert_same(mine[2], labels_, what=f"image {img} labels")
        assert_same(mine[0], boxes_.to(mine[0].dtype), what=f"image {img} boxes")
        assert_same(mine[1], scores_.to(mine[1].dtype), dtype=dtype, what=f"image {img} scores")


def ref_dtype(t):
    """The reference computes rescored scores in the inputs' dtype; the kernel in float32 (float64 for float64)."""
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32) if t.is_floating_point() else t


def unchecked_levels_dropped(boxes, level_index, num_levels, fixed_shape):
    """The boxes the reference should see. On CUDA in fixed-shape mode nothing checks the level ids (a check
    would read them on the host): a candidate whose level is outside [0, num_levels) is never kept (README,
    "Rescored NMS"), as a candidate with a NaN box is in the reference, which would otherwise rank such a level
    as a level of its own. Out-of-range image ids need nothing: the reference keeps none either. The boxes'
    device is the one the op ran on."""
    if not fixed_shape or level_index is None or boxes.device.type != "cuda" or level_index.numel() == 0:
        return boxes
    levels = level_index.cpu().long()
    count = num_levels if num_levels is not None else int(levels.max()) + 1
    boxes = boxes.clone()
    boxes[..., (levels < 0) | (levels >= count), :] = math.nan
    return boxes


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_rescored_nms_dense(device, data):
    draw = on_device(data.draw, device)
    b, n, c = draw(st.integers(0, 2)), draw(st.integers(0, 5)), draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    bx = draw(layout(draw(boxes((b, n), dtype))))
    scores = draw(layout(draw(values((b, n, c), draw(st.sampled_from([dtype] * 9 + WRONG)), 0, 1))))
    iou = draw(st.one_of(st.none(), layout(draw(values((b, n), dtype, 0, 1))))) if draw(st.booleans()) else None
    level_index = num_levels = None
    if draw(st.booleans()):
        # Huge ids and counts: num_levels is bounded by max(256, points), a ValueError naming it.
        level_index = draw(indices((n,), 0, 2))
        num_levels = draw(st.sampled_from([None, None, 2, 1, 0, -1, 10**12]))
    opts = rescored_options(draw)
    fixed_shape = draw(st.booleans())
    det, err = attempt(lambda: mutualops.rescored_nms(bx, scores, iou, level_index=level_index, num_levels=num_levels,
                                                      fixed_shape=fixed_shape, **opts),
                       "boxes", "scores", "iou", "level_index", "num_levels", *opts)
    if err is None:
        bx_ref = unchecked_levels_dropped(ref_dtype(bx), level_index, num_levels, fixed_shape)
        expected = ref.rescored_nms(bx_ref, ref_dtype(scores), None if iou is None else ref_dtype(iou),
                                    level_index=level_index, **opts)
        assert_detections(det, expected, fixed_shape, dtype, min(opts["max_detections"], n * c))


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_rescored_nms_flat(device, data):
    draw = on_device(data.draw, device)
    m = draw(st.integers(0, 8))
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    bx = draw(layout(draw(boxes((m,), dtype))))
    scores = draw(layout(draw(values((m,), dtype, 0, 1))))
    labels = draw(layout(draw(indices((m,), -1, 3, dtype=draw(st.sampled_from([torch.int64, torch.int32,
                                                                                  torch.float32]))))))
    iou = draw(layout(draw(values((m,), dtype, 0, 1)))) if draw(st.booleans()) else None
    # Image ids index the padded [num_images, K] output, so a huge one asks for a huge output (the allocator's
    # RuntimeError, as torch.empty's).
    batch_index = draw(indices((m,), 0, 3, huge=False)) if draw(st.booleans()) else None
    num_images = draw(st.sampled_from([None] * 4 + [1, 3, 0, -1]))
    level_index = num_levels = None
    if draw(st.booleans()):
        level_index = draw(indices((m,), 0, 2))
        num_levels = draw(st.sampled_from([None, None, 2, 0, 10**12]))
    opts = rescored_options(draw)
    fixed_shape = draw(st.booleans())
    det, err = attempt(lambda: mutualops.rescored_nms(bx, scores, iou, labels=labels, batch_index=batch_index,
                                                      num_images=num_images, level_index=level_index,
                                                      num_levels=num_levels, fixed_shape=fixed_shape, **opts),
                       "boxes", "scores", "iou", "labels", "batch_index", "num_images", "level_index", "num_levels",
                       *opts)
    if err is None:
        bx_ref = unchecked_levels_dropped(ref_dtype(bx), level_index, num_levels, fixed_shape)
        expected = ref.rescored_nms(bx_ref, ref_dtype(scores), None if iou is None else ref_dtype(iou),
                                    labels=labels, batch_index=batch_index, num_images=num_images,
                                    level_index=level_index, **opts)
        assert_detections(det, expected, fixed_shape, dtype, min(opts["max_detections"], m))


# --- oriented boxes -------------------------------------------------------------------------------------------


@st.composite
def rotated_boxes(draw, lead, dtype, hostile=True, scale=50.0):
    """xywhr boxes [*lead, 5]: centres in [0, scale), sides in [-0.1, 0.6) * scale (some zero or negative),
    angles in [-4, 4) rad, duplicates from rounding, and special values when hostile."""
    centre = draw(values(tuple(lead) + (2,), torch.float64, 0.0, scale, hostile=False))
    side = draw(values(tuple(lead) + (2,), torch.float64, -0.1 * scale, 0.6 * scale, hostile=False))
    angle = draw(values(tuple(lead) + (1,), torch.float64, -4.0, 4.0, hostile=False))
    b = torch.cat([centre, side, angle], -1)
    if hostile and b.numel():
        for pos, v in draw(st.lists(st.tuples(st.integers(0, b.numel() - 1), st.sampled_from(SPECIAL)), max_size=3)):
            b.view(-1)[pos] = v
    return cast(b, dtype)


@FEW
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_rotated(device, data):
    # The reference computes the exact IoU in float64 and the kernels in the input's math type: they agree
    # within the type's tolerance where the boxes are moderate; everywhere IoU and probiou are in [0, 1], and
    # every mode is NaN exactly where a box has a non-finite value.
    draw = on_device(data.draw, device)
    dtype = draw(dtypes())
    a = draw(layout(draw(rotated_boxes((draw(sizes),), dtype))))
    b = draw(layout(draw(rotated_boxes((draw(sizes),), draw(st.sampled_from([dtype, dtype, draw(dtypes())]))))))
    mode = draw(st.sampled_from(["iou", "iou", "probiou", "probiou_ciou", "giou"]))
    names = ("boxes1", "boxes2", "mode")
    for call in (lambda: mutualops.box_iou_rotated(a, b, mode), lambda: OP.box_iou_rotated(a, b, mode, 1e-7)):
        out, err = attempt(call, *names)
        if err is not None:
            continue
        x, y = (t.cpu() for t in promote(a, b))
        finite = torch.isfinite(x).all(-1)[:, None] & torch.isfinite(y).all(-1)[None, :]
        out = out.cpu().double()
        assert torch.equal(torch.isnan(out), ~finite), f"{mode}: NaN exactly where a box is not finite"
        if mode != "probiou_ciou":  # the CIoU term of a box with a negative side has no bound
            assert ((out[finite] >= -1e-6) & (out[finite] <= 1 + 1e-6)).all(), f"{mode}: out of range"
        moderate = (x.abs().amax(-1) < 1e4)[:, None] & (y.abs().amax(-1) < 1e4)[None, :] & finite
        expected = ref.box_iou_rotated(x, y, mode).double()
        tol = TOL[x.dtype] * (10 if mode != "iou" else 1)  # probiou: exp and log of distances up to 100
        torch.testing.assert_close(out[moderate], expected[moderate], rtol=tol, atol=tol, msg=lambda m: f"{mode}: {m}")


@FEW
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_rotated_nms(device, data):
    # Greedy NMS is checked by its definition on the kernels' own IoU (the reference's float64 IoU may fall on
    # the other side of a threshold that a drawn pair meets exactly): kept boxes are finite, in score order, and
    # no kept box overlaps an earlier kept box of its class above the threshold, while every other finite box
    # does overlap an earlier kept one. The matrix NMS equals its definition on the kernels' probiou.
    draw = on_device(data.draw, device)
    n = draw(st.integers(0, 10))
    dtype = draw(dtypes())
    b = draw(layout(draw(rotated_boxes((n,), dtype))))
    s = draw(layout(draw(values((n,), draw(st.sampled_from([dtype, dtype, draw(dtypes())])), 0, 1))))
    idxs = draw(layout(draw(indices((n,), 0, 3, dtype=draw(st.sampled_from([torch.int64, torch.int32,
                                                                              torch.float32]))))))
    thr = draw(threshold())
    names = ("boxes", "scores", "idxs", "iou_threshold")
    keep, err = attempt(lambda: mutualops.batched_nms_rotated(b, s, idxs, thr), *names)
    if err is None:
        x, y = promote(b, s)
        x, y, k = x.cpu(), y.cpu(), keep.cpu()
        valid = torch.isfinite(x).all(-1) & torch.isfinite(y)
        assert valid[k].all() and (y[k][1:] <= y[k][:-1]).all()
        math_type = x.double() if x.dtype == torch.float64 else x.float()  # the kernels' arithmetic
        iou = mutualops.box_iou_rotated(math_type, math_type)  # iou[i, j]: i earlier, as the kernels take pairs
        same = idxs.cpu()[:, None] == idxs.cpu()[None, :]
        kept = torch.zeros(n, dtype=torch.bool)
        kept[k] = True
        for i in valid.nonzero()[:, 0].tolist():
            earlier = kept & same[i] & ((y > y[i]) | ((y == y[i]) & (torch.arange(n) < i)))
            assert bool((iou[:, i][earlier] > thr).any()) != bool(kept[i]), f"box {i}"
    keep, err = attempt(lambda: OP.fast_nms_rotated(b, s, thr, 1e-7), *names)
    if err is None:
        x, y = b.cpu(), s.cpu()
        valid = torch.isfinite(x).all(-1) & torch.isfinite(y)
        order = valid.nonzero()[:, 0]
        order = order[torch.sort(y[order].double(), descending=True, stable=True).indices]
        math_type = x[order].double() if x.dtype == torch.float64 else x[order].float()
        over = (mutualops.box_iou_rotated(math_type, math_type, "probiou") > thr).triu(diagonal=1)
        assert torch.equal(keep.cpu(), order[~over.any(0)])


# --- label assignment -----------------------------------------------------------------------------------------


@st.composite
def ground_truth(draw, dtype):
    """GT as the assignment wrappers take it: padded [B, G, 4] with num_gt [B] (hostile counts now and then:
    negative, past G, huge), a single image [G, 4], or a list of per-image [G_i, 4]."""
    b, g = draw(st.integers(1, 2)), draw(st.integers(0, 4))
    gt = draw(layout(draw(boxes((b, g), dtype, hostile=draw(st.integers(0, 3)) == 0, scale=40.0))))
    form = draw(st.sampled_from(["padded", "padded", "counts", "single", "list"]))
    if form == "single":
        return gt[0], None
    if form == "list":
        return [gt[i, : draw(st.integers(0, g))] for i in range(b)], None
    if form == "counts":
        return gt, draw(indices((b,), 0, g + 1, hostile=draw(st.integers(0, 3)) == 0))
    return gt, None


def padded(gt, num_gt):
    """The padded form of any GT the wrappers accept, for the reference."""
    return mutualops.ops.assign.pad_gt(gt, num_gt)[:2]


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_assign_fcos(device, data):
    draw = on_device(data.draw, device)
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    gt, num_gt = draw(ground_truth(dtype))
    p = draw(st.integers(0, 6))
    # Points now and then non-finite: the op must reject them (README, Conventions).
    points = draw(layout(draw(values((p, 2), dtype, 0, 50, hostile=draw(st.integers(0, 3)) == 0))))
    strides = draw(layout(draw(values((p,), dtype, 2, 16, hostile=draw(st.integers(0, 3)) == 0))))
    lo = data.draw(values((p, 1), torch.float64, -1, 20, hostile=False))
    ranges = torch.cat([lo, lo + data.draw(values((p, 1), torch.float64, 0, 40, hostile=False))], 1)
    if draw(st.booleans()):
        ranges[:, 1] = math.inf  # FCOS's last level
    ranges = ranges.to(device, dtype if dtype.is_floating_point else torch.float32)
    radius = draw(st.sampled_from([0.0, 1.5, 2.5] * 3 + [math.nan, -1.0, math.inf]))
    inclusive, compat = draw(st.booleans()), draw(st.booleans())
    names = ("points", "gt_boxes", "num_gt", "strides", "regress_ranges", "center_sampling_radius")
    out, err = attempt(lambda: mutualops.assign_fcos(points, gt, num_gt, strides=strides, regress_ranges=ranges,
                                                     center_sampling_radius=radius, inclusive=inclusive,
                                                     torchvision_compat=compat), *names)
    if err is None:
        gt_padded, counts = padded(gt, num_gt)
        expected = ref.assign_fcos(points, gt_padded, counts, strides.to(points), ranges.to(points), radius,
                                   inclusive, compat)
        assert_same(out, expected[0] if isinstance(gt, torch.Tensor) and gt.dim() == 2 else expected,
                    what="assign_fcos")


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_assign_max_iou(device, data):
    draw = on_device(data.draw, device)
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    gt, num_gt = draw(ground_truth(dtype))
    anchors = draw(layout(draw(boxes((draw(st.integers(0, 6)),), dtype, hostile=draw(st.integers(0, 3)) == 0,
                                     scale=40.0))))
    pos = draw(threshold((0.3, 0.5, 0.7, 1.0, 0.0)))
    neg = draw(st.sampled_from([0.0, 0.3, 0.4, pos, math.nan]))
    low_quality = draw(st.sampled_from(["none", "torchvision", "mmdet", "best"]))
    kwargs = dict(pos_iou_threshold=pos, neg_iou_threshold=neg, low_quality=low_quality,
                  min_pos_iou=draw(threshold((0.0, 0.2, 0.5))), gt_max_assign_all=draw(st.booleans()),
                  ignore_iof_threshold=draw(threshold((0.5, 0.0, 1.0))))
    ignore = num_ignore = None
    if draw(st.booleans()) and isinstance(gt, torch.Tensor):
        b = 1 if gt.dim() == 2 else gt.shape[0]
        ignore = draw(boxes((b, draw(st.integers(0, 3))), dtype, hostile=draw(st.integers(0, 3)) == 0, scale=40.0))
        if draw(st.booleans()) and gt.dim() == 3:
            num_ignore = draw(indices((b,), 0, ignore.shape[1] + 1, hostile=draw(st.integers(0, 3)) == 0))
        if gt.dim() == 2:
            ignore = ignore[0]
    names = ("anchors", "gt_boxes", "num_gt", "ignore_boxes", "num_ignore", *kwargs)
    out, err = attempt(lambda: mutualops.assign_max_iou(anchors, gt, num_gt, ignore_boxes=ignore,
                                                        num_ignore=num_ignore, **kwargs), *names)
    if err is None:
        gt_padded, counts = padded(gt, num_gt)
        ign, ign_counts = padded(ignore[None] if ignore is not None and ignore.dim() == 2 else ignore,
                                 num_ignore) if ignore is not None else (None, None)
        expected = ref.assign_max_iou(anchors, gt_padded, counts, ignore_boxes=ign, num_ignore=ign_counts,
                                      **kwargs)
        if isinstance(gt, torch.Tensor) and gt.dim() == 2:
            expected = tuple(e[0] for e in expected)
        assert_same(out[0], expected[0], what="assign_max_iou matched")
        assert_same(out[1], expected[1], what="assign_max_iou max_iou")


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_mutual_targets(device, data):
    draw = on_device(data.draw, device)
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    b, g, n, c = draw(st.integers(1, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.integers(0, 3))
    gt = draw(layout(draw(boxes((b, g), dtype, hostile=draw(st.integers(0, 3)) == 0))))
    labels = draw(layout(draw(indices((b, g), 0, c, hostile=draw(st.integers(0, 3)) == 0))))
    # Background (-1) and ignored (-2) anchors, now and then an index past the GT rows.
    matched = draw(layout(draw(indices((b, n), -2, g, hostile=draw(st.integers(0, 3)) == 0,
                                       dtype=draw(st.sampled_from([torch.int64] * 5 + [torch.int32, torch.float32]))))))
    coding = draw(st.sampled_from(["distance", "delta", "delta", "polar"]))
    hostile = draw(st.integers(0, 3)) == 0
    if coding == "distance":
        priors = draw(values((n, 2), dtype, 0, 50, hostile=hostile))
        box_pred = draw(values((b, n, 4), dtype, 0, 5, hostile=hostile))
    else:
        priors = draw(boxes((n,), dtype, hostile=hostile))
        box_pred = draw(values((b, n, 4), dtype, -1, 1, hostile=hostile))
    logits = draw(layout(draw(values((b, n, c), draw(st.sampled_from([dtype] * 5 + WRONG)), -4, 4,
                                     hostile=hostile))))
    scale = draw(values((n,), dtype, 1, 16, hostile=hostile)) if draw(st.booleans()) else None
    gammas = dict(gamma_cls=draw(st.sampled_from([1.0, 2.0, 0.5, 0.0])),
                  gamma_loc=draw(st.sampled_from([1.0, 2.0, 0.5, 0.0])))
    names = ("matched", "gt_boxes", "gt_labels", "box_pred", "cls_logits", "priors", "scale", "box_coding", "gamma")
    out, err = attempt(lambda: mutualops.mutual_targets(matched, gt, labels, box_pred, cls_logits=logits,
                                                        priors=priors, scale=scale, box_coding=coding, **gammas),
                       *names)
    if err is None:
        # The kernel computes half types in float32 (README, Conventions): so does the reference here.
        args = [ref_dtype(t) if t is not None else None for t in promote(box_pred, logits, gt, priors, scale)]
        expected = ref.mutual_targets(matched.long(), args[2], labels, args[0], args[1], args[3], args[4],
                                      coding, **gammas)
        for name, got, exp in zip(out._fields, out, expected):
            assert_same(got, exp, what=f"mutual_targets {name}")
        assert torch.equal(out.positive, matched >= 0)


@FEW
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_assign_and_label(device, data):
    # The composition of the three ops above: the same result as the references composed.
    draw = on_device(data.draw, device)
    dtype = draw(st.sampled_from(FLOATS))
    b, g, p, c = draw(st.integers(1, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.integers(1, 3))
    gt = draw(boxes((b, g), dtype, hostile=draw(st.integers(0, 4)) == 0, scale=40.0))
    labels = draw(indices((b, g), 0, c, hostile=draw(st.integers(0, 4)) == 0))
    logits = draw(values((b, p, c), dtype, -4, 4))
    assigner = draw(st.sampled_from(["fcos", "max_iou"]))
    if assigner == "fcos":
        priors = draw(values((p, 2), dtype, 0, 40, hostile=False))
        strides = torch.full((p,), 8.0, dtype=dtype, device=device)
        ranges = torch.tensor([[-1.0, math.inf]], dtype=dtype, device=device).expand(p, 2)
        kwargs = dict(strides=strides, regress_ranges=ranges)
        pred = draw(values((b, p, 4), dtype, 0, 3))
    else:
        priors = draw(boxes((p,), dtype, hostile=False, scale=40.0))
        kwargs = dict(low_quality=draw(st.sampled_from(["none", "torchvision", "mmdet"])))
        pred = draw(values((b, p, 4), dtype, -1, 1))
    out, err = attempt(lambda: mutualops.assign_and_label(priors, gt, labels, pred, logits, assigner=assigner,
                                                          assign_kwargs=kwargs),
                       "priors", "points", "anchors", "gt_boxes", "gt_labels", "box_pred", "cls_logits")
    if err is None:
        counts = torch.full((b,), g)
        gt, pred, logits, priors = (ref_dtype(t) for t in (gt, pred, logits, priors))  # float32 math, as the kernel
        if assigner == "fcos":
            strides, ranges = ref_dtype(strides), ref_dtype(ranges)
        if assigner == "fcos":
            matched = ref.assign_fcos(priors, gt, counts, strides, ranges)
            expected = ref.mutual_targets(matched, gt, labels, pred, logits, priors, strides, "distance")
        else:
            matched = ref.assign_max_iou(priors, gt, counts, **kwargs)[0]
            expected = ref.mutual_targets(matched, gt, labels, pred, logits, priors, None, "delta")
        assert_same(out[0], matched, what="assign_and_label matched")
        for name, got, exp in zip(out[1]._fields, out[1], expected):
            assert_same(got, exp, what=f"assign_and_label {name}")


# --- task-aligned assignment ----------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_assign_task_aligned(device, data):
    draw = on_device(data.draw, device)
    b, a, c, g = draw(st.integers(0, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    hostile = draw(st.integers(0, 3)) == 0
    scores = draw(layout(draw(values((b, a, c), dtype, 0, 1, hostile=hostile))))
    pred = draw(layout(draw(boxes((b, a), draw(st.sampled_from([dtype] * 3 + FLOATS)), hostile=hostile, scale=40))))
    anchors = draw(layout(draw(values((a, 2), dtype, 0, 40, hostile=hostile))))
    label_dtype = draw(st.sampled_from([torch.float32, torch.int64, torch.float16, torch.int32]))
    labels = draw(indices((b, g, 1), 0, c, hostile=draw(st.integers(0, 3)) == 0, dtype=label_dtype))
    gt = draw(layout(draw(boxes((b, g), dtype, hostile=draw(st.integers(0, 3)) == 0, scale=40))))
    mask = draw(values((b, g, 1), torch.float32, 0, 1, hostile=False)) > 0.3
    if draw(st.booleans()):
        labels, mask = labels[..., 0], mask[..., 0]
    mask = mask.to(draw(st.sampled_from([torch.bool, torch.float32, torch.uint8])))
    topk = draw(st.sampled_from([1, 2, a, a, a + 1, 0]))
    topk2 = draw(st.sampled_from([None, None, 0, 1, topk, -1]))
    kw = dict(topk=topk, topk2=topk2, num_classes=draw(st.sampled_from([c, c, c, c + 1, 0])),
              alpha=draw(st.sampled_from([1.0, 0.5, 0.0, 2.0, math.nan])),
              beta=draw(st.sampled_from([6.0, 1.0, 0.5, 0.0, math.inf])),
              eps=draw(st.sampled_from([1e-9, 0.0, 1e-3])), stride=draw(st.sampled_from([[8, 16, 32], [8], None])))
    dense = draw(st.booleans())
    names = ("pd_scores", "pd_bboxes", "anc_points", "gt_labels", "gt_bboxes", "mask_gt", *kw)
    out, err = attempt(lambda: mutualops.assign_task_aligned(scores, pred, anchors, labels, gt, mask,
                                                             dense_scores=dense, **kw), *names)
    if err is None:
        stride = kw["stride"] or [8, 16]
        min_side = float(stride[1] if len(stride) > 1 else stride[0])  # Ultralytics' stride_val
        expected = ref.assign_task_aligned(scores, pred, anchors, labels, gt, mask, topk=topk,
                                           num_classes=kw["num_classes"], alpha=kw["alpha"], beta=kw["beta"],
                                           eps=kw["eps"], min_side=min_side, topk2=topk2)
        labels_, bboxes_, scores_, fg_, idx_, alignment_ = expected
        assert_same(out.fg_mask, fg_, what="fg_mask")
        assert_same(out.target_gt_idx, idx_, what="target_gt_idx")
        assert_same(out.target_labels, labels_, what="target_labels")
        assert_same(out.target_bboxes, bboxes_, dtype=torch.float32, what="target_bboxes")
        assert_same(out.target_scores, scores_ if dense else alignment_, dtype=torch.float32, what="target_scores")


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_assign_task_aligned_rotated(device, data):
    draw = on_device(data.draw, device)
    b, a, c, g = draw(st.integers(0, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(FLOATS * 5 + WRONG))
    hostile = draw(st.integers(0, 3)) == 0
    scores = draw(layout(draw(values((b, a, c), dtype, 0, 1, hostile=hostile))))
    pred = draw(layout(draw(rotated_boxes((b, a), draw(st.sampled_from([dtype] * 3 + FLOATS)), hostile=hostile,
                                          scale=40))))
    anchors = draw(layout(draw(values((a, 2), dtype, 0, 40, hostile=hostile))))
    labels = draw(indices((b, g, 1), 0, c, hostile=draw(st.integers(0, 3)) == 0, dtype=torch.float32))
    gt = draw(layout(draw(rotated_boxes((b, g), dtype, hostile=draw(st.integers(0, 3)) == 0, scale=40))))
    mask = (draw(values((b, g, 1), torch.float32, 0, 1, hostile=False)) > 0.3).float()
    topk = draw(st.sampled_from([1, 2, a, a, a + 1, 0]))
    topk2 = draw(st.sampled_from([None, None, 1, topk]))
    kw = dict(topk=topk, topk2=topk2, num_classes=draw(st.sampled_from([c, c, c, c + 1, 0])),
              alpha=draw(st.sampled_from([1.0, 0.5, math.nan])), beta=draw(st.sampled_from([6.0, 2.0, math.inf])),
              stride=draw(st.sampled_from([[8, 16, 32], [0], [30]])))
    names = ("pd_scores", "pd_bboxes", "anc_points", "gt_labels", "gt_bboxes", "mask_gt", *kw)
    out, err = attempt(lambda: mutualops.assign_task_aligned_rotated(scores, pred, anchors, labels, gt, mask, **kw),
                       *names)
    if err is None:
        from test_task_aligned_rotated import assert_same as assert_same_assignment

        stride = kw["stride"]
        expected = ref.assign_task_aligned_rotated(
            scores, pred, anchors, labels, gt, mask, topk=topk, num_classes=kw["num_classes"], alpha=kw["alpha"],
            beta=kw["beta"], min_side=float(stride[1] if len(stride) > 1 else stride[0]), topk2=topk2)
        assert_same_assignment(out, tuple(t.to(out[i].dtype) for i, t in zip((0, 1, 2, 3, 4), expected[:5])))


# --- ranking and the harmony metric ---------------------------------------------------------------------------


def compact(groups):
    """Group ids renumbered 0..k-1 in order: ranks do not depend on the ids, and the reference allocates per id."""
    return torch.unique(groups, return_inverse=True)[1] if groups is not None else None


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_rank_and_spearman(device, data):
    draw = on_device(data.draw, device)
    n = draw(st.integers(0, 9))
    dtype = draw(dtypes())
    x = draw(layout(draw(values((n,), dtype, -3, 3))))
    y = draw(layout(draw(values((n,), draw(st.sampled_from([dtype, dtype, torch.float64])), -3, 3))))
    # Group ids stay small (negative and sparse ones remain): spearman's output has one row per id up to the
    # largest, so a huge id asks for a huge output (rank renumbers ids densely: test_ranking covers huge ones).
    groups = draw(layout(draw(indices((n,), 0, 3, hostile=draw(st.integers(0, 3)) == 0, huge=False,
                                      dtype=draw(st.sampled_from([torch.int64] * 4 + [torch.int32, torch.float32,
                                                                                     torch.bool])))))) \
        if draw(st.booleans()) else None
    ties = draw(st.sampled_from(["average", "min", "max", "dense", "ordinal", "fractional"]))
    out, err = attempt(lambda: mutualops.rank(x, groups, ties), "x", "groups", "ties")
    if err is None:
        assert_same(out, ref.rank(x, compact(groups), ties), dtype=torch.float64, what=f"rank {ties}")
    num_groups = draw(st.sampled_from([None, None, 0, 1, 3, 5, -1]))
    out, err = attempt(lambda: mutualops.spearman(x, y, groups, num_groups), "x", "y", "groups", "num_groups")
    if err is None:
        assert_same(out, ref.spearman(x, y, groups, num_groups), dtype=torch.float64, what="spearman")


def reference_harmony(scores, ious, gt_index, min_size, aggregate):
    """harmony from reference.spearman, as docs/method.md section 1 defines it: rho per object with at least
    min_size predictions, NaN-skipping mean (or prediction-count-weighted mean) of the rest."""
    keep = gt_index >= 0
    ids = gt_index[keep].long()
    num = int(ids.max()) + 1 if ids.numel() else 0
    rho = ref.spearman(scores[keep], ious[keep], ids, num)
    counts = torch.bincount(ids, minlength=num)
    rho = torch.where(counts >= min_size, rho, math.nan)
    used = ~rho.isnan()
    if not used.any():
        return math.nan, rho, counts
    w = torch.ones_like(rho) if aggregate == "mean" else counts.double()
    return float((rho[used] * w[used]).sum() / w[used].sum()), rho, counts


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("device", DEVICES)
def test_harmony(device, data):
    draw = on_device(data.draw, device)
    n = draw(st.integers(0, 9))
    dtype = draw(dtypes())
    scores = draw(layout(draw(values((n,), dtype, 0, 1))))
    ious = draw(layout(draw(values((n,), dtype, 0, 1))))
    # Object ids index harmony's per-object output, so a huge id asks for a huge output (torch's out-of-memory
    # RuntimeError, as torch.empty's): ids are hostile here by being out of order, negative or sparse.
    gt_index = draw(indices((n,), -1, 3, hostile=draw(st.integers(0, 3)) == 0, huge=False,
                            dtype=draw(st.sampled_from([torch.int64] * 4 + [torch.int32, torch.float32]))))
    min_size = draw(st.sampled_from([2, 2, 3, 1, 0]))
    aggregate = draw(st.sampled_from(["mean", "count_weighted", "median"]))
    out, err = attempt(lambda: mutualops.metrics.harmony(scores, ious, gt_index, min_size, aggregate),
                       "scores", "ious", "gt_index", "min_size", "aggregate")
    if err is None:
        value, rho, counts = reference_harmony(scores, ious, gt_index, min_size, aggregate)
        assert (math.isnan(out.harmony) and math.isnan(value)) or abs(out.harmony - value) < 1e-9, (out, value)
        assert out.num_objects == int((~rho.isnan()).sum())
        assert_same(out.per_object, rho, dtype=torch.float64, what="per_object")
        assert_same(out.counts, counts, what="counts")


# --- raw ops with hostile indices, in a subprocess ------------------------------------------------------------

# Runs in a child process: a kernel that reads or writes out of bounds may crash it, and that must fail the test
# rather than kill pytest. Every call is generated from the seed; each prints "ok" or the exception's type.
RAW_SCRIPT = r'''
import random, sys, torch, mutualops
op = torch.ops.mutualops
rng = random.Random(int(sys.argv[1]))
# Every tensor below is made on the device under test; on CUDA each call is waited for, so that a kernel's
# out-of-bounds access is reported at the call that made it.
device = sys.argv[3]
torch.set_default_device(device)
BAD = [-1, -3, 10**12, -(10**12), 2**31, 2**63 - 1, 7]
SMALL = [-1, -3, 7, 1000]

def hostile(t, bad=BAD):
    """t (an index or count tensor) with one entry out of range, or t in a wrong dtype or layout."""
    t = t.clone()
    kind = rng.choice(["value", "value", "value", "int32", "float", "strided", "empty"])
    if kind == "value" and t.numel():
        t.view(-1)[rng.randrange(t.numel())] = rng.choice(bad)
    elif kind == "int32":
        t = t.int()
    elif kind == "float":
        t = t.float()
    elif kind == "strided":
        t = torch.stack([t, t], -1)[..., 0]
    else:
        t = t[:0]
    return t

def box(*lead):
    xy = torch.rand(*lead, 2) * 50
    return torch.cat([xy, xy + torch.rand(*lead, 2) * 30], -1)

def rbox(*lead):
    return torch.cat([torch.rand(*lead, 2) * 50, torch.rand(*lead, 2) * 30, torch.randn(*lead, 1)], -1)

for i in range(int(sys.argv[2])):
    b, g, n, c = rng.randint(1, 2), rng.randint(0, 3), rng.randint(0, 5), rng.randint(1, 3)
    gt, counts = box(b, g), torch.full((b,), g)
    labels, matched = torch.randint(0, c, (b, g)), torch.randint(-1, max(g, 1), (b, n))
    calls = {
        "box_iou": lambda: op.box_iou(box(n), box(g)[:, rng.choice([0, 4, 2])] if rng.random() < .3 else box(g),
                                      rng.choice(["iou", "ciou", "x"])),
        "box_iou_aligned_backward": lambda: op.box_iou_aligned_backward(torch.rand(rng.choice([n, n + 1, 0])),
                                                                        box(n), box(n), "giou"),
        "batched_nms": lambda: op.batched_nms(box(n), torch.rand(n), hostile(torch.zeros(n, dtype=torch.long)),
                                              0.5),
        "rescored_nms_dense": lambda: op.rescored_nms_dense(
            box(b, n), torch.rand(b, n, c), None, hostile(torch.zeros(n, dtype=torch.long)), rng.choice([1, 2, 0]),
            0.5, 0.05, 0.5, rng.choice([-1, 3, 10**12]), rng.choice([3, 0]), False),
        "rescored_nms_flat": lambda: op.rescored_nms_flat(
            box(n), torch.rand(n), hostile(torch.zeros(n, dtype=torch.long)), None,
            hostile(torch.zeros(n, dtype=torch.long)), hostile(torch.zeros(n, dtype=torch.long)),
            # Not num_levels=2**40 (C++ bug: std::bad_alloc, a MemoryError, instead of a ValueError).
            rng.choice([1, 0, -1]), rng.choice([1, 2, 0, -1]), 0.5, 0.05, 0.5, -1, 5, False),
        "assign_fcos": lambda: op.assign_fcos(torch.rand(n, 2) * 50, gt, hostile(counts), torch.full((n,), 8.0),
                                              torch.tensor([[-1.0, 1e8]]).expand(n, 2), 1.5, False, False),
        "assign_max_iou": lambda: op.assign_max_iou(box(n), gt, hostile(counts), box(b, 2), hostile(counts), 0.5,
                                                    0.4, "mmdet", 0.0, True, 0.5),
        "mutual_targets": lambda: op.mutual_targets(hostile(matched), gt, hostile(labels), torch.rand(b, n, 4),
                                                    torch.randn(b, n, c), torch.rand(n, 2) * 50, None, "distance",
                                                    1.0, 1.0),
        "assign_task_aligned": lambda: op.assign_task_aligned(
            torch.rand(b, n + 1, c), box(b, n + 1), torch.rand(n + 1, 2) * 50, hostile(labels), gt,
            torch.ones(b, g), rng.choice([1, n + 1, n + 2, 0, -1, 2**40]), rng.choice([1, n + 2, -5]),
            rng.choice([c, c + 1, 0, 10**12]), 1.0, 6.0, 1e-9, 16.0, True),
        "assign_task_aligned_rotated": lambda: op.assign_task_aligned_rotated(
            torch.rand(b, n + 1, c), rbox(b, n + 1), torch.rand(n + 1, 2) * 50, hostile(labels), rbox(b, g),
            torch.ones(b, g), rng.choice([1, n + 1, n + 2, 0, -1, 2**40]), rng.choice([1, n + 2, -5]),
            rng.choice([c, c + 1, 0, 10**12]), 0.5, 6.0, 1e-9, rng.choice([16.0, 0.0]), True),
        # Small group ids only: rank allocates max(groups) + 1 slots (the C++ bug noted in test_rank_and_spearman).
        "rank": lambda: op.rank(torch.rand(n), hostile(torch.zeros(n, dtype=torch.long), SMALL), "average"),
        "spearman": lambda: op.spearman(torch.rand(n), torch.rand(n), hostile(torch.zeros(n, dtype=torch.long), SMALL),
                                        rng.choice([None, 1, 0, -1, 3])),
    }
    for name, call in calls.items():
        try:
            call()
            if device == "cuda":
                torch.cuda.synchronize()
            print(name, "ok", flush=True)
        except Exception as e:
            print(name, type(e).__name__, str(e).splitlines()[0][:100] if str(e) else "", flush=True)
print("done", flush=True)
'''


@pytest.mark.parametrize("device", DEVICES)
def test_raw_ops_survive_hostile_indices(device):
    # Indices out of range (negative, past the end, 10**12, 2**63 - 1), counts past their rows, wrong index dtypes
    # and layouts, negative or huge sizes: each raw call raises TypeError/ValueError/IndexError or returns, and
    # the process survives (a segfault or abort would end it early with a signal).
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(mutualops.__file__))))
    proc = subprocess.run([sys.executable, "-c", RAW_SCRIPT, "11", "40", device], capture_output=True, text=True,
                          timeout=120, env=env)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "done", (proc.returncode, proc.stderr[-2000:],
                                                                    lines[-3:])
    bad = [line for line in lines[:-1] if line.split()[1] not in ("ok", "TypeError", "ValueError", "IndexError")]
    assert not bad, "\n".join(bad[:20])
