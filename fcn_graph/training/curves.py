"""Training history (a JSON-lines file) and its plot as a PNG image.

`history.jsonl` in the log directory gets one record per logged step
(`{"step": 120, "loss": 0.41}`) and per evaluation (`{"step": 1000, "mean_iou": 0.83,
...}`), as strict JSON (an undefined metric is null, never NaN). Appending is
not atomic, so the reader skips a torn last line; after a resume, records past
the resumed step (written after the last checkpoint) are superseded by the new
ones.
"""

import json
import os

import cv2
import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import json_text, open_own
from fcn_graph.data.image_files import write_image

HISTORY_NAME = "history.jsonl"
CURVES_NAME = "training_curves.png"


def append_history(log_dir, record):
    """Append `record` as one line of strict JSON (NaN or infinity raise ValueError;
    undefined values are None, written as null)."""
    path = os.path.join(log_dir, HISTORY_NAME)
    line = json_text(record, where=path) + "\n"
    try:
        fd = open_own(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)  # never through a link
        with os.fdopen(fd, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            torn = False
            if size:
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"  # the last write was cut short
            handle.write((("\n" if torn else "") + line).encode("utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot append to the training history "
                        f"({err.strerror or err})") from None


def read_history(log_dir):
    """The records, sorted by step. Loss records and evaluation records are
    followed separately; a record whose step is not after the previous one of its
    kind marks a resumed run, and the stale records from that step on are dropped.
    Lines that are not a JSON object with an integer step (a line torn by a
    killed write, bytes that are not UTF-8) are skipped; values may be null.
    A history path that is not a regular file is a UserError."""
    path = os.path.join(log_dir, HISTORY_NAME)
    kinds = {True: [], False: []}
    if not os.path.lexists(path):
        return []
    if not os.path.isfile(path):
        raise UserError(f"{path}: expected the training history, a JSON-lines file; found "
                        f"something that is not a regular file")
    try:
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
    except OSError as err:
        raise UserError(f"{path}: cannot read the training history ({err.strerror or err})") \
            from None
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:
            continue  # a line torn by a crash (UnicodeDecodeError is a ValueError)
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        same = kinds["loss" in record]
        while same and same[-1]["step"] >= step:
            same.pop()
        same.append(record)
    return sorted(kinds[True] + kinds[False], key=lambda record: record["step"])


def series(records, key):
    """(steps, values) of the records whose `key` is a finite number, sorted by
    step, one per step; null (undefined) values are left out."""
    points = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and np.isfinite(value):
            points[int(record["step"])] = float(value)
    steps = sorted(points)
    return np.asarray(steps, float), np.asarray([points[s] for s in steps], float)


def _panel(width, height, title, steps, values, *, colour, y_range=None, log=False):
    """A white panel with axes, tick labels, a title and one polyline."""
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 64, 16, 28, 36
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title, (left, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    if len(steps) == 0:
        cv2.putText(image, "no data yet", (left + 10, height // 2), font, 0.5, (120, 120, 120), 1)
        return image
    y = np.log10(np.maximum(values, 1e-12)) if log else values
    lo, hi = y_range if y_range else (y.min(), y.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = (steps.min(), steps.max()) if steps.max() > steps.min() else (0.0, max(steps.max(), 1))
    px = left + (steps - x0) / (x1 - x0) * (width - right - left)
    py = height - bottom - (y - lo) / (hi - lo) * (height - bottom - top)
    for fraction in (0.0, 0.5, 1.0):
        value = lo + fraction * (hi - lo)
        label = f"{10 ** value:.3g}" if log else f"{value:.3g}"
        yy = int(round(height - bottom - fraction * (height - bottom - top)))
        cv2.putText(image, label, (4, yy + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.line(image, (left, yy), (width - right, yy), (225, 225, 225), 1)
    for fraction in (0.0, 0.5, 1.0):
        xx = int(round(left + fraction * (width - right - left)))
        cv2.putText(image, f"{x0 + fraction * (x1 - x0):.0f}", (xx - 12, height - bottom + 16),
                    font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "step", (width // 2 - 12, height - 6), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    points = np.stack([px, py], axis=1).round().astype(np.int32)
    if len(points) == 1:
        cv2.circle(image, tuple(int(v) for v in points[0]), 3, colour, -1)
    else:
        cv2.polylines(image, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
    return image


def plot_curves(records, path, *, width=640, height=260):
    """Write the training loss (log scale) above the validation mean IU as a PNG."""
    loss = _panel(width, height, "training loss (log scale)", *series(records, "loss"),
                  colour=(200, 60, 30), log=True)
    iou = _panel(width, height, "validation mean IU", *series(records, "mean_iou"),
                 colour=(30, 120, 200), y_range=(0.0, 1.0))
    write_image(path, np.concatenate([loss, iou], axis=0))
