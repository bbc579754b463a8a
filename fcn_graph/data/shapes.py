"""A synthetic segmentation dataset: coloured shapes on textured, noisy backgrounds.

Generated deterministically from a seed into a directory laid out like the
`folder` dataset kind:

    root/images/train_00000.png ...   RGB
    root/labels/train_00000.png ...   gray, pixel value = class id
    root/train.txt, root/val.txt      one stem per line
    root/classes.txt                  one class name per line
    root/shapes.json                  the generation settings (written last)

Generation writes into a temporary sibling directory and renames it to `root`
when complete, so an interrupted generation leaves no half dataset behind and
is simply redone on the next run. Shapes do not overlap and their colours are
random, so the classes can only be told apart by their geometry.
"""

import fcntl
import glob
import json
import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from fcn_graph.core.errors import UserError

CLASS_NAMES = ("background", "circle", "rectangle", "triangle")
MANIFEST_NAME = "shapes.json"
FORMAT_VERSION = 2
_SPLIT_STREAMS = {"train": 1, "val": 2}


def ensure_shapes(root, *, num_train, num_val, image_size, seed):
    """Generate the dataset into `root` unless it is already there; return `root`.

    A `root` holding a dataset generated with other settings is a UserError
    (delete it or choose another `data.root`), as is a non-empty `root` that is
    not a generated dataset.
    """
    settings = {
        "version": FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": list(CLASS_NAMES),
    }
    manifest = os.path.join(root, MANIFEST_NAME)
    if os.path.isfile(manifest):
        _check_manifest(manifest, settings)
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(root))
    # One process generates at a time (several workers may start together);
    # the others wait on the lock, then find the finished dataset.
    with open(os.path.join(parent, f".{name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(manifest):
            _check_manifest(manifest, settings)
            return root
        if os.path.isdir(root) and os.listdir(root):
            raise UserError(
                f"{root}: exists, is not empty and is not a generated shapes dataset "
                f"(no {MANIFEST_NAME}); set data.root to a new directory or delete it"
            )
        for stale in glob.glob(os.path.join(parent, f".{name}.tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted generation
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        try:
            _generate(tmp, settings)
            if os.path.isdir(root):
                os.rmdir(root)  # empty, checked above
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


def _check_manifest(path, settings):
    try:
        with open(path) as f:
            found = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable shapes manifest ({err}); delete the directory "
                        f"to regenerate it") from None
    if found != settings:
        diffs = ", ".join(
            f"{k}: {found.get(k)!r} (config asks {v!r})"
            for k, v in settings.items() if found.get(k) != v
        )
        raise UserError(
            f"{path}: this shapes dataset was generated with other settings ({diffs}); "
            f"delete {os.path.dirname(path)} to regenerate it or set data.root elsewhere"
        )


def _generate(out, settings):
    os.makedirs(os.path.join(out, "images"))
    os.makedirs(os.path.join(out, "labels"))
    size = settings["image_size"]
    for split, count in (("train", settings["num_train"]), ("val", settings["num_val"])):
        stems = []
        for index in range(count):
            rng = np.random.default_rng([settings["seed"], _SPLIT_STREAMS[split], index])
            image, label = render_sample(rng, size)
            stem = f"{split}_{index:05d}"
            Image.fromarray(image, mode="RGB").save(os.path.join(out, "images", stem + ".png"))
            Image.fromarray(label, mode="L").save(os.path.join(out, "labels", stem + ".png"))
            stems.append(stem)
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
    with open(os.path.join(out, "classes.txt"), "w") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    with open(os.path.join(out, MANIFEST_NAME), "w") as f:
        json.dump(settings, f, indent=2)


def render_sample(rng, size):
    """One image (uint8 [size, size, 3]) and its label (uint8 [size, size])."""
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    background_mean = image.reshape(-1, 3).mean(0)
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        class_id = int(rng.integers(1, len(CLASS_NAMES)))
        for _attempt in range(10):  # shapes do not overlap; give up after 10 tries
            mask = _shape_mask(rng, size, CLASS_NAMES[class_id])
            if not (mask & occupied).any():
                break
        else:
            continue
        occupied |= mask
        colour = _contrasting_colour(rng, background_mean)
        shade = rng.normal(0.0, 6.0, size=(size, size, 1))
        image[mask] = np.clip(colour + shade[mask], 0, 255)
        label[mask] = class_id
    image += rng.normal(0.0, 8.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _background(rng, size):
    """A colour gradient with stripes, a checkerboard or blotches on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    base = rng.uniform(30, 225, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    texture = rng.integers(0, 3)
    amplitude = rng.uniform(10, 35)
    if texture == 0:  # stripes at a random angle
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, 12) / size
        phase = (yy * math.cos(angle) + xx * math.sin(angle)) / period
        pattern = np.sign(np.sin(2 * math.pi * phase))
    elif texture == 1:  # checkerboard
        cell = int(rng.integers(3, 9))
        iy, ix = np.mgrid[0:size, 0:size] // cell
        pattern = ((iy + ix) % 2) * 2.0 - 1.0
    else:  # smooth blotches: upsampled coarse noise
        coarse = rng.normal(size=(size // 8 + 2, size // 8 + 2))
        pattern = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    return image + amplitude * pattern[..., None] * rng.uniform(0.5, 1.0, size=3)


def _contrasting_colour(rng, background_mean):
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.abs(colour - background_mean).sum() >= 120:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _shape_mask(rng, size, kind):
    radius = rng.uniform(0.12, 0.28) * size
    cy, cx = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        if kind == "rectangle":
            aspect = rng.uniform(0.6, 1.0)
            half = np.array([[1, aspect], [-1, aspect], [-1, -aspect], [1, -aspect]])
            corners = half * radius * 0.85
        else:  # triangle: equilateral, inscribed in the circle of `radius`
            angles = np.array([90, 210, 330]) * math.pi / 180
            corners = np.stack([np.cos(angles), np.sin(angles)], 1) * radius
        theta = rng.uniform(0, 2 * math.pi)
        rotation = np.array([[math.cos(theta), -math.sin(theta)],
                             [math.sin(theta), math.cos(theta)]])
        points = corners @ rotation.T + [cx, cy]
        draw.polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, dtype=bool)
