"""Segment images with an FCN-8s checkpoint.

    python -m fcn_graph.infer photo.jpg more_photos/ --checkpoint runs/voc --output-dir out
    python -m fcn_graph.infer photo.jpg --config config.json   # latest checkpoint in train.log_dir

For each image (at its own size) writes OUT/<stem>.png, a palette PNG whose
pixel values are the class ids (VOC colours), OUT/<stem>_overlay.png, the
image blended with the coloured mask, and with --save-scores
OUT/<stem>_scores.npy, float32 [H, W, K] logits (with --tta, the mean
probabilities of the variants). When several inputs share
a stem (a.jpg and a.png), their outputs keep the extension: a_jpg.png,
a_png.png.

A video (clip.mp4; `fcn_graph.engines.video.VIDEO_EXTENSIONS`) gives
OUT/<stem>_overlay.avi, its frames blended with their labels (MJPG, at the
video's frame rate and size), and with --save-labels OUT/<stem>/frame_000000.png,
... (palette PNGs of class ids).

infer creates OUT where missing and overwrites only files it wrote there
before (listed in OUT/.fcn_graph-outputs.json and unchanged since); it
refuses, before loading the model, to write over any other file, and never
over one of its inputs.
"""

import argparse
import collections
import functools
import os
import sys
import time

import numpy as np

