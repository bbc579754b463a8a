"""bfloat16 and int8: the CPU flags they need (from injected cpuinfo text),
the int8 calibration images and their errors, the quantized model's form, and
label agreement with float32 on small models."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from cpufixtures import GRAVITON, SAPPHIRE_RAPIDS, ZEN3, ZEN4, fake_cpuinfo
from datafixtures import write_gray, write_rgb
from PIL import Image
from tfutil import build_graph, random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import evaluate, export, infer
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.fileio import OUTPUT_RECORD
from fcn_graph.data.shapes import render_sample
from fcn_graph.engines import int8_model
from fcn_graph.engines.segmenter import Segmenter, make_segmenter
from fcn_graph.host import cpuinfo, session
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from fcn_graph.engines import onnx_engine  # noqa: E402

tf1 = tf.compat.v1

NUM_CLASSES = 4  # the shapes dataset's



# --------------------------------------------------------------------------- CPU flags


def test_cpu_features_parses_flags_of_every_kind_of_cpuinfo():
    assert {"avx512_bf16", "avx512_vnni", "fma"} <= cpuinfo.cpu_features(ZEN4)
    assert "avx512_bf16" not in cpuinfo.cpu_features(ZEN3)
    assert cpuinfo.cpu_features(SAPPHIRE_RAPIDS) >= {"amx_bf16", "amx_int8", "avx_vnni"}
    assert cpuinfo.cpu_features(GRAVITON) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpuinfo.cpu_features("") == frozenset()
    assert cpuinfo.cpu_features("model name : flags are not here\n") == frozenset()


def test_cpu_features_reads_the_cpuinfo_file(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN3)
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(fake))
    assert cpuinfo.cpu_features() == {"fpu", "sse2", "avx", "avx2", "fma"}
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(tmp_path / "missing"))
    assert cpuinfo.cpu_features() == frozenset()


def test_bfloat16_is_refused_without_bf16_units_and_int8_warns_without_vnni():
    zen3, zen4, spr = (cpuinfo.cpu_features(t) for t in (ZEN3, ZEN4, SAPPHIRE_RAPIDS))
    with pytest.raises(UserError) as err:
        cpuinfo.check_precision("bfloat16", zen3)
    message = str(err.value)
    assert "\n" not in message and "avx512_bf16" in message and "amx_bf16" in message
    assert f"{cpuinfo.BF16_EMULATED_SLOWDOWN}x slower" in message
    assert cpuinfo.check_precision("bfloat16", zen4) == ("avx512_bf16",)
    assert cpuinfo.check_precision("bfloat16", spr) == ("amx_bf16",)
    warnings = []
    assert cpuinfo.check_precision("int8", zen3, warn=warnings.append) == ()
    assert len(warnings) == 1 and "avx512_vnni" in warnings[0] and "\n" not in warnings[0]
    assert cpuinfo.check_precision("int8", zen4, warn=warnings.append) == ("avx512_vnni",)
    assert cpuinfo.check_precision("int8", spr, warn=warnings.append) == ("avx_vnni", "amx_int8")
    assert len(warnings) == 1
    # float32, and a CPU whose flags cannot be read: nothing to refuse
    assert cpuinfo.check_precision("float32", zen3) == ()
    assert cpuinfo.check_precision("bfloat16", frozenset()) == ()


# --------------------------------------------------------------------------- fixtures


def _checkpoint(directory, kernels_seed=4):
    """Random non-zero weights at tiny widths, NUM_CLASSES classes: scores with
    clear winners almost everywhere."""
    spec = ModelSpec(num_classes=NUM_CLASSES, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()), mean_pixel=TINY_MEAN)
    graph, _, _, _, _, variables = build_graph(spec)
    values = random_values(variables, seed=kernels_seed)
    with graph.as_default():
        saver = checkpoint.model_saver(variables)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        return checkpoint.save_model(sess, saver, str(directory / "tiny"), spec)


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt"))


def _shapes_images(folder, count, seed, size=40):
    """`count` shapes images (PNG) in `folder`; returns the arrays."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        image = render_sample(rng, size)[0]
        write_rgb(os.path.join(folder, f"shape_{index:02d}.png"), image)
        images.append(image)
    return images


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    _shapes_images(str(folder), 6, seed=11)
    return str(folder)


