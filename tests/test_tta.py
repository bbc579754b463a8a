"""Test-time augmentation (`fcn_graph.engines.tta`): the bilinear resize against a
NumPy one, the --tta parser, and `TtaSegmenter` against a NumPy composition
of the network's own scores, for both engines, tiled and whole, in batches."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tfutil import write_random_checkpoint
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import evaluate, infer
from fcn_graph.core.errors import UserError
from fcn_graph.data.image_files import read_label
from fcn_graph.engines import tiling
from fcn_graph.engines.segmenter import make_segmenter
from fcn_graph.engines.tta import (
    MAX_SCALE,
    MIN_SCALE,
    Tta,
    TtaSegmenter,
    parse_tta,
    resize_bilinear,
    resize_images,
    scaled_size,
)
from fcn_graph.network.spec import ModelSpec

tf1 = tf.compat.v1

TINY_SPEC = ModelSpec(num_classes=5, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                                mean_pixel=TINY_MEAN)
# A field far below the network's: tiles of 32 pixels on small images. The
# tiled scores then differ from the whole image's, which does not matter
# here: the reference is composed from the same tiled segmenter's scores.
SMALL_FIELD = tiling.ReceptiveField(-4, 4, 8)
FLIP_SCALES = Tta(True, (0.75, 1.0, 1.25))


def numpy_resize(array, height, width):
    """[N, h, w, C] -> [N, height, width, C] in float64 by the half-pixel rule:
    output x reads the input at (x + 0.5) * in / out - 0.5, clamped to
    [0, in - 1], blending its two neighbours."""
    def axis(out, size):
        x = np.clip((np.arange(out) + 0.5) * (size / out) - 0.5, 0, size - 1)
        low = np.floor(x).astype(int)
        return low, np.minimum(low + 1, size - 1), x - low

    array = np.asarray(array, dtype=np.float64)
    y0, y1, ty = axis(height, array.shape[1])
    x0, x1, tx = axis(width, array.shape[2])
    rows = array[:, y0] * (1 - ty)[None, :, None, None] + array[:, y1] * ty[None, :, None, None]
    return rows[:, :, x0] * (1 - tx)[None, None, :, None] + rows[:, :, x1] * tx[None, None, :, None]


def numpy_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory):
    """A tiny legacy checkpoint with random non-zero weights everywhere."""
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny") / "tiny"), TINY_SPEC)


@pytest.fixture(scope="module")
def segmenters(tiny_prefix):
    """engine -> a segmenter of the tiny checkpoint, made on first use."""
    made = {}

    def get(engine):
        if engine not in made:
            if engine == "onnxruntime":
                pytest.importorskip("onnxruntime")
                pytest.importorskip("onnx")
            made[engine] = make_segmenter(tiny_prefix, engine=engine)
        return made[engine]

    yield get
    for segmenter in made.values():
        segmenter.close()


def _images(n, height, width, seed=0):
    """Smooth random images (blurred noise), so that the labels form regions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
        out.append(np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 4 - 384, 0, 255))
    return np.stack(out).astype(np.uint8)


# ---------------------------------------------------------------- the numerics

@pytest.mark.parametrize("size,out,channels", [
    ((37, 45), (46, 56), 5), ((37, 45), (28, 34), 5), ((10, 10), (5, 5), 3),
    ((5, 7), (20, 3), 1), ((1, 1), (3, 3), 2), ((46, 56), (37, 45), 151),
    ((37, 45), (37, 45), 300)])
def test_resize_bilinear_matches_numpy(size, out, channels):
    """OpenCV's INTER_LINEAR is the half-pixel rule, also for more channels
    than cv2.resize takes at once and for one channel."""
    rng = np.random.default_rng(1)
    array = rng.uniform(0, 1, (2, *size, channels)).astype(np.float32)
    got = resize_bilinear(array, *out)
    assert got.shape == (2, *out, channels) and got.dtype == np.float32
    # OpenCV computes the source coordinates and weights in float32
    np.testing.assert_allclose(got, numpy_resize(array, *out), atol=1e-5)


def test_resize_bilinear_is_not_align_corners():
    """The half-pixel rule, not align-corners: upsampling [0, 1] to 4 pixels
    gives 0, 0.25, 0.75, 1 (align-corners would give 0, 1/3, 2/3, 1)."""
    got = resize_bilinear(np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1), 1, 4)
    np.testing.assert_allclose(got.ravel(), [0, 0.25, 0.75, 1], atol=1e-6)


