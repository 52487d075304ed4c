"""The train and evaluate CLIs: config precedence, safe checkpoints, exact resume,
and user errors as one line with exit status 2. Runs are tiny (8 images of 64x64)."""

import errno
import json
import logging
import random
import shutil

import numpy as np
import pytest
import torch

from mutualops.detector import cli, evaluate, train
from mutualops.detector.data import CocoDetection, ShapesDataset, export_coco
from mutualops.detector.model import Detector, DetectorConfig

pytest.importorskip("pycocotools", reason="COCO-format data and evaluation use pycocotools")

TINY = ["--num-images", "8", "--image-size", "64", "64", "--width", "16", "--batch-size", "4", "--no-progress",
        "--threads", "1", "--device", "cpu"]


def train_main(out, *flags):
    train.main(["--out", str(out), *TINY, *flags])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-epoch FCOS and RetinaNet runs to resume or evaluate (copy before changing them)."""
    root = tmp_path_factory.mktemp("runs")
    for family in ("fcos", "retinanet"):
        train_main(root / family, "--epochs", "1", "--family", family)
    return root


def copy_run(runs, family, tmp_path):
    return shutil.copytree(runs / family, tmp_path / "run")


def make_coco(folder, count=4):
    ann = export_coco(ShapesDataset(count, image_size=(64, 64), seed=3), str(folder))
    return str(folder / "images"), ann


def edit_annotations(ann, edit):
    data = json.loads(open(ann).read())
    edit(data)
    with open(ann, "w") as f:
        json.dump(data, f)


def expect_user_error(capsys, entry, argv):
    """The one stderr line of a user error, after checking the exit status is 2."""
    with pytest.raises(SystemExit) as exited:
        entry(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ---- config precedence -------------------------------------------------------

def test_config_file_sits_between_defaults_and_explicit_flags(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 36, "family": "retinanet", "batch-size": 3}))
    alone = train.parse_args(["--config", str(config), "--device", "cpu"])
    assert (alone.epochs, alone.family, alone.batch_size, alone.width) == (36, "retinanet", 3, 64)
    # 12 is also the default: an explicit flag wins even when it equals the default.
    flags = train.parse_args(["--config", str(config), "--epochs", "12", "--family", "fcos", "--device", "cpu"])
    assert (flags.epochs, flags.family, flags.batch_size) == (12, "fcos", 3)


# ---- safe checkpoints and exact resume ----------------------------------------

def fail_saves_after(monkeypatch, good_saves):
    """Checkpoint saves that work good_saves times, then write part of the file and fail as a full disk does
    (the file's write raises OSError ENOSPC)."""
    atomically, calls = cli.write_atomically, []

    def flaky(path, write):
        if not str(path).endswith(".pt"):
            return atomically(path, write)
        calls.append(path)
        if len(calls) <= good_saves:
            return atomically(path, write)

        def torn(f):
            f.write(b"PK\x03\x04 torn")
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomically(path, torn)

    monkeypatch.setattr(train, "write_atomically", flaky)


def test_a_failed_save_keeps_the_previous_checkpoint_and_resume_continues(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fail_saves_after(m, good_saves=1)
        message = expect_user_error(capsys, train.main, ["--out", str(out), *TINY, "--epochs", "2"])
    assert "cannot save checkpoint" in message and "No space left on device" in message
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json", "last.pt", "log.jsonl"]  # no temporary
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0
    train_main(out, "--epochs", "2", "--resume")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1]


@pytest.fixture
def random_loss_weights(monkeypatch):
    """Losses scaled by draws from torch, numpy and Python random, so that the
    weights depend on all three random states being restored on resume."""
    forward = Detector.forward

    def noisy(self, images, targets):
        losses = forward(self, images, targets)
        noise = float(torch.rand(())) + np.random.rand() + random.random()
        return {**losses, "loss": losses["loss"] * (1 + 0.3 * noise)}

    monkeypatch.setattr(Detector, "forward", noisy)


def test_two_epochs_equal_one_epoch_then_resume(tmp_path, monkeypatch, capsys, random_loss_weights):
    train_main(tmp_path / "whole", "--epochs", "2")
    with monkeypatch.context() as m:
        fail_saves_after(m, good_saves=1)  # stops the run after its first epoch
        expect_user_error(capsys, train.main, ["--out", str(tmp_path / "resumed"), *TINY, "--epochs", "2"])
    train_main(tmp_path / "resumed", "--epochs", "2", "--resume")
    whole, resumed = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("whole", "resumed"))
    torch.testing.assert_close(resumed["model"], whole["model"], rtol=1e-5, atol=1e-6)
    assert resumed["schedule"]["last_epoch"] == whole["schedule"]["last_epoch"] == 4
    assert torch.equal(resumed["rng"]["torch"], whole["rng"]["torch"])


