"""fcn_graph.engines.pipeline: order, bounded queues, worker failures, early stops; and
infer over a folder through it: per-image errors, interrupts and write
failures."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from fcn_graph.core.errors import UserError
from fcn_graph.engines import pipeline
from fcn_graph.engines.pipeline import run_pipeline


def _identity(pairs):
    for item, value in pairs:
        yield item, value


def test_order_is_kept_under_random_delays():
    rng = random.Random(5)
    delays = {i: (rng.random() * 0.004, rng.random() * 0.004, rng.random() * 0.004)
              for i in range(60)}
    written = []

    def read(i):
        time.sleep(delays[i][0])
        return i * i

    def compute(pairs):
        for item, value in pairs:
            time.sleep(delays[item][1])
            yield item, value + 1

    def write(result):
        time.sleep(delays[result[0]][2])
        written.append(result)

    run_pipeline(range(60), read=read, compute=compute, write=write, read_ahead=3,
                 write_behind=2)
    assert written == [(i, i * i + 1) for i in range(60)]


def test_the_stages_overlap_and_the_queues_stay_bounded():
    """With each stage taking the same time, the run takes about the time of
    one stage, and neither worker runs more than its queue allows ahead."""
    step, count = 0.02, 20
    lock = threading.Lock()
    state = {"read": 0, "computed": 0, "written": 0, "read_lead": 0, "write_lag": 0}

    def read(i):
        time.sleep(step)
        with lock:
            state["read"] += 1
            state["read_lead"] = max(state["read_lead"], state["read"] - state["computed"])
        return i

    def compute(pairs):
        for item, _ in pairs:
            time.sleep(step)
            with lock:
                state["computed"] += 1
            yield item

    def write(item):
        with lock:
            state["write_lag"] = max(state["write_lag"], state["computed"] - state["written"])
        time.sleep(step)
        with lock:
            state["written"] += 1

    start = time.perf_counter()
    run_pipeline(range(count), read=read, compute=compute, write=write, read_ahead=2,
                 write_behind=2)
    elapsed = time.perf_counter() - start
    assert state["written"] == count
    # one read in hand + 2 queued + the one compute holds: at most 4 ahead
    assert state["read_lead"] <= 4, state
    assert state["write_lag"] <= 4, state
    assert elapsed < 0.75 * 3 * step * count, f"{elapsed:.2f} s: the stages did not overlap"


@pytest.mark.parametrize("where", ["read", "write"])
def test_an_exception_in_a_worker_surfaces_in_the_caller(where):
    written, read_items = [], []

    def read(i):
        read_items.append(i)
        if where == "read" and i == 5:
            raise UserError("x.png: cannot read")
        return i

    def write(item):
        if where == "write" and item == 5:
            raise UserError("out/x.png: cannot write (No space left on device)")
        written.append(item)

    with pytest.raises(UserError, match="cannot (read|write)"):
        run_pipeline(range(100), read=read, compute=_identity_items, write=write)
    assert written[:5] == [0, 1, 2, 3, 4]
    if where == "read":
        assert written == [0, 1, 2, 3, 4], "items before the failure are all written"
        assert read_items == list(range(6)), "the reader stops at its failure"
    else:
        assert 5 not in written and len(read_items) < 100, "the reader stopped"
    assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]


def _identity_items(pairs):
    for item, _ in pairs:
        yield item


def test_an_early_stop_of_the_caller_stops_both_workers():
    written, read_items = [], []
    writing = threading.Event()

    def read(i):
        read_items.append(i)
        return i

    def compute(pairs):
        for item, _ in pairs:
            if item == 6:
                assert writing.wait(5)
                raise KeyboardInterrupt
            yield item

    def write(item):
        writing.set()
        time.sleep(0.05)
        written.append(item)

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(range(1000), read=read, compute=compute, write=write)
    # every write that started finished before run_pipeline returned; no more came
    count = len(written)
    time.sleep(0.2)
    assert len(written) == count and written == list(range(count)) and count >= 1
    assert len(read_items) < 20
    assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]


def test_empty_input_and_bad_queue_sizes():
    written = []
    run_pipeline([], read=lambda i: i, compute=_identity_items, write=written.append)
    assert written == []
    with pytest.raises(ValueError, match="at least 1"):
        run_pipeline([1], read=lambda i: i, compute=_identity_items, write=written.append,
                     read_ahead=0)


def test_terminate_as_interrupt_raises_keyboard_interrupt_and_restores():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with pipeline.terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before


# infer over a folder through the pipeline ------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny legacy FCN-8s checkpoint (4 classes), made once for this file."""
    from tinyvgg import write_tiny_checkpoint
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def _images(directory, count, broken=()):
    rng = np.random.default_rng(1)
    os.makedirs(directory, exist_ok=True)
    for i in range(count):
        path = os.path.join(directory, f"im{i:02d}.png")
        if i in broken:
            with open(path, "wb") as handle:
                handle.write(b"not a png")
        else:
            cv2.imwrite(path, rng.integers(0, 256, (21 + i % 3, 17, 3), dtype=np.uint8))


