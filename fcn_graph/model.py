"""FCN on a VGG19 body, in tf.compat.v1, NHWC: FCN.tensorflow's graph and the paper's.

One builder, `fcn`, shares the VGG19 body (a table and one loop) and writes
each head out line by line. `architecture` picks the head:

"legacy" (the default) reproduces FCN.tensorflow layer by layer, quirks
included, with its variable names, so that its checkpoints restore unchanged:

- pool1..pool4 are *average* pools; pool5 is a max pool of conv5_3 taken
  before its ReLU; conv5_4 has variables but feeds nothing;
- the first two upsampling steps produce pool4/pool3-shaped *features*
  (512 and 256 channels) that are added to pool4/pool3, not class scores;
- the upsampling filters are learned from a truncated-normal start and carry
  biases.

"paper" is FCN-32s/16s/8s of Long, Shelhamer and Darrell (`skips`): max
pooling throughout, pool5 after relu5_4, conv6/conv7 (the convolutionalised
fc6/fc7), class scores from pool5 (score_fr), pool4 (score_pool4) and pool3
(score_pool3), fused after each upsampling; the upsampling filters have no
bias, start as bilinear interpolation and are frozen unless
`train_upsampling`. Its variables, under scope "inference":

    conv1_1_w ... conv5_4_b            the VGG19 body, as in the legacy graph
    W6 [7, 7, C5, F], b6 [F]           conv6 (fc6)
    W7 [1, 1, F, F], b7 [F]            conv7 (fc7)
    score_fr_w [1, 1, F, K], score_fr_b [K]
    32s: upscore32_w [64, 64, K, K]
    16s: upscore2_w [4, 4, K, K], score_pool4_w [1, 1, C4, K], score_pool4_b [K],
         upscore16_w [32, 32, K, K]
    8s:  upscore2_w, score_pool4_w, score_pool4_b, upscore_pool4_w [4, 4, K, K],
         score_pool3_w [1, 1, C3, K], score_pool3_b [K], upscore8_w [16, 16, K, K]

Any input size works for every head. Every conv is stride 1 `SAME` and every
pool 2x2/2 `SAME`, so pool_k has ceil(H / 2^k) rows. Each transposed
convolution (`upsample`) takes its output shape from `tf.shape` of the tensor
it is fused with (pool4, pool3, then the input), and SAME padding makes
ceil(out / stride) == in hold for those shapes (ceil(ceil(H/16)/2) =
ceil(H/32)), so the logits always have the input's height and width.
"""

from collections import OrderedDict

import numpy as np
import tensorflow as tf

from fcn_graph.constants import ARCHITECTURES, SKIPS, TRAIN_KEEP_PROB, VGG_MEAN_RGB  # noqa: F401
from fcn_graph.spec import (  # noqa: F401  (the model description, importable from here too)
    FC_WIDTH,
    VGG19_BODY,
    VGG19_CONVS,
    VGG19_WIDTHS,
    ModelSpec,
    scaled_vgg_widths,
)
from fcn_graph.spec import check_variant as _check_variant

tf1 = tf.compat.v1

SCOPE = "inference"

# Head variable names of FCN.tensorflow, in creation order.
HEAD_VARIABLES = ("W6", "b6", "W7", "b7", "W8", "b8",
                  "W_t1", "b_t1", "W_t2", "b_t2", "W_t3", "b_t3")


