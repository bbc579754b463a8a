"""COCO-style JSON datasets (`data.kind: coco`), as COCO itself, CVAT, Roboflow and
Label Studio export them.

Layouts, tried in this order (`<split>` is data.train_split or data.val_split):

    root/annotations/{instances,stuff}_<split>[2017].json   one file per split; images
        in root/images/, root/<split>/, root/<split>2017/ or root/images/<split>/
    root/<split>/_annotations.coco.json                      Roboflow: one file per split,
        images beside it (val also finds Roboflow's valid/)
    root/annotations/instances_default.json (CVAT), root/result.json (Label Studio),
    root/_annotations.coco.json, or the only .json file in root/annotations/
        one file for everything, split into train and val by data.val_fraction (seeded);
        images in root/images/, root/images/default/ or root/

An image's `file_name` is looked up in those folders, then its base name.

Classes: the file's `categories` in file order are classes 1, 2, ...; class 0 is
"background", unless a category is named background (stripped, case-folded),
which then takes class 0 and the others keep their order.

Labels are rasterised by pycocotools (polygons, uncompressed and compressed
RLE) when an item is read. Pixels no annotation covers are background. Where
annotations overlap, the smaller one (fewer pixels) wins, so that small objects
on large ones survive; of two the same size, the later in the file wins.
Crowd regions (`iscrowd` 1) become the ignore label 255 with data.coco_crowd
"ignore" (the default) and lie below every other annotation, or count as
ordinary annotations of their category with "class".

Every annotation is checked when the split is opened (its image and category
exist, polygons have 3 or more points inside the image, an RLE's size is its
image's and its counts cover it exactly); images are checked against the
JSON's width and height when read.
"""

import os
import sys

import numpy as np
from pycocotools import mask as coco_mask

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.data import image_files, splits
from fcn_graph.data.annotations import (
    check_class_names,
    is_count,
    is_number,
    normal_class_name,
    read_json,
)
from fcn_graph.data.splits import ImageFileError, LabelFileError, SplitFiles

_EXPECTED = "a COCO JSON file with images, annotations and categories"
_SINGLE_FILES = (os.path.join("annotations", "instances_default.json"), "result.json",
                 "_annotations.coco.json", "annotations.json")
_ROBOFLOW = "_annotations.coco.json"
_ROBOFLOW_ALIASES = {"val": "valid", "valid": "val"}


def find_layout(root, split):
    """(JSON path, image folders, single file?) of `split` of the COCO dataset at `root`."""
    notes = os.path.join(root, "annotations")
    for prefix in ("instances", "stuff"):
        for name in (f"{prefix}_{split}.json", f"{prefix}_{split}2017.json"):
            path = os.path.join(notes, name)
            if os.path.lexists(path):
                dirs = [os.path.join(root, "images"), os.path.join(root, split),
                        os.path.join(root, f"{split}2017"),
                        os.path.join(root, "images", split), root]
                return path, dirs, False
    for name in (split, _ROBOFLOW_ALIASES.get(split)):
        if name and os.path.lexists(os.path.join(root, name, _ROBOFLOW)):
            return os.path.join(root, name, _ROBOFLOW), [os.path.join(root, name)], False
    singles = [os.path.join(root, name) for name in _SINGLE_FILES]
    if os.path.isdir(notes):
        found = sorted(n for n in os.listdir(notes) if n.endswith(".json"))
        if len(found) == 1:
            singles.append(os.path.join(notes, found[0]))
    for path in singles:
        if os.path.lexists(path):
            dirs = [os.path.join(root, "images"), os.path.join(root, "images", "default"), root]
            return path, dirs, True
    raise UserError(
        f"{root}: no COCO annotations for split {split!r} (data.kind coco): looked for "
        f"annotations/instances_{split}.json, {split}/{_ROBOFLOW}, and one file for every "
        f"split ({', '.join(_SINGLE_FILES)} or the only .json in annotations/)")


def class_names_of(categories, path):
    """(class names, {category id: class id}) of a COCO `categories` list."""
    names, ids = ["background"], {}
    has_background = any(normal_class_name(c["name"]) == "background" for c in categories)
    if has_background:
        names = []
        background = next(c for c in categories if normal_class_name(c["name"]) == "background")
        names.append(background["name"].strip())
        ids[background["id"]] = 0
    for category in categories:
        if category["id"] in ids:
            continue
        ids[category["id"]] = len(names)
        names.append(category["name"].strip())
    check_class_names(names, f"{path}: categories")
    return tuple(names), ids


