"""The phase formulation of the upsampling (`cpu_layers.upsample_by_phases`)
against `tf_layers.upsample` (tf.nn.conv2d_transpose) and NumPy."""

import numpy as np
import pytest
import tensorflow as tf
from npref import conv2d_transpose_same

from fcn_graph.network import cpu_layers, tf_layers

tf1 = tf.compat.v1


def _ceil_div(a, b):
    return -(-a // b)


# (k, stride, output H, output W): the model's 4x4/2 and 16x16/8 at odd and even
# sizes, plus kernels that are not a multiple of the stride, or smaller than it.
CASES = [(4, 2, 7, 9), (4, 2, 6, 1), (16, 8, 37, 45), (16, 8, 8, 17), (16, 8, 1, 3),
         (3, 2, 11, 6), (5, 3, 10, 14), (2, 4, 9, 5)]


@pytest.mark.parametrize("k,stride,out_h,out_w", CASES)
def test_phases_equal_conv2d_transpose(k, stride, out_h, out_w):
    rng = np.random.default_rng(k * 100 + stride * 10 + out_h)
    batch, c_in, c_out = 2, 3, 5
    x = rng.standard_normal((batch, _ceil_div(out_h, stride), _ceil_div(out_w, stride), c_in))
    w = rng.standard_normal((k, k, c_out, c_in))
    b = rng.standard_normal(c_out)
    # one asymmetric tap, to pin the direction of the kernel
    w[0, k - 1, 1, 2] = 7.0
    shape = (batch, out_h, out_w, c_out)
    graph = tf.Graph()
    with graph.as_default():
        xt = tf1.placeholder(tf.float32, [None, None, None, c_in])
        shape_t = tf1.placeholder(tf.int32, [4])
        kernel, bias = tf.constant(w, tf.float32), tf.constant(b, tf.float32)
        phases = cpu_layers.upsample_by_phases(xt, kernel, bias, shape_t, stride)
        direct = tf_layers.upsample(xt, kernel, bias, shape_t, stride)
    with tf1.Session(graph=graph) as sess:
        got, want_tf = sess.run([phases, direct], {xt: x.astype(np.float32), shape_t: shape})
    want = conv2d_transpose_same(x, w, shape, stride) + b
    assert got.shape == shape
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got, want_tf, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(want_tf, want, rtol=1e-5, atol=1e-5 * scale)


def test_phase_kernel_layout():
    # k = 4, s = 2: taps T = 2; channel (r_y*2 + r_x)*C' + c at tap (j_y, j_x)
    # holds w[r_y + (1 - j_y)*2, r_x + (1 - j_x)*2, c, i].
    w = np.arange(4 * 4 * 3 * 2, dtype=np.float32).reshape(4, 4, 3, 2)
    with tf.Graph().as_default(), tf1.Session() as sess:
        got = sess.run(cpu_layers.phase_kernel(tf.constant(w), 2))
    assert got.shape == (2, 2, 2, 12)
    for jy in range(2):
        for jx in range(2):
            for ry in range(2):
                for rx in range(2):
                    for c in range(3):
                        np.testing.assert_array_equal(
                            got[jy, jx, :, (ry * 2 + rx) * 3 + c],
                            w[ry + (1 - jy) * 2, rx + (1 - jx) * 2, c, :])


def test_gradients_flow_through_phases():
    rng = np.random.default_rng(0)
    with tf.Graph().as_default(), tf1.Session() as sess:
        x = tf.constant(rng.standard_normal((1, 3, 4, 2)), tf.float32)
        w = tf.constant(rng.standard_normal((4, 4, 3, 2)), tf.float32)
        b = tf.zeros([3])
        a = cpu_layers.upsample_by_phases(x, w, b, [1, 6, 7, 3], 2)
        d = tf_layers.upsample(x, w, b, [1, 6, 7, 3], 2)
        ga = tf.gradients(tf.reduce_sum(a * a), [x, w])
        gd = tf.gradients(tf.reduce_sum(d * d), [x, w])
        for got, want in zip(sess.run(ga), sess.run(gd)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_phases_without_bias():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 5, 2)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 2)).astype(np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        got = sess.run(cpu_layers.upsample_by_phases(tf.constant(x), tf.constant(w), None,
                                                    [1, 6, 9, 3], 2))
    want = conv2d_transpose_same(x, w, (1, 6, 9, 3), 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