def variable_shapes(num_classes, *, vgg_widths=None, fc_width=FC_WIDTH, architecture="legacy",
                    skips="8s"):
    """name (without scope) -> shape of every model variable, in creation order."""
    _check_variant(architecture, skips)
    widths = VGG19_WIDTHS if vgg_widths is None else vgg_widths
    shapes = OrderedDict()
    cin = 3
    for name in VGG19_CONVS:
        shapes[name + "_w"] = (3, 3, cin, widths[name])
        shapes[name + "_b"] = (widths[name],)
        cin = widths[name]
    k = num_classes
    c5, c4, c3 = widths["conv5_3"], widths["conv4_4"], widths["conv3_4"]
    if architecture == "legacy":
        shapes.update([
            ("W6", (7, 7, c5, fc_width)), ("b6", (fc_width,)),
            ("W7", (1, 1, fc_width, fc_width)), ("b7", (fc_width,)),
            ("W8", (1, 1, fc_width, k)), ("b8", (k,)),
            ("W_t1", (4, 4, c4, k)), ("b_t1", (c4,)),
            ("W_t2", (4, 4, c3, c4)), ("b_t2", (c3,)),
            ("W_t3", (16, 16, k, c3)), ("b_t3", (k,)),
        ])
        return shapes
    shapes.update([
        ("W6", (7, 7, widths["conv5_4"], fc_width)), ("b6", (fc_width,)),
        ("W7", (1, 1, fc_width, fc_width)), ("b7", (fc_width,)),
        ("score_fr_w", (1, 1, fc_width, k)), ("score_fr_b", (k,)),
    ])
    if skips == "32s":
        shapes["upscore32_w"] = (64, 64, k, k)
        return shapes
    shapes.update([("upscore2_w", (4, 4, k, k)),
                   ("score_pool4_w", (1, 1, c4, k)), ("score_pool4_b", (k,))])
    if skips == "16s":
        shapes["upscore16_w"] = (32, 32, k, k)
        return shapes
    shapes.update([("upscore_pool4_w", (4, 4, k, k)),
                   ("score_pool3_w", (1, 1, c3, k)), ("score_pool3_b", (k,)),
                   ("upscore8_w", (16, 16, k, k))])
    return shapes


def build(images, spec, *, keep_prob=1.0, mean_pixel=None):
    """Build the graph a `ModelSpec` describes; returns (logits, prediction, end_points).

    images: float32 [N, H, W, 3] RGB, 0..255, whatever the weights expect: for
    BGR weights (spec.channel_order "bgr") the channels are reversed here.
    Dispatches on spec.architecture and spec.skips. The mean pixel is
    `spec.resolved_mean(mean_pixel)`.
    """
    if spec.channel_order == "bgr":
        images = tf.reverse(images, axis=[3])                         # [N, H, W, 3] BGR
    mean = spec.resolved_mean(mean_pixel)
    return fcn(images, spec.num_classes, architecture=spec.architecture, skips=spec.skips,
               vgg_widths=spec.widths, fc_width=spec.fc_width, keep_prob=keep_prob,
               mean_pixel=mean, train_upsampling=spec.train_upsampling)


