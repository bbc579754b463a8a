"""Evaluation of a model on a dataset split, in a TF1 graph: `Evaluator`
streams every image at full size through the model and fills one confusion
matrix; `evaluate_checkpoint` runs it on a checkpoint with either engine."""

import os

import numpy as np
import tensorflow as tf

from fcn_graph import checkpoint, datasets
from fcn_graph import model as fcn_model
from fcn_graph.errors import UserError
from fcn_graph.metrics import ConfusionMatrix
from fcn_graph.segmenter import make_segmenter
from fcn_graph.session import session_config

tf1 = tf.compat.v1


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
        _, self.prediction, _ = build_model(self.images, spec, keep_prob=1.0, kernels=kernels)

    def run(self, sess, *, on_image=None, progress=None, predict=None):
        """Run every image; returns (metrics dict, number of images).

        predict(image uint8 [1, H, W, 3]) -> labels [1, H, W] replaces the graph's
        model branch (another engine); the dataset still streams through `sess`.

        on_image(name, image uint8 [H, W, 3], label [H, W], prediction [H, W]) is
        called for each image. Data errors become one-line UserErrors.
        """
        matrix = ConfusionMatrix(self.num_classes)
        sess.run(self.iterator.initializer)
        count = 0
        while True:
            try:
                item = sess.run(self.next_item)
            except tf.errors.OutOfRangeError:
                break
            except tf.errors.OpError as err:
                raise UserError(datasets.data_error_message(err)) from None
            if predict is None:
                prediction = sess.run(self.prediction, {self.images: item["image"]})
            else:
                prediction = predict(item["image"].astype(np.uint8))
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
        return metrics, count


def build_model(images, spec, *, keep_prob, kernels="auto"):
    """`model.build`, with an unavailable architecture reported as a config error."""
    try:
        return fcn_model.build(images, spec, keep_prob=keep_prob, kernels=kernels)
    except ValueError as err:
        if spec.architecture == "legacy":
            raise
        raise UserError(f"model.architecture: {err}") from None


class BranchSegmenter:
    """An `Evaluator`'s model branch in session `sess` as a segmenter
    (`.run(batch_uint8, scores=False) -> (labels, None)`), for wrappers such
    as `tiling.TiledSegmenter`."""

    def __init__(self, sess, evaluator):
        self.sess, self.evaluator = sess, evaluator

    def run(self, batch_rgb, *, scores=False):
        assert not scores, "the evaluation branch computes labels only"
        batch = np.asarray(batch_rgb, dtype=np.float32)
        return self.sess.run(self.evaluator.prediction, {self.evaluator.images: batch}), None

    def close(self):
        pass


def evaluate_checkpoint(prefix, spec, files, *, engine="tf", threads=None, max_images=None,
                        on_image=None, progress=None, kernels="auto", precision="float32",
                        calibration=None, tiled=None):
    """The metrics dict of checkpoint `prefix` (its `ModelSpec` `spec`) on the
    dataset split `files`, every image at full size, one at a time, through
    one finalised graph. `engine` "onnxruntime" runs the images through an
    ONNX Runtime segmenter instead; the dataset still streams through the
    graph. `on_image` and `progress` as in `Evaluator.run`; `kernels` is the
    kernel set of both engines. `tiled(segmenter) -> segmenter` wraps the
    engine (e.g. in a `tiling.TiledSegmenter`).

    With a `precision` other than float32 (`segmenter.make_segmenter`; int8
    with `calibration`), every image also runs through the same engine in
    float32, and the dict gets "float32": that run's metrics, and
    "labels_agree": the fraction of pixels whose labels the two runs agree on."""
    graph = tf.Graph()
    with graph.as_default():
        evaluator = Evaluator(files, spec, num_classes=spec.num_classes, max_images=max_images,
                              kernels=kernels)
        variables = fcn_model.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        graph.finalize()
    predict, segmenter, reference = None, None, None
    if engine != "tf" or precision != "float32":
        segmenter = make_segmenter(prefix, engine=engine, threads=threads, kernels=kernels,
                                   precision=precision, calibration=calibration)

    compare = on_image
    if precision != "float32":
        reference = make_segmenter(prefix, engine=engine, threads=threads, kernels=kernels)
        float32 = reference if tiled is None else tiled(reference)
        matrix = ConfusionMatrix(spec.num_classes)
        agree = [0, 0]  # pixels with equal labels, pixels

        def compare(name, image, label, prediction):
            want = float32.run(image[np.newaxis])[0]           # [1, H, W]
            matrix.update(label[np.newaxis], want)
            agree[0] += int(np.count_nonzero(want[0] == prediction))
            agree[1] += prediction.size
            if on_image is not None:
                on_image(name, image, label, prediction)

    try:
        with tf1.Session(graph=graph, config=session_config(threads)) as sess:
            if segmenter is None:
                checkpoint.restore_model(sess, prefix, variables, saver=saver)
            runner = segmenter
            if tiled is not None:
                runner = tiled(segmenter or BranchSegmenter(sess, evaluator))
            if runner is not None:
                def predict(image):
                    return runner.run(image)[0]
            metrics, _ = evaluator.run(sess, progress=progress, predict=predict,
                                       on_image=compare)
    finally:
        for runner in (segmenter, reference):
            if runner is not None:
                runner.close()
    if reference is not None:
        metrics["float32"] = matrix.compute()
        metrics["labels_agree"] = agree[0] / agree[1] if agree[1] else None
    return metrics
