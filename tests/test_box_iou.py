import math

import pytest
import torch
import torchvision.ops as tvo

import mutualops
from helpers import DEVICES, FLOAT_DTYPES, random_boxes
from mutualops import reference

MODES = ["iou", "giou", "diou", "ciou", "iof"]
TORCHVISION = {
    "iou": tvo.box_iou,
    "giou": tvo.generalized_box_iou,
    "diou": tvo.distance_box_iou,
    "ciou": tvo.complete_box_iou,
}
TORCHVISION_LOSS = {
    "giou": tvo.generalized_box_iou_loss,
    "diou": tvo.distance_box_iou_loss,
    "ciou": tvo.complete_box_iou_loss,
}
# Tolerance against the float64 reference, by input dtype.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def adversarial_boxes(dtype=torch.float64):
    """Identical, touching, nested, degenerate, zero-area, flipped and huge boxes
    (huge means up to 1e5, or the largest finite value of dtype when smaller)."""
    rows = [
        [0, 0, 10, 10],
        [0, 0, 10, 10],  # identical to the previous
        [10, 0, 20, 10],  # touching the first on an edge
        [10, 10, 20, 20],  # touching on a corner
        [2, 2, 5, 5],  # nested in the first
        [3, 3, 3, 8],  # zero width
        [4, 4, 4, 4],  # a point
        [4, 4, 4, 4],  # the same point
        [8, 8, 2, 2],  # flipped: area 0 by convention
        [0, 0, 1e5, 1e5],  # huge
        [99990, 99990, 1e5, 1e5],  # small, far away
        [-50, -50, -10, -20],  # negative coordinates
    ]
    boxes = torch.tensor(rows, dtype=torch.float64)
    return boxes.clamp(max=torch.finfo(dtype).max).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_pairwise_matches_reference(device, dtype, mode, gen):
    a = torch.cat([random_boxes(70, generator=gen, dtype=dtype), adversarial_boxes(dtype)])
    b = torch.cat([random_boxes(50, generator=gen, dtype=dtype), adversarial_boxes(dtype)])
    out = mutualops.box_iou(a.to(device), b.to(device), mode)
    assert out.dtype == dtype and out.shape == (len(a), len(b))
    expected = reference.box_iou(a.double(), b.double(), mode)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "ciou"])
