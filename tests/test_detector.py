import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import HAS_CUDA
from mutualops.detector.data import ShapesDataset, collate, export_coco
from mutualops.detector.model import Detector, DetectorConfig, ignore_points_in_crowds

pytest.importorskip("pycocotools", reason="evaluation uses pycocotools")

SWITCHES = [dict(), dict(mutual_cls=True), dict(mutual_box=True), dict(iou_rescoring=True),
            dict(mutual_cls=True, mutual_box=True, iou_rescoring=True)]


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(s) or "baseline")
def test_training_steps_reduce_the_loss(family, switches):
    torch.manual_seed(0)
    images, targets = collate([ShapesDataset(4, image_size=(64, 64), seed=1)[i] for i in range(4)])
    model = Detector(DetectorConfig(family=family, width=16, **switches))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(images, targets)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    detections = model.predict(images)
    assert len(detections) == 4 and detections[0]["boxes"].shape[1] == 4


def test_images_without_objects_train():
    model = Detector(DetectorConfig(width=16))
    images = torch.rand(2, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "ignore_boxes": torch.zeros(0, 4)}
    out = model(images, [empty, empty])
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


TERMS = ("cls", "box", "quality")


def batch_with_crowds():
    return collate([ShapesDataset(4, image_size=(64, 64), seed=1, crowd_prob=1.0)[i] for i in range(4)])


def losses_of(family, images, targets, state=None, **config):
    """Loss terms of a detector with the given weights (`state`) and options; its state for the next call."""
    torch.manual_seed(0)
    model = Detector(DetectorConfig(family=family, width=16, **config))
    if state is not None:
        model.load_state_dict(state)
    out = model(images, targets)
    return {k: out[k].detach() for k in TERMS}, model.state_dict()


# What each switch or hyperparameter may change, given the same weights and data: its own loss term, nothing else.
CHANGES = [
    (dict(), dict(mutual_cls=True), {"cls"}),
    (dict(), dict(mutual_box=True), {"box"}),
    (dict(), dict(iou_rescoring=True), {"quality"}),
    (dict(mutual_cls=True), dict(mutual_cls=True, gamma_cls=2.0), {"cls"}),
    (dict(mutual_cls=True), dict(mutual_cls=True, qfl_beta=1.0), {"cls"}),
    (dict(mutual_box=True), dict(mutual_box=True, gamma_loc=2.0), {"box"}),
    (dict(), dict(gamma_cls=2.0, gamma_loc=2.0, qfl_beta=1.0), set()),  # without their switches they do nothing
]


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
@pytest.mark.parametrize("before, after, changed", CHANGES, ids=lambda v: "+".join(map(str, v)) if isinstance(v, dict) else None)
def test_each_switch_changes_its_loss_and_nothing_else(family, before, after, changed):
    images, targets = batch_with_crowds()
    first, state = losses_of(family, images, targets, **before)
    second, _ = losses_of(family, images, targets, state, **after)
    differing = {k for k in TERMS if not torch.equal(first[k], second[k])}
    assert differing == changed, (first, second)


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(s) or "baseline")
def test_no_gradient_flows_into_a_target(family, switches):
    """Each loss term reaches only its own output conv: a mutual target that kept its graph (the IoU of the
    decoded box in the class or quality target, the class probability in the box weight) would carry the
    term's gradient into another branch."""
    images, targets = batch_with_crowds()
    torch.manual_seed(0)
    model = Detector(DetectorConfig(family=family, width=16, **switches))
    out = model(images, targets)
    convs = {"cls": model.head.cls.weight, "box": model.head.box.weight, "quality": model.head.quality.weight}
    # RetinaNet without IoU rescoring has no quality branch to train: its term is a zero that reaches nothing.
    unused = {"quality"} if family == "retinanet" and not switches.get("iou_rescoring") else set()
    for term in TERMS:
        grads = torch.autograd.grad(out[term], list(convs.values()), retain_graph=True, allow_unused=True)
        reached = {name for name, g in zip(convs, grads) if g is not None and bool(g.abs().sum() > 0)}
        assert reached == {term} - unused, (term, reached)


