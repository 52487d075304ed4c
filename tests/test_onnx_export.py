"""ONNX export (docs/method.md, section 2.6): exported graphs run in ONNX Runtime give eager mutualops' results
on random and adversarial inputs, at batch sizes other than the exported one."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mutualops
from mutualops.ops.box_iou import MODES
from tests.helpers import random_boxes

onnx = pytest.importorskip("onnx", reason="the ONNX tests read the exported graphs with onnx")
ort = pytest.importorskip("onnxruntime", reason="the ONNX tests run the exported graphs in ONNX Runtime")
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402
export = pytest.importorskip("mutualops.export", reason="ONNX export needs onnx and onnxscript")
from mutualops.detector import export as detector_export  # noqa: E402

# ONNX Runtime's Exp rounds differently from the C library's expf in the last bit, so sigmoid scores agree to
# about one float32 unit; everything else (boxes, labels, indices, counts, IoU but CIoU's atan) is exact.
SCORE_ULPS = dict(rtol=2.5e-7, atol=1e-9)


class Call(torch.nn.Module):
    """A graph calling fn on its inputs, returning the tensors it gives (None dropped)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        out = self.fn(*args)
        return tuple(t for t in out if t is not None) if isinstance(out, tuple) else out


def exported_program(fn, args, dynamic_dims):
    dims = {}
    dynamic = tuple({dim: dims.setdefault(name, torch.export.Dim(name)) for dim, name in spec.items()} if spec else None
                    for spec in dynamic_dims)
    return torch.onnx.export(Call(fn).eval(), tuple(args), dynamo=True, verbose=False,
                             custom_translation_table=export.translation_table(), dynamic_shapes=(dynamic,))


def exported(tmp_path, fn, args, dynamic_dims):
    """An ONNX Runtime session of fn's graph, exported with the given dynamic input dimensions."""
    program = exported_program(fn, args, dynamic_dims)
    path = os.path.join(tmp_path, "graph.onnx")
    program.save(path)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(session, args):
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})


def assert_same(got, expected, scores_at=None, **tolerance):
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        g = torch.from_numpy(g)
        assert g.shape == e.shape and g.dtype == e.dtype, f"output {i}"
        if i == scores_at and tolerance:
            torch.testing.assert_close(g, e, **tolerance, msg=f"output {i}")
        else:
            torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True, msg=f"output {i}")


def adversarial_boxes(n, gen, dtype=torch.float32):
    """Random boxes with ties of every kind: duplicates, a flipped box, a point, NaN and infinite corners."""
    b = random_boxes(n, generator=gen, dtype=dtype)
    b[1::4] = b[0]  # identical boxes
    b[2] = torch.tensor([50.0, 50.0, 40.0, 60.0])  # x2 < x1: area 0 (ONNX's NMS would reorder the corners)
    b[3] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    b[5, 2] = float("nan")
    b[6, 0] = float("inf")
    return b


# ---- box IoU ----------------------------------------------------------------------------------------------

# ONNX Runtime has no float64 Atan kernel: float64 CIoU graphs are valid ONNX but do not run there.
@pytest.mark.parametrize("mode,dtype", [(m, d) for m in MODES for d in (torch.float32, torch.float16, torch.float64)
                                        if (m, d) != ("ciou", torch.float64)])
def test_box_iou_matches_eager(tmp_path, gen, mode, dtype):
    pairwise = exported(tmp_path, lambda a, b: mutualops.box_iou(a, b, mode=mode),
                        (random_boxes(5, generator=gen, dtype=dtype), random_boxes(4, generator=gen, dtype=dtype)),
                        [{0: "n"}, {0: "m"}])
    exact = mode != "ciou"  # ONNX Runtime's Atan is not the C library's atanf
    for n, m in [(1, 7), (33, 20)]:
        a, b = adversarial_boxes(n + 7, gen, dtype), random_boxes(m, generator=gen, dtype=dtype)
        b[0] = a[0]
        got, expected = run(pairwise, (a, b)), mutualops.box_iou(a, b, mode=mode)
        assert_same(got, expected, scores_at=None if exact else 0, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "iof"])
