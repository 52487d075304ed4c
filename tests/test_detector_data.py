import json

import pytest
import torch

from mutualops.detector.data import CocoDetection, DatasetError, ShapesDataset, collate, export_coco

pytest.importorskip("pycocotools", reason="COCO-format data is read with pycocotools")


def test_shapes_are_deterministic_and_well_formed():
    ds = ShapesDataset(12, image_size=(96, 128), seed=7, crowd_prob=0.5)
    other = ShapesDataset(12, image_size=(96, 128), seed=8, crowd_prob=0.5)
    objects = 0
    for i in range(len(ds)):
        image, target = ds[i]
        again, target_again = ds[i]
        assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])
        assert image.shape == (3, 96, 128) and 0 <= image.min() and image.max() <= 1
        boxes = target["boxes"]
        assert boxes.shape[0] == target["labels"].shape[0]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        assert ((target["labels"] >= 0) & (target["labels"] < len(ds.classes))).all()
        objects += boxes.shape[0]
    assert objects > 30
    assert not torch.equal(ds[0][0], other[0][0])
    assert any(ds[i][1]["ignore_boxes"].shape[0] for i in range(len(ds)))  # some crowds
    with pytest.raises(IndexError):
        ds[12]


def test_coco_export_and_reload_round_trip(tmp_path):
    ds = ShapesDataset(8, seed=1, crowd_prob=0.5)
    path = export_coco(ds, str(tmp_path))
    with open(path) as f:
        coco = json.load(f)
    assert len(coco["images"]) == 8 and [c["name"] for c in coco["categories"]] == list(ds.classes)
    loaded = CocoDetection(str(tmp_path / "images"), path)
    assert loaded.classes == ds.classes and len(loaded) == 8
    for i in range(8):
        image, target = loaded[i]
        expected_image, expected = ds[i]
        for key in ("boxes", "labels", "ignore_boxes"):
            assert torch.equal(target[key], expected[key]), key
        assert (image - expected_image).abs().max() <= 0.5 / 255 + 1e-6  # PNG stores 8 bits


def test_coco_crowd_and_degenerate_annotations(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    ann = {
        "images": [{"id": 5, "file_name": "a.png", "height": 30, "width": 40}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 9, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [4, 4, 0, 6], "area": 0, "iscrowd": 0},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    ds = CocoDetection(str(tmp_path / "images"), str(tmp_path / "instances.json"))
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and target["image_id"] == 5
    assert target["boxes"].tolist() == [[1.0, 2.0, 11.0, 7.0]] and target["labels"].tolist() == [1]
    assert target["ignore_boxes"].tolist() == [[0.0, 0.0, 20.0, 20.0]]
    images, targets = collate([ds[0], ds[0]])
    assert images.shape == (2, 3, 30, 40) and len(targets) == 2


def write_single_image_coco(tmp_path, image):
    (tmp_path / "images").mkdir()
    image.save(tmp_path / "images" / "a.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "height": image.height, "width": image.width}],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8]}]}
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    return str(tmp_path / "images"), str(tmp_path / "instances.json")


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (depth, thermal, medical) loads as its values / 65535 in all three channels; through
    Pillow's RGB conversion it came out all white."""
    import numpy as np
    from PIL import Image

    values = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40)  # up to 61400
    images, ann = write_single_image_coco(tmp_path, Image.fromarray(values))
    image, _ = CocoDetection(images, ann)[0]
    expected = torch.from_numpy(values.astype(np.float32) / 65535)
    assert image.shape == (3, 32, 48)
    for channel in image:
        torch.testing.assert_close(channel, expected, rtol=0, atol=1e-6)


def test_downscaling_is_antialiased(tmp_path):
    """A one-pixel checkerboard shrunk 8 times is mid-grey everywhere, not a sample of its pixels."""
    import numpy as np
    from PIL import Image

    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    images, ann = write_single_image_coco(tmp_path, Image.fromarray(board).convert("RGB"))
    image, target = CocoDetection(images, ann, size=(32, 32))[0]
    assert image.shape == (3, 32, 32) and (image - 0.5).abs().max() < 0.02
    assert target["boxes"].tolist() == [[0.25, 0.25, 1.25, 1.25]]


def test_coco_fields_are_normalised(tmp_path):
    from PIL import Image

    images, ann = write_single_image_coco(tmp_path, Image.new("RGB", (16, 12)))
    data = json.loads(open(ann).read())
    data["images"][0].update(id=1.0, width=16.0, height=12.0)
    data["annotations"][0]["image_id"] = 1.0
    with open(ann, "w") as f:
        json.dump(data, f)
    dataset = CocoDetection(images, ann)
    [entry] = dataset.coco.dataset["annotations"]
    assert entry["area"] == 64.0 and entry["iscrowd"] == 0 and entry["image_id"] == 1
    assert dataset.ids == [1] and isinstance(dataset.ids[0], int)


def test_exif_orientation_is_applied_as_labelling_tools_show_it(tmp_path):
    """A photo stored sideways with EXIF orientation 6 (a phone held upright) is annotated as displayed: the
    loader turns it, so that the box holds the object, and the size check compares the displayed size."""
    import numpy as np
    from PIL import Image

    displayed = np.zeros((48, 64, 3), np.uint8)  # H x W as shown
    displayed[10:20, 30:50] = 255  # the object: x 30..50, y 10..20
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)  # what orientation 6 turns back
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    stored.save(tmp_path / "images" / "a.png", exif=exif)
    assert stored.size == (48, 64)
    ann = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 10, 20, 10]}]}
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    image, target = CocoDetection(str(tmp_path / "images"), str(tmp_path / "instances.json"))[0]
    assert image.shape == (3, 48, 64)
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
    assert image[:, y1:y2, x1:x2].min() == 1.0 and image.sum() == 3 * 20 * 10
    ann["images"][0].update(height=64, width=48)  # the stored size: not what the annotations were drawn on
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match=r"is 64x48 as displayed \(its EXIF orientation turns it\)"):
        CocoDetection(str(tmp_path / "images"), str(tmp_path / "instances.json"))
