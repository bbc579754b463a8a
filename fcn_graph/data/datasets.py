"""Segmentation datasets: file lists in Python, decoding and augmentation in tf.data.

Layouts (`data.kind`):

    voc     JPEGImages/<id>.jpg, SegmentationClass/<id>.png (8-bit palette PNGs whose
            palette indices are the class ids, 255 = boundary, ignored),
            ImageSets/Segmentation/<split>.txt. 21 classes.
    ade20k  images/{training,validation}/*.jpg, annotations/{training,validation}/*.png
            (gray, 0..150, 0 = "other" trained as a class). 151 classes.
    pets    images/*.jpg, annotations/trimaps/<stem>.png (1 pet, 2 background,
            3 border -> 0, 1, 2); splits from annotations/{trainval,test}.txt, else a
            seeded split. 3 classes.
    folder  images/<stem>.{jpg,jpeg,png,bmp}, labels/<stem>.png (gray or palette,
            value = class id, 255 ignored), optional classes.txt; splits from
            <split>.txt, else images/<split>/ and labels/<split>/, else a seeded split.
    shapes  generated on first use (see fcn_graph.data.shapes), then read as `folder`.
    coco, labelme, colour_masks
            annotation-tool exports, read directly (see fcn_graph.data.coco,
            fcn_graph.data.labelme, fcn_graph.data.colour_masks): their SplitFiles carry
            a `reader` that decodes an item's image and rasterises its label.

`open_split` scans a split before training starts (missing split files, empty
splits and images without labels are `UserError`s naming the file). Each image
and label is checked when the pipeline first reads it (the image decodable, the
label the size of its image with values in [0, num_classes) or IGNORE_LABEL); a
failure raises `splits.ImageFileError` or `splits.LabelFileError` inside the pipeline, which
`data_error_message` turns back into a one-line message naming the file.

Images are decoded by `image_files.read_image` (OpenCV, accurate IDCT), the reader
infer uses, so training, evaluation and inference see the same pixels. Labels
are read with Pillow, never with `tf.io.decode_png`: for palette PNGs the latter
returns the palette colours instead of the indices.
"""

import os
import re

import numpy as np
import tensorflow as tf

from fcn_graph.core.constants import IGNORE_LABEL, VGG_MEAN_RGB
from fcn_graph.core.errors import UserError
from fcn_graph.data import image_files, shapes, splits
from fcn_graph.data.image_files import IMAGE_EXTENSIONS

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
PETS_CLASSES = ("pet", "background", "border")
ADE20K_NUM_CLASSES = 151  # 150 object classes and 0 = "other"
_ADE_SPLITS = {"train": "training", "training": "training",
               "val": "validation", "validation": "validation"}
_PETS_SPLITS = {"train": "trainval", "trainval": "trainval", "val": "test", "test": "test"}



# --------------------------------------------------------------------------- file lists


def open_split(kind, root, split, *, seed=0, val_fraction=0.1):
    """List and check the files of `split` of the dataset of `kind` at `root`."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: dataset directory not found (data.root, data.kind {kind!r})")
    if kind == "voc":
        return _voc(root, split)
    if kind == "ade20k":
        return _ade20k(root, split)
    if kind == "pets":
        return _pets(root, split, seed, val_fraction)
    if kind in ("folder", "shapes"):
        return _folder(root, split, seed, val_fraction, kind)
    raise UserError(f"data.kind: expected one of voc, ade20k, pets, folder, shapes, found {kind!r} "
                    f"(coco, labelme and colour_masks open through open_config_split)")



def splits_from_config(config):
    """(train SplitFiles, val SplitFiles, num_classes) for a config; generates shapes."""
    train = open_config_split(config, config.data.train_split)
    val = open_config_split(config, config.data.val_split)
    if train.class_names and val.class_names and train.class_names != val.class_names:
        raise UserError(
            f"data.val_split {val.split!r}: its classes ({', '.join(val.class_names)}) differ "
            f"from those of data.train_split {train.split!r} ({', '.join(train.class_names)}); "
            f"both splits must name the same classes in the same order")
    num_classes = resolve_num_classes(config.model.num_classes, train)
    return train, val, num_classes


def open_config_split(config, split):
    """SplitFiles of one split of the config's dataset (generating shapes if needed)."""
    d = config.data
    root = splits.dataset_root(config)
    if d.kind == "shapes":
        shapes.ensure_shapes(root, num_train=d.shapes_train_images,
                                     num_val=d.shapes_val_images,
                                     image_size=d.shapes_image_size, seed=config.train.seed)
    if d.kind in ("coco", "labelme", "colour_masks"):
        return _annotation_split(config, split)
    return open_split(d.kind, root, split, seed=config.train.seed, val_fraction=d.val_fraction)


