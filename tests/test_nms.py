import pytest
import torch
import torchvision.ops as tvo
from torchvision.ops.boxes import _batched_nms_vanilla


import mutualops
from helpers import DEVICES, random_boxes
from mutualops import reference

NMS_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def clustered_case(gen, n=300, clusters=8):
    """Heavily overlapping clusters: jittered copies of a few boxes."""
    centres = random_boxes(clusters, generator=gen, scale=200.0)
    pick = torch.randint(0, clusters, (n,), generator=gen)
    boxes = centres[pick] + torch.randn(n, 4, generator=gen) * 3
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    return boxes, torch.rand(n, generator=gen)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_torchvision_on_1000_random_cases(device, gen):
    for case in range(1000):
        n = int(torch.randint(1, 300, (1,), generator=gen))
        if case % 2:
            boxes, scores = clustered_case(gen, n)
        else:
            boxes, scores = random_boxes(n, generator=gen), torch.rand(n, generator=gen)
        thr = float(torch.rand(1, generator=gen))
        idxs = torch.randint(0, 6, (n,), generator=gen)
        keep = mutualops.nms(boxes.to(device), scores.to(device), thr).cpu()
        assert torch.equal(keep, tvo.nms(boxes, scores, thr)), case
        keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), thr).cpu()
        # Below 4000 boxes torchvision.ops.batched_nms offsets boxes per class and runs one
        # NMS; the offset's float rounding can flip an IoU at the threshold. Its per-class
        # path (used above 4000 boxes) is the exact semantics, and the one we match.
        assert torch.equal(keep, _batched_nms_vanilla(boxes, scores, idxs, thr)), case


@pytest.mark.parametrize("device", DEVICES)
def test_large_batched_case_matches_torchvision(device, gen):
    # Above 4000 boxes torchvision switches to its per-class loop.
    boxes, scores = clustered_case(gen, n=6000, clusters=300)
    idxs = torch.randint(0, 80, (6000,), generator=gen)
    keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu()
    assert torch.equal(keep, tvo.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_and_duplicates(device):
    # Exact score ties and duplicate boxes: the higher score wins, then the lower index.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.5])
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert keep.tolist() == [2, 3]
    assert torch.equal(keep, reference.nms(boxes, scores, 0.5))
    # Same kept boxes as torchvision (which index of a duplicate it keeps follows torch.sort).
    tv = tvo.nms(boxes, scores, 0.5)
    assert torch.equal(boxes[keep], boxes[tv])
    keep = mutualops.nms(boxes.to(device), scores.to(device), 1.0).cpu()
    assert keep.tolist() == [2, 0, 1, 3, 4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", NMS_DTYPES)
def test_dtypes_match_reference(device, dtype, gen):
    boxes, scores = clustered_case(gen, 400)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    idxs = torch.randint(0, 3, (400,), generator=gen)
    keep = mutualops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.6).cpu()
    assert torch.equal(keep, reference.batched_nms(boxes, scores, idxs, 0.6))


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_never_kept_and_suppress_nothing(device):
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, nan], [0, 0, 10, 10], [0, 0, inf, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.5, 0.99, nan, 0.9, 0.4])
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert keep.tolist() == [0]
    keep = mutualops.nms(boxes.to(device), scores.to(device), 0.9).cpu()
    assert keep.tolist() == [0, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_non_contiguous(device, gen):
    e = torch.zeros(0, 4, device=device)
    assert mutualops.nms(e, torch.zeros(0, device=device), 0.5).shape == (0,)
    boxes = random_boxes(100, generator=gen).to(device)
    scores = torch.rand(200, generator=gen).to(device)[::2]
    strided = boxes.t().contiguous().t()
    assert torch.equal(mutualops.nms(strided, scores, 0.3), mutualops.nms(boxes, scores.contiguous(), 0.3))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda b, s, i: mutualops.nms(b[:, :3], s, 0.5), ValueError, "boxes"),
        (lambda b, s, i: mutualops.nms(b, s[:-1], 0.5), ValueError, "scores"),
        (lambda b, s, i: mutualops.nms(b, s.double(), 0.5), TypeError, "dtype"),
        (lambda b, s, i: mutualops.nms(b.long(), s, 0.5), TypeError, "boxes"),
        (lambda b, s, i: mutualops.nms(b, s, 1.5), ValueError, "iou_threshold"),
        (lambda b, s, i: mutualops.batched_nms(b, s, i.float(), 0.5), TypeError, "idxs"),
        (lambda b, s, i: mutualops.batched_nms(b, s, i[:-1], 0.5), ValueError, "idxs"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(random_boxes(6), torch.rand(6), torch.arange(6))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device, gen):
    boxes, scores = clustered_case(gen, 50)
    idxs = torch.randint(0, 3, (50,), generator=gen)
    args = (boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    torch.library.opcheck(torch.ops.mutualops.batched_nms.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    torch._dynamo.reset()
    fn = lambda b, s, i: mutualops.batched_nms(b, s, i, 0.5)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args[:3]), fn(*args[:3]))
