import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from datafixtures import H, W, block_label, random_image, write_gray, write_list, write_rgb
from PIL import Image

from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.data import datasets, shapes
from fcn_graph.data.datasets import (
    augment,
    data_error_message,
    eval_dataset,
    open_split,
    read_label,
    train_dataset,
)
from fcn_graph.data.splits import LabelFileError
from fcn_graph.training.config import load_config


def take(dataset, count):
    """The first `count` elements of a dataset, evaluated in a fresh graph session."""
    graph = tf.Graph()
    with graph.as_default():
        element = tf.compat.v1.data.make_one_shot_iterator(dataset()).get_next()
        with tf.compat.v1.Session(graph=graph) as sess:
            return [sess.run(element) for _ in range(count)]


def eval_labels(files, num_classes):
    items = take(lambda: eval_dataset(files, num_classes=num_classes), len(files))
    return [item["label"][0] for item in items]


def test_the_eval_dataset_runs_without_an_autotuning_thread(voc_root):
    """Each validation re-initialises the evaluation iterator; with tf.data's
    autotuning on, that waits for the old iterator's autotuning thread, which
    sleeps up to a minute between its rounds. The pipeline still yields every
    image, in order, after each re-initialisation."""
    val = open_split("voc", voc_root, "val")
    dataset = eval_dataset(val, num_classes=21)
    assert dataset.options().autotune.enabled is False
    graph = tf.Graph()
    with graph.as_default():
        iterator = tf.compat.v1.data.make_initializable_iterator(
            eval_dataset(val, num_classes=21))
        element = iterator.get_next()
        with tf.compat.v1.Session(graph=graph) as sess:
            for _ in range(3):
                sess.run(iterator.initializer)
                names = [sess.run(element)["name"][0] for _ in range(len(val))]
                assert [os.fsdecode(n) for n in names] == list(val.names)


# --------------------------------------------------------------------------- layouts


def test_voc_reads_palette_indices_not_colours(voc_root):
    train = open_split("voc", voc_root, "train")
    val = open_split("voc", voc_root, "val")
    assert (len(train), len(val)) == (3, 2)
    assert train.class_names[15] == "person" and len(train.class_names) == 21
    for path, label in zip(train.label_paths, eval_labels(train, 21)):
        expected = np.array(Image.open(path))  # Pillow gives the palette indices
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= {0, 1, 15, 20, IGNORE_LABEL}
        assert (label[0] == IGNORE_LABEL).all()


def test_voc_also_found_under_vocdevkit(voc_root, tmp_path):
    devkit = tmp_path / "VOCdevkit"
    devkit.mkdir()
    os.rename(voc_root, devkit / "VOC2012")
    assert len(open_split("voc", str(tmp_path), "val")) == 2


def test_voc_errors_name_files(voc_root):
    with pytest.raises(UserError, match=r"Segmentation/test.txt: split file not found"):
        open_split("voc", voc_root, "test")
    write_list(os.path.join(voc_root, "ImageSets", "Segmentation", "empty.txt"), [""])
    with pytest.raises(UserError, match=r"empty.txt: split file is empty"):
        open_split("voc", voc_root, "empty")
    os.remove(os.path.join(voc_root, "SegmentationClass", "2007_000004.png"))
    with pytest.raises(UserError, match=r"2007_000004.jpg: no label; expected .*2007_000004.png"):
        open_split("voc", voc_root, "val")


def test_ade20k(ade_root):
    train = open_split("ade20k", ade_root, "train")
    val = open_split("ade20k", ade_root, "validation")
    assert (len(train), len(val)) == (3, 2)
    assert len(train.class_names) == 151
    assert train.class_names[:3] == ("other", "wall", "building")
    values = set()
    for label in eval_labels(val, 151):
        values |= set(np.unique(label).tolist())
    assert values <= {0, 1, 75, 150} and 150 in values or 75 in values
    with pytest.raises(UserError, match="ade20k splits are training"):
        open_split("ade20k", ade_root, "test")


def test_pets_trimaps_become_0_1_2(pets_root):
    train = open_split("pets", pets_root, "train")
    assert len(train) == 3 and len(open_split("pets", pets_root, "val")) == 2
    for path, label in zip(train.label_paths, eval_labels(train, 3)):
        np.testing.assert_array_equal(label, np.array(Image.open(path)) - 1)


def test_pets_seeded_split_without_list_files(pets_root):
    os.remove(os.path.join(pets_root, "annotations", "trainval.txt"))
    os.remove(os.path.join(pets_root, "annotations", "test.txt"))
    train = open_split("pets", pets_root, "train", seed=3, val_fraction=0.4)
    val = open_split("pets", pets_root, "val", seed=3, val_fraction=0.4)
    assert (len(train), len(val)) == (3, 2)
    assert not set(train.image_paths) & set(val.image_paths)
    assert val.image_paths == open_split("pets", pets_root, "val", seed=3,
                                         val_fraction=0.4).image_paths


