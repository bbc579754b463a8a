"""Evaluation of a model on a dataset split, in a TF1 graph: `Evaluator`
streams every image at full size through the model and fills one confusion
matrix; `evaluate_checkpoint` runs it on a checkpoint with either engine."""

import os

import numpy as np
import tensorflow as tf

from fcn_graph.core.errors import UserError
from fcn_graph.core.metrics import ConfusionMatrix
from fcn_graph.data import datasets
from fcn_graph.engines.segmenter import make_segmenter
from fcn_graph.host import choice
from fcn_graph.host.session import session_config
from fcn_graph.network import tf_layers
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1

# Validation images of one size run through the graph's model branch together,
# up to this many images and pixels per session run: a few large runs instead
# of many small ones, whose per-op thread hand-offs dominate on a busy CPU.
EVAL_BATCH_IMAGES = 8
EVAL_BATCH_PIXELS = 1 << 18


class Evaluator:
    """The evaluation part of a graph, built into the current default graph:
    an initializable full-size, batch-1 dataset of `files` and a model branch
    on an image placeholder (sharing the model variables of the graph), with
    the kernel set `kernels`.
    """

    def __init__(self, files, spec, *, num_classes, max_images=None, kernels="auto"):
        self.files = files
        self.num_classes = num_classes
        data = datasets.eval_dataset(files, num_classes=num_classes, max_images=max_images)
        self.iterator = tf1.data.make_initializable_iterator(data)
        self.next_item = self.iterator.get_next()
        self.images = tf1.placeholder(tf.float32, [None, None, None, 3], name="eval_images")
        self.logits, self.prediction, _ = build_model(self.images, spec, keep_prob=1.0, kernels=kernels)

    def _groups(self, sess, *, batched):
        """The dataset's items (batch-1 dicts) in lists of consecutive items
        of one image size, up to EVAL_BATCH_IMAGES items and EVAL_BATCH_PIXELS
        pixels in all (`batched`), else one item each."""
        sess.run(self.iterator.initializer)
        group = []
        while True:
            try:
                item = sess.run(self.next_item)
            except tf.errors.OutOfRangeError:
                break
            except tf.errors.OpError as err:
                raise UserError(datasets.data_error_message(err)) from None
            if group and not (batched and _joins(group, item)):
                yield group
                group = []
            group.append(item)
        if group:
            yield group

    def run(self, sess, *, on_image=None, progress=None, predict=None):
        """Run every image, images of one size together in batches
        (`_groups`) through the graph's branch; returns (metrics dict, number
        of images). The dict also holds "confusion", the confusion matrix
        (int64 [K, K]).

        predict(image uint8 [1, H, W, 3]) -> labels [1, H, W] replaces the graph's
        model branch (another engine); the dataset still streams through `sess`.

        on_image(name, image uint8 [H, W, 3], label [H, W], prediction [H, W]) is
        called for each image. Data errors become one-line UserErrors.
        """
        matrix = ConfusionMatrix(self.num_classes)
        count = 0
        for group in self._groups(sess, batched=predict is None):
            if predict is None:
                batch = np.concatenate([item["image"] for item in group])
                predictions = sess.run(self.prediction, {self.images: batch})[:, np.newaxis]
            else:
                predictions = [predict(item["image"].astype(np.uint8)) for item in group]
            for item, prediction in zip(group, predictions):
                name = os.fsdecode(item["name"][0])
                matrix.update(item["label"], prediction)
                count += 1
                if on_image is not None:
                    on_image(name, item["image"][0].astype(np.uint8), item["label"][0],
                             prediction[0])
                if progress is not None:
                    progress.update(count)
        metrics = matrix.compute()
        metrics["num_images"] = count
        metrics["confusion"] = matrix.hist.copy()
        return metrics, count


def _joins(group, item):
    """Whether `item` can join the batch `group` (`Evaluator._groups`)."""
    height, width = item["image"].shape[1:3]
    return (group[0]["image"].shape[1:3] == (height, width)
            and len(group) < EVAL_BATCH_IMAGES
            and (len(group) + 1) * height * width <= EVAL_BATCH_PIXELS)


def build_model(images, spec, *, keep_prob, kernels="auto"):
    """`tf_layers.build`, with an unavailable architecture reported as a config error."""
    try:
        return tf_layers.build(images, spec, layers=choice.kernel_layers(kernels),
                               keep_prob=keep_prob)
    except ValueError as err:
        if spec.architecture == "legacy":
            raise
        raise UserError(f"model.architecture: {err}") from None


