"""Evaluate a checkpoint on a dataset split: pixel accuracy, mean accuracy, mean IU,
frequency-weighted IU and the IoU of every class, from one confusion matrix.

    python -m fcn_graph.evaluate --config config.json
    python -m fcn_graph.evaluate --config config.json --checkpoint runs/shapes \\
        --split val --json val.json --save-predictions out/val
    python -m fcn_graph.evaluate --config config.json --tta flip --report out/report
    python -m fcn_graph.evaluate --compare out/report/per_class.json \\
        out/report/tta_per_class.json

Each image runs at its full size, one at a time, through one graph. The model
is rebuilt from the checkpoint (class count and widths from its variables, the
mean pixel from its sidecar); the dataset comes from the config.
"""

import argparse
import os
import sys

import numpy as np

from fcn_graph import cli
from fcn_graph.core.constants import ENGINES, IGNORE_LABEL, INFERENCE_PRECISIONS
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.fileio import (
    OutputFolder,
    claim_output,
    record_output,
    write_json_atomic,
)
from fcn_graph.core.metrics import format_metrics, format_value, metrics_record
from fcn_graph.core.progress import Progress
from fcn_graph.core.ranges import IMAGE_COUNT_RANGE
from fcn_graph.data import image_files
from fcn_graph.engines import tiling
from fcn_graph.engines.opening import open_checkpoint
from fcn_graph.engines.tta import wrap_tta
from fcn_graph.host import choice, tflog
from fcn_graph.host.memory import return_freed_memory
from fcn_graph.training.config import SPLIT_KEYS, load_config
from fcn_graph.training.reports import claim_report, compare_files, write_report


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(parser)
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
                             "the precision allows; bfloat16 on openvino where measured "
                             "faster; else tf), tf (the reference), onnxruntime (the same "
                             "network as export --format onnx writes it; scores agree to "
                             "1e-4) or openvino (that model in OpenVINO, float32 or bfloat16)")
    cli.add_kernels_arg(parser)
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="float32 (default); bfloat16 (engine tf with oneDNN, or "
                             "openvino; a CPU with bf16 units) or int8 (engine onnxruntime, with --calibration): also "
                             "runs float32 on the same split and reports the mean IU of both "
                             "and the fraction of pixels whose labels agree")
    cli.add_calibration_arg(parser)
    parser.add_argument("--max-images", type=IMAGE_COUNT_RANGE, default=None,
                        help="evaluate only the first N images of the split")
    cli.add_tile_args(parser)
    cli.add_tta_arg(parser)
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="also write DIR/per_class.json and .csv (IoU, accuracy and pixel "
                             "counts per class), DIR/confusion.npy, .csv and .png (the confusion "
                             "matrix); with --tta also the tta_ files of the augmented run")
    parser.add_argument("--compare", nargs=2, default=None, metavar=("A.json", "B.json"),
                        help="print the per-class differences between two evaluations "
                             "(--json files or per_class.json) and exit")
    return parser


def _config(args):
    """The config (reading only what this run uses) and the checkpoint source;
    an existing --json is checked first, and oneDNN is set for inference
    before TensorFlow loads."""
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
    choice.apply_onednn("inference", threads=config.train.threads,
                        require=args.engine == "tf" and args.precision == "bfloat16")
    return config, source


def _class_names(config, files, opened):
    """The class names of the evaluation, once the checkpoint's class count
    agrees with model.num_classes and with the dataset's classes."""
    from fcn_graph.data import datasets
    num_classes = opened.spec.num_classes
    if config.model.num_classes is not None and config.model.num_classes != num_classes:
        raise UserError(f"model.num_classes: is {config.model.num_classes} but the checkpoint "
                        f"{opened.prefix} has {num_classes} classes")
    if files.class_names and len(files.class_names) != num_classes:
        raise UserError(f"{opened.prefix}: the checkpoint has {num_classes} classes but the "
                        f"{files.kind} dataset has {len(files.class_names)}")
    return datasets.class_names_for(files, num_classes)


