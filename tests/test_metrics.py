import numpy as np
import pytest

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.metrics import (
    ConfusionMatrix,
    compute_metrics,
    format_metrics,
    metrics_record,
)

# Four classes; class 2 is predicted but never labelled, class 3 appears nowhere.
#   labels       0 0 0 0 1 1 255
#   predictions  0 0 1 2 1 1 0     (the 255 pixel is left out)
# hist (rows = label, columns = prediction):
#   [[2, 1, 1, 0],
#    [0, 2, 0, 0],
#    [0, 0, 0, 0],
#    [0, 0, 0, 0]]
# diag = [2, 2, 0, 0], total 6, row sums [4, 2, 0, 0], column sums [2, 3, 1, 0]
# pixel accuracy = 4 / 6
# class accuracy = [2/4, 2/2, nan, nan]              -> mean accuracy (0.5 + 1) / 2 = 0.75
# union = rows + cols - diag = [4, 3, 1, 0]
# IU = [2/4, 2/3, 0/1, nan]                          -> mean IU (0.5 + 2/3 + 0) / 3 = 7/18
# freq = [4/6, 2/6, 0, 0]                            -> fw IU 4/6*1/2 + 2/6*2/3 = 5/9
LABELS = np.array([0, 0, 0, 0, 1, 1, IGNORE_LABEL])
PREDICTIONS = np.array([0, 0, 1, 2, 1, 1, 0])
EXPECTED_HIST = np.array([[2, 1, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_hand_worked_example():
    cm = ConfusionMatrix(4)
    cm.update(LABELS, PREDICTIONS)
    np.testing.assert_array_equal(cm.hist, EXPECTED_HIST)
    m = cm.compute()
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_accuracy"] == pytest.approx(0.75)
    assert m["mean_iou"] == pytest.approx(7 / 18)
    assert m["frequency_weighted_iou"] == pytest.approx(5 / 9)
    assert m["per_class_iou"][:3] == pytest.approx([0.5, 2 / 3, 0.0])
    assert m["per_class_iou"][3] is None


def test_accumulates_over_batches_of_any_shape():
    cm = ConfusionMatrix(4)
    cm.update(LABELS[:4].reshape(2, 2), PREDICTIONS[:4].reshape(2, 2))
    cm.update(LABELS[4:].reshape(1, 1, 3), PREDICTIONS[4:].reshape(1, 1, 3))
    np.testing.assert_array_equal(cm.hist, EXPECTED_HIST)


def test_matches_score_py_definitions_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(3, 17, 13))
    labels[rng.random(labels.shape) < 0.1] = IGNORE_LABEL
    predictions = rng.integers(0, 5, size=labels.shape)
    cm = ConfusionMatrix(5)
    cm.update(labels, predictions)
    keep = labels != IGNORE_LABEL
    hist = np.zeros((5, 5))
    for a, b in zip(labels[keep], predictions[keep]):
        hist[a, b] += 1
    np.testing.assert_array_equal(cm.hist, hist)
    iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    m = cm.compute()
    assert m["mean_iou"] == pytest.approx(np.nanmean(iu))
    assert m["pixel_accuracy"] == pytest.approx(np.diag(hist).sum() / hist.sum())


def test_out_of_range_labels_and_predictions_are_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"a\.png: label values must be in \[0, 3\).*\[3, 7\]"):
        cm.update(np.array([0, 3, 7, 255]), np.array([0, 0, 0, 0]), source="a.png")
    with pytest.raises(ValueError, match="label values"):
        cm.update(np.array([-1]), np.array([0]))
    with pytest.raises(ValueError, match="prediction values"):
        cm.update(np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    assert cm.hist.sum() == 0


def test_empty_matrix_gives_none_not_nan():
    m = compute_metrics(np.zeros((2, 2)))
    assert m["labelled_pixels"] == 0 and m["per_class_iou"] == [None, None]
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert m[key] is None, key


def test_format_names_classes():
    cm = ConfusionMatrix(4)
    cm.update(LABELS, PREDICTIONS)
    text = format_metrics(cm.compute(), ["bg", "cat", "dog", "cow"])
    assert "mean IU                 0.3889" in text
    assert "cat" in text and "absent" in text


def test_the_json_record_holds_the_four_metrics_the_classes_and_extras():
    metrics = {"pixel_accuracy": 0.5, "mean_accuracy": 0.25, "mean_iou": None,
               "frequency_weighted_iou": 0.125, "per_class_iou": [0.5, None], "num_images": 3,
               "labelled_pixels": 12}
    record = metrics_record(metrics, ("background", "cat"), checkpoint="c", split="val")
    assert record == {"pixel_accuracy": 0.5, "mean_accuracy": 0.25, "mean_iou": None,
                      "frequency_weighted_iou": 0.125, "per_class_iou": [0.5, None],
                      "num_images": 3, "class_names": ["background", "cat"],
                      "checkpoint": "c", "split": "val"}


def test_undefined_metrics_print_as_n_a():
    text = format_metrics(compute_metrics(np.zeros((2, 2), np.int64)), ["bg", "cat"])
    lines = text.splitlines()
    assert lines[:4] == ["pixel accuracy          n/a", "mean accuracy           n/a",
                         "mean IU                 n/a", "frequency weighted IU   n/a"]
    assert lines[-2:] == ["    0  bg                       n/a (absent)",
                          "    1  cat                      n/a (absent)"]
