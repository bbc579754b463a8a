"""The model description, without TensorFlow: the VGG19 and VGG16 tables and `ModelSpec`.

The weight loaders (`matconvnet`, `kerash5`), the graph (`model`), the FLOP
count and the config all read the layer names and widths from here, and a
checkpoint's sidecar is a `ModelSpec` written out as JSON.
"""

import dataclasses
import numbers
from collections import OrderedDict

from fcn_graph.core.constants import ARCHITECTURES, SKIPS, VGG_MEAN_RGB
from fcn_graph.core.finite import check_mean_pixel

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
# The 16 convolutions of the body, in order.
VGG19_CONVS = tuple(name for name, kind in VGG19_BODY if kind == "conv")

# The VGG16 body: VGG19 without conv3_4, conv4_4 and conv5_4 (13 convs); conv3_3,
# conv4_3 and conv5_3 end their blocks.
VGG16_BODY = (
    ("conv1_1", "conv"), ("relu1_1", "relu"), ("conv1_2", "conv"), ("relu1_2", "relu"),
    ("pool1", "pool"),  # 1/2
    ("conv2_1", "conv"), ("relu2_1", "relu"), ("conv2_2", "conv"), ("relu2_2", "relu"),
    ("pool2", "pool"),  # 1/4
    ("conv3_1", "conv"), ("relu3_1", "relu"), ("conv3_2", "conv"), ("relu3_2", "relu"),
    ("conv3_3", "conv"), ("relu3_3", "relu"),
    ("pool3", "pool"),  # 1/8
    ("conv4_1", "conv"), ("relu4_1", "relu"), ("conv4_2", "conv"), ("relu4_2", "relu"),
    ("conv4_3", "conv"), ("relu4_3", "relu"),
    ("pool4", "pool"),  # 1/16
    ("conv5_1", "conv"), ("relu5_1", "relu"), ("conv5_2", "conv"), ("relu5_2", "relu"),
    ("conv5_3", "conv"), ("relu5_3", "relu"),
)

# backbone -> its body table; the first is the default.
VGG_BODIES = OrderedDict((("vgg19", VGG19_BODY), ("vgg16", VGG16_BODY)))
BACKBONES = tuple(VGG_BODIES)
DEFAULT_BACKBONE = "vgg19"
# backbone -> the convolutions of its body, in order.
VGG_CONVS = OrderedDict((backbone, tuple(name for name, kind in body if kind == "conv"))
                        for backbone, body in VGG_BODIES.items())

# backbone -> the full layer list of its MatConvNet file (imagenet-vgg-verydeep-19:
# 43 layers, imagenet-vgg-verydeep-16: 37): the body, pool5 and the classifier.
VGG_MAT_LAYERS = OrderedDict(
    (backbone, tuple(name for name, _ in body) + (
        "pool5", "fc6", "relu6", "fc7", "relu7", "fc8", "prob"))
    for backbone, body in VGG_BODIES.items())
VGG19_FC = ("fc6", "fc7", "fc8")

# Output channels of the real VGG19; a `.mat` or a checkpoint overrides them.
VGG19_WIDTHS = OrderedDict(
    (name, {"1": 64, "2": 128, "3": 256, "4": 512, "5": 512}[name[4]]) for name in VGG19_CONVS)
# Channels of conv6 and conv7 (VGG19's fc6 and fc7).
FC_WIDTH = 4096

CHANNEL_ORDERS = ("rgb", "bgr")


def vgg_widths(backbone=DEFAULT_BACKBONE):
    """conv name -> output channels of the real VGG19 or VGG16 (64 in block 1 ...
    512 in blocks 4 and 5)."""
    return OrderedDict((name, VGG19_WIDTHS[name]) for name in VGG_CONVS[backbone])


def ordered_widths(widths, backbone=DEFAULT_BACKBONE):
    """The backbone's conv widths as a tuple in table order, from a conv name ->
    channels mapping (None: the real network's)."""
    widths = vgg_widths(backbone) if widths is None else widths
    return tuple(widths[name] for name in VGG_CONVS[backbone])


def scaled_vgg_widths(multiplier, backbone=DEFAULT_BACKBONE):
    """The backbone's widths times `multiplier` (at least 1 channel each), for
    fast experiments with a randomly initialised body."""
    return OrderedDict((name, max(1, int(round(width * multiplier))))
                       for name, width in vgg_widths(backbone).items())


def last_conv(backbone, block):
    """The conv that ends VGG block `block` (1..5) of the backbone's table:
    "conv5_4" in VGG19, "conv5_3" in VGG16."""
    return [name for name in VGG_CONVS[backbone] if name[4] == str(block)][-1]


