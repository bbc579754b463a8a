"""Training and evaluation end to end at a tiny width (vgg_width 1/16, fc_width 16)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn_graph import evaluate
from fcn_graph import train as train_module
from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.engines.segmenter import Segmenter
from fcn_graph.network import definition, tf_layers
from fcn_graph.training import loop
from fcn_graph.training.config import load_config
from fcn_graph.weights import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.vgg_width=0.0625", "model.fc_width=16", "train.image_size=32",
        "train.batch_size=2", "train.log_every=1", "train.eval_every=2",
        "train.checkpoint_every=2", "train.learning_rate=0.001", "train.threads=2"]


def shapes_args(tmp_path, *extra):
    return [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=6",
            "data.shapes_val_images=2", "data.shapes_image_size=24",
            f"train.log_dir={tmp_path / 'run'}", *TINY, *extra]


def empty_config(tmp_path):
    """A config file with no keys (train.py requires --config)."""
    path = tmp_path / "empty_config.json"
    path.write_text("{}\n")
    return str(path)


def latest_step(log_dir):
    prefix = tf.train.latest_checkpoint(str(log_dir))
    return prefix, int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))


def restore_and_check_finite(prefix):
    """Rebuild the model from the checkpoint alone and restore it."""
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
        tf_layers.build(images, spec)
        variables = tf_layers.model_variables(graph)
        with tf.compat.v1.Session(graph=graph) as sess:
            checkpoint.restore_model(sess, prefix, variables)
            values = sess.run(dict(variables))
    assert all(np.isfinite(v).all() for v in values.values())
    return spec


def test_train_writes_checkpoints_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    metrics = loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=4")))
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["num_images"] == 2
    prefix, step = latest_step(run)
    assert step == 4 and prefix.endswith("model.ckpt-4")
    for name in ("config.json", "val_metrics.json", "model.ckpt-4.json", "model.ckpt-2.index",
                 "history.jsonl", "training_curves.png"):
        assert (run / name).exists(), name
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run))
    spec = restore_and_check_finite(prefix)
    assert spec.num_classes == 4 and spec.fc_width == 16 and spec.vgg_widths[0] == 4
    assert "validation mean IU" in capsys.readouterr().out

    loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=6")))
    assert latest_step(run)[1] == 6
    err = capsys.readouterr().err
    assert "resuming from" in err and "at step 4" in err
    prefix, _ = latest_step(run)
    variables = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert "inference/W6/Adam" in variables  # optimizer state is saved for resuming


def test_resume_refuses_another_model(tmp_path):
    loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=2")))
    with pytest.raises(UserError, match="holds a checkpoint of another model"):
        loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=4",
                                                         "model.fc_width=8")))


def test_nan_loss_stops_without_saving_the_bad_state(tmp_path, capsys):
    args = shapes_args(tmp_path, "train.max_steps=2", "train.eval_every=0")
    loop.train(load_config(None, args))
    diverging = args + ["train.max_steps=40", "train.checkpoint_every=1",
                        "train.learning_rate=10", "train.keep_prob=1.0"]
    code = run_cli(train_module.main, ["--config", empty_config(tmp_path)]
                   + [arg for a in diverging for arg in ("--set", a)], prog="train.py")
    err = capsys.readouterr().err
    assert code == 2
    line = [e for e in err.splitlines() if e.startswith("train.py: error:")]
    assert len(line) == 1 and ("the loss is" in line[0] or "no longer finite" in line[0])
    assert "The last good checkpoint is" in line[0]
    prefix, step = latest_step(tmp_path / "run")
    assert step < 40
    restore_and_check_finite(prefix)  # what was kept restores, and holds no NaN


def test_sigterm_saves_and_sigkill_leaves_a_readable_checkpoint(tmp_path):
    args = shapes_args(tmp_path, "train.max_steps=100000", "train.checkpoint_every=3",
                       "train.eval_every=0")
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config", empty_config(tmp_path)]
    command += [arg for a in args for arg in ("--set", a)]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    run = tmp_path / "run"

    def start_and_wait_for_checkpoint():
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not (run / "checkpoint").exists() or latest_step(run)[1] < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.2)
        return proc

    proc = start_and_wait_for_checkpoint()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    _, step = latest_step(run)
    assert f"interrupted at step {step}" in err  # the checkpoint holds the last step

    proc = start_and_wait_for_checkpoint()  # resumes, then is killed without warning
    time.sleep(1.0)
    proc.kill()
    proc.communicate()
    prefix, step2 = latest_step(run)
    assert step2 >= step
    restore_and_check_finite(prefix)


def test_evaluate_matches_numpy_metrics_of_saved_predictions(tmp_path, voc_root, capsys):
    base = ["data.kind=voc", f"data.root={voc_root}", f"train.log_dir={tmp_path / 'run'}",
            *TINY, "train.max_steps=2", "train.eval_every=0"]
    loop.train(load_config(None, base))
    capsys.readouterr()
    out_json, out_dir = tmp_path / "m.json", tmp_path / "pred"
    argv = [arg for a in base for arg in ("--set", a)]
    argv += ["--json", str(out_json), "--save-predictions", str(out_dir)]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean IU" in printed and "aeroplane" in printed

    import json

    record = json.loads(out_json.read_text())
    assert record["num_images"] == 2 and len(record["per_class_iou"]) == 21
    hist = np.zeros((21, 21))
    for stem in ("2007_000003", "2007_000004"):
        label = np.array(Image.open(os.path.join(voc_root, "SegmentationClass", stem + ".png")))
        prediction = np.array(Image.open(out_dir / f"{stem}.png"))
        assert prediction.shape == label.shape
        keep = label != IGNORE_LABEL
        np.add.at(hist, (label[keep], prediction[keep]), 1)
    diag = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = diag / (hist.sum(0) + hist.sum(1) - diag)
        acc = diag / hist.sum(1)
    freq = hist.sum(1) / hist.sum()
    assert record["pixel_accuracy"] == pytest.approx(diag.sum() / hist.sum(), abs=1e-6)
    assert record["mean_accuracy"] == pytest.approx(np.nanmean(acc), abs=1e-6)
    assert record["mean_iou"] == pytest.approx(np.nanmean(iu), abs=1e-6)
    assert record["frequency_weighted_iou"] == pytest.approx(
        (freq[freq > 0] * iu[freq > 0]).sum(), abs=1e-6)
    for got, want in zip(record["per_class_iou"], iu):
        assert (got is None and np.isnan(want)) or got == pytest.approx(want, abs=1e-6)

    # The ONNX Runtime engine predicts (nearly) the same labels, so the same metrics.
    onnx_json, onnx_dir = tmp_path / "onnx.json", tmp_path / "onnx_pred"
    assert evaluate.main([arg for a in base for arg in ("--set", a)] + [
        "--engine", "onnxruntime", "--json", str(onnx_json),
        "--save-predictions", str(onnx_dir)]) == 0
    onnx_record = json.loads(onnx_json.read_text())
    agree = np.mean([np.mean(np.array(Image.open(out_dir / f"{stem}.png"))
                             == np.array(Image.open(onnx_dir / f"{stem}.png")))
                     for stem in ("2007_000003", "2007_000004")])
    assert agree > 0.99 and onnx_record["num_images"] == 2
    assert onnx_record["pixel_accuracy"] == pytest.approx(record["pixel_accuracy"], abs=0.01)


def test_bad_inputs_give_one_line_errors(tmp_path, folder_root, capsys):
    def run(main, *args):
        code = run_cli(main, list(args), prog="prog")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) >= 1 and err[-1].startswith("prog: error: ")
        return err[-1]

    config = empty_config(tmp_path)
    assert "train.batch_size: expected an integer in 1..4096, found -2" in run(
        train_module.main, "--config", config, "--set", "train.batch_size=-2")
    assert "data.root: required for data.kind 'voc'" in run(
        train_module.main, "--config", config, "--set", "data.kind=voc")
    assert "no such directory (train.log_dir)" in run(
        evaluate.main, "--set", f"train.log_dir={tmp_path / 'none'}")
    assert "no checkpoint here" in run(
        evaluate.main, "--checkpoint", str(tmp_path / "nothing.ckpt"))

    # A label with a class id the dataset does not have, found while training.
    bad = os.path.join(folder_root, "labels", "img0.png")
    Image.fromarray(np.full((20, 30), 9, np.uint8), mode="L").save(bad)
    message = run(train_module.main, "--config", config, "--set", "data.kind=folder",
                  "--set", f"data.root={folder_root}", "--set", "data.val_fraction=0.5",
                  "--set", f"train.log_dir={tmp_path / 'run'}", "--set", "train.max_steps=30",
                  *[arg for a in TINY for arg in ("--set", a)], "--set", "train.eval_every=0")
    assert bad in message and "values [9] outside [0, 3)" in message


@pytest.mark.parametrize("skips", ["32s", "8s"])
def test_paper_variant_trains_from_a_mat_and_evaluates(tmp_path, tiny_mat, skips, capsys):
    """The paper architecture from a `.mat` with fc6/fc7; infer and evaluate rebuild it
    from the sidecar alone."""
    from tinyvgg import TINY_WIDTHS

    from fcn_graph.weights.matconvnet import load_vgg_mat

    args = shapes_args(tmp_path, "train.max_steps=2", f"model.vgg_mat={tiny_mat}",
                       "model.vgg_width=1.0", "model.fc_width=6", "model.architecture=paper",
                       f"model.skips={skips}")
    loop.train(load_config(None, args))
    prefix, step = latest_step(tmp_path / "run")
    spec = restore_and_check_finite(prefix)
    assert (spec.architecture, spec.skips, step) == ("paper", skips, 2)
    assert spec.vgg_widths == tuple(TINY_WIDTHS.values())
    stored = checkpoint.read_variables(prefix, ["inference/conv4_2_w", "inference/upscore8_w"
                                                if skips == "8s" else "inference/upscore32_w"])
    vgg = load_vgg_mat(tiny_mat)
    # The body moved from its .mat start by training, but stayed close; the frozen
    # bilinear upsampling did not move at all.
    assert np.abs(stored["inference/conv4_2_w"] - vgg.layers["conv4_2"][0]).max() < 0.1
    up = [v for k, v in stored.items() if "upscore" in k][0]
    np.testing.assert_array_equal(up[..., 0, 0], definition.bilinear_kernel(up.shape[0], 1)[..., 0, 0])

    json_path = tmp_path / "metrics.json"
    code = run_cli(evaluate.main, ["--config", str(tmp_path / "run" / "config.json"),
                                   "--json", str(json_path)])
    assert code == 0 and json_path.exists()
    image = np.random.default_rng(0).integers(0, 256, (1, 13, 21, 3), dtype=np.uint8)
    segmenter = Segmenter(prefix)
    try:
        labels, scores = segmenter.run(image, scores=True)
    finally:
        segmenter.close()
    assert labels.shape == (1, 13, 21) and scores.shape == (1, 13, 21, 4)


def test_paper_variant_config_errors(tmp_path):
    from fcn_graph.core.errors import UserError

    with pytest.raises(UserError, match="model.skips: the legacy architecture is FCN-8s only"):
        load_config(None, shapes_args(tmp_path, "model.skips=16s"))
    with pytest.raises(UserError, match="model.skips"):
        load_config(None, shapes_args(tmp_path, "model.architecture=paper", "model.skips=4s"))
    config = load_config(None, shapes_args(tmp_path, "model.architecture=paper"))
    assert config.train.keep_prob == 0.5
