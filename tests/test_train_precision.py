"""train.precision: checked in the config, refused in one line where the
machine cannot train in bfloat16 (injected cpuinfo text, oneDNN off, a GPU
device), and, on a CPU with bfloat16 units, a tiny model trained in bfloat16
follows the float32 run while its weights and checkpoints stay float32."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from cpufixtures import SAPPHIRE_RAPIDS, ZEN3, fake_cpuinfo

from fcn_graph import train as train_command
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.host import cpuinfo, session
from fcn_graph.training import loop as train_module
from fcn_graph.training.config import load_config
from fcn_graph.training.curves import read_history
from fcn_graph.weights import checkpoint

STEPS = 6


def _args(tmp_path, run, *extra):
    return [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=4",
            "data.shapes_val_images=1", "data.shapes_image_size=40",
            f"train.log_dir={tmp_path / run}", "model.vgg_width=0.125", "model.fc_width=16",
            "train.image_size=40", "train.batch_size=2", "train.log_every=1",
            "train.eval_every=0", "train.threads=2", "train.keep_prob=1.0",
            "train.scale_range=[1.0, 1.0]", "train.flip=false",
            f"train.max_steps={STEPS}", f"train.checkpoint_every={STEPS}",
            "train.learning_rate=0.001", *extra]


def test_train_precision_is_one_of_float32_and_bfloat16(tmp_path):
    assert load_config(None, _args(tmp_path, "run")).train.precision == "float32"
    assert load_config(None, _args(tmp_path, "run", "train.precision=bfloat16")) \
        .train.precision == "bfloat16"
    for value in ("float16", "int8", "bf16"):
        with pytest.raises(UserError) as err:
            load_config(None, _args(tmp_path, "run", f"train.precision={value}"))
        assert str(err.value) == (f"--set: train.precision: expected one of float32, bfloat16, "
                                  f"found {value!r}")


def _train_cli(tmp_path, capsys, *extra):
    config = tmp_path / "config.json"
    config.write_text("{}\n")
    argv = ["--config", str(config)]
    for item in _args(tmp_path, "run", "train.precision=bfloat16", *extra):
        argv += ["--set", item]
    code = run_cli(train_command.main, argv, prog="train.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert not any("Traceback" in line for line in err), err
    assert not (tmp_path / "run").exists()  # refused before the log directory is made
    return err[-1]


def test_bfloat16_training_without_bfloat16_units_is_one_line(tmp_path, monkeypatch, capsys):
    fake_cpuinfo(monkeypatch, tmp_path, ZEN3)
    line = _train_cli(tmp_path, capsys)
    assert line == (f"train.py: error: train.precision: bfloat16: this CPU has no bfloat16 "
                    f"units (no avx512_bf16 or amx_bf16 in {tmp_path / 'fake_cpuinfo'}); "
                    f"emulated bfloat16 runs about {cpuinfo.BF16_EMULATED_SLOWDOWN}x slower "
                    f"than float32, so set train.precision to float32")


def test_bfloat16_training_with_onednn_off_is_one_line(tmp_path, monkeypatch, capsys):
    fake_cpuinfo(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    monkeypatch.setattr(train_module, "onednn_enabled", lambda: False)
    line = _train_cli(tmp_path, capsys)
    assert line == ("train.py: error: train.precision: bfloat16 needs TensorFlow's oneDNN "
                    "kernels, which are off; set TF_ENABLE_ONEDNN_OPTS=1 in the environment "
                    "(or train.precision to float32)")


def test_bfloat16_training_on_a_gpu_device_is_one_line(tmp_path, monkeypatch, capsys):
    fake_cpuinfo(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    monkeypatch.setattr(train_module, "onednn_enabled", lambda: True)
    line = _train_cli(tmp_path, capsys, 'train.devices=["CPU:0", "GPU:1"]')
    assert line == ("train.py: error: train.precision: bfloat16 runs on the CPU through "
                    "oneDNN, but training would run on /device:GPU:1; set train.precision to "
                    "float32, or train.devices to [\"CPU:0\"]")


def test_bfloat16_training_across_tasks_is_refused(tmp_path, monkeypatch):
    fake_cpuinfo(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    monkeypatch.setattr(train_module, "onednn_enabled", lambda: True)
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    environ = {"TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": 0}})}
    config = load_config(None, _args(tmp_path, "run", "train.precision=bfloat16"))
    with pytest.raises(UserError) as err:
        train_module.train(config, environ=environ)
    assert str(err.value) == (
        "train.precision: bfloat16 does not run across the 2 tasks of TF_CONFIG (TensorFlow's "
        "distributed session has no bfloat16 fused convolution); set train.precision to "
        "float32, or train on this machine alone (train.devices runs several devices of one "
        "machine in bfloat16)")
    assert not (tmp_path / "run").exists()


def test_bfloat16_training_runs_the_session_in_bfloat16(tmp_path, monkeypatch):
    """What reaches session_config, whatever the CPU: bfloat16 for the training
    session when asked, float32 otherwise."""
    fake_cpuinfo(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    monkeypatch.setattr(train_module, "onednn_enabled", lambda: True)
    seen = []

    def spy(threads=None, **kwargs):
        seen.append(kwargs.get("precision", "float32"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_module, "session_config", spy)
    for precision in ("float32", "bfloat16"):
        config = load_config(None, _args(tmp_path, precision, f"train.precision={precision}"))
        with pytest.raises(RuntimeError, match="stop here"):
            train_module.train(config)
    assert seen == ["float32", "bfloat16"]


def _skip_without_bfloat16():
    if not session.onednn_enabled():
        pytest.skip("bfloat16 runs through oneDNN, and TF_ENABLE_ONEDNN_OPTS=0 turned it off")
    if not cpuinfo.has_bf16_units(cpuinfo.cpu_features()):
        pytest.skip(f"this CPU has no bfloat16 units ({', '.join(cpuinfo.BF16_FLAGS)})")


def _variables(log_dir):
    prefix = os.path.join(log_dir, f"model.ckpt-{STEPS}")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(name for name in reader.get_variable_to_shape_map()
                   if name.startswith("inference/"))
    return {name: reader.get_tensor(name) for name in names}


def test_bfloat16_training_follows_float32_and_keeps_float32_weights(tmp_path):
    _skip_without_bfloat16()
    losses, weights = {}, {}
    for precision in ("float32", "bfloat16"):
        train_module.train(load_config(None, _args(tmp_path, precision,
                                                   f"train.precision={precision}")))
        history = [r for r in read_history(str(tmp_path / precision)) if "loss" in r]
        losses[precision] = np.array([r["loss"] for r in history])
        weights[precision] = _variables(str(tmp_path / precision))
    assert len(losses["float32"]) == STEPS
    # the same seeded start and data: the first loss differs only by rounding,
    # which bfloat16 (8 significant bits) makes larger than float32's
    first = abs(losses["bfloat16"][0] - losses["float32"][0]) / losses["float32"][0]
    assert 1e-6 < first < 2e-2, losses
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=5e-2)
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]  # it trains
    assert weights["bfloat16"].keys() == weights["float32"].keys()
    moved = 0
    for name, value in weights["bfloat16"].items():
        assert value.dtype == np.float32, name
        # Adam moves a weight by about the learning rate a step: nearly every
        # weight of the two runs stays within a few steps of the other's
        near = np.abs(value - weights["float32"][name]) <= STEPS * 1e-3
        assert near.mean() >= 0.99, (name, near.mean())
        moved += not np.array_equal(value, weights["float32"][name])
    assert moved > len(weights["float32"]) // 2
    # the bfloat16 run's checkpoint is a float32 model like any other
    spec = checkpoint.model_spec_from_checkpoint(
        os.path.join(tmp_path, "bfloat16", f"model.ckpt-{STEPS}"))
    assert spec.num_classes == 4
    # and the float32 run resumes in bfloat16, from its step and optimizer state
    more = STEPS + 2
    train_module.train(load_config(None, _args(tmp_path, "float32", "train.precision=bfloat16",
                                               f"train.max_steps={more}")))
    history = [r for r in read_history(str(tmp_path / "float32")) if "loss" in r]
    assert [r["step"] for r in history] == list(range(1, more + 1))
    reader = tf.train.load_checkpoint(os.path.join(tmp_path, "float32", f"model.ckpt-{more}"))
    assert reader.get_tensor("global_step") == more
    assert reader.get_variable_to_dtype_map()["inference/conv1_1_w"] == tf.float32


def test_bfloat16_training_on_two_cpu_devices(tmp_path):
    _skip_without_bfloat16()
    train_module.train(load_config(None, _args(
        tmp_path, "run", "train.precision=bfloat16", 'train.devices=["CPU:0", "CPU:1"]',
        "train.max_steps=2", "train.checkpoint_every=2")))
    history = [r for r in read_history(str(tmp_path / "run")) if "loss" in r]
    assert [r["step"] for r in history] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in history)
