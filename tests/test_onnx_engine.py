"""The ONNX builder and engine against the TensorFlow graph, on tiny weights,
for every architecture `tf_layers.fcn` builds."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from tfutil import build_graph, random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import infer
from fcn_graph.core.errors import UserError
from fcn_graph.engines.segmenter import Segmenter, make_segmenter
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fcn_graph.engines import onnx_engine  # noqa: E402

tf1 = tf.compat.v1


# (architecture, skips, channel order): every head, both channel orders
VARIANTS = [("legacy", "8s", "rgb"), ("legacy", "8s", "bgr"), ("paper", "32s", "rgb"),
            ("paper", "16s", "bgr"), ("paper", "8s", "rgb"), ("paper", "8s", "bgr")]


def _tiny_checkpoint(directory, channel_order="rgb", architecture="legacy", skips="8s"):
    """Random non-zero weights everywhere (biases, score layers and the paper's
    upsampling filters included), tiny widths, 5 classes."""
    spec = ModelSpec(num_classes=5, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN, channel_order=channel_order,
                               architecture=architecture, skips=skips)
    graph, _, _, _, _, variables = build_graph(spec)
    values = random_values(variables, seed=4)
    with graph.as_default():
        saver = checkpoint.model_saver(variables)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        return checkpoint.save_model(sess, saver, str(directory / "tiny"), spec)


def assert_matches_tensorflow(got_labels, got, want_labels, want):
    """Scores to 1e-4 relative; labels are the scores' argmax (int64) and equal
    TF's wherever TF's top two scores are not a near tie."""
    assert got.shape == want.shape and got.dtype == np.float32
    assert got_labels.shape == want_labels.shape and got_labels.dtype == np.int64
    scale = np.abs(want).max()
    assert scale > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_array_equal(got_labels, got.argmax(axis=-1))
    top2 = np.sort(want, axis=-1)
    clear = top2[..., -1] - top2[..., -2] > 1e-4 * scale
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got_labels[clear], want_labels[clear])


@pytest.mark.parametrize("architecture,skips,channel_order", VARIANTS)
def test_onnx_scores_match_tensorflow(tmp_path, architecture, skips, channel_order):
    prefix = _tiny_checkpoint(tmp_path, channel_order, architecture, skips)
    tf_engine = Segmenter(prefix)
    ort_engine = onnx_engine.OnnxSegmenter(prefix)
    rng = np.random.default_rng(0)
    for shape in [(1, 37, 45), (2, 19, 8), (1, 1, 1), (1, 70, 33), (1, 97, 131)]:
        batch = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        got_labels, got = ort_engine.run(batch, scores=True)
        assert got.shape == shape + (5,)
        assert_matches_tensorflow(got_labels, got, *tf_engine.run(batch, scores=True))
        labels_only, none = ort_engine.run(batch)
        assert none is None and labels_only.shape == shape
    tf_engine.close()


@pytest.mark.parametrize("architecture,skips", [("legacy", "8s"), ("paper", "32s"),
                                                ("paper", "16s"), ("paper", "8s")])
def test_model_layout_follows_the_head(tmp_path, architecture, skips):
    import onnx
    prefix = _tiny_checkpoint(tmp_path, "rgb", architecture, skips)
    model = onnx_engine.build_onnx_model(prefix, kernels="cpu")
    reference = onnx_engine.build_onnx_model(prefix, kernels="reference")
    ops = [node.op_type for node in model.graph.node]
    reference_ops = [node.op_type for node in reference.graph.node]
    assert model.graph.name == f"fcn_{architecture}_{skips}"
    # legacy: 4 average pools, pool5 max, conv5_4 left out; paper: 5 max pools, all 16 convs
    if architecture == "legacy":
        assert (ops.count("AveragePool"), ops.count("MaxPool")) == (4, 1)
    else:
        assert (ops.count("AveragePool"), ops.count("MaxPool")) == (0, 5)
    upsamplings = {"legacy": 3, "32s": 1, "16s": 2, "8s": 3}[skips if architecture == "paper"
                                                             else architecture]
    assert ops.count("DepthToSpace") == upsamplings and "ConvTranspose" not in ops
    assert reference_ops.count("ConvTranspose") == upsamplings
    assert "DepthToSpace" not in reference_ops
    biases = {i.name for i in model.graph.initializer if i.name.startswith(
        ("conv_t", "upscore")) and "_b_" in i.name}
    assert bool(biases) == (architecture == "legacy")  # the paper's upsampling has no bias
    (labels, scores) = model.graph.output
    assert labels.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param or d.dim_value for d in scores.type.tensor_type.shape.dim] == \
        ["N", "H", "W", 5]


@pytest.mark.parametrize("external_data", [False, True])
def test_onnx_file_round_trip(tmp_path, external_data):
    import onnx
    prefix = _tiny_checkpoint(tmp_path, "bgr", "paper", "8s")
    model = onnx_engine.build_onnx_model(prefix)
    onnx.checker.check_model(model)
    path = str(tmp_path / "tiny.onnx")
    onnx_engine.save_model(model, path, external_data=external_data)
    data = tmp_path / "tiny.onnx.data"
    assert data.exists() == external_data
    if external_data:  # every initializer over 1 KiB is in the data file, with the model's mode
        stored = onnx.load(path, load_external_data=False).graph.initializer
        external = {t.name for t in stored if t.data_location == onnx.TensorProto.EXTERNAL}
        assert external == {t.name for t in stored if 4 * np.prod(t.dims) > 1024} != set()
        assert data.stat().st_mode == (tmp_path / "tiny.onnx").stat().st_mode
    batch = np.random.default_rng(1).integers(0, 256, (1, 13, 29, 3), dtype=np.uint8)
    a = onnx_engine.OnnxSegmenter(path).run(batch, scores=True)
    b = onnx_engine.OnnxSegmenter(prefix).run(batch, scores=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_models_and_checkpoints_are_one_line_errors(tmp_path):
    from fcn_graph.core.errors import UserError
    with pytest.raises(UserError, match="no such ONNX file"):
        onnx_engine.OnnxSegmenter(str(tmp_path / "missing.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match=r"junk.onnx: ONNX Runtime cannot load it \(") as err:
        onnx_engine.OnnxSegmenter(str(tmp_path / "junk.onnx"))
    assert "\n" not in str(err.value)
    prefix = _tiny_checkpoint(tmp_path)
    path = str(tmp_path / "m.onnx")
    onnx_engine.save_model(onnx_engine.build_onnx_model(prefix), path, external_data=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(UserError, match="m.onnx: ONNX Runtime cannot load it") as err:
        onnx_engine.OnnxSegmenter(path)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="--opset 12: expected 13 or later"):
        onnx_engine.build_onnx_model(prefix, opset=12)

    # a checkpoint whose variables do not fit its own spec: each one named
    values = checkpoint.read_variables(prefix)
    values["inference/W8"] = np.zeros((1, 1, 7, 5), np.float32)
    del values["inference/W_t2"]
    broken = str(tmp_path / "broken")
    with tf.Graph().as_default(), tf1.Session() as sess:
        variables = {name: tf1.Variable(value, name=name.replace("/", "_"))
                     for name, value in values.items()}
        sess.run(tf1.variables_initializer(list(variables.values())))
        tf1.train.Saver(variables).save(sess, broken, write_meta_graph=False)
    with pytest.raises(UserError, match=r"broken: not a complete legacy FCN-8s checkpoint: "
                       r"inference/W8 is \[1, 1, 7, 5\], expected \[1, 1, 6, 5\]; "
                       r"inference/W_t2 is missing$"):
        onnx_engine.build_onnx_model(broken)


def test_phase_kernel_matches_tensorflow():
    from fcn_graph.network import cpu_layers, onnx_layers
    w = np.random.default_rng(2).standard_normal((16, 16, 3, 4)).astype(np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        want = sess.run(cpu_layers.phase_kernel(tf.constant(w), 8))
    np.testing.assert_array_equal(onnx_layers._phase_kernel(w, 8), want)


def test_spec_fields_unchanged():
    # the builder reads these ModelSpec fields; a rename must break this test
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    assert {"num_classes", "fc_width", "vgg_widths", "mean_pixel", "channel_order",
            "architecture", "skips"} <= names


def test_infer_cli_onnxruntime_engine_matches_tf(tmp_path):
    # and the openvino engine, on the same ONNX model, where OpenVINO is installed
    import importlib.util

    import cv2
    prefix = _tiny_checkpoint(tmp_path)
    image = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    outs = {}
    engines = ["tf", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino")
                                       else [])
    for engine in engines:
        out = tmp_path / engine
        assert infer.main([str(tmp_path / "a.png"), "--checkpoint", prefix, "--output-dir",
                           str(out), "--save-scores", "--engine", engine]) == 0
        outs[engine] = np.load(out / "a_scores.npy")
    scale = np.abs(outs["tf"]).max()
    for engine in engines[1:]:
        np.testing.assert_allclose(outs[engine], outs["tf"], rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(UserError, match="--engine onnxruntime"):
        make_segmenter(prefix, engine="onnxruntime", xla=True)


@pytest.mark.parametrize("architecture,skips", [("legacy", "8s"), ("paper", "32s"),
                                                ("paper", "16s"), ("paper", "8s")])
def test_kernel_sets_agree(tmp_path, architecture, skips):
    # reference (Conv, ConvTranspose) and cpu (im2col conv6, phase upsampling)
    prefix = _tiny_checkpoint(tmp_path, "rgb", architecture, skips)
    import onnxruntime as ort
    batch = np.random.default_rng(6).integers(0, 256, (2, 45, 37, 3), dtype=np.uint8)
    scores = []
    for kernels in ("cpu", "reference"):
        model = onnx_engine.build_onnx_model(prefix, kernels=kernels)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        scores.append(session.run(["scores"], {"images": batch})[0])
    assert np.abs(scores[1]).max() > 1e-3
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5,
                               atol=1e-5 * np.abs(scores[1]).max())
