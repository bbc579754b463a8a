import math

import numpy as np
import pytest
import tensorflow as tf
from tfutil import LEGACY_NAMES, build_graph
from tinyvgg import TINY_WIDTHS

from fcn_graph.core.constants import VGG_MEAN_RGB
from fcn_graph.network import definition, flops, tf_layers
from fcn_graph.network.spec import VGG19_BODY, ModelSpec, scaled_vgg_widths

tf1 = tf.compat.v1


def tiny_spec(num_classes=5):
    return ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()))


def test_variable_names_are_the_legacy_ones():
    graph, *_, variables = build_graph(tiny_spec())
    assert len(variables) == 44
    assert set(variables) == set(LEGACY_NAMES)
    assert len(graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)) == 44


def test_full_size_shapes_match_the_reference_table():
    spec = ModelSpec(num_classes=151)
    shapes = definition.variable_shapes(151)
    assert shapes["W6"] == (7, 7, 512, 4096) and shapes["W7"] == (1, 1, 4096, 4096)
    assert shapes["W8"] == (1, 1, 4096, 151) and shapes["W_t1"] == (4, 4, 512, 151)
    assert shapes["b_t1"] == (512,) and shapes["W_t2"] == (4, 4, 256, 512)
    assert shapes["W_t3"] == (16, 16, 151, 256) and shapes["b_t3"] == (151,)
    assert shapes["conv1_1_w"] == (3, 3, 3, 64) and shapes["conv5_4_w"] == (3, 3, 512, 512)
    _, *_, variables = build_graph(spec)
    for name, variable in variables.items():
        assert tuple(variable.shape.as_list()) == shapes[name.split("/")[1]], name


def test_widths_come_from_the_spec():
    spec = tiny_spec(num_classes=3)
    _, *_, variables = build_graph(spec)
    assert variables["inference/conv3_4_w"].shape.as_list() == [3, 3, 4, 4]
    assert variables["inference/W6"].shape.as_list() == [7, 7, 3, 6]
    assert variables["inference/W_t1"].shape.as_list() == [4, 4, 5, 3]
    assert variables["inference/W_t3"].shape.as_list() == [16, 16, 3, 4]


def test_scaled_widths():
    widths = scaled_vgg_widths(1 / 16)
    assert widths["conv1_1"] == 4 and widths["conv5_4"] == 32
    assert min(scaled_vgg_widths(0.001).values()) == 1


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 37, 45), (1, 97, 131), (3, 17, 6), (2, 5, 2),
                                   (1, 64, 64), (1, 33, 1)])
