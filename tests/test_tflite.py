"""`python -m fcn_graph.export --format tflite`: the LiteRT model of tiny
checkpoints run with the LiteRT interpreter (as README shows it) against the
checkpoint at odd sizes; the int8 model and the figures export prints about it,
recomputed here; refusals and the overwrite rules."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from datafixtures import write_rgb
from tfutil import build_graph, random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS, write_tiny_checkpoint

from fcn_graph import export
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.fileio import OUTPUT_RECORD
from fcn_graph.data import datasets
from fcn_graph.data.image_files import read_image, read_label
from fcn_graph.data.shapes import render_sample
from fcn_graph.engines import exporters, litert
from fcn_graph.engines.int8_model import calibration_image
from fcn_graph.engines.segmenter import Segmenter
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A legacy FCN-8s from mat2ckpt, and a paper FCN-8s (BGR) with random
    non-zero weights everywhere (its upsampling filters included)."""
    root = tmp_path_factory.mktemp("tflite")
    found = {"legacy": write_tiny_checkpoint(root, num_classes=4)}
    spec = ModelSpec(num_classes=3, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN[::-1], architecture="paper", skips="8s",
                               channel_order="bgr")
    graph, *_, variables = build_graph(spec)
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, random_values(variables, seed=5))
        found["paper"] = checkpoint.save_model(sess, checkpoint.model_saver(variables),
                                               str(root / "paper"), spec)
    return found


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """Six shapes images of 40x40 and one of 23x57."""
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(11)
    for index in range(6):
        write_rgb(str(folder / f"shape_{index:02d}.png"), render_sample(rng, 40)[0])
    write_rgb(str(folder / "wide.png"), render_sample(rng, 57)[0][:23])
    return str(folder)


def _export(*argv):
    return run_cli(export.main, [str(a) for a in argv], prog="fcn_graph.export")


def _run_interpreter(path, batch):
    """The README's LiteRT calls: labels and scores of uint8 `batch`."""
    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, batch)
    interpreter.invoke()
    out = {d["name"]: interpreter.get_tensor(d["index"])
           for d in interpreter.get_output_details()}
    return out["labels"], out["scores"], interpreter


@pytest.mark.parametrize("which", ["legacy", "paper"])
def test_float32_export_agrees_with_the_checkpoint_at_odd_sizes(checkpoints, tmp_path, capsys,
                                                                 which):
    out = tmp_path / "m.tflite"
    assert _export("--checkpoint", checkpoints[which], "--format", "tflite", "--out", out) == 0
    printed = capsys.readouterr().out
    assert printed.count("verified with LiteRT on a") == len(exporters.TFLITE_VERIFY_SIZES)
    assert f"wrote {out} " in printed and "labels int32 [N, H, W]" in printed
    assert sorted(os.listdir(tmp_path)) == [OUTPUT_RECORD, "m.tflite"]

    reference = Segmenter(checkpoints[which])
    rng = np.random.default_rng(3)
    try:
        for shape in ((1, 1, 1, 3), (1, 37, 45, 3), (1, 97, 131, 3), (2, 20, 31, 3)):
            batch = rng.integers(0, 256, shape, dtype=np.uint8)
            labels, scores, interpreter = _run_interpreter(out, batch)
            want_labels, want_scores = reference.run(batch, scores=True)
            assert labels.dtype == np.int32 and labels.shape == shape[:3]
            assert scores.dtype == np.float32 and scores.shape == want_scores.shape
            scale = np.abs(want_scores).max()
            np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_array_equal(labels, scores.argmax(axis=3))
            assert np.mean(labels == want_labels) >= 0.999
    finally:
        reference.close()
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and list(detail["shape_signature"]) == [-1, -1, -1, 3]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "TRANSPOSE_CONV" in ops and not any(op.startswith("Flex") for op in ops)


def _mean_iou(truth, got, num_classes):
    """Mean over classes present in either of |truth == c & got == c| / |truth == c | got == c|."""
    ious = []
    for c in range(num_classes):
        union = np.count_nonzero((truth == c) | (got == c))
        if union:
            ious.append(np.count_nonzero((truth == c) & (got == c)) / union)
    return float(np.mean(ious))