def test_batched_and_aligned_box_iou_match_eager(tmp_path, gen, mode):
    batched = exported(tmp_path, lambda a, b: mutualops.box_iou(a, b, mode=mode),
                       (random_boxes(5, batch=2, generator=gen), random_boxes(3, batch=2, generator=gen)),
                       [{0: "b", 1: "n"}, {0: "b", 1: "m"}])
    a, b = random_boxes(9, batch=4, generator=gen), random_boxes(6, batch=4, generator=gen)
    a[1, :3] = b[1, :3]
    assert_same(run(batched, (a, b)), mutualops.box_iou(a, b, mode=mode))
    aligned = exported(tmp_path, lambda a, b: mutualops.box_iou_aligned(a, b, mode=mode),
                       (random_boxes(5, generator=gen), random_boxes(5, generator=gen)), [{0: "n"}, {0: "n"}])
    a, b = adversarial_boxes(12, gen), random_boxes(12, generator=gen)
    assert_same(run(aligned, (a, b)), mutualops.box_iou_aligned(a, b, mode=mode))


# ---- NMS --------------------------------------------------------------------------------------------------

def nms_cases(gen):
    """(boxes, scores, idxs): random, exact score ties over identical boxes, non-finite values, one box."""
    b = adversarial_boxes(60, gen)
    tied = torch.rand(60, generator=gen).mul(4).round() / 4  # a handful of distinct scores
    scores = torch.rand(60, generator=gen)
    scores[7], scores[8] = float("nan"), float("inf")
    yield random_boxes(300, generator=gen, scale=60.0), torch.rand(300, generator=gen), torch.randint(0, 4, (300,))
    yield b, tied, torch.randint(0, 3, (60,), generator=gen) * 1000 - 5  # sparse and negative ids
    yield b, scores, torch.zeros(60, dtype=torch.long)
    yield random_boxes(1, generator=gen), torch.rand(1, generator=gen), torch.tensor([2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batched_nms_matches_eager(tmp_path, gen, dtype):
    session = exported(tmp_path, lambda b, s, i: mutualops.batched_nms(b, s, i, 0.5),
                       (random_boxes(8, generator=gen, dtype=dtype), torch.rand(8).to(dtype), torch.randint(0, 3, (8,))),
                       [{0: "n"}, {0: "n"}, {0: "n"}])
    for boxes, scores, idxs in nms_cases(gen):
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        assert_same(run(session, (boxes, scores, idxs)), mutualops.batched_nms(boxes, scores, idxs, 0.5))


def test_nms_keeps_ties_in_index_order(tmp_path, gen):
    session = exported(tmp_path, lambda b, s: mutualops.nms(b, s, 0.3), (random_boxes(8, generator=gen), torch.rand(8)),
                       [{0: "n"}, {0: "n"}])
    boxes = random_boxes(40, generator=gen, scale=30.0)
    boxes[::2] = boxes[0]  # every even box is one box
    scores = torch.full((40,), 0.5)
    keep = mutualops.nms(boxes, scores, 0.3)
    assert keep[0] == 0 and (keep[1:] % 2 == 1).all()  # the first of the tied duplicates wins
    assert_same(run(session, (boxes, scores)), keep)


class NonMaxSuppression(OpRun):  # ReferenceEvaluator replaces the op of the class's name
    """ONNX NonMaxSuppression (corner boxes) that takes equal scores in the order ONNX Runtime does not: the
    higher index first. The standard leaves that order open, so a graph must not depend on it."""

    op_domain = ""

    def _run(self, boxes, scores, max_output=None, iou_threshold=None, score_threshold=None, center_point_box=0):
        def scalar(x, default):
            return default if x is None or np.size(x) == 0 else np.asarray(x).reshape(-1)[0]

        limit, iou_t, score_t = scalar(max_output, 0), scalar(iou_threshold, 0.0), scalar(score_threshold, -np.inf)
        low, high = np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])
        area = np.prod(high - low, axis=-1)
        selected = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                s, kept = scores[b, c], []
                for i in sorted(range(len(s)), key=lambda i: (-s[i], -i)):
                    if len(kept) == limit or not s[i] > score_t:
                        break
                    inter = np.prod(np.clip(np.minimum(high[b, i], high[b, kept]) - np.maximum(low[b, i], low[b, kept]),
                                            0, None), axis=-1)
                    if not (inter / (area[b, i] + area[b, kept] - inter) > iou_t).any():
                        kept.append(i)
                selected += [(b, c, i) for i in kept]
        return (np.array(selected, dtype=np.int64).reshape(-1, 3),)