def test_a_non_finite_loss_stops_training(tmp_path, monkeypatch, capsys):
    forward = Detector.forward
    monkeypatch.setattr(Detector, "forward", lambda self, images, targets: {
        **forward(self, images, targets), "loss": torch.tensor(float("nan"), requires_grad=True)})
    message = expect_user_error(capsys, train.main, ["--out", str(tmp_path / "run"), *TINY, "--epochs", "1"])
    assert "the loss is nan" in message
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- user errors: one line, exit status 2 ---------------------------------------

def write(path, text):
    path.write_text(text)
    return str(path)


def truncated_copy(source, path):
    data = source.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return str(path)


def plain_state_dict(path):
    torch.save(Detector(DetectorConfig(width=16)).state_dict(), path)
    return str(path)


def three_class_checkpoint(path):
    config = DetectorConfig(width=16, num_classes=3)
    torch.save({"model": Detector(config).state_dict(), "config": config.to_dict(), "epoch": 0}, path)
    return str(path)


def coco_flags(tmp_path, edit=None, damage=None):
    images, ann = make_coco(tmp_path / "coco")
    if edit:
        edit_annotations(ann, edit)
    if damage:
        damage(tmp_path / "coco" / "images" / "000001.png")
    return ["--coco-images", images, "--coco-ann", ann]


def delete(path):
    path.unlink()


def truncate(path):
    path.write_bytes(path.read_bytes()[:60])


def unknown_category(data):
    data["annotations"][0]["category_id"] = 99


def no_annotations(data):
    data["annotations"] = []


def set_first(section, key, value):
    return lambda data: data[section][0].__setitem__(key, value)


def duplicate_first(section):
    """The first entry of a section again, as two concatenated instance files have it (the same id)."""
    return lambda data: data[section].append(dict(data[section][0]))


def swap_first_category_names(data):
    """The same categories numbered otherwise, as a second export of one project may number them."""
    first, second = data["categories"][0], data["categories"][1]
    first["name"], second["name"] = second["name"], first["name"]


def first_bbox(value):
    return set_first("annotations", "bbox", value)


def save_float_tiff(path):
    from PIL import Image

    Image.fromarray(np.full((64, 64), 0.5, np.float32)).save(path.with_suffix(".tif"))
    path.unlink()
    path.with_suffix(".tif").rename(path)  # the file name the annotations give, a float TIFF inside


