"""Training under faults: broken and stale checkpoints, signals during saves, full
disks, a second run on the same log directory, label-less data, bad flags."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from portfiles import write_legacy_checkpoint
from test_checkpoint import tiny_spec
from test_train import REPO, empty_config, latest_step, restore_and_check_finite, shapes_args

from fcn_graph import train as train_module
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.training import loop, runlock
from fcn_graph.training.config import load_config
from fcn_graph.weights import checkpoint
from fcn_graph.weights.checkpoint_files import list_checkpoints

tf1 = tf.compat.v1


def data_file(prefix):
    return prefix + ".data-00000-of-00001"


def write_checkpoints(base, steps):
    """`base-STEP` for each step: one tiny legacy checkpoint, copied."""
    write_legacy_checkpoint(f"{base}-{steps[0]}", tiny_spec())
    for step in steps[1:]:
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copyfile(f"{base}-{steps[0]}{suffix}", f"{base}-{step}{suffix}")


def one_line(err):
    text = str(err)
    assert "\n" not in text
    return text


def strict_json(line):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


# --------------------------------------------------------------------------- discovery


def test_checkpoint_problems_are_found_and_named(tmp_path):
    base = str(tmp_path / "model.ckpt")
    write_checkpoints(base, [1, 2, 3, 4, 5])
    assert checkpoint.checkpoint_problem(f"{base}-1") is None
    # 2: a flipped byte inside the data: only the full read (checksums) sees it.
    with open(data_file(f"{base}-2"), "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert checkpoint.checkpoint_problem(f"{base}-2", full=False) is None
    assert "checksum does not match" in checkpoint.checkpoint_problem(f"{base}-2")
    # 3: truncated data; 4: no data file; 5: an index of garbage.
    size = os.path.getsize(data_file(f"{base}-3"))
    os.truncate(data_file(f"{base}-3"), size // 2)
    assert "cut short" in checkpoint.checkpoint_problem(f"{base}-3", full=False)
    os.remove(data_file(f"{base}-4"))
    assert checkpoint.checkpoint_problem(f"{base}-4") is not None
    with open(f"{base}-5.index", "wb") as handle:
        handle.write(b"\x00garbage" * 10)
    assert ".index file is damaged" in checkpoint.checkpoint_problem(f"{base}-5")

    found = list_checkpoints(str(tmp_path))
    assert [r.step for r in found] == [5, 4, 3, 2, 1]
    # A state file of garbage (not even UTF-8) naming a broken checkpoint changes nothing.
    (tmp_path / "checkpoint").write_bytes(b'model_checkpoint_path: "model.ckpt-5"\xff\xfe')
    assert checkpoint.resolve_checkpoint(str(tmp_path)) == f"{base}-1"


def test_resolve_names_what_it_skips_and_refuses_when_none_reads(tmp_path, capsys):
    base = str(tmp_path / "model.ckpt")
    write_checkpoints(base, [7, 8])
    os.remove(f"{base}-8.index")  # a save killed between its data and its index
    assert checkpoint.resolve_checkpoint(str(tmp_path)) == f"{base}-7"
    err = capsys.readouterr().err
    assert f"skipping checkpoint {base}-8: model.ckpt-8.index is missing" in err

    os.truncate(data_file(f"{base}-7"), 10)
    with pytest.raises(UserError) as info:
        checkpoint.resolve_checkpoint(str(tmp_path))
    message = one_line(info.value)
    assert "holds 2 checkpoint(s) but none reads" in message
    assert "model.ckpt-7: the data is cut short" in message


def test_clean_temp_files_removes_only_temp_names(tmp_path):
    keep = ["my_template.txt", "notes.tmp", "model.ckpt-3.index", "history.jsonl",
            "x_temp", "checkpoint.tmpnothex"]
    temp = ["model.ckpt-3.index.tempstate1234", "model.ckpt-3.data-00000-of-00001.tempstate99",
            ".config.json.0123456789ab.tmp.json", "checkpoint.tmp" + "0" * 32]
    for name in keep[:-2] + temp:
        (tmp_path / name).write_text("x")
    (tmp_path / "x_temp").mkdir()
    (tmp_path / "x_temp" / "own.txt").write_text("x")  # not a shard part: stays
    (tmp_path / "checkpoint.tmpnothex").write_text("x")
    shards = tmp_path / "model.ckpt-4_temp"
    shards.mkdir()
    (shards / "part-00000-of-00001.index").write_text("x")
    (shards / "part-00000-of-00001.data-00000-of-00001.tempstate5").write_text("x")
    removed = checkpoint.clean_temp_files(str(tmp_path))
    assert sorted(removed) == sorted(temp + ["model.ckpt-4_temp/"])
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


# --------------------------------------------------------------------------- resume


def test_resume_skips_broken_checkpoints_prunes_and_cleans(tmp_path, capsys):
    run = tmp_path / "run"
    args = shapes_args(tmp_path, "train.max_steps=4", "train.eval_every=0",
                       "train.keep_checkpoints=2")
    loop.train(load_config(None, args))
    assert {r.step for r in list_checkpoints(str(run))} == {2, 4}
    # The latest save was killed before its index; the state file is garbage;
    # temporary files of killed saves lie around beside files that are not ours.
    os.remove(run / "model.ckpt-4.index")
    (run / "checkpoint").write_bytes(b"\xff\xfe garbage \x00")
    (run / "model.ckpt-6.data-00000-of-00001.tempstate42").write_text("partial")
    (run / ".history.jsonl.0123456789ab.tmp.jsonl").write_text("partial")
    (run / "notes_template.txt").write_text("mine")
    capsys.readouterr()

    loop.train(load_config(None, args + ["train.max_steps=8"]))
    err = capsys.readouterr().err
    assert "removed 2 temporary file(s)" in err
    assert "skipping checkpoint" in err and "model.ckpt-4.index is missing" in err
    assert "resuming from" in err and "model.ckpt-2 at step 2" in err
    # keep_checkpoints = 2 holds across the resume: 2 and the rewritten 4 are gone.
    assert [r.step for r in checkpoint.find_checkpoints(str(run))] == [8, 6]
    assert all(r.problem is None for r in checkpoint.find_checkpoints(str(run)))
    assert not (run / "model.ckpt-2.json").exists() and not (run / "model.ckpt-4.json").exists()
    assert (run / "notes_template.txt").read_text() == "mine"
    assert not [n for n in os.listdir(run) if "tempstate" in n or ".tmp" in n]
    assert latest_step(run)[1] == 8  # the state file is rewritten for other tools
    for line in (run / "history.jsonl").read_text().splitlines():
        strict_json(line)

    # Every checkpoint broken: a one-line error, never a fresh start over them.
    for record in list_checkpoints(str(run)):
        (run / (os.path.basename(record.prefix) + ".index")).write_bytes(b"junk")
    before = sorted(os.listdir(run))
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, args + ["train.max_steps=10"]))
    assert "but none reads" in one_line(info.value)
    assert sorted(os.listdir(run)) == before


# --------------------------------------------------------------------------- save faults


def test_injected_full_disk_during_a_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = tf1.train.Saver.save
    calls = []

    def failing_save(self, sess, prefix, **kwargs):
        calls.append(prefix)
        if len(calls) < 2:
            return real_save(self, sess, prefix, **kwargs)
        # What a bundle writer leaves when the disk fills: part of the data.
        with open(data_file(prefix) + ".tempstate7", "wb") as handle:
            handle.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), data_file(prefix))

    monkeypatch.setattr(tf1.train.Saver, "save", failing_save)
    args = shapes_args(tmp_path, "train.max_steps=6", "train.eval_every=0")
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, args))
    message = one_line(info.value)
    assert f"{run / 'model.ckpt-4'}: cannot write the checkpoint: No space left on device" in message
    assert f"The last good checkpoint is {run / 'model.ckpt-2'} (step 2)" in message
    assert not [n for n in os.listdir(run) if n.startswith("model.ckpt-4")]
    monkeypatch.setattr(tf1.train.Saver, "save", real_save)
    assert checkpoint.resolve_checkpoint(str(run)) == str(run / "model.ckpt-2")
    restore_and_check_finite(str(run / "model.ckpt-2"))


def test_unwritable_history_is_one_line_naming_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").mkdir()  # open(..., "a") fails on it
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=2")))
    message = one_line(info.value)
    assert message.startswith(f"{run / 'history.jsonl'}: cannot ")
    assert "No checkpoint was written." in message


def test_failing_summaries_are_one_line_naming_the_events_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_add = tf1.summary.FileWriter.add_summary

    def add_summary(self, summary, step=None):
        if step is not None and step >= 3:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return real_add(self, summary, step)

    monkeypatch.setattr(tf1.summary.FileWriter, "add_summary", add_summary)
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, shapes_args(tmp_path, "train.max_steps=10")))
    message = one_line(info.value)
    assert message.startswith(str(run / "events.out.tfevents."))
    assert "cannot write TensorBoard summaries: No space left on device" in message
    assert f"The last good checkpoint is {run / 'model.ckpt-2'} (step 2)" in message


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs, or a skip where mounting is not permitted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_tmpfs_stops_with_one_line_and_keeps_a_checkpoint(tmp_path, tiny_tmpfs):
    run = tiny_tmpfs / "run"
    args = shapes_args(tmp_path, f"train.log_dir={run}", "train.max_steps=1000",
                       "train.checkpoint_every=1", "train.eval_every=0",
                       "train.keep_checkpoints=1000")
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, args))
    message = one_line(info.value)
    assert str(run) in message and "No space left on device" in message
    assert "The last good checkpoint is" in message
    found = checkpoint.find_checkpoints(str(run))
    assert found and found[0].problem is None  # the newest is complete: failed saves left none
    assert not [n for n in os.listdir(run) if "tempstate" in n or ".tmp" in n]
    prefix = checkpoint.resolve_checkpoint(str(run))
    assert prefix in message
    restore_and_check_finite(prefix)


# --------------------------------------------------------------------------- signals


def test_a_signal_during_a_periodic_save_waits_for_it(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save = checkpoint.save_model

    def save_and_signal(sess, saver, prefix, spec, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the data is written
        return real_save(sess, saver, prefix, spec, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", save_and_signal)
    args = shapes_args(tmp_path, "train.max_steps=1000", "train.eval_every=0")
    with pytest.raises(KeyboardInterrupt):
        loop.train(load_config(None, args))
    assert "interrupted at step 2; checkpoint" in capsys.readouterr().err
    assert checkpoint.resolve_checkpoint(str(run)) == str(run / "model.ckpt-2")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_second_signal_during_the_exit_save_is_ignored(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save, real_append = checkpoint.save_model, loop.append_history

    def append_and_signal(log_dir, record):
        real_append(log_dir, record)
        if record.get("step") == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the first: stop

    def save_and_signal(sess, saver, prefix, spec, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the second, during the exit save
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # and a third
        return real_save(sess, saver, prefix, spec, **kwargs)

    monkeypatch.setattr(loop, "append_history", append_and_signal)
    monkeypatch.setattr(checkpoint, "save_model", save_and_signal)
    args = shapes_args(tmp_path, "train.max_steps=1000", "train.checkpoint_every=1000",
                       "train.eval_every=0")
    with pytest.raises(KeyboardInterrupt):
        loop.train(load_config(None, args))
    assert "interrupted at step 3; checkpoint" in capsys.readouterr().err
    assert checkpoint.resolve_checkpoint(str(run)) == str(run / "model.ckpt-3")
    restore_and_check_finite(str(run / "model.ckpt-3"))


def _train_command(tmp_path, *extra):
    args = shapes_args(tmp_path, "train.max_steps=100000", "train.checkpoint_every=100000",
                       "train.eval_every=0", *extra)
    # -X faulthandler: SIGABRT makes a stuck run print where it is.
    return ([sys.executable, "-X", "faulthandler", os.path.join(REPO, "train.py"),
             "--config", empty_config(tmp_path)] + [arg for a in args for arg in ("--set", a)])


def _start_and_wait_for_steps(command, run, steps=2):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    history = run / "history.jsonl"
    deadline = time.time() + 90
    while not history.exists() or len(history.read_text().splitlines()) < steps:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("delay", [0.01, 0.2])
def test_two_sigterms_leave_a_checkpoint_the_next_run_finds(tmp_path, delay, capsys):
    """A real run receives SIGTERM twice; meanwhile a second run on the same
    log_dir is refused, naming the first."""
    run = tmp_path / "run"
    command = _train_command(tmp_path)
    proc = _start_and_wait_for_steps(command, run)
    try:
        code = run_cli(train_module.main, command[4:], prog="train.py")
        err = capsys.readouterr().err
        assert code == 2
        line = err.strip().splitlines()[-1]
        assert "another training run is using this train.log_dir" in line
        assert f"pid {proc.pid} on host" in line and "train.py" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=20)
            pytest.fail(f"the run did not stop after two SIGTERMs: {err[-6000:]}")
    assert proc.returncode == 130, err
    prefix = checkpoint.resolve_checkpoint(str(run))
    step = int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))
    assert f"interrupted at step {step}; checkpoint {prefix}" in err
    assert not [n for n in os.listdir(run) if "tempstate" in n or ".tmp" in n]


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = ("import sys, time\nfrom fcn_graph.training import runlock\n"
              "with runlock.locked_log_dir(sys.argv[1]):\n"
              "    print('locked', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(run)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {proc.pid} on host"):
            with runlock.locked_log_dir(str(run)):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert (run / runlock.LOCK_NAME).exists()  # left behind, and harmless
    with runlock.locked_log_dir(str(run)):
        pass


# --------------------------------------------------------------------------- data and flags


def test_labels_all_ignored_stop_after_one_pass(tmp_path, folder_root):
    for name in os.listdir(os.path.join(folder_root, "labels")):
        Image.fromarray(np.full((20, 30), 255, np.uint8), mode="L").save(
            os.path.join(folder_root, "labels", name))
    args = ["data.kind=folder", f"data.root={folder_root}", "data.val_fraction=0.5",
            *shapes_args(tmp_path)[4:], "train.max_steps=100", "train.eval_every=0"]
    with pytest.raises(UserError) as info:
        loop.train(load_config(None, args))
    message = one_line(info.value)
    assert "data.train_split 'train'" in message and os.path.join(folder_root, "labels") in message
    assert "2 steps, a whole pass over its 3 images, saw no labelled pixel" in message
    for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines():
        assert np.isfinite(strict_json(line)["loss"])


def test_validation_without_labels_writes_no_nan_into_the_history(tmp_path, voc_root):
    for stem in ("2007_000003", "2007_000004"):  # the val split
        Image.fromarray(np.full((20, 30), 255, np.uint8), mode="L").save(
            os.path.join(voc_root, "SegmentationClass", stem + ".png"))
    args = ["data.kind=voc", f"data.root={voc_root}", *shapes_args(tmp_path)[4:],
            "train.max_steps=2"]
    loop.train(load_config(None, args))
    records = [strict_json(line)
               for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "mean_iou" in r]
    assert evaluations and evaluations[-1]["mean_iou"] is None


def test_train_requires_config_and_bounds_scale_range(tmp_path, capsys):
    assert run_cli(train_module.main, ["--set", "train.max_steps=1"], prog="train.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: --config is required")
    for bad in ("[1.0, 100.0]", "[0, 1]"):   # each number in (0, 4] first
        with pytest.raises(UserError, match=r"train.scale_range: expected a number in \(0, 4\]"):
            load_config(empty_config(tmp_path), [f"train.scale_range={bad}"])
    for bad in ("[2, 1]", "[1.0]"):
        with pytest.raises(UserError, match=r"train.scale_range: expected \[min, max\] with "
                                            r"0 < min <= max <= 4"):
            load_config(empty_config(tmp_path), [f"train.scale_range={bad}"])
    assert load_config(None, ["train.scale_range=[0.5, 4]"]).train.scale_range == [0.5, 4.0]
