"""`python -m fcn_graph.infer clip.avi`: videos written by the test with OpenCV,
segmented on a tiny checkpoint; the frames' labels equal those of the same
frames segmented as images; the overlay video's size, rate and order; cut-short,
damaged and otherwise bad videos; the no-overwrite rules."""

import io
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from tinyvgg import write_tiny_checkpoint

from fcn_graph import infer
from fcn_graph.core.errors import run_cli
from fcn_graph.core.fileio import OutputFolder
from fcn_graph.core.progress import Progress
from fcn_graph.data.image_files import overlay, read_label
from fcn_graph.engines import video

FRAMES, HEIGHT, WIDTH, FPS = 5, 37, 45, 7


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("video_ckpt"))


def _frames(count=FRAMES, height=HEIGHT, width=WIDTH, seed=0):
    """Frames with a different large-scale pattern each, so that labels differ
    from frame to frame (and a change of order shows)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        frame = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
        frames.append(frame)
    return frames


def write_video(path, frames, fps=FPS, backend=cv2.CAP_OPENCV_MJPEG):
    """An MJPG .avi of BGR `frames` (OpenCV's own encoder keeps odd sizes)."""
    height, width = frames[0].shape[:2] if frames else (HEIGHT, WIDTH)
    writer = cv2.VideoWriter(str(path), backend, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def decode(path):
    """Every frame OpenCV decodes from `path` (BGR), and the header's rate."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def _infer(*argv):
    return run_cli(infer.main, [str(a) for a in argv], prog="fcn_graph.infer")


def _image_run(prefix, frames, tmp_path, *extra):
    """Label arrays and overlays of `frames` (BGR) segmented as PNG images."""
    images = tmp_path / "frames_as_images"
    images.mkdir()
    for index, frame in enumerate(frames):
        assert cv2.imwrite(str(images / f"f{index:03d}.png"), frame)
    out = tmp_path / "image_out"
    assert _infer(images, "--checkpoint", prefix, "--output-dir", out, *extra) == 0
    labels = [read_label(out / f"f{index:03d}.png") for index in range(len(frames))]
    return labels


@pytest.mark.parametrize("batch", ["1", "2"])
def test_video_frames_equal_the_image_path(prefix, tmp_path, capsys, batch):
    clip = write_video(tmp_path / "clip.avi", _frames())
    decoded, _ = decode(clip)
    assert len(decoded) == FRAMES and decoded[0].shape == (HEIGHT, WIDTH, 3)
    out = tmp_path / "out"
    assert _infer(clip, "--checkpoint", prefix, "--output-dir", out, "--save-labels",
                  "--batch", batch) == 0
    err = capsys.readouterr().err
    assert f"frames  {FRAMES}/{FRAMES}" in err and "frame/s" in err

    want = _image_run(prefix, decoded, tmp_path)
    names = sorted(os.listdir(out / "clip"))
    assert names == [".fcn_graph-outputs.json"] + [f"frame_{i:06d}.png" for i in range(FRAMES)]
    got = [read_label(out / "clip" / f"frame_{i:06d}.png") for i in range(FRAMES)]
    for index in range(FRAMES):
        np.testing.assert_array_equal(got[index], want[index])
    assert any(not np.array_equal(want[0], w) for w in want[1:])  # the order is visible

    # The overlay: same size, rate and frame count; frame i is the overlay of frame i.
    frames, fps = decode(out / "clip_overlay.avi")
    assert len(frames) == FRAMES and fps == pytest.approx(FPS)
    assert frames[0].shape == (HEIGHT, WIDTH, 3)
    expected = [overlay(np.ascontiguousarray(f[:, :, ::-1]), w)[:, :, ::-1]
                for f, w in zip(decoded, want)]
    for index, frame in enumerate(frames):
        errors = [np.abs(frame.astype(int) - e).mean() for e in expected]
        others = errors[:index] + errors[index + 1:]
        assert errors[index] < 0.5 * min(others)      # MJPG is lossy: nearest by far


def test_even_size_keeps_a_fractional_rate_and_odd_size_rounds_it(prefix, tmp_path, capsys):
    even = write_video(tmp_path / "even.avi", _frames(3, 36, 44), fps=29.97,
                       backend=cv2.CAP_FFMPEG)
    out = tmp_path / "out"
    assert _infer(even, "--checkpoint", prefix, "--output-dir", out) == 0
    frames, fps = decode(out / "even_overlay.avi")
    assert len(frames) == 3 and frames[0].shape == (36, 44, 3) and fps == pytest.approx(29.97)
    assert not os.path.exists(out / "even")           # labels only with --save-labels
    assert video.writer_settings(29.97, 45, 37) == (cv2.CAP_OPENCV_MJPEG, 30.0)
    assert video.writer_settings(29.97, 44, 36) == (cv2.CAP_FFMPEG, 29.97)


def test_cut_short_video_keeps_its_frames(prefix, tmp_path, capsys):
    clip = write_video(tmp_path / "clip.avi", _frames())
    data = open(clip, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) * 3 // 4])
    readable, _ = decode(cut)
    assert 0 < len(readable) < FRAMES
    out = tmp_path / "out"
    assert _infer(cut, "--checkpoint", prefix, "--output-dir", out, "--save-labels") == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert lines == [f"warning: {cut}: read {len(readable)} frames of the {FRAMES} its header "
                     f"gives (cut short or damaged); wrote those {len(readable)}"]
    frames, _ = decode(out / "cut_overlay.avi")
    assert len(frames) == len(readable)
    assert sorted(n for n in os.listdir(out / "cut") if n.endswith(".png")) == \
        [f"frame_{i:06d}.png" for i in range(len(readable))]
    want = _image_run(prefix, readable, tmp_path)
    for index in range(len(readable)):
        np.testing.assert_array_equal(read_label(out / "cut" / f"frame_{index:06d}.png"),
                                      want[index])


class _ZeroRate:
    """A capture whose header gives 0 fps (the fault injected)."""

    def __init__(self, capture):
        self.capture = capture

    def get(self, prop):
        return 0.0 if prop == cv2.CAP_PROP_FPS else self.capture.get(prop)

    def __getattr__(self, name):
        return getattr(self.capture, name)


def _bad_video(kind, path, monkeypatch):
    if kind == "damaged":
        data = open(write_video(path.with_suffix(".ok.avi"), _frames()), "rb").read()
        path.write_bytes(data[:2000])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(3).bytes(5000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "missing":
        pass
    elif kind == "no frames":
        os.replace(write_video(path.with_suffix(".avi"), []), path)
    elif kind == "0 fps":
        os.replace(write_video(path.with_suffix(".avi"), _frames(2)), path)
        real = video.open_capture
        monkeypatch.setattr(video, "open_capture", lambda name: _ZeroRate(real(name)))
    return {"damaged": "not a readable video", "garbage": "not a readable video",
            "empty": "the file is empty", "directory": "is a directory", "fifo": "is a FIFO",
            "missing": "no such file", "no frames": "holds no frames",
            "0 fps": "frame rate of 0 fps"}[kind]


@pytest.mark.parametrize("kind", ["damaged", "garbage", "empty", "directory", "fifo", "missing",
                                  "no frames", "0 fps"])
def test_bad_video_is_one_line(prefix, tmp_path, capsys, monkeypatch, kind):
    path = tmp_path / "clip.mp4"
    words = _bad_video(kind, path, monkeypatch)
    out = tmp_path / "out"
    assert _infer(path, "--checkpoint", prefix, "--output-dir", out, "--save-labels") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fcn_graph.infer: error: {path}: ")
    assert words in err[0]
    assert not os.path.exists(out / "clip_overlay.avi") and not os.path.exists(out / "clip")


def test_damaged_video_prints_one_line_only(prefix, tmp_path):
    """In a fresh process, so that FFmpeg's and OpenCV's own log lines would show."""
    clip = write_video(tmp_path / "clip.avi", _frames(2), backend=cv2.CAP_FFMPEG)
    os.rename(clip, tmp_path / "clip.mp4")
    cut = tmp_path / "cut.mp4"
    writer = cv2.VideoWriter(str(tmp_path / "whole.mp4"), cv2.CAP_FFMPEG,
                             cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH - 1, HEIGHT - 1))
    for frame in _frames(3, HEIGHT - 1, WIDTH - 1):
        writer.write(frame)
    writer.release()
    data = (tmp_path / "whole.mp4").read_bytes()
    cut.write_bytes(data[:len(data) // 2])                  # the index (moov) is at the end
    run = subprocess.run([sys.executable, "-m", "fcn_graph.infer", str(cut), "--checkpoint",
                          prefix, "--output-dir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"fcn_graph.infer: error: {cut}: not a readable video (OpenCV could not open "
        f"{len(data) // 2} bytes as a video; damaged, or not {video.EXPECTED})"]


def test_flags_and_mixed_inputs_are_refused(prefix, tmp_path, capsys):
    clip = write_video(tmp_path / "clip.avi", _frames(2))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _frames(1)[0])
    assert _infer(clip, image, "--checkpoint", prefix) == 2
    assert "videos and images in one run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        infer.main([clip, "--checkpoint", prefix, "--save-scores"])
    assert stop.value.code == 2
    assert "--save-scores applies to images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([str(image), "--checkpoint", prefix, "--save-labels"])
    assert "--save-labels applies to videos" in capsys.readouterr().err


def test_outputs_are_never_written_over_foreign_files(prefix, tmp_path, capsys):
    clip = write_video(tmp_path / "clip.avi", _frames(3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_overlay.avi").write_bytes(b"mine")
    assert _infer(clip, "--checkpoint", prefix, "--output-dir", out) == 2
    assert "clip_overlay.avi: exists and was not written by fcn_graph" in capsys.readouterr().err
    assert (out / "clip_overlay.avi").read_bytes() == b"mine"
    os.remove(out / "clip_overlay.avi")

    (out / "clip").mkdir()
    (out / "clip" / "frame_000001.png").write_bytes(b"mine")
    assert _infer(clip, "--checkpoint", prefix, "--output-dir", out, "--save-labels") == 2
    assert "frame_000001.png: exists and was not written" in capsys.readouterr().err
    assert (out / "clip" / "frame_000001.png").read_bytes() == b"mine"
    assert not os.path.exists(out / "clip_overlay.avi")
    os.remove(out / "clip" / "frame_000001.png")

    # A re-run replaces its own outputs; no temporary file is left.
    for _ in range(2):
        assert _infer(clip, "--checkpoint", prefix, "--output-dir", out, "--save-labels") == 0
    assert sorted(os.listdir(out)) == [".fcn_graph-outputs.json", "clip", "clip_overlay.avi"]
    assert len(os.listdir(out / "clip")) == 4

    # A link where the label folder goes is refused, and nothing is written through it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = tmp_path / "out2"
    other.mkdir()
    os.symlink(elsewhere, other / "clip")
    assert _infer(clip, "--checkpoint", prefix, "--output-dir", other, "--save-labels") == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert os.listdir(elsewhere) == []


class _StopAt:
    """A segmenter that labels every pixel 1 and raises KeyboardInterrupt on
    its call number `stop` (Ctrl-C in the middle of a video)."""

    def __init__(self, stop):
        self.calls, self.stop = 0, stop

    def run(self, batch, scores=False):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return np.ones(batch.shape[:3], np.int64), None

    def close(self):
        pass


def test_interrupted_video_leaves_no_partial_overlay(tmp_path):
    clip = write_video(tmp_path / "clip.avi", _frames())
    out = tmp_path / "out"
    folder = OutputFolder(str(out), "--output-dir")
    jobs = video.open_videos([clip], ["clip"], folder, save_labels=True)
    with pytest.raises(KeyboardInterrupt):
        video.segment_videos(jobs, _StopAt(4), stream=io.StringIO())
    folder.flush()
    assert sorted(os.listdir(out)) == [".fcn_graph-outputs.json", "clip"]   # no temporary
    written = sorted(n for n in os.listdir(out / "clip") if n.endswith(".png"))
    assert written == [f"frame_{i:06d}.png" for i in range(len(written))] and len(written) <= 3
    labels = OutputFolder(str(out / "clip"), "--output-dir")
    assert all(labels.owns(name) for name in written)
    for name in written:
        np.testing.assert_array_equal(read_label(out / "clip" / name),
                                      np.ones((HEIGHT, WIDTH), np.uint8))


def test_progress_without_a_known_total_shows_count_and_rate():
    stream = io.StringIO()
    progress = Progress(None, label="clip.mp4: frames", unit="frame", stream=stream, every=0)
    progress.update(7)
    line = stream.getvalue().strip()
    assert line.startswith("clip.mp4: frames  7  ") and "frame/s" in line and "ETA" not in line
    known = Progress(10, label="frames", unit="frame", stream=io.StringIO())
    time.sleep(0.01)
    assert "ETA" in known.line(5, {}) and "5/10" in known.line(5, {})
