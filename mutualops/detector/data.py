"""Detection data: a synthetic shapes dataset generated from a seed, COCO export,
and any COCO-format dataset (an image folder plus an instances JSON).

Every dataset yields (image, target): image a float tensor [3, H, W] in [0, 1];
target a dict with boxes [G, 4] (xyxy, pixels), labels [G] (0-based class
indices), and ignore_boxes [I, 4] (COCO crowd regions, to be ignored by the
assigner rather than learned as objects).
"""

import contextlib
import io
import json
import logging
import math
import os
from typing import NamedTuple

import torch

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("square", "disc", "triangle", "ring", "frame", "cross")
# Discs and rings look the same at every angle: only these shapes draw one.
ROTATED_SHAPES = ("square", "triangle", "frame", "cross")


class ShapeSpec(NamedTuple):
    """One shape of a synthetic scene: its class, centre, size and rotation; crowd members are not annotated
    one by one (their region becomes an ignore box)."""

    kind: int
    cx: float
    cy: float
    width: float
    height: float
    angle: float
    in_crowd: bool
# Synthetic splits from disjoint seeds (image i of seed s is drawn from s * 1_000_003 + i): train on
# "train", choose budgets and settings on "val", report numbers measured on "test".
SPLIT_SEEDS = {"train": 0, "val": 10_000, "test": 20_000}


def _grid(h, w):
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) + 0.5
    return xs, ys


def _shape_mask(kind, xs, ys, cx, cy, w, h, angle):
    """Boolean mask of one shape of class `kind`, centred at (cx, cy), size w x h."""
    c, s = math.cos(angle), math.sin(angle)
    u = ((xs - cx) * c + (ys - cy) * s) / (w / 2)
    v = (-(xs - cx) * s + (ys - cy) * c) / (h / 2)
    if kind == "square":
        return (u.abs() <= 1) & (v.abs() <= 1)
    if kind == "disc":
        return u * u + v * v <= 1
    if kind == "triangle":
        return (v <= 1) & (v >= 2 * u.abs() - 1)
    if kind == "ring":
        r = u * u + v * v
        return (r <= 1) & (r >= 0.45)
    if kind == "frame":
        return (u.abs() <= 1) & (v.abs() <= 1) & ((u.abs() >= 0.6) | (v.abs() >= 0.6))
    if kind == "cross":
        return ((u.abs() <= 1) & (v.abs() <= 0.3)) | ((u.abs() <= 0.3) & (v.abs() <= 1))
    raise ValueError(f"unknown shape {kind!r}")


