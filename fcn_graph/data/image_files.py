"""Reading images and labels, writing labels, colour maps and overlays.

Conventions:
- Images are numpy uint8 [H, W, 3] in RGB order, 0..255 (the network input
  before mean subtraction). OpenCV decodes them; its BGR order is converted
  here and nowhere else.
- Labels are numpy uint8 [H, W] of class ids. Palette PNGs (PASCAL VOC
  `SegmentationClass`) store the ids as palette indices, so labels are read
  with Pillow, which returns the indices; OpenCV would return the colours.
- Every writer goes through `fcn_graph.core.fileio.atomic_write`: a reader never
  sees a half-written file.
"""

import os
import stat

import cv2
import numpy as np
from PIL import Image

from fcn_graph.core.constants import IGNORE_LABEL, voc_palette
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import (
    atomic_write,
    kind_of,
    link_problem,
    read_input,
)

# Extensions of the image files that `read_image` reads and that folders of
# images (infer's inputs, the datasets) are searched for.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# The formats `write_image` writes (RGB, 8 bits).
WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Label PNGs hold one byte per pixel and IGNORE_LABEL (255) marks ignored pixels,
# so class ids are 0..254: at most 255 classes.
MAX_CLASSES = IGNORE_LABEL


def check_num_classes(num_classes, where):
    """Raise UserError naming `where` (a flag, key or checkpoint) when
    `num_classes` is more than MAX_CLASSES."""
    if num_classes > MAX_CLASSES:
        raise UserError(
            f"{where}: expected at most {MAX_CLASSES} classes (label PNGs store class ids "
            f"0..{MAX_CLASSES - 1}; {IGNORE_LABEL} is the ignore label), found {num_classes}"
        )