def test_tie_order_does_not_depend_on_the_runtimes_nms(gen):
    """The translation hands NonMaxSuppression ranks, never equal scores: under an NMS that breaks ties the
    other way than ONNX Runtime, the graph still keeps the lower index of tied candidates, as eager does."""
    boxes, scores = random_boxes(8, generator=gen), torch.rand(8)
    for fn, args in [(lambda b, s: mutualops.nms(b, s, 0.3), (boxes, scores)),
                     (lambda b, s, i: mutualops.batched_nms(b, s, i, 0.5), (boxes, scores, torch.randint(0, 3, (8,))))]:
        model = exported_program(fn, args, [{0: "n"}] * len(args)).model_proto
        evaluator = ReferenceEvaluator(model, new_ops=[NonMaxSuppression])
        for boxes, _, idxs in list(nms_cases(gen))[1:3]:
            scores = torch.full((len(boxes),), 0.5)
            scores[::3] = 0.25  # two tied groups
            args = (boxes, scores, idxs)[:len(args)]
            got = evaluator.run(None, {i.name: a.numpy() for i, a in zip(model.graph.input, args)})
            assert_same(got, fn(*args))


@pytest.mark.parametrize("boxes,scores,threshold,keep", [
    # a flipped box has zero width (kernels) where ONNX NonMaxSuppression would reorder its corners: no overlap
    ([[10, 10, 0, 0], [0, 0, 10, 10]], [0.9, 0.8], 0.3, [0, 1]),
    # IoU 2/5 is float32(0.4) exactly, and nms suppresses float(IoU) > 0.4 in double: only the rounded-down
    # float32 threshold compares the same in ONNX's float32 NMS
    ([[0, 0, 5, 1], [0, 0, 2, 1]], [0.9, 0.8], 0.4, [0]),
], ids=["flipped-box", "threshold-rounding"])
def test_nms_edge_cases_match_eager(tmp_path, gen, boxes, scores, threshold, keep):
    boxes, scores = torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores)
    session = exported(tmp_path, lambda b, s: mutualops.nms(b, s, threshold), (random_boxes(8, generator=gen), torch.rand(8)),
                       [{0: "n"}, {0: "n"}])
    expected = mutualops.nms(boxes, scores, threshold)
    assert expected.tolist() == keep
    assert_same(run(session, (boxes, scores)), expected)


# ---- rescored NMS -----------------------------------------------------------------------------------------

DENSE = [
    dict(),
    dict(logits=True),
    dict(logits=True, alpha=0.3, level=3, pre_nms_top_k=9),
    dict(alpha=1.0, class_agnostic=True, level=3, pre_nms_top_k=5),
    dict(iou=False, class_agnostic=True),
    dict(iou=False, logits=True, pre_nms_top_k=-1, level=2),
    dict(alpha=0.0, pre_nms_top_k=-1),
    dict(dtype=torch.float16, logits=True, level=3, pre_nms_top_k=9),
]


