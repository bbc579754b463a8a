"""Export a checkpoint for serving: a SavedModel, a frozen GraphDef, ONNX or LiteRT.

    python -m fcn_graph.export --checkpoint ckpt/voc --format savedmodel --out export/voc
    python -m fcn_graph.export --checkpoint ckpt/voc --format frozen --out export/voc.pb
    python -m fcn_graph.export --checkpoint ckpt/voc --format onnx --out export/voc.onnx [--external-data]
    python -m fcn_graph.export --checkpoint ckpt/voc --format onnx --out export/voc_int8.onnx \
        --quantize int8 --calibration photos/
    python -m fcn_graph.export --checkpoint ckpt/voc --format tflite --out export/voc.tflite \
        [--quantize int8 --calibration photos/ [--val held_out/ | --config config.json]]

Every format has the same contract:

    input   images  uint8   [N, H, W, 3]  RGB, any N, H, W >= 1
    output  labels  int32   [N, H, W]     argmax of scores over K (int64 in ONNX)
    output  scores  float32 [N, H, W, K]  the logits

The mean subtraction (and, for BGR checkpoints such as the Keras VGG19 ones,
the RGB -> BGR swap) happens inside the exported graph. In the frozen graph
the tensors are `images:0`, `labels:0` and `scores:0`; in the SavedModel they
are the inputs and outputs of the `serving_default` signature; in ONNX the
graph's input and outputs are named `images`, `labels` and `scores`, with
dynamic dimensions N, H and W.

Exports carry the reference kernels by default (`--kernels reference`: plain
conv2d for conv6/conv7 and conv2d_transpose for the three upsamplings in
TensorFlow, Conv and ConvTranspose in ONNX), since a served model may run on a
GPU; `--kernels cpu` writes the faster CPU forms (`fcn_graph.network.cpu_layers`),
`--kernels auto` picks by the devices of the exporting machine.

The SavedModel is written by the TF1 `SavedModelBuilder`: the weights stay
variables (in `variables/`), the graph is the serving graph. Load it with
`tf.saved_model.load(path).signatures["serving_default"]` in TF2 or
`tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)`.

The ONNX model is `onnx_engine.build_onnx_model`'s, written from the
checkpoint's arrays: the same model `--engine onnxruntime` runs. With
`--external-data` the weights go to a second file beside it, OUT.data
(export/voc.onnx.data), which must stay next to the `.onnx`; ONNX Runtime
loads such a pair with a lower memory peak, and no 2 GB limit applies.

With `--quantize int8` the ONNX model is quantized (`fcn_graph.engines.int8_model`:
int8 weights per output channel, uint8 activations, QDQ format, the
upsamplings kept float) after calibrating its activation ranges on up to 32
images of `--calibration DIR` (images over 1024 pixels on their long side are
scaled down for it); its interface is unchanged. Its check reports
the error against the checkpoint without a limit.

The LiteRT model (`fcn_graph.engines.litert`) has the same contract (labels int32,
any size: resize the input tensor at run time). Its int8 model is
full-integer (int8 weights and activations, calibrated on --calibration);
export prints how its labels agree with the float32 checkpoint's, and their
mean IU with the float32 labels as the truth, on the images of --val DIR
(else the calibration images); with --config, on up to 32 images of the
config's validation split, with the mean IU of both against its labels.

Each export is checked before it replaces the target: the written file is
loaded back (TensorFlow for SavedModel and frozen graphs, onnxruntime for
ONNX), run on a seeded random 67x93 image, and its scores compared with the
checkpoint's (`fcn_graph.engines.segmenter.Segmenter`). A maximum relative error of
1e-4 or more is an error and nothing is written.

The folder of --out is created where missing. An existing --out is refused;
with --force, an earlier export that fcn_graph wrote there (a SavedModel
folder, a .pb, an .onnx and its .onnx.data, named in the folder's record
.fcn_graph-outputs.json) is replaced, changed since or not; any other file,
a link, or a checkpoint's files never are.
"""

import argparse
import logging
import os
import sys

from fcn_graph import cli
from fcn_graph.core.constants import EXPORT_FORMATS, KERNELS
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.ranges import Range
from fcn_graph.data import image_files
from fcn_graph.engines import onnx_engine
from fcn_graph.engines.int8_model import CALIBRATION_IMAGES
from fcn_graph.host import tflog
from fcn_graph.training.config import SPLIT_KEYS, load_config
from fcn_graph.weights.checkpoint_files import checkpoint_prefix


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint prefix, one of its files, or a directory (its latest)")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="what to write")
    parser.add_argument("--out", required=True,
                        help="SavedModel directory, or the .pb / .onnx file to write")
    parser.add_argument("--opset", type=Range(onnx_engine.MIN_OPSET, 99, integer=True),
                        default=None,
                        help=f"ONNX opset (default {onnx_engine.DEFAULT_OPSET}, >= "
                             f"{onnx_engine.MIN_OPSET})")
    parser.add_argument("--external-data", action="store_true",
                        help="ONNX: write the weights to OUT.data beside the .onnx (loads with "
                             "less memory; keep the two files together)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out that export wrote there earlier "
                             "(never another file, a link or a checkpoint's file)")
    parser.add_argument("--kernels", choices=KERNELS, default="reference",
                        help="kernel set written: reference (default; plain conv and "
                             "transposed conv, for any device), cpu (faster forms on CPUs) or "
                             "auto (by this machine's devices)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back and comparing its scores")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="ONNX: write an int8 model (ONNX Runtime static quantization, QDQ, "
                             "per-channel weights); tflite: a full-integer int8 model; both "
                             "calibrated on --calibration")
    parser.add_argument("--calibration", default=None, metavar="DIR",
                        help="--quantize int8: a folder of images like the ones the model will "
                             f"segment (up to {CALIBRATION_IMAGES} of them are used)")
    parser.add_argument("--val", default=None, metavar="DIR",
                        help="--format tflite --quantize int8: a folder of held-out images on "
                             "which the int8 labels are compared with float32's (default: the "
                             "calibration images)")
    cli.add_config_args(parser)
    return parser


