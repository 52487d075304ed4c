"""Oriented boxes: mutualops' rotated ops against their peers on aerial-like scenes.

    python benchmarks/bench_rotated.py [--device cuda] [--quick]

Scenes (drawn here, nothing downloaded): 1024x1024 images, as Ultralytics trains DOTA. An object's centre is
uniform over the image, the square root of its area log-uniform in [8, 120] px, its aspect ratio log-uniform
in [1/4, 4] (vehicles, ships and containers are long) and its angle uniform in [-pi/2, pi/2). Detections, as
a detector returns them before NMS, are 1 to 8 copies of each object with centre, sides and angle jittered
(3% of the side, 0.05 rad) and a uniform score.

Every case first checks that both sides agree, then times both in this run (median) and measures peak extra
memory:
- exact IoU, pairwise, 1000 x 1000 boxes, against shapely 2's vectorised intersection (polygons built from the
  same corners; shapely's time includes building them; its GEOS allocations are not in its peak memory):
  equal within 1e-5;
- probiou, pairwise, 5000 x 5000, against Ultralytics' batch_probiou: equal within 1e-5;
- matrix NMS over probiou (iou 0.7, Ultralytics' OBB validation default) at 5000 and 15000 detections against
  Ultralytics' TorchNMS.fast_nms with batch_probiou, which builds the N x N matrix: identical keeps;
- greedy NMS over the exact IoU (nms_rotated, iou 0.5) at 2000 detections against the pure-PyTorch reference
  (detectron2 and mmcv are not installed here): identical keeps;
- rotated task-aligned assignment as YOLO-OBB's loss calls it (topk 10, alpha 0.5, beta 6, strides 8/16/32:
  21504 anchors, 15 classes as DOTA) for B=4 images of G=100 and G=500 objects (odd images a quarter fewer,
  rows padded), predictions jittered around the anchors (centre 6 px, sides 4 to 150 px, any angle) with
  sigmoid scores, against Ultralytics' RotatedTaskAlignedAssigner: the same positives, GTs, labels and boxes,
  target scores within 1e-6.
Targets (2-core CPU): exact IoU >= 20x shapely; matrix NMS at 15000 >= 50x Ultralytics with <= 1% of its
memory; assignment at G=500 >= 20x with <= 5% of its memory.
"""

import math

import numpy as np
import torch


import harness
import mutualops
from mutualops import reference

SIZE = 1024.0


