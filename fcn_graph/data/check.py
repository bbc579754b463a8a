"""The dataset check: read every item of both splits once and report what would
go wrong in training, and what looks suspicious.

Errors (training would stop, or the split cannot be opened): a split that
cannot be listed, an unreadable image or label, a label whose size differs from
its image's, label values outside 0..K-1 other than 255, splits whose classes
differ. Warnings: the same image (by content) twice in a split or in both
splits, classes with no pixels, labelme files with no shapes.
"""

import hashlib
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import cv2
import numpy as np

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import OutputFolder
from fcn_graph.core.progress import Progress
from fcn_graph.data import datasets
from fcn_graph.data.image_files import write_image
from fcn_graph.data.splits import ImageFileError, LabelFileError


@dataclass
class CheckReport:
    """What `check_dataset` found."""

    class_names: Tuple[str, ...] = ()
    pixels: np.ndarray = None          # int64 [K]: labelled pixels of each class
    images_with: np.ndarray = None     # int64 [K]: images in which each class appears
    ignored_pixels: int = 0
    items: Dict[str, int] = field(default_factory=dict)  # split: number of items
    sizes: List[Tuple[int, int]] = field(default_factory=list)  # (height, width) per image
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def status(self):
        """0 clean, 1 warnings only, 2 errors."""
        return 2 if self.errors else 1 if self.warnings else 0


def check_dataset(config, *, show_progress=True):
    """Read every item of data.train_split and data.val_split; a CheckReport."""
    report = CheckReport()
    splits = []
    for split in dict.fromkeys((config.data.train_split, config.data.val_split)):
        try:
            splits.append(datasets.open_config_split(config, split))
        except UserError as err:
            report.errors.append(f"split {split!r}: {err}")
    if not splits:
        return report
    if len({files.class_names for files in splits}) > 1:
        report.errors.append("the splits name different classes: " + "; ".join(
            f"{files.split}: {', '.join(files.class_names)}" for files in splits))
    try:
        num_classes = datasets.resolve_num_classes(config.model.num_classes, splits[0])
    except UserError as err:
        report.errors.append(str(err))
        num_classes = 256
    report.class_names = tuple(datasets.class_names_for(splits[0], min(num_classes, 255)))
    report.pixels = np.zeros(len(report.class_names), np.int64)
    report.images_with = np.zeros(len(report.class_names), np.int64)
    seen = {}  # content hash: (split, name)
    total = sum(len(files) for files in splits)
    progress = Progress(total, label="check", unit="images") if show_progress else None
    done = 0
    for files in splits:
        report.items[files.split] = len(files)
        for image_path, label_path in zip(files.image_paths, files.label_paths):
            _check_item(report, files, image_path, label_path, seen)
            done += 1
            if progress:
                progress.update(done)
        report.warnings += getattr(files.reader, "warnings", [])
        empty = getattr(files.reader, "empty", [])
        if empty:
            report.warnings.append(
                f"split {files.split!r}: {len(empty)} labelme file(s) with no shapes (all "
                f"background): {', '.join(empty[:5])}" + (" ..." if len(empty) > 5 else ""))
    if progress:
        progress.close()
    for index, name in enumerate(report.class_names):
        if report.pixels[index] == 0:
            report.warnings.append(f"class {index} ({name}): no pixels in any split")
    return report


