"""data.kind labelme: class mapping, rasterisation rules, embedded images, bad input."""

import json
import math
import os

import numpy as np
import pytest
from owndata import LABELME_A, LABELME_B, labelme_file, shape, write_json, write_labelme

from fcn_graph.core.errors import UserError
from fcn_graph.data import datasets
from fcn_graph.data import labelme as labelme_data
from fcn_graph.data.datasets import read_pair
from fcn_graph.data.splits import ImageFileError, LabelFileError
from fcn_graph.training.config import load_config, save_resolved_config


def read_all(files):
    """{JSON file stem: (image, label)} of a split."""
    return {os.path.basename(label)[:-5]: read_pair(image, label, len(files.class_names),
                                                    reader=files.reader)
            for image, label in zip(files.image_paths, files.label_paths)}


def test_labels_external_and_embedded_images(tmp_path, capsys):
    pixels = write_labelme(str(tmp_path), np.random.default_rng(0))
    (tmp_path / "train.txt").write_text("a\nc\n")
    (tmp_path / "val.txt").write_text("b\n")
    train = labelme_data.open_split(str(tmp_path), "train")
    assert "labelme split 'train': 1 line or point shape(s) ignored" in capsys.readouterr().err
    val = labelme_data.open_split(str(tmp_path), "val")
    assert "ignored" not in capsys.readouterr().err
    assert train.class_names == ("background", "cat", "dog") == val.class_names
    assert train.image_paths[0] == str(tmp_path / "a.png")  # external image
    assert val.image_paths[0] == str(tmp_path / "b.json")  # embedded
    items = {**read_all(train), **read_all(val)}
    np.testing.assert_array_equal(items["a"][1], LABELME_A)
    np.testing.assert_array_equal(items["b"][1], LABELME_B)
    np.testing.assert_array_equal(items["c"][1], np.zeros_like(LABELME_A))
    for name in "abc":
        np.testing.assert_array_equal(items[name][0], pixels[name])
    assert train.reader.empty == [str(tmp_path / "c.json")]


def test_classes_txt_gives_the_ids(tmp_path):
    write_labelme(str(tmp_path), np.random.default_rng(1))
    (tmp_path / "classes.txt").write_text("_background_\nDOG\nbird\nCat\n")
    files = labelme_data.open_split(str(tmp_path), "train", val_fraction=0.34)
    assert files.class_names == ("_background_", "DOG", "bird", "Cat")
    a = read_pair(str(tmp_path / "a.png"), str(tmp_path / "a.json"), 4, reader=files.reader)[1]
    expected = LABELME_A.copy()
    expected[LABELME_A == 1], expected[LABELME_A == 2] = 3, 1
    np.testing.assert_array_equal(a, expected)


def test_found_names_go_into_the_resolved_config_and_back(tmp_path):
    root = tmp_path / "data"
    write_labelme(str(root), np.random.default_rng(2))
    args = ["data.kind=labelme", f"data.root={root}", "data.val_fraction=0.34",
            f"train.log_dir={tmp_path / 'run'}"]
    config = load_config(None, args)
    datasets.open_config_split(config, "train")
    assert config.data.class_names == ["background", "cat", "dog"]
    save_resolved_config(config, str(tmp_path / "run"))
    # A new label appears: a resumed run keeps the mapping of its resolved config.
    document = json.loads((root / "a.json").read_text())
    document["shapes"].append(shape("ant", "rectangle", [[7, 5], [8, 6]]))
    (root / "a.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match=r"a.json: shape 3: label 'ant' is not a class of "
                                        r"data.class_names"):
        datasets.open_config_split(load_config(None, args), "train")
    fresh = load_config(None, args[:-1] + [f"train.log_dir={tmp_path / 'new'}"])
    assert datasets.open_config_split(fresh, "train").class_names == (
        "background", "ant", "cat", "dog")


def test_circle_is_opencv_distance_rule():
    # cv2.circle, filled, against the rule of the module doc, for many radii.
    for radius in range(0, 25):
        size = 2 * radius + 5
        label = labelme_data.rasterise(
            [{"label": "x", "kind": "circle", "points": [[radius + 2, radius + 2],
                                                         [radius + 2, 2 + 2 * radius + 0.4]]}],
            size, size, {"x": 1})
        yy, xx = np.mgrid[:size, :size]
        expected = ((xx - radius - 2) ** 2 + (yy - radius - 2) ** 2 <= radius ** 2)
        np.testing.assert_array_equal(label, expected.astype(np.uint8), err_msg=str(radius))


def test_polygon_rule_on_a_triangle():
    # (1, 0.6) -> (1, 1), (6.5, 1) -> (7, 1), (1, 5.4) -> (1, 5). The right edge
    # x = 7 - 1.5 (y - 1) crosses rows 1..5 at 7, 5.5, 4, 2.5, 1: rounded half up,
    # rows 2 and 4 end at columns 6 and 3. Drawn by hand.
    label = labelme_data.rasterise(
        [{"label": "x", "kind": "polygon", "points": [[1, 0.6], [6.5, 1], [1, 5.4]]}],
        7, 9, {"x": 1})
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
    ], np.uint8)
    np.testing.assert_array_equal(label, expected)
    assert math.floor(6.5 + 0.5) == 7


