"""No file fcn_graph creates or appends to in a folder others may write in is
opened through a planted symbolic link (or a hard link, or another user's
file): the training lock, history, config, checkpoints and their sidecars,
the outputs record, TensorBoard events and every atomic write. The target
stays untouched and the command stops with one line naming the path."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from test_checkpoint import tiny_spec
from test_outputs_safe import weights  # noqa: F401  (a fixture)
from test_train import empty_config, shapes_args

from bench import harness
from fcn_graph import evaluate, export
from fcn_graph import train as train_module
from fcn_graph.core import fileio
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.training import curves, loop, runlock
from fcn_graph.training.config import load_config
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1
PRECIOUS = b"another user's file: must not change\n"


@pytest.fixture
def victim(tmp_path):
    """A file outside every folder the tests write in."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


def _plant(link, target):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def _one_line(capsys, main, argv, prog="prog"):
    code = run_cli(main, [str(a) for a in argv], prog=prog)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _train_argv(tmp_path, *extra):
    argv = ["--config", empty_config(tmp_path)]
    for item in shapes_args(tmp_path, "train.max_steps=2", "train.eval_every=0", *extra):
        argv += ["--set", item]
    return argv


# -- the training log_dir ------------------------------------------------------------------

def test_train_refuses_a_lock_that_is_a_link(tmp_path, victim, capsys):
    run = tmp_path / "run"
    _plant(run / runlock.LOCK_NAME, victim)
    err = _one_line(capsys, train_module.main, _train_argv(tmp_path), prog="train.py")
    assert f"{run / runlock.LOCK_NAME}: is a symbolic link" in err
    assert victim.read_bytes() == PRECIOUS
    assert sorted(os.listdir(run)) == [runlock.LOCK_NAME]


def test_the_lock_refuses_a_hard_link_and_another_users_file(tmp_path, victim):
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / runlock.LOCK_NAME)
    with pytest.raises(UserError, match=re.escape(f"{run / runlock.LOCK_NAME}: has 2 hard links")):
        with runlock.locked_log_dir(str(run)):
            pass
    assert victim.read_bytes() == PRECIOUS
    if os.geteuid() == 0:  # only root can give a file to another user
        os.remove(run / runlock.LOCK_NAME)
        (run / runlock.LOCK_NAME).write_bytes(PRECIOUS)
        os.chown(run / runlock.LOCK_NAME, 4321, -1)
        with pytest.raises(UserError, match="belongs to another user"):
            with runlock.locked_log_dir(str(run)):
                pass
        assert (run / runlock.LOCK_NAME).read_bytes() == PRECIOUS


@pytest.mark.parametrize("name", ["history.jsonl", "config.json", "model.ckpt-2.json",
                                  "checkpoint", "training_curves.png"])
def test_train_refuses_a_planted_link_in_its_log_dir(tmp_path, victim, name):
    """Each file training writes in train.log_dir, planted as a link to a file
    outside: training stops with one line naming it, the target unchanged."""
    run = tmp_path / "run"
    _plant(run / name, victim)
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=2",
                                                     "train.eval_every=0")))
    message = str(info.value)
    assert "\n" not in message and f"{run / name}: " in message, message
    assert "symbolic link" in message
    assert victim.read_bytes() == PRECIOUS
    assert os.path.islink(run / name)


def test_history_appends_only_to_a_file_of_its_own(tmp_path, victim):
    run = tmp_path / "run"
    _plant(run / curves.HISTORY_NAME, victim)
    with pytest.raises(UserError, match=re.escape(f"{run / curves.HISTORY_NAME}: is a symbolic")):
        curves.append_history(str(run), {"step": 1, "loss": 0.5})
    os.remove(run / curves.HISTORY_NAME)
    os.link(victim, run / curves.HISTORY_NAME)
    with pytest.raises(UserError, match="hard links"):
        curves.append_history(str(run), {"step": 1, "loss": 0.5})
    assert victim.read_bytes() == PRECIOUS
    os.remove(run / curves.HISTORY_NAME)
    curves.append_history(str(run), {"step": 1, "loss": 0.5})
    curves.append_history(str(run), {"step": 2, "loss": 0.25})
    assert [r["step"] for r in curves.read_history(str(run))] == [1, 2]


