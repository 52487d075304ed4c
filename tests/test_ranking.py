import math

import pytest
import torch

import mutualops
from helpers import DEVICES, FLOAT_DTYPES
from mutualops import reference

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is the peer of the ranking ops")

TIES = ["average", "min", "max", "dense", "ordinal"]


def scipy_rank(x, groups, ties):
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for g in groups.unique().tolist():
        m = groups == g
        out[m] = torch.from_numpy(scipy_stats.rankdata(x[m].double().numpy(), method=ties).astype("float64"))
    return out


def scipy_spearman(x, y, groups, num_groups):
    out = torch.full((num_groups,), math.nan, dtype=torch.float64)
    for g in range(num_groups):
        m = groups == g
        if int(m.sum()) >= 2:
            xs, ys = x[m].double().numpy(), y[m].double().numpy()
            if xs.min() != xs.max() and ys.min() != ys.max():
                out[g] = scipy_stats.spearmanr(xs, ys).statistic
    return out


def cases(gen):
    """(x, y, groups) triples: random, heavy ties, constant and singleton groups,
    shuffled group order."""
    n = 600
    groups = torch.randint(0, 40, (n,), generator=gen)
    yield torch.randn(n, generator=gen), torch.randn(n, generator=gen), groups
    yield (torch.randint(0, 4, (n,), generator=gen).float(), torch.randint(0, 3, (n,), generator=gen).float(), groups)
    x = torch.randn(n, generator=gen)
    x[groups == 3] = 1.5  # a constant group
    lone = torch.randint(0, 40, (n,), generator=gen)
    lone[0] = 99  # a singleton group (and gaps: empty groups 40..98)
    yield x, torch.randn(n, generator=gen), lone
    perm = torch.randperm(n, generator=gen)
    yield torch.randn(n, generator=gen)[perm], torch.randn(n, generator=gen), groups.sort().values[perm]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", TIES)
def test_rank_matches_scipy_and_reference(device, ties, gen):
    for x, _, groups in cases(gen):
        expected = scipy_rank(x, groups, ties)
        out = mutualops.rank(x.to(device), groups.to(device), ties).cpu()
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)
        torch.testing.assert_close(reference.rank(x, groups, ties), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_spearman_matches_scipy_and_reference(device, gen):
    for x, y, groups in cases(gen):
        num_groups = int(groups.max()) + 1
        expected = scipy_spearman(x, y, groups, num_groups)
        out = mutualops.spearman(x.to(device), y.to(device), groups.to(device)).cpu()
        assert out.shape == (num_groups,)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-9, equal_nan=True)
        torch.testing.assert_close(reference.spearman(x, y, groups), expected, rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtypes(device, dtype, gen):
    x = torch.randint(0, 50, (300,), generator=gen).to(dtype)  # exact in every dtype, with ties
    y = torch.randn(300, generator=gen).to(dtype)
    groups = torch.randint(0, 7, (300,), generator=gen)
    torch.testing.assert_close(mutualops.rank(x.to(device), groups.to(device)).cpu(), scipy_rank(x, groups, "average"))
    expected = scipy_spearman(x, y, groups, 7)
    torch.testing.assert_close(mutualops.spearman(x.to(device), y.to(device), groups.to(device)).cpu(), expected,
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_no_groups_is_one_group(device, gen):
    x, y = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    torch.testing.assert_close(mutualops.rank(x.to(device)).cpu(), scipy_rank(x, torch.zeros(50, dtype=torch.long), "average"))
    rho = mutualops.spearman(x.to(device), y.to(device)).cpu()
    assert rho.shape == (1,)
    assert abs(rho.item() - scipy_stats.spearmanr(x.numpy(), y.numpy()).statistic) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_tiny(device):
    e = torch.zeros(0, device=device)
    assert mutualops.rank(e).shape == (0,)
    assert torch.isnan(mutualops.spearman(e, e)).all()
    assert mutualops.spearman(e, e, torch.zeros(0, dtype=torch.long, device=device)).shape == (0,)
    one = torch.ones(1, device=device)
    assert torch.isnan(mutualops.spearman(one, one)).all()
    assert mutualops.spearman(e, e, torch.zeros(0, dtype=torch.long, device=device), num_groups=3).shape == (3,)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_to_its_group_only(device):
    x = torch.tensor([1.0, math.nan, 3.0, 1.0, 2.0, 3.0], device=device)
    y = torch.tensor([1.0, 2.0, 3.0, 3.0, 2.0, 1.0], device=device)
    g = torch.tensor([0, 0, 0, 1, 1, 1], device=device)
    r = mutualops.rank(x, g).cpu()
    assert torch.isnan(r[:3]).all() and r[3:].tolist() == [1.0, 2.0, 3.0]
    rho = mutualops.spearman(x, y, g).cpu()
    assert math.isnan(rho[0]) and rho[1].item() == -1.0


@pytest.mark.parametrize("device", DEVICES)
def test_100000_ties_do_not_overflow(device):
    # torchmetrics' int32 rank sums overflow near 70000 tied values.
    n = 100_000
    x = torch.ones(n, dtype=torch.float32, device=device)
    x[-1] = 2.0
    r = mutualops.rank(x).cpu()
    assert r[0].item() == (n - 1 + 1) / 2 and r[-1].item() == n
    y = torch.arange(n, dtype=torch.float32, device=device)
    rho = mutualops.spearman(x, y).item()
    assert abs(rho - scipy_stats.spearmanr(x.cpu().numpy(), y.cpu().numpy()).statistic) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_many_small_groups(device, gen):
    n, k = 20000, 2000
    groups = torch.randint(0, k, (n,), generator=gen)
    x, y = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    out = mutualops.spearman(x.to(device), y.to(device), groups.to(device)).cpu()
    torch.testing.assert_close(out, reference.spearman(x, y, groups), rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, g: mutualops.spearman(x, x[:-1]), ValueError, "same length"),
        (lambda x, g: mutualops.rank(x, g.float()), TypeError, "groups"),
        (lambda x, g: mutualops.rank(x, g[:-1]), ValueError, "groups"),
        (lambda x, g: mutualops.rank(x, g - 5), ValueError, "non-negative"),
        (lambda x, g: mutualops.spearman(x, x, g - 5), ValueError, "non-negative"),
        (lambda x, g: mutualops.spearman(x, x, g, num_groups=2), ValueError, "num_groups"),
        (lambda x, g: mutualops.rank(x.long(), g), TypeError, "x"),
        (lambda x, g: mutualops.rank(x[None], None), ValueError, "1-D"),
        (lambda x, g: mutualops.rank(x, g, ties="fractional"), ValueError, "ties"),
        (lambda x, g: mutualops.spearman(x, x.to("meta")), ValueError, "device"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(10), torch.arange(10) % 4)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, gen):
    x = torch.randint(0, 5, (40,), generator=gen).double().to(device)
    y = torch.randn(40, generator=gen, dtype=torch.float64).to(device)
    g = torch.randint(0, 6, (40,), generator=gen).to(device)
    for ties in TIES:
        torch.library.opcheck(torch.ops.mutualops.rank.default, (x, g, ties))
    torch.library.opcheck(torch.ops.mutualops.rank.default, (x, None, "average"))
    torch.library.opcheck(torch.ops.mutualops.spearman.default, (x, y, g, 6))
    torch.library.opcheck(torch.ops.mutualops.spearman.default, (x, y, None, None))
    torch.library.opcheck(torch.ops.mutualops.spearman.default, (x, y, g, None),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device, gen):
    torch._dynamo.reset()

    def fn(x, y, g):
        return mutualops.spearman(x, y, g, num_groups=5).nan_to_num(0).sum() + mutualops.rank(x, g).sum()

    x, y = torch.randn(30, generator=gen).to(device), torch.randn(30, generator=gen).to(device)
    g = (torch.arange(30) % 5).to(device)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, y, g), fn(x, y, g))


