"""Inputs nobody tried: FIFOs, links that lead nowhere, folders inside folders,
names that are not UTF-8, split lists and `.mat` files that repeat themselves,
and a missing image reported before any model loads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from blocking import within
from datafixtures import write_rgb
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers, write_tiny_checkpoint

from fcn_graph import infer, port
from fcn_graph.core import fileio
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.data import datasets
from fcn_graph.engines import images as images_module
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat

NUM_CLASSES = 4


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return write_tiny_checkpoint(tmp_path, NUM_CLASSES)


def _error_line(capsys, main, argv, prog):
    """Run a command through run_cli; it must exit 2 with one error line."""
    code = within(60, run_cli, main, [str(a) for a in argv], prog)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    return err.strip()


def _links(tmp_path, name):
    """A symbolic link loop and a dangling link, named NAME_loop and NAME_dangling."""
    loop, dangling = tmp_path / f"{name}_loop", tmp_path / f"{name}_dangling"
    os.symlink(loop.name, loop)
    os.symlink("nowhere", dangling)
    return loop, dangling


# -- FIFOs and links, refused by every reader without blocking ---------------------------

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@needs_fifo
@pytest.mark.parametrize("verb", ["inspect", "mat2ckpt", "keras-h5", "ckpt2mat"])
def test_port_refuses_a_fifo_naming_it_without_blocking(tmp_path, capsys, verb):
    fifo = tmp_path / ("weights.h5" if verb == "keras-h5" else "weights.mat")
    os.mkfifo(fifo)
    if verb == "ckpt2mat":  # a checkpoint whose .index is a FIFO
        fifo = tmp_path / "model.ckpt"
        os.mkfifo(str(fifo) + ".index")
        (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    argv = [verb, fifo]
    if verb in ("mat2ckpt", "keras-h5"):
        argv += ["--num-classes", "3", "--out", tmp_path / "ck" / "start"]
    elif verb == "ckpt2mat":
        argv += ["--out", tmp_path / "back.mat"]
    err = _error_line(capsys, port.main, argv, "fcn_graph.port")
    assert "is a FIFO" in err and "not found" not in err
    assert not (tmp_path / "ck").exists() or not os.listdir(tmp_path / "ck")


@pytest.mark.parametrize("verb", ["inspect", "mat2ckpt", "keras-h5"])
def test_port_names_link_loops_and_dangling_links(tmp_path, capsys, verb):
    loop, dangling = _links(tmp_path, "weights")
    for path, words in ((loop, f"{loop}: is a symbolic link loop"),
                        (dangling, f"{dangling}: is a dangling symbolic link to nowhere")):
        argv = [verb, path]
        if verb != "inspect":
            argv += ["--num-classes", "3", "--out", tmp_path / "ck" / "start"]
        assert words in _error_line(capsys, port.main, argv, "fcn_graph.port")


def test_log_dir_and_output_folders_name_link_loops_and_dangling_links(tmp_path):
    from fcn_graph.training import loop as training
    loop, dangling = _links(tmp_path, "runs")
    with pytest.raises(UserError, match=r"runs_loop is a symbolic link loop; expected a dir"):
        training._prepare_log_dir(str(loop))
    with pytest.raises(UserError, match=r"runs_dangling is a dangling symbolic link to nowhere"):
        training._prepare_log_dir(str(dangling))
    with pytest.raises(UserError, match=r"--output-dir .*runs_loop: is a symbolic link loop"):
        fileio.ensure_output_dir(str(loop), "--output-dir")
    with pytest.raises(UserError, match=r"runs_dangling: is a dangling symbolic link to nowhere"):
        fileio.ensure_output_dir(str(dangling), "--output-dir")


@needs_fifo
def test_split_list_that_is_a_fifo_or_a_dangling_link_is_refused(folder_root):
    listed = os.path.join(folder_root, "train.txt")
    os.mkfifo(listed)
    with pytest.raises(UserError, match=r"train.txt: is a FIFO; expected a split file"):
        within(30, datasets.open_split, "folder", folder_root, "train")
    os.remove(listed)
    os.symlink("gone.txt", listed)  # not silently replaced by a seeded split
    with pytest.raises(UserError, match=r"train.txt: is a dangling symbolic link to gone.txt"):
        datasets.open_split("folder", folder_root, "train")


@needs_fifo
def test_dataset_image_that_is_a_fifo_is_named_as_such(folder_root):
    (open(os.path.join(folder_root, "train.txt"), "w")).write("img1\nimg2\n")
    image = os.path.join(folder_root, "images", "img2.jpg")
    os.remove(image)
    os.mkfifo(image)
    with pytest.raises(UserError, match=r"img2.jpg: is a FIFO \(listed in .*train.txt\)"):
        datasets.open_split("folder", folder_root, "train")


# -- folders of images ------------------------------------------------------------------

def test_subfolders_of_an_input_folder_get_a_note_each(tmp_path, capsys):
    images = tmp_path / "images"
    write_rgb(str(images / "a.png"), np.zeros((5, 7, 3), np.uint8))
    (images / "more").mkdir()
    (images / "older.d").mkdir()
    (images / ".hidden").mkdir()
    assert images_module.list_images([str(images)]) == [str(images / "a.png")]
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"note: skipping {images / 'more'}/: a subfolder (only the images directly "
                     f"in {images} are read)",
                     f"note: skipping {images / 'older.d'}/: a subfolder (only the images "
                     f"directly in {images} are read)"]


# -- duplicates ------------------------------------------------------------------------

def test_an_image_listed_twice_in_a_split_names_the_file_and_both_lines(folder_root):
    listed = os.path.join(folder_root, "train.txt")
    with open(listed, "w") as handle:
        handle.write("# training images\nimg1\nimg2\n\nimg1 extra columns\nimg3\n")
    with pytest.raises(UserError, match=r"train.txt: line 5 lists 'img1' again \(first on "
                                        r"line 2\); expected each image once"):
        datasets.open_split("folder", folder_root, "train")
    with open(listed, "w") as handle:
        handle.write("img1\nimg2\nimg3\n")
    assert len(datasets.open_split("folder", folder_root, "train")) == 3


def _mat_with_extra_layer(tmp_path, copy_of, rename=None):
    """A new-layout tiny .mat with a copy of layer `copy_of` appended (renamed
    to `rename` when given), the copy's weights made different."""
    path = str(tmp_path / "vgg.mat")
    write_vgg_mat(path, make_vgg_layers(), TINY_MEAN, layout="new")
    mat = scipy.io.loadmat(path)
    cells = mat["layers"]
    index = [str(np.asarray(c.flat[0]["name"].flat[0]).flat[0]) for c in cells.flat].index(copy_of)
    extra = np.empty((1, 1), dtype=object)
    extra[0, 0] = cells.flat[index].copy()
    layer = extra[0, 0]
    weights = layer["weights"].flat[0]
    weights.flat[0] = weights.flat[0] * 0 + 7.0
    if rename is not None:
        layer["name"].flat[0] = np.array([rename])
    mat["layers"] = np.concatenate([cells, extra], axis=1)
    scipy.io.savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})
    return path


