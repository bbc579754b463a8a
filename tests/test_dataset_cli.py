"""python -m fcn_graph.dataset check and convert, on every annotation format."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from datafixtures import write_rgb
from owndata import EXPECTED_1_CLASS, write_coco_single, write_cvat_masks, write_labelme

from fcn_graph import dataset
from fcn_graph.core.errors import run_cli
from fcn_graph.core.fileio import OUTPUT_RECORD
from fcn_graph.data import datasets
from fcn_graph.data.image_files import read_image
from fcn_graph.training.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITERS = {"coco": write_coco_single, "labelme": write_labelme, "colour_masks": write_cvat_masks}


def make(tmp_path, kind, seed=0):
    root = tmp_path / kind
    WRITERS[kind](str(root), np.random.default_rng(seed))
    config = tmp_path / f"{kind}.json"
    config.write_text(json.dumps({"data": {"kind": kind, "root": str(root),
                                           "val_fraction": 0.34}}))
    return root, str(config)


def items(config_args):
    """{stem: (image, label)} of both splits of a config, through the pipeline's reader."""
    config = load_config(None, config_args)
    found = {}
    for split in (config.data.train_split, config.data.val_split):
        files = datasets.open_config_split(config, split)
        k = len(files.class_names)
        for image, label in zip(files.image_paths, files.label_paths):
            stem = os.path.splitext(os.path.basename(label if files.kind == "labelme"
                                                     else image))[0]
            found[stem] = datasets.read_pair(image, label, k, files.label_offset, files.reader)
    return found, files.class_names


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_convert_gives_the_folder_layout_with_the_same_pixels(tmp_path, kind, capsys):
    root, config = make(tmp_path, kind)
    out = tmp_path / "out"
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out),
                                  "--quiet"]) == 0
    source, names = items(["data.kind=" + kind, f"data.root={root}", "data.val_fraction=0.34"])
    folder, folder_names = items(["data.kind=folder", f"data.root={out}"])
    assert folder_names == names and sorted(folder) == sorted(source)
    for stem, (image, label) in source.items():
        np.testing.assert_array_equal(folder[stem][1], label)
        np.testing.assert_array_equal(folder[stem][0], image)
    assert "wrote" in capsys.readouterr().out
    # A second run resumes: nothing left to write; the record is unchanged.
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out),
                                  "--quiet"]) == 0
    assert "wrote 0 item(s)" in capsys.readouterr().out


def test_convert_refuses_a_folder_it_did_not_create_and_a_changed_file(tmp_path, capsys):
    root, config = make(tmp_path, "colour_masks")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out)]) == 2
    assert "was not created by convert" in capsys.readouterr().err
    os.remove(out / "notes.txt")
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out),
                                  "--quiet"]) == 0
    (out / "classes.txt").write_text("edited by hand\n")
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "classes.txt: exists and was not written by fcn_graph" in err
    assert (out / "classes.txt").read_text() == "edited by hand\n"


def test_convert_of_another_source_rewrites_everything(tmp_path, capsys):
    root, config = make(tmp_path, "coco")
    out = tmp_path / "out"
    argv = ["convert", "--config", config, "--out", str(out), "--quiet"]
    assert run_cli(dataset.main, argv) == 0
    assert run_cli(dataset.main, argv + ["--set", "data.coco_crowd=class"]) == 0
    assert "wrote 3 item(s)" in capsys.readouterr().out.splitlines()[-1]
    folder, _ = items(["data.kind=folder", f"data.root={out}"])
    np.testing.assert_array_equal(folder["img1"][1], EXPECTED_1_CLASS)


def test_an_interrupted_convert_resumes(tmp_path, monkeypatch, capsys):
    root, config = make(tmp_path, "coco")
    out = tmp_path / "out"
    from fcn_graph.data import convert as dataset_convert

    real, calls = dataset_convert._write_item, []

    def fail_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(dataset_convert, "_write_item", fail_second)
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out),
                                  "--quiet"]) == 130
    assert not [n for n in os.listdir(out / "labels") if ".tmp" in n]
    assert len(os.listdir(out / "labels")) == 1
    monkeypatch.setattr(dataset_convert, "_write_item", real)
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(out),
                                  "--quiet"]) == 0
    assert "wrote 2 item(s)" in capsys.readouterr().out
    assert sorted(os.listdir(out / "labels")) == ["img1.png", "img2.png", "img3.png"]
    assert (out / OUTPUT_RECORD).exists()


