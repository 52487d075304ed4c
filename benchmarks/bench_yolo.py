"""What a user gets end to end: YOLOv8n trained from its yaml on crowded images, with Ultralytics' own
assigner and NMS and with the mutualops drop-in, each side in its own process.

    python benchmarks/bench_yolo.py [--device cuda] [--quick] [--epochs 5] [--val-epochs 60] [--workers 0]

Data (written by this script, nothing downloaded): 640x640 images, each with 150 to 400 filled rectangles of
4 classes (the colour gives the class) on a noisy grey background, overlapping as on a shelf or a car park.
The square root of a rectangle's area is log-uniform in [8, 64] px and its aspect ratio log-uniform in
[1/2, 2]. 16 training images (mosaic augmentation puts about as many objects into each training image), 16
validation images.

1. Training: each side trains YOLOv8n from yolov8n.yaml for --epochs epochs (batch 8, seed 0, deterministic,
   Ultralytics' defaults otherwise, so AMP where Ultralytics turns it on), the drop-in side with
   MUTUALOPS_ULTRALYTICS=1. Recorded per step: the loss items and the time of forward, loss, backward and
   optimizer step (between Ultralytics' on_train_batch_start and on_train_batch_end callbacks); the time inside
   TaskAlignedAssigner.forward and non_max_suppression; the process's peak memory (resident set on the CPU,
   torch's peak allocation on CUDA). The per-step losses of the two sides must agree (rtol 1e-5).
2. A model trained long enough to produce many candidates: the drop-in side trains --val-epochs epochs (the
   same training as Ultralytics', faster) with SGD at lr0 0.01 in batches of 4 (Ultralytics' automatic choice
   for so short a run, AdamW at a small rate, still gives mAP 0 after 40 epochs here), and each side validates
   those weights at conf 0.001 and iou 0.7 in
   batches of 16, as Ultralytics validates, with its default NMS time limit (2 s + 0.05 s per image of the
   batch) on Ultralytics' side: NMS time, candidates per image, images that came back empty, how often
   Ultralytics' time limit fired, and mAP50-95 / mAP50.

The JSON goes to benchmarks/results/yolo-<device>.json (tables.py renders it into README and RESULTS).
"""

import argparse
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import harness

HERE = os.path.dirname(os.path.abspath(__file__))

SIDES = {"ultralytics": "Ultralytics' own", "mutualops": "mutualops drop-in (MUTUALOPS_ULTRALYTICS=1)"}
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def write_dataset(root, train, val, size, objects, seed=0):
    """The crowded data set in YOLO format; returns the data yaml's path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
        for i in range(count):
            img = rng.normal(110, 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
            lines = []
            for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
                c = int(rng.integers(0, len(COLOURS)))
                side, ratio = np.exp(rng.uniform(np.log(8), np.log(64))), np.exp(rng.uniform(-np.log(2), np.log(2)))
                w, h = max(3, int(side * ratio**0.5)), max(3, int(side / ratio**0.5))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y:y + h, x:x + w] = COLOURS[c]
                lines.append(f"{c} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(os.path.join(root, "images", split, f"{i}.png"))
            with open(os.path.join(root, "labels", split, f"{i}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    data = os.path.join(root, "data.yaml")
    with open(data, "w") as f:
        f.write(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                + "".join(f"  {i}: c{i}\n" for i in range(len(COLOURS))))
    return data


# --- one side, in its own process ------------------------------------------------------------------------------


class Timers:
    """Wall time inside Ultralytics' assigner and NMS (synchronised on CUDA), and what the NMS saw."""

    def __init__(self, device):
        self.device = device
        self.seconds = {"assigner": 0.0, "nms": 0.0}
        self.calls = {"assigner": 0, "nms": 0}
        self.nms_images = []  # (candidates, detections) per image

    def wrap(self, fn, key):
        import torch

        def timed(*args, **kwargs):
            if self.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.seconds[key] += time.perf_counter() - start
            self.calls[key] += 1
            if key == "nms":
                self.record_nms(args, kwargs, out)
            return out

        return timed

    def record_nms(self, args, kwargs, out):
        prediction = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
        conf = kwargs.get("conf_thres", args[1] if len(args) > 1 else 0.25)
        nc = kwargs.get("nc", 0) or prediction.shape[1] - 4
        candidates = (prediction[:, 4:4 + nc] > conf).sum((1, 2)).tolist()
        detections = [len(d) for d in (out[0] if kwargs.get("return_idxs") else out)]
        self.nms_images.extend(zip(candidates, detections))

    def reset(self):
        self.__init__(self.device)


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__()
        self.time_limit = 0

    def emit(self, record):
        self.time_limit += "NMS time limit" in record.getMessage()


