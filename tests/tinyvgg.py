"""Tiny VGG19- and VGG16-shaped weights for fast tests."""

from collections import OrderedDict

import numpy as np

from fcn_graph.network.spec import VGG19_CONVS, VGG_CONVS

# A VGG19 with 2..5 channels per block: every layer exists, every width differs
# from its neighbours' blocks, and channel counts are odd where they can be.
TINY_WIDTHS = OrderedDict(
    (name, {"1": 2, "2": 3, "3": 4, "4": 5, "5": 3}[name[4]]) for name in VGG19_CONVS)
# The same per block for VGG16's 13 convs.
TINY_WIDTHS_16 = OrderedDict((name, TINY_WIDTHS[name]) for name in VGG_CONVS["vgg16"])
TINY_MEAN = (121.0, 113.5, 99.25)


def make_vgg_layers(widths=TINY_WIDTHS, seed=0, kernel=3):
    """conv name -> (kernel HWIO float32, bias float32) with He-scaled values."""
    rng = np.random.default_rng(seed)
    layers = OrderedDict()
    cin = 3
    for name, cout in widths.items():
        std = np.sqrt(2.0 / (kernel * kernel * cin))
        layers[name] = ((rng.standard_normal((kernel, kernel, cin, cout)) * std).astype(np.float32),
                        (rng.standard_normal(cout) * 0.1).astype(np.float32))
        cin = cout
    return layers


def make_fc_layers(cin, fc_width=6, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "fc6": ((rng.standard_normal((7, 7, cin, fc_width)) * 0.1).astype(np.float32),
                np.zeros(fc_width, np.float32)),
        "fc7": ((rng.standard_normal((1, 1, fc_width, fc_width)) * 0.1).astype(np.float32),
                np.zeros(fc_width, np.float32)),
        "fc8": ((rng.standard_normal((1, 1, fc_width, 10)) * 0.1).astype(np.float32),
                np.zeros(10, np.float32)),
    }


def write_tiny_checkpoint(directory, num_classes=4):
    """A tiny legacy FCN-8s checkpoint at DIRECTORY/ckpt/start, through a new-layout
    `.mat` and `port mat2ckpt`; returns its prefix."""
    import os

    from fcn_graph import port
    from fcn_graph.weights.matconvnet import write_vgg_mat
    mat = os.path.join(str(directory), "vgg.mat")
    write_vgg_mat(mat, make_vgg_layers(), TINY_MEAN, fc=make_fc_layers(TINY_WIDTHS["conv5_4"]),
                  layout="new")
    prefix = os.path.join(str(directory), "ckpt", "start")
    assert port.main(["mat2ckpt", mat, "--num-classes", str(num_classes), "--fc-width", "6",
                      "--out", prefix]) == 0
    return prefix
