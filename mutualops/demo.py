"""The main demo (`make demo`): a baseline FCOS and a mutual FCOS (mutual class
targets, mutual box weights and IoU rescoring) trained on the synthetic shapes
dataset, evaluated with COCO AP and the harmony metric, in a few minutes on
two CPU cores. Deterministic: the same numbers on every run.

    python -m mutualops.demo [--out runs/demo] [--epochs 12] [--num-images 1000]
"""

import argparse
import json
import os

import torch

from .evaluate import evaluate, plot_ap_vs_harmony, plot_score_vs_iou
from .detector.data import ShapesDataset
from .train import parse_args as train_args
from .train import train

VARIANTS = {
    "FCOS baseline": [],
    "FCOS mutual": ["--mutual-cls", "--mutual-box", "--iou-rescoring"],
}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mutualops.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--threads", type=int, default=2, help="fixed, so that runs repeat exactly")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    val = ShapesDataset(args.val_images, seed=10_000)
    metrics, samples = {}, {}
    for name, flags in VARIANTS.items():
        out = os.path.join(args.out, name.lower().replace(" ", "-"))
        print(f"training {name} ({' '.join(flags) or 'no mutual switches'}) -> {out}")
        model, _ = train(train_args(["--out", out, "--epochs", str(args.epochs), "--num-images", str(args.num_images),
                                     "--threads", str(args.threads), "--device", "cpu", *flags]))
        metrics[name], samples[name] = evaluate(model, val)
    header = f"{'variant':<16} {'AP':>6} {'AP50':>6} {'AP75':>6} {'harmony':>8} {'objects':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, m in metrics.items():
        print(f"{name:<16} {m['AP']:>6.3f} {m['AP50']:>6.3f} {m['AP75']:>6.3f} {m['harmony']:>8.3f} {m['objects']:>8d}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("\nplots:")
    print(" ", plot_score_vs_iou(samples, os.path.join(args.out, "score_vs_iou.png")))
    print(" ", plot_ap_vs_harmony(metrics, os.path.join(args.out, "ap_vs_harmony.png")))
    print(" ", os.path.join(args.out, "metrics.json"))


if __name__ == "__main__":
    main()