def test_logits_have_the_input_size(shape):
    graph, images, logits, prediction, end_points, _ = build_graph(tiny_spec())
    n, h, w = shape
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer(graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)))
        x = np.random.default_rng(0).uniform(0, 255, (n, h, w, 3)).astype(np.float32)
        out, pred, pool3, pool4, pool5 = sess.run(
            [logits, prediction, end_points["pool3"], end_points["pool4"], end_points["pool5"]],
            {images: x})
    assert out.shape == (n, h, w, 5)
    assert pred.shape == (n, h, w)
    ceil = lambda size, f: -(-size // f)  # noqa: E731
    assert pool3.shape[1:3] == (ceil(h, 8), ceil(w, 8))
    assert pool4.shape[1:3] == (ceil(h, 16), ceil(w, 16))
    assert pool5.shape[1:3] == (ceil(h, 32), ceil(w, 32))
    np.testing.assert_array_equal(pred, out.argmax(axis=3))


def test_one_graph_serves_every_size():
    graph, images, logits, *_ = build_graph(tiny_spec())
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        graph.finalize()
        for h, w in ((7, 9), (40, 23), (1, 2)):
            assert sess.run(logits, {images: np.zeros((1, h, w, 3), np.float32)}).shape[1:3] == (h, w)


def test_conv5_4_exists_but_feeds_nothing():
    graph, images, logits, *_ = build_graph(tiny_spec())
    with graph.as_default():
        grads = tf.gradients(tf.reduce_sum(logits), list(tf_layers.model_variables(graph).values()))
    names = list(tf_layers.model_variables(graph))
    without_gradient = {name for name, g in zip(names, grads) if g is None}
    assert without_gradient == {"inference/conv5_4_w", "inference/conv5_4_b"}


def test_weights_are_not_graph_constants():
    graph, *_ = build_graph(ModelSpec(num_classes=21))
    size = len(graph.as_graph_def().SerializeToString())
    assert size < 1_000_000, f"graph def is {size} bytes; big weights became constants"


def test_second_build_shares_variables():
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.placeholder(tf.float32, [None, None, None, 3])
        b = tf1.placeholder(tf.float32, [None, None, None, 3])
        tf_layers.build(a, tiny_spec())
        tf_layers.build(b, tiny_spec(), keep_prob=tf1.placeholder_with_default(1.0, []))
    assert len(tf_layers.model_variables(graph)) == 44


# -- the shape trace, the layer list and the FLOP count against the graph -------------

def _expected_body(last_block):
    """FCN.tensorflow's / VGG19's body end points, written out: (end points,
    layer ends) through conv5_3 (legacy) or conv5_4 (paper)."""
    points, layers = [], []
    for block, count in ((1, 2), (2, 2), (3, 4), (4, 4), (5, last_block)):
        for i in range(1, count + 1):
            points += [f"conv{block}_{i}", f"relu{block}_{i}"]
            layers.append((f"conv{block}_{i}", f"relu{block}_{i}"))
        if block < 5:
            points.append(f"pool{block}")
            layers.append((f"pool{block}", f"pool{block}"))
    return points, layers


LEGACY_HEAD_POINTS = ["pool5", "conv6", "relu6", "drop6", "conv7", "relu7", "drop7", "conv8",
                      "conv_t1", "fuse_1", "conv_t2", "fuse_2", "conv_t3"]
LEGACY_HEAD_LAYERS = [("pool5", "pool5"), ("conv6", "drop6"), ("conv7", "drop7"),
                      ("conv8", "conv8"), ("conv_t1", "conv_t1"), ("fuse_1", "fuse_1"),
                      ("conv_t2", "conv_t2"), ("fuse_2", "fuse_2"), ("conv_t3", "conv_t3")]


def test_legacy_end_points_layers_and_trainables_are_fcn_tensorflow_ones():
    spec = tiny_spec()
    graph, *_, end_points, variables = build_graph(spec, kernels="reference")
    body_points, body_layers = _expected_body(3)
    assert list(end_points) == ["centred"] + body_points + LEGACY_HEAD_POINTS + [
        "logits", "prediction"]
    assert definition.layer_ends(spec) == body_layers + LEGACY_HEAD_LAYERS
    named = [name for name in end_points if name.startswith(("relu", "fuse_", "logits"))]
    assert len(named) == 20
    assert {name: end_points[name].op.name for name in named} == {
        name: "inference/" + name for name in named}
    # conv5_4 feeds nothing but is a trainable variable, as in FCN.tensorflow.
    trainable = {v.op.name for v in graph.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES)}
    assert trainable == set(LEGACY_NAMES) == set(variables)


VARIANTS = [("legacy", "8s"), ("paper", "32s"), ("paper", "16s"), ("paper", "8s")]


def variant_spec(architecture, skips, num_classes=5):
    return ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()),
                               architecture=architecture, skips=skips)


@pytest.mark.parametrize("architecture,skips", VARIANTS)
def test_trace_matches_the_graph_end_points(architecture, skips):
    spec = variant_spec(architecture, skips)
    graph, images, _, _, end_points, _ = build_graph(spec, kernels="reference")
    names = [name for name in end_points if name not in ("logits", "prediction")]
    closers = [end for _, end in definition.layer_ends(spec)]
    assert [name for name in names if name in closers] == closers
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer(graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)))
        for n, h, w in ((2, 37, 45), (2, 1, 1), (3, 33, 65)):
            x = np.zeros((n, h, w, 3), np.float32)
            got = sess.run({name: end_points[name] for name in names}, {images: x})
            traced = definition.trace(spec, batch=n, height=h, width=w)
            assert list(traced.end_points) == names
            for name in names:
                assert traced.end_points[name] == got[name].shape, (name, (n, h, w))


def test_trace_defaults_to_one_1x1_image():
    traced = definition.trace(tiny_spec(num_classes=4))
    assert traced.end_points["centred"] == (1, 1, 1, 3)
    assert traced.end_points["conv_t3"] == (1, 1, 1, 4)
    assert traced.variables == definition.variable_shapes(4, vgg_widths=TINY_WIDTHS, fc_width=6)


def two_layer_head(ops, net, spec, keep_prob):
    """A small test head: 3x3 conv and ReLU, a max pool, a bilinear x2 upsampling."""
    images = net
    net = ops.conv(net, "c1", ("c1_w", "c1_b"), size=3, channels=2, init=definition.VGG_INIT)
    net = ops.relu(net, "r1")                                           # [N, H, W, 2]
    net = ops.pool(net, "p1", "max")                                    # [N, H/2, W/2, 2]
    return ops.upsample(net, "up", ("up_w", None), like=images, channels=spec.num_classes,
                        size=4, stride=2, init=definition.HEAD_INIT)     # [N, H, W, K]


