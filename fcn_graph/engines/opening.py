"""A checkpoint opened once for a command: `open_checkpoint` resolves what the
user named (a prefix, one of its files, or a folder: its newest checkpoint)
and reads what everything downstream needs into one `OpenedCheckpoint`;
`make_segmenter_for` builds the engine from it.

With ONNX Runtime in float32 a model converted before is found in the model
cache by the checkpoint's content without loading TensorFlow; otherwise the
checkpoint is read with TensorFlow.
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
    looked up for engine "onnxruntime" in float32 without XLA."""
    cached = None
    if engine == "onnxruntime" and precision == "float32" and not xla:
        from fcn_graph.engines.onnx_engine import find_converted
        cached = find_converted(source, mean_pixel=mean_pixel, kernels=kernels)
    if cached is not None:
        prefix, spec = cached.prefix, cached.spec
    else:
        tflog.load_tensorflow()
        from fcn_graph.weights import checkpoint
        prefix = checkpoint.resolve_checkpoint(source)
        spec = checkpoint.model_spec_from_checkpoint(prefix)
    image_files.check_num_classes(spec.num_classes, f"{prefix} (checkpoint)")
    return OpenedCheckpoint(source, prefix, spec, cached)


def make_segmenter_for(opened, *, engine="tf", mean_pixel=None, threads=None, xla=False,
                       precision="float32", kernels="auto", calibration=None):
    """The segmenter of an `OpenedCheckpoint`: the cached model when there is
    one, else `segmenter.make_segmenter` on the checkpoint, pinned
    (`checkpoint.with_newest`: when a running training prunes it meanwhile, the
    newest checkpoint that still reads, with a note)."""
    if opened.cached is not None:
        from fcn_graph.engines.onnx_engine import OnnxSegmenter
        return OnnxSegmenter(opened.cached, threads=threads)
    from fcn_graph.engines.segmenter import make_segmenter
    from fcn_graph.weights import checkpoint
    return checkpoint.with_newest(opened.source, lambda pinned: make_segmenter(
        pinned, engine=engine, mean_pixel=mean_pixel, threads=threads, xla=xla,
        precision=precision, kernels=kernels, calibration=calibration), prefix=opened.prefix)
