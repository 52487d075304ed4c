"""The main demo (`make demo`): a baseline FCOS and a mutual FCOS (mutual class
targets, mutual box weights and IoU rescoring) trained on the synthetic shapes
dataset and evaluated on its test split with COCO AP, the harmony metric and
the paired harmony difference, in under 10 minutes on two CPU cores.

Repeatable: the same numbers on every run on one machine with the same torch
build and thread count (--threads, fixed at 2). Another CPU, BLAS or thread
count rounds differently and training drifts from there: expect AP to move by
about 0.01 between machines of the same kind.

    python -m mutualops.demo [--out runs/demo] [--epochs 7] [--num-images 1000] [--test-images 300]
"""

import argparse
import json
import os
import platform
import time

import torch

from ..metrics import paired_harmony
from .cli import CliParser, exit_on_user_error
from .data import SPLIT_SEEDS, ShapesDataset
from .evaluate import evaluate, plot_ap_vs_harmony, plot_score_vs_iou
from .train import parse_args as train_args
from .train import train

VARIANTS = {
    "FCOS baseline": [],
    "FCOS mutual": ["--mutual-cls", "--mutual-box", "--iou-rescoring"],
}


def parse_args(argv=None):
    p = CliParser(prog="python -m mutualops.demo", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    # 7 epochs of 1000 images per variant: 14000 image-steps, 3 minutes at the 78 images per second of an idle
    # 2-core machine and about 7 at the 34 once measured on a loaded one: within the README's 10 minutes either way.
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=300)
    p.add_argument("--threads", type=int, default=2, help="fixed, so that runs repeat exactly")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    args = p.parse_args(argv)
    for name in ("epochs", "num_images", "test_images", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def minutes(seconds):
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def main(argv=None):
    with exit_on_user_error(argv):
        run(parse_args(argv))


def run(args):
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    test = ShapesDataset(args.test_images, seed=SPLIT_SEEDS["test"])
    metrics, details, train_seconds = {}, {}, 0.0
    for name, flags in VARIANTS.items():
        out = os.path.join(args.out, name.lower().replace(" ", "-"))
        print(f"training {name} ({' '.join(flags) or 'no mutual switches'}) -> {out}")
        began = time.perf_counter()
        # Each demo trains afresh: its own earlier runs in --out are replaced.
        model, _ = train(train_args(["--out", out, "--epochs", str(args.epochs), "--num-images", str(args.num_images),
                                     "--threads", str(args.threads), "--device", "cpu", "--overwrite", *flags]))
        train_seconds += time.perf_counter() - began
        metrics[name], details[name] = evaluate(model, test)
    print_table(metrics)
    baseline, mutual = (details[name]["harmony"] for name in VARIANTS)
    paired = paired_harmony(baseline, mutual)
    print(f"\nharmony, mutual - baseline over the {paired.num_objects} test objects both cover: "
          f"{paired.difference:+.3f} [{paired.low:+.3f}, {paired.high:+.3f}] (95% bootstrap interval)")
    os.makedirs(args.out, exist_ok=True)
    print("\nplots:")
    print(" ", plot_score_vs_iou(details, os.path.join(args.out, "score_vs_iou.png")))
    print(" ", plot_ap_vs_harmony(metrics, os.path.join(args.out, "ap_vs_harmony.png")))
    total = time.perf_counter() - start
    # What benchmarks/tables.py renders into the README (copy it to benchmarks/results/demo-cpu.json).
    record = {"command": "make demo", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.platform()} ({os.cpu_count()} cores), torch {torch.__version__}, "
                         f"{args.threads} threads",
              "elapsed": minutes(total), "training": minutes(train_seconds), "variants": metrics,
              "paired_harmony": paired._asdict(), "args": vars(args)}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(" ", os.path.join(args.out, "metrics.json"))
    print(f"\ndemo finished in {minutes(total)} (training {minutes(train_seconds)}, "
          f"evaluation and plots {minutes(total - train_seconds)})")


def print_table(metrics):
    header = f"{'variant':<16} {'AP':>6} {'AP50':>6} {'AP75':>6} {'harmony':>8} {'objects':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, m in metrics.items():
        print(f"{name:<16} {m['AP']:>6.3f} {m['AP50']:>6.3f} {m['AP75']:>6.3f} {m['harmony']:>8.3f} {m['objects']:>8d}")

