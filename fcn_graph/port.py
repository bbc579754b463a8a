"""Convert weights between formats, one verb per conversion.

    python -m fcn_graph.port mat2ckpt imagenet-vgg-verydeep-19.mat --num-classes 21 --out ckpt/vgg19_voc
    python -m fcn_graph.port mat2ckpt imagenet-vgg-verydeep-19.mat --num-classes 21 \\
        --architecture paper --skips 16s --out ckpt/fcn16s_start
    python -m fcn_graph.port legacy logs/model.ckpt-100000 --out ckpt/ade20k
    python -m fcn_graph.port keras-h5 vgg19_weights_tf_dim_ordering_tf_kernels.h5 \\
        --num-classes 21 --architecture paper --out ckpt/keras_start
    python -m fcn_graph.port mat2ckpt imagenet-vgg-verydeep-16.mat --backbone vgg16 \\
        --num-classes 21 --architecture paper --out ckpt/fcn8s_vgg16_start
    python -m fcn_graph.port ckpt2mat ckpt/vgg19_voc --out vgg19_again.mat
    python -m fcn_graph.port inspect ANY_FILE_OR_PREFIX

Each verb prints what it read and what it wrote (variables, shapes with -v,
parameter counts) and refuses anything it does not recognise with a one-line
error. The folder of --out is created where missing; an --out whose files
exist (a checkpoint prefix's .index, .data-*, .meta or .json, or the .mat) is
refused before anything is read: port never replaces a file.
"""

import argparse
import sys

from fcn_graph.core.constants import ARCHITECTURES, SKIPS, VGG_MEAN_RGB
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.fileio import check_input_file
from fcn_graph.core.ranges import FC_WIDTH_RANGE, MEAN_RANGE, NUM_CLASSES_RANGE, SEED_RANGE
from fcn_graph.host import tflog
from fcn_graph.network.spec import BACKBONES, DEFAULT_BACKBONE


def _add_start_options(p):
    p.add_argument("--num-classes", type=NUM_CLASSES_RANGE, required=True,
                   help=f"number of output classes K ({NUM_CLASSES_RANGE.describe()})")
    p.add_argument("--out", required=True, help="checkpoint prefix to write, e.g. ckpt/start")
    p.add_argument("--architecture", choices=ARCHITECTURES, default="legacy",
                   help="legacy (FCN.tensorflow's graph, default) or paper")
    p.add_argument("--skips", choices=SKIPS, default="8s",
                   help="paper: FCN-32s, 16s or 8s (default 8s)")
    p.add_argument("--train-upsampling", action="store_true",
                   help="paper: record that the bilinear upsampling filters are to be trained "
                        "(they are frozen by default, as in the reference code)")
    p.add_argument("--fc-width", type=FC_WIDTH_RANGE, default=None,
                   help="legacy: channels of conv6/conv7 (default 4096); paper: taken from "
                        "fc6/fc7")
    p.add_argument("--seed", type=SEED_RANGE, default=0,
                   help=f"seed of the head initialisation ({SEED_RANGE.describe()})")
    p.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE,
                   help="the VGG body the file holds: vgg19 (default) or vgg16")
    p.add_argument("-v", "--verbose", action="store_true", help="list every variable")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.port", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("mat2ckpt", help="MatConvNet VGG19/VGG16 .mat -> starting checkpoint")
    p.add_argument("mat", help="imagenet-vgg-verydeep-19.mat or -16.mat (old or new layout)")
    _add_start_options(p)
    p.add_argument("--no-transpose", action="store_true",
                   help="keep kernels in the file's [kh, kw] order instead of FCN.tensorflow's "
                        "(1, 0, 2, 3) swap")
    p.set_defaults(verb_name="mat2ckpt")

    p = verbs.add_parser("keras-h5",
                         help="Keras VGG19/VGG16 ImageNet .h5 -> starting checkpoint")
    p.add_argument("h5", help="vgg19_weights_tf_dim_ordering_tf_kernels(_notop).h5 or vgg16_...")
    _add_start_options(p)
    p.set_defaults(verb_name="keras_h5")

    p = verbs.add_parser("legacy", help="FCN.tensorflow training checkpoint -> clean checkpoint")
    p.add_argument("checkpoint", metavar="VERSION_OR_PREFIX",
                   help="checkpoint prefix (model.ckpt-100000), one of its files, or its "
                        "directory (the latest checkpoint)")
    p.add_argument("--out", required=True, help="checkpoint prefix to write")
    p.add_argument("--mean", type=MEAN_RANGE, nargs=3, metavar=("R", "G", "B"),
                   help=f"RGB mean pixel it was trained with (default {list(VGG_MEAN_RGB)})")
    p.add_argument("-v", "--verbose", action="store_true", help="list every variable")
    p.set_defaults(verb_name="legacy")

    p = verbs.add_parser("ckpt2mat", help="checkpoint -> MatConvNet .mat (VGG body, fc6/fc7)")
    p.add_argument("checkpoint", metavar="PREFIX", help="checkpoint prefix, file or directory")
    p.add_argument("--out", required=True, help=".mat file to write")
    p.add_argument("--layout", choices=("old", "new"), default="new",
                   help="MatConvNet layout (default new)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every layer")
    p.set_defaults(verb_name="ckpt2mat")

    p = verbs.add_parser("inspect", help="detect a file's format and list its variables")
    p.add_argument("path", metavar="FILE_OR_PREFIX")
    p.set_defaults(verb_name="inspect")
    return parser


def _run(conversion, args):
    """The verb `args` name, called with the values it takes."""
    verb = args.verb_name
    if verb in ("mat2ckpt", "keras_h5"):
        options = conversion.StartOptions(
            num_classes=args.num_classes, out=args.out, architecture=args.architecture,
            skips=args.skips, train_upsampling=args.train_upsampling, fc_width=args.fc_width,
            seed=args.seed, verbose=args.verbose, backbone=args.backbone)
        if verb == "mat2ckpt":
            return conversion.mat2ckpt(args.mat, options, no_transpose=args.no_transpose)
        return conversion.keras_h5(args.h5, options)
    if verb == "legacy":
        return conversion.legacy(args.checkpoint, out=args.out, mean=args.mean,
                                 verbose=args.verbose)
    if verb == "ckpt2mat":
        return conversion.ckpt2mat(args.checkpoint, out=args.out, layout=args.layout,
                                   verbose=args.verbose)
    return conversion.inspect(args.path)


def main(argv=None):
    args = build_parser().parse_args(argv)
    weights = getattr(args, "mat", None) or getattr(args, "h5", None)
    if weights is not None:  # before TensorFlow loads (seconds)
        check_input_file(weights, f"a {'Keras' if args.verb_name == 'keras_h5' else 'MatConvNet'} "
                                  f"{args.backbone.upper()} weight file")
    tflog.load_tensorflow()
    from fcn_graph.weights import conversion

    try:
        return _run(conversion, args)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        where = err.filename or getattr(args, "out", None) or args.path
        raise UserError(f"{where}: {err.strerror}") from None


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.port"))
