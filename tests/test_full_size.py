"""Full-size checks, skipped unless asked for: they write ~550 MB checkpoints
and take minutes.

    FCN_GRAPH_FULL_SIZE=1 python -m pytest -q -s tests/test_full_size.py
    FCN_GRAPH_VGG_MAT=weights/imagenet-vgg-verydeep-19.mat python -m pytest -q -s tests/test_full_size.py
"""

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from npref import fcn8s_legacy_forward

from fcn_graph.network.spec import VGG19_WIDTHS, ModelSpec
from fcn_graph.weights import checkpoint
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat

FULL = os.environ.get("FCN_GRAPH_FULL_SIZE") == "1"
REAL_MAT = os.environ.get("FCN_GRAPH_VGG_MAT")


def _run(*args):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env)
    print(f"$ python -m {' '.join(args)}  ({time.perf_counter() - start:.1f} s)\n{done.stdout}")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _random_vgg19(seed):
    """VGG19-shaped He-normal weights, as a `.mat` would hold them (TF order)."""
    rng = np.random.default_rng(seed)
    layers, cin = {}, 3
    for name, cout in VGG19_WIDTHS.items():
        std = np.sqrt(2.0 / (9 * cin))
        layers[name] = ((rng.standard_normal((3, 3, cin, cout), np.float32) * np.float32(std)),
                        (rng.standard_normal(cout, np.float32) * np.float32(0.01)))
        cin = cout
    return layers


@pytest.mark.skipif(not FULL, reason="set FCN_GRAPH_FULL_SIZE=1 to run full-size checks")
@pytest.mark.parametrize("layout", ["old", "new"])
def test_full_size_mat_to_scores_match_float64_numpy(tmp_path, layout):
    mat = str(tmp_path / "vgg19.mat")
    write_vgg_mat(mat, _random_vgg19(seed=1), (123.68, 116.779, 103.939), layout=layout)
    prefix = str(tmp_path / "ckpt" / "start")
    _run("fcn_graph.port", "mat2ckpt", mat, "--num-classes", "21", "--out", prefix)
    image = np.random.default_rng(2).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "voc.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = str(tmp_path / "out")
    _run("fcn_graph.infer", str(tmp_path / "voc.jpg"), "--checkpoint", prefix,
         "--output-dir", out, "--save-scores")
    for name in ("voc.png", "voc_overlay.png", "voc_scores.npy"):
        assert os.path.exists(os.path.join(out, name)), name
    scores = np.load(os.path.join(out, "voc_scores.npy"))
    rgb = cv2.imread(str(tmp_path / "voc.jpg"))[..., ::-1]
    stored = checkpoint.read_variables(prefix)
    weights = {name.split("/")[1]: value.astype(np.float64) for name, value in stored.items()}
    want, _ = fcn8s_legacy_forward(rgb[None].astype(np.float64), weights,
                                   (123.68, 116.779, 103.939))
    want = want[0]
    relative = np.abs(scores - want).max() / np.abs(want).max()
    print(f"{layout} layout, 500x375: max |TF - NumPy float64| / max |NumPy| = {relative:.2e}")
    assert scores.shape == (375, 500, 21)
    assert relative < 1e-4


@pytest.mark.skipif(not FULL, reason="set FCN_GRAPH_FULL_SIZE=1 to run full-size checks")
def test_legacy_151_class_checkpoint_segments_224x160(tmp_path):
    """Full VGG19 widths, 151 classes (ADE20K as FCN.tensorflow trains it), legacy
    names, Adam slots, no sidecar."""
    import tensorflow as tf
    from test_checkpoint import write_legacy_checkpoint

    prefix = str(tmp_path / "logs" / "model.ckpt-100000")
    os.makedirs(os.path.dirname(prefix))
    write_legacy_checkpoint(prefix, ModelSpec(num_classes=151), height=160, width=224)
    names = checkpoint.read_variable_shapes(prefix)
    assert "beta1_power" in names and "inference/W6/Adam" in names
    image = np.random.default_rng(3).integers(0, 256, (160, 224, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scene.png"), image[..., ::-1])
    out = str(tmp_path / "out")
    printed = _run("fcn_graph.infer", str(tmp_path / "scene.png"), "--checkpoint",
                   os.path.dirname(prefix), "--output-dir", out, "--save-scores")
    assert "224x160" in printed
    scores = np.load(os.path.join(out, "scene_scores.npy"))
    assert scores.shape == (160, 224, 151) and np.isfinite(scores).all()
    del tf


@pytest.mark.skipif(not REAL_MAT, reason="set FCN_GRAPH_VGG_MAT to a real imagenet-vgg-verydeep-19.mat")
def test_real_vgg19_mat_loads():
    vgg = load_vgg_mat(REAL_MAT)
    assert list(vgg.widths.values()) == list(VGG19_WIDTHS.values())
    np.testing.assert_allclose(vgg.mean_pixel, (123.68, 116.779, 103.939), atol=0.01)
    assert vgg.fc["fc6"][0].shape == (7, 7, 512, 4096)