class BranchSegmenter:
    """An `Evaluator`'s model branch in session `sess` as a segmenter
    (`.run(batch_uint8, scores=False) -> (labels, logits or None)`), for
    wrappers such as `tiling.TiledSegmenter` and `tta.TtaSegmenter`."""

    def __init__(self, sess, evaluator):
        self.sess, self.evaluator = sess, evaluator

    def run(self, batch_rgb, *, scores=False):
        batch = np.asarray(batch_rgb, dtype=np.float32)
        fetches = [self.evaluator.prediction, self.evaluator.logits]
        out = self.sess.run(fetches if scores else fetches[:1], {self.evaluator.images: batch})
        return out[0], (out[1] if scores else None)

    def close(self):
        pass


def evaluate_checkpoint(prefix, spec, files, *, engine="tf", threads=None, max_images=None,
                        on_image=None, progress=None, kernels="auto", precision="float32",
                        calibration=None, tiled=None, augmented=None):
    """The metrics dict of checkpoint `prefix` (its `ModelSpec` `spec`) on the
    dataset split `files`, every image at full size (in small batches of one
    size, `Evaluator.run`), through one finalised graph. `engine`
    "onnxruntime" runs the images through an ONNX Runtime segmenter instead;
    the dataset still streams through the graph. `on_image` and `progress` as in `Evaluator.run`; `kernels` is the
    kernel set of both engines. `tiled(segmenter) -> segmenter` wraps the
    engine (e.g. in a `tiling.TiledSegmenter`).

    With a `precision` other than float32 (`segmenter.make_segmenter`; int8
    with `calibration`), every image also runs through the same engine in
    float32, and the dict gets "float32": that run's metrics, and
    "labels_agree": the fraction of pixels whose labels the two runs agree on.

    `augmented(segmenter) -> tta.TtaSegmenter`: test-time augmentation. Each
    image runs once plain, and the other variants reuse that run
    (`TtaSegmenter.run_with_plain`); the dict (the plain metrics) gets "tta":
    the augmented metrics, and "seconds": {"plain", "tta"}, the time of the
    plain runs and the extra time of the augmentation. `on_image` then sees
    the augmented labels."""
    graph = tf.Graph()
    with graph.as_default():
        evaluator = Evaluator(files, spec, num_classes=spec.num_classes, max_images=max_images,
                              kernels=kernels)
        variables = tf_layers.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        graph.finalize()
    predict, segmenter, reference, augmenter = None, None, None, None
    if engine != "tf" or precision != "float32":
        segmenter = make_segmenter(prefix, engine=engine, threads=threads, kernels=kernels,
                                   precision=precision, calibration=calibration)
    if precision != "float32":
        reference = make_segmenter(prefix, engine=engine, threads=threads, kernels=kernels)
        float32 = reference if tiled is None else tiled(reference)
        matrix = ConfusionMatrix(spec.num_classes)
        agree = [0, 0]  # pixels with equal labels, pixels
    tta_matrix = ConfusionMatrix(spec.num_classes)
    shown = {}  # the augmented labels [1, H, W] of the current image

    def hook(name, image, label, prediction):
        if augmenter is not None:
            tta_matrix.update(label[np.newaxis], shown["labels"])
        if reference is not None:
            want = float32.run(image[np.newaxis])[0]           # [1, H, W]
            matrix.update(label[np.newaxis], want)
            agree[0] += int(np.count_nonzero(want[0] == prediction))
            agree[1] += prediction.size
        if on_image is not None:
            on_image(name, image, label,
                     prediction if augmenter is None else shown["labels"][0])

    try:
        with tf1.Session(graph=graph, config=session_config(threads)) as sess:
            if segmenter is None:
                checkpoint.restore_model(sess, prefix, variables, saver=saver)
            runner = segmenter
            if tiled is not None:
                runner = tiled(segmenter or BranchSegmenter(sess, evaluator))
            if augmented is not None:
                augmenter = augmented(runner or BranchSegmenter(sess, evaluator))

                def predict(image):
                    plain, shown["labels"], _ = augmenter.run_with_plain(image)
                    return plain
            elif runner is not None:
                def predict(image):
                    return runner.run(image)[0]
            needs_hook = on_image is not None or reference is not None or augmenter is not None
            metrics, _ = evaluator.run(sess, progress=progress, predict=predict,
                                       on_image=hook if needs_hook else None)
    finally:
        for runner in (segmenter, reference):
            if runner is not None:
                runner.close()
    if reference is not None:
        metrics["float32"] = matrix.compute()
        metrics["labels_agree"] = agree[0] / agree[1] if agree[1] else None
    if augmenter is not None:
        metrics["tta"] = tta_matrix.compute()
        metrics["tta"]["confusion"] = tta_matrix.hist.copy()
        metrics["seconds"] = dict(augmenter.seconds)
    return metrics
