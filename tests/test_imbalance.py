"""Class weights, the focal loss and hard-pixel mining against NumPy (value and
gradient with respect to the logits, on odd sizes with ignored pixels), their
sums across two halves of a batch, and median frequency balancing by hand."""

import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.data.splits import SplitFiles
from fcn_graph.training import imbalance
from fcn_graph.training import loop as train_module
from tests.datafixtures import write_gray

tf1 = tf.compat.v1
SHAPE = (3, 5, 7)                                     # odd sizes, [N, H, W]
K = 5


def _case(seed, ignored_fraction=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, SHAPE + (K,)).astype(np.float32)
    labels = rng.integers(0, K, SHAPE).astype(np.int32)
    labels[rng.random(SHAPE) < ignored_fraction] = IGNORE_LABEL
    # Ignored pixels whose logits would give a large loss for class 0: were
    # they counted as class 0, or ranked among the hardest, the numbers move.
    logits[labels == IGNORE_LABEL, 0] -= 8.0
    return logits, labels


def numpy_loss(logits, labels, *, class_weights=None, gamma=None, hard=1.0):
    """(loss, gradient w.r.t. the logits) of sum(w * l) / sum(w), in float64.

    l = -log p_t, or (1 - p_t) ** gamma * -log p_t; w = the class weight of
    the label times the hardest-pixel mask. Gradient by hand:
    dl/dz = (p - onehot) for the cross-entropy, and for the focal loss
    (p - onehot) * (gamma * m ** (gamma - 1) * p_t * l + m ** gamma), m = 1 - p_t.
    Ignored pixels get w = 0; their p_t is that of class 0, unused."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    valid = labels != IGNORE_LABEL
    safe = np.where(valid, labels, 0)
    onehot = np.eye(K)[safe]
    p_t = np.take_along_axis(p, safe[..., None], -1)[..., 0]
    xent = -np.log(p_t)
    if gamma is None:
        loss, factor = xent, np.ones_like(xent)
    else:
        m = 1.0 - p_t
        loss = m ** gamma * xent
        # m ** (gamma - 1) * l written as m ** gamma * (l / m), where l / m -> 1 as m -> 0
        ratio = np.divide(xent, m, out=np.ones_like(m), where=m > 0)
        factor = gamma * m ** gamma * p_t * ratio + m ** gamma
    w = valid.astype(np.float64)
    if hard < 1.0:
        count = int(valid.sum())
        keep = min(count, max(1, math.ceil(Fraction(hard).limit_denominator(10 ** 6) * count)))
        flat = np.where(valid, loss, -np.inf).ravel()
        order = np.argsort(-flat, kind="stable")[:keep]
        mask = np.zeros(flat.size)
        mask[order] = 1.0
        w = w * mask.reshape(valid.shape)
    if class_weights is not None:
        w = w * np.asarray(class_weights, np.float64)[safe]
    total = w.sum()
    if total == 0:
        return 0.0, np.zeros_like(z)
    value = (w * np.where(valid, loss, 0.0)).sum() / total
    gradient = (w * factor)[..., None] * (p - onehot) / total
    return value, gradient


def tf_loss(logits, labels, **options):
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, logits.shape)
        y = tf1.placeholder(tf.int32, labels.shape)
        loss = train_module.segmentation_loss(x, y, **options)
        (gradient,) = tf1.gradients(loss, [x])
        with tf1.Session(graph=graph) as sess:
            return sess.run([loss, gradient], {x: logits, y: labels})


def check(logits, labels, want_options, **options):
    want, want_gradient = numpy_loss(logits, labels, **want_options)
    got, gradient = tf_loss(logits, labels, **options)
    assert got == pytest.approx(want, rel=2e-5, abs=1e-7)
    np.testing.assert_allclose(gradient, want_gradient, rtol=2e-4, atol=1e-7)
    assert not gradient[labels == IGNORE_LABEL].any()
    return got


def test_numpy_reference_gradient_matches_finite_differences():
    """The hand-derived gradients of the reference itself, by central differences."""
    logits, labels = _case(0)
    options = {"class_weights": [0.5, 2.0, 1.0, 0.0, 3.0], "gamma": 1.5}
    _, gradient = numpy_loss(logits, labels, **options)
    z = logits.astype(np.float64)
    rng = np.random.default_rng(1)
    for index in map(tuple, rng.integers(0, [*SHAPE, K], size=(25, 4))):
        step = np.zeros_like(z)
        step[index] = 1e-6
        plus = numpy_loss(z + step, labels, **options)[0]
        minus = numpy_loss(z - step, labels, **options)[0]
        assert (plus - minus) / 2e-6 == pytest.approx(gradient[index], rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("ignored_fraction", [0.0, 0.4])
def test_class_weights_match_numpy(ignored_fraction):
    logits, labels = _case(2, ignored_fraction)
    weights = [0.25, 3.0, 1.0, 0.0, 1.75]
    got = check(logits, labels, {"class_weights": weights}, class_weights=weights)
    unweighted = numpy_loss(logits, labels)[0]
    assert abs(got - unweighted) > 1e-3  # the weights change the number


def test_class_weights_below_one_divide_by_their_sum_not_by_one():
    logits, labels = _case(3)
    labels[:] = IGNORE_LABEL
    labels[0, 1, 2], labels[2, 4, 6] = 1, 2
    weights = [0.1] * K
    check(logits, labels, {"class_weights": weights}, class_weights=weights)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
def test_focal_loss_matches_numpy(gamma):
    logits, labels = _case(4)
    got = check(logits, labels, {"gamma": gamma}, loss="focal", focal_gamma=gamma)
    if gamma:
        assert got < numpy_loss(logits, labels)[0]  # down-weights the easy pixels


def test_focal_loss_with_class_weights_matches_numpy():
    logits, labels = _case(5)
    weights = [1.0, 0.5, 2.0, 4.0, 0.0]
    check(logits, labels, {"class_weights": weights, "gamma": 2.0},
          class_weights=weights, loss="focal", focal_gamma=2.0)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_loss_of_certain_pixels_has_a_finite_gradient(gamma):
    """p_t rounds to 1 in float32: 1 - p_t is 0, where pow's gradient is infinite."""
    logits, labels = _case(6, 0.0)
    safe = labels.astype(np.int64)
    np.put_along_axis(logits, safe[..., None], 200.0, -1)
    logits[0, 0, 0] = 0.0  # one pixel that still has a loss
    loss, gradient = tf_loss(logits, labels, loss="focal", focal_gamma=gamma)
    assert np.isfinite(loss) and np.isfinite(gradient).all()
    want, want_gradient = numpy_loss(logits, labels, gamma=gamma)
    assert loss == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("hard", [0.3, 0.5, 0.07])