def _prediction_saver(directory, files, total):
    """(folder, on_image) for --save-predictions: the claimed output folder and
    the callback that writes each prediction; (None, None) without it."""
    if not directory:
        return None, None
    # Never over the dataset's own files, nor a file fcn_graph did not write there.
    folder = OutputFolder(directory, "--save-predictions")
    folder.claim([name + ".png" for name in files.names[:total]],
                 inputs=files.image_paths[:total] + files.label_paths[:total])

    def save(name, image, label, prediction):
        path = os.path.join(directory, name + ".png")
        try:
            image_files.write_label_png(path, prediction.astype(np.uint8))
        except OSError as err:
            raise UserError(f"{path}: cannot write ({err.strerror})") from None
        folder.wrote(name + ".png")

    return folder, save


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        print(compare_files(*args.compare))
        return 0
    tile = cli.tile_option(parser, args)
    tta = cli.tta_option(parser, args)
    args.engine, args.engine_reason, calibration = cli.resolve_precision_args(parser, args)
    config, source = _config(args)
    tflog.load_tensorflow()
    from fcn_graph.data import datasets
    from fcn_graph.training.evaluator import evaluate_checkpoint

    split = args.split or config.data.val_split
    files = datasets.open_config_split(config, split)  # every file checked before the model
    opened = open_checkpoint(source)
    spec = opened.spec
    field = tiling.receptive_field(spec)
    tiling.check_tile(tile, field)
    class_names = _class_names(config, files, opened)
    return_freed_memory()
    total = len(files) if args.max_images is None else min(len(files), args.max_images)
    report = None if not args.report else claim_report(
        args.report, augmented=tta is not None,
        inputs=files.image_paths[:total] + files.label_paths[:total])
    folder, save = _prediction_saver(args.save_predictions, files, total)
    print(f"evaluating {opened.prefix} on {files.kind} split {split!r} ({total} images), "
          f"engine {args.engine} ({args.engine_reason})" + (f", --tta {tta.text}" if tta else ""),
          file=sys.stderr)
    progress = Progress(total, label="images", unit="img")
    try:
        metrics = evaluate_checkpoint(opened.prefix, spec, files, engine=args.engine,
                                      threads=config.train.threads, max_images=args.max_images,
                                      on_image=save, progress=progress,
                                      kernels=args.kernels or config.model.kernels,
                                      precision=args.precision, calibration=calibration,
                                      **wrappers(spec, tile=tile, field=field, tta=tta,
                                                 budget_bytes=args.memory_budget * 2**30,
                                                 note=progress.write))
    finally:
        progress.close()
        if folder is not None:
            folder.flush()
    if not metrics["labelled_pixels"]:
        raise UserError(f"{files.kind} split {split!r}: no pixel is labelled in the "
                        f"{metrics['num_images']} images evaluated (every label value is "
                        f"{IGNORE_LABEL}, the ignore label), so no metric is defined")
    finish(metrics, class_names, checkpoint=opened.prefix, split=split,
           precision=args.precision, engine=args.engine, tta=tta, json_path=args.json,
           report=report)
    return 0


def wrappers(spec, *, tile, field, tta, budget_bytes, note):
    """The `tiled` and `augmented` wrappers of `evaluation.evaluate_checkpoint`:
    a `tiling.TiledSegmenter` for --tile, and a `tta.TtaSegmenter` for --tta
    (None without it)."""
    def tiled(segmenter):
        return tiling.TiledSegmenter(segmenter, spec, tile=tile, field=field,
                                     budget_bytes=budget_bytes)

    def augmented(segmenter):
        return wrap_tta(segmenter, tta, spec=spec, tile=tile, budget_bytes=budget_bytes,
                        note=note)

    return {"tiled": tiled, "augmented": None if tta is None else augmented}


def finish(metrics, class_names, *, checkpoint, split, precision, engine, tta, json_path,
           report):
    """Print the metrics of an evaluation (and of its low-precision or
    augmented comparison), then write the --json file and the --report files
    (`report`, a claimed `fileio.OutputFolder`, or None)."""
    print(format_metrics(metrics, class_names))
    extra = {}
    if precision != "float32":
        extra = precision_record(metrics, precision, engine)
        print(format_precision(extra))
    if tta is not None:
        extra.update(tta_record(metrics, tta))
        print(format_tta(metrics, tta, class_names))
    if json_path:
        try:
            write_json_atomic(json_path, metrics_record(metrics, class_names,
                                                        checkpoint=checkpoint, split=split,
                                                        **extra))
            record_output(json_path)
        except OSError as err:
            raise UserError(f"--json {json_path}: cannot write ({err.strerror})") from None
    if report is not None:
        runs = [("", metrics["confusion"], None)]
        if tta is not None:
            runs.append(("tta_", metrics["tta"]["confusion"], tta.text))
        try:
            for prefix, hist, variants in runs:
                write_report(report, hist, class_names, prefix=prefix, checkpoint=checkpoint,
                             split=split, tta=variants)
        finally:
            report.flush()


def tta_record(metrics, tta):
    """The JSON keys of an evaluation with --tta: the variants, the augmented
    run's metrics and the seconds of the plain runs and of the augmentation."""
    augmented = metrics["tta"]
    return {"tta": {"variants": tta.text, **{key: augmented[key] for key in (
                "pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou",
                "per_class_iou")}},
            "seconds": dict(metrics["seconds"])}


def format_tta(metrics, tta, class_names):
    """Text: the augmented run's metrics and the time of both runs."""
    seconds = metrics["seconds"]
    return "\n".join([
        "", f"with --tta {tta.text} ({len(tta.variants)} variants):",
        format_metrics(metrics["tta"], class_names), "",
        f"time plain              {seconds['plain']:.2f} s",
        f"time augmentation       {seconds['tta']:.2f} s more "
        f"({seconds['plain'] + seconds['tta']:.2f} s in all)",
    ])


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
