"""The NumPy reference blocks: hand-worked cases, then against the TF ops."""

import numpy as np
import pytest
import tensorflow as tf
from npref import (
    VGG_CONV_LAYERS,
    avg_pool_same,
    conv2d_same,
    conv2d_transpose_same,
    fcn8s_legacy_forward,
    max_pool_same,
    same_padding,
)

from fcn_graph.network import cpu_layers, tf_layers

ODD_SIZES = [(1, 1), (3, 5), (7, 9), (13, 11), (37, 45)]


def _rand(rng, *shape):
    """float32-representable float64 numbers, so TF and NumPy see the same inputs."""
    return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


def _assert_close(tf_out, ref):
    tf_out = np.asarray(tf_out)
    assert tf_out.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(tf_out, ref, rtol=1e-5, atol=1e-5 * scale)


def _tf(x):
    return tf.constant(np.asarray(x, np.float32))


# Hand-worked cases: they check the reference itself, with no TF involved. ------


def test_same_padding_rule():
    # ceil(H/s), pad_total = max((out-1)*s + k - H, 0), the odd pixel goes after.
    assert same_padding(3, 2, 2) == (2, 0, 1)
    assert same_padding(4, 2, 2) == (2, 0, 0)
    assert same_padding(5, 3, 1) == (5, 1, 1)
    assert same_padding(7, 7, 1) == (7, 3, 3)
    assert same_padding(5, 4, 2) == (3, 1, 2)
    assert same_padding(1, 16, 8) == (1, 7, 8)


def test_avg_pool_excludes_padding_hand_worked():
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # [[1 2 3] [4 5 6] [7 8 9]]
    # 2x2 stride 2 SAME on 3x3: out 2x2, one padded row/column after (bottom, right).
    #   (0,0): (1+2+4+5)/4 = 3      (0,1): (3+6)/2 = 4.5   (padded cells not counted)
    #   (1,0): (7+8)/2 = 7.5        (1,1): 9/1 = 9         (would be 2.25 if padding counted)
    np.testing.assert_array_equal(avg_pool_same(x)[0, :, :, 0], [[3.0, 4.5], [7.5, 9.0]])
    # 3x3 stride 1 SAME: one padded cell on every side.
    #   corner (0,0): (1+2+4+5)/4 = 3   edge (0,1): (1+2+3+4+5+6)/6 = 3.5   centre: 45/9 = 5
    out = avg_pool_same(x, k=3, s=1)[0, :, :, 0]
    assert out[0, 0] == 3.0 and out[0, 1] == 3.5 and out[1, 1] == 5.0
    assert out[2, 2] == (5 + 6 + 8 + 9) / 4


def test_max_pool_padding_never_wins_hand_worked():
    x = -np.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # all negative: a zero pad would win
    np.testing.assert_array_equal(max_pool_same(x)[0, :, :, 0], [[-1.0, -3.0], [-7.0, -9.0]])


def test_conv_single_tap_pins_kernel_orientation():
    x = np.arange(12.0).reshape(1, 3, 4, 1)  # [[0 1 2 3] [4 5 6 7] [8 9 10 11]]
    w = np.zeros((3, 3, 1, 1))
    w[0, 2] = 1.0  # top row, right column
    # pad_before = 1, so y[i, j] = x[i + 0 - 1, j + 2 - 1] = x[i - 1, j + 1]: the
    # output is the input moved one row down and one column left (cross-correlation,
    # no kernel flip).
    expected = [[0, 0, 0, 0],
                [1, 2, 3, 0],
                [5, 6, 7, 0]]
    np.testing.assert_array_equal(conv2d_same(x, w)[0, :, :, 0], expected)
    _assert_close(tf.nn.conv2d(_tf(x), _tf(w), 1, "SAME"), conv2d_same(x, w))


def test_conv_transpose_single_tap_pins_direction_and_placement():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).reshape(1, 3, 3, 1)
    w = np.zeros((4, 4, 1, 1))
    w[0, 3] = 1.0  # top row, right column
    # Output 6x6 from 3x3 at stride 2: pad_total = (3-1)*2 + 4 - 6 = 2, pad_before = 1.
    # Input (i, j) goes to (2i - 1 + 0, 2j - 1 + 3) = (2i - 1, 2j + 2); row -1 and
    # column 6 fall outside. So y[1,2] = x[1,0] = 4, y[1,4] = x[1,1] = 5,
    # y[3,2] = x[2,0] = 7, y[3,4] = x[2,1] = 8, the rest 0.
    expected = np.zeros((6, 6))
    expected[1, 2], expected[1, 4], expected[3, 2], expected[3, 4] = 4, 5, 7, 8
    out = conv2d_transpose_same(x, w, (1, 6, 6, 1), 2)
    np.testing.assert_array_equal(out[0, :, :, 0], expected)
    _assert_close(tf.nn.conv2d_transpose(_tf(x), _tf(w), (1, 6, 6, 1), 2, "SAME"), out)