def test_hard_pixels_match_numpy(hard):
    logits, labels = _case(7)
    got = check(logits, labels, {"hard": hard}, hard_pixels=hard)
    assert got > numpy_loss(logits, labels)[0]  # the hardest pixels lose more


def test_hard_pixels_with_focal_loss_and_class_weights_match_numpy():
    logits, labels = _case(8)
    weights = [2.0, 0.5, 1.0, 1.0, 3.0]
    check(logits, labels, {"class_weights": weights, "gamma": 1.0, "hard": 0.4},
          class_weights=weights, loss="focal", focal_gamma=1.0, hard_pixels=0.4)


def test_hardest_count_is_exact_for_decimal_fractions():
    assert imbalance.hardest_count(0.3, 10) == 3          # 0.3 * 10 is 3.0000000000000004
    assert imbalance.hardest_count(0.25, 7) == 2
    assert imbalance.hardest_count(1e-9, 5) == 1
    assert imbalance.hardest_count(0.5, 0) == 0
    assert imbalance.hardest_count(1.0, 9) == 9


def test_hard_pixels_keep_that_many_valid_pixels():
    logits, labels = _case(9)
    count = int((labels != IGNORE_LABEL).sum())
    graph = tf.Graph()
    with graph.as_default():
        valid = tf.not_equal(tf.constant(labels), IGNORE_LABEL)
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(valid, labels, 0), logits=tf.constant(logits))
        mask = imbalance.hardest_pixels(xent, valid, 0.3)
        with tf1.Session(graph=graph) as sess:
            got = sess.run(mask)
    assert got.sum() == imbalance.hardest_count(0.3, count) == math.ceil(0.3 * count - 1e-9)
    assert not got[labels == IGNORE_LABEL].any()


