"""Spearman per group: mutualops against a scipy.stats.spearmanr loop and the
vectorised pure-PyTorch reference.

    python benchmarks/bench_rank.py [--device cuda] [--quick]

Checks mutualops against scipy first, then times all three in this run.
Targets (2-core CPU): >= 100x the scipy loop, >= 3x the reference.
"""

import time

import numpy as np
import scipy.stats
import torch


import harness
import mutualops
import mutualops.reference  # the oracle is not imported with the ops

# The scipy loop is timed on at most this many groups and scaled linearly: a
# 200000-group loop would take about half a minute per run.
SCIPY_MAX_GROUPS = 2000


def make_case(num_groups, size, device, gen):
    n = num_groups * size
    groups = torch.arange(num_groups).repeat_interleave(size)[torch.randperm(n, generator=gen)]
    # Scores with ties (quantised), as detector scores often are; IoUs continuous.
    x = (torch.rand(n, generator=gen) * 50).round() / 50
    y = torch.rand(n, generator=gen)
    return x.to(device), y.to(device), groups.to(device)


def scipy_loop(x, y, groups, num_groups):
    xs, ys, gs = x.cpu().numpy(), y.cpu().numpy(), groups.cpu().numpy()
    order = np.argsort(gs, kind="stable")
    bounds = np.searchsorted(gs[order], np.arange(num_groups + 1))

    def run():
        out = np.empty(num_groups)
        for g in range(num_groups):
            idx = order[bounds[g]:bounds[g + 1]]
            out[g] = scipy.stats.spearmanr(xs[idx], ys[idx]).statistic
        return out

    return run


def main():
    args = harness.parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 11)
    shapes = [(2000, 30), (200000, 10)] if not args.quick else [(200, 30), (2000, 10)]
    rows = []
    for num_groups, size in shapes:
        x, y, groups = make_case(num_groups, size, args.device, gen)
        ours = lambda: mutualops.spearman(x, y, groups, num_groups=num_groups)  # noqa: E731
        ref = lambda: mutualops.reference.spearman(x, y, groups, num_groups=num_groups)  # noqa: E731
        timed_groups = min(num_groups, SCIPY_MAX_GROUPS)
        sub = groups < timed_groups
        scipy_run = scipy_loop(x[sub], y[sub], groups[sub], timed_groups)
        expected = torch.from_numpy(scipy_run())
        torch.testing.assert_close(ours()[:timed_groups].cpu(), expected, rtol=0, atol=1e-9, equal_nan=True)
        torch.testing.assert_close(ref()[:timed_groups].cpu(), expected, rtol=0, atol=1e-9, equal_nan=True)
        ours_r = harness.measure(ours, args.device, repeats)
        ref_r = harness.measure(ref, args.device, repeats)
        scale = num_groups / timed_groups
        t0 = time.perf_counter()
        scipy_run()
        scipy_ms = (time.perf_counter() - t0) * 1e3 * scale
        scipy_r = {"ms": scipy_ms, "peak_bytes": harness.peak_extra_bytes(scipy_run, "cpu") * scale}
        case = f"{num_groups} groups of {size}"
        note = f" (scaled from {timed_groups} groups)" if scale > 1 else ""
        rows.append(harness.row(case, "scipy.stats.spearmanr loop" + note, scipy_r, ours_r, ">= 100x"))
        rows.append(harness.row(case, "reference (vectorised torch)", ref_r, ours_r, ">= 3x"))
    harness.print_table(f"Spearman per group, {args.device}, {torch.get_num_threads()} threads (median of {repeats})", rows)
    harness.save_json("bench_rank", args, rows)


if __name__ == "__main__":
    main()