@pytest.mark.parametrize("size,k,s", [((7, 9), 3, 1), ((13, 11), 4, 2), ((37, 45), 16, 8),
                                      ((6, 10), 2, 2), ((5, 4), 7, 1), ((1, 1), 16, 8)])
def test_transpose_is_the_adjoint_of_conv(size, k, s):
    rng = np.random.default_rng(k * 100 + s)
    cin, cout = 3, 5
    x = rng.standard_normal((2,) + size + (cin,))
    w = rng.standard_normal((k, k, cin, cout))  # conv: [kh, kw, in, out]
    y_shape = conv2d_same(x, w, stride=s).shape
    y = rng.standard_normal(y_shape)
    lhs = np.sum(conv2d_same(x, w, stride=s) * y)
    # The same array is the transposed conv's [kh, kw, out, in] kernel.
    rhs = np.sum(x * conv2d_transpose_same(y, w, x.shape, s))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("k,s,h,pad_total", [
    (4, 2, 12, 2), (4, 2, 13, 3),    # k=4 s=2: pad_total is 2 (even H) or 3 (odd H), never 0
    (16, 8, 16, 8), (16, 8, 17, 15), (16, 8, 37, 11), (16, 8, 1, 15),
    (2, 2, 12, 0), (8, 8, 40, 0),    # zero padding needs k <= s and s | H
])
def test_transpose_output_shapes(k, s, h, pad_total):
    w_size = h + 2  # the other axis, for a non-square case
    assert (same_padding(h, k, s)[1] + same_padding(h, k, s)[2]) == pad_total
    rng = np.random.default_rng(h)
    in_h, in_w = -(-h // s), -(-w_size // s)
    x = _rand(rng, 2, in_h, in_w, 3)
    w = _rand(rng, k, k, 4, 3)
    out = conv2d_transpose_same(x, w, (2, h, w_size, 4), s)
    assert out.shape == (2, h, w_size, 4)
    _assert_close(tf.nn.conv2d_transpose(_tf(x), _tf(w), (2, h, w_size, 4), s, "SAME"), out)


def test_transpose_refuses_an_output_shape_tf_refuses():
    x = np.zeros((1, 3, 3, 1))
    w = np.zeros((4, 4, 1, 1))
    with pytest.raises(ValueError, match="maps it to 4x4"):
        conv2d_transpose_same(x, w, (1, 8, 8, 1), 2)
    # TF refuses it too: InvalidArgumentError from the Eigen kernel, AbortedError
    # from the oneDNN one (TF_ENABLE_ONEDNN_OPTS=1), ValueError from shape inference.
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.AbortedError, ValueError)):
        tf.nn.conv2d_transpose(_tf(x), _tf(w), (1, 8, 8, 1), 2, "SAME")
    # and both accept the shapes that a SAME conv maps back to 3x3
    for size in (5, 6):
        assert conv2d_transpose_same(x, w, (1, size, size, 1), 2).shape == (1, size, size, 1)
        out = tf.nn.conv2d_transpose(_tf(x), _tf(w), (1, size, size, 1), 2, "SAME")
        assert tuple(out.shape) == (1, size, size, 1)


# Against the TF ops, float32 TF vs float64 reference. ---------------------------


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("k,s,cin,cout", [(3, 1, 3, 4), (7, 1, 4, 2), (1, 1, 8, 5), (3, 2, 2, 3)])
def test_conv2d_same_matches_tf(size, k, s, cin, cout):
    rng = np.random.default_rng(sum(size) + k)
    x = _rand(rng, 2, *size, cin)
    w = _rand(rng, k, k, cin, cout)
    b = _rand(rng, cout)
    ref = conv2d_same(x, w, b, stride=s)
    _assert_close(tf.nn.conv2d(_tf(x), _tf(w), s, "SAME") + _tf(b), ref)


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("k,cin,cout,block", [(7, 3, 5, 100), (1, 6, 4, 100), (3, 2, 3, 100),
                                              (3, 2, 3, 0), (7, 3, 5, 7)])