def test_folder_with_classes_and_mixed_extensions(folder_root):
    train = open_split("folder", folder_root, "train", seed=0, val_fraction=0.34)
    val = open_split("folder", folder_root, "val", seed=0, val_fraction=0.34)
    assert (len(train), len(val)) == (4, 2)
    assert train.class_names == ("sky", "road", "car")
    for path, label in zip(val.label_paths, eval_labels(val, 3)):
        np.testing.assert_array_equal(label, np.array(Image.open(path)))


def test_folder_list_files_and_errors(folder_root):
    write_list(os.path.join(folder_root, "train.txt"), ["img0", "img1"])
    assert len(open_split("folder", folder_root, "train")) == 2
    write_list(os.path.join(folder_root, "train.txt"), ["img0", "img9"])
    with pytest.raises(UserError, match=r"train.txt: lists 'img9'"):
        open_split("folder", folder_root, "train")
    with pytest.raises(UserError, match=r"test.txt not found and split 'test'"):
        open_split("folder", folder_root, "test")
    os.remove(os.path.join(folder_root, "labels", "img3.png"))
    with pytest.raises(UserError, match=r"img3.png: no label; expected .*labels/img3.png"):
        open_split("folder", folder_root, "val", val_fraction=0.99)
    with pytest.raises(UserError, match=r"nowhere: dataset directory not found"):
        open_split("folder", os.path.join(folder_root, "nowhere"), "train")


def test_num_classes_from_dataset_or_config(folder_root, tmp_path):
    base = ["data.kind=folder", f"data.root={folder_root}"]
    _, _, k = datasets.splits_from_config(load_config(None, base))
    assert k == 3
    with pytest.raises(UserError, match="model.num_classes: the folder dataset has 3 classes"):
        datasets.splits_from_config(load_config(None, base + ["model.num_classes=5"]))
    os.remove(os.path.join(folder_root, "classes.txt"))
    with pytest.raises(UserError, match="model.num_classes: required"):
        datasets.splits_from_config(load_config(None, base))
    _, _, k = datasets.splits_from_config(load_config(None, base + ["model.num_classes=4"]))
    assert k == 4


# --------------------------------------------------------------------------- label checks


def test_label_checks_inside_the_pipeline(folder_root):
    files = open_split("folder", folder_root, "val", val_fraction=0.34)
    bad = files.label_paths[0]
    write_gray(bad, np.full((H, W), 7))  # 7 >= 3 classes
    with pytest.raises(tf.errors.OpError) as info:
        eval_labels(files, 3)
    message = data_error_message(info.value)
    assert message.startswith(bad) and "values [7] outside [0, 3)" in message
    assert "\n" not in message

    write_gray(bad, np.zeros((H + 1, W)))
    with pytest.raises(tf.errors.OpError) as info:
        eval_labels(files, 3)
    message = data_error_message(info.value)
    assert message.startswith(bad) and "label is 30x21 (WxH) but its image" in message

    write_rgb(bad, np.zeros((H, W, 3)))
    with pytest.raises(LabelFileError, match="found a RGB image"):
        read_label(bad, 3)


def test_pets_trimap_zero_is_out_of_range(tmp_path):
    path = str(tmp_path / "t.png")
    write_gray(path, np.array([[1, 2, 3, 0]]))
    with pytest.raises(LabelFileError, match=r"stored values \[0\] \(minus 1\) outside \[0, 3\)"):
        read_label(path, 3, offset=1)


# --------------------------------------------------------------------------- augmentation


def run_augment(image, label, seed, **kwargs):
    graph = tf.Graph()
    with graph.as_default():
        out = augment(tf.constant(image, tf.float32), tf.constant(label, tf.uint8),
                      tf.constant(seed, tf.int64), **kwargs)
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(out)


@pytest.mark.parametrize("scale", [0.37, 0.61, 1.3, 1.77, 2.9])
def test_label_resizing_never_invents_classes(scale):
    label = block_label(np.random.default_rng(0), [0, 3, 7], h=23, w=31)
    image = np.zeros((23, 31, 3))
    for seed in range(3):
        _, out = run_augment(image, label, [seed, 1], image_size=17, scale_range=(scale, scale))
        assert set(np.unique(out)) <= {0, 3, 7, IGNORE_LABEL}
        assert set(np.unique(out)) - {IGNORE_LABEL}


def encode(label):
    """An image whose pixels spell out the label: value 20 * label in every channel."""
    return np.repeat(label[..., None].astype(np.float32) * 20, 3, axis=2)


def test_augmentation_keeps_image_and_label_aligned_exactly_at_scale_1():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 10, size=(21, 27)).astype(np.uint8)  # every pixel differs
    mean = (7.0, 7.0, 7.0)
    flips = set()
    for seed in range(8):
        image, out = run_augment(encode(label), label, [seed, 0], image_size=25,
                                 scale_range=(1.0, 1.0), mean_pixel=mean)
        padded = out == IGNORE_LABEL
        assert padded.any() and (image[padded] == 7.0).all()  # height 21 < 25: padded
        np.testing.assert_array_equal(image[~padded][:, 0], out[~padded] * 20.0)
        window = out[~padded.all(1)]  # the 21 real rows, 25 of the 27 columns
        assert window.shape == (21, 25)
        crops = [label[:, o:o + 25] for o in range(3)]
        plain = any((window == c).all() for c in crops)
        mirrored = any((window == c[:, ::-1]).all() for c in crops)
        assert plain != mirrored
        flips.add(mirrored)
    assert flips == {True, False}  # both flipped and unflipped crops occurred


