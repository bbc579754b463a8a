"""Colour-mask datasets (`data.kind: colour_masks`): RGB label PNGs and a colour map.

Layout (data.root):

    labelmap.txt      CVAT's map: `name:r,g,b:parts:actions` per line ('#' lines are
                      comments), or
    colours.txt       `r g b name` per line;
                      either way the n-th colour line is class n (CVAT writes
                      background first).
    JPEGImages/ or images/                   the images
    SegmentationClass/ or labels/ or masks/  <image stem>.png, the colour masks
    ImageSets/Segmentation/<split>.txt or <split>.txt
                      the image stems of a split; without one, the images are split
                      into train and val by data.val_fraction (seeded).

Each mask pixel's colour (read as `image_files.read_image` reads an image, so
palette PNGs give their colours) maps to its class id. A colour not in the map
is an error naming the file, the colour and its pixel count, or becomes the
ignore label 255 with data.unknown_colour "ignore".
"""

import os

import numpy as np

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.data import image_files, splits
from fcn_graph.data.annotations import check_class_names
from fcn_graph.data.image_files import IMAGE_EXTENSIONS
from fcn_graph.data.splits import ImageFileError, LabelFileError, SplitFiles

MAP_FILES = ("labelmap.txt", "colours.txt", "colors.txt")
IMAGE_DIRS = ("JPEGImages", "images")
MASK_DIRS = ("SegmentationClass", "labels", "masks")


def read_colour_map(path):
    """(class names, colours int [K, 3]) of a labelmap.txt or colours.txt file."""
    cvat = os.path.basename(path) == "labelmap.txt"
    names, colours = [], []
    for number, line in enumerate(splits.read_lines(path, "a colour map"), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if cvat:
            fields = text.split(":")
            name, rgb = fields[0].strip(), fields[1].split(",") if len(fields) > 1 else []
        else:
            fields = text.split(None, 3)
            rgb, name = fields[:3], fields[3].strip() if len(fields) > 3 else ""
        try:
            colour = [int(v) for v in rgb]
        except ValueError:
            colour = []
        if len(colour) != 3 or not all(0 <= v <= 255 for v in colour) or not name:
            shape = "name:r,g,b:parts:actions" if cvat else "r g b name"
            raise UserError(f"{path}: line {number}: expected {shape} with r, g, b in "
                            f"0..255, found {text!r}")
        if colour in colours:
            raise UserError(f"{path}: line {number}: colour {tuple(colour)} of {name!r} is "
                            f"already class {colours.index(colour)} "
                            f"({names[colours.index(colour)]!r})")
        names.append(name)
        colours.append(colour)
    check_class_names(names, path)
    return tuple(names), np.array(colours, np.int64)


def _first(root, names, what):
    for name in names:
        if os.path.exists(os.path.join(root, name)):
            return os.path.join(root, name)
    raise UserError(f"{root}: no {what} ({' or '.join(names)}; data.kind colour_masks)")


def open_split(root, split, *, seed=0, val_fraction=0.1, unknown="error"):
    """List and check `split` of the colour-mask dataset at `root`."""
    map_file = _first(root, MAP_FILES, "colour map")
    names, colours = read_colour_map(map_file)
    image_dir = _first(root, IMAGE_DIRS, "image folder")
    mask_dir = _first(root, MASK_DIRS, "mask folder")
    by_stem = splits.images_by_stem(image_dir)
    lists = [os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"),
             os.path.join(root, f"{split}.txt")]
    list_file = next((p for p in lists if os.path.isfile(p)), None)
    if list_file:
        images = []
        for stem in splits.read_list(list_file, f"colour_masks split {split!r}"):
            if stem not in by_stem:
                raise UserError(f"{list_file}: lists {stem!r} but {image_dir} has no "
                                f"{stem}{{{','.join(IMAGE_EXTENSIONS)}}}")
            images.append(by_stem[stem])
    else:
        images = splits.seeded_split(list(by_stem.values()), split, seed, val_fraction,
                                        image_dir, missing=lists[0])
    masks = splits.pair_labels(images, mask_dir, listed_in=list_file)
    reader = ColourMaskReader(colours, unknown, map_file)
    return SplitFiles("colour_masks", split, tuple(images), masks, names, reader=reader)


def colours_to_ids(rgb, colours, unknown, path, map_file):
    """Class ids uint8 [H, W] of a colour mask uint8 [H, W, 3]: each pixel's
    24-bit colour looked up among the map's sorted colours (a binary search);
    colours not in the map are IGNORE_LABEL with `unknown` "ignore", else an
    error naming the file, the first colours and their pixel counts."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) \
        | rgb[..., 2]
    known = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) \
        | colours[:, 2]
    order = np.argsort(known, kind="stable")
    ranked = known[order]
    position = np.minimum(np.searchsorted(ranked, codes), len(ranked) - 1)
    ids = order[position].astype(np.uint8)
    found = ranked[position] == codes
    if found.all():
        return ids
    if unknown != "ignore":
        missing, counts = np.unique(codes[~found], return_counts=True)
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) in {n} pixels"
                          for c, n in zip(missing[:4].tolist(), counts[:4].tolist()))
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise LabelFileError(f"{path}: colours not in {map_file}: {shown}{more} "
                             f"(add them to the map, or set data.unknown_colour to ignore)")
    ids[~found] = IGNORE_LABEL
    return ids


class ColourMaskReader:
    """Reads an item of a colour-mask split: the image and the mask as class ids."""

    def __init__(self, colours, unknown, map_file):
        self.colours, self.unknown, self.map_file = colours, unknown, map_file

    def read(self, image_path, mask_path):
        try:
            image = image_files.read_image(image_path)
        except UserError as err:
            raise ImageFileError(str(err)) from None
        try:
            rgb = image_files.read_image(mask_path)
        except UserError as err:
            raise LabelFileError(str(err)) from None
        return image, colours_to_ids(rgb, self.colours, self.unknown, mask_path, self.map_file)
