"""The model description: ModelSpec checks itself and resolves the mean pixel
once; the tables and the config load without TensorFlow."""

import dataclasses
import subprocess
import sys

import pytest

from fcn_graph.core.constants import VGG_MEAN_RGB
from fcn_graph.network.spec import VGG19_CONVS, VGG19_WIDTHS, VGG_MAT_LAYERS, ModelSpec


def test_tables_agree():
    assert len(VGG19_CONVS) == 16 and list(VGG19_WIDTHS) == list(VGG19_CONVS)
    vgg19, vgg16 = VGG_MAT_LAYERS["vgg19"], VGG_MAT_LAYERS["vgg16"]
    assert len(vgg19) == 43 and vgg19[vgg19.index("relu5_4") + 1] == "pool5"
    assert len(vgg16) == 37 and vgg16[vgg16.index("relu5_3") + 1] == "pool5"


@pytest.mark.parametrize("fields,message", [
    ({"num_classes": 0}, "num_classes: expected a positive integer, found 0"),
    ({"num_classes": 3, "fc_width": -1}, "fc_width: expected a positive integer"),
    ({"num_classes": 3, "vgg_widths": (4,) * 15}, "vgg_widths: expected 16 positive integers"),
    ({"num_classes": 3, "mean_pixel": (1.0, 2.0)}, "mean_pixel: expected 3 numbers"),
    ({"num_classes": 3, "architecture": "caffe"}, "architecture: expected one of legacy, paper"),
    ({"num_classes": 3, "skips": "16s"}, "skips: the legacy architecture is FCN-8s only"),
    ({"num_classes": 3, "channel_order": "rbg"}, "channel_order: expected one of rgb, bgr"),
    ({"num_classes": 3, "train_upsampling": 1}, "train_upsampling: expected true or false"),
    ({"num_classes": 3, "backbone": "vgg11"}, "backbone: expected one of vgg19, vgg16"),
    ({"num_classes": 3, "backbone": "vgg16", "vgg_widths": (4,) * 16},
     r"vgg_widths: expected 13 positive integers \(one per VGG16 conv\)"),
])
def test_model_spec_checks_every_field(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**fields)


def test_default_widths_follow_the_backbone():
    assert ModelSpec(num_classes=3).vgg_widths == tuple(VGG19_WIDTHS.values())
    vgg16 = ModelSpec(num_classes=3, backbone="vgg16")
    assert vgg16.vgg_widths == (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
    assert list(vgg16.widths)[-1] == "conv5_3" and len(vgg16.body) == 13 + 13 + 4  # + pools 1-4


def test_replace_checks_too():
    spec = ModelSpec(num_classes=3, architecture="paper", skips="16s")
    with pytest.raises(ValueError, match="FCN-8s only"):
        dataclasses.replace(spec, architecture="legacy")


def test_resolved_mean_spec_then_fallback_then_vgg():
    assert ModelSpec(num_classes=3).resolved_mean() == VGG_MEAN_RGB
    assert ModelSpec(num_classes=3).resolved_mean([1, 2, 3]) == (1.0, 2.0, 3.0)
    own = ModelSpec(num_classes=3, mean_pixel=[4, 5, 6])
    assert own.mean_pixel == (4.0, 5.0, 6.0)
    assert own.resolved_mean([1, 2, 3]) == (4.0, 5.0, 6.0)


def test_spec_and_loaders_do_not_import_tensorflow():
    code = ("import sys, fcn_graph.network.spec, fcn_graph.training.config, fcn_graph.weights.matconvnet, "
            "fcn_graph.weights.kerash5; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
