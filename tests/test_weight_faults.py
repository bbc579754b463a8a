"""Weights that enter are checked: NaN or infinite values and malformed mean
pixels in a `.mat`, a Keras `.h5`, a checkpoint or its sidecar, and damaged
checkpoint files (truncated or corrupted data, a missing shard, a garbled
index, a garbage `checkpoint` state file), each refused by every reader and
command with one line naming the file and what is wrong."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from blocking import within
from portfiles import write_keras_h5
from tfutil import build_graph, random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from fcn_graph import evaluate, export, infer, port
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.finite import check_mean_pixel, nonfinite
from fcn_graph.engines import onnx_engine
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint, kerash5
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat

tf1 = tf.compat.v1
DATA = ".data-00000-of-00001"
SPEC = ModelSpec(num_classes=3, fc_width=6, vgg_widths=tuple(TINY_WIDTHS.values()),
                           mean_pixel=TINY_MEAN)
COMMANDS = {"infer": infer.main, "evaluate": evaluate.main, "export": export.main,
            "port": port.main}


def _save(prefix, values=None, seed=0):
    """A tiny checkpoint with random weights (`values` replace some) and a sidecar."""
    graph, *_, variables = build_graph(SPEC)
    arrays = random_values(variables, seed=seed)
    arrays.update(values or {})
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        for name, value in arrays.items():  # assign_arrays itself refuses non-finite values
            sess.run(variables[name].initializer, {variables[name].initial_value: value})
        return checkpoint.save_model(sess, checkpoint.model_saver(variables), prefix, SPEC)


def _copy(prefix, directory, name="m"):
    """The files of checkpoint `prefix` copied to `directory/name`; returns the new prefix."""
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(str(directory), name)
    for suffix in (".index", DATA, ".json"):
        shutil.copy(prefix + suffix, target + suffix)
    return target


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    good = _save(str(root / "good" / "m"))
    graph, *_, variables = build_graph(SPEC)
    kernel = random_values(variables)["inference/conv3_2_w"].copy()
    kernel.flat[:12] = np.nan
    bad = _save(str(root / "nan" / "m"), {"inference/conv3_2_w": kernel,
                                          "inference/b6": np.array([1, np.inf, 0, 0, 0, 0],
                                                                   np.float32)})
    return {"root": root, "good": good, "nan": bad}


def _one_line(capsys, prog, main, *argv):
    """Run a CLI as `python -m` would; return its one-line error."""
    code = run_cli(main, [str(a) for a in argv], prog=f"fcn_graph.{prog}")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"fcn_graph.{prog}: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


# -- the value checks themselves ---------------------------------------------------------

def test_nonfinite_counts_what_it_finds():
    assert nonfinite(np.ones((2, 3), np.float32)) is None
    assert nonfinite(np.arange(4)) is None  # integers hold no NaN
    assert nonfinite(np.array([np.nan, 1.0, np.nan], np.float32)) == "2 NaN values"
    assert nonfinite(np.array([-np.inf, 0.0])) == "1 infinite value"
    assert nonfinite(np.array([np.nan, np.inf, -np.inf])) == "1 NaN and 2 infinite values"
    assert nonfinite(np.full(10, 3e38, np.float32)) is None  # finite, though its sum overflows
    assert nonfinite(np.array([3e38, 3e38, -np.inf], np.float32)) == "1 infinite value"
    assert nonfinite(np.zeros((0, 3))) is None


@pytest.mark.parametrize("value, found", [
    ([1.0, 2.0], "expected 3 numbers"), ([1, 2, 3, 4], "expected 3 numbers"),
    ("abc", "expected 3 numbers"), (7, "expected 3 numbers"), ({"r": 1}, "expected 3 numbers"),
    ([1, 2, "x"], "expected 3 numbers"), ([True, 1, 2], "expected 3 numbers"),
    ([[1, 2, 3]], "expected 3 numbers"), ([1, float("nan"), 2], "is not finite"),
    ([1, 2, float("inf")], "is not finite"), ([1, 2, 300], "lies outside 0..255"),
    ([-1, 2, 3], "lies outside 0..255")])
def test_mean_pixel_must_be_three_finite_pixel_values(value, found):
    with pytest.raises(UserError, match=found) as err:
        check_mean_pixel(value, "x.json: mean_pixel")
    assert str(err.value).startswith("x.json: mean_pixel: ")
    assert check_mean_pixel(np.array([0, 128.5, 255]), "x") == (0.0, 128.5, 255.0)


# -- .mat and .h5 ------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["old", "new"])
@pytest.mark.parametrize("layer, which, fill, found", [
    ("conv3_2", 0, np.nan, "layer 'conv3_2': kernel holds 12 NaN values"),
    ("conv1_1", 1, np.inf, "layer 'conv1_1': bias holds 2 infinite values"),
    ("fc6", 0, -np.inf, "layer 'fc6': kernel holds 12 infinite values")])
def test_mat_with_nonfinite_weights_is_refused(tmp_path, capsys, layout, layer, which, fill,
                                               found):
    layers = make_vgg_layers()
    fc = make_fc_layers(TINY_WIDTHS["conv5_4"])
    arrays = dict(layers, **fc)
    array = arrays[layer][which].copy()
    array.flat[:12 if which == 0 else 2] = fill
    pair = list(arrays[layer])
    pair[which] = array
    (layers if layer in layers else fc)[layer] = tuple(pair)
    path = str(tmp_path / "vgg.mat")
    write_vgg_mat(path, layers, TINY_MEAN, fc=fc, layout=layout)
    with pytest.raises(UserError, match=found) as err:
        load_vgg_mat(path)
    assert str(err.value).startswith(path + ": ")
    out = tmp_path / "start"
    assert found in _one_line(capsys, "port", port.main, "mat2ckpt", path, "--num-classes", 3,
                              "--out", out)
    assert found in _one_line(capsys, "port", port.main, "inspect", path)
    assert not os.path.exists(str(out) + ".index")


def _replace_average_image(path, value):
    """Rewrite a new-layout `.mat` with meta.normalization.averageImage = value."""
    mat = scipy.io.loadmat(path)
    mat["meta"][0, 0]["normalization"][0, 0]["averageImage"] = value
    scipy.io.savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})


@pytest.mark.parametrize("value, found", [
    (np.array([[[np.nan, 1.0, 2.0]]]), "averageImage holds 1 NaN value"),
    (np.array([[[1.0, np.inf, 2.0]]]), "averageImage holds 1 infinite value"),
    (np.array([[[1.0, 2.0, 400.0]]]), "averageImage: [1.0, 2.0, 400.0] lies outside 0..255"),
    (np.array([[[1.0, -2.0, 4.0]]]), "lies outside 0..255"),
    (np.array(["abc"]), "averageImage holds <U3 data"),
    (np.full((4, 5, 3), 7.0), None),  # a mean image: its mean is taken
    (np.full((4, 5, 2), 7.0), "averageImage has shape (4, 5, 2)")])
def test_mat_mean_pixel_is_checked(tmp_path, value, found):
    path = str(tmp_path / "vgg.mat")
    write_vgg_mat(path, make_vgg_layers(), TINY_MEAN, layout="new")
    _replace_average_image(path, value)
    if found is None:
        np.testing.assert_allclose(load_vgg_mat(path).mean_pixel, (7.0, 7.0, 7.0))
        return
    with pytest.raises(UserError) as err:
        load_vgg_mat(path)
    assert str(err.value).startswith(f"{path}: averageImage") and found in str(err.value)


def test_old_layout_mean_image_with_nan_is_refused(tmp_path):
    path = str(tmp_path / "vgg.mat")
    write_vgg_mat(path, make_vgg_layers(), (np.nan, 1.0, 2.0), layout="old")
    with pytest.raises(UserError, match=r"averageImage holds 50176 NaN values"):
        load_vgg_mat(path)  # the 224x224x3 mean image: one NaN per pixel in R


def test_keras_h5_with_nonfinite_weights_is_refused(tmp_path, capsys):
    layers = make_vgg_layers()
    kernel = layers["conv3_2"][0].copy()
    kernel.flat[[0, 5, 9]] = np.nan
    layers["conv3_2"] = (kernel, layers["conv3_2"][1])
    path = str(tmp_path / "vgg19.h5")
    write_keras_h5(path, layers)
    found = "layer 'block3_conv2' weight 'block3_conv2_W_1:0' holds 3 NaN values"
    with pytest.raises(UserError, match=found):
        kerash5.load_keras_vgg_h5(path)
    assert found in _one_line(capsys, "port", port.main, "inspect", path)
    assert found in _one_line(capsys, "port", port.main, "keras-h5", path, "--num-classes", 3,
                              "--out", tmp_path / "start")
    assert not os.path.exists(str(tmp_path / "start.index"))


def test_keras_h5_with_text_or_missing_weights_is_refused(tmp_path):
    import h5py

    path = str(tmp_path / "vgg19.h5")
    write_keras_h5(path, make_vgg_layers())
    with h5py.File(path, "a") as handle:
        del handle["block2_conv1"]["block2_conv1_b_1:0"]
        del handle["block1_conv1"]["block1_conv1_W_1:0"]
        handle["block1_conv1"]["block1_conv1_W_1:0"] = "text"
    with pytest.raises(UserError, match="'block1_conv1_W_1:0' holds object data"):
        kerash5.read_h5_layers(path)
    with h5py.File(path, "a") as handle:
        del handle["block1_conv1"]["block1_conv1_W_1:0"]
        handle["block1_conv1"]["block1_conv1_W_1:0"] = np.zeros((3, 3, 3, 2), np.float32)
    with pytest.raises(UserError, match="'block2_conv1_b_1:0' is listed in weight_names but"):
        kerash5.read_h5_layers(path)


# -- checkpoints with NaN or infinite values -----------------------------------------------

def test_good_checkpoint_reads_whole_and_finite(ckpts):
    checkpoint.check_finite(ckpts["good"])
    assert checkpoint.checkpoint_problems(ckpts["good"]) == []
    assert len(checkpoint.read_variables(ckpts["good"])) == 44


def test_checkpoint_with_nonfinite_values_is_refused_by_every_reader(ckpts):
    prefix = ckpts["nan"]
    assert sorted(checkpoint.checkpoint_problems(prefix)) == [
        ("inference/b6", "holds 1 infinite value"),
        ("inference/conv3_2_w", "holds 12 NaN values")]
    with pytest.raises(UserError, match=r"'inference/b6' holds 1 infinite value; "
                                        r"'inference/conv3_2_w' holds 12 NaN values"):
        checkpoint.check_finite(prefix)
    with pytest.raises(UserError, match="variable 'inference/conv3_2_w' holds 12 NaN values"):
        checkpoint.read_variables(prefix, ["inference/conv1_1_w", "inference/conv3_2_w"])
    checkpoint.read_variables(prefix, ["inference/conv1_1_w"])  # the others read
    with pytest.raises(UserError, match="'inference/conv3_2_w' holds 12 NaN values; "
                                        "'inference/b6' holds 1 infinite value"):
        graph, *_, variables = build_graph(SPEC)
        with graph.as_default():
            saver = checkpoint.model_saver(variables)
        graph.finalize()  # as infer and evaluate restore: no op may be added
        with tf1.Session(graph=graph) as sess:
            checkpoint.restore_model(sess, prefix, variables, saver=saver)
    with pytest.raises(UserError, match="'inference/conv3_2_w' holds 12 NaN values; "
                                        "'inference/b6' holds 1 infinite value"):
        graph, *_, variables = build_graph(SPEC)
        with graph.as_default():
            saver = tf1.train.Saver(var_list=variables)  # without model_saver's sums
        graph.finalize()
        with tf1.Session(graph=graph) as sess:
            checkpoint.restore_model(sess, prefix, variables, saver=saver)
    with pytest.raises(UserError, match=f"^{prefix}: variable 'inference/.*' holds"):
        onnx_engine.build_onnx_model(prefix)


def test_assign_arrays_refuses_nonfinite_values():
    graph, *_, variables = build_graph(SPEC)
    value = np.zeros(variables["inference/b8"].shape.as_list(), np.float32)
    value[1] = np.nan
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        with pytest.raises(UserError, match="inference/b8: the value to load holds 1 NaN value"):
            checkpoint.assign_arrays(sess, variables, {"inference/b8": value})


def test_commands_refuse_a_checkpoint_with_nonfinite_values(ckpts, tmp_path, capsys,
                                                            folder_root):
    prefix = ckpts["nan"]
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((9, 11, 3), np.uint8))
    found = "holds 12 NaN values"
    for prog, *argv in (
            ("infer", image, "--checkpoint", prefix, "--output-dir", tmp_path / "out"),
            ("infer", image, "--checkpoint", prefix, "--output-dir", tmp_path / "out",
             "--engine", "onnxruntime"),
            ("evaluate", "--checkpoint", prefix, "--set", "data.kind=folder",
             "--set", f"data.root={folder_root}"),
            ("export", "--checkpoint", prefix, "--format", "frozen", "--out", tmp_path / "m.pb"),
            ("export", "--checkpoint", prefix, "--format", "onnx", "--out", tmp_path / "m.onnx"),
            ("port", "ckpt2mat", prefix, "--out", tmp_path / "m.mat")):
        line = _one_line(capsys, prog, COMMANDS[prog], *argv)
        assert prefix in line and found in line, (prog, argv, line)
    assert not os.path.exists(tmp_path / "out" / "a.png")
    for name in ("m.pb", "m.onnx", "m.mat"):
        assert not os.path.exists(tmp_path / name)


def test_inspect_lists_the_unusable_tensors(ckpts, capsys):
    prefix = ckpts["nan"]
    assert run_cli(port.main, ["inspect", prefix], prog="fcn_graph.port") == 2
    captured = capsys.readouterr()
    assert captured.err == (f"fcn_graph.port: error: {prefix}: 2 of 44 tensors unusable, e.g. "
                            "'inference/b6' holds 1 infinite value\n")
    out = captured.out.splitlines()
    assert "  inference/conv3_2_w: holds 12 NaN values" in out
    assert "  inference/b6: holds 1 infinite value" in out
    assert port.main(["inspect", ckpts["good"]]) == 0
    assert "  (read all 44 tensors: every value finite)" in capsys.readouterr().out


# -- the sidecar's mean pixel ------------------------------------------------------------------

@pytest.mark.parametrize("text, found", [
    ('[NaN, 1, 2]', "is not finite"), ('[1, 2, Infinity]', "is not finite"),
    ('[1, 2]', "expected 3 numbers"), ('"abc"', "expected 3 numbers"),
    ('[1, 2, "3"]', "expected 3 numbers"), ('{"r": 1}', "expected 3 numbers"),
    ('[true, 1, 2]', "expected 3 numbers"), ('[1, 2, 3, 4]', "expected 3 numbers"),
    ('[1, 2, 1e300]', "lies outside 0..255")])
def test_sidecar_mean_pixel_is_checked(ckpts, tmp_path, capsys, text, found):
    prefix = _copy(ckpts["good"], tmp_path / "ckpt")
    with open(prefix + ".json", encoding="utf-8") as handle:
        record = handle.read()
    start = record.index('"mean_pixel": ') + len('"mean_pixel": ')
    end = record.index("]", start) + 1
    with open(prefix + ".json", "w", encoding="utf-8") as handle:
        handle.write(record[:start] + text + record[end:])
    with pytest.raises(UserError) as err:
        checkpoint.model_spec_from_checkpoint(prefix)
    assert str(err.value).startswith(f"{prefix}.json: mean_pixel: ") and found in str(err.value)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((5, 7, 3), np.uint8))
    line = _one_line(capsys, "infer", infer.main, image, "--checkpoint", prefix,
                     "--output-dir", tmp_path / "out")
    assert f"{prefix}.json: mean_pixel" in line and found in line


def _edit_sidecar(prefix, **changes):
    with open(prefix + ".json", encoding="utf-8") as handle:
        record = json.load(handle)
    record.update(changes)
    with open(prefix + ".json", "w", encoding="utf-8") as handle:
        json.dump(record, handle)


def test_null_mean_pixel_in_the_sidecar_still_means_unknown(ckpts, tmp_path):
    prefix = _copy(ckpts["good"], tmp_path / "ckpt")
    _edit_sidecar(prefix, mean_pixel=None)
    assert checkpoint.model_spec_from_checkpoint(prefix).mean_pixel is None


@pytest.mark.parametrize("key", ["train_upsampling", "kernels_transposed"])
def test_sidecar_flags_must_be_booleans(ckpts, tmp_path, key):
    prefix = _copy(ckpts["good"], tmp_path / "ckpt")
    _edit_sidecar(prefix, **{key: "false"})  # bool("false") would be True
    with pytest.raises(UserError, match=f"^{prefix}.json: {key}: expected true or false, "
                                        "found 'false'$"):
        checkpoint.model_spec_from_checkpoint(prefix)


def test_sidecar_that_is_a_fifo_or_directory_is_refused(ckpts, tmp_path):
    prefix = _copy(ckpts["good"], tmp_path / "ckpt")
    os.remove(prefix + ".json")
    os.mkfifo(prefix + ".json")
    with pytest.raises(UserError, match=f"{prefix}.json: not a regular file"):
        within(10, checkpoint.read_sidecar, prefix)
    os.remove(prefix + ".json")
    os.mkdir(prefix + ".json")
    with pytest.raises(UserError, match=f"{prefix}.json: not a regular file"):
        checkpoint.read_sidecar(prefix)


# -- damaged checkpoint files -----------------------------------------------------------------

def _cut(fraction):
    def damage(prefix):
        with open(prefix + DATA, "rb") as handle:
            data = handle.read()
        keep = len(data) - 1 if fraction is None else int(len(data) * fraction)
        with open(prefix + DATA, "wb") as handle:
            handle.write(data[:keep])
    return damage


def _flip(prefix):
    with open(prefix + DATA, "r+b") as handle:
        handle.seek(os.path.getsize(prefix + DATA) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _write_index(content):
    def damage(prefix):
        with open(prefix + ".index", "wb") as handle:
            handle.write(content(prefix))
    return damage


def _replace(suffix, make):
    def damage(prefix):
        os.remove(prefix + suffix)
        make(prefix + suffix)
    return damage


def _half_index(prefix):
    with open(prefix + ".index", "rb") as handle:
        data = handle.read()
    return data[:len(data) // 2]


DAMAGES = {
    "empty data": (_cut(0.0), "the data is cut short"),
    "half the data": (_cut(0.5), "the data is cut short"),
    "last byte missing": (_cut(None), "the data is cut short"),
    "flipped byte": (_flip, "a data file is corrupted (its checksum does not match)"),
    "missing data": (lambda p: os.remove(p + DATA), "the data file is missing"),
    "data is a directory": (_replace(DATA, os.mkdir), "not a regular file"),
    "data is a fifo": (_replace(DATA, os.mkfifo), "not a regular file"),
    "empty index": (_write_index(lambda p: b""), "the .index file is damaged or truncated"),
    "half the index": (_write_index(_half_index), "the .index file is damaged or truncated"),
    "garbled index": (_write_index(lambda p: bytes(range(256)) * 3),
                      "the .index file is damaged or truncated"),
    "index is a fifo": (_replace(".index", os.mkfifo), "not a regular file"),
}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request, ckpts, tmp_path):
    """(prefix of a damaged copy of the good checkpoint, the expected words, the damage)."""
    prefix = _copy(ckpts["good"], tmp_path / "ckpt")
    damage, found = DAMAGES[request.param]
    damage(prefix)
    return prefix, found, request.param


@pytest.fixture(scope="module")
def restore():
    """restore(prefix): restore_model into one finalised graph's session."""
    graph, *_, variables = build_graph(SPEC)
    with graph.as_default():
        saver = checkpoint.model_saver(variables)
    graph.finalize()
    with tf1.Session(graph=graph) as sess:
        yield lambda prefix: checkpoint.restore_model(sess, prefix, variables, saver=saver)


