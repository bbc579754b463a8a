"""Images per second each dataset kind's input pipeline delivers, against what a
training step consumes, at the demo config (config.json: 96 x 96 shapes images,
batch 8, 64 x 64 crops, scale 0.75..1.25, flips).

    python bench/data_rate.py                    # 64 images, 40 batches per kind
    python bench/data_rate.py --images 128 --batches 80 --steps 20

The generated shapes dataset (the folder layout) is written once more in each
annotation format, the same objects as polygons: COCO JSON (one file),
labelme JSON files (images beside them) and CVAT colour masks. For each kind
the training pipeline (`datasets.train_dataset`: decoding, rasterising,
augmenting, batching) runs alone and its images/s are printed; then the
training step of the demo config is timed on the folder data, and its images/s
are the rate the pipeline has to keep up with. Every kind's pipeline runs with
tf.data's parallelism on all cores, as in training.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PALETTE = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)


def polygons_of(label, class_id):
    """Outer contours of the pixels of `class_id`, as [[x, y], ...] lists."""
    import cv2

    mask = (label == class_id).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c[:, 0, :].astype(float).tolist() for c in contours if len(c) >= 3]


def write_formats(folder, out, names):
    """The folder dataset at `folder` as coco, labelme and colour_masks under `out`."""
    from fcn_graph.data import splits
    from fcn_graph.data.image_files import read_label, write_image

    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(folder, "images")))
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in enumerate(names) if i]}
    for sub in ("coco/images", "coco/annotations", "labelme", "masks/JPEGImages",
                "masks/SegmentationClass"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    with open(os.path.join(out, "masks", "labelmap.txt"), "w") as f:
        f.writelines(f"{n}:{','.join(map(str, PALETTE[i]))}::\n" for i, n in enumerate(names))
    by_stem = splits.images_by_stem(os.path.join(folder, "images"))
    for number, stem in enumerate(stems, 1):
        image_path = by_stem[stem]
        label = read_label(os.path.join(folder, "labels", f"{stem}.png"))
        h, w = label.shape
        name = os.path.basename(image_path)
        data = open(image_path, "rb").read()
        for target in ("coco/images", "labelme", "masks/JPEGImages"):
            with open(os.path.join(out, target, name), "wb") as f:
                f.write(data)
        write_image(os.path.join(out, "masks", "SegmentationClass", f"{stem}.png"),
                    PALETTE[label])
        coco["images"].append({"id": number, "file_name": name, "height": h, "width": w})
        shapes = []
        for class_id in range(1, len(names)):
            for polygon in polygons_of(label, class_id):
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": number,
                    "category_id": class_id, "iscrowd": 0,
                    "segmentation": [[v for point in polygon for v in point]]})
                shapes.append({"label": names[class_id], "points": polygon,
                               "shape_type": "polygon"})
        with open(os.path.join(out, "labelme", f"{stem}.json"), "w") as f:
            json.dump({"shapes": shapes, "imagePath": name, "imageData": None,
                       "imageHeight": h, "imageWidth": w}, f)
    with open(os.path.join(out, "coco", "annotations", "instances_default.json"), "w") as f:
        json.dump(coco, f)
    with open(os.path.join(out, "labelme", "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


def pipeline_rate(files, num_classes, t, batches, warmup=3):
    """Images/s of the training pipeline alone over `batches` batches."""
    import tensorflow as tf

    from fcn_graph.data import datasets

    graph = tf.Graph()
    with graph.as_default():
        data = datasets.train_dataset(files, num_classes=num_classes, batch_size=t.batch_size,
                                      image_size=t.image_size,
                                      scale_range=tuple(t.scale_range), flip=t.flip)
        batch = tf.compat.v1.data.make_one_shot_iterator(data).get_next()
        with tf.compat.v1.Session(graph=graph) as sess:
            for _ in range(warmup):
                sess.run(batch)
            start = time.perf_counter()
            for _ in range(batches):
                sess.run(batch)
            return batches * t.batch_size / (time.perf_counter() - start)


def step_rate(config, files, val, num_classes, steps, warmup=3):
    """Images/s a training step of `config` consumes (median of `steps` steps)."""
    import tensorflow as tf

    from fcn_graph.training import loop

    spec, _ = loop._model_spec(config, num_classes)
    graph = loop.build_training_graph(config, spec, files, val)
    times = []
    with tf.compat.v1.Session(graph=graph.graph) as sess:
        sess.run(graph.init)
        for index in range(warmup + steps):
            start = time.perf_counter()
            sess.run(graph.train_op)
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return config.train.batch_size / float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python bench/data_rate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="training images (default 64)")
    parser.add_argument("--batches", type=int, default=40,
                        help="batches timed per pipeline (default 40)")
    parser.add_argument("--steps", type=int, default=10,
                        help="training steps timed (default 10)")
    args = parser.parse_args(argv)
    for flag in ("images", "batches", "steps"):
        if getattr(args, flag) < 2:
            parser.error(f"--{flag}: expected an integer >= 2, found {getattr(args, flag)}")
    from fcn_graph.host import tflog

    tflog.load_tensorflow()
    from fcn_graph.data import datasets
    from fcn_graph.data import shapes as shapes_dataset
    from fcn_graph.training.config import load_config

    config = load_config(os.path.join(ROOT, "config.json"), ["train.eval_every=0"])
    t = config.train
    with tempfile.TemporaryDirectory(prefix="fcn_data_rate_") as tmp:
        folder = os.path.join(tmp, "shapes")
        shapes_dataset.ensure_shapes(folder, num_train=args.images, num_val=2,
                                     image_size=config.data.shapes_image_size, seed=0)
        train = datasets.open_split("folder", folder, "train")
        val = datasets.open_split("folder", folder, "val")
        names = list(train.class_names)
        write_formats(folder, tmp, names)
        roots = {"folder": folder, "coco": os.path.join(tmp, "coco"),
                 "labelme": os.path.join(tmp, "labelme"),
                 "colour_masks": os.path.join(tmp, "masks")}
        print(f"{args.images + 2} images of {config.data.shapes_image_size}x"
              f"{config.data.shapes_image_size}, batch {t.batch_size}, crops {t.image_size}, "
              f"{os.cpu_count()} CPUs")
        for kind, root in roots.items():
            kind_config = load_config(None, [f"data.kind={kind}", f"data.root={root}",
                                             "data.val_fraction=0.1"])
            files = datasets.open_config_split(kind_config, "train")
            rate = pipeline_rate(files, len(names), t, args.batches)
            print(f"pipeline {kind:<13} {rate:8.1f} images/s")
        consumed = step_rate(config, train, val, len(names), args.steps)
        print(f"training step (demo config) consumes {consumed:8.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
