"""The paper's FCN-32s/16s/8s: bilinear upsampling, variable names, shapes at any
size, and the forward pass against the float64 NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf
from npref import fcn_paper_forward
from tfutil import build_graph, run_random
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph.network import definition, tf_layers
from fcn_graph.network.spec import VGG19_CONVS, ModelSpec

tf1 = tf.compat.v1

PAPER_HEADS = {
    "32s": {"W6", "b6", "W7", "b7", "score_fr_w", "score_fr_b", "upscore32_w"},
    "16s": {"W6", "b6", "W7", "b7", "score_fr_w", "score_fr_b", "upscore2_w",
            "score_pool4_w", "score_pool4_b", "upscore16_w"},
    "8s": {"W6", "b6", "W7", "b7", "score_fr_w", "score_fr_b", "upscore2_w",
           "score_pool4_w", "score_pool4_b", "upscore_pool4_w", "score_pool3_w",
           "score_pool3_b", "upscore8_w"},
}
BODY = {f"{name}_{s}" for name in VGG19_CONVS for s in ("w", "b")}


def paper_spec(skips, num_classes=3, train_upsampling=False):
    return ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()), mean_pixel=TINY_MEAN,
                               architecture="paper", skips=skips,
                               train_upsampling=train_upsampling)


@pytest.fixture(scope="module", params=["32s", "16s", "8s"])
def paper_graph(request):
    """One graph per skips setting, shared by the tests of this module."""
    spec = paper_spec(request.param)
    return (spec,) + build_graph(spec)


# -- the bilinear kernel ----------------------------------------------------------

def test_bilinear_kernel_hand_worked():
    # size 4: factor = (4 + 1) // 2 = 2, center = 2 - 0.5 = 1.5, so the 1-D taps are
    # 1 - |i - 1.5| / 2 = 0.25, 0.75, 0.75, 0.25 and the 2-D kernel is their outer product:
    #   0.0625 0.1875 0.1875 0.0625
    #   0.1875 0.5625 0.5625 0.1875
    #   0.1875 0.5625 0.5625 0.1875
    #   0.0625 0.1875 0.1875 0.0625
    want = np.array([[0.0625, 0.1875, 0.1875, 0.0625],
                     [0.1875, 0.5625, 0.5625, 0.1875],
                     [0.1875, 0.5625, 0.5625, 0.1875],
                     [0.0625, 0.1875, 0.1875, 0.0625]])
    kernel = definition.bilinear_kernel(4, 3)
    assert kernel.shape == (4, 4, 3, 3) and kernel.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(kernel[:, :, c, c], want)
    off_diagonal = kernel * (1 - np.eye(3))[None, None]
    assert not off_diagonal.any()
    # size 3 (odd): factor 2, center 1 -> taps 0.5, 1, 0.5.
    np.testing.assert_array_equal(definition.bilinear_kernel(3, 1)[1, :, 0, 0], [0.5, 1.0, 0.5])


@pytest.mark.parametrize("size", [1, 2, 5, 16, 32, 64])
def test_bilinear_kernel_matches_the_reference_formula(size):
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    want = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    np.testing.assert_allclose(definition.bilinear_kernel(size, 2)[:, :, 1, 1], want, rtol=1e-7)


@pytest.mark.parametrize("stride", [2, 8])
def test_bilinear_upsampling_interpolates(stride):
    """A bilinear-initialised layer through upsample(): a constant stays exactly
    constant and a ramp stays linear (half-pixel-centred) away from the borders."""
    size, h, w = 2 * stride, 6, 5
    kernel = tf.constant(definition.bilinear_kernel(size, 2))
    margin = stride // 2

    constant = np.full((1, h, w, 2), 3.0, np.float32)
    for out_h, out_w in ((h * stride, w * stride), (h * stride - 1, (w - 1) * stride + 1)):
        y = tf_layers.upsample(tf.constant(constant), kernel, None, [1, out_h, out_w, 2],
                               stride).numpy()
        assert y.shape == (1, out_h, out_w, 2)
        np.testing.assert_array_equal(y[0, margin:out_h - margin, margin:out_w - margin], 3.0)

    rows = np.arange(h, dtype=np.float32)[:, None] * 4.0 - 1.0      # x[j] = 4 j - 1
    ramp = np.broadcast_to(rows[None, :, :, None], (1, h, w, 2)).copy()
    y = tf_layers.upsample(tf.constant(ramp), kernel, None, [1, h * stride, w * stride, 2],
                           stride).numpy()
    i = np.arange(h * stride)
    want = 4.0 * ((i + 0.5) / stride - 0.5) - 1.0                    # input position of row i
    inner = slice(margin, h * stride - margin)
    np.testing.assert_allclose(y[0, inner, w * stride // 2, 0], want[inner], rtol=0, atol=1e-5)
    np.testing.assert_allclose(y[0, inner, margin:w * stride - margin, 1],
                               np.broadcast_to(want[inner, None],
                                               (len(want[inner]), w * stride - 2 * margin)),
                               atol=1e-5)


# -- the paper graph ---------------------------------------------------------------

def test_paper_variable_names_and_shapes(paper_graph):
    spec, graph, *_, variables = paper_graph
    names = {name.split("/")[1] for name in variables}
    assert names == BODY | PAPER_HEADS[spec.skips]
    shapes = definition.variable_shapes(3, vgg_widths=TINY_WIDTHS, fc_width=6,
                                       architecture="paper", skips=spec.skips)
    assert list(shapes) == [name.split("/")[1] for name in variables]
    for name, variable in variables.items():
        assert tuple(variable.shape.as_list()) == shapes[name.split("/")[1]], name
    assert definition.detect_architecture(variables) == ("paper", spec.skips)
    trainable = {v.op.name for v in graph.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES)}
    assert {n for n in variables if "upscore" in n}.isdisjoint(trainable)
    assert len(trainable) == len(variables) - len([n for n in names if "upscore" in n])


def test_paper_initial_values(paper_graph):
    spec, graph, *_, variables = paper_graph
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer(list(variables.values())))
        values = dict(zip(variables, sess.run(list(variables.values()))))
    for name, value in values.items():
        short = name.split("/")[1]
        if short.startswith("score_"):
            assert not value.any(), f"{name} should start at zero"
        elif short.startswith("upscore"):
            np.testing.assert_array_equal(value, definition.bilinear_kernel(value.shape[0], 3))
    assert values["inference/W6"].std() > 0


def test_paper_logits_have_the_input_size(paper_graph):
    spec, graph, images, logits, prediction, end_points, variables = paper_graph
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer(list(variables.values())))
        for n, h, w in ((1, 1, 1), (1, 37, 45), (2, 17, 6), (3, 33, 1), (1, 64, 64)):
            x = np.random.default_rng(h).uniform(0, 255, (n, h, w, 3)).astype(np.float32)
            out, pred = sess.run([logits, prediction], {images: x})
            assert out.shape == (n, h, w, 3) and pred.shape == (n, h, w)


def test_paper_matches_numpy_forward(paper_graph):
    spec, graph, images, logits, _, end_points, variables = paper_graph
    x = np.random.default_rng(2).uniform(0, 255, (2, 37, 45, 3)).astype(np.float32)
    (got, pool5), weights = run_random(graph, images, variables,
                                       [logits, end_points["pool5"]], x, seed=3)
    want, ref = fcn_paper_forward(x, weights, TINY_MEAN, skips=spec.skips)
    scale = np.abs(want).max()
    assert got.shape == want.shape and scale > 1e-3
    np.testing.assert_allclose(pool5, ref["pool5"], rtol=1e-4,
                               atol=1e-5 * np.abs(ref["pool5"]).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_train_upsampling_makes_filters_trainable():
    graph, *_, variables = build_graph(paper_spec("16s", train_upsampling=True))
    trainable = {v.op.name for v in graph.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES)}
    assert {"inference/upscore2_w", "inference/upscore16_w"} <= trainable


def test_bad_variants_are_refused():
    with pytest.raises(ValueError, match="FCN-8s only"):
        definition.variable_shapes(3, architecture="legacy", skips="16s")
    with pytest.raises(ValueError, match="architecture: expected one of legacy, paper, found 'caffe'"):
        definition.variable_shapes(3, architecture="caffe")
    with pytest.raises(ValueError, match="skips: expected one of 32s, 16s, 8s, found '4s'"):
        definition.variable_shapes(3, architecture="paper", skips="4s")


def test_detect_architecture_of_legacy_names():
    names = ["inference/" + n for n in definition.variable_shapes(3)]
    assert definition.detect_architecture(names) == ("legacy", "8s")
    assert definition.detect_architecture(["inference/conv1_1_w"]) is None


# -- the paper graph against the published FCN, each test with its own graph -------

# Head variables of voc-fcn32s/16s/8s (score_fr, score_pool4, score_pool3 are 1x1
# convs; upscore filters [k, k, K, K] with stride k / 2), for K = 3, F = 6 and the
# tiny body (C3 = 4, C4 = 5, C5 = 3).
PAPER_SHAPES = {
    "32s": {"W6": (7, 7, 3, 6), "b6": (6,), "W7": (1, 1, 6, 6), "b7": (6,),
            "score_fr_w": (1, 1, 6, 3), "score_fr_b": (3,), "upscore32_w": (64, 64, 3, 3)},
}
PAPER_SHAPES["16s"] = dict(PAPER_SHAPES["32s"], upscore2_w=(4, 4, 3, 3),
                           score_pool4_w=(1, 1, 5, 3), score_pool4_b=(3,),
                           upscore16_w=(32, 32, 3, 3))
del PAPER_SHAPES["16s"]["upscore32_w"]
PAPER_SHAPES["8s"] = dict(PAPER_SHAPES["16s"], upscore_pool4_w=(4, 4, 3, 3),
                          score_pool3_w=(1, 1, 4, 3), score_pool3_b=(3,),
                          upscore8_w=(16, 16, 3, 3))
del PAPER_SHAPES["8s"]["upscore16_w"]

PAPER_HEAD_POINTS = {
    "32s": ["upscore32"],
    "16s": ["upscore2", "score_pool4", "fuse_pool4", "upscore16"],
    "8s": ["upscore2", "score_pool4", "fuse_pool4", "upscore_pool4", "score_pool3",
           "fuse_pool3", "upscore8"],
}


def paper_body():
    """(end points, layer ends) of the VGG19 body with its five max pools."""
    points, layers = [], []
    for block, count in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)):
        for i in range(1, count + 1):
            points += [f"conv{block}_{i}", f"relu{block}_{i}"]
            layers.append((f"conv{block}_{i}", f"relu{block}_{i}"))
        points.append(f"pool{block}")
        layers.append((f"pool{block}", f"pool{block}"))
    return points, layers


@pytest.mark.parametrize("skips", ["32s", "16s", "8s"])
def test_paper_variables_end_points_and_layers_are_the_published_ones(skips):
    spec = paper_spec(skips)
    _, _, _, _, end_points, variables = build_graph(spec, kernels="reference")
    shapes = {name.split("/")[1]: tuple(v.shape.as_list()) for name, v in variables.items()}
    assert {n: s for n, s in shapes.items() if n not in BODY} == PAPER_SHAPES[skips]
    assert shapes["conv5_4_w"] == (3, 3, 3, 3) and shapes["conv1_1_w"] == (3, 3, 3, 2)
    body_points, body_layers = paper_body()
    head = ["conv6", "relu6", "drop6", "conv7", "relu7", "drop7", "score_fr"]
    assert list(end_points) == (["centred"] + body_points + head + PAPER_HEAD_POINTS[skips]
                                + ["logits", "prediction"])
    head_layers = [("conv6", "drop6"), ("conv7", "drop7")] + [
        (name, name) for name in ["score_fr"] + PAPER_HEAD_POINTS[skips]]
    assert definition.layer_ends(spec) == body_layers + head_layers
    named = [name for name in end_points if name.startswith(("relu", "fuse_", "logits"))]
    assert {name: end_points[name].op.name for name in named} == {
        name: "inference/" + name for name in named}


def caffe_bilinear(size):
    """Caffe's BilinearFiller for a [size, size] filter: f = ceil(size / 2),
    c = (2f - 1 - f mod 2) / (2f), w(x, y) = (1 - |x / f - c|) (1 - |y / f - c|)."""
    f = np.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    x = np.arange(size)
    return np.outer(1 - np.abs(x / f - c), 1 - np.abs(x / f - c))


@pytest.mark.parametrize("skips", ["32s", "16s", "8s"])
def test_paper_upsampling_starts_as_caffe_bilinear_filler(skips):
    graph, *_, variables = build_graph(paper_spec(skips))
    names = [name for name in variables if "upscore" in name]
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer([variables[name] for name in names]))
        values = sess.run({name: variables[name] for name in names})
    for name, value in values.items():
        size = value.shape[0]
        assert value.shape == (size, size, 3, 3) and value.dtype == np.float32, name
        for i in range(3):
            for j in range(3):
                want = caffe_bilinear(size) if i == j else np.zeros((size, size))
                np.testing.assert_allclose(value[:, :, i, j], want, rtol=0, atol=1e-7,
                                           err_msg=f"{name} [{i}, {j}]")


@pytest.mark.parametrize("skips", ["32s", "16s", "8s"])
@pytest.mark.parametrize("shape", [(2, 37, 45), (1, 33, 65)])
def test_paper_reference_kernels_match_numpy_forward(skips, shape):
    spec = paper_spec(skips)
    graph, images, logits, _, end_points, variables = build_graph(spec, kernels="reference")
    op_types = [op.type for op in graph.get_operations()]
    assert op_types.count("Conv2DBackpropInput") == {"32s": 1, "16s": 2, "8s": 3}[skips]
    x = np.random.default_rng(5).uniform(0, 255, shape + (3,)).astype(np.float32)
    (got, score_fr), weights = run_random(graph, images, variables,
                                          [logits, end_points["score_fr"]], x,
                                          seed=len(skips) + shape[1])
    want, ref = fcn_paper_forward(x, weights, TINY_MEAN, skips=skips)
    scale = np.abs(want).max()
    assert got.shape == want.shape and scale > 1e-3
    np.testing.assert_allclose(score_fr, ref["score_fr"], rtol=1e-4,
                               atol=1e-5 * np.abs(ref["score_fr"]).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_detect_architecture_from_one_name_of_each_pair():
    """A checkpoint that lacks one head variable is still detected as its head,
    so that restoring it names the missing variable."""
    def names(*short):
        return ["inference/conv1_1_w"] + ["inference/" + n for n in short]

    assert definition.detect_architecture(names("W6", "W8")) == ("legacy", "8s")
    assert definition.detect_architecture(names("W6", "W_t3")) == ("legacy", "8s")
    assert definition.detect_architecture(names("score_fr_w", "score_pool3_w")) == ("paper", "8s")
    assert definition.detect_architecture(names("score_fr_w", "upscore8_w")) == ("paper", "8s")
    assert definition.detect_architecture(
        names("score_fr_w", "score_pool4_w", "upscore2_w")) == ("paper", "16s")
    assert definition.detect_architecture(names("score_fr_w", "upscore16_w")) == ("paper", "16s")
    assert definition.detect_architecture(names("score_fr_w", "upscore32_w")) == ("paper", "32s")
    assert definition.detect_architecture(names("W6", "W7")) is None
    assert definition.detect_architecture(names("W8"), scope="other") is None
