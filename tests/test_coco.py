"""data.kind coco: layouts, class mapping, rasterisation rules and bad input."""

import json
import os

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from datafixtures import write_rgb
from owndata import (
    COCO_CATEGORIES,
    CROWD_MASK,
    EXPECTED_1_CLASS,
    EXPECTED_1_IGNORE,
    EXPECTED_2,
    EXPECTED_3,
    coco_document,
    compressed_rle,
    uncompressed_rle,
    write_coco_single,
    write_coco_splits,
    write_json,
    write_roboflow,
)
from test_datasets import eval_labels

from fcn_graph.core.errors import UserError
from fcn_graph.data import coco as coco_data
from fcn_graph.data import datasets
from fcn_graph.data.datasets import read_pair
from fcn_graph.data.splits import ImageFileError
from fcn_graph.training.config import load_config

EXPECTED = {"img1": EXPECTED_1_IGNORE, "img2": EXPECTED_2, "img3": EXPECTED_3}


def read_all(files, num_classes=3):
    return {name: read_pair(image, label, num_classes, reader=files.reader)
            for name, image, label in zip(files.names, files.image_paths, files.label_paths)}


@pytest.mark.parametrize("writer", [write_coco_splits, write_roboflow])
def test_split_files_give_the_hand_drawn_labels(tmp_path, writer):
    pixels = writer(str(tmp_path), np.random.default_rng(1))
    train = coco_data.open_split(str(tmp_path), "train")
    val = coco_data.open_split(str(tmp_path), "val")
    assert train.class_names == ("background", "car", "person")
    assert train.names == ("img1", "img3") and val.names == ("img2",)
    for files in (train, val):
        for name, (image, label) in read_all(files).items():
            np.testing.assert_array_equal(label, EXPECTED[name])
            np.testing.assert_array_equal(image, pixels[int(name[3:])])


def test_single_file_splits_by_val_fraction(tmp_path):
    write_coco_single(str(tmp_path), np.random.default_rng(2))
    train = coco_data.open_split(str(tmp_path), "train", seed=4, val_fraction=0.34)
    val = coco_data.open_split(str(tmp_path), "val", seed=4, val_fraction=0.34)
    assert len(train) == 2 and len(val) == 1
    assert sorted(train.names + val.names) == ["img1", "img2", "img3"]
    again = coco_data.open_split(str(tmp_path), "val", seed=4, val_fraction=0.34)
    assert again.names == val.names
    for files in (train, val):
        for name, (_, label) in read_all(files).items():
            np.testing.assert_array_equal(label, EXPECTED[name])


def test_crowd_as_class_and_the_pipeline(tmp_path):
    write_coco_single(str(tmp_path), np.random.default_rng(3))
    config = load_config(None, ["data.kind=coco", f"data.root={tmp_path}",
                                "data.val_fraction=0.34", "data.coco_crowd=class"])
    labels = {}
    for split in ("train", "val"):
        files = datasets.open_config_split(config, split)
        labels.update(zip(files.names, eval_labels(files, 3)))
    np.testing.assert_array_equal(labels["img1"], EXPECTED_1_CLASS)
    np.testing.assert_array_equal(labels["img2"], EXPECTED_2)


def test_smaller_instance_wins_whatever_the_order(tmp_path):
    write_coco_single(str(tmp_path), np.random.default_rng(5), ids=(1, 2))
    path = tmp_path / "annotations" / "instances_default.json"
    document = json.loads(path.read_text())
    document["annotations"] = document["annotations"][::-1]
    path.write_text(json.dumps(document))
    files = coco_data.open_split(str(tmp_path), "train", val_fraction=0.5, seed=0)
    files_val = coco_data.open_split(str(tmp_path), "val", val_fraction=0.5, seed=0)
    labels = {**read_all(files), **read_all(files_val)}
    np.testing.assert_array_equal(labels["img1"][1], EXPECTED_1_IGNORE)
    # equal areas: the later in the file wins, now the car
    expected_2 = EXPECTED_2.copy()
    expected_2[1:3, 2] = 1
    np.testing.assert_array_equal(labels["img2"][1], expected_2)


