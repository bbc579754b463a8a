"""labelme JSON datasets (`data.kind: labelme`): a folder of labelme files.

Layout: data.root holds the labelme `*.json` files. Each names its image by
`imagePath` (relative to the JSON file) or embeds it (`imageData`, base64; used
when present, as labelme does). Splits: data.root/<split>.txt lists JSON file
stems; without it the files are split into train and val by data.val_fraction
(seeded).

Classes: data.root/classes.txt (one name per line, the line number is the
class id, line 0 the background); else data.class_names; else the names of the
run's resolved config (train.log_dir/config.json, so that a resumed run keeps
its mapping); else "background" followed by the sorted label names found in
every file. Labels match class names once stripped and case-folded; the label
`__ignore__` marks ignored pixels (255).

Rasterisation (OpenCV), shapes drawn in file order, a later shape over an
earlier one (as labelme's own tools do); pixels no shape covers are class 0:
- Points are rounded half up to whole pixels: x is the column, y the row, and
  pixel (x, y) is the unit square centred on (x, y).
- polygon (3 or more points), rounded: on each pixel row, the pixels from where
  its left edge crosses the row's centre line to where its right edge does,
  both rounded to whole pixels, halves up (cv2.fillPoly; the boundary counts).
- rectangle (2 corner points): every pixel between the rounded corners,
  both included.
- circle (point 0 the centre, point 1 on the circle): every pixel whose
  distance to the rounded centre is at most r, r the distance of the two
  points rounded half up (cv2.circle, filled).
- line, linestrip, point and points enclose no area: ignored, with a note.
A file with no shapes is an all-background label (counted by the dataset check).
"""

import base64
import binascii
import math
import os
import sys

import cv2
import numpy as np

from fcn_graph.core.constants import IGNORE_LABEL, RESOLVED_CONFIG_NAME
from fcn_graph.core.errors import UserError
from fcn_graph.data import image_files, splits
from fcn_graph.data.annotations import (
    check_class_names,
    class_index,
    is_number,
    normal_class_name,
    read_json,
)
from fcn_graph.data.splits import ImageFileError, LabelFileError, SplitFiles, dataset_root

_EXPECTED = "a labelme JSON file with shapes"
AREA_SHAPES = {"polygon": 3, "rectangle": 2, "circle": 2}  # type: points required
IGNORED_SHAPES = ("line", "linestrip", "point", "points")
IGNORE_NAME = "__ignore__"


def open_split_of_config(config, split):
    """`open_split` with the class names the config, classes.txt or the run give;
    names found in the files are stored in config.data.class_names, which the
    run's resolved config then records."""
    d = config.data
    root = dataset_root(config)
    listed = os.path.isfile(os.path.join(root, "classes.txt"))
    names = d.class_names or (None if listed else _run_class_names(config.train.log_dir, root))
    files = open_split(root, split, seed=config.train.seed, val_fraction=d.val_fraction,
                       class_names=names)
    if not listed:
        d.class_names = list(files.class_names)
    return files