def test_trace_and_layer_ends_follow_a_given_head():
    spec = tiny_spec(num_classes=3)
    graph, images, _, _, end_points, variables = build_graph(spec, kernels="reference",
                                                             head=two_layer_head)
    assert definition.layer_ends(spec, head=two_layer_head) == [
        ("c1", "r1"), ("p1", "p1"), ("up", "up")]
    traced = definition.trace(spec, batch=2, height=5, width=7, head=two_layer_head)
    assert traced.variables == {name.split("/")[1]: tuple(v.shape.as_list())
                                for name, v in variables.items()}
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer(list(variables.values())))
        got = sess.run({name: end_points[name] for name in ("centred", "c1", "r1", "p1", "up")},
                       {images: np.zeros((2, 5, 7, 3), np.float32)})
    assert traced.end_points == {name: value.shape for name, value in got.items()}
    assert got["p1"].shape == (2, 3, 4, 2)
    mine = definition.ShapeLayers()
    assert definition.trace(spec, head=two_layer_head, layers=mine) is mine
    assert list(mine.layers) == ["c1", "p1", "up"]


def test_layer_macs_count_every_weighted_layer_of_the_graph():
    spec = tiny_spec(num_classes=4)
    graph, images, _, _, end_points, variables = build_graph(spec, kernels="reference")
    kernels = {"conv6": "W6", "conv7": "W7", "conv8": "W8",
               "conv_t1": "W_t1", "conv_t2": "W_t2", "conv_t3": "W_t3"}
    inputs = {"conv_t1": "conv8", "conv_t2": "fuse_1", "conv_t3": "fuse_2"}
    body = [name for name in _expected_body(3)[0] if name.startswith("conv")]
    layers = body + list(kernels)
    with tf1.Session(graph=graph) as sess:
        sess.run(tf1.variables_initializer(list(variables.values())))
        got = sess.run({name: end_points[name] for name in layers + list(inputs.values())},
                       {images: np.zeros((2, 37, 45, 3), np.float32)})
    want = {}
    for name in layers:
        kernel = variables["inference/" + kernels.get(name, name + "_w")].shape.as_list()
        # a conv: one k x k x C_in x C_out product per output cell; a transposed
        # conv: one per input cell.
        cells = got[inputs[name]] if name in inputs else got[name]
        want[name] = int(np.prod(cells.shape[:3])) * int(np.prod(kernel))
    macs = flops.layer_macs(2, 37, 45, 4, vgg_widths=TINY_WIDTHS, fc_width=6)
    assert list(macs) == layers
    assert dict(macs) == want
    assert want["conv6"] == 2 * 2 * 2 * 7 * 7 * 3 * 6


def test_build_reverses_bgr_subtracts_the_mean_and_passes_keep_prob():
    x = np.random.default_rng(3).uniform(0, 255, (2, 40, 70, 3)).astype(np.float32)
    mean = (10.0, 20.0, 40.0)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        bgr = ModelSpec(num_classes=3, fc_width=6,
                                  vgg_widths=tuple(TINY_WIDTHS.values()), channel_order="bgr")
        _, _, bgr_points = tf_layers.build(images, bgr, mean_pixel=mean, keep_prob=0.5)
        _, _, plain = tf_layers.fcn(images, tiny_spec(num_classes=3))   # keep_prob 1.0
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as sess:
        sess.run(init)
        got = sess.run({"bgr": bgr_points["centred"], "relu6": bgr_points["relu6"],
                        "drop6": bgr_points["drop6"], "plain6": plain["relu6"],
                        "plain_drop6": plain["drop6"], "plain": plain["centred"]}, {images: x})
    np.testing.assert_allclose(got["bgr"], x[..., ::-1] - np.array(mean, np.float32), rtol=1e-6)
    np.testing.assert_allclose(got["plain"], x - np.array(VGG_MEAN_RGB, np.float32),
                               rtol=1e-6)
    np.testing.assert_array_equal(got["plain_drop6"], got["plain6"])
    kept = got["drop6"] != 0
    assert kept.any() and (got["relu6"][~kept] != 0).any()       # dropped where ReLU was not 0
    np.testing.assert_allclose(got["drop6"][kept], 2 * got["relu6"][kept], rtol=1e-6)


