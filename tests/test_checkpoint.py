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


# ---- saving, pruning and removing: the files that must survive ----

def _tiny_session():
    """A graph with two model variables, its session (initialised) and a Saver."""
    graph = tf.Graph()
    with graph.as_default():
        with tf1.variable_scope("inference"):
            a = tf1.get_variable("a", initializer=np.arange(6, dtype=np.float32).reshape(2, 3))
            tf1.get_variable("b", initializer=np.float32(2.5))
        step = tf1.train.get_or_create_global_step()
        saver = tf1.train.Saver(max_to_keep=None)
        sess = tf1.Session(graph=graph)
        sess.run(tf1.global_variables_initializer())
    return sess, saver, a, step


def _saved_steps(directory, steps, name="model.ckpt"):
    """DIRECTORY/NAME-STEP for each of `steps`, from `_tiny_session`."""
    sess, saver, _, _ = _tiny_session()
    with sess:
        for step in steps:
            checkpoint.save_model(sess, saver, str(directory / name), tiny_spec(),
                                  global_step=step)


def _files(directory):
    return sorted(os.listdir(directory))


def test_save_checkpoint_writes_then_prunes_to_keep_then_names_the_kept(tmp_path):
    sess, saver, a, _ = _tiny_session()
    saved = []
    with sess:
        for step in (1, 2, 3, 4):
            sess.run(a.assign(np.full((2, 3), step, np.float32)))
            prefix = checkpoint.save_checkpoint(sess, saver, str(tmp_path), tiny_spec(),
                                                step=step, keep=2, on_saved=saved.append)
            assert prefix == str(tmp_path / f"model.ckpt-{step}")
    assert saved == [str(tmp_path / f"model.ckpt-{s}") for s in (1, 2, 3, 4)]
    names = _files(tmp_path)
    assert [n for n in names if n.endswith(".index")] == ["model.ckpt-3.index",
                                                         "model.ckpt-4.index"]
    assert [n for n in names if n.endswith(".json")] == ["model.ckpt-3.json", "model.ckpt-4.json"]
    assert not [n for n in names if n.startswith(("model.ckpt-1", "model.ckpt-2"))]
    state = (tmp_path / "checkpoint").read_text(encoding="utf-8").splitlines()
    assert state == ['model_checkpoint_path: "model.ckpt-4"',
                     'all_model_checkpoint_paths: "model.ckpt-3"',
                     'all_model_checkpoint_paths: "model.ckpt-4"']
    values = checkpoint.read_variables(str(tmp_path / "model.ckpt-3"))
    np.testing.assert_array_equal(values["inference/a"], np.full((2, 3), 3, np.float32))


def test_prune_keeps_the_newest_complete_and_leaves_others_alone(tmp_path):
    _saved_steps(tmp_path, (1, 2, 3, 4, 5))
    _saved_steps(tmp_path, (1,), name="other")
    # the newest one loses its data: incomplete, it neither counts nor goes
    for name in _files(tmp_path):
        if name.startswith("model.ckpt-5.data"):
            os.remove(tmp_path / name)
    kept = checkpoint.prune_checkpoints(str(tmp_path), 2)
    assert kept == [str(tmp_path / "model.ckpt-4"), str(tmp_path / "model.ckpt-3")]
    names = _files(tmp_path)
    assert "model.ckpt-5.index" in names and "model.ckpt-5.json" in names
    assert "other-1.index" in names and "other-1.json" in names  # another pattern
    assert not [n for n in names if n.startswith(("model.ckpt-1.", "model.ckpt-2."))]
    assert checkpoint.prune_checkpoints(str(tmp_path), 5) == kept  # nothing more to remove


def test_prune_with_no_complete_checkpoint_removes_nothing(tmp_path):
    _saved_steps(tmp_path, (1, 2))
    for name in _files(tmp_path):
        if ".data-" in name:
            os.remove(tmp_path / name)
    before = _files(tmp_path)
    assert checkpoint.prune_checkpoints(str(tmp_path), 1) == []
    assert _files(tmp_path) == before


def test_remove_checkpoint_takes_its_files_only(tmp_path):
    sess, saver, _, _ = _tiny_session()
    with sess:
        for name in ("m-1", "m-10", "m-1x"):
            checkpoint.save_model(sess, saver, str(tmp_path / name), tiny_spec())
    (tmp_path / "m-1.meta").write_bytes(b"graph")
    (tmp_path / "m-10.txt").write_text("notes")
    (tmp_path / "notes.json").write_text("{}")
    checkpoint.remove_checkpoint(str(tmp_path / "m-1"))
    names = _files(tmp_path)
    assert not [n for n in names if n.startswith("m-1.")]
    assert {"m-10.index", "m-10.json", "m-10.txt", "m-1x.index", "m-1x.json",
            "notes.json"} <= set(names)
    checkpoint.remove_checkpoint(str(tmp_path / "m-1"))  # gone already: nothing happens