def test_pairwise_matches_torchvision(device, mode, gen):
    a = random_boxes(300, generator=gen)
    b = random_boxes(200, generator=gen)
    out = mutualops.box_iou(a.to(device), b.to(device), mode).cpu()
    expected = TORCHVISION[mode](a, b)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    if mode in ("iou", "giou") and device == "cpu":
        # Same operations in the same order: bit-identical. DIoU and CIoU take the centre offset from the
        # corners' differences where torchvision subtracts the centres (the last bit may differ; far from the
        # origin only ours keeps its precision), and CIoU's atan is vectorised in torch.
        assert torch.equal(out, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_adversarial_against_torchvision(device):
    boxes = adversarial_boxes().float()
    out = mutualops.box_iou(boxes.to(device), boxes.to(device)).cpu()
    expected = tvo.box_iou(boxes, boxes)
    valid = torch.isfinite(expected)
    valid &= (boxes[:, 2] >= boxes[:, 0])[:, None] & (boxes[:, 2] >= boxes[:, 0])[None, :]
    torch.testing.assert_close(out[valid], expected[valid], rtol=0, atol=1e-6)
    # torchvision gives NaN where two zero-area boxes meet (zero union); we give 0.
    assert torch.isnan(expected[6, 7]) and out[6, 7] == 0
    assert out[0, 1] == 1 and out[0, 2] == 0 and out[0, 3] == 0 and out[8, 8] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_batched_equals_stacked_pairwise(device, mode, gen):
    a = random_boxes(40, batch=3, generator=gen).to(device)
    b = random_boxes(30, batch=3, generator=gen).to(device)
    out = mutualops.box_iou(a, b, mode)
    assert out.shape == (3, 40, 30)
    for k in range(3):
        torch.testing.assert_close(out[k], mutualops.box_iou(a[k], b[k], mode), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(device, mode, gen):
    base = random_boxes(120, generator=gen).to(device)
    a = base[::2]  # strided rows
    b = base.t().contiguous().t()[1::3]  # column-major storage
    assert not a.is_contiguous() and not b.is_contiguous()
    expected = mutualops.box_iou(a.contiguous(), b.contiguous(), mode)
    torch.testing.assert_close(mutualops.box_iou(a, b, mode), expected, rtol=0, atol=0)
    torch.testing.assert_close(mutualops.box_iou_aligned(a[:40], b[:40], mode),
                               mutualops.box_iou_aligned(a[:40].contiguous(), b[:40].contiguous(), mode))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    e = torch.zeros(0, 4, device=device)
    x = random_boxes(5, device=device)
    assert mutualops.box_iou(e, x).shape == (0, 5)
    assert mutualops.box_iou(x, e).shape == (5, 0)
    assert mutualops.box_iou(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 3, 4, device=device)).shape == (2, 0, 3)
    assert mutualops.box_iou(torch.zeros(0, 3, 4, device=device), torch.zeros(0, 2, 4, device=device)).shape == (0, 3, 2)
    assert mutualops.box_iou_aligned(e, e).shape == (0,)
    loss = mutualops.iou_loss(e.requires_grad_(), e)
    assert loss.item() == 0
    loss.backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_aligned_matches_reference(device, dtype, mode, gen):
    a = torch.cat([random_boxes(100, generator=gen, dtype=dtype), adversarial_boxes(dtype)])
    b = torch.cat([random_boxes(100, generator=gen, dtype=dtype), adversarial_boxes(dtype).flip(0)])
    out = mutualops.box_iou_aligned(a.to(device), b.to(device), mode)
    expected = reference.box_iou_aligned(a.double(), b.double(), mode)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_aligned_keeps_leading_dims(device, gen):
    a = random_boxes(12, batch=2, generator=gen).to(device)
    b = random_boxes(12, batch=2, generator=gen).to(device)
    out = mutualops.box_iou_aligned(a, b, "giou")
    assert out.shape == (2, 12)
    torch.testing.assert_close(out[1], torch.diagonal(mutualops.box_iou(a[1], b[1], "giou")))


# CIoU's gradient treats alpha as a constant (as torchvision does), so it is not
# the finite-difference derivative: it is checked against the reference's
# autograd below and against alpha-frozen differences in tests/cpp.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "iof"])
def test_gradcheck(device, mode, gen):
    a = random_boxes(16, generator=gen, dtype=torch.float64).to(device)
    # Overlapping partners so that every term of the formula has a gradient.
    b = (a + torch.randn(16, 4, generator=gen, dtype=torch.float64).to(device) * 5).detach()
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: mutualops.box_iou_aligned(x, y, mode), (a, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_gradient_matches_reference_autograd(device, mode, gen):
    a0 = random_boxes(200, generator=gen, dtype=torch.float64).to(device)
    b0 = a0 + torch.randn(200, 4, generator=gen, dtype=torch.float64).to(device) * 10
    w = torch.rand(200, generator=gen, dtype=torch.float64).to(device)
    grads = []
    for fn in (mutualops.box_iou_aligned, reference.box_iou_aligned):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        (fn(a, b, mode) * w).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
def test_losses_match_torchvision(device, mode, gen):
    a = random_boxes(500, generator=gen)
    b = (a + torch.randn(500, 4, generator=gen) * 8).clamp(min=0)
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 1)
    for reduction in ("none", "mean", "sum"):
        out = mutualops.iou_loss(a.to(device), b.to(device), mode, reduction).cpu()
        expected = TORCHVISION_LOSS[mode](a, b, reduction=reduction)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    pa, pb = a.to(device).clone().requires_grad_(), a.clone().requires_grad_()
    mutualops.iou_loss(pa, b.to(device), mode).backward()
    TORCHVISION_LOSS[mode](pb, b, reduction="mean").backward()
    torch.testing.assert_close(pa.grad.cpu(), pb.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
@pytest.mark.parametrize("side", [1e-3, 1e-2])
def test_losses_match_torchvision_on_small_boxes(device, mode, side, gen):
    # Where torchvision's eps=1e-7 in the union and the enclosing area is 0.1-10% of them: the default eps makes
    # iou_loss the same function, values and gradients. eps=0 is the plain overlap (a measurably other function).
    a = torch.rand(400, 2, generator=gen, dtype=torch.float64) * 5
    a = torch.cat([a, a + side * (0.5 + torch.rand(400, 2, generator=gen, dtype=torch.float64))], 1)
    b = a + torch.randn(400, 4, generator=gen, dtype=torch.float64) * side / 4
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + side / 10)
    pa, pb = a.to(device).clone().requires_grad_(), a.clone().requires_grad_()
    out = mutualops.iou_loss(pa, b.to(device), mode, "none")
    expected = TORCHVISION_LOSS[mode](pb, b, reduction="none")
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-9, atol=1e-12)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(pa.grad.cpu(), pb.grad, rtol=1e-7, atol=1e-9)
    plain = mutualops.iou_loss(a.to(device), b.to(device), mode, "none", eps=0)
    torch.testing.assert_close(plain, 1 - mutualops.box_iou_aligned(a.to(device), b.to(device), mode))
    assert (plain.cpu() - expected.detach()).abs().max() > 1e-5
    torch.testing.assert_close(out.detach(), reference.iou_loss(a, b, mode, "none").to(device), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "ciou", "iof"])