def peak_memory_bytes(device):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_side(args):
    """Train or validate as one side, in this process; writes a JSON record to args.record."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER
    from ultralytics.utils import nms as nms_module
    from ultralytics.utils import tal

    from mutualops.integrations import ultralytics as mo_ultralytics

    assert mo_ultralytics.installed() == (args.side == "mutualops"), "MUTUALOPS_ULTRALYTICS did not act as asked"
    if args.threads:
        torch.set_num_threads(args.threads)
    timers = Timers(args.device)
    tal.TaskAlignedAssigner.forward = timers.wrap(tal.TaskAlignedAssigner.forward, "assigner")
    nms_module.non_max_suppression = timers.wrap(nms_module.non_max_suppression, "nms")
    warnings = Warnings()
    LOGGER.addHandler(warnings)
    device = "cpu" if args.device == "cpu" else 0
    record = {"side": args.side, "phase": args.phase}
    if args.phase == "train":
        steps, losses, clock = [], [], {}
        model = YOLO("yolov8n.yaml")
        model.add_callback("on_train_batch_start", lambda t: clock.__setitem__("start", time.perf_counter()))

        def batch_end(trainer):
            if args.device == "cuda":
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - clock["start"])
            losses.append([float(v) for v in trainer.loss_items.values()])

        model.add_callback("on_train_batch_end", batch_end)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model.train(data=args.data, epochs=args.epochs, imgsz=args.image_size, batch=args.batch, workers=args.workers,
                    device=device, plots=False, seed=0, deterministic=True, val=False, project=args.project,
                    name=args.name, exist_ok=True, verbose=False, optimizer=args.optimizer, lr0=args.lr0)
        record.update(wall_seconds=time.perf_counter() - start, step_seconds=steps, losses=losses,
                      weights=os.path.join(args.project, args.name, "weights", "last.pt"))
    else:
        model = YOLO(args.weights)
        timers.reset()
        metrics = model.val(data=args.data, imgsz=args.image_size, batch=args.batch, conf=0.001, iou=0.7,
                            device=device, plots=False, workers=args.workers, project=args.project,
                            name=f"val-{args.name}", exist_ok=True, verbose=False)
        record.update(mAP50_95=float(metrics.box.map), mAP50=float(metrics.box.map50),
                      nms_images=timers.nms_images, time_limit_warnings=warnings.time_limit)
    record.update(assigner_seconds=timers.seconds["assigner"], assigner_calls=timers.calls["assigner"],
                  nms_seconds=timers.seconds["nms"], nms_calls=timers.calls["nms"],
                  peak_memory_bytes=peak_memory_bytes(args.device))
    with open(args.record, "w") as f:
        json.dump(record, f)


# --- the driver --------------------------------------------------------------------------------------------------


def side(args, which, phase, work, **extra):
    """Runs one side in a fresh Python process (MUTUALOPS_ULTRALYTICS says which) and returns its record."""
    options = {"epochs": args.epochs, "batch": args.batch, "image-size": args.image_size, "workers": args.workers,
               "device": args.device, "project": os.path.join(work, "runs"), "name": which, **extra}
    record = os.path.join(work, f"{phase}-{options['name']}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--side", which, "--phase", phase, "--record", record]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, MUTUALOPS_ULTRALYTICS="1" if which == "mutualops" else "0", YOLO_OFFLINE="1",
               YOLO_CONFIG_DIR=os.path.join(work, "config"))
    print(f"{phase}: {SIDES[which]}, {options['epochs']} epochs ..." if phase == "train" else f"{phase}: {SIDES[which]} ...",
          flush=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_yolo: the {options['name']} {phase} run failed:\n"
                         f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
    with open(record) as f:
        return json.load(f)


def training_summary(record):
    steps = record["step_seconds"]
    calls = max(record["assigner_calls"], 1)
    return {"steps": len(steps), "steps_per_second": len(steps) / sum(steps),
            "step_ms_median": 1e3 * statistics.median(steps), "assigner_ms_per_call": 1e3 * record["assigner_seconds"] / calls,
            "assigner_share": record["assigner_seconds"] / sum(steps), "nms_seconds": record["nms_seconds"],
            "wall_seconds": record["wall_seconds"], "peak_memory_bytes": record["peak_memory_bytes"]}


def validation_summary(record):
    images = record["nms_images"]
    return {"mAP50_95": record["mAP50_95"], "mAP50": record["mAP50"], "nms_seconds": record["nms_seconds"],
            "nms_calls": record["nms_calls"], "images": len(images),
            "candidates_per_image_median": statistics.median(c for c, _ in images) if images else 0,
            "images_empty": sum(1 for c, d in images if d == 0),
            "images_empty_with_candidates": sum(1 for c, d in images if d == 0 and c > 0),
            "time_limit_warnings": record["time_limit_warnings"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=5, help="training compared step by step")
    p.add_argument("--val-epochs", type=int, default=60, help="training of the model the validation compares")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--val-train-batch", type=int, default=4, help="batch of the longer training")
    p.add_argument("--val-batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--workers", type=int, default=0, help="dataloader workers (0 on a 2-core machine)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each side's process")
    p.add_argument("--quick", action="store_true", help="a smoke test: 128 px, 20 to 40 objects, 1 epoch")
    p.add_argument("--work", default=os.path.join(HERE, "out", "yolo"), help="data, runs and per-side records")
    p.add_argument("--json", default=None, help="default benchmarks/results/yolo-<device>.json")
    # One side, in its own process (the driver starts these).
    p.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=["train", "val"], help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--project", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--optimizer", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--lr0", type=float, default=0.01, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        return run_side(args)

    if args.quick:
        args.epochs, args.val_epochs, args.image_size, args.val_batch = 1, 1, 128, 4
        objects, counts = (20, 40), (8, 4)
    else:
        objects, counts = (150, 400), (16, 16)
    work = os.path.abspath(args.work)
    data = write_dataset(os.path.join(work, "data"), *counts, size=args.image_size, objects=objects)
    train = {name: side(args, name, "train", work, data=data) for name in SIDES}
    ours, theirs = np.array(train["mutualops"]["losses"]), np.array(train["ultralytics"]["losses"])
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=1e-5, atol=1e-6):
        raise SystemExit(f"bench_yolo: per-step losses differ between the sides:\n{theirs}\n{ours}")
    longer = side(args, "mutualops", "train", work, data=data, epochs=args.val_epochs, name="mutualops-long",
                  batch=args.val_train_batch, optimizer="SGD", lr0=0.01)
    weights = longer["weights"]
    val = {name: side(args, name, "val", work, data=data, weights=weights, batch=args.val_batch) for name in SIDES}

    summary = {"training": {name: training_summary(r) for name, r in train.items()},
               "validation": {name: validation_summary(r) for name, r in val.items()},
               "losses_equal": True, "max_loss_difference": float(np.abs(ours - theirs).max()) if ours.size else 0.0}
    t, v = summary["training"], summary["validation"]
    print(f"\nYOLOv8n, {args.image_size} px, batch {args.batch}, {args.epochs} epochs, {args.device}")
    print(f"{'side':<46} {'steps/s':>8} {'step ms':>8} {'assigner ms':>12} {'peak MiB':>9}")
    for name in SIDES:
        s = t[name]
        print(f"{SIDES[name]:<46} {s['steps_per_second']:8.3f} {s['step_ms_median']:8.0f} {s['assigner_ms_per_call']:12.1f} "
              f"{harness.mb(s['peak_memory_bytes']):9.0f}")
    print(f"per-step losses equal (largest difference {summary['max_loss_difference']:.2e})")
    print(f"\nvalidation at conf 0.001 of {weights}")
    print(f"{'side':<46} {'NMS s':>7} {'cand./img':>9} {'empty':>6} {'limit':>6} {'mAP50-95':>9} {'mAP50':>7}")
    for name in SIDES:
        s = v[name]
        print(f"{SIDES[name]:<46} {s['nms_seconds']:7.2f} {s['candidates_per_image_median']:9.0f} {s['images_empty']:6d} "
              f"{s['time_limit_warnings']:6d} {s['mAP50_95']:9.4f} {s['mAP50']:7.4f}")
    payload = {"benchmark": "yolo", "machine": harness.machine(args.device),
               "command": "python benchmarks/bench_yolo.py" + (f" --device {args.device}" if args.device != "cpu" else "")
               + (" --quick" if args.quick else ""),
               "setup": {"image_size": args.image_size, "batch": args.batch, "epochs": args.epochs,
                         "val_epochs": args.val_epochs, "val_train_batch": args.val_train_batch,
                         "val_optimizer": "SGD lr0 0.01", "val_batch": args.val_batch, "workers": args.workers,
                         "train_images": counts[0], "val_images": counts[1], "objects_per_image": list(objects)},
               **summary}
    path = args.json or os.path.join(HERE, "results", f"yolo-{args.device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, allow_nan=False, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)
    print(f"\nsaved {path}")
    return payload


if __name__ == "__main__":
    main()