@pytest.mark.parametrize("options", [
    {"class_weights": [0.5, 1.0, 2.0, 0.0, 1.0]},
    {"loss": "focal", "focal_gamma": 2.0, "hard_pixels": 0.5,
     "class_weights": [1.0, 1.0, 1.0, 1.0, 0.5]}])
def test_a_batch_of_only_ignored_pixels_has_zero_loss_and_gradient(options):
    logits, labels = _case(10)
    labels[:] = IGNORE_LABEL
    loss, gradient = tf_loss(logits, labels, **options)
    assert loss == 0.0 and not gradient.any()


def test_default_options_give_the_loss_bit_for_bit_as_before():
    """The mean cross-entropy written out as it was computed before the options."""
    logits, labels = _case(11)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(logits)
        y = tf.constant(labels)
        valid = tf.not_equal(y, IGNORE_LABEL)
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(valid, y, tf.zeros_like(y)), logits=x)
        weights = tf.cast(valid, tf.float32)
        before = tf.reduce_sum(xent * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
        (before_gradient,) = tf1.gradients(before, [x])
        options = train_module.loss_options(_default_train_config())
        now = train_module.segmentation_loss(x, y, **options)
        (now_gradient,) = tf1.gradients(now, [x])
        with tf1.Session(graph=graph) as sess:
            values = sess.run([before, now, before_gradient, now_gradient])
    assert values[0] == values[1]
    assert np.array_equal(values[2], values[3])


def _default_train_config():
    from fcn_graph.training.config import load_config

    return load_config(None).train


@pytest.mark.parametrize("options, exact", [
    ({"class_weights": [0.5, 1.0, 2.0, 0.0, 1.0]}, True),
    ({"loss": "focal", "focal_gamma": 2.0, "class_weights": [1.0, 3.0, 1.0, 1.0, 0.5]}, True),
    ({"hard_pixels": 0.4}, False)])
def test_two_halves_summed_equal_the_whole_batch_except_for_hard_pixels(options, exact):
    """The sums of `segmentation_loss_sum` on two halves of a batch, added and
    divided as the devices and tasks do, give the loss of the whole batch;
    hard-pixel mining picks the hardest pixels of each half instead."""
    logits, labels = _case(12)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(logits)
        y = tf.constant(labels)
        parts = [train_module.segmentation_loss_sum(x[i:j], y[i:j], **options)
                 for i, j in ((0, 1), (1, 3))]
        total = tf.add_n([s for s, _ in parts]) * train_module.loss_scale(
            tf.add_n([w for _, w in parts]), options.get("class_weights"))
        (gradient,) = tf1.gradients(total, [x])
        whole = train_module.segmentation_loss(x, y, **options)
        (whole_gradient,) = tf1.gradients(whole, [x])
        with tf1.Session(graph=graph) as sess:
            got, got_gradient, want, want_gradient = sess.run(
                [total, gradient, whole, whole_gradient])
    if exact:
        assert got == pytest.approx(want, rel=1e-6)
        np.testing.assert_allclose(got_gradient, want_gradient, rtol=1e-5, atol=1e-8)
        return
    # per half: the numerators and denominators of each half's own selection
    sums = []
    for i, j in ((0, 1), (1, 3)):
        value, _ = numpy_loss(logits[i:j], labels[i:j], hard=options["hard_pixels"])
        count = imbalance.hardest_count(options["hard_pixels"],
                                        int((labels[i:j] != IGNORE_LABEL).sum()))
        sums.append((value * count, count))
    assert got == pytest.approx(sum(s for s, _ in sums) / sum(c for _, c in sums), rel=1e-5)
    assert abs(got - want) > 1e-4


# --------------------------------------------------------------------------- median frequency


def test_median_frequency_weights_by_hand():
    # class 0: 60 pixels in images of 100 labelled pixels -> freq 0.6
    # class 1: 10 pixels in images of 40 -> 0.25; class 2: 30 in 100 -> 0.3;
    # class 3: never. Median of (0.6, 0.25, 0.3) = 0.3.
    weights = imbalance.median_frequency_weights([60, 10, 30, 0], [100, 40, 100, 0])
    np.testing.assert_allclose(weights, [0.3 / 0.6, 0.3 / 0.25, 1.0, 0.0])


def test_label_pixel_counts_and_weights_from_label_files(tmp_path):
    a = np.zeros((3, 5), np.uint8)
    a[0, :2] = 1
    a[2, :] = IGNORE_LABEL                       # 10 labelled pixels: 8 of 0, 2 of 1
    b = np.full((4, 3), 2, np.uint8)
    b[0, 0] = 0                                  # 12 pixels: 1 of 0, 11 of 2
    paths = []
    for name, label in (("a", a), ("b", b)):
        write_gray(str(tmp_path / f"{name}.png"), label)
        paths.append(str(tmp_path / f"{name}.png"))
    files = SplitFiles("folder", "train", tuple(paths), tuple(paths), ())
    class_pixels, image_pixels = imbalance.label_pixel_counts(files, 4)
    assert class_pixels.tolist() == [9, 2, 11, 0]
    assert image_pixels.tolist() == [22, 10, 12, 0]
    weights = imbalance.resolve_class_weights("median_frequency", files, 4,
                                              class_names=("bg", "x", "y", "z"))
    freq = np.array([9 / 22, 2 / 10, 11 / 12])
    np.testing.assert_allclose(weights, list(np.median(freq) / freq) + [0.0])


def test_recorded_weights_are_used_instead_of_the_labels(tmp_path, capsys):
    files = SplitFiles("folder", "train", ("missing.png",), ("missing.png",), ())
    weights = imbalance.resolve_class_weights("median_frequency", files, 3,
                                              recorded=[0.5, 1.0, 2.0])
    assert weights == [0.5, 1.0, 2.0]  # no label file was read
    line = capsys.readouterr().err.strip().splitlines()
    assert len(line) == 1 and "median_frequency" in line[0] and "resumed" in line[0]


@pytest.mark.parametrize("weights, message", [
    ([1.0, 2.0], "expected one weight per class, 3 numbers (the classes of split 'train'), "
                 "found 2"),
    ([1.0, -2.0, 1.0], "expected finite numbers >= 0, found -2.0"),
    ([1.0, float("nan"), 1.0], "found nan"),
    ([0.0, 0.0, 0.0], "every weight is 0")])
def test_class_weights_of_the_wrong_length_or_value_are_one_line_errors(weights, message):
    files = SplitFiles("folder", "train", (), (), ())
    with pytest.raises(UserError, match="train.class_weights: ") as caught:
        imbalance.resolve_class_weights(weights, files, 3)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("setting, message", [
    ("train.class_weights=[1, 2]", "--set: train.class_weights: expected one weight per "
                                   "class, 3 numbers (model.num_classes), found 2"),
    ("train.class_weights=[1, -0.5, 1]", "train.class_weights: expected finite numbers >= 0, "
                                         "found -0.5"),
    ("train.class_weights=[1, NaN, 1]", "train.class_weights: expected finite numbers >= 0, "
                                        "found nan"),
    ("train.class_weights=[1, Infinity, 1]", "found inf"),
    ("train.class_weights=[0, 0, 0]", "train.class_weights: every weight is 0"),
    ("train.class_weights=[]", "train.class_weights: expected one weight per class, found an "
                               "empty list"),
    ("train.class_weights=[1, \"a\", 1]", "train.class_weights: expected a number, found "
                                          "string 'a'"),
    ("train.class_weights=[1, true, 1]", "train.class_weights: expected a number, found true"),
    ("train.class_weights=median", "train.class_weights: expected a list of numbers, "
                                   "\"median_frequency\" or null, found 'median'"),
    ("train.class_weights=3", "train.class_weights: expected a list, a string or null, "
                              "found 3"),
    ("train.loss=dice", "train.loss: expected one of cross_entropy, focal, found 'dice'"),
    ("train.focal_gamma=-1", "train.focal_gamma: expected a number in [0, 100], found -1.0"),
    ("train.focal_gamma=NaN", "train.focal_gamma: expected a number in [0, 100], found nan"),
    ("train.focal_gamma=Infinity", "train.focal_gamma: expected a number in [0, 100], found inf"),
    ("train.hard_pixels=0", "train.hard_pixels: expected a number in (0, 1], found 0.0"),
    ("train.hard_pixels=1.5", "train.hard_pixels: expected a number in (0, 1], found 1.5"),
    ("train.hard_pixels=NaN", "train.hard_pixels: expected a number in (0, 1], found nan"),
    ("train.patience_steps=-1", "train.patience_steps: expected an integer in 0..1000000000000, found -1"),
    ("train.patience_steps=1.5", "train.patience_steps: expected an integer, found 1.5"),
    ("train.stop_on_collapse=1", "train.stop_on_collapse: expected true or false, found 1"),
    ("train.warn_on_collapse=\"no\"", "train.warn_on_collapse: expected true or false"),
])
def test_config_errors_name_the_key_on_one_line(setting, message):
    from fcn_graph.training.config import load_config

    with pytest.raises(UserError) as caught:
        load_config(None, ["model.num_classes=3", setting])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_config_accepts_the_new_keys_and_keeps_todays_defaults(tmp_path):
    from fcn_graph.training.config import load_config

    t = load_config(None).train
    assert (t.class_weights, t.loss, t.hard_pixels, t.stop_on_collapse, t.warn_on_collapse) \
        == (None, "cross_entropy", 1.0, False, True)
    path = tmp_path / "c.json"
    path.write_text('{"model": {"num_classes": 3}, "train": {"class_weights": [1, 2.5, 0],'
                    ' "loss": "focal", "focal_gamma": 0, "hard_pixels": 0.25}}')
    t = load_config(str(path)).train
    assert t.class_weights == [1.0, 2.5, 0.0] and t.focal_gamma == 0.0
    assert load_config(None, ["train.class_weights=median_frequency"]).train.class_weights \
        == "median_frequency"
    # without model.num_classes the length is checked against the dataset's count
    assert load_config(None, ["train.class_weights=[1, 2]"]).train.class_weights == [1.0, 2.0]


@pytest.mark.parametrize("recorded, message", [
    ("[1, 2]", "expected one weight per class, 3 numbers"),
    ('[1, -1, 2]', "expected finite numbers >= 0, found -1"),
    ('"median_frequency"', "expected a list of numbers"),
])
def test_bad_recorded_weights_name_the_sidecar(tmp_path, recorded, message):
    from fcn_graph.weights.checkpoint import SIDECAR_FORMAT

    prefix = str(tmp_path / "model.ckpt-4")
    sidecar = tmp_path / "model.ckpt-4.json"
    sidecar.write_text(f'{{"format": "{SIDECAR_FORMAT}", "class_weights": {recorded}}}')
    with pytest.raises(UserError) as caught:
        imbalance.recorded_weights(prefix, 3)
    assert str(caught.value).startswith(f"{sidecar}: class_weights: ")
    assert message in str(caught.value)


def test_recorded_weights_absent_from_a_sidecar_are_none(tmp_path):
    from fcn_graph.weights.checkpoint import SIDECAR_FORMAT

    assert imbalance.recorded_weights(str(tmp_path / "none"), 3) is None
    (tmp_path / "m.json").write_text(f'{{"format": "{SIDECAR_FORMAT}"}}')
    assert imbalance.recorded_weights(str(tmp_path / "m"), 3) is None
    (tmp_path / "w.json").write_text(f'{{"format": "{SIDECAR_FORMAT}", '
                                     f'"class_weights": [0.5, 1, 2]}}')
    assert imbalance.recorded_weights(str(tmp_path / "w"), 3) == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbled", b"not a png"])
def test_an_unreadable_label_file_stops_the_count_in_one_line(tmp_path, content):
    good = tmp_path / "good.png"
    write_gray(str(good), np.zeros((3, 3), np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    files = SplitFiles("folder", "train", (str(good), str(bad)), (str(good), str(bad)), ())
    with pytest.raises(UserError) as caught:
        imbalance.resolve_class_weights("median_frequency", files, 2)
    text = str(caught.value)
    assert text.startswith("train.class_weights: ") and str(bad) in text and "\n" not in text


def test_a_split_without_labelled_pixels_has_no_median_frequency(tmp_path):
    path = tmp_path / "ignored.png"
    write_gray(str(path), np.full((4, 5), IGNORE_LABEL, np.uint8))
    files = SplitFiles("folder", "train", (str(path),), (str(path),), ())
    with pytest.raises(UserError, match="found no labelled pixel in the 1 label files"):
        imbalance.resolve_class_weights("median_frequency", files, 2)
