"""Training end to end with the imbalance options and the collapse warning, at
a tiny width: a run made to collapse warns (and stops with
train.stop_on_collapse), a healthy one does not; median frequency weights are
printed, recorded and reused on a resume."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from datafixtures import block_label, random_image, write_gray, write_list, write_rgb
from test_distributed import EXACT, assert_close, checkpoint_values, ordered_dataset, run_tasks
from test_distributed import shapes_args as parallel_args
from test_train import empty_config

from fcn_graph import train as train_module
from fcn_graph.core.errors import run_cli
from fcn_graph.data import datasets
from fcn_graph.training import loop
from fcn_graph.training.config import load_config
from fcn_graph.training.curves import read_history
from fcn_graph.weights import checkpoint

TINY = ["model.vgg_width=0.0625", "model.fc_width=16", "train.image_size=32",
        "train.batch_size=4", "train.log_every=5", "train.checkpoint_every=1000",
        "train.threads=2", "train.keep_prob=1.0", "train.scale_range=[1, 1]",
        "train.flip=false"]


def background_root(tmp_path):
    """A folder dataset whose training labels are background but for two
    pixels, and whose validation labels hold a third of other classes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "background"
    stems = {"train": [f"t{i}" for i in range(6)], "val": [f"v{i}" for i in range(3)]}
    for split, names in stems.items():
        for name in names:
            write_rgb(str(root / "images" / f"{name}.png"), random_image(rng, 32, 32))
            if split == "train":
                label = np.zeros((32, 32), np.uint8)
                label[3, 4], label[20, 9] = 1, 2
            else:
                label = block_label(rng, [0, 0, 1, 2], 32, 32)
            write_gray(str(root / "labels" / f"{name}.png"), label)
        write_list(str(root / f"{split}.txt"), names)
    write_list(str(root / "classes.txt"), ["background", "cat", "dog"])
    return str(root)


def collapse_args(tmp_path, *extra):
    return ["data.kind=folder", f"data.root={background_root(tmp_path)}",
            f"train.log_dir={tmp_path / 'run'}", *TINY, "train.learning_rate=0.01",
            "train.eval_every=10", "train.max_steps=30", "train.patience_steps=0", *extra]


def train_command(tmp_path, args):
    """`python train.py --config {} --set ARG ...` in this process; its exit status."""
    return run_cli(train_module.main, ["--config", empty_config(tmp_path)]
                   + [arg for a in args for arg in ("--set", a)], prog="train.py")


def warnings_in(err):
    return [line for line in err.splitlines() if "may be learning nothing" in line]


def test_a_run_on_background_labels_warns_once_and_records_the_shares(tmp_path, capsys):
    loop.train(load_config(None, collapse_args(tmp_path)))
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "predicted class 0 (background)" in lines[0]
    assert "train.learning_rate" in lines[0] and "train.class_weights" in lines[0]
    records = [r for r in read_history(str(tmp_path / "run")) if "mean_iou" in r]
    assert [r["step"] for r in records] == [10, 20, 30]
    for record in records:
        assert len(record["predicted_shares"]) == 3
        assert sum(record["predicted_shares"]) == pytest.approx(1.0, abs=1e-5)
        assert record["label_shares"][0] < 0.9
    assert records[-1]["predicted_shares"][0] > 0.95
    tags = set()
    for name in os.listdir(tmp_path / "run"):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "run" / name)):
                tags.update(value.tag for value in event.summary.value)
    assert {"val/predicted_share/0_background", "val/predicted_share/2_dog"} <= tags


def test_stop_on_collapse_saves_a_checkpoint_and_exits_2(tmp_path, capsys):
    args = collapse_args(tmp_path, "train.stop_on_collapse=true", "train.max_steps=100")
    code = train_command(tmp_path, args)
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and "train.stop_on_collapse" in errors[0]
    assert "The last good checkpoint is" in errors[0]
    prefix = tf.train.latest_checkpoint(str(tmp_path / "run"))
    step = int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))
    assert step < 100 and f"step {step}:" in errors[0]


def test_a_healthy_run_stays_silent(tmp_path, capsys):
    """Validating on the training images, which a tiny model learns in a few
    dozen steps: neither the validations nor the loss warn."""
    args = [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=8",
            "data.shapes_val_images=2", "data.shapes_image_size=32", "data.val_split=train",
            f"train.log_dir={tmp_path / 'run'}", *TINY, "train.learning_rate=0.003",
            "train.eval_every=30", "train.max_steps=90", "train.patience_steps=40"]
    metrics = loop.train(load_config(None, args))
    err = capsys.readouterr().err
    assert warnings_in(err) == []
    assert metrics["mean_iou"] > 0.5  # it did learn


