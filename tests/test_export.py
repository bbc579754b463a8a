"""`python -m fcn_graph.export`: each format written, loaded back and compared
with the checkpoint on tiny weights; the ONNX contract for every architecture,
with and without external data; the exported ONNX model is the engine's; refusals."""

import os

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from tfutil import build_graph, random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from fcn_graph import export, port
from fcn_graph.core import fileio
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.engines import exporters, onnx_engine
from fcn_graph.engines.segmenter import Segmenter
from fcn_graph.network import definition
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint
from fcn_graph.weights.matconvnet import write_vgg_mat

tf1 = tf.compat.v1


def _random_checkpoint(prefix, num_classes, architecture, skips, channel_order, seed):
    """Tiny widths, random non-zero weights everywhere (score layers and the
    paper's upsampling filters included)."""
    mean = (103.9, 116.8, 123.7) if channel_order == "bgr" else TINY_MEAN
    spec = ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()), mean_pixel=mean,
                               architecture=architecture, skips=skips,
                               channel_order=channel_order)
    graph, *_, variables = build_graph(spec)
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, random_values(variables, seed=seed))
        return checkpoint.save_model(sess, checkpoint.model_saver(variables), prefix, spec)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A legacy RGB checkpoint from mat2ckpt (4 classes), and random ones:
    legacy BGR, paper FCN-32s RGB, FCN-16s BGR ("paper"), FCN-8s RGB and BGR."""
    root = tmp_path_factory.mktemp("export")
    mat = str(root / "vgg.mat")
    write_vgg_mat(mat, make_vgg_layers(), TINY_MEAN, fc=make_fc_layers(TINY_WIDTHS["conv5_4"]))
    legacy = str(root / "legacy")
    assert port.main(["mat2ckpt", mat, "--num-classes", "4", "--fc-width", "6",
                      "--out", legacy]) == 0
    found = {"legacy": legacy}
    for seed, (name, architecture, skips, order) in enumerate([
            ("legacy-bgr", "legacy", "8s", "bgr"), ("paper-32s", "paper", "32s", "rgb"),
            ("paper", "paper", "16s", "bgr"), ("paper-8s", "paper", "8s", "rgb"),
            ("paper-8s-bgr", "paper", "8s", "bgr")]):
        found[name] = _random_checkpoint(str(root / name), 3, architecture, skips, order,
                                         seed=4 + seed)
    return found


def _reference(prefix, batch):
    segmenter = Segmenter(prefix)
    labels, scores = segmenter.run(batch, scores=True)
    segmenter.close()
    return labels, scores


def _batches():
    rng = np.random.default_rng(9)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((2, 20, 31, 3),
                                                                      (1, 1, 1, 3),
                                                                      (1, 37, 45, 3))]


def _close(got_labels, got_scores, want_labels, want_scores, labels_dtype=np.int32):
    """Scores to 1e-4 relative; labels of `labels_dtype` (int32 in TF exports,
    int64 in ONNX), the scores' argmax, and TF's wherever its top two scores
    are not a near tie."""
    assert got_scores.shape == want_scores.shape and got_scores.dtype == np.float32
    assert got_labels.shape == want_labels.shape and got_labels.dtype == labels_dtype
    scale = np.abs(want_scores).max()
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_array_equal(got_labels, got_scores.argmax(axis=3))
    top2 = np.sort(want_scores, axis=3)
    clear = top2[..., -1] - top2[..., -2] > 1e-4 * scale
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got_labels[clear], want_labels[clear])


@pytest.mark.parametrize("which", ["legacy", "paper"])
def test_savedmodel(checkpoints, tmp_path, capsys, which):
    out = str(tmp_path / "saved")
    for force in ([], ["--force"]):  # the second export replaces the first
        assert export.main(["--checkpoint", checkpoints[which], "--format", "savedmodel",
                            "--out", out, *force]) == 0
    printed = capsys.readouterr().out
    assert "verified with TensorFlow (SavedModel signature) on a 93x67 image" in printed
    assert "signature 'serving_default'" in printed
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == [fileio.OUTPUT_RECORD], \
        "temporary left behind"
    serve = tf.saved_model.load(out).signatures["serving_default"]
    for batch in _batches():
        got = serve(images=tf.constant(batch))
        _close(got["labels"].numpy(), got["scores"].numpy(), *_reference(checkpoints[which], batch))


def test_frozen_graph(checkpoints, tmp_path, capsys):
    out = str(tmp_path / "model.pb")
    assert export.main(["--checkpoint", checkpoints["paper"], "--format", "frozen",
                        "--out", out]) == 0
    assert "input images:0 uint8 [N, H, W, 3] RGB; outputs labels:0" in capsys.readouterr().out
    graph_def = tf1.GraphDef()
    with open(out, "rb") as handle:
        graph_def.ParseFromString(handle.read())
    assert not [n for n in graph_def.node if n.op in ("VariableV2", "VarHandleOp")]
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf1.Session(graph=graph) as sess:
        for batch in _batches():
            labels, scores = sess.run(["labels:0", "scores:0"], {"images:0": batch})
            _close(labels, scores, *_reference(checkpoints["paper"], batch))


def _frozen_ops(checkpoints, tmp_path, *kernels):
    out = str(tmp_path / "model.pb")
    assert export.main(["--checkpoint", checkpoints["legacy"], "--format", "frozen",
                        "--out", out, *kernels]) == 0
    graph_def = tf1.GraphDef()
    with open(out, "rb") as handle:
        graph_def.ParseFromString(handle.read())
    return graph_def


def _filter_shape(nodes, node):
    """The constant filter shape of a Conv2D node (through Identity nodes)."""
    source = nodes[node.input[1].split(":")[0]]
    while source.op == "Identity":
        source = nodes[source.input[0].split(":")[0]]
    assert source.op == "Const", source.op
    return [d.size for d in source.attr["value"].tensor.tensor_shape.dim], source.name


def test_frozen_reference_export_is_the_design_card_graph(checkpoints, tmp_path):
    # the default kernel set of export: the three fusions as conv2d_transpose,
    # conv6 as one 7x7 convolution, no CPU forms
    graph_def = _frozen_ops(checkpoints, tmp_path)
    ops = [n.op for n in graph_def.node]
    assert ops.count("Conv2DBackpropInput") == 3
    assert not {"DepthToSpace", "ExtractImagePatches", "While", "MatMul"} & set(ops)
    nodes = {n.name: n for n in graph_def.node}
    filters = dict(reversed(_filter_shape(nodes, n)) for n in graph_def.node if n.op == "Conv2D")
    assert filters["inference/W6"] == [7, 7, TINY_WIDTHS["conv5_3"], 6]
    assert filters["inference/W7"] == [1, 1, 6, 6] and filters["inference/W8"] == [1, 1, 6, 4]
    assert len(filters) == 15 + 3  # conv1_1 .. conv5_3, conv6, conv7, conv8


def test_frozen_cpu_export_has_no_transposed_convolution(checkpoints, tmp_path):
    graph_def = _frozen_ops(checkpoints, tmp_path, "--kernels", "cpu")
    ops = [n.op for n in graph_def.node]
    assert "Conv2DBackpropInput" not in ops and ops.count("DepthToSpace") == 3


ALL = ["legacy", "legacy-bgr", "paper-32s", "paper", "paper-8s", "paper-8s-bgr"]


@pytest.mark.parametrize("which", ALL)
def test_export_onnx_contract(checkpoints, tmp_path, which):
    out = str(tmp_path / "model.onnx")
    report = exporters.export_onnx(checkpoints[which], out, opset=13 if which == "paper" else 17)
    assert report["max_rel_error"] < 1e-4 and report["labels_agree"] > 0.99
    assert report["inputs"] == {"images": "uint8 [N, H, W, 3] RGB"}
    num_classes = 4 if which == "legacy" else 3
    assert report["outputs"] == {"labels": "int64 [N, H, W]",
                                 "scores": f"float32 [N, H, W, {num_classes}]"}
    assert report["num_classes"] == num_classes and report["external_data"] is None
    assert report["channel_order"] == ("bgr" if which in ("paper", "legacy-bgr", "paper-8s-bgr")
                                       else "rgb")
    assert (report["architecture"], report["skips"]) == definition.detect_architecture(
        checkpoint.read_variable_shapes(checkpoints[which]))
    assert report["bytes"] == os.path.getsize(out)
    proto = onnx.load(out)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == \
        [report["opset"]]
    (value,) = proto.graph.input
    assert value.name == "images" and value.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == \
        ["N", "H", "W", 3]
    assert [o.name for o in proto.graph.output] == ["labels", "scores"]
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    for batch in _batches():
        labels, scores = session.run(["labels", "scores"], {"images": batch})
        _close(labels, scores, *_reference(checkpoints[which], batch), labels_dtype=np.int64)


@pytest.mark.parametrize("which,kernels", [("legacy", "reference"), ("paper-8s-bgr", "cpu")])
def test_exported_onnx_is_the_engine_model(checkpoints, tmp_path, which, kernels):
    """`export --format onnx` writes exactly `build_onnx_model`'s model, so
    `--engine onnxruntime` on the checkpoint runs the exported graph."""
    out = str(tmp_path / "model.onnx")
    exporters.export_onnx(checkpoints[which], out, verify=False, kernels=kernels)
    with open(out, "rb") as handle:
        assert handle.read() == onnx_engine.build_onnx_model(
            checkpoints[which], kernels=kernels).SerializeToString()
    exported = onnx_engine.OnnxSegmenter(out)
    converted = onnx_engine.OnnxSegmenter(checkpoints[which], kernels=kernels)
    for batch in _batches():
        for got, want in zip(exported.run(batch, scores=True), converted.run(batch, scores=True)):
            np.testing.assert_array_equal(got, want)


def test_export_onnx_external_data(checkpoints, tmp_path, capsys):
    out = tmp_path / "voc.onnx"
    for force in ([], ["--force"]):  # the second export replaces the first
        assert export.main(["--checkpoint", checkpoints["paper-8s"], "--format", "onnx",
                            "--external-data", "--out", str(out), *force]) == 0
    printed = capsys.readouterr().out
    assert "verified with onnxruntime on a 93x67 image" in printed
    assert f"wrote {out} and its weights {out}.data (" in printed and "opset 17" in printed
    assert sorted(os.listdir(tmp_path)) == [fileio.OUTPUT_RECORD, "voc.onnx", "voc.onnx.data"], \
        "temporary left behind"
    stored = onnx.load(str(out), load_external_data=False)
    external = [t for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data
                         if e.key == "location"} == {"voc.onnx.data"}
    report = exporters.export_onnx(checkpoints["paper-8s"], str(tmp_path / "again.onnx"),
                                external_data=True)
    assert report["external_data"] == str(tmp_path / "again.onnx.data")
    assert report["bytes"] == os.path.getsize(tmp_path / "again.onnx") + \
        os.path.getsize(tmp_path / "again.onnx.data")
    # the pair moves together, and runs the same as the whole model
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(out, moved / "voc.onnx")
    os.replace(f"{out}.data", moved / "voc.onnx.data")
    whole = str(tmp_path / "whole.onnx")
    exporters.export_onnx(checkpoints["paper-8s"], whole, verify=False)
    split = onnx_engine.OnnxSegmenter(str(moved / "voc.onnx"))
    for batch in _batches():
        labels, scores = split.run(batch, scores=True)
        np.testing.assert_array_equal(scores, onnx_engine.OnnxSegmenter(whole).run(
            batch, scores=True)[1])
        _close(labels, scores, *_reference(checkpoints["paper-8s"], batch), labels_dtype=np.int64)
    os.remove(moved / "voc.onnx.data")
    with pytest.raises(UserError, match="voc.onnx: ONNX Runtime cannot load it"):
        onnx_engine.OnnxSegmenter(str(moved / "voc.onnx"))


def test_inspect_reads_the_exports(checkpoints, tmp_path, capsys):
    paths = {"savedmodel": str(tmp_path / "sm"), "frozen": str(tmp_path / "m.pb"),
             "onnx": str(tmp_path / "m.onnx")}
    for fmt, path in paths.items():
        exporters.EXPORTERS[fmt](checkpoints["legacy"], path, verify=False)
    capsys.readouterr()
    expect = {"savedmodel": "input  images: uint8 [None, None, None, 3] (images:0)",
              "frozen": "inputs images:0 uint8; outputs",
              "onnx": "input  images uint8 ['N', 'H', 'W', 3]"}
    params = sum(int(np.prod(s)) for s in checkpoint.read_variable_shapes(
        checkpoints["legacy"]).values())
    for fmt, path in paths.items():
        assert port.main(["inspect", path]) == 0
        out = capsys.readouterr().out
        assert expect[fmt] in out, out
        assert out.rstrip().endswith("parameters")
        if fmt == "savedmodel":  # the variables, as in the checkpoint
            assert f"44 arrays, {params:,} parameters" in out


def test_failed_verification_writes_nothing(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(exporters, "TOLERANCE", -1.0)
    for fmt, name, *extra in (("frozen", "m.pb"), ("onnx", "m.onnx"), ("savedmodel", "sm"),
                              ("onnx", "e.onnx", "--external-data")):
        code = run_cli(export.main, ["--checkpoint", checkpoints["legacy"], "--format", fmt,
                                     "--out", str(tmp_path / name), *extra],
                       prog="fcn_graph.export")
        err = capsys.readouterr().err
        assert code == 2 and "scores differ from the checkpoint's" in err, err
        assert err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_export_refusals(checkpoints, tmp_path, capsys):
    def error(*argv):
        code = run_cli(export.main, [str(a) for a in argv], prog="fcn_graph.export")
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        return err

    with pytest.raises(SystemExit) as stop:
        export.main(["--checkpoint", checkpoints["legacy"], "--format", "onnx", "--opset", "11",
                     "--out", str(tmp_path / "m.onnx")])
    assert stop.value.code == 2
    assert "--opset: expected an integer in 13..99, found '11'" in capsys.readouterr().err
    assert "--opset 99: expected 13 or later, up to" in error(
        "--checkpoint", checkpoints["legacy"], "--format", "onnx", "--opset", 99, "--out",
        tmp_path / "m.onnx")
    assert "no checkpoint here" in error("--checkpoint", tmp_path / "nothing", "--format",
                                         "onnx", "--out", tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").mkdir()
    assert "m.onnx.data: is a directory; expected a file to write" in error(
        "--checkpoint", checkpoints["legacy"], "--format", "onnx", "--external-data",
        "--out", tmp_path / "m.onnx")
    for flag in (["--external-data"], ["--opset", "13"]):
        with pytest.raises(SystemExit) as exit_:
            export.main(["--checkpoint", checkpoints["legacy"], "--format", "frozen",
                         "--out", str(tmp_path / "m.pb"), *flag])
        assert exit_.value.code == 2
        assert f"{flag[0]} applies to --format onnx only" in capsys.readouterr().err
    assert "no checkpoint here" in error("--checkpoint", tmp_path / "nothing", "--format",
                                         "frozen", "--out", tmp_path / "m.pb")
    (tmp_path / "busy").mkdir()
    assert "busy: exists and was not written by fcn_graph" in error(
        "--checkpoint", checkpoints["legacy"], "--format", "savedmodel", "--force", "--out",
        tmp_path / "busy")
    with pytest.raises(UserError, match="busy: exists; refusing to replace it"):
        exporters.export_savedmodel(checkpoints["legacy"], str(tmp_path / "busy"))
