"""No command writes over what it did not create, every output path is checked
with a one-line error, and inputs that are not regular files are refused
without blocking: infer, evaluate, export, port and bench."""

import errno
import os

import cv2
import numpy as np
import pytest
from blocking import within
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from bench import harness
from fcn_graph import evaluate, export, infer, port
from fcn_graph.core import fileio
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.data import image_files
from fcn_graph.weights.matconvnet import write_vgg_mat


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny .mat and two checkpoints made from it: 4 classes, and 21 (VOC)."""
    root = tmp_path_factory.mktemp("weights")
    mat = str(root / "vgg.mat")
    write_vgg_mat(mat, make_vgg_layers(), TINY_MEAN, fc=make_fc_layers(TINY_WIDTHS["conv5_4"]))
    found = {"mat": mat}
    for name, classes in (("ckpt", 4), ("voc", 21)):
        found[name] = str(root / name / "start")
        assert port.main(["mat2ckpt", mat, "--num-classes", str(classes), "--fc-width", "6",
                          "--out", found[name]]) == 0
    return found


def _error(capsys, main, *argv, prog="prog", early=True):
    """Run a command as `python -m` would; return its one-line error. `early`:
    the error comes before the command starts its work (nothing but notes
    printed before it)."""
    code = run_cli(main, [str(a) for a in argv], prog=prog)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not (early and line.startswith("note: "))]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert not early or len(lines) == 1, err
    assert "Traceback" not in err
    return errors[0]


def _image(path, seed=0, size=(9, 11)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def _snapshot(directory):
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))
            if os.path.isfile(os.path.join(directory, name))}


# -- infer: outputs never over inputs or files it did not write ------------------------

def test_infer_refuses_to_write_over_its_inputs(tmp_path, weights, capsys):
    images = tmp_path / "images"
    _image(images / "a.png")
    _image(images / "b.jpg", seed=1)
    before = _snapshot(images)
    # The input folder itself, the same folder through a symlink, and an input
    # reached through a symlinked file.
    os.symlink(images, tmp_path / "link")
    for out in (images, tmp_path / "link"):
        err = _error(capsys, infer.main, images, "--checkpoint", weights["ckpt"],
                     "--output-dir", out)
        assert "a.png: is the input" in err and str(images / "a.png") in err
        assert _snapshot(images) == before
    # An output name that is a symlink to an input: refused, the input kept.
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(images / "a.png", linked / "a.png")
    err = _error(capsys, infer.main, images / "a.png", "--checkpoint", weights["ckpt"],
                 "--output-dir", linked)
    assert f"{linked / 'a.png'}: is a symbolic link" in err
    # An output folder holding a hard link to an input: still the same file.
    out = tmp_path / "out"
    out.mkdir()
    os.link(images / "a.png", out / "a.png")
    err = _error(capsys, infer.main, images / "a.png", "--checkpoint", weights["ckpt"],
                 "--output-dir", out)
    assert f"{out / 'a.png'}: is the input {images / 'a.png'}" in err
    assert _snapshot(images) == before


def test_infer_shared_stems_keep_their_extension(tmp_path, weights, capsys):
    images = tmp_path / "images"
    _image(images / "a.jpg")
    _image(images / "a.png", seed=1)
    _image(images / "b.png", seed=2)
    out = tmp_path / "out"
    assert infer.main([str(images), "--checkpoint", weights["ckpt"], "--output-dir",
                       str(out)]) == 0
    printed = capsys.readouterr()
    assert "a.jpg" in printed.err and "a_jpg.png, a_png.png" in printed.err
    written = sorted(os.listdir(out))
    assert written == [fileio.OUTPUT_RECORD, "a_jpg.png", "a_jpg_overlay.png", "a_png.png",
                       "a_png_overlay.png", "b.png", "b_overlay.png"]
    # each output belongs to its own input
    overlay_jpg = cv2.imread(str(out / "a_jpg_overlay.png"))
    overlay_png = cv2.imread(str(out / "a_png_overlay.png"))
    assert not np.array_equal(overlay_jpg, overlay_png)

    # Same name in two folders, and a name that another input's output takes.
    _image(tmp_path / "x" / "c.jpg")
    _image(tmp_path / "y" / "c.jpg", seed=3)
    err = _error(capsys, infer.main, tmp_path / "x" / "c.jpg", tmp_path / "y" / "c.jpg",
                 "--checkpoint", weights["ckpt"], "--output-dir", tmp_path / "out2")
    assert str(tmp_path / "x" / "c.jpg") in err and str(tmp_path / "y" / "c.jpg") in err
    assert "both would write c_jpg.png" in err
    _image(tmp_path / "z" / "d_overlay.png")
    _image(tmp_path / "z" / "d.png", seed=4)
    err = _error(capsys, infer.main, tmp_path / "z", "--checkpoint", weights["ckpt"],
                 "--output-dir", tmp_path / "out3")
    assert "both would write d_overlay.png" in err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_infer_overwrites_only_the_files_it_wrote(tmp_path, weights, capsys):
    images = tmp_path / "images"
    _image(images / "a.png")
    _image(images / "b.png", seed=1)
    out = tmp_path / "out"
    argv = [str(images), "--checkpoint", weights["ckpt"], "--output-dir", str(out)]
    assert infer.main(argv) == 0
    assert infer.main(argv + ["--save-scores"]) == 0  # its own outputs: replaced
    capsys.readouterr()
    assert (out / "a_scores.npy").exists()

    # A file edited since infer wrote it is the user's now.
    label = image_files.read_label(out / "b.png")
    image_files.write_label_png(out / "b.png", np.zeros_like(label))
    edited = (out / "b.png").read_bytes()
    err = _error(capsys, infer.main, *argv)
    assert f"{out / 'b.png'}: exists and was not written by fcn_graph" in err
    assert (out / "b.png").read_bytes() == edited

    # A user's file with a name infer would write, in a fresh folder.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a_overlay.png").write_bytes(b"my own picture")
    err = _error(capsys, infer.main, images / "a.png", "--checkpoint", weights["ckpt"],
                 "--output-dir", mine)
    assert f"{mine / 'a_overlay.png'}: exists and was not written by fcn_graph" in err
    assert (mine / "a_overlay.png").read_bytes() == b"my own picture"
    assert not (mine / "a.png").exists(), "nothing is written before every output is checked"

    # A record that is not one: refused, naming it.
    (mine / fileio.OUTPUT_RECORD).write_bytes(b"\xff\xfe garbage")
    err = _error(capsys, infer.main, images / "a.png", "--checkpoint", weights["ckpt"],
                 "--output-dir", mine)
    assert f"{mine / fileio.OUTPUT_RECORD}: not a readable record" in err


def test_a_full_disk_while_writing_is_one_line_and_resumable(tmp_path, weights, capsys,
                                                             monkeypatch):
    images = tmp_path / "images"
    _image(images / "a.png")
    out = tmp_path / "out"
    argv = [images, "--checkpoint", weights["ckpt"], "--output-dir", out]

    def full(path, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(image_files, "write_image", full)
        err = _error(capsys, infer.main, *argv, early=False)
    assert f"{out / 'a_overlay.png'}: cannot write (No space left on device)" in err
    assert fileio.OutputFolder(out, "--output-dir").owns("a.png")
    assert infer.main([str(a) for a in argv]) == 0  # the next run replaces its own file
    assert (out / "a_overlay.png").exists()


def test_a_killed_runs_claimed_files_stay_its_own(tmp_path):
    """Files claimed but not yet recorded (a run killed mid-way) may be
    replaced by the next run; the record drops files that are gone."""
    out = tmp_path / "out"
    folder = fileio.OutputFolder(out, "--output-dir")
    folder.claim(["a.png", "b.png"])
    (out / "a.png").write_bytes(b"half a run")  # written, never recorded
    again = fileio.OutputFolder(out, "--output-dir")
    assert again.owns("a.png") and "b.png" not in again.files
    again.claim(["a.png"])
    again.wrote("a.png")
    again.flush()
    (out / "a.png").write_bytes(b"changed by the user")
    with pytest.raises(UserError, match="exists and was not written by fcn_graph"):
        fileio.OutputFolder(out, "--output-dir").claim(["a.png"])


# -- inputs that are not regular files ---------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="needs FIFOs and /dev/zero")
def test_fifos_devices_and_folders_are_not_read_as_images(tmp_path, weights, capsys):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), ("/dev/zero", "a character device")):
        with pytest.raises(UserError, match=f"is {kind}, not a regular file"):
            within(30, image_files.read_image, str(path))
        with pytest.raises(UserError, match=f"is {kind}, not a regular file"):
            within(30, image_files.read_label, str(path))  # labels: Pillow would block
    err = within(60, _error, capsys, infer.main, fifo, "--checkpoint", weights["ckpt"],
                  "--output-dir", tmp_path / "out")
    assert f"{fifo}: is a FIFO; expected an image file" in err

    # In a folder: skipped with a note, the real image segmented.
    images = tmp_path / "images"
    _image(images / "real.png")
    os.mkfifo(images / "pipe.png")
    (images / "folder.jpg").mkdir()
    out = tmp_path / "out"
    code = within(60, infer.main, [str(images), "--checkpoint", weights["ckpt"],
                                    "--output-dir", str(out)])
    printed = capsys.readouterr()
    assert code == 0
    assert f"skipping {images / 'pipe.png'}: a FIFO" in printed.err
    assert f"skipping {images / 'folder.jpg'}: a directory" in printed.err
    assert sorted(os.listdir(out)) == [fileio.OUTPUT_RECORD, "real.png", "real_overlay.png"]


# -- every command checks its output paths ------------------------------------------------

def _bad_outputs(tmp_path):
    """A regular file, a folder, and a path under a regular file."""
    file = tmp_path / "file.txt"
    file.write_text("a user's file\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    return file, folder, file / "sub"


def test_infer_output_dir_checks(tmp_path, weights, capsys):
    file, _, under = _bad_outputs(tmp_path)
    image = _image(tmp_path / "a.png")
    run = ("--checkpoint", weights["ckpt"], "--output-dir")
    assert f"--output-dir {file}: is a regular file; expected a folder" in _error(
        capsys, infer.main, image, *run, file)
    assert f"--output-dir {under}: cannot create this folder; {file} is a regular file" in \
        _error(capsys, infer.main, image, *run, under)
    assert file.read_text() == "a user's file\n"


def test_an_unwritable_folder_is_named(tmp_path, weights, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileio.tempfile, "TemporaryFile", refuse)
    image = _image(tmp_path / "a.png")
    err = _error(capsys, infer.main, image, "--checkpoint", weights["ckpt"], "--output-dir",
                 tmp_path / "out")
    assert f"--output-dir {tmp_path / 'out'}: cannot write in this folder (Permission denied)" \
        in err
    err = _error(capsys, export.main, "--checkpoint", weights["ckpt"], "--format", "onnx",
                 "--out", tmp_path / "m.onnx")
    assert f"--out {tmp_path / 'm.onnx'}: folder {tmp_path}: cannot write in this folder" in err
    err = _error(capsys, port.main, "ckpt2mat", weights["ckpt"], "--out", tmp_path / "x.mat")
    assert "cannot write in this folder (Permission denied)" in err


def test_export_output_checks(tmp_path, weights, capsys):
    file, folder, under = _bad_outputs(tmp_path)
    ckpt = weights["ckpt"]

    def error(fmt, out, *extra):
        return _error(capsys, export.main, "--checkpoint", ckpt, "--format", fmt, "--out", out,
                      *extra)

    before = {name: os.path.getmtime(os.path.join(os.path.dirname(ckpt), name))
              for name in os.listdir(os.path.dirname(ckpt))}
    for fmt in ("frozen", "onnx"):
        assert f"--out {folder}: is a directory; expected a file to write" in error(fmt, folder)
        assert f"{file} is a regular file, not a folder" in error(fmt, under / "m.pb")
        for name in os.listdir(os.path.dirname(ckpt)):  # never a checkpoint's file
            target = os.path.join(os.path.dirname(ckpt), name)
            assert "is a file of a checkpoint; export never replaces one" in error(
                fmt, target, "--force")
    assert f"--out {file}: exists and was not written by fcn_graph; --force replaces only" in (
        error("frozen", file, "--force"))
    assert f"--out {file}: is a regular file; expected a SavedModel folder" in error(
        "savedmodel", file)
    assert f"--out {folder}: exists; refusing to replace it" in error("savedmodel", folder)
    assert f"--out {folder}: exists and was not written by fcn_graph" in error(
        "savedmodel", folder, "--force")
    assert file.read_text() == "a user's file\n"
    assert before == {name: os.path.getmtime(os.path.join(os.path.dirname(ckpt), name))
                      for name in os.listdir(os.path.dirname(ckpt))}

    # Missing folders are created, as every command does; an existing export
    # is replaced only with --force.
    out = tmp_path / "new" / "deeper" / "m.onnx"
    assert export.main(["--checkpoint", ckpt, "--format", "onnx", "--no-verify",
                        "--out", str(out)]) == 0
    first = out.read_bytes()
    assert "exists; refusing to replace it (pass --force" in error("onnx", out, "--no-verify")
    assert out.read_bytes() == first
    assert export.main(["--checkpoint", ckpt, "--format", "onnx", "--no-verify", "--force",
                        "--out", str(out)]) == 0


def test_port_never_replaces_a_checkpoint_or_a_file(tmp_path, weights, capsys):
    file, folder, under = _bad_outputs(tmp_path)
    ckpt, mat = weights["ckpt"], weights["mat"]
    directory = os.path.dirname(ckpt)
    before = {name: open(os.path.join(directory, name), "rb").read()
              for name in os.listdir(directory)}

    def error(*argv):
        return _error(capsys, port.main, *argv)

    start = ("mat2ckpt", mat, "--num-classes", 3, "--out")
    err = error(*start, ckpt)
    assert f"--out {ckpt}: {ckpt}.index exists; port never replaces a checkpoint" in err
    assert "already an fcn_graph checkpoint" not in error("legacy", ckpt, "--out", ckpt)
    # Any one of the prefix's files is enough.
    partial = tmp_path / "partial"
    (tmp_path / "partial.json").write_text("{}\n")
    assert f"{partial}.json exists" in error(*start, partial)
    (tmp_path / "data_only.data-00000-of-00001").write_bytes(b"")
    assert "data_only.data-00000-of-00001 exists" in error(*start, tmp_path / "data_only")
    assert f"--out {folder}: is a directory; expected a checkpoint prefix" in error(*start, folder)
    assert f"{file} is a regular file, not a folder" in error(*start, under / "x")
    assert f"--out {file}: exists; port never replaces a file" in error(
        "ckpt2mat", ckpt, "--out", file)
    assert f"--out {folder}: is a directory; expected a file" in error(
        "ckpt2mat", ckpt, "--out", folder)
    assert f"--out {mat}: exists" in error("ckpt2mat", ckpt, "--out", mat)
    assert before == {name: open(os.path.join(directory, name), "rb").read()
                      for name in os.listdir(directory)}
    assert file.read_text() == "a user's file\n"
    # Missing folders of --out are created.
    assert port.main(["ckpt2mat", ckpt, "--out", str(tmp_path / "a" / "b" / "again.mat")]) == 0


def test_evaluate_output_checks(tmp_path, weights, voc_root, capsys):
    file, folder, under = _bad_outputs(tmp_path)
    run = ("--set", "data.kind=voc", "--set", f"data.root={voc_root}",
           "--checkpoint", weights["voc"])
    assert f"--json {file}: exists and was not written by fcn_graph" in _error(
        capsys, evaluate.main, *run, "--json", file)
    assert f"--json {folder}: is a directory; expected a file" in _error(
        capsys, evaluate.main, *run, "--json", folder)
    assert f"{file} is a regular file, not a folder" in _error(
        capsys, evaluate.main, *run, "--json", under / "m.json")
    assert f"--save-predictions {file}: is a regular file; expected a folder" in _error(
        capsys, evaluate.main, *run, "--save-predictions", file)
    # The dataset's own label folder: its files are inputs, never overwritten.
    labels = os.path.join(voc_root, "SegmentationClass")
    before = _snapshot(labels)
    err = _error(capsys, evaluate.main, *run, "--save-predictions", labels)
    assert f"{os.path.join(labels, '2007_000003.png')}: is the input" in err
    assert _snapshot(labels) == before
    assert file.read_text() == "a user's file\n"
    # Its own outputs are replaced on a second run.
    out_json, out_dir = tmp_path / "m.json", tmp_path / "pred"
    for _ in range(2):
        assert evaluate.main([*run, "--json", str(out_json),
                              "--save-predictions", str(out_dir)]) == 0
    assert sorted(os.listdir(out_dir)) == [fileio.OUTPUT_RECORD, "2007_000003.png",
                                           "2007_000004.png"]


def test_bench_checks_out_before_running(tmp_path, capsys, monkeypatch):
    file, folder, under = _bad_outputs(tmp_path)

    def never(args):
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr(harness, "run_benchmark", never)
    assert f"--out {file}: exists and was not written by fcn_graph" in _error(
        capsys, harness.main, "--out", file)
    assert f"--out {folder}: is a directory; expected a file" in _error(
        capsys, harness.main, "--out", folder)
    assert f"{file} is a regular file, not a folder" in _error(
        capsys, harness.main, "--out", under / "r.json")
    assert file.read_text() == "a user's file\n"
