"""The FCN-8s graph on a VGG19 body, in tf.compat.v1, NHWC.

The default graph reproduces FCN.tensorflow layer by layer, quirks included,
with its variable names, so that its checkpoints restore unchanged:

- pool1..pool4 are *average* pools; pool5 is a max pool of conv5_3 taken
  before its ReLU; conv5_4 has variables but feeds nothing;
- the first two upsampling steps produce pool4/pool3-shaped *features*
  (512 and 256 channels) that are added to pool4/pool3, not class scores;
- the upsampling filters are learned from a truncated-normal start and carry
  biases.

Any input size works. Every conv is stride 1 `SAME` and every pool 2x2/2
`SAME`, so pool_k has ceil(H / 2^k) rows. Each transposed convolution takes
its output shape from `tf.shape` of the tensor it is fused with (pool4, pool3,
then the input), and SAME padding makes ceil(out / stride) == in hold for
those shapes, so the logits always have the input's height and width.
"""

import dataclasses
from collections import OrderedDict

import tensorflow as tf

from fcn_graph.constants import VGG_MEAN_RGB

tf1 = tf.compat.v1

# The VGG19 body as a table: one row per layer, built by one loop.
VGG19_BODY = (
    ("conv1_1", "conv"), ("relu1_1", "relu"), ("conv1_2", "conv"), ("relu1_2", "relu"),
    ("pool1", "pool"),  # 1/2
    ("conv2_1", "conv"), ("relu2_1", "relu"), ("conv2_2", "conv"), ("relu2_2", "relu"),
    ("pool2", "pool"),  # 1/4
    ("conv3_1", "conv"), ("relu3_1", "relu"), ("conv3_2", "conv"), ("relu3_2", "relu"),
    ("conv3_3", "conv"), ("relu3_3", "relu"), ("conv3_4", "conv"), ("relu3_4", "relu"),
    ("pool3", "pool"),  # 1/8
    ("conv4_1", "conv"), ("relu4_1", "relu"), ("conv4_2", "conv"), ("relu4_2", "relu"),
    ("conv4_3", "conv"), ("relu4_3", "relu"), ("conv4_4", "conv"), ("relu4_4", "relu"),
    ("pool4", "pool"),  # 1/16
    ("conv5_1", "conv"), ("relu5_1", "relu"), ("conv5_2", "conv"), ("relu5_2", "relu"),
    ("conv5_3", "conv"), ("relu5_3", "relu"), ("conv5_4", "conv"), ("relu5_4", "relu"),
)
VGG19_CONVS = tuple(name for name, kind in VGG19_BODY if kind == "conv")

# Output channels of the real VGG19; a `.mat` or a checkpoint overrides them.
VGG19_WIDTHS = OrderedDict(
    (name, {"1": 64, "2": 128, "3": 256, "4": 512, "5": 512}[name[4]]) for name in VGG19_CONVS)
FC_WIDTH = 4096
SCOPE = "inference"

# Head variable names of FCN.tensorflow, in creation order.
HEAD_VARIABLES = ("W6", "b6", "W7", "b7", "W8", "b8",
                  "W_t1", "b_t1", "W_t2", "b_t2", "W_t3", "b_t3")


def scaled_vgg_widths(multiplier):
    """VGG19 widths times `multiplier` (at least 1 channel each), for fast
    experiments with a randomly initialised body."""
    return OrderedDict((name, max(1, int(round(width * multiplier))))
                       for name, width in VGG19_WIDTHS.items())


def variable_shapes(num_classes, *, vgg_widths=None, fc_width=FC_WIDTH):
    """name (without scope) -> shape of every model variable, in creation order."""
    widths = VGG19_WIDTHS if vgg_widths is None else vgg_widths
    shapes = OrderedDict()
    cin = 3
    for name in VGG19_CONVS:
        shapes[name + "_w"] = (3, 3, cin, widths[name])
        shapes[name + "_b"] = (widths[name],)
        cin = widths[name]
    c5, c4, c3 = widths["conv5_3"], widths["conv4_4"], widths["conv3_4"]
    shapes.update([
        ("W6", (7, 7, c5, fc_width)), ("b6", (fc_width,)),
        ("W7", (1, 1, fc_width, fc_width)), ("b7", (fc_width,)),
        ("W8", (1, 1, fc_width, num_classes)), ("b8", (num_classes,)),
        ("W_t1", (4, 4, c4, num_classes)), ("b_t1", (c4,)),
        ("W_t2", (4, 4, c3, c4)), ("b_t2", (c3,)),
        ("W_t3", (16, 16, num_classes, c3)), ("b_t3", (num_classes,)),
    ])
    return shapes


