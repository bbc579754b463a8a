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
import tensorflow as tf

from fcn_graph import checkpoint, datasets, image_files
from fcn_graph import model as fcn_model
from fcn_graph.config import add_config_args, load_config
from fcn_graph.constants import IGNORE_LABEL
from fcn_graph.errors import UserError, run_cli
from fcn_graph.evaluation import METRICS_KEYS, Evaluator, build_model, metrics_record  # noqa: F401
from fcn_graph.fileio import OutputFolder, check_output_file, json_written_with, write_json_atomic
from fcn_graph.infer import make_segmenter
from fcn_graph.memory import return_freed_memory
from fcn_graph.metrics import format_metrics
from fcn_graph.progress import Progress
from fcn_graph.session import session_config

tf1 = tf.compat.v1


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
    parser.add_argument("--engine", choices=("tf", "onnxruntime"), default="tf",
                        help="tf (default, the reference) or onnxruntime (the same network "
                             "as export --format onnx writes it; scores agree to 1e-4)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate only the first N images of the split")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images: expected a positive integer, found {args.max_images}")
    reads = [*datasets.SPLIT_KEYS, "model.num_classes", "train.threads"]
    if args.checkpoint is None:
        reads.append("train.log_dir")
    if not args.split:
        reads.append("data.val_split")
    config = load_config(args.config, args.overrides, reads=reads, command="fcn_graph.evaluate")
    if args.json and check_output_file(args.json, "--json") and not json_written_with(
            args.json, METRICS_KEYS):
        raise UserError(f"--json {args.json}: exists and is not a metrics file evaluate wrote; "
                        "refusing to overwrite it (choose another --json)")
    source = args.checkpoint or config.train.log_dir
    if args.checkpoint is None and not os.path.isdir(source):
        raise UserError(f"{source}: no such directory (train.log_dir); train first or pass "
                        f"--checkpoint")
    prefix = checkpoint.resolve_checkpoint(source)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    image_files.check_num_classes(spec.num_classes, f"{prefix} (checkpoint)")
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
    graph = tf.Graph()
    with graph.as_default():
        evaluator = Evaluator(files, spec, num_classes=num_classes, max_images=args.max_images)
        variables = fcn_model.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        graph.finalize()
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

    print(f"evaluating {prefix} on {files.kind} split {split!r} ({total} images)",
          file=sys.stderr)
    progress = Progress(total, label="images", unit="img")
    predict, segmenter = None, None
    if args.engine != "tf":
        segmenter = make_segmenter(prefix, engine=args.engine, threads=config.train.threads)

        def predict(image):
            return segmenter.run(image)[0]

    with tf1.Session(graph=graph, config=session_config(config.train.threads)) as sess:
        if segmenter is None:
            checkpoint.restore_model(sess, prefix, variables, saver=saver)
        try:
            metrics, _ = evaluator.run(sess, progress=progress, predict=predict,
                                       on_image=save if args.save_predictions else None)
        finally:
            progress.close()
            if segmenter is not None:
                segmenter.close()
            if folder is not None:
                folder.flush()
    if not metrics["labelled_pixels"]:
        raise UserError(f"{files.kind} split {split!r}: no pixel is labelled in the "
                        f"{metrics['num_images']} images evaluated (every label value is "
                        f"{IGNORE_LABEL}, the ignore label), so no metric is defined")
    print(format_metrics(metrics, class_names))
    if args.json:
        try:
            write_json_atomic(args.json, metrics_record(metrics, class_names, checkpoint=prefix,
                                                        split=split))
        except OSError as err:
            raise UserError(f"--json {args.json}: cannot write ({err.strerror})") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.evaluate"))