def test_resize_images_rounds_the_float_resize():
    batch = _images(2, 37, 45, seed=2)
    got = resize_images(batch, 28, 56)
    want = np.clip(np.rint(numpy_resize(batch, 28, 56)), 0, 255)
    assert got.dtype == np.uint8 and got.shape == (2, 28, 56, 3)
    # float32 against float64: a value at exactly .5 may round either way
    assert np.abs(got.astype(np.int64) - want).max() <= 1
    assert (got == want).mean() > 0.999


def test_scaled_size_rounds_half_up_and_keeps_a_pixel():
    assert scaled_size(37, 45, 0.75) == (28, 34)      # 27.75, 33.75
    assert scaled_size(37, 45, 1.25) == (46, 56)      # 46.25, 56.25
    assert scaled_size(2, 6, 0.25) == (1, 2)          # 0.5 -> 1, 1.5 -> 2
    assert scaled_size(1, 1, 0.25) == (1, 1)


# ---------------------------------------------------------------- the flag

@pytest.mark.parametrize("text,want", [
    ("flip", Tta(True, (1.0,))),
    ("scales=0.75,1,1.25", Tta(False, (0.75, 1.0, 1.25))),
    ("flip,scales=0.75,1,1.25", Tta(True, (0.75, 1.0, 1.25))),
    (" scales = 0.5, 2 ,flip", Tta(True, (0.5, 2.0))),
    ("FLIP", Tta(True, (1.0,))),
    (f"scales={MIN_SCALE},{MAX_SCALE}", Tta(False, (MIN_SCALE, MAX_SCALE))),
    ("off", None),
])
def test_tta_values(text, want):
    assert parse_tta(text) == want


def test_variants_and_text():
    assert FLIP_SCALES.variants == [(0.75, False), (0.75, True), (1.0, False), (1.0, True),
                                    (1.25, False), (1.25, True)]
    assert FLIP_SCALES.text == "flip,scales=0.75,1,1.25"
    assert parse_tta(FLIP_SCALES.text) == FLIP_SCALES
    assert Tta(False, (1.0,)).variants == [(1.0, False)]


@pytest.mark.parametrize("text,message", [
    ("", "expected flip, scales=S1,S2,... or both (or off), found an empty value"),
    ("mirror", "unknown variant 'mirror' in 'mirror'; expected flip and/or scales=S1,S2,..."),
    ("flip,vflip", "unknown variant 'vflip'"),
    ("scales=", "expected a scale after scales= or a comma, found nothing"),
    ("scales=1,,2", "expected a scale after scales= or a comma, found nothing"),
    ("scales=-1", "expected scales from 0.25 to 4 (a scaled image's memory grows with the "
                  "scale squared), found -1"),
    ("scales=0", "found 0"),
    ("scales=0.1", "found 0.1"),
    ("scales=nan", "found nan"),
    ("scales=inf", "found inf"),
    ("scales=1e9", "found 1e9"),
    ("scales=1,x", "expected a scale (a number from 0.25 to 4), found 'x'"),
    ("scales=1,1.0", "scale 1 given twice in 'scales=1,1.0'"),
    ("flip,flip", "flip given twice"),
    ("scales=1,scales=2", "scales= given twice"),
])
def test_bad_tta_values_are_one_line_errors(text, message):
    with pytest.raises(ValueError) as err:
        parse_tta(text)
    assert str(err.value).startswith("--tta: ") and "\n" not in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize("command", ["infer", "evaluate"])
@pytest.mark.parametrize("value", ["scales=0", "blur", "scales=1,1"])
def test_commands_refuse_a_bad_tta_before_anything(tmp_path, capsys, command, value):
    args = {"infer": ["x.png", "--checkpoint", str(tmp_path / "none"), "--output-dir",
                      str(tmp_path / "out")],
            "evaluate": ["--checkpoint", str(tmp_path / "none"), "--report",
                         str(tmp_path / "out")]}[command]
    main = infer.main if command == "infer" else evaluate.main
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--tta", value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"python -m fcn_graph.{command}: error: --tta: ")
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------- the segmenter