def test_fcos_ignores_background_points_inside_crowd_regions():
    points = torch.tensor([[5.0, 5.0], [15.0, 15.0], [25.0, 25.0], [35.0, 35.0]])
    matched = torch.tensor([[-1, -1, 0, -1], [-1, -1, -1, -1]])
    crowds = torch.tensor([[[10.0, 10.0, 30.0, 30.0]], [[0.0, 0.0, 40.0, 40.0]]])
    out = ignore_points_in_crowds(matched, points, crowds, torch.tensor([1, 0]))  # image 1's row is padding
    assert out.tolist() == [[-1, -2, 0, -1], [-1, -1, -1, -1]]  # the positive inside stays positive


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
def test_crowd_regions_are_ignored_in_training(family):
    """A crowd region (large enough for RetinaNet's smallest anchors, 32 pixels, to reach IoF > 0.5) changes
    the classification loss; in FCOS a point assigned to a real object stays positive, so the box and
    quality losses do not move, where the max-IoU assigner ignores such anchors too."""
    images, targets = batch_with_crowds()
    without = [{**t, "ignore_boxes": torch.zeros(0, 4)} for t in targets]
    crowded = [{**t, "ignore_boxes": torch.tensor([[8.0, 8.0, 56.0, 56.0]])} for t in targets]
    with_crowds, state = losses_of(family, images, crowded)
    no_crowds, _ = losses_of(family, images, without, state)
    assert not torch.equal(with_crowds["cls"], no_crowds["cls"])
    if family == "fcos":
        assert torch.equal(with_crowds["box"], no_crowds["box"]) and torch.equal(with_crowds["quality"], no_crowds["quality"])


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, **kwargs)


def test_train_resume_and_evaluate_on_coco_format_data(tmp_path):
    data = tmp_path / "coco"
    ann = export_coco(ShapesDataset(24, image_size=(64, 64), seed=3, crowd_prob=0.5), str(data))
    common = ["--coco-images", str(data / "images"), "--coco-ann", ann, "--width", "16", "--batch-size", "8",
              "--no-progress", "--threads", "1", "--device", "cpu"]
    out = tmp_path / "run"
    first = run(["-m", "mutualops.train", "--out", str(out), "--epochs", "1", *common])
    assert first.returncode == 0, first.stderr
    again = run(["-m", "mutualops.train", "--out", str(out), "--epochs", "2", "--resume", *common])
    assert again.returncode == 0, again.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]
    evaluated = run(["-m", "mutualops.evaluate", "--checkpoint", str(out / "last.pt"), "--out", str(out / "eval"),
                     "--coco-images", str(data / "images"), "--coco-ann", ann, "--device", "cpu"])
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "harmony", "objects"} <= set(metrics)
    assert (out / "eval" / "score_vs_iou.png").exists()


