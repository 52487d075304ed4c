"""Fused label assignment against torchvision's matchers, and mutual targets
against the same computation in plain PyTorch.

    python benchmarks/bench_assign.py [--device cuda] [--quick] [--no-sweep]

Every case first checks that both sides give identical results, then times
both in this run (median) and measures peak extra memory:
- FCOS assignment vs torchvision's FCOS matcher (800x1344 images, strides
  8-128: 22400 points; G = 50 and 500; batch 1 and 8);
- max-IoU assignment vs torchvision's Matcher(0.5, 0.4, low-quality) over
  box_iou (120000 anchors; G = 50 and 500);
- the fused mutual-target pass vs mutualops.reference.mutual_targets;
- a sweep over G (10 to 5000) of FCOS assignment: time grows linearly, memory
  stays flat; the plot goes to benchmarks/out/assign_sweep-<device>.png.
Targets (2-core CPU): FCOS >= 20x at G=500 batch 8 and >= 5x at G=50;
max-IoU >= 10x at G=500; peak extra memory <= 5% of torchvision's at G=500.
"""

import os

import torch


import harness
import mutualops
import mutualops.reference  # the oracle is not imported with the ops
from mutualops.ops.assign import torchvision_fcos_priors

IMAGE = (800, 1344)
STRIDES = [8, 16, 32, 64, 128]