def test_a_mat_with_a_layer_twice_is_refused_naming_it(tmp_path):
    path = _mat_with_extra_layer(tmp_path, "conv3_2")
    with pytest.raises(UserError, match=r"layer 'conv3_2' appears twice \(layers\{13\} and "
                                        r"layers\{38\}\); expected each layer once"):
        load_vgg_mat(path)


def test_a_mat_with_an_unknown_layer_with_weights_is_refused_naming_it(tmp_path):
    path = _mat_with_extra_layer(tmp_path, "conv5_4", rename="conv5_5")
    with pytest.raises(UserError, match=r"layers\{38\} 'conv5_5' \(type 'conv'\) has weights but "
                                        r"is not a layer of imagenet-vgg-verydeep-19"):
        load_vgg_mat(path)


# -- port --out ------------------------------------------------------------------------

def test_port_out_naming_a_folder_is_refused_before_reading_and_a_prefix_gets_its_folders(
        tmp_path, tiny_mat, capsys):
    out = str(tmp_path / "ck" / "sub") + os.sep
    err = _error_line(capsys, port.main, ["mat2ckpt", tiny_mat, "--num-classes", "3", "--out",
                                          out], "fcn_graph.port")
    assert f"--out {out}: names a folder; expected a checkpoint prefix to write, such as " \
           f"{out}start (its folder is created where missing)" in err
    assert not (tmp_path / "ck").exists()
    assert port.main(["mat2ckpt", tiny_mat, "--num-classes", "3", "--out", out + "start"]) == 0
    assert os.path.isfile(out + "start.index")