def test_a_background_category_takes_class_0(tmp_path):
    categories = [{"id": 5, "name": "road"}, {"id": 9, "name": " Background"},
                  {"id": 7, "name": "car"}, {"id": 3, "name": "person"}]
    write_coco_single(str(tmp_path), np.random.default_rng(6))
    path = tmp_path / "annotations" / "instances_default.json"
    path.write_text(json.dumps(coco_document((1, 2, 3), categories=categories)))
    files = coco_data.open_split(str(tmp_path), "train", val_fraction=0.34)
    assert files.class_names == ("Background", "road", "car", "person")
    for name, (_, label) in read_all(files, 4).items():
        expected = EXPECTED[name].copy()
        expected[(expected > 0) & (expected < 255)] += 1
        np.testing.assert_array_equal(label, expected)


def test_rle_forms_agree_with_pycocotools_and_numpy():
    rng = np.random.default_rng(7)
    for h, w in ((1, 1), (5, 7), (37, 45), (97, 131)):
        mask = (rng.random((h, w)) < 0.4).astype(np.uint8)
        raw = uncompressed_rle(mask)
        assert sum(raw["counts"]) == h * w
        packed = compressed_rle(mask)
        assert coco_data.compressed_rle_total(packed["counts"]) == h * w
        record = {"image": {"id": 1, "height": h, "width": w, "file_name": "x"},
                  "annotations": [{"category_id": 7, "segmentation": raw}]}
        np.testing.assert_array_equal(coco_data.rasterise(record, {7: 1}), mask)
        record["annotations"][0]["segmentation"] = packed
        np.testing.assert_array_equal(coco_data.rasterise(record, {7: 1}), mask)
    assert coco_data.compressed_rle_total("0~") is None  # a character outside '0'..'o'
    assert coco_data.compressed_rle_total("0P") is None  # cut short: continuation bit set


# --------------------------------------------------------------------------- bad input


def _document_with(change):
    document = coco_document((1, 2, 3))
    change(document)
    return document


def _ann(document, ann_id):
    return next(a for a in document["annotations"] if a["id"] == ann_id)


BAD = {
    "two-point polygon": (lambda d: _ann(d, 11).update(segmentation=[[1, 1, 7, 1]]),
                          "annotation 11 (image 1, img1.png): polygon 0: expected 3 or more"),
    "outside": (lambda d: _ann(d, 11).update(segmentation=[[1, 1, 9, 1, 7, 5]]),
                "annotation 11 (image 1, img1.png): polygon 0: points outside the 8x6 image"),
    "category": (lambda d: _ann(d, 20).update(category_id=99),
                 "annotation 20: category_id 99 is not in categories"),
    "rle size": (lambda d: _ann(d, 12)["segmentation"].update(size=[8, 6]),
                 "annotation 12 (image 1, img1.png): RLE size [8, 6] differs"),
    "rle total": (lambda d: _ann(d, 10)["segmentation"]["counts"].append(3),
                  "annotation 10 (image 1, img1.png): RLE counts cover 51 pixels, the image "
                  "has 48"),
    "compressed total": (lambda d: _ann(d, 12).update(segmentation={
                             "size": [6, 8], "counts": compressed_rle(CROWD_MASK[:, :7])[
                                 "counts"]}),
                         "annotation 12 (image 1, img1.png): RLE counts cover 42 pixels"),
    "image id": (lambda d: _ann(d, 21).update(image_id=42),
                 "annotation 21: image_id 42 is not in images"),
    "no segmentation": (lambda d: _ann(d, 21).update(segmentation=[]),
                        "annotation 21 (image 2, img2.png): empty segmentation"),
    "collision": (lambda d: d["categories"].append({"id": 1, "name": "CAR "}),
                  "categories: classes 1 ('car') and 3 ('CAR') have the same name"),
    "too many": (lambda d: d["categories"].extend(
                     {"id": 100 + i, "name": f"c{i}"} for i in range(254)),
                 "categories: expected at most 255 classes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_annotations_name_the_file_and_the_item(tmp_path, case):
    change, message = BAD[case]
    write_coco_single(str(tmp_path), np.random.default_rng(8))
    path = tmp_path / "annotations" / "instances_default.json"
    path.write_text(json.dumps(_document_with(change)))
    with pytest.raises(UserError) as err:
        coco_data.open_split(str(tmp_path), "train")
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("{\"images\": [", "not valid JSON (cut short?)"),
    ("images = []", "not valid JSON: Expecting value at line 1, column 1"),
    ("", "empty file"),
    ("[]", "expected a JSON object"),
    ("{\"images\": [], \"annotations\": [], \"categories\": NaN}", "found NaN"),
])
def test_a_file_that_is_not_coco_json(tmp_path, text, message):
    write_coco_single(str(tmp_path), np.random.default_rng(9))
    path = tmp_path / "annotations" / "instances_default.json"
    path.write_text(text)
    with pytest.raises(UserError, match="^" + str(path).replace("\\", "\\\\") + ": ") as err:
        coco_data.open_split(str(tmp_path), "train")
    assert message in str(err.value)


