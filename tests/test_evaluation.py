"""What evaluate reports: the harmony metric as docs/method.md section 1 defines it
(every pre-NMS prediction, no score filter, GT-class scores), paired harmony, and COCO
AP against the user's own annotation file."""

import json
import math

import pytest
import torch

from mutualops import metrics
from mutualops.detector.data import CocoDetection, ShapesDataset
from mutualops.detector.model import DetectorConfig
from mutualops.detector.evaluate import HARMONY_MIN_SIZE, evaluate, harmony_candidates

pytest.importorskip("pycocotools", reason="evaluation uses pycocotools")


# ---- the harmony metric -------------------------------------------------------------------------------------

def test_candidates_are_every_prediction_on_an_object_whatever_its_score():
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([2, 0])}
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 10.0], [20.0, 20.0, 29.0, 29.0], [50.0, 50, 60, 60]])
    class_scores = torch.full((4, 3), 0.001)
    class_scores[0, 2], class_scores[0, 1] = 0.01, 0.9  # best class 1, GT class 2
    scores, ious, ids = harmony_candidates(boxes, class_scores, gt, object_offset=7)
    assert ids.tolist() == [7, 7, 8]  # far below any score threshold, and the box on no object is out
    assert scores.tolist() == pytest.approx([0.01, 0.001, 0.001])  # the GT class's score, not the best class's
    assert ious.tolist() == pytest.approx([1.0, 0.9, 0.81])


def harmony_of(rho_by_object, count=6):
    """A Harmony whose per-object rho is given (NaN: the object is not covered)."""
    scores, ious, ids = [], [], []
    for j, rho in enumerate(rho_by_object):
        if math.isnan(rho):
            continue
        base = torch.arange(count, dtype=torch.float64)
        ious.append(base)
        scores.append(base if rho > 0 else -base)
        ids.append(torch.full((count,), j))
    return metrics.harmony(torch.cat(scores), torch.cat(ious), torch.cat(ids), min_size=HARMONY_MIN_SIZE,
                           num_ids=len(rho_by_object))


def test_paired_harmony_is_over_the_objects_both_models_cover():
    a = harmony_of([1.0, -1.0, 1.0, float("nan")])
    b = harmony_of([1.0, 1.0, float("nan"), 1.0])
    p = metrics.paired_harmony(a, b)
    assert p.num_objects == 2 and p.difference == 1.0  # objects 0 and 1: (1 - 1 + 1 + 1) / 2
    assert (p.harmony_a, p.harmony_b) == (0.0, 1.0) and p.low <= p.difference <= p.high and p.level == 0.95


def test_objects_below_the_minimum_are_left_out_on_both_sides():
    ids = torch.tensor([0] * 6 + [1] * 3)
    ious = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = metrics.harmony(ious, ious, ids, min_size=HARMONY_MIN_SIZE)
    assert a.num_objects == 1 and torch.isnan(a.per_object[1])  # object 1 has 3 < 5 predictions
    assert metrics.paired_harmony(a, a).num_objects == 1
    with pytest.raises(ValueError, match="one min_size"):
        metrics.paired_harmony(a, metrics.harmony(ious, ious, ids, min_size=2))
    with pytest.raises(ValueError, match="same objects"):
        metrics.paired_harmony(a, metrics.harmony(ious, ious, ids, min_size=HARMONY_MIN_SIZE, num_ids=5))


def test_the_paired_interval_excludes_zero_only_for_a_real_difference():
    gen = torch.Generator().manual_seed(1)
    ids = torch.arange(200).repeat_interleave(8)
    ious = torch.rand(1600, generator=gen, dtype=torch.float64)
    noisy = metrics.harmony(ious + torch.rand(1600, generator=gen, dtype=torch.float64), ious, ids, min_size=5)
    noisier = metrics.harmony(ious + 3 * torch.rand(1600, generator=gen, dtype=torch.float64), ious, ids, min_size=5)
    other = metrics.harmony(ious + torch.rand(1600, generator=gen, dtype=torch.float64), ious, ids, min_size=5)
    better = metrics.paired_harmony(noisier, noisy)
    assert better.low > 0
    same = metrics.paired_harmony(noisy, other)
    assert same.low < 0 < same.high
    assert metrics.paired_harmony(noisier, noisy) == better  # a fixed seed: the interval repeats


# ---- COCO evaluation against the original annotations ----------------------------------------------------

class GroundTruthDetector:
    """Stands in for a detector: it detects each image's annotated objects (score 0.5) and, with a higher
    score, each crowd region in `crowd_labels` (one detection per label), in the data set's coordinates."""

    def __init__(self, dataset, crowd_labels):
        self.config = DetectorConfig(num_classes=len(dataset.classes))
        self.targets = iter([dataset[i][1] for i in range(len(dataset))])
        self.crowd_labels = crowd_labels

    def eval(self):
        return self

    def predict(self, images, raw=False):
        detections = [self.detections(next(self.targets)) for _ in range(images.shape[0])]
        boxes = [d["boxes"] for d in detections]
        return detections, {"boxes": boxes, "class_scores": [torch.ones(b.shape[0], self.config.num_classes) for b in boxes]}

    def detections(self, target):
        crowd = target["ignore_boxes"].repeat_interleave(len(self.crowd_labels), 0)
        crowd_labels = torch.tensor(self.crowd_labels, dtype=torch.long).repeat(target["ignore_boxes"].shape[0])
        return {"boxes": torch.cat([target["boxes"], crowd]), "labels": torch.cat([target["labels"], crowd_labels]),
                "scores": torch.cat([torch.full((target["boxes"].shape[0],), 0.5), torch.full((crowd.shape[0],), 0.9)])}