# -- names that are not UTF-8 --------------------------------------------------------------

def test_infer_reads_and_writes_names_that_are_not_utf8(tmp_path, tiny_checkpoint, capsys):
    images, out = os.fsencode(tmp_path / "images"), os.fsencode(tmp_path / "out")
    os.makedirs(images)
    write_rgb(os.fsdecode(os.path.join(images, b"caf\xe9.png")),
              np.full((9, 11, 3), 90, np.uint8))
    for _ in range(2):  # the second run overwrites what the record says it wrote
        code = run_cli(infer.main, [os.fsdecode(images), "--checkpoint", tiny_checkpoint,
                                    "--output-dir", os.fsdecode(out)], "fcn_graph.infer")
        printed = capsys.readouterr()
        assert code == 0, printed.err
        assert "caf\\udce9.png" in printed.out  # printed escaped, never a traceback
    assert sorted(os.listdir(out)) == sorted([os.fsencode(fileio.OUTPUT_RECORD),
                                              b"caf\xe9.png", b"caf\xe9_overlay.png"])
    with open(os.path.join(out, os.fsencode(fileio.OUTPUT_RECORD)), "rb") as handle:
        raw = handle.read()
    raw.decode("utf-8")  # the record stays UTF-8 text
    names = {os.fsencode(name) for name in json.loads(raw)["files"]}
    assert names == {b"caf\xe9.png", b"caf\xe9_overlay.png"}


def test_a_message_naming_a_file_that_is_not_utf8_prints_without_raising(tmp_path, capfd):
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfe.mat")
    code = run_cli(port.main, ["mat2ckpt", missing, "--num-classes", "3", "--out",
                               str(tmp_path / "ck" / "x")], "fcn_graph.port")
    err = capfd.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "\\udcff\\udcfe.mat: no such file" in err


# -- inputs checked before the model loads -----------------------------------------------

@pytest.mark.parametrize("problem", ["missing", "fifo", "folder_link_loop"])
def test_a_bad_input_image_is_refused_before_any_model_library_loads(tmp_path, problem):
    image = tmp_path / "photo.png"
    if problem == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("needs FIFOs")
        os.mkfifo(image)
    elif problem == "folder_link_loop":
        os.symlink(image.name, image)
    code = ("import sys\n"
            "from fcn_graph import infer\n"
            "from fcn_graph.core.errors import run_cli\n"
            f"code = run_cli(infer.main, [{str(image)!r}, '--checkpoint', "
            f"{str(tmp_path / 'ckpt')!r}, '--output-dir', {str(tmp_path / 'out')!r}], "
            "'fcn_graph.infer')\n"
            "loaded = [m for m in ('tensorflow', 'onnxruntime') if m in sys.modules]\n"
            "assert not loaded, f'loaded {loaded}'\n"
            "sys.exit(code)\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    words = {"missing": "no such file", "fifo": "is a FIFO",
             "folder_link_loop": "is a symbolic link loop"}[problem]
    assert run.stderr == f"fcn_graph.infer: error: {image}: {words}; expected an image file " \
                         "or a folder of images\n"


# -- a log_dir whose checkpoints a running training prunes ---------------------------------

