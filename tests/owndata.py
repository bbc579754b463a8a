"""Tiny annotation-tool exports (COCO, labelme, colour masks) with their expected
label images, drawn by hand."""

import base64
import json
import os

import cv2
import numpy as np
import pycocotools.mask as coco_mask
from datafixtures import write_rgb

# COCO: three images. Categories in file order: car (id 7) = class 1, person (id 3) = 2.
COCO_CATEGORIES = [{"id": 7, "name": "car", "supercategory": "thing"},
                   {"id": 3, "name": "person", "supercategory": "thing"}]
COCO_SIZES = {1: (6, 8), 2: (4, 5), 3: (5, 7)}  # image id: (height, width)

# Image 1: a small person (uncompressed RLE, first in the file) on a large car
# (polygon), and a crowd region (compressed RLE) partly under the car.
PERSON_MASK = np.zeros((6, 8), np.uint8)
PERSON_MASK[2:4, 2:4] = 1
CROWD_MASK = np.zeros((6, 8), np.uint8)
CROWD_MASK[3:6, 5:8] = 1
EXPECTED_1_IGNORE = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0],
    [0, 1, 2, 2, 1, 1, 1, 0],
    [0, 1, 2, 2, 1, 1, 1, 255],
    [0, 1, 1, 1, 1, 1, 1, 255],
    [0, 0, 0, 0, 0, 255, 255, 255],
], np.uint8)
EXPECTED_1_CLASS = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 1, 0],
    [0, 1, 2, 2, 1, 1, 1, 0],
    [0, 1, 2, 2, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 1, 1, 1],
], np.uint8)
# Image 2: two 3x3 squares of the same area; the later (person) wins the overlap.
EXPECTED_2 = np.array([
    [1, 1, 1, 0, 0],
    [1, 1, 2, 2, 2],
    [1, 1, 2, 2, 2],
    [0, 0, 2, 2, 2],
], np.uint8)
# Image 3: no annotations.
EXPECTED_3 = np.zeros((5, 7), np.uint8)


def uncompressed_rle(mask):
    """COCO's uncompressed RLE of a mask: run lengths in column-major order,
    starting with a run of zeros (computed here with NumPy, independently of
    pycocotools)."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def compressed_rle(mask):
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def coco_images(ids, rng):
    return {i: rng.integers(0, 256, size=(*COCO_SIZES[i], 3), dtype=np.uint8) for i in ids}


def coco_document(ids, file_names=None, categories=COCO_CATEGORIES):
    images = [{"id": i, "file_name": (file_names or {}).get(i, f"img{i}.png"),
               "height": COCO_SIZES[i][0], "width": COCO_SIZES[i][1]} for i in ids]
    anns = []
    if 1 in ids:
        anns += [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0,
             "segmentation": uncompressed_rle(PERSON_MASK)},
            {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": [[1, 1, 7, 1, 7, 5, 1, 5]]},
            {"id": 12, "image_id": 1, "category_id": 7, "iscrowd": 1,
             "segmentation": compressed_rle(CROWD_MASK)},
        ]
    if 2 in ids:
        anns += [
            {"id": 20, "image_id": 2, "category_id": 7, "iscrowd": 0,
             "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]},
            {"id": 21, "image_id": 2, "category_id": 3, "iscrowd": 0,
             "segmentation": [[2, 1, 5, 1, 5, 4, 2, 4]]},
        ]
    return {"images": images, "annotations": anns, "categories": [dict(c) for c in categories]}


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def write_coco_single(root, rng, ids=(1, 2, 3)):
    """CVAT's COCO export: annotations/instances_default.json and images/."""
    pixels = coco_images(ids, rng)
    for i, image in pixels.items():
        write_rgb(os.path.join(root, "images", f"img{i}.png"), image)
    write_json(os.path.join(root, "annotations", "instances_default.json"), coco_document(ids))
    return pixels


def write_coco_splits(root, rng):
    """COCO's own layout: annotations/instances_{train,val}.json, images in <split>2017/."""
    pixels = coco_images((1, 2, 3), rng)
    for split, ids in (("train", (1, 3)), ("val", (2,))):
        for i in ids:
            write_rgb(os.path.join(root, f"{split}2017", f"img{i}.png"), pixels[i])
        write_json(os.path.join(root, "annotations", f"instances_{split}.json"),
                   coco_document(ids))
    return pixels