def _check_item(report, files, image_path, label_path, seen):
    try:
        image, label = datasets.read_raw_pair(image_path, label_path, files.reader)
    except (ImageFileError, LabelFileError) as err:
        report.errors.append(f"unreadable: {err}")
        return
    report.sizes.append(image.shape[:2])
    digest = hashlib.sha1(image.tobytes() + repr(image.shape).encode()).hexdigest()
    name = label_path if files.reader is not None else image_path
    if digest in seen:
        first_split, first = seen[digest]
        where = (f"twice in split {files.split!r}" if first_split == files.split
                 else f"in both split {first_split!r} and split {files.split!r}")
        report.warnings.append(f"{name}: the same image as {first}, {where}")
    else:
        seen[digest] = (files.split, name)
    if label.shape != image.shape[:2]:
        report.errors.append(f"{label_path}: label is {label.shape[1]}x{label.shape[0]} "
                             f"(WxH) but its image {image_path} is "
                             f"{image.shape[1]}x{image.shape[0]}")
        return
    values = label.astype(np.int16)
    if files.label_offset:
        values[values != IGNORE_LABEL] -= files.label_offset
    ignored = values == IGNORE_LABEL
    report.ignored_pixels += int(ignored.sum())
    count = len(report.class_names)
    bad = ~ignored & ((values < 0) | (values >= count))
    if bad.any():
        found = np.unique(label[bad])[:8].tolist()
        report.errors.append(f"{label_path}: {int(bad.sum())} pixels with values {found} "
                             f"outside 0..{count - 1} and not {IGNORE_LABEL}")
    counts = np.bincount(values[~ignored & ~bad].ravel(), minlength=count)[:count]
    report.pixels += counts
    report.images_with += counts > 0


def format_report(report):
    """The report as lines of text."""
    lines = []
    if report.items:
        lines.append("items: " + ", ".join(f"{split} {n}" for split, n in report.items.items()))
    if report.sizes:
        heights = [h for h, _ in report.sizes]
        widths = [w for _, w in report.sizes]
        lines.append(f"image sizes (WxH): min {min(widths)}x{min(heights)}, median "
                     f"{statistics.median(widths):g}x{statistics.median(heights):g}, max "
                     f"{max(widths)}x{max(heights)}")
    if report.pixels is not None:
        labelled = int(report.pixels.sum())
        lines.append(f"{'class':>5}  {'name':<24} {'share':>8}  images")
        for index, name in enumerate(report.class_names):
            share = report.pixels[index] / labelled if labelled else 0.0
            lines.append(f"{index:>5}  {name[:24]:<24} {100 * share:7.2f}%  "
                         f"{int(report.images_with[index])}")
        lines.append(f"ignored ({IGNORE_LABEL}) pixels: {report.ignored_pixels}")
    lines += [f"error: {text}" for text in report.errors]
    lines += [f"warning: {text}" for text in report.warnings]
    verdict = {0: "clean", 1: f"{len(report.warnings)} warning(s)",
               2: f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"}
    lines.append(f"dataset check: {verdict[report.status]}")
    return lines


def chart_image(report, *, width=720):
    """A horizontal bar chart of the class pixel shares, RGB uint8 [H, width, 3]."""
    names = [f"{i} {_ascii(n)}"[:28] for i, n in enumerate(report.class_names)]
    row, top, left = 22, 34, 230
    image = np.full((top + row * len(names) + 10, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, "class pixel share (images)", (10, 22), font, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    labelled = max(int(report.pixels.sum()), 1)
    room = width - left - 130
    for index, name in enumerate(names):
        y = top + row * index
        share = report.pixels[index] / labelled
        cv2.putText(image, name, (10, y + 15), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.rectangle(image, (left, y + 3), (left + max(1, int(round(share * room))), y + 18),
                      (70, 110, 200), -1)
        cv2.putText(image, f"{100 * share:.2f}% ({int(report.images_with[index])})",
                    (left + int(round(share * room)) + 6, y + 15), font, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return image


def _ascii(name):
    return name.encode("ascii", "replace").decode("ascii")


def write_chart(path, report):
    """Write the chart to `path` (a .png), replacing only a chart written before."""
    if report.pixels is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if not name.lower().endswith(".png"):
        raise UserError(f"--chart {path}: expected a .png file name")
    folder = OutputFolder(directory, "--chart")
    folder.claim([name])
    write_image(os.path.join(directory, name), chart_image(report))
    folder.wrote(name)
    folder.flush()
    return path