def _two_checkpoints(tmp_path):
    """runs/model.ckpt-1 and runs/model.ckpt-2, tiny and different."""
    mat = str(tmp_path / "vgg.mat")
    write_vgg_mat(mat, make_vgg_layers(), TINY_MEAN, fc=make_fc_layers(TINY_WIDTHS["conv5_4"]))
    runs = tmp_path / "runs"
    for step in (1, 2):
        assert port.main(["mat2ckpt", mat, "--num-classes", str(NUM_CLASSES), "--fc-width", "6",
                          "--seed", str(step), "--out", str(runs / f"model.ckpt-{step}")]) == 0
    return runs


def _delete_on_first_call(monkeypatch, module, name):
    """Wrap module.name so that its first call deletes the files of the
    checkpoint it is given (as a pruning training would) before running."""
    original, deleted = getattr(module, name), []

    def wrapper(prefix, *args, **kwargs):
        if not deleted:
            for path in os.listdir(os.path.dirname(prefix)):
                if path.startswith(os.path.basename(prefix) + "."):
                    os.remove(os.path.join(os.path.dirname(prefix), path))
            deleted.append(prefix)
        return original(prefix, *args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return deleted


def test_export_falls_back_to_the_next_checkpoint_when_the_chosen_one_is_pruned(
        tmp_path, monkeypatch, capsys):
    from fcn_graph import export
    from fcn_graph.weights import checkpoint
    runs = _two_checkpoints(tmp_path)
    deleted = _delete_on_first_call(monkeypatch, checkpoint, "model_spec_from_checkpoint")
    out = tmp_path / "model.pb"
    code = run_cli(export.main, ["--checkpoint", str(runs), "--format", "frozen", "--out",
                                 str(out), "--no-verify"], "fcn_graph.export")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert deleted == [str(runs / "model.ckpt-2")]
    assert (f"note: the checkpoint {runs / 'model.ckpt-2'} was deleted while being read "
            f"(a training pruning old checkpoints?); using {runs / 'model.ckpt-1'}") in printed.err
    assert "cannot write" not in printed.err and out.is_file()
    assert f"read {runs / 'model.ckpt-1'}:" in printed.out


def test_infer_falls_back_to_the_next_checkpoint_when_the_chosen_one_is_pruned(
        tmp_path, monkeypatch, capsys):
    from fcn_graph.engines import segmenter
    runs = _two_checkpoints(tmp_path)
    write_rgb(str(tmp_path / "a.png"), np.full((9, 11, 3), 60, np.uint8))
    deleted = _delete_on_first_call(monkeypatch, segmenter, "make_segmenter")
    code = run_cli(infer.main, [str(tmp_path / "a.png"), "--checkpoint", str(runs), "--engine",
                                "tf", "--output-dir", str(tmp_path / "out")], "fcn_graph.infer")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert deleted == [str(runs / "model.ckpt-2")]
    assert f"using {runs / 'model.ckpt-1'}" in printed.err
    assert (tmp_path / "out" / "a.png").is_file()


def test_a_read_failure_with_the_files_still_there_is_not_retried(tmp_path, monkeypatch):
    from fcn_graph.weights import checkpoint
    runs = _two_checkpoints(tmp_path)
    calls = []

    def use(prefix):
        calls.append(prefix)
        raise UserError(f"{prefix}: broken")

    with pytest.raises(UserError, match="model.ckpt-2: broken"):
        checkpoint.with_newest(str(runs), use)
    assert calls == [str(runs / "model.ckpt-2")]


@pytest.mark.parametrize("argv, words", [
    (["fcn_graph.port", "mat2ckpt", "{tmp}/vgg.mat", "--num-classes", "3", "--out", "{tmp}/c"],
     "{tmp}/vgg.mat: no such file; expected a MatConvNet VGG19 weight file"),
    (["fcn_graph.port", "keras-h5", "{tmp}/fifo", "--num-classes", "3", "--out", "{tmp}/c"],
     "{tmp}/fifo: is a FIFO; expected a Keras VGG19 weight file"),
    (["fcn_graph.export", "--checkpoint", "{tmp}/model.ckpt-9", "--format", "frozen", "--out",
      "{tmp}/m.pb"], "{tmp}/model.ckpt-9: no checkpoint here"),
])
def test_port_and_export_check_their_input_before_tensorflow_loads(tmp_path, argv, words):
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
    elif "fifo" in words:
        pytest.skip("needs FIFOs")
    module, *rest = [a.format(tmp=tmp_path) for a in argv]
    code = ("import sys, importlib\n"
            "from fcn_graph.core.errors import run_cli\n"
            f"main = importlib.import_module({module!r}).main\n"
            f"code = run_cli(main, {rest!r}, {module!r})\n"
            "loaded = [m for m in ('tensorflow', 'onnxruntime') if m in sys.modules]\n"
            "assert not loaded, f'loaded {loaded}'\n"
            "sys.exit(code)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"{module}: error: {words.format(tmp=tmp_path)}"), run.stderr
    assert run.stderr.count("\n") == 1


def test_images_labels_and_config_files_name_link_loops_and_dangling_links(tmp_path):
    from fcn_graph.data import image_files
    from fcn_graph.training.config import load_config
    loop, dangling = _links(tmp_path, "file")
    for read in (image_files.read_image, image_files.read_label):
        with pytest.raises(UserError, match=r"file_loop: is a symbolic link loop \(expected"):
            read(str(loop))
        with pytest.raises(UserError, match=r"file_dangling: is a dangling symbolic link to "
                                            r"nowhere \(expected"):
            read(str(dangling))
    with pytest.raises(UserError, match=r"file_loop: is a symbolic link loop; expected a JSON"):
        load_config(str(loop))
    with pytest.raises(UserError, match=r"file_dangling: is a dangling symbolic link to nowhere"):
        load_config(str(dangling))


def test_evaluate_reads_a_dataset_image_named_in_bytes_that_are_not_utf8(
        tmp_path, tiny_checkpoint, capsys):
    from datafixtures import block_label, write_gray

    from fcn_graph import evaluate
    root = os.fsencode(tmp_path / "data")
    rng = np.random.default_rng(5)
    for stem in (b"plain", b"caf\xe9"):
        write_rgb(os.fsdecode(os.path.join(root, b"images", b"val", stem + b".png")),
                  rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        write_gray(os.fsdecode(os.path.join(root, b"labels", b"val", stem + b".png")),
                   block_label(rng, [0, 1, 2], h=12, w=10))
    out = os.fsencode(tmp_path / "pred")
    code = run_cli(evaluate.main, ["--set", "data.kind=folder", "--set",
                                   f"data.root={os.fsdecode(root)}", "--split", "val",
                                   "--checkpoint", tiny_checkpoint,
                                   "--save-predictions", os.fsdecode(out)], "fcn_graph.evaluate")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert sorted(os.listdir(out)) == sorted([os.fsencode(fileio.OUTPUT_RECORD),
                                              b"caf\xe9.png", b"plain.png"])


def test_a_calibration_folder_that_is_a_link_loop_or_dangling_is_named_as_such(tmp_path):
    from fcn_graph.engines.int8_model import calibration_files
    loop, dangling = _links(tmp_path, "calib")
    with pytest.raises(UserError, match=r"--calibration .*calib_loop: is a symbolic link loop"):
        calibration_files(str(loop))
    with pytest.raises(UserError, match=r"calib_dangling: is a dangling symbolic link to nowhere"):
        calibration_files(str(dangling))


@needs_fifo
def test_port_inspect_refuses_a_savedmodel_whose_graph_is_a_fifo(tmp_path, capsys):
    saved = tmp_path / "saved"
    saved.mkdir()
    os.mkfifo(saved / "saved_model.pb")
    err = _error_line(capsys, port.main, ["inspect", saved], "fcn_graph.port")
    assert f"{saved / 'saved_model.pb'}: is a FIFO; expected the SavedModel's graph" in err
