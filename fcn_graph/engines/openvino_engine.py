"""OpenVINO inference: the ONNX model of `onnx_engine` compiled by OpenVINO's
CPU plugin.

`OpenVinoSegmenter(path_or_prefix, precision=...)` has the interface of
`onnx_engine.OnnxSegmenter`: `.run(batch, scores=False) -> (labels int64
[N, H, W], scores float32 [N, H, W, K] or None)` and `.close()`. It reads a
`.onnx` file with that interface, a checkpoint prefix or directory
(converted by `onnx_engine.converted_model` through the model cache, in the
plain form: ONNX Runtime's optimised form holds operators of its own), or a
`model_cache.ModelFile`.

The model is compiled with performance hint LATENCY, `threads` threads and
an explicit inference precision: f32 for float32 (on a CPU with bf16 units
the CPU plugin otherwise runs bf16 unasked), bf16 for bfloat16. It is
reshaped to the batch's shape and compiled again whenever that shape
differs from the previous call's: static shapes are the plugin's fast path,
and a folder of same-sized images compiles once.

The runtime is the `openvino` package (pip install openvino, or the
`openvino` extra).
"""

import os

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.engines import model_cache, onnx_engine
from fcn_graph.host import cpuinfo

# The CPU plugin's INFERENCE_PRECISION_HINT of each precision the engine runs.
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def openvino_module():
    """The `openvino` package; a UserError naming it when it is missing."""
    try:
        import openvino
    except ImportError:
        raise UserError("--engine openvino: the openvino package is not installed "
                        "(pip install openvino, or pip install -e '.[openvino]')") from None
    return openvino


def compile_config(threads, precision):
    """The CPU plugin's properties for `threads` threads at `precision`."""
    if precision not in PRECISION_HINTS:
        raise UserError(f"--engine openvino runs {' or '.join(PRECISION_HINTS)}; found "
                        f"--precision {precision}")
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}


def read_model(core, path):
    """OpenVINO's model of the ONNX file `path`, its interface checked; a
    UserError naming the file otherwise."""
    try:
        model = core.read_model(os.fspath(path))
    except Exception as err:  # OpenVINO's GeneralFailure, ...: one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: OpenVINO cannot read it ({reason})") from None
    inputs = [name for port in model.inputs for name in port.get_names()]
    outputs = {name for port in model.outputs for name in port.get_names()}
    if inputs != ["images"] or not {"labels", "scores"} <= outputs:
        raise UserError(f"{path}: expected input 'images' and outputs 'labels', 'scores'; "
                        f"found inputs {inputs} and outputs {sorted(outputs)}")
    return model


class OpenVinoSegmenter:
    """OpenVINO twin of `onnx_engine.OnnxSegmenter` (see the module docstring).

    path_or_prefix: a `.onnx` file (its external data beside it), a checkpoint
    prefix or directory (`mean_pixel` and `kernels` as for `OnnxSegmenter`),
    or a `model_cache.ModelFile` of the plain model (`onnx_engine.find_converted`
    with optimise=False). precision: "float32" or "bfloat16".
    """

    def __init__(self, path_or_prefix, *, threads=None, mean_pixel=None, kernels="auto",
                 precision="float32"):
        openvino = openvino_module()
        self.config = compile_config(threads or onnx_engine.cpu_count(), precision)
        if precision == "bfloat16":
            cpuinfo.check_precision("bfloat16")  # no emulated bf16
        self.core = openvino.Core()
        if isinstance(path_or_prefix, model_cache.ModelFile):
            with path_or_prefix as found:
                self.model = read_model(self.core, found.path)
        elif str(path_or_prefix).endswith(".onnx"):
            if not os.path.isfile(path_or_prefix):
                raise UserError(f"{path_or_prefix}: no such ONNX file")
            self.model = read_model(self.core, path_or_prefix)
        else:
            found = onnx_engine.find_converted(path_or_prefix, mean_pixel=mean_pixel,
                                               kernels=kernels, optimise=False)
            if found is None:
                from fcn_graph.weights import checkpoint
                prefix = checkpoint.resolve_checkpoint(str(path_or_prefix))
                found = onnx_engine.converted_model(prefix, mean_pixel=mean_pixel,
                                                    kernels=kernels, optimise=False)
            with found:
                self.model = read_model(self.core, found.path)
        self.shape = self.compiled = self.request = None

    def run(self, batch_rgb, *, scores=False):
        """uint8 [N, H, W, 3] RGB -> (labels int64 [N, H, W], logits or None)."""
        batch = np.ascontiguousarray(batch_rgb, dtype=np.uint8)      # [N, H, W, 3]
        if batch.shape != self.shape:
            self.request = self.compiled = None
            self.model.reshape({"images": list(batch.shape)})
            self.compiled = self.core.compile_model(self.model, "CPU", self.config)
            self.request = self.compiled.create_infer_request()
            self.shape = batch.shape
        self.request.infer({"images": batch})
        # the request's tensors are overwritten by the next call: copies
        labels = self.request.get_tensor("labels").data.copy()      # [N, H, W]
        logits = self.request.get_tensor("scores").data.copy() if scores else None
        return labels, logits

    def close(self):
        self.request = self.compiled = self.model = self.core = None
