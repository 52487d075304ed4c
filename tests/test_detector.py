import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import HAS_CUDA
from mutualops.detector.data import ShapesDataset, collate, export_coco
from mutualops.detector.model import Detector, DetectorConfig

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


def test_ablation_script_runs_every_variant(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "ablation.py")
    spec = importlib.util.spec_from_file_location("ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    ablation.main(["--out", str(tmp_path), "--seeds", "0", "--epochs", "2", "--eval-every", "1", "--num-images", "16",
                   "--val-images", "4", "--width", "16", "--threads", "1"])
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert len(result["runs"]) == 2 * len(ablation.VARIANTS)
    assert all([p["epoch"] for p in run["curve"]] == [1, 2] for run in result["runs"])
    table = (tmp_path / "ablation.md").read_text()
    assert "| retinanet | all |" in table and "epoch 1 | epoch 2" in table
    assert (tmp_path / "ap_vs_harmony.png").exists()


def test_evaluate_several_checkpoints_plots_ap_against_harmony(tmp_path):
    out = tmp_path / "run"
    args = ["--num-images", "16", "--image-size", "64", "64", "--width", "16", "--batch-size", "8", "--epochs", "2",
            "--checkpoint-every", "1", "--no-progress", "--threads", "1", "--device", "cpu"]
    trained = run(["-m", "mutualops.train", "--out", str(out), *args])
    assert trained.returncode == 0, trained.stderr
    assert (out / "epoch1.pt").exists() and (out / "epoch2.pt").exists()
    evaluated = run(["-m", "mutualops.evaluate", "--checkpoint", str(out / "epoch1.pt"), str(out / "epoch2.pt"),
                     "--num-images", "8", "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"run/epoch1.pt", "run/epoch2.pt"} and all("harmony" in m for m in metrics.values())
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
