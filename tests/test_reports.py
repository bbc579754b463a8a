"""Evaluation reports (`fcn_graph.training.reports`): per-class values and the
confusion matrix against a hand-worked example, the files and the picture,
`evaluate --tta --report` end to end, and `evaluate --compare`."""

import csv
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tfutil import write_random_checkpoint
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import evaluate
from fcn_graph.core.errors import run_cli
from fcn_graph.core.fileio import OutputFolder
from fcn_graph.core.metrics import ConfusionMatrix
from fcn_graph.engines.segmenter import make_segmenter
from fcn_graph.engines.tta import Tta, TtaSegmenter
from fcn_graph.network.spec import ModelSpec
from fcn_graph.training.reports import (
    REPORT_FILES,
    SORT_ABOVE,
    _colour,
    compare_files,
    draw_confusion,
    per_class_rows,
    report_names,
    write_report,
)

tf1 = tf.compat.v1

# The worked example: ten pixels, one of them ignored (255).
LABELS = np.array([[0, 0, 0, 1, 1], [2, 2, 2, 2, 255]])
PREDICTIONS = np.array([[0, 0, 1, 1, 2], [2, 2, 0, 1, 0]])
# By hand: row = label, column = prediction.
#   label 0: predicted 0, 0, 1            -> [2, 1, 0]
#   label 1: predicted 1, 2               -> [0, 1, 1]
#   label 2: predicted 2, 2, 0, 1         -> [1, 1, 2]
#   label 3: absent                       -> [0, 0, 0]
HAND_HIST = [[2, 1, 0, 0], [0, 1, 1, 0], [1, 1, 2, 0], [0, 0, 0, 0]]
# ground truth 3, 2, 4, 0; predicted 3, 3, 3, 0; true positives 2, 1, 2, 0
# IoU = tp / (gt + predicted - tp): 2/4, 1/4, 2/5, undefined
# accuracy = tp / gt: 2/3, 1/2, 2/4, undefined
NAMES = ["sky", "road, wet", "car", "boat"]


def _hist():
    matrix = ConfusionMatrix(4)
    matrix.update(LABELS, PREDICTIONS)
    return matrix.hist


def test_confusion_and_per_class_values_match_the_hand_worked_example():
    hist = _hist()
    np.testing.assert_array_equal(hist, HAND_HIST)
    rows = per_class_rows(hist, NAMES)
    assert [row["name"] for row in rows] == NAMES
    assert [row["gt_pixels"] for row in rows] == [3, 2, 4, 0]
    assert [row["predicted_pixels"] for row in rows] == [3, 3, 3, 0]
    assert [row["true_positives"] for row in rows] == [2, 1, 2, 0]
    assert [row["iou"] for row in rows[:3]] == pytest.approx([0.5, 0.25, 0.4])
    assert [row["accuracy"] for row in rows[:3]] == pytest.approx([2 / 3, 0.5, 0.5])
    assert rows[3]["iou"] is None and rows[3]["accuracy"] is None


