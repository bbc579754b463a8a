"""`python -m fcn_graph.infer` end to end on generated images."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from npref import fcn8s_legacy_forward
from PIL import Image
from tinyvgg import TINY_MEAN

from fcn_graph import infer, port
from fcn_graph.data.image_files import read_label
from fcn_graph.engines.segmenter import Segmenter
from fcn_graph.weights import checkpoint

NUM_CLASSES = 4


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_mat):
    prefix = str(tmp_path / "ckpt" / "start")
    assert port.main(["mat2ckpt", tiny_mat, "--num-classes", str(NUM_CLASSES), "--fc-width", "6",
                      "--out", prefix]) == 0
    return prefix


def _reference_logits(prefix, rgb):
    stored = checkpoint.read_variables(prefix)
    weights = {name.split("/")[1]: value.astype(np.float64) for name, value in stored.items()}
    logits, _ = fcn8s_legacy_forward(rgb[None].astype(np.float64), weights, TINY_MEAN)
    return logits[0]


def _write_inputs(directory):
    rng = np.random.default_rng(0)
    os.makedirs(directory)
    rgb = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    cv2.imwrite(os.path.join(directory, "color.png"), rgb[..., ::-1])
    cv2.imwrite(os.path.join(directory, "gray.png"), rng.integers(0, 256, (20, 13), dtype=np.uint8))
    cv2.imwrite(os.path.join(directory, "rgba.png"),
                rng.integers(0, 256, (9, 31, 4), dtype=np.uint8))
    cv2.imwrite(os.path.join(directory, "deep.png"),
                rng.integers(0, 65536, (17, 8, 3), dtype=np.uint16))
    palette = Image.fromarray(rng.integers(0, 5, (11, 14), dtype=np.uint8), mode="P")
    palette.putpalette(list(rng.integers(0, 256, 15)))
    palette.save(os.path.join(directory, "palette.png"))
    with open(os.path.join(directory, "broken.jpg"), "wb") as handle:
        handle.write(b"\xff\xd8 not really a jpeg")
    return rgb


def test_infer_writes_three_outputs_and_matches_numpy(tmp_path, tiny_checkpoint, capsys):
    rgb = _write_inputs(str(tmp_path / "images"))
    out = str(tmp_path / "out")
    code = infer.main([str(tmp_path / "images"), "--checkpoint", os.path.dirname(tiny_checkpoint),
                       "--output-dir", out, "--save-scores"])
    printed = capsys.readouterr()
    assert code == 1, "the broken image must make the exit status non-zero"
    assert "broken.jpg" in printed.err and "1 of 6 images failed" in printed.err
    for stem, (h, w) in {"color": (37, 45), "gray": (20, 13), "rgba": (9, 31), "deep": (17, 8),
                         "palette": (11, 14)}.items():
        label = read_label(os.path.join(out, stem + ".png"))
        overlay = cv2.imread(os.path.join(out, stem + "_overlay.png"))
        scores = np.load(os.path.join(out, stem + "_scores.npy"))
        assert label.shape == (h, w) and overlay.shape == (h, w, 3)
        assert scores.shape == (h, w, NUM_CLASSES) and scores.dtype == np.float32
        np.testing.assert_array_equal(label, scores.argmax(axis=2))
        assert f"{w}x{h}" in printed.out
        with Image.open(os.path.join(out, stem + ".png")) as image:
            assert image.mode == "P"
    assert not os.path.exists(os.path.join(out, "broken.png"))
    scores = np.load(os.path.join(out, "color_scores.npy"))
    want = _reference_logits(tiny_checkpoint, rgb)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_batches_of_equal_sizes_give_the_same_scores(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(3)
    folder = tmp_path / "same"
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"im{index}.png"), rng.integers(0, 256, (21, 19, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "im3.png"), rng.integers(0, 256, (12, 19, 3), dtype=np.uint8))
    single, batched = str(tmp_path / "single"), str(tmp_path / "batched")
    assert infer.main([str(folder), "--checkpoint", tiny_checkpoint, "--output-dir", single,
                       "--save-scores"]) == 0
    assert infer.main([str(folder), "--checkpoint", tiny_checkpoint, "--output-dir", batched,
                       "--save-scores", "--batch", "2"]) == 0
    for index in range(4):
        a = np.load(os.path.join(single, f"im{index}_scores.npy"))
        b = np.load(os.path.join(batched, f"im{index}_scores.npy"))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_mean_flag_applies_without_sidecar(tmp_path, tiny_checkpoint):
    os.remove(tiny_checkpoint + ".json")
    image = np.full((8, 8, 3), 100, np.uint8)
    cv2.imwrite(str(tmp_path / "flat.png"), image)
    spec_mean = (100.0, 100.0, 100.0)
    segmenter = Segmenter(tiny_checkpoint, mean_pixel=spec_mean)
    try:
        _, scores = segmenter.run(image[None], scores=True)
    finally:
        segmenter.close()
    stored = checkpoint.read_variables(tiny_checkpoint)
    weights = {name.split("/")[1]: value.astype(np.float64) for name, value in stored.items()}
    want, _ = fcn8s_legacy_forward(image[None].astype(np.float64), weights, spec_mean)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # the .mat's own mean is not used once the sidecar is gone
    with_mat_mean, _ = fcn8s_legacy_forward(image[None].astype(np.float64), weights, TINY_MEAN)
    assert np.abs(scores - with_mat_mean).max() > 1e-3 * np.abs(want).max()


def test_cli_errors_are_one_line(tmp_path, tiny_checkpoint):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((5, 7, 3), np.uint8))
    run = subprocess.run([sys.executable, "-m", "fcn_graph.infer", str(tmp_path / "a.png"),
                          "--checkpoint", str(tmp_path / "no_ckpt")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("fcn_graph.infer: error")]
    assert len(errors) == 1 and "no_ckpt" in errors[0]
    assert "Traceback" not in run.stderr


def test_config_names_the_checkpoint_directory(tmp_path, tiny_checkpoint):
    config = tmp_path / "run.json"
    config.write_text('// comments allowed\n{"train": {"log_dir": "%s"}}\n'
                      % os.path.dirname(tiny_checkpoint))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((5, 7, 3), np.uint8))
    out = str(tmp_path / "out")
    assert infer.main([str(tmp_path / "a.png"), "--config", str(config), "--output-dir", out]) == 0
    assert os.path.exists(os.path.join(out, "a.png"))
    with pytest.raises(SystemExit):
        infer.main([str(tmp_path / "a.png")])  # neither --checkpoint nor --config
