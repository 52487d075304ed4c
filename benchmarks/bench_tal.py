"""Ultralytics YOLO's two hot paths against mutualops: the task-aligned
assigner of its detection loss, and its non_max_suppression.

    python benchmarks/bench_tal.py [--device cuda] [--quick]

Every case first checks that both sides agree (assignment: equal masks,
indices, labels and boxes, target scores to 1e-6; NMS: identical detections),
then times both in this run (median) and measures peak extra memory:
- TaskAlignedAssigner (as v8DetectionLoss builds it: topk 10, alpha 0.5,
  beta 6) against mutualops.assign_task_aligned: B=8, 640x640 so 8400 anchors,
  80 classes, G in {10, 50, 200, 500, 2000} GT boxes per image (a quarter
  fewer in odd images, padded). GT sizes are COCO-like: the square root of the
  area log-uniform in [8, 200] px and the aspect ratio w/h log-uniform in
  [1/3, 3] (COCO's small/medium/large split, at 32 and 96 px, is 41/34/24%;
  this draws 43/34/23%). The small-box case keeps the earlier draw: each side
  exp(U * 3.6) + 4, so 5 to 41 px. The COCO-like sweep is plotted to
  benchmarks/out/tal_sweep-<device>.png;
- an xView-scale batch: B=16 at 640 px, 500 to 5000 objects per image (evenly
  spaced, shuffled), sides of small aerial objects (square root of the area
  log-uniform in [6, 60] px). Where Ultralytics' dense planes would not fit in
  half of this machine's available memory, it runs one image at a time, as its
  own out-of-memory retry does on CUDA, and the row says so;
- ultralytics.utils.nms.non_max_suppression against
  mutualops.integrations.ultralytics.non_max_suppression on dense predictions
  (B=8, 8400 boxes, 80 classes) as prediction calls it (conf 0.25, best class)
  and as validation does (conf 0.001, every class above it; iou 0.7).
  Ultralytics runs without its time limit here; the rows also say
  how many images its default limit would have returned empty.
Targets (2-core CPU): assignment >= 30x at G=500 (COCO-like) with peak extra
memory <= 5% of Ultralytics' and flat in G; NMS >= 5x at conf 0.001,
identical detections.
"""

import os
import time

import torch


import harness
import mutualops
import mutualops.reference  # the oracle is not imported with the ops
from mutualops.integrations import ultralytics as mo_ultralytics

SIZE, STRIDES, CLASSES, IMAGES = 640, (8, 16, 32), 80, 8


def anchor_points(device):
    """Ultralytics' anchor points in pixels: cell centres of the three levels, row-major."""
    points = []
    for s in STRIDES:
        n = SIZE // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * s)
    return torch.cat(points).to(device)


def coco_like_sides(shape, gen, low=8.0, high=200.0):
    """[*shape, 2] box sides (w, h): the square root of the area log-uniform in [low, high], the aspect ratio
    log-uniform in [1/3, 3]."""
    side = low * (high / low) ** torch.rand(*shape, 1, generator=gen)
    ratio = 3.0 ** (torch.rand(*shape, 1, generator=gen) * 2 - 1)
    return torch.cat([side * ratio.sqrt(), side / ratio.sqrt()], -1)


def small_sides(shape, gen):
    """[*shape, 2] box sides exp(U * 3.6) + 4: 5 to 41 px, many small."""
    return torch.exp(torch.rand(*shape, 2, generator=gen) * 3.6) + 4


def assigner_inputs(counts, gen, device, sides=coco_like_sides):
    """(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) as v8DetectionLoss passes them: counts[i]
    GT boxes in image i, rows padded to the largest count, predictions jittered around the anchors, sigmoid
    scores."""
    anc = anchor_points("cpu")
    n, images, count = anc.shape[0], len(counts), max(counts)
    xy = torch.rand(images, count, 2, generator=gen) * SIZE
    wh = sides((images, count), gen)
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1).clamp(0, SIZE)
    mask = (torch.arange(count)[None, :] < torch.tensor(counts)[:, None]).float()[..., None]
    gt = gt * mask
    labels = torch.randint(0, CLASSES, (images, count, 1), generator=gen).float() * mask
    centre = anc[None] + torch.randn(images, n, 2, generator=gen) * 6
    half = torch.exp(torch.rand(images, n, 2, generator=gen) * 3.6) + 2
    pred = torch.cat([centre - half, centre + half], -1)
    scores = torch.sigmoid(torch.randn(images, n, CLASSES, generator=gen) * 2 - 4)
    return tuple(t.to(device) for t in (scores, pred, anc, labels, gt, mask))


