"""mutualops.integrations.ultralytics: its NMS against Ultralytics' own, and an
unmodified YOLOv8n training and validation with and without install()."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

# CI installs ultralytics (requirements.txt); only the GPU machine, which has no package registry, lacks it.
pytest.importorskip("ultralytics")
from ultralytics.utils import nms as ultralytics_nms  # noqa: E402
from ultralytics.utils import tal  # noqa: E402

import mutualops  # noqa: E402
from helpers import DEVICES  # noqa: E402
from mutualops.integrations import ultralytics as mo_ultralytics  # noqa: E402

ULTRALYTICS_NMS = ultralytics_nms.non_max_suppression
ULTRALYTICS_FAST_NMS = ultralytics_nms.TorchNMS.fast_nms


@pytest.fixture(autouse=True)
def restore_ultralytics():
    yield
    mo_ultralytics.uninstall()


def dense_predictions(gen, images=3, n=1500, classes=12, extra=0, device="cpu", dtype=torch.float32):
    """Raw YOLO output [B, 4 + nc + extra, N]: xywh boxes, class probabilities without exact ties (a
    permutation of distinct values: on exact ties the two NMS may keep different boxes, both valid), extra
    channels."""
    xy = torch.rand(images, 2, n, generator=gen) * 640
    wh = torch.rand(images, 2, n, generator=gen) * 120 + 2
    count = images * classes * n
    cls = (torch.randperm(count, generator=gen).double() / count).reshape(images, classes, n)
    cls = (cls ** 3 if dtype != torch.float16 else cls).float()
    cls[0] = 0  # an image without detections
    other = torch.randn(images, extra, n, generator=gen)
    return torch.cat([xy, wh, cls, other], 1).to(device=device, dtype=dtype)


def sorted_rows(rows):
    """Rows in a canonical order, for results that may order exact score ties differently."""
    for col in reversed(range(rows.shape[1])):
        rows = rows[torch.sort(rows[:, col], stable=True).indices]
    return rows


NMS_SETTINGS = [dict(conf_thres=0.25, iou_thres=0.7), dict(conf_thres=0.001, iou_thres=0.7),
                dict(conf_thres=0.001, iou_thres=0.6, multi_label=True), dict(conf_thres=0.1, classes=[1, 3, 5]),
                dict(conf_thres=0.05, agnostic=True), dict(conf_thres=0.01, max_det=7), dict(conf_thres=0.01, max_nms=40),
                dict(conf_thres=0.01, nc=10), dict(conf_thres=0.1, classes=[0.5, 2.0]), dict(conf_thres=0.1, max_det=0),
                dict(conf_thres=0.1, max_nms=0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("extra", [0, 3])
def test_nms_matches_ultralytics(device, extra, gen):
    pred = dense_predictions(gen, extra=extra, device=device)
    for kw in NMS_SETTINGS:
        kw = {"nc": 12, **kw}  # the extra channels (mask coefficients) are not classes
        theirs, their_idx = ULTRALYTICS_NMS(pred, max_time_img=1e6, return_idxs=True, **kw)
        ours, our_idx = mo_ultralytics.non_max_suppression(pred, return_idxs=True, **kw)
        assert len(ours) == len(theirs) == pred.shape[0]
        for a, b, ia, ib in zip(ours, theirs, our_idx, their_idx):
            assert a.dtype == b.dtype and a.shape == b.shape, kw
            assert ia.dtype == ib.dtype and ia.shape == ib.shape, kw
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(ia, ib, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_on_half_predictions_computes_in_float32(device, gen):
    # Ultralytics offsets float16 boxes by class * 7680 and computes their IoU in float16 (a box offset past
    # 8192 moves in steps of 8); ours suppresses in float32 and returns float32 rows as it does. On boxes
    # whose corners float16 holds exactly, ours equals Ultralytics on the same values in float32.
    pred = dense_predictions(gen, images=2, n=250, classes=2, extra=2, device=device, dtype=torch.float16).float()
    pred[:, :2] = pred[:, :2].round()
    pred[:, 2:4] = (pred[:, 2:4] / 2).round() * 2
    pred = pred.half()
    for kw in NMS_SETTINGS[:3]:
        kw = {"nc": 2, **kw}
        ours, our_idx = mo_ultralytics.non_max_suppression(pred, return_idxs=True, **kw)
        theirs, their_idx = ULTRALYTICS_NMS(pred.float(), max_time_img=1e6, return_idxs=True, **kw)
        for a, b, ia, ib in zip(ours, theirs, our_idx, their_idx):
            assert a.dtype == torch.float32
            torch.testing.assert_close(ia.view(-1).long(), ib.view(-1).long(), rtol=0, atol=0)
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nms_bad_input_and_fallbacks(gen):
    pred = dense_predictions(gen)
    with pytest.raises(ValueError, match="conf_thres"):
        mo_ultralytics.non_max_suppression(pred, conf_thres=1.5)
    with pytest.raises(ValueError, match="iou_thres"):
        mo_ultralytics.non_max_suppression(pred, iou_thres=-0.1)
    with pytest.raises(ValueError, match="nc must be"):
        mo_ultralytics.non_max_suppression(pred, nc=pred.shape[1])
    with pytest.raises(ValueError, match="prediction must have shape"):
        mo_ultralytics.non_max_suppression(pred[0])
    meta = pred.to("meta")  # a device without mutualops kernels: Ultralytics' own code runs
    with pytest.raises(NotImplementedError):
        ULTRALYTICS_NMS(meta)
    with pytest.raises(NotImplementedError):
        mo_ultralytics.non_max_suppression(meta)
    end2end = torch.rand(2, 30, 6, generator=gen)
    for a, b in zip(mo_ultralytics.non_max_suppression(end2end, conf_thres=0.5), ULTRALYTICS_NMS(end2end, conf_thres=0.5)):
        assert torch.equal(a, b)


def test_install_and_uninstall_are_idempotent():
    forward = tal.TaskAlignedAssigner.forward
    mo_ultralytics.install()
    mo_ultralytics.install()
    assert mo_ultralytics.installed()
    assert ultralytics_nms.non_max_suppression is mo_ultralytics.non_max_suppression
    assert tal.TaskAlignedAssigner.forward is not forward
    mo_ultralytics.uninstall()
    mo_ultralytics.uninstall()
    assert not mo_ultralytics.installed()
    assert ultralytics_nms.non_max_suppression is ULTRALYTICS_NMS and tal.TaskAlignedAssigner.forward is forward
    assert ultralytics_nms.TorchNMS.__dict__["fast_nms"].__func__ is ULTRALYTICS_FAST_NMS


def rotated_predictions(gen, images=3, n=2000, classes=6, device="cpu"):
    """Raw YOLO-OBB output [B, 4 + nc + 1, N]: xywh, class probabilities without exact ties, the angle last."""
    xy = torch.rand(images, 2, n, generator=gen) * 640
    wh = torch.rand(images, 2, n, generator=gen) * 60 + 4
    count = images * classes * n
    cls = ((torch.randperm(count, generator=gen).double() / count) ** 3).float().reshape(images, classes, n)
    cls[0] = 0  # an image without detections
    angle = (torch.rand(images, 1, n, generator=gen) - 0.5) * math.pi
    return torch.cat([xy, wh, cls, angle], 1).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("settings", [dict(conf_thres=0.001, iou_thres=0.7, multi_label=True),
                                      dict(conf_thres=0.25, iou_thres=0.45), dict(conf_thres=0.01, agnostic=True)])
def test_rotated_nms_keeps_what_ultralytics_keeps_on_mutualops(device, settings, gen, monkeypatch):
    pred = rotated_predictions(gen, device=device)
    theirs = ULTRALYTICS_NMS(pred, nc=6, rotated=True, max_time_img=1e6, **settings)
    calls = []
    monkeypatch.setattr(mo_ultralytics, "fast_nms_rotated",
                        lambda *a, **k: calls.append(len(a[0])) or mutualops.fast_nms_rotated(*a, **k))
    mo_ultralytics.install()
    ours = ultralytics_nms.non_max_suppression(pred, nc=6, rotated=True, max_time_img=1e6, **settings)
    assert len(calls) == 2 and max(calls) > 100  # image 0 has no candidate
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    # Other overlaps and the export form keep Ultralytics' code.
    boxes = pred[1, :4].T.contiguous()
    scores = pred[1, 4]
    torch.testing.assert_close(ultralytics_nms.TorchNMS.fast_nms(boxes, scores, 0.5),
                               ULTRALYTICS_FAST_NMS(boxes, scores, 0.5))
    assert len(calls) == 2


def test_installed_assigner_matches_and_subclasses_keep_theirs(gen, monkeypatch):
    from test_task_aligned import scene, STRIDES

    args = scene(gen, gts=8)
    assigner = tal.TaskAlignedAssigner(topk=10, num_classes=4, alpha=0.5, beta=6.0, stride=list(STRIDES), topk2=5)
    theirs = assigner(*args)
    mo_ultralytics.install()
    ours = assigner(*args)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=1e-6)
    # Subclasses (segment, pose, OBB) redefine overlaps or candidates: they keep Ultralytics' forward.
    class Subclass(tal.TaskAlignedAssigner):
        pass

    calls = []
    original = mo_ultralytics._originals["forward"]
    monkeypatch.setitem(mo_ultralytics._originals, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    sub = Subclass(topk=10, num_classes=4, alpha=0.5, beta=6.0, stride=list(STRIDES), topk2=5)
    for a, b in zip(sub(*args), theirs):
        assert torch.equal(a, b)
    assert calls == [1]
    assigner(*args)
    assert calls == [1]


def test_installed_rotated_assigner_matches(gen, monkeypatch):
    from test_task_aligned import STRIDES
    from test_task_aligned_rotated import assert_same, rotated_scene

    args = rotated_scene(gen, gts=8)
    assigner = tal.RotatedTaskAlignedAssigner(topk=10, num_classes=4, alpha=0.5, beta=6.0, stride=list(STRIDES))
    theirs = assigner(*args)
    calls = []
    monkeypatch.setattr(mo_ultralytics, "assign_task_aligned_rotated",
                        lambda *a, **k: calls.append(1) or mutualops.assign_task_aligned_rotated(*a, **k))
    mo_ultralytics.install()
    assert_same(mutualops.TaskAlignedTargets(*assigner(*args)), theirs)
    assert calls == [1]
    # A batch the op refuses (a NaN prediction) goes to Ultralytics' own rotated assigner.
    scores, pred, anc, labels, gt, mask = args
    pred = pred.clone()
    pred[0, 0, 4] = float("nan")
    fallbacks = mo_ultralytics.fallbacks()
    mo_ultralytics.uninstall()
    want = assigner(scores, pred, anc, labels, gt, mask)
    mo_ultralytics.install()
    got = assigner(scores, pred, anc, labels, gt, mask)
    assert mo_ultralytics.fallbacks() == fallbacks + 1
    for a, b in zip(got, want):  # NaN target scores, as Ultralytics gives them
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def write_dataset(root, train=8, val=4, size=64, seed=0):
    """A YOLO-format data set of coloured rectangles on a grey background (two classes)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            img = np.full((size, size, 3), 40, np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 5))):
                c = int(rng.integers(0, 2))
                w, h = (int(v) for v in rng.integers(6, size // 2, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y:y + h, x:x + w] = (200, 60, 60) if c == 0 else (60, 60, 200)
                lines.append(f"{c} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return data


def train_once(data, project, name, epochs, model="yolov8n.yaml", imgsz=64, rows=lambda result: result.boxes.data):
    """Per-step losses, validation metrics and sorted predictions (`rows` of each result) of one training."""
    from ultralytics import YOLO

    losses = []
    yolo = YOLO(model)
    yolo.add_callback("on_train_batch_end",
                      lambda trainer: losses.append([float(v) for v in trainer.loss_items.values()]))
    results = yolo.train(data=str(data), epochs=epochs, imgsz=imgsz, batch=4, workers=0, plots=False, device="cpu",
                         seed=0, deterministic=True, amp=False, project=str(project), name=name, exist_ok=True,
                         verbose=False)
    predictions = yolo.predict(str(data.parent / "images" / "val"), conf=0.001, imgsz=imgsz, device="cpu",
                               verbose=False)
    return torch.tensor(losses), results.results_dict, [sorted_rows(rows(p)) for p in predictions]


def test_yolov8n_trains_and_validates_the_same_with_mutualops(tmp_path, monkeypatch):
    """One epoch of YOLOv8n from its yaml (no weights downloaded) with and without install():
    the same loss at every step and the same validation metrics and predictions."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    torch.set_num_threads(2)
    data = write_dataset(tmp_path / "shapes")
    theirs = train_once(data, tmp_path / "runs", "ultralytics", epochs=2)
    calls = {"assign": 0, "nms": 0}
    assign, nms = mo_ultralytics.assign_task_aligned, mo_ultralytics.batched_nms
    monkeypatch.setattr(mo_ultralytics, "assign_task_aligned",
                        lambda *a, **k: calls.__setitem__("assign", calls["assign"] + 1) or assign(*a, **k))
    monkeypatch.setattr(mo_ultralytics, "batched_nms",
                        lambda *a, **k: calls.__setitem__("nms", calls["nms"] + 1) or nms(*a, **k))
    mo_ultralytics.install()
    ours = train_once(data, tmp_path / "runs", "mutualops", epochs=2)
    assert calls["assign"] >= 4 and calls["nms"] >= 2, calls
    assert ours[0].shape == theirs[0].shape and ours[0].shape[0] == 4
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == theirs[1].keys()
    for key in ours[1]:
        assert ours[1][key] == pytest.approx(theirs[1][key], rel=1e-4, abs=1e-6), key
    assert len(ours[2]) == len(theirs[2]) == 4
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def write_oriented_dataset(root, train=8, val=4, size=128, seed=0):
    """A YOLO-OBB data set (class x1 y1 ... x4 y4, normalised corners) of 100 to 300 turned rectangles per image,
    4 to 24 px a side, in two colours on a grey background: crowded as aerial scenes are."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            img = Image.new("RGB", (size, size), (40, 40, 40))
            draw = ImageDraw.Draw(img)
            lines = []
            for _ in range(int(rng.integers(100, 301))):
                c = int(rng.integers(0, 2))
                cx, cy = rng.uniform(8, size - 8, 2)
                w, h = rng.uniform(4, 24, 2)
                t = rng.uniform(-np.pi / 2, np.pi / 2)
                u = np.array([np.cos(t), np.sin(t)]) * w / 2
                v = np.array([-np.sin(t), np.cos(t)]) * h / 2
                corners = np.clip(np.array([[cx, cy]]) + np.array([u + v, u - v, -u - v, -u + v]), 0, size)
                draw.polygon([tuple(p) for p in corners], fill=(200, 60, 60) if c == 0 else (60, 60, 200))
                lines.append(f"{c} " + " ".join(f"{value / size:.6f}" for value in corners.reshape(-1)))
            img.save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return data


def train_oriented_once(data, project, name, epochs):
    return train_once(data, project, name, epochs, model="yolov8n-obb.yaml", imgsz=128,
                      rows=lambda result: result.obb.data)


def test_yolov8n_obb_trains_and_validates_the_same_with_mutualops(tmp_path, monkeypatch):
    """YOLOv8n-obb from its yaml on crowded oriented data with and without install(): the same loss at every
    step, the same validation metrics and predictions, and mutualops' rotated assigner and matrix NMS called."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    torch.set_num_threads(2)
    data = write_oriented_dataset(tmp_path / "oriented")
    theirs = train_oriented_once(data, tmp_path / "runs", "ultralytics", epochs=2)
    calls = {"assign": 0, "nms": 0}
    assign, nms = mo_ultralytics.assign_task_aligned_rotated, mo_ultralytics.fast_nms_rotated
    monkeypatch.setattr(mo_ultralytics, "assign_task_aligned_rotated",
                        lambda *a, **k: calls.__setitem__("assign", calls["assign"] + 1) or assign(*a, **k))
    monkeypatch.setattr(mo_ultralytics, "fast_nms_rotated",
                        lambda *a, **k: calls.__setitem__("nms", calls["nms"] + 1) or nms(*a, **k))
    mo_ultralytics.install()
    ours = train_oriented_once(data, tmp_path / "runs", "mutualops", epochs=2)
    assert calls["assign"] >= 4 and calls["nms"] >= 4, calls
    assert mo_ultralytics.fallbacks() == 0
    assert ours[0].shape == theirs[0].shape and ours[0].shape[0] == 4
    assert (ours[0][:, 0] > 0).all()  # a box loss at every step: the assigner found positives
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == theirs[1].keys()
    for key in ours[1]:
        assert ours[1][key] == pytest.approx(theirs[1][key], rel=1e-4, abs=1e-6), key
    assert len(ours[2]) == len(theirs[2]) == 4 and all(len(p) > 0 for p in ours[2])
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