@pytest.mark.parametrize("eps", [0.0, 1e-7, 0.5])
def test_double_backward(device, mode, eps, gen):
    # The second derivative of the backward kernel's output, checked by finite differences of that output.
    a = random_boxes(12, generator=gen, dtype=torch.float64).to(device)
    b = (a + torch.randn(12, 4, generator=gen, dtype=torch.float64).to(device) * 5).detach()
    a.requires_grad_()
    b.requires_grad_()
    fn = (lambda x, y: mutualops.box_iou_aligned(x, y, mode)) if eps == 0 else (
        lambda x, y: mutualops.iou_loss(x, y, mode if mode != "iof" else "giou", "none", eps=eps))
    assert torch.autograd.gradgradcheck(fn, (a, b))


def test_weighted_loss(gen):
    a = random_boxes(30, generator=gen)
    b = random_boxes(30, generator=gen)
    w = torch.rand(30, generator=gen)
    plain = mutualops.iou_loss(a, b, "giou", "none")
    torch.testing.assert_close(mutualops.iou_loss(a, b, "giou", "mean", weight=w), (plain * w).mean())
    torch.testing.assert_close(mutualops.iou_loss(a, b, "giou", "sum", weight=w), (plain * w).sum())
    torch.testing.assert_close(mutualops.iou_loss(a, b, "giou", "mean", weight=w),
                               reference.iou_loss(a, b, "giou", "mean", weight=w))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: mutualops.box_iou(x[:, :3], x), ValueError, "boxes1"),
        (lambda x: mutualops.box_iou(x, x[None]), ValueError, "rank"),
        (lambda x: mutualops.box_iou(x, x[0]), ValueError, "boxes2"),
        (lambda x: mutualops.box_iou(x[None].expand(2, -1, -1), x[None]), ValueError, "batch"),
        (lambda x: mutualops.box_iou(x.bool(), x), TypeError, "boxes1"),
        (lambda x: mutualops.box_iou(x, x.to(torch.complex64)), TypeError, "boxes2"),
        (lambda x: torch.ops.mutualops.box_iou(x, x.double(), "iou"), TypeError, "dtype"),
        (lambda x: torch.ops.mutualops.box_iou_aligned(x, x.half(), "iou"), TypeError, "dtype"),
        (lambda x: torch.ops.mutualops.box_iou(x, x, "best"), ValueError, "mode"),
        (lambda x: mutualops.box_iou(x, x.to("meta")), ValueError, "device"),
        (lambda x: mutualops.box_iou(x, x, "dice"), ValueError, "mode"),
        (lambda x: mutualops.box_iou(x.tolist(), x), TypeError, "boxes1"),
        (lambda x: mutualops.box_iou_aligned(x, x[:3]), ValueError, "same shape"),
        (lambda x: mutualops.iou_loss(x, x, "iof"), ValueError, "mode"),
        (lambda x: mutualops.iou_loss(x, x, reduction="avg"), ValueError, "reduction"),
        (lambda x: mutualops.iou_loss(x, x, weight=torch.ones(3)), ValueError, "weight"),
        (lambda x: mutualops.iou_loss(x, x, eps=-1e-7), ValueError, "eps"),
        (lambda x: mutualops.iou_loss(x, x, eps=math.nan), ValueError, "eps"),
        (lambda x: mutualops.iou_loss(x, x, eps=None), TypeError, "eps"),
        (lambda x: torch.ops.mutualops.box_iou_aligned(x, x, "giou", -1.0), ValueError, "eps"),
        (lambda x: torch.ops.mutualops.box_iou_aligned_backward(x[:, 0], x, x, "giou", math.inf), ValueError, "eps"),
        (lambda x: mutualops.box_iou(x.to(torch.float8_e4m3fn), x), TypeError, "boxes1.*float16"),
        (lambda x: torch.ops.mutualops.box_iou(x.to(torch.float8_e5m2), x.to(torch.float8_e5m2), "iou"), TypeError,
         "boxes1.*float16"),
        (lambda x: mutualops.iou_loss(x, x.to(torch.float8_e5m2)), TypeError, "boxes2"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(random_boxes(5))


def test_kernel_checks_direct_calls():
    # Calls that bypass the Python wrapper still get an error, not a crash.
    x = random_boxes(5)
    with pytest.raises(ValueError, match="4 coordinates"):
        torch.ops.mutualops.box_iou(x[:, :3], x, "iou")
    with pytest.raises(ValueError, match="mode"):
        torch.ops.mutualops.box_iou(x, x, "dice")
    with pytest.raises(TypeError, match="floating-point"):
        torch.ops.mutualops.box_iou(x.long(), x.long(), "iou")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, gen):
    a = random_boxes(9, generator=gen).to(device)
    b = random_boxes(7, generator=gen).to(device)
    for mode in MODES:
        torch.library.opcheck(torch.ops.mutualops.box_iou.default, (a, b, mode))
        torch.library.opcheck(torch.ops.mutualops.box_iou.default, (a[None], b[None], mode))
        torch.library.opcheck(torch.ops.mutualops.box_iou_aligned.default,
                              (a.double().requires_grad_(), a.double().flip(0).requires_grad_(), mode))
        torch.library.opcheck(torch.ops.mutualops.box_iou_aligned_backward.default,
                              (torch.ones(9, device=device), a, a.flip(0), mode))
        torch.library.opcheck(torch.ops.mutualops.box_iou_aligned.default,
                              (a.double().requires_grad_(), a.double().flip(0).requires_grad_(), mode, 1e-7))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device, gen):
    torch._dynamo.reset()

    def fn(a, b):
        return mutualops.box_iou(a, b, "giou").amax(dim=1) + mutualops.iou_loss(a[:5], b[:5], "ciou")

    a = random_boxes(20, generator=gen).to(device)
    b = random_boxes(10, generator=gen).to(device)
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(a, b), fn(a, b))
    torch.testing.assert_close(compiled(a[:13], b[:7]), fn(a[:13], b[:7]))