def dense_inputs(gen, batch, config, n=40, classes=3, case="random"):
    dtype, logits = config.get("dtype", torch.float32), config.get("logits", False)
    boxes = random_boxes(n, batch=batch, generator=gen, scale=80.0)
    scores = torch.randn(batch, n, classes, generator=gen) if logits else torch.rand(batch, n, classes, generator=gen)
    iou = torch.randn(batch, n, generator=gen) if logits else torch.rand(batch, n, generator=gen)
    if case == "ties":  # equal scores and equal boxes: order by index decides
        scores, iou = scores.round(), iou.round()
        boxes[:, 1::3] = boxes[:, :1]
    elif case == "empty":  # no candidate above the threshold
        scores, iou = (scores.clamp(max=-9.0), iou.clamp(max=-9.0)) if logits else (scores * 0.01, iou * 0.01)
    elif case == "all":  # every pair a candidate
        scores = scores.abs() + 3.0 if logits else scores * 0.5 + 0.5
        iou = iou.abs() + 3.0 if logits else iou * 0.5 + 0.5
    elif case == "non-finite":
        boxes[:, 4, 1] = float("nan")
        scores[:, 5, 0], scores[:, 6, 1], iou[:, 7] = float("nan"), float("inf"), float("nan")
    args = [boxes.to(dtype), scores.to(dtype)]
    if config.get("iou", True):
        args.append(iou.to(dtype))
    if config.get("level"):
        args.append(torch.arange(n) % config["level"])
    return args


def dense_call(config):
    options = {k: v for k, v in config.items() if k not in ("iou", "level", "dtype")}
    options.setdefault("max_detections", 12)
    options.setdefault("iou_threshold", 0.4)
    options.setdefault("score_threshold", 0.3 if not options.get("logits") else 0.5)

    def call(boxes, scores, *rest):
        iou = rest[0] if config.get("iou", True) else None
        level = rest[-1] if config.get("level") else None
        return mutualops.rescored_nms(boxes, scores, iou, level_index=level, num_levels=config.get("level"),
                                      fixed_shape=True, **options)

    return call


def assert_detections(got, expected, logits):
    expected = tuple(t for t in expected if t is not None)
    assert_same(got, expected, scores_at=1 if logits else None, **(SCORE_ULPS if logits else {}))


@pytest.mark.parametrize("config", DENSE, ids=lambda c: ",".join(f"{k}={getattr(v, 'itemsize', v)}" for k, v in c.items())
                         or "default")
def test_rescored_nms_dense_matches_eager(tmp_path, gen, config):
    call = dense_call(config)
    args = dense_inputs(gen, 2, config)
    dynamic = [{0: "batch"}] * (3 if config.get("iou", True) else 2) + ([None] if config.get("level") else [])
    session = exported(tmp_path, call, args, dynamic)
    found = 0
    for batch, case in [(1, "random"), (5, "random"), (3, "ties"), (2, "empty"), (2, "all"), (3, "non-finite")]:
        args = dense_inputs(gen, batch, config, case=case)
        expected = call(*args)
        assert_detections(run(session, args), expected, config.get("logits", False))
        found += int(expected.counts.sum())
        if case == "empty":
            assert int(expected.counts.sum()) == 0
    assert found > 0


FLAT = [
    dict(),
    dict(logits=True, class_agnostic=True),
    dict(level=2, pre_nms_top_k=4),
    dict(iou=False, level=3, pre_nms_top_k=-1, class_agnostic=True),
]


def flat_inputs(gen, m, config, case="random", images=3):
    boxes = random_boxes(m, generator=gen, scale=60.0)
    logits = config.get("logits", False)
    scores = torch.randn(m, generator=gen) if logits else torch.rand(m, generator=gen)
    iou = torch.randn(m, generator=gen) if logits else torch.rand(m, generator=gen)
    labels = torch.randint(-1, 4, (m,), generator=gen) * 7  # -7: padding candidates, never kept
    if case == "ties":
        scores, iou = scores.round(), iou.round()
        boxes[1::2] = boxes[0]
    args = [boxes, scores, labels] + ([iou] if config.get("iou", True) else [])
    args.append(torch.randint(0, images, (m,), generator=gen))
    if config.get("level"):
        args.append(torch.randint(0, config["level"], (m,), generator=gen))
    return args


