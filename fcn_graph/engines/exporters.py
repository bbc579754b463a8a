"""Exporting a checkpoint for serving: a SavedModel, a frozen GraphDef, ONNX or LiteRT,
each loaded back and checked against the checkpoint before it replaces the
target (`python -m fcn_graph.export` describes the contract)."""

import os
import shutil
import stat
import uuid

import numpy as np
import tensorflow as tf

from fcn_graph.core.constants import EXPORT_FORMATS
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import (
    atomic_write,
    claim_output,
    kind_of,
    place_file,
    record_output,
    refuse_planted,
)
from fcn_graph.engines import onnx_engine
from fcn_graph.host import choice
from fcn_graph.host.session import session_config
from fcn_graph.network import tf_layers
from fcn_graph.weights import checkpoint
from fcn_graph.weights.checkpoint_files import SIDECAR_SUFFIX

tf1 = tf.compat.v1

INPUT_NAME = "images"
OUTPUT_NAMES = ("labels", "scores")
FORMATS = EXPORT_FORMATS
SIGNATURE_KEY = "serving_default"
TOLERANCE = 1e-4                 # largest accepted max relative error of the scores
VERIFY_SIZE = (67, 93)           # odd sizes: every SAME-padding corner case on the way
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 24  # a GraphDef or ONNX file must stay below 2 GB
LABELS_DTYPE = {"savedmodel": "int32", "frozen": "int32", "onnx": "int64",  # ONNX: ArgMax's own
                "tflite": "int32"}
# LiteRT exports are checked at several sizes, odd and tiny ones included, and
# their labels must agree with the checkpoint's on this fraction of pixels.
TFLITE_VERIFY_SIZES = ((67, 93), (1, 1), (37, 45), (130, 101))
TFLITE_LABELS_AGREE = 0.999


class VerificationError(UserError):
    """An export whose scores differ from the checkpoint's."""


def serving_graph(spec, kernels="reference"):
    """The serving graph of a `ModelSpec` with the kernel set `kernels`:
    (graph, images, labels, scores).

    images: uint8 [N, H, W, 3] RGB placeholder named "images";
    labels: int32 [N, H, W] named "labels"; scores: float32 [N, H, W, K] named "scores".
    """
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.uint8, [None, None, None, 3], name=INPUT_NAME)
        net = tf.cast(images, tf.float32)                             # [N, H, W, 3] RGB
        layers = choice.kernel_layers(kernels)
        logits, prediction, _ = tf_layers.build(net, spec, layers=layers)  # [N, H, W, K]
        scores = tf.identity(logits, name="scores")                   # [N, H, W, K]
        labels = tf.cast(prediction, tf.int32, name="labels")         # [N, H, W]
    return graph, images, labels, scores


class _Restored:
    """A serving graph with the checkpoint's weights in a session."""

    def __init__(self, prefix, kernels):
        self.prefix = checkpoint.resolve_checkpoint(prefix)
        self.spec = checkpoint.model_spec_from_checkpoint(self.prefix)
        self.graph, self.images, self.labels, self.scores = serving_graph(self.spec, kernels)
        self.variables = tf_layers.model_variables(self.graph)
        self.session = tf1.Session(graph=self.graph, config=session_config())
        checkpoint.restore_model(self.session, self.prefix, self.variables)
        self.nbytes = sum(4 * int(np.prod(v.shape.as_list())) for v in self.variables.values())

    def frozen_graph_def(self):
        if self.nbytes > PROTOBUF_LIMIT:
            raise UserError(f"{self.prefix}: {self.nbytes / 2**30:.2f} GiB of weights; a frozen "
                            "GraphDef must stay below 2 GB (export a SavedModel instead)")
        with self.graph.as_default():
            return tf1.graph_util.convert_variables_to_constants(
                self.session, self.graph.as_graph_def(), list(OUTPUT_NAMES))

    def close(self):
        self.session.close()


def frozen_session_config(threads=None):
    """Session settings for running a frozen graph: Grappler off. Its passes
    copy every large constant several times on the first run; the graph is
    already final."""
    config = session_config(threads)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def verification_image(seed=0):
    """The seeded random uint8 [1, 67, 93, 3] image every export is checked on."""
    return np.random.default_rng(seed).integers(0, 256, (1,) + VERIFY_SIZE + (3,), np.uint8)


def _reference(prefix, image):
    from fcn_graph.engines.segmenter import Segmenter  # the checkpoint as `infer` runs it

    segmenter = Segmenter(prefix)
    try:
        labels, scores = segmenter.run(image, scores=True)
    finally:
        segmenter.close()
    return labels, scores


def _compare(what, path, labels, scores, want_labels, want_scores, *, exact=True):
    """Check an export's outputs against the checkpoint's; returns a report dict.
    With `exact` false (an int8 model), only the shapes are checked and the
    error reported."""
    tolerance = TOLERANCE if exact else None
    scores = np.asarray(scores)
    if scores.shape != want_scores.shape or np.asarray(labels).shape != want_labels.shape:
        raise VerificationError(f"{path}: {what} gave scores {list(scores.shape)} and labels "
                                f"{list(np.shape(labels))}; expected {list(want_scores.shape)} "
                                f"and {list(want_labels.shape)}")
    error = float(np.abs(scores - want_scores).max() / max(np.abs(want_scores).max(), 1e-30))
    agree = float(np.mean(np.asarray(labels) == want_labels))
    height, width = want_labels.shape[1:3]
    limit = "no limit" if tolerance is None else f"limit {tolerance:g}"
    print(f"verified with {what} on a {width}x{height} image: max relative error of scores "
          f"{error:.2e} ({limit}), labels agree on {agree:.2%} of pixels")
    if tolerance is not None and not error < tolerance:
        raise VerificationError(f"{path}: scores differ from the checkpoint's (max relative "
                                f"error {error:.3g} >= {tolerance:g}); nothing written")
    return {"max_rel_error": error, "labels_agree": agree}


def _report(prefix, spec, fmt, path, **extra):
    report = {
        "format": fmt, "path": path, "checkpoint": prefix,
        "inputs": {INPUT_NAME: "uint8 [N, H, W, 3] RGB"},
        "outputs": {"labels": f"{LABELS_DTYPE[fmt]} [N, H, W]",
                    "scores": f"float32 [N, H, W, {spec.num_classes}]"},
        "num_classes": spec.num_classes, "architecture": spec.architecture, "skips": spec.skips,
        "channel_order": spec.channel_order,
        "mean_pixel": list(spec.mean_pixel) if spec.mean_pixel else None,
        "max_rel_error": None, "labels_agree": None,
    }
    report.update(extra)
    return report


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
                   for f in files)
    return os.path.getsize(path)


def is_checkpoint_file(path):
    """Whether `path` names a file of a TensorFlow checkpoint: PREFIX.index,
    PREFIX.data-*, PREFIX.meta, the sidecar PREFIX.json, or the state file
    `checkpoint`."""
    base = os.path.basename(os.path.normpath(path))
    if base == "checkpoint" or base.endswith((".index", ".meta")) or ".data-" in base:
        return True
    return base.endswith(SIDECAR_SUFFIX) and os.path.exists(
        path[:-len(SIDECAR_SUFFIX)] + ".index")


_KIND = {"savedmodel": "a SavedModel", "frozen": "a frozen graph (.pb)", "onnx": "an ONNX export",
         "tflite": "a LiteRT model (.tflite)"}


def _check_target(out_path, fmt, *, force=False, extra=()):
    """Prepare to write `out_path` (and the files in `extra`): create the
    folder where missing, check that it can be written and claim the names in
    the folder's record of fcn_graph's outputs (`fileio.claim_output`). An
    existing target is refused unless `force` is given and export wrote it
    there (changed since or not); a checkpoint's file, a link or anyone
    else's file is never replaced."""
    for path in (out_path, *extra):
        if not os.path.lexists(path):
            continue
        if is_checkpoint_file(path):
            raise UserError(f"--out {path}: is a file of a checkpoint; export never replaces "
                            "one (choose another --out)")
        mode = os.lstat(path).st_mode
        if fmt == "savedmodel" and path == out_path and not stat.S_ISDIR(mode):
            raise UserError(f"--out {path}: is {kind_of(mode)}; expected {_KIND[fmt]} folder "
                            "to write")
        if (fmt != "savedmodel" or path != out_path) and not stat.S_ISREG(mode):
            raise UserError(f"--out {path}: is {kind_of(mode)}; expected a file to write")
        if not force:
            raise UserError(f"--out {path}: exists; refusing to replace it (pass --force to "
                            f"replace an earlier export of fcn_graph's)")
    claim_output(out_path, "--out", force=force, also=extra, folder=fmt == "savedmodel")


def export_frozen(prefix, out_path, *, verify=True, force=False, kernels="reference"):
    """Write a frozen GraphDef (`.pb`, weights as constants) with tensors
    images:0, labels:0 and scores:0, in the kernel set `kernels`. Returns a
    report dict."""
    _check_target(out_path, "frozen", force=force)
    restored = _Restored(prefix, kernels)
    try:
        graph_def = restored.frozen_graph_def()
        report = _report(restored.prefix, restored.spec, "frozen", out_path,
                         kernels=kernels, tensors={"images": "images:0",
                                                   "labels": "labels:0", "scores": "scores:0"})
    finally:
        restored.close()
    with atomic_write(out_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(graph_def.SerializeToString())
        if verify:
            image = verification_image()
            want = _reference(report["checkpoint"], image)
            loaded = tf1.GraphDef()
            with open(tmp, "rb") as handle:
                loaded.ParseFromString(handle.read())
            graph = tf.Graph()
            with graph.as_default():
                tf.import_graph_def(loaded, name="")
            with tf1.Session(graph=graph, config=frozen_session_config()) as sess:
                labels, scores = sess.run(["labels:0", "scores:0"], {"images:0": image})
            report.update(_compare("TensorFlow (frozen graph)", out_path, labels, scores, *want))
    record_output(out_path)
    report["bytes"] = _size(out_path)
    return report


def export_savedmodel(prefix, out_dir, *, verify=True, force=False, kernels="reference"):
    """Write a SavedModel directory (tag "serve", signature "serving_default":
    images -> labels, scores), in the kernel set `kernels`. Returns a report dict."""
    _check_target(out_dir, "savedmodel", force=force)
    parent, base = os.path.split(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    restored = _Restored(prefix, kernels)
    try:
        report = _report(restored.prefix, restored.spec, "savedmodel", out_dir, kernels=kernels,
                         signature=SIGNATURE_KEY,
                         tags=[tf1.saved_model.tag_constants.SERVING])
        with restored.graph.as_default():
            signature = tf1.saved_model.signature_def_utils.predict_signature_def(
                inputs={INPUT_NAME: restored.images},
                outputs={"labels": restored.labels, "scores": restored.scores})
            builder = tf1.saved_model.Builder(tmp)
            builder.add_meta_graph_and_variables(
                restored.session, [tf1.saved_model.tag_constants.SERVING],
                signature_def_map={SIGNATURE_KEY: signature}, strip_default_attrs=True)
            builder.save()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        restored.close()
    try:
        if verify:
            image = verification_image()
            want = _reference(report["checkpoint"], image)
            serve = tf.saved_model.load(tmp).signatures[SIGNATURE_KEY]
            out = serve(**{INPUT_NAME: tf.constant(image)})
            report.update(_compare("TensorFlow (SavedModel signature)", out_dir,
                                   out["labels"].numpy(), out["scores"].numpy(), *want))
        # Swap the new directory in: rename the old one aside, then drop it.
        old = None
        if refuse_planted(out_dir, directory_ok=True) is not None:
            old = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.old")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record_output(out_dir)
    report["bytes"] = _size(out_dir)
    return report


def export_onnx(prefix, out_path, *, opset=onnx_engine.DEFAULT_OPSET, verify=True,
                external_data=False, force=False, kernels="reference", quantize=None,
                calibration=None):
    """Write `onnx_engine.build_onnx_model`'s model of the checkpoint (the one
    `--engine onnxruntime` runs): input `images` uint8 [N, H, W, 3] RGB,
    outputs `labels` int64 [N, H, W] and `scores` float32 [N, H, W, K], N, H
    and W dynamic. With `external_data`, the weights go to `out_path + ".data"`
    and `out_path` holds the graph (`onnx_engine.save_model`).

    The file(s) are written in a temporary directory beside `out_path`,
    verified there with onnxruntime (unless verify=False), then renamed into
    place, the `.onnx` last; a failure leaves `out_path` as it was.

    With `quantize` "int8", the model written is `int8.quantize_model`'s
    int8 model of it, calibrated on the images of folder `calibration`; its
    verification checks the outputs' shapes and reports the scores' error and
    the labels' agreement with the checkpoint without a tolerance (int8 is not
    float32).

    Returns a dict: format, path, checkpoint, inputs, outputs, num_classes,
    architecture, skips, channel_order, mean_pixel, opset, external_data (the
    data file, or None), quantize (None or "int8"), calibration_images (their
    number, or None), max_rel_error and labels_agree (None without
    verification), bytes (both files).
    """
    try:
        import onnx  # noqa: F401  (build_onnx_model and save_model)
        if verify:
            import onnxruntime  # noqa: F401
    except ImportError as err:
        raise UserError(f"--format onnx needs onnx and onnxruntime ({err}); install them with "
                        "pip install -e '.[export]'") from None
    onnx_engine.check_opset(opset)
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize: expected int8, found {quantize!r}")
    paths = None
    if quantize:
        from fcn_graph.engines.int8_model import calibration_files
        paths = calibration_files(calibration)
    data_path = onnx_engine.external_data_path(out_path) if external_data else None
    _check_target(out_path, "onnx", force=force, extra=[data_path] if data_path else [])

    prefix = checkpoint.resolve_checkpoint(prefix)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    model = onnx_engine.build_onnx_model(prefix, opset=opset, kernels=kernels)
    if not external_data and model.ByteSize() > PROTOBUF_LIMIT:
        raise UserError(f"{out_path}: the ONNX model would be {model.ByteSize() / 2**30:.2f} GiB; "
                        "a single ONNX file must stay below 2 GB (add --external-data)")
    report = _report(prefix, spec, "onnx", out_path, opset=opset, external_data=data_path,
                     kernels=kernels, quantize=quantize,
                     calibration_images=len(paths) if paths else None)
    parent, base = os.path.split(os.path.abspath(out_path))
    work = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    os.mkdir(work)
    try:
        tmp = os.path.join(work, base)   # the same name: the model names its data file
        if quantize:
            from fcn_graph.engines.int8_model import quantize_model
            float_path = os.path.join(work, "float.onnx")
            onnx_engine.save_model(model, float_path, external_data=True)
            del model
            print(f"quantizing to int8, calibrated on {len(paths)} images", flush=True)
            quantize_model(float_path, paths, tmp)
            if external_data:
                import onnx
                onnx_engine.save_model(onnx.load(tmp), tmp, external_data=True)
        else:
            onnx_engine.save_model(model, tmp, external_data=external_data)
            del model
        if verify:
            image = verification_image()
            want = _reference(prefix, image)
            session = onnx_engine.load_session(tmp, onnx_engine.session_options(),
                                               ["CPUExecutionProvider"])
            labels, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
            del session
            # An int8 model is compared without a limit: its error is reported.
            report.update(_compare("onnxruntime (int8)" if quantize else "onnxruntime",
                                   out_path, labels, scores, *want, exact=not quantize))
        if external_data:
            place_file(onnx_engine.external_data_path(tmp), data_path)
        place_file(tmp, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record_output(out_path, also=[data_path] if data_path else [])
    report["bytes"] = sum(_size(path) for path in filter(None, (out_path, data_path)))
    return report


def export_tflite(prefix, out_path, *, verify=True, force=False, kernels="reference",
                  quantize=None, calibration=None, val=None):
    """Write the LiteRT model of the checkpoint (`litert.convert`): input
    `images` uint8 [N, H, W, 3] RGB, outputs `labels` int32 [N, H, W] and
    `scores` float32 [N, H, W, K], N, H and W dynamic; the reference kernel
    set (the cpu set's loops do not convert). With `quantize` "int8", the
    full-integer int8 model calibrated on the images of folder `calibration`.

    Written under a temporary name, checked there with the LiteRT interpreter
    (unless verify=False), then renamed into place. float32: at every size
    of TFLITE_VERIFY_SIZES the scores must match the checkpoint's (max
    relative error below TOLERANCE) and the labels agree on at least
    TFLITE_LABELS_AGREE of the pixels. int8: the errors are reported, and
    `litert.label_agreement` with the float32 checkpoint on the images of
    `val` (a folder, or a labelled `datasets.SplitFiles`: then also the mean
    IU of both against its labels; else the calibration images) is printed
    and returned as "int8_check".

    Returns `_report`'s dict with quantize, calibration_images and bytes."""
    from fcn_graph.engines import litert
    from fcn_graph.engines.int8_model import calibration_files, print_progress
    if kernels == "cpu":
        raise UserError("--kernels cpu: --format tflite writes the reference kernels (the cpu "
                        "set's loops do not convert to LiteRT ops); drop --kernels")
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize: expected int8, found {quantize!r}")
    if verify:
        litert.interpreter_class()
    paths = calibration_files(calibration) if quantize else None
    held_out = None
    if quantize and val is not None:
        held_out = val if hasattr(val, "label_paths") else calibration_files(val, "--val")
    _check_target(out_path, "tflite", force=force)
    restored = _Restored(prefix, "reference")
    try:
        if quantize:
            print(f"quantizing to int8 (full integer), calibrated on {len(paths)} images",
                  flush=True)
        data = litert.convert(restored.session, restored.images,
                              (restored.labels, restored.scores), calibration=paths,
                              progress=print_progress if quantize else None)
        report = _report(restored.prefix, restored.spec, "tflite", out_path,
                         kernels="reference", quantize=quantize,
                         calibration_images=len(paths) if paths else None)
    finally:
        restored.close()
    with atomic_write(out_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
        del data
        if verify:
            report.update(_verify_tflite(report["checkpoint"], tmp, out_path, quantize,
                                         held_out or paths, "--val images" if held_out
                                         else "calibration images"))
    record_output(out_path)
    report["bytes"] = _size(out_path)
    return report


def _verify_tflite(prefix, model_path, out_path, quantize, images, source):
    """`export_tflite`'s check of the model at `model_path` against the checkpoint."""
    from fcn_graph.engines import litert
    from fcn_graph.engines.segmenter import Segmenter

    what = "LiteRT (int8)" if quantize else "LiteRT"
    segmenter = litert.LiteRTSegmenter(model_path)
    reference = Segmenter(prefix)
    try:
        found = {"max_rel_error": 0.0, "labels_agree": 1.0}
        for index, size in enumerate(TFLITE_VERIFY_SIZES):
            image = np.random.default_rng(index).integers(0, 256, (1,) + size + (3,), np.uint8)
            labels, scores = segmenter.run(image, scores=True)
            checked = _compare(what, out_path, labels, scores, *reference.run(image, scores=True),
                               exact=not quantize)
            if not quantize and checked["labels_agree"] < TFLITE_LABELS_AGREE:
                raise VerificationError(
                    f"{out_path}: labels agree with the checkpoint's on "
                    f"{checked['labels_agree']:.2%} of the pixels of a {size[1]}x{size[0]} "
                    f"image (expected at least {TFLITE_LABELS_AGREE:.1%}); nothing written")
            found = {"max_rel_error": max(found["max_rel_error"], checked["max_rel_error"]),
                     "labels_agree": min(found["labels_agree"], checked["labels_agree"])}
        if quantize:
            found["int8_check"] = litert.label_agreement(segmenter, reference, images,
                                                         reference.spec.num_classes,
                                                         source=source)
            print(litert.format_agreement(found["int8_check"]), flush=True)
    finally:
        segmenter.close()
        reference.close()
    return found


EXPORTERS = {"savedmodel": export_savedmodel, "frozen": export_frozen, "onnx": export_onnx,
             "tflite": export_tflite}