def test_check_reports_a_clean_dataset(tmp_path, capsys, monkeypatch):
    root, config = make(tmp_path, "colour_masks")
    monkeypatch.chdir(tmp_path)
    assert run_cli(dataset.main, ["check", "--config", config, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "items: train 2, val 1" in out and "dataset check: clean" in out
    assert "image sizes (WxH): min 7x6, median 7x6, max 7x6" in out
    chart = read_image(str(tmp_path / "class_frequency.png"))
    assert chart.shape[1] == 720 and (chart < 128).any()
    # the chart is replaced by the next check, but not a file of the user's
    assert run_cli(dataset.main, ["check", "--config", config, "--quiet"]) == 0
    write_rgb(str(tmp_path / "mine.png"), np.zeros((2, 2, 3), np.uint8))
    assert run_cli(dataset.main, ["check", "--config", config, "--quiet",
                                  "--chart", "mine.png"]) == 2
    assert "mine.png: exists and was not written by fcn_graph" in capsys.readouterr().err


def test_check_counts_shares_and_warnings(tmp_path, capsys, monkeypatch):
    root, config = make(tmp_path, "labelme")
    monkeypatch.chdir(tmp_path)
    # a fourth file: the same embedded image as c.json
    (root / "d.json").write_text((root / "c.json").read_text())
    assert run_cli(dataset.main, ["check", "--config", config, "--quiet"]) == 1
    out = capsys.readouterr().out
    # a: 12 cat, 6 dog; b: 13 cat, 4 ignored; c, d: nothing; 63 pixels each
    labelled = 4 * 63 - 4
    assert f"    1  {'cat':<24} {100 * 25 / labelled:7.2f}%  2\n" in out
    assert f"    2  {'dog':<24} {100 * 6 / labelled:7.2f}%  1\n" in out
    assert "ignored (255) pixels: 4" in out
    assert "labelme file(s) with no shapes" in out
    assert "the same image as" in out and "warning" in out


def test_check_warns_of_ignored_crowd_regions(tmp_path, capsys, monkeypatch):
    root, config = make(tmp_path, "coco")
    monkeypatch.chdir(tmp_path)
    status = run_cli(dataset.main, ["check", "--config", config, "--quiet"])
    out = capsys.readouterr().out
    assert status == 1 and "1 crowd annotation(s) (iscrowd 1) become the ignore label" in out
    assert run_cli(dataset.main, ["check", "--config", config, "--quiet", "--set",
                                  "data.coco_crowd=class"]) == 0


def test_check_names_every_bad_file(tmp_path, capsys, monkeypatch):
    root, config = make(tmp_path, "colour_masks")
    monkeypatch.chdir(tmp_path)
    (root / "JPEGImages" / "frame_000.png").write_bytes(b"garbage")
    ids = np.zeros((6, 7), np.uint8)
    mask = np.zeros((6, 7, 3), np.uint8)
    mask[0, 0] = (9, 9, 9)
    write_rgb(str(root / "SegmentationClass" / "frame_001.png"), mask)
    write_rgb(str(root / "SegmentationClass" / "frame_002.png"), np.zeros((4, 7, 3), np.uint8))
    assert run_cli(dataset.main, ["check", "--config", config, "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "frame_000.png: not a readable image" in out
    assert "frame_001.png: colours not in" in out and "(9, 9, 9) in 1 pixels" in out
    assert "frame_002.png: label is 7x4 (WxH)" in out
    assert "dataset check: 3 error(s)" in out
    assert ids.sum() == 0


def test_check_reports_values_out_of_range(tmp_path, capsys, monkeypatch):
    root, config = make(tmp_path, "colour_masks")
    monkeypatch.chdir(tmp_path)
    assert run_cli(dataset.main, ["convert", "--config", config, "--out", str(tmp_path / "f"),
                                  "--quiet"]) == 0
    from fcn_graph.data.image_files import write_label_png

    label = np.zeros((6, 7), np.uint8)
    label[1, 1:3] = 7
    write_label_png(str(tmp_path / "f" / "labels" / "frame_001.png"), label)
    folder = tmp_path / "folder.json"
    folder.write_text(json.dumps({"data": {"kind": "folder", "root": str(tmp_path / "f")}}))
    assert run_cli(dataset.main, ["check", "--config", str(folder), "--quiet"]) == 2
    assert "frame_001.png: 2 pixels with values [7] outside 0..2 and not 255" in \
        capsys.readouterr().out


def test_help_does_not_load_tensorflow():
    code = ("import sys\nfrom fcn_graph import dataset\n"
            "try:\n    dataset.main(['check', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow loaded'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--chart" in result.stdout


def test_command_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        dataset.main(["check"])
    assert exit_info.value.code == 2 and "--config is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dataset.main([])
    assert "expected a command" in capsys.readouterr().err
