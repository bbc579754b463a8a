import os

import numpy as np
import pytest
import tensorflow as tf
from portfiles import write_legacy_checkpoint
from tfutil import LEGACY_NAMES, build_graph
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import checkpoint, port
from fcn_graph import model as fcn_model
from fcn_graph.errors import UserError
from fcn_graph.matconvnet import load_vgg_mat

tf1 = tf.compat.v1


def tiny_spec(num_classes=4, mean_pixel=None):
    return fcn_model.ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()), mean_pixel=mean_pixel)


def test_legacy_checkpoint_has_the_expected_layout(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    write_legacy_checkpoint(prefix, tiny_spec())
    names = set(checkpoint.read_variable_shapes(prefix))
    assert {"beta1_power", "beta2_power"} <= names
    assert set(LEGACY_NAMES) <= names
    slots = {n for n in names if n.endswith("/Adam")}
    assert len(slots) == 42 and "inference/conv5_4_w/Adam" not in slots


def test_legacy_checkpoint_restores_without_sidecar(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    values = write_legacy_checkpoint(prefix, tiny_spec(num_classes=7))
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert spec.num_classes == 7 and spec.fc_width == 6
    assert spec.vgg_widths == tuple(TINY_WIDTHS.values())
    assert spec.mean_pixel is None and spec.architecture == "legacy"
    graph, *_, variables = build_graph(spec)
    with tf1.Session(graph=graph) as sess:
        checkpoint.restore_model(sess, checkpoint.resolve_checkpoint(str(tmp_path)), variables)
        restored = dict(zip(variables, sess.run(list(variables.values()))))
    for name in LEGACY_NAMES:
        np.testing.assert_array_equal(restored[name], values[name])


def test_resolve_checkpoint_forms(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    write_legacy_checkpoint(prefix, tiny_spec())
    assert checkpoint.resolve_checkpoint(str(tmp_path)) == prefix
    assert checkpoint.resolve_checkpoint(prefix + ".index") == prefix
    assert checkpoint.resolve_checkpoint(prefix + ".data-00000-of-00001") == prefix
    with pytest.raises(UserError, match="no checkpoint here"):
        checkpoint.resolve_checkpoint(str(tmp_path / "nothing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no checkpoint in this directory"):
        checkpoint.resolve_checkpoint(str(empty))


def test_missing_and_misshaped_variables_are_named(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    write_legacy_checkpoint(prefix, tiny_spec(num_classes=4))
    graph, *_, variables = build_graph(tiny_spec(num_classes=5))
    with tf1.Session(graph=graph) as sess, pytest.raises(UserError) as info:
        checkpoint.restore_model(sess, prefix, variables)
    message = str(info.value)
    assert "inference/W8 is [1, 1, 6, 4], expected [1, 1, 6, 5]" in message
    assert prefix in message and "\n" not in message

    graph = tf.Graph()
    with graph.as_default():
        v = tf1.get_variable("inference/extra_w", [2])
    with tf1.Session(graph=graph) as sess, pytest.raises(UserError, match="missing inference/extra_w"):
        checkpoint.restore_model(sess, prefix, {"inference/extra_w": v})


def test_not_a_checkpoint(tmp_path):
    prefix = str(tmp_path / "junk")
    (tmp_path / "junk.index").write_bytes(b"garbage" * 20)
    with pytest.raises(UserError, match="not a readable TensorFlow checkpoint"):
        checkpoint.model_spec_from_checkpoint(prefix)


def test_mat2ckpt_writes_a_complete_checkpoint(tiny_mat, tmp_path, capsys):
    prefix = str(tmp_path / "out" / "start")
    assert port.main(["mat2ckpt", tiny_mat, "--num-classes", "3", "--fc-width", "6",
                      "--out", prefix]) == 0
    assert "44 variables" in capsys.readouterr().out
    shapes = checkpoint.read_variable_shapes(prefix)
    assert set(shapes) == set(LEGACY_NAMES)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert spec.num_classes == 3 and spec.fc_width == 6
    np.testing.assert_allclose(spec.mean_pixel, TINY_MEAN)
    vgg = load_vgg_mat(tiny_mat)
    stored = checkpoint.read_variables(prefix)
    for name, (kernel, bias) in vgg.layers.items():
        np.testing.assert_array_equal(stored[f"inference/{name}_w"], kernel)
        np.testing.assert_array_equal(stored[f"inference/{name}_b"], bias)
    # Heads as FCN.tensorflow starts them: truncated normal 0.02, zero biases.
    w7 = stored["inference/W7"]
    assert np.all(np.abs(w7) <= 0.04 + 1e-6) and 0.005 < w7.std() < 0.03
    assert not np.any(stored["inference/b_t3"])
    # The .meta is not written; nothing that big leaves the process but the data.
    assert not os.path.exists(prefix + ".meta")


def test_mat2ckpt_bad_inputs(tmp_path, tiny_mat):
    with pytest.raises(UserError, match="--num-classes"):
        port.main(["mat2ckpt", tiny_mat, "--num-classes", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="file not found"):
        port.main(["mat2ckpt", str(tmp_path / "missing.mat"), "--num-classes", "3",
                   "--out", str(tmp_path / "x")])
    assert not list(tmp_path.glob("x*"))


def test_sidecar_round_trip_and_pruning(tmp_path):
    spec = tiny_spec(mean_pixel=(1.0, 2.0, 3.0))
    prefix = str(tmp_path / "a")
    checkpoint.write_sidecar(prefix, spec, note="x")
    record = checkpoint.read_sidecar(prefix)
    assert record["mean_pixel"] == [1.0, 2.0, 3.0] and record["note"] == "x"
    (tmp_path / "config.json").write_text('{"keep": true}')
    checkpoint.prune_sidecars(str(tmp_path))
    assert not os.path.exists(prefix + ".json")
    assert (tmp_path / "config.json").exists()
