"""Evaluation reports: per-class values and the confusion matrix as files,
and the comparison of two evaluations.

    rows = per_class_rows(hist, class_names)          # IoU, accuracy, pixel counts
    write_report(folder, hist, class_names, prefix="", meta={...})
    print(compare_files("float32.json", "int8.json"))

A report is five files in a folder (with a prefix such as "tta_" for the
augmented run): per_class.json and per_class.csv (per class: IoU, accuracy,
ground-truth pixels, predicted pixels, true positives), confusion.npy (int64
[K, K], rows the true class, columns the prediction), confusion.csv (the same
counts, class names as header) and confusion.png (the matrix normalised by
row, drawn with OpenCV).
"""

import csv
import io
import json
import math
import os

import cv2
import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import (
    OutputFolder,
    atomic_write,
    kind_of,
    read_regular_file,
    write_json_atomic,
)
from fcn_graph.core.metrics import compute_metrics
from fcn_graph.data.image_files import save_npy_atomic

REPORT_FILES = ("per_class.json", "per_class.csv", "confusion.npy", "confusion.csv",
                "confusion.png")
REPORT_FORMAT = "fcn_graph.per_class"
ROW_FIELDS = ("index", "name", "iou", "accuracy", "gt_pixels", "predicted_pixels",
              "true_positives")


def per_class_rows(hist, class_names):
    """One dict per class (ROW_FIELDS) from confusion matrix `hist` [K, K]
    (rows: labels, columns: predictions): IoU = tp / (gt + predicted - tp)
    and accuracy = tp / gt, None where undefined (0 / 0)."""
    hist = np.asarray(hist, dtype=np.int64)
    gt, predicted, tp = hist.sum(1), hist.sum(0), np.diag(hist)
    rows = []
    for index in range(hist.shape[0]):
        union = gt[index] + predicted[index] - tp[index]
        rows.append({"index": index, "name": class_names[index],
                     "iou": float(tp[index] / union) if union else None,
                     "accuracy": float(tp[index] / gt[index]) if gt[index] else None,
                     "gt_pixels": int(gt[index]), "predicted_pixels": int(predicted[index]),
                     "true_positives": int(tp[index])})
    return rows


def report_record(hist, class_names, **meta):
    """The per_class.json record: format, `meta` (checkpoint, split, ...),
    the four metrics, class_names, per_class_iou, per_class_accuracy and the
    rows of `per_class_rows`."""
    metrics = compute_metrics(hist)
    rows = per_class_rows(hist, class_names)
    record = {"format": REPORT_FORMAT, **meta}
    record.update({key: metrics[key] for key in (
        "pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou",
        "labelled_pixels")})
    record["class_names"] = list(class_names)
    record["per_class_iou"] = [row["iou"] for row in rows]
    record["per_class_accuracy"] = [row["accuracy"] for row in rows]
    record["classes"] = rows
    return record


def report_names(prefixes):
    """The file names a report writes, for each prefix ("" and "tta_")."""
    return [prefix + name for prefix in prefixes for name in REPORT_FILES]


def claim_report(directory, *, augmented, inputs=()):
    """The `fileio.OutputFolder` of --report `directory`, with the files of
    the plain run (and with `augmented`, of the tta_ run) claimed: a file
    there that fcn_graph did not write, or one of `inputs`, is refused."""
    folder = OutputFolder(directory, "--report")
    folder.claim(report_names(["", "tta_"] if augmented else [""]), inputs=inputs)
    return folder


def _csv_text(rows):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _write_text(path, text):
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def _write_png(path, image):
    with atomic_write(path) as tmp:
        if not cv2.imwrite(tmp, image):
            raise OSError(0, "OpenCV could not write the PNG", path)


