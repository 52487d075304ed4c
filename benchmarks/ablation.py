"""The ablation protocol of issue 15, from one command.

    python benchmarks/ablation.py --name fcos --families fcos --budgets 5 10 20 --seeds 0 1 2 3 4 \
        --num-images 600 --image-size 96 --width 32 --batch-size 8 --threads 1

Data: train, validation and test images of the synthetic shapes set from
disjoint seeds (mutualops.detector.data.SPLIT_SEEDS); test images are used for
the reported numbers only.

1. Budget, on validation: the baseline and all three switches are trained for
   each candidate number of epochs (its own warm-up + cosine schedule each,
   with --budget-seed) and evaluated on the validation images. The budget is
   the smallest candidate whose AP, averaged over the two, is within
   --tolerance of the best candidate's: where more epochs stop paying.
2. Test: every variant (baseline, each switch alone, all) is trained with each
   of --seeds at that budget and evaluated on the test images.
3. Each variant is compared with the baseline of the same seed: per-seed
   differences of AP (and AP50, AP75) and of harmony over the objects both
   cover (mutualops.metrics.paired_harmony), their mean, standard deviation
   and 95% t-interval over seeds.

Writes every run's figures, the budget search and the comparisons to
benchmarks/results/ablation-NAME.json; `python benchmarks/tables.py --write`
renders the README and RESULTS tables from it. Each finished run is kept
under --work (record.json), so an interrupted protocol continues where it
stopped when run again with the same flags.
"""

import argparse
import json
import math
import os
import sys
import time

import torch


from mutualops.detector.data import SPLIT_SEEDS, ShapesDataset
from mutualops.detector.evaluate import evaluate, write_json
from mutualops.metrics import Harmony, paired_harmony
from mutualops.detector.train import parse_args, train

