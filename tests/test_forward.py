"""The TensorFlow graph against an independent float64 NumPy forward pass."""

import numpy as np
import pytest
import tensorflow as tf
from npref import fcn8s_legacy_forward
from tfutil import build_graph, run_random
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph.network.spec import ModelSpec

tf1 = tf.compat.v1


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 37, 45), (1, 70, 33)])
def test_graph_matches_numpy_forward(shape):
    spec = ModelSpec(num_classes=4, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN)
    graph, images, logits, _, end_points, variables = build_graph(spec)
    x = np.random.default_rng(1).uniform(0, 255, shape + (3,)).astype(np.float32)
    (got, pool5, fuse_2), weights = run_random(
        graph, images, variables, [logits, end_points["pool5"], end_points["fuse_2"]], x,
        seed=sum(shape))
    want, ref_points = fcn8s_legacy_forward(x.astype(np.float64), weights, TINY_MEAN)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert scale > 1e-3
    np.testing.assert_allclose(pool5, ref_points["pool5"], rtol=1e-4,
                               atol=1e-5 * np.abs(ref_points["pool5"]).max())
    np.testing.assert_allclose(fuse_2, ref_points["fuse_2"], rtol=1e-4,
                               atol=1e-5 * np.abs(ref_points["fuse_2"]).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("shape", [(2, 37, 45), (1, 1, 1), (1, 33, 65)])
def test_reference_kernels_match_numpy_forward(shape):
    """kernels="reference" (TFLayers: conv6 as tf.nn.conv2d, every upsampling a
    tf.nn.conv2d_transpose) against the NumPy reference, as the cpu forms are."""
    spec = ModelSpec(num_classes=4, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                               mean_pixel=TINY_MEAN)
    graph, images, logits, _, end_points, variables = build_graph(spec, kernels="reference")
    op_types = [op.type for op in graph.get_operations()]
    assert op_types.count("Conv2DBackpropInput") == 3
    x = np.random.default_rng(4).uniform(0, 255, shape + (3,)).astype(np.float32)
    (got, conv7, fuse_1), weights = run_random(
        graph, images, variables, [logits, end_points["conv7"], end_points["fuse_1"]], x,
        seed=sum(shape) + 1)
    want, ref_points = fcn8s_legacy_forward(x.astype(np.float64), weights, TINY_MEAN)
    scale = np.abs(want).max()
    assert got.shape == want.shape and scale > 1e-3
    for name, value in (("conv7", conv7), ("fuse_1", fuse_1)):
        np.testing.assert_allclose(value, ref_points[name], rtol=1e-4,
                                   atol=1e-5 * np.abs(ref_points[name]).max(), err_msg=name)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
