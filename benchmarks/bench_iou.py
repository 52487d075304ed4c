"""Fused box IoU against torchvision.ops (and the pure-PyTorch reference).

    python benchmarks/bench_iou.py [--device cuda] [--quick]

Checks every case against torchvision first, then times both in this run.
Targets (2-core CPU, fp32): >= 5x torchvision.ops.box_iou at 2000x2000 and
20000x1000, peak extra memory <= 1.1x the output.
"""


import torch
import torchvision.ops as tvo


import harness
import mutualops
import mutualops.reference  # the oracle is not imported with the ops

PEERS = {
    "iou": ("torchvision.ops.box_iou", tvo.box_iou),
    "giou": ("torchvision.ops.generalized_box_iou", tvo.generalized_box_iou),
    "ciou": ("torchvision.ops.complete_box_iou", tvo.complete_box_iou),
}


def boxes(n, device, gen):
    xy = torch.rand(n, 2, generator=gen) * 1000
    wh = torch.rand(n, 2, generator=gen) * 200 + 1
    return torch.cat([xy, xy + wh], 1).to(device)


def main():
    args = harness.parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 15)
    sizes = [(2000, 2000), (20000, 100), (20000, 1000)]
    if args.quick:
        sizes = [(500, 500), (5000, 100)]
    cases = [(n, m, "iou") for n, m in sizes] + [(sizes[0][0], sizes[0][1], "giou"), (sizes[0][0], sizes[0][1], "ciou")]
    rows = []
    for n, m, mode in cases:
        a, b = boxes(n, args.device, gen), boxes(m, args.device, gen)
        peer_name, peer = PEERS[mode]
        ours = lambda: mutualops.box_iou(a, b, mode)  # noqa: E731
        theirs = lambda: peer(a, b)  # noqa: E731
        torch.testing.assert_close(ours(), theirs(), rtol=0, atol=1e-6)
        ours_r = harness.measure(ours, args.device, repeats)
        peer_r = harness.measure(theirs, args.device, repeats)
        ref_r = harness.measure(lambda: mutualops.reference.box_iou(a, b, mode), args.device, repeats)
        target = ">= 5x, <= 1.1x output" if mode == "iou" and (n, m) in ((2000, 2000), (20000, 1000)) else ""
        r = harness.row(f"{mode} {n}x{m}", peer_name, peer_r, ours_r, target)
        r["output_bytes"] = n * m * 4
        r["ours_peak_over_output"] = ours_r["peak_bytes"] / r["output_bytes"]
        r["reference_ms"] = ref_r["ms"]
        r["reference_peak_bytes"] = ref_r["peak_bytes"]
        rows.append(r)
    harness.print_table(f"box IoU, fp32, {args.device}, {torch.get_num_threads()} threads (median of {repeats})", rows)
    print("\nours' peak over the output's size: " + ", ".join(f"{r['case']}: {r['ours_peak_over_output']:.2f}x" for r in rows))
    harness.save_json("bench_iou", args, rows)


if __name__ == "__main__":
    main()
