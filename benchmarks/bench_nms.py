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
from collections import Counter

import torch
import torchvision.ops as tvo


import harness
import mutualops
from mutualops import reference


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


def check_keep(case, ours, theirs, scores, reference_keep):
    """Ours must equal the pure-PyTorch reference, run on the CPU (the CUDA
    kernels reproduce the CPU's IoU rounding: --fmad=false). torchvision's CUDA
    kernel contracts the IoU into FMAs, and its batched_nms offsets boxes per
    class below 20000 coordinates on CUDA (4000 on the CPU), so a box whose IoU
    sits on the threshold can go either way there: those are counted, and must
    stay rare. Returns the number of boxes kept by one side only."""
    assert same_keep(ours.cpu(), reference_keep, scores.cpu()), f"{case}: differs from the reference"
    if same_keep(ours, theirs, scores):
        return 0
    a, b = set(ours.tolist()), set(theirs.tolist())
    differ = len(a ^ b)
    assert differ <= max(2, len(b) // 1000), f"{case}: {differ} boxes differ from torchvision"
    print(f"{case}: {differ} of {len(b)} kept boxes differ from torchvision (IoU on the threshold)")
    return differ


def fcos_rows(args, gen, repeats):
    """torchvision's FCOS post-processing against mutualops on synthetic head outputs."""
    from torchvision.models.detection import fcos_resnet50_fpn

    from mutualops.integrations import torchvision as torchvision_postprocess

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
    expected = theirs()
    replaced = ours()
    differ = 0
    for t, o in zip(expected, replaced):
        a = Counter(zip(t["labels"].tolist(), t["scores"].tolist()))
        b = Counter(zip(o["labels"].tolist(), o["scores"].tolist()))
        differ += (a - b).total() + (b - a).total()
    kept = sum(len(t["scores"]) for t in expected)
    # Exact on the CPU; on CUDA torchvision's FMA-contracted IoU can flip a box on the threshold.
    assert differ <= (0 if args.device == "cpu" else max(2, kept // 1000)), f"FCOS replacement: {differ} differ"
    if differ:
        print(f"FCOS replacement: {differ} of {kept} detections differ from torchvision (IoU on the threshold)")

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
    count_differ = sum(abs(c - len(t["scores"])) for c, t in zip(counts, expected))
    assert count_differ <= (0 if args.device == "cpu" else max(2, kept // 1000)), "fused FCOS path keeps other detections"
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
        differ = check_keep(f"nms {n}", ours(), theirs(), scores,
                            reference.nms(boxes.cpu(), scores.cpu(), 0.5))
        target = ">= 1.5x" if n == 5000 else ""
        rows.append(harness.row(f"nms {n} boxes", "torchvision.ops.nms", harness.measure(theirs, args.device, repeats),
                                harness.measure(ours, args.device, repeats), target) | {"differ_from_peer": differ})
    for n in ([5000, 20000] if not args.quick else [2000]):
        boxes, scores, labels = detections(n, args.device, gen)
        ours = lambda: mutualops.batched_nms(boxes, scores, labels, 0.5)  # noqa: E731
        theirs = lambda: tvo.batched_nms(boxes, scores, labels, 0.5)  # noqa: E731
        differ = check_keep(f"batched_nms {n}", ours(), theirs(), scores,
                            reference.batched_nms(boxes.cpu(), scores.cpu(), labels.cpu(), 0.5))
        target = ">= 3x" if n == 20000 else ""
        rows.append(harness.row(f"batched_nms {n} boxes, 80 classes", "torchvision.ops.batched_nms",
                                harness.measure(theirs, args.device, repeats),
                                harness.measure(ours, args.device, repeats), target) | {"differ_from_peer": differ})
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
        # The reference rescores with a correctly rounded sqrt, as the kernels do (torch's CPU sqrt is off by
        # one ulp for some values, which reorders near-tied scores).
        s = reference.rescore(cls, quality, 0.5)
        cand = (s > 0.05).nonzero().squeeze(1).cpu()
        expected = cand[reference.batched_nms(boxes.cpu()[cand], s.cpu()[cand], labels.cpu()[cand], 0.5)]
        differ = check_keep(f"rescored_nms {n}", ours(), theirs(), s, expected)
        rows.append(harness.row(f"rescored_nms {n} boxes, 80 classes", "torch rescoring + torchvision batched_nms",
                                harness.measure(theirs, args.device, repeats),
                                harness.measure(ours, args.device, repeats), ">= 3x" if n == 20000 else "")
                    | {"differ_from_peer": differ})
    rows += fcos_rows(args, gen, repeats)
    harness.print_table(f"NMS, fp32, {args.device}, {torch.get_num_threads()} threads (median of {repeats})", rows)
    harness.save_json("bench_nms", args, rows)


if __name__ == "__main__":
    main()