def bilinear_kernel(size, channels):
    """Transposed-conv filter [size, size, channels, channels] (float32) that
    upsamples each channel by bilinear interpolation, as in the FCN reference
    code: factor = (size + 1) // 2, center = factor - 1 for odd sizes and
    factor - 0.5 for even ones, weight(i, j) = (1 - |i - center| / factor) *
    (1 - |j - center| / factor), on the channel diagonal (zero elsewhere).
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(size) - center) / factor   # [size]
    kernel = np.zeros((size, size, channels, channels), dtype=np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(taps, taps)[:, :, None]
    return kernel


def _vgg_initializer():
    # Documented random start for a body without a `.mat`: He-normal (fan-in),
    # truncated at two standard deviations.
    return tf1.initializers.variance_scaling(scale=2.0, mode="fan_in",
                                             distribution="truncated_normal")


def _head_initializer():
    # FCN.tensorflow's heads: truncated normal, stddev 0.02.
    return tf1.initializers.truncated_normal(stddev=0.02)


def _bilinear_initializer(size):
    # Built in the graph from the [size, size] taps times an identity, so that
    # a 64x64xKxK filter never becomes a graph constant.
    taps = bilinear_kernel(size, 1)[:, :, 0, 0]

    def initializer(shape, dtype=tf.float32, partition_info=None):
        assert tuple(shape[:2]) == (size, size) and shape[2] == shape[3], shape
        return tf.constant(taps, dtype)[:, :, None, None] * tf.eye(int(shape[2]), dtype=dtype)

    return initializer


def _variable(name, shape, initializer, trainable=True):
    return tf1.get_variable(name, shape=shape, dtype=tf.float32, initializer=initializer,
                            trainable=trainable)


def conv2d(net, kernel, bias):
    """Stride-1 SAME convolution plus bias (the same spatial size out)."""
    net = tf.nn.conv2d(net, kernel, strides=[1, 1, 1, 1], padding="SAME")
    return tf.nn.bias_add(net, bias)


# Rows per matrix product in `dense_conv2d`. TensorFlow's CPU matmul with a
# 25088 x 4096 (conv6) or 4096 x 4096 (conv7) matrix runs at ~140 GFLOP/s up to
# ~100 rows and at ~80 from 128 rows on (AVX2, 2 cores; docs/performance.md),
# so a 512x512 image (256 rows) or a batch of eight 224x224 (392) goes through
# in blocks of at most this many rows.
MATMUL_ROW_BLOCK = 100


def dense_conv2d(net, kernel, bias):
    """`conv2d` for an odd k x k kernel as a matrix product: the k x k patches
    of `net` (im2col; SAME pads (k - 1) / 2 on every side, as conv2d does for
    odd k) times the kernel as a [k*k*Cin, Cout] matrix, `MATMUL_ROW_BLOCK`
    rows at a time.

    conv6 and conv7 use it: with thousands of output channels TensorFlow's CPU
    convolution gradients run at a fifth of the matmul's speed (a training
    step at 224x224 spent 1.5 s of 4.3 in conv6 alone), and its forward pass
    slows down by half for large inputs, as the plain matmul does.
    """
    size, _, c_in, c_out = kernel.shape.as_list()
    shape = tf.shape(net)
    if size > 1:
        net = tf.image.extract_patches(net, sizes=[1, size, size, 1], strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding="SAME")  # [N, H, W, k*k*Cin]
    rows = tf.reshape(net, [-1, size * size * c_in])                      # [N*H*W, k*k*Cin]
    out = matmul_in_row_blocks(rows, tf.reshape(kernel, [size * size * c_in, c_out]))
    out = tf.nn.bias_add(out, bias)                                       # [N*H*W, Cout]
    return tf.reshape(out, tf.concat([shape[:3], [c_out]], axis=0))


def matmul_in_row_blocks(rows, matrix, block=MATMUL_ROW_BLOCK):
    """rows [M, K] @ matrix [K, N], computed in ceil(M / block) blocks of
    ceil(M / blocks) rows (the last one may be shorter), one after another.
    Its gradient is the plain product's (two matmuls over all rows)."""
    @tf.custom_gradient
    def product(rows, matrix):
        count = tf.shape(rows)[0]
        blocks = tf.maximum((count + block - 1) // block, 1)
        step = (count + blocks - 1) // blocks

        def body(i, outputs):
            return i + 1, outputs.write(i, tf.matmul(rows[i * step:(i + 1) * step], matrix))

        outputs = tf.TensorArray(rows.dtype, size=blocks, infer_shape=False,
                                 element_shape=tf.TensorShape([None, matrix.shape[1]]))
        _, outputs = tf.while_loop(lambda i, _: i < blocks, body, [0, outputs],
                                   parallel_iterations=1)

        def grad(upstream):
            return (tf.matmul(upstream, matrix, transpose_b=True),
                    tf.matmul(rows, upstream, transpose_a=True))
        return outputs.concat(), grad
    return product(rows, matrix)


def pool2x2(net, method):
    """2x2 stride-2 SAME pooling: [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C].

    Average pooling divides by the number of real (unpadded) cells.
    """
    pool = tf.nn.avg_pool2d if method == "avg" else tf.nn.max_pool2d
    return pool(net, ksize=2, strides=2, padding="SAME")


def upsample(net, kernel, bias, output_shape, stride):
    """Transposed convolution to a shape computed at run time (plus `bias`
    unless it is None).

    Rule: `output_shape` is [N, H', W', C'] with ceil(H'/stride) equal to the
    input's height (and likewise for width); SAME padding then crops the
    (in - 1) * stride + k output rows to exactly H', dropping pad // 2 rows at
    the top and the rest at the bottom, where pad = (in - 1) * stride + k - H'.
    `kernel` is [k, k, C', C_in], as tf.nn.conv2d_transpose wants.

    Computed as one dense convolution that yields all stride x stride output
    phases at once, then depth_to_space and the crop (`upsample_by_phases`);
    the result equals tf.nn.conv2d_transpose's (`upsample_transposed`) up to
    float rounding, and takes about half its time on CPU
    (docs/performance.md).
    """
    return upsample_by_phases(net, kernel, bias, output_shape, stride)


def upsample_transposed(net, kernel, bias, output_shape, stride):
    """`upsample` as a plain tf.nn.conv2d_transpose (the reference formulation)."""
    net = tf.nn.conv2d_transpose(net, kernel, output_shape, strides=[1, stride, stride, 1],
                                 padding="SAME")
    return net if bias is None else tf.nn.bias_add(net, bias)


def _shape_with_channels(tensor, channels):
    """[N, H, W] of `tensor` at run time, with `channels` as the last dimension."""
    shape = tf.shape(tensor)
    return tf.stack([shape[0], shape[1], shape[2], channels])


def phase_kernel(kernel, stride):
    """[k, k, C', C_in] transposed-conv kernel -> [T, T, C_in, s*s*C'] conv kernel,
    T = ceil(k / s), for `upsample_by_phases`.

    Output row o of a stride-s transposed conv, written as o + pad = q*s + r
    (0 <= r < s), sums x[q - t] * w[r + t*s] over t = 0 .. T-1 (taps past k
    are zero). So phase r of block q is a T-tap correlation over the input
    padded by T - 1, with taps w[r + (T-1-j)*s] for j = 0 .. T-1; output
    channel (r_y*s + r_x)*C' + c, the order depth_to_space reads.
    """
    k_h, k_w, c_out, c_in = kernel.shape.as_list()
    assert k_h == k_w, f"square kernels only, got {k_h}x{k_w}"
    taps = -(-k_h // stride)
    extra = taps * stride - k_h
    kernel = tf.pad(kernel, [[0, extra], [0, extra], [0, 0], [0, 0]])
    kernel = tf.reshape(kernel, [taps, stride, taps, stride, c_out, c_in])  # [t_y, r_y, t_x, r_x, o, i]
    kernel = tf.reverse(kernel, axis=[0, 2])                                # tap j = T-1-t
    kernel = tf.transpose(kernel, [0, 2, 5, 1, 3, 4])                       # [j_y, j_x, i, r_y, r_x, o]
    return tf.reshape(kernel, [taps, taps, c_in, stride * stride * c_out])


def upsample_by_phases(net, kernel, bias, output_shape, stride):
    """`upsample` as conv (all phases) + depth_to_space + crop; same rule and
    result as `upsample_transposed`."""
    k = kernel.shape.as_list()[0]
    taps = -(-k // stride)
    in_shape = tf.shape(net)
    net = tf.pad(net, [[0, 0], [taps - 1, taps - 1], [taps - 1, taps - 1], [0, 0]])
    net = tf.nn.conv2d(net, phase_kernel(kernel, stride), strides=[1, 1, 1, 1],
                       padding="VALID")                         # [N, h+T-1, w+T-1, s*s*C']
    if bias is not None:
        net = tf.nn.bias_add(net, tf.tile(bias, [stride * stride]))
    net = tf.nn.depth_to_space(net, stride)                     # [N, (h+T-1)*s, (w+T-1)*s, C']
    output_shape = tf.convert_to_tensor(output_shape)
    out_h, out_w = output_shape[1], output_shape[2]
    # SAME padding's leading crop: max((in - 1) * s + k - out, 0) // 2
    top = tf.maximum((in_shape[1] - 1) * stride + k - out_h, 0) // 2
    left = tf.maximum((in_shape[2] - 1) * stride + k - out_w, 0) // 2
    return tf.slice(net, tf.stack([0, top, left, 0]), tf.stack([-1, out_h, out_w, -1]))


def vgg19_body(net, vgg_widths, *, pool_method="avg"):
    """VGG19 convs, ReLUs and pools 1-4 from the table; every output goes into
    end_points[name]. The input is mean-subtracted [N, H, W, 3]."""
    end_points = OrderedDict()
    cin = net.shape[-1]
    for name, kind in VGG19_BODY:
        if kind == "conv":
            cout = vgg_widths[name]
            kernel = _variable(name + "_w", (3, 3, cin, cout), _vgg_initializer())
            bias = _variable(name + "_b", (cout,), tf1.zeros_initializer())
            net = conv2d(net, kernel, bias)
            cin = cout
        elif kind == "relu":
            net = tf.nn.relu(net, name=name)
        else:
            net = pool2x2(net, pool_method)
        end_points[name] = net
    return end_points


def fcn(images, num_classes, *, architecture="legacy", skips="8s", vgg_widths=None,
        fc_width=FC_WIDTH, keep_prob=1.0, mean_pixel=VGG_MEAN_RGB, train_upsampling=False):
    """FCN on VGG19: FCN.tensorflow's FCN-8s ("legacy") or the paper's
    FCN-32s/16s/8s ("paper", `skips`).

    images: float32 [N, H, W, 3] in the network's channel order, 0..255; any
        N, H, W >= 1.
    num_classes: K, the number of output classes.
    vgg_widths: conv name -> output channels (default: VGG19's).
    fc_width: channels of conv6 and conv7 (4096 in VGG19).
    keep_prob: dropout keep probability after conv6 and conv7 (a float or a
        scalar tensor; 1.0 for inference, TRAIN_KEEP_PROB for training).
    mean_pixel: mean subtracted from the images inside the graph.
    train_upsampling: paper only: make the bilinear upsampling filters trainable.

    Variables are created (or reused, under AUTO_REUSE) in variable scope
    "inference" (names in the module docstring); calling this twice in one
    graph shares them.

    Returns (logits, prediction, end_points):
      logits: float32 [N, H, W, K];
      prediction: int64 [N, H, W], the argmax over K;
      end_points: name -> tensor for every layer: conv1_1 ... relu5_4,
        pool1 [N, H/2, W/2, C1] ... pool4 [N, H/16, W/16, C4] (ceil everywhere),
        pool5 [N, H/32, W/32, C5], conv6, conv7 [N, H/32, W/32, F], then
        legacy: conv8 [N, H/32, W/32, K], conv_t1 and fuse_1 [N, H/16, W/16, C4],
          conv_t2 and fuse_2 [N, H/8, W/8, C3], conv_t3 [N, H, W, K];
        paper: score_fr [N, H/32, W/32, K], then
          32s: upscore32 [N, H, W, K];
          16s: upscore2, score_pool4, fuse_pool4 [N, H/16, W/16, K], upscore16;
          8s: those, then upscore_pool4, score_pool3, fuse_pool3
            [N, H/8, W/8, K], upscore8 [N, H, W, K];
        and prediction.
    """
    _check_variant(architecture, skips)
    widths = VGG19_WIDTHS if vgg_widths is None else vgg_widths
    with tf1.variable_scope(SCOPE, reuse=tf1.AUTO_REUSE):
        mean = tf.constant(list(mean_pixel), dtype=tf.float32, name="mean_pixel")
        net = images - mean                                           # [N, H, W, 3]
        pool_method = "avg" if architecture == "legacy" else "max"
        end_points = vgg19_body(net, widths, pool_method=pool_method)
        if architecture == "legacy":
            net, last = _legacy_head(images, end_points, num_classes, widths, fc_width,
                                     keep_prob)
        else:
            net, last = _paper_head(images, end_points, num_classes, widths, fc_width,
                                    keep_prob, skips, train_upsampling)
        logits = tf.identity(net, name="logits")                      # [N, H, W, K]
        end_points[last] = logits
        prediction = tf.argmax(logits, axis=3, name="prediction")     # [N, H, W]
        end_points["prediction"] = prediction
    return logits, prediction, end_points


def _conv6_conv7(net, end_points, fc_width, keep_prob, initializer):
    """The convolutionalised fc6 (7x7) and fc7 (1x1), each with ReLU and dropout:
    [N, h, w, C5] -> [N, h, w, F]. Both heads share them; only the start differs."""
    w6 = _variable("W6", (7, 7, net.shape[-1], fc_width), initializer)
    b6 = _variable("b6", (fc_width,), tf1.zeros_initializer())
    net = tf.nn.relu(dense_conv2d(net, w6, b6), name="relu6")
    net = tf.nn.dropout(net, rate=1.0 - keep_prob)
    end_points["conv6"] = net

    w7 = _variable("W7", (1, 1, fc_width, fc_width), initializer)
    b7 = _variable("b7", (fc_width,), tf1.zeros_initializer())
    net = tf.nn.relu(dense_conv2d(net, w7, b7), name="relu7")
    net = tf.nn.dropout(net, rate=1.0 - keep_prob)
    end_points["conv7"] = net
    return net


def _legacy_head(images, end_points, num_classes, widths, fc_width, keep_prob):
    """FCN.tensorflow's head; returns (conv_t3 [N, H, W, K], "conv_t3")."""
    pool3, pool4 = end_points["pool3"], end_points["pool4"]
    c3, c4 = widths["conv3_4"], widths["conv4_4"]

    net = pool2x2(end_points["conv5_3"], "max")                       # [N, H/32, W/32, C5]
    end_points["pool5"] = net

    net = _conv6_conv7(net, end_points, fc_width, keep_prob,
                       _head_initializer())                           # [N, H/32, W/32, F]

    w8 = _variable("W8", (1, 1, fc_width, num_classes), _head_initializer())
    b8 = _variable("b8", (num_classes,), tf1.zeros_initializer())
    net = conv2d(net, w8, b8)                                         # [N, H/32, W/32, K]
    end_points["conv8"] = net

    w_t1 = _variable("W_t1", (4, 4, c4, num_classes), _head_initializer())
    b_t1 = _variable("b_t1", (c4,), tf1.zeros_initializer())
    net = upsample(net, w_t1, b_t1, tf.shape(pool4), 2)               # [N, H/16, W/16, C4]
    end_points["conv_t1"] = net
    net = tf.add(net, pool4, name="fuse_1")
    end_points["fuse_1"] = net

    w_t2 = _variable("W_t2", (4, 4, c3, c4), _head_initializer())
    b_t2 = _variable("b_t2", (c3,), tf1.zeros_initializer())
    net = upsample(net, w_t2, b_t2, tf.shape(pool3), 2)               # [N, H/8, W/8, C3]
    end_points["conv_t2"] = net
    net = tf.add(net, pool3, name="fuse_2")
    end_points["fuse_2"] = net

    shape = tf.shape(images)
    w_t3 = _variable("W_t3", (16, 16, num_classes, c3), _head_initializer())
    b_t3 = _variable("b_t3", (num_classes,), tf1.zeros_initializer())
    net = upsample(net, w_t3, b_t3, tf.stack([shape[0], shape[1], shape[2], num_classes]),
                   8)                                                 # [N, H, W, K]
    return net, "conv_t3"


def _paper_head(images, end_points, num_classes, widths, fc_width, keep_prob, skips,
                train_upsampling):
    """The paper's FCN-32s/16s/8s head; returns (logits [N, H, W, K], end-point name).

    Score layers start at zero as in the reference code; conv6/conv7 start
    He-normal here and take fc6/fc7 from the weights when converted.
    """
    k = num_classes

    def score(net, name, cin):                                        # 1x1 conv to K
        w = _variable(name + "_w", (1, 1, cin, k), tf1.zeros_initializer())
        b = _variable(name + "_b", (k,), tf1.zeros_initializer())
        return conv2d(net, w, b)

    def upsampling_filter(name, size):                                # bilinear, no bias
        return _variable(name + "_w", (size, size, k, k), _bilinear_initializer(size),
                         trainable=train_upsampling)

    net = pool2x2(end_points["relu5_4"], "max")                       # [N, H/32, W/32, C5]
    end_points["pool5"] = net

    net = _conv6_conv7(net, end_points, fc_width, keep_prob,
                       _vgg_initializer())                            # [N, H/32, W/32, F]

    net = score(net, "score_fr", fc_width)                            # [N, H/32, W/32, K]
    end_points["score_fr"] = net
    output_shape = _shape_with_channels(images, k)                    # [N, H, W, K]

    if skips == "32s":
        net = upsample(net, upsampling_filter("upscore32", 64), None, output_shape,
                       32)                                            # [N, H, W, K]
        return net, "upscore32"

    pool4 = end_points["pool4"]
    net = upsample(net, upsampling_filter("upscore2", 4), None,
                   _shape_with_channels(pool4, k), 2)                 # [N, H/16, W/16, K]
    end_points["upscore2"] = net
    end_points["score_pool4"] = score(pool4, "score_pool4", widths["conv4_4"])
    net = tf.add(net, end_points["score_pool4"], name="fuse_pool4")  # [N, H/16, W/16, K]
    end_points["fuse_pool4"] = net

    if skips == "16s":
        net = upsample(net, upsampling_filter("upscore16", 32), None, output_shape,
                       16)                                            # [N, H, W, K]
        return net, "upscore16"

    pool3 = end_points["pool3"]
    net = upsample(net, upsampling_filter("upscore_pool4", 4), None,
                   _shape_with_channels(pool3, k), 2)                 # [N, H/8, W/8, K]
    end_points["upscore_pool4"] = net
    end_points["score_pool3"] = score(pool3, "score_pool3", widths["conv3_4"])
    net = tf.add(net, end_points["score_pool3"], name="fuse_pool3")  # [N, H/8, W/8, K]
    end_points["fuse_pool3"] = net

    net = upsample(net, upsampling_filter("upscore8", 16), None, output_shape,
                   8)                                                 # [N, H, W, K]
    return net, "upscore8"


def detect_architecture(names, scope=SCOPE):
    """(architecture, skips) from checkpoint or graph variable names, or None
    when they are neither head."""
    names = set(names)
    if f"{scope}/W8" in names or f"{scope}/W_t3" in names:
        return "legacy", "8s"
    if f"{scope}/score_fr_w" in names:
        if f"{scope}/score_pool3_w" in names or f"{scope}/upscore8_w" in names:
            return "paper", "8s"
        if f"{scope}/score_pool4_w" in names or f"{scope}/upscore16_w" in names:
            return "paper", "16s"
        return "paper", "32s"
    return None


def model_variables(graph=None, scope=SCOPE):
    """The model's global variables (not optimizer slots or the global step),
    keyed by their checkpoint names."""
    graph = graph or tf1.get_default_graph()
    variables = graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, scope=scope + "/")
    # Optimizer slots live one level deeper ("inference/W6/Adam").
    return OrderedDict((v.op.name, v) for v in variables if v.op.name.count("/") == 1)