def write_coco(folder):
    """Two images of other sizes than the evaluation's, categories 3, 7 and 12, a crowd region of category 7,
    and annotation areas (as from masks) that are all small although every box is medium-sized."""
    from PIL import Image

    (folder / "images").mkdir()
    images = [{"id": 41, "file_name": "a.png", "width": 100, "height": 90},
              {"id": 7, "file_name": "b.png", "width": 120, "height": 80}]
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (90, 120, 30)).save(folder / "images" / im["file_name"])
    rows = [(41, 3, [5, 6, 40, 35], 0), (41, 12, [50, 40, 45, 45], 0), (41, 7, [10, 50, 38, 36], 1),
            (7, 7, [60, 10, 50, 40], 0), (7, 3, [2, 30, 42, 44], 0)]
    annotations = [{"id": 100 + k, "image_id": image, "category_id": category, "bbox": bbox,
                    "area": 0.4 * bbox[2] * bbox[3] if not crowd else 900.0, "iscrowd": crowd}
                   for k, (image, category, bbox, crowd) in enumerate(rows)]
    categories = [{"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}, {"id": 12, "name": "c12"}]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(folder / "images"), str(path)


def test_ground_truth_as_detections_scores_ap_1_against_the_original_annotations(tmp_path):
    images, ann = write_coco(tmp_path)
    dataset = CocoDetection(images, ann, size=(64, 64))
    assert dataset.category_ids == [3, 7, 12]
    crowd_label = dataset.category_ids.index(7)
    result, _ = evaluate(GroundTruthDetector(dataset, [crowd_label]), dataset, batch_size=2)
    # AP 1 needs the original image and category ids, boxes mapped back from 64x64 to each image's size, and
    # the crowd region ignored in its category (its detections outscore every true one).
    assert result["AP"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(1.0)
    # The annotations' own areas are all below 32^2: every object is small, none medium or large, so those
    # ranges have no objects and are not available (COCO's -1), where box areas would make them medium.
    assert result["APs"] == pytest.approx(1.0) and result["APm"] is None and result["APl"] is None


def test_a_crowd_region_counts_only_in_its_own_category(tmp_path):
    images, ann = write_coco(tmp_path)
    dataset = CocoDetection(images, ann, size=(64, 64))
    result, _ = evaluate(GroundTruthDetector(dataset, [dataset.category_ids.index(3)]), dataset, batch_size=2)
    assert result["AP"] < 0.9  # the crowd's detection in category 3 is a false positive there


def test_ground_truth_as_detections_scores_ap_1_on_synthetic_data_with_crowds():
    dataset = ShapesDataset(12, image_size=(64, 64), seed=3, crowd_prob=0.6)
    assert sum(dataset[i][1]["ignore_boxes"].shape[0] for i in range(12)) > 0
    result, details = evaluate(GroundTruthDetector(dataset, list(range(6))), dataset, batch_size=5)
    assert result["AP"] == pytest.approx(1.0) and result["AP50"] == pytest.approx(1.0)
    assert result["objects_total"] == sum(dataset[i][1]["boxes"].shape[0] for i in range(12))
    assert result["objects"] == 0 and details["harmony"].min_size == HARMONY_MIN_SIZE  # one prediction per object


def test_no_detections_is_ap_0_where_there_are_objects(tmp_path):
    images, ann = write_coco(tmp_path)
    dataset = CocoDetection(images, ann, size=(64, 64))

    class Blind(GroundTruthDetector):
        def detections(self, target):
            return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}

    result, _ = evaluate(Blind(dataset, []), dataset, batch_size=2)
    assert (result["AP"], result["APs"], result["APm"]) == (0.0, 0.0, None)


def test_dropped_annotations_are_not_scored_either(tmp_path):
    """An annotation the loader drops (a box of zero width) is not in the ground truth AP is scored against:
    detecting every object the model can see scores AP 1 (0.972 while the dropped one stayed there)."""
    images, ann = write_coco(tmp_path)
    data = json.loads(open(ann).read())
    data["annotations"].append({"id": 999, "image_id": 41, "category_id": 12, "bbox": [70, 5, 0, 20], "area": 0,
                                "iscrowd": 0})
    with open(ann, "w") as f:
        json.dump(data, f)
    dataset = CocoDetection(images, ann, size=(64, 64))
    assert 999 not in dataset.coco.anns
    result, _ = evaluate(GroundTruthDetector(dataset, [dataset.category_ids.index(7)]), dataset, batch_size=2)
    assert result["AP"] == pytest.approx(1.0)
