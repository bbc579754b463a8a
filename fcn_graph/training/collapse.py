"""Signs that a training run is learning nothing, read from its validations
and its loss: plain functions and a small watcher, without TensorFlow.

Three rules, each checked by `CollapseWatch`:

- collapse: at COLLAPSED_VALIDATIONS validations in a row, one class is
  predicted on more than DOMINANT_SHARE of the labelled pixels while the
  labels hold at least OTHER_LABELS_SHARE of other classes;
- below majority: the validation mean IU is below `majority_mean_iou`, what
  always predicting the most frequent label class would score;
- plateau: the logged training losses are taken in blocks of
  `patience_steps` steps, (0, P], (P, 2P], ...; when a block ends, the
  median of its losses is compared with the lowest median of the earlier
  blocks of the run, and the loss "has not fallen" when it is not below it.

A rule is reported when it starts to hold, and again only after it has
stopped holding in between, so that a run prints one line per episode.
"""

import dataclasses

import numpy as np

DOMINANT_SHARE = 0.95
OTHER_LABELS_SHARE = 0.05
COLLAPSED_VALIDATIONS = 2


def shares(counts):
    """`counts` (pixels per class) as fractions of their sum; None when the sum is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return None if total <= 0 else counts / total


def majority_mean_iou(label_counts):
    """The mean IU of a model that predicts the most frequent class of
    `label_counts` (labelled pixels per class) everywhere, with the means of
    `metrics.compute_metrics`: that class's IU is its share of the pixels
    (true positives: its pixels; union: every pixel), every other class
    present in the labels has IU 0, and classes absent from both labels and
    predictions are left out. None when no pixel is labelled."""
    label_shares = shares(label_counts)
    if label_shares is None:
        return None
    return float(label_shares.max() / np.count_nonzero(label_shares))


def collapsed_class(predicted_counts, label_counts):
    """(class, its share of the predictions, the share of other classes in the
    labels) when one class takes more than DOMINANT_SHARE of the predictions
    while the labels hold at least OTHER_LABELS_SHARE of other classes; else
    None. Both counts are over the same labelled pixels."""
    predicted, labelled = shares(predicted_counts), shares(label_counts)
    if predicted is None or labelled is None:
        return None
    top = int(np.argmax(predicted))
    others = 1.0 - labelled[top]
    if predicted[top] > DOMINANT_SHARE and others >= OTHER_LABELS_SHARE:
        return top, float(predicted[top]), float(others)
    return None


@dataclasses.dataclass
class Finding:
    """What a rule saw: `kind` (collapse, below_majority or plateau), the
    step, and a sentence saying it."""

    kind: str
    step: int
    text: str


def failure_causes(*, learning_rate, vgg_mat, class_weights):
    """The usual causes of a run that learns nothing, with the key to change,
    as one sentence; only the causes the config leaves open are named."""
    causes = [f"train.learning_rate too high or too low (now {learning_rate:g})"]
    if not vgg_mat:
        causes.append("model.vgg_mat not set (a random VGG body learns slowly)")
    if class_weights is None:
        causes.append("rare classes without train.class_weights (try \"median_frequency\")")
    causes.append("labels that are all background (look at the label files)")
    return "Usual causes: " + "; ".join(causes) + "."


class CollapseWatch:
    """The three rules over one run: feed it every logged loss (`loss`) and
    every validation (`validation`); each returns a Finding when a rule starts
    to hold, else None. `patience_steps` 0 turns the plateau rule off.
    `class_names` name the classes in the sentences."""

    def __init__(self, *, patience_steps, class_names=()):
        self.patience = int(patience_steps)
        self.class_names = tuple(class_names)
        self.collapsed = 0              # collapsed validations in a row
        self.holding = set()            # kinds that hold now
        self.block, self.block_losses = None, []
        self.best = None                # (median, first step, last step) of the best block

    def _starts(self, kind, holds):
        """Whether rule `kind`, which `holds` or not now, starts to hold."""
        if not holds:
            self.holding.discard(kind)
            return False
        if kind in self.holding:
            return False
        self.holding.add(kind)
        return True

    def _name(self, index):
        name = self.class_names[index] if index < len(self.class_names) else ""
        return f"class {index} ({name})" if name else f"class {index}"

    def validation(self, step, *, predicted_counts, label_counts, mean_iou):
        """Check one validation: the predicted and labelled pixels per class
        (over the labelled pixels) and its mean IU. A Finding naming what the
        rules that started to hold saw, or None."""
        kinds, texts = [], []
        collapse = collapsed_class(predicted_counts, label_counts)
        self.collapsed = self.collapsed + 1 if collapse else 0
        if self._starts("collapse", self.collapsed >= COLLAPSED_VALIDATIONS):
            index, predicted, others = collapse
            kinds.append("collapse")
            texts.append(f"{self.collapsed} validations in a row predicted {self._name(index)} "
                         f"on {predicted:.1%} of the labelled pixels, while the labels hold "
                         f"{others:.1%} of other classes")
        baseline = majority_mean_iou(label_counts)
        below = baseline is not None and mean_iou is not None and mean_iou < baseline
        if self._starts("below_majority", below):
            majority = int(np.argmax(label_counts))
            kinds.append("below_majority")
            texts.append(f"the validation mean IU {mean_iou:.4f} is below {baseline:.4f}, what "
                         f"predicting {self._name(majority)} everywhere would score")
        if not texts:
            return None
        return Finding(kinds[0], int(step), "; ".join(texts))

    def loss(self, step, value):
        """Add the training loss of `step` (steps in increasing order). A
        Finding when a block of patience_steps steps ends whose median loss is
        not below the best median of the earlier blocks, else None."""
        if self.patience <= 0:
            return None
        block = (int(step) - 1) // self.patience
        finding = None
        if self.block is not None and block != self.block:
            finding = self._close_block(step)
        if self.block != block:
            self.block, self.block_losses = block, []
        self.block_losses.append(float(value))
        if int(step) % self.patience == 0:
            finding = self._close_block(step) or finding
            self.block, self.block_losses = None, []
        return finding

    def _close_block(self, step):
        if not self.block_losses:
            return None
        first, last = self.block * self.patience + 1, (self.block + 1) * self.patience
        median = float(np.median(self.block_losses))
        best = self.best
        stalled = best is not None and not median < best[0]
        if not stalled:
            self.best = (median, first, last)
        if not self._starts("plateau", stalled):
            return None
        return Finding("plateau", int(step), (
            f"the training loss has not fallen for {self.patience} steps (median {median:.4g} "
            f"over steps {first}-{last}, not below {best[0]:.4g}, the median of steps "
            f"{best[1]}-{best[2]})"))


def warning_line(finding, *, learning_rate, vgg_mat, class_weights):
    """The one warning line of a Finding, with the usual causes."""
    causes = failure_causes(learning_rate=learning_rate, vgg_mat=vgg_mat,
                            class_weights=class_weights)
    return (f"warning: step {finding.step}: this run may be learning nothing: {finding.text}. "
            f"{causes} train.stop_on_collapse true stops a run here.")