def _tiny_saver():
    graph = tf.Graph()
    with graph.as_default():
        tf1.Variable(np.arange(6, dtype=np.float32), name="w")
        saver = tf1.train.Saver()
        init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=graph)
    sess.run(init)
    return sess, saver


@pytest.mark.parametrize("suffix", [".index", ".data-00000-of-00001", ".json"])
def test_a_checkpoint_save_refuses_a_planted_link(tmp_path, victim, suffix):
    run = tmp_path / "run"
    _plant(run / f"model.ckpt-7{suffix}", victim)
    sess, saver = _tiny_saver()
    try:
        with pytest.raises(UserError, match=re.escape(f"{run / 'model.ckpt-7'}{suffix}: is a "
                                                      "symbolic link")):
            checkpoint.save_model(sess, saver, str(run / "model.ckpt"), tiny_spec(),
                                  global_step=7)
    finally:
        sess.close()
    assert victim.read_bytes() == PRECIOUS
    assert sorted(os.listdir(run)) == [f"model.ckpt-7{suffix}"]


def test_tensorboard_events_files_have_unpredictable_names(tmp_path):
    """TensorFlow opens its events file by name, following links; the name
    ends in 128 random bits, so no link can wait for it."""
    for _ in range(2):
        with tf.Graph().as_default():
            loop._SummaryWriter(str(tmp_path), lambda: "").close()
    names = os.listdir(tmp_path)
    assert len(names) == 2, names
    assert all(re.fullmatch(r"events\.out\.tfevents\..+\.[0-9a-f]{32}", n) for n in names), names


# -- atomic writes and output records -------------------------------------------------------

def test_atomic_write_refuses_links_and_other_users_files(tmp_path, victim):
    out = tmp_path / "out"
    _plant(out / "m.json", victim)
    with pytest.raises(UserError, match=re.escape(f"{out / 'm.json'}: is a symbolic link")):
        fileio.write_json_atomic(str(out / "m.json"), {"a": 1})
    assert os.path.islink(out / "m.json") and victim.read_bytes() == PRECIOUS
    assert sorted(os.listdir(out)) == ["m.json"]
    if os.geteuid() == 0:
        (out / "theirs.json").write_bytes(PRECIOUS)
        os.chown(out / "theirs.json", 4321, -1)
        with pytest.raises(UserError, match="belongs to another user"):
            fileio.write_json_atomic(str(out / "theirs.json"), {"a": 1})
        assert (out / "theirs.json").read_bytes() == PRECIOUS


def test_atomic_write_never_replaces_a_file_that_appeared_meanwhile(tmp_path, victim):
    path = tmp_path / "new.json"
    with pytest.raises(UserError, match="by someone else while fcn_graph wrote it"):
        with fileio.atomic_write(str(path)) as tmp:
            with open(tmp, "w") as handle:
                handle.write("{}\n")
            path.write_bytes(PRECIOUS)  # created while the writer ran
    assert path.read_bytes() == PRECIOUS
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "new.json"]
    with pytest.raises(UserError, match="is a symbolic link"):
        with fileio.atomic_write(str(path)) as tmp:
            with open(tmp, "w") as handle:
                handle.write("{}\n")
            os.remove(path)
            os.symlink(victim, path)  # swapped for a link while the writer ran
    assert os.path.islink(path) and victim.read_bytes() == PRECIOUS


