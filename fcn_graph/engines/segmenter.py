"""Engines that segment images with a checkpoint, behind one interface.

`make_segmenter(prefix, engine=...)` returns a `Segmenter` (TensorFlow, the
reference) or an `onnx_engine.OnnxSegmenter` (ONNX Runtime, float32 or a
model quantized to int8 by `engines.int8_model`); both have
`.run(batch_uint8, scores=False) -> (labels, scores)` and `.close()`.
"""

import contextlib

import numpy as np
import tensorflow as tf

from fcn_graph.core.constants import ENGINES
from fcn_graph.core.errors import UserError
from fcn_graph.host import choice, cpuinfo
from fcn_graph.host.session import onednn_enabled, session_config, xla_scope
from fcn_graph.network.definition import SCOPE
from fcn_graph.network.tf_layers import build, model_variables
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1


class Segmenter:
    """One graph and session for any number of images of any sizes.

    The input placeholder is [None, None, None, 3]; images of different sizes
    run through the same finalised graph. `kernels` ("auto", "reference" or
    "cpu") picks the kernel set (`choice.kernel_layers`). `xla` and
    `precision` go to `session.session_config`; `config` (a ConfigProto)
    replaces it outright.
    """

    def __init__(self, prefix, *, mean_pixel=None, threads=None, xla=False,
                 precision="float32", config=None, kernels="auto"):
        if precision == "bfloat16" and not choice.gpu_visible():
            cpuinfo.check_precision("bfloat16")
        if precision == "bfloat16" and not onednn_enabled():
            raise UserError("--precision bfloat16: TensorFlow's oneDNN kernels are off; set "
                            "TF_ENABLE_ONEDNN_OPTS=1 in the environment")
        if precision == "float16" and not choice.gpu_visible():
            raise UserError("--precision float16: needs a GPU (none is visible)")
        self.prefix = prefix
        self.spec = checkpoint.model_spec_from_checkpoint(prefix)
        self.mean_pixel = self.spec.resolved_mean(mean_pixel)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
            # XLA: an explicit JIT scope, because TensorFlow's automatic
            # clustering (global_jit_level) is off on CPUs.
            with xla_scope(xla), folded_upsampling_kernels(prefix, kernels):
                self.logits, self.prediction, self.end_points = build(
                    self.images, self.spec, layers=choice.kernel_layers(kernels),
                    mean_pixel=self.mean_pixel)
            variables = model_variables(self.graph)
            saver = checkpoint.model_saver(variables)
            self.graph.finalize()
        # The weights stay variables, restored by the Saver (the cpu kernel
        # set folds only the small upsampling kernels into constants).
        if config is None:
            config = session_config(threads, xla=xla, precision=precision)
        self.session = tf1.Session(graph=self.graph, config=config)
        checkpoint.restore_model(self.session, prefix, variables, saver=saver)

    def run(self, batch_rgb, *, scores=False):
        """uint8 [N, H, W, 3] RGB -> (labels uint8/int [N, H, W], logits or None)."""
        batch = np.asarray(batch_rgb, dtype=np.float32)
        fetches = [self.prediction, self.logits] if scores else [self.prediction]
        out = self.session.run(fetches, {self.images: batch})
        return out[0], (out[1] if scores else None)

    def close(self):
        self.session.close()


# The upsampling kernels (a few MB) of both heads: the legacy W_t1..W_t3, the
# paper's upscore* filters.
UPSAMPLING_KERNELS = ("W_t1", "W_t2", "W_t3", "upscore2_w", "upscore_pool4_w", "upscore8_w",
                      "upscore16_w", "upscore32_w")


def folded_upsampling_kernels(prefix, kernels="auto"):
    """A context for building an inference graph of checkpoint `prefix`: with the
    cpu kernels, a variable scope whose getter creates every variable as usual
    (so that the Saver restores them all) but hands the graph the checkpoint's
    upsampling kernels as constants, which Grappler then folds into phase
    kernels once. With the reference kernels, nothing changes."""
    if choice.choose_kernels(kernels) != "cpu":
        return contextlib.nullcontext()
    stored = checkpoint.read_variable_shapes(prefix)
    names = [f"{SCOPE}/{name}" for name in UPSAMPLING_KERNELS
             if f"{SCOPE}/{name}" in stored]
    values = checkpoint.read_variables(prefix, names)

    def getter(getter, name, *args, **kwargs):
        variable = getter(name, *args, **kwargs)
        if name in values:
            return tf.constant(values[name], name=name.rsplit("/", 1)[-1] + "_value")
        return variable
    return tf1.variable_scope(tf1.get_variable_scope(), custom_getter=getter)


def make_segmenter(prefix, *, engine="tf", mean_pixel=None, threads=None, xla=False,
                   precision="float32", kernels="auto", calibration=None):
    """A `Segmenter` (engine "tf", the reference), an `onnx_engine.OnnxSegmenter`
    (engine "onnxruntime", float32, or int8 with `calibration`, a folder or a
    list of images to calibrate on: `int8_model.int8_segmenter`) or an
    `openvino_engine.OpenVinoSegmenter` (engine "openvino", float32 or
    bfloat16) for checkpoint `prefix`, with the kernel set `kernels`; each has
    `.run(batch_uint8, scores=False) -> (labels, scores)` and `.close()`."""
    if precision == "int8":
        if engine != "onnxruntime":
            raise UserError("--precision int8 runs on --engine onnxruntime only (the default "
                            f"with int8); found --engine {engine}")
        if xla:
            raise UserError("--precision int8: --xla applies to --engine tf only; drop it")
        if calibration is None:
            raise UserError("--precision int8: needs --calibration DIR, a folder of images "
                            "like the ones to segment, to calibrate the int8 model on")
        from fcn_graph.engines.int8_model import int8_segmenter
        return int8_segmenter(prefix, calibration, threads=threads, mean_pixel=mean_pixel,
                              kernels=kernels)
    if engine == "tf":
        return Segmenter(prefix, mean_pixel=mean_pixel, threads=threads, xla=xla,
                         precision=precision, kernels=kernels)
    if engine == "openvino":
        if xla or precision == "float16":
            raise UserError("--engine openvino runs float32 or bfloat16 without XLA; drop "
                            "--xla/--precision float16")
        from fcn_graph.engines.openvino_engine import OpenVinoSegmenter
        return OpenVinoSegmenter(prefix, threads=threads, mean_pixel=mean_pixel,
                                 kernels=kernels, precision=precision)
    if engine != "onnxruntime":
        raise UserError(f"--engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if xla or precision != "float32":
        raise UserError("--engine onnxruntime runs float32 (or int8) without XLA; drop "
                        "--xla/--precision")
    from fcn_graph.engines.onnx_engine import OnnxSegmenter
    return OnnxSegmenter(prefix, threads=threads, mean_pixel=mean_pixel, kernels=kernels)
