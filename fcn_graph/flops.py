"""Analytic FLOP counts of the legacy FCN-8s graph, from the layer shapes.

FLOP = 2 x multiply-adds of every convolution and transposed convolution that
runs, SAME padding included (a padded tap still costs its multiply-add):

- a stride-1 SAME conv with a k x k kernel: N * H * W * k * k * Cin * Cout MACs;
- a transposed conv (stride s, k x k): N * Hin * Win * k * k * Cin * Cout MACs,
  every input cell scattering a k x k x Cout patch (the direct algorithm's cost,
  equal to the input gradient of the conv it is the transpose of).

Pools, ReLUs, bias adds, the two fusing adds and the argmax are left out
(together well under 1 %). conv5_4 is *not* counted: the legacy graph builds
its variables but nothing reads its output, so it never runs (implementations
that do run it count about 1.7 % more at 224x224).

Training = forward + weight gradients (as many MACs as the forward pass) +
input gradients (as many as the forward pass, less conv1_1, whose input needs
no gradient); the optimizer's element-wise update is left out.
"""

from collections import OrderedDict

from fcn_graph.model import FC_WIDTH, VGG19_BODY, VGG19_WIDTHS


def _ceil_div(a, b):
    return -(-a // b)


def layer_macs(batch, height, width, num_classes, *, vgg_widths=None, fc_width=FC_WIDTH):
    """layer name -> multiply-adds of one forward pass, in execution order.

    vgg_widths: conv name -> output channels (default VGG19's); the names are
    the model's (conv1_1 ... conv5_3, conv6, conv7, conv8, conv_t1, conv_t2,
    conv_t3).
    """
    widths = VGG19_WIDTHS if vgg_widths is None else vgg_widths
    macs = OrderedDict()
    h, w, cin = height, width, 3
    for name, kind in VGG19_BODY:
        if name == "conv5_4":  # built, never run
            break
        if kind == "conv":
            cout = widths[name]
            macs[name] = batch * h * w * 9 * cin * cout
            cin = cout
        elif kind == "pool":
            h, w = _ceil_div(h, 2), _ceil_div(w, 2)
    c3, c4, c5 = widths["conv3_4"], widths["conv4_4"], widths["conv5_3"]
    h8, w8 = _ceil_div(height, 8), _ceil_div(width, 8)
    h16, w16 = _ceil_div(h8, 2), _ceil_div(w8, 2)
    h32, w32 = _ceil_div(h16, 2), _ceil_div(w16, 2)
    pixels32 = batch * h32 * w32
    macs["conv6"] = pixels32 * 49 * c5 * fc_width
    macs["conv7"] = pixels32 * fc_width * fc_width
    macs["conv8"] = pixels32 * fc_width * num_classes
    macs["conv_t1"] = pixels32 * 16 * num_classes * c4           # 4x4/2, K -> C4
    macs["conv_t2"] = batch * h16 * w16 * 16 * c4 * c3             # 4x4/2, C4 -> C3
    macs["conv_t3"] = batch * h8 * w8 * 256 * c3 * num_classes     # 16x16/8, C3 -> K
    return macs


def layer_flops(batch, height, width, num_classes, **kwargs):
    """layer name -> forward FLOPs (2 x MACs)."""
    return OrderedDict((name, 2 * m) for name, m in
                       layer_macs(batch, height, width, num_classes, **kwargs).items())


def forward_flops(batch, height, width, num_classes, **kwargs):
    """FLOPs of one inference pass."""
    return sum(layer_flops(batch, height, width, num_classes, **kwargs).values())


def train_flops(batch, height, width, num_classes, **kwargs):
    """FLOPs of one training step: forward, weight gradients, input gradients."""
    flops = layer_flops(batch, height, width, num_classes, **kwargs)
    forward = sum(flops.values())
    return 3 * forward - flops["conv1_1"]
