"""The training loss against NumPy (value and gradient, with ignored pixels), and
the guard that refuses to save non-finite weights, reached while the loss is finite."""

import os

import numpy as np
import pytest
import tensorflow as tf

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.training import loop as train_module
from fcn_graph.training.config import load_config

tf1 = tf.compat.v1


def numpy_loss_and_gradient(logits, labels):
    """Mean cross-entropy over the pixels not labelled IGNORE_LABEL, and its
    gradient with respect to the logits (zero at ignored pixels)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = labels != IGNORE_LABEL
    count = valid.sum()
    if count == 0:
        return 0.0, np.zeros_like(logits)
    onehot = np.zeros_like(logits)
    onehot[valid, labels[valid]] = 1.0
    loss = -(onehot * log_p).sum() / count
    gradient = (np.exp(log_p) - onehot) * valid[..., None] / count
    return loss, gradient


def tf_loss_and_gradient(logits, labels):
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, logits.shape)
        y = tf1.placeholder(tf.int32, labels.shape)
        loss = train_module.segmentation_loss(x, y)
        (gradient,) = tf1.gradients(loss, [x])
        with tf1.Session(graph=graph) as sess:
            return sess.run([loss, gradient], {x: logits, y: labels})


def _case(seed, ignored_fraction, num_classes=4, shape=(2, 5, 7)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape + (num_classes,)).astype(np.float32)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < ignored_fraction] = IGNORE_LABEL
    return logits, labels


@pytest.mark.parametrize("ignored_fraction", [0.0, 0.4, 0.9])
def test_segmentation_loss_matches_numpy_with_ignored_pixels(ignored_fraction):
    logits, labels = _case(1, ignored_fraction)
    # Logits that favour class 0 strongly at the ignored pixels: if they were
    # counted as class 0 the loss would drop, if they were counted at all the
    # mean would be over too many pixels.
    logits[labels == IGNORE_LABEL, 0] += 5.0
    want_loss, want_gradient = numpy_loss_and_gradient(logits, labels)
    loss, gradient = tf_loss_and_gradient(logits, labels)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, rtol=1e-4, atol=1e-7)
    assert not gradient[labels == IGNORE_LABEL].any()


def test_segmentation_loss_is_not_the_loss_of_a_class0_reading():
    """The two mistakes one can make with IGNORE_LABEL give other numbers here."""
    logits, labels = _case(2, 0.5)
    loss, _ = tf_loss_and_gradient(logits, labels)
    as_class0 = np.where(labels == IGNORE_LABEL, 0, labels)
    all_pixels, _ = numpy_loss_and_gradient(logits, as_class0)
    valid = labels != IGNORE_LABEL
    over_all = numpy_loss_and_gradient(logits, labels)[0] * valid.sum() / labels.size
    assert abs(loss - all_pixels) > 1e-3 and abs(loss - over_all) > 1e-3


def test_segmentation_loss_of_an_all_ignored_batch_is_zero():
    logits, labels = _case(3, 0.0)
    labels[:] = IGNORE_LABEL
    loss, gradient = tf_loss_and_gradient(logits, labels)
    assert loss == 0.0 and not gradient.any()


def _train_args(tmp_path, *extra):
    return [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=4",
            "data.shapes_val_images=2", "data.shapes_image_size=24",
            f"train.log_dir={tmp_path / 'run'}", "model.vgg_width=0.0625", "model.fc_width=8",
            "train.image_size=24", "train.batch_size=2", "train.log_every=1",
            "train.eval_every=0", "train.threads=2", *extra]


def test_non_finite_weights_are_not_saved_while_the_loss_is_finite(tmp_path, monkeypatch):
    """A training step that leaves a NaN in one kernel after the loss of that
    step was computed (finite): the save that follows must refuse."""
    losses = []
    real_make_optimizer = train_module.make_optimizer
    real_loss = train_module.segmentation_loss

    def recording_loss(logits, labels, **options):
        loss = real_loss(logits, labels, **options)
        record = tf.numpy_function(lambda v: losses.append(float(v)) or v, [loss], tf.float32)
        with tf.control_dependencies([record]):
            return tf.identity(loss)

    class Poisoning:
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def minimize(self, loss, global_step=None):
            step = self.optimizer.minimize(loss, global_step=global_step)
            kernel = [v for v in tf1.trainable_variables() if v.op.name.endswith("conv1_1_w")][0]
            with tf.control_dependencies([step]):
                return tf1.assign(kernel, tf.fill(tf.shape(kernel), np.float32(np.nan))).op

    monkeypatch.setattr(train_module, "segmentation_loss", recording_loss)
    monkeypatch.setattr(train_module, "make_optimizer",
                        lambda *a, **k: Poisoning(real_make_optimizer(*a, **k)))
    config = load_config(None, _train_args(tmp_path, "train.max_steps=1",
                                           "train.checkpoint_every=1"))
    with pytest.raises(UserError, match="finite") as caught:
        train_module.train(config)
    assert losses and all(np.isfinite(losses)), losses  # the loss never was the trigger
    assert "the loss is" not in str(caught.value)
    run = tmp_path / "run"
    saved = [name for name in os.listdir(run) if name.startswith("model.ckpt-1")
             and not name.endswith(".json")] if run.exists() else []
    assert saved == [] and tf.train.latest_checkpoint(str(run)) is None


def test_segmentation_loss_of_one_valid_pixel_is_its_cross_entropy():
    logits, labels = _case(4, 0.0)
    labels[:] = IGNORE_LABEL
    labels[1, 2, 3] = 2
    loss, gradient = tf_loss_and_gradient(logits, labels)
    want_loss, want_gradient = numpy_loss_and_gradient(logits, labels)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, rtol=1e-4, atol=1e-7)


def test_kernel_l2_is_half_the_squared_norm_of_the_kernels_only():
    rng = np.random.default_rng(5)
    names = ["inference/conv1_1_w", "inference/conv1_1_b", "inference/W6", "inference/b6",
             "inference/W_t1", "inference/b_t1", "inference/score_fr_w"]
    values = {name: rng.normal(size=(2, 3)).astype(np.float32) for name in names}
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.constant(value) for name, value in values.items()}
        with tf1.Session(graph=graph) as sess:
            got = sess.run(train_module.kernel_l2(variables))
    kernels = [n for n in names if n.endswith("_w") or n.split("/")[-1].startswith("W")]
    assert len(kernels) == 4
    assert got == pytest.approx(sum(0.5 * (values[n].astype(np.float64) ** 2).sum()
                                    for n in kernels), rel=1e-5)
