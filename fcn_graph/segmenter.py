"""Engines that segment images with a checkpoint, behind one interface.

`make_segmenter(prefix, engine=...)` returns a `Segmenter` (TensorFlow, the
reference) or an `onnx_engine.OnnxSegmenter` (ONNX Runtime); both have
`.run(batch_uint8, scores=False) -> (labels, scores)` and `.close()`.
"""

import numpy as np
import tensorflow as tf

from fcn_graph import checkpoint
from fcn_graph import model as fcn_model
from fcn_graph.constants import ENGINES
from fcn_graph.errors import UserError
from fcn_graph.session import onednn_enabled, session_config, xla_scope

tf1 = tf.compat.v1


# The transposed-conv kernels enter the inference graph as constants, so that
# grappler folds their rearrangement into phase kernels (`model.phase_kernel`)
# once instead of redoing it on every run: the legacy head's W_t1..W_t3, the
# paper head's upscore* filters.
FOLDED_KERNELS = ("W_t1", "W_t2", "W_t3", "upscore2_w", "upscore_pool4_w", "upscore8_w",
                  "upscore16_w", "upscore32_w")


def _read_upsampling_kernels(prefix):
    stored = checkpoint.read_variable_shapes(prefix)
    names = [f"{fcn_model.SCOPE}/{name}" for name in FOLDED_KERNELS
             if f"{fcn_model.SCOPE}/{name}" in stored]
    return checkpoint.read_variables(prefix, names)


def _constant_getter(values):
    """A custom getter that creates every variable as usual (so the Saver
    restores them all) but hands the graph the checkpoint's value for the
    names in `values`."""
    def getter(getter, name, *args, **kwargs):
        variable = getter(name, *args, **kwargs)
        if name in values:
            return tf.constant(values[name], name=name.rsplit("/", 1)[-1] + "_value")
        return variable
    return getter


class Segmenter:
    """One graph and session for any number of images of any sizes.

    The input placeholder is [None, None, None, 3]; images of different sizes
    run through the same finalised graph. `xla` and `precision` go to
    `session.session_config`; `config` (a ConfigProto) replaces it outright.
    """

    def __init__(self, prefix, *, mean_pixel=None, threads=None, xla=False,
                 precision="float32", config=None):
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
            with xla_scope(xla), tf1.variable_scope(
                    tf1.get_variable_scope(), custom_getter=_constant_getter(
                        _read_upsampling_kernels(prefix))):
                self.logits, self.prediction, self.end_points = fcn_model.build(
                    self.images, self.spec, mean_pixel=self.mean_pixel)
            variables = fcn_model.model_variables(self.graph)
            saver = checkpoint.model_saver(variables)
            self.graph.finalize()
        # The other weights stay variables, restored by the Saver: grappler
        # fuses conv + bias + ReLU either way, and constants this large would
        # make its first pass copy them several times (docs/performance.md).
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
                   precision="float32"):
    """A `Segmenter` (engine "tf", the reference) or an `onnx_engine.OnnxSegmenter`
    (engine "onnxruntime", float32 only) for checkpoint `prefix`; both have
    `.run(batch_uint8, scores=False) -> (labels, scores)` and `.close()`."""
    if engine == "tf":
        return Segmenter(prefix, mean_pixel=mean_pixel, threads=threads, xla=xla,
                         precision=precision)
    if engine != "onnxruntime":
        raise UserError(f"--engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if xla or precision != "float32":
        raise UserError("--engine onnxruntime runs float32 without XLA; drop --xla/--precision")
    from fcn_graph.onnx_engine import OnnxSegmenter
    return OnnxSegmenter(prefix, threads=threads, mean_pixel=mean_pixel)
