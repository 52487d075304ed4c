"""A thin one-stage detector whose heavy lifting is mutualops' ops.

Families: "fcos" (points, FCOS assignment, (l, t, r, b) distances) and
"retinanet" (anchors, max-IoU assignment, box deltas). Each has a baseline and
a mutual variant through three independent switches (docs/method.md, section 1):

- mutual_cls: classification targets are the IoU q^gamma_cls of the decoded
  box (quality focal loss) instead of hard one-hot labels (focal loss);
- mutual_box: the GIoU loss of each positive is weighted by p^gamma_loc, the
  predicted probability of its GT class, normalised to mean 1;
- iou_rescoring: the third branch predicts the IoU (BCE on q) and inference
  ranks by cls^(1-alpha) * iou^alpha; off, FCOS's third branch is centerness
  (inference sqrt(cls * centerness)) and RetinaNet's scores are cls alone.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ..ops.assign import assign_fcos, assign_max_iou, fcos_points, mutual_targets, pad_gt
from ..ops.box_iou import iou_loss
from ..ops.nms import rescored_nms
from .._math import decode_delta, decode_distance

FAMILIES = ("fcos", "retinanet")
BACKBONES = ("small", "resnet18", "resnet34", "resnet50")


def width_multiple(backbone):
    """What the feature width must be a multiple of: GroupNorm(8, C) needs C % 8 == 0, and the small backbone's
    stem has width / 2 channels."""
    return 16 if backbone == "small" else 8


@dataclass
class DetectorConfig:
    family: str = "fcos"
    num_classes: int = 6
    backbone: str = "small"
    backbone_weights: str = ""  # a local checkpoint path; nothing is downloaded
    width: int = 64
    strides: tuple = (8, 16, 32)
    mutual_cls: bool = False
    mutual_box: bool = False
    iou_rescoring: bool = False
    gamma_cls: float = 1.0
    gamma_loc: float = 1.0
    qfl_beta: float = 2.0
    alpha: float = 0.5
    center_sampling_radius: float = 1.5
    anchor_scales: tuple = (1.0, 1.26, 1.59)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    anchor_size: float = 4.0  # anchor side = anchor_size * stride * scale
    score_threshold: float = 0.05
    nms_threshold: float = 0.6
    pre_nms_top_k: int = 1000
    max_detections: int = 100

    # Keys that checkpoints of earlier versions carry and this config no longer has (it never read them).
    RETIRED = ("extra",)

    def __post_init__(self):
        multiple = width_multiple(self.backbone)
        if isinstance(self.width, int) and (self.width < 1 or self.width % multiple):
            raise ValueError(f"width must be a positive multiple of {multiple} with the {self.backbone} backbone "
                             f"(its GroupNorm layers split the channels into 8 groups), got {self.width}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """The config of a checkpoint or a file; retired keys are dropped, so that a saved model keeps loading."""
        return cls(**{k: v for k, v in values.items() if k not in cls.RETIRED})


class SmallBackbone(nn.Module):
    """A fast CPU backbone: strided conv stages giving strides 8, 16 and 32."""

    def __init__(self, width):
        super().__init__()

        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(stage(3, width // 2), stage(width // 2, width))  # stride 4
        self.stages = nn.ModuleList([stage(width, width), stage(width, width), stage(width, width)])
        self.out_channels = width

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


class FPN(nn.Module):
    def __init__(self, in_channels, width):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        self.output = nn.ModuleList([nn.Conv2d(width, width, 3, 1, 1) for _ in in_channels])

    def forward(self, feats):
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        return [out(x) for out, x in zip(self.output, laterals)]


class ResNetBackbone(nn.Module):
    """torchvision ResNet (weights=None, or a local checkpoint) giving strides 8, 16, 32."""

    def __init__(self, name, weights_path=""):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if weights_path:
            # weights_only: a state dict needs no pickled code, and a file from elsewhere must not run any.
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=False)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layers = nn.ModuleList([net.layer2, net.layer3, net.layer4])
        expansion = 4 if name == "resnet50" else 1
        self.channels = [128 * expansion, 256 * expansion, 512 * expansion]

    def forward(self, x):
        x = self.body(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class Head(nn.Module):
    """Shared towers; outputs per level: class logits, box regression, third branch."""

    def __init__(self, width, num_classes, anchors_per_point, convs=2):
        super().__init__()

        def tower():
            layers = []
            for _ in range(convs):
                layers += [nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(8, width), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.anchors_per_point = anchors_per_point
        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.Conv2d(width, anchors_per_point * num_classes, 3, 1, 1)
        self.box = nn.Conv2d(width, anchors_per_point * 4, 3, 1, 1)
        self.quality = nn.Conv2d(width, anchors_per_point, 3, 1, 1)
        nn.init.constant_(self.cls.bias, -math.log(99.0))  # prior probability 0.01
        for conv in (self.cls, self.box, self.quality):
            nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(self.box.bias)
        nn.init.zeros_(self.quality.bias)

    def forward(self, feats):
        out = []
        for f in feats:
            c, b = self.cls_tower(f), self.box_tower(f)
            n, _, h, w = f.shape

            a = self.anchors_per_point

            def flat(x, k):  # [N, A*k, H, W] -> [N, H*W*A, k]
                return x.view(n, a, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, k)

            out.append((flat(self.cls(c), self.cls.out_channels // a), flat(self.box(b), 4),
                        flat(self.quality(b), 1)[..., 0]))
        return out


class Detector(nn.Module):
    def __init__(self, config: DetectorConfig):
        super().__init__()
        if config.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {config.family!r}")
        if config.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {config.backbone!r}")
        self.config = config
        if config.backbone == "small":
            self.backbone = SmallBackbone(config.width)
            channels = [config.width] * 3
        else:
            self.backbone = ResNetBackbone(config.backbone, config.backbone_weights)
            channels = self.backbone.channels
        self.fpn = FPN(channels, config.width)
        anchors_per_point = 1 if config.family == "fcos" else len(config.anchor_scales) * len(config.anchor_ratios)
        self.head = Head(config.width, config.num_classes, anchors_per_point)
        self.register_buffer("pixel_mean", torch.tensor([0.45, 0.45, 0.45])[:, None, None], persistent=False)

    # ---- priors ---------------------------------------------------------
    def priors(self, feature_sizes, device):
        """Points (FCOS) or anchors (RetinaNet) level by level, with per-prior
        strides, FCOS regression ranges and level indices."""
        cfg = self.config
        # Regression ranges 8x the stride apart, open at both ends of the pyramid.
        bounds = [0.0] + [s * 4.0 for s in cfg.strides[1:]] + [math.inf]
        points, stride, ranges, level = fcos_points(feature_sizes, cfg.strides, list(zip(bounds[:-1], bounds[1:])),
                                                    device=device)
        if cfg.family == "fcos":
            return {"points": points, "strides": stride, "regress_ranges": ranges, "level_index": level}
        sizes = torch.tensor([cfg.anchor_size * sc for sc in cfg.anchor_scales], device=device)
        ratios = torch.tensor(cfg.anchor_ratios, device=device).sqrt()
        wh = torch.stack([(sizes[:, None] / ratios[None, :]).reshape(-1), (sizes[:, None] * ratios[None, :]).reshape(-1)], 1)
        half = wh[None] * stride[:, None, None] / 2  # [P, A, 2]
        anchors = torch.cat([points[:, None] - half, points[:, None] + half], -1).reshape(-1, 4)
        a = wh.shape[0]
        return {"anchors": anchors, "strides": stride.repeat_interleave(a), "level_index": level.repeat_interleave(a)}

    def forward(self, images, targets=None):
        """Head outputs (cls, box, quality, priors); with targets, the loss dict
        (through forward, so that DDP's gradient hooks see it)."""
        if targets is not None:
            return self.loss(images, targets)
        return self.outputs(images)

    def outputs(self, images):
        feats = self.fpn(self.backbone(images - self.pixel_mean))
        outputs = self.head(feats)
        cls = torch.cat([o[0] for o in outputs], 1)
        box = torch.cat([o[1] for o in outputs], 1)
        quality = torch.cat([o[2] for o in outputs], 1)
        priors = self.priors([f.shape[-2:] for f in feats], images.device)
        return cls, box, quality, priors

    def decode(self, box, priors):
        """Differentiable decoding: FCOS distances in stride units (softplus), or deltas."""
        if self.config.family == "fcos":
            ltrb = F.softplus(box) * priors["strides"][None, :, None]
            return decode_distance(priors["points"], ltrb), ltrb
        return decode_delta(priors["anchors"], box), None

    # ---- training -------------------------------------------------------
    def loss(self, images, targets):
        """Losses of a batch: dict of cls, box and quality terms (and their sum)."""
        cfg = self.config
        cls, box, quality, priors = self.outputs(images)
        gt_boxes, num_gt, gt_labels = pad_gt([t["boxes"] for t in targets], None, [t["labels"] for t in targets])
        if gt_boxes.shape[1] == 0:  # no GT in the whole batch: one padding row keeps shapes valid
            gt_boxes, gt_labels = gt_boxes.new_zeros((len(targets), 1, 4)), gt_labels.new_zeros((len(targets), 1))
        ign, num_ign, _ = pad_gt([t.get("ignore_boxes", gt_boxes.new_zeros((0, 4))) for t in targets])
        decoded, ltrb = self.decode(box, priors)
        if cfg.family == "fcos":
            matched = assign_fcos(priors["points"], gt_boxes, num_gt, strides=priors["strides"],
                                  regress_ranges=priors["regress_ranges"],
                                  center_sampling_radius=cfg.center_sampling_radius)
            matched = ignore_points_in_crowds(matched, priors["points"], ign, num_ign)
            coding_priors, scale, coding = priors["points"], priors["strides"], "distance"
            box_pred = ltrb / priors["strides"][None, :, None]
        else:
            matched, _ = assign_max_iou(priors["anchors"], gt_boxes, num_gt, ignore_boxes=ign, num_ignore=num_ign)
            coding_priors, scale, coding, box_pred = priors["anchors"], None, "delta", box
        mutual = mutual_targets(matched, gt_boxes, gt_labels, box_pred, cls, coding_priors, num_gt=num_gt, scale=scale,
                                box_coding=coding, gamma_cls=cfg.gamma_cls, gamma_loc=cfg.gamma_loc)
        positive = mutual.positive
        valid = matched != -2  # ignored anchors contribute no loss
        num_pos = max(float(positive.sum()), 1.0)
        if cfg.mutual_cls:
            loss_cls = quality_focal_loss(cls[valid], mutual.cls_target[valid], cfg.qfl_beta).sum() / num_pos
        else:
            onehot = torch.zeros_like(cls)
            labels = torch.gather(gt_labels, 1, matched.clamp(min=0))
            onehot.scatter_(2, labels[..., None], positive[..., None].to(cls.dtype))
            loss_cls = sigmoid_focal_loss(cls[valid], onehot[valid]).sum() / num_pos
        gt_idx = matched.clamp(min=0)[..., None].expand(-1, -1, 4)
        gt_for = torch.gather(gt_boxes, 1, gt_idx)[positive]
        weight = mutual.box_weight[positive] if cfg.mutual_box else None
        loss_box = iou_loss(decoded[positive], gt_for, "giou", "sum", weight) / num_pos
        if cfg.iou_rescoring:
            target_q = mutual.iou_target[positive]
        elif cfg.family == "fcos":
            target_q = centerness(priors["points"].expand(len(targets), -1, -1)[positive], gt_for)
        else:
            target_q = None
        loss_q = (F.binary_cross_entropy_with_logits(quality[positive], target_q, reduction="sum") / num_pos
                  if target_q is not None else quality.sum() * 0)
        # The terms keep their graphs so that tests can check which parameters each one reaches.
        return {"loss": loss_cls + loss_box + loss_q, "cls": loss_cls, "box": loss_box, "quality": loss_q,
                "positives": num_pos}

    # ---- inference ------------------------------------------------------
    def ranking_terms(self):
        """(alpha, whether the quality branch enters the ranking score)."""
        cfg = self.config
        if cfg.iou_rescoring:
            return cfg.alpha, True
        return (0.5, True) if cfg.family == "fcos" else (0.0, False)

    def detect(self, images):
        """Fixed-shape detections (rescored_nms with fixed_shape=True: [B, K] slots, label -1 where empty, and
        counts [B]) with no host read: predict splits them per image, mutualops.export exports this very call,
        so that the two cannot drift apart."""
        return self._detect(*self.outputs(images), images.shape[-2:])[0]

    def _detect(self, cls, box, quality, priors, image_size):
        """(fixed-shape detections, decoded boxes clamped to the image) of the head's outputs."""
        decoded, _ = self.decode(box, priors)
        h, w = image_size
        decoded = torch.stack([decoded[..., 0].clamp(0, w), decoded[..., 1].clamp(0, h),
                               decoded[..., 2].clamp(0, w), decoded[..., 3].clamp(0, h)], -1)
        alpha, use_quality = self.ranking_terms()
        cfg = self.config
        det = rescored_nms(decoded, cls, quality if use_quality else None, logits=True, alpha=alpha,
                           level_index=priors["level_index"], num_levels=len(cfg.strides),
                           score_threshold=cfg.score_threshold, iou_threshold=cfg.nms_threshold,
                           pre_nms_top_k=cfg.pre_nms_top_k, max_detections=cfg.max_detections, fixed_shape=True)
        return det, decoded

    @torch.no_grad()
    def predict(self, images, raw=False):
        """Detections per image (boxes, scores, labels), or with raw=True also every
        prior's pre-NMS decoded box and ranking score per class, [B, P, 4] and
        [B, P, C] (for the harmony metric)."""
        cls, box, quality, priors = self.outputs(images)
        det, decoded = self._detect(cls, box, quality, priors, images.shape[-2:])
        out = [{"boxes": det.boxes[b, :n], "scores": det.scores[b, :n], "labels": det.labels[b, :n]}
               for b, n in enumerate(det.counts.tolist())]
        if not raw:
            return out
        alpha, use_quality = self.ranking_terms()
        p = torch.sigmoid(cls)
        q = torch.sigmoid(quality) if use_quality else torch.ones_like(quality)
        return out, {"boxes": decoded, "class_scores": p ** (1 - alpha) * q[..., None] ** alpha}


def quality_focal_loss(logits, soft_targets, beta=2.0):
    """GFL's quality focal loss: BCE towards a soft target, scaled by |target - p|^beta."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none")
    return ce * (soft_targets - p).abs() ** beta


def ignore_points_in_crowds(matched, points, crowd_boxes, num_crowd):
    """FCOS's counterpart of the max-IoU assigner's crowd rule (docs/method.md, section 1): a
    background point strictly inside a crowd box is ignored (-2), not trained as background; a
    point assigned to a real object stays positive. [B, P] x [P, 2] x [B, K, 4] -> [B, P]."""
    if crowd_boxes.shape[1] == 0:
        return matched
    x, y = points[None, :, None, 0], points[None, :, None, 1]
    box = crowd_boxes[:, None]  # [B, 1, K, 4]
    real = torch.arange(crowd_boxes.shape[1], device=matched.device)[None, None] < num_crowd[:, None, None]
    inside = (x > box[..., 0]) & (y > box[..., 1]) & (x < box[..., 2]) & (y < box[..., 3]) & real
    return torch.where((matched == -1) & inside.any(dim=2), torch.full_like(matched, -2), matched)


def centerness(points, gt):
    left, top = points[:, 0] - gt[:, 0], points[:, 1] - gt[:, 1]
    right, bottom = gt[:, 2] - points[:, 0], gt[:, 3] - points[:, 1]
    lr = torch.stack([left, right], 1).clamp(min=1e-6)
    tb = torch.stack([top, bottom], 1).clamp(min=1e-6)
    return torch.sqrt(lr.min(1).values / lr.max(1).values * tb.min(1).values / tb.max(1).values)
