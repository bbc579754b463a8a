"""`python -m fcn_graph.port` verbs on tiny generated weights: mat2ckpt (both
architectures), legacy, keras-h5, ckpt2mat, inspect, and their refusals."""

import os

import h5py
import numpy as np
import pytest
import tensorflow as tf
from npref import conv2d_same, fcn8s_legacy_forward
from portfiles import write_keras_h5, write_legacy_checkpoint
from tfutil import LEGACY_NAMES
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from fcn_graph import port
from fcn_graph.core.constants import VGG_MEAN_RGB
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.engines.segmenter import Segmenter
from fcn_graph.network import definition, tf_layers
from fcn_graph.network.spec import VGG19_CONVS, ModelSpec
from fcn_graph.weights import checkpoint, kerash5
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat

tf1 = tf.compat.v1
FC_WIDTH = 6
BODY_NAMES = [f"inference/{n}_{s}" for n in VGG19_CONVS for s in ("w", "b")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny inputs shared by this module: .mat files in both layouts (with and
    without fc layers) and Keras .h5 files in both naming styles."""
    root = tmp_path_factory.mktemp("port")
    layers = make_vgg_layers()
    fc = make_fc_layers(TINY_WIDTHS["conv5_4"], fc_width=FC_WIDTH)
    paths = {"root": root, "layers": layers, "fc": fc}
    for layout in ("old", "new"):
        paths[f"mat_{layout}"] = str(root / f"vgg_{layout}.mat")
        write_vgg_mat(paths[f"mat_{layout}"], layers, TINY_MEAN, fc=fc, layout=layout)
    paths["mat_nofc"] = str(root / "vgg_nofc.mat")
    write_vgg_mat(paths["mat_nofc"], layers, TINY_MEAN, layout="new")
    paths["h5"] = str(root / "vgg19_weights_tf_dim_ordering_tf_kernels.h5")
    write_keras_h5(paths["h5"], layers, fc)
    paths["h5_keras2"] = str(root / "keras2.h5")
    write_keras_h5(paths["h5_keras2"], layers, fc, style="keras2")
    paths["h5_notop"] = str(root / "vgg19_notop.h5")
    write_keras_h5(paths["h5_notop"], layers)
    return paths


def _port(*argv):
    assert port.main([str(a) for a in argv]) == 0


def _error_line(capsys, *argv):
    """Run the CLI as `python -m` would; return its one-line error."""
    assert run_cli(port.main, [str(a) for a in argv], prog="fcn_graph.port") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fcn_graph.port: error: "), err
    return err


# -- mat2ckpt, paper architecture -------------------------------------------------------

@pytest.mark.parametrize("layout,skips", [("old", "8s"), ("new", "16s"), ("new", "32s")])
def test_mat2ckpt_paper(files, tmp_path, capsys, layout, skips):
    prefix = str(tmp_path / "paper")
    _port("mat2ckpt", files[f"mat_{layout}"], "--num-classes", 3, "--architecture", "paper",
          "--skips", skips, "--out", prefix)
    assert f"paper FCN-{skips}" in capsys.readouterr().out
    stored = checkpoint.read_variables(prefix)
    want = {f"inference/{n}" for n in definition.variable_shapes(
        3, vgg_widths=TINY_WIDTHS, fc_width=FC_WIDTH, architecture="paper", skips=skips)}
    assert set(stored) == want
    vgg = load_vgg_mat(files[f"mat_{layout}"])
    np.testing.assert_array_equal(stored["inference/conv3_2_w"], vgg.layers["conv3_2"][0])
    np.testing.assert_array_equal(stored["inference/W6"], vgg.fc["fc6"][0])
    np.testing.assert_array_equal(stored["inference/b7"], vgg.fc["fc7"][1])
    assert not stored["inference/score_fr_w"].any()
    last = {"32s": "upscore32_w", "16s": "upscore16_w", "8s": "upscore8_w"}[skips]
    np.testing.assert_array_equal(stored[f"inference/{last}"],
                                  definition.bilinear_kernel(stored[f"inference/{last}"].shape[0], 3))
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert (spec.architecture, spec.skips, spec.fc_width) == ("paper", skips, FC_WIDTH)
    assert spec.train_upsampling is False
    os.remove(prefix + ".json")  # without the sidecar, the names tell
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert (spec.architecture, spec.skips, spec.num_classes) == ("paper", skips, 3)


def test_mismatched_architecture_is_refused(files, tmp_path, capsys):
    prefix = str(tmp_path / "paper")
    _port("mat2ckpt", files["mat_new"], "--num-classes", 3, "--architecture", "paper",
          "--out", prefix)
    spec = ModelSpec(num_classes=3, fc_width=FC_WIDTH,
                               vgg_widths=tuple(TINY_WIDTHS.values()))  # legacy
    graph = tf.Graph()
    with graph.as_default():
        tf_layers.build(tf1.placeholder(tf.float32, [None, None, None, 3]), spec)
    with tf1.Session(graph=graph) as sess, pytest.raises(
            UserError, match="holds a paper FCN-8s model but the graph is a legacy FCN-8s"):
        checkpoint.restore_model(sess, prefix)
    record = checkpoint.read_sidecar(prefix)
    record["architecture"] = "legacy"
    checkpoint.write_json_atomic(prefix + ".json", record)
    with pytest.raises(UserError, match="says legacy FCN-8s but the checkpoint's variables are a "
                                        "paper FCN-8s"):
        checkpoint.model_spec_from_checkpoint(prefix)


def test_mat2ckpt_refusals(files, tmp_path, capsys):
    out = tmp_path / "x"
    err = _error_line(capsys, "mat2ckpt", files["mat_nofc"], "--num-classes", 3,
                      "--architecture", "paper", "--out", out)
    assert "layer 'fc6' not found" in err
    err = _error_line(capsys, "mat2ckpt", files["mat_new"], "--num-classes", 3, "--skips", "16s",
                      "--out", out)
    assert "legacy architecture is FCN-8s only" in err
    err = _error_line(capsys, "mat2ckpt", files["mat_new"], "--num-classes", 3,
                      "--architecture", "paper", "--fc-width", 7, "--out", out)
    assert "width 6" in err
    assert not list(tmp_path.glob("x*"))


# -- legacy ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def legacy_ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fcn_tensorflow")
    prefix = str(directory / "model.ckpt-100")
    spec = ModelSpec(num_classes=4, fc_width=FC_WIDTH,
                               vgg_widths=tuple(TINY_WIDTHS.values()))
    write_legacy_checkpoint(prefix, spec)
    return prefix


def test_legacy_to_clean_checkpoint_keeps_outputs(legacy_ckpt, tmp_path, capsys):
    before = Segmenter(legacy_ckpt)
    x = np.random.default_rng(5).integers(0, 256, (2, 19, 27, 3), dtype=np.uint8)
    labels_before, scores_before = before.run(x, scores=True)
    before.close()
    for index, source in enumerate((legacy_ckpt, os.path.dirname(legacy_ckpt),
                                    legacy_ckpt + ".index")):
        prefix = str(tmp_path / f"clean{index}")  # port never replaces a checkpoint
        _port("legacy", source, "--out", prefix)
        out = capsys.readouterr().out
        assert "44 model variables" in out and "dropping 84 optimizer slots" in out
        assert "beta1_power" in out
    assert set(checkpoint.read_variable_shapes(prefix)) == set(LEGACY_NAMES)
    assert checkpoint.read_sidecar(prefix)["mean_pixel"] == list(VGG_MEAN_RGB)
    after = Segmenter(prefix)
    labels_after, scores_after = after.run(x, scores=True)
    after.close()
    np.testing.assert_array_equal(scores_after, scores_before)
    np.testing.assert_array_equal(labels_after, labels_before)

    prefix = str(tmp_path / "clean_mean")
    _port("legacy", legacy_ckpt, "--out", prefix, "--mean", 1, 2, 3)
    assert checkpoint.model_spec_from_checkpoint(prefix).mean_pixel == (1.0, 2.0, 3.0)
    err = _error_line(capsys, "legacy", prefix, "--out", tmp_path / "again")
    assert "already an fcn_graph checkpoint" in err


def test_legacy_refuses_unknown_variables(tmp_path, capsys):
    graph = tf.Graph()
    with graph.as_default():
        tf1.get_variable("inference/W6", [2])
        tf1.get_variable("something/else", [3])
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            tf1.train.Saver().save(sess, str(tmp_path / "odd"))
    err = _error_line(capsys, "legacy", tmp_path / "odd", "--out", tmp_path / "x")
    assert "unexpected variables something/else" in err


# -- keras-h5 ----------------------------------------------------------------------------

def test_dense_fc1_equals_a_7x7_valid_conv():
    """Keras flattens block5_pool [7, 7, C] in row-major (H, W, C) order, so the
    Dense kernel [49 C, F] reshaped to [7, 7, C, F] is the same map as a conv."""
    rng = np.random.default_rng(0)
    c, f = 3, 5
    features = rng.standard_normal((7, 7, c)).astype(np.float32)
    dense = rng.standard_normal((49 * c, f)).astype(np.float32)
    want = features.reshape(-1) @ dense                               # Keras: Flatten, Dense
    conv = tf.nn.conv2d(features[None], dense.reshape(7, 7, c, f), 1, "VALID").numpy()
    assert conv.shape == (1, 1, 1, f)
    np.testing.assert_allclose(conv[0, 0, 0], want, rtol=1e-5)
    # One asymmetric tap pins the order: feature (h=1, w=4, c=2) is row (1*7 + 4)*3 + 2.
    dense = np.zeros((49 * c, 1), np.float32)
    dense[(1 * 7 + 4) * c + 2] = 1.0
    np.testing.assert_array_equal(dense.reshape(7, 7, c, 1)[1, 4, 2, 0], 1.0)


@pytest.mark.parametrize("style", ["h5", "h5_keras2"])
def test_keras_h5_reader(files, style):
    vgg = kerash5.load_keras_vgg_h5(files[style])
    assert vgg.channel_order == "bgr" and vgg.transposed is False
    np.testing.assert_array_equal(vgg.mean_pixel, kerash5.KERAS_MEAN_BGR)
    for name, (kernel, bias) in files["layers"].items():
        np.testing.assert_array_equal(vgg.layers[name][0], kernel)   # HWIO, no transpose
        np.testing.assert_array_equal(vgg.layers[name][1], bias)
    for name in ("fc6", "fc7", "fc8"):
        np.testing.assert_array_equal(vgg.fc[name][0], files["fc"][name][0])


def test_keras_h5_legacy_feeds_bgr_minus_the_caffe_mean(files, tmp_path, capsys):
    prefix = str(tmp_path / "keras")
    _port("keras-h5", files["h5"], "--num-classes", 3, "--fc-width", FC_WIDTH, "--out", prefix)
    assert "input BGR" in capsys.readouterr().out
    record = checkpoint.read_sidecar(prefix)
    assert record["channel_order"] == "bgr"
    assert record["mean_pixel"] == list(kerash5.KERAS_MEAN_BGR)
    assert record["kernels_transposed"] is False
    stored = checkpoint.read_variables(prefix)
    rgb = np.random.default_rng(1).integers(0, 256, (1, 13, 22, 3), dtype=np.uint8)
    segmenter = Segmenter(prefix)
    _, scores = segmenter.run(rgb, scores=True)
    segmenter.close()
    weights = {n.split("/")[1]: a.astype(np.float64) for n, a in stored.items()}
    want, _ = fcn8s_legacy_forward(rgb[..., ::-1].astype(np.float64), weights,
                                   kerash5.KERAS_MEAN_BGR)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_keras_h5_paper_takes_conv6_conv7_from_fc1_fc2(files, tmp_path):
    prefix = str(tmp_path / "keras_paper")
    _port("keras-h5", files["h5_keras2"], "--num-classes", 2, "--architecture", "paper",
          "--skips", "32s", "--out", prefix)
    stored = checkpoint.read_variables(prefix)
    np.testing.assert_array_equal(stored["inference/W6"], files["fc"]["fc6"][0])
    np.testing.assert_array_equal(stored["inference/W7"], files["fc"]["fc7"][0])
    np.testing.assert_array_equal(stored["inference/conv1_1_w"], files["layers"]["conv1_1"][0])


def test_keras_h5_refusals(files, tmp_path, capsys):
    out = tmp_path / "x"
    err = _error_line(capsys, "keras-h5", files["h5_notop"], "--num-classes", 3,
                      "--architecture", "paper", "--out", out)
    assert "layer 'fc1' not found" in err and "_notop" in err
    missing = tmp_path / "vgg16ish.h5"
    write_keras_h5(str(missing), files["layers"], skip=("block3_conv4",))
    err = _error_line(capsys, "keras-h5", missing, "--num-classes", 3, "--out", out)
    assert "layer 'block3_conv4' not found (expected the 16 conv layers" in err
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as handle:
        handle.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 2)))
    err = _error_line(capsys, "keras-h5", keras3, "--num-classes", 3, "--out", out)
    assert "Keras 3 '.weights.h5'" in err
    err = _error_line(capsys, "keras-h5", files["mat_new"], "--num-classes", 3, "--out", out)
    assert "not a readable HDF5 file" in err
    assert not list(tmp_path.glob("x*"))


# -- ckpt2mat ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout,architecture", [("old", "legacy"), ("new", "paper")])
def test_mat_checkpoint_mat_round_trip(files, tmp_path, capsys, layout, architecture):
    prefix = str(tmp_path / "ckpt")
    _port("mat2ckpt", files[f"mat_{layout}"], "--num-classes", 3, "--fc-width", FC_WIDTH,
          "--architecture", architecture, "--out", prefix)
    out = str(tmp_path / "again.mat")
    _port("ckpt2mat", prefix, "--out", out, "--layout", layout)
    assert f"wrote {out} ({layout} layout" in capsys.readouterr().out
    original, again = load_vgg_mat(files[f"mat_{layout}"]), load_vgg_mat(out)
    raw_original = load_vgg_mat(files[f"mat_{layout}"], transpose=False)
    raw_again = load_vgg_mat(out, transpose=False)
    assert again.layout == layout
    np.testing.assert_array_equal(again.mean_pixel, original.mean_pixel)
    for name in original.layers:
        for a, b in zip(again.layers[name] + raw_again.layers[name],
                        original.layers[name] + raw_original.layers[name]):
            np.testing.assert_array_equal(a, b)
    if architecture == "paper":
        assert set(again.fc) == {"fc6", "fc7"}
        for name in ("fc6", "fc7"):
            np.testing.assert_array_equal(again.fc[name][0], original.fc[name][0])
            np.testing.assert_array_equal(raw_again.fc[name][1], raw_original.fc[name][1])
    else:
        assert again.fc == {}


def test_ckpt2mat_of_a_bgr_checkpoint_takes_rgb(files, tmp_path, capsys):
    prefix = str(tmp_path / "keras")
    _port("keras-h5", files["h5_notop"], "--num-classes", 3, "--out", prefix)
    out = str(tmp_path / "from_keras.mat")
    _port("ckpt2mat", prefix, "--out", out)
    assert "reversed" in capsys.readouterr().out
    mat = load_vgg_mat(out, transpose=False)  # the kernels were never transposed
    np.testing.assert_allclose(mat.mean_pixel, kerash5.KERAS_MEAN_BGR[::-1])
    rgb = np.random.default_rng(2).uniform(0, 255, (1, 5, 6, 3))
    kernel, bias = files["layers"]["conv1_1"]
    want = conv2d_same(rgb[..., ::-1] - np.asarray(kerash5.KERAS_MEAN_BGR), kernel, bias)
    got = conv2d_same(rgb - mat.mean_pixel, *mat.layers["conv1_1"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# -- inspect -----------------------------------------------------------------------------

def test_inspect_detects_each_input_format(files, legacy_ckpt, tmp_path, capsys):
    cases = [(files["mat_old"], "old layout"), (files["mat_new"], "new layout"),
             (files["h5"], "Keras HDF5"), (legacy_ckpt, "FCN.tensorflow training checkpoint"),
             (os.path.dirname(legacy_ckpt), "FCN.tensorflow training checkpoint")]
    prefix = str(tmp_path / "mine")
    _port("legacy", legacy_ckpt, "--out", prefix)
    cases.append((prefix + ".index", "fcn_graph checkpoint, legacy FCN-8s, 4 classes"))
    capsys.readouterr()
    for path, kind in cases:
        _port("inspect", path)
        out = capsys.readouterr().out
        assert kind in out, (path, out)
        assert out.rstrip().endswith("parameters")
    _port("inspect", prefix)
    out = capsys.readouterr().out
    assert "inference/W_t3      [16, 16, 4, 4]" in out and "44 arrays" in out
    params = sum(int(np.prod(s)) for s in checkpoint.read_variable_shapes(prefix).values())
    assert f"{params:,} parameters" in out


def test_inspect_refuses_unknown_files(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    assert "unknown format" in _error_line(capsys, "inspect", junk)
    assert "no such file" in _error_line(capsys, "inspect", tmp_path / "missing")
