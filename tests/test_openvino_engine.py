"""The OpenVINO engine against the ONNX Runtime engine on the same tiny ONNX
model: labels and scores at odd sizes and batch > 1, the model cache, the
precision hint, and its one-line errors (infer --engine openvino beside tf and onnxruntime:
test_onnx_engine)."""

import numpy as np
import pytest
from tfutil import write_random_checkpoint
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import infer
from fcn_graph.core.errors import UserError
from fcn_graph.engines.segmenter import make_segmenter
from fcn_graph.network.spec import ModelSpec

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")

from fcn_graph.engines import onnx_engine, openvino_engine  # noqa: E402


def _tiny_checkpoint(directory, architecture="legacy", skips="8s"):
    spec = ModelSpec(num_classes=5, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                     mean_pixel=TINY_MEAN, architecture=architecture, skips=skips)
    return write_random_checkpoint(str(directory / "tiny"), spec)


def _onnx_file(tmp_path, prefix):
    path = str(tmp_path / "tiny.onnx")
    onnx_engine.save_model(onnx_engine.build_onnx_model(prefix), path, external_data=True)
    return path


def assert_same_network(got, want):
    """Scores to 1e-4 of their range; labels int64, equal wherever the top two
    scores are not a near tie."""
    (got_labels, got_scores), (want_labels, want_scores) = got, want
    assert got_labels.dtype == np.int64 and got_labels.shape == want_labels.shape
    assert got_scores.dtype == np.float32 and got_scores.shape == want_scores.shape
    scale = np.abs(want_scores).max()
    assert scale > 1e-3
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-4 * scale)
    top2 = np.sort(want_scores, axis=-1)
    clear = top2[..., -1] - top2[..., -2] > 1e-4 * scale
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got_labels[clear], want_labels[clear])
    np.testing.assert_array_equal(got_labels, got_scores.argmax(-1))


@pytest.mark.parametrize("architecture,skips", [("legacy", "8s"), ("paper", "16s")])
def test_labels_equal_onnxruntime_at_odd_sizes_and_batches(tmp_path, architecture, skips):
    path = _onnx_file(tmp_path, _tiny_checkpoint(tmp_path, architecture, skips))
    reference = onnx_engine.OnnxSegmenter(path, threads=2)
    engine = openvino_engine.OpenVinoSegmenter(path, threads=2)
    rng = np.random.default_rng(3)
    # a new shape compiles again; the same shape again reuses the compiled model
    for shape in [(2, 37, 53, 3), (1, 1, 1, 3), (3, 19, 8, 3), (2, 37, 53, 3)]:
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
        assert_same_network(engine.run(batch, scores=True), reference.run(batch, scores=True))
        labels, scores = engine.run(batch)
        assert scores is None and labels.shape == shape[:3]
    # float32 said explicitly: a CPU with bf16 units would otherwise run bf16
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


def test_a_checkpoint_runs_through_the_plain_model_of_the_cache(tmp_path):
    prefix = _tiny_checkpoint(tmp_path)
    batch = np.random.default_rng(4).integers(0, 256, (2, 29, 41, 3), dtype=np.uint8)
    want = onnx_engine.OnnxSegmenter(prefix).run(batch, scores=True)
    assert_same_network(openvino_engine.OpenVinoSegmenter(prefix).run(batch, scores=True), want)
    found = onnx_engine.find_converted(prefix, optimise=False)
    assert found is not None and found.info["optimised"] is False
    # the cached entry alone (no TensorFlow) gives the same labels, via make_segmenter too
    cached = openvino_engine.OpenVinoSegmenter(found).run(batch, scores=True)
    assert_same_network(cached, want)
    segmenter = make_segmenter(prefix, engine="openvino")
    np.testing.assert_array_equal(segmenter.run(batch)[0], cached[0])


def test_the_precision_hints():
    assert openvino_engine.compile_config(3, "float32") == {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 3,
        "INFERENCE_PRECISION_HINT": "f32"}
    assert openvino_engine.compile_config(2, "bfloat16")["INFERENCE_PRECISION_HINT"] == "bf16"
    with pytest.raises(UserError, match="--engine openvino runs float32 or bfloat16; found "
                                        "--precision float16"):
        openvino_engine.compile_config(2, "float16")


def test_bfloat16_is_refused_without_bf16_units(tmp_path, monkeypatch):
    from fcn_graph.host import cpuinfo
    path = _onnx_file(tmp_path, _tiny_checkpoint(tmp_path))
    monkeypatch.setattr(cpuinfo, "cpu_features", lambda text=None: {"avx2", "fma"})
    with pytest.raises(UserError, match="--precision bfloat16: this CPU has no bfloat16 units"):
        openvino_engine.OpenVinoSegmenter(path, precision="bfloat16")
    monkeypatch.setattr(cpuinfo, "cpu_features", lambda text=None: {"avx512f", "avx512_bf16"})
    engine = openvino_engine.OpenVinoSegmenter(path, precision="bfloat16")
    assert engine.config["INFERENCE_PRECISION_HINT"] == "bf16"


def test_bad_models_and_options_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="missing.onnx: no such ONNX file"):
        openvino_engine.OpenVinoSegmenter(str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError) as err:
        openvino_engine.OpenVinoSegmenter(str(junk))
    assert str(err.value).startswith(f"{junk}: OpenVINO cannot read it (")
    assert "\n" not in str(err.value)
    prefix = _tiny_checkpoint(tmp_path)
    with pytest.raises(UserError, match="--engine openvino runs float32 or bfloat16 without XLA"):
        make_segmenter(prefix, engine="openvino", xla=True)
    with pytest.raises(UserError, match="--precision int8 runs on --engine onnxruntime only"):
        make_segmenter(prefix, engine="openvino", precision="int8", calibration=[])


def test_infer_in_bfloat16_runs_on_openvino_on_a_cpu_of_the_measured_kind(tmp_path, monkeypatch,
                                                                          capsys):
    import cv2

    from fcn_graph.host import choice, cpuinfo
    monkeypatch.setattr(cpuinfo, "cpu_features",
                        lambda text=None: {"avx2", "fma", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(choice, "gpu_visible", lambda *args: False)
    prefix = _tiny_checkpoint(tmp_path)
    image = np.random.default_rng(6).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    assert infer.main([str(tmp_path / "a.png"), "--checkpoint", prefix, "--output-dir",
                       str(tmp_path / "out"), "--precision", "bfloat16"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "engine openvino (auto: bfloat16 runs on OpenVINO" in text, text
    assert cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED).shape[:2] == (21, 34)