def _annotation_split(config, split):
    """The SplitFiles of `split` of the config's coco, labelme or colour_masks dataset."""
    d = config.data
    root = splits.dataset_root(config)
    seed, fraction = config.train.seed, d.val_fraction
    if d.kind == "coco":
        from fcn_graph.data import coco

        return coco.open_split(root, split, seed=seed, val_fraction=fraction,
                               crowd=d.coco_crowd)
    if d.kind == "labelme":
        from fcn_graph.data import labelme

        return labelme.open_split_of_config(config, split)
    if d.kind == "colour_masks":
        from fcn_graph.data import colour_masks

        return colour_masks.open_split(root, split, seed=seed, val_fraction=fraction,
                                       unknown=d.unknown_colour)
    raise AssertionError(f"not an annotation kind: {d.kind!r}")


def resolve_num_classes(configured, files):
    """`model.num_classes`, checked against (or taken from) the dataset's classes."""
    known = len(files.class_names)
    if configured is None:
        if not known:
            raise UserError(
                f"model.num_classes: required for this {files.kind} dataset, which has no "
                f"classes.txt naming its classes"
            )
        return known
    if known and configured != known:
        raise UserError(
            f"model.num_classes: the {files.kind} dataset has {known} classes, found {configured}; "
            f"set model.num_classes to {known} or null"
        )
    return configured


def class_names_for(files, num_classes):
    """Class names of length `num_classes`, numbered where the dataset names none."""
    names = list(files.class_names[:num_classes])
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


def _voc(root, split):
    base = root
    for sub in ("VOC2012", os.path.join("VOCdevkit", "VOC2012")):
        if not os.path.isdir(os.path.join(base, "JPEGImages")) and os.path.isdir(
            os.path.join(root, sub, "JPEGImages")
        ):
            base = os.path.join(root, sub)
    list_file = os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt")
    stems = splits.read_list(list_file, f"VOC split {split!r}")
    images = tuple(os.path.join(base, "JPEGImages", s + ".jpg") for s in stems)
    labels = splits.pair_labels(images, os.path.join(base, "SegmentationClass"), listed_in=list_file)
    return splits.SplitFiles("voc", split, images, labels, VOC_CLASSES)


def _ade20k(root, split):
    base = root
    if not os.path.isdir(os.path.join(base, "images")) and os.path.isdir(
        os.path.join(root, "ADEChallengeData2016", "images")
    ):
        base = os.path.join(root, "ADEChallengeData2016")
    if split not in _ADE_SPLITS:
        raise UserError(f"data split {split!r}: ade20k splits are training (train) and "
                        f"validation (val)")
    folder = _ADE_SPLITS[split]
    image_dir = os.path.join(base, "images", folder)
    if not os.path.isdir(image_dir):
        raise UserError(f"{image_dir}: ADE20K image directory not found")
    images = tuple(splits.list_images(image_dir, (".jpg",)))
    if not images:
        raise UserError(f"{image_dir}: no .jpg images in ADE20K split {split!r}")
    labels = splits.pair_labels(images, os.path.join(base, "annotations", folder))
    return splits.SplitFiles("ade20k", split, images, labels, _ade20k_class_names(base))


def _ade20k_class_names(base):
    """Names from objectInfo150.txt when present (index 0 is "other")."""
    names = ["other"] + [f"class_{i}" for i in range(1, ADE20K_NUM_CLASSES)]
    info = os.path.join(base, "objectInfo150.txt")
    if os.path.isfile(info):
        for line in splits.read_lines(info, "ADE20K's tab-separated class list")[1:]:
            fields = line.split("\t")
            if len(fields) >= 5 and fields[0].strip().isdigit():
                index = int(fields[0])
                if 0 < index < ADE20K_NUM_CLASSES:
                    names[index] = fields[4].split(",")[0].strip()
    return tuple(names)