def _to_uint8(pixels, path):
    """8-bit samples unchanged; 16-bit samples scaled by 1/257 and rounded."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        # round(v / 257) in integers: 65535 -> 255, 32896 -> 128; no ties occur.
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise UserError(
        f"{path}: unsupported sample type {pixels.dtype} "
        "(expected an 8-bit or 16-bit image)"
    )


# EXIF orientation tag (0x0112) value -> the change of the stored pixels
# [H, W, C] that shows the image upright, as the EXIF specification defines:
# 2 mirrored, 3 turned 180 degrees, 4 flipped, 5 transposed, 6 turned 90
# degrees clockwise, 7 transversed, 8 turned 90 degrees counter-clockwise.
EXIF_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(data):
    """The EXIF orientation (1..8) of an encoded image's bytes; 1 (as stored)
    when it has no EXIF or no valid orientation tag."""
    import io
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises several types for data it does not know
        return 1
    return value if value in _UPRIGHT else 1


def read_image(path, *, exif_rotate=False):
    """Read an image file as RGB uint8 [H, W, 3].

    Rules:
    - Decoded by OpenCV from the file's bytes (`cv2.imdecode`, IMREAD_UNCHANGED),
      so paths with non-ASCII characters work on every platform.
    - Grayscale: the gray value is copied to R, G and B.
    - Gray + alpha, RGBA: the alpha channel is dropped; the stored colours are
      kept as they are (no compositing), as OpenCV's IMREAD_COLOR would.
    - 16-bit samples: scaled to 8 bits as round(v / 257), so 65535 -> 255.
    - Palette PNGs: OpenCV expands the palette, so the result holds the
      palette's colours (use `read_label` to get the indices). OpenCV 5 gives
      BGR for a palette PNG, and BGRA when it has a tRNS chunk; gray + alpha
      PNGs come back as BGRA with the gray value in B, G and R.
    - The EXIF orientation tag is not applied (IMREAD_UNCHANGED ignores it):
      pixels are returned in stored order, the order label files match.
      With `exif_rotate`, they are turned upright as the tag says (a phone
      photo held upright), by `exif_orientation` and the table _UPRIGHT.

    Raises UserError naming `path` when the file is missing, empty, not an
    image OpenCV can decode, or has an unsupported sample type or channel count.
    """
    path = os.fspath(path)
    return decode_image(read_input(path, "an image (PNG or JPEG)"), path,
                        exif_rotate=exif_rotate)


def decode_image(data, path, *, exif_rotate=False):
    """Decode the bytes of an image file as `read_image` does; `path` names the
    source in errors."""
    expected = "an image (PNG or JPEG)"
    if not data:
        raise UserError(f"{path}: not a readable image (the file is empty; expected {expected})")
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise UserError(
            f"{path}: not a readable image (OpenCV could not decode {len(data)} bytes; "
            f"expected {expected})"
        )
    pixels = _to_uint8(pixels, path)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        rgb = np.repeat(pixels[:, :, :1], 3, axis=2)
    elif channels in (3, 4):  # BGR, BGRA
        rgb = pixels[:, :, 2::-1]
    else:
        raise UserError(
            f"{path}: image has {channels} channels (expected gray, gray + alpha, RGB or RGBA)"
        )
    if exif_rotate:
        rgb = _UPRIGHT.get(exif_orientation(data), lambda a: a)(rgb)
    return np.ascontiguousarray(rgb)


def read_label(path):
    """Read a label file as class ids, uint8 [H, W].

    Rules:
    - Palette PNG (Pillow mode "P", e.g. VOC `SegmentationClass`): the palette
      indices are the class ids; the colours are ignored.
    - Single-channel 8-bit image (mode "L", e.g. ADE20K annotations): the gray
      values are the class ids. 1-bit images give 0 and 1.
    - 16-bit or 32-bit single-channel images: accepted only when every value is
      in 0..255.
    - Colour images (RGB, RGBA, gray + alpha, ...) are refused: a colour label
      must be converted to class ids first.

    Raises UserError naming `path` for a missing or unreadable file, a colour
    label, or values that do not fit in 0..255.
    """
    path = os.fspath(path)
    expected = "a palette or single-channel label PNG"
    problem = link_problem(path)
    if problem is not None:
        raise UserError(f"{path}: {problem} (expected {expected})")
    try:
        kind = os.stat(path).st_mode
    except OSError:
        kind = None  # Pillow's open below says why
    if kind is not None and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
        raise UserError(f"{path}: is {kind_of(kind)}, not a regular file (expected {expected})")
    data_error = None
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            ids = np.array(im)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected {expected})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory (expected {expected})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        data_error = err
    if data_error is not None:
        raise UserError(
            f"{path}: not a readable label image ({data_error}; expected {expected})"
        )
    if mode == "P" or mode == "L":
        return ids.astype(np.uint8, copy=False)
    if mode == "1":
        return ids.astype(np.uint8)
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I" (32-bit)
        low, high = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if low < 0 or high > 255:
            raise UserError(
                f"{path}: {mode} label image holds values {low}..{high} "
                "(expected class ids in 0..255)"
            )
        return ids.astype(np.uint8)
    raise UserError(
        f"{path}: found a {mode} image (expected {expected} whose pixel values are class ids; "
        "convert colour labels to ids first)"
    )


def _palette_table(palette):
    """The palette as uint8 [max(n, 256), 3]; entries past the given ones are black."""
    if palette is None:
        return voc_palette(256)
    table = np.asarray(palette)
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 1:
        raise ValueError(f"palette: expected an [n, 3] array of RGB colours, got shape {table.shape}")
    if table.dtype != np.uint8:
        if table.size and (table.min() < 0 or table.max() > 255):
            raise ValueError("palette: colours must be in 0..255")
        table = table.astype(np.uint8)
    if table.shape[0] < 256:
        table = np.concatenate([table, np.zeros((256 - table.shape[0], 3), np.uint8)])
    return table


def _check_ids(label, limit, what):
    """`label` as an integer array [H, W] with every value in 0..limit-1."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{what}: expected a label array [H, W], got shape {label.shape}")
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{what}: expected integer class ids, got dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() >= limit):
        raise ValueError(
            f"{what}: class ids {label.min()}..{label.max()} do not fit (expected 0..{limit - 1})"
        )
    return label