# --------------------------------------------------------------------------- calibration images


@pytest.mark.parametrize("height,width", [(1, 1), (3, 200), (37, 45), (97, 131)])
def test_calibration_images_keep_odd_sizes(tmp_path, height, width):
    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    write_rgb(str(tmp_path / "a.png"), rgb)
    reader = int8_model.calibration_reader(int8_model.calibration_files(str(tmp_path)))
    batch = reader.get_next()["images"]
    assert batch.dtype == np.uint8 and batch.shape == (1, height, width, 3)
    np.testing.assert_array_equal(batch[0], rgb)          # as infer reads it: RGB, unscaled
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["images"], batch)


def test_calibration_reads_gray_and_jpeg_as_rgb_and_scales_down_large_images(tmp_path):
    write_gray(str(tmp_path / "a_gray.png"), np.full((20, 30), 77, np.uint8))
    write_rgb(str(tmp_path / "b.jpg"), np.zeros((50, 60, 3), np.uint8))
    write_rgb(str(tmp_path / "c_large.png"), np.zeros((300, 1100, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image, and not an image's name")
    os.mkdir(tmp_path / "sub.png")                         # a folder named like an image
    paths = int8_model.calibration_files(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["a_gray.png", "b.jpg", "c_large.png"]
    reader = int8_model.calibration_reader(paths, max_side=512)
    shapes = [reader.get_next()["images"].shape for _ in paths]
    assert shapes == [(1, 20, 30, 3), (1, 50, 60, 3), (1, 140, 512, 3)]


def test_calibration_takes_at_most_limit_images_spread_over_the_folder(tmp_path):
    for index in range(10):
        write_rgb(str(tmp_path / f"{index}.png"), np.zeros((2, 2, 3), np.uint8))
    names = [os.path.basename(p) for p in int8_model.calibration_files(str(tmp_path), limit=4)]
    assert names == ["0.png", "3.png", "6.png", "9.png"]


def test_bad_calibration_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("x")
    image = tmp_path / "one.png"
    write_rgb(str(image), np.zeros((4, 4, 3), np.uint8))
    cases = [(str(tmp_path / "missing"), "No such file"), (str(empty), "holds no images"),
             (str(other), "holds no images"), (str(image), "is a regular file")]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        cases.append((str(tmp_path / "fifo"), "is a FIFO"))
    for path, expected in cases:
        with pytest.raises(UserError) as err:
            int8_model.calibration_files(path)
        message = str(err.value)
        assert message.startswith(f"--calibration {path}: ") and expected in message, message
        assert "\n" not in message and "expected a folder of images" in message or \
            "holds no images" in message


# --------------------------------------------------------------------------- the int8 model


def test_quantized_model_is_qdq_per_channel_with_float_upsampling(tmp_path, tiny_prefix,
                                                                   calibration_dir):
    for kernels in ("cpu", "reference"):
        model = onnx_engine.build_onnx_model(tiny_prefix, kernels=kernels)
        before = model.SerializeToString()
        out = str(tmp_path / f"{kernels}.onnx")
        used = int8_model.quantize_model(model, calibration_dir, out)
        assert len(used) == 6
        assert model.SerializeToString() == before        # the caller's model is untouched
        proto = onnx.load(out)
        ops = [node.op_type for node in proto.graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        produced = {o: node for node in proto.graph.node for o in node.output}
        initializers = {t.name: t for t in proto.graph.initializer}
        convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
        float_kernels = 0
        for node in convs:
            source = produced.get(node.input[1])
            if source is None:                      # a float kernel: only the upsamplings
                float_kernels += 1
                assert node.input[1] in initializers
                continue
            assert source.op_type == "DequantizeLinear"
            weights = initializers[source.input[0]]
            assert weights.data_type == onnx.TensorProto.INT8
            scales = onnx.numpy_helper.to_array(initializers[source.input[1]])
            assert scales.shape == (weights.dims[0],)            # one scale per output channel
        assert float_kernels == 3 == len(int8_model.upsampling_nodes(
            onnx_engine.build_onnx_model(tiny_prefix, kernels=kernels)))
        # the interface of the float model
        assert [i.name for i in proto.graph.input] == ["images"]
        assert [o.name for o in proto.graph.output] == ["labels", "scores"]
    assert sorted(os.listdir(tmp_path)) == ["cpu.onnx", "reference.onnx"], "temporary left"


def test_weights_keep_7_bits_on_cpus_without_int8_units(tmp_path, tiny_prefix,
                                                       calibration_dir, monkeypatch):
    model = onnx_engine.build_onnx_model(tiny_prefix)
    largest = {}
    for name, text in (("zen3", ZEN3), ("zen4", ZEN4)):
        fake_cpuinfo(monkeypatch, tmp_path, text)
        out = str(tmp_path / f"{name}.onnx")
        int8_model.quantize_model(model, calibration_dir, out)
        proto = onnx.load(out)
        largest[name] = max(int(np.abs(onnx.numpy_helper.to_array(t).astype(int)).max())
                            for t in proto.graph.initializer
                            if t.data_type == onnx.TensorProto.INT8)
    assert largest["zen3"] <= 64 and largest["zen4"] == 127, largest


def test_a_bad_image_in_the_folder_stops_quantization_and_writes_nothing(tmp_path, tiny_prefix):
    folder = tmp_path / "calib"
    _shapes_images(str(folder), 2, seed=3)
    (folder / "shape_01.png").write_bytes(b"\x89PNG\r\n\x1a\n garbled")
    out = tmp_path / "out" / "int8.onnx"
    out.parent.mkdir()
    with pytest.raises(UserError) as err:
        int8_model.quantize_model(onnx_engine.build_onnx_model(tiny_prefix), str(folder), str(out))
    assert "shape_01.png" in str(err.value) and "\n" not in str(err.value)
    assert os.listdir(out.parent) == []


def _agreement(a, b):
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def test_int8_labels_agree_with_float32(tmp_path, tiny_prefix, calibration_dir):
    float32 = make_segmenter(tiny_prefix, engine="onnxruntime")
    int8 = make_segmenter(tiny_prefix, engine="onnxruntime", precision="int8",
                          calibration=calibration_dir)
    images = _shapes_images(str(tmp_path / "eval"), 4, seed=12, size=48)
    images.append(np.random.default_rng(0).integers(0, 256, (37, 45, 3), np.uint8))
    agree = []
    for image in images:
        want, want_scores = float32.run(image[np.newaxis], scores=True)
        got, got_scores = int8.run(image[np.newaxis], scores=True)
        assert got.shape == want.shape and got_scores.dtype == np.float32
        assert np.array_equal(got, got_scores.argmax(-1))
        agree.append(_agreement(got, want))
        # int8, not float32 again: the scores move, by little
        error = np.abs(got_scores - want_scores).max() / np.abs(want_scores).max()
        assert 1e-5 < error < 0.2, error
    assert len(np.unique(want)) > 1                     # a non-trivial label map
    # 2 to 5 channels a layer leave int8 little to average over: the demo
    # model's widths agree on more (bench/precision.py reports them)
    assert np.mean(agree) >= 0.96, agree


def test_bfloat16_labels_agree_with_float32(tiny_prefix):
    if not session.onednn_enabled():
        pytest.skip("bfloat16 runs through oneDNN, and TF_ENABLE_ONEDNN_OPTS=0 turned it off")
    if not cpuinfo.has_bf16_units(cpuinfo.cpu_features()):
        pytest.skip(f"this CPU has no bfloat16 units ({', '.join(cpuinfo.BF16_FLAGS)})")
    image = np.random.default_rng(5).integers(0, 256, (2, 45, 37, 3), np.uint8)
    labels = {}
    for precision in ("float32", "bfloat16"):
        segmenter = Segmenter(tiny_prefix, threads=2, precision=precision)
        try:
            labels[precision] = segmenter.run(image)[0]
        finally:
            segmenter.close()
    assert len(np.unique(labels["float32"])) > 1
    assert _agreement(labels["bfloat16"], labels["float32"]) >= 0.98


# --------------------------------------------------------------------------- commands


def test_bfloat16_on_a_cpu_without_units_is_one_line(tmp_path, tiny_prefix, monkeypatch, capsys):
    fake_cpuinfo(monkeypatch, tmp_path, ZEN3)
    write_rgb(str(tmp_path / "a.png"), np.zeros((9, 9, 3), np.uint8))
    code = run_cli(infer.main, [str(tmp_path / "a.png"), "--checkpoint", tiny_prefix,
                                "--output-dir", str(tmp_path / "out"),
                                "--precision", "bfloat16"], prog="fcn_graph.infer")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("fcn_graph.infer: error: --precision bfloat16: this CPU has no "
                              "bfloat16 units"), err
    assert not any("Traceback" in line for line in err)


def test_infer_int8_notes_7_bit_weights_without_vnni_and_matches_float32(tmp_path, tiny_prefix,
                                                                calibration_dir, monkeypatch,
                                                                capsys):
    fake_cpuinfo(monkeypatch, tmp_path, ZEN3)
    images = _shapes_images(str(tmp_path / "in"), 2, seed=21, size=33)
    outputs = {}
    for precision in ("float32", "int8"):
        extra = ["--calibration", calibration_dir] if precision == "int8" else []
        out = tmp_path / precision
        assert infer.main([str(tmp_path / "in"), "--checkpoint", tiny_prefix, "--output-dir",
                           str(out), "--precision", precision, "--engine", "onnxruntime",
                           *extra]) == 0
        outputs[precision] = [np.array(Image.open(out / f"shape_{i:02d}.png"))
                              for i in range(len(images))]
    err = capsys.readouterr().err
    assert "note: --precision int8: this CPU has no int8 dot-product units" in err
    assert "7 bits" in err and "docs/performance.md#int8-accuracy" in err
    assert "engine onnxruntime (--engine), int8" in err
    assert _agreement(outputs["int8"], outputs["float32"]) >= 0.95


@pytest.mark.parametrize("argv,expected", [
    (["--precision", "int8"], "--precision int8: needs --calibration DIR"),
    (["--precision", "int8", "--engine", "tf", "--calibration", "."],
     "--precision int8 runs on --engine onnxruntime only"),
    (["--calibration", "."], "--calibration applies to --precision int8 only"),
])
def test_precision_flag_combinations_are_refused(tmp_path, argv, expected, capsys):
    for main in (infer.main, evaluate.main):
        inputs = [str(tmp_path)] if main is infer.main else []
        with pytest.raises(SystemExit) as exit_:
            main([*inputs, "--checkpoint", str(tmp_path), *argv])
        assert exit_.value.code == 2
        assert expected in capsys.readouterr().err


def test_bad_calibration_is_refused_before_the_model_loads(tmp_path, tiny_prefix, capsys):
    write_rgb(str(tmp_path / "a.png"), np.zeros((9, 9, 3), np.uint8))
    empty = tmp_path / "empty"
    empty.mkdir()
    for calibration, expected in ((tmp_path / "missing", "No such file"),
                                  (empty, "holds no images"),
                                  (tmp_path / "a.png", "is a regular file")):
        code = run_cli(infer.main, [str(tmp_path / "a.png"), "--checkpoint", tiny_prefix,
                                    "--output-dir", str(tmp_path / "out"), "--precision", "int8",
                                    "--calibration", str(calibration)], prog="fcn_graph.infer")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
        assert err[0].startswith(f"fcn_graph.infer: error: --calibration {calibration}: ")
        code = run_cli(export.main, ["--checkpoint", tiny_prefix, "--format", "onnx", "--out",
                                     str(tmp_path / "m.onnx"), "--quantize", "int8",
                                     "--calibration", str(calibration)], prog="fcn_graph.export")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and expected in err[-1] and "Traceback" not in "".join(err), err
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "m.onnx")


def test_export_quantize_int8_writes_a_model_the_engine_runs(tmp_path, tiny_prefix,
                                                           calibration_dir, capsys):
    out = tmp_path / "int8.onnx"
    assert export.main(["--checkpoint", tiny_prefix, "--format", "onnx", "--out", str(out),
                        "--quantize", "int8", "--calibration", calibration_dir]) == 0
    printed = capsys.readouterr().out
    assert "int8 (calibrated on 6 images)" in printed and "(no limit)" in printed
    assert sorted(os.listdir(tmp_path)) == [OUTPUT_RECORD, "int8.onnx"], "temporary left behind"
    proto = onnx.load(str(out))
    assert "QuantizeLinear" in {n.op_type for n in proto.graph.node}
    image = np.random.default_rng(1).integers(0, 256, (1, 29, 31, 3), np.uint8)
    labels, scores = onnx_engine.OnnxSegmenter(str(out)).run(image, scores=True)
    assert labels.shape == (1, 29, 31) and scores.shape == (1, 29, 31, NUM_CLASSES)
    want = make_segmenter(tiny_prefix, engine="onnxruntime").run(image)[0]
    assert _agreement(labels, want) >= 0.9
    # --quantize is for ONNX and LiteRT only, and needs --calibration
    for argv, expected in ((["--format", "frozen", "--quantize", "int8"],
                            "--quantize applies to --format onnx and tflite only"),
                           (["--format", "onnx", "--quantize", "int8"],
                            "--quantize int8: needs --calibration DIR")):
        with pytest.raises(SystemExit):
            export.main(["--checkpoint", tiny_prefix, "--out", str(tmp_path / "x"), *argv])
        assert expected in capsys.readouterr().err


def test_evaluate_int8_reports_float32_mean_iu_and_agreement(tmp_path, tiny_prefix,
                                                             calibration_dir, capsys):
    sets = ["data.kind=shapes", f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=2",
            "data.shapes_val_images=3", "data.shapes_image_size=40", "train.threads=2"]
    argv = [arg for item in sets for arg in ("--set", item)]
    out = tmp_path / "int8.json"
    assert evaluate.main([*argv, "--checkpoint", tiny_prefix, "--precision", "int8",
                          "--calibration", calibration_dir, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int8 against float32 (onnxruntime, the same images)" in printed
    record = json.loads(out.read_text())
    assert record["precision"] == "int8" and record["engine"] == "onnxruntime"
    reference = tmp_path / "float32.json"
    assert evaluate.main([*argv, "--checkpoint", tiny_prefix, "--engine", "onnxruntime",
                          "--json", str(reference)]) == 0
    float32 = json.loads(reference.read_text())
    assert record["float32"]["mean_iou"] == pytest.approx(float32["mean_iou"], abs=1e-9)
    assert record["float32"]["per_class_iou"] == float32["per_class_iou"]
    assert record["mean_iou_change"] == pytest.approx(
        record["mean_iou"] - float32["mean_iou"], abs=1e-12)
    assert 0.95 <= record["labels_agree"] <= 1.0
    assert f"{record['labels_agree']:.4%}" in printed
