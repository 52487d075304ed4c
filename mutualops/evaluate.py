"""Evaluate a trained detector: COCO AP (pycocotools) and the harmony of
classification and localization on the pre-NMS predictions.

    python -m mutualops.evaluate --checkpoint runs/fcos-mutual/last.pt --out runs/fcos-mutual/eval
    python -m mutualops.evaluate --checkpoint ... --coco-images DIR --coco-ann FILE

Harmony (docs/method.md, section 1): each pre-NMS prediction scoring at least the score
threshold belongs to the GT it overlaps most when that IoU is >= 0.5; per GT
object with two or more predictions, Spearman's rho of their scores and IoUs;
harmony is the mean over objects (their count is reported), divergence 1 - it.

A user error (bad flag, checkpoint or data) prints one line "error: ..." and
exits with status 2; --debug adds the traceback.
"""

import argparse
import contextlib
import io
import json
import os

import torch

from .box_iou import box_iou_aligned
from .detector.data import CocoDetection, ShapesDataset, coco_dict, collate
from .detector.model import Detector, DetectorConfig
from .metrics import gt_index_from_iou, harmony
from .train import CliParser, UserError, check_device, check_out_folder, exit_on_user_error, read_checkpoint, \
    write_atomically

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_detector(path, device="cpu"):
    """(model, checkpoint). The model is built without its backbone weights file,
    which the checkpoint's weights replace: it may be gone since training."""
    state = read_checkpoint(path)
    try:
        model = Detector(DetectorConfig(**{**state["config"], "backbone_weights": ""}))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as e:  # what a config or weights of another detector raise
        raise UserError(f"{path} does not fit this version's detector: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), state


def coco_eval(gt_dict, results):
    """COCO bbox AP figures (0 when nothing was detected)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if not results:
            return dict.fromkeys(COCO_STATS, 0.0)
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: max(float(v), 0.0) for name, v in zip(COCO_STATS, ev.stats[:6])}


@torch.no_grad()
def evaluate(model, dataset, batch_size=16, device="cpu", max_samples=20000):
    """(metrics, samples): AP figures, harmony, divergence and the object count;
    samples are up to max_samples (score, IoU) pairs of pre-NMS predictions."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    results, scores, ious, ids = [], [], [], []
    object_offset = 0
    for images, targets in loader:
        detections, raw = model.predict(images.to(device), raw=True)
        for b, (det, target) in enumerate(zip(detections, targets)):
            for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": int(target["image_id"]), "category_id": int(label) + 1,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)})
            gt = target["boxes"].to(device)
            keep = raw["scores"][b] >= model.config.score_threshold
            pred_boxes, pred_scores = raw["boxes"][b][keep], raw["scores"][b][keep]
            if gt.shape[0] == 0 or pred_boxes.shape[0] == 0:
                object_offset += gt.shape[0]
                continue
            index = gt_index_from_iou(pred_boxes, gt, iou_threshold=0.5)
            matched = index >= 0
            ious.append(box_iou_aligned(pred_boxes[matched], gt[index[matched]]).cpu())
            scores.append(pred_scores[matched].cpu())
            ids.append(index[matched].cpu() + object_offset)
            object_offset += gt.shape[0]
    metrics = coco_eval(coco_dict(dataset), results)
    if ids:
        s, q, g = torch.cat(scores), torch.cat(ious), torch.cat(ids)
        h = harmony(s, q, g)
        metrics.update(harmony=h.harmony, divergence=h.divergence, objects=h.num_objects)
    else:
        s = q = torch.zeros(0)
        metrics.update(harmony=float("nan"), divergence=float("nan"), objects=0)
    step = max(1, s.numel() // max_samples)
    return metrics, {"scores": s[::step].tolist(), "ious": q[::step].tolist()}


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
    p.add_argument("--num-images", type=int, default=300, help="synthetic validation images")
    p.add_argument("--data-seed", type=int, default=10_000, help="seed of the synthetic validation set")
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
    if args.image_size and min(args.image_size) < 1:
        raise UserError(f"--image-size must be positive, got {' '.join(map(str, args.image_size))}")
    if bool(args.coco_images) != bool(args.coco_ann):
        raise UserError("--coco-images and --coco-ann go together")
    check_out_folder(args.out)
    check_device(args.device)
    return args


def dataset_for(args, model, state, path):
    """The evaluation data at the checkpoint's image size, which must have the classes the model detects."""
    size = tuple(args.image_size or state.get("image_size") or (128, 128))
    if args.coco_images:
        dataset = CocoDetection(args.coco_images, args.coco_ann, size=size)
    else:
        dataset = ShapesDataset(args.num_images, image_size=size, seed=args.data_seed)
    if len(dataset.classes) != model.config.num_classes:
        raise UserError(f"{path} detects {model.config.num_classes} classes but the data set has "
                        f"{len(dataset.classes)}")
    return dataset


def write_json(path, value):
    write_atomically(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def evaluate_checkpoints(args):
    by_checkpoint, samples = {}, {}
    for path in args.checkpoint:
        model, state = load_detector(path, args.device)
        dataset = dataset_for(args, model, state, path)
        name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
        by_checkpoint[name], samples[name] = evaluate(model, dataset, args.batch_size, args.device)
    single = len(by_checkpoint) == 1
    results = next(iter(by_checkpoint.values())) if single else by_checkpoint
    print(json.dumps(results, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "metrics.json"), results)
        print("plot:", plot_score_vs_iou(samples, os.path.join(args.out, "score_vs_iou.png")))
        if not single:
            print("plot:", plot_ap_vs_harmony({"checkpoints": list(by_checkpoint.items())},
                                              os.path.join(args.out, "ap_vs_harmony.png")))


def main(argv=None):
    with exit_on_user_error(argv):
        evaluate_checkpoints(parse_args(argv))


if __name__ == "__main__":
    main()
