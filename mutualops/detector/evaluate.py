"""Evaluate a trained detector: COCO AP (pycocotools) and the harmony of
classification and localization on the pre-NMS predictions.

    python -m mutualops.evaluate --checkpoint runs/fcos-mutual/last.pt --out runs/fcos-mutual/eval --split test
    python -m mutualops.evaluate --checkpoint runs/a/last.pt runs/b/last.pt --paired   # b's harmony against a's
    python -m mutualops.evaluate --checkpoint ... --coco-images DIR --coco-ann FILE

AP: on COCO-format data, detections are scored against the annotation file
itself (its image and category ids, areas and crowd flags; boxes mapped back to
its image sizes). A range with no objects (COCO's -1) is reported as null.

Harmony (docs/method.md, section 1): every pre-NMS prediction belongs to the GT
it overlaps most when that IoU is >= 0.5, whatever its score; per GT object
with at least HARMONY_MIN_SIZE such predictions, Spearman's rho of their
GT-class scores and IoUs; harmony is the mean over objects (their count is
reported), divergence 1 - it. --paired compares two checkpoints object by
object over the objects both cover, with a 95% bootstrap interval.

A user error (bad flag, checkpoint or data) prints one line "error: ..." and
exits with status 2; --debug adds the traceback.
"""

import argparse
import contextlib
import io
import json
import os

import torch

from ..metrics import gt_index_from_iou, harmony, paired_harmony
from ..ops.box_iou import box_iou_aligned
from .cli import CliParser, UserError, check_classes, check_device, check_image_size, check_out_folder, \
    exit_on_user_error, make_out_folder, read_checkpoint, write_atomically
from .data import SPLIT_SEEDS, CocoDetection, ShapesDataset, collate
from .model import Detector, DetectorConfig

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
HARMONY_IOU = 0.5
# With n predictions rho takes few values (n = 2: only -1 or +1), so small objects' rho is mostly noise
# that the mean would weigh like a well-covered object's (docs/method.md, section 1).
HARMONY_MIN_SIZE = 5


