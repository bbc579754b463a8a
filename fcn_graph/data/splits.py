"""One split's checked file list (`SplitFiles`), the errors an item raises inside
the input pipeline, and the file-list helpers every dataset layout uses: list
files, images by stem, label files beside images, a seeded train/val split."""

import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import check_input_file, input_problem, read_regular_file
from fcn_graph.data.image_files import IMAGE_EXTENSIONS


def dataset_root(config):
    """`data.root`, or the default directory of the generated shapes dataset."""
    if config.data.root:
        return config.data.root
    return os.path.join("data", "shapes")


@dataclass(frozen=True)
class SplitFiles:
    """The checked file list of one split."""

    kind: str
    split: str
    image_paths: Tuple[str, ...]
    label_paths: Tuple[str, ...]
    class_names: Tuple[str, ...]  # empty when the dataset does not name its classes
    label_offset: int = 0  # subtracted from stored label values (pets trimaps: 1)
    # Decodes (image, label) of an item from (image path, label path) for kinds whose
    # labels are not id PNGs: an object with `read(image_path, label_path)` returning
    # (uint8 [H, W, 3], uint8 [H, W]) and raising ImageFileError / LabelFileError.
    reader: Optional[object] = field(default=None, compare=False, repr=False)

    def __len__(self):
        return len(self.image_paths)

    @property
    def names(self):
        return tuple(os.path.splitext(os.path.basename(p))[0] for p in self.image_paths)


class LabelFileError(Exception):
    """A label file that cannot be used; raised inside the tf.data pipeline."""


class ImageFileError(Exception):
    """An image file that cannot be decoded; raised inside the tf.data pipeline."""


def read_lines(path, what):
    """The lines of a UTF-8 text file (a regular file only), or a UserError naming it."""
    check_input_file(path, what)
    try:
        return read_regular_file(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}; expected {what})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err}; expected {what})") from None



def read_list(path, what):
    """The stems a split file lists, one per line (blank lines and # comments
    skipped). A stem listed twice is an error naming both lines."""
    if not os.path.lexists(path):
        raise UserError(f"{path}: split file not found ({what})")
    stems, line_of = [], {}
    for number, line in enumerate(read_lines(path, f"a split file, {what}"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        stem = line.split()[0]
        if stem in line_of:
            raise UserError(f"{path}: line {number} lists {stem!r} again (first on line "
                            f"{line_of[stem]}); expected each image once")
        line_of[stem] = number
        stems.append(stem)
    if not stems:
        raise UserError(f"{path}: split file is empty ({what})")
    return stems



def pair_labels(image_paths, label_dir, label_ext=".png", listed_in=None):
    labels = []
    for image in image_paths:
        stem = os.path.splitext(os.path.basename(image))[0]
        label = os.path.join(label_dir, stem + label_ext)
        problem = input_problem(image)
        if problem is not None:
            where = f" (listed in {listed_in})" if listed_in else ""
            problem = "image not found" if problem == "no such file" else problem
            raise UserError(f"{image}: {problem}{where}")
        problem = input_problem(label)
        if problem == "no such file":
            raise UserError(f"{image}: no label; expected {label}")
        if problem is not None:
            raise UserError(f"{label}: {problem} (expected the label of {image})")
        labels.append(label)
    return tuple(labels)



def list_images(directory, extensions):
    return sorted(
        os.path.join(directory, name) for name in os.listdir(directory)
        if name.lower().endswith(extensions) and not name.startswith(".")
    )


def images_by_stem(image_dir):
    by_stem = {}
    for path in list_images(image_dir, IMAGE_EXTENSIONS):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in by_stem:
            raise UserError(f"{path}: two images share the stem {stem!r} "
                            f"({os.path.basename(by_stem[stem])})")
        by_stem[stem] = path
    return by_stem


def seeded_split(paths, split, seed, val_fraction, where, missing=None):
    """Deterministic train/val split of `paths` (a sorted list) from `seed`."""
    if split not in ("train", "val"):
        hint = f"{missing} not found and " if missing else ""
        raise UserError(f"{where}: {hint}split {split!r} is neither train nor val, so it "
                        f"cannot be drawn at random; provide a list file")
    paths = sorted(paths)
    if len(paths) < 2:
        raise UserError(f"{where}: {len(paths)} image(s); a train/val split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(paths))
    num_val = min(len(paths) - 1, max(1, int(round(len(paths) * val_fraction))))
    chosen = order[:num_val] if split == "val" else order[num_val:]
    return [paths[i] for i in sorted(chosen)]