def write_roboflow(root, rng):
    """Roboflow: <split>/_annotations.coco.json beside the images; val is valid/."""
    pixels = coco_images((1, 2, 3), rng)
    for split, ids in (("train", (1, 3)), ("valid", (2,))):
        for i in ids:
            write_rgb(os.path.join(root, split, f"img{i}.png"), pixels[i])
        write_json(os.path.join(root, split, "_annotations.coco.json"), coco_document(ids))
    return pixels


# labelme: classes cat (1) and dog (2) without classes.txt (sorted names).
LABELME_H, LABELME_W = 7, 9
# a.json (external image): a rectangle of dog, a polygon of cat over it, a line.
LABELME_A = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 2, 2, 2, 2, 0, 0, 0, 0],
    [0, 2, 1, 1, 1, 1, 0, 0, 0],
    [0, 2, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)
# b.json (embedded image): a circle of cat (centre (5, 3), radius 2) and an ignored region.
LABELME_B = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0, 0],
    [255, 255, 0, 1, 1, 1, 1, 1, 0],
    [255, 255, 0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)


def labelme_file(shapes, image_path=None, image_data=None, h=LABELME_H, w=LABELME_W):
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": image_data, "imageHeight": h, "imageWidth": w}


def shape(label, kind, points):
    return {"label": label, "points": points, "group_id": None, "shape_type": kind,
            "flags": {}}


def write_labelme(root, rng):
    """a.json with a.png beside it, b.json with its image embedded, c.json with no
    shapes (external c.jpg is not used: c embeds a PNG too)."""
    pixels = {n: rng.integers(0, 256, size=(LABELME_H, LABELME_W, 3), dtype=np.uint8)
              for n in "abc"}
    write_rgb(os.path.join(root, "a.png"), pixels["a"])
    write_json(os.path.join(root, "a.json"), labelme_file([
        shape("dog", "rectangle", [[4.4, 3.2], [1, 1]]),
        shape("cat ", "polygon", [[2, 2], [5, 2], [5, 4], [2, 4]]),
        shape("dog", "line", [[0, 6], [8, 6]]),
    ], image_path="a.png"))
    write_json(os.path.join(root, "b.json"), labelme_file([
        shape("cat", "circle", [[5, 3], [5, 5.2]]),
        shape("__ignore__", "rectangle", [[0, 3], [1, 4]]),
    ], image_data=embedded_png(pixels["b"])))
    write_json(os.path.join(root, "c.json"), labelme_file(
        [], image_data=embedded_png(pixels["c"])))
    return pixels


def embedded_png(rgb):
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return base64.b64encode(encoded.tobytes()).decode("ascii")


# Colour masks, CVAT's "Segmentation mask" export.
CVAT_LABELMAP = ("# label:color_rgb:parts:actions\n"
                 "background:0,0,0::\n"
                 "road:128,64,128::\n"
                 "tree:0,128,0::\n")
MASK_COLOURS = np.array([[0, 0, 0], [128, 64, 128], [0, 128, 0]], np.uint8)


def write_cvat_masks(root, rng, count=3, h=6, w=7):
    """labelmap.txt, JPEGImages/*.png, SegmentationClass/*.png (RGB) and
    ImageSets/Segmentation/{train,val}.txt; returns {stem: (image, ids)}."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "labelmap.txt"), "w") as f:
        f.write(CVAT_LABELMAP)
    items = {}
    for n in range(count):
        stem = f"frame_{n:03d}"
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ids = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        write_rgb(os.path.join(root, "JPEGImages", f"{stem}.png"), image)
        write_rgb(os.path.join(root, "SegmentationClass", f"{stem}.png"), MASK_COLOURS[ids])
        items[stem] = (image, ids)
    stems = sorted(items)
    lists = os.path.join(root, "ImageSets", "Segmentation")
    os.makedirs(lists, exist_ok=True)
    for split, chosen in (("train", stems[:-1]), ("val", stems[-1:])):
        with open(os.path.join(lists, f"{split}.txt"), "w") as f:
            f.write("\n".join(chosen) + "\n")
    return items