def dangling_link(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    return str(link)


def folder_as(path):
    path.unlink()
    path.mkdir()


def linked_log(out):
    (out / "log.jsonl").rename(out.parent / "elsewhere.jsonl")
    (out / "log.jsonl").symlink_to(out.parent / "elsewhere.jsonl")


def checkpoint_with_image_size(runs, path, size):
    torch.save({**torch.load(runs / "fcos" / "last.pt", weights_only=True), "image_size": size}, path)
    return ["--checkpoint", str(path)]


def resnet18_conv1_only(path):
    torch.save({"stem.weight": torch.zeros(64, 3, 7, 7)}, path)
    return str(path)


def train_case(flags_of, expected):
    """A train run with TINY settings; flags_of(tmp_path, runs) gives its own flags."""
    return lambda tmp_path, runs: (train.main, ["--out", str(tmp_path / "out"), *TINY, *flags_of(tmp_path, runs)],
                                   expected)


def resume_case(family, damage, flags, expected, resume=True):
    def case(tmp_path, runs):
        out = copy_run(runs, family, tmp_path)
        damage(out / "last.pt")
        return train.main, ["--out", str(out), *TINY, "--epochs", "2", *(["--resume"] if resume else []), *flags], \
            expected
    return case


def evaluate_case(flags_of, expected):
    return lambda tmp_path, runs: (evaluate.main, ["--num-images", "4", "--device", "cpu", *flags_of(tmp_path, runs)],
                                   expected)


def last_pt(runs):
    return ["--checkpoint", str(runs / "fcos" / "last.pt")]


CASES = {
    "unknown flag": train_case(lambda t, r: ["--bogus", "3"], "unrecognized arguments"),
    "missing config": train_case(lambda t, r: ["--config", str(t / "none.json")], "cannot read config"),
    "malformed config": train_case(lambda t, r: ["--config", write(t / "c.json", "{epochs: 3")], "not valid JSON"),
    "unknown config key": train_case(lambda t, r: ["--config", write(t / "c.json", '{"epoch": 3}')],
                                     "unknown option 'epoch'"),
    "config value of the wrong type": train_case(lambda t, r: ["--config", write(t / "c.json", '{"epochs": 2.5}')],
                                                 "wrong type"),
    "config family not a choice": train_case(lambda t, r: ["--config", write(t / "c.json", '{"family": "yolo"}')],
                                             "must be one of"),
    "missing annotations": train_case(lambda t, r: ["--coco-images", str(t), "--coco-ann", str(t / "none.json")],
                                      "cannot read COCO annotations"),
    "malformed annotations": train_case(lambda t, r: ["--coco-images", str(t), "--coco-ann", write(t / "a.json", "[")],
                                        "not valid JSON"),
    "annotations not COCO": train_case(lambda t, r: ["--coco-images", str(t), "--coco-ann", write(t / "a.json", "{}")],
                                       "not COCO instances JSON"),
    "missing image file": train_case(lambda t, r: coco_flags(t, damage=delete), "1 of 4 images are missing"),
    "truncated image file": train_case(lambda t, r: [*coco_flags(t, damage=truncate), "--epochs", "1"],
                                       "cannot read image"),
    "truncated image file in a worker": train_case(
        lambda t, r: [*coco_flags(t, damage=truncate), "--epochs", "1", "--workers", "1"], "cannot read image"),
    "unknown category id": train_case(lambda t, r: coco_flags(t, edit=unknown_category), "category_id 99"),
    "empty annotations": train_case(lambda t, r: coco_flags(t, edit=no_annotations), "empty annotations list"),
    "resume without checkpoint": train_case(lambda t, r: ["--resume"], "no checkpoint"),
    "resume truncated checkpoint": resume_case("fcos", lambda p: truncated_copy(p, p), [], "truncated"),
    "resume wrong checkpoint": resume_case("fcos", plain_state_dict, [], "not a mutualops.train checkpoint"),
    "resume RetinaNet as FCOS": resume_case("retinanet", lambda p: None, ["--family", "fcos"],
                                            "family: checkpoint 'retinanet', flags 'fcos'"),
    "resume with another width": resume_case("fcos", lambda p: None, ["--width", "32", "--mutual-cls"],
                                             "mutual_cls: checkpoint False, flags True; width: checkpoint 16"),
    "out is a file": lambda t, r: (train.main, ["--out", write(t / "file", ""), *TINY], "is an existing file"),
    "batch size 0": train_case(lambda t, r: ["--batch-size", "0"], "--batch-size must be at least 1"),
    "negative batch size": train_case(lambda t, r: ["--batch-size", "-4"], "--batch-size must be at least 1"),
    "epochs 0": train_case(lambda t, r: ["--epochs", "0"], "--epochs must be at least 1"),
    "alpha above 1": train_case(lambda t, r: ["--alpha", "1.5"], "--alpha must be in [0, 1]"),
    "alpha below 0": train_case(lambda t, r: ["--alpha", "-0.1"], "--alpha must be in [0, 1]"),
    "gamma-cls below 0": train_case(lambda t, r: ["--gamma-cls", "-1"], "--gamma-cls must be finite and not negative"),
    "gamma-loc infinite": train_case(lambda t, r: ["--gamma-loc", "inf"], "--gamma-loc must be finite and not negative"),
    "qfl-beta not a number": train_case(lambda t, r: ["--qfl-beta", "nan"], "--qfl-beta must be finite and not negative"),
    "no images": train_case(lambda t, r: ["--num-images", "0"], "--num-images must be at least 1"),
    "batch larger than the data": train_case(lambda t, r: ["--batch-size", "9"], "an epoch would have no step"),
    "cuda without a GPU": train_case(lambda t, r: ["--device", "cuda"], "no CUDA GPU"),
    "not a device": train_case(lambda t, r: ["--device", "gpu"], "is not a device"),
    "backbone weights matching nothing": train_case(
        lambda t, r: ["--backbone", "resnet18", "--backbone-weights", resnet18_conv1_only(t / "w.pt")],
        "none of the 1 keys"),
    "missing backbone weights": train_case(
        lambda t, r: ["--backbone", "resnet18", "--backbone-weights", str(t / "none.pt")], "does not exist"),
    "evaluate missing checkpoint": evaluate_case(lambda t, r: ["--checkpoint", str(t / "none.pt")], "does not exist"),
    "evaluate truncated checkpoint": evaluate_case(
        lambda t, r: ["--checkpoint", truncated_copy(r / "fcos" / "last.pt", t / "last.pt")], "truncated"),
    "evaluate wrong checkpoint": evaluate_case(
        lambda t, r: ["--checkpoint", str(r / "fcos" / "config.json")], "not a torch checkpoint"),
    "evaluate state dict": evaluate_case(lambda t, r: ["--checkpoint", plain_state_dict(t / "sd.pt")],
                                         "not a mutualops.train checkpoint"),
    "evaluate other class count": evaluate_case(lambda t, r: ["--checkpoint", three_class_checkpoint(t / "c3.pt")],
                                                "detects 3 classes but the data set has 6"),
    "evaluate batch size 0": evaluate_case(lambda t, r: [*last_pt(r), "--batch-size", "0"], "at least 1"),
    "evaluate no images": evaluate_case(lambda t, r: [*last_pt(r), "--num-images", "0"], "at least 1"),
    "evaluate out is a file": evaluate_case(lambda t, r: [*last_pt(r), "--out", write(t / "f", "")], "existing file"),
    "evaluate cuda without a GPU": evaluate_case(lambda t, r: [*last_pt(r), "--device", "cuda"], "no CUDA GPU"),
    "evaluate missing image file": evaluate_case(lambda t, r: [*last_pt(r), *coco_flags(t, damage=delete)],
                                                 "images are missing"),
    "evaluate no checkpoint flag": evaluate_case(lambda t, r: [], "required: --checkpoint"),
    # Issue 28: what real data sets and real runs bring.
    "an earlier run without --resume": resume_case("fcos", lambda p: None, [], "holds an earlier run (last.pt, "
                                                   "log.jsonl): --resume continues it, --overwrite", resume=False),
    "resume and overwrite": train_case(lambda t, r: ["--resume", "--overwrite"], "give one of them"),
    "last.pt a folder": resume_case("fcos", folder_as, [], "last.pt is a folder"),
    "log.jsonl a link": resume_case("fcos", lambda p: linked_log(p.parent), [], "log.jsonl is a symbolic link"),
    "out a dangling link": lambda t, r: (train.main, ["--out", dangling_link(t), *TINY], "which does not exist"),
    "width not a multiple of 16": train_case(lambda t, r: ["--width", "24"], "--width must be a multiple of 16"),
    "resnet width not a multiple of 8": train_case(lambda t, r: ["--backbone", "resnet18", "--width", "20"],
                                                   "--width must be a multiple of 8"),
    "negative lr": train_case(lambda t, r: ["--lr", "-0.1"], "--lr must be finite and positive"),
    "lr not a number": train_case(lambda t, r: ["--lr", "nan"], "--lr must be finite and positive"),
    "negative weight decay": train_case(lambda t, r: ["--weight-decay=-1e-4"], "--weight-decay must be finite"),
    "negative seed": train_case(lambda t, r: ["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    "seed above 2**32": train_case(lambda t, r: ["--seed", "5000000000"], "--seed must be in [0, 4294967295]"),
    "negative data seed": train_case(lambda t, r: ["--data-seed", "-5"], "--data-seed must be in"),
    "meta device": train_case(lambda t, r: ["--device", "meta"], "runs on cpu or cuda"),
    "image smaller than a stride": train_case(lambda t, r: ["--image-size", "16", "64"], "at least 32 x 32"),
    "duplicate annotation ids": train_case(lambda t, r: coco_flags(t, edit=duplicate_first("annotations")),
                                           "annotations[0] share id 1 (two files concatenated?)"),
    "duplicate image ids": train_case(lambda t, r: coco_flags(t, edit=duplicate_first("images")), "share id"),
    "duplicate category ids": train_case(lambda t, r: coco_flags(t, edit=duplicate_first("categories")),
                                         "categories[6] and categories[0] share id 1"),
    "string image id": train_case(lambda t, r: coco_flags(t, edit=set_first("images", "id", "000001")),
                                  "has id '000001', not an integer"),
    "fractional width": train_case(lambda t, r: coco_flags(t, edit=set_first("images", "width", 64.5)),
                                   "has width 64.5, not a whole number"),
    "NaN bbox": train_case(lambda t, r: coco_flags(t, edit=first_bbox([float("nan"), 1, 2, 3])), "must be finite"),
    "infinite bbox": train_case(lambda t, r: coco_flags(t, edit=first_bbox([1, float("inf"), 2, 3])),
                                "must be finite"),
    "bbox beyond float32": train_case(lambda t, r: coco_flags(t, edit=first_bbox([1e39, 1, 2, 3])),
                                      "within float32's range"),
    "iscrowd not 0 or 1": train_case(lambda t, r: coco_flags(t, edit=set_first("annotations", "iscrowd", 2)),
                                     "has iscrowd 2"),
    "file name outside the folder": train_case(
        lambda t, r: coco_flags(t, edit=set_first("images", "file_name", "../000001.png")), "leaves the image folder"),
    "absolute file name": train_case(
        lambda t, r: coco_flags(t, edit=set_first("images", "file_name", "/etc/passwd")), "leaves the image folder"),
    "float TIFF": train_case(lambda t, r: coco_flags(t, damage=save_float_tiff), "has pixels of mode 'F'"),
    "evaluate image size 1": evaluate_case(lambda t, r: [*last_pt(r), "--image-size", "1", "1"], "at least 32 x 32"),
    "evaluate checkpoint folder": evaluate_case(lambda t, r: ["--checkpoint", str(r / "fcos")], "is a folder"),
    "evaluate malformed image_size": evaluate_case(
        lambda t, r: checkpoint_with_image_size(r, t / "c.pt", [64]), "its image_size must be two whole numbers"),
    "evaluate one checkpoint twice": evaluate_case(lambda t, r: [*last_pt(r), str(r / "fcos" / "last.pt")],
                                                   "is given twice"),
    "evaluate paired with one checkpoint": evaluate_case(lambda t, r: [*last_pt(r), "--paired"],
                                                         "--paired compares two checkpoints, got 1"),
    # The fresh review of issue 28.
    "negative area": train_case(lambda t, r: coco_flags(t, edit=set_first("annotations", "area", -1)),
                                "has area -1, not a finite number >= 0"),
    "evaluate other class names": evaluate_case(lambda t, r: [*last_pt(r), *coco_flags(t, edit=swap_first_category_names)],
                                                 "trained on other classes than the data set has (2 of 6 differ"),
    "resume on other class names": lambda t, r: (
        train.main, ["--out", str(copy_run(r, "fcos", t)), *TINY, "--epochs", "2", "--resume",
                     *coco_flags(t, edit=swap_first_category_names)], "trained on other classes"),
    "evaluate out not writable": evaluate_case(lambda t, r: [*last_pt(r), "--out", write(t / "f", "") + "/sub"],
                                               "--out"),
}


@pytest.mark.parametrize("name", CASES)
def test_user_errors_print_one_line_and_exit_2(name, tmp_path, runs, capsys):
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    entry, argv, expected = CASES[name](tmp_path, runs)
    capsys.readouterr()
    message = expect_user_error(capsys, entry, argv)
    assert expected in message


def test_debug_adds_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        train.main(["--out", str(tmp_path), "--epochs", "0", "--debug"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1] == "error: --epochs must be at least 1, got 0"


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train.main(["--out", str(tmp_path), "--device", "cpu"])


# ---- warnings of valid runs -----------------------------------------------------

def test_degenerate_boxes_are_dropped_with_one_warning(tmp_path, caplog):
    images, ann = make_coco(tmp_path)
    edit_annotations(ann, lambda data: [a["bbox"].__setitem__(2, -3) for a in data["annotations"][:2]])
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(images, ann)
        boxes = sum(dataset[i][1]["boxes"].shape[0] for i in range(len(dataset)))
    assert boxes == sum(ShapesDataset(4, image_size=(64, 64), seed=3)[i][1]["boxes"].shape[0] for i in range(4)) - 2
    [record] = caplog.records
    assert "dropping 2 of" in record.getMessage()


def test_partial_backbone_weights_report_missing_and_unexpected_keys(tmp_path, caplog):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.bias": torch.zeros(3)}, tmp_path / "w.pt")
    args = train.parse_args(["--backbone", "resnet18", "--backbone-weights", str(tmp_path / "w.pt"), "--device", "cpu"])
    with caplog.at_level(logging.WARNING):
        train.check_backbone_weights(args)
    [record] = caplog.records
    message = record.getMessage()
    assert "1 of 122 keys loaded" in message and "unexpected 1 (head.bias)" in message and "bn1.weight" in message


def test_checkpoints_with_retired_config_keys_keep_loading(tmp_path):
    # Checkpoints written before DetectorConfig.extra was retired carry "extra": {}; evaluate, resume and export
    # must still read them, and resume must not report the retired key as a difference.
    from mutualops.detector.evaluate import load_detector
    from mutualops.detector.train import differing_config

    config = DetectorConfig(width=16, num_classes=3)
    path = tmp_path / "old.pt"
    torch.save({"model": Detector(config).state_dict(), "config": {**config.to_dict(), "extra": {}}, "epoch": 0}, path)
    model, _ = load_detector(str(path))
    assert model.config == config
    assert differing_config({**config.to_dict(), "extra": {}}, config.to_dict()) == []


# ---- issue 28: runs that are killed, folders that are shared, data that is odd ----------------------------------

def test_a_second_training_into_a_folder_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = train.claim_out_folder(train.parse_args(["--out", str(out), *TINY]))  # as a running training holds it
    try:
        message = expect_user_error(capsys, train.main, ["--out", str(out), *TINY, "--epochs", "1"])
    finally:
        holder.close()
    assert "is being written by another training" in message and "pid" in message
    train_main(out, "--epochs", "1")  # free again once the first run has ended


def test_overwrite_starts_over_and_stale_temporaries_go(tmp_path, runs):
    out = copy_run(runs, "fcos", tmp_path)
    (out / "epoch7.pt").write_bytes(b"from the earlier run")
    (out / "last.pt.99999.tmp").write_bytes(b"left by a run killed while saving")
    (out / "notes.txt").write_text("the user's")
    train_main(out, "--epochs", "1", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json", "last.pt", "log.jsonl", "notes.txt"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


def test_an_interrupted_save_leaves_no_temporary_and_exits_with_the_signal(tmp_path, monkeypatch, capsys):
    import signal

    atomically = cli.write_atomically

    def interrupted(path, write):
        def half(f):
            f.write(b"PK\x03\x04 half")
            raise cli.Interrupted(signal.SIGTERM)  # what the handler raises when SIGTERM lands mid-write

        return atomically(path, half if str(path).endswith("last.pt") else write)

    monkeypatch.setattr(train, "write_atomically", interrupted)
    with pytest.raises(SystemExit) as exited:
        train.main(["--out", str(tmp_path / "run"), *TINY, "--epochs", "1"])
    assert exited.value.code == 128 + signal.SIGTERM
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM"), lines
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_training_process_in_one_line(tmp_path, signum):
    """A real process and a real signal, wherever it lands (a step, a save): one line, status 128 + signal,
    no temporary left, and last.pt (if any) loads."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "mutualops.train", "--out", str(out), *TINY, "--epochs", "1000"],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(getattr(signal, signum))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + getattr(signal, signum), err
    assert err.strip().splitlines() == [line for line in err.strip().splitlines() if line.startswith("interrupted by")]
    assert len(err.strip().splitlines()) == 1, err
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= 0


def test_images_above_pillows_limit_are_one_line(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 64x64 images are then above twice the limit
    message = expect_user_error(capsys, train.main, ["--out", str(tmp_path / "out"), *TINY, *coco_flags(tmp_path)])
    assert "larger than Pillow opens" in message


def test_coco_without_area_or_iscrowd_trains_and_evaluates(tmp_path, runs):
    images, ann = make_coco(tmp_path / "coco")
    edit_annotations(ann, lambda data: [(a.pop("area"), a.pop("iscrowd")) for a in data["annotations"]])
    edit_annotations(ann, lambda data: [im.__setitem__("width", float(im["width"])) for im in data["images"]])
    out = tmp_path / "run"
    train_main(out, "--epochs", "1", "--coco-images", images, "--coco-ann", ann)
    evaluate.main(["--checkpoint", str(out / "last.pt"), "--coco-images", images, "--coco-ann", ann, "--device", "cpu"])


def test_evaluate_keeps_checkpoints_of_equal_folder_names_apart(tmp_path, runs, capsys):
    for variant in ("baseline", "mutual"):
        shutil.copytree(runs / "fcos", tmp_path / variant / "run1")
    assert evaluate.checkpoint_names(["a/run1/last.pt", "b/run1/last.pt"]) == ["a/run1/last.pt", "b/run1/last.pt"]
    assert evaluate.checkpoint_names(["run1/last.pt", "run2/last.pt"]) == ["run1/last.pt", "run2/last.pt"]
    evaluate.main(["--checkpoint", str(tmp_path / "baseline" / "run1" / "last.pt"),
                   str(tmp_path / "mutual" / "run1" / "last.pt"), "--paired", "--num-images", "4", "--device", "cpu",
                   "--out", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"baseline/run1/last.pt", "mutual/run1/last.pt"} <= results.keys()
    assert results["paired_harmony"]["of"] == "mutual/run1/last.pt"


def test_backbone_weights_never_run_pickled_code(tmp_path, monkeypatch):
    from mutualops.detector.model import ResNetBackbone

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"conv1.weight": Payload()}, tmp_path / "w.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(Exception, match="[Ww]eights only"):
        ResNetBackbone("resnet18", str(tmp_path / "w.pt"))
    assert not marker.exists()


def test_evaluate_makes_its_out_folder_before_the_inference_pass(tmp_path, runs, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    message = expect_user_error(capsys, evaluate.main, ["--num-images", "4", "--device", "cpu", *last_pt(runs), "--out",
                                                        write(tmp_path / "f", "") + "/sub"])
    assert "cannot write there" in message


def test_a_time_limit_within_an_epoch_resumes_where_it_stopped(tmp_path, capsys, random_loss_weights):
    # 8 images in batches of 4: two steps per epoch; the limit stops the run after the first.
    train_main(tmp_path / "whole", "--epochs", "2")
    train_main(tmp_path / "sliced", "--epochs", "2", "--max-minutes", "1e-9")
    assert "ran out after step 1 of 2 in epoch 1 of 2; --resume continues" in capsys.readouterr().out
    partial = torch.load(tmp_path / "sliced" / "last.pt", weights_only=True)
    assert partial["epoch"] == 0 and partial["epoch_steps"] == 1
    train_main(tmp_path / "sliced", "--epochs", "2", "--resume")
    whole, sliced = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("whole", "sliced"))
    torch.testing.assert_close(sliced["model"], whole["model"], rtol=1e-5, atol=1e-6)
    assert sliced["schedule"]["last_epoch"] == whole["schedule"]["last_epoch"] == 4
    log = [json.loads(line) for line in (tmp_path / "sliced" / "log.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e.get("partial", False)) for e in log] == [(0, True), (0, False), (1, False)]


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, runs, capsys):
    out = copy_run(runs, "fcos", tmp_path)
    before = {name: (out / name).read_bytes() for name in ("last.pt", "log.jsonl", "config.json")}
    train_main(out, "--epochs", "1", "--resume")
    assert "has trained 1 epochs and --epochs is 1: nothing to do" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_torn_log_line_is_dropped_on_resume(tmp_path, runs):
    # A crash while appending leaves the last line cut; the resumed run's entries must still read back.
    out = copy_run(runs, "fcos", tmp_path)
    log = out / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-15])
    train_main(out, "--epochs", "2", "--resume")
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]