def load_detector(path, device="cpu"):
    """(model, checkpoint). The model is built without its backbone weights file,
    which the checkpoint's weights replace: it may be gone since training."""
    state = read_checkpoint(path)
    try:
        model = Detector(DetectorConfig.from_dict({**state["config"], "backbone_weights": ""}))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as e:  # what a config or weights of another detector raise
        raise UserError(f"{path} does not fit this version's detector: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), state


def coco_eval(gt, results):
    """COCO bbox AP figures of `results` (detection dicts) against `gt`, a pycocotools COCO object;
    None where the range holds no object (COCO's -1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes rejects an empty list; no detections is AP 0 wherever there are objects
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(COCO_STATS, ev.stats[:6])}


def coco_from_dict(data):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
    return gt


def synthetic_ground_truth(targets, image_size, classes):
    """A COCO object of the synthetic targets seen during evaluation (no image is drawn twice).
    Category ids are labels + 1; a crowd region holds shapes of any class, so it is a crowd
    annotation in every category, where COCO's rule ignores detections of that category."""
    images, annotations = [], []

    def add(image_id, box, category, crowd):
        x1, y1, x2, y2 = box
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": crowd})

    for target in targets:
        image_id = int(target["image_id"])
        images.append({"id": image_id, "height": image_size[0], "width": image_size[1]})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            add(image_id, box, label + 1, 0)
        for box in target["ignore_boxes"].tolist():
            for category in range(1, len(classes) + 1):
                add(image_id, box, category, 1)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


def detection_records(dataset, detections, image_id):
    """COCO result dicts of one image's detections, in the ids and coordinates of the data set's annotations."""
    boxes, labels = detections["boxes"].cpu(), detections["labels"].tolist()
    if isinstance(dataset, CocoDetection):
        boxes = dataset.to_original(image_id, boxes)
        labels = [dataset.category_ids[label] for label in labels]
    else:
        labels = [label + 1 for label in labels]
    return [{"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for (x1, y1, x2, y2), category, score in zip(boxes.tolist(), labels, detections["scores"].tolist())]


def harmony_candidates(boxes, class_scores, target, object_offset):
    """(GT-class scores, IoUs, object ids) of one image's pre-NMS predictions that have an object
    (IoU >= HARMONY_IOU with it, their best): the metric's candidates, with no score filter."""
    gt = target["boxes"].to(boxes.device)
    if gt.shape[0] == 0:
        return None
    index = gt_index_from_iou(boxes, gt, iou_threshold=HARMONY_IOU)
    matched = index >= 0
    j = index[matched]
    scores = class_scores[matched].gather(1, target["labels"].to(boxes.device)[j][:, None])[:, 0]
    return scores.cpu(), box_iou_aligned(boxes[matched], gt[j]).cpu(), j.cpu() + object_offset


@torch.no_grad()
def evaluate(model, dataset, batch_size=16, device="cpu", max_samples=20000):
    """(metrics, details). metrics: the AP figures, harmony, divergence, the objects
    whose rho entered harmony and all objects. details: up to max_samples (score,
    IoU) pairs of the harmony candidates and the per-object Harmony ("harmony",
    for paired_harmony against another model on the same data)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    results, seen, candidates = [], [], []
    objects = 0
    for images, targets in loader:
        detections, raw = model.predict(images.to(device), raw=True)
        for b, (det, target) in enumerate(zip(detections, targets)):
            results += detection_records(dataset, det, int(target["image_id"]))
            found = harmony_candidates(raw["boxes"][b], raw["class_scores"][b], target, objects)
            candidates += [found] if found is not None else []
            objects += target["boxes"].shape[0]
            seen.append(target)
    gt = dataset.coco if isinstance(dataset, CocoDetection) else \
        synthetic_ground_truth(seen, tuple(images.shape[-2:]), dataset.classes)
    metrics = coco_eval(gt, results)
    s, q, g = (torch.cat(parts) for parts in zip(*candidates)) if candidates else (torch.zeros(0),) * 3
    h = harmony(s, q, g.long(), min_size=HARMONY_MIN_SIZE, num_ids=objects)
    metrics.update(harmony=h.harmony, divergence=h.divergence, objects=h.num_objects, objects_total=objects,
                   harmony_min_size=HARMONY_MIN_SIZE)
    step = max(1, s.numel() // max_samples)
    return metrics, {"scores": s[::step].tolist(), "ious": q[::step].tolist(), "harmony": h}


def plot_score_vs_iou(samples_by_name, path):
    """Scatter of score against IoU per variant: the picture the paper's claim is about."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples_by_name)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = samples_by_name[name]
        ax.scatter(s["ious"], s["scores"], s=2, alpha=0.3)
        ax.set(xlabel="IoU with its GT", ylabel="score", title=name, xlim=(0.5, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ap_vs_harmony(metrics_by_name, path):
    """AP against harmony. Values are either one metrics dict per name (a point
    per variant) or a list of (label, metrics) per name, e.g. one per
    checkpoint: a line per name through its labelled points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, m in metrics_by_name.items():
        if isinstance(m, dict):
            ax.scatter([m["harmony"]], [m["AP"]], s=40)
            ax.annotate(name, (m["harmony"], m["AP"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            continue
        xs, ys = [point["harmony"] for _, point in m], [point["AP"] for _, point in m]
        ax.plot(xs, ys, marker="o", markersize=4, label=name)
        for label, point in m:
            ax.annotate(label, (point["harmony"], point["AP"]), textcoords="offset points", xytext=(3, 3), fontsize=6)
    if any(not isinstance(m, dict) for m in metrics_by_name.values()):
        ax.legend(fontsize=7)
    ax.set(xlabel="harmony (mean Spearman rho)", ylabel="AP", title="AP against harmony")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = CliParser(prog="python -m mutualops.evaluate", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one or more checkpoints (several: AP against harmony across them is plotted)")
    p.add_argument("--out", default="", help="folder for metrics.json and the plots")
    p.add_argument("--paired", action="store_true",
                   help="two checkpoints: the second's harmony against the first's, object by object, with a 95%% interval")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="synthetic split: val to choose budgets and settings, test for the numbers you report")
    p.add_argument("--num-images", type=int, default=300, help="synthetic images")
    p.add_argument("--data-seed", type=int, default=None, help="seed of the synthetic images (overrides --split)")
    p.add_argument("--image-size", type=int, nargs=2, default=None)
    p.add_argument("--coco-images", default="")
    p.add_argument("--coco-ann", default="")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    args = p.parse_args(argv)
    for name in ("num_images", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.image_size:
        check_image_size(args.image_size)
    if bool(args.coco_images) != bool(args.coco_ann):
        raise UserError("--coco-images and --coco-ann go together")
    if args.paired and len(args.checkpoint) != 2:
        raise UserError(f"--paired compares two checkpoints, got {len(args.checkpoint)}")
    check_out_folder(args.out)
    check_device(args.device)
    return args


def dataset_for(args, model, state, path):
    """The evaluation data at the checkpoint's image size, which must have the classes the model detects."""
    if args.image_size:
        size = tuple(args.image_size)
    elif state.get("image_size") is not None:
        try:
            check_image_size(state["image_size"], "its image_size")
        except UserError as e:
            raise UserError(f"{path}: {e}; pass --image-size H W") from None
        size = tuple(state["image_size"])
    else:
        size = (128, 128)
    if args.coco_images:
        dataset = CocoDetection(args.coco_images, args.coco_ann, size=size)
    else:
        seed = SPLIT_SEEDS[args.split] if args.data_seed is None else args.data_seed
        dataset = ShapesDataset(args.num_images, image_size=size, seed=seed)
    if len(dataset.classes) != model.config.num_classes:
        raise UserError(f"{path} detects {model.config.num_classes} classes but the data set has "
                        f"{len(dataset.classes)}")
    check_classes(state.get("classes"), dataset.classes, path)
    return dataset


def write_json(path, value):
    write_atomically(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def checkpoint_names(paths):
    """A name per checkpoint for the results: the fewest trailing path components that tell the paths apart
    (run1/last.pt and run2/last.pt; baseline/run1/last.pt and mutual/run1/last.pt), at least the folder and
    the file. The same file given twice is a UserError."""
    parts = [os.path.realpath(p).split(os.sep) for p in paths]
    for i, p in enumerate(parts):
        if p in parts[:i]:
            raise UserError(f"--checkpoint {paths[i]} is given twice")
    for depth in range(2, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(p) for p in parts]


def evaluate_checkpoints(args):
    if args.out:
        make_out_folder(args.out)  # before the inference pass, whose results it is to hold
    by_checkpoint, samples, per_object = {}, {}, []
    for path, name in zip(args.checkpoint, checkpoint_names(args.checkpoint)):
        model, state = load_detector(path, args.device)
        dataset = dataset_for(args, model, state, path)
        by_checkpoint[name], samples[name] = evaluate(model, dataset, args.batch_size, args.device)
        per_object.append(samples[name]["harmony"])
    single = len(by_checkpoint) == 1
    results = next(iter(by_checkpoint.values())) if single else dict(by_checkpoint)
    if args.paired:
        results["paired_harmony"] = paired_report(*per_object, *by_checkpoint)
    print(json.dumps(results, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "metrics.json"), results)
        print("plot:", plot_score_vs_iou(samples, os.path.join(args.out, "score_vs_iou.png")))
        if not single:
            print("plot:", plot_ap_vs_harmony({"checkpoints": list(by_checkpoint.items())},
                                              os.path.join(args.out, "ap_vs_harmony.png")))


def paired_report(a, b, name_a, name_b):
    if a.per_object.numel() != b.per_object.numel():
        raise UserError(f"--paired: {name_a} and {name_b} were evaluated on different data ({a.per_object.numel()} "
                        f"and {b.per_object.numel()} objects); give them one --image-size")
    p = paired_harmony(a, b)
    return {"of": name_b, "against": name_a, "difference": p.difference, "ci95": [p.low, p.high],
            "objects": p.num_objects, "harmony_of": p.harmony_b, "harmony_against": p.harmony_a,
            "min_size": a.min_size}


def main(argv=None):
    with exit_on_user_error(argv):
        evaluate_checkpoints(parse_args(argv))