def _pets(root, split, seed, val_fraction):
    image_dir = os.path.join(root, "images")
    label_dir = os.path.join(root, "annotations", "trimaps")
    for d in (image_dir, label_dir):
        if not os.path.isdir(d):
            raise UserError(f"{d}: Oxford-IIIT Pet directory not found")
    if split not in _PETS_SPLITS:
        raise UserError(f"data split {split!r}: pets splits are trainval (train) and test (val)")
    list_file = os.path.join(root, "annotations", _PETS_SPLITS[split] + ".txt")
    if os.path.lexists(list_file):
        stems = splits.read_list(list_file, f"pets split {split!r}")
        images = tuple(os.path.join(image_dir, s + ".jpg") for s in stems)
        labels = splits.pair_labels(images, label_dir, listed_in=list_file)
    else:
        everything = splits.list_images(image_dir, (".jpg",))
        images = tuple(splits.seeded_split(everything, split, seed, val_fraction, image_dir))
        labels = splits.pair_labels(images, label_dir)
    return splits.SplitFiles("pets", split, images, labels, PETS_CLASSES, label_offset=1)


def _folder(root, split, seed, val_fraction, kind):
    image_dir = os.path.join(root, "images")
    label_dir = os.path.join(root, "labels")
    for d in (image_dir, label_dir):
        if not os.path.isdir(d):
            raise UserError(f"{d}: directory not found ({kind} datasets hold images/ and labels/)")
    class_names = ()
    classes_file = os.path.join(root, "classes.txt")
    if os.path.isfile(classes_file):
        class_names = tuple(line.strip() for line in
                            splits.read_lines(classes_file, "one class name per line") if line.strip())
        if not class_names:
            raise UserError(f"{classes_file}: empty; expected one class name per line")
        image_files.check_num_classes(len(class_names), classes_file)
    list_file = os.path.join(root, f"{split}.txt")
    if os.path.lexists(list_file):
        by_stem = splits.images_by_stem(image_dir)
        stems = splits.read_list(list_file, f"{kind} split {split!r}")
        images = []
        for stem in stems:
            if stem not in by_stem:
                raise UserError(f"{list_file}: lists {stem!r} but {image_dir} has no "
                                f"{stem}{{{','.join(IMAGE_EXTENSIONS)}}}")
            images.append(by_stem[stem])
        labels = splits.pair_labels(images, label_dir, listed_in=list_file)
    elif os.path.isdir(os.path.join(image_dir, split)):
        images = splits.list_images(os.path.join(image_dir, split), IMAGE_EXTENSIONS)
        if not images:
            raise UserError(f"{os.path.join(image_dir, split)}: no images in split {split!r}")
        labels = splits.pair_labels(images, os.path.join(label_dir, split))
    else:
        everything = list(splits.images_by_stem(image_dir).values())
        images = splits.seeded_split(everything, split, seed, val_fraction, image_dir,
                               missing=list_file)
        labels = splits.pair_labels(images, label_dir)
    return splits.SplitFiles(kind, split, tuple(images), labels, class_names)


# --------------------------------------------------------------------------- decoding


def read_label(label_path, num_classes, offset=0, image_path=None, image_hw=None):
    """A label PNG as uint8 [H, W] of class ids (palette indices for palette PNGs).

    `offset` is subtracted from every value except IGNORE_LABEL. Raises
    `splits.LabelFileError` naming the file when it is unreadable or a colour image,
    its size differs from `image_hw`, or a value is outside [0, num_classes)
    and not IGNORE_LABEL.
    """
    try:
        label = image_files.read_label(label_path)
    except UserError as err:
        raise splits.LabelFileError(str(err)) from None
    return check_label(label, label_path, num_classes, offset, image_path, image_hw)


