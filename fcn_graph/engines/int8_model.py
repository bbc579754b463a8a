"""int8 models of the ONNX FCN: ONNX Runtime's static quantization, calibrated
on the user's images.

`quantize_model(model, calibration, out_path)` takes a float model of
`onnx_engine.onnx_model` (a ModelProto or a `.onnx` path), runs it on the
images of the folder `calibration` to find the range of every activation, and
writes the int8 model to `out_path`: QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized op, which ONNX Runtime fuses into
int8 kernels), weights int8 per output channel, activations uint8 per tensor.
The model keeps the interface of the float one (uint8 images in, int64 labels
and float32 scores out), so `onnx_engine.OnnxSegmenter` runs it as it is.

`calibration_reader` is its data reader: each image read as `infer` reads
it (RGB uint8, its own size, batch 1), images larger than
CALIBRATION_MAX_SIDE on their long side scaled down to it, so that
calibration memory stays bounded.

`quantize_model` reads no checkpoint and does not import TensorFlow; it is a
function of the float model and the images only. `int8_segmenter` builds the
float model of a checkpoint and quantizes it for `segmenter.make_segmenter`.
"""

import contextlib
import hashlib
import logging
import os
import stat
import sys
import tempfile

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import atomic_write, kind_of, link_problem
from fcn_graph.data import image_files

# Calibration methods of `quantize_model`: the activation range from the
# minimum and maximum seen (reduced inside the model, merged image by image:
# the memory of one image's activations), or from histograms (a percentile of the values, or the range
# that keeps the quantized distribution closest in entropy), for which ONNX
# Runtime keeps every activation of every calibration image in memory.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_METHOD = "minmax"
# At most this many images of the folder calibrate, spread evenly over its sorted list.
CALIBRATION_IMAGES = 32
# Long side, in pixels, above which a calibration image is scaled down.
CALIBRATION_MAX_SIDE = 1024
# Op types quantized: the convolutions and what runs between them in int8
# as well as in float (ReLU, pooling, the im2col Concat). The fuse Adds, the
# upsampling crops (Pad, Slice, DepthToSpace), the ArgMax and the Transposes
# stay float, as do the upsamplings themselves with `float_upsampling`: the
# scores they produce are what the labels are the argmax of.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Relu", "MaxPool", "AveragePool", "Concat")


def calibration_files(directory, flag="--calibration", limit=CALIBRATION_IMAGES):
    """The image files (by extension) of folder `directory`, sorted; at most
    `limit`, taken evenly over the list. A missing path, a path that is not a
    folder, or a folder without images is a UserError naming `flag`."""
    problem = link_problem(directory)
    if problem is not None:
        raise UserError(f"{flag} {directory}: {problem}; expected a folder of images to "
                        "calibrate int8 on")
    try:
        mode = os.stat(directory).st_mode
    except OSError as err:
        raise UserError(f"{flag} {directory}: {err.strerror}; expected a folder of images "
                        "to calibrate int8 on") from None
    if not stat.S_ISDIR(mode):
        raise UserError(f"{flag} {directory}: is {kind_of(mode)}; expected a folder of images "
                        "to calibrate int8 on")
    try:
        names = sorted(os.listdir(directory))
    except OSError as err:
        raise UserError(f"{flag} {directory}: cannot list this folder ({err.strerror})") from None
    paths = []
    for name in names:
        path = os.path.join(directory, name)
        if name.lower().endswith(image_files.IMAGE_EXTENSIONS) and os.path.isfile(path):
            paths.append(path)
    if not paths:
        raise UserError(f"{flag} {directory}: holds no images (expected files ending in "
                        f"{', '.join(image_files.IMAGE_EXTENSIONS)}), found "
                        f"{len(names)} other entries")
    if len(paths) > limit:
        picks = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths = [paths[i] for i in picks]
    return paths


def calibration_image(path, max_side=CALIBRATION_MAX_SIDE):
    """uint8 [1, H, W, 3] RGB: image `path` as `infer` reads it, scaled down
    (area interpolation) so that its long side is at most `max_side`."""
    import cv2
    image = image_files.read_image(path)                      # [H, W, 3]
    height, width = image.shape[:2]
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image[np.newaxis]                                  # [1, H, W, 3]


class _PreprocessingAdvice(logging.Filter):
    """Drops ONNX Runtime's advice to run its shape-inference pre-processing
    (logged on the root logger by every quantize_static call); the FCN's
    shapes are dynamic, and the model is quantized as built."""

    def filter(self, record):
        return "pre-process" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice():
    root, advice = logging.getLogger(), _PreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def upsampling_nodes(model):
    """Names of the nodes of ONNX `model` that upsample: every ConvTranspose
    (the reference kernel set) and every Conv whose output feeds a
    DepthToSpace (the phase form of the cpu kernel set)."""
    into_d2s = {node.input[0] for node in model.graph.node if node.op_type == "DepthToSpace"}
    return [node.name for node in model.graph.node
            if node.op_type == "ConvTranspose"
            or (node.op_type == "Conv" and node.output[0] in into_d2s)]


def _reader_base():
    try:
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:
        raise UserError("--precision int8 needs onnx and onnxruntime; install them with "
                        "pip install -e '.[export]'") from None
    return CalibrationDataReader


def calibration_reader(paths, *, input_name="images", max_side=CALIBRATION_MAX_SIDE,
                       progress=None):
    """A `CalibrationDataReader` feeding `{input_name: image}` for each of
    `paths` in turn (`calibration_image`), read one at a time; `progress(i, n)`
    is called after each image."""

    class CalibrationImages(_reader_base()):
        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index >= len(paths):
                return None
            batch = calibration_image(paths[self.index], max_side)
            self.index += 1
            if progress is not None:
                progress(self.index, len(paths))
            return {input_name: batch}

        def rewind(self):
            self.index = 0

    return CalibrationImages()


