import numpy as np
import pytest
import tensorflow as tf
from tfutil import LEGACY_NAMES, build_graph
from tinyvgg import TINY_WIDTHS

from fcn_graph import model as fcn_model

tf1 = tf.compat.v1


def tiny_spec(num_classes=5):
    return fcn_model.ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()))


def test_variable_names_are_the_legacy_ones():
    graph, *_, variables = build_graph(tiny_spec())
    assert len(variables) == 44
    assert set(variables) == set(LEGACY_NAMES)
    assert len(graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)) == 44


def test_full_size_shapes_match_the_reference_table():
    spec = fcn_model.ModelSpec(num_classes=151)
    shapes = fcn_model.variable_shapes(151)
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
    widths = fcn_model.scaled_vgg_widths(1 / 16)
    assert widths["conv1_1"] == 4 and widths["conv5_4"] == 32
    assert min(fcn_model.scaled_vgg_widths(0.001).values()) == 1


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
        grads = tf.gradients(tf.reduce_sum(logits), list(fcn_model.model_variables(graph).values()))
    names = list(fcn_model.model_variables(graph))
    without_gradient = {name for name, g in zip(names, grads) if g is None}
    assert without_gradient == {"inference/conv5_4_w", "inference/conv5_4_b"}


def test_weights_are_not_graph_constants():
    graph, *_ = build_graph(fcn_model.ModelSpec(num_classes=21))
    size = len(graph.as_graph_def().SerializeToString())
    assert size < 1_000_000, f"graph def is {size} bytes; big weights became constants"


def test_second_build_shares_variables():
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.placeholder(tf.float32, [None, None, None, 3])
        b = tf1.placeholder(tf.float32, [None, None, None, 3])
        fcn_model.build(a, tiny_spec())
        fcn_model.build(b, tiny_spec(), keep_prob=tf1.placeholder_with_default(1.0, []))
    assert len(fcn_model.model_variables(graph)) == 44