def test_int8_export_prints_its_agreement_with_float32(checkpoints, calibration_dir, tmp_path,
                                                       capsys):
    prefix = checkpoints["legacy"]
    out = tmp_path / "int8.tflite"
    assert _export("--checkpoint", prefix, "--format", "tflite", "--quantize", "int8",
                   "--calibration", calibration_dir, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "int8 full integer (calibrated on 7 images)" in printed
    found = re.search(r"int8 against the float32 checkpoint on 7 calibration images: labels "
                      r"agree on ([\d.]+)% of pixels; mean IU ([\d.]+) \(([-+\d.]+) points\)",
                      printed)
    assert found, printed

    interpreter = Interpreter(model_path=str(out))
    types = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in types                                   # int8 weights and activations
    reference = Segmenter(prefix)
    same = total = 0
    truths, gots = [], []
    try:
        for name in sorted(os.listdir(calibration_dir)):
            image = calibration_image(os.path.join(calibration_dir, name))
            got = _run_interpreter(out, image)[0]
            want = reference.run(image)[0]
            same += np.count_nonzero(got == want)
            total += want.size
            truths.append(want.ravel())
            gots.append(got.ravel())
    finally:
        reference.close()
    miou = _mean_iou(np.concatenate(truths), np.concatenate(gots), 4)
    assert float(found.group(1)) == pytest.approx(100 * same / total, abs=0.006)
    assert float(found.group(2)) == pytest.approx(miou, abs=6e-5)
    assert float(found.group(3)) == pytest.approx((miou - 1) * 100, abs=0.006)
    assert same / total > 0.5          # int8, yet close to float32

    # --val: the figures on other images.
    val = tmp_path / "val"
    val.mkdir()
    write_rgb(str(val / "a.png"), render_sample(np.random.default_rng(2), 33)[0])
    assert _export("--checkpoint", prefix, "--format", "tflite", "--quantize", "int8",
                   "--calibration", calibration_dir, "--val", val, "--out", out, "--force") == 0
    assert "int8 against the float32 checkpoint on 1 --val images" in capsys.readouterr().out


def test_int8_on_the_config_split_reports_mean_iu_against_its_labels(checkpoints,
                                                                     calibration_dir,
                                                                     tmp_path, capsys):
    prefix = checkpoints["legacy"]
    sets = ["data.kind=shapes", f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=2",
            "data.shapes_val_images=3", "data.shapes_image_size=40"]
    argv = [arg for item in sets for arg in ("--set", item)]
    out = tmp_path / "int8.tflite"
    assert _export("--checkpoint", prefix, "--format", "tflite", "--quantize", "int8",
                   "--calibration", calibration_dir, "--out", out, *argv) == 0
    printed = capsys.readouterr().out
    found = re.search(r"on 3 images of the shapes split 'val': labels agree on ([\d.]+)% of "
                      r"pixels; .*; mean IU against the split's labels ([\d.]+), float32 "
                      r"([\d.]+) \(([-+\d.]+) points\)", printed)
    assert found, printed

    files = datasets.open_split("shapes", str(tmp_path / "shapes"), "val")
    reference = Segmenter(prefix)
    rows = {"int8": [], "float32": [], "truth": []}
    try:
        for image_path, label_path in zip(files.image_paths, files.label_paths):
            image = read_image(image_path)[np.newaxis]
            rows["int8"].append(_run_interpreter(out, image)[0].ravel())
            rows["float32"].append(reference.run(image)[0].ravel())
            rows["truth"].append(read_label(label_path).ravel())
    finally:
        reference.close()
    int8, float32, truth = (np.concatenate(rows[k]) for k in ("int8", "float32", "truth"))
    assert float(found.group(1)) == pytest.approx(100 * np.mean(int8 == float32), abs=0.006)
    keep = truth != 255
    want_int8 = _mean_iou(truth[keep], int8[keep], 4)
    want_float32 = _mean_iou(truth[keep], float32[keep], 4)
    assert float(found.group(2)) == pytest.approx(want_int8, abs=6e-5)
    assert float(found.group(3)) == pytest.approx(want_float32, abs=6e-5)
    assert float(found.group(4)) == pytest.approx((want_int8 - want_float32) * 100, abs=0.006)

    with pytest.raises(SystemExit):
        export.main(["--checkpoint", prefix, "--format", "tflite", "--out", str(out), *argv])
    assert "--config/--set apply to --format tflite --quantize int8" in capsys.readouterr().err


def test_refusals_write_nothing(checkpoints, calibration_dir, tmp_path, capsys):
    prefix = checkpoints["legacy"]

    def error(*argv):
        assert _export(*argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    out = tmp_path / "out" / "m.tflite"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.ckpt-1.index").write_bytes(b"not an index")
    (broken / "model.ckpt-1.data-00000-of-00001").write_bytes(b"")
    assert str(broken) in error("--checkpoint", broken, "--format", "tflite", "--out", out)
    assert "no checkpoint here" in error("--checkpoint", tmp_path / "nothing", "--format",
                                         "tflite", "--out", out)
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert f"--calibration {empty}: holds no images" in error(
        "--checkpoint", prefix, "--format", "tflite", "--quantize", "int8", "--calibration",
        empty, "--out", out)
    assert f"--val {empty}: holds no images" in error(
        "--checkpoint", prefix, "--format", "tflite", "--quantize", "int8", "--calibration",
        calibration_dir, "--val", empty, "--out", out)
    assert not os.path.exists(out)

    with pytest.raises(SystemExit):
        export.main(["--checkpoint", prefix, "--format", "tflite", "--val", calibration_dir,
                     "--out", str(out)])
    assert "--val applies to --format tflite --quantize int8 only" in capsys.readouterr().err
    with pytest.raises(UserError, match="--kernels cpu: --format tflite writes the reference"):
        exporters.export_tflite(prefix, str(out), kernels="cpu")

    # An existing file: refused; --force replaces only an export fcn_graph wrote there.
    mine = tmp_path / "mine.tflite"
    mine.write_bytes(b"x")
    assert "exists; refusing to replace it" in error("--checkpoint", prefix, "--format",
                                                     "tflite", "--out", mine)
    assert "was not written by fcn_graph" in error("--checkpoint", prefix, "--format",
                                                   "tflite", "--out", mine, "--force")
    assert mine.read_bytes() == b"x"
    ours = tmp_path / "ours.tflite"
    assert _export("--checkpoint", prefix, "--format", "tflite", "--out", ours) == 0
    assert _export("--checkpoint", prefix, "--format", "tflite", "--out", ours, "--force") == 0
    assert ours.read_bytes()[4:8] == b"TFL3"
    capsys.readouterr()


def test_failed_verification_writes_nothing(checkpoints, tmp_path, monkeypatch):
    run = litert.LiteRTSegmenter.run

    def wrong(self, batch, *, scores=False):
        labels, logits = run(self, batch, scores=scores)
        return (labels + 1) % 4, logits                     # labels off, scores right

    monkeypatch.setattr(litert.LiteRTSegmenter, "run", wrong)
    out = tmp_path / "m.tflite"
    with pytest.raises(exporters.VerificationError, match="labels agree with the checkpoint"):
        exporters.export_tflite(checkpoints["legacy"], str(out))
    assert os.listdir(tmp_path) == []


def test_export_prints_its_own_lines_only(checkpoints, calibration_dir, tmp_path):
    """In a fresh process: the converter's and the interpreter's routine
    notices (NOTICES) never reach the command's standard error."""
    out = tmp_path / "int8.tflite"
    run = subprocess.run([sys.executable, "-m", "fcn_graph.export", "--checkpoint",
                          checkpoints["legacy"], "--format", "tflite", "--quantize", "int8",
                          "--calibration", calibration_dir, "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [f"calibrating int8: image {i} of 7" for i in range(1, 8)]
    assert litert.NOTICES.match(b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert litert.NOTICES.match(b"fully_quantize: 0, inference_type: 6, input_inference_type: "
                                b"FLOAT32, output_inference_type: FLOAT32\n")
