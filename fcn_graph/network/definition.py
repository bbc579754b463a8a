"""The FCN on a VGG19 or VGG16 body, written once, NHWC: FCN.tensorflow's graph and the paper's.

The network is written once, as functions of a small set of layer operations
(`Layers`: conv, fc, relu, dropout, pool, upsample, add): the VGG body is a
table (`spec.body`: VGG19_BODY or VGG16_BODY) and one loop (`vgg_body`), each
head is written out line by line
(`legacy_fcn`, `paper_fcn`). Every form of the model is that definition run
against one implementation of the operations:

- `tf_layers.TFLayers`: the TensorFlow graph with the plain ops (the
  "reference" kernel set; `tf_layers.build`);
- `cpu_layers.CpuLayers`: the same graph with faster CPU forms of conv6/conv7
  and of the upsampling (the "cpu" kernel set);
- `onnx_layers.OnnxLayers`: the ONNX model; `flops.MacCounter`: the FLOP count;
  `ShapeLayers` (below): the variable shapes and the layer list of the profile.

This module imports neither TensorFlow nor anything that knows the machine.

`architecture` picks the head:

"legacy" (the default) reproduces FCN.tensorflow layer by layer, quirks
included, with its variable names, so that its checkpoints restore unchanged:

- pool1..pool4 are *average* pools; pool5 is a max pool of conv5_3 taken
  before its ReLU (FCN.tensorflow reads conv5_3 by name); a conv after it
  (VGG19's conv5_4) has variables but nothing reads it, so it is not
  computed. On VGG16, conv5_3 ends block 5: pool5 is the block's last conv
  before its ReLU and no conv is left unused;
- the first two upsampling steps produce pool4/pool3-shaped *features*
  (512 and 256 channels) that are added to pool4/pool3, not class scores;
- the upsampling filters are learned from a truncated-normal start and carry
  biases.

"paper" is FCN-32s/16s/8s of Long, Shelhamer and Darrell (`skips`): max
pooling throughout, pool5 after the ReLU of block 5's last conv (relu5_4 on
VGG19, relu5_3 on VGG16: the paper's own network), conv6/conv7 (the convolutionalised
fc6/fc7), class scores from pool5 (score_fr), pool4 (score_pool4) and pool3
(score_pool3), fused after each upsampling; the upsampling filters have no
bias, start as bilinear interpolation and are frozen unless
`train_upsampling`. Its variables, under scope "inference":

    conv1_1_w ... conv5_4_b            the VGG19 body (VGG16: ... conv5_3_b), as in
                                       the legacy graph
    W6 [7, 7, C5, F], b6 [F]           conv6 (fc6)
    W7 [1, 1, F, F], b7 [F]            conv7 (fc7)
    score_fr_w [1, 1, F, K], score_fr_b [K]
    32s: upscore32_w [64, 64, K, K]
    16s: upscore2_w [4, 4, K, K], score_pool4_w [1, 1, C4, K], score_pool4_b [K],
         upscore16_w [32, 32, K, K]
    8s:  upscore2_w, score_pool4_w, score_pool4_b, upscore_pool4_w [4, 4, K, K],
         score_pool3_w [1, 1, C3, K], score_pool3_b [K], upscore8_w [16, 16, K, K]

Any input size works for every head. Every conv is stride 1 `SAME` and every
pool 2x2/2 `SAME`, so pool_k has ceil(H / 2^k) rows. Each upsampling takes
its output height and width from the tensor it is fused with (pool4, pool3,
then the input), and SAME padding makes ceil(out / stride) == in hold for
those shapes (ceil(ceil(H/16)/2) = ceil(H/32)), so the logits always have the
input's height and width.
"""

from collections import OrderedDict

import numpy as np

from fcn_graph.core.constants import VGG_MEAN_RGB
from fcn_graph.network.spec import (
    DEFAULT_BACKBONE,
    FC_WIDTH,
    VGG_CONVS,
    ModelSpec,
    backbone_of,
    last_conv,
    ordered_widths,
)
from fcn_graph.network.spec import check_variant as _check_variant

SCOPE = "inference"

# Head variable names of FCN.tensorflow, in creation order.
HEAD_VARIABLES = ("W6", "b6", "W7", "b7", "W8", "b8",
                  "W_t1", "b_t1", "W_t2", "b_t2", "W_t3", "b_t3")

# How a variable starts (`TFLayers.variable` maps these to initializers):
VGG_INIT = "vgg"            # He-normal (fan-in), for a body without a `.mat`
HEAD_INIT = "head"          # FCN.tensorflow's heads: truncated normal, stddev 0.02
ZEROS = "zeros"             # biases, and the paper's score layers
BILINEAR = "bilinear"       # the paper's upsampling: `bilinear_kernel`