def _export(prefix, args, kwargs):
    """Export checkpoint `prefix` as `args` say; the exporter's report. An OSError
    reading the checkpoint is raised as it is (`checkpoint.with_newest` tells a
    checkpoint deleted meanwhile); one writing --out is a UserError."""
    from fcn_graph.engines.exporters import EXPORTERS
    from fcn_graph.weights import checkpoint

    spec = checkpoint.model_spec_from_checkpoint(prefix)
    image_files.check_num_classes(spec.num_classes, f"{prefix} (checkpoint)")
    print(f"read {prefix}: {spec.name}, {spec.num_classes} classes, "
          f"{spec.channel_order.upper()} weights, mean pixel "
          f"{[round(v, 3) for v in spec.mean_pixel] if spec.mean_pixel else 'unknown (the VGG mean is used)'} "
          "(subtracted inside the graph)", flush=True)
    try:
        return EXPORTERS[args.format](prefix, args.out, verify=not args.no_verify,
                                      force=args.force, **kwargs)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        if err.filename and str(err.filename).startswith(prefix):
            raise  # reading the checkpoint: with_newest tells a vanished one
        raise UserError(f"{err.filename or args.out}: cannot write ({err.strerror})") from None


def validation_split(parser, args):
    """The labelled split that --config names for checking a LiteRT int8 model
    (`datasets.SplitFiles` of data.val_split), or None without --config."""
    if args.config is None and not args.overrides:
        return None
    if not (args.quantize and args.format == "tflite") or args.val is not None:
        parser.error("--config/--set apply to --format tflite --quantize int8 without --val")
    config = load_config(args.config, args.overrides, reads=[*SPLIT_KEYS, "data.val_split"],
                         command="fcn_graph.export")
    from fcn_graph.data import datasets
    return datasets.open_config_split(config, config.data.val_split)


def _written_line(report, fmt):
    """The line that names what an exporter wrote (`report`) in format `fmt`."""
    from fcn_graph.engines.exporters import INPUT_NAME, OUTPUT_NAMES, SIGNATURE_KEY

    names = report.get("tensors") or {INPUT_NAME: INPUT_NAME, **{n: n for n in OUTPUT_NAMES}}
    if fmt == "savedmodel":
        where = f"signature '{SIGNATURE_KEY}', tag 'serve': "
    elif fmt == "onnx":
        where = f"opset {report['opset']}: "
        if report.get("quantize"):
            where = f"opset {report['opset']}, {report['quantize']} (calibrated on " \
                    f"{report['calibration_images']} images): "
    elif fmt == "tflite":
        where = "LiteRT, " + ("int8 full integer (calibrated on "
                              f"{report['calibration_images']} images): " if report["quantize"]
                              else "float32: ")
    else:
        where = ""
    written = report["path"]
    if report.get("external_data"):
        written += f" and its weights {report['external_data']}"
    return (f"wrote {written} ({report['bytes'] / 2**20:.1f} MiB), {where}"
            f"input {names[INPUT_NAME]} {report['inputs'][INPUT_NAME]}; outputs "
            + ", ".join(f"{names[n]} {report['outputs'][n]}" for n in OUTPUT_NAMES))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format != "onnx":
        for flag, given in (("--opset", args.opset is not None),
                            ("--external-data", args.external_data)):
            if given:
                parser.error(f"{flag} applies to --format onnx only")
    if args.quantize and args.format not in ("onnx", "tflite"):
        parser.error("--quantize applies to --format onnx and tflite only")
    if args.val is not None and not (args.quantize and args.format == "tflite"):
        parser.error("--val applies to --format tflite --quantize int8 only")
    if args.quantize and args.calibration is None:
        parser.error("--quantize int8: needs --calibration DIR, a folder of images to calibrate "
                     "the int8 model on")
    if args.calibration is not None and not args.quantize:
        parser.error("--calibration applies to --quantize int8 only")
    if args.quantize:
        from fcn_graph.engines.int8_model import calibration_files
        calibration_files(args.calibration)   # a bad folder fails before the checkpoint loads
        if args.val is not None:
            calibration_files(args.val, "--val")
    if not os.path.isdir(args.checkpoint):  # a missing checkpoint too, before TensorFlow loads
        checkpoint_prefix(args.checkpoint)
    tflog.load_tensorflow()
    import tensorflow as tf

    from fcn_graph.weights import checkpoint

    # TF1 deprecation notices are noise on this command line.
    tf.get_logger().setLevel(logging.ERROR)
    split = validation_split(parser, args)
    kwargs = {"kernels": args.kernels}
    if args.format == "onnx":
        opset = onnx_engine.DEFAULT_OPSET if args.opset is None else args.opset
        kwargs.update(opset=opset, external_data=args.external_data, quantize=args.quantize,
                      calibration=args.calibration)
    elif args.format == "tflite":
        kwargs.update(quantize=args.quantize, calibration=args.calibration,
                      val=split if split is not None else args.val)
    try:
        report = checkpoint.with_newest(args.checkpoint,
                                         lambda prefix: _export(prefix, args, kwargs))
    except OSError as err:
        raise UserError(f"{err.filename}: cannot read ({err.strerror})") from None
    print(_written_line(report, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.export"))
