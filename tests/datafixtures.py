"""Tiny datasets in every supported layout, written by fixtures (used via conftest)."""

import os

import numpy as np
import pytest
from PIL import Image

from fcn_graph.core.constants import voc_palette

H, W = 20, 30


def write_rgb(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="RGB").save(path, format=fmt)


def write_gray(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)


def write_palette(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    image.save(path)


def random_image(rng, h=H, w=W):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def block_label(rng, values, h=H, w=W, border=False):
    """A label of 5x5 blocks drawn from `values`, optionally with a 255 frame."""
    blocks = rng.choice(values, size=(-(-h // 5), -(-w // 5)))
    label = np.kron(blocks, np.ones((5, 5), dtype=np.int64))[:h, :w]
    if border:
        label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = 255
    return label.astype(np.uint8)


def write_list(path, stems):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(stems) + "\n")


@pytest.fixture
def voc_root(tmp_path):
    """VOC2012 layout: JPEG images, palette PNG labels with 255 borders, two splits."""
    rng = np.random.default_rng(0)
    root = tmp_path / "VOC2012"
    stems = [f"2007_{i:06d}" for i in range(5)]
    for stem in stems:
        write_rgb(str(root / "JPEGImages" / f"{stem}.jpg"), random_image(rng))
        write_palette(str(root / "SegmentationClass" / f"{stem}.png"),
                      block_label(rng, [0, 1, 15, 20], border=True))
    write_list(str(root / "ImageSets" / "Segmentation" / "train.txt"), stems[:3])
    write_list(str(root / "ImageSets" / "Segmentation" / "val.txt"), stems[3:])
    return str(root)


@pytest.fixture
def ade_root(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "ADEChallengeData2016"
    for split, count in (("training", 3), ("validation", 2)):
        for i in range(count):
            stem = f"ADE_{split[:5]}_{i:08d}"
            write_rgb(str(root / "images" / split / f"{stem}.jpg"), random_image(rng))
            write_gray(str(root / "annotations" / split / f"{stem}.png"),
                       block_label(rng, [0, 1, 75, 150]))
    with open(root / "objectInfo150.txt", "w") as f:
        f.write("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n2\t0.1\t1\t1\tbuilding, edifice\n")
    return str(root)


@pytest.fixture
def pets_root(tmp_path):
    """Oxford-IIIT Pet layout: trimaps with 1 pet, 2 background, 3 border."""
    rng = np.random.default_rng(2)
    root = tmp_path / "pets"
    stems = [f"Abyssinian_{i}" for i in range(1, 6)]
    for stem in stems:
        write_rgb(str(root / "images" / f"{stem}.jpg"), random_image(rng))
        write_gray(str(root / "annotations" / "trimaps" / f"{stem}.png"),
                   block_label(rng, [1, 2, 3]))
    with open(root / "annotations" / "trainval.txt", "w") as f:
        f.write("".join(f"{s} 1 1 1\n" for s in stems[:3]))
    with open(root / "annotations" / "test.txt", "w") as f:
        f.write("".join(f"{s} 1 1 1\n" for s in stems[3:]))
    return str(root)


@pytest.fixture
def folder_root(tmp_path):
    """folder layout with PNG and JPEG images, gray labels and classes.txt, no lists."""
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    for i in range(6):
        ext = ".png" if i % 2 else ".jpg"
        write_rgb(str(root / "images" / f"img{i}{ext}"), random_image(rng))
        write_gray(str(root / "labels" / f"img{i}.png"), block_label(rng, [0, 1, 2, 255]))
    write_list(str(root / "classes.txt"), ["sky", "road", "car"])
    return str(root)