def test_build_info():
    info = mutualops.build_info()
    assert info["torch_runtime"] == torch.__version__
    assert info["torch_built"].split("+")[0] == torch.__version__.split("+")[0]
    assert "cpu" in info["backends"]
    if info["cuda_built"] is not None:
        assert "cuda" in info["backends"] and info["cuda_arch_list"]


def test_mismatched_torch_gives_clear_error(monkeypatch):
    from mutualops import _build_info, _extension

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match="built against torch 1.0.0"):
        _extension.load()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "ciou", "iof"])
def test_non_finite_boxes_give_nan(device, mode):
    # The clamps and min/max once dropped a NaN and gave IoU 5 (GIoU 4.17) here; now NaN, as torchvision.
    finite = torch.tensor([[0.0, 0, 12, 20], [1, 1, 5, 5]], device=device)
    for bad in (math.nan, math.inf, -math.inf):
        odd = torch.tensor([[bad, 0, 10, 20]], device=device)
        for a, b in ((odd, finite), (finite, odd)):
            out = mutualops.box_iou(a, b, mode)
            assert out.isnan().all(), (bad, out)
            assert mutualops.box_iou_aligned(a.expand_as(b) if a.shape[0] == 1 else a,
                                             b.expand_as(a) if b.shape[0] == 1 else b, mode).isnan().all()
            torch.testing.assert_close(out, reference.box_iou(a, b, mode), equal_nan=True)
        if math.isnan(bad):  # torchvision propagates NaN (and computes on with infinities)
            assert torch.isnan(tvo.box_iou(odd.cpu(), finite.cpu())).all()
    assert mutualops.box_iou(finite, finite, mode).isfinite().all()
    if mode != "iof":
        pred = torch.tensor([[math.nan, 0, 10, 20]], device=device, requires_grad=True)
        loss = mutualops.iou_loss(pred, finite[:1], mode)
        assert loss.isnan()  # not -4 with finite gradients


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "ciou", "iof"])
def test_pairwise_box_iou_is_differentiable(device, mode, gen):
    # Once the output required grad but backward left .grad None (DETR-style matching costs need it).
    for n, m, batch in ((5, 7, None), (4, 6, 2)):
        a = random_boxes(n, batch=batch, generator=gen, dtype=torch.float64, device=device).requires_grad_()
        b = random_boxes(m, batch=batch, generator=gen, dtype=torch.float64, device=device).requires_grad_()
        if mode != "ciou":  # CIoU's trade-off weight is a constant in the gradient, as in torchvision
            assert torch.autograd.gradcheck(lambda x, y: mutualops.box_iou(x, y, mode), (a, b))
        weight = torch.rand(mutualops.box_iou(a, b, mode).shape, generator=gen, dtype=torch.float64).to(device)
        ours = torch.autograd.grad(mutualops.box_iou(a, b, mode), (a, b), weight)
        theirs = torch.autograd.grad(reference.box_iou(a, b, mode), (a, b), weight)
        for x, y in zip(ours, theirs):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "ciou"])