def fcos_anchors(device, image=IMAGE):
    """torchvision FCOS anchors: one square of side `stride` per feature location."""
    anchors, per_level = [], []
    for s in STRIDES:
        h, w = -(-image[0] // s), -(-image[1] // s)
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        c = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
        anchors.append(torch.cat([c - s / 2, c + s / 2], 1))
        per_level.append(h * w)
    return torch.cat(anchors).to(device), per_level


def gt_boxes(images, count, gen, device, image=IMAGE):
    xy = torch.rand(images, count, 2, generator=gen) * torch.tensor([image[1], image[0]], dtype=torch.float32)
    wh = torch.exp(torch.rand(images, count, 2, generator=gen) * 5.5) + 4  # 5 to 250 px, many small
    return torch.cat([xy, xy + wh], -1).to(device)


def torchvision_fcos_matcher():
    from torchvision.models.detection import FCOS, fcos_resnet50_fpn

    model = fcos_resnet50_fpn(weights=None, weights_backbone=None)
    model.head.compute_loss = lambda targets, head_outputs, anchors, matched_idxs: matched_idxs

    def match(boxes, anchors, per_level):
        targets = [{"boxes": b, "labels": torch.zeros(b.shape[0], dtype=torch.long, device=b.device)} for b in boxes]
        return torch.stack(FCOS.compute_loss(model, targets, {}, [anchors] * len(boxes), per_level))

    return match


def fcos_rows(args, gen, repeats, match):
    anchors, per_level = fcos_anchors(args.device)
    priors = torchvision_fcos_priors(anchors, per_level)
    points = priors.pop("points")
    rows = []
    for count, images in ([(50, 1), (500, 1), (50, 8), (500, 8)] if not args.quick else [(50, 1), (200, 2)]):
        boxes = gt_boxes(images, count, gen, args.device)
        ours = lambda: mutualops.assign_fcos(points, boxes, **priors)  # noqa: E731
        theirs = lambda: match(boxes, anchors, per_level)  # noqa: E731
        assert torch.equal(ours(), theirs()), "FCOS assignment differs from torchvision"
        target = {(500, 8): ">= 20x, <= 5% memory", (50, 8): ">= 5x", (50, 1): ">= 5x"}.get((count, images), "")
        peer_r = harness.measure(theirs, args.device, max(3, repeats // 2))
        rows.append(harness.row(f"FCOS assign G={count} B={images} ({points.shape[0]} points)",
                                "torchvision FCOS matcher", peer_r, harness.measure(ours, args.device, repeats), target))
    return rows


def max_iou_rows(args, gen, repeats):
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    n = 120000 if not args.quick else 20000
    centres = torch.rand(n, 2, generator=gen) * torch.tensor([IMAGE[1], IMAGE[0]], dtype=torch.float32)
    side = torch.exp(torch.rand(n, 1, generator=gen) * 3.5 + 2.7)  # 16 to 500 px
    ratio = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,), generator=gen)][:, None].sqrt()
    wh = torch.cat([side * ratio, side / ratio], 1)
    anchors = torch.cat([centres - wh / 2, centres + wh / 2], 1).to(args.device)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    rows = []
    for count in ([50, 500] if not args.quick else [50]):
        boxes = gt_boxes(1, count, gen, args.device)
        ours = lambda: mutualops.assign_max_iou(anchors, boxes)[0]  # noqa: E731
        theirs = lambda: matcher(box_iou(boxes[0], anchors))[None]  # noqa: E731
        assert torch.equal(ours(), theirs()), "max-IoU assignment differs from torchvision"
        target = ">= 10x, <= 5% memory" if count == 500 else ""
        rows.append(harness.row(f"max-IoU assign G={count} ({n} anchors)", "torchvision Matcher(box_iou)",
                                harness.measure(theirs, args.device, max(3, repeats // 2)),
                                harness.measure(ours, args.device, repeats), target))
    return rows


def mutual_rows(args, gen, repeats):
    anchors, per_level = fcos_anchors(args.device)
    priors = torchvision_fcos_priors(anchors, per_level)
    points = priors.pop("points")
    images, classes, count = (8, 80, 100) if not args.quick else (2, 20, 50)
    boxes = gt_boxes(images, count, gen, args.device)
    labels = torch.randint(0, classes, (images, count), generator=gen).to(args.device)
    matched = mutualops.assign_fcos(points, boxes, **priors)
    pred = (torch.rand(images, points.shape[0], 4, generator=gen) * 8).to(args.device)
    logits = torch.randn(images, points.shape[0], classes, generator=gen).to(args.device)
    scale = priors["strides"]
    counts = torch.full((images,), count, device=args.device)
    ours = lambda: mutualops.mutual_targets(matched, boxes, labels, pred, logits, points, num_gt=counts, scale=scale)  # noqa: E731
    theirs = lambda: mutualops.reference.mutual_targets(matched, boxes, labels, pred, logits, points, scale)  # noqa: E731
    for a, b in zip(ours()[:4], theirs()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    return [harness.row(f"mutual targets B={images} P={points.shape[0]} C={classes}", "plain PyTorch (reference)",
                        harness.measure(theirs, args.device, repeats), harness.measure(ours, args.device, repeats))]


def sweep(args, gen, match):
    anchors, per_level = fcos_anchors(args.device)
    priors = torchvision_fcos_priors(anchors, per_level)
    points = priors.pop("points")
    counts = [10, 50, 100, 500, 1000, 2000, 5000] if not args.quick else [10, 100, 500]
    points_out = []
    for count in counts:
        boxes = gt_boxes(1, count, gen, args.device)
        ours = harness.measure(lambda: mutualops.assign_fcos(points, boxes, **priors), args.device, 3)
        entry = {"G": count, "ours_ms": ours["ms"], "ours_peak_bytes": ours["peak_bytes"]}
        if count <= 2000:  # torchvision's P x G x 4 temporaries grow past a GiB beyond this
            peer = harness.measure(lambda: match(boxes, anchors, per_level), args.device, 1)
            entry.update(peer_ms=peer["ms"], peer_peak_bytes=peer["peak_bytes"])
        points_out.append(entry)
    print("\nFCOS assignment sweep over G (batch 1):")
    print("G     | ours ms | ours MiB | torchvision ms | torchvision MiB")
    for e in points_out:
        peer = f"{e['peer_ms']:.1f} | {harness.mb(e['peer_peak_bytes']):.1f}" if "peer_ms" in e else "- | -"
        print(f"{e['G']:<5} | {e['ours_ms']:.2f} | {harness.mb(e['ours_peak_bytes']):.2f} | {peer}")
    harness.plot_sweep(points_out, os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                f"assign_sweep-{args.device}.png"),
                       "FCOS assignment, 22400 points", "torchvision")
    return points_out


def main():
    args = harness.parse_args(__doc__, extra=lambda p: p.add_argument("--no-sweep", action="store_true"))
    gen = torch.Generator().manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 7)
    match = torchvision_fcos_matcher()
    rows = fcos_rows(args, gen, repeats, match) + max_iou_rows(args, gen, repeats) + mutual_rows(args, gen, repeats)
    harness.print_table(f"Label assignment, fp32, {args.device}, {torch.get_num_threads()} threads (median)", rows)
    print("\nmemory column: ours over torchvision's peak (target at G=500: <= 0.05x)")
    sweep_points = [] if args.no_sweep else sweep(args, gen, match)
    harness.save_json("bench_assign", args, rows, {"sweep": sweep_points})


if __name__ == "__main__":
    main()
