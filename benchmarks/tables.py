"""The tables of README.md, docs/*.md and benchmarks/RESULTS.md, rendered from the committed result files.

    python benchmarks/tables.py            # print every table
    python benchmarks/tables.py --write    # put them into README.md, docs/*.md and benchmarks/RESULTS.md
    python benchmarks/tables.py --check    # exit 1 if a committed table differs from its result file

A table lives between the lines `<!-- table:KEY -->` and `<!-- /table:KEY -->`,
KEY being NAME:summary or NAME:full for benchmarks/results/ablation-NAME.json,
BENCH:DEVICE for benchmarks/results/BENCH-DEVICE.json (every row, with the
machine and date), BENCH:DEVICE-sweep for its sweep over G, targets:DEVICE for
the rows of every benchmark that carry a target, yolo:DEVICE for
benchmarks/results/yolo-DEVICE.json (bench_yolo.py) and demo:DEVICE for
benchmarks/results/demo-DEVICE.json. Nothing between the markers is written by
hand.
"""

import argparse
import glob
import json
import math
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCUMENTS = (os.path.join(ROOT, "README.md"), os.path.join(HERE, "RESULTS.md"),
             *sorted(os.path.join(ROOT, "docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                     if name.endswith(".md")))


def number(x, digits=3, sign=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def interval(stat):
    low, high = stat["ci95"]
    return f"{number(stat['mean'], sign=True)} [{number(low, sign=True)}, {number(high, sign=True)}]"


def verdict(stat):
    low, high = stat["ci95"]
    if math.isnan(low):
        return "n/a"
    return "higher" if low > 0 else "lower" if high < 0 else "no detectable difference"


def per_seed(values, sign=True):
    return ", ".join(number(v, sign=sign) for v in values)


def summary_table(families):
    rows = ["| family | variant vs baseline | AP, mean difference [95% CI] | AP | harmony, paired difference [95% CI] "
            "| harmony |", "| --- | --- | --- | --- | --- | --- |"]
    for family, result in families:
        for variant, cmp in result["vs_baseline"].items():
            h = cmp["harmony_paired"]
            rows.append(f"| {family} | {variant} | {interval(cmp['AP'])} | {verdict(cmp['AP'])} | {interval(h)} "
                        f"| {verdict(h)} |")
    return "\n".join(rows)


def budget_table(budget):
    rows = ["| epochs | " + " | ".join(f"{v} validation AP" for v in budget["variants"]) + " | mean |",
            "| --- | " + " | ".join("---" for _ in budget["variants"]) + " | --- |"]
    for epochs in budget["candidates"]:
        aps = [next(r["AP"] for r in budget["runs"] if r["epochs"] == epochs and r["variant"] == v)
               for v in budget["variants"]]
        chosen = " (chosen)" if epochs == budget["chosen"] else ""
        rows.append(f"| {epochs}{chosen} | " + " | ".join(number(ap) for ap in aps)
                    + f" | {number(budget['val_AP'][str(epochs)])} |")
    return "\n".join(rows)


def variants_table(result):
    total = result["runs"][0]["objects_total"]
    rows = ["| variant | AP mean ± std | AP per seed | AP50 | AP75 | harmony mean ± std | harmony per seed "
            f"| objects in harmony (of {total}) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for variant, s in result["variants"].items():
        rows.append(f"| {variant} | {number(s['AP']['mean'])} ± {number(s['AP']['std'])} "
                    f"| {per_seed(s['AP']['per_seed'], False)} | {number(s['AP50']['mean'])} | {number(s['AP75']['mean'])} "
                    f"| {number(s['harmony']['mean'])} ± {number(s['harmony']['std'])} "
                    f"| {per_seed(s['harmony']['per_seed'], False)} | {round(s['objects']['mean'])} |")
    return "\n".join(rows)


def comparison_table(result):
    rows = ["| variant vs baseline | AP difference per seed | mean [95% CI] | AP50 mean [95% CI] "
            "| harmony paired difference per seed | mean [95% CI] | common objects per seed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for variant, cmp in result["vs_baseline"].items():
        h = cmp["harmony_paired"]
        rows.append(f"| {variant} | {per_seed(cmp['AP']['per_seed'])} | {interval(cmp['AP'])} | {interval(cmp['AP50'])} "
                    f"| {per_seed(h['per_seed'])} | {interval(h)} | {', '.join(map(str, h['objects_per_seed']))} |")
    return "\n".join(rows)


def full_tables(family, result, data):
    p = data["protocol"]
    seeds = ", ".join(map(str, p["seeds"]))
    return "\n".join([
        f"Family {family}; command `{data['command']}` ({data['run_minutes']:.0f} minutes of runs). Scale: "
        f"{p['num_images']} training images of {p['image_size']}x{p['image_size']}, width {p['width']}, "
        f"batch {p['batch_size']}, {p['threads']} thread; {p['val_images']} validation and {p['test_images']} test images "
        f"(split seeds {p['split_seeds']}).", "",
        f"Budget on validation (seed {result['budget']['seed']}; the smallest candidate within "
        f"{result['budget']['tolerance']} AP of the best):", "", budget_table(result["budget"]), "",
        f"Test, {result['epochs']} epochs, seeds {seeds}:", "", variants_table(result), "",
        "Against the baseline of the same seed (95% t-interval over seeds; harmony over the objects both cover, "
        f"at least {result['runs'][0]['harmony_min_size']} predictions each):", "", comparison_table(result)])


MIB = 2**20
BENCH_HEADER = ("| case | peer | peer ms | ours ms | speed-up | peer MiB | ours MiB | memory | target |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def bench_row(r, prefix=""):
    memory = r["ours_peak_bytes"] / r["peer_peak_bytes"] if r["peer_peak_bytes"] else math.nan
    return (f"| {prefix}{r['case']} | {r['peer']} | {r['peer_ms']:.2f} | {r['ours_ms']:.2f} | {r['speedup']:.1f}x "
            f"| {r['peer_peak_bytes'] / MIB:.1f} | {r['ours_peak_bytes'] / MIB:.1f} | "
            f"{'n/a' if math.isnan(memory) else f'{memory:.2f}x'} | {r['target']} |")


def machine_line(data, path):
    m = data["machine"]
    card = f"one {m['gpu']}, " if m.get("gpu") else ""
    return (f"Measured {m['date']} on {card}{m['platform']} ({m['cpu_count']} cores), torch {m['torch']}, "
            f"{m['torch_threads']} threads, device {m['device']}; `{os.path.relpath(path, ROOT)}`.")


def sweep_table(points):
    rows = ["| G | ours ms | ours MiB | peer ms | peer MiB |", "| --- | --- | --- | --- | --- |"]
    for p in points:
        peer = (f"{p['peer_ms']:.1f} | {p['peer_peak_bytes'] / MIB:.1f}" if p.get("peer_ms") is not None else "- | -")
        rows.append(f"| {p['G']} | {p['ours_ms']:.2f} | {p['ours_peak_bytes'] / MIB:.2f} | {peer} |")
    return "\n".join(rows)


def demo_table(data, path):
    rows = [f"`{data['command']}` on {data['machine']}, {data['date']}: {data['elapsed']} "
            f"(training {data['training']}); `{os.path.relpath(path, ROOT)}`.", "",
            "| variant | AP | AP50 | AP75 | harmony | objects in harmony |", "| --- | --- | --- | --- | --- | --- |"]
    for name, m in data["variants"].items():
        rows.append(f"| {name} | {number(m['AP'])} | {number(m['AP50'])} | {number(m['AP75'])} | {number(m['harmony'])} "
                    f"| {m['objects']} of {m['objects_total']} |")
    p = data["paired_harmony"]
    rows += ["", f"Harmony, mutual - baseline over the {p['num_objects']} objects both cover: "
             f"{number(p['difference'], sign=True)} [{number(p['low'], sign=True)}, {number(p['high'], sign=True)}] "
             "(95% bootstrap interval over objects)."]
    return "\n".join(rows)


def yolo_tables(data, path):
    """bench_yolo's two tables: training with each side, and validation of the same weights by each side."""
    m, setup, t, v = data["machine"], data["setup"], data["training"], data["validation"]
    sides = {"ultralytics": "Ultralytics' own", "mutualops": "mutualops drop-in"}
    rows = [f"`{data['command']}`, {m['date']}, {m['platform']} ({m['cpu_count']} cores), torch {m['torch']}, device "
            f"{m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; `{os.path.relpath(path, ROOT)}`. YOLOv8n from its "
            f"yaml at {setup['image_size']} px, batch {setup['batch']}, {setup['epochs']} epochs of "
            f"{setup['train_images']} generated images with {setup['objects_per_image'][0]} to "
            f"{setup['objects_per_image'][1]} objects each; per-step losses of the two sides equal (largest "
            f"difference {data['max_loss_difference']:.1e}).", "",
            "| side | training steps/s | step ms (median) | assigner ms per step | share of the step | peak memory MiB |",
            "| --- | --- | --- | --- | --- | --- |"]
    for key, name in sides.items():
        s = t[key]
        rows.append(f"| {name} | {s['steps_per_second']:.3f} | {s['step_ms_median']:.0f} | {s['assigner_ms_per_call']:.1f} "
                    f"| {100 * s['assigner_share']:.0f}% | {s['peak_memory_bytes'] / MIB:.0f} |")
    speedup = t["mutualops"]["steps_per_second"] / t["ultralytics"]["steps_per_second"]
    assigner = t["ultralytics"]["assigner_ms_per_call"] / t["mutualops"]["assigner_ms_per_call"]
    rows += [f"| speed-up | {speedup:.2f}x | | {assigner:.0f}x | | |", "",
             f"Validation of one model (trained {setup['val_epochs']} epochs with the drop-in) by each side at conf "
             f"0.001, iou 0.7, {v['mutualops']['images']} images in batches of {setup['val_batch']}, Ultralytics with its "
             "default NMS time limit:", "",
             "| side | NMS s | candidates per image (median) | images returned empty | time-limit warnings | mAP50-95 "
             "| mAP50 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, name in sides.items():
        s = v[key]
        rows.append(f"| {name} | {s['nms_seconds']:.2f} | {s['candidates_per_image_median']:.0f} | {s['images_empty']} "
                    f"| {s['time_limit_warnings']} | {s['mAP50_95']:.4f} | {s['mAP50']:.4f} |")
    return "\n".join(rows)


def benchmark_tables():
    """{key: markdown} for every committed op benchmark and demo result."""
    out, targeted = {}, {}
    for path in sorted(glob.glob(os.path.join(HERE, "results", "bench_*-*.json"))):
        bench, device = os.path.basename(path)[:-len(".json")].rsplit("-", 1)
        with open(path) as f:
            data = json.load(f)
        out[f"{bench}:{device}"] = "\n\n".join([machine_line(data, path),
                                                 "\n".join([BENCH_HEADER] + [bench_row(r) for r in data["rows"]])])
        if data.get("sweep"):
            out[f"{bench}:{device}-sweep"] = sweep_table(data["sweep"])
        targeted.setdefault(device, []).extend(bench_row(r, f"{bench}: ") for r in data["rows"] if r["target"])
    for device, rows in targeted.items():
        out[f"targets:{device}"] = "\n".join([BENCH_HEADER] + rows)
    for path in sorted(glob.glob(os.path.join(HERE, "results", "yolo-*.json"))):
        with open(path) as f:
            out[f"yolo:{os.path.basename(path)[len('yolo-'):-len('.json')]}"] = yolo_tables(json.load(f), path)
    for path in sorted(glob.glob(os.path.join(HERE, "results", "demo-*.json"))):
        with open(path) as f:
            out[f"demo:{os.path.basename(path)[len('demo-'):-len('.json')]}"] = demo_table(json.load(f), path)
    return out


def tables():
    """{key: markdown} for every committed result."""
    out = benchmark_tables()
    for path in sorted(glob.glob(os.path.join(HERE, "results", "ablation-*.json"))):
        name = os.path.basename(path)[len("ablation-"):-len(".json")]
        with open(path) as f:
            data = json.load(f)
        families = data["families"].items()
        out[f"{name}:summary"] = summary_table(families)
        out[f"{name}:full"] = "\n\n".join(full_tables(family, result, data) for family, result in families)
    return out


def fill(text, rendered):
    """text with every marked block replaced by its rendered table; unknown keys are an error."""
    def replace(match):
        key = match.group(1)
        if key not in rendered:
            raise KeyError(f"no result file renders the table {key!r}")
        return f"<!-- table:{key} -->\n{rendered[key]}\n<!-- /table:{key} -->"

    return re.sub(r"<!-- table:(\S+) -->\n.*?<!-- /table:\1 -->", replace, text, flags=re.S)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    rendered = tables()
    if not (args.write or args.check):
        for key, table in rendered.items():
            print(f"{key}\n\n{table}\n")
        return 0
    stale = []
    for path in DOCUMENTS:
        with open(path) as f:
            text = f.read()
        filled = fill(text, rendered)
        if filled != text:
            stale.append(os.path.relpath(path, ROOT))
            if args.write:
                with open(path, "w") as f:
                    f.write(filled)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (python benchmarks/tables.py --write)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