class ShapesDataset(torch.utils.data.Dataset):
    """Filled and outlined shapes of several classes, sizes, aspect ratios,
    colours and textures, with occlusion and crowded scenes. Image i is a pure
    function of (seed, i): the same on every run and machine, cheap to make on
    the fly.

    An object's box is the extent of its visible pixels; objects less than
    `min_visible` visible after occlusion are dropped. With `crowd_prob`, a
    scene may hold a crowd: a tight cluster of small shapes annotated as one
    ignore region, as COCO does.
    """

    classes = SHAPE_CLASSES

    def __init__(self, num_images=1000, image_size=(128, 128), seed=0, objects=(1, 12), size_range=(10, 56),
                 min_visible=0.35, crowd_prob=0.1):
        self.num_images = num_images
        self.image_size = tuple(image_size)
        self.seed = seed
        self.objects = objects
        self.size_range = size_range
        self.min_visible = min_visible
        self.crowd_prob = crowd_prob

    def __len__(self):
        return self.num_images

    def __getitem__(self, index):
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        # Every random draw comes from this generator, in this order: the images depend on it.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        h, w = self.image_size
        xs, ys = _grid(h, w)
        image = self._background(g, ys)
        specs = self._objects(g)
        crowd = self._crowd(g, specs)
        image, owner = self._paint(g, image, specs, xs, ys)
        boxes, labels = self._visible_objects(specs, owner, xs, ys)
        ignore = self._crowd_region(specs, owner) if crowd else []
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long),
            "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
            "image_id": index,
        }
        return image.clamp(0, 1), target

    def _background(self, g, ys):
        """A smooth colour gradient plus a little noise."""
        h, w = self.image_size
        corner = torch.rand(2, 3, generator=g)
        t = (ys / h)[None]
        image = corner[0][:, None, None] * (1 - t) + corner[1][:, None, None] * t
        return (image * 0.6 + torch.rand(3, h, w, generator=g) * 0.15).clamp(0, 1)

    def _objects(self, g):
        """The scene's annotated shapes."""
        h, w = self.image_size
        specs = []
        count = int(torch.randint(self.objects[0], self.objects[1] + 1, (1,), generator=g))
        for _ in range(count):
            kind = int(torch.randint(0, len(self.classes), (1,), generator=g))
            size = self.size_range[0] + _uniform(g) * (self.size_range[1] - self.size_range[0])
            aspect = math.exp((_uniform(g) - 0.5) * 1.2)
            cx, cy = _uniform(g) * w, _uniform(g) * h
            angle = _uniform(g) * math.pi if self.classes[kind] in ROTATED_SHAPES else 0.0
            specs.append(ShapeSpec(kind, cx, cy, size * aspect, size / aspect, angle, in_crowd=False))
        return specs

    def _crowd(self, g, specs):
        """With probability crowd_prob, a tight cluster of small shapes appended to specs; whether there is one."""
        h, w = self.image_size
        if _uniform(g) >= self.crowd_prob:
            return False
        cx, cy = _uniform(g) * w, _uniform(g) * h
        spread = min(h, w) * 0.12
        for _ in range(int(torch.randint(6, 14, (1,), generator=g))):
            kind = int(torch.randint(0, len(self.classes), (1,), generator=g))
            size = 4 + _uniform(g) * 5
            x, y = cx + (_uniform(g) - 0.5) * 2 * spread, cy + (_uniform(g) - 0.5) * 2 * spread
            specs.append(ShapeSpec(kind, x, y, size, size, 0.0, in_crowd=True))
        return True

    def _mask(self, spec, xs, ys):
        return _shape_mask(self.classes[spec.kind], xs, ys, spec.cx, spec.cy, spec.width, spec.height, spec.angle)

    def _paint(self, g, image, specs, xs, ys):
        """(the image with the shapes painted in order, later ones on top; owner: the shape each pixel shows)."""
        h, w = self.image_size
        owner = torch.full((h, w), -1, dtype=torch.long)
        for obj, spec in enumerate(specs):
            mask = self._mask(spec, xs, ys)
            colour = torch.rand(3, generator=g)
            if _uniform(g) < 0.4:  # striped texture
                period = 3 + _uniform(g) * 5
                stripes = (torch.sin((xs + ys) * (2 * math.pi / period)) > 0).float()
                texture = colour[:, None, None] * (0.7 + 0.3 * stripes)[None]
            else:
                texture = colour[:, None, None].expand(3, h, w)
            image = torch.where(mask[None], texture, image)
            owner[mask] = obj
        return image, owner

    def _visible_objects(self, specs, owner, xs, ys):
        """(boxes, labels) of the shapes outside crowds that stay at least min_visible visible: each box is
        the extent of the visible pixels."""
        boxes, labels = [], []
        for obj, spec in enumerate(specs):
            if spec.in_crowd:
                continue
            full = int(self._mask(spec, xs, ys).sum())
            visible = owner == obj
            if full == 0 or int(visible.sum()) < self.min_visible * full:
                continue
            boxes.append(_extent(visible))
            labels.append(spec.kind)
        return boxes, labels

    @staticmethod
    def _crowd_region(specs, owner):
        """The ignore box over the crowd's visible pixels (none when other shapes hide them all)."""
        members = torch.zeros_like(owner, dtype=torch.bool)
        for obj, spec in enumerate(specs):
            if spec.in_crowd:
                members |= owner == obj
        return [_extent(members)] if members.any() else []


def _uniform(g):
    return float(torch.rand(1, generator=g))


def _extent(mask):
    """[x1, y1, x2, y2] of a mask's pixels, each pixel a unit square."""
    vy, vx = torch.nonzero(mask, as_tuple=True)
    return [float(vx.min()), float(vy.min()), float(vx.max()) + 1, float(vy.max()) + 1]


