"""The evaluator's batches: images of one size run together, capped in count
and pixels, with the same metrics as one image at a time."""

import numpy as np
import pytest
import tensorflow as tf
from datafixtures import write_gray, write_rgb
from tfutil import write_random_checkpoint
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph.core.errors import UserError
from fcn_graph.data.splits import SplitFiles
from fcn_graph.network.spec import ModelSpec
from fcn_graph.training import evaluator as evaluator_module
from fcn_graph.training.evaluator import BranchSegmenter, Evaluator
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1


class FakeSession:
    """Hands out batch-1 items of the given (height, width) sizes, then the
    end of the dataset, as a session running an Evaluator's iterator does."""

    def __init__(self, sizes, error_at=None):
        self.items = [{"image": np.zeros((1, h, w, 3), np.float32), "index": i}
                      for i, (h, w) in enumerate(sizes)]
        self.error_at = error_at
        self.initialised = 0

    def run(self, fetch, feed_dict=None):
        if fetch == "initializer":
            self.initialised += 1
            return None
        if self.error_at is not None and not self.items[self.error_at:]:
            raise tf.errors.InvalidArgumentError(None, None, "Invalid PNG data")
        if not self.items:
            raise tf.errors.OutOfRangeError(None, None, "end of sequence")
        return self.items.pop(0)


def _groups(sizes, monkeypatch, *, images, pixels, batched=True):
    monkeypatch.setattr(evaluator_module, "EVAL_BATCH_IMAGES", images)
    monkeypatch.setattr(evaluator_module, "EVAL_BATCH_PIXELS", pixels)
    fake = object.__new__(Evaluator)
    fake.iterator = type("Iterator", (), {"initializer": "initializer"})()
    fake.next_item = "next"
    sess = FakeSession(sizes)
    groups = [[item["index"] for item in group]
              for group in fake._groups(sess, batched=batched)]
    assert sess.initialised == 1
    return groups


def test_groups_split_at_a_new_size_and_at_the_count_cap(monkeypatch):
    sizes = [(5, 7)] * 4 + [(9, 4)] + [(5, 7)] * 2 + [(7, 5)]
    assert _groups(sizes, monkeypatch, images=3, pixels=10 ** 6) == [
        [0, 1, 2], [3], [4], [5, 6], [7]]


def test_groups_split_at_the_pixel_cap(monkeypatch):
    sizes = [(5, 7)] * 5
    assert _groups(sizes, monkeypatch, images=8, pixels=2 * 35) == [[0, 1], [2, 3], [4]]
    # an image larger than the cap on its own still runs, alone
    assert _groups([(9, 9)] * 2, monkeypatch, images=8, pixels=10) == [[0], [1]]


def test_groups_are_single_items_for_another_engine(monkeypatch):
    assert _groups([(5, 7)] * 3, monkeypatch, images=8, pixels=10 ** 6,
                   batched=False) == [[0], [1], [2]]


def test_no_items_no_groups(monkeypatch):
    assert _groups([], monkeypatch, images=8, pixels=10 ** 6) == []


def test_a_data_error_is_one_line(monkeypatch):
    fake = object.__new__(Evaluator)
    fake.iterator = type("Iterator", (), {"initializer": "initializer"})()
    fake.next_item = "next"
    with pytest.raises(UserError) as err:
        list(fake._groups(FakeSession([(5, 7)] * 2, error_at=2), batched=True))
    assert "\n" not in str(err.value)


@pytest.fixture
def mixed_sizes(tmp_path):
    """A split of odd-sized images, sizes mixed: (split files, checkpoint prefix)."""
    rng = np.random.default_rng(5)
    sizes = [(37, 29)] * 5 + [(23, 41)] + [(37, 29)] * 3 + [(19, 19)] * 2
    images, labels = [], []
    for i, (h, w) in enumerate(sizes):
        images.append(str(tmp_path / f"img{i}.png"))
        labels.append(str(tmp_path / f"lab{i}.png"))
        write_rgb(images[-1], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_gray(labels[-1], rng.choice([0, 1, 2, 255], (h, w)).astype(np.uint8))
    files = SplitFiles(kind="folder", split="val", image_paths=tuple(images),
                       label_paths=tuple(labels), class_names=())
    spec = ModelSpec(num_classes=3, vgg_widths=tuple(TINY_WIDTHS.values()), fc_width=6,
                     mean_pixel=TINY_MEAN)
    return files, spec, write_random_checkpoint(str(tmp_path / "ck" / "m"), spec)


def test_batched_metrics_equal_one_image_at_a_time(mixed_sizes, monkeypatch):
    """The graph's batches give the confusion matrix and the per-image labels
    of the same branch run one image at a time."""
    monkeypatch.setattr(evaluator_module, "EVAL_BATCH_IMAGES", 4)
    files, spec, prefix = mixed_sizes
    graph = tf.Graph()
    with graph.as_default():
        evaluator = Evaluator(files, spec, num_classes=spec.num_classes)
        saver = checkpoint.model_saver(evaluator_module.tf_layers.model_variables(graph))
    runs = []
    original_run = tf1.Session.run

    def counting_run(sess, fetches, feed_dict=None, **kwargs):
        if feed_dict and evaluator.images in feed_dict:
            runs.append(feed_dict[evaluator.images].shape[0])
        return original_run(sess, fetches, feed_dict, **kwargs)

    seen = {"batched": [], "single": []}
    with tf1.Session(graph=graph) as sess:
        saver.restore(sess, prefix)
        monkeypatch.setattr(tf1.Session, "run", counting_run)
        batched, count = evaluator.run(
            sess, on_image=lambda n, i, label, p: seen["batched"].append((n, p.copy())))
        branch = BranchSegmenter(sess, evaluator)
        single, _ = evaluator.run(
            sess, predict=lambda image: branch.run(image)[0],
            on_image=lambda n, i, label, p: seen["single"].append((n, p.copy())))
    assert count == len(files) == 11
    assert runs[:5] == [4, 1, 1, 3, 2] and set(runs[5:]) == {1}
    np.testing.assert_array_equal(batched["confusion"], single["confusion"])
    assert batched["confusion"].sum() > 0
    assert [name for name, _ in seen["batched"]] == list(files.names)
    for (_, want), (_, got) in zip(seen["single"], seen["batched"]):
        np.testing.assert_array_equal(got, want)