def batch_counts(count, images=IMAGES):
    """G boxes in even images, a quarter fewer in odd ones."""
    return [count if i % 2 == 0 else count - count // 4 for i in range(images)]


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
    rows, sweep = [], []
    cases = [("COCO-like", coco_like_sides, [10, 50, 200, 500, 2000] if not args.quick else [10, 50]),
             ("small boxes", small_sides, [50, 500] if not args.quick else [50])]
    for sizes, sides, counts in cases:
        for count in counts:
            inputs = assigner_inputs(batch_counts(count), gen, args.device, sides)
            ours = lambda: assign(*inputs)  # noqa: E731
            theirs = lambda: assigner(*inputs)  # noqa: E731
            check_assignment(ours(), theirs())
            peer_repeats = max(1, repeats // (1 if count <= 200 else 3))
            peer, mine = harness.measure(theirs, args.device, peer_repeats), harness.measure(ours, args.device, repeats)
            target = ">= 30x, <= 5% memory" if count == 500 and sides is coco_like_sides else ""
            rows.append(harness.row(f"assign G={count} B={IMAGES} (8400 anchors, 80 classes, {sizes})", peer_name, peer,
                                    mine, target))
            if sides is coco_like_sides:
                sweep.append({"G": count, "peer_ms": peer["ms"], "ours_ms": mine["ms"],
                              "peer_peak_bytes": peer["peak_bytes"], "ours_peak_bytes": mine["peak_bytes"]})
    if not args.quick:
        rows.append(xview_row(args, gen, repeats, peer_name, assigner, rows))
    return rows, sweep


def assign(*inputs):
    return mutualops.assign_task_aligned(*inputs, topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0)


def available_bytes():
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def xview_row(args, gen, repeats, peer_name, assigner, rows):
    """B=16 aerial images with 500 to 5000 small objects each. Ultralytics' peak memory grows with
    B * max(G) * A; from its bytes per plane element in the G=500 row, it runs the batch whole where that fits
    in half the available memory (or GPU memory), else one image at a time with its GT rows trimmed, as its own
    out-of-memory retry does."""
    images = 16
    counts = torch.linspace(500, 5000, images).round().long()[torch.randperm(images, generator=gen)].tolist()
    inputs = assigner_inputs(counts, gen, args.device, lambda shape, g: coco_like_sides(shape, g, 6.0, 60.0))
    n = inputs[0].shape[1]
    reference_row = next(r for r in rows if r["case"].startswith(f"assign G=500 B={IMAGES}"))
    per_element = reference_row["peer_peak_bytes"] / (IMAGES * 500 * n)
    needed = per_element * images * max(counts) * n
    room = (torch.cuda.mem_get_info()[0] if args.device == "cuda" else available_bytes()) or 0
    whole = needed < room / 2

    def theirs():
        if whole:
            return assigner(*inputs)
        parts = [assigner(*(t[i:i + 1] if t.dim() == 3 else t for t in
                            (inputs[0], inputs[1], inputs[2], inputs[3][:, :counts[i]], inputs[4][:, :counts[i]],
                             inputs[5][:, :counts[i]]))) for i in range(images)]
        return parts

    ours = lambda: assign(*inputs)  # noqa: E731
    mine = ours()
    if whole:
        check_assignment(mine, theirs())
    else:
        for i, part in enumerate(theirs()):
            labels, bboxes, scores, fg, idx = part
            assert torch.equal(mine.fg_mask[i], fg[0].bool()) and torch.equal(mine.target_gt_idx[i], idx[0].long())
            assert torch.equal(mine.target_bboxes[i], bboxes[0])
            torch.testing.assert_close(mine.target_scores[i], scores[0], rtol=0, atol=1e-6)
    peer, ours_result = harness.measure(theirs, args.device, 1), harness.measure(ours, args.device, repeats)
    how = "whole batch" if whole else "one image at a time (its OOM retry; the whole batch needs " \
        f"{needed / 2**30:.1f} GiB)"
    print(f"xView-scale: Ultralytics ran {how}")
    row = harness.row(f"assign xView-scale B={images}, 500-5000 objects per image (8400 anchors, 80 classes)",
                      f"{peer_name}, {how}", peer, ours_result)
    row["objects"] = sum(counts)
    return row


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
