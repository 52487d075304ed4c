"""NMS drop-ins against torchvision.ops.nms and torchvision.ops.batched_nms.

    python benchmarks/bench_nms.py [--device cuda] [--quick]

Checks that kept indices are identical first, then times both in this run.
Targets (2-core CPU): >= 1.5x torchvision.ops.nms at 5000 boxes, >= 3x
torchvision.ops.batched_nms at 20000 boxes over 80 classes.
"""

import os
import sys

import torch
import torchvision.ops as tvo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import mutualops  # noqa: E402


def detections(n, device, gen, num_classes=80):
    """Detector-like boxes: clusters of jittered copies around objects."""
    centres_xy = torch.rand(max(n // 20, 1), 2, generator=gen) * 1000
    centres_wh = torch.rand(max(n // 20, 1), 2, generator=gen) * 150 + 10
    pick = torch.randint(0, centres_xy.shape[0], (n,), generator=gen)
    xy = centres_xy[pick] + torch.randn(n, 2, generator=gen) * 8
    wh = centres_wh[pick] * (1 + torch.randn(n, 2, generator=gen) * 0.1).clamp(min=0.3)
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=gen)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    return boxes.to(device), scores.to(device), labels.to(device)


def same_keep(ours, theirs, scores):
    """The same kept boxes in the same score order. Among exactly tied scores
    torchvision's order follows torch.sort's unstable sort; ours puts the lower
    index first, so only the kept set and the score sequence must agree."""
    return torch.equal(ours.sort().values, theirs.sort().values) and torch.equal(scores[ours], scores[theirs])


def main():
    args = harness.parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 15)
    rows = []
    for n in ([1000, 5000] if not args.quick else [500]):
        boxes, scores, _ = detections(n, args.device, gen)
        ours = lambda: mutualops.nms(boxes, scores, 0.5)  # noqa: E731
        theirs = lambda: tvo.nms(boxes, scores, 0.5)  # noqa: E731
        assert same_keep(ours(), theirs(), scores), "nms differs from torchvision"
        target = ">= 1.5x" if n == 5000 else ""
        rows.append(harness.row(f"nms {n} boxes", "torchvision.ops.nms", harness.measure(theirs, args.device, repeats),
                                harness.measure(ours, args.device, repeats), target))
    for n in ([5000, 20000] if not args.quick else [2000]):
        boxes, scores, labels = detections(n, args.device, gen)
        ours = lambda: mutualops.batched_nms(boxes, scores, labels, 0.5)  # noqa: E731
        theirs = lambda: tvo.batched_nms(boxes, scores, labels, 0.5)  # noqa: E731
        assert same_keep(ours(), theirs(), scores), "batched_nms differs from torchvision"
        target = ">= 3x" if n == 20000 else ""
        rows.append(harness.row(f"batched_nms {n} boxes, 80 classes", "torchvision.ops.batched_nms",
                                harness.measure(theirs, args.device, repeats),
                                harness.measure(ours, args.device, repeats), target))
    harness.print_table(f"NMS, fp32, {args.device}, {torch.get_num_threads()} threads (median of {repeats})", rows)
    harness.save_json("bench_nms", args, rows)


if __name__ == "__main__":
    main()