def test_dense_conv2d_matches_reference_and_conv_gradients(size, k, cin, cout, block):
    rng = np.random.default_rng(sum(size) * k + cin)
    x, w, b = _rand(rng, 2, *size, cin), _rand(rng, k, k, cin, cout), _rand(rng, cout)

    def dense(x, w, b):
        return cpu_layers.dense_conv2d(x, w, b, block=block)
    _assert_close(dense(_tf(x), _tf(w), _tf(b)), conv2d_same(x, w, b))
    # Its gradients (im2col's included) equal the convolution's.
    weights = rng.standard_normal((2, *size, cout))
    grads = []
    for op in (dense, tf_layers.conv2d):
        tx, tw = tf.Variable(_tf(x)), tf.Variable(_tf(w))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(op(tx, tw, _tf(b)) * _tf(weights))
        grads.append([g.numpy().astype(np.float64) for g in tape.gradient(loss, [tx, tw])])
    for got, want in zip(*grads):
        _assert_close(got, want)


@pytest.mark.parametrize("rows,block", [(1, 3), (7, 3), (9, 3), (10, 4), (5, 100), (0, 3),
                                        (7, 0), (1, 0), (0, 0)])
def test_matmul_in_row_blocks_matches_numpy_with_plain_gradients(rows, block):
    rng = np.random.default_rng(rows * 10 + block)
    a, m = _rand(rng, rows, 6), _rand(rng, 6, 5)
    upstream = rng.standard_normal((rows, 5))
    ta, tm = tf.Variable(_tf(a)), tf.Variable(_tf(m))
    with tf.GradientTape() as tape:
        out = cpu_layers.matmul_in_row_blocks(ta, tm, block=block)
        loss = tf.reduce_sum(out * _tf(upstream))
    if rows == 0:  # an empty batch gives an empty product
        assert out.shape == (0, 5)
        return
    _assert_close(out, a @ m)
    got_a, got_m = tape.gradient(loss, [ta, tm])
    _assert_close(got_a, upstream @ m.T)
    _assert_close(got_m, a.T @ upstream)