def _run_class_names(log_dir, root):
    """data.class_names of the resolved config in `log_dir`, if it is a labelme run
    on the same root; else None."""
    path = os.path.join(log_dir, RESOLVED_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        data = read_json(path, "a resolved config").get("data", {})
    except (UserError, AttributeError):
        return None
    names = data.get("class_names")
    if data.get("kind") != "labelme" or not isinstance(names, list) or not data.get("root") \
            or os.path.abspath(data["root"]) != os.path.abspath(root):
        return None
    print(f"labelme: class names of the run in {path}", file=sys.stderr)
    return [str(n) for n in names]


def list_files(root):
    """The labelme JSON files directly in `root`, sorted."""
    return sorted(os.path.join(root, n) for n in os.listdir(root)
                  if n.lower().endswith(".json") and not n.startswith("."))


def open_split(root, split, *, seed=0, val_fraction=0.1, class_names=None):
    """List and check `split` of the labelme folder `root` (see the module doc)."""
    everything = list_files(root)
    if not everything:
        raise UserError(f"{root}: no labelme .json files (data.kind labelme)")
    parsed = {path: parse(path, read_json(path, _EXPECTED)) for path in everything}
    names, source = _class_names(root, class_names, parsed)
    index = class_index(names)
    for path, item in parsed.items():
        for shape in item["shapes"]:
            key = normal_class_name(shape["label"])
            if key not in index and key != IGNORE_NAME:
                raise UserError(f"{path}: shape {shape['number']}: label {shape['label']!r} is not a "
                                f"class of {source}")
    list_file = os.path.join(root, f"{split}.txt")
    if os.path.isfile(list_file):
        by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in everything}
        chosen = []
        for stem in splits.read_list(list_file, f"labelme split {split!r}"):
            if stem not in by_stem:
                raise UserError(f"{list_file}: lists {stem!r} but {root} has no {stem}.json")
            chosen.append(by_stem[stem])
    else:
        chosen = splits.seeded_split(everything, split, seed, val_fraction, root)
    ignored = sum(parsed[p]["ignored"] for p in chosen)
    if ignored:
        print(f"note: labelme split {split!r}: {ignored} line or point shape(s) ignored "
              f"(they enclose no area)", file=sys.stderr)
    images = tuple(parsed[p]["image_path"] for p in chosen)
    reader = LabelmeReader(index)
    reader.empty = [p for p in chosen if not parsed[p]["shapes"] and not parsed[p]["ignored"]]
    return SplitFiles("labelme", split, images, tuple(chosen), tuple(names), reader=reader)


def _class_names(root, configured, parsed):
    classes_file = os.path.join(root, "classes.txt")
    if os.path.isfile(classes_file):
        names = [line.strip() for line in
                 splits.read_lines(classes_file, "one class name per line") if line.strip()]
        check_class_names(names, classes_file)
        if configured and [normal_class_name(n) for n in configured] != [
                normal_class_name(n) for n in names]:
            raise UserError(f"data.class_names {configured} differ from the classes of "
                            f"{classes_file} {names}; set data.class_names to null or edit "
                            f"the file")
        return names, classes_file
    if configured:
        check_class_names(configured, "data.class_names")
        return list(configured), "data.class_names"
    found = {}
    for path, item in parsed.items():
        for shape in item["shapes"]:
            key = normal_class_name(shape["label"])
            if key in ("background", IGNORE_NAME):
                continue
            name = shape["label"].strip()
            if key in found and found[key][0] != name:
                raise UserError(f"{path}: label {name!r} and label {found[key][0]!r} of "
                                f"{found[key][1]} are the same once stripped and case-folded; "
                                f"use one spelling or list the classes in {classes_file}")
            found.setdefault(key, (name, path))
    names = ["background"] + [found[key][0] for key in sorted(found)]
    check_class_names(names, f"{root}: the labels found")
    return names, f"{root}: the labels found"


