"""Rules that the mutation run (tools/mutation.sh) showed untested: the metrics of
an empty or partly empty confusion matrix, the messages and report of the
metrics module; which sidecars are pruned, the paper architecture's fc6/fc7
values, reading some or all variables of a checkpoint, saving a model, copying
VGG weights into a graph; the limits of a label's class ids."""

import json
import os
import types
import warnings

import numpy as np
import pytest
import tensorflow as tf

from fcn_graph.core import metrics
from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.data import datasets, image_files, splits
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1


def test_metrics_of_an_empty_matrix_are_undefined_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.compute_metrics(np.zeros((3, 3), np.int64))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert result[key] is None, key
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
        "    1  cat                      n/a (absent)",
        "    2                           0.2500",
    ]
    assert "\n    0                           0.5000\n" in metrics.format_metrics(result)


def test_prune_sidecars_removes_only_sidecars_of_missing_checkpoints(tmp_path):
    sidecar = json.dumps({"format": checkpoint.SIDECAR_FORMAT})
    files = {"kept.json": sidecar, "kept.index": "", "gone.json": sidecar,
             "other.json": json.dumps({"format": "something else"}), "garbage.json": "{not json",
             "list.json": "[1, 2]"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    checkpoint.prune_sidecars(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(set(files) - {"gone.json"})


def test_vgg_values_of_the_paper_architecture_take_conv6_conv7_from_fc6_fc7():
    rng = np.random.default_rng(0)
    layer = (rng.normal(size=(3, 3, 3, 2)), rng.normal(size=2))
    fc = {name: (rng.normal(size=(1, 1, 2, 2)), rng.normal(size=2)) for name in ("fc6", "fc7")}
    vgg = types.SimpleNamespace(layers={"conv1_1": layer}, fc=fc, path="v.mat")
    legacy = checkpoint.vgg_values(vgg)
    assert list(legacy) == ["inference/conv1_1_w", "inference/conv1_1_b"]
    paper = checkpoint.vgg_values(vgg, "paper")
    assert list(paper) == list(legacy) + ["inference/W6", "inference/b6", "inference/W7",
                                          "inference/b7"]
    for fc_name, (w, b) in (("fc6", ("W6", "b6")), ("fc7", ("W7", "b7"))):
        assert paper[f"inference/{w}"] is fc[fc_name][0]
        assert paper[f"inference/{b}"] is fc[fc_name][1]
    del fc["fc7"]
    with pytest.raises(UserError, match="v.mat: layer 'fc7' not found"):
        checkpoint.vgg_values(vgg, "paper")


def test_read_variables_reads_the_names_asked_or_all(tmp_path):
    prefix = str(tmp_path / "c")
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.get_variable("a", initializer=np.arange(3, dtype=np.float32))
        b = tf1.get_variable("b", initializer=np.float32(7.0))
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            tf1.train.Saver([a, b]).save(sess, prefix)
    some = checkpoint.read_variables(prefix, ["b"])
    assert list(some) == ["b"] and some["b"] == 7.0
    everything = checkpoint.read_variables(prefix)
    assert sorted(everything) == ["a", "b"]
    np.testing.assert_array_equal(everything["a"], [0.0, 1.0, 2.0])


def test_reset_empties_the_matrix():
    matrix = metrics.ConfusionMatrix(2)
    matrix.update(np.array([0, 1]), np.array([1, 1]))
    matrix.reset()
    assert matrix.hist.tolist() == [[0, 0], [0, 0]] and matrix.hist.dtype.kind == "i"


def _tiny_spec():
    from tinyvgg import TINY_MEAN, TINY_WIDTHS

    return ModelSpec(num_classes=3, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN)


def test_save_model_writes_the_step_the_data_and_the_sidecar_only(tmp_path):
    from tfutil import build_graph

    spec = _tiny_spec()
    graph, *_, variables = build_graph(spec)
    directory = tmp_path / "run"
    directory.mkdir()
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        tf1.get_variable("not_a_model_variable", initializer=1.0)
        sess.run(tf1.global_variables_initializer())
        saver = checkpoint.model_saver(variables)
        first = checkpoint.save_model(sess, saver, str(directory / "m"), spec, global_step=5,
                                      note="x")
        second = checkpoint.save_model(sess, saver, str(directory / "m"), spec)
    assert first == str(directory / "m-5") and second == str(directory / "m")
    assert checkpoint.read_sidecar(first)["note"] == "x"
    assert sorted(checkpoint.read_variable_shapes(first)) == sorted(variables)
    assert "note" not in checkpoint.read_sidecar(second)
    names = sorted(os.listdir(directory))
    # no .meta graph and no `checkpoint` state file: the caller publishes a save
    assert not any(name.endswith(".meta") for name in names) and "checkpoint" not in names
    assert {"m-5.index", "m-5.json", "m.index", "m.json"} <= set(names)


def test_assign_vgg_copies_every_layer_and_checks_shapes():
    from tfutil import build_graph
    from tinyvgg import make_vgg_layers

    spec = _tiny_spec()
    graph, *_, variables = build_graph(spec)
    layers = make_vgg_layers()
    vgg = types.SimpleNamespace(layers=layers, fc={}, path="v.mat")
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        checkpoint.assign_vgg(sess, vgg, variables)
        got = sess.run(dict(variables))
        for name, (kernel, bias) in layers.items():
            np.testing.assert_array_equal(got[f"inference/{name}_w"], kernel)
            np.testing.assert_array_equal(got[f"inference/{name}_b"], bias)
        checkpoint.assign_vgg(sess, vgg)  # the graph's own variables by default
        wrong = dict(layers, conv2_1=(layers["conv2_1"][0][:, :, :1], layers["conv2_1"][1]))
        with pytest.raises(UserError, match="v.mat: conv2_1_w has shape"):
            checkpoint.assign_vgg(sess, types.SimpleNamespace(layers=wrong, fc={}, path="v.mat"),
                                  variables)
        extra = dict(layers, conv6_1=layers["conv1_1"])
        with pytest.raises(UserError, match="v.mat: the graph has no variable 'inference/conv6_1_w'"):
            checkpoint.assign_vgg(sess, types.SimpleNamespace(layers=extra, fc={}, path="v.mat"),
                                  variables)


def test_read_label_accepts_ids_below_num_classes_and_255_only(tmp_path):
    path = str(tmp_path / "l.png")
    label = np.array([[0, 1, 2], [IGNORE_LABEL, 2, 0]], np.uint8)
    image_files.write_label_png(path, label)
    np.testing.assert_array_equal(datasets.read_label(path, 3), label)  # no offset by default
    with pytest.raises(splits.LabelFileError, match=r"values \[2\] outside \[0, 2\)"):
        datasets.read_label(path, 2)
    many = np.arange(10, 22, dtype=np.uint8).reshape(3, 4)
    image_files.write_label_png(path, many)
    with pytest.raises(splits.LabelFileError) as caught:
        datasets.read_label(path, 3)
    assert f"values {list(range(10, 18))} outside" in str(caught.value)


@pytest.mark.parametrize("mean", [None, (np.float32(1.5), np.float64(2.0), 3)])
def test_sidecar_round_trip_with_numpy_values(tmp_path, mean):
    from tinyvgg import TINY_WIDTHS

    spec = ModelSpec(num_classes=3, fc_width=6, mean_pixel=mean,
                               vgg_widths=tuple(np.int64(v) for v in TINY_WIDTHS.values()))
    prefix = str(tmp_path / "m")
    checkpoint.write_sidecar(prefix, spec, global_step=7)
    with open(prefix + ".json", encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["format"] == checkpoint.SIDECAR_FORMAT and record["version"] == 1
    assert record["vgg_widths"] == list(TINY_WIDTHS.values()) and record["global_step"] == 7
    assert record["mean_pixel"] == (None if mean is None else [1.5, 2.0, 3.0])


def test_paper_weights_from_fc6_fc7_are_copied_and_the_spec_read_back(tmp_path):
    from tfutil import build_graph
    from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

    spec = ModelSpec(num_classes=3, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN, architecture="paper", skips="8s")
    graph, *_, variables = build_graph(spec)
    fc = make_fc_layers(TINY_WIDTHS["conv5_4"], fc_width=6)
    vgg = types.SimpleNamespace(layers=make_vgg_layers(), fc=fc, path="v.mat")
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        checkpoint.assign_vgg(sess, vgg, variables, architecture="paper")
        got = sess.run({name: variables[f"inference/{name}"] for name in ("W6", "b6", "W7", "b7")})
        prefix = checkpoint.save_model(sess, checkpoint.model_saver(variables),
                                       str(tmp_path / "p"), spec)
    for fc_name, (w, b) in (("fc6", ("W6", "b6")), ("fc7", ("W7", "b7"))):
        np.testing.assert_array_equal(got[w], fc[fc_name][0])
        np.testing.assert_array_equal(got[b], fc[fc_name][1])
    read = checkpoint.model_spec_from_checkpoint(prefix)
    assert (read.architecture, read.skips, read.num_classes, read.fc_width) == ("paper", "8s", 3, 6)


@pytest.fixture
def saved_paper_16s(tmp_path):
    """A paper FCN-16s checkpoint (3 classes, fc width 6) with its sidecar."""
    from tfutil import build_graph
    from tinyvgg import TINY_MEAN, TINY_WIDTHS

    spec = ModelSpec(num_classes=3, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN, architecture="paper", skips="16s")
    graph, *_, variables = build_graph(spec)
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        return checkpoint.save_model(sess, checkpoint.model_saver(variables),
                                     str(tmp_path / "p"), spec)


def _edit_sidecar(prefix, **changes):
    record = checkpoint.read_sidecar(prefix)
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    with open(prefix + ".json", "w", encoding="utf-8") as handle:
        json.dump(record, handle)


def test_spec_from_the_sidecar_and_its_checks(saved_paper_16s):
    prefix = saved_paper_16s
    assert checkpoint.model_spec_from_checkpoint(prefix, num_classes=3, fc_width=6).skips == "16s"
    with pytest.raises(UserError, match="has 3 classes .*score_fr_b.*, not 4"):
        checkpoint.model_spec_from_checkpoint(prefix, num_classes=4)
    with pytest.raises(UserError, match="has fc width 6 .*, not 7"):
        checkpoint.model_spec_from_checkpoint(prefix, fc_width=7)
    _edit_sidecar(prefix, channel_order="bgr", train_upsampling=True)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert (spec.channel_order, spec.train_upsampling) == ("bgr", True)
    _edit_sidecar(prefix, channel_order=None, train_upsampling=None)  # older sidecars
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert (spec.channel_order, spec.train_upsampling) == ("rgb", False)
    _edit_sidecar(prefix, skips="8s")
    with pytest.raises(UserError, match="says paper FCN-8s but .* a paper FCN-16s"):
        checkpoint.model_spec_from_checkpoint(prefix)
    _edit_sidecar(prefix, skips=None, architecture=None)  # defaults: legacy FCN-8s
    with pytest.raises(UserError, match="says legacy FCN-8s but"):
        checkpoint.model_spec_from_checkpoint(prefix)


def test_a_json_file_of_another_format_is_not_a_sidecar(saved_paper_16s):
    _edit_sidecar(saved_paper_16s, format="something else")
    with pytest.raises(UserError, match="not an fcn_graph sidecar"):
        checkpoint.read_sidecar(saved_paper_16s)
