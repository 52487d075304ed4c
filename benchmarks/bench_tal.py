"""Ultralytics YOLO's two hot paths against mutualops: the task-aligned
assigner of its detection loss, and its non_max_suppression.

    python benchmarks/bench_tal.py [--device cuda] [--quick]

Every case first checks that both sides agree (assignment: equal masks,
indices, labels and boxes, target scores to 1e-6; NMS: identical detections),
then times both in this run (median) and measures peak extra memory:
- TaskAlignedAssigner (as v8DetectionLoss builds it: topk 10, alpha 0.5,
  beta 6) against mutualops.assign_task_aligned: B=8, 640x640 so 8400 anchors,
  80 classes, G in {10, 50, 200, 500, 2000} GT boxes per image (4 to 150 px);
  the sweep is plotted to benchmarks/out/tal_sweep-<device>.png;
- ultralytics.utils.nms.non_max_suppression against
  mutualops.integrations.ultralytics.non_max_suppression on dense predictions
  (B=8, 8400 boxes, 80 classes) as prediction calls it (conf 0.25, best class)
  and as validation does (conf 0.001, every class above it; iou 0.7).
  Ultralytics runs without its time limit here; the rows also say
  how many images its default limit would have returned empty.
Targets (2-core CPU): assignment >= 20x at G=500 with peak extra memory <= 5%
of Ultralytics' and flat in G; NMS >= 5x at conf 0.001, identical detections.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import mutualops  # noqa: E402
from mutualops.integrations import ultralytics as mo_ultralytics  # noqa: E402

SIZE, STRIDES, CLASSES, IMAGES = 640, (8, 16, 32), 80, 8


def anchor_points(device):
    """Ultralytics' anchor points in pixels: cell centres of the three levels, row-major."""
    points = []
    for s in STRIDES:
        n = SIZE // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * s)
    return torch.cat(points).to(device)


