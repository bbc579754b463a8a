"""data.kind colour_masks: CVAT's Segmentation mask export and colours.txt."""

import os

import numpy as np
import pytest
from datafixtures import write_rgb
from owndata import MASK_COLOURS, write_cvat_masks

from fcn_graph.core.errors import UserError
from fcn_graph.data import colour_masks
from fcn_graph.data.datasets import read_pair
from fcn_graph.data.splits import LabelFileError


def test_cvat_export_maps_colours_to_ids(tmp_path):
    items = write_cvat_masks(str(tmp_path), np.random.default_rng(0))
    train = colour_masks.open_split(str(tmp_path), "train")
    val = colour_masks.open_split(str(tmp_path), "val")
    assert train.class_names == ("background", "road", "tree")
    assert train.names == ("frame_000", "frame_001") and val.names == ("frame_002",)
    for files in (train, val):
        for name, image, mask in zip(files.names, files.image_paths, files.label_paths):
            got_image, got = read_pair(image, mask, 3, reader=files.reader)
            np.testing.assert_array_equal(got, items[name][1])
            np.testing.assert_array_equal(got_image, items[name][0])


def test_colours_txt_and_a_hand_drawn_mask(tmp_path):
    (tmp_path / "colours.txt").write_text("0 0 0 sky\n255 255 255 snow cover\n10 20 30 rock\n")
    write_rgb(str(tmp_path / "images" / "x.png"), np.zeros((2, 3, 3), np.uint8))
    write_rgb(str(tmp_path / "images" / "y.png"), np.zeros((2, 3, 3), np.uint8))
    mask = np.array([[[10, 20, 30], [0, 0, 0], [255, 255, 255]],
                     [[255, 255, 255], [10, 20, 30], [10, 20, 30]]], np.uint8)
    write_rgb(str(tmp_path / "labels" / "x.png"), mask)
    write_rgb(str(tmp_path / "labels" / "y.png"), mask)
    (tmp_path / "train.txt").write_text("x\n")
    files = colour_masks.open_split(str(tmp_path), "train")
    assert files.class_names == ("sky", "snow cover", "rock")
    label = read_pair(files.image_paths[0], files.label_paths[0], 3, reader=files.reader)[1]
    np.testing.assert_array_equal(label, [[2, 0, 1], [1, 2, 2]])


def test_unknown_colour_is_an_error_or_ignored(tmp_path):
    write_cvat_masks(str(tmp_path), np.random.default_rng(1), count=2)
    stem = "frame_000"
    ids = np.zeros((6, 7), np.uint8)
    rgb = MASK_COLOURS[ids]
    rgb[0, :3] = (1, 2, 3)
    write_rgb(str(tmp_path / "SegmentationClass" / f"{stem}.png"), rgb)
    files = colour_masks.open_split(str(tmp_path), "train")
    with pytest.raises(LabelFileError, match=r"frame_000.png: colours not in .*labelmap.txt: "
                                             r"\(1, 2, 3\) in 3 pixels"):
        read_pair(files.image_paths[0], files.label_paths[0], 3, reader=files.reader)
    files = colour_masks.open_split(str(tmp_path), "train", unknown="ignore")
    label = read_pair(files.image_paths[0], files.label_paths[0], 3, reader=files.reader)[1]
    expected = np.zeros((6, 7), np.uint8)
    expected[0, :3] = 255
    np.testing.assert_array_equal(label, expected)


@pytest.mark.parametrize("text, message", [
    ("background:0,0,0::\nroad:0,0,0::\n", "line 2: colour (0, 0, 0) of 'road' is already "
                                           "class 0 ('background')"),
    ("background:0,0,0::\nroad:300,0,0::\n", "line 2: expected name:r,g,b:parts:actions"),
    ("background:0,0,0::\nRoad :1,0,0::\nroad:2,0,0::\n", "classes 1 ('Road') and 2 ('road')"),
    ("background:0,0,0::\n", "expected 2 to 255 class names"),
])
def test_bad_colour_maps(tmp_path, text, message):
    write_cvat_masks(str(tmp_path), np.random.default_rng(2), count=2)
    (tmp_path / "labelmap.txt").write_text(text)
    with pytest.raises(UserError) as err:
        colour_masks.open_split(str(tmp_path), "train")
    assert str(err.value).startswith(str(tmp_path / "labelmap.txt")) and message in str(err.value)


def test_missing_mask_and_size_mismatch(tmp_path):
    write_cvat_masks(str(tmp_path), np.random.default_rng(3), count=3)
    os.remove(tmp_path / "SegmentationClass" / "frame_001.png")
    with pytest.raises(UserError, match=r"frame_001.png: no label; expected .*"
                                        r"SegmentationClass/frame_001.png"):
        colour_masks.open_split(str(tmp_path), "train")
    write_rgb(str(tmp_path / "SegmentationClass" / "frame_001.png"), np.zeros((5, 7, 3),
                                                                              np.uint8))
    files = colour_masks.open_split(str(tmp_path), "train")
    with pytest.raises(LabelFileError, match=r"frame_001.png: label is 7x5 \(WxH\) but its "
                                             r"image .* is 7x6"):
        read_pair(files.image_paths[1], files.label_paths[1], 3, reader=files.reader)


@pytest.mark.parametrize("shape", [(1, 1), (37, 45), (64, 3)])
def test_colours_to_ids_equals_a_lookup_pixel_by_pixel(shape):
    from fcn_graph.data.colour_masks import colours_to_ids
    rng = np.random.default_rng(sum(shape))
    colours = np.array([[250, 50, 50], [0, 0, 0], [0, 128, 0], [128, 0, 128], [1, 2, 3]])
    palette = np.concatenate([colours, [[9, 9, 9], [255, 255, 255]]])  # two colours not mapped
    rgb = palette[rng.integers(0, len(palette), shape)].astype(np.uint8)
    by_colour = {tuple(c): i for i, c in enumerate(colours.tolist())}
    expected = np.array([[by_colour.get(tuple(p), 255) for p in row] for row in rgb.tolist()],
                        np.uint8)
    assert np.array_equal(colours_to_ids(rgb, colours, "ignore", "m.png", "map"), expected)
    if (expected == 255).any():
        with pytest.raises(LabelFileError, match=r"m.png: colours not in map: \(9, 9, 9\)|"
                                                 r"m.png: colours not in map: \(255, 255, 255\)"):
            colours_to_ids(rgb, colours, "error", "m.png", "map")