def coco_dict(dataset, indices=None, image_dir=None):
    """The dataset's annotations as a COCO dict (xywh boxes, 1-based category ids,
    ignore regions as iscrowd=1). With image_dir, the images are written there as PNG."""
    images, annotations = [], []
    classes = getattr(dataset, "classes", None)
    for i in indices if indices is not None else range(len(dataset)):
        image, target = dataset[i]
        image_id = int(target.get("image_id", i))
        name = f"{image_id:06d}.png"
        if image_dir is not None:
            from PIL import Image

            array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(array).save(os.path.join(image_dir, name))
        images.append({"id": image_id, "file_name": name, "height": image.shape[1], "width": image.shape[2]})
        rows = [(b, int(lab) + 1, 0) for b, lab in zip(target["boxes"].tolist(), target["labels"].tolist())]
        rows += [(b, 1, 1) for b in target["ignore_boxes"].tolist()]
        for box, category, crowd in rows:
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": crowd})
    names = classes or [str(c) for c in range(max((a["category_id"] for a in annotations), default=0))]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def export_coco(dataset, out_dir, indices=None):
    """Writes the dataset as COCO: out_dir/images/*.png and out_dir/instances.json.
    Returns the JSON path."""
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    path = os.path.join(out_dir, "instances.json")
    with open(path, "w") as f:
        json.dump(coco_dict(dataset, indices, image_dir), f)
    return path


class DatasetError(ValueError):
    """A data set's files are missing or malformed: the user's to fix, so the
    CLIs report it in one line rather than as a bug's traceback."""


COCO_FIELDS = {"images": ("id", "file_name", "height", "width"), "categories": ("id", "name"),
               "annotations": ("id", "image_id", "category_id", "bbox")}


def read_json(path, what):
    """The JSON value in the file at path; a missing, unreadable or malformed file is a DatasetError that names
    `what` it should hold and the path."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise DatasetError(f"cannot read {what} {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise DatasetError(f"{what} {path} is not valid JSON: {e}") from e


def read_coco_annotations(path):
    """The instances JSON at path, checked for everything the loader, the trainer and the scorer rely on, so that
    a broken file fails at once with its name and the entry at fault, not inside some batch or after a whole
    inference pass. Ids, widths and heights written as whole floats (640.0) become ints; a missing `area` is
    the box's, a missing `iscrowd` 0; annotations whose box has zero or negative width or height are dropped
    (with one warning) from what is trained on and what is scored alike."""
    data = read_json(path, "COCO annotations")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in COCO_FIELDS):
        raise DatasetError(f"{path} is not COCO instances JSON: it needs the lists {', '.join(COCO_FIELDS)}")
    for section, fields in COCO_FIELDS.items():
        for i, entry in enumerate(data[section]):
            if not isinstance(entry, dict) or not all(key in entry for key in fields):
                raise DatasetError(f"{path}: {section}[{i}] needs the fields {', '.join(fields)}")
            entry["id"] = _whole(entry["id"], f"{path}: {section}[{i}] has id {entry['id']!r}, not an integer")
        _check_unique_ids(data[section], section, path)
    if not data["annotations"]:
        raise DatasetError(f"{path} has an empty annotations list: nothing to learn or evaluate")
    for i, image in enumerate(data["images"]):
        _check_image_entry(image, i, path)
    _check_annotations(data, path)
    return data


FLOAT32_MAX = 3.4028234663852886e38


def _whole(value, message):
    """value as an int if it is a whole number (640 or 640.0; not a bool or a string), else DatasetError(message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise DatasetError(message)
    return int(value)


def _check_unique_ids(entries, section, path):
    first = {}
    for i, entry in enumerate(entries):
        if entry["id"] in first:
            raise DatasetError(f"{path}: {section}[{i}] and {section}[{first[entry['id']]}] share id {entry['id']} "
                               f"(two files concatenated?): each {section[:-1]} needs its own id")
        first[entry["id"]] = i


def _check_image_entry(image, i, path):
    where = f"{path}: image {image['id']}"
    for key in ("width", "height"):
        image[key] = _whole(image[key], f"{where} has {key} {image[key]!r}, not a whole number of pixels")
        if image[key] < 1:
            raise DatasetError(f"{where} has {key} {image[key]}")
    name = image["file_name"]
    if not isinstance(name, str) or not name or "\0" in name:
        raise DatasetError(f"{where} has file_name {name!r}, not a file name")
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise DatasetError(f"{where} has file_name {name!r}, which leaves the image folder: file names must be "
                           f"relative to it")


def _check_annotations(data, path):
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for ann in data["annotations"]:
        where = f"{path}: annotation {ann['id']}"
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise DatasetError(f"{where} has bbox {bbox!r}, not [x, y, width, height]")
        if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in bbox):
            raise DatasetError(f"{where} has bbox {bbox!r}: coordinates must be finite and within float32's range")
        for key in ("image_id", "category_id"):
            if isinstance(ann[key], float) and ann[key].is_integer():
                ann[key] = int(ann[key])
        if ann["category_id"] not in category_ids:
            raise DatasetError(f"{where} has category_id {ann['category_id']!r}, which is not among the categories")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{where} has image_id {ann['image_id']!r}, which is not among the images")
        crowd = ann.setdefault("iscrowd", 0)  # pycocotools' evaluation reads both
        if crowd not in (0, 1):  # True and False included
            raise DatasetError(f"{where} has iscrowd {crowd!r}: 0 or 1")
        ann["iscrowd"] = int(crowd)
        area = ann.setdefault("area", float(bbox[2] * bbox[3]))
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area) or area < 0:
            # pycocotools leaves a GT with an area outside [0, 1e10] out of every area range: it would not be
            # scored at all.
            raise DatasetError(f"{where} has area {area!r}, not a finite number >= 0")
    kept = [ann for ann in data["annotations"] if ann["bbox"][2] > 0 and ann["bbox"][3] > 0]
    if len(kept) < len(data["annotations"]):
        log.warning("%s: dropping %d of %d annotations whose box has zero or negative width or height "
                    "(from training and scoring alike)", path, len(data["annotations"]) - len(kept),
                    len(data["annotations"]))
        data["annotations"] = kept
    if not kept:
        raise DatasetError(f"{path}: every annotation has a box of zero or negative width or height")