from fcn_graph import cli
from fcn_graph.core.constants import ENGINES, INFERENCE_PRECISIONS, VGG_MEAN_RGB
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.fileio import OutputFolder, check_input_file, input_problem
from fcn_graph.core.progress import Progress
from fcn_graph.core.ranges import ALPHA_RANGE, BATCH_RANGE, MEAN_RANGE, threads_range
from fcn_graph.data import image_files
from fcn_graph.data.image_files import IMAGE_EXTENSIONS
from fcn_graph.engines import tiling, video
from fcn_graph.engines.pipeline import run_pipeline, terminate_as_interrupt
from fcn_graph.engines.tta import wrap_tta
from fcn_graph.host import choice, tflog
from fcn_graph.host.memory import return_freed_memory
from fcn_graph.training.config import load_config


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


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files and/or directories of images, or video files")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint prefix, or a directory (its latest checkpoint); "
                             "default with --config: the latest in train.log_dir")
    cli.add_config_args(parser)
    parser.add_argument("--output-dir", default="predictions",
                        help="where to write the outputs (default: predictions)")
    parser.add_argument("--save-scores", action="store_true",
                        help="also write <stem>_scores.npy, float32 [H, W, K] logits (with "
                             "--tta: the mean probabilities)")
    parser.add_argument("--save-labels", action="store_true",
                        help="videos: also write each frame's labels as "
                             "<stem>/frame_000000.png, ... (palette PNGs of class ids)")
    parser.add_argument("--mean", type=MEAN_RANGE, nargs=3, metavar=("R", "G", "B"),
                        help="mean pixel for checkpoints without a sidecar, 0..255 each "
                             f"(default: the VGG mean {list(VGG_MEAN_RGB)})")
    parser.add_argument("--batch", type=BATCH_RANGE, default=1,
                        help="run up to N consecutive same-sized images together "
                             f"({BATCH_RANGE.describe()}, default 1)")
    parser.add_argument("--alpha", type=ALPHA_RANGE, default=0.5,
                        help="opacity of the mask in the overlay (0..1, default 0.5)")
    parser.add_argument("--threads", type=threads_range(), default=None,
                        help="CPU threads per op (default: every core; at most "
                             "4 per core)")
    parser.add_argument("--engine", choices=("auto",) + ENGINES, default="auto",
                        help="auto (default: onnxruntime on a CPU when it is installed and "
                             "the precision allows, else tf), tf (the reference), or "
                             "onnxruntime (the checkpoint converted once to the model export "
                             "--format onnx writes, then kept in the model cache)")
    cli.add_kernels_arg(parser)
    parser.add_argument("--xla", action="store_true",
                        help="compile the TensorFlow graph with XLA (engine tf)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="float32 (default); bfloat16 through oneDNN (needs "
                             "TF_ENABLE_ONEDNN_OPTS=1 and a CPU with bf16 units); float16 on "
                             "a GPU; int8 through ONNX Runtime, quantized with --calibration")
    parser.add_argument("--exif-rotate", action="store_true",
                        help="turn each image upright as its EXIF orientation tag says (phone "
                             "photos) before segmenting it; outputs are written upright too "
                             "(default: pixels as stored, as evaluate and training read them)")
    cli.add_calibration_arg(parser)
    cli.add_tile_args(parser)
    cli.add_tta_arg(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    tile = cli.tile_option(parser, args)
    tta = cli.tta_option(parser, args)
    if args.checkpoint is None and args.config is None:
        parser.error("--checkpoint: required unless --config names a train.log_dir")
    source = args.checkpoint
    if args.config is not None or args.overrides:
        reads = [key for key, used in (("train.log_dir", args.checkpoint is None),
                                       ("train.threads", not args.threads),
                                       ("model.kernels", args.kernels is None)) if used]
        config = load_config(args.config, args.overrides, reads=reads, command="fcn_graph.infer")
        source = source or config.train.log_dir
        args.threads = args.threads or config.train.threads
        args.kernels = args.kernels or config.model.kernels
    args.engine, args.engine_reason, calibration = cli.resolve_precision_args(parser, args)
    # before TensorFlow loads: it reads TF_ENABLE_ONEDNN_OPTS once
    choice.apply_onednn("inference", threads=args.threads,
                            require=args.engine == "tf" and args.precision == "bfloat16")
    videos = video.video_inputs(args.inputs)
    if videos and args.save_scores:
        parser.error("--save-scores applies to images; for videos use --save-labels")
    if args.save_labels and not videos:
        parser.error("--save-labels applies to videos (images always get their label PNG)")
    paths = videos or list_images(args.inputs)
    stems, notes = (video.output_stems if videos else output_stems)(paths)
    cached = None
    if args.engine == "onnxruntime" and args.precision == "float32" and not args.xla:
        # A model converted before: no TensorFlow at all (model_cache).
        from fcn_graph.engines.onnx_engine import find_converted
        cached = find_converted(source, mean_pixel=args.mean, kernels=args.kernels or "auto")
    if cached is not None:
        prefix, spec = cached.prefix, cached.spec
    else:
        tflog.load_tensorflow()
        from fcn_graph.weights import checkpoint
        prefix = checkpoint.resolve_checkpoint(source)
        spec = checkpoint.model_spec_from_checkpoint(prefix)
    image_files.check_num_classes(spec.num_classes, f"{prefix} (checkpoint)")
    field = tiling.receptive_field(spec)
    tiling.check_tile(tile, field)
    # Every output is checked before the model loads: the folder made and
    # writable, no output over an input or over a file fcn_graph did not write.
    folder = OutputFolder(args.output_dir, "--output-dir")
    kinds = OUTPUT_SUFFIXES if args.save_scores else OUTPUT_SUFFIXES[:2]
    if videos:
        jobs = video.open_videos(paths, stems, folder, save_labels=args.save_labels)
    else:
        folder.claim([stem + suffix for stem in stems for suffix in kinds], inputs=paths)
    stem_of = dict(zip(paths, stems))
    for note in notes:
        print(note, file=sys.stderr)
    if args.mean is not None and spec.mean_pixel is not None:
        print(f"note: --mean ignored; {prefix}.json gives the mean pixel "
              f"{list(spec.mean_pixel)}", file=sys.stderr)
    return_freed_memory()
    if cached is not None:
        from fcn_graph.engines.onnx_engine import OnnxSegmenter
        segmenter = OnnxSegmenter(cached, threads=args.threads)
    else:
        from fcn_graph.engines.segmenter import make_segmenter
        from fcn_graph.weights import checkpoint
        segmenter = checkpoint.with_newest(source, lambda pinned: make_segmenter(
            pinned, engine=args.engine, mean_pixel=args.mean, threads=args.threads, xla=args.xla,
            precision=args.precision, kernels=args.kernels or "auto", calibration=calibration),
            prefix=prefix)
    segmenter = tiling.TiledSegmenter(segmenter, spec, tile=tile, field=field,
                                      budget_bytes=args.memory_budget * 2**30)
    segmenter = wrap_tta(segmenter, tta, spec=spec, tile=tile,
                         budget_bytes=args.memory_budget * 2**30,
                         note=lambda text: print(text, file=sys.stderr))
    mean_pixel = spec.resolved_mean(args.mean)
    print(f"checkpoint {prefix}: {spec.num_classes} classes, "
          f"mean pixel {[round(v, 3) for v in mean_pixel]}, engine {args.engine} ({args.engine_reason}), "
          f"{args.precision}" + (f", --tta {tta.text}" if tta else ""),
          file=sys.stderr)

    if videos:
        try:
            with terminate_as_interrupt():
                return video.segment_videos(jobs, segmenter, alpha=args.alpha, batch=args.batch)
        finally:
            segmenter.close()
            folder.flush()
    failures = []
    progress = Progress(len(paths), label="images", unit="img") if len(paths) > 1 else None
    done = 0

    def compute(read):
        # The network, in this thread; decoding and writing overlap it (pipeline).
        for batch in _batches(read, args.batch):
            if isinstance(batch, tuple):  # (path, error): reported in order
                yield batch
                continue
            start = time.perf_counter()
            labels, scores = segmenter.run(np.stack([image for _, image in batch]),
                                           scores=args.save_scores)
            seconds = (time.perf_counter() - start) / len(batch)
            yield batch, labels, scores, seconds

    def write(result):
        nonlocal done
        if isinstance(result[1], UserError):
            path, err = result
            failures.append(path)
            message = f"error: {err}"
            if progress:
                progress.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)
            return
        batch, labels, scores, seconds = result
        for index, (path, image) in enumerate(batch):
            label = labels[index].astype(np.uint8)
            label_path, overlay_path, scores_path = output_paths(args.output_dir, stem_of[path])
            writes = [(label_path, image_files.write_label_png, label),
                      (overlay_path, image_files.write_image,
                       image_files.overlay(image, label, alpha=args.alpha))]
            if args.save_scores:
                writes.append((scores_path, image_files.save_npy_atomic,
                               scores[index].astype(np.float32)))
            for out_path, write_file, value in writes:
                try:
                    write_file(out_path, value)
                except OSError as err:
                    raise UserError(f"{out_path}: cannot write ({err.strerror})") from None
                folder.wrote(os.path.basename(out_path))
            height, width = image.shape[:2]
            line = f"{path}: {width}x{height}, {seconds * 1000:.0f} ms -> {label_path}"
            if progress:
                progress.write(line)
            else:
                print(line, flush=True)
        done += len(batch)
        if progress:
            progress.update(done + len(failures))

    try:
        with terminate_as_interrupt():
            run_pipeline(paths, read=functools.partial(_read, exif_rotate=args.exif_rotate),
                         compute=compute, write=write,
                         read_ahead=max(2, args.batch))
    finally:
        if progress:
            progress.close()
        segmenter.close()
        folder.flush()
    if failures:
        print(f"{len(failures)} of {len(paths)} images failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.infer"))
