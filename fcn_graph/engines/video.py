"""Segmenting videos: frames decoded, segmented and written overlapped, in order.

    jobs = open_videos(paths, stems, folder, save_labels=True)   # checks, claims outputs
    status = segment_videos(jobs, segmenter, alpha=0.5, batch=1)

A video is recognised by its extension (VIDEO_EXTENSIONS) and confirmed by
opening it with OpenCV's FFmpeg reader. For each video `infer` writes
OUT/<stem>_overlay.avi, every frame blended with its coloured labels, at the
input's frame rate and size, and with `save_labels` the folder OUT/<stem>/
of label PNGs frame_000000.png, frame_000001.png, ... (palette PNGs of class
ids, as `infer` writes for an image).

The overlay is Motion JPEG in an AVI container (MJPG, `OVERLAY_FOURCC`):
OpenCV writes it in every build, with FFmpeg or with its own encoder, and
reads it back; H.264 and other patented codecs are missing from the
opencv-python wheels. FFmpeg's encoder keeps the exact frame rate (29.97)
but only even sizes (it drops an odd last row or column), OpenCV's own keeps
any size but stores a whole number of frames per second: frames of even
size go to FFmpeg, frames of odd size to OpenCV's encoder at the frame rate
rounded (with a note when that changes it). It is written under a temporary
name beside its target and renamed once its last frame is in, so OUT never
holds a partial video.

Frames flow through `pipeline.run_pipeline` as a folder of images does: the
reader thread decodes, the calling thread runs the network (`batch`
consecutive frames at a time), the writer thread blends and encodes, in
frame order. Label PNGs are recorded in OUT/<stem>/.fcn_graph-outputs.json
and the overlay in OUT's record (`fileio.OutputFolder`), so a re-run
replaces only files fcn_graph wrote and nobody changed since.

A missing, damaged or unreadable video, a directory or another non-regular
file, a video without frames and a header with no usable frame rate are
UserErrors naming the file, raised by `open_videos` before the model loads.
A video that ends before the frame count of its header (cut short) keeps the
frames it has: they are written, and `segment_videos` names the video, says
how many frames it read and returns 1.
"""

import math
import os
import stat
import sys
import time

import cv2
import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import OutputFolder, atomic_write, kind_of
from fcn_graph.core.progress import Progress
from fcn_graph.data import image_files
from fcn_graph.engines.pipeline import run_pipeline

# Extensions of the files `infer` reads as videos (containers OpenCV's FFmpeg reads).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
OVERLAY_SUFFIX = "_overlay.avi"  # OUT/<stem>_overlay.avi
OVERLAY_FOURCC = "MJPG"          # Motion JPEG: written and read by every OpenCV build
FRAME_NAME = "frame_{:06d}.png"  # OUT/<stem>/frame_000000.png
CLAIM_AHEAD = 1000               # label names claimed at once past the header's frame count
EXPECTED = f"a video ({', '.join(VIDEO_EXTENSIONS)})"


def is_video(path):
    """Whether `path` carries a video extension (case-insensitive)."""
    return os.fsdecode(path).lower().endswith(VIDEO_EXTENSIONS)


def video_inputs(inputs):
    """The inputs as videos: every input when each has a video extension, []
    when none has. Raises UserError when videos and other inputs are mixed."""
    videos = [item for item in inputs if is_video(item)]
    if videos and len(videos) != len(inputs):
        others = [item for item in inputs if not is_video(item)]
        raise UserError(f"{videos[0]} and {others[0]}: videos and images in one run; segment "
                        "them in separate runs")
    return videos


def output_stems(paths):
    """The output stem of each video: its file name without the extension;
    when several share that stem (compared case-insensitively), each keeps
    its extension in it (a.mp4 -> a_mp4, a.avi -> a_avi). Returns (stems,
    notes). Raises UserError when two videos would still share a stem."""
    split = [os.path.splitext(os.path.basename(path)) for path in paths]
    counts = {}
    for stem, _ in split:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    stems, owner, notes = [], {}, []
    for path, (stem, ext) in zip(paths, split):
        if counts[stem.casefold()] > 1:
            stem = f"{stem}_{ext[1:]}"
            notes.append(f"note: {path} shares its name with another video; its outputs are "
                         f"{stem}{OVERLAY_SUFFIX} and {stem}/")
        if stem.casefold() in owner:
            raise UserError(f"{owner[stem.casefold()]} and {path}: both would write "
                            f"{stem}{OVERLAY_SUFFIX}; segment them in separate runs")
        owner[stem.casefold()] = path
        stems.append(stem)
    return stems, notes