# Pillow's modes of 16-bit grey images; "I" (32-bit) holds them too when a format widens them (values above
# 65535 are refused when the image loads). Float images ("F") have no fixed range to scale by.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
READABLE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I",
                  *SIXTEEN_BIT_MODES)


def _check_image_files(image_dir, images):
    """Every image exists inside image_dir, opens (its header only: no pixels are decoded), has the size its
    entry gives and a mode the loader can read: a broken one fails now, not hours into training."""
    if not os.path.isdir(image_dir):
        raise DatasetError(f"the image folder {image_dir} does not exist")
    missing = [im["file_name"] for im in images if not os.path.isfile(os.path.join(image_dir, im["file_name"]))]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(images)} images are missing from {image_dir}, e.g. {missing[0]}")
    for info in images:
        path = os.path.join(image_dir, info["file_name"])
        with _open_image(path) as im:
            width, height = _displayed_size(im)
            if (width, height) != (info["width"], info["height"]):
                turned = " as displayed (its EXIF orientation turns it)" if (width, height) != im.size else ""
                raise DatasetError(f"image {path} is {width}x{height}{turned} but its annotations say "
                                   f"{info['width']}x{info['height']}")
            if im.mode not in READABLE_MODES:
                raise DatasetError(f"image {path} has pixels of mode {im.mode!r} (floating point, or another type "
                                   f"without a fixed range): save it with 8 or 16 bits per channel")


# EXIF orientations 5 to 8 turn the stored pixels a quarter: the displayed image is H x W.
_QUARTER_TURNS = {5, 6, 7, 8}
_ORIENTATION = 0x0112


def _displayed_size(im):
    """(width, height) of the image as viewers, labelling tools and the loader show it: EXIF orientation
    applied."""
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: Pillow shows the stored pixels
        orientation = 1
    return (im.height, im.width) if orientation in _QUARTER_TURNS else im.size