def test_augmentation_keeps_alignment_when_scaling():
    from scipy import ndimage

    blocks = np.random.default_rng(2).integers(0, 5, size=(4, 5))
    label = np.kron(blocks, np.ones((10, 10))).astype(np.uint8)  # 40 x 50, 10 px blocks
    for seed in range(6):
        image, out = run_augment(encode(label), label, [seed, 5], image_size=32,
                                 scale_range=(0.7, 2.0))
        # Where the image is flat over a 3x3 window no blending happened: it must
        # spell out exactly the label of the centre pixel.
        channel = image[..., 0]
        flat = ndimage.maximum_filter(channel, 3) - ndimage.minimum_filter(channel, 3) < 1e-3
        flat &= out != IGNORE_LABEL
        assert flat.mean() > 0.25
        np.testing.assert_allclose(channel[flat] / 20.0, out[flat], atol=1e-3)


def test_train_dataset_batches(folder_root):
    files = open_split("folder", folder_root, "train", val_fraction=0.34)
    batches = take(lambda: train_dataset(files, num_classes=3, batch_size=3, image_size=16,
                                         scale_range=(0.5, 1.5), seed=4), 3)
    for images, labels in batches:
        assert images.shape == (3, 16, 16, 3) and images.dtype == np.float32
        assert labels.shape == (3, 16, 16) and labels.dtype == np.int32
        assert set(np.unique(labels)) <= {0, 1, 2, IGNORE_LABEL}
    again = take(lambda: train_dataset(files, num_classes=3, batch_size=3, image_size=16,
                                       scale_range=(0.5, 1.5), seed=4), 3)
    for (a, b), (c, d) in zip(batches, again):  # the seed fixes order and augmentation
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


# --------------------------------------------------------------------------- shapes


def generate(root, seed=0, **kwargs):
    settings = dict(num_train=4, num_val=2, image_size=24, seed=seed)
    settings.update(kwargs)
    return shapes.ensure_shapes(str(root), **settings)


def test_shapes_generation_is_deterministic(tmp_path):
    generate(tmp_path / "a")
    generate(tmp_path / "b")
    generate(tmp_path / "c", seed=1)
    names = sorted(os.listdir(tmp_path / "a" / "images"))
    assert len(names) == 6
    for name in names:
        a = (tmp_path / "a" / "labels" / name).read_bytes()
        assert a == (tmp_path / "b" / "labels" / name).read_bytes()
        assert (tmp_path / "a" / "images" / name).read_bytes() == \
            (tmp_path / "b" / "images" / name).read_bytes()
    assert any((tmp_path / "a" / "images" / n).read_bytes() !=
               (tmp_path / "c" / "images" / n).read_bytes() for n in names)
    files = open_split("shapes", str(tmp_path / "a"), "train")
    assert len(files) == 4 and files.class_names == shapes.CLASS_NAMES
    labels = np.stack(eval_labels(files, len(shapes.CLASS_NAMES)))
    assert labels.max() < len(shapes.CLASS_NAMES) and len(np.unique(labels)) > 1


def test_shapes_interrupted_generation_is_redone(tmp_path, monkeypatch):
    calls = []

    def interrupted(out, settings):
        calls.append(out)
        os.makedirs(os.path.join(out, "images"))
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "_generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "s")
    assert not (tmp_path / "s").exists() and not os.path.exists(calls[0])
    monkeypatch.undo()
    os.makedirs(tmp_path / ".s.tmp-stale")  # as if the process had been killed
    generate(tmp_path / "s")
    assert sorted(os.listdir(tmp_path)) == [".s.lock", "s"]  # the stale folder is gone
    assert len(open_split("shapes", str(tmp_path / "s"), "val")) == 2


def test_shapes_generated_once_when_several_processes_start_together(tmp_path, monkeypatch):
    generating = shapes._generate
    calls = []

    def slow(out, settings):
        calls.append(out)
        time.sleep(0.3)  # the other callers arrive while this one generates
        generating(out, settings)

    monkeypatch.setattr(shapes, "_generate", slow)
    errors = []

    def start():
        try:
            generate(tmp_path / "s")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(calls) == 1
    assert len(open_split("shapes", str(tmp_path / "s"), "train")) == 4
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_shapes_settings_mismatch_and_foreign_directory(tmp_path):
    generate(tmp_path / "s")
    generate(tmp_path / "s")  # same settings: reused
    with pytest.raises(UserError, match=r"generated with other settings \(num_train: 4"):
        generate(tmp_path / "s", num_train=5)
    (tmp_path / "other").mkdir()
    write_rgb(str(tmp_path / "other" / "x.png"), random_image(np.random.default_rng(0)))
    with pytest.raises(UserError, match="not a generated shapes dataset"):
        generate(tmp_path / "other")