def _calibrate_method(method):
    from onnxruntime.quantization import CalibrationMethod
    if method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration-method: expected one of {', '.join(CALIBRATION_METHODS)}, "
                        f"found {method!r}")
    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]


def quantize_model(model, calibration, out_path, *, method=DEFAULT_CALIBRATION_METHOD,
                   limit=CALIBRATION_IMAGES, max_side=CALIBRATION_MAX_SIDE,
                   exclude_ops=(), float_upsampling=True, reduce_range=None, progress=None,
                   flag="--calibration"):
    """Write the int8 (QDQ, per-channel weights) model of float ONNX `model`
    (a ModelProto or a path) to `out_path`, calibrated on the images of folder
    `calibration` (`calibration_files`; or a list of image paths) with
    `method` ("minmax", "percentile" or "entropy"). Op types in `exclude_ops`
    stay float, and with `float_upsampling` the three upsamplings do
    (`upsampling_nodes`). `reduce_range` keeps the weights to 7 bits, which
    int8 kernels without dot-product units (AVX2's 16-bit pair sums) need
    against overflow; None: where `cpuinfo` finds no such units. Returns the
    list of calibration image paths.

    Calibration runs batch 1 at each image's size; with "minmax" the running
    range is merged after every image, so memory stays that of one image's
    activations."""
    paths = calibration if isinstance(calibration, (list, tuple)) else \
        calibration_files(calibration, flag, limit)
    reader = calibration_reader(paths, max_side=max_side, progress=progress)
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    calibrate_method = _calibrate_method(method)
    if reduce_range is None:
        reduce_range = default_reduce_range()
    quantized = [op for op in QUANTIZED_OPS if op not in exclude_ops]
    extra = {
        # symmetric int8 weights; activations uint8 with their own zero point
        "WeightSymmetric": True, "ActivationSymmetric": False,
        "CalibTensorRangeSymmetric": False,
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    if isinstance(model, onnx.ModelProto):
        source = None
    else:
        source = os.fspath(model)
        model = onnx.load(source, load_external_data=False)  # the graph only
    excluded = upsampling_nodes(model) if float_upsampling else []
    with tempfile.TemporaryDirectory(prefix="fcn_int8_") as work:
        if source is None:
            # quantize_static moves a ModelProto's weights out to a file of its
            # own, emptying the caller's initializers: it gets a copy in a file.
            source = os.path.join(work, "float.onnx")
            with open(source, "wb") as handle:
                handle.write(model.SerializeToString())
        del model
        # quantize_static keeps its augmented calibration model in a temporary
        # folder of its own; the output goes through atomic_write's temporary name.
        with atomic_write(out_path) as tmp, _without_preprocessing_advice():
            quantize_static(source, tmp, reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=quantized, per_channel=True,
                            reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=calibrate_method,
                            extra_options=extra)
    return paths


def int8_segmenter(prefix, calibration, *, threads=None, mean_pixel=None, kernels="auto",
                   method=DEFAULT_CALIBRATION_METHOD, progress=None):
    """An `onnx_engine.OnnxSegmenter` running the int8 model of checkpoint
    `prefix`: `onnx_engine.build_onnx_model` (float, kernel set `kernels`)
    quantized by `quantize_model` on `calibration` (a folder or a list of image
    paths), kept in the model cache (`model_cache.cached_onnx_model`), keyed
    by the checkpoint, the build options and the calibration images' names
    and bytes, and reused from there. Warns on stderr where the CPU has no
    int8 dot-product units (`cpuinfo.check_precision`)."""
    from fcn_graph.engines import model_cache, onnx_engine
    from fcn_graph.host import cpuinfo
    from fcn_graph.weights import checkpoint
    cpuinfo.check_precision("int8")
    paths = calibration if isinstance(calibration, (list, tuple)) else \
        calibration_files(calibration)
    prefix = checkpoint.resolve_checkpoint(str(prefix))
    variant = dict(onnx_engine.onnx_variant(mean_pixel=mean_pixel, kernels=kernels),
                   precision="int8", optimised_for=None, method=method,
                   calibration=calibration_digest(paths), reduce_range=default_reduce_range())

    def build(folder):
        model = onnx_engine.build_onnx_model(prefix, mean_pixel=mean_pixel, kernels=kernels)
        print(f"quantizing {prefix} to int8, calibrated on {len(paths)} images",
              file=sys.stderr, flush=True)
        quantize_model(model, paths, os.path.join(folder, model_cache.MODEL_FILE),
                       method=method, progress=progress)
        return {"optimised": False}

    found = model_cache.cached_onnx_model(prefix, variant=variant, build=build)
    return onnx_engine.OnnxSegmenter(found, threads=threads)


def default_reduce_range():
    """Whether weights keep to 7 bits here: on CPUs without int8 dot-product
    units (`cpuinfo.has_int8_units`)."""
    from fcn_graph.host import cpuinfo
    features = cpuinfo.cpu_features()
    return bool(features) and not cpuinfo.has_int8_units(features)


def calibration_digest(paths):
    """SHA-256 of the calibration images' names and bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise UserError(f"{path}: cannot read the calibration image "
                            f"({err.strerror or err})") from None
        digest.update(b"\0")
    return digest.hexdigest()


def print_progress(index, total, file=None):
    """A `progress` for `quantize_model`: one line per image, on stderr."""
    print(f"calibrating int8: image {index} of {total}", file=file or sys.stderr, flush=True)
