"""The ONNX Runtime engine against the TensorFlow graph, on tiny weights."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from tfutil import build_graph, random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import checkpoint, infer
from fcn_graph import model as fcn_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fcn_graph import onnx_engine  # noqa: E402

tf1 = tf.compat.v1


def _tiny_checkpoint(directory, channel_order="rgb"):
    spec = fcn_model.ModelSpec(num_classes=5, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN, channel_order=channel_order)
    graph, _, _, _, _, variables = build_graph(spec)
    values = random_values(variables, seed=4)
    with graph.as_default():
        saver = checkpoint.model_saver(variables)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        return checkpoint.save_model(sess, saver, str(directory / "tiny"), spec)


@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_onnx_scores_match_tensorflow(tmp_path, channel_order):
    prefix = _tiny_checkpoint(tmp_path, channel_order)
    tf_engine = infer.Segmenter(prefix)
    ort_engine = onnx_engine.OnnxSegmenter(prefix)
    rng = np.random.default_rng(0)
    for shape in [(1, 37, 45), (2, 19, 8), (1, 1, 1), (1, 70, 33)]:
        batch = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        want_labels, want = tf_engine.run(batch, scores=True)
        got_labels, got = ort_engine.run(batch, scores=True)
        assert got.shape == want.shape == shape + (5,)
        scale = np.abs(want).max()
        assert scale > 1e-3
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
        # labels agree wherever the top two scores are not a near tie
        top2 = np.sort(want, axis=-1)
        clear = top2[..., -1] - top2[..., -2] > 1e-4 * scale
        np.testing.assert_array_equal(got_labels[clear], want_labels[clear])
        labels_only, none = ort_engine.run(batch)
        assert none is None and labels_only.shape == shape
    tf_engine.close()


def test_onnx_file_round_trip(tmp_path):
    import onnx
    prefix = _tiny_checkpoint(tmp_path)
    model = onnx_engine.build_onnx_model(prefix)
    onnx.checker.check_model(model)
    path = str(tmp_path / "tiny.onnx")
    onnx.save(model, path)
    batch = np.random.default_rng(1).integers(0, 256, (1, 13, 29, 3), dtype=np.uint8)
    a = onnx_engine.OnnxSegmenter(path).run(batch, scores=True)[1]
    b = onnx_engine.OnnxSegmenter(prefix).run(batch, scores=True)[1]
    np.testing.assert_array_equal(a, b)


def test_phase_kernel_matches_tensorflow():
    w = np.random.default_rng(2).standard_normal((16, 16, 3, 4)).astype(np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        want = sess.run(fcn_model.phase_kernel(tf.constant(w), 8))
    np.testing.assert_array_equal(onnx_engine._phase_kernel(w, 8), want)


def test_spec_fields_unchanged():
    # the builder reads these ModelSpec fields; a rename must break this test
    names = {f.name for f in dataclasses.fields(fcn_model.ModelSpec)}
    assert {"num_classes", "fc_width", "vgg_widths", "mean_pixel", "channel_order",
            "architecture"} <= names


def test_infer_cli_onnxruntime_engine_matches_tf(tmp_path):
    import cv2
    prefix = _tiny_checkpoint(tmp_path)
    image = np.random.default_rng(5).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    outs = {}
    for engine in ("tf", "onnxruntime"):
        out = tmp_path / engine
        assert infer.main([str(tmp_path / "a.png"), "--checkpoint", prefix, "--output-dir",
                           str(out), "--save-scores", "--engine", engine]) == 0
        outs[engine] = np.load(out / "a_scores.npy")
    scale = np.abs(outs["tf"]).max()
    np.testing.assert_allclose(outs["onnxruntime"], outs["tf"], rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(infer.UserError, match="--engine onnxruntime"):
        infer.make_segmenter(prefix, engine="onnxruntime", xla=True)


def test_conv6_forms_agree(tmp_path):
    prefix = _tiny_checkpoint(tmp_path)
    import onnxruntime as ort
    batch = np.random.default_rng(6).integers(0, 256, (2, 45, 37, 3), dtype=np.uint8)
    scores = []
    for im2col in (True, False):
        model = onnx_engine.build_onnx_model(prefix, conv6_im2col=im2col)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        scores.append(session.run(["scores"], {"images": batch})[0])
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5,
                               atol=1e-5 * np.abs(scores[1]).max())