def open_split(root, split, *, seed=0, val_fraction=0.1, crowd="ignore"):
    """List and check `split` of the COCO dataset at `root` (see the module doc)."""
    path, image_dirs, single = find_layout(root, split)
    data = read_json(path, _EXPECTED)
    images, annotations, categories = _parse(data, path)
    names, class_of = class_names_of(categories, path)
    records = {}
    for image in images.values():
        records[image["id"]] = {"image": image, "annotations": []}
    for index, ann in enumerate(annotations):
        _check_annotation(ann, index, path, images, class_of)
        records[ann["image_id"]]["annotations"].append(ann)
    keys = sorted(records)
    if single:
        keys = splits.seeded_split(keys, split, seed, val_fraction, path)
    if not keys:
        raise UserError(f"{path}: no images in split {split!r}")
    image_paths, refs, items = [], [], {}
    for key in keys:
        record = records[key]
        image_paths.append(_image_file(record["image"], image_dirs, path))
        ref = f"{path}#{key}"
        refs.append(ref)
        items[ref] = record
    reader = CocoReader(path, items, class_of, crowd)
    crowds = sum(bool(ann.get("iscrowd", 0)) for key in keys
                 for ann in records[key]["annotations"])
    if crowds and crowd == "ignore":
        reader.warnings.append(
            f"{path}: split {split!r}: {crowds} crowd annotation(s) (iscrowd 1) become the "
            f"ignore label; CVAT exports its brush masks as crowd regions: set "
            f"data.coco_crowd to class to train on them")
        print(f"note: {reader.warnings[-1]}", file=sys.stderr)
    return SplitFiles("coco", split, tuple(image_paths), tuple(refs), names, reader=reader)