def check_label(label, label_path, num_classes, offset=0, image_path=None, image_hw=None):
    """`label` (uint8 [H, W] as stored) minus `offset`, checked as `read_label` says."""
    if image_hw is not None and tuple(label.shape) != tuple(int(v) for v in image_hw):
        raise splits.LabelFileError(
            f"{label_path}: label is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
            f"{image_path} is {int(image_hw[1])}x{int(image_hw[0])}")
    values = label.astype(np.int16)
    if offset:
        values[values != IGNORE_LABEL] -= offset
    bad = (values != IGNORE_LABEL) & ((values < 0) | (values >= num_classes))
    if bad.any():
        found = np.unique(label[bad])[:8].tolist()
        shown = f"stored values {found} (minus {offset})" if offset else f"values {found}"
        raise splits.LabelFileError(
            f"{label_path}: {shown} outside [0, {num_classes}) and not {IGNORE_LABEL} "
            f"(model.num_classes = {num_classes})")
    return values.astype(np.uint8)


def read_raw_pair(image_path, label_path, reader=None):
    """One (image uint8 [H, W, 3], label uint8 [H, W] as stored) pair, unchecked:
    through `reader` (a splits.SplitFiles' reader) when given, else the image and label
    files. Raises `splits.ImageFileError` or `splits.LabelFileError` naming the file."""
    if reader is not None:
        return reader.read(image_path, label_path)
    try:
        image = image_files.read_image(image_path)
    except UserError as err:
        raise splits.ImageFileError(str(err)) from None
    try:
        label = image_files.read_label(label_path)
    except UserError as err:
        raise splits.LabelFileError(str(err)) from None
    return image, label


def read_pair(image_path, label_path, num_classes, offset=0, reader=None):
    """Decode one (image uint8 [H, W, 3], label uint8 [H, W]) pair with the readers
    that infer uses (`image_files.read_image`, `read_label`), so that every command
    sees the same pixels of a file. Raises `splits.ImageFileError` naming an image that
    cannot be decoded and `splits.LabelFileError` for a label `read_label` refuses.
    `reader`: a splits.SplitFiles' reader, for kinds whose labels are not id PNGs."""
    image, label = read_raw_pair(image_path, label_path, reader)
    label = check_label(label, label_path, num_classes, offset, image_path, image.shape[:2])
    return image, label


def _fsencoded(paths):
    """`paths` as the bytes the file system holds (os.fsencode), so that tf.data
    carries names that are not UTF-8 unchanged; os.fsdecode reverses it."""
    return [os.fsencode(path) for path in paths]


def _load_pair(image_path, label_path, *, num_classes, offset, reader=None):
    """Decode one (image float32 [H, W, 3], label uint8 [H, W]) pair, in the graph.

    Decoding runs in Python through `read_pair` rather than `tf.io.decode_image`,
    whose JPEG decoder uses a faster, less accurate IDCT than OpenCV's and
    Pillow's and whose errors do not name the file.
    """
    def load(image_path_bytes, label_path_bytes):
        return read_pair(os.fsdecode(image_path_bytes), os.fsdecode(label_path_bytes),
                         num_classes, offset, reader)

    image, label = tf.numpy_function(load, [image_path, label_path], (tf.uint8, tf.uint8),
                                     stateful=False, name="read_pair")
    image = tf.ensure_shape(image, [None, None, 3])  # [H, W, 3]
    label = tf.reshape(label, tf.shape(image)[:2])  # [H, W]
    return tf.cast(image, tf.float32), label


def data_error_message(err):
    """One line describing a tf.data failure (`tf.errors.OpError`), naming the file."""
    text = getattr(err, "message", str(err))
    match = re.search(r"(?:LabelFileError|ImageFileError): ([^\n]*)", text)
    if match:
        return match.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "transformation with iterator" in line:
            return "cannot decode an input image: " + line.split(": ", 2)[-1]
    return lines[-1] if lines else type(err).__name__


# --------------------------------------------------------------------------- pipelines


