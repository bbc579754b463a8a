"""EXIF orientation: ignored by default (pixels as stored, aligned with labels),
applied by `read_image(exif_rotate=True)` and `infer --exif-rotate`."""

import os

import numpy as np
import pytest
from PIL import Image, ImageOps
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from fcn_graph import infer, port
from fcn_graph.core.errors import run_cli
from fcn_graph.data import image_files
from fcn_graph.weights.matconvnet import write_vgg_mat


def _write(path, pixels, orientation, **save):
    """`pixels` (RGB) saved by Pillow with EXIF orientation `orientation`."""
    exif = Image.Exif()
    exif[image_files.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **save)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotate_turns_each_orientation_upright_as_pillow_does(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    path = str(tmp_path / "photo.png")  # lossless: OpenCV and Pillow give the same pixels
    _write(path, pixels, orientation)
    with Image.open(path) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(image_files.read_image(path, exif_rotate=True), upright)
    np.testing.assert_array_equal(image_files.read_image(path), pixels)  # default: as stored


def test_a_jpeg_turned_by_its_tag_keeps_its_decoded_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    path = str(tmp_path / "phone.jpg")
    _write(path, pixels, 6, quality=95)  # 6: shown turned 90 degrees clockwise
    stored = image_files.read_image(path)
    assert stored.shape == (16, 24, 3)
    turned = image_files.read_image(path, exif_rotate=True)
    assert turned.shape == (24, 16, 3)
    np.testing.assert_array_equal(turned, np.rot90(stored, -1))
    assert turned[0, -1].tolist() == stored[0, 0].tolist()  # top-left goes to top-right


def test_no_or_a_bad_orientation_tag_reads_as_stored(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    _write(str(tmp_path / "odd.png"), pixels, 9)  # not an orientation
    for name in ("plain.png", "odd.png"):
        np.testing.assert_array_equal(
            image_files.read_image(str(tmp_path / name), exif_rotate=True), pixels)


def test_infer_exif_rotate_writes_upright_outputs(tmp_path, capsys):
    mat = str(tmp_path / "vgg.mat")
    write_vgg_mat(mat, make_vgg_layers(), TINY_MEAN, fc=make_fc_layers(TINY_WIDTHS["conv5_4"]))
    prefix = str(tmp_path / "ckpt" / "start")
    assert port.main(["mat2ckpt", mat, "--num-classes", "4", "--fc-width", "6", "--out",
                      prefix]) == 0
    _write(str(tmp_path / "phone.png"),
           np.random.default_rng(2).integers(0, 256, (9, 14, 3), dtype=np.uint8), 8)
    for flag, shape in (([], (9, 14)), (["--exif-rotate"], (14, 9))):
        out = str(tmp_path / f"out{len(flag)}")
        assert run_cli(infer.main, [str(tmp_path / "phone.png"), "--checkpoint", prefix,
                                    "--output-dir", out, *flag], "fcn_graph.infer") == 0
        with Image.open(os.path.join(out, "phone.png")) as label:
            assert label.size[::-1] == shape
    capsys.readouterr()