def test_prediction_and_logits_are_named_end_points():
    graph, _, logits, prediction, end_points, _ = build_graph(tiny_spec(), kernels="reference")
    assert end_points["logits"] is logits and end_points["prediction"] is prediction
    assert graph.get_tensor_by_name("inference/logits:0") is logits
    assert graph.get_tensor_by_name("inference/prediction:0") is prediction


@pytest.mark.parametrize("mean", [(10, 20, 41), np.array([10.5, 20.25, 40.0], np.float64)])
def test_fcn_subtracts_a_mean_of_ints_or_float64_in_float32(mean):
    x = np.random.default_rng(4).uniform(0, 255, (2, 5, 3, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        _, _, end_points = tf_layers.fcn(images, tiny_spec(), mean_pixel=mean)
    constant = graph.get_tensor_by_name("inference/mean_pixel:0")
    assert end_points["centred"].dtype == tf.float32 and constant.dtype == tf.float32
    with tf1.Session(graph=graph) as sess:
        centred, value = sess.run([end_points["centred"], constant], {images: x})
    np.testing.assert_array_equal(value, np.asarray(mean, np.float32))
    np.testing.assert_array_equal(centred, x - np.asarray(mean, np.float32))


def test_model_variables_are_the_scope_s_own_without_slots():
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        tf_layers.build(images, tiny_spec())
        for scope, name in (("other", "w"), ("inference_ema", "W6"), ("inference/W6", "Adam")):
            with tf1.variable_scope(scope):
                tf1.get_variable(name, [2])
        tf1.train.get_or_create_global_step()
    assert set(tf_layers.model_variables(graph)) == set(LEGACY_NAMES)
    assert list(tf_layers.model_variables(graph, scope="other")) == ["other/w"]


def _truncated_normal_std(bound):
    """Standard deviation of a unit normal truncated to [-bound, bound]."""
    density = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * density / mass)


def test_initializers_draw_he_normal_and_head_normal_truncated_at_two_sigma():
    # VGG_INIT: He-normal on the fan-in k*k*C_in (variance 2 / fan_in after the
    # truncation); HEAD_INIT: a normal of stddev 0.02 truncated at 0.04.
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        ops = tf_layers.TFLayers()
        he = ops.variable("he", (3, 3, 40, 64), definition.VGG_INIT, True)
        head = ops.variable("head", (1, 1, 50, 400), definition.HEAD_INIT, True)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            he, head = sess.run([he, head])
    cut = _truncated_normal_std(2.0)
    he_std = math.sqrt(2 / (3 * 3 * 40))
    assert abs(he.std() / he_std - 1) < 0.03 and abs(he.mean()) < 0.05 * he_std
    assert 1.9 * he_std / cut < np.abs(he).max() <= 2 * he_std / cut
    assert abs(head.std() / (0.02 * cut) - 1) < 0.03
    assert 0.038 < np.abs(head).max() <= 0.04


def test_vgg_body_stops_at_its_row_and_refuses_an_unknown_one():
    widths = dict(TINY_WIDTHS)
    points = definition.vgg_body(definition.ShapeLayers(), (1, 9, 7, 3), VGG19_BODY, widths,
                                pool_method="max", through="pool2")
    assert list(points)[-3:] == ["conv2_2", "relu2_2", "pool2"]
    assert points["pool2"] == (1, 3, 2, widths["conv2_2"])
    with pytest.raises(ValueError, match="through='relu6_1' is not a row"):
        definition.vgg_body(definition.ShapeLayers(), (1, 9, 7, 3), VGG19_BODY, widths,
                            pool_method="max", through="relu6_1")


class NameRecorder(definition.ShapeLayers):
    """ShapeLayers that records the layer name each primitive is given."""

    def __init__(self):
        super().__init__()
        self.named = []

    def _conv(self, net, kernel, bias, name):
        self.named.append(name)
        return super()._conv(net, kernel, bias, name)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        self.named.append(name)
        return super()._upsample(net, kernel, bias, like, channels, stride, name)

    def _relu(self, net, name):
        self.named.append(name)
        return net

    def _pool(self, net, method, name):
        self.named.append(name)
        return super()._pool(net, method, name)

    def _add(self, a, b, name):
        self.named.append(name)
        return a


@pytest.mark.parametrize("architecture,skips", VARIANTS)
def test_every_primitive_gets_its_layer_s_name(architecture, skips):
    # ONNX node names and the FLOP count's keys come from these names.
    spec = variant_spec(architecture, skips)
    recorder = definition.trace(spec, layers=NameRecorder())
    dropouts = {"drop6", "drop7"}
    assert recorder.named == [name for name in recorder.end_points
                              if name not in dropouts | {"centred"}]
