"""Analytic FLOP counts of an FCN, from `definition.network` run on shapes.

FLOP = 2 x multiply-adds of every convolution and transposed convolution that
runs, SAME padding included (a padded tap still costs its multiply-add):

- a stride-1 SAME conv with a k x k kernel: N * H * W * k * k * Cin * Cout MACs;
- a transposed conv (stride s, k x k): N * Hin * Win * k * k * Cin * Cout MACs,
  every input cell scattering a k x k x Cout patch (the direct algorithm's cost,
  equal to the input gradient of the conv it is the transpose of).

Pools, ReLUs, bias adds, the fusing adds and the argmax are left out. The
legacy graph's conv5_4 (VGG19) is not counted: its variables exist, but nothing
reads it, so it never runs.

Training = forward + weight gradients (as many MACs as the forward pass) +
input gradients (as many as the forward pass, less conv1_1, whose input needs
no gradient); the optimizer's element-wise update is left out.
"""

from collections import OrderedDict

from fcn_graph.network import definition
from fcn_graph.network.spec import DEFAULT_BACKBONE, FC_WIDTH, ModelSpec, ordered_widths


class MacCounter(definition.ShapeLayers):
    """`definition.ShapeLayers` that also adds up each weighted layer's multiply-adds
    in `macs` (layer name -> MACs, in execution order)."""

    def __init__(self):
        super().__init__()
        self.macs = OrderedDict()

    def _conv(self, net, kernel, bias, name):
        n, h, w, _ = net
        self.macs[name] = n * h * w * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        return super()._conv(net, kernel, bias, name)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        n, h, w, _ = net
        self.macs[name] = n * h * w * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        return super()._upsample(net, kernel, bias, like, channels, stride, name)


def layer_macs(batch, height, width, num_classes, *, vgg_widths=None,
               fc_width=FC_WIDTH, architecture="legacy", skips="8s", head=None,
               backbone=DEFAULT_BACKBONE):
    """layer name -> multiply-adds of one forward pass, in execution order.

    vgg_widths: conv name -> output channels (default the backbone's real
    ones); the names are the model's end points (legacy: conv1_1 ... conv5_3,
    conv6, conv7, conv8, conv_t1, conv_t2, conv_t3). head: as in
    `definition.network`.
    """
    spec = ModelSpec(num_classes=num_classes, fc_width=fc_width,
                     vgg_widths=ordered_widths(vgg_widths, backbone),
                     architecture=architecture, skips=skips, backbone=backbone)
    return definition.trace(spec, batch=batch, height=height, width=width, head=head,
                           layers=MacCounter()).macs


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
