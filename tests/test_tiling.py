"""Tiled inference (`fcn_graph.engines.tiling`): the receptive field traced from the
model, the tile plan's coverage and margins, tiled against whole-image
inference on tiny weights with both engines, and the --tile flag."""

import dataclasses
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tfutil import write_random_checkpoint
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph import evaluate, infer
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.data.image_files import read_label
from fcn_graph.engines import tiling
from fcn_graph.engines.segmenter import make_segmenter
from fcn_graph.network import definition
from fcn_graph.network.spec import ModelSpec

tf1 = tf.compat.v1

TINY_SPEC = ModelSpec(num_classes=5, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                                mean_pixel=TINY_MEAN)


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory):
    """A tiny legacy checkpoint with random non-zero weights everywhere."""
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny") / "tiny"), TINY_SPEC)


def _image(height, width, seed=0):
    """A smooth random image (blurred noise), so that the network's output has
    regions rather than noise."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 6) * 4 - 384, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the receptive field

def test_receptive_field_matches_a_hand_computation():
    # Along one axis, cell i of a tensor with jump j reads input pixels
    # i * j + lo .. i * j + hi. A 3x3 SAME conv: lo -= j, hi += j; a 2x2/2 pool:
    # hi += j, then j *= 2. The legacy VGG19 body up to conv5_3:
    lo, hi = -2 * 1, 2 * 1                      # conv1_1, conv1_2 (j = 1)
    hi += 1                                     # pool1 -> j = 2
    lo, hi = lo - 2 * 2, hi + 2 * 2             # conv2_1, conv2_2
    hi += 2                                     # pool2 -> j = 4
    lo, hi = lo - 4 * 4, hi + 4 * 4             # conv3_1 .. conv3_4
    hi += 4                                     # pool3 -> j = 8
    lo, hi = lo - 4 * 8, hi + 4 * 8             # conv4_1 .. conv4_4
    hi += 8                                     # pool4 -> j = 16
    lo, hi = lo - 3 * 16, hi + 3 * 16           # conv5_1 .. conv5_3
    hi += 16                                    # pool5 -> j = 32
    lo, hi = lo - 3 * 32, hi + 3 * 32           # conv6, 7x7 (conv7, conv8: 1x1)
    assert (lo, hi) == (-198, 229)
    # conv_t1 (k 4, s 2, j 32 -> 16): SAME crops top = 1 row; output 2m reads
    # inputs m - 1, m; output 2m + 1 reads m, m + 1, i.e. lo - 32, hi + 16.
    lo, hi = lo - 32, hi + 16                   # the pool4 branch (-54, 69) lies inside
    lo, hi = lo - 16, hi + 8                    # conv_t2 (k 4, s 2, j 16 -> 8), pool3 inside
    # conv_t3 (k 16, s 8, j 8 -> 1): top = (8 + r) // 2, r = 8 * ceil(H / 8) - H;
    # output 8m + q reads inputs i with 0 <= 8m + q + top - 8i <= 15. Furthest
    # back: q = 3, top = 4 reads i = m - 1, 11 pixels before 8m + 3; furthest
    # ahead: q = 1, top = 7 reads i = m + 1, 7 pixels after 8m + 1.
    lo, hi = lo - 11, hi + 7
    field = tiling.receptive_field(TINY_SPEC)
    assert field == (lo, hi, 32) == (-257, 260, 32)
    assert field.size == 518 and field.margin == 260
    assert field.min_tile == 608   # 2 * 260 + 2 * 32 - 1 = 583, rounded up to 32
    # Widths do not matter; the paper's head reads conv5_4 and has its own upsampling.
    assert tiling.receptive_field(ModelSpec(num_classes=21)) == field
    paper = tiling.receptive_field(dataclasses.replace(TINY_SPEC, architecture="paper"))
    assert paper == (-257 - 16, 260 + 16, 32)   # conv5_4: one more 3x3 conv at j = 16


def test_the_field_holds_every_pixel_an_input_pixel_changes(tiny_prefix):
    """Change one input pixel: every output pixel that changes lies within the
    traced field of it, and the change reaches far (the field is not loose)."""
    field = tiling.receptive_field(TINY_SPEC)
    image = _image(600, 600, seed=1)
    changed = image.copy()
    y, x = 301, 290
    changed[y, x] = 255 - changed[y, x]
    segmenter = make_segmenter(tiny_prefix)
    try:
        _, before = segmenter.run(image[None], scores=True)
        _, after = segmenter.run(changed[None], scores=True)
    finally:
        segmenter.close()
    rows, cols = np.nonzero(np.abs(after[0] - before[0]).max(axis=2) > 0)
    assert rows.size
    # output pixel p depends on input pixels p + lo .. p + hi
    assert rows.min() >= y - field.hi and rows.max() <= y - field.lo
    assert cols.min() >= x - field.hi and cols.max() <= x - field.lo
    assert rows.max() - rows.min() > field.size // 2


# ---------------------------------------------------------------- the plan

def _check_axis(length, tile, field):
    spans = tiling.plan_axis(length, tile, field)
    covered = np.zeros(length, int)
    for span in spans:
        assert 0 <= span.start <= span.core_start < span.core_stop <= span.stop <= length
        assert span.stop - span.start <= max(tile, 0) or len(spans) == 1
        covered[span.core_start:span.core_stop] += 1
        if len(spans) > 1:
            assert span.start % field.stride == 0
            assert (span.stop - span.start) % field.stride == length % field.stride
        # every pixel of the core has its whole field in the tile, or the
        # image's own edge is the tile's edge
        assert span.start == 0 or span.core_start + field.lo >= span.start
        assert span.stop == length or span.core_stop - 1 + field.hi <= span.stop - 1
    assert (covered == 1).all(), (length, tile)
    assert spans[0].core_start == 0 and spans[-1].core_stop == length
    return spans


def test_plan_covers_every_pixel_once_with_its_margin():
    field = tiling.receptive_field(TINY_SPEC)
    for tile in (608, 640, 1024):
        for length in (1, 31, 33, 607, 608, 609, 641, 1000, 1217, 2049, 4000, 6000):
            spans = _check_axis(length, tile, field)
            assert (len(spans) == 1) == (length <= tile)
    # a small field and stride, every length and several tiles, exhaustively
    small = tiling.ReceptiveField(-5, 9, 4)
    assert small.min_tile == 28          # 2 * 9 + 2 * 4 - 1 = 25, rounded up to 4
    for tile in (28, 32, 40, 64):
        for length in range(1, 300):
            _check_axis(length, tile, small)


def test_plan_tiles_partition_the_image():
    field = tiling.receptive_field(TINY_SPEC)
    tiles = tiling.plan_tiles(1301, 777, 640, field)
    owner = np.zeros((1301, 777), int)
    for rows, cols in tiles:
        owner[rows.core_start:rows.core_stop, cols.core_start:cols.core_stop] += 1
    assert (owner == 1).all()
    # rows: tiles of 640 - 11 = 629 (= 1301 mod 32), step (629 - 2 * 260) // 32 * 32
    # = 96, 1301 - 629 = 672 to cover: 1 + ceil(672 / 96) = 8 tiles; columns:
    # 640 - 23 = 617, step 96, 777 - 617 = 160: 1 + ceil(160 / 96) = 3 tiles.
    assert len(tiles) == len(tiling.plan_axis(1301, 640, field)) * len(
        tiling.plan_axis(777, 640, field)) == 8 * 3
    assert {(rows.stop - rows.start, cols.stop - cols.start) for rows, cols in tiles} == {
        (629, 617)}


def test_a_tile_below_the_margin_is_refused():
    field = tiling.receptive_field(TINY_SPEC)
    with pytest.raises(UserError, match=r"--tile 576: too small .* at least 608 pixels"):
        tiling.plan_axis(1025, 576, field)
    with pytest.raises(UserError, match="--tile 64: too small"):
        tiling.TiledSegmenter(None, TINY_SPEC, tile=64)


class _Echo:
    """A segmenter whose output at a pixel is a function of that pixel alone,
    recording the shapes it is given."""

    def __init__(self):
        self.shapes = []

    def run(self, batch, *, scores=False):
        self.shapes.append(batch.shape)
        logits = batch.astype(np.float32) * np.float32(0.5)
        return batch.argmax(axis=3), (logits if scores else None)

    def close(self):
        pass


def test_stitching_puts_every_core_in_its_place():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (2, 300, 451, 3), dtype=np.uint8)
    echo = _Echo()
    field = tiling.ReceptiveField(-20, 21, 32)
    tiled = tiling.TiledSegmenter(echo, TINY_SPEC, tile=160, field=field)
    labels, logits = tiled.run(batch, scores=True)
    want_labels, want_logits = _Echo().run(batch, scores=True)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(logits, want_logits)
    assert tiled.tiles_run == len(echo.shapes) == len(tiling.plan_axis(300, 160, field)) * len(
        tiling.plan_axis(451, 160, field)) == 3 * 6
    assert set(echo.shapes) == {(2, 140, 131, 3)}   # 300 = 140 and 451 = 131 (mod 32)
    labels_only, none = tiled.run(batch)
    assert none is None
    np.testing.assert_array_equal(labels_only, want_labels)


def test_auto_tiles_only_above_the_budget():
    batch = np.zeros((1, 700, 650, 3), np.uint8)
    whole = tiling.activation_bytes(TINY_SPEC, 700, 650)
    assert whole == 4 * sum(np.prod(shape) for shape in definition.trace(
        TINY_SPEC, height=700, width=650).end_points.values())
    echo = _Echo()
    tiled = tiling.TiledSegmenter(echo, TINY_SPEC, tile="auto", budget_bytes=whole)
    tiled.run(batch)
    assert tiled.tiles_run == 0 and echo.shapes == [(1, 700, 650, 3)]
    tiled = tiling.TiledSegmenter(echo, TINY_SPEC, tile="auto", budget_bytes=whole - 1)
    tiled.run(batch)
    # the auto size is the largest square within the budget, never below the minimum
    field = tiled.field
    size = tiling.auto_tile(TINY_SPEC, whole - 1, field)
    assert size % 32 == 0 and field.min_tile <= size < 700
    assert tiled.tiles_run == len(tiling.plan_axis(700, size, field)) * len(
        tiling.plan_axis(650, size, field)) >= 2
    assert tiling.activation_bytes(TINY_SPEC, size, size) <= whole - 1
    assert tiling.activation_bytes(TINY_SPEC, size + 32, size + 32) > whole - 1
    assert tiling.auto_tile(TINY_SPEC, 1, field) == field.min_tile
    never = tiling.TiledSegmenter(_Echo(), TINY_SPEC, tile=None)
    never.run(np.zeros((1, 2000, 50, 3), np.uint8))
    assert never.tiles_run == 0


# ---------------------------------------------------------------- tiled == whole

def _agreement(tiled_labels, tiled_logits, labels, logits):
    scale = np.abs(logits).max()
    assert scale > 1e-3
    close = np.abs(tiled_logits - logits).max(axis=-1) <= 1e-4 * scale
    return (tiled_labels == labels).mean(), close.mean()


@pytest.mark.parametrize("engine", ["tf", "onnxruntime"])
def test_tiled_inference_matches_the_whole_image(tiny_prefix, engine):
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    batch = _image(701, 659, seed=3)[None]
    segmenter = make_segmenter(tiny_prefix, engine=engine)
    tiled = tiling.TiledSegmenter(segmenter, TINY_SPEC, tile=640)
    try:
        labels, logits = segmenter.run(batch, scores=True)
        tiled_labels, tiled_logits = tiled.run(batch, scores=True)
        labels_only, _ = tiled.run(batch)
    finally:
        tiled.close()
    assert tiled.tiles_run == 4
    assert tiled_logits.shape == logits.shape and tiled_logits.dtype == np.float32
    labels_agree, logits_close = _agreement(tiled_labels, tiled_logits, labels, logits)
    print(f"{engine}: labels agree on {labels_agree:.4%}, logits within 1e-4 on "
          f"{logits_close:.4%}")
    assert labels_agree >= 0.995 and logits_close >= 0.995, (labels_agree, logits_close)
    np.testing.assert_array_equal(labels_only, tiled_labels)
    assert len(np.unique(labels)) > 1


def test_a_margin_below_the_field_changes_the_result(tiny_prefix):
    """Smaller tiles planned with a quarter of the margin: the logits near the
    seams differ (so the test above can fail)."""
    batch = _image(701, 659, seed=3)[None]
    segmenter = make_segmenter(tiny_prefix)
    field = tiling.receptive_field(TINY_SPEC)
    tiled = tiling.TiledSegmenter(segmenter, TINY_SPEC, tile=320, field=tiling.ReceptiveField(
        field.lo // 4, field.hi // 4, field.stride))
    try:
        labels, logits = segmenter.run(batch, scores=True)
        tiled_labels, tiled_logits = tiled.run(batch, scores=True)
    finally:
        tiled.close()
    assert tiled.tiles_run == 16
    labels_agree, logits_close = _agreement(tiled_labels, tiled_logits, labels, logits)
    print(f"a quarter of the margin: labels agree on {labels_agree:.4%}, logits within 1e-4 on "
          f"{logits_close:.4%}")
    assert logits_close < 0.99


# ---------------------------------------------------------------- the flags

@pytest.mark.parametrize("text,want", [("auto", "auto"), ("off", None), ("OFF", None),
                                       ("608", 608), (" 1024 ", 1024)])
def test_tile_flag_values(text, want):
    assert tiling.parse_tile(text) == want


@pytest.mark.parametrize("command", [infer, evaluate])
@pytest.mark.parametrize("flags,message", [
    (["--tile", "100"], "--tile: expected a positive multiple of 32 (the network's stride) "
                        "up to 65536, found 100"),
    (["--tile", "-64"], "--tile: expected a positive multiple of 32"),
    (["--tile", "0"], "--tile: expected a positive multiple of 32"),
    (["--tile", "big"], "--tile: expected auto, off or a tile size in pixels, found 'big'"),
    (["--memory-budget", "0"], "argument --memory-budget: expected a number of GB in (0, 4096], found '0'"),
    (["--memory-budget", "nan"], "argument --memory-budget: expected a number of GB in (0, 4096]"),
])
def test_bad_tile_flags_are_one_line_errors(command, flags, message, capsys):
    argv = (["x.png", "--checkpoint", "nowhere"] if command is infer else
            ["--checkpoint", "nowhere"]) + flags
    with pytest.raises(SystemExit) as exit_info:
        command.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def _record_plans(monkeypatch):
    """Make tiling.plan_tiles record the (height, width, tile) of every plan."""
    plans, plan_tiles = [], tiling.plan_tiles

    def recording(height, width, tile, field):
        plans.append((height, width, tile))
        return plan_tiles(height, width, tile, field)

    monkeypatch.setattr(tiling, "plan_tiles", recording)
    return plans


def test_infer_tiles_a_small_image_end_to_end(tmp_path, tiny_prefix, capsys, monkeypatch):
    plans = _record_plans(monkeypatch)
    image = _image(650, 97, seed=5)
    path = str(tmp_path / "tall.png")
    cv2.imwrite(path, image[..., ::-1])
    outputs = {}
    for tile in ("608", "off"):
        out = str(tmp_path / f"out_{tile}")
        assert infer.main([path, "--checkpoint", tiny_prefix, "--output-dir", out,
                           "--save-scores", "--tile", tile]) == 0
        outputs[tile] = (read_label(os.path.join(out, "tall.png")),
                         np.load(os.path.join(out, "tall_scores.npy")))
    assert plans == [(650, 97, 608)]
    (labels, scores), (whole_labels, whole_scores) = outputs["608"], outputs["off"]
    assert labels.shape == (650, 97) and scores.shape == (650, 97, 5)
    labels_agree, scores_close = _agreement(labels, scores, whole_labels, whole_scores)
    assert labels_agree >= 0.995 and scores_close >= 0.995
    # a tile below the model's margin: one line naming the flag, before any output
    code = run_cli(infer.main, [path, "--checkpoint", tiny_prefix, "--output-dir",
                                str(tmp_path / "out_64"), "--tile", "64"],
                   prog="fcn_graph.infer")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == ("fcn_graph.infer: error: --tile 64: too small for this model: expected "
                       "at least 608 pixels (twice the receptive-field margin of 260 plus 63), "
                       "or auto or off")
    assert not os.path.exists(tmp_path / "out_64")


def test_evaluate_tiles_as_infer_does(tmp_path, tiny_prefix, monkeypatch):
    """evaluate --tile 608 saves the labels of evaluate --tile off."""
    plans = _record_plans(monkeypatch)
    root = tmp_path / "data"
    for name in ("images", "labels"):
        os.makedirs(root / name)
    image = _image(650, 97, seed=6)
    cv2.imwrite(str(root / "images" / "tall.png"), image[..., ::-1])
    label = np.zeros((650, 97), np.uint8)
    label[300:, :] = 1
    cv2.imwrite(str(root / "labels" / "tall.png"), label)
    (root / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    (root / "val.txt").write_text("tall\n")
    saved = {}
    for tile in ("608", "off"):
        out = tmp_path / f"eval_{tile}"
        assert evaluate.main(["--set", "data.kind=folder", "--set", f"data.root={root}",
                              "--checkpoint", tiny_prefix, "--split", "val", "--tile", tile,
                              "--save-predictions", str(out), "--json",
                              str(tmp_path / f"{tile}.json")]) == 0
        saved[tile] = read_label(str(out / "tall.png"))
    assert plans == [(650, 97, 608)]
    assert saved["608"].shape == (650, 97)
    assert (saved["608"] == saved["off"]).mean() >= 0.995
    assert len(np.unique(saved["off"])) > 1