# FCN.tensorflow's pool5 reads this conv by name, before its ReLU.
LEGACY_POOL5_INPUT = "conv5_3"


def variable_shapes(num_classes, *, vgg_widths=None, fc_width=FC_WIDTH, architecture="legacy",
                    skips="8s", backbone=DEFAULT_BACKBONE):
    """name (without scope) -> shape of every model variable, in creation order.
    vgg_widths: conv name -> channels (default the backbone's real ones)."""
    _check_variant(architecture, skips)
    spec = ModelSpec(num_classes=num_classes, fc_width=fc_width,
                     vgg_widths=ordered_widths(vgg_widths, backbone),
                     architecture=architecture, skips=skips, backbone=backbone)
    return trace(spec).variables


# ---------------------------------------------------------------- the network, once

class Layers:
    """The layer operations the FCN is written against.

    Each operation takes its input (`net`, whatever an implementation uses for
    a tensor), the layer's name, and for weighted layers the names of its
    variables; it creates or fetches the variables (`variable`), computes the
    layer with the implementation's primitive (`_conv`, `_fc`, `_upsample`,
    ...), and records the output in `end_points[name]`.

    `layers` maps each layer of the profile to the end point that closes it:
    a weighted layer, pool or add opens a layer, a ReLU or dropout joins the
    one before it (conv1_1 -> relu1_1, conv6 -> drop6).
    """

    def __init__(self):
        self.end_points = OrderedDict()
        self.layers = OrderedDict()

    def _record(self, name, net, *, joins=False):
        self.end_points[name] = net
        if joins and self.layers:
            self.layers[next(reversed(self.layers))] = name
        else:
            self.layers[name] = name
        return net

    # -- the operations the network is written with

    def centre(self, net, mean_pixel):
        """images - mean pixel: [N, H, W, 3] -> [N, H, W, 3]."""
        net = self._centre(net, mean_pixel)
        self.end_points["centred"] = net  # not a layer of its own: conv1_1's
        return net

    def conv(self, net, name, weights, *, size, channels, init):
        """Stride-1 SAME size x size convolution plus bias: [N, h, w, C] -> [N, h, w,
        channels]. `weights`: (kernel name, bias name); the kernel is [size, size,
        C, channels]."""
        kernel, bias = self._weights(net, weights, size, channels, init)
        return self._record(name, self._conv(net, kernel, bias, name))

    def fc(self, net, name, weights, *, size, channels, init):
        """A convolutionalised fully connected layer (conv6, conv7): `conv`, with
        thousands of output channels, which a kernel set may compute differently."""
        kernel, bias = self._weights(net, weights, size, channels, init)
        return self._record(name, self._fc(net, kernel, bias, name))

    def upsample(self, net, name, weights, *, like, channels, size, stride, init,
                 trainable=True):
        """Transposed convolution, size x size, stride `stride`, plus bias unless
        the bias name is None: [N, h, w, C] -> [N, H', W', channels], H' and W'
        those of `like` (ceil(H' / stride) == h). The kernel is [size, size,
        channels, C], as tf.nn.conv2d_transpose wants."""
        kernel_name, bias_name = weights
        kernel = self.variable(kernel_name, (size, size, channels, self.channels(net)), init,
                               trainable)
        bias = None if bias_name is None else self.variable(bias_name, (channels,), ZEROS,
                                                            trainable)
        return self._record(name, self._upsample(net, kernel, bias, like, channels, stride,
                                                  name))

    def relu(self, net, name):
        return self._record(name, self._relu(net, name), joins=True)

    def dropout(self, net, name, keep_prob):
        return self._record(name, self._dropout(net, keep_prob), joins=True)

    def pool(self, net, name, method):
        """2x2 stride-2 SAME "avg" or "max" pool: [N, h, w, C] -> [N, ceil(h/2),
        ceil(w/2), C]; the average counts real (unpadded) cells only."""
        return self._record(name, self._pool(net, method, name))

    def add(self, a, b, name):
        return self._record(name, self._add(a, b, name))

    def unused_conv(self, weights, *, channels_in, size, channels, init):
        """A conv layer's variables, created but never read (legacy conv5_4):
        `weights` (kernel name, bias name); the kernel is [size, size,
        channels_in, channels]. No layer and no end point."""
        kernel_name, bias_name = weights
        self.variable(kernel_name, (size, size, channels_in, channels), init, True)
        self.variable(bias_name, (channels,), ZEROS, True)

    def _weights(self, net, weights, size, channels, init):
        kernel_name, bias_name = weights
        kernel = self.variable(kernel_name, (size, size, self.channels(net), channels), init,
                               True)
        return kernel, self.variable(bias_name, (channels,), ZEROS, True)

    # -- what an implementation provides

    def variable(self, name, shape, init, trainable):
        raise NotImplementedError

    def channels(self, net):
        raise NotImplementedError

    def _centre(self, net, mean_pixel):
        raise NotImplementedError

    def _conv(self, net, kernel, bias, name):
        raise NotImplementedError

    def _fc(self, net, kernel, bias, name):
        return self._conv(net, kernel, bias, name)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        raise NotImplementedError

    def _relu(self, net, name):
        return net

    def _dropout(self, net, keep_prob):
        return net

    def _pool(self, net, method, name):
        raise NotImplementedError

    def _add(self, a, b, name):
        return a