def test_remove_checkpoint_keeps_a_json_that_is_not_a_sidecar(tmp_path):
    sess, saver, _, _ = _tiny_session()
    with sess:
        prefix = checkpoint.save_model(sess, saver, str(tmp_path / "m"), tiny_spec())
    (tmp_path / "m.json").write_text('{"mine": true}')
    checkpoint.remove_checkpoint(prefix)
    assert _files(tmp_path) == ["m.json"]


def test_a_failed_save_removes_what_it_wrote_and_keeps_what_was_there(tmp_path, monkeypatch):
    sess, saver, _, _ = _tiny_session()
    with sess:
        earlier = checkpoint.save_model(sess, saver, str(tmp_path / "model.ckpt"), tiny_spec(),
                                        global_step=1)
        before = _files(tmp_path)
        # leftovers of a killed save of step 2, and files of other names
        (tmp_path / "model.ckpt-2.index.tempstate123").write_bytes(b"x")
        (tmp_path / "model.ckpt-20.index").write_bytes(b"not ours")
        (tmp_path / "model.ckpt-2.txt").write_text("notes")
        real_save = tf1.train.Saver.save

        def failing_save(self, sess, prefix, **kwargs):
            real_save(self, sess, prefix, **kwargs)
            os.mkdir(prefix + "_temp")  # as a sharded save leaves it
            with open(os.path.join(prefix + "_temp", "part-00000-of-00001.index"), "wb"):
                pass
            raise OSError(28, "No space left on device", prefix + ".index")

        monkeypatch.setattr(tf1.train.Saver, "save", failing_save)
        with pytest.raises(UserError) as info:
            checkpoint.save_model(sess, saver, str(tmp_path / "model.ckpt"), tiny_spec(),
                                  global_step=2)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "model.ckpt-2") + ": cannot write the checkpoint:")
    assert "No space left on device" in message and "model.ckpt-2.index" in message
    assert _files(tmp_path) == sorted(before + ["model.ckpt-2.txt", "model.ckpt-20.index"])
    assert checkpoint.checkpoint_problem(earlier) is None


def test_an_op_error_names_its_reason_line():
    err = tf.errors.ResourceExhaustedError(
        None, None, "Graph execution error:\n\nDetected at node save/x:\n  File \"a.py\"\n"
                    "Node: 'save/SaveV2'\n/tmp/m.index.tempstate1; No space left on device\n"
                    "\t [[{{node save/SaveV2}}]]\nHint: more")
    assert checkpoint.op_error_reason(err) == "/tmp/m.index.tempstate1; No space left on device"
    only_preamble = tf.errors.UnknownError(None, None, "Graph execution error:\n  indented\n")
    assert checkpoint.op_error_reason(only_preamble) == "UnknownError: Graph execution error:"
    assert checkpoint.op_error_reason(ValueError("")) == "ValueError"


def test_problem_summary_shows_three_and_counts_the_rest():
    problems = [(f"v{i}", "is cut short") for i in range(5)]
    assert checkpoint._problem_summary(problems[:1]) == "'v0' is cut short"
    assert checkpoint._problem_summary(problems) == (
        "'v0' is cut short; 'v1' is cut short; 'v2' is cut short; and 2 more")
    assert checkpoint._problem_summary(problems[:3]) == (
        "'v0' is cut short; 'v1' is cut short; 'v2' is cut short")


def test_find_checkpoints_fills_in_each_problem(tmp_path):
    _saved_steps(tmp_path, (1, 2))
    shard = next(n for n in _files(tmp_path) if n.startswith("model.ckpt-2.data"))
    with open(tmp_path / shard, "r+b") as handle:
        handle.truncate(3)
    found = checkpoint.find_checkpoints(str(tmp_path))
    assert [os.path.basename(r.prefix) for r in found] == ["model.ckpt-2", "model.ckpt-1"]
    assert found[0].problem and found[1].problem is None
    quick = checkpoint.find_checkpoints(str(tmp_path), full=False)
    assert quick[0].problem and quick[1].problem is None


def test_check_finite_refuses_a_nan_and_passes_finite_values(tmp_path):
    sess, saver, a, _ = _tiny_session()
    with sess:
        good = checkpoint.save_model(sess, saver, str(tmp_path / "good"), tiny_spec())
        sess.run(a.assign(np.array([[1, np.nan, 3], [4, 5, 6]], np.float32)))
        bad = checkpoint.save_model(sess, saver, str(tmp_path / "bad"), tiny_spec())
    checkpoint.check_finite(good)
    with pytest.raises(UserError) as info:
        checkpoint.check_finite(bad)
    message = str(info.value)
    assert message.startswith(bad + ": 'inference/a'") and message.endswith("; the checkpoint is unusable")