@dataclasses.dataclass
class ModelSpec:
    """Everything needed to rebuild a model's graph; stored beside checkpoints.

    vgg_widths: output channels of the 16 VGG convs, in VGG19_CONVS order.
    mean_pixel: RGB mean subtracted inside the graph, or None if unknown.
    channel_order: "rgb", or "bgr" for weights that expect BGR input.
    """

    num_classes: int
    fc_width: int = FC_WIDTH
    vgg_widths: tuple = tuple(VGG19_WIDTHS.values())
    mean_pixel: tuple = None
    architecture: str = "legacy"
    channel_order: str = "rgb"

    @property
    def widths(self):
        return OrderedDict(zip(VGG19_CONVS, self.vgg_widths))


def build(images, spec, *, keep_prob=1.0, mean_pixel=None):
    """Build the graph a `ModelSpec` describes; returns (logits, prediction, end_points).

    The mean pixel is the spec's, else `mean_pixel`, else the VGG mean.
    """
    if spec.architecture != "legacy":
        raise ValueError(f"unknown architecture {spec.architecture!r}; expected 'legacy'")
    mean = spec.mean_pixel or mean_pixel or VGG_MEAN_RGB
    return fcn8s(images, spec.num_classes, vgg_widths=spec.widths, fc_width=spec.fc_width,
                 keep_prob=keep_prob, mean_pixel=mean)


def _vgg_initializer():
    # Documented random start for a body without a `.mat`: He-normal (fan-in),
    # truncated at two standard deviations.
    return tf1.initializers.variance_scaling(scale=2.0, mode="fan_in",
                                             distribution="truncated_normal")


def _head_initializer():
    # FCN.tensorflow's heads: truncated normal, stddev 0.02.
    return tf1.initializers.truncated_normal(stddev=0.02)


def _variable(name, shape, initializer):
    return tf1.get_variable(name, shape=shape, dtype=tf.float32, initializer=initializer)


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
    """Transposed convolution to a shape computed at run time.

    Rule: `output_shape` is [N, H', W', C'] with ceil(H'/stride) equal to the
    input's height (and likewise for width); SAME padding then crops the
    (in - 1) * stride + k output rows to exactly H', dropping pad // 2 rows at
    the top and the rest at the bottom, where pad = (in - 1) * stride + k - H'.
    `kernel` is [k, k, C', C_in], as tf.nn.conv2d_transpose wants.
    """
    net = tf.nn.conv2d_transpose(net, kernel, output_shape, strides=[1, stride, stride, 1],
                                 padding="SAME")
    return tf.nn.bias_add(net, bias)


def vgg19_body(net, vgg_widths, *, pool_method="avg"):
    """VGG19 convs, ReLUs and pools 1-4 from the table; every output goes into
    end_points[name]. The input is mean-subtracted RGB [N, H, W, 3]."""
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