VARIANTS = {
    "baseline": [],
    "+ mutual cls": ["--mutual-cls"],
    "+ mutual box": ["--mutual-box"],
    "+ IoU rescoring": ["--iou-rescoring"],
    "all": ["--mutual-cls", "--mutual-box", "--iou-rescoring"],
}
BUDGET_VARIANTS = ("baseline", "all")
COMPARED = ("AP", "AP50", "AP75")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class Cached(torch.utils.data.Dataset):
    """A data set drawn once: every run of the protocol reads the same images without redrawing them."""

    def __init__(self, dataset):
        self.classes = dataset.classes
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default", help="the result file is benchmarks/results/ablation-NAME.json")
    p.add_argument("--results", default="", help="write the result here instead")
    p.add_argument("--work", default="runs/ablation", help="checkpoints and per-run records")
    p.add_argument("--families", nargs="+", default=["fcos", "retinanet"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--budgets", type=int, nargs="+", default=[12, 24, 36], help="candidate epoch counts")
    p.add_argument("--budget-seed", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=0.01, help="validation AP within this of the best counts")
    p.add_argument("--num-images", type=int, default=1000, help="training images")
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if "baseline" not in args.variants:
        p.error("--variants must include baseline: every comparison is against it")
    args.results = args.results or os.path.join(RESULTS, f"ablation-{args.name}.json")
    return args


def slug(variant):
    return variant.strip("+ ").replace(" ", "-")


def run(args, data, family, variant, seed, epochs, split):
    """Trains one variant and evaluates it on `split`; the record of a finished run is reused."""
    out = os.path.join(args.work, split, family, slug(variant), f"e{epochs}-seed{seed}")
    record_path = os.path.join(out, "record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            return json.load(f)
    started = time.perf_counter()
    size = str(args.image_size)
    model, _ = train(parse_args([
        "--out", out, "--family", family, "--seed", str(seed), "--epochs", str(epochs), "--num-images",
        str(args.num_images), "--image-size", size, size, "--width", str(args.width), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads),
        # --overwrite: a run without its record was cut short, and starts over.
        "--device", "cpu", "--no-progress", "--overwrite", *VARIANTS[variant]]), dataset=data["train"])
    metrics, details = evaluate(model, data[split])
    record = {"family": family, "variant": variant, "seed": seed, "epochs": epochs, "split": split, **metrics,
              "minutes": (time.perf_counter() - started) / 60, "per_object": details["harmony"].per_object.tolist()}
    write_json(record_path, record)
    print(f"{split:<4} {family:<9} {variant:<15} seed {seed} e{epochs}: AP {metrics['AP']:.3f} "
          f"harmony {metrics['harmony']:.3f} ({record['minutes']:.1f} min)", flush=True)
    return record


def public(record):
    return {k: v for k, v in record.items() if k != "per_object"}


def choose_budget(args, data, family):
    runs = [run(args, data, family, v, args.budget_seed, e, "val") for e in args.budgets for v in BUDGET_VARIANTS]
    val_ap = {e: sum(r["AP"] for r in runs if r["epochs"] == e) / len(BUDGET_VARIANTS) for e in args.budgets}
    best = max(val_ap.values())
    chosen = min(e for e in args.budgets if val_ap[e] >= best - args.tolerance)
    return {"candidates": args.budgets, "variants": list(BUDGET_VARIANTS), "seed": args.budget_seed,
            "tolerance": args.tolerance, "val_AP": {str(e): ap for e, ap in val_ap.items()}, "chosen": chosen,
            "runs": [public(r) for r in runs]}


def t_interval(values, level=0.95):
    """Mean, standard deviation and the t-interval of the mean over independent values (seeds);
    NaN throughout when a value is NaN (a run with no harmony)."""
    import numpy as np
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if n > 1 else float("nan")
    half = stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"per_seed": values, "mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def harmony_of(record):
    per_object = torch.tensor(record["per_object"], dtype=torch.float64)
    return Harmony(record["harmony"], record["divergence"], record["objects"], per_object, torch.zeros(0),
                   record["harmony_min_size"])


def compare(baseline, variant):
    """The variant against the baseline, seed by seed (both lists in seed order)."""
    out = {key: t_interval([v[key] - b[key] for b, v in zip(baseline, variant)]) for key in COMPARED}
    paired = [paired_harmony(harmony_of(b), harmony_of(v)) for b, v in zip(baseline, variant)]
    out["harmony_paired"] = {**t_interval([p.difference for p in paired]),
                             "objects_per_seed": [p.num_objects for p in paired],
                             "bootstrap_ci95_per_seed": [[p.low, p.high] for p in paired]}
    return out


def summary(records):
    keys = (*COMPARED, "APs", "APm", "harmony", "objects")
    return {key: t_interval([r[key] for r in records]) for key in keys if all(r[key] is not None for r in records)}


def family_result(args, data, family):
    budget = choose_budget(args, data, family)
    epochs = budget["chosen"]
    print(f"{family}: budget {epochs} epochs (validation AP {budget['val_AP']})", flush=True)
    runs = {v: [] for v in args.variants}
    for seed in args.seeds:  # seed by seed, so that a protocol stopped early has whole seeds
        for variant in args.variants:
            runs[variant].append(run(args, data, family, variant, seed, epochs, "test"))
    return {"budget": budget, "epochs": epochs,
            "variants": {v: summary(rows) for v, rows in runs.items()},
            "vs_baseline": {v: compare(runs["baseline"], rows) for v, rows in runs.items() if v != "baseline"},
            "runs": [public(r) for rows in runs.values() for r in rows]}


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    size = (args.image_size, args.image_size)
    data = {"train": Cached(ShapesDataset(args.num_images, size, seed=SPLIT_SEEDS["train"])),
            "val": Cached(ShapesDataset(args.val_images, size, seed=SPLIT_SEEDS["val"])),
            "test": Cached(ShapesDataset(args.test_images, size, seed=SPLIT_SEEDS["test"]))}
    families = {family: family_result(args, data, family) for family in args.families}
    protocol = {k: v for k, v in vars(args).items() if k not in ("results", "work")}
    run_minutes = sum(r["minutes"] for f in families.values() for r in f["budget"]["runs"] + f["runs"])
    result = {"command": "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "protocol": {**protocol, "split_seeds": SPLIT_SEEDS, "torch": torch.__version__, "level": 0.95},
              "run_minutes": run_minutes, "minutes_this_invocation": (time.perf_counter() - started) / 60,
              "families": families}
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    write_json(args.results, result)
    print("wrote", args.results)
    return result


if __name__ == "__main__":
    main()
