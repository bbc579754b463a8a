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
import sys

from fcn_graph import cli
from fcn_graph.core.constants import ENGINES, INFERENCE_PRECISIONS, VGG_MEAN_RGB
from fcn_graph.core.errors import run_cli
from fcn_graph.core.fileio import OutputFolder
from fcn_graph.core.ranges import ALPHA_RANGE, BATCH_RANGE, MEAN_RANGE, threads_range
from fcn_graph.engines import images, tiling, video
from fcn_graph.engines.opening import make_segmenter_for, open_checkpoint
from fcn_graph.engines.pipeline import terminate_as_interrupt
from fcn_graph.engines.tta import wrap_tta
from fcn_graph.host import choice
from fcn_graph.host.memory import return_freed_memory
from fcn_graph.training.config import load_config


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
                             "the precision allows; bfloat16 on openvino where measured "
                             "faster; else tf), tf (the reference), onnxruntime (the "
                             "checkpoint converted once to the model export --format onnx "
                             "writes, then kept in the model cache) or openvino (that model "
                             "in OpenVINO, float32 or bfloat16)")
    cli.add_kernels_arg(parser)
    parser.add_argument("--xla", action="store_true",
                        help="compile the TensorFlow graph with XLA (engine tf)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="float32 (default); bfloat16 on a CPU with bf16 units (engine "
                             "tf through oneDNN, TF_ENABLE_ONEDNN_OPTS=1, or openvino); float16 on "
                             "a GPU; int8 through ONNX Runtime, quantized with --calibration")
    parser.add_argument("--exif-rotate", action="store_true",
                        help="turn each image upright as its EXIF orientation tag says (phone "
                             "photos) before segmenting it; outputs are written upright too "
                             "(default: pixels as stored, as evaluate and training read them)")
    cli.add_calibration_arg(parser)
    cli.add_tile_args(parser)
    cli.add_tta_arg(parser)
    return parser


def _settings(parser, args):
    """The checkpoint source, and args completed from the config and the engine
    choice; oneDNN set for inference before TensorFlow loads."""
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
    args.kernels = args.kernels or "auto"
    args.engine, args.engine_reason, calibration = cli.resolve_precision_args(parser, args)
    # before TensorFlow loads: it reads TF_ENABLE_ONEDNN_OPTS once
    choice.apply_onednn("inference", threads=args.threads,
                        require=args.engine == "tf" and args.precision == "bfloat16")
    return source, calibration


def _inputs(parser, args):
    """(videos or images, their output stems, notes), checked before any model loads."""
    videos = video.video_inputs(args.inputs)
    if videos and args.save_scores:
        parser.error("--save-scores applies to images; for videos use --save-labels")
    if args.save_labels and not videos:
        parser.error("--save-labels applies to videos (images always get their label PNG)")
    paths = videos or images.list_images(args.inputs)
    stems, notes = (video.output_stems if videos else images.output_stems)(paths)
    return bool(videos), paths, stems, notes


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    tile = cli.tile_option(parser, args)
    tta = cli.tta_option(parser, args)
    source, calibration = _settings(parser, args)
    videos, paths, stems, notes = _inputs(parser, args)
    opened = open_checkpoint(source, engine=args.engine, precision=args.precision, xla=args.xla,
                             mean_pixel=args.mean, kernels=args.kernels)
    spec = opened.spec
    field = tiling.receptive_field(spec)
    tiling.check_tile(tile, field)
    # Every output is checked before the model loads: the folder made and
    # writable, no output over an input or over a file fcn_graph did not write.
    folder = OutputFolder(args.output_dir, "--output-dir")
    if videos:
        jobs = video.open_videos(paths, stems, folder, save_labels=args.save_labels)
    else:
        kinds = images.OUTPUT_SUFFIXES if args.save_scores else images.OUTPUT_SUFFIXES[:2]
        folder.claim([stem + suffix for stem in stems for suffix in kinds], inputs=paths)
    for note in notes:
        print(note, file=sys.stderr)
    if args.mean is not None and spec.mean_pixel is not None:
        print(f"note: --mean ignored; {opened.prefix}.json gives the mean pixel "
              f"{list(spec.mean_pixel)}", file=sys.stderr)
    return_freed_memory()
    segmenter = make_segmenter_for(opened, engine=args.engine, mean_pixel=args.mean,
                                   threads=args.threads, xla=args.xla, precision=args.precision,
                                   kernels=args.kernels, calibration=calibration)
    budget = args.memory_budget * 2**30
    segmenter = tiling.TiledSegmenter(segmenter, spec, tile=tile, field=field,
                                      budget_bytes=budget)
    segmenter = wrap_tta(segmenter, tta, spec=spec, tile=tile, budget_bytes=budget,
                         note=lambda text: print(text, file=sys.stderr))
    mean_pixel = spec.resolved_mean(args.mean)
    print(f"checkpoint {opened.prefix}: {spec.num_classes} classes, "
          f"mean pixel {[round(v, 3) for v in mean_pixel]}, engine {args.engine} "
          f"({args.engine_reason}), {args.precision}" + (f", --tta {tta.text}" if tta else ""),
          file=sys.stderr)
    try:
        if videos:
            with terminate_as_interrupt():
                return video.segment_videos(jobs, segmenter, alpha=args.alpha, batch=args.batch)
        failures = images.segment_images(paths, stems, segmenter, folder, batch=args.batch,
                                         alpha=args.alpha, save_scores=args.save_scores,
                                         exif_rotate=args.exif_rotate)
    finally:
        segmenter.close()
        folder.flush()
    if failures:
        print(f"{len(failures)} of {len(paths)} images failed", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.infer"))