def write_report(folder, hist, class_names, *, prefix="", **meta):
    """Write the report files of confusion matrix `hist` into `folder` (a
    `fileio.OutputFolder` whose `claim` covered `report_names`), each
    atomically, recording each as written. `meta` goes into per_class.json."""
    hist = np.asarray(hist, dtype=np.int64)
    record = report_record(hist, class_names, **meta)
    table = [ROW_FIELDS] + [[row[key] if row[key] is not None else "" for key in ROW_FIELDS]
                            for row in record["classes"]]
    counts = [["true \\ predicted", *class_names]] + [
        [name, *row.tolist()] for name, row in zip(class_names, hist)]
    writers = {
        "per_class.json": lambda path: write_json_atomic(path, record),
        "per_class.csv": lambda path: _write_text(path, _csv_text(table)),
        "confusion.npy": lambda path: save_npy_atomic(path, hist),
        "confusion.csv": lambda path: _write_text(path, _csv_text(counts)),
        "confusion.png": lambda path: _write_png(path, draw_confusion(hist, class_names)[0]),
    }
    for name in REPORT_FILES:
        path = os.path.join(folder.directory, prefix + name)
        try:
            writers[name](path)
        except OSError as err:
            raise UserError(f"{path}: cannot write ({err.strerror})") from None
        folder.wrote(prefix + name)


# ---------------------------------------------------------------- the picture

SORT_ABOVE = 30        # more classes than this: sorted by frequency, no numbers in cells
LABELLED_CELLS = 10    # the largest off-diagonal cells named below a sorted matrix
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _colour(value):
    """BGR of a row-normalised value: white (0) to dark blue (1)."""
    return (int(255 - 85 * value), int(255 - 200 * value), int(255 - 235 * value))


def _text_size(text, scale):
    (width, height), base = cv2.getTextSize(text, FONT, scale, 1)
    return width, height + base