def objects(n, gen):
    centre = torch.rand(n, 2, generator=gen, dtype=torch.float64) * SIZE
    side = torch.exp(torch.rand(n, generator=gen, dtype=torch.float64) * math.log(120 / 8)) * 8
    ratio = torch.exp((torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.log(4))
    angle = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * math.pi
    return torch.cat((centre, (side * ratio.sqrt())[:, None], (side / ratio.sqrt())[:, None], angle), 1)


def detections(n, gen, device):
    """n detections: each object seen 1 to 8 times, jittered; scores uniform."""
    base = objects(max(n // 4, 1), gen)
    pick = torch.randint(0, len(base), (n,), generator=gen)
    boxes = base[pick]
    side = boxes[:, 2:4].mean(1, keepdim=True)
    jitter = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    boxes = boxes + torch.cat((0.03 * side * jitter[:, :4], 0.05 * jitter[:, 4:]), 1)
    boxes[:, 2:4] = boxes[:, 2:4].abs()
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    return boxes.float().to(device), scores.float().to(device)


def shapely_iou(boxes1, boxes2):
    import shapely

    p1 = shapely.polygons(reference.rotated_corners(boxes1.cpu().double()).numpy())[:, None]
    p2 = shapely.polygons(reference.rotated_corners(boxes2.cpu().double()).numpy())[None, :]
    inter = shapely.area(shapely.intersection(p1, p2))
    union = shapely.area(p1) + shapely.area(p2) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def exact_iou_row(args, gen, repeats):
    n = 300 if args.quick else 1000
    a, b = objects(n, gen).float().to(args.device), objects(n, gen).float().to(args.device)
    ours = lambda: mutualops.box_iou_rotated(a, b)  # noqa: E731
    theirs = lambda: shapely_iou(a, b)  # noqa: E731
    difference = np.abs(ours().cpu().double().numpy() - theirs()).max()
    assert difference <= 1e-5, difference
    peer, mine = harness.measure(theirs, "cpu", max(1, repeats // 3)), harness.measure(ours, args.device, repeats)
    return harness.row(f"exact IoU {n} x {n} (pairwise)", "shapely 2 (vectorised)", peer, mine, ">= 20x")


def probiou_row(args, gen, repeats):
    from ultralytics.utils.metrics import batch_probiou

    n = 1000 if args.quick else 5000
    a, b = objects(n, gen).float().to(args.device), objects(n, gen).float().to(args.device)
    ours = lambda: mutualops.box_iou_rotated(a, b, "probiou")  # noqa: E731
    theirs = lambda: batch_probiou(a, b)  # noqa: E731
    torch.testing.assert_close(ours(), theirs(), atol=1e-5, rtol=0)
    peer, mine = harness.measure(theirs, args.device, repeats), harness.measure(ours, args.device, repeats)
    return harness.row(f"probiou {n} x {n} (pairwise)", "Ultralytics batch_probiou", peer, mine)


def fast_nms_rows(args, gen, repeats):
    from ultralytics.utils.metrics import batch_probiou
    from ultralytics.utils.nms import TorchNMS

    rows = []
    for n in ([1000] if args.quick else [5000, 15000]):
        boxes, scores = detections(n, gen, args.device)
        ours = lambda: mutualops.fast_nms_rotated(boxes, scores, 0.7)  # noqa: E731
        theirs = lambda: TorchNMS.fast_nms(boxes, scores, 0.7, iou_func=batch_probiou)  # noqa: E731
        kept = ours()
        assert torch.equal(kept, theirs()), "matrix NMS keeps differ"
        peer = harness.measure(theirs, args.device, 1 if n > 5000 else max(1, repeats // 3))
        mine = harness.measure(ours, args.device, repeats)
        rows.append(harness.row(f"matrix NMS over probiou, {n} detections ({len(kept)} kept)",
                                "Ultralytics TorchNMS.fast_nms + batch_probiou", peer, mine,
                                ">= 50x, <= 1% memory" if n == 15000 else ""))
    return rows


def greedy_nms_row(args, gen, repeats):
    n = 500 if args.quick else 2000
    boxes, scores = detections(n, gen, args.device)
    ours = lambda: mutualops.nms_rotated(boxes, scores, 0.5)  # noqa: E731
    theirs = lambda: reference.nms_rotated(boxes, scores, 0.5)  # noqa: E731
    kept = ours()
    assert torch.equal(kept, theirs()), "greedy NMS keeps differ"
    peer, mine = harness.measure(theirs, args.device, 1), harness.measure(ours, args.device, repeats)
    return harness.row(f"greedy NMS over exact IoU, {n} detections ({len(kept)} kept)", "pure-PyTorch reference",
                       peer, mine)


STRIDES = (8, 16, 32)
CLASSES = 15
IMAGES = 4


def assigner_inputs(count, gen, device):
    """(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) as v8OBBLoss passes them."""
    anc = torch.cat([torch.stack(torch.meshgrid(torch.arange(SIZE / s) + 0.5, torch.arange(SIZE / s) + 0.5,
                                                indexing="xy"), -1).reshape(-1, 2) * s for s in STRIDES])
    n = anc.shape[0]
    counts = [count if i % 2 == 0 else count - count // 4 for i in range(IMAGES)]
    gt = torch.stack([objects(count, gen).float() for _ in range(IMAGES)])
    mask = (torch.arange(count)[None, :] < torch.tensor(counts)[:, None]).float()[..., None]
    gt = gt * mask
    labels = torch.randint(0, CLASSES, (IMAGES, count, 1), generator=gen).float() * mask
    centre = anc[None] + torch.randn(IMAGES, n, 2, generator=gen) * 6
    sides = torch.exp(torch.rand(IMAGES, n, 2, generator=gen) * math.log(150 / 4)) * 4
    angle = (torch.rand(IMAGES, n, 1, generator=gen) - 0.5) * math.pi
    pred = torch.cat([centre, sides, angle], -1)
    scores = torch.sigmoid(torch.randn(IMAGES, n, CLASSES, generator=gen) * 2 - 4)
    return tuple(t.to(device) for t in (scores, pred, anc, labels, gt, mask))


def check_assignment(ours, theirs):
    labels, bboxes, scores, fg, idx = theirs
    for name, mine, peer in (("fg_mask", ours.fg_mask, fg.bool()), ("target_gt_idx", ours.target_gt_idx, idx.long()),
                             ("target_labels", ours.target_labels, labels.long()),
                             ("target_bboxes", ours.target_bboxes, bboxes)):
        assert torch.equal(mine, peer), f"{name} differs from Ultralytics"
    torch.testing.assert_close(ours.target_scores, scores.to(ours.target_scores.dtype), rtol=0, atol=1e-6)


def assign_rows(args, gen, repeats):
    try:
        from ultralytics.utils.tal import RotatedTaskAlignedAssigner
    except ImportError:
        print("ultralytics is not installed: the peer is mutualops.reference.assign_task_aligned_rotated")
        peer_name = "dense reference (no ultralytics)"
        assigner = lambda *a: reference.assign_task_aligned_rotated(  # noqa: E731
            *a, topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0, min_side=float(STRIDES[1]))[:5]
    else:
        peer_name = "Ultralytics RotatedTaskAlignedAssigner"
        assigner = RotatedTaskAlignedAssigner(topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0, stride=list(STRIDES))
    rows = []
    for count in ([100] if args.quick else [100, 500]):
        inputs = assigner_inputs(count, gen, args.device)
        ours = lambda: mutualops.assign_task_aligned_rotated(  # noqa: E731
            *inputs, topk=10, num_classes=CLASSES, alpha=0.5, beta=6.0, stride=list(STRIDES))
        theirs = lambda: assigner(*inputs)  # noqa: E731
        check_assignment(ours(), theirs())
        peer = harness.measure(theirs, args.device, max(1, repeats // 3))
        mine = harness.measure(ours, args.device, repeats)
        rows.append(harness.row(f"rotated assign G={count} B={IMAGES} (21504 anchors, {CLASSES} classes)",
                                peer_name, peer, mine, ">= 20x, <= 5% memory" if count == 500 else ""))
    return rows


def main():
    args = harness.parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 7)
    rows = [exact_iou_row(args, gen, repeats), probiou_row(args, gen, repeats)]
    rows += fast_nms_rows(args, gen, repeats)
    rows.append(greedy_nms_row(args, gen, repeats))
    rows += assign_rows(args, gen, repeats)
    harness.print_table(f"Oriented boxes, fp32, {args.device}, {torch.get_num_threads()} threads (median)", rows)
    harness.save_json("bench_rotated", args, rows)


if __name__ == "__main__":
    main()
