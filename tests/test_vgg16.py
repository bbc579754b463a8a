"""The VGG16 backbone: its graphs against the independent NumPy forward pass
(with VGG16's own table there), its weight files (MatConvNet in both layouts,
Keras with and without the top), wrong-backbone files refused in one line,
the sidecar, FLOPs against a hand count, the receptive field, and VGG19 left
as it was."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from npref import VGG16_CONV_LAYERS, fcn8s_legacy_forward, fcn_paper_forward
from portfiles import write_keras_h5
from test_port import _error_line, _port
from tfutil import build_graph, run_random
from tinyvgg import TINY_MEAN, TINY_WIDTHS, TINY_WIDTHS_16, make_fc_layers, make_vgg_layers

from bench import harness, report
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.engines import tiling
from fcn_graph.network import definition, flops
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat

tf1 = tf.compat.v1

FC = 6
HEADS = [("legacy", "8s"), ("paper", "32s"), ("paper", "16s"), ("paper", "8s")]
# The 13 convs of VGG16, written out: no conv3_4, conv4_4, conv5_4.
VGG16_BODY_VARIABLES = {f"conv{b}_{i}_{s}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                        for i in range(1, n + 1) for s in ("w", "b")}


def vgg16_spec(architecture="paper", skips="8s", num_classes=3):
    return ModelSpec(num_classes=num_classes, fc_width=FC,
                     vgg_widths=tuple(TINY_WIDTHS_16.values()), mean_pixel=TINY_MEAN,
                     architecture=architecture, skips=skips, backbone="vgg16")


def numpy_forward(spec, x, weights, mean):
    if spec.architecture == "legacy":
        return fcn8s_legacy_forward(x, weights, mean, blocks=VGG16_CONV_LAYERS)
    return fcn_paper_forward(x, weights, mean, skips=spec.skips, blocks=VGG16_CONV_LAYERS)


def assert_close(got, want):
    scale = np.abs(want).max()
    assert got.shape == want.shape and scale > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


# -- the graph ------------------------------------------------------------------------

@pytest.mark.parametrize("architecture,skips", HEADS)
@pytest.mark.parametrize("shape,kernels", [((2, 37, 45), "auto"), ((1, 1, 1), "reference"),
                                           ((1, 37, 45), "reference")])
def test_vgg16_graph_matches_numpy_forward(architecture, skips, shape, kernels):
    spec = vgg16_spec(architecture, skips)
    graph, images, logits, _, end_points, variables = build_graph(spec, kernels=kernels)
    x = np.random.default_rng(sum(shape)).uniform(0, 255, shape + (3,)).astype(np.float32)
    (got, pool5), weights = run_random(graph, images, variables,
                                       [logits, end_points["pool5"]], x, seed=shape[1] + 7)
    want, ref = numpy_forward(spec, x.astype(np.float64), weights, TINY_MEAN)
    assert_close(pool5, ref["pool5"])
    assert_close(got, want)


@pytest.mark.parametrize("architecture,skips", HEADS)
def test_vgg16_variables_are_the_13_convs_and_the_head(architecture, skips):
    names = set(definition.variable_shapes(3, architecture=architecture, skips=skips,
                                           backbone="vgg16"))
    body = {n for n in names if n.startswith("conv")}
    assert body == VGG16_BODY_VARIABLES
    vgg19 = set(definition.variable_shapes(3, architecture=architecture, skips=skips))
    assert vgg19 - names == {f"conv{b}_4_{s}" for b in (3, 4, 5) for s in ("w", "b")}


def test_heads_read_the_last_conv_of_each_block():
    paper = definition.trace(vgg16_spec("paper", "8s"), height=37, width=45)
    assert "relu5_4" not in paper.end_points and "conv5_4" not in paper.end_points
    assert paper.variables["score_pool4_w"][2] == TINY_WIDTHS_16["conv4_3"]
    assert paper.variables["score_pool3_w"][2] == TINY_WIDTHS_16["conv3_3"]
    legacy = definition.trace(vgg16_spec("legacy", "8s"), height=37, width=45)
    assert legacy.variables["W_t1"][2] == TINY_WIDTHS_16["conv4_3"]
    assert legacy.variables["W_t2"][2] == TINY_WIDTHS_16["conv3_3"]


def test_vgg16_onnx_matches_numpy_forward():
    import onnxruntime as ort

    from fcn_graph.engines import onnx_engine
    spec = vgg16_spec("paper", "8s")
    shapes = definition.variable_shapes(3, vgg_widths=TINY_WIDTHS_16, fc_width=FC,
                                        architecture="paper", skips="8s", backbone="vgg16")
    rng = np.random.default_rng(11)
    weights = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in shapes.items()}
    model = onnx_engine.onnx_model(spec, weights, kernels="reference")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.integers(0, 256, (1, 37, 45, 3), dtype=np.uint8)
    got = session.run(["scores"], {"images": x})[0]
    want, _ = numpy_forward(spec, x.astype(np.float64),
                            {n: w.astype(np.float64) for n, w in weights.items()}, TINY_MEAN)
    assert_close(got, want)


# -- weight files ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny VGG16 and VGG19 weight files: .mat in both layouts, Keras .h5 with
    and without the top."""
    root = tmp_path_factory.mktemp("vgg16")
    layers16, layers19 = make_vgg_layers(TINY_WIDTHS_16), make_vgg_layers(TINY_WIDTHS)
    fc16 = make_fc_layers(TINY_WIDTHS_16["conv5_3"], fc_width=FC)
    found = {"root": root, "layers": layers16, "fc": fc16}
    for layout in ("old", "new"):
        found[f"mat_{layout}"] = str(root / f"vgg16_{layout}.mat")
        write_vgg_mat(found[f"mat_{layout}"], layers16, TINY_MEAN, fc=fc16, layout=layout)
    found["h5"] = str(root / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    write_keras_h5(found["h5"], layers16, fc16)
    found["h5_notop"] = str(root / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    write_keras_h5(found["h5_notop"], layers16, style="keras2")
    found["mat19"] = str(root / "vgg19.mat")
    write_vgg_mat(found["mat19"], layers19, TINY_MEAN,
                  fc=make_fc_layers(TINY_WIDTHS["conv5_4"], fc_width=FC))
    found["h5_19"] = str(root / "vgg19.h5")
    write_keras_h5(found["h5_19"], layers19)
    return found


def _run_checkpoint(prefix, x, seed):
    """Logits of checkpoint `prefix` (its own spec) on `x`, with the score layers
    (zero in a starting checkpoint) set to random values first; and the
    values the graph ran with, by short name, as float64."""
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    graph, images, logits, *_, variables = build_graph(spec)
    values = checkpoint.read_variables(prefix, list(variables))
    rng = np.random.default_rng(seed)
    for name in values:
        if "score" in name:
            values[name] = (rng.standard_normal(values[name].shape) * 0.3).astype(np.float32)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        got = sess.run(logits, {images: x})
    return spec, got, {n.split("/")[1]: v.astype(np.float64) for n, v in values.items()}


@pytest.mark.parametrize("source,verb,architecture", [
    ("mat_old", "mat2ckpt", "paper"), ("mat_new", "mat2ckpt", "legacy"),
    ("h5", "keras-h5", "paper"), ("h5_notop", "keras-h5", "legacy")])
def test_ported_vgg16_runs_as_the_numpy_forward(files, tmp_path, source, verb, architecture):
    prefix = tmp_path / "start"
    _port(verb, files[source], "--backbone", "vgg16", "--num-classes", 3, "--architecture",
          architecture, "--out", prefix, *(["--fc-width", FC] if architecture == "legacy" else []))
    stored = checkpoint.read_variables(str(prefix))
    assert {n.split("/")[1] for n in stored if "/conv" in n} == VGG16_BODY_VARIABLES
    for name, (kernel, bias) in files["layers"].items():
        np.testing.assert_array_equal(stored[f"inference/{name}_w"], kernel)
        np.testing.assert_array_equal(stored[f"inference/{name}_b"], bias)
    if architecture == "paper":
        np.testing.assert_array_equal(stored["inference/W6"], files["fc"]["fc6"][0])
    x = np.random.default_rng(3).uniform(0, 255, (1, 37, 45, 3)).astype(np.float32)
    spec, got, weights = _run_checkpoint(str(prefix), x, seed=5)
    assert spec.backbone == "vgg16" and spec.name.endswith(", VGG16")
    bgr = spec.channel_order == "bgr"
    assert bgr == (verb == "keras-h5")
    image = x[..., ::-1] if bgr else x
    want, _ = numpy_forward(spec, image.astype(np.float64), weights, spec.resolved_mean())
    assert_close(got, want)


@pytest.mark.parametrize("source,verb,backbone,found", [
    ("mat19", "mat2ckpt", "vgg16", "VGG19 weights (16 conv layers; it has conv3_4, conv4_4, "
                                   "conv5_4) but the backbone is vgg16; set --backbone vgg19"),
    ("mat_new", "mat2ckpt", "vgg19", "VGG16 weights (13 conv layers; it lacks conv3_4, "
                                     "conv4_4, conv5_4) but the backbone is vgg19; set "
                                     "--backbone vgg16"),
    ("h5_19", "keras-h5", "vgg16", "VGG19 weights (16 conv layers"),
    ("h5", "keras-h5", "vgg19", "VGG16 weights (13 conv layers")])
def test_wrong_backbone_file_is_one_line(files, tmp_path, capsys, source, verb, backbone, found):
    err = _error_line(capsys, verb, files[source], "--backbone", backbone, "--num-classes", 3,
                      "--out", tmp_path / "x")
    assert f"{files[source]}: {found}" in err
    assert not os.listdir(tmp_path)


def test_config_names_model_backbone_for_a_wrong_mat(files):
    with pytest.raises(UserError, match="set model.backbone vgg16$"):
        load_vgg_mat(files["mat_old"], flag="model.backbone")


def test_sidecar_records_vgg16_and_the_variables_tell_without_it(files, tmp_path, capsys):
    prefix = str(tmp_path / "start")
    _port("mat2ckpt", files["mat_new"], "--backbone", "vgg16", "--num-classes", 3,
          "--fc-width", FC, "--out", prefix)
    with open(prefix + ".json", encoding="utf-8") as handle:
        sidecar = json.load(handle)
    assert sidecar["backbone"] == "vgg16" and len(sidecar["vgg_widths"]) == 13
    _port("inspect", prefix)
    assert "legacy FCN-8s, VGG16" in capsys.readouterr().out
    wrong = dict(sidecar, backbone="vgg19")
    with open(prefix + ".json", "w", encoding="utf-8") as handle:
        json.dump(wrong, handle)
    with pytest.raises(UserError, match="says backbone 'vgg19' but the checkpoint's variables "
                                        "are a VGG16 body"):
        checkpoint.model_spec_from_checkpoint(prefix)
    os.remove(prefix + ".json")
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert spec.backbone == "vgg16" and spec.vgg_widths == tuple(TINY_WIDTHS_16.values())


def test_ckpt2mat_writes_vgg16_that_reads_back(files, tmp_path, capsys):
    prefix, mat = str(tmp_path / "start"), str(tmp_path / "back.mat")
    _port("keras-h5", files["h5"], "--backbone", "vgg16", "--num-classes", 3,
          "--architecture", "paper", "--out", prefix)
    _port("ckpt2mat", prefix, "--out", mat, "--layout", "old")
    capsys.readouterr()
    _port("inspect", mat)
    assert "MatConvNet VGG16 .mat, old layout, 13 conv layers" in capsys.readouterr().out
    # Keras kernels are not transposed: the .mat keeps the checkpoint's order.
    vgg = load_vgg_mat(mat, backbone="vgg16", transpose=False)
    # The checkpoint takes BGR: conv1_1's input channels come back reversed.
    np.testing.assert_array_equal(vgg.layers["conv1_1"][0],
                                  files["layers"]["conv1_1"][0][:, :, ::-1])
    np.testing.assert_array_equal(vgg.layers["conv5_3"][0], files["layers"]["conv5_3"][0])
    np.testing.assert_array_equal(vgg.fc["fc7"][0], files["fc"]["fc7"][0])


# -- VGG19 as it was ---------------------------------------------------------------------

def test_vgg19_sidecar_keeps_its_fields(files, tmp_path):
    prefix = str(tmp_path / "start")
    _port("mat2ckpt", files["mat19"], "--num-classes", 3, "--fc-width", FC, "--out", prefix)
    with open(prefix + ".json", encoding="utf-8") as handle:
        sidecar = json.load(handle)
    # The fields (and their order) of sidecars written before VGG16 existed.
    assert list(sidecar) == ["format", "version", "num_classes", "fc_width", "vgg_widths",
                             "mean_pixel", "architecture", "channel_order", "skips",
                             "train_upsampling", "source", "kernels_transposed"]
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    assert spec.backbone == "vgg19" and spec.name == "legacy FCN-8s"


# -- FLOPs, receptive field, benchmark -------------------------------------------------

def _hand_macs(architecture, height, width, k=21, f=4096):
    """Multiply-adds of FCN-8s on VGG16, one layer per line: cells x (kernel taps x
    Cin x Cout); a transposed conv counts its input cells."""
    cells = [-(-height // 2 ** i) * -(-width // 2 ** i) for i in range(6)]
    body = (cells[0] * 9 * (3 * 64 + 64 * 64)                      # conv1_1, conv1_2
            + cells[1] * 9 * (64 * 128 + 128 * 128)                # conv2_1, conv2_2
            + cells[2] * 9 * (128 * 256 + 256 * 256 + 256 * 256)   # conv3_1 .. conv3_3
            + cells[3] * 9 * (256 * 512 + 512 * 512 + 512 * 512)   # conv4_1 .. conv4_3
            + cells[4] * 9 * (512 * 512 * 3))                      # conv5_1 .. conv5_3
    fc = cells[5] * (49 * 512 * f + f * f + f * k)                 # conv6, conv7, score/conv8
    if architecture == "paper":
        head = (cells[5] * 16 * k * k                              # upscore2
                + cells[4] * 512 * k + cells[4] * 16 * k * k       # score_pool4, upscore_pool4
                + cells[3] * 256 * k + cells[3] * 256 * k * k)     # score_pool3, upscore8
    else:
        head = (cells[5] * 16 * k * 512                            # conv_t1 [4, 4, 512, K]
                + cells[4] * 16 * 512 * 256                        # conv_t2 [4, 4, 256, 512]
                + cells[3] * 256 * 256 * k)                        # conv_t3 [16, 16, K, 256]
    return body + fc + head


@pytest.mark.parametrize("architecture", ["paper", "legacy"])
@pytest.mark.parametrize("size", [224, 512])
def test_vgg16_fcn8s_flops_hand_count(architecture, size):
    counted = flops.forward_flops(1, size, size, 21, architecture=architecture, backbone="vgg16")
    assert counted == 2 * _hand_macs(architecture, size, size)


def test_receptive_field_follows_the_table():
    # VGG19 has three more 3x3 convs, at strides 4, 8 and 16: each widens the
    # field by one stride on each side, 4 + 8 + 16 = 28 pixels in all.
    field19 = tiling.receptive_field(ModelSpec(num_classes=3, architecture="paper"))
    field16 = tiling.receptive_field(ModelSpec(num_classes=3, architecture="paper",
                                               backbone="vgg16"))
    assert field16.stride == field19.stride == 32
    assert (field16.lo - field19.lo, field19.hi - field16.hi) == (28, 28)


def test_benchmark_prints_vgg16_flops_beside_vgg19():
    args = harness.build_parser().parse_args(["--backbone", "vgg16"])
    table = harness.flops_by_backbone(args, ["224_b1", "512_b1", "train_b2"])
    assert list(table) == ["vgg19", "vgg16"] and list(table["vgg16"]) == ["224_b1", "512_b1"]
    assert table["vgg16"]["512_b1"] * 1e9 == pytest.approx(2 * _hand_macs("legacy", 512, 512))
    lines = report.format_flops_by_backbone(table)
    assert lines[0].split() == ["forward", "GFLOP", "vgg19", "vgg16"]
    assert lines[2].split() == ["512_b1", f"{table['vgg19']['512_b1']:.1f}",
                                f"{table['vgg16']['512_b1']:.1f}"]


# -- training, evaluation, tiling ------------------------------------------------------

def test_config_backbone_is_checked(tmp_path):
    from fcn_graph.training.config import load_config
    with pytest.raises(UserError, match="model.backbone: expected one of vgg19, vgg16, "
                                        "found 'vgg11'"):
        load_config(None, ["model.backbone=vgg11"])


def test_vgg16_trains_resumes_evaluates_and_tiles(files, tmp_path):
    from test_train import latest_step, restore_and_check_finite, shapes_args

    from fcn_graph import evaluate
    from fcn_graph.engines.segmenter import Segmenter
    from fcn_graph.training import loop
    from fcn_graph.training.config import load_config
    args = shapes_args(tmp_path, "train.max_steps=2", f"model.vgg_mat={files['mat_new']}",
                       "model.vgg_width=1.0", f"model.fc_width={FC}", "model.architecture=paper",
                       "model.backbone=vgg16")
    with pytest.raises(UserError, match="set model.backbone vgg16"):
        loop.train(load_config(None, args[:-1]))
    loop.train(load_config(None, args))
    prefix, step = latest_step(tmp_path / "run")
    spec = restore_and_check_finite(prefix)
    assert (spec.backbone, spec.architecture, step) == ("vgg16", "paper", 2)
    with pytest.raises(UserError, match=r"another model \(backbone vgg16, the config asks "
                                        r"vgg19\)"):
        loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=4",
                                                 f"model.fc_width={FC}", "model.vgg_width=1.0",
                                                 "model.architecture=paper")))
    code = run_cli(evaluate.main, ["--config", str(tmp_path / "run" / "config.json"),
                                   "--json", str(tmp_path / "metrics.json")])
    assert code == 0
    field = tiling.receptive_field(spec)
    height, width = field.min_tile + 45, field.min_tile + 3
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    segmenter = Segmenter(prefix)
    try:
        _, whole = segmenter.run(image, scores=True)
        tiled = tiling.TiledSegmenter(segmenter, spec, tile=field.min_tile, field=field)
        _, pieces = tiled.run(image, scores=True)
    finally:
        segmenter.close()
    assert tiled.tiles_run > 1 and whole.shape == (1, height, width, 4)
    np.testing.assert_allclose(pieces, whole, rtol=1e-4, atol=1e-5 * np.abs(whole).max())


def test_vgg16_engines_agree_and_int8_quantizes_its_convs(files, tmp_path):
    import onnx
    from datafixtures import write_rgb

    from fcn_graph.engines import int8_model, onnx_engine
    from fcn_graph.engines.segmenter import make_segmenter
    prefix = str(tmp_path / "start")
    _port("mat2ckpt", files["mat_old"], "--backbone", "vgg16", "--num-classes", 3,
          "--fc-width", FC, "--out", prefix)
    image = np.random.default_rng(9).integers(0, 256, (2, 37, 45, 3), dtype=np.uint8)
    scores = []
    for engine in ("tf", "onnxruntime"):
        segmenter = make_segmenter(prefix, engine=engine)
        try:
            scores.append(segmenter.run(image, scores=True)[1])
        finally:
            segmenter.close()
    assert scores[0].shape == (2, 37, 45, 3) and np.abs(scores[0]).max() > 1e-3
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4,
                               atol=1e-5 * np.abs(scores[0]).max())
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for index in range(3):
        write_rgb(str(calibration / f"{index}.png"), image[index % 2])
    out = str(tmp_path / "int8.onnx")
    int8_model.quantize_model(onnx_engine.build_onnx_model(prefix, kernels="reference"),
                              str(calibration), out)
    proto = onnx.load(out)
    produced = {o: node for node in proto.graph.node for o in node.output}
    quantized = [n for n in proto.graph.node if n.op_type == "Conv"
                 and produced.get(n.input[1]) is not None]
    assert len(quantized) == 13 + 3  # the body's convs, conv6, conv7, conv8