def test_training_is_repeatable(tmp_path):
    args = ["--num-images", "16", "--image-size", "64", "64", "--width", "16", "--batch-size", "8", "--epochs", "1",
            "--no-progress", "--threads", "1", "--device", "cpu"]
    logs = []
    for name in ("a", "b"):
        result = run(["-m", "mutualops.train", "--out", str(tmp_path / name), *args])
        assert result.returncode == 0, result.stderr
        logs.append((tmp_path / name / "log.jsonl").read_text().splitlines())
    strip = [[{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in log] for log in logs]
    assert strip[0] == strip[1]


def test_torchrun_two_processes_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "mutualops.train",
                  "--out", str(tmp_path / "ddp"), "--num-images", "32", "--image-size", "64", "64", "--width", "16",
                  "--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert state["epoch"] == 0 and state["config"]["family"] == "fcos"


def load_benchmark(name):
    import importlib.util

    folder = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    # As `python benchmarks/<name>.py` runs it: its folder first on the path, for `import harness`.
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def test_ablation_protocol_chooses_the_budget_on_validation_and_reports_test(tmp_path):
    ablation = load_benchmark("ablation")
    args = ["--results", str(tmp_path / "ablation-t.json"), "--work", str(tmp_path / "work"), "--seeds", "0", "1",
            "--budgets", "1", "2", "--num-images", "16", "--val-images", "4", "--test-images", "6", "--image-size", "64",
            "--width", "16", "--families", "fcos", "retinanet"]
    result = ablation.main(args)
    assert json.loads((tmp_path / "ablation-t.json").read_text())["families"].keys() == {"fcos", "retinanet"}
    for family in result["families"].values():
        assert {r["split"] for r in family["budget"]["runs"]} == {"val"} and {r["split"] for r in family["runs"]} == {"test"}
        assert family["epochs"] in (1, 2) and {r["epochs"] for r in family["runs"]} == {family["epochs"]}
        assert len(family["runs"]) == 2 * len(ablation.VARIANTS)
        ap = family["vs_baseline"]["all"]["AP"]
        by = {(r["variant"], r["seed"]): r["AP"] for r in family["runs"]}
        assert ap["per_seed"] == [by[("all", s)] - by[("baseline", s)] for s in (0, 1)]
        assert ap["ci95"][0] <= ap["mean"] <= ap["ci95"][1]
    again = ablation.main(args)  # every run is on record: nothing is trained again
    assert json.dumps(again["families"]) == json.dumps(result["families"])  # NaN harmony of untrained models too


def test_tables_are_rendered_from_the_committed_results():
    """README.md, docs/*.md and benchmarks/RESULTS.md hold exactly what benchmarks/tables.py renders from
    benchmarks/results."""
    tables = load_benchmark("tables")
    assert tables.tables(), "no committed ablation result"
    assert tables.main(["--check"]) == 0


def test_tables_replace_hand_edits_and_reject_unknown_keys():
    tables = load_benchmark("tables")
    rendered = {"x:summary": "| rendered |"}
    text = "before\n<!-- table:x:summary -->\n| hand-edited |\n<!-- /table:x:summary -->\nafter"
    assert tables.fill(text, rendered) == text.replace("hand-edited", "rendered")
    with pytest.raises(KeyError):
        tables.fill("<!-- table:y:full -->\nx\n<!-- /table:y:full -->", rendered)


def test_evaluate_several_checkpoints_plots_ap_against_harmony(tmp_path):
    out = tmp_path / "run"
    args = ["--num-images", "16", "--image-size", "64", "64", "--width", "16", "--batch-size", "8", "--epochs", "2",
            "--checkpoint-every", "1", "--no-progress", "--threads", "1", "--device", "cpu"]
    trained = run(["-m", "mutualops.train", "--out", str(out), *args])
    assert trained.returncode == 0, trained.stderr
    assert (out / "epoch1.pt").exists() and (out / "epoch2.pt").exists()
    evaluated = run(["-m", "mutualops.evaluate", "--checkpoint", str(out / "epoch1.pt"), str(out / "epoch2.pt"),
                     "--num-images", "8", "--out", str(tmp_path / "eval"), "--device", "cpu", "--paired"])
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"run/epoch1.pt", "run/epoch2.pt", "paired_harmony"}
    assert all("harmony" in metrics[name] for name in ("run/epoch1.pt", "run/epoch2.pt"))
    paired = metrics["paired_harmony"]
    assert (paired["of"], paired["against"], paired["min_size"]) == ("run/epoch2.pt", "run/epoch1.pt", 5)
    assert (tmp_path / "eval" / "ap_vs_harmony.png").exists()


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.float16, marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
])
def test_loss_under_autocast_matches_float32(family, device, dtype):
    """--amp: the head's half-precision outputs meet float32 GT in every op; the losses stay within the half
    type's precision (bfloat16's 8 bits of mantissa: about 1%, 4% allowed) of the float32 ones, and backward
    runs."""
    torch.manual_seed(0)
    images, targets = collate([ShapesDataset(4, image_size=(64, 64), seed=1)[i] for i in range(4)])
    images = images.to(device)
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    model = Detector(DetectorConfig(family=family, width=16, mutual_cls=True, mutual_box=True,
                                    iou_rescoring=True)).to(device)
    full = model(images, targets)
    with torch.autocast(device, dtype=dtype):
        half = model(images, targets)
    half["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    for key in ("loss", "cls", "box", "quality"):
        assert float(half[key].detach()) == pytest.approx(float(full[key].detach()), rel=0.04, abs=1e-3), key


def test_train_cli_with_amp_on_cpu(tmp_path):
    out = tmp_path / "amp"
    done = run(["-m", "mutualops.train", "--out", str(out), "--epochs", "1", "--num-images", "8", "--batch-size", "4",
                "--image-size", "64", "64", "--width", "16", "--amp", "--device", "cpu", "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert (out / "last.pt").exists()
