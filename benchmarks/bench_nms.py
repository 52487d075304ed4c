"""NMS against torchvision: the drop-ins, rescored_nms, and a dense FCOS head.

    python benchmarks/bench_nms.py [--device cuda] [--quick]

Every case checks that both sides keep the same detections first, then times
both in this run:
- mutualops.nms vs torchvision.ops.nms (1000, 5000 boxes);
- mutualops.batched_nms vs torchvision.ops.batched_nms (5000, 20000 boxes, 80 classes);
- mutualops.rescored_nms vs torch rescoring + threshold + torchvision.ops.batched_nms;
- FCOS post-processing of dense head outputs (B=8, N=20000 points, C=80):
  torchvision's FCOS.postprocess_detections vs mutualops (the torchvision
  replacement, and the fused alpha = 0.5 path).
Targets (2-core CPU): >= 1.5x torchvision.ops.nms at 5000 boxes, >= 3x
torchvision.ops.batched_nms at 20000 boxes over 80 classes.
"""

import copy
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


def fcos_rows(args, gen, repeats):
    """torchvision's FCOS post-processing against mutualops on synthetic head outputs."""
    from torchvision.models.detection import fcos_resnet50_fpn

    from mutualops import torchvision_postprocess

    images, classes = (8, 80) if not args.quick else (2, 20)
    level_sizes = [15000, 3750, 938, 240, 72] if not args.quick else [3000, 750, 190]
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=classes).eval().to(args.device)

    def level(n, k, scale=1.0):
        return (torch.randn(images, n, k, generator=gen) * scale).to(args.device)

    head = {
        # Logits around the 0.2 score threshold so that top-k and NMS have work.
        "cls_logits": [level(n, classes) - 3 for n in level_sizes],
        "bbox_regression": [level(n, 4).abs() * 2 + 1 for n in level_sizes],
        "bbox_ctrness": [level(n, 1) for n in level_sizes],
    }
    stride = [8, 16, 32, 64, 128]
    anchors = []
    for _ in range(images):
        per_level = []
        for lv, n in enumerate(level_sizes):
            centres = torch.rand(n, 2, generator=gen) * 1300
            half = stride[lv] * 2
            per_level.append(torch.cat([centres - half, centres + half], 1).to(args.device))
        anchors.append(per_level)
    shapes = [(800, 1344)] * images
    theirs = lambda: type(model).postprocess_detections(model, head, anchors, shapes)  # noqa: E731
    replacement = torchvision_postprocess.install(copy.copy(model))
    ours = lambda: replacement.postprocess_detections(head, anchors, shapes)  # noqa: E731
    for t, o in zip(theirs(), ours()):
        assert torch.equal(t["labels"].sort().values, o["labels"].sort().values)
        assert torch.equal(t["scores"].sort().values, o["scores"].sort().values)

    # The fused path: sigmoid and alpha = 0.5 rescoring inside the kernel, from logits.
    cls = torch.cat(head["cls_logits"], 1)
    ctr = torch.cat(head["bbox_ctrness"], 1).squeeze(-1)
    reg = torch.cat(head["bbox_regression"], 1)
    pts = torch.stack([torch.cat(a) for a in anchors])
    level_index = torch.cat([torch.full((n,), i) for i, n in enumerate(level_sizes)]).to(args.device)

    def fused():
        boxes = model.box_coder.decode(reg, pts).clamp(min=0).minimum(torch.tensor([1344.0, 800, 1344, 800], device=pts.device))
        return mutualops.rescored_nms(boxes, cls, ctr, logits=True, alpha=0.5, level_index=level_index,
                                      num_levels=len(level_sizes), score_threshold=model.score_thresh,
                                      iou_threshold=model.nms_thresh, pre_nms_top_k=model.topk_candidates,
                                      max_detections=model.detections_per_img, fixed_shape=True)

    counts = fused().counts.tolist()
    assert counts == [len(t["scores"]) for t in theirs()], "fused FCOS path keeps other detections"
    case = f"FCOS post-process B={images} N={sum(level_sizes)} C={classes}"
    peer = harness.measure(theirs, args.device, max(3, repeats // 3))
    return [
        harness.row(case, "torchvision FCOS.postprocess_detections", peer,
                    harness.measure(ours, args.device, max(3, repeats // 3))) | {"variant": "torchvision replacement"},
        harness.row(case + " (fused: logits, alpha=0.5)", "torchvision FCOS.postprocess_detections", peer,
                    harness.measure(fused, args.device, max(3, repeats // 3))) | {"variant": "fused"},
    ]


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
    for n in ([5000, 20000] if not args.quick else [2000]):
        boxes, cls, labels = detections(n, args.device, gen)
        quality = torch.rand(n, generator=gen).to(args.device)

        def theirs():
            s = torch.sqrt(cls * quality)
            keep = (s > 0.05).nonzero().squeeze(1)
            return keep[tvo.batched_nms(boxes[keep], s[keep], labels[keep], 0.5)]

        ours = lambda: mutualops.rescored_nms(  # noqa: E731
            boxes, cls, quality, labels=labels, alpha=0.5, score_threshold=0.05, pre_nms_top_k=-1, max_detections=n
        ).indices
        assert torch.equal(ours().sort().values, theirs().sort().values), "rescored_nms differs"
        rows.append(harness.row(f"rescored_nms {n} boxes, 80 classes", "torch rescoring + torchvision batched_nms",
                                harness.measure(theirs, args.device, repeats),
                                harness.measure(ours, args.device, repeats), ">= 3x" if n == 20000 else ""))
    rows += fcos_rows(args, gen, repeats)
    harness.print_table(f"NMS, fp32, {args.device}, {torch.get_num_threads()} threads (median of {repeats})", rows)
    harness.save_json("bench_nms", args, rows)


if __name__ == "__main__":
    main()