def parse(path, data):
    """The checked content of a labelme file: {"shapes": [...] (area shapes only),
    "ignored": count, "image_path", "height", "width"}. Raises UserError naming
    the file and the shape."""
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UserError(f"{path}: expected {_EXPECTED} (an object with a shapes list)")
    height, width = data.get("imageHeight"), data.get("imageWidth")
    for key, value in (("imageHeight", height), ("imageWidth", width)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise UserError(f"{path}: {key}: expected a positive integer, found {value!r}")
    if isinstance(data.get("imageData"), str) and data["imageData"]:
        image_path = path
    elif isinstance(data.get("imagePath"), str) and data["imagePath"]:
        image_path = os.path.join(os.path.dirname(path), data["imagePath"].replace("\\", "/"))
        if not os.path.isfile(image_path):
            raise UserError(f"{path}: imagePath {data['imagePath']!r}: no such file "
                            f"{image_path} (and no imageData)")
    else:
        raise UserError(f"{path}: neither imageData nor imagePath names the image")
    shapes, ignored = [], 0
    for number, shape in enumerate(data["shapes"]):
        where = f"{path}: shape {number}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) \
                or not shape["label"].strip():
            raise UserError(f"{where}: expected an object with a label")
        kind = shape.get("shape_type") or "polygon"
        if kind in IGNORED_SHAPES:
            ignored += 1
            continue
        if kind not in AREA_SHAPES:
            raise UserError(f"{where} ({shape['label']}): shape_type {kind!r} not supported "
                            f"(expected {', '.join(AREA_SHAPES)} or {', '.join(IGNORED_SHAPES)})")
        points = shape.get("points")
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(is_number(v) for v in p)
                for p in points):
            raise UserError(f"{where} ({shape['label']}): points: expected [[x, y], ...]")
        need = AREA_SHAPES[kind]
        if len(points) < need or (kind != "polygon" and len(points) != need):
            raise UserError(f"{where} ({shape['label']}): a {kind} needs "
                            f"{'at least ' if kind == 'polygon' else ''}{need} points, "
                            f"found {len(points)}")
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if min(xs) < 0 or max(xs) > width or min(ys) < 0 or max(ys) > height:
            raise UserError(f"{where} ({shape['label']}): points outside the {width}x{height} "
                            f"image (x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)})")
        shapes.append({"label": shape["label"], "kind": kind, "points": points,
                       "number": number})
    return {"shapes": shapes, "ignored": ignored, "image_path": image_path,
            "height": height, "width": width}


def _round(value):
    return int(math.floor(value + 0.5))


def rasterise(shapes, height, width, index):
    """The label uint8 [height, width] of checked `shapes` (see the module doc);
    `index` maps normalised names to class ids."""
    label = np.zeros((height, width), np.uint8)
    for shape in shapes:
        key = normal_class_name(shape["label"])
        value = IGNORE_LABEL if key == IGNORE_NAME else index[key]
        points = np.array([[_round(x), _round(y)] for x, y in shape["points"]], np.int32)
        if shape["kind"] == "polygon":
            cv2.fillPoly(label, [points], int(value))
        elif shape["kind"] == "rectangle":
            (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
            cv2.rectangle(label, (int(x0), int(y0)), (int(x1), int(y1)), int(value), -1)
        else:
            (cx, cy), (px, py) = shape["points"]
            radius = _round(math.hypot(px - cx, py - cy))
            cv2.circle(label, (_round(cx), _round(cy)), radius, int(value), -1)
    return label


def decode_embedded(path, data):
    """The RGB image embedded (base64 `imageData`) in labelme file `path`."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{path}: imageData: not base64 text") from None
    return image_files.decode_image(raw, f"{path} (imageData)")


class LabelmeReader:
    """Reads an item of a labelme split: the image and the rasterised label."""

    def __init__(self, index):
        self.index = index
        self.empty = []  # files with no shapes at all (all background)

    def read(self, image_path, json_path):
        try:
            data = read_json(json_path, _EXPECTED)
            item = parse(json_path, data)
            for shape in item["shapes"]:
                key = normal_class_name(shape["label"])
                if key not in self.index and key != IGNORE_NAME:
                    raise UserError(f"{json_path}: label {shape['label']!r} is not a class")
        except UserError as err:
            raise LabelFileError(str(err)) from None
        try:
            if item["image_path"] == json_path:
                image = decode_embedded(json_path, data["imageData"])
            else:
                image = image_files.read_image(item["image_path"])
        except UserError as err:
            raise ImageFileError(str(err)) from None
        if image.shape[:2] != (item["height"], item["width"]):
            raise ImageFileError(
                f"{json_path}: its image is {image.shape[1]}x{image.shape[0]} (WxH) but the "
                f"file gives imageWidth x imageHeight {item['width']}x{item['height']}")
        return image, rasterise(item["shapes"], item["height"], item["width"], self.index)