def vgg_body(ops, net, body, widths, *, pool_method, through=None):
    """The VGG convs, ReLUs and pools 1-4 of `body` (a table of (layer, kind)
    rows: VGG19_BODY, VGG16_BODY), up to and with the row `through` (None: the
    last). The input is the mean-subtracted [N, H, W, 3]."""
    names = [name for name, _ in body]
    through = names[-1] if through is None else through
    if through not in names:
        raise ValueError(f"vgg_body: through={through!r} is not a row of the body table")
    for name, kind in body[:names.index(through) + 1]:
        if kind == "conv":
            net = ops.conv(net, name, (name + "_w", name + "_b"), size=3,
                           channels=widths[name], init=VGG_INIT)
        elif kind == "relu":
            net = ops.relu(net, name)
        else:
            net = ops.pool(net, name, pool_method)
    return ops.end_points


def conv6_conv7(ops, net, fc_width, keep_prob, *, init):
    """The convolutionalised fc6 (7x7) and fc7 (1x1), each with ReLU and
    dropout, shared by both heads: pool5 [N, h, w, C5] -> [N, h, w, F]."""
    net = ops.fc(net, "conv6", ("W6", "b6"), size=7, channels=fc_width,
                 init=init)                                             # [N, h, w, F]
    net = ops.relu(net, "relu6")                                        # [N, h, w, F]
    net = ops.dropout(net, "drop6", keep_prob)                          # [N, h, w, F]
    net = ops.fc(net, "conv7", ("W7", "b7"), size=1, channels=fc_width,
                 init=init)                                             # [N, h, w, F]
    net = ops.relu(net, "relu7")                                        # [N, h, w, F]
    return ops.dropout(net, "drop7", keep_prob)                         # [N, h, w, F]


def legacy_fcn(ops, net, spec, keep_prob):
    """FCN.tensorflow's FCN-8s on the centred images [N, H, W, 3]; returns
    conv_t3, the logits [N, H, W, K]."""
    k, f, widths = spec.num_classes, spec.fc_width, spec.widths
    c3, c4 = widths[last_conv(spec.backbone, 3)], widths[last_conv(spec.backbone, 4)]
    images = net
    end = "relu" + LEGACY_POOL5_INPUT[4:]
    points = vgg_body(ops, net, spec.body, widths, pool_method="avg", through=end)
    _unused_convs(ops, spec, after=LEGACY_POOL5_INPUT)                  # VGG19: conv5_4
    pool3, pool4 = points["pool3"], points["pool4"]                     # 1/8, 1/16

    net = ops.pool(points[LEGACY_POOL5_INPUT], "pool5", "max")          # [N, H/32, W/32, C5]
    net = conv6_conv7(ops, net, f, keep_prob, init=HEAD_INIT)           # [N, H/32, W/32, F]
    net = ops.conv(net, "conv8", ("W8", "b8"), size=1, channels=k,
                   init=HEAD_INIT)                                      # [N, H/32, W/32, K]

    net = ops.upsample(net, "conv_t1", ("W_t1", "b_t1"), like=pool4, channels=c4, size=4,
                       stride=2, init=HEAD_INIT)                        # [N, H/16, W/16, C4]
    net = ops.add(net, pool4, "fuse_1")                                 # [N, H/16, W/16, C4]
    net = ops.upsample(net, "conv_t2", ("W_t2", "b_t2"), like=pool3, channels=c3, size=4,
                       stride=2, init=HEAD_INIT)                        # [N, H/8, W/8, C3]
    net = ops.add(net, pool3, "fuse_2")                                 # [N, H/8, W/8, C3]
    return ops.upsample(net, "conv_t3", ("W_t3", "b_t3"), like=images, channels=k,
                        size=16, stride=8, init=HEAD_INIT)              # [N, H, W, K]


def _unused_convs(ops, spec, *, after):
    """The variables of the body's convs after `after`, created in table order
    and never read."""
    convs, widths = VGG_CONVS[spec.backbone], spec.widths
    for previous, name in zip(convs[convs.index(after):], convs[convs.index(after) + 1:]):
        ops.unused_conv((name + "_w", name + "_b"), channels_in=widths[previous], size=3,
                        channels=widths[name], init=VGG_INIT)


