"""Image and label I/O on tiny generated files."""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from fcn_graph.core.constants import voc_palette
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import atomic_write, write_json_atomic
from fcn_graph.data.image_files import (
    colorize,
    overlay,
    read_image,
    read_label,
    save_npy_atomic,
    write_image,
    write_label_png,
)

H, W = 5, 7  # odd, non-square: catches transposed axes


def _rgb(seed=0, shape=(H, W)):
    """An image whose R, G and B differ at every pixel, so channel order shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)


def _listdir(path):
    return sorted(os.listdir(path))


def _write_palette_png(path, ids, palette, transparency=None):
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    im.putpalette(palette.tobytes())
    if transparency is None:
        im.save(path)
    else:
        im.save(path, transparency=transparency)


# read_image -------------------------------------------------------------------


def test_read_rgb_png_converts_bgr_to_rgb(tmp_path):
    rgb = _rgb()
    path = str(tmp_path / "a.png")
    assert cv2.imwrite(path, rgb[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_gray_is_replicated(tmp_path):
    gray = _rgb()[:, :, 0]
    path = str(tmp_path / "g.png")
    assert cv2.imwrite(path, gray)
    out = read_image(path)
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))


def test_read_rgba_drops_alpha_keeps_colours(tmp_path):
    rgb = _rgb(1)
    alpha = np.zeros((H, W), np.uint8)
    alpha[0, 0] = 255
    path = str(tmp_path / "rgba.png")
    assert cv2.imwrite(path, np.dstack([rgb[:, :, ::-1], alpha]))
    np.testing.assert_array_equal(read_image(path), rgb)


def test_read_gray_alpha(tmp_path):
    gray = _rgb(2)[:, :, 0]
    path = str(tmp_path / "la.png")
    Image.fromarray(np.dstack([gray, np.full_like(gray, 7)]), "LA").save(path)
    np.testing.assert_array_equal(read_image(path), np.stack([gray] * 3, axis=2))


def test_read_16bit_scales_with_rounding(tmp_path):
    values = np.array([0, 128, 129, 257, 385, 386, 32896, 65278, 65535, 1000, 40000, 12345],
                      dtype=np.uint16)
    gray16 = np.resize(values, (H, W)).astype(np.uint16)
    # Hand values: 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1, 385/257 = 1.498 -> 1,
    # 386/257 = 1.502 -> 2, 32896/257 = 128, 65535/257 = 255.
    expected = np.round(gray16 / 257.0).astype(np.uint8)
    assert list(expected.ravel()[:9]) == [0, 0, 1, 1, 1, 2, 128, 254, 255]
    path = str(tmp_path / "g16.png")
    assert cv2.imwrite(path, gray16)
    np.testing.assert_array_equal(read_image(path), np.stack([expected] * 3, axis=2))

    rgb16 = np.stack([gray16, 65535 - gray16, gray16 // 2], axis=2)
    path = str(tmp_path / "c16.png")
    assert cv2.imwrite(path, rgb16[:, :, ::-1])
    np.testing.assert_array_equal(read_image(path), np.round(rgb16 / 257.0).astype(np.uint8))


@pytest.mark.parametrize("transparency", [None, 0])
def test_read_image_of_palette_png_gives_colours(tmp_path, transparency):
    ids = np.resize(np.array([0, 1, 2, 15, 255], np.uint8), (H, W))
    path = str(tmp_path / "p.png")
    _write_palette_png(path, ids, voc_palette(), transparency)
    np.testing.assert_array_equal(read_image(path), voc_palette()[ids])


def test_read_jpeg(tmp_path):
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([200 + 0 * xx, 10 * yy, 5 * xx], axis=2).astype(np.uint8)  # red-ish, smooth
    path = str(tmp_path / "a.jpg")
    assert cv2.imwrite(path, rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = read_image(path)
    assert out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 4
    assert out[:, :, 0].mean() > 150 and out[:, :, 2].mean() < 60  # R stays R


def test_read_non_ascii_path(tmp_path):
    rgb = _rgb(3)
    path = str(tmp_path / "bild_ü_图.png")
    write_image(path, rgb)
    np.testing.assert_array_equal(read_image(path), rgb)


def test_read_image_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(UserError, match=r"nope\.jpg: no such file \(expected an image"):
        read_image(missing)
    corrupt = tmp_path / "x.jpg"
    corrupt.write_bytes(b"this is not a JPEG at all")
    with pytest.raises(UserError, match=r"x\.jpg: not a readable image \(OpenCV could not "
                                         r"decode 25 bytes"):
        read_image(str(corrupt))
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"e\.png: not a readable image \(the file is empty"):
        read_image(str(empty))
    with pytest.raises(UserError, match="is a directory"):
        read_image(str(tmp_path))


# read_label -------------------------------------------------------------------


def test_read_label_palette_gives_indices(tmp_path):
    ids = np.resize(np.array([0, 1, 2, 20, 255], np.uint8), (H, W))
    # A palette whose colours are unrelated to the indices: only indices may come back.
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    path = str(tmp_path / "voc.png")
    _write_palette_png(path, ids, palette)
    out = read_label(path)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    np.testing.assert_array_equal(out, ids)


def test_read_label_gray_and_16bit(tmp_path):
    ids = np.resize(np.arange(0, 151, 7, dtype=np.uint8), (H, W))
    path = str(tmp_path / "ade.png")
    assert cv2.imwrite(path, ids)
    np.testing.assert_array_equal(read_label(path), ids)

    path16 = str(tmp_path / "l16.png")
    assert cv2.imwrite(path16, ids.astype(np.uint16))
    np.testing.assert_array_equal(read_label(path16), ids)

    big = ids.astype(np.uint16)
    big[1, 2] = 300
    assert cv2.imwrite(path16, big)
    with pytest.raises(UserError, match=r"l16\.png: .*values 0\.\.300 \(expected class ids"):
        read_label(path16)


def test_read_label_refuses_colour_and_bad_files(tmp_path):
    path = str(tmp_path / "rgb_label.png")
    write_image(path, _rgb())
    with pytest.raises(UserError, match=r"rgb_label\.png: found a RGB image \(expected a palette "
                                         r"or single-channel label PNG"):
        read_label(path)
    with pytest.raises(UserError, match=r"gone\.png: no such file"):
        read_label(str(tmp_path / "gone.png"))
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"c\.png: not a readable label image"):
        read_label(str(corrupt))


# write_label_png / colorize / overlay -----------------------------------------


def test_write_label_round_trip_and_colours(tmp_path):
    ids = np.resize(np.array([0, 1, 2, 3, 14, 15, 20, 255], np.uint8), (H, W))
    path = str(tmp_path / "pred.png")
    write_label_png(path, ids)
    assert _listdir(tmp_path) == ["pred.png"]
    with Image.open(path) as im:
        assert im.mode == "P"
        stored_palette = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(stored_palette[:256], voc_palette())
    back = read_label(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, ids)
    # The colours a viewer (here OpenCV) shows are the VOC colours of the ids.
    np.testing.assert_array_equal(read_image(path), voc_palette()[ids])


def test_write_label_accepts_int64_and_refuses_out_of_range(tmp_path):
    ids = np.resize(np.arange(21, dtype=np.int64), (H, W))
    path = str(tmp_path / "p.png")
    write_label_png(path, ids)
    np.testing.assert_array_equal(read_label(path), ids)
    with pytest.raises(ValueError, match=r"class ids 0\.\.256"):
        write_label_png(path, np.array([[0, 256]]))
    np.testing.assert_array_equal(read_label(path), ids)  # old file untouched


def test_colorize_known_voc_colours():
    label = np.array([[0, 1, 15], [255, 2, 7]], np.uint8)
    expected = np.array(
        [[[0, 0, 0], [128, 0, 0], [192, 128, 128]],
         [[224, 224, 192], [0, 128, 0], [128, 128, 128]]], np.uint8)
    np.testing.assert_array_equal(colorize(label), expected)
    short = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(colorize(np.array([[1, 2]]), short), [[[4, 5, 6], [0, 0, 0]]])
    with pytest.raises(ValueError, match="do not fit"):
        colorize(np.array([[0, 300]]))


def test_overlay_hand_checked():
    image = np.array([[[100, 50, 0], [10, 20, 30]],
                      [[255, 255, 255], [0, 0, 0]]], np.uint8)
    label = np.array([[1, 0], [2, 15]])
    # class 1 = (128, 0, 0): (100+128)/2 = 114, 50/2 = 25, 0
    # class 0 (background): unchanged (10, 20, 30)
    # class 2 = (0, 128, 0): 255/2 = 127.5 -> 128 (half to even), 383/2 = 191.5 -> 192, 127.5 -> 128
    # class 15 = (192, 128, 128): 96, 64, 64
    expected = np.array([[[114, 25, 0], [10, 20, 30]],
                         [[128, 192, 128], [96, 64, 64]]], np.uint8)
    np.testing.assert_array_equal(overlay(image, label), expected)
    # alpha = 0.25 on class 1: 0.75*100 + 0.25*128 = 107; background blended when asked:
    out = overlay(image, label, alpha=0.25, background=None)
    np.testing.assert_array_equal(out[0, 0], [107, 38, 0])  # 37.5 -> 38
    np.testing.assert_array_equal(out[0, 1], [8, 15, 22])  # 7.5 -> 8, 15, 22.5 -> 22
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, label[:1])


# write_image / save_npy_atomic / atomic_write ---------------------------------


def test_write_image_png_exact_jpeg_close(tmp_path):
    rgb = _rgb(4)
    write_image(str(tmp_path / "o.png"), rgb)
    np.testing.assert_array_equal(read_image(str(tmp_path / "o.png")), rgb)
    flat = np.zeros((H, W, 3), np.uint8)
    flat[...] = (220, 30, 40)
    write_image(str(tmp_path / "o.JPG"), flat)
    assert np.abs(read_image(str(tmp_path / "o.JPG")).astype(int) - flat).max() <= 3
    assert _listdir(tmp_path) == ["o.JPG", "o.png"]
    with pytest.raises(UserError, match=r"o\.gif: cannot write an image with extension '\.gif'"):
        write_image(str(tmp_path / "o.gif"), rgb)


def test_save_npy_atomic_keeps_the_exact_name(tmp_path):
    scores = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    save_npy_atomic(str(tmp_path / "scores.bin"), scores)
    assert _listdir(tmp_path) == ["scores.bin"]
    np.testing.assert_array_equal(np.load(str(tmp_path / "scores.bin")), scores)


def test_atomic_write_success_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_write(str(target)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".txt")
        with open(tmp, "w") as f:
            f.write("new")
        assert not target.exists()  # nothing visible before the body ends
    assert target.read_text() == "new"
    assert _listdir(tmp_path) == ["a.txt"]


def test_atomic_write_failure_keeps_old_target_and_removes_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _listdir(tmp_path) == ["a.txt"]

    fresh = tmp_path / "b.npy"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(fresh)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
    assert _listdir(tmp_path) == ["a.txt"]  # no partial b.npy, no temp


def test_atomic_write_errors(tmp_path):
    with pytest.raises(RuntimeError, match="produced no file"):
        with atomic_write(str(tmp_path / "a.txt")):
            pass
    assert _listdir(tmp_path) == []
    with pytest.raises(UserError, match="does not exist"):
        with atomic_write(str(tmp_path / "missing_dir" / "a.txt")):
            pass
    with pytest.raises(UserError, match="a directory of that name exists"):
        write_json_atomic(str(tmp_path), {})


def test_write_json_atomic(tmp_path):
    path = str(tmp_path / "config.json")
    write_json_atomic(path, {"lr": np.float32(0.5), "size": np.int64(3), "ids": np.arange(3),
                             "name": "zürich"})
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.endswith("}\n") and "zürich" in text
    assert json.loads(text) == {"lr": 0.5, "size": 3, "ids": [0, 1, 2], "name": "zürich"}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    with open(path, encoding="utf-8") as f:
        assert json.loads(f.read())["size"] == 3
    assert _listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("alpha,background", [(0.5, 0), (0.3, None), (0.77, 4), (1.0, 0),
                                              (0.0, None)])
def test_overlay_is_the_blend_formula_pixel_by_pixel(alpha, background):
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (13, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (13, 7))
    palette = rng.integers(0, 256, (21, 3))
    want = np.empty_like(image)
    for i in range(13):
        for j in range(7):
            if label[i, j] == background:
                want[i, j] = image[i, j]
                continue
            for c in range(3):
                value = (1 - alpha) * float(image[i, j, c]) + alpha * float(palette[label[i, j], c])
                want[i, j, c] = min(255, max(0, round(value)))   # round: halves to even
    got = overlay(image, label, alpha=alpha, palette=palette, background=background)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="do not fit"):
        overlay(image, np.full((13, 7), 300), palette=palette)