BAD_SHAPES = {
    "two-point polygon": (shape("cat", "polygon", [[1, 1], [2, 2]]),
                          "shape 0 (cat): a polygon needs at least 3 points, found 2"),
    "outside": (shape("cat", "rectangle", [[1, 1], [9.5, 2]]),
                "shape 0 (cat): points outside the 9x7 image"),
    "mask": (shape("cat", "mask", [[1, 1], [2, 2]]), "shape_type 'mask' not supported"),
    "no label": ({"points": [[1, 1]], "shape_type": "point"}, "shape 0: expected an object "
                                                              "with a label"),
    "bad points": (shape("cat", "polygon", [[1, 1], [2, "x"], [3, 3]]),
                   "shape 0 (cat): points: expected [[x, y], ...]"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHAPES))
def test_malformed_shapes_name_the_file_and_the_shape(tmp_path, case):
    bad, message = BAD_SHAPES[case]
    write_labelme(str(tmp_path), np.random.default_rng(3))
    document = json.loads((tmp_path / "a.json").read_text())
    document["shapes"] = [bad]
    (tmp_path / "a.json").write_text(json.dumps(document))
    with pytest.raises(UserError) as err:
        labelme_data.open_split(str(tmp_path), "train", val_fraction=0.34)
    assert str(err.value).startswith(f"{tmp_path / 'a.json'}: ") and message in str(err.value)


def test_bad_files(tmp_path):
    write_labelme(str(tmp_path), np.random.default_rng(4))
    (tmp_path / "d.json").write_text('{"shapes": [')
    with pytest.raises(UserError, match=r"d.json: not valid JSON \(cut short\?\)"):
        labelme_data.open_split(str(tmp_path), "train")
    write_json(str(tmp_path / "d.json"), labelme_file([], image_path="missing.png"))
    with pytest.raises(UserError, match=r"d.json: imagePath 'missing.png': no such file"):
        labelme_data.open_split(str(tmp_path), "train")
    write_json(str(tmp_path / "d.json"), labelme_file(
        [shape("Dog", "rectangle", [[1, 1], [2, 2]])], image_path="a.png"))
    with pytest.raises(UserError, match=r"label 'Dog' and label 'dog' of .*a.json are the same "
                                        r"once stripped and case-folded"):
        labelme_data.open_split(str(tmp_path), "train")
    write_json(str(tmp_path / "d.json"), labelme_file([], image_data="not base64!"))
    d = str(tmp_path / "d.json")
    index = {"background": 0, "cat": 1, "dog": 2}
    with pytest.raises(ImageFileError, match=r"d.json: imageData: not base64 text"):
        labelme_data.LabelmeReader(index).read(d, d)
    write_json(d, labelme_file([], image_path="a.png", h=8))
    with pytest.raises(ImageFileError, match=r"d.json: its image is 9x7 \(WxH\) but the file "
                                             r"gives imageWidth x imageHeight 9x8"):
        labelme_data.LabelmeReader(index).read(str(tmp_path / "a.png"), d)
    (tmp_path / "d.json").write_text("[1]")
    with pytest.raises(LabelFileError, match=r"d.json: expected a labelme JSON file"):
        labelme_data.LabelmeReader(index).read(str(tmp_path / "a.png"), d)


def test_too_many_classes_refused(tmp_path):
    write_labelme(str(tmp_path), np.random.default_rng(5))
    (tmp_path / "classes.txt").write_text("\n".join(f"c{i}" for i in range(256)) + "\n")
    with pytest.raises(UserError, match=r"classes.txt: expected at most 255 classes"):
        labelme_data.open_split(str(tmp_path), "train")


@pytest.mark.parametrize("value, message", [
    (["background", "Cat", " cat"], "classes 1 ('Cat') and 2 (' cat') have the same name"),
    (["background"], "expected 2 to 255 class names"),
    (["background", ""], "class 1: expected a non-empty one-line name"),
])
def test_class_names_key_is_checked(value, message):
    with pytest.raises(UserError, match=r"^--set: data.class_names: ") as err:
        load_config(None, ["data.kind=labelme", "data.root=x",
                           f"data.class_names={json.dumps(value)}"])
    assert message in str(err.value)
    with pytest.raises(UserError, match=r"data.class_names: used only by data.kind labelme"):
        load_config(None, ["data.kind=folder", "data.root=x",
                           'data.class_names=["a", "b"]'])


def test_class_names_key_and_classes_txt_must_agree(tmp_path):
    write_labelme(str(tmp_path), np.random.default_rng(6))
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    same = labelme_data.open_split(str(tmp_path), "train", class_names=["Background", "cat",
                                                                        "dog"])
    assert same.class_names == ("background", "cat", "dog")
    with pytest.raises(UserError, match=r"data.class_names .* differ from the classes of "):
        labelme_data.open_split(str(tmp_path), "train", class_names=["background", "dog",
                                                                     "cat"])