@contextlib.contextmanager
def _open_image(path):
    """PIL's image at path, or a DatasetError naming it (a corrupt file, or more pixels than Pillow opens)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as e:
        raise DatasetError(f"image {path} is larger than Pillow opens ({e}); downscale or tile it") from e
    except OSError as e:  # PIL's error for a truncated, corrupt or unknown file
        raise DatasetError(f"cannot read image {path}: {e}") from e


def load_image(path, size=None):
    """[3, H, W] float in [0, 1] of the image at path, turned as its EXIF orientation says (as labelling tools
    show it, and as COCO annotations of phone photos are drawn): 8-bit images of any mode as RGB, 16-bit grey
    images (depth, thermal, medical, aerial) scaled by 1/65535 rather than clipped; with size=(H, W), resized
    with antialiasing, before the conversion to float so that a large image never exists at float size."""
    import numpy as np
    from PIL import Image, ImageOps

    with _open_image(path) as stored:
        try:
            im = ImageOps.exif_transpose(stored)
            if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
                grey = np.asarray(im).astype(np.float32)
                if grey.size and (grey.min() < 0 or grey.max() > 65535):
                    raise DatasetError(f"image {path} holds values outside 0..65535 (mode {im.mode!r}); "
                                       f"save it with 8 or 16 bits per channel")
                resized = Image.fromarray(grey / 65535)
                if size and resized.size != (size[1], size[0]):
                    resized = resized.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                array = np.asarray(resized)[None].repeat(3, 0)
                return torch.from_numpy(np.ascontiguousarray(array)).clamp_(0, 1)
            rgb = im.convert("RGB")
        except (OSError, ValueError) as e:  # a file that decodes badly, or a mode Pillow cannot convert
            if isinstance(e, DatasetError):
                raise
            raise DatasetError(f"cannot read image {path}: {e}") from e
    if size and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return array.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format dataset read with pycocotools. Category ids map to
    contiguous 0-based labels (in id order); crowd annotations become
    ignore_boxes; boxes of zero or negative width or height are dropped (a
    warning counts them) from training and from `coco`, the ground truth that
    evaluation scores against. With size=(H, W), images are resized to it
    (antialiased; boxes scaled alike), so that batches stack. Missing or
    malformed files raise DatasetError naming the image or annotation."""

    def __init__(self, image_dir, ann_file, size=None):
        from pycocotools.coco import COCO

        data = read_coco_annotations(ann_file)
        _check_image_files(image_dir, data["images"])
        self.image_dir = image_dir
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs.keys())
        self.category_ids = sorted(self.coco.cats.keys())
        self.label_of = {cid: k for k, cid in enumerate(self.category_ids)}
        self.classes = tuple(self.coco.cats[c]["name"] for c in self.category_ids)
        self.size = tuple(size) if size else None

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = load_image(os.path.join(self.image_dir, info["file_name"]), self.size)
        boxes, labels, ignore = [], [], []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id])):
            x, y, bw, bh = ann["bbox"]
            if ann["iscrowd"]:
                ignore.append([x, y, x + bw, y + bh])
            else:
                boxes.append([x, y, x + bw, y + bh])
                labels.append(self.label_of[ann["category_id"]])
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long),
            "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
            "image_id": image_id,
        }
        if self.size and self.size != (info["height"], info["width"]):
            scale = self._scale(image_id)
            target["boxes"] = target["boxes"] * scale
            target["ignore_boxes"] = target["ignore_boxes"] * scale
        return image, target

    def _scale(self, image_id):
        """(sx, sy, sx, sy) from the annotation file's coordinates of an image to this data set's."""
        info = self.coco.imgs[image_id]
        height, width = self.size or (info["height"], info["width"])
        sx, sy = width / info["width"], height / info["height"]
        return torch.tensor([sx, sy, sx, sy])

    def to_original(self, image_id, boxes):
        """Boxes [N, 4] (xyxy) of image `image_id` in this data set's coordinates, mapped back to the
        annotation file's, as detections must be to be scored against it."""
        return boxes / self._scale(image_id).to(boxes)


def collate(batch):
    """Stacks equally sized images; targets stay a list of per-image dicts."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
