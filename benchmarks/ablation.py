"""The ablation of issue 6: for FCOS and RetinaNet, the baseline, each mutual
switch alone and all of them, over several seeds; mean and standard deviation
of AP and harmony.

    python benchmarks/ablation.py --out runs/ablation --epochs 36 --num-images 4000 --seeds 0 1 2

Runs train and evaluate in this process, one variant after the other, and
writes runs/.../ablation.json and ablation.md (the table for RESULTS.md). It is
long: run it in the background (nohup ... &) and note how long it took.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mutualops.detector.data import ShapesDataset  # noqa: E402
from mutualops.evaluate import evaluate, load_detector, plot_ap_vs_harmony  # noqa: E402
from mutualops.train import parse_args, train  # noqa: E402

VARIANTS = {
    "baseline": [],
    "+ mutual cls": ["--mutual-cls"],
    "+ mutual box": ["--mutual-box"],
    "+ IoU rescoring": ["--iou-rescoring"],
    "all": ["--mutual-cls", "--mutual-box", "--iou-rescoring"],
}


def summarise(values):
    values = [v for v in values if v == v]  # NaN-skipping
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_curves(runs, args):
    """(family, variant) -> [(epoch, {AP, harmony} averaged over seeds)] along the checkpoints."""
    curves = {}
    for family in args.families:
        for name in args.variants:
            rows = [r["curve"] for r in runs if r["family"] == family and r["variant"] == name]
            curves[(family, name)] = [
                (points[0]["epoch"], {"AP": summarise([p["AP"] for p in points])[0],
                                      "harmony": summarise([p["harmony"] for p in points])[0]})
                for points in zip(*rows)]
    return curves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--families", nargs="+", default=["fcos", "retinanet"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=36)
    p.add_argument("--num-images", type=int, default=4000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--eval-every", type=int, default=0,
                   help="also evaluate the checkpoint of every N epochs: AP and harmony curves (0: the end only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    val = ShapesDataset(args.val_images, seed=10_000)
    started = time.perf_counter()
    runs = []
    for family in args.families:
        for name in args.variants:
            for seed in args.seeds:
                out = os.path.join(args.out, family, name.strip("+ ").replace(" ", "-"), f"seed{seed}")
                model, _ = train(parse_args([
                    "--out", out, "--family", family, "--seed", str(seed), "--epochs", str(args.epochs),
                    "--num-images", str(args.num_images), "--width", str(args.width), "--threads", str(args.threads),
                    "--device", "cpu", "--no-progress", "--checkpoint-every", str(args.eval_every),
                    *VARIANTS[name]]))
                metrics, _ = evaluate(model, val)
                curve = []
                for epoch in range(args.eval_every, args.epochs, args.eval_every) if args.eval_every else []:
                    earlier, _ = evaluate(load_detector(os.path.join(out, f"epoch{epoch}.pt"))[0], val)
                    curve.append({"epoch": epoch, "AP": earlier["AP"], "harmony": earlier["harmony"]})
                curve.append({"epoch": args.epochs, "AP": metrics["AP"], "harmony": metrics["harmony"]})
                runs.append({"family": family, "variant": name, "seed": seed, **metrics, "curve": curve})
                print(f"{family:<10} {name:<16} seed {seed}: AP {metrics['AP']:.3f} harmony {metrics['harmony']:.3f}",
                      flush=True)
    minutes = (time.perf_counter() - started) / 60
    lines = ["| family | variant | AP (mean ± std) | AP50 | harmony (mean ± std) | objects |",
             "| --- | --- | --- | --- | --- | --- |"]
    for family in args.families:
        for name in args.variants:
            rows = [r for r in runs if r["family"] == family and r["variant"] == name]
            ap, ap_sd = summarise([r["AP"] for r in rows])
            ap50, _ = summarise([r["AP50"] for r in rows])
            h, h_sd = summarise([r["harmony"] for r in rows])
            objects = round(statistics.fmean(r["objects"] for r in rows))
            lines.append(f"| {family} | {name} | {ap:.3f} ± {ap_sd:.3f} | {ap50:.3f} | {h:.3f} ± {h_sd:.3f} | {objects} |")
    table = "\n".join(lines)
    curves = mean_curves(runs, args)
    if args.eval_every:
        epochs = [e for e, _ in next(iter(curves.values()))]
        lines = ["", "", "AP (mean over seeds) at each checkpoint, harmony in brackets:", "",
                 "| family | variant | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
                 "| --- | --- | " + " | ".join("---" for _ in epochs) + " |"]
        for key, points in curves.items():
            lines.append(f"| {' | '.join(key)} | " + " | ".join(f"{m['AP']:.3f} ({m['harmony']:.3f})" for _, m in points) + " |")
        table += "\n".join(lines)
    print("\n" + table + f"\n\n{len(runs)} runs in {minutes:.1f} minutes")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump({"args": vars(args), "minutes": minutes, "runs": runs}, f, indent=2)
    plot = plot_ap_vs_harmony({" ".join(key): [(f"e{e}", m) for e, m in points] for key, points in curves.items()},
                              os.path.join(args.out, "ap_vs_harmony.png"))
    print("plot:", plot)
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(f"Command: python benchmarks/ablation.py {' '.join(argv or sys.argv[1:])}\n\n{table}\n\n"
                f"{len(runs)} runs, {minutes:.1f} minutes.\n")


if __name__ == "__main__":
    main()