def test_every_reader_names_the_damage(damaged, restore):
    prefix, found, which = damaged
    readers = [checkpoint.read_variables, checkpoint.check_finite, onnx_engine.build_onnx_model,
               restore]
    if which != "flipped byte":  # only the data's checksums tell; the index reads fine
        readers += [checkpoint.read_variable_shapes, checkpoint.model_spec_from_checkpoint]
    for reader in readers:
        with pytest.raises(UserError) as err:
            within(20, reader, prefix)
        message = str(err.value)
        assert "\n" not in message and found in message and prefix in message, (which, message)


# The commands share the readers; four kinds of damage suffice here.
@pytest.mark.parametrize("damaged", ["half the data", "flipped byte", "missing data",
                                     "garbled index"], indirect=True)
def test_every_command_names_the_damage(damaged, tmp_path, capsys, folder_root):
    prefix, found, which = damaged
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((9, 11, 3), np.uint8))
    for prog, *argv in (
            ("infer", image, "--checkpoint", prefix, "--output-dir", tmp_path / "out"),
            ("evaluate", "--checkpoint", prefix, "--set", "data.kind=folder",
             "--set", f"data.root={folder_root}"),
            ("export", "--checkpoint", prefix, "--format", "frozen", "--out", tmp_path / "m.pb"),
            ("export", "--checkpoint", prefix, "--format", "onnx", "--out", tmp_path / "m.onnx"),
            ("port", "ckpt2mat", prefix, "--out", tmp_path / "m.mat"),
            ("port", "inspect", prefix)):
        line = _one_line(capsys, prog, COMMANDS[prog], *argv)
        assert prefix in line and found in line, (prog, which, line)
    for name in ("m.pb", "m.onnx", "m.mat"):
        assert not os.path.exists(tmp_path / name)


