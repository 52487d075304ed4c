"""The Ultralytics drop-in on every input Ultralytics' own assigner and NMS accept: its result, or a documented
difference (docs/method.md, section 3), never an exception Ultralytics does not raise. Drawn by hypothesis:
flipped, zero-area and out-of-image GT rows, all-padding batches, labels beyond the classes (negative,
fractional, NaN), topk above the anchor count, NaN and infinite predictions. Then a YOLOv8n training in which
one step's predictions turn NaN: Ultralytics' recovery from last.pt must keep working with install()."""

import logging
import math

import pytest
import torch

pytest.importorskip("ultralytics")
pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from ultralytics.utils import nms as ultralytics_nms  # noqa: E402
from ultralytics.utils import tal  # noqa: E402

from mutualops.integrations import ultralytics as mo_ultralytics  # noqa: E402
from test_task_aligned import SMALL_GRID, STRIDES, scene  # noqa: E402

ULTRALYTICS_NMS = ultralytics_nms.non_max_suppression
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def restore_ultralytics():
    yield
    mo_ultralytics.uninstall()


def outcome(call):
    """(result, None) or (None, the exception)."""
    try:
        return call(), None
    except Exception as e:  # noqa: BLE001 - the test compares whatever each side raises
        return None, e


def assert_equal_targets(ours, theirs):
    """Ultralytics' five outputs: masks, indices, labels and boxes equal, scores within the documented 1e-6 (NaN
    where Ultralytics has NaN: a batch handed back to its own assigner)."""
    for name, a, b in zip(["target_labels", "target_bboxes", "target_scores", "fg_mask", "target_gt_idx"], ours, theirs):
        assert a.shape == b.shape, name
        if name == "target_scores":
            torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=1e-6, equal_nan=True, msg=name)
        else:
            torch.testing.assert_close(a.to(b.dtype), b, rtol=0, atol=0, equal_nan=True, msg=name)


@st.composite
def hostile_scene(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["random", "small", "crowd", "flipped", "outside", "degenerate", "padding"]))
    classes = draw(st.integers(1, 4))
    scores, pred, anc, labels, gt, mask = scene(gen, grid=SMALL_GRID, images=draw(st.integers(1, 3)),
                                                gts=draw(st.integers(1, 6)), classes=classes, kind=kind)
    mask = (torch.rand(mask.shape, generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))).float() * mask \
        if draw(st.booleans()) else mask
    row = (draw(st.integers(0, labels.shape[0] - 1)), draw(st.integers(0, labels.shape[1] - 1)), 0)
    label = draw(st.sampled_from([None] * 4 + [classes, classes + 5, -1, -classes, -classes - 1, 1.5, -0.5, math.nan]))
    if label is not None:
        labels[row] = label
    for t in (scores, pred):
        if draw(st.integers(0, 3)) == 0:  # an fp16 overflow upstream: NaN or inf in the head's output
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    topk = draw(st.sampled_from([10, 13, 1, anc.shape[0], anc.shape[0] + 1]))
    return (scores, pred, anc, labels, gt, mask), dict(topk=topk, num_classes=classes, alpha=0.5, beta=6.0,
                                                       stride=list(STRIDES))


@PROPERTY
@given(case=hostile_scene())
def test_installed_assigner_gives_ultralytics_result_or_its_error(case):
    args, kw = case
    assigner = tal.TaskAlignedAssigner(**kw)
    theirs, their_error = outcome(lambda: assigner(*args))
    mo_ultralytics.install()
    try:
        ours, our_error = outcome(lambda: assigner(*args))
    finally:
        mo_ultralytics.uninstall()
    if their_error is None:
        assert our_error is None, f"Ultralytics succeeds where the drop-in raises {our_error!r}"
        assert_equal_targets(ours, theirs)
    elif our_error is None:
        # Documented: padding rows are never read. Ultralytics gives every background anchor GT 0's label and
        # fails on building a one-hot target from a padding row's label beyond the classes.
        labels, mask = args[3][..., 0].double().trunc(), args[5][..., 0] != 0
        out_of_range = ~((labels >= -kw["num_classes"]) & (labels < kw["num_classes"]))
        assert out_of_range.any() and not (out_of_range & mask).any(), their_error
    else:  # the batch went to Ultralytics' own assigner, which raised its own error
        assert type(our_error) is type(their_error) and str(our_error) == str(their_error), (our_error, their_error)