def test_matmul_in_row_blocks_in_a_graph_with_unknown_rows():
    rng = np.random.default_rng(5)
    m = _rand(rng, 4, 3)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        rows = tf.compat.v1.placeholder(tf.float32, [None, 4])
        outs = [cpu_layers.matmul_in_row_blocks(rows, _tf(m), block=block)
                for block in (4, 0)]
        for count in (1, 4, 5, 13):
            a = _rand(rng, count, 4)
            for out in outs:
                _assert_close(sess.run(out, {rows: a}), a @ m)


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("channels", [1, 5])
def test_pools_match_tf(size, channels):
    rng = np.random.default_rng(sum(size) * channels)
    x = _rand(rng, 3, *size, channels) - 2.0  # mostly negative: exposes zero padding in max
    _assert_close(tf.nn.avg_pool2d(_tf(x), 2, 2, "SAME"), avg_pool_same(x))
    _assert_close(tf.nn.max_pool2d(_tf(x), 2, 2, "SAME"), max_pool_same(x))
    _assert_close(tf.nn.avg_pool2d(_tf(x), 3, 1, "SAME"), avg_pool_same(x, k=3, s=1))


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("k,s,cin,cout", [(4, 2, 3, 5), (16, 8, 4, 2), (3, 1, 2, 2)])
def test_conv2d_transpose_same_matches_tf(size, k, s, cin, cout):
    rng = np.random.default_rng(sum(size) + 7 * k)
    in_h, in_w = -(-size[0] // s), -(-size[1] // s)
    x = _rand(rng, 2, in_h, in_w, cin)
    w = _rand(rng, k, k, cout, cin)  # [kh, kw, out, in]
    shape = (2, *size, cout)
    ref = conv2d_transpose_same(x, w, shape, s)
    _assert_close(tf.nn.conv2d_transpose(_tf(x), _tf(w), shape, s, "SAME"), ref)


# The whole legacy graph (shapes and its two easy-to-get-wrong rules). ------------


def _tiny_weights(rng, num_classes=3, width=4, fc_width=6, conv5_3_bias=0.0):
    """Legacy-named weights with `width` channels in every VGG layer."""
    weights = {}
    cin = 3
    for names in VGG_CONV_LAYERS:
        for name in names:
            weights[name + "_w"] = rng.standard_normal((3, 3, cin, width)) * np.sqrt(2 / (9 * cin))
            weights[name + "_b"] = rng.standard_normal(width) * 0.1
            cin = width
    weights["conv5_3_b"] = weights["conv5_3_b"] + conv5_3_bias
    weights["W6"] = rng.standard_normal((7, 7, width, fc_width)) * 0.1
    weights["b6"] = rng.standard_normal(fc_width) * 0.1
    weights["W7"] = rng.standard_normal((1, 1, fc_width, fc_width)) * 0.3
    weights["b7"] = rng.standard_normal(fc_width) * 0.1
    weights["W8"] = rng.standard_normal((1, 1, fc_width, num_classes)) * 0.3
    weights["b8"] = rng.standard_normal(num_classes) * 0.1
    weights["W_t1"] = rng.standard_normal((4, 4, width, num_classes)) * 0.2  # pool4 width
    weights["b_t1"] = rng.standard_normal(width) * 0.1
    weights["W_t2"] = rng.standard_normal((4, 4, width, width)) * 0.2  # pool3 width
    weights["b_t2"] = rng.standard_normal(width) * 0.1
    weights["W_t3"] = rng.standard_normal((16, 16, num_classes, width)) * 0.2
    weights["b_t3"] = rng.standard_normal(num_classes) * 0.1
    return weights


@pytest.mark.parametrize("size", [(1, 1), (37, 45), (70, 90)])
def test_legacy_forward_shapes(size):
    rng = np.random.default_rng(0)
    weights = _tiny_weights(rng)
    images = rng.uniform(0, 255, (2, *size, 3))
    logits, end_points = fcn8s_legacy_forward(images, weights, (123.68, 116.779, 103.939))
    h, w = size

    def at(stride, channels):
        return (2, -(-h // stride), -(-w // stride), channels)

    assert logits.shape == (2, h, w, 3) and logits.dtype == np.float64
    assert np.all(np.isfinite(logits))
    assert end_points["pool3"].shape == at(8, 4)
    assert end_points["pool4"].shape == at(16, 4)
    assert end_points["pool5"].shape == at(32, 4)
    assert end_points["conv8"].shape == at(32, 3)
    assert end_points["fuse_1"].shape == at(16, 4)
    assert end_points["fuse_2"].shape == at(8, 4)
    np.testing.assert_array_equal(end_points["conv_t3"], logits)


def test_legacy_forward_pool5_is_max_of_conv5_3_before_relu():
    rng = np.random.default_rng(1)
    weights = _tiny_weights(rng, conv5_3_bias=-50.0)  # every conv5_3 output negative
    images = rng.uniform(0, 255, (1, 19, 23, 3))
    _, end_points = fcn8s_legacy_forward(images, weights, (0.0, 0.0, 0.0))
    assert np.all(end_points["relu5_3"] == 0)
    assert np.all(end_points["pool5"] < -40)  # a pool of relu5_3 would give 0
    np.testing.assert_array_equal(end_points["pool5"], max_pool_same(end_points["conv5_3"]))


def test_legacy_forward_subtracts_the_mean_and_uses_average_pools():
    rng = np.random.default_rng(2)
    weights = {k: (np.zeros_like(v) if k.endswith("b") or k[0] == "b" else v)
               for k, v in _tiny_weights(rng).items()}
    mean = np.array([10.0, 20.0, 30.0])
    images = np.broadcast_to(mean, (1, 9, 11, 3))
    logits, _ = fcn8s_legacy_forward(images, weights, mean)
    np.testing.assert_array_equal(logits, 0.0)  # zero input, zero biases: zero everywhere

    # pool1..pool4 are average pools of the ReLU outputs, not max pools.
    images = rng.uniform(0, 255, (1, 9, 11, 3))
    _, end_points = fcn8s_legacy_forward(images, _tiny_weights(rng), mean)
    for block, last in ((1, "relu1_2"), (2, "relu2_2"), (3, "relu3_4"), (4, "relu4_4")):
        pooled = end_points[f"pool{block}"]
        np.testing.assert_allclose(pooled, avg_pool_same(end_points[last]), rtol=1e-12)
        if block == 1:
            assert not np.allclose(pooled, max_pool_same(end_points[last]))