def test_the_outputs_record_is_never_a_link(tmp_path, victim):
    out = tmp_path / "out"
    record = {"format": fileio.RECORD_FORMAT, "files": {}}
    victim.write_text(fileio.json_text(record))
    _plant(out / fileio.OUTPUT_RECORD, victim)
    with pytest.raises(UserError) as info:
        fileio.OutputFolder(str(out), "--output-dir").claim(["a.png"])
    assert f"{out / fileio.OUTPUT_RECORD}: not a readable record" in str(info.value)
    assert "symbolic link" in str(info.value)
    assert victim.read_text() == fileio.json_text(record)


def test_an_output_that_is_a_link_is_refused_even_when_recorded(tmp_path, victim):
    out = tmp_path / "out"
    folder = fileio.OutputFolder(str(out), "--output-dir")
    folder.claim(["a.png"])
    (out / "a.png").write_bytes(b"mine")
    folder.wrote("a.png")
    folder.flush()
    os.remove(out / "a.png")
    os.symlink(victim, out / "a.png")
    for force in (False, True):
        with pytest.raises(UserError, match=re.escape(f"{out / 'a.png'}: is a symbolic link")):
            fileio.OutputFolder(str(out), "--output-dir").claim(["a.png"], force=force)
    assert victim.read_bytes() == PRECIOUS


# -- exports and single output files --------------------------------------------------------

@pytest.mark.parametrize("fmt, name, extra", [("frozen", "m.pb", ()), ("onnx", "m.onnx", ()),
                                              ("onnx", "m.onnx.data", ("--external-data",)),
                                              ("savedmodel", "sm", ())])
def test_export_never_writes_through_a_link(tmp_path, weights, victim, capsys,  # noqa: F811
                                            fmt, name, extra):
    out = tmp_path / "out"
    _plant(out / name, victim.parent if fmt == "savedmodel" else victim)
    target = out / name.replace(".data", "")
    for force in ((), ("--force",)):
        err = _one_line(capsys, export.main, ["--checkpoint", weights["ckpt"], "--format", fmt,
                                              "--no-verify", "--out", target, *extra, *force])
        assert f"--out {out / name}: is a symbolic link" in err
    assert victim.read_bytes() == PRECIOUS and os.listdir(victim.parent) == ["precious.txt"]
    assert os.listdir(out) == [name]


def test_evaluate_json_and_bench_out_never_write_through_a_link(tmp_path, weights,  # noqa: F811
                                                                victim, voc_root, capsys,
                                                                monkeypatch):
    out = tmp_path / "out" / "m.json"
    _plant(out, victim)
    err = _one_line(capsys, evaluate.main, ["--set", "data.kind=voc", "--set",
                                            f"data.root={voc_root}", "--checkpoint",
                                            weights["voc"], "--json", out])
    assert f"--json {out}: is a symbolic link" in err
    monkeypatch.setattr(harness, "run_benchmark", lambda args: {"results": []})
    assert f"--out {out}: is a symbolic link" in _one_line(capsys, harness.main, ["--out", out])
    assert victim.read_bytes() == PRECIOUS


def test_place_file_never_replaces_what_it_may_not(tmp_path, victim):
    """How exports put their files in place: a new name is never taken from a
    file that appeared there meanwhile, and a link is refused, not replaced."""
    new = tmp_path / "m.onnx"
    (tmp_path / "tmp").write_bytes(b"export")
    new.write_bytes(PRECIOUS)  # appeared after the check
    with pytest.raises(UserError, match="was created by someone else"):
        fileio._link_new(str(tmp_path / "tmp"), str(new))
    os.remove(new)
    os.symlink(victim, new)
    with pytest.raises(UserError, match=re.escape(f"{new}: is a symbolic link")):
        fileio.place_file(str(tmp_path / "tmp"), str(new))
    assert victim.read_bytes() == PRECIOUS and os.path.islink(new)
    os.remove(new)
    fileio.place_file(str(tmp_path / "tmp"), str(new))
    assert new.read_bytes() == b"export" and not (tmp_path / "tmp").exists()