def draw_confusion(hist, class_names, *, labelled=LABELLED_CELLS):
    """A BGR uint8 picture of confusion matrix `hist` normalised by row (each
    true class's pixels as fractions of its predictions), with the class
    names beside the rows and above the columns; rows without labelled
    pixels are grey. With up to SORT_ABOVE classes every cell shows its
    percentage; with more, the classes are sorted by their number of
    labelled pixels (most first) and the `labelled` largest off-diagonal
    cells are framed in red and listed below, largest first. Returns (image, layout):
    layout holds order (the class of each row and column), cell (pixels),
    and left, top (the corner of the matrix)."""
    hist = np.asarray(hist, dtype=np.float64)
    k = hist.shape[0]
    gt = hist.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(gt[:, None] > 0, hist / gt[:, None], 0.0)
    many = k > SORT_ABOVE
    order = sorted(range(k), key=lambda i: -gt[i]) if many else list(range(k))
    cell = max(8, min(48, 1200 // k))
    scale = min(0.5, 0.8 * cell / 22)
    names = [str(class_names[i])[:24] for i in order]
    name_width = max(_text_size(name, scale)[0] for name in names) + 8
    title = "confusion matrix: rows true class (normalised), columns predicted"
    if many:
        title += "; classes sorted by frequency"
    title_width, title_height = _text_size(title, 0.5)
    cells = []
    if many:
        off = normalised.copy()
        np.fill_diagonal(off, 0.0)
        flat = np.argsort(-off, axis=None, kind="stable")[:labelled]
        cells = [divmod(int(i), k) for i in flat if off.flat[i] > 0]
    legend_lines = [f"{n + 1}: true {class_names[t]!s:.24} -> predicted {class_names[p]!s:.24}: "
                    f"{normalised[t, p]:.1%}" for n, (t, p) in enumerate(cells)]
    line_height = _text_size("Ag", 0.45)[1] + 4
    left, top = name_width + 8, title_height + 16 + name_width
    width = max(left + k * cell + 16, title_width + 16,
                max((_text_size(line, 0.45)[0] + 24 for line in legend_lines), default=0))
    height = top + k * cell + 16 + line_height * len(legend_lines)
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, title, (8, title_height + 4), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    position = {klass: slot for slot, klass in enumerate(order)}
    for row, true_class in enumerate(order):
        y = top + row * cell
        for col, predicted in enumerate(order):
            x = left + col * cell
            value = normalised[true_class, predicted]
            colour = _colour(value) if gt[true_class] else (220, 220, 220)
            cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), colour, cv2.FILLED)
            if not many and gt[true_class]:
                text = f"{value * 100:.0f}"
                tw, th = _text_size(text, scale)
                ink = (255, 255, 255) if value > 0.5 else (0, 0, 0)
                cv2.putText(image, text, (x + (cell - tw) // 2, y + (cell + th) // 2 - 2),
                            FONT, scale, ink, 1, cv2.LINE_AA)
        name = names[row]
        tw, th = _text_size(name, scale)
        cv2.putText(image, name, (left - 6 - tw, y + (cell + th) // 2 - 2), FONT, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    # column names: drawn on their side, then turned upright
    strip = np.full((cell * k, name_width, 3), 255, np.uint8)
    for col, name in enumerate(names):
        tw, th = _text_size(name, scale)
        cv2.putText(strip, name, (name_width - 4 - tw, col * cell + (cell + th) // 2 - 2),
                    FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    image[top - name_width - 4:top - 4, left:left + cell * k] = cv2.rotate(
        strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    for n, (t, p) in enumerate(cells):
        x, y = left + position[p] * cell, top + position[t] * cell
        cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), (0, 0, 255), 1)
        cv2.putText(image, legend_lines[n], (8, top + k * cell + 8 + (n + 1) * line_height - 4),
                    FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    layout = {"order": order, "cell": cell, "left": left, "top": top}
    return image, layout


# ---------------------------------------------------------------- comparing two runs

def load_comparable(path):
    """(class_names, {"IoU": values, "accuracy": values or absent}, mean IU)
    of a metrics file evaluate wrote (--json, or a report's per_class.json).
    A UserError in one line naming `path` for anything else."""
    try:
        data = read_regular_file(path)
    except OSError as err:
        found = (kind_of(err.mode) if hasattr(err, "mode") else err.strerror)
        raise UserError(f"{path}: cannot read an evaluation JSON ({found})") from None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: not a JSON file of evaluate (not JSON: {err})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object written by evaluate, found "
                        f"{type(record).__name__}")
    names = record.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise UserError(f"{path}: expected class_names, a list of class names (a file that "
                        "evaluate --json or --report wrote)")
    values = {}
    for key, label in (("per_class_iou", "IoU"), ("per_class_accuracy", "accuracy")):
        column = record.get(key)
        if column is None and key == "per_class_accuracy":
            continue
        if not (isinstance(column, list) and len(column) == len(names) and all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v) and 0 <= v <= 1) for v in column)):
            raise UserError(f"{path}: expected {key}, a list of {len(names)} values in [0, 1] "
                            "or null (one per class name)")
        values[label] = column
    mean = record.get("mean_iou")
    if not (mean is None or (isinstance(mean, (int, float)) and not isinstance(mean, bool)
                             and math.isfinite(mean))):
        raise UserError(f"{path}: expected mean_iou, a number or null, found {mean!r}")
    return names, values, mean


def _cell(value):
    return "n/a" if value is None else f"{value:.4f}"


def _change(a, b):
    return "n/a" if a is None or b is None else f"{(b - a) * 100:+.2f}"


def compare_files(path_a, path_b):
    """Text: the per-class IoU (and accuracy, where both files have it) of
    two evaluations side by side, with the change B - A in points; the mean
    IU of both. A UserError when the files' class lists differ."""
    names_a, values_a, mean_a = load_comparable(path_a)
    names_b, values_b, mean_b = load_comparable(path_b)
    if names_a != names_b:
        if len(names_a) != len(names_b):
            found = f"{len(names_a)} and {len(names_b)} classes"
        else:
            first = next(i for i, (a, b) in enumerate(zip(names_a, names_b)) if a != b)
            found = f"class {first} is {names_a[first]!r} in one and {names_b[first]!r} in the other"
        raise UserError(f"--compare {path_a} {path_b}: expected evaluations of the same "
                        f"classes, found {found}")
    labels = [label for label in ("IoU", "accuracy") if label in values_a and label in values_b]
    width = max(24, max(len(name) for name in names_a))
    header = f"{'class':>5}  {'name':<{width}}"
    for label in labels:
        header += f"  {label + ' A':>10} {label + ' B':>10} {'change':>7}"
    lines = [f"A: {path_a}", f"B: {path_b}", "change: B - A in points", "", header]
    for index, name in enumerate(names_a):
        line = f"{index:>5}  {name:<{width}}"
        for label in labels:
            a, b = values_a[label][index], values_b[label][index]
            line += f"  {_cell(a):>10} {_cell(b):>10} {_change(a, b):>7}"
        lines.append(line)
    lines += ["", f"mean IU  A {_cell(mean_a)}  B {_cell(mean_b)}  change {_change(mean_a, mean_b)}"]
    return "\n".join(lines)
