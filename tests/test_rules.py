"""Rules that the mutation run (tools/mutation.sh) showed untested: the metrics of
an empty or partly empty confusion matrix, the messages and report of the
metrics module."""

import warnings

import numpy as np
import pytest

from fcn_graph import metrics
from fcn_graph.constants import IGNORE_LABEL


def test_metrics_of_an_empty_matrix_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.compute_metrics(np.zeros((3, 3), np.int64))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert np.isnan(result[key]), key
    assert result["per_class_iou"] == [None, None, None]


def test_absent_classes_give_no_warnings_and_are_left_out_of_the_means():
    hist = np.array([[3, 0, 1], [0, 0, 0], [2, 0, 4]])  # class 1: no labels, no predictions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.compute_metrics(hist)
    assert result["per_class_iou"][1] is None
    assert [result["per_class_iou"][i] for i in (0, 2)] == pytest.approx([3 / 6, 4 / 7])
    assert result["mean_iou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert result["mean_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert result["frequency_weighted_iou"] == pytest.approx(4 / 10 * 3 / 6 + 6 / 10 * 4 / 7)


def test_one_class_is_enough_and_counts_are_exact_integers():
    matrix = metrics.ConfusionMatrix(1)
    matrix.update(np.zeros((2, 3)), np.zeros((2, 3)))
    assert matrix.hist.tolist() == [[6]] and matrix.hist.dtype.kind == "i"
    assert matrix.compute()["mean_iou"] == 1.0
    with pytest.raises(ValueError, match="num_classes: expected a positive integer, found 0"):
        metrics.ConfusionMatrix(0)


def test_update_messages_name_the_source_and_at_most_ten_values():
    matrix = metrics.ConfusionMatrix(2)
    labels = np.arange(2, 14).reshape(3, 4)  # twelve values out of range
    with pytest.raises(ValueError) as caught:
        matrix.update(labels, np.zeros_like(labels))
    message = str(caught.value)
    assert message.startswith("label values must be in [0, 2)")
    assert message.endswith(f"found {list(range(2, 12))}")
    predictions = np.full((3, 4), 7)
    predictions[0, 0] = 5
    with pytest.raises(ValueError) as caught:
        matrix.update(np.zeros_like(predictions), predictions, source="a.png")
    assert str(caught.value) == "a.png: prediction values must be in [0, 2), found [5, 7]"
    with pytest.raises(ValueError) as caught:
        matrix.update(np.zeros_like(predictions), np.full((3, 4), 9))
    assert str(caught.value).startswith("prediction values") and "[9]" in str(caught.value)
    many = np.arange(2, 14).reshape(3, 4)
    with pytest.raises(ValueError) as caught:
        matrix.update(np.zeros_like(many), many)
    assert str(caught.value).endswith(f"found {list(range(2, 12))}")
    matrix.update(np.full((2, 2), IGNORE_LABEL), np.zeros((2, 2)))  # ignored: nothing counted
    assert matrix.hist.sum() == 0


def test_format_metrics_report():
    result = {"pixel_accuracy": 0.5, "mean_accuracy": 0.25, "mean_iou": 0.125,
              "frequency_weighted_iou": 0.75, "per_class_iou": [0.5, None, 0.25]}
    assert metrics.format_metrics(result, ["background", "cat"]).splitlines() == [
        "pixel accuracy          0.5000",
        "mean accuracy           0.2500",
        "mean IU                 0.1250",
        "frequency weighted IU   0.7500",
        "",
        "class  name                     IoU",
        "    0  background               0.5000",
        "    1  cat                         -  (absent)",
        "    2                           0.2500",
    ]
    assert "\n    0                           0.5000\n" in metrics.format_metrics(result)
