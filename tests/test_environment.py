"""The environment: TensorFlow's start-up lines, the config loader's file errors,
`--set` keys a command does not use, and config without TensorFlow."""

import ast
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bench.worker import make_weights
from fcn_graph import evaluate, infer
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.host import tflog
from fcn_graph.training.config import load_config

ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (b"I0000 00:00:1795942815.118843   10189 port.cc:153] oneDNN custom operations are on. "
          b"You may see slightly different numerical results due to floating-point round-off "
          b"errors from different computation orders. To turn them off, set the environment "
          b"variable `TF_ENABLE_ONEDNN_OPTS=0`.\n")
NO_CUDA = (b"I0000 00:00:1795942815.119149   10189 cudart_stub.cc:31] Could not find cuda "
           b"drivers on your machine, GPU will not be used.\n")
CUINIT = (b"E0000 00:00:1795942835.283121   10547 cuda_platform.cc:52] failed call to cuInit: "
          b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")


def _subprocess_env():
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    return env


# TensorFlow's start-up lines. ----------------------------------------------------


def test_filter_drops_the_startup_lines_and_passes_every_other_line_in_order(capfd):
    with tflog.filtered_stderr():
        os.write(2, ABSL + ONEDNN + b"first real line\n" + NO_CUDA)
        with open(2, "w", closefd=False) as stderr:  # as sys.stderr writes outside pytest
            print("second, from Python", file=stderr)
        os.write(2, ABSL + b"third " + b"in two writes")
        os.write(2, b"\n" + CUINIT + ONEDNN.replace(b"are on.", b"are off.") + b"no newline")
    err = capfd.readouterr().err
    assert err == ("first real line\nsecond, from Python\nthird in two writes\n"
                   + ONEDNN.replace(b"are on.", b"are off.").decode() + "no newline")


def test_filter_keeps_a_cuinit_failure_where_cuda_libraries_exist(capfd):
    # Without the "Could not find cuda drivers" line the CUDA libraries are there,
    # and a failed cuInit is a real error.
    with tflog.filtered_stderr():
        os.write(2, ABSL + CUINIT)
    assert capfd.readouterr().err == CUINIT.decode()


def test_filter_restores_stderr_on_an_exception(capfd):
    before = os.fstat(2)
    with pytest.raises(KeyboardInterrupt):
        with tflog.filtered_stderr():
            os.write(2, NO_CUDA + b"written before the interrupt\n")
            assert os.fstat(2).st_ino != before.st_ino  # a pipe inside the block
            raise KeyboardInterrupt
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    os.write(2, b"after the block\n")
    assert capfd.readouterr().err == "written before the interrupt\nafter the block\n"


def test_the_switch_and_load_tensorflow(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert not tflog.filtering_enabled()
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    assert tflog.filtering_enabled()
    code = ("import os, sys; from fcn_graph.host import tflog; tflog.load_tensorflow(); "
            "assert 'tensorflow' in sys.modules; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_subprocess_env(), timeout=120)
    assert run.returncode == 0 and run.stdout == "2\n", run.stderr
    assert run.stderr == "", run.stderr


COMMANDS = ("infer", "evaluate", "export", "port", "train", "bench", "launch", "calibrate")
PACKAGE = os.path.dirname(os.path.dirname(tflog.__file__))
# Every library module, "core.errors" ... "cluster.procgroup": the subpackages'.
LIBRARY = sorted(
    os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3].replace(os.sep, ".")
    for folder, _, names in os.walk(PACKAGE) if folder != PACKAGE
    for name in names if name.endswith(".py") and name != "__init__.py")


def test_no_library_module_imports_a_command_module():
    """Imported, no library module brings a command module into sys.modules;
    and none names one in an import statement, at the top or inside a function."""
    code = ("import importlib, sys\n"
            f"for name in {LIBRARY!r}:\n"
            "    importlib.import_module('fcn_graph.' + name)\n"
            f"found = [c for c in {COMMANDS!r} if 'fcn_graph.' + c in sys.modules]\n"
            "assert not found, found\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_subprocess_env(), timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in LIBRARY:
        path = os.path.join(PACKAGE, *name.split(".")) + ".py"
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "fcn_graph":
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module.removeprefix("fcn_graph.")]
            elif isinstance(node, ast.Import):
                imported = [alias.name.removeprefix("fcn_graph.") for alias in node.names]
            else:
                continue
            assert not set(imported) & set(COMMANDS), f"{path} imports {imported}"


@pytest.mark.parametrize("command", [
    ["-m", "fcn_graph.infer"], ["-m", "fcn_graph.evaluate"], ["-m", "fcn_graph.export"],
    ["-m", "fcn_graph.port"], ["-m", "fcn_graph.port", "mat2ckpt"], ["-m", "fcn_graph.train"],
    ["train.py"]])
def test_help_does_not_import_tensorflow(command):
    run = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"],
                         capture_output=True, text=True, env=_subprocess_env(), timeout=60,
                         cwd=os.path.dirname(PACKAGE))
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")]
    assert "fcn_graph" in imported  # the check sees the imports
    assert not [name for name in imported if name.split(".")[0] == "tensorflow"]


def test_ctrl_c_while_tensorflow_loads_prints_one_line(tmp_path):
    """SIGINT once TensorFlow has started to import (its first module is in the
    import-time trace) ends `python -m fcn_graph.infer` with one line, status 130."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((5, 7, 3), np.uint8))  # checked before TF
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "fcn_graph.infer", str(tmp_path / "a.png"),
         "--checkpoint", str(tmp_path / "ckpt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env())
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("import time:") and "tensorflow" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)[::-1]
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += rest.splitlines(keepends=True)
    text = "".join(lines)
    assert any("tensorflow" in line for line in lines), text[-2000:]
    own = [line for line in lines if not line.startswith("import time:")]
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text
    assert own == ["fcn_graph.infer: interrupted\n"], own


def test_a_command_prints_only_its_own_lines(tmp_path):
    """End to end: TensorFlow loads and probes for a GPU, and the command's
    stderr holds its one error line and nothing else."""
    run = subprocess.run([sys.executable, "-m", "fcn_graph.infer", str(tmp_path / "nope.png"),
                          "--checkpoint", str(tmp_path / "no_ckpt")],
                         capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcn_graph.infer: error: "), run.stderr
    assert run.stdout == ""


def test_config_does_not_import_tensorflow():
    code = ("import sys, fcn_graph.training.config, fcn_graph.core.constants; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_subprocess_env(), timeout=60)
    assert run.returncode == 0, run.stderr


def test_the_config_checks_the_network_variants():
    from fcn_graph.core.constants import ARCHITECTURES, SKIPS
    assert ARCHITECTURES == ("legacy", "paper") and SKIPS == ("32s", "16s", "8s")
    assert load_config(overrides=["model.architecture=paper"]).train.keep_prob == 0.5
    with pytest.raises(UserError, match="model.architecture: expected one of legacy, paper"):
        load_config(overrides=["model.architecture=other"])


# Config files that are not what they should be. ----------------------------------


@pytest.mark.parametrize("content,message", [
    (b"", "empty config file; expected a JSON object of sections"),
    (b"  \n// only a comment\n# and another\n", "empty config file"),
    (b'{"train": {"seed": 1}}\n// caf\xe9\n', "expected UTF-8 text, found byte 0xe9 at line 2"),
    (b'{"train": {"seed": 1', "not valid JSON (comments allowed): unexpected end of file"),
    (b'{"train": {"seed": 1},\n "model": x}', "not valid JSON (comments allowed): line 2, "
                                             "column 11: unexpected 'x}'"),
    (b'{"train": {"seed": NaN}}', "line 1, column 20"),
    (b'{"train": {"seed": 1}, "train": {"seed": 2}}', "key 'train' appears 2 times"),
    (b'{"model": {"fc_width": 8, "fc_width": 9}}', "key 'fc_width' appears 2 times"),
    (b"[1, 2]", "expected a JSON object of sections, found list"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_config(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    # and through a command: exit status 2, one line, no traceback
    assert run_cli(evaluate.main, ["--config", str(path)], prog="fcn_graph.evaluate") == 2
    assert capsys.readouterr().err == f"fcn_graph.evaluate: error: {text}\n"


def test_config_paths_that_are_not_files(tmp_path):
    os.mkdir(tmp_path / "dir.json")
    os.mkfifo(tmp_path / "fifo.json")  # opening it for reading must not block
    for name, found in (("dir.json", "a directory"), ("fifo.json", "a FIFO")):
        with pytest.raises(UserError, match=f"{name}: expected a JSON config file, found {found}$"):
            load_config(str(tmp_path / name))
    with pytest.raises(UserError, match="missing.json: config file not found"):
        load_config(str(tmp_path / "missing.json"))


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf// saved by an editor that writes a BOM\n{"train": {"seed": 7}}')
    assert load_config(str(path)).train.seed == 7


# --set keys that a command does not use. -----------------------------------------


@pytest.fixture
def tiny_weights(tmp_path):
    prefix = str(tmp_path / "ckpt" / "w")
    make_weights(prefix, num_classes=3, width_multiplier=1 / 64, fc_width=8)
    return prefix


def _warnings(err):
    return [line for line in err.splitlines() if ": warning: --set " in line]


def test_infer_warns_about_set_keys_it_does_not_use(tmp_path, tiny_weights, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((9, 11, 3), np.uint8))
    code = infer.main([str(tmp_path / "a.png"), "--checkpoint", tiny_weights,
                       "--output-dir", str(tmp_path / "out"),
                       "--set", "model.num_classes=7", "--set", "train.learning_rate=0.5",
                       "--set", "train.threads=1", "--set", "model.num_classes=7"])
    assert code == 0
    warnings = _warnings(capsys.readouterr().err)
    assert warnings == [
        "fcn_graph.infer: warning: --set model.num_classes ignored: fcn_graph.infer does not "
        "use model.num_classes (it uses only train.threads, model.kernels with these "
        "arguments)",
        "fcn_graph.infer: warning: --set train.learning_rate ignored: fcn_graph.infer does not "
        "use train.learning_rate (it uses only train.threads, model.kernels with these "
        "arguments)",
    ]
    assert os.path.exists(tmp_path / "out" / "a.png")
    # with --threads and --kernels given, train.threads is not used either
    assert infer.main([str(tmp_path / "a.png"), "--checkpoint", tiny_weights, "--threads", "1",
                       "--kernels", "cpu", "--output-dir", str(tmp_path / "out2"),
                       "--set", "train.threads=2"]) == 0
    assert _warnings(capsys.readouterr().err) == [
        "fcn_graph.infer: warning: --set train.threads ignored: fcn_graph.infer does not use "
        "train.threads (it uses no config key with these arguments)"]


def test_infer_still_checks_the_keys_it_ignores(tmp_path, tiny_weights):
    with pytest.raises(UserError, match="unknown config key 'model.num_clases'"):
        infer.main([str(tmp_path / "a.png"), "--checkpoint", tiny_weights,
                    "--set", "model.num_clases=7"])


def test_evaluate_warns_about_set_keys_it_does_not_use(tmp_path, tiny_weights, folder_root,
                                                       capsys):
    code = evaluate.main(["--checkpoint", tiny_weights, "--split", "val",
                          "--set", "data.kind=folder", "--set", f"data.root={folder_root}",
                          "--set", "data.val_fraction=0.5", "--set", "train.seed=3",
                          "--set", "model.fc_width=8", "--set", "train.batch_size=4",
                          "--set", "data.val_split=train", "--set", "train.threads=1"])
    assert code == 0
    warned = [line.split("--set ")[1].split(" ")[0] for line in _warnings(capsys.readouterr().err)]
    # data.val_split: --split is given; model.fc_width comes from the checkpoint
    assert warned == ["model.fc_width", "train.batch_size", "data.val_split"]