def test_write_report_writes_every_file(tmp_path):
    folder = OutputFolder(str(tmp_path / "report"), "--report")
    folder.claim(report_names([""]))
    write_report(folder, _hist(), NAMES, checkpoint="ck", split="val", tta=None)
    folder.flush()
    directory = tmp_path / "report"
    record = json.loads((directory / "per_class.json").read_text())
    assert record["format"] == "fcn_graph.per_class"
    assert record["checkpoint"] == "ck" and record["split"] == "val" and record["tta"] is None
    assert record["class_names"] == NAMES
    assert record["per_class_iou"] == pytest.approx([0.5, 0.25, 0.4, None])
    assert record["mean_iou"] == pytest.approx((0.5 + 0.25 + 0.4) / 3)
    assert record["pixel_accuracy"] == pytest.approx(5 / 9)
    assert record["classes"][1] == {"index": 1, "name": "road, wet", "iou": 0.25,
                                    "accuracy": 0.5, "gt_pixels": 2, "predicted_pixels": 3,
                                    "true_positives": 1}
    with open(directory / "per_class.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["index", "name", "iou", "accuracy", "gt_pixels", "predicted_pixels",
                        "true_positives"]
    assert table[2] == ["1", "road, wet", "0.25", "0.5", "2", "3", "1"]
    assert table[4] == ["3", "boat", "", "", "0", "0", "0"]
    counts = np.load(directory / "confusion.npy")
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, HAND_HIST)
    with open(directory / "confusion.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["true \\ predicted", *NAMES]
    assert [row[0] for row in table[1:]] == NAMES
    np.testing.assert_array_equal(np.array([row[1:] for row in table[1:]], int), HAND_HIST)
    png = cv2.imread(str(directory / "confusion.png"))
    assert png.shape == draw_confusion(_hist(), NAMES)[0].shape
    recorded = json.loads((directory / ".fcn_graph-outputs.json").read_text())["files"]
    assert set(REPORT_FILES) <= set(recorded)


def _cell_colour(image, layout, row, col):
    cell, left, top = layout["cell"], layout["left"], layout["top"]
    return tuple(image[top + row * cell + cell // 2, left + col * cell + 1])


@pytest.mark.parametrize("k", [2, 151])
def test_the_confusion_picture(tmp_path, k):
    """Written for 2 and 151 classes, of a readable size; cells coloured by
    the row-normalised value; above SORT_ABOVE classes sorted by frequency."""
    rng = np.random.default_rng(k)
    hist = rng.integers(0, 5, (k, k))
    hist[0] = 0
    hist[0, 0] = 1000                      # class 0: every pixel right
    hist[1] = 0                            # class 1: no labelled pixel
    if k > 2:
        hist[k - 1, k - 1] += 5000         # the most frequent class
    names = [f"class {i}" for i in range(k)]
    image, layout = draw_confusion(hist, names)
    cell = layout["cell"]
    assert 8 <= cell <= 48
    assert image.shape[0] >= k * cell and image.shape[1] >= k * cell
    assert max(image.shape[:2]) <= 2000
    order = layout["order"]
    if k > SORT_ABOVE:
        assert order[0] == k - 1 and order[-1] == 1
    else:
        assert order == list(range(k))
    row0, row1 = order.index(0), order.index(1)
    assert _cell_colour(image, layout, row0, row0) == _colour(1.0)
    assert _cell_colour(image, layout, row1, row0) == (220, 220, 220)
    folder = OutputFolder(str(tmp_path), "--report")
    folder.claim(report_names([""]))
    write_report(folder, hist, names)
    png = cv2.imread(str(tmp_path / "confusion.png"))
    assert png is not None and png.shape == image.shape


# ---------------------------------------------------------------- --compare

def _write(path, record):
    path.write_text(json.dumps(record))
    return str(path)


A = {"class_names": ["sky", "road"], "per_class_iou": [0.5, None], "mean_iou": 0.5,
     "per_class_accuracy": [0.75, 0.5]}
B = {"class_names": ["sky", "road"], "per_class_iou": [0.75, 0.25], "mean_iou": 0.5,
     "per_class_accuracy": [0.5, 0.5]}


def test_compare_prints_per_class_differences(tmp_path, capsys):
    a, b = _write(tmp_path / "a.json", A), _write(tmp_path / "b.json", B)
    assert evaluate.main(["--compare", a, b]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [f"A: {a}", f"B: {b}", "change: B - A in points"]
    sky = [line for line in lines if " sky " in line][0].split()
    assert sky == ["0", "sky", "0.5000", "0.7500", "+25.00", "0.7500", "0.5000", "-25.00"]
    road = [line for line in lines if " road " in line][0].split()
    assert road == ["1", "road", "n/a", "0.2500", "n/a", "0.5000", "0.5000", "+0.00"]
    assert lines[-1].split() == ["mean", "IU", "A", "0.5000", "B", "0.5000", "change", "+0.00"]
    # without per_class_accuracy in one of them: IoU only
    no_accuracy = {key: value for key, value in B.items() if key != "per_class_accuracy"}
    text = compare_files(a, _write(tmp_path / "c.json", no_accuracy))
    assert "accuracy" not in text and "+25.00" in text


@pytest.mark.parametrize("other,message", [
    ({**B, "class_names": ["sky", "road", "car"], "per_class_iou": [0.1, 0.2, 0.3],
      "per_class_accuracy": None},
     "expected evaluations of the same classes, found 2 and 3 classes"),
    ({**B, "class_names": ["sky", "water"]},
     "expected evaluations of the same classes, found class 1 is 'road' in one and 'water' "
     "in the other"),
    ({**B, "per_class_iou": [0.5]}, "expected per_class_iou, a list of 2 values in [0, 1] or "
                                    "null (one per class name)"),
    ({**B, "per_class_iou": [0.5, 1.5]}, "expected per_class_iou"),
    ({**B, "per_class_iou": [0.5, True]}, "expected per_class_iou"),
    ({**B, "per_class_accuracy": ["high", 0.5]}, "expected per_class_accuracy"),
    ({**B, "mean_iou": "high"}, "expected mean_iou, a number or null, found 'high'"),
    ({"per_class_iou": [0.5, 0.5]}, "expected class_names, a list of class names"),
    ([1, 2], "expected a JSON object written by evaluate, found list"),
])
def test_compare_refuses_in_one_line(tmp_path, capsys, other, message):
    a = _write(tmp_path / "a.json", A)
    b = _write(tmp_path / "b.json", other)
    assert run_cli(evaluate.main, ["--compare", a, b], prog="fcn_graph.evaluate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fcn_graph.evaluate: error: ")
    assert message in err[0]


def test_compare_refuses_what_is_not_an_evaluation_json(tmp_path, capsys):
    a = _write(tmp_path / "a.json", A)
    (tmp_path / "garbled.json").write_bytes(b"{\"class_names\": [\"sky\"\xff")
    (tmp_path / "nan.json").write_text(
        '{"class_names": ["sky", "road"], "per_class_iou": [NaN, 0.5]}')
    (tmp_path / "empty.json").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.json")
    os.mkdir(tmp_path / "dir.json")
    for name, message in (("garbled.json", "not a JSON file of evaluate"),
                          ("nan.json", "expected per_class_iou"),
                          ("empty.json", "not a JSON file of evaluate"),
                          ("fifo.json", "cannot read an evaluation JSON (a FIFO)"),
                          ("dir.json", "cannot read an evaluation JSON"),
                          ("missing.json", "cannot read an evaluation JSON (No such file")):
        path = str(tmp_path / name)
        assert run_cli(evaluate.main, ["--compare", a, path], prog="fcn_graph.evaluate") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"fcn_graph.evaluate: error: {path}: ")
        assert message in err[0], err[0]


# ---------------------------------------------------------------- evaluate end to end

TINY_SPEC = ModelSpec(num_classes=5, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                                mean_pixel=TINY_MEAN)


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory):
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny") / "tiny"), TINY_SPEC)


def _dataset(root):
    """A folder dataset of two odd-sized images with block labels."""
    rng = np.random.default_rng(0)
    for name in ("images", "labels"):
        os.makedirs(root / name)
    images = []
    for stem, (height, width) in (("a", (37, 45)), ("b", (29, 51))):
        noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
        image = np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 4 - 384, 0, 255).astype(np.uint8)
        label = np.zeros((height, width), np.uint8)
        label[height // 2:] = 1
        label[:, width // 2:] = 2
        label[0, 0] = 255
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image[..., ::-1])
        cv2.imwrite(str(root / "labels" / f"{stem}.png"), label)
        images.append((image, label))
    (root / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    (root / "val.txt").write_text("a\nb\n")
    return images


@pytest.mark.parametrize("engine", ["tf", "onnxruntime"])
def test_evaluate_tta_reports_plain_and_augmented(tmp_path, tiny_prefix, capsys, engine):
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    images = _dataset(tmp_path / "data")
    report = tmp_path / "report"
    args = ["--set", "data.kind=folder", "--set", f"data.root={tmp_path / 'data'}",
            "--checkpoint", tiny_prefix, "--split", "val", "--engine", engine,
            "--tta", "flip,scales=0.75,1.25", "--report", str(report),
            "--json", str(tmp_path / "m.json")]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert "with --tta flip,scales=0.75,1.25 (4 variants):" in out
    assert "time augmentation" in out
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["tta"]["variants"] == "flip,scales=0.75,1.25"
    assert record["seconds"]["plain"] > 0 and record["seconds"]["tta"] > 0
    for prefix in ("", "tta_"):
        for name in REPORT_FILES:
            assert (report / (prefix + name)).is_file()
    plain = json.loads((report / "per_class.json").read_text())
    augmented = json.loads((report / "tta_per_class.json").read_text())
    assert plain["mean_iou"] == pytest.approx(record["mean_iou"])
    assert augmented["mean_iou"] == pytest.approx(record["tta"]["mean_iou"])
    assert augmented["tta"] == "flip,scales=0.75,1.25" and plain["tta"] is None
    # independently: the plain and augmented labels of each image, counted
    segmenter = make_segmenter(tiny_prefix, engine=engine)
    tta = TtaSegmenter(segmenter, Tta(True, (0.75, 1.25)))
    want_plain, want_tta = ConfusionMatrix(5), ConfusionMatrix(5)
    for image, label in images:
        want_plain.update(label[None], segmenter.run(image[None])[0])
        want_tta.update(label[None], tta.run(image[None])[0])
    segmenter.close()
    labelled = want_plain.hist.sum()
    assert np.load(report / "confusion.npy").sum() == labelled
    assert np.abs(np.load(report / "confusion.npy") - want_plain.hist).sum() <= 0.01 * labelled
    assert np.abs(np.load(report / "tta_confusion.npy") - want_tta.hist).sum() <= 0.01 * labelled
    assert not np.array_equal(want_plain.hist, want_tta.hist)
    # and the two runs compared
    assert evaluate.main(["--compare", str(report / "per_class.json"),
                          str(report / "tta_per_class.json")]) == 0
    # a second run replaces its own report files
    assert evaluate.main(args) == 0


def test_evaluate_report_never_overwrites_a_foreign_file(tmp_path, tiny_prefix, capsys):
    _dataset(tmp_path / "data")
    report = tmp_path / "report"
    report.mkdir()
    (report / "confusion.csv").write_text("mine")
    code = run_cli(evaluate.main, ["--set", "data.kind=folder", "--set",
                                   f"data.root={tmp_path / 'data'}", "--checkpoint", tiny_prefix,
                                   "--split", "val", "--report", str(report)],
                   prog="fcn_graph.evaluate")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"fcn_graph.evaluate: error: {report / 'confusion.csv'}: exists "
                              "and was not written by fcn_graph")
    assert (report / "confusion.csv").read_text() == "mine"
    assert not (report / "per_class.json").exists()