def _quiet_opencv():
    """FFmpeg's and OpenCV's own log lines off (a damaged file is reported on
    one line by the caller); a level the user set in the environment stays."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _backend():
    """FFmpeg where this OpenCV has it (every opencv-python wheel), else any reader."""
    return cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY


def open_capture(name):
    """cv2.VideoCapture of file `name` (FFmpeg's reader where there is one), or None."""
    try:
        return cv2.VideoCapture(name, _backend())
    except cv2.error:
        return None


class VideoReader:
    """An open video: `fps`, `width`, `height`, `frame_count` (the header's,
    None when it gives none), and `frames()`, the generator of (index, RGB
    uint8 [H, W, 3]) in order; `frames_read` and `problem` (why it stopped
    early, or None) once it ends.

    The file is opened once, checked to be a regular file, and read through
    /proc/self/fd where that exists (so the name may be any bytes and cannot
    change under the reader). The first frame is decoded here, so that a
    video without frames is refused before any work."""

    def __init__(self, path):
        self.path = path
        _quiet_opencv()
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file (expected {EXPECTED})") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory (expected {EXPECTED})") from None
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror}; expected {EXPECTED})") from None
        self.fd = fd
        try:
            self._open(path, fd)
        except BaseException:
            self.close()
            raise

    def _open(self, path, fd):
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: is {kind_of(info.st_mode)} (expected {EXPECTED})")
        if info.st_size == 0:
            raise UserError(f"{path}: not a readable video (the file is empty; expected "
                            f"{EXPECTED})")
        name = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else os.fsdecode(path)
        self.capture = open_capture(name)
        if self.capture is None or not self.capture.isOpened():
            raise UserError(f"{path}: not a readable video (OpenCV could not open "
                            f"{info.st_size} bytes as a video; damaged, or not {EXPECTED})")
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS))
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"{path}: the header gives a frame rate of {self.fps:g} fps "
                            "(expected a positive frame rate)")
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count >= 1 else None
        self.first = self._read()
        if self.first is None:
            header = "" if self.frame_count is None else \
                f"; its header gives {self.frame_count} frames"
            raise UserError(f"{path}: holds no frames that can be decoded (expected {EXPECTED}"
                            f"{header})")
        self.height, self.width = self.first.shape[:2]
        self.frames_read = 0
        self.problem = None

    def _read(self):
        """The next frame as RGB uint8 [H, W, 3], or None at the end."""
        try:
            ok, frame = self.capture.read()
        except cv2.error:
            return None
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            frame = frame[:, :, None]
        if frame.dtype != np.uint8 or frame.shape[2] not in (1, 3, 4):
            self.problem = f"frame {self.frames_read} is {frame.dtype} {list(frame.shape)}"
            return None
        if frame.shape[2] == 1:
            return np.ascontiguousarray(np.repeat(frame, 3, axis=2))
        return np.ascontiguousarray(frame[:, :, 2::-1])           # BGR(A) -> RGB

    def frames(self):
        """(index, RGB frame) in order, from the first; stops at the end of the
        stream or at a frame whose size differs from the first's (`problem`)."""
        frame = self.first
        while frame is not None:
            if frame.shape[:2] != (self.height, self.width):
                self.problem = (f"frame {self.frames_read} is {frame.shape[1]}x{frame.shape[0]}, "
                                f"the first was {self.width}x{self.height}")
                return
            yield self.frames_read, frame
            self.frames_read += 1
            frame = self._read()

    def close(self):
        capture = getattr(self, "capture", None)
        if capture is not None:
            capture.release()
            self.capture = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class VideoJob:
    """One video to segment: its reader and where its outputs go."""

    def __init__(self, reader, overlay_path, folder, labels=None):
        self.reader, self.overlay_path, self.folder = reader, overlay_path, folder
        self.labels = labels               # OutputFolder of OUT/<stem>/, or None
        self.claimed = 0                   # label names claimed: frames 0..claimed-1


def frame_names(start, stop):
    return [FRAME_NAME.format(index) for index in range(start, stop)]


def _label_folder(output_dir, stem, flag):
    """The OutputFolder OUT/<stem>, which must be a real folder (not a link)."""
    path = os.path.join(output_dir, stem)
    if os.path.islink(path):
        raise UserError(f"{path}: is a symbolic link; expected a folder for the label PNGs "
                        f"(move it or choose another {flag})")
    return OutputFolder(path, flag)


def open_videos(paths, stems, folder, *, save_labels=False, flag="--output-dir"):
    """Open every video (`VideoReader`) and claim its outputs in `folder`
    (an OutputFolder): <stem>_overlay.avi, and with `save_labels` the label
    PNGs of the header's frames in the folder <stem>/. Returns VideoJobs;
    raises UserError (every video closed) for the first that cannot be read
    or written."""
    jobs = []
    try:
        for path, stem in zip(paths, stems):
            reader = VideoReader(path)
            jobs.append(VideoJob(reader, os.path.join(folder.directory, stem + OVERLAY_SUFFIX),
                                 folder))
        folder.claim([stem + OVERLAY_SUFFIX for stem in stems], inputs=paths)
        if save_labels:
            for job, stem in zip(jobs, stems):
                job.labels = _label_folder(folder.directory, stem, flag)
                job.claimed = job.reader.frame_count or 0
                job.labels.claim(frame_names(0, job.claimed), inputs=paths)
    except BaseException:
        for job in jobs:
            job.reader.close()
        raise
    return jobs