def flat_call(config, images=3):
    options = {k: v for k, v in config.items() if k not in ("iou", "level")}
    options.update(max_detections=6, iou_threshold=0.4, score_threshold=0.2)

    def call(boxes, scores, labels, *rest):
        iou = rest[0] if config.get("iou", True) else None
        image = rest[1 if config.get("iou", True) else 0]
        level = rest[-1] if config.get("level") else None
        return mutualops.rescored_nms(boxes, scores, iou, labels=labels, batch_index=image, num_images=images,
                                      level_index=level, num_levels=config.get("level"), fixed_shape=True, **options)

    return call


@pytest.mark.parametrize("config", FLAT, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_rescored_nms_flat_matches_eager(tmp_path, gen, config):
    call = flat_call(config)
    args = flat_inputs(gen, 30, config)
    session = exported(tmp_path, call, args, [{0: "m"}] * len(args))
    # 4 candidates: fewer slots than max_detections, as the kernel pads (nms.h, detection_slots).
    for m, case in [(30, "random"), (200, "random"), (80, "ties"), (7, "random"), (4, "random")]:
        args = flat_inputs(gen, m, config, case)
        assert_detections(run(session, args), call(*args), config.get("logits", False))


@pytest.mark.parametrize("max_detections", [1, 2])
def test_outputs_keep_their_declared_shape_for_few_candidates(tmp_path, gen, max_detections):
    """torch.export's dynamic dimensions are positive, so a dynamic M declares min(1, M) = 1 slot: with
    max_detections 1 the graph pads to one slot at M = 0 too (eager gives none), with the same counts (0).
    max_detections 2 declares Min(2, M) slots, and the graph gives eager's width."""
    def call(boxes, scores, labels):
        return mutualops.rescored_nms(boxes, scores, labels=labels, score_threshold=0.0,
                                      max_detections=max_detections, fixed_shape=True)

    args = flat_inputs(gen, 8, dict(iou=False))[:3]
    session = exported(tmp_path, call, args, [{0: "m"}] * 3)
    declared = onnx.load(tmp_path / "graph.onnx").graph.output[0].type.tensor_type.shape.dim[1]
    assert declared.dim_value == 1 if max_detections == 1 else declared.dim_param.startswith("Min(2")
    for m in (0, 1, 2, 5):
        args = flat_inputs(gen, m, dict(iou=False))[:3]
        args[2] = args[2].abs()  # no padding candidate: each one can be kept
        got, expected = run(session, args), call(*args)
        width = expected.labels.shape[1]
        assert width == min(max_detections, m)
        assert got[0].shape[1] == (1 if max_detections == 1 else width)
        assert_same([g[:, :width] for g in got[:4]] + [got[4]], tuple(t for t in expected if t is not None))
        assert (got[2][:, width:] == -1).all() and (got[3][:, width:] == -1).all()


def test_variable_size_detections_export(tmp_path, gen):
    """fixed_shape=False exports too: the padded outputs compacted in the graph (ONNX NonZero)."""
    def call(boxes, scores, labels, image):
        return mutualops.rescored_nms(boxes, scores, labels=labels, batch_index=image, num_images=2,
                                      score_threshold=0.2, max_detections=5)

    args = flat_inputs(gen, 30, dict(iou=False), images=2)
    session = exported(tmp_path, call, args, [{0: "m"}] * 4)
    for m in (30, 90):
        args = flat_inputs(gen, m, dict(iou=False), images=2)
        assert_same(run(session, args), tuple(t for t in call(*args)))


# ---- what cannot be exported ------------------------------------------------------------------------------

def export_error(fn, args):
    with pytest.raises(Exception) as raised:
        torch.onnx.export(Call(fn).eval(), tuple(args), dynamo=True, custom_translation_table=export.translation_table(),
                          verbose=False)
    return str(raised.value)


def test_float64_nms_is_refused_by_name(gen):
    b, s = random_boxes(6, generator=gen, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    message = export_error(lambda b, s: mutualops.nms(b, s, 0.5), (b, s))
    assert "nms: float64 inputs cannot be exported" in message
    message = export_error(lambda b, s, i: mutualops.batched_nms(b, s, i, 0.5), (b, s, torch.zeros(6, dtype=torch.long)))
    assert "batched_nms: float64 inputs cannot be exported" in message
    message = export_error(lambda b, s: mutualops.rescored_nms(b, s, fixed_shape=True), (b[None], s[None, :, None]))
    assert "rescored_nms: float64 inputs cannot be exported" in message


def test_counts_read_from_data_are_refused_by_name(gen):
    b, s = random_boxes(6, batch=1, generator=gen), torch.rand(1, 6, 2)
    message = export_error(lambda b, s, lv: mutualops.rescored_nms(b, s, level_index=lv, fixed_shape=True),
                           (b, s, torch.zeros(6, dtype=torch.long)))
    assert "rescored_nms needs num_levels to be exported with level_index" in message
    message = export_error(lambda b, s, label, i: mutualops.rescored_nms(b, s, labels=label, batch_index=i, fixed_shape=True),
                           (b[0], s[0, :, 0], torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)))
    assert "rescored_nms needs num_images to be exported with batch_index" in message


# ---- the detector -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained detector whose head spreads its scores (the trained prior would leave no candidate), saved
    as mutualops.train saves one."""
    from mutualops.detector.model import Detector, DetectorConfig

    torch.manual_seed(0)
    config = DetectorConfig(num_classes=3, width=16, iou_rescoring=True, max_detections=20)
    model = Detector(config)
    with torch.no_grad():
        model.head.cls.weight.normal_(0, 0.5)
        model.head.cls.bias.fill_(-1.0)
        model.head.quality.weight.normal_(0, 0.5)
        model.head.box.weight.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("run") / "last.pt"
    torch.save({"model": model.state_dict(), "config": config.to_dict(), "epoch": 0, "image_size": [64, 96]}, path)
    return path, model.eval()


def test_detector_cli_exports_what_predict_detects(checkpoint, tmp_path):
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an older export")
    done = subprocess.run([sys.executable, "-m", "mutualops.export", "--checkpoint", str(path), "--out", str(out),
                           "--max-detections", "15"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(mutualops.__file__))})
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and os.listdir(tmp_path) == ["model.onnx"]  # replaced, no temporary left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "counts"]
    model.config.max_detections = 15
    try:
        found = 0
        for batch in (1, 4):  # exported with 2
            images = torch.rand(batch, 3, 64, 96, generator=torch.Generator().manual_seed(batch))
            boxes, scores, labels, counts = session.run(None, {"images": images.numpy()})
            assert boxes.shape == (batch, 15, 4) and labels.shape == scores.shape == (batch, 15)
            for b, expected in enumerate(model.predict(images)):
                n = int(counts[b])
                found += n
                # Convolutions round differently in ONNX Runtime: boxes agree to 1e-3 pixels, scores to 1e-5.
                assert n == len(expected["labels"]) and (labels[b, n:] == -1).all()
                np.testing.assert_array_equal(labels[b, :n], expected["labels"].numpy())
                np.testing.assert_allclose(boxes[b, :n], expected["boxes"].numpy(), rtol=0, atol=1e-3)
                np.testing.assert_allclose(scores[b, :n], expected["scores"].numpy(), rtol=0, atol=1e-5)
        assert found > 0
    finally:
        model.config.max_detections = 20


def expect_user_error(capsys, argv, words):
    with pytest.raises(SystemExit) as exited:
        detector_export.main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_cli_user_errors_are_one_line(checkpoint, tmp_path, capsys):
    path = str(checkpoint[0])
    expect_user_error(capsys, ["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")],
                      "does not exist")
    expect_user_error(capsys, ["--checkpoint", path, "--out", str(tmp_path / "missing" / "m.onnx")],
                      "does not exist")
    expect_user_error(capsys, ["--checkpoint", path, "--out", str(tmp_path)], "is a folder")
    expect_user_error(capsys, ["--checkpoint", path, "--out", str(tmp_path / "m.onnx"), "--opset", "12"],
                      f"--opset must be between 18 and {export.max_opset()}")
    expect_user_error(capsys, ["--checkpoint", str(tmp_path), "--out", str(tmp_path / "m.onnx")], "is a folder")
    expect_user_error(capsys, ["--checkpoint", path, "--out", str(tmp_path / "m.onnx"), "--static-batch", "-1"],
                      "0 (any batch size) or a batch size")
    expect_user_error(capsys, ["--checkpoint", path], "--out")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    expect_user_error(capsys, ["--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m.onnx")],
                      "cannot read checkpoint")
    assert not (tmp_path / "m.onnx").exists()
    # The trained checkpoint, or another one, as --out: never replaced by the graph.
    saved = checkpoint[0].read_bytes()
    other = tmp_path / "epoch3.pt"
    other.write_bytes(saved)
    expect_user_error(capsys, ["--checkpoint", path, "--out", path], "is the checkpoint itself")
    expect_user_error(capsys, ["--checkpoint", path, "--out", str(other)], "holds a torch checkpoint")
    assert checkpoint[0].read_bytes() == saved and other.read_bytes() == saved


def test_cli_refusals_keep_the_old_file(checkpoint, tmp_path, capsys):
    """An opset above onnx's newest, an image size of 0 (the checkpoint's) or too large for memory (the
    example batch) are one-line errors before anything is written; the old file stays."""
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an older export")
    newest = export.max_opset()
    expect_user_error(capsys, ["--checkpoint", str(path), "--out", str(out), "--opset", str(newest + 1)],
                      f"--opset must be between 18 and {newest}")
    zero = tmp_path / "zero.pt"
    torch.save({**torch.load(path), "image_size": [0, 0]}, zero)
    expect_user_error(capsys, ["--checkpoint", str(zero), "--out", str(out)], "image_size must be positive")
    none = tmp_path / "none.pt"
    torch.save({k: v for k, v in torch.load(path).items() if k != "image_size"}, none)
    expect_user_error(capsys, ["--checkpoint", str(none), "--out", str(out)], "pass --image-size")
    expect_user_error(capsys, ["--checkpoint", str(path), "--out", str(out), "--image-size", "100000", "100000"],
                      "cannot be allocated")
    assert out.read_bytes() == b"an older export"
    with pytest.raises(ValueError, match="image_size must be positive"):
        detector_export.export_detector(model, out, (0, 0))
    with pytest.raises(ValueError, match="opset must be between"):
        detector_export.export_detector(model, out, (64, 96), opset=newest + 1)
    assert out.read_bytes() == b"an older export"


def test_an_opset_the_converter_cannot_produce_is_an_error(checkpoint, tmp_path, monkeypatch):
    """The exporter logs a failed version conversion and returns the graph at opset 18: that is an error, not
    a file at another opset than the one asked for."""
    def fail(*args, **kwargs):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    out = tmp_path / "model.onnx"
    with pytest.raises(detector_export.ExportOptionError, match=f"produced opset 18, not the requested {export.max_opset()}"):
        detector_export.export_detector(checkpoint[1], out, (64, 96), opset=export.max_opset())
    assert not out.exists()


def test_export_leaves_the_callers_model_as_it_was(checkpoint, tmp_path):
    model = checkpoint[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        detector_export.export_detector(model, tmp_path / "model.onnx", (64, 96))
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    after = model.state_dict()
    assert all(after[k].device == v.device and torch.equal(after[k], v) for k, v in before.items())
