"""The analytic FLOP count against counts worked out by hand."""

from collections import OrderedDict

from fcn_graph.network import flops
from fcn_graph.network.spec import VGG19_CONVS

ONES = OrderedDict((name, 1) for name in VGG19_CONVS)


def test_one_pixel_one_channel_by_hand():
    # 1x1 image, every VGG conv 1 channel wide, fc width 2, 3 classes:
    # conv1_1 9*3 = 27; conv1_2..conv5_3 (14 convs) 9 each = 126; conv6 49*1*2 = 98;
    # conv7 2*2 = 4; conv8 2*3 = 6; conv_t1 16*3*1 = 48; conv_t2 16*1*1 = 16;
    # conv_t3 256*1*3 = 768. conv5_4 never runs.
    macs = flops.layer_macs(1, 1, 1, 3, vgg_widths=ONES, fc_width=2)
    assert "conv5_4" not in macs
    assert macs["conv1_1"] == 27 and macs["conv5_3"] == 9 and macs["conv_t3"] == 768
    assert sum(macs.values()) == 1093
    assert flops.forward_flops(1, 1, 1, 3, vgg_widths=ONES, fc_width=2) == 2186
    # training: 3 x forward, less conv1_1's input gradient
    assert flops.train_flops(1, 1, 1, 3, vgg_widths=ONES, fc_width=2) == 3 * 2186 - 54


def test_odd_size_uses_ceil_of_same_pools():
    # 37x45 -> pool1 19x23, pool2 10x12, pool3 5x6, pool4 3x3, pool5 2x2
    widths = OrderedDict((name, 2) for name in VGG19_CONVS)
    macs = flops.layer_macs(2, 37, 45, 5, vgg_widths=widths, fc_width=3)
    assert macs["conv1_1"] == 2 * 37 * 45 * 9 * 3 * 2
    assert macs["conv2_1"] == 2 * 19 * 23 * 9 * 2 * 2
    assert macs["conv4_4"] == 2 * 5 * 6 * 9 * 2 * 2
    assert macs["conv5_1"] == 2 * 3 * 3 * 9 * 2 * 2
    assert macs["conv6"] == 2 * 2 * 2 * 49 * 2 * 3
    assert macs["conv_t1"] == 2 * 2 * 2 * 16 * 5 * 2
    assert macs["conv_t2"] == 2 * 3 * 3 * 16 * 2 * 2
    assert macs["conv_t3"] == 2 * 5 * 6 * 256 * 2 * 5


def test_full_vgg19_at_224():
    # 224x224 VGG19, 21 classes: 53,736,890,368 FLOPs with conv5_4 (the usual
    # count), less conv5_4's 14*14*9*512*512 MACs.
    total = flops.forward_flops(1, 224, 224, 21)
    assert total == 53_736_890_368 - 2 * 14 * 14 * 9 * 512 * 512