def test_infer_reports_per_image_errors_in_order(tmp_path, tiny_checkpoint, capsys):
    from fcn_graph import infer
    _images(str(tmp_path / "in"), 7, broken={2, 5})
    code = infer.main([str(tmp_path / "in"), "--checkpoint", tiny_checkpoint,
                       "--output-dir", str(tmp_path / "out"), "--batch", "2"])
    printed = capsys.readouterr()
    assert code == 1
    out_lines = [line.split(":")[0] for line in printed.out.splitlines()]
    assert out_lines == [str(tmp_path / "in" / f"im{i:02d}.png") for i in (0, 1, 3, 4, 6)]
    errors = [line for line in printed.err.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[1].strip() for line in errors] == [
        str(tmp_path / "in" / f"im{i:02d}.png") for i in (2, 5)]
    assert "2 of 7 images failed" in printed.err
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [".fcn_graph-outputs.json"] + [f"im{i:02d}{s}" for i in (0, 1, 3, 4, 6)
                                       for s in (".png", "_overlay.png")])


def test_infer_write_failure_is_one_error_and_keeps_the_written(tmp_path, tiny_checkpoint,
                                                               monkeypatch, capsys):
    from fcn_graph import infer
    from fcn_graph.core.fileio import OUTPUT_RECORD, OutputFolder
    from fcn_graph.data import image_files
    _images(str(tmp_path / "in"), 6)
    real = image_files.write_image
    calls = []

    def failing(path, rgb, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, rgb, **kwargs)

    monkeypatch.setattr(image_files, "write_image", failing)
    out = tmp_path / "out"
    from fcn_graph.core.errors import run_cli
    code = run_cli(infer.main, [str(tmp_path / "in"), "--checkpoint", tiny_checkpoint,
                                "--output-dir", str(out)], prog="fcn_graph.infer")
    err = capsys.readouterr().err
    assert code == 2
    assert f"fcn_graph.infer: error: {out / 'im02_overlay.png'}: cannot write (No space left " \
           "on device)" in err
    assert "Traceback" not in err
    written = sorted(n for n in os.listdir(out) if n != OUTPUT_RECORD)
    assert written == ["im00.png", "im00_overlay.png", "im01.png", "im01_overlay.png",
                       "im02.png"]
    folder = OutputFolder(str(out), "--output-dir")
    assert all(folder.owns(name) and not folder.files[name].get("pending") for name in written)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_infer_cleanly(tmp_path, tiny_checkpoint, signum):
    """A signal once some outputs are written: one line, status 130, every
    output complete and recorded, no temporary file left."""
    _images(str(tmp_path / "in"), 40)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(pipeline.__file__))))
    proc = subprocess.Popen([sys.executable, "-m", "fcn_graph.infer", str(tmp_path / "in"),
                             "--checkpoint", tiny_checkpoint, "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(" ms -> " in line for line in lines), lines
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "fcn_graph.infer: interrupted"
    assert "Traceback" not in err
    from fcn_graph.core.fileio import OUTPUT_RECORD, OutputFolder
    names = [n for n in os.listdir(out) if n != OUTPUT_RECORD]
    assert not [n for n in names if ".tmp" in n]
    folder = OutputFolder(str(out), "--output-dir")
    recorded = [n for n in names if not folder.files[n].get("pending")]
    assert len(recorded) >= 6 and all(folder.owns(n) for n in recorded)
    for name in names:
        assert cv2.imread(str(out / name)) is not None, name