def test_iou_loss_is_stationary_at_the_target(device, mode, gen):
    # min/max ties split the gradient in half, as torch does: a perfect box gets no push (eps=0), or
    # torchvision's push of order eps / union with its eps (the same as torchvision's loss gives).
    target = random_boxes(6, generator=gen, dtype=torch.float64, device=device)
    pred = target.clone().requires_grad_()
    mutualops.iou_loss(pred, target, mode, eps=0).backward()
    torch.testing.assert_close(pred.grad, torch.zeros_like(pred), atol=1e-15, rtol=0)
    pred.grad = None
    mutualops.iou_loss(pred, target, mode).backward()
    if mode != "iou":
        tv_pred = target.cpu().clone().requires_grad_()
        TORCHVISION_LOSS[mode](tv_pred, target.cpu(), reduction="mean").backward()
        torch.testing.assert_close(pred.grad.cpu(), tv_pred.grad, atol=1e-15, rtol=1e-6)
    assert pred.grad.abs().max() < 1e-9
    # Shared edges only (same x range, different y): the gradient matches torch's autograd of the reference.
    other = target.clone()
    other[:, 3] += 2
    ours = torch.autograd.grad(mutualops.iou_loss(pred, other, mode, eps=0), pred)[0]
    theirs = torch.autograd.grad(reference.iou_loss(pred, other, mode), pred)[0]
    torch.testing.assert_close(ours, theirs)


def test_mixed_dtypes_compare_in_the_wider_one(gen):
    # Under autocast a float16 head output meets float32 boxes: the wrappers promote as torch would.
    a, b = random_boxes(5, generator=gen), random_boxes(6, generator=gen)
    for low in (torch.float16, torch.bfloat16):
        torch.testing.assert_close(mutualops.box_iou(a.to(low), b), mutualops.box_iou(a.to(low).float(), b))
        loss = mutualops.iou_loss(a[:5].to(low), b[:5], "giou")
        assert loss.dtype == torch.float32
    assert mutualops.box_iou(a, b.double()).dtype == torch.float64


def test_integer_boxes_as_torchvision(gen):
    a = (random_boxes(20, generator=gen) * 10).long()
    b = (random_boxes(30, generator=gen) * 10).int()
    ours = mutualops.box_iou(a, b)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, tvo.box_iou(a, b))
    with pytest.raises(TypeError, match="floating-point"):
        mutualops.box_iou(a.bool(), b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["diou", "ciou"])
@pytest.mark.parametrize("offset", [1e7, 1e9])
def test_distance_terms_keep_their_precision_far_from_the_origin(device, mode, offset, gen):
    """Nearby float32 boxes far from the origin: their DIoU/CIoU is that of the same boxes at the origin. The
    centres, as (x1 + x2) / 2, lost the low bits there (off by 0.005 at 1e7 and 0.75 at 1e9)."""
    step = 1.0 if offset < 1e8 else 64.0  # float32's spacing there: the corners themselves are exact
    near = (torch.rand(40, 4, generator=gen) * 50).round() * step
    a = torch.stack([near[:, 0], near[:, 1], near[:, 0] + 10 * step + near[:, 2], near[:, 1] + 10 * step + near[:, 3]], 1)
    b = a.roll(1, 0) + (torch.rand(40, 4, generator=gen) * 8).round() * step
    at_origin = mutualops.box_iou_aligned(a.double(), b.double(), mode=mode)
    far = mutualops.box_iou_aligned((a + offset).to(device), (b + offset).to(device), mode=mode)
    assert (a + offset - offset).equal(a) and (b + offset - offset).equal(b)
    torch.testing.assert_close(far.cpu().double(), at_origin, rtol=0, atol=2e-6)
    pairwise = mutualops.box_iou((a + offset).to(device), (b + offset).to(device), mode=mode)
    torch.testing.assert_close(pairwise.cpu().double(), mutualops.box_iou(a.double(), b.double(), mode=mode),
                               rtol=0, atol=2e-6)
