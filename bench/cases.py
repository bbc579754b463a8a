"""What the benchmark measures: the cases (batch, size, training) and the
variants (an engine plus modifiers of the tf engine, or another runtime on
the files fcn_graph exports), and the parsing of --cases and --variants."""

import collections

from fcn_graph.core.constants import ENGINES
from fcn_graph.core.errors import UserError

# case -> (batch, height, width, training)
CASES = collections.OrderedDict([
    ("224_b1", (1, 224, 224, False)),
    ("512_b1", (1, 512, 512, False)),
    ("224_b8", (8, 224, 224, False)),
    ("voc_b1", (1, 375, 500, False)),   # a VOC-sized image: 500 wide, 375 high
    ("train_b2", (2, 224, 224, True)),
    ("train_b8", (8, 224, 224, True)),
])
# A variant is an engine ("tf", the default path, or "onnxruntime") plus
# "-"-joined modifiers of the tf engine, e.g. "tf-onednn-reference":
MODIFIERS = collections.OrderedDict([
    ("reference", ({"kernels": "reference"}, {})),      # the plain ops (model.TFLayers)
    ("cpu", ({"kernels": "cpu"}, {})),                  # network.cpu_layers.CpuLayers
    ("xla", ({"xla": True}, {})),                       # XLA JIT scope
    ("onednn", ({}, {"TF_ENABLE_ONEDNN_OPTS": "1"})),   # TF's oneDNN kernels
    ("eigen", ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"})),    # TF's default CPU kernels
    ("bf16", ({"precision": "bfloat16"}, {"TF_ENABLE_ONEDNN_OPTS": "1"})),
    ("inter2", ({"inter_op": 2}, {})),                  # inter-op threads 2 instead of 1
    ("heap", ({"heap": True}, {})),                     # freed memory kept in glibc's heap
])
# Modifiers of the onnxruntime engine, e.g. "onnxruntime-int8":
ONNX_MODIFIERS = collections.OrderedDict([
    ("int8", ({"precision": "int8"}, {})),  # the quantized model (worker's "make-int8")
])
# Other runtimes that users would pick instead, each running a file fcn_graph
# exports: OpenVINO's CPU plugin the ONNX model (`export --format onnx`), the
# LiteRT interpreter the .tflite (`export --format tflite`, float32).
RUNTIMES = ("openvino", "litert")
# Modifiers of the openvino runtime: its inference precision hint (f32 unless told)
OPENVINO_MODIFIERS = collections.OrderedDict([
    ("bf16", ({"precision": "bfloat16"}, {})),
])
NUM_CLASSES = 21  # the default --num-classes: PASCAL VOC


def variant_settings(name):
    """variant name -> (engine, options, extra environment); ValueError if unknown."""
    engine, *mods = name.split("-")
    if engine not in ENGINES + RUNTIMES:
        raise ValueError(name)
    table = {"onnxruntime": ONNX_MODIFIERS, "openvino": OPENVINO_MODIFIERS,
             "litert": {}}.get(engine, MODIFIERS)
    options, env = {}, {}
    for mod in mods:
        if mod not in table:
            raise ValueError(name)
        options.update(table[mod][0])
        env.update(table[mod][1])
    return engine, options, env


def parse_list(text, known, flag):
    """Comma-separated `text` -> its items, each one of `known`; UserError naming `flag`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise UserError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; expected a "
                        f"comma-separated list of {', '.join(known)}")
    return items


def parse_variants(text):
    """Comma-separated --variants -> the variant names; UserError for an unknown one."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        try:
            variant_settings(item)
        except ValueError:
            raise UserError(f"--variants: unknown variant {item!r}; expected onnxruntime, "
                            f"onnxruntime-int8, openvino, openvino-bf16, litert, or tf with "
                            f"any of -{', -'.join(MODIFIERS)} (e.g. tf-onednn-xla)") from None
    if not items:
        raise UserError("--variants: empty list")
    return items

