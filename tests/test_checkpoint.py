import dataclasses
import io
import json
import locale
import os

import numpy as np
import pytest
import tensorflow as tf
from portfiles import write_legacy_checkpoint
from tfutil import LEGACY_NAMES, build_graph
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import port
from fcn_graph.core.errors import UserError
from fcn_graph.network import tf_layers
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat

tf1 = tf.compat.v1


def tiny_spec(num_classes=4, mean_pixel=None):
    return ModelSpec(num_classes=num_classes, fc_width=6,
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


def test_mat2ckpt_bad_inputs(tmp_path, tiny_mat, capsys):
    with pytest.raises(SystemExit) as stop:
        port.main(["mat2ckpt", tiny_mat, "--num-classes", "0", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2
    assert "argument --num-classes: expected an integer in 2..255, found '0'" in \
        capsys.readouterr().err
    with pytest.raises(UserError, match="missing.mat: no such file"):
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


# ---- damaged checkpoints, restore checks, sidecars and clean-up, in-process ----

def _write_variables(prefix, values):
    """A checkpoint at `prefix` (with its sidecar) holding `values` (name -> array)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf1.get_variable(name, initializer=value) for name, value in values.items()}
        init = tf1.variables_initializer(list(variables.values()))
        saver = tf1.train.Saver(var_list=variables)
    with tf1.Session(graph=graph) as sess:
        sess.run(init)
        return checkpoint.save_model(sess, saver, prefix, tiny_spec())


def _graph_variables(shapes):
    """A graph with a zero float variable per name -> shape, and the variables."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf1.get_variable(name, initializer=np.zeros(shape, np.float32))
                     for name, shape in shapes.items()}
    return graph, variables


A_VALUES = np.arange(6, dtype=np.float32).reshape(2, 3)
NAN_A = np.array([[1, np.nan, 3], [4, 5, 6]], np.float32)


def test_checkpoint_problem_names_what_is_wrong(tmp_path):
    assert checkpoint.checkpoint_problem(str(tmp_path / "nothing")) == "nothing.index is missing"
    nan = _write_variables(str(tmp_path / "nan"), {"inference/a": NAN_A})
    assert checkpoint.checkpoint_problem(nan) == "'inference/a' holds 1 NaN value"
    assert checkpoint.checkpoint_problem(nan, full=True) == "'inference/a' holds 1 NaN value"
    assert checkpoint.checkpoint_problem(nan, full=False) is None  # files complete, values unread

    gone = _write_variables(str(tmp_path / "gone"), {"inference/a": A_VALUES})
    os.remove(gone + ".data-00000-of-00001")
    expected = f"the data file is missing (expected {gone}.data-00000-of-00001 beside {gone}.index)"
    assert checkpoint.checkpoint_problem(gone) == expected
    assert checkpoint.checkpoint_problem(gone, full=False) == expected

    folder = _write_variables(str(tmp_path / "folder"), {"inference/a": A_VALUES})
    data = folder + ".data-00000-of-00001"
    os.remove(data)
    os.mkdir(data)
    # the message starts with the data file's path, not the prefix: kept whole
    assert checkpoint.checkpoint_problem(folder) == (
        f"{data}: is a directory, not a regular file; expected a file of the checkpoint {folder}")

    shards = _write_variables(str(tmp_path / "shards"), {"inference/a": A_VALUES})
    os.rename(shards + ".data-00000-of-00001", shards + ".data-00000-of-00002")
    assert checkpoint.checkpoint_problem(shards) == (
        f"data file {shards}.data-00001-of-00002 is missing")


def test_find_checkpoints_reads_the_values_unless_told_not_to(tmp_path):
    _write_variables(str(tmp_path / "model.ckpt-1"), {"inference/a": NAN_A})
    assert [r.problem for r in checkpoint.find_checkpoints(str(tmp_path))] == [
        "'inference/a' holds 1 NaN value"]
    assert [r.problem for r in checkpoint.find_checkpoints(str(tmp_path), full=True)] == [
        "'inference/a' holds 1 NaN value"]
    assert [r.problem for r in checkpoint.find_checkpoints(str(tmp_path), full=False)] == [None]


def test_newest_complete_skips_broken_newer_ones_and_says_why(tmp_path):
    _saved_steps(tmp_path, (1, 2))
    nan = _write_variables(str(tmp_path / "model.ckpt-3"), {"inference/a": NAN_A})
    two = str(tmp_path / "model.ckpt-2")
    os.remove(two + ".data-00000-of-00001")
    log = io.StringIO()
    found = checkpoint.newest_complete(str(tmp_path), log=log)
    assert found.prefix == str(tmp_path / "model.ckpt-1") and found.problem is None
    assert log.getvalue() == (
        f"skipping checkpoint {nan}: 'inference/a' holds 1 NaN value\n"
        f"skipping checkpoint {two}: the data file is missing (expected "
        f"{two}.data-00000-of-00001 beside {two}.index)\n")


@pytest.mark.parametrize("count", [4, 5])
def test_newest_complete_names_four_broken_ones_and_counts_the_rest(tmp_path, count):
    for step in range(1, count + 1):
        (tmp_path / f"model.ckpt-{step}.data-00000-of-00001").write_bytes(b"")
    named = "; ".join(f"model.ckpt-{s}: model.ckpt-{s}.index is missing"
                      for s in range(count, count - 4, -1))
    more = " and 1 more" if count == 5 else ""
    with pytest.raises(UserError) as info:
        checkpoint.newest_complete(str(tmp_path))
    assert str(info.value) == (f"{tmp_path}: holds {count} checkpoint(s) but none reads "
                               f"({named}{more}); move them away to start over")


@pytest.mark.parametrize("err, expected", [
    (IndexError("list index out of range"), "a data file is cut short (truncated or partly written)"),
    (tf.errors.OutOfRangeError(None, None, "end of file"),
     "a data file is cut short (truncated or partly written)"),
    (tf.errors.DataLossError(None, None, "Read less bytes than requested"),
     "a data file is cut short (truncated or partly written)"),
    (tf.errors.DataLossError(None, None, "Checksum does not match: stored 1 vs. calculated 2"),
     "a data file is corrupted (its checksum does not match)"),
    (tf.errors.NotFoundError(None, None, "Failed to restore\n/x/m.data-00000-of-00001; No such "
                                         "file or directory\nmore"),
     "a data file is missing (/x/m.data-00000-of-00001)"),
    (tf.errors.DataLossError(None, None, "Unable to open table file /x/m.index: not an sstable "
                                         "(bad magic number)\nsecond line"),
     "the .index file is damaged or truncated (Unable to open table file /x/m.index: not an "
     "sstable (bad magic number))"),
    (tf.errors.InvalidArgumentError(None, None, "{{function_node __wrapped__RestoreV2}} Key "
                                                "{{x}} not found [Op:RestoreV2]\nsecond"),
     "InvalidArgumentError: Key {{x}} not found"),
    (ValueError("\n  \nfirst\nsecond"), "ValueError: first"),
    (ValueError(""), "ValueError: no detail"),
    (ValueError("{{function_node cut short"), "ValueError: {{function_node cut short"),
])
def test_read_error_says_what_is_wrong_in_one_line(err, expected):
    assert checkpoint._read_error(err) == expected


def test_every_unreadable_or_non_finite_tensor_is_named(tmp_path):
    prefix = _write_variables(str(tmp_path / "m"), {"inference/a": A_VALUES,
                                                     "inference/b": np.float32(np.nan)})
    data = prefix + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    start = bytes(raw).find(A_VALUES.tobytes())
    raw[start + 4] ^= 0xFF  # one byte of 'inference/a' flipped
    with open(data, "wb") as handle:
        handle.write(raw)
    corrupted = "cannot be read: a data file is corrupted (its checksum does not match)"
    assert checkpoint.checkpoint_problems(prefix) == [("inference/a", corrupted),
                                                      ("inference/b", "holds 1 NaN value")]
    with pytest.raises(UserError) as info:
        checkpoint.read_variables(prefix)
    assert str(info.value) == f"{prefix}: variable 'inference/a' {corrupted}; the checkpoint is unusable"


def test_sidecar_holds_the_spec_fields_and_the_extras(tmp_path):
    spec = tiny_spec(mean_pixel=(1, 2, 3))
    prefix = str(tmp_path / "m")
    checkpoint.write_sidecar(prefix, spec, note="x")
    with open(prefix + ".json", encoding="utf-8") as handle:
        written = json.load(handle)
    # every field but the backbone, which a VGG19 sidecar leaves out (absent means vgg19)
    fields = {field.name for field in dataclasses.fields(spec)} - {"backbone"}
    assert set(written) == {"format", "version", "note"} | fields
    assert written["vgg_widths"] == list(TINY_WIDTHS.values())
    assert written["mean_pixel"] == [1.0, 2.0, 3.0] and written["note"] == "x"


def _sidecar(tmp_path, content):
    path = tmp_path / "m.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return str(tmp_path / "m"), str(path)


@pytest.mark.parametrize("content, reason", [
    (b"", "unreadable checkpoint sidecar (Expecting value: line 1 column 1 (char 0))"),
    (b'{"format": "fcn_graph.checkpoint", ',
     "unreadable checkpoint sidecar (Expecting property name enclosed in double quotes: "
     "line 1 column 36 (char 35))"),
    (b"\xff\xfe{}", "unreadable checkpoint sidecar ('utf-8' codec can't decode byte 0xff in "
                    "position 0: invalid start byte)"),
    (["format", "fcn_graph.checkpoint"],
     'not an fcn_graph sidecar (expected "format": "fcn_graph.checkpoint")'),
    ({"format": "other"}, 'not an fcn_graph sidecar (expected "format": "fcn_graph.checkpoint")'),
    ({"format": "fcn_graph.checkpoint", "mean_pixel": [1, 2, "x"]},
     "mean_pixel: expected 3 numbers (one per colour channel, 0..255 scale), found [1, 2, 'x']"),
    ({"format": "fcn_graph.checkpoint", "train_upsampling": "yes"},
     "train_upsampling: expected true or false, found 'yes'"),
    ({"format": "fcn_graph.checkpoint", "kernels_transposed": 1},
     "kernels_transposed: expected true or false, found 1"),
])
def test_read_sidecar_names_a_damaged_sidecar(tmp_path, content, reason):
    prefix, path = _sidecar(tmp_path, content)
    with pytest.raises(UserError) as info:
        checkpoint.read_sidecar(prefix)
    assert str(info.value) == f"{path}: {reason}"


def test_read_sidecar_reads_a_good_one_and_refuses_a_directory(tmp_path):
    written = {"format": "fcn_graph.checkpoint", "mean_pixel": [1, 2, 3], "train_upsampling": True}
    prefix, path = _sidecar(tmp_path, written)
    record = checkpoint.read_sidecar(prefix)
    assert record == {**written, "mean_pixel": [1.0, 2.0, 3.0]}
    assert [type(v) for v in record["mean_pixel"]] == [float, float, float]
    _sidecar(tmp_path, {"format": "fcn_graph.checkpoint", "mean_pixel": None})
    assert checkpoint.read_sidecar(prefix)["mean_pixel"] is None
    assert checkpoint.read_sidecar(str(tmp_path / "none")) is None
    os.remove(path)
    os.mkdir(path)
    with pytest.raises(UserError) as info:
        checkpoint.read_sidecar(prefix)
    assert str(info.value) == f"{path}: not a regular file; expected the checkpoint's JSON sidecar"


def test_remove_checkpoint_of_a_prefix_without_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_variables("m", {"inference/a": A_VALUES})
    assert _files(tmp_path) == ["m.data-00000-of-00001", "m.index", "m.json"]
    checkpoint.remove_checkpoint("m")
    assert _files(tmp_path) == []


def test_prune_counts_a_checkpoint_by_its_files_and_reads_no_values(tmp_path):
    _saved_steps(tmp_path, (1, 2))
    newest = _write_variables(str(tmp_path / "model.ckpt-3"), {"inference/a": NAN_A})
    assert checkpoint.prune_checkpoints(str(tmp_path), 1) == [newest]
    assert _files(tmp_path) == ["model.ckpt-3.data-00000-of-00001", "model.ckpt-3.index",
                                "model.ckpt-3.json"]


def test_save_checkpoint_prunes_by_its_own_basename(tmp_path):
    sess, saver, _, _ = _tiny_session()
    with sess:
        for step in (1, 2):
            checkpoint.save_checkpoint(sess, saver, str(tmp_path), tiny_spec(), step=step, keep=1,
                                       basename="snap")
    assert _files(tmp_path) == ["checkpoint", "snap-2.data-00000-of-00001", "snap-2.index",
                                "snap-2.json"]


def test_clean_temp_files_removes_only_leftovers_of_saves(tmp_path):
    hexes = "0123456789abcdef" * 2
    leftovers = ["model.ckpt-2.index.tempstate123", "model.ckpt-2.data-00000-of-00001.tempstate5",
                 f"checkpoint.tmp{hexes}", ".model.ckpt-2.json.0123456789ab.tmp.json"]
    for name in leftovers + ["notes.txt", "model.ckpt-1.index", "a_temp"]:
        (tmp_path / name).write_bytes(b"x")
    shard_dir = tmp_path / "model.ckpt-2_temp"
    shard_dir.mkdir()
    for part in ("part-00000-of-00001.index", "part-00000-of-00001.data-00000-of-00001.tempstate7"):
        (shard_dir / part).write_bytes(b"x")
    foreign_dir = tmp_path / "other_temp"  # a shard directory's name, but not only parts in it
    foreign_dir.mkdir()
    (foreign_dir / "part-00000-of-00001.index").write_bytes(b"x")
    (foreign_dir / "mine.txt").write_text("keep")
    nested = tmp_path / "nested_temp"  # a part name that is a directory
    (nested / "part-00000-of-00001.index").mkdir(parents=True)
    (tmp_path / "x.index.tempstate1").mkdir()  # a temporary file's name on a directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target").write_text("keep")
    (elsewhere / "part-00000-of-00001.index").write_bytes(b"x")
    os.symlink(elsewhere / "target", tmp_path / "y.index.tempstate1")
    os.symlink(elsewhere, tmp_path / "z_temp")
    kept = set(_files(tmp_path)) - set(leftovers) - {"model.ckpt-2_temp"}

    removed = checkpoint.clean_temp_files(str(tmp_path))
    assert removed == sorted(leftovers + ["model.ckpt-2_temp/"])
    assert set(_files(tmp_path)) == kept
    assert _files(foreign_dir) == ["mine.txt", "part-00000-of-00001.index"]
    assert _files(nested) == ["part-00000-of-00001.index"]
    assert _files(elsewhere) == ["part-00000-of-00001.index", "target"]
    assert checkpoint.clean_temp_files(str(tmp_path)) == []


def test_write_state_file_names_the_newest_first_and_every_kept(tmp_path):
    checkpoint.write_state_file(str(tmp_path), [])
    assert (tmp_path / "checkpoint").read_text(encoding="utf-8") == "\n"
    checkpoint.write_state_file(str(tmp_path), [str(tmp_path / "m-2"), str(tmp_path / "m-1")])
    assert (tmp_path / "checkpoint").read_text(encoding="utf-8") == (
        'model_checkpoint_path: "m-2"\nall_model_checkpoint_paths: "m-1"\n'
        'all_model_checkpoint_paths: "m-2"\n')


def test_check_variables_refuses_another_architecture(tmp_path):
    prefix = _write_variables(str(tmp_path / "m"), {"inference/W8": np.zeros(2, np.float32)})
    _, variables = _graph_variables({"inference/score_fr_w": [2], "inference/score_pool3_w": [2]})
    with pytest.raises(UserError) as info:
        checkpoint.check_variables(prefix, variables)
    assert str(info.value) == (
        f"{prefix}: holds a legacy FCN-8s model but the graph is a paper FCN-8s; build the graph "
        "from the checkpoint's own spec (model_spec_from_checkpoint) or convert the weights")


def test_check_variables_lists_six_missing_and_six_misshaped(tmp_path):
    prefix = _write_variables(str(tmp_path / "m"), {f"w{i}": np.zeros(1, np.float32)
                                                     for i in range(7)})
    for count in (6, 7):
        shapes = {f"m{i}": [1] for i in range(count)}
        shapes.update({f"w{i}": [2] for i in range(count)})
        _, variables = _graph_variables(shapes)
        with pytest.raises(UserError) as info:
            checkpoint.check_variables(prefix, variables)
        missing = ", ".join(f"m{i}" for i in range(6)) + (" and 1 more" if count == 7 else "")
        wrong = "; ".join(f"w{i} is [1], expected [2]" for i in range(6))
        assert str(info.value) == (f"{prefix}: cannot restore the model: missing {missing}; "
                                   f"mis-shaped {wrong}")


def _restore_graph(*, finalize=False):
    """inference/a, inference/b (model variables) and a global step; a Saver built
    before a finalisation, without `model_saver`."""
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.get_variable("inference/a", initializer=np.zeros((2, 3), np.float32))
        tf1.get_variable("inference/b", initializer=np.float32(0))
        step = tf1.train.get_or_create_global_step()
        saver = tf1.train.Saver(var_list=tf_layers.model_variables(graph))
        init = tf1.global_variables_initializer()
    if finalize:
        graph.finalize()
    sess = tf1.Session(graph=graph)
    sess.run(init)
    return sess, saver, a, step


@pytest.mark.parametrize("finalize", [False, True])
def test_restore_model_names_non_finite_values(tmp_path, finalize):
    prefix = _write_variables(str(tmp_path / "m"), {"inference/a": NAN_A,
                                                     "inference/b": np.float32(1)})
    sess, saver, _, _ = _restore_graph(finalize=finalize)
    with sess, pytest.raises(UserError) as info:
        checkpoint.restore_model(sess, prefix, saver=saver if finalize else None)
    assert str(info.value) == f"{prefix}: 'inference/a' holds 1 NaN value; the checkpoint is unusable"


def test_restore_model_restores_the_variables_it_is_given(tmp_path):
    full = _write_variables(str(tmp_path / "full"), {"inference/a": A_VALUES,
                                                      "inference/b": np.float32(2.5),
                                                      "global_step": np.int64(7)})
    only_a = _write_variables(str(tmp_path / "only_a"), {"inference/a": A_VALUES + 1})
    sess, _, a, step = _restore_graph()
    try:  # the session's graph is not the default graph here
        checkpoint.restore_model(sess, full)  # the graph's model variables
        b = tf_layers.model_variables(sess.graph)["inference/b"]
        assert sess.run(b) == 2.5 and sess.run(step) == 0
        np.testing.assert_array_equal(sess.run(a), A_VALUES)
        checkpoint.restore_model(sess, only_a, {"inference/a": a})
        np.testing.assert_array_equal(sess.run(a), A_VALUES + 1)
        checkpoint.restore_model(sess, full, {"inference/a": a, "global_step": step})
        assert sess.run(step) == 7
    finally:
        sess.close()


def test_restore_model_into_a_graph_without_a_model(tmp_path):
    prefix = _write_variables(str(tmp_path / "m"), {"inference/a": A_VALUES})
    graph = tf.Graph()
    with graph.as_default():
        tf1.get_variable("other", initializer=np.float32(1))
    with tf1.Session(graph=graph) as sess, pytest.raises(UserError) as info:
        checkpoint.restore_model(sess, prefix)
    assert str(info.value) == f"{prefix}: cannot restore the model: ValueError: No variables to save"


def test_assign_arrays_refuses_non_finite_values():
    sess, _, a, _ = _restore_graph()
    with sess, pytest.raises(UserError) as info:
        checkpoint.assign_arrays(sess, {"inference/a": a}, {"inference/a": NAN_A})
    assert str(info.value) == "inference/a: the value to load holds 1 NaN value; expected finite numbers"


def _failing_save(monkeypatch, error, during=None):
    """Make Saver.save write its files, call `during(prefix)`, then raise `error`."""
    real_save = tf1.train.Saver.save

    def save(self, sess, prefix, **kwargs):
        real_save(self, sess, prefix, **kwargs)
        if during is not None:
            during(prefix)
        raise error

    monkeypatch.setattr(tf1.train.Saver, "save", save)


@pytest.mark.parametrize("error, reason", [
    (OSError(28, "No space left on device"), "No space left on device"),
    (OSError(28, "No space left on device", "/x/m.index"), "No space left on device (/x/m.index)"),
    (OSError("the disk went away"), "the disk went away"),
    (tf.errors.ResourceExhaustedError(None, None, "Graph execution error:\n\n/x/m.index.tempstate1; "
                                                  "No space left on device"),
     "/x/m.index.tempstate1; No space left on device"),
])
def test_a_failed_save_says_why_in_one_line(tmp_path, monkeypatch, error, reason):
    sess, saver, _, _ = _tiny_session()
    _failing_save(monkeypatch, error)
    with sess, pytest.raises(UserError) as info:
        checkpoint.save_model(sess, saver, str(tmp_path / "m"), tiny_spec())
    assert str(info.value) == f"{tmp_path / 'm'}: cannot write the checkpoint: {reason}"
    assert _files(tmp_path) == []


def test_a_failed_save_over_a_checkpoint_keeps_it(tmp_path, monkeypatch):
    _saved_steps(tmp_path, (2,))
    prefix = str(tmp_path / "model.ckpt-2")
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)  # the sidecar's atomic write fails
    sess, saver, a, _ = _tiny_session()
    with sess, pytest.raises(UserError) as info:
        sess.run(a.assign(A_VALUES + 1))
        checkpoint.save_model(sess, saver, str(tmp_path / "model.ckpt"), tiny_spec(), global_step=2)
    assert str(info.value) == f"{prefix}: cannot write the checkpoint: No space left on device"
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before
    monkeypatch.undo()
    assert checkpoint.checkpoint_problem(prefix) is None


def test_an_interrupted_save_removes_its_files_and_lets_the_interrupt_through(tmp_path, monkeypatch):
    _saved_steps(tmp_path, (1,))
    before = _files(tmp_path)
    sess, saver, _, _ = _tiny_session()
    _failing_save(monkeypatch, KeyboardInterrupt())
    with sess, pytest.raises(KeyboardInterrupt):
        checkpoint.save_model(sess, saver, str(tmp_path / "model.ckpt"), tiny_spec(), global_step=2)
    assert _files(tmp_path) == before


def test_a_failed_save_leaves_what_others_write_meanwhile(tmp_path, monkeypatch):
    hexes = "0123456789abcdef" * 2
    others = [f"model.ckpt-2{i}.index.tempstate9" for i in range(8)] + [
        "model.ckpt-2.notes", f"checkpoint.tmp{hexes}", ".config.json.0123456789ab.tmp.json"]

    def meanwhile(prefix):
        for name in others:
            (tmp_path / name).write_bytes(b"not ours")
        (tmp_path / "model.ckpt-2.d").mkdir()
        (tmp_path / "model.ckpt-2.d" / "f").write_bytes(b"not ours")
        os.mkdir(prefix + "_temp")  # as a sharded save leaves it
        (tmp_path / "model.ckpt-2_temp" / "part-00000-of-00001.index").write_bytes(b"")
        # an atomic write of this prefix's sidecar, cut off
        (tmp_path / ".model.ckpt-2.json.0123456789ab.tmp.json").write_bytes(b"{")

    sess, saver, _, _ = _tiny_session()
    _failing_save(monkeypatch, OSError(28, "No space left on device"), meanwhile)
    with sess, pytest.raises(UserError, match="No space left on device"):
        checkpoint.save_model(sess, saver, str(tmp_path / "model.ckpt"), tiny_spec(), global_step=2)
    assert _files(tmp_path) == sorted(others + ["model.ckpt-2.d"])
    assert _files(tmp_path / "model.ckpt-2.d") == ["f"]


def test_a_failed_save_cleans_up_past_files_that_vanish_or_resist(tmp_path, monkeypatch):
    """Files removed meanwhile by another clean-up, and a temporary shard that
    cannot be removed, do not hide why the save failed."""
    def meanwhile(prefix):
        os.mkdir(prefix + "_temp")
        (tmp_path / "m_temp" / "part-00000-of-00001.index").write_bytes(b"")
        (tmp_path / ".m.json.0123456789ab.tmp.json").write_bytes(b"{")

    real_remove, real_unlink = os.remove, os.unlink

    def racing_remove(path, *args, **kwargs):
        real_remove(path, *args, **kwargs)
        raise FileNotFoundError(2, "No such file or directory", path)

    def stuck_unlink(path, *args, **kwargs):
        if "part-" in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    sess, saver, _, _ = _tiny_session()
    _failing_save(monkeypatch, OSError(28, "No space left on device"), meanwhile)
    with sess, pytest.raises(UserError) as info:
        monkeypatch.setattr(os, "remove", racing_remove)
        monkeypatch.setattr(os, "unlink", stuck_unlink)
        checkpoint.save_model(sess, saver, str(tmp_path / "m"), tiny_spec())
    monkeypatch.undo()
    assert str(info.value) == f"{tmp_path / 'm'}: cannot write the checkpoint: No space left on device"
    assert _files(tmp_path) == ["m_temp"]  # only what resisted


def test_op_error_reason_skips_every_preamble_line():
    err = tf.errors.UnknownError(None, None, "Graph execution error:\nFile \"a.py\", line 3\n"
                                             " indented by one\nthe reason\n")
    assert checkpoint.op_error_reason(err) == "the reason"
    graph = tf.Graph()
    with graph.as_default():
        op = tf.constant(1.0, name="c").op
    with_op = tf.errors.UnknownError(None, op, "Graph execution error:\n")
    assert checkpoint.op_error_reason(with_op) == "UnknownError: Graph execution error:"


@pytest.fixture
def ascii_locale():
    """The C locale's ASCII for text files opened without an encoding, restored after."""
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def test_sidecars_are_utf8_whatever_the_locale(tmp_path, ascii_locale):
    prefix = str(tmp_path / "m")
    checkpoint.write_sidecar(prefix, tiny_spec(), source="données/vgg.mat")
    assert checkpoint.read_sidecar(prefix)["source"] == "données/vgg.mat"
    checkpoint.prune_sidecars(str(tmp_path))  # its checkpoint is gone: a sidecar, removed
    assert _files(tmp_path) == []


def test_assign_vgg_fills_the_graphs_model_and_checks_the_variables_given(tmp_path, vgg_layers):
    path = str(tmp_path / "vgg.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN)
    vgg = load_vgg_mat(path)
    graph, *_, variables = build_graph(tiny_spec())
    sess = tf1.Session(graph=graph)
    try:  # the session's graph is not the default graph here
        checkpoint.assign_vgg(sess, vgg)  # the graph's own model variables
        for name, (kernel, bias) in vgg.layers.items():
            np.testing.assert_array_equal(sess.run(variables[f"inference/{name}_w"]), kernel)
            np.testing.assert_array_equal(sess.run(variables[f"inference/{name}_b"]), bias)
        fewer = {k: v for k, v in variables.items() if k != "inference/conv1_1_w"}
        with pytest.raises(UserError) as info:
            checkpoint.assign_vgg(sess, vgg, fewer)
    finally:
        sess.close()
    assert str(info.value) == f"{path}: the graph has no variable 'inference/conv1_1_w'"