def _reference(segmenter, batch, tta):
    """The mean probabilities [N, H, W, K] float64 of `tta`, composed in NumPy
    from the raw logits `segmenter` gives for each variant's input."""
    n, height, width = batch.shape[:3]
    total = 0.0
    for scale, flipped in tta.variants:
        size = scaled_size(height, width, scale)
        images = batch if size == (height, width) else resize_images(batch, *size)
        if flipped:
            images = images[:, :, ::-1]
        _, logits = segmenter.run(np.ascontiguousarray(images), scores=True)
        probabilities = numpy_softmax(logits)
        if flipped:
            probabilities = probabilities[:, :, ::-1]
        total = total + numpy_resize(probabilities, height, width)
    return total / len(tta.variants)


def _agree_but_near_ties(labels, mean, want_labels, tolerance):
    """Labels equal wherever the best two mean probabilities are further apart
    than `tolerance`."""
    top = np.sort(mean, axis=-1)
    clear = top[..., -1] - top[..., -2] > tolerance
    np.testing.assert_array_equal(labels[clear], want_labels[clear])
    assert clear.mean() > 0.99


@pytest.mark.parametrize("engine", ["tf", "onnxruntime"])
@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tta_matches_a_numpy_composition(segmenters, engine, tiled, batch_size):
    base = segmenters(engine)
    if tiled:
        base = tiling.TiledSegmenter(base, TINY_SPEC, tile=32, field=SMALL_FIELD)
    batch = _images(batch_size, 37, 45, seed=batch_size)
    segmenter = TtaSegmenter(base, FLIP_SCALES)
    labels, mean = segmenter.run(batch, scores=True)
    if tiled:
        assert base.tiles_run > 1          # the last variant (46x56) ran in tiles
    want = _reference(base, batch, FLIP_SCALES)
    assert mean.shape == (batch_size, 37, 45, 5) and mean.dtype == np.float32
    assert labels.shape == (batch_size, 37, 45)
    np.testing.assert_allclose(mean.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(mean, want, atol=1e-5)
    _agree_but_near_ties(labels, mean, np.argmax(want, -1), 1e-5)
    assert len(np.unique(labels)) > 1
    # the labels alone are the same
    np.testing.assert_array_equal(segmenter.run(batch)[0], labels)
    assert segmenter.run(batch)[1] is None


def test_tta_differs_from_the_plain_run(segmenters):
    """The averaging changes the result: without a flip in it, a test that
    composes nothing could pass."""
    batch = _images(1, 37, 45, seed=7)
    plain, logits = segmenters("tf").run(batch, scores=True)
    labels, mean = TtaSegmenter(segmenters("tf"), FLIP_SCALES).run(batch, scores=True)
    assert np.abs(mean - numpy_softmax(logits)).max() > 1e-3
    assert (labels != plain).any()
    # one variant, scale 1, unflipped: the plain softmax
    _, single = TtaSegmenter(segmenters("tf"), Tta(False, (1.0,))).run(batch, scores=True)
    np.testing.assert_allclose(single, numpy_softmax(logits), atol=1e-6)


def test_the_engines_agree_under_tta(segmenters):
    batch = _images(3, 37, 45, seed=11)
    results = [TtaSegmenter(segmenters(engine), FLIP_SCALES).run(batch, scores=True)
               for engine in ("tf", "onnxruntime")]
    (tf_labels, tf_mean), (ort_labels, ort_mean) = results
    assert np.abs(tf_mean - ort_mean).max() < 1e-4
    _agree_but_near_ties(ort_labels, tf_mean, tf_labels, 1e-4)


class _Counting:
    """A segmenter that counts its runs."""

    def __init__(self, segmenter):
        self.segmenter, self.runs = segmenter, 0

    def run(self, batch, *, scores=False):
        self.runs += 1
        return self.segmenter.run(batch, scores=scores)

    def close(self):
        pass


def test_run_with_plain_reuses_the_plain_run(segmenters):
    counting = _Counting(segmenters("tf"))
    segmenter = TtaSegmenter(counting, FLIP_SCALES)
    batch = _images(2, 37, 45, seed=3)
    plain, labels, mean = segmenter.run_with_plain(batch)
    assert counting.runs == len(FLIP_SCALES.variants)       # not one more
    want_plain, _ = segmenters("tf").run(batch)
    np.testing.assert_array_equal(plain, want_plain)
    again_labels, again_mean = segmenter.run(batch, scores=True)
    np.testing.assert_allclose(mean, again_mean, atol=1e-6)
    np.testing.assert_array_equal(labels, again_labels)
    assert segmenter.seconds["plain"] > 0 and segmenter.seconds["tta"] > 0


def test_a_scaled_copy_over_the_budget(segmenters):
    """--tile off: refused in one line; --tile auto: tiled, with a note."""
    batch = _images(1, 37, 45, seed=5)
    budget = tiling.activation_bytes(TINY_SPEC, 37, 45)
    refused = TtaSegmenter(segmenters("tf"), Tta(False, (1.0, 2.0)), limit=(TINY_SPEC, budget))
    with pytest.raises(UserError) as err:
        refused.run(batch)
    assert str(err.value).startswith("--tta scale 2: the 90x74 copy needs about ")
    assert "--tile is off" in str(err.value) and "\n" not in str(err.value)
    # a scale of at most 1 is never refused
    TtaSegmenter(segmenters("tf"), Tta(True, (0.5, 1.0)), limit=(TINY_SPEC, budget)).run(batch)
    notes = []
    tiled = tiling.TiledSegmenter(segmenters("tf"), TINY_SPEC, tile="auto", budget_bytes=budget,
                                  field=SMALL_FIELD)
    segmenter = TtaSegmenter(tiled, Tta(False, (1.0, 2.0)), note=notes.append)
    segmenter.run(batch)
    segmenter.run(batch)
    assert len(notes) == 1 and notes[0].startswith("note: --tta scale 2: the scaled copy exceeds "
                                                   "--memory-budget and runs in ")


def test_infer_tta_writes_the_mean_probabilities(tmp_path, tiny_prefix, segmenters, capsys):
    batch = _images(1, 37, 45, seed=9)
    path = str(tmp_path / "odd.png")
    cv2.imwrite(path, batch[0][..., ::-1])
    out = str(tmp_path / "out")
    assert infer.main([path, "--checkpoint", tiny_prefix, "--output-dir", out, "--engine", "tf",
                       "--save-scores", "--tta", "flip,scales=0.75,1,1.25"]) == 0
    assert "--tta flip,scales=0.75,1,1.25" in capsys.readouterr().err
    scores = np.load(os.path.join(out, "odd_scores.npy"))
    labels = read_label(os.path.join(out, "odd.png"))
    want = _reference(segmenters("tf"), batch, FLIP_SCALES)[0]
    np.testing.assert_allclose(scores, want, atol=1e-5)
    _agree_but_near_ties(labels, scores, np.argmax(want, -1), 1e-5)


# ---------------------------------------------------------------- train.val_tta

def test_train_val_tta_is_parsed_as_the_flag():
    from fcn_graph.training.config import load_config
    assert load_config(None, ["train.val_tta=flip,scales=0.5,1"]).train.val_tta == \
        "flip,scales=0.5,1"
    assert load_config(None, []).train.val_tta is None
    for value, message in (("flip,scales=9", "--set: train.val_tta: expected scales from 0.25 "
                                             "to 4"),
                           ("mirror", "--set: train.val_tta: unknown variant 'mirror'"),
                           ('""', "--set: train.val_tta: expected flip, scales=S1,S2,... or "
                                  "both (or off), found an empty value")):
        with pytest.raises(UserError) as err:
            load_config(None, [f"train.val_tta={value}"])
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_training_validates_with_tta_as_evaluate_does(tmp_path):
    """The validation of train.val_tta gives the mean IU of evaluate --tta
    on the same checkpoint and split."""
    import json

    from fcn_graph.training import loop
    from fcn_graph.training.config import load_config
    overrides = [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=4",
                 "data.shapes_val_images=2", "data.shapes_image_size=37",
                 f"train.log_dir={tmp_path / 'run'}", "model.vgg_width=0.0625",
                 "model.fc_width=16", "train.image_size=32", "train.batch_size=2",
                 "train.eval_every=0", "train.max_steps=2", "train.threads=2",
                 "train.val_tta=flip,scales=0.75,1.25"]
    metrics = loop.train(load_config(None, overrides))
    assert evaluate.main([*[arg for o in overrides[:-1] for arg in ("--set", o)],
                          "--engine", "tf", "--tta", "flip,scales=0.75,1.25", "--json",
                          str(tmp_path / "m.json")]) == 0
    record = json.loads((tmp_path / "m.json").read_text())
    # the plain run differs, so an ignored train.val_tta would fail here
    assert abs(record["mean_iou"] - record["tta"]["mean_iou"]) > 1e-3
    assert metrics["mean_iou"] == pytest.approx(record["tta"]["mean_iou"], abs=1e-3)
