"""Evaluate a checkpoint on a dataset split: pixel accuracy, mean accuracy, mean IU,
frequency-weighted IU and the IoU of every class, from one confusion matrix.

    python -m fcn_graph.evaluate --config config.json
    python -m fcn_graph.evaluate --config config.json --checkpoint runs/shapes \\
        --split val --json val.json --save-predictions out/val

Each image runs at its full size, one at a time, through one graph. The model
is rebuilt from the checkpoint (class count and widths from its variables, the
mean pixel from its sidecar); the dataset comes from the config.
"""

import argparse
import os
import sys

import numpy as np

from fcn_graph import cpu_choice, image_files, tflog, tiling
from fcn_graph.config import SPLIT_KEYS, add_config_args, add_kernels_arg, load_config
from fcn_graph.constants import ENGINES, IGNORE_LABEL, INFERENCE_PRECISIONS
from fcn_graph.errors import UserError, run_cli
from fcn_graph.fileio import OutputFolder, claim_output, record_output, write_json_atomic
from fcn_graph.memory import return_freed_memory
from fcn_graph.metrics import format_metrics, format_value, metrics_record
from fcn_graph.progress import Progress
from fcn_graph.quantize import add_calibration_arg, resolve_precision_args


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint prefix or directory (default: the latest in "
                             "train.log_dir)")
    parser.add_argument("--split", default=None,
                        help="dataset split to evaluate (default: data.val_split)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the metrics to FILE as JSON (an existing FILE is "
                             "replaced only if it holds metrics evaluate wrote)")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="write each prediction as DIR/<stem>.png, a palette PNG of "
                             "class ids (DIR is created; a file there that fcn_graph did not "
                             "write, or one of the dataset's, is never replaced)")
    parser.add_argument("--engine", choices=("auto",) + ENGINES, default="auto",
                        help="auto (default: onnxruntime on a CPU when it is installed and "
                             "the precision allows, else tf), tf (the reference), or "
                             "onnxruntime (the same network as export --format onnx writes "
                             "it; scores agree to 1e-4)")
    add_kernels_arg(parser)
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="float32 (default); bfloat16 (engine tf, oneDNN, a CPU with bf16 "
                             "units) or int8 (engine onnxruntime, with --calibration): also "
                             "runs float32 on the same split and reports the mean IU of both "
                             "and the fraction of pixels whose labels agree")
    add_calibration_arg(parser)
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate only the first N images of the split")
    tiling.add_tile_args(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images: expected a positive integer, found {args.max_images}")
    tile = tiling.tile_option(parser, args)
    calibration = resolve_precision_args(parser, args)
    reads = [*SPLIT_KEYS, "model.num_classes", "train.threads"]
    if args.checkpoint is None:
        reads.append("train.log_dir")
    if not args.split:
        reads.append("data.val_split")
    if args.kernels is None:
        reads.append("model.kernels")
    config = load_config(args.config, args.overrides, reads=reads, command="fcn_graph.evaluate")
    if args.json:  # replaced only when fcn_graph wrote it there and nobody changed it
        claim_output(args.json, "--json")
    source = args.checkpoint or config.train.log_dir
    if args.checkpoint is None and not os.path.isdir(source):
        raise UserError(f"{source}: no such directory (train.log_dir); train first or pass "
                        f"--checkpoint")
    # before TensorFlow loads: it reads TF_ENABLE_ONEDNN_OPTS once
    cpu_choice.apply_onednn("inference", threads=config.train.threads,
                            require=args.engine == "tf" and args.precision == "bfloat16")
    tflog.load_tensorflow()
    from fcn_graph import checkpoint, datasets
    from fcn_graph.evaluation import evaluate_checkpoint

    prefix = checkpoint.resolve_checkpoint(source)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    image_files.check_num_classes(spec.num_classes, f"{prefix} (checkpoint)")
    field = tiling.receptive_field(spec)
    tiling.check_tile(tile, field)
    split = args.split or config.data.val_split
    files = datasets.open_config_split(config, split)
    num_classes = spec.num_classes
    if config.model.num_classes is not None and config.model.num_classes != num_classes:
        raise UserError(f"model.num_classes: is {config.model.num_classes} but the checkpoint "
                        f"{prefix} has {num_classes} classes")
    if files.class_names and len(files.class_names) != num_classes:
        raise UserError(f"{prefix}: the checkpoint has {num_classes} classes but the "
                        f"{files.kind} dataset has {len(files.class_names)}")
    class_names = datasets.class_names_for(files, num_classes)

    return_freed_memory()
    total = len(files) if args.max_images is None else min(len(files), args.max_images)
    folder = None
    if args.save_predictions:
        # Never over the dataset's own files, nor a file fcn_graph did not write there.
        folder = OutputFolder(args.save_predictions, "--save-predictions")
        folder.claim([name + ".png" for name in files.names[:total]],
                     inputs=files.image_paths[:total] + files.label_paths[:total])

    def save(name, image, label, prediction):
        path = os.path.join(args.save_predictions, name + ".png")
        try:
            image_files.write_label_png(path, prediction.astype(np.uint8))
        except OSError as err:
            raise UserError(f"{path}: cannot write ({err.strerror})") from None
        folder.wrote(name + ".png")

    print(f"evaluating {prefix} on {files.kind} split {split!r} ({total} images), "
          f"engine {args.engine} ({args.engine_reason})",
          file=sys.stderr)
    progress = Progress(total, label="images", unit="img")
    try:
        metrics = evaluate_checkpoint(prefix, spec, files, engine=args.engine,
                                      threads=config.train.threads, max_images=args.max_images,
                                      on_image=save if args.save_predictions else None,
                                      progress=progress,
                                      kernels=args.kernels or config.model.kernels,
                                      precision=args.precision, calibration=calibration,
                                      tiled=lambda segmenter: tiling.TiledSegmenter(
                                          segmenter, spec, tile=tile, field=field,
                                          budget_bytes=args.memory_budget * 2**30))
    finally:
        progress.close()
        if folder is not None:
            folder.flush()
    if not metrics["labelled_pixels"]:
        raise UserError(f"{files.kind} split {split!r}: no pixel is labelled in the "
                        f"{metrics['num_images']} images evaluated (every label value is "
                        f"{IGNORE_LABEL}, the ignore label), so no metric is defined")
    print(format_metrics(metrics, class_names))
    extra = {}
    if args.precision != "float32":
        extra = precision_record(metrics, args.precision, args.engine)
        print(format_precision(extra))
    if args.json:
        try:
            write_json_atomic(args.json, metrics_record(metrics, class_names, checkpoint=prefix,
                                                        split=split, **extra))
            record_output(args.json)
        except OSError as err:
            raise UserError(f"--json {args.json}: cannot write ({err.strerror})") from None
    return 0


def precision_record(metrics, precision, engine):
    """The JSON keys of a low-precision evaluation: precision, engine, the
    float32 run's metrics, the change of mean IU (low minus float32) and the
    fraction of pixels whose labels agree."""
    reference = metrics["float32"]
    change = None
    if metrics["mean_iou"] is not None and reference["mean_iou"] is not None:
        change = metrics["mean_iou"] - reference["mean_iou"]
    return {"precision": precision, "engine": engine,
            "float32": {key: reference[key] for key in (
                "pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou",
                "per_class_iou")},
            "mean_iou_change": change, "labels_agree": metrics["labels_agree"]}


def format_precision(record):
    """Text lines comparing a low-precision run with float32."""
    change = record["mean_iou_change"]
    agree = record["labels_agree"]
    return "\n".join([
        "",
        f"{record['precision']} against float32 ({record['engine']}, the same images):",
        f"mean IU float32         {format_value(record['float32']['mean_iou'])}",
        f"mean IU change          {'n/a' if change is None else f'{change * 100:+.2f} points'}",
        f"labels agree            {'n/a' if agree is None else f'{agree:.4%} of pixels'}",
    ])


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.evaluate"))