def writer_settings(fps, width, height):
    """(OpenCV backend, frame rate) that write MJPG frames of width x height
    unchanged: FFmpeg at `fps` for even sizes, OpenCV's own encoder at `fps`
    rounded to a whole number for odd ones (or without FFmpeg)."""
    if width % 2 == 0 and height % 2 == 0 and _backend() == cv2.CAP_FFMPEG:
        return cv2.CAP_FFMPEG, fps
    return cv2.CAP_OPENCV_MJPEG, float(round(fps))


def _open_writer(path, fps, width, height, stream, shown):
    """An OpenCV VideoWriter of MJPG frames at `path` (an .avi; `shown` in messages)."""
    backend, rate = writer_settings(fps, width, height)
    if rate != fps:
        print(f"note: {shown}: frames of {width}x{height} are written by OpenCV's MJPEG encoder, "
              f"which stores whole frame rates: {rate:g} fps instead of {fps:g}",
              file=stream)
    fourcc = cv2.VideoWriter_fourcc(*OVERLAY_FOURCC)
    try:
        writer = cv2.VideoWriter(os.fsdecode(path), backend, fourcc, rate, (width, height))
    except (cv2.error, UnicodeError):
        writer = None
    if writer is None or not writer.isOpened():
        raise UserError(f"{shown}: cannot write a {OVERLAY_FOURCC} video of {width}x{height} at "
                        f"{fps:g} fps with OpenCV")
    return writer


def segment_video(job, segmenter, *, alpha=0.5, batch=1, stream=None):
    """Segment every frame of `job` with `segmenter` (`.run(batch_uint8) ->
    (labels, scores)`), writing the overlay video and the label PNGs, with a
    progress line on `stream` (stderr). Returns the number of frames written."""
    reader, stream = job.reader, stream or sys.stderr
    progress = Progress(reader.frame_count, label=f"{reader.path}: frames", unit="frame",
                        stream=stream)
    done = 0

    def compute(pairs):
        # The network, in this thread; decoding and encoding overlap it (pipeline).
        pending, first = [], 0
        for (index, frame), _ in pairs:
            if not pending:
                first = index
            pending.append(frame)
            if len(pending) == batch:
                yield first, pending, segmenter.run(np.stack(pending))[0]
                pending = []
        if pending:
            yield first, pending, segmenter.run(np.stack(pending))[0]

    def write(result):
        nonlocal done
        first, frames, labels = result
        for offset, (frame, label) in enumerate(zip(frames, labels)):
            label = label.astype(np.uint8)
            blended = image_files.overlay(frame, label, alpha=alpha)
            writer.write(np.ascontiguousarray(blended[:, :, ::-1]))     # RGB -> BGR
            if job.labels is not None:
                _write_label(job, first + offset, label)
        done += len(frames)
        if progress.total is not None and done > progress.total:
            progress.total = None                      # the header undercounted
        progress.update(done)

    start = time.perf_counter()
    try:
        with atomic_write(job.overlay_path) as tmp:
            writer = _open_writer(tmp, reader.fps, reader.width, reader.height, stream,
                                  job.overlay_path)
            try:
                run_pipeline(reader.frames(), read=lambda item: None, compute=compute,
                             write=write, read_ahead=max(2, batch))
            finally:
                writer.release()
            if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
                raise UserError(f"{job.overlay_path}: OpenCV wrote no video (a full disk?)")
    finally:
        progress.close()
        if job.labels is not None:
            job.labels.flush()
    job.folder.wrote(os.path.basename(job.overlay_path))
    seconds = time.perf_counter() - start
    where = job.overlay_path + (f" and {job.labels.directory}{os.sep}" if job.labels else "")
    print(f"{reader.path}: {done} frames {reader.width}x{reader.height} at {reader.fps:g} fps, "
          f"{done / seconds if seconds > 0 else 0:.2f} frames/s -> {where}", flush=True)
    return done


def _write_label(job, index, label):
    """Write frame `index`'s label PNG into the job's label folder, claiming
    names past the header's frame count a block at a time."""
    if index >= job.claimed:
        job.labels.claim(frame_names(job.claimed, index + CLAIM_AHEAD))
        job.claimed = index + CLAIM_AHEAD
    name = FRAME_NAME.format(index)
    path = os.path.join(job.labels.directory, name)
    try:
        image_files.write_label_png(path, label)
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror})") from None
    job.labels.wrote(name)


def segment_videos(jobs, segmenter, *, alpha=0.5, batch=1, stream=None):
    """Segment each job's video in turn (`segment_video`), closing every
    reader. Returns the exit status: 0, or 1 when a video ended before the
    frame count of its header (its frames are written and it is named)."""
    stream = stream or sys.stderr
    status = 0
    try:
        for job in jobs:
            written = segment_video(job, segmenter, alpha=alpha, batch=batch, stream=stream)
            reader = job.reader
            expected = reader.frame_count
            if reader.problem is not None or (expected is not None and written < expected):
                reason = reader.problem or "cut short or damaged"
                header = "" if expected is None else f" of the {expected} its header gives"
                print(f"warning: {reader.path}: read {written} frames{header} ({reason}); "
                      f"wrote those {written}", file=stream, flush=True)
                status = 1
    finally:
        for job in jobs:
            job.reader.close()
    return status