def _parse(data, path):
    """(images by id, annotations, categories) of a COCO file, checked for shape."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({_EXPECTED}), found "
                        f"{type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: {key}: expected a list ({_EXPECTED}), found "
                            f"{'nothing' if key not in data else type(data[key]).__name__}")
    images = {}
    for index, image in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) \
                or isinstance(image.get("id"), bool):
            raise UserError(f"{where}: expected an object with an integer id")
        if not isinstance(image.get("file_name"), str) or not image["file_name"].strip():
            raise UserError(f"{where} (id {image['id']}): expected a file_name")
        for key in ("width", "height"):
            if not (is_count(image.get(key)) and image[key] > 0):
                raise UserError(f"{where} (id {image['id']}, {image['file_name']}): {key}: "
                                f"expected a positive integer, found {image.get(key)!r}")
        if image["id"] in images:
            raise UserError(f"{where}: image id {image['id']} appears twice")
        images[image["id"]] = image
    categories, seen = data["categories"], set()
    for index, category in enumerate(categories):
        where = f"{path}: categories[{index}]"
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) \
                or isinstance(category.get("id"), bool):
            raise UserError(f"{where}: expected an object with an integer id")
        if not isinstance(category.get("name"), str):
            raise UserError(f"{where} (id {category['id']}): expected a name")
        if category["id"] in seen:
            raise UserError(f"{where}: category id {category['id']} appears twice")
        seen.add(category["id"])
    if not categories:
        raise UserError(f"{path}: categories: empty; expected at least one category")
    return images, data["annotations"], categories


def _check_annotation(ann, index, path, images, class_of):
    """Raise UserError naming the file and the annotation when it cannot be rasterised."""
    if not isinstance(ann, dict):
        raise UserError(f"{path}: annotations[{index}]: expected an object")
    where = f"{path}: annotation {ann.get('id', f'[{index}]')}"
    image = images.get(ann.get("image_id"))
    if image is None:
        raise UserError(f"{where}: image_id {ann.get('image_id')!r} is not in images")
    if ann.get("category_id") not in class_of:
        raise UserError(f"{where}: category_id {ann.get('category_id')!r} is not in "
                        f"categories (ids {sorted(class_of)[:10]})")
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), bool):
        raise UserError(f"{where}: iscrowd: expected 0 or 1, found {ann.get('iscrowd')!r}")
    height, width = image["height"], image["width"]
    where = f"{where} (image {image['id']}, {image['file_name']})"
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        if not segmentation:
            raise UserError(f"{where}: empty segmentation (a bounding-box-only export?); "
                            f"expected polygons or an RLE")
        for number, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
                raise UserError(f"{where}: polygon {number}: expected a list of numbers "
                                f"x1, y1, x2, y2, ...")
            if len(polygon) < 6 or len(polygon) % 2:
                raise UserError(f"{where}: polygon {number}: expected 3 or more (x, y) "
                                f"points, found {len(polygon)} numbers")
            xs, ys = polygon[0::2], polygon[1::2]
            if min(xs) < 0 or max(xs) > width or min(ys) < 0 or max(ys) > height:
                raise UserError(f"{where}: polygon {number}: points outside the "
                                f"{width}x{height} image (x {min(xs)}..{max(xs)}, "
                                f"y {min(ys)}..{max(ys)})")
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise UserError(f"{where}: segmentation: expected polygons or an RLE "
                        f"{{size, counts}}, found {type(segmentation).__name__}")
    size = segmentation.get("size")
    if size != [height, width]:
        raise UserError(f"{where}: RLE size {size!r} differs from the image's "
                        f"[height, width] [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(is_count(c) for c in counts):
            raise UserError(f"{where}: RLE counts: expected non-negative integers")
        total = sum(counts)
    elif isinstance(counts, str):
        total = compressed_rle_total(counts)
        if total is None:
            raise UserError(f"{where}: RLE counts: not a compressed COCO RLE string")
    else:
        raise UserError(f"{where}: RLE counts: expected a list or a string")
    if total != height * width:
        raise UserError(f"{where}: RLE counts cover {total} pixels, the image has "
                        f"{height * width}")


def compressed_rle_total(counts):
    """The number of pixels the runs of a compressed COCO RLE string cover, or None
    when the string is malformed (a character outside '0'..'o', a run cut short
    or a negative run). pycocotools decodes such strings without an error,
    leaving pixels it never wrote, so they are checked here first; the format is
    COCO's maskApi.c rleFrString: 5 bits per character, a continuation bit, and
    runs from the third on stored as differences to the run two before."""
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return sum(runs)


def _image_file(image, image_dirs, path):
    name = image["file_name"].replace("\\", "/")
    for candidate in [os.path.join(d, name) for d in image_dirs] + [
            os.path.join(d, os.path.basename(name)) for d in image_dirs]:
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"{path}: image {image['id']}: file {image['file_name']!r} not found in "
                    f"{', '.join(image_dirs)}")


def rasterise(record, class_of, crowd="ignore"):
    """The label uint8 [H, W] of one image's record (see the module doc for the rules)."""
    image = record["image"]
    height, width = image["height"], image["width"]
    layers = []
    for order, ann in enumerate(record["annotations"]):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        mask = coco_mask.decode(rle).astype(bool)  # [H, W]
        below = bool(ann.get("iscrowd", 0)) and crowd == "ignore"
        value = IGNORE_LABEL if below else class_of[ann["category_id"]]
        layers.append((0 if below else 1, -int(mask.sum()), order, mask, value))
    label = np.zeros((height, width), np.uint8)
    for _, _, _, mask, value in sorted(layers, key=lambda layer: layer[:3]):
        label[mask] = value
    return label


class CocoReader:
    """Reads an item of a COCO split: the image file and the rasterised label."""

    def __init__(self, path, items, class_of, crowd):
        self.path, self.items, self.class_of, self.crowd = path, items, class_of, crowd
        self.warnings = []  # what the dataset check reports about the split

    def read(self, image_path, label_ref):
        record = self.items[label_ref]
        try:
            image = image_files.read_image(image_path)
        except UserError as err:
            raise ImageFileError(str(err)) from None
        info = record["image"]
        if image.shape[:2] != (info["height"], info["width"]):
            raise ImageFileError(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but "
                f"{self.path} gives {info['width']}x{info['height']} for image {info['id']}")
        try:
            return image, rasterise(record, self.class_of, self.crowd)
        except (ValueError, TypeError) as err:
            raise LabelFileError(f"{label_ref}: cannot rasterise ({err})") from None