def colorize(label, palette=None):
    """Colour image uint8 [H, W, 3] with pixel (i, j) = palette[label[i, j]].

    `palette` defaults to the VOC colour map; a shorter palette is padded with
    black up to 256 entries. Ids outside the palette raise ValueError.
    """
    table = _palette_table(palette)
    return table[_check_ids(label, len(table), "colorize")]


def overlay(image_rgb, label, *, alpha=0.5, palette=None, background=0):
    """Blend the coloured label onto an RGB image: uint8 [H, W, 3].

    out = round((1 - alpha) * image + alpha * colour), rounded to the nearest
    integer (halves to even). Pixels whose class is `background` (class 0 by
    default, black in the VOC map) keep the image unchanged, so the scene stays
    visible around the objects; pass background=None to blend every class.
    """
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"overlay: expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"overlay: label shape {label.shape} does not match image shape {image.shape[:2]}"
        )
    table = _palette_table(palette)                                    # [P, 3]
    ids = _check_ids(label, len(table), "overlay")                     # [H, W]
    # The formula once per (colour, channel, image value), then one lookup
    # per pixel and channel: the same numbers as blending pixel by pixel.
    values = np.arange(256, dtype=np.float64)
    blends = np.rint((1.0 - alpha) * values + alpha * table[:, :, None].astype(np.float64))
    blends = np.clip(blends, 0, 255).astype(np.uint8)                  # [P, 3, 256]
    if background is not None and 0 <= background < len(table):
        blends[background] = np.arange(256, dtype=np.uint8)            # the image unchanged
    index = (ids.astype(np.intp)[..., None] * 3 + np.arange(3)) * 256 + image  # [H, W, 3]
    return blends.reshape(-1)[index]


def write_label_png(path, label, palette=None):
    """Write class ids as an 8-bit palette PNG, atomically.

    The pixel values are the ids (0..255) and the palette gives their colours
    (the VOC colour map by default, padded with black to 256 entries), the
    format of VOC `SegmentationClass`. `read_label(path)` returns `label`
    exactly. Ids outside 0..255 raise ValueError.
    """
    ids = _check_ids(label, 256, os.fspath(path)).astype(np.uint8)
    table = _palette_table(palette)[:256]
    height, width = ids.shape
    im = Image.frombytes("P", (width, height), np.ascontiguousarray(ids).tobytes())
    im.putpalette(table.tobytes(), rawmode="RGB")
    with atomic_write(path) as tmp:
        im.save(tmp, format="PNG")


def write_image(path, rgb, *, jpeg_quality=95):
    """Write an RGB uint8 [H, W, 3] (or gray [H, W]) image, atomically.

    The format follows the extension: .png (lossless) or .jpg/.jpeg (quality
    `jpeg_quality`). OpenCV encodes; RGB is converted to its BGR here.
    Raises UserError for another extension.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in WRITE_EXTENSIONS:
        raise UserError(
            f"{path}: cannot write an image with extension {ext or '(none)'!r} "
            f"(expected one of {', '.join(WRITE_EXTENSIONS)})"
        )
    pixels = np.asarray(rgb)
    if pixels.dtype != np.uint8 or not (
        pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    ):
        raise ValueError(
            f"{path}: expected an RGB uint8 image [H, W, 3] or gray [H, W], "
            f"got {pixels.dtype} {pixels.shape}"
        )
    if pixels.ndim == 3:
        pixels = np.ascontiguousarray(pixels[:, :, ::-1])  # RGB -> BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext != ".png" else []
    ok, encoded = cv2.imencode(ext, pixels, params)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode a {pixels.shape} image as {ext}")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(encoded.tobytes())


def save_npy_atomic(path, array):
    """Save `array` in .npy format at exactly `path` (no suffix added), atomically."""
    array = np.asarray(array)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