def test_missing_image_and_wrong_size(tmp_path):
    write_coco_single(str(tmp_path), np.random.default_rng(10))
    os.remove(tmp_path / "images" / "img2.png")
    with pytest.raises(UserError, match=r"image 2: file 'img2.png' not found"):
        coco_data.open_split(str(tmp_path), "train")
    write_rgb(str(tmp_path / "images" / "img2.png"), np.zeros((5, 4, 3), np.uint8))
    files = {}
    for split in ("train", "val"):
        files.update({n: (i, lab, s.reader) for s in [coco_data.open_split(
            str(tmp_path), split, val_fraction=0.34)] for n, i, lab in zip(
                s.names, s.image_paths, s.label_paths)})
    image, label, reader = files["img2"]
    with pytest.raises(ImageFileError, match=r"img2.png: image is 4x5 \(WxH\) but .*"
                                             r"instances_default.json gives 5x4 for image 2"):
        read_pair(image, label, 3, reader=reader)


def test_layout_not_found_names_what_was_looked_for(tmp_path):
    with pytest.raises(UserError, match=r"no COCO annotations for split 'train'.*"
                                        r"instances_train.json"):
        coco_data.open_split(str(tmp_path), "train")


def test_polygon_rasterisation_is_pycocotools():
    # The pixel-coverage rule of the module doc, on an odd-sized triangle.
    polygon = [[0.5, 0.5, 10.2, 3.7, 2.1, 12.9]]
    record = {"image": {"id": 1, "height": 13, "width": 11, "file_name": "x"},
              "annotations": [{"category_id": 3, "segmentation": polygon}]}
    reference = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygon, 13, 11)))
    np.testing.assert_array_equal(coco_data.rasterise(record, {3: 2}), reference * 2)


def test_category_list_order_not_ids_gives_the_classes(tmp_path):
    categories = list(reversed(COCO_CATEGORIES))  # person then car
    write_json(str(tmp_path / "annotations" / "instances_default.json"),
               coco_document((2,), categories=categories))
    write_rgb(str(tmp_path / "images" / "img2.png"), np.zeros((4, 5, 3), np.uint8))
    names, class_of = coco_data.class_names_of(categories, "x")
    assert names == ("background", "person", "car") and class_of == {3: 1, 7: 2}


def test_split_files_must_name_the_same_classes(tmp_path):
    write_coco_splits(str(tmp_path), np.random.default_rng(11))
    path = tmp_path / "annotations" / "instances_val.json"
    document = json.loads(path.read_text())
    document["categories"].append({"id": 50, "name": "bus"})
    path.write_text(json.dumps(document))
    config = load_config(None, ["data.kind=coco", f"data.root={tmp_path}"])
    with pytest.raises(UserError, match=r"data.val_split 'val': its classes \(background, car, "
                                        r"person, bus\) differ from those of"):
        datasets.splits_from_config(config)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_annotation_file_that_is_a_fifo_directory_or_not_utf8(tmp_path):
    write_coco_single(str(tmp_path), np.random.default_rng(12))
    path = tmp_path / "annotations" / "instances_default.json"
    path.write_bytes(b'{"images": "\xff"}')
    with pytest.raises(UserError, match=r"instances_default.json: not UTF-8 text \(byte 0xff"):
        coco_data.open_split(str(tmp_path), "train")
    os.remove(path)
    os.mkfifo(path)
    with pytest.raises(UserError, match=r"instances_default.json: is a FIFO, not a regular file"):
        coco_data.open_split(str(tmp_path), "train")
    os.remove(path)
    os.mkdir(tmp_path / "labelme")
    os.mkdir(tmp_path / "labelme" / "x.json")
    from fcn_graph.data import labelme as labelme_data

    with pytest.raises(UserError, match=r"x.json: is a directory"):
        labelme_data.open_split(str(tmp_path / "labelme"), "train")