def test_refused_batches_are_counted(gen):
    args = list(scene(gen, classes=4))
    args[1] = args[1].clone()
    args[1][0] = math.nan  # every predicted box of image 0: its candidates get NaN CIoUs
    assigner = tal.TaskAlignedAssigner(topk=10, num_classes=4, alpha=0.5, beta=6.0, stride=list(STRIDES))
    mo_ultralytics.install()
    for _ in range(3):
        scores = assigner(*args)[2]
    assert scores.isnan().any()  # Ultralytics' own NaN targets, which its NaN recovery then acts on
    assert mo_ultralytics.fallbacks() == 3
    mo_ultralytics.uninstall()
    assert mo_ultralytics.fallbacks() == 0


@st.composite
def hostile_predictions(draw):
    """Raw YOLO output [B, 4 + nc + extra, N] with NaN and infinite boxes and scores, duplicate boxes and
    boxes sharing edges (coordinates on a quarter-pixel grid), empty images and batches."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    b, n, nc, extra = draw(st.integers(0, 3)), draw(st.integers(0, 60)), draw(st.integers(1, 4)), draw(st.integers(0, 2))
    xy = (torch.rand(b, 2, n, generator=gen) * 400 * 4).round() / 4
    wh = (torch.rand(b, 2, n, generator=gen) * 120 * 4).round() / 4
    if n and draw(st.booleans()):  # duplicates
        xy[..., n // 2:] = xy[..., :n - n // 2]
        wh[..., n // 2:] = wh[..., :n - n // 2]
    # Distinct scores: on exact ties the two keep different, equally valid boxes (documented).
    cls = ((torch.randperm(b * nc * n, generator=gen).float() + 1) / (b * nc * n + 1)).reshape(b, nc, n)
    pred = torch.cat([xy, wh, cls, torch.randn(b, extra, n, generator=gen)], 1)
    if pred.numel():
        for _ in range(draw(st.integers(0, 4))):
            channel = draw(st.integers(0, 3 + nc))
            pred[draw(st.integers(0, b - 1)), channel, draw(st.integers(0, n - 1))] = draw(
                st.sampled_from([math.nan, math.inf, -math.inf]))
    kw = dict(conf_thres=draw(st.sampled_from([0.0, 0.001, 0.25, 1.0])), iou_thres=draw(st.sampled_from([0.0, 0.45, 0.7, 1.0])),
              multi_label=draw(st.booleans()), agnostic=draw(st.booleans()), max_det=draw(st.sampled_from([300, 5, 0])),
              classes=draw(st.sampled_from([None, [0], [1, 3]])), nc=nc)
    return pred, kw


def without_non_finite(pred, nc, multi_label):
    """The predictions with every detection whose xyxy box or score is not finite made a non-candidate (score 0),
    which is what the drop-in's documented rule amounts to: such a detection is never kept and suppresses
    nothing. A detection's score is its class's; with one label per box, the best class's, which is NaN when any
    class is (torch's max). Either way a box with a NaN class score is no candidate at all: Ultralytics (and the
    drop-in with it) first keeps the boxes whose largest class score passes conf_thres, and that maximum is NaN."""
    xy, wh = pred[:, :2], pred[:, 2:4]
    box_ok = torch.isfinite(torch.cat([xy - wh / 2, xy + wh / 2], 1)).all(1)  # [B, N]
    cls = pred[:, 4:4 + nc]
    if multi_label and nc > 1:
        keep = (box_ok & ~cls.isnan().any(1))[:, None] & torch.isfinite(cls)
    else:
        keep = (box_ok & torch.isfinite(cls.amax(1)))[:, None].expand_as(cls)
    clean = pred.clone()
    clean[:, 4:4 + nc] = torch.where(keep, cls, torch.zeros(()))
    return clean


@PROPERTY
@given(case=hostile_predictions())
def test_nms_gives_ultralytics_detections_without_non_finite_rows(case):
    pred, kw = case
    ours, our_idx = mo_ultralytics.non_max_suppression(pred, return_idxs=True, **kw)
    clean = without_non_finite(pred, kw["nc"], kw["multi_label"])
    theirs, their_idx = ULTRALYTICS_NMS(clean, max_time_img=1e9, return_idxs=True, **kw)
    assert len(ours) == len(theirs) == pred.shape[0]
    for a, b, ia, ib in zip(ours, theirs, our_idx, their_idx):
        # Exact score ties may be kept in another order (documented): compare as sets of rows.
        assert a.shape == b.shape
        order_a, order_b = torch.argsort(ia.view(-1), stable=True), torch.argsort(ib.view(-1), stable=True)
        torch.testing.assert_close(ia.view(-1)[order_a].long(), ib.view(-1)[order_b].long(), rtol=0, atol=0)
        torch.testing.assert_close(a[order_a], b[order_b], rtol=0, atol=0)


def test_nms_threshold_errors_where_ultralytics_asserts():
    pred = torch.rand(1, 6, 10)
    for kw in (dict(conf_thres=1.5), dict(iou_thres=-0.1), dict(conf_thres=math.nan)):
        with pytest.raises(AssertionError):
            ULTRALYTICS_NMS(pred, **kw)
        with pytest.raises(ValueError, match="thres"):
            mo_ultralytics.non_max_suppression(pred, **kw)


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def train_through_a_nan_step(data, project, name, monkeypatch):
    """Three epochs of YOLOv8n in which the images of epoch 2's last batch turn NaN (as after an fp16 overflow):
    the loss of that step is NaN, which Ultralytics detects at the epoch's end and recovers from by reloading
    last.pt. Returns what its logger said and the final metrics."""
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import LOGGER

    steps = []
    preprocess = DetectionTrainer.preprocess_batch

    def poisoned(self, batch):
        batch = preprocess(self, batch)
        steps.append(1)
        if len(steps) == 4:  # 8 images in batches of 4: the last batch of epoch 2
            batch["img"] = batch["img"] * math.nan
        return batch

    monkeypatch.setattr(DetectionTrainer, "preprocess_batch", poisoned)
    records = Records()
    LOGGER.addHandler(records)
    try:
        results = YOLO("yolov8n.yaml").train(data=str(data), epochs=3, imgsz=64, batch=4, workers=0, plots=False,
                                              device="cpu", seed=0, deterministic=True, amp=False, project=str(project),
                                              name=name, exist_ok=True, verbose=False)
    finally:
        LOGGER.removeHandler(records)
    return records.messages, results.results_dict


def test_ultralytics_nan_recovery_still_works_with_mutualops(tmp_path, monkeypatch):
    from test_ultralytics_integration import write_dataset

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    torch.set_num_threads(2)
    data = write_dataset(tmp_path / "shapes")
    theirs, _ = train_through_a_nan_step(data, tmp_path / "runs", "ultralytics", monkeypatch)
    mo_ultralytics.install()
    ours, metrics = train_through_a_nan_step(data, tmp_path / "runs", "mutualops", monkeypatch)
    for messages in (theirs, ours):
        assert any("Loss NaN/Inf detected (attempt 1/3), recovering from last.pt" in m for m in messages), messages
    assert mo_ultralytics.fallbacks() >= 1  # the NaN step went to Ultralytics' own assigner
    assert all(math.isfinite(v) for v in metrics.values()), metrics