def test_harmony_metric(gen):
    from mutualops import metrics

    # Object 0: scores follow IoU exactly; object 1: reversed; object 2: a single
    # prediction (skipped); -1: background.
    scores = torch.tensor([0.9, 0.5, 0.1, 0.2, 0.6, 0.7, 0.3, 0.8])
    ious = torch.tensor([0.8, 0.6, 0.4, 0.9, 0.5, 0.3, 0.7, 0.1])
    gt_index = torch.tensor([0, 0, 0, 1, 1, 1, 2, -1])
    h = metrics.harmony(scores, ious, gt_index)
    assert h.num_objects == 2 and h.harmony == 0.0 and h.divergence == 1.0
    assert h.per_object[0] == 1.0 and h.per_object[1] == -1.0 and math.isnan(h.per_object[2])
    assert h.counts.tolist() == [3, 3, 1]
    weighted = metrics.harmony(scores, ious, torch.tensor([0, 0, 0, 0, 1, 1, 2, -1]), aggregate="count_weighted")
    rho = weighted.per_object
    assert abs(weighted.harmony - float((rho[0] * 4 + rho[1] * 2) / 6)) < 1e-12
    assert metrics.harmony(scores, ious, gt_index, min_size=4).num_objects == 0
    with pytest.raises(ValueError, match="min_size"):
        metrics.harmony(scores, ious, gt_index, min_size=1)
    with pytest.raises(ValueError, match="aggregate"):
        metrics.harmony(scores, ious, gt_index, aggregate="median")


def test_gt_index_helpers():
    from mutualops import metrics

    gts = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 5, 5], [0, 0, 0, 0]]])
    preds = torch.tensor([[[0.0, 0, 10, 9], [21, 21, 30, 30], [50, 50, 60, 60]],
                          [[0, 0, 5, 5], [0, 0, 1, 1], [0, 0, 4, 5]]])
    ids = metrics.gt_index_from_iou(preds, gts, num_gt=torch.tensor([2, 1]))
    assert ids.tolist() == [0, 1, -1, 2, -1, 2]
    assert metrics.gt_index_from_iou(preds[0], gts[0]).tolist() == [0, 1, -1]
    matched = torch.tensor([[0, -1, 1], [-2, 0, 0]])
    assert metrics.gt_index_from_assignment(matched, num_gt=2).tolist() == [0, -1, 1, -1, 2, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_rank_memory_does_not_grow_with_the_largest_group_id(device):
    # One id of 2**31 once asked for 17 GB of per-group slots; ranks do not depend on the numbering.
    x = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.4], device=device)
    dense = mutualops.rank(x, torch.tensor([0, 1, 0, 1, 2], device=device))
    for huge in (2**31, 2**62, 2**63 - 2):
        sparse = mutualops.rank(x, torch.tensor([0, huge, 0, huge, 7], device=device))
        torch.testing.assert_close(sparse, dense)
    with pytest.raises(ValueError, match="groups must be < 2\\^63 - 1"):
        mutualops.rank(x, torch.tensor([0, 2**63 - 1, 0, 1, 2], device=device))
