"""Segmentation metrics from one confusion matrix, as in the reference FCN `score.py`.

hist[i, j] counts pixels whose label is class i and whose prediction is class j,
accumulated over a whole split. From it:

    pixel accuracy  = diag.sum() / hist.sum()
    class accuracy  = diag / hist.sum(1)              mean accuracy = nanmean
    IU              = diag / (hist.sum(1) + hist.sum(0) - diag)   mean IU = nanmean
    freq            = hist.sum(1) / hist.sum()
    frequency-weighted IU = (freq[freq > 0] * IU[freq > 0]).sum()

Pixels labelled IGNORE_LABEL are left out of the matrix. A value that is
undefined (no labelled pixel at all; a class absent from both labels and
predictions) is None, never NaN, so that it is written as JSON null and printed
as "n/a"; the means are taken over the classes whose value is defined.
"""

import numpy as np

from fcn_graph.core.constants import IGNORE_LABEL


class ConfusionMatrix:
    """Accumulates a [K, K] confusion matrix (rows: labels, columns: predictions)."""

    def __init__(self, num_classes):
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, found {num_classes}")
        self.num_classes = int(num_classes)
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, labels, predictions, source=None):
        """Add one batch; `labels` and `predictions` are integer arrays of one shape.

        Label values must be in [0, K) or IGNORE_LABEL; predictions in [0, K).
        `source` (e.g. a file name) is named in the error when they are not.
        """
        labels = np.asarray(labels)
        predictions = np.asarray(predictions)
        where = f"{source}: " if source else ""
        if labels.shape != predictions.shape:
            raise ValueError(
                f"{where}labels have shape {labels.shape} but predictions {predictions.shape}"
            )
        labels = labels.reshape(-1).astype(np.int64)
        predictions = predictions.reshape(-1).astype(np.int64)
        keep = labels != IGNORE_LABEL
        labels, predictions = labels[keep], predictions[keep]
        k = self.num_classes
        bad = (labels < 0) | (labels >= k)
        if bad.any():
            values = np.unique(labels[bad])[:10].tolist()
            raise ValueError(
                f"{where}label values must be in [0, {k}) or {IGNORE_LABEL} (ignored), "
                f"found {values}"
            )
        bad = (predictions < 0) | (predictions >= k)
        if bad.any():
            values = np.unique(predictions[bad])[:10].tolist()
            raise ValueError(f"{where}prediction values must be in [0, {k}), found {values}")
        self.hist += np.bincount(k * labels + predictions, minlength=k * k).reshape(k, k)

    def reset(self):
        self.hist[...] = 0

    def compute(self):
        """Return a dict of pixel_accuracy, mean_accuracy, mean_iou,
        frequency_weighted_iou (floats; None when nothing was counted),
        per_class_iou (a list; None for classes absent from labels and predictions),
        labelled_pixels (the number of pixels counted), and label_pixels and
        predicted_pixels (lists: the pixels of each class in the labels and in
        the predictions, over the labelled pixels).
        """
        return compute_metrics(self.hist)


def compute_metrics(hist):
    """The four FCN metrics and the per-class IoU of a confusion matrix."""
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    total = hist.sum()
    label_counts = hist.sum(1)
    union = label_counts + hist.sum(0) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        class_accuracy = diag / label_counts
        iu = diag / union
    if total:
        freq = label_counts / total
        pixel_accuracy = float(diag.sum() / total)
        fw_iou = float((freq[freq > 0] * iu[freq > 0]).sum())
    else:
        pixel_accuracy = fw_iou = None
    return {
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": _nanmean(class_accuracy),
        "mean_iou": _nanmean(iu),
        "frequency_weighted_iou": fw_iou,
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iu],
        "labelled_pixels": int(total),
        "label_pixels": [int(v) for v in label_counts],
        "predicted_pixels": [int(v) for v in hist.sum(0)],
    }


def _nanmean(values):
    """The mean of the defined (non-NaN) values; None when there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def format_value(value):
    """A metric as text: four decimals, or "n/a" when it is undefined (None)."""
    return "n/a" if value is None else f"{value:.4f}"


def format_metrics(metrics, class_names=None):
    """A text report: the four metrics, then one line per class with its IoU."""
    lines = [
        f"pixel accuracy          {format_value(metrics['pixel_accuracy'])}",
        f"mean accuracy           {format_value(metrics['mean_accuracy'])}",
        f"mean IU                 {format_value(metrics['mean_iou'])}",
        f"frequency weighted IU   {format_value(metrics['frequency_weighted_iou'])}",
        "",
        f"{'class':>5}  {'name':<24} IoU",
    ]
    for index, value in enumerate(metrics["per_class_iou"]):
        name = class_names[index] if class_names and index < len(class_names) else ""
        shown = "n/a (absent)" if value is None else f"{value:.4f}"
        lines.append(f"{index:>5}  {name:<24} {shown}")
    return "\n".join(lines)



def metrics_record(metrics, class_names, **extra):
    """The JSON record of an evaluation."""
    record = {key: metrics[key] for key in (
        "pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou",
        "per_class_iou", "num_images")}
    record["class_names"] = list(class_names)
    record.update(extra)
    return record
