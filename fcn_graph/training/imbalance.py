"""Class imbalance in the training loss: the focal loss, online hard-pixel
mining, and class weights by median frequency balancing.

Each keeps the ignore rule: a pixel labelled IGNORE_LABEL counts nowhere,
neither in a sum nor in a count nor among the hardest pixels. The loss of a
batch is sum(w * l) / sum(w) over its valid pixels (`training.segmentation_loss`),
with l the per-pixel loss (cross-entropy or `focal_loss`) and w the class
weight of the pixel's label (1 without weights) times its `hardest_pixels`
mask (1 without mining). Both sums add up across devices and tasks.
"""

import math
import sys

import numpy as np
import tensorflow as tf

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.core.progress import Progress
from fcn_graph.data import datasets, splits
from fcn_graph.training.config import MEDIAN_FREQUENCY, class_weights_problem
from fcn_graph.weights import checkpoint

# Below this, 1 - p_t is taken as this value in the focal factor: its
# gradient there is 0 instead of the 0 * infinity of pow at 0.
_FOCAL_FLOOR = 1e-30
# Slack for the rounding of fraction * count before its ceiling, so that
# 0.3 of 10 pixels is 3, not 4.
_COUNT_SLACK = 1e-6


def focal_loss(xent, gamma):
    """The focal loss of Lin et al. (2017), (1 - p_t) ** gamma * -log(p_t), from
    the per-pixel cross-entropy `xent` = -log(p_t); `gamma` 0 is `xent` itself."""
    if gamma == 0:
        return xent
    one_minus = -tf.math.expm1(-xent)                      # 1 - p_t, exact near p_t = 1
    return tf.pow(tf.maximum(one_minus, _FOCAL_FLOOR), gamma) * xent


def hardest_count(fraction, count):
    """How many pixels `hardest_pixels` keeps of `count` valid ones:
    ceil(fraction * count), at least 1 when count > 0."""
    kept = math.ceil(fraction * count - _COUNT_SLACK)
    return min(count, max(kept, 1 if count else 0))


def hardest_pixels(per_pixel, valid, fraction):
    """float32 mask, the shape of `per_pixel`, of the `hardest_count(fraction,
    valid pixels)` valid pixels with the largest loss `per_pixel`; of equal
    losses the first in row-major order. The mask carries no gradient."""
    flat = tf.reshape(tf.stop_gradient(per_pixel), [-1])   # [N * H * W]
    flat_valid = tf.reshape(valid, [-1])
    count = tf.cast(tf.reduce_sum(tf.cast(flat_valid, tf.int32)), tf.float64)
    kept = tf.math.ceil(fraction * count - _COUNT_SLACK)
    kept = tf.cast(tf.minimum(count, tf.maximum(kept, tf.minimum(count, 1.0))), tf.int32)
    ranked = tf.where(flat_valid, flat, tf.fill(tf.shape(flat), -1.0))  # losses are >= 0
    _, indices = tf.math.top_k(ranked, k=kept)
    mask = tf.scatter_nd(indices[:, None], tf.ones_like(indices, tf.float32), tf.shape(flat))
    return tf.reshape(mask, tf.shape(per_pixel))


# --------------------------------------------------------------------------- class weights


def label_pixel_counts(files, num_classes):
    """(pixels of each class, labelled pixels of the images in which each
    class appears), both int64 [num_classes], over the label files of the
    split `files`; IGNORE_LABEL pixels count in neither."""
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    progress = Progress(len(files.label_paths), label="counting label pixels", unit="file")
    for done, path in enumerate(files.label_paths, 1):
        try:
            label = datasets.read_label(path, num_classes, files.label_offset)
        except splits.LabelFileError as err:
            raise UserError(f"train.class_weights: {err}") from None
        counts = np.bincount(label[label != IGNORE_LABEL].ravel(), minlength=num_classes)
        class_pixels += counts
        image_pixels[counts > 0] += counts.sum()
        progress.update(done)
    progress.close()
    return class_pixels, image_pixels


def median_frequency_weights(class_pixels, image_pixels):
    """Median frequency balancing (Eigen and Fergus, 2015): freq_c =
    class_pixels[c] / image_pixels[c], weight_c = median(freq) / freq_c, the
    median over the classes that appear. A class that never appears gets 0
    (no pixel of it reaches the loss). Returns float64 [K]."""
    class_pixels = np.asarray(class_pixels, np.float64)
    image_pixels = np.asarray(image_pixels, np.float64)
    present = class_pixels > 0
    weights = np.zeros(class_pixels.shape, np.float64)
    if present.any():
        freq = class_pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    return weights


def recorded_weights(prefix, num_classes):
    """The class weights the checkpoint `prefix` was trained with, from its
    sidecar, or None when it records none; a UserError naming the sidecar
    when they are not `num_classes` finite numbers >= 0."""
    sidecar = checkpoint.read_sidecar(prefix) if prefix else None
    if sidecar is None or sidecar.get("class_weights") is None:
        return None
    weights = sidecar["class_weights"]
    problem = class_weights_problem(weights, num_classes, counted="the model's classes")
    if problem:
        raise UserError(f"{checkpoint.sidecar_path(prefix)}: class_weights: {problem}")
    return [float(w) for w in weights]


def resolve_class_weights(setting, files, num_classes, *, class_names=(), recorded=None,
                          stream=None):
    """train.class_weights as the list of floats the loss uses, or None.

    `setting`: None, a list (checked against `num_classes`) or
    MEDIAN_FREQUENCY. For MEDIAN_FREQUENCY, `recorded` (the weights the
    checkpoint a run resumes from was trained with, from its sidecar) is
    used when given, else the weights are computed from the label files of
    `files`; either way one line on `stream` (stderr) names them."""
    if setting is None:
        return None
    if setting != MEDIAN_FREQUENCY:
        problem = class_weights_problem(setting, num_classes,
                                        counted=f"the classes of split {files.split!r}")
        if problem:
            raise UserError(f"train.class_weights: {problem}")
        return [float(w) for w in setting]
    if recorded is not None:
        weights, source = recorded, "as the checkpoint resumed from was trained"
    else:
        class_pixels, image_pixels = label_pixel_counts(files, num_classes)
        if not class_pixels.any():
            raise UserError(f"train.class_weights: {MEDIAN_FREQUENCY} found no labelled pixel "
                            f"in the {len(files)} label files of split {files.split!r}")
        weights = [float(w) for w in median_frequency_weights(class_pixels, image_pixels)]
        source = f"from the {len(files)} label files of split {files.split!r}"
    named = ", ".join(f"{class_names[i] if i < len(class_names) else i} {w:.4g}"
                      for i, w in enumerate(weights))
    print(f"train.class_weights: {MEDIAN_FREQUENCY} {source}: {named}",
          file=stream or sys.stderr)
    return weights
