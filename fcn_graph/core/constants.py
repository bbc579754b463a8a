"""Conventions shared by data, loss, metrics, inference and output."""

import numpy as np

# Label value that the loss and the metrics skip (VOC object boundaries).
IGNORE_LABEL = 255

# Mean pixel of the ImageNet VGG models, RGB order, 0..255 scale.
VGG_MEAN_RGB = (123.68, 116.779, 103.939)

# The resolved config every training run writes into its log directory.
RESOLVED_CONFIG_NAME = "config.json"

# The network downsamples by 32 before conv6; scores come back at stride 8.
OUTPUT_STRIDE = 8

# Graph variants of the model: legacy (FCN.tensorflow) and paper (FCN-32s/16s/8s).
ARCHITECTURES = ("legacy", "paper")
SKIPS = ("32s", "16s", "8s")  # paper: FCN-32s, FCN-16s, FCN-8s; legacy is always 8s
# Dropout keep probability for training (inference uses 1.0): FCN.tensorflow's
# 0.85, the paper's 0.5.
TRAIN_KEEP_PROB = {"legacy": 0.85, "paper": 0.5}

# Kernel sets a graph can be built with (config key model.kernels, --kernels):
# "reference" writes the plain operations (tf.nn.conv2d for conv6/conv7,
# tf.nn.conv2d_transpose for the upsampling), "cpu" the forms of
# `fcn_graph.network.cpu_layers`, and "auto" picks by device
# (`fcn_graph.host.choice.resolve_kernels`).
KERNELS = ("auto", "reference", "cpu")
# The forms of the "cpu" set: conv6/conv7 as im2col + matrix products in row
# blocks ("matmul") or tf.nn.conv2d ("conv"); the upsampling as one phase
# convolution ("phases") or tf.nn.conv2d_transpose ("transpose").
FC_FORMS = ("matmul", "conv")
UPSAMPLE_FORMS = ("phases", "transpose")
# The forms the per-CPU rule takes, measured fastest on an AVX2 CPU:
# conv6/conv7 in blocks of DEFAULT_ROW_BLOCK rows, every upsampling by phases.
DEFAULT_FC_FORM = "matmul"
DEFAULT_ROW_BLOCK = 100
DEFAULT_UPSAMPLE_FORM = "phases"


# Engines that run a checkpoint (`segmenter.make_segmenter`): TensorFlow, the
# reference, ONNX Runtime, and OpenVINO (on the ONNX model).
ENGINES = ("tf", "onnxruntime", "openvino")
# Floating-point types a TensorFlow session can compute in (`session.session_config`).
PRECISIONS = ("float32", "bfloat16", "float16")
# What `--precision` of infer and evaluate accepts: those, and int8 (ONNX
# Runtime, a model quantized by `fcn_graph.engines.int8_model`).
INFERENCE_PRECISIONS = PRECISIONS + ("int8",)
# What train.precision accepts: float32, or bfloat16 through oneDNN on a CPU
# with bfloat16 units (`session.session_config`).
TRAIN_PRECISIONS = ("float32", "bfloat16")
# What `python -m fcn_graph.export` writes (`engines.exporters.EXPORTERS`).
EXPORT_FORMATS = ("savedmodel", "frozen", "onnx", "tflite")


def voc_palette(num_entries=256):
    """The PASCAL VOC colour map: entry i is the RGB colour of class i.

    Bits of the class id are spread over the high bits of R, G and B, as in
    the VOC development kit (`VOClabelcolormap.m`). Returns uint8 [num_entries, 3].
    """
    palette = np.zeros((num_entries, 3), dtype=np.uint8)
    for index in range(num_entries):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette
