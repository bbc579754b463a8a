"""LiteRT (TensorFlow Lite) models of a checkpoint: conversion, and the LiteRT
interpreter behind the segmenter interface.

    data = convert(session, images, (labels, scores))                    # float32
    data = convert(session, images, (labels, scores), calibration=paths)  # int8
    segmenter = LiteRTSegmenter("voc.tflite", threads=2)
    labels, scores = segmenter.run(batch_uint8, scores=True)

`convert` runs `tf.compat.v1.lite.TFLiteConverter.from_session` on the
serving graph of `exporting.serving_graph` (reference kernel set): uint8
images [N, H, W, 3] in, int32 labels [N, H, W] and float32 scores
[N, H, W, K] out, with N, H and W dynamic (shape signature [-1, -1, -1, 3]).
The three transposed convolutions take their output shape from the input's
at run time (SHAPE, STRIDED_SLICE, PACK into TRANSPOSE_CONV), so one model
runs every size: `resize_tensor_input` then `allocate_tensors` for each new
shape, as `LiteRTSegmenter.run` does.

int8 is full-integer quantization: int8 weights (per output channel) and
int8 activations, calibrated on the user's images (read as
`quantize.calibration_image` reads them), every op an int8 builtin; the
uint8 input and the int32 labels stay as they are and the scores come out
dequantized to float32, so the interface is the float model's. Dynamic-range
quantization (int8 weights, float activations) needs no calibration but its
hybrid kernels run outside LiteRT's XNNPACK delegate: many times slower than
float32 on a CPU, where full-integer int8 is faster than float32.

The interpreter is `ai_edge_litert.interpreter.Interpreter` (the LiteRT
package, pip install ai-edge-litert, in the `export` and `dev` extras).
"""

import contextlib
import os
import re

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.metrics import ConfusionMatrix
from fcn_graph.host import tflog

OUTPUT_NAMES = ("labels", "scores")
# What the converter and the interpreter print on standard error as a matter
# of course, left out of a command's output (`quiet`).
NOTICES = re.compile(rb"(INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
                     rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
                     rb"output_inference_type: \w+)\r?\n?\Z")


def quiet():
    """A context in which LiteRT's routine notices (NOTICES) and TensorFlow's
    start-up lines are dropped from standard error; every other line shows.
    With TF_CPP_MIN_LOG_LEVEL=0 nothing is dropped."""
    if not tflog.filtering_enabled():
        return contextlib.nullcontext()
    startup = tflog.StartupFilter()
    return tflog.filtered_stderr(lambda line: not NOTICES.match(line) and startup.keep(line))


def interpreter_class():
    """LiteRT's `Interpreter`; a UserError naming the package when it is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise UserError(f"--format tflite needs the LiteRT interpreter ({err}); install it with "
                        "pip install ai-edge-litert (or pip install -e '.[export]')") from None
    return Interpreter


def convert(session, images, outputs, *, calibration=None, progress=None):
    """The LiteRT flatbuffer (bytes) of the graph of `session` from the input
    tensor `images` to the tensors `outputs`, their names kept. With
    `calibration` (a list of image paths) the model is full-integer int8,
    its activation ranges taken from running the float model on those
    images (`quantize.calibration_image`); `progress(i, n)` is called after
    each."""
    import tensorflow as tf

    converter = tf.compat.v1.lite.TFLiteConverter.from_session(session, [images], list(outputs))
    if calibration is not None:
        from fcn_graph.engines.int8_model import calibration_image

        def representative():
            for index, path in enumerate(calibration):
                yield [calibration_image(path)]                   # uint8 [1, H, W, 3]
                if progress is not None:
                    progress(index + 1, len(calibration))

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with quiet():
        return converter.convert()


class LiteRTSegmenter:
    """A LiteRT model written by `convert` in the interpreter, with
    `.run(batch_uint8, scores=False) -> (labels int32 [N, H, W], scores
    float32 [N, H, W, K] or None)` and `.close()`. The input tensor is
    resized (and the tensors allocated again) whenever the batch's shape
    differs from the previous one's."""

    def __init__(self, model_path, *, threads=None):
        interpreter = interpreter_class()
        kwargs = {} if threads is None else {"num_threads": int(threads)}
        with quiet():
            self.interpreter = interpreter(model_path=os.fspath(model_path), **kwargs)
        inputs = self.interpreter.get_input_details()
        outputs = {detail["name"]: detail["index"]
                   for detail in self.interpreter.get_output_details()}
        if len(inputs) != 1 or not set(OUTPUT_NAMES) <= set(outputs):
            raise UserError(f"{model_path}: expected a LiteRT model with one input and outputs "
                            f"{', '.join(OUTPUT_NAMES)}, found inputs "
                            f"{[d['name'] for d in inputs]} and outputs {sorted(outputs)}")
        self.input = inputs[0]["index"]
        self.outputs = outputs
        self.shape = None

    def run(self, batch_rgb, *, scores=False):
        batch = np.ascontiguousarray(batch_rgb, dtype=np.uint8)      # [N, H, W, 3]
        if batch.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input, list(batch.shape))
            with quiet():
                self.interpreter.allocate_tensors()
            self.shape = batch.shape
        self.interpreter.set_tensor(self.input, batch)
        self.interpreter.invoke()
        labels = self.interpreter.get_tensor(self.outputs["labels"])            # [N, H, W]
        logits = self.interpreter.get_tensor(self.outputs["scores"]) if scores else None
        return labels, logits

    def close(self):
        self.interpreter = None


def label_agreement(segmenter, reference, images, num_classes, *, source="images", limit=32):
    """How `segmenter`'s labels compare with `reference`'s (both segmenters).

    `images` is a list of image paths (the calibration images, or a folder's,
    read as `quantize.calibration_image` reads them), or a labelled
    `datasets.SplitFiles` (up to `limit` of its images, spread evenly, read
    by `datasets.read_pair`). Returns a dict: images, source (`source` for a
    list, "KIND split 'SPLIT'" for a split), labels_agree (the fraction of pixels with equal
    labels), mean_iou (of `segmenter`'s labels taking `reference`'s as the
    truth: 1.0 where they agree everywhere) and, for a split, split_mean_iou
    and reference_mean_iou (both against the split's labels). Undefined
    means are None."""
    from fcn_graph.engines.int8_model import calibration_image
    agreement = ConfusionMatrix(num_classes)
    truth = {"segmenter": ConfusionMatrix(num_classes), "reference": ConfusionMatrix(num_classes)}
    labelled = hasattr(images, "label_paths")
    if labelled:
        picks = np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(int)
        items = [(images.image_paths[i], images.label_paths[i]) for i in sorted(set(picks))]
    else:
        items = [(path, None) for path in images]
    same = total = 0
    for image_path, label_path in items:
        if label_path is None:
            image, label = calibration_image(image_path), None          # [1, H, W, 3]
        else:
            image, label = _read_pair(image_path, label_path, num_classes, images.label_offset)
        want = np.asarray(reference.run(image)[0])                      # [H, W]
        got = np.asarray(segmenter.run(image)[0])
        agreement.update(want, got)
        if label is not None:
            truth["reference"].update(label, want)
            truth["segmenter"].update(label, got)
        same += int(np.count_nonzero(want == got))
        total += want.size
    found = {"images": len(items), "labels_agree": same / total if total else None,
             "mean_iou": agreement.compute()["mean_iou"],
             "source": f"images of the {images.kind} split {images.split!r}" if labelled
             else source}
    if labelled:
        found["split_mean_iou"] = truth["segmenter"].compute()["mean_iou"]
        found["reference_mean_iou"] = truth["reference"].compute()["mean_iou"]
    return found


def _read_pair(image_path, label_path, num_classes, offset):
    """uint8 [1, H, W, 3] image and [1, H, W] label of a dataset pair; UserError
    naming the file that does not read."""
    from fcn_graph.data import datasets
    try:
        image, label = datasets.read_pair(image_path, label_path, num_classes, offset)
    except (datasets.ImageFileError, datasets.LabelFileError) as err:
        raise UserError(str(err)) from None
    return image[np.newaxis], label[np.newaxis]


def format_agreement(found, what="int8"):
    """`label_agreement`'s dict as one line."""
    def points(value, base):
        return "n/a" if value is None or base is None else f"{(value - base) * 100:+.2f} points"

    def mean(value):
        return "n/a" if value is None else f"{value:.4f}"

    line = (f"{what} against the float32 checkpoint on {found['images']} {found['source']}: "
            f"labels agree on {found['labels_agree']:.2%} of pixels; mean IU "
            f"{mean(found['mean_iou'])} ({points(found['mean_iou'], 1.0)}) with the float32 "
            "labels as the truth")
    if "split_mean_iou" in found:
        line += (f"; mean IU against the split's labels {mean(found['split_mean_iou'])}, "
                 f"float32 {mean(found['reference_mean_iou'])} "
                 f"({points(found['split_mean_iou'], found['reference_mean_iou'])})")
    return line