def fcn8s(images, num_classes, *, vgg_widths=None, fc_width=FC_WIDTH, keep_prob=1.0,
          mean_pixel=VGG_MEAN_RGB):
    """FCN-8s as FCN.tensorflow builds it.

    images: float32 [N, H, W, 3], RGB, 0..255; any N, H, W >= 1.
    num_classes: K, the number of output classes.
    vgg_widths: conv name -> output channels (default: VGG19's).
    fc_width: channels of conv6 and conv7 (4096 in VGG19).
    keep_prob: dropout keep probability after conv6 and conv7 (a float or a
        scalar tensor; 1.0 for inference).
    mean_pixel: RGB mean subtracted from the images inside the graph.

    Variables are created (or reused, under AUTO_REUSE) in variable scope
    "inference" with FCN.tensorflow's names; calling this twice in one graph
    shares them.

    Returns (logits, prediction, end_points):
      logits: float32 [N, H, W, K] (conv_t3);
      prediction: int64 [N, H, W], the argmax over K;
      end_points: name -> tensor for every layer: conv1_1 ... relu5_4,
        pool1 [N, H/2, W/2, C1] ... pool4 [N, H/16, W/16, C4] (ceil everywhere),
        pool5 [N, H/32, W/32, C5], conv6, conv7, conv8 [N, H/32, W/32, K],
        conv_t1 and fuse_1 [N, H/16, W/16, C4], conv_t2 and fuse_2
        [N, H/8, W/8, C3], conv_t3 [N, H, W, K], prediction.
    """
    widths = VGG19_WIDTHS if vgg_widths is None else vgg_widths
    with tf1.variable_scope(SCOPE, reuse=tf1.AUTO_REUSE):
        mean = tf.constant(list(mean_pixel), dtype=tf.float32, name="mean_pixel")
        net = images - mean                                           # [N, H, W, 3]
        end_points = vgg19_body(net, widths, pool_method="avg")
        pool3, pool4 = end_points["pool3"], end_points["pool4"]
        c3, c4 = widths["conv3_4"], widths["conv4_4"]

        net = pool2x2(end_points["conv5_3"], "max")                   # [N, H/32, W/32, C5]
        end_points["pool5"] = net

        w6 = _variable("W6", (7, 7, widths["conv5_3"], fc_width), _head_initializer())
        b6 = _variable("b6", (fc_width,), tf1.zeros_initializer())
        net = tf.nn.relu(conv2d(net, w6, b6), name="relu6")           # [N, H/32, W/32, F]
        net = tf.nn.dropout(net, rate=1.0 - keep_prob)
        end_points["conv6"] = net

        w7 = _variable("W7", (1, 1, fc_width, fc_width), _head_initializer())
        b7 = _variable("b7", (fc_width,), tf1.zeros_initializer())
        net = tf.nn.relu(conv2d(net, w7, b7), name="relu7")           # [N, H/32, W/32, F]
        net = tf.nn.dropout(net, rate=1.0 - keep_prob)
        end_points["conv7"] = net

        w8 = _variable("W8", (1, 1, fc_width, num_classes), _head_initializer())
        b8 = _variable("b8", (num_classes,), tf1.zeros_initializer())
        net = conv2d(net, w8, b8)                                     # [N, H/32, W/32, K]
        end_points["conv8"] = net

        w_t1 = _variable("W_t1", (4, 4, c4, num_classes), _head_initializer())
        b_t1 = _variable("b_t1", (c4,), tf1.zeros_initializer())
        net = upsample(net, w_t1, b_t1, tf.shape(pool4), 2)           # [N, H/16, W/16, C4]
        end_points["conv_t1"] = net
        net = tf.add(net, pool4, name="fuse_1")
        end_points["fuse_1"] = net

        w_t2 = _variable("W_t2", (4, 4, c3, c4), _head_initializer())
        b_t2 = _variable("b_t2", (c3,), tf1.zeros_initializer())
        net = upsample(net, w_t2, b_t2, tf.shape(pool3), 2)           # [N, H/8, W/8, C3]
        end_points["conv_t2"] = net
        net = tf.add(net, pool3, name="fuse_2")
        end_points["fuse_2"] = net

        shape = tf.shape(images)
        w_t3 = _variable("W_t3", (16, 16, num_classes, c3), _head_initializer())
        b_t3 = _variable("b_t3", (num_classes,), tf1.zeros_initializer())
        logits = upsample(net, w_t3, b_t3, tf.stack([shape[0], shape[1], shape[2], num_classes]),
                          8)                                          # [N, H, W, K]
        logits = tf.identity(logits, name="logits")
        end_points["conv_t3"] = logits

        prediction = tf.argmax(logits, axis=3, name="prediction")     # [N, H, W]
        end_points["prediction"] = prediction
    return logits, prediction, end_points


def model_variables(graph=None, scope=SCOPE):
    """The model's global variables (not optimizer slots or the global step),
    keyed by their checkpoint names."""
    graph = graph or tf1.get_default_graph()
    variables = graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, scope=scope + "/")
    # Optimizer slots live one level deeper ("inference/W6/Adam").
    return OrderedDict((v.op.name, v) for v in variables if v.op.name.count("/") == 1)