# -- the `checkpoint` state file -----------------------------------------------------------------

def _log_dir(ckpts, directory, state):
    """Two complete checkpoints m-1 (older) and m-2, and a `checkpoint` state file."""
    older = _copy(ckpts["good"], directory, "m-1")
    newer = _copy(ckpts["good"], directory, "m-2")
    for suffix in (".index", DATA, ".json"):
        os.utime(older + suffix, (1_000_000, 1_000_000))
    with open(os.path.join(str(directory), "checkpoint"), "wb") as handle:
        handle.write(state)
    return newer


def _infer_from_directory(ckpts, tmp_path, capsys, state):
    newer = _log_dir(ckpts, tmp_path / "run", state)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((9, 11, 3), np.uint8))
    code = run_cli(infer.main, [str(image), "--checkpoint", str(tmp_path / "run"),
                                "--output-dir", str(tmp_path / "out")], prog="fcn_graph.infer")
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert f"checkpoint {newer}:" in err
    assert os.path.exists(tmp_path / "out" / "a.png")


@pytest.mark.parametrize("state", [b'model_checkpoint_path: "gone"\n', b"}{ not a state file"],
                         ids=["names a missing file", "garbled text"])
def test_infer_on_a_directory_with_a_bad_state_file(ckpts, tmp_path, capsys, state):
    _infer_from_directory(ckpts, tmp_path, capsys, state)