def test_median_frequency_weights_are_recorded_and_kept_on_resume(tmp_path, capsys):
    args = collapse_args(tmp_path, "train.class_weights=median_frequency",
                         "train.max_steps=2", "train.eval_every=0", "train.checkpoint_every=2")
    loop.train(load_config(None, args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train.class_weights:")]
    assert len(lines) == 1 and "median_frequency" in lines[0] and "background" in lines[0]
    run = tmp_path / "run"
    weights = json.loads((run / "config.json").read_text())["train"]["class_weights"]
    # 6 images of 1024 pixels: class 0 in all (6 * 1022 pixels), classes 1, 2 one pixel each
    freq = np.array([1022 / 1024, 1 / 1024, 1 / 1024])
    np.testing.assert_allclose(weights, np.median(freq) / freq, rtol=1e-9)
    sidecar = checkpoint.read_sidecar(str(run / "model.ckpt-2"))
    assert sidecar["class_weights"] == weights

    label = tmp_path / "background" / "labels" / "t0.png"
    write_gray(str(label), np.ones((32, 32), np.uint8))  # recomputing would differ now
    loop.train(load_config(None, args[:-3] + ["train.max_steps=4", "train.eval_every=0",
                                                  "train.checkpoint_every=2"]))
    err = capsys.readouterr().err
    assert "as the checkpoint resumed from was trained" in err
    assert json.loads((run / "config.json").read_text())["train"]["class_weights"] == weights
    assert checkpoint.read_sidecar(str(run / "model.ckpt-4"))["class_weights"] == weights


def test_default_keys_leave_the_sidecar_without_weights(tmp_path):
    args = collapse_args(tmp_path, "train.max_steps=2", "train.eval_every=0",
                         "train.checkpoint_every=2")
    loop.train(load_config(None, args))
    assert "class_weights" not in checkpoint.read_sidecar(str(tmp_path / "run" / "model.ckpt-2"))


@pytest.mark.parametrize("extra", [
    ["train.loss=focal", "train.focal_gamma=1.5"],
    ["train.hard_pixels=0.25", "train.class_weights=[1, 2, 2]"],
    ["train.devices=[\"CPU:0\", \"CPU:1\"]", "train.loss=focal",
     "train.class_weights=[0.5, 2, 2]", "train.hard_pixels=0.5"]])
def test_training_runs_with_each_loss_option(tmp_path, extra):
    args = collapse_args(tmp_path, "train.max_steps=3", "train.eval_every=0", *extra)
    metrics = loop.train(load_config(None, args))
    assert metrics["num_images"] == 3


def test_two_devices_equal_one_device_with_class_weights_and_focal_loss(tmp_path, monkeypatch):
    """The weighted focal loss is a sum over pixels divided by a sum of weights,
    both added over the devices: two devices on two halves of the batch train
    as one device on all of it."""
    monkeypatch.setattr(datasets, "train_dataset", ordered_dataset)
    steps = ["train.max_steps=2", "train.checkpoint_every=2", "train.batch_size=4", *EXACT,
             "train.loss=focal", "train.focal_gamma=1.5", "train.class_weights=[0.25, 3, 2, 1]"]
    run_tasks(tmp_path, [parallel_args(tmp_path, "one", *steps)], [{}])
    run_tasks(tmp_path, [parallel_args(tmp_path, "two", *steps,
                                       'train.devices=["CPU:0", "/cpu:1"]')], [{}])
    one, two = checkpoint_values(tmp_path / "one"), checkpoint_values(tmp_path / "two")
    assert_close(two, one)
    plain = parallel_args(tmp_path, "plain", *steps[:-3])
    run_tasks(tmp_path, [plain], [{}])
    with pytest.raises(AssertionError):  # the options changed the training
        assert_close(checkpoint_values(tmp_path / "plain"), one)


def test_class_weights_of_another_length_than_the_dataset_classes_stop_in_one_line(
        tmp_path, capsys):
    args = collapse_args(tmp_path, "train.class_weights=[1, 2]")
    code = train_command(tmp_path, args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "train.py: error: train.class_weights: expected one weight per class, 3 numbers "
        "(the classes of split 'train'), found 2")
    assert not any(name.startswith("model.ckpt") for name in os.listdir(tmp_path / "run"))
