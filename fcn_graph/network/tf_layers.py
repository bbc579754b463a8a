"""The network's layer operations as TensorFlow ops, and the graph builder.

`TFLayers` computes `definition.network` with the plain ops (the "reference"
kernel set): hand-built `tf.nn.conv2d`, 2x2 pools, conv6 as a 7x7 and
conv7/conv8 as 1x1 convolutions, every upsampling a `tf.nn.conv2d_transpose`
to an output shape computed at run time from `tf.shape`.
`build(images, spec, layers=...)` builds the graph a `ModelSpec` describes
with a given implementation (default `TFLayers`); which implementation runs
on this machine is decided in `fcn_graph.host.choice`.
"""

from collections import OrderedDict

import tensorflow as tf

from fcn_graph.core.constants import VGG_MEAN_RGB
from fcn_graph.network.definition import (
    BILINEAR,
    HEAD_INIT,
    SCOPE,
    VGG_INIT,
    ZEROS,
    Layers,
    bilinear_kernel,
    network,
)

tf1 = tf.compat.v1


def build(images, spec, *, layers=None, keep_prob=1.0, mean_pixel=None, head=None):
    """Build the graph a `ModelSpec` describes; returns (logits, prediction, end_points).

    images: float32 [N, H, W, 3] RGB, 0..255, whatever the weights expect: for
    BGR weights (spec.channel_order "bgr") the channels are reversed here.
    The mean pixel is the spec's, else `mean_pixel`, else the VGG mean.
    layers: the `Layers` implementation to build with (default `TFLayers`, the
    reference ops); `fcn_graph.host.choice.kernel_layers` maps a kernel set to one.
    """
    if spec.channel_order == "bgr":
        images = tf.reverse(images, axis=[3])                         # [N, H, W, 3] BGR
    mean = spec.resolved_mean(mean_pixel)
    return fcn(images, spec, layers=layers, keep_prob=keep_prob, mean_pixel=mean, head=head)


def fcn(images, spec, *, layers=None, keep_prob=1.0, mean_pixel=VGG_MEAN_RGB, head=None):
    """The FCN of `spec` in the current graph: FCN.tensorflow's FCN-8s
    ("legacy") or the paper's FCN-32s/16s/8s ("paper", spec.skips).

    images: float32 [N, H, W, 3] in the network's channel order, 0..255; any
        N, H, W >= 1.
    keep_prob: dropout keep probability after conv6 and conv7 (a float or a
        scalar tensor; 1.0 for inference, TRAIN_KEEP_PROB for training).
    mean_pixel: mean subtracted from the images inside the graph (3 numbers,
        ints or floats of any width; the float32 constant "mean_pixel" of
        the model's name scope, "inference/mean_pixel" in a first build).
    layers: a fresh `Layers` of TensorFlow ops (default `TFLayers()`, the
        reference ops; `cpu_layers.CpuLayers` computes the same layers in CPU
        forms). Its end points are returned.

    Variables are created (or reused, under AUTO_REUSE) in variable scope
    "inference" (names in the module docstring); calling this twice in one
    graph shares them, whatever the layer implementations.

    Returns (logits, prediction, end_points):
      logits: float32 [N, H, W, K];
      prediction: int64 [N, H, W], the argmax over K;
      end_points: name -> tensor for every layer: centred, conv1_1 ... relu5_3
        (and, on VGG19, conv5_4, relu5_4 in the paper graph), pool1 [N, H/2, W/2, C1] ...
        pool4 [N, H/16, W/16, C4] (ceil everywhere), pool5 [N, H/32, W/32, C5],
        conv6, relu6, drop6, conv7, relu7, drop7 [N, H/32, W/32, F], then
        legacy: conv8 [N, H/32, W/32, K], conv_t1 and fuse_1 [N, H/16, W/16, C4],
          conv_t2 and fuse_2 [N, H/8, W/8, C3], conv_t3 [N, H, W, K];
        paper: score_fr [N, H/32, W/32, K], then
          32s: upscore32 [N, H, W, K];
          16s: upscore2, score_pool4, fuse_pool4 [N, H/16, W/16, K], upscore16;
          8s: those, then upscore_pool4, score_pool3, fuse_pool3
            [N, H/8, W/8, K], upscore8 [N, H, W, K];
        and logits, prediction.
    """
    ops = TFLayers() if layers is None else layers
    with tf1.variable_scope(SCOPE, reuse=tf1.AUTO_REUSE):
        net = network(ops, images, spec, keep_prob=keep_prob, mean_pixel=mean_pixel,
                      head=head)                                      # [N, H, W, K]
        logits = tf.identity(net, name="logits")                      # [N, H, W, K]
        prediction = tf.argmax(logits, axis=3, name="prediction")     # [N, H, W]
    end_points = ops.end_points
    end_points["logits"], end_points["prediction"] = logits, prediction
    return logits, prediction, end_points


