"""A checkpoint opened once for a command: `open_checkpoint` resolves what the
user named (a prefix, one of its files, or a folder: its newest checkpoint)
and reads what everything downstream needs into one `OpenedCheckpoint`;
`make_segmenter_for` builds the engine from it.

With ONNX Runtime in float32, or OpenVINO, a model converted before is found
in the model cache by the checkpoint's content without loading TensorFlow;
otherwise the checkpoint is read with TensorFlow.
"""

import dataclasses

from fcn_graph.data import image_files
from fcn_graph.host import tflog
from fcn_graph.network.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class OpenedCheckpoint:
    """source: what the user named; prefix: the checkpoint it resolved to;
    spec: its model description; cached: the converted model the cache holds
    for it (`onnx_engine.find_converted`), or None."""

    source: str
    prefix: str
    spec: ModelSpec
    cached: object = None


def open_checkpoint(source, *, engine="tf", precision="float32", xla=False, mean_pixel=None,
                    kernels="auto"):
    """The `OpenedCheckpoint` of `source`; its class count checked. The cache is
    looked up for engine "onnxruntime" in float32 and engine "openvino" (its
    plain model) in float32 or bfloat16, without XLA."""
    cached = None
    if cache_used(engine, precision, xla):
        from fcn_graph.engines.onnx_engine import find_converted
        cached = find_converted(source, mean_pixel=mean_pixel, kernels=kernels,
                                optimise=False if engine == "openvino" else None)
    if cached is not None:
        prefix, spec = cached.prefix, cached.spec
    else:
        tflog.load_tensorflow()
        from fcn_graph.weights import checkpoint
        prefix = checkpoint.resolve_checkpoint(source)
        spec = checkpoint.model_spec_from_checkpoint(prefix)
    image_files.check_num_classes(spec.num_classes, f"{prefix} (checkpoint)")
    return OpenedCheckpoint(source, prefix, spec, cached)


def cache_used(engine, precision, xla):
    """Whether the engine runs a model of the model cache at this precision."""
    if xla:
        return False
    return (engine == "onnxruntime" and precision == "float32"
            or engine == "openvino" and precision in ("float32", "bfloat16"))


def make_segmenter_for(opened, *, engine="tf", mean_pixel=None, threads=None, xla=False,
                       precision="float32", kernels="auto", calibration=None):
    """The segmenter of an `OpenedCheckpoint`: the cached model when there is
    one, else `segmenter.make_segmenter` on the checkpoint, pinned
    (`checkpoint.with_newest`: when a running training prunes it meanwhile, the
    newest checkpoint that still reads, with a note)."""
    if opened.cached is not None and engine == "openvino":
        from fcn_graph.engines.openvino_engine import OpenVinoSegmenter
        return OpenVinoSegmenter(opened.cached, threads=threads, precision=precision)
    if opened.cached is not None:
        from fcn_graph.engines.onnx_engine import OnnxSegmenter
        return OnnxSegmenter(opened.cached, threads=threads)
    from fcn_graph.engines.segmenter import make_segmenter
    from fcn_graph.weights import checkpoint
    return checkpoint.with_newest(opened.source, lambda pinned: make_segmenter(
        pinned, engine=engine, mean_pixel=mean_pixel, threads=threads, xla=xla,
        precision=precision, kernels=kernels, calibration=calibration), prefix=opened.prefix)