def backbone_of(names):
    """The backbone whose body convs are exactly those among `names` (conv names
    such as "conv3_4"; other names are ignored), or None when neither matches."""
    names = set(names)
    every = set().union(*VGG_CONVS.values())
    for backbone, convs in VGG_CONVS.items():
        if names & every == set(convs):
            return backbone
    return None


def check_backbone(backbone):
    """ValueError "backbone: ..." unless `backbone` names a body table."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: expected one of {', '.join(BACKBONES)}, found "
                         f"{backbone!r}")


def check_variant(architecture, skips):
    """ValueError "FIELD: message" unless (architecture, skips) names a graph
    `model` builds."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, found "
                         f"{architecture!r}")
    if skips not in SKIPS:
        raise ValueError(f"skips: expected one of {', '.join(SKIPS)}, found {skips!r}")
    if architecture == "legacy" and skips != "8s":
        raise ValueError(f"skips: the legacy architecture is FCN-8s only, found {skips!r}; "
                         "set the architecture to 'paper' for FCN-32s/16s")


def _positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass
class ModelSpec:
    """Everything needed to rebuild a model's graph; stored beside checkpoints.

    vgg_widths: output channels of the backbone's convs (16 for VGG19, 13 for
        VGG16), in table order; None: the real network's.
    mean_pixel: mean subtracted inside the graph, in the network's channel
        order (RGB, or BGR when channel_order is "bgr"), or None if unknown
        (`resolved_mean` supplies one).
    architecture: "legacy" (FCN.tensorflow's graph) or "paper".
    channel_order: "rgb", or "bgr" for weights that expect BGR input (`build`
        reverses the channels of the RGB images it is given).
    skips: "8s", "16s" or "32s" (paper only; the legacy graph is 8s).
    train_upsampling: paper only: whether the bilinear upsampling filters are
        trainable (the reference code freezes them). The legacy filters are
        always trained.
    backbone: "vgg19" or "vgg16", the body table (`body`).

    Every field is checked on construction (and by `dataclasses.replace`): a
    ValueError names the field, what was expected and what was found.
    """

    num_classes: int
    fc_width: int = FC_WIDTH
    vgg_widths: tuple = None
    mean_pixel: tuple = None
    architecture: str = "legacy"
    channel_order: str = "rgb"
    skips: str = "8s"
    train_upsampling: bool = False
    backbone: str = DEFAULT_BACKBONE

    def __post_init__(self):
        if not _positive_int(self.num_classes):
            raise ValueError(f"num_classes: expected a positive integer, found "
                             f"{self.num_classes!r}")
        if not _positive_int(self.fc_width):
            raise ValueError(f"fc_width: expected a positive integer, found {self.fc_width!r}")
        check_backbone(self.backbone)
        convs = VGG_CONVS[self.backbone]
        if self.vgg_widths is None:
            self.vgg_widths = tuple(vgg_widths(self.backbone).values())
        self.vgg_widths = tuple(self.vgg_widths)
        if len(self.vgg_widths) != len(convs) or not all(
                _positive_int(width) for width in self.vgg_widths):
            raise ValueError(f"vgg_widths: expected {len(convs)} positive integers (one "
                             f"per {self.backbone.upper()} conv), found {list(self.vgg_widths)}")
        if self.mean_pixel is not None:
            self.mean_pixel = check_mean_pixel(self.mean_pixel, "mean_pixel")
        check_variant(self.architecture, self.skips)
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order: expected one of {', '.join(CHANNEL_ORDERS)}, "
                             f"found {self.channel_order!r}")
        if not isinstance(self.train_upsampling, bool):
            raise ValueError(f"train_upsampling: expected true or false, found "
                             f"{self.train_upsampling!r}")

    @property
    def body(self):
        """The backbone's table of (layer, kind) rows."""
        return VGG_BODIES[self.backbone]

    @property
    def widths(self):
        """conv name -> output channels, in table order."""
        return OrderedDict(zip(VGG_CONVS[self.backbone], self.vgg_widths))

    @property
    def name(self):
        """"legacy FCN-8s", "paper FCN-16s", ... (", VGG16" added for that backbone)."""
        extra = "" if self.backbone == DEFAULT_BACKBONE else f", {self.backbone.upper()}"
        return f"{self.architecture} FCN-{self.skips}{extra}"

    def resolved_mean(self, fallback=None):
        """The mean pixel the graph subtracts: the spec's own, else `fallback`
        (e.g. a --mean given for a checkpoint without a sidecar), else the VGG
        mean. A tuple of 3 floats."""
        for mean in (self.mean_pixel, fallback):
            if mean is not None:
                return tuple(float(v) for v in mean)
        return VGG_MEAN_RGB