class TFLayers(Layers):
    """The network's operations as plain TensorFlow ops (the "reference" kernels)."""

    def variable(self, name, shape, init, trainable):
        return tf1.get_variable(name, shape=shape, dtype=tf.float32,
                                initializer=_initializer(init, shape), trainable=trainable)

    def channels(self, net):
        return net.shape[-1]

    def _centre(self, net, mean_pixel):
        mean = tf.constant(list(mean_pixel), dtype=tf.float32, name="mean_pixel")
        return net - mean

    def _conv(self, net, kernel, bias, name):
        return conv2d(net, kernel, bias)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        return upsample(net, kernel, bias, shape_with_channels(like, channels), stride)

    def _relu(self, net, name):
        return tf.nn.relu(net, name=name)

    def _dropout(self, net, keep_prob):
        return tf.nn.dropout(net, rate=1.0 - keep_prob)

    def _pool(self, net, method, name):
        return pool2x2(net, method)

    def _add(self, a, b, name):
        return tf.add(a, b, name=name)


def conv2d(net, kernel, bias):
    """Stride-1 SAME convolution plus bias (the same spatial size out)."""
    net = tf.nn.conv2d(net, kernel, strides=[1, 1, 1, 1], padding="SAME")
    return tf.nn.bias_add(net, bias)


def pool2x2(net, method):
    """2x2 stride-2 SAME pooling: [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C].

    Average pooling divides by the number of real (unpadded) cells.
    """
    pool = tf.nn.avg_pool2d if method == "avg" else tf.nn.max_pool2d
    return pool(net, ksize=2, strides=2, padding="SAME")


def upsample(net, kernel, bias, output_shape, stride):
    """Transposed convolution to a shape computed at run time (plus `bias`
    unless it is None): tf.nn.conv2d_transpose.

    Rule: `output_shape` is [N, H', W', C'] with ceil(H'/stride) equal to the
    input's height (and likewise for width); SAME padding then crops the
    (in - 1) * stride + k output rows to exactly H', dropping pad // 2 rows at
    the top and the rest at the bottom, where pad = (in - 1) * stride + k - H'.
    `kernel` is [k, k, C', C_in], as tf.nn.conv2d_transpose wants.
    """
    net = tf.nn.conv2d_transpose(net, kernel, output_shape, strides=[1, stride, stride, 1],
                                 padding="SAME")
    return net if bias is None else tf.nn.bias_add(net, bias)


def shape_with_channels(tensor, channels):
    """[N, H, W] of `tensor` at run time, with `channels` as the last dimension."""
    shape = tf.shape(tensor)
    return tf.stack([shape[0], shape[1], shape[2], channels])


def _initializer(init, shape):
    if init == VGG_INIT:
        # He-normal (fan-in), truncated at two standard deviations.
        return tf1.initializers.variance_scaling(scale=2.0, mode="fan_in",
                                                 distribution="truncated_normal")
    if init == HEAD_INIT:
        return tf1.initializers.truncated_normal(stddev=0.02)
    if init == BILINEAR:
        return _bilinear_initializer(shape[0])
    assert init == ZEROS, init
    return tf1.zeros_initializer()


def _bilinear_initializer(size):
    # Built in the graph from the [size, size] taps times an identity, so that
    # a 64x64xKxK filter never becomes a graph constant.
    taps = bilinear_kernel(size, 1)[:, :, 0, 0]

    def initializer(shape, dtype=tf.float32, partition_info=None):
        assert tuple(shape[:2]) == (size, size) and shape[2] == shape[3], shape
        return tf.constant(taps, dtype)[:, :, None, None] * tf.eye(int(shape[2]), dtype=dtype)

    return initializer


def model_variables(graph=None, scope=SCOPE):
    """The model's global variables (not optimizer slots or the global step),
    keyed by their checkpoint names."""
    graph = graph or tf1.get_default_graph()
    variables = graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, scope=scope + "/")
    # Optimizer slots live one level deeper ("inference/W6/Adam").
    return OrderedDict((v.op.name, v) for v in variables if v.op.name.count("/") == 1)
