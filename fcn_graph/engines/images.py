"""Images in, label PNGs, overlays and scores out: the image inputs of `infer`
(files and folders, checked before any model loads), their output names
(one rule for stems that collide), and the run that segments them with
reading, the network and writing overlapped."""

import collections
import functools
import os
import sys
import time

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import check_input_file, input_problem
from fcn_graph.core.progress import Progress
from fcn_graph.data import image_files
from fcn_graph.data.image_files import IMAGE_EXTENSIONS
from fcn_graph.engines.pipeline import run_pipeline, terminate_as_interrupt


def list_images(inputs):
    """Files as given; directories expanded to their image files, sorted.

    A directory's entries that carry an image extension but are not regular
    files (folders, FIFOs, devices, broken links) are skipped with a note, and
    so is each subfolder (folders are not searched recursively). An input
    named on the command line that is missing, unreadable or not a regular
    file is refused, before any model loads. A file given twice is read once.
    """
    paths, seen = [], set()

    def add(path):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)

    for item in inputs:
        if os.path.isdir(item):
            try:
                names = sorted(os.listdir(item))
            except OSError as err:
                raise UserError(f"{item}: cannot list this folder ({err.strerror})") from None
            found = 0
            for name in names:
                path = os.path.join(item, name)
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    if not name.startswith(".") and os.path.isdir(path):
                        print(f"note: skipping {path}{os.sep}: a subfolder (only the images "
                              f"directly in {item} are read)", file=sys.stderr)
                    continue
                problem = input_problem(path)
                if problem is not None:
                    print(f"note: skipping {path}: {problem.removeprefix('is ')}, not an image "
                          "file",
                          file=sys.stderr)
                    continue
                add(path)
                found += 1
            if not found:
                raise UserError(f"{item}: directory holds no images (expected files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
        else:
            check_input_file(item, "an image file or a folder of images")
            add(item)
    return paths


OUTPUT_SUFFIXES = (".png", "_overlay.png", "_scores.npy")  # labels, overlay, --save-scores


def output_stems(paths):
    """The output stem of each input path, by one rule: the file name without
    its extension (photo.jpg -> photo); when several inputs share that stem
    (compared case-insensitively), each of them keeps its extension in it
    (a.jpg -> a_jpg, a.png -> a_png). Returns (stems, notes).

    Raises UserError when two inputs would still write the same file (x/a.jpg
    and y/a.jpg, or a.png and a_overlay.png), naming both.
    """
    split = [os.path.splitext(os.path.basename(path)) for path in paths]
    count = collections.Counter(stem.casefold() for stem, _ in split)
    stems, groups = [], collections.defaultdict(list)
    for path, (stem, ext) in zip(paths, split):
        if count[stem.casefold()] > 1 and ext:
            groups[stem.casefold()].append((path, f"{stem}_{ext[1:]}"))
            stem = f"{stem}_{ext[1:]}"
        stems.append(stem)
    owner = {}
    for path, stem in zip(paths, stems):
        for suffix in OUTPUT_SUFFIXES:
            key = (stem + suffix).casefold()
            if key in owner:
                raise UserError(f"{owner[key]} and {path}: both would write {stem + suffix}; "
                                "rename one of them or segment them in separate runs")
            owner[key] = path
    notes = [f"note: {', '.join(p for p, _ in group)} share a name; their outputs keep the "
             f"extension: {', '.join(s + '.png' for _, s in group)}"
             for group in groups.values()]
    return stems, notes


def _read(path, exif_rotate=False):
    """(image, None), or (None, the UserError) for an image that cannot be read."""
    try:
        return image_files.read_image(path, exif_rotate=exif_rotate), None
    except UserError as err:
        return None, err


def _batches(read, batch_size):
    """From (path, (image, error)) pairs in order, yield (path, error) for each
    image that could not be read, as soon as it is seen, and lists of (path,
    image) of one size, up to batch_size long."""
    pending = []
    for path, (image, error) in read:
        if error is not None:
            yield path, error
            continue
        if pending and (len(pending) == batch_size or pending[0][1].shape != image.shape):
            yield pending
            pending = []
        pending.append((path, image))
    if pending:
        yield pending


def output_paths(output_dir, stem):
    """(labels, overlay, scores) paths of the output stem `stem`."""
    return tuple(os.path.join(output_dir, stem + suffix) for suffix in OUTPUT_SUFFIXES)


def segment_images(paths, stems, segmenter, folder, *, batch=1, alpha=0.5, save_scores=False,
                   exif_rotate=False):
    """Segment `paths` (output stems `stems`) with `segmenter` into `folder` (an
    `OutputFolder` that claimed the outputs): reading, the network and writing
    overlap (`run_pipeline`), in the order of the inputs; up to `batch`
    consecutive same-sized images run together. Prints a line per image and a
    progress line over several. Returns the paths that could not be read."""
    stem_of = dict(zip(paths, stems))
    failures = []
    progress = Progress(len(paths), label="images", unit="img") if len(paths) > 1 else None
    done = 0

    def compute(read):
        # The network, in this thread; decoding and writing overlap it (pipeline).
        for images in _batches(read, batch):
            if isinstance(images, tuple):  # (path, error): reported in order
                yield images
                continue
            start = time.perf_counter()
            labels, scores = segmenter.run(np.stack([image for _, image in images]),
                                           scores=save_scores)
            seconds = (time.perf_counter() - start) / len(images)
            yield images, labels, scores, seconds

    def show(line, **kwargs):
        if progress:
            progress.write(line, **kwargs)
        else:
            print(line, flush=True, **kwargs)

    def write(result):
        nonlocal done
        if isinstance(result[1], UserError):
            path, err = result
            failures.append(path)
            show(f"error: {err}", file=sys.stderr)
            return
        images, labels, scores, seconds = result
        for index, (path, image) in enumerate(images):
            label = labels[index].astype(np.uint8)
            label_path, overlay_path, scores_path = output_paths(folder.directory, stem_of[path])
            writes = [(label_path, image_files.write_label_png, label),
                      (overlay_path, image_files.write_image,
                       image_files.overlay(image, label, alpha=alpha))]
            if save_scores:
                writes.append((scores_path, image_files.save_npy_atomic,
                               scores[index].astype(np.float32)))
            for out_path, write_file, value in writes:
                try:
                    write_file(out_path, value)
                except OSError as err:
                    raise UserError(f"{out_path}: cannot write ({err.strerror})") from None
                folder.wrote(os.path.basename(out_path))
            height, width = image.shape[:2]
            show(f"{path}: {width}x{height}, {seconds * 1000:.0f} ms -> {label_path}")
        done += len(images)
        if progress:
            progress.update(done + len(failures))

    try:
        with terminate_as_interrupt():
            run_pipeline(paths, read=functools.partial(_read, exif_rotate=exif_rotate),
                         compute=compute, write=write, read_ahead=max(2, batch))
    finally:
        if progress:
            progress.close()
    return failures
