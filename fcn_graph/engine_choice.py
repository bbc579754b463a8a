"""Which engine runs a checkpoint when `--engine auto` (the default) asks.

`choose_engine(requested, precision=..., xla=...)` returns the engine and the
reason, without importing TensorFlow or ONNX Runtime:

- an engine named on the command line is kept;
- int8 runs on ONNX Runtime; bfloat16, float16 and XLA on TensorFlow;
- with a GPU (an NVIDIA driver that lists one, not hidden by
  CUDA_VISIBLE_DEVICES), TensorFlow, whose reference kernels run there as
  cuDNN/cuBLAS calls;
- without ONNX Runtime installed, TensorFlow;
- otherwise ONNX Runtime: on the CPU it computes the same network faster than
  TensorFlow on every CPU kind measured (docs/performance.md), and after the
  first run it starts from the converted model without loading TensorFlow.
"""

import importlib.util
import os

AUTO = "auto"
# Where the NVIDIA driver lists the GPUs it drives, one folder each.
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def nvidia_gpu_visible(environ=None, gpus_dir=NVIDIA_GPUS):
    """Whether an NVIDIA GPU is there for this process: the driver lists one
    and CUDA_VISIBLE_DEVICES does not hide them all ("" or "-1")."""
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return bool(os.listdir(gpus_dir))
    except OSError:
        return False


def onnxruntime_installed():
    return importlib.util.find_spec("onnxruntime") is not None


def choose_engine(requested, *, precision="float32", xla=False, gpu=None, has_onnxruntime=None):
    """(engine, reason) for `--engine requested` ("auto", None, "tf" or
    "onnxruntime"). `gpu` and `has_onnxruntime` default to what this machine has."""
    if requested not in (None, AUTO):
        return requested, "--engine"
    if precision == "int8":
        return "onnxruntime", "auto: int8 runs on ONNX Runtime"
    if precision != "float32":
        return "tf", f"auto: {precision} runs on TensorFlow"
    if xla:
        return "tf", "auto: --xla compiles the TensorFlow graph"
    gpu = nvidia_gpu_visible() if gpu is None else gpu
    if gpu:
        return "tf", "auto: a GPU is visible"
    has_onnxruntime = onnxruntime_installed() if has_onnxruntime is None else has_onnxruntime
    if not has_onnxruntime:
        return "tf", "auto: onnxruntime is not installed (pip install fcn_graph[export])"
    return "onnxruntime", "auto: the faster engine on a CPU"