def assigner_inputs(count, gen, device, images=IMAGES):
    """(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) as v8DetectionLoss passes them: GT
    rows padded to the batch's largest count (a quarter fewer boxes in odd images), predictions jittered around
    the anchors, sigmoid scores."""
    anc = anchor_points("cpu")
    n = anc.shape[0]
    xy = torch.rand(images, count, 2, generator=gen) * SIZE
    wh = torch.exp(torch.rand(images, count, 2, generator=gen) * 3.6) + 4  # 5 to 150 px, many small
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1).clamp(0, SIZE)
    mask = torch.ones(images, count, 1)
    mask[1::2, count - count // 4:] = 0
    gt = gt * mask
    labels = torch.randint(0, CLASSES, (images, count, 1), generator=gen).float() * mask
    centre = anc[None] + torch.randn(images, n, 2, generator=gen) * 6
    half = torch.exp(torch.rand(images, n, 2, generator=gen) * 3.6) + 2
    pred = torch.cat([centre - half, centre + half], -1)
    scores = torch.sigmoid(torch.randn(images, n, CLASSES, generator=gen) * 2 - 4)
    return tuple(t.to(device) for t in (scores, pred, anc, labels, gt, mask))


def check_assignment(ours, theirs):
    labels, bboxes, scores, fg, idx = theirs
    assert torch.equal(ours.fg_mask, fg.bool()), "fg_mask differs from Ultralytics"
    assert torch.equal(ours.target_gt_idx, idx.long()), "target_gt_idx differs from Ultralytics"
    assert torch.equal(ours.target_labels, labels.long()), "target_labels differ from Ultralytics"
    assert torch.equal(ours.target_bboxes, bboxes), "target_bboxes differ from Ultralytics"
    torch.testing.assert_close(ours.target_scores, scores, rtol=0, atol=1e-6)


def ultralytics_assigner():
    """(name, callable): Ultralytics' assigner as v8DetectionLoss builds it, or, where ultralytics is not
    installed (the GPU machine has no package registry), the dense pure-PyTorch reference of the same rule."""
    try:
        from ultralytics.utils.tal import TaskAlignedAssigner
    except ImportError:
        print("ultralytics is not installed: the peer is mutualops.reference.assign_task_aligned (same dense rule)")
        return "dense reference (no ultralytics)", lambda *a: mutualops.reference.assign_task_aligned(
            *a, topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0, min_side=float(STRIDES[1]))[:5]
    return "Ultralytics TaskAlignedAssigner", TaskAlignedAssigner(topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0,
                                                                  stride=list(STRIDES))


def assign_rows(args, gen, repeats):
    peer_name, assigner = ultralytics_assigner()
    counts = [10, 50, 200, 500, 2000] if not args.quick else [10, 50]
    rows, sweep = [], []
    for count in counts:
        inputs = assigner_inputs(count, gen, args.device)
        ours = lambda: mutualops.assign_task_aligned(*inputs, topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0)  # noqa: E731
        theirs = lambda: assigner(*inputs)  # noqa: E731
        check_assignment(ours(), theirs())
        peer_repeats = max(1, repeats // (1 if count <= 200 else 3))
        peer, mine = harness.measure(theirs, args.device, peer_repeats), harness.measure(ours, args.device, repeats)
        target = ">= 20x, <= 5% memory" if count == 500 else ""
        rows.append(harness.row(f"assign G={count} B={IMAGES} (8400 anchors, 80 classes)", peer_name, peer, mine,
                                target))
        sweep.append({"G": count, "peer_ms": peer["ms"], "ours_ms": mine["ms"], "peer_peak_bytes": peer["peak_bytes"],
                      "ours_peak_bytes": mine["peak_bytes"]})
    return rows, sweep


def dense_predictions(gen, device):
    """Raw YOLO output [B, 84, 8400] (xywh, 80 class probabilities) of a crowded scene: about 420 boxes per
    image above conf 0.25 and 2000 above 0.001. The probabilities are distinct, so that no exact score tie
    leaves the kept set to tie order."""
    n = anchor_points("cpu").shape[0]
    xy = anchor_points("cpu").T[None] + torch.randn(IMAGES, 2, n, generator=gen) * 4
    wh = torch.exp(torch.rand(IMAGES, 2, n, generator=gen) * 4) + 4
    count = IMAGES * CLASSES * n
    cls = ((torch.randperm(count, generator=gen).double() + 1) / count) ** 2000
    return torch.cat([xy, wh, cls.float().reshape(IMAGES, CLASSES, n)], 1).to(device)


def nms_rows(args, gen, repeats):
    try:
        from ultralytics.utils import nms as ultralytics_nms
    except ImportError:
        print("ultralytics is not installed: no NMS rows")
        return []

    theirs_fn = ultralytics_nms.non_max_suppression
    pred = dense_predictions(gen, args.device)
    rows = []
    # Prediction (best class, conf 0.25) and validation (every class above conf 0.001) as Ultralytics calls them.
    for conf, multi_label in ((0.25, False), (0.001, True)):
        kw = dict(conf_thres=conf, iou_thres=0.7, multi_label=multi_label)
        ours = lambda: mo_ultralytics.non_max_suppression(pred, **kw)  # noqa: E731
        theirs = lambda: theirs_fn(pred, max_time_img=1e9, **kw)  # noqa: E731
        for a, b in zip(ours(), theirs()):
            assert torch.equal(a, b), "detections differ from Ultralytics'"
        harness.sync(args.device)
        t0 = time.perf_counter()
        limited = theirs_fn(pred, **kw)
        harness.sync(args.device)
        limit_s = time.perf_counter() - t0
        empty = sum(int(d.shape[0] == 0) for d in limited)
        peer_repeats = max(1, repeats // (1 if conf > 0.01 else 3))
        mode = "every class" if multi_label else "best class"
        row = harness.row(f"NMS conf={conf} {mode} B={IMAGES} (8400 boxes, 80 classes)", "Ultralytics non_max_suppression",
                          harness.measure(theirs, args.device, peer_repeats), harness.measure(ours, args.device, repeats),
                          ">= 5x, identical" if conf < 0.01 else "identical")
        row["ultralytics_time_limit"] = {"seconds": limit_s, "empty_images": empty}
        rows.append(row)
        print(f"conf {conf}: with its default time limit Ultralytics returned {empty} of {IMAGES} images empty "
              f"({limit_s:.2f} s)")
    return rows


def main():
    args = harness.parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 7)
    rows, sweep = assign_rows(args, gen, repeats)
    rows += nms_rows(args, gen, repeats)
    harness.print_table(f"Ultralytics YOLO paths, fp32, {args.device}, {torch.get_num_threads()} threads (median)", rows)
    harness.plot_sweep(sweep, os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                           f"tal_sweep-{args.device}.png"),
                       f"task-aligned assignment, B={IMAGES}, 8400 anchors", "Ultralytics")
    harness.save_json("bench_tal", args, rows, {"sweep": sweep})


if __name__ == "__main__":
    main()
