"""Engines that segment images with a checkpoint, behind one interface.

`make_segmenter(prefix, engine=...)` returns a `Segmenter` (TensorFlow, the
reference) or an `onnx_engine.OnnxSegmenter` (ONNX Runtime, float32 or a
model quantized to int8 by `fcn_graph.quantize`); both have
`.run(batch_uint8, scores=False) -> (labels, scores)` and `.close()`.
"""

import numpy as np
import tensorflow as tf

from fcn_graph import checkpoint, cpu_kernels, cpuinfo
from fcn_graph import model as fcn_model
from fcn_graph.constants import ENGINES
from fcn_graph.errors import UserError
from fcn_graph.session import onednn_enabled, session_config, xla_scope

tf1 = tf.compat.v1


class Segmenter:
    """One graph and session for any number of images of any sizes.

    The input placeholder is [None, None, None, 3]; images of different sizes
    run through the same finalised graph. `kernels` ("auto", "reference" or
    "cpu") picks the kernel set (`cpu_kernels.choose_kernels`). `xla` and
    `precision` go to `session.session_config`; `config` (a ConfigProto)
    replaces it outright.
    """

    def __init__(self, prefix, *, mean_pixel=None, threads=None, xla=False,
                 precision="float32", config=None, kernels="auto"):
        if precision == "bfloat16" and not tf.config.list_physical_devices("GPU"):
            cpuinfo.check_precision("bfloat16")
        if precision == "bfloat16" and not onednn_enabled():
            raise UserError("--precision bfloat16: TensorFlow's oneDNN kernels are off; set "
                            "TF_ENABLE_ONEDNN_OPTS=1 in the environment")
        if precision == "float16" and not tf.config.list_physical_devices("GPU"):
            raise UserError("--precision float16: needs a GPU (none is visible)")
        self.prefix = prefix
        self.spec = checkpoint.model_spec_from_checkpoint(prefix)
        self.mean_pixel = self.spec.resolved_mean(mean_pixel)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
            # XLA: an explicit JIT scope, because TensorFlow's automatic
            # clustering (global_jit_level) is off on CPUs.
            with xla_scope(xla), cpu_kernels.folded_upsampling_kernels(prefix, kernels):
                self.logits, self.prediction, self.end_points = fcn_model.build(
                    self.images, self.spec, mean_pixel=self.mean_pixel, kernels=kernels)
            variables = fcn_model.model_variables(self.graph)
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


def make_segmenter(prefix, *, engine="tf", mean_pixel=None, threads=None, xla=False,
                   precision="float32", kernels="auto", calibration=None):
    """A `Segmenter` (engine "tf", the reference) or an `onnx_engine.OnnxSegmenter`
    (engine "onnxruntime", float32, or int8 with `calibration`, a folder or a
    list of images to calibrate on: `quantize.int8_segmenter`) for checkpoint
    `prefix`, with the kernel set `kernels`; both have `.run(batch_uint8,
    scores=False) -> (labels, scores)` and `.close()`."""
    if precision == "int8":
        if engine != "onnxruntime":
            raise UserError("--precision int8 runs on --engine onnxruntime only (the default "
                            f"with int8); found --engine {engine}")
        if xla:
            raise UserError("--precision int8: --xla applies to --engine tf only; drop it")
        if calibration is None:
            raise UserError("--precision int8: needs --calibration DIR, a folder of images "
                            "like the ones to segment, to calibrate the int8 model on")
        from fcn_graph.quantize import int8_segmenter
        return int8_segmenter(prefix, calibration, threads=threads, mean_pixel=mean_pixel,
                              kernels=kernels)
    if engine == "tf":
        return Segmenter(prefix, mean_pixel=mean_pixel, threads=threads, xla=xla,
                         precision=precision, kernels=kernels)
    if engine != "onnxruntime":
        raise UserError(f"--engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if xla or precision != "float32":
        raise UserError("--engine onnxruntime runs float32 (or int8) without XLA; drop "
                        "--xla/--precision")
    from fcn_graph.onnx_engine import OnnxSegmenter
    return OnnxSegmenter(prefix, threads=threads, mean_pixel=mean_pixel, kernels=kernels)