@pytest.mark.parametrize("state", [b"\xff\xfe\x00 model_checkpoint_path \x80\x81", b""],
                         ids=["not UTF-8", "empty"])
def test_infer_on_a_directory_with_an_unreadable_state_file(ckpts, tmp_path, capsys, state):
    _infer_from_directory(ckpts, tmp_path, capsys, state)


@pytest.mark.parametrize("prog", ["evaluate", "export", "port"])
def test_commands_on_a_directory_with_a_non_utf8_state_file(ckpts, tmp_path, capsys,
                                                           folder_root, prog):
    newer = _log_dir(ckpts, tmp_path / "run", b"\xff\xfe\x00\x80\x81")
    run = str(tmp_path / "run")
    argv = {"evaluate": ["--checkpoint", run, "--set", "data.kind=folder",
                         "--set", f"data.root={folder_root}"],
            "export": ["--checkpoint", run, "--format", "frozen", "--out", tmp_path / "m.pb"],
            "port": ["inspect", run]}[prog]
    code = run_cli(COMMANDS[prog], [str(a) for a in argv], prog=f"fcn_graph.{prog}")
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err, captured.err
    assert newer in captured.out + captured.err


def test_newest_checkpoint_truncated_is_skipped_or_named(ckpts, tmp_path, capsys):
    """The state file names the newest checkpoint, whose data is cut short: the
    command uses the older complete one, or says in one line why not."""
    newer = _log_dir(ckpts, tmp_path / "run", b'model_checkpoint_path: "m-2"\n')
    _cut(0.5)(newer)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((9, 11, 3), np.uint8))
    code = run_cli(infer.main, [str(image), "--checkpoint", str(tmp_path / "run"),
                                "--output-dir", str(tmp_path / "out")], prog="fcn_graph.infer")
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code == 0:
        assert f"checkpoint {str(tmp_path / 'run' / 'm-1')}:" in err
    else:
        errors = [line for line in err.splitlines() if line.startswith("fcn_graph.infer: error")]
        assert code == 2 and len(errors) == 1 and newer in errors[0] and "cut short" in errors[0]