def paper_fcn(ops, net, spec, keep_prob):
    """The paper's FCN-32s/16s/8s (spec.skips) on the centred images [N, H, W, 3];
    returns the logits [N, H, W, K].

    Score layers start at zero as in the reference code; conv6/conv7 start
    He-normal here and take fc6/fc7 from the weights when converted. The
    upsampling filters are bilinear, without bias, trainable only with
    spec.train_upsampling.
    """
    k, f, widths = spec.num_classes, spec.fc_width, spec.widths
    images = net
    points = vgg_body(ops, net, spec.body, widths, pool_method="max")
    pool3, pool4 = points["pool3"], points["pool4"]                     # 1/8, 1/16
    relu5 = "relu" + last_conv(spec.backbone, 5)[4:]                    # relu5_4 / relu5_3

    def score(net, name):                                               # 1x1 conv to K
        return ops.conv(net, name, (name + "_w", name + "_b"), size=1, channels=k, init=ZEROS)

    def upsample(net, name, like, size, stride):                        # bilinear, no bias
        return ops.upsample(net, name, (name + "_w", None), like=like, channels=k, size=size,
                            stride=stride, init=BILINEAR, trainable=spec.train_upsampling)

    net = ops.pool(points[relu5], "pool5", "max")                       # [N, H/32, W/32, C5]
    net = conv6_conv7(ops, net, f, keep_prob, init=VGG_INIT)            # [N, H/32, W/32, F]
    net = score(net, "score_fr")                                        # [N, H/32, W/32, K]
    if spec.skips == "32s":
        return upsample(net, "upscore32", images, 64, 32)               # [N, H, W, K]

    net = upsample(net, "upscore2", pool4, 4, 2)                        # [N, H/16, W/16, K]
    net = ops.add(net, score(pool4, "score_pool4"), "fuse_pool4")       # [N, H/16, W/16, K]
    if spec.skips == "16s":
        return upsample(net, "upscore16", images, 32, 16)               # [N, H, W, K]

    net = upsample(net, "upscore_pool4", pool3, 4, 2)                   # [N, H/8, W/8, K]
    net = ops.add(net, score(pool3, "score_pool3"), "fuse_pool3")       # [N, H/8, W/8, K]
    return upsample(net, "upscore8", images, 16, 8)                     # [N, H, W, K]


HEADS = {"legacy": legacy_fcn, "paper": paper_fcn}


def network(ops, images, spec, *, keep_prob=1.0, mean_pixel=VGG_MEAN_RGB, head=None):
    """The FCN `spec` describes, written with `ops` (a `Layers`): images
    [N, H, W, 3] in the network's channel order, 0..255 -> logits [N, H, W, K].

    head: the network function (ops, centred images, spec, keep_prob) -> logits;
    default `HEADS[spec.architecture]`. Tests pass variants here.
    """
    if head is None:
        _check_variant(spec.architecture, spec.skips)
        head = HEADS[spec.architecture]
    net = ops.centre(images, mean_pixel)                                # [N, H, W, 3]
    return head(ops, net, spec, keep_prob)                              # [N, H, W, K]


class ShapeLayers(Layers):
    """`Layers` on static shapes: a tensor is a tuple (N, H, W, C); every
    variable's shape is recorded in `variables`, in creation order."""

    def __init__(self):
        super().__init__()
        self.variables = OrderedDict()

    def variable(self, name, shape, init, trainable):
        self.variables[name] = tuple(shape)
        return tuple(shape)

    def channels(self, net):
        return net[3]

    def _centre(self, net, mean_pixel):
        return net

    def _conv(self, net, kernel, bias, name):
        return net[:3] + (kernel[3],)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        return like[:3] + (channels,)

    def _pool(self, net, method, name):
        return (net[0], -(-net[1] // 2), -(-net[2] // 2), net[3])


def trace(spec, *, height=1, width=1, batch=1, head=None, layers=None):
    """Run the network of `spec` on shapes; returns the `ShapeLayers` (or the
    given `layers`) with its variables, end points and layers."""
    layers = ShapeLayers() if layers is None else layers
    network(layers, (batch, height, width, 3), spec, head=head)
    return layers


def layer_ends(spec, *, head=None):
    """(layer, end point that closes it) in execution order, e.g.
    ("conv1_1", "relu1_1"), ("pool1", "pool1"), ... ("conv_t3", "conv_t3")."""
    return list(trace(spec, head=head).layers.items())


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


def detect_backbone(names, scope=SCOPE):
    """"vgg19" or "vgg16" from checkpoint or graph variable names (the body's
    conv kernels, `{scope}/conv3_4_w` ...), or None when the kernels present are
    neither body's convs exactly."""
    prefix = f"{scope}/"
    return backbone_of(name[len(prefix):-2] for name in names
                       if name.startswith(prefix) and name.endswith("_w"))