def train_dataset(files, *, num_classes, batch_size, image_size, scale_range=(1.0, 1.0),
                  flip=True, seed=0, mean_pixel=VGG_MEAN_RGB):
    """An endless, shuffled, augmented dataset of (images, labels) batches.

    images float32 [B, S, S, 3] RGB 0..255, labels int32 [B, S, S], S = image_size.
    Every element draws its augmentation from a stateless seed (seed, element
    index), so a run is reproducible whatever the parallelism.
    """
    paths = tf.data.Dataset.from_tensor_slices(
        (_fsencoded(files.image_paths), _fsencoded(files.label_paths)))
    paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    paths = paths.enumerate()

    def load_and_augment(index, pair):
        image_path, label_path = pair
        image, label = _load_pair(image_path, label_path, num_classes=num_classes,
                                  offset=files.label_offset, reader=files.reader)
        return augment(image, label, tf.stack([tf.constant(seed, tf.int64), index]),
                       image_size=image_size, scale_range=scale_range, flip=flip,
                       mean_pixel=mean_pixel)

    data = paths.map(load_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
    data = data.batch(batch_size, drop_remainder=True)
    return data.prefetch(tf.data.AUTOTUNE)


def eval_dataset(files, *, num_classes, max_images=None):
    """Each image at full size, batch 1: dicts of image float32 [1, H, W, 3],
    label int32 [1, H, W] and name string [1] (the file stem)."""
    count = len(files) if max_images is None else min(len(files), max_images)
    data = tf.data.Dataset.from_tensor_slices((
        _fsencoded(files.image_paths[:count]), _fsencoded(files.label_paths[:count]),
        _fsencoded(files.names[:count])))

    def load(image_path, label_path, name):
        image, label = _load_pair(image_path, label_path, num_classes=num_classes,
                                  offset=files.label_offset, reader=files.reader)
        return {"image": image, "label": tf.cast(label, tf.int32), "name": name}

    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    # Without autotuning: re-initialising an iterator (each validation does)
    # waits for its autotuning thread to wake, which sleeps up to a minute.
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.batch(1).prefetch(tf.data.AUTOTUNE).with_options(options)


def augment(image, label, seed, *, image_size, scale_range=(1.0, 1.0), flip=True,
            mean_pixel=VGG_MEAN_RGB):
    """Random scale, pad, crop to image_size x image_size and horizontal flip.

    image float32 [H, W, 3], label uint8 [H, W] -> float32 [S, S, 3], int32 [S, S].
    The image is resized bilinearly, the label with nearest neighbour only (no
    new values). Where the scaled image is smaller than S it is padded with
    `mean_pixel` (zero after mean subtraction) and the label with IGNORE_LABEL.
    `seed` is an int64 [2] stateless seed.
    """
    size = image_size
    draws = tf.random.stateless_uniform([6], seed=seed)
    low, high = float(scale_range[0]), float(scale_range[1])
    scale = low + draws[0] * (high - low)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    image = tf.image.resize(image, new_hw, method="bilinear")  # [h, w, 3]
    label = tf.image.resize(label[..., None], new_hw, method="nearest")  # [h, w, 1]

    # Pad to at least S x S at a random offset: image with the mean, label with ignore.
    pad = tf.maximum(size - new_hw, 0)
    before = tf.cast(tf.floor(draws[1:3] * tf.cast(pad + 1, tf.float32)), tf.int32)
    before = tf.minimum(before, pad)
    paddings = tf.stack([before, pad - before], axis=1)  # [2, 2]
    mean = tf.constant(mean_pixel, tf.float32)
    image = tf.pad(image - mean, tf.concat([paddings, [[0, 0]]], 0)) + mean
    label = tf.pad(label, tf.concat([paddings, [[0, 0]]], 0), constant_values=IGNORE_LABEL)

    # Crop S x S at a random offset.
    room = tf.shape(image)[:2] - size
    offset = tf.cast(tf.floor(draws[3:5] * tf.cast(room + 1, tf.float32)), tf.int32)
    offset = tf.minimum(offset, room)
    image = image[offset[0]:offset[0] + size, offset[1]:offset[1] + size]
    label = label[offset[0]:offset[0] + size, offset[1]:offset[1] + size]

    if flip:
        mirror = draws[5] < 0.5
        image = tf.cond(mirror, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(mirror, lambda: label[:, ::-1], lambda: label)
    image = tf.ensure_shape(image, [size, size, 3])
    label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [size, size])
    return image, label
