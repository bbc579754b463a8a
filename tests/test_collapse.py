"""The collapse rules on hand-made sequences of validations and losses: each
fires on a failing run and stays silent on a healthy one."""

import numpy as np
import pytest

from fcn_graph.training import collapse
from fcn_graph.training.collapse import CollapseWatch

LABELS = [700, 100, 120, 80]                    # background 70 %, 30 % other classes
NAMES = ("background", "circle", "rectangle", "triangle")


def validate(watch, step, predicted, labels=LABELS, mean_iou=0.5):
    return watch.validation(step, predicted_counts=predicted, label_counts=labels,
                            mean_iou=mean_iou)


def test_majority_mean_iou_by_hand():
    # predicting class 0 everywhere: IU 0.7 for it, 0 for the three others
    assert collapse.majority_mean_iou(LABELS) == pytest.approx(0.7 / 4)
    # a class absent from the labels is left out, as compute_metrics does
    assert collapse.majority_mean_iou([50, 0, 50]) == pytest.approx(0.5 / 2)
    assert collapse.majority_mean_iou([0, 0]) is None


def test_majority_mean_iou_is_what_the_metrics_give_for_that_prediction():
    from fcn_graph.core.metrics import compute_metrics

    hist = np.zeros((4, 4), np.int64)
    hist[:, 0] = LABELS                          # every pixel predicted background
    assert compute_metrics(hist)["mean_iou"] == pytest.approx(collapse.majority_mean_iou(LABELS))


def test_collapsed_class_thresholds():
    assert collapse.collapsed_class([960, 20, 10, 10], LABELS)[0] == 0
    assert collapse.collapsed_class([950, 30, 10, 10], LABELS) is None   # not above 95 %
    assert collapse.collapsed_class([10, 980, 5, 5], LABELS)[0] == 1     # any class
    # labels with under 5 % of other classes: predicting the majority is right
    assert collapse.collapsed_class([1000, 0, 0, 0], [960, 40, 0, 0]) is None
    assert collapse.collapsed_class([1000, 0, 0, 0], [950, 50, 0, 0]) is not None
    assert collapse.collapsed_class([0, 0], [0, 0]) is None


def test_two_collapsed_validations_in_a_row_warn_once():
    watch = CollapseWatch(patience_steps=0, class_names=NAMES)
    assert validate(watch, 100, [990, 5, 5, 0]) is None     # one is not yet a collapse
    finding = validate(watch, 200, [995, 5, 0, 0])
    assert finding.kind == "collapse" and finding.step == 200
    assert "class 0 (background)" in finding.text and "99.5%" in finding.text
    assert "30.0% of other classes" in finding.text
    assert validate(watch, 300, [999, 1, 0, 0]) is None     # still the same episode
    assert validate(watch, 400, [600, 150, 150, 100]) is None   # recovered
    assert validate(watch, 500, [990, 5, 5, 0]) is None
    assert validate(watch, 600, [990, 5, 5, 0]).kind == "collapse"  # a new episode


def test_alternating_collapse_is_not_two_in_a_row():
    watch = CollapseWatch(patience_steps=0)
    for step in range(1, 9):
        predicted = [990, 5, 5, 0] if step % 2 else [650, 120, 130, 100]
        assert validate(watch, step * 100, predicted) is None


def test_mean_iou_below_the_majority_baseline_warns():
    watch = CollapseWatch(patience_steps=0, class_names=NAMES)
    finding = validate(watch, 100, [500, 200, 200, 100], mean_iou=0.17)
    assert finding.kind == "below_majority"
    assert "0.1700 is below 0.1750" in finding.text and "background" in finding.text
    assert validate(watch, 200, [500, 200, 200, 100], mean_iou=0.10) is None  # same episode
    assert validate(watch, 300, [500, 200, 200, 100], mean_iou=0.175) is None  # not below


def test_a_healthy_sequence_of_validations_stays_silent():
    watch = CollapseWatch(patience_steps=0)
    for step, (predicted, iou) in enumerate([
            ([800, 90, 60, 50], 0.30), ([720, 100, 100, 80], 0.45),
            ([705, 98, 118, 79], 0.70), ([701, 100, 119, 80], 0.85)], 1):
        assert validate(watch, step * 100, predicted, mean_iou=iou) is None


def test_undefined_mean_iou_and_empty_validations_are_silent():
    watch = CollapseWatch(patience_steps=0)
    for step in (1, 2, 3):
        assert validate(watch, step, [0, 0, 0, 0], labels=[0, 0, 0, 0], mean_iou=None) is None


def feed(watch, losses, start=1):
    findings = []
    for step, value in enumerate(losses, start):
        finding = watch.loss(step, value)
        if finding is not None:
            findings.append(finding)
    return findings


def test_a_loss_that_stops_falling_warns_once_per_plateau():
    rng = np.random.default_rng(0)
    falling = 2.0 * np.exp(-np.arange(300) / 80.0) + 0.3 + rng.normal(0, 0.02, 300)
    flat = 1.38 + rng.normal(0, 0.05, 400)      # e.g. log(4): one class predicted
    watch = CollapseWatch(patience_steps=100)
    assert feed(watch, falling) == []
    watch = CollapseWatch(patience_steps=100)
    findings = feed(watch, flat)
    assert len(findings) == 1 and findings[0].kind == "plateau"
    assert findings[0].step in (200, 300, 400)
    assert "has not fallen for 100 steps" in findings[0].text
    assert "steps 1-100" in findings[0].text or "steps 101-200" in findings[0].text


def test_plateau_ends_when_the_loss_falls_again_and_can_return():
    values = [1.0] * 100 + [1.0] * 100 + [0.5] * 100 + [0.5] * 100
    findings = feed(CollapseWatch(patience_steps=100), values)
    assert [f.step for f in findings] == [200, 400]


def test_loss_blocks_with_sparse_logging_and_a_resumed_start():
    """Losses logged every 30 steps from step 151: blocks still close in order."""
    watch = CollapseWatch(patience_steps=100)
    steps = list(range(151, 800, 30))
    findings = [watch.loss(step, 1.0) for step in steps]
    fired = [f for f in findings if f is not None]
    assert len(fired) == 1 and fired[0].step == 301  # the block 201-300 closes at 301


def test_patience_zero_turns_the_loss_rule_off():
    assert feed(CollapseWatch(patience_steps=0), [1.0] * 1000) == []


def test_the_warning_line_names_the_keys_to_change():
    finding = collapse.Finding("collapse", 200, "something was seen")
    line = collapse.warning_line(finding, learning_rate=0.5, vgg_mat=None, class_weights=None)
    assert "\n" not in line and line.startswith("warning: step 200: ")
    for key in ("train.learning_rate", "(now 0.5)", "model.vgg_mat", "train.class_weights",
                "all background", "train.stop_on_collapse"):
        assert key in line, key
    line = collapse.warning_line(finding, learning_rate=0.5, vgg_mat="vgg.mat",
                                 class_weights=[1.0, 2.0])
    assert "model.vgg_mat" not in line and "train.class_weights" not in line
