"""Convert weights between formats, one verb per conversion.

    python -m fcn_graph.port mat2ckpt imagenet-vgg-verydeep-19.mat --num-classes 21 --out ckpt/vgg19_voc
"""

import argparse
import sys

import numpy as np
import tensorflow as tf

from fcn_graph import checkpoint, matconvnet
from fcn_graph import model as fcn_model
from fcn_graph.errors import UserError, run_cli
from fcn_graph.session import session_config

tf1 = tf.compat.v1


def _describe(variables, sess=None):
    total = 0
    lines = []
    for name, variable in variables.items():
        shape = variable.shape.as_list()
        total += int(np.prod(shape))
        lines.append(f"  {name:24s} {shape}")
    return lines, total


def mat2ckpt(args):
    """A complete starting checkpoint: VGG from the `.mat`, heads initialised as
    FCN.tensorflow does (truncated normal 0.02, zero biases)."""
    if args.num_classes < 1:
        raise UserError(f"--num-classes: expected a positive integer, found {args.num_classes}")
    if args.fc_width < 1:
        raise UserError(f"--fc-width: expected a positive integer, found {args.fc_width}")
    vgg = matconvnet.load_vgg_mat(args.mat, transpose=not args.no_transpose)
    print(f"read {args.mat}: {vgg.layout} layout, {len(vgg.layers)} conv layers, "
          f"fc layers: {', '.join(vgg.fc) or 'none'}, mean pixel "
          f"{np.round(vgg.mean_pixel, 3).tolist()}"
          + ("" if vgg.transposed else ", kernels kept in file order"))
    spec = fcn_model.ModelSpec(num_classes=args.num_classes, fc_width=args.fc_width,
                               vgg_widths=tuple(vgg.widths.values()),
                               mean_pixel=tuple(float(v) for v in vgg.mean_pixel))
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(args.seed)
        images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
        fcn_model.build(images, spec)
        variables = fcn_model.model_variables(graph)
        init = tf1.global_variables_initializer()
        saver = checkpoint.model_saver(variables)
        graph.finalize()
        with tf1.Session(graph=graph, config=session_config()) as sess:
            sess.run(init)
            checkpoint.assign_vgg(sess, vgg, variables)
            prefix = checkpoint.save_model(sess, saver, args.out, spec,
                                           source=f"mat2ckpt {args.mat}",
                                           kernels_transposed=vgg.transposed)
    lines, total = _describe(variables)
    if args.verbose:
        print("\n".join(lines))
    print(f"wrote {prefix} ({len(variables)} variables, {total:,} parameters, "
          f"{args.num_classes} classes, fc width {args.fc_width}) and {prefix}.json")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.port", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("mat2ckpt", help="MatConvNet VGG19 .mat -> starting checkpoint")
    p.add_argument("mat", help="imagenet-vgg-verydeep-19.mat (old or new layout)")
    p.add_argument("--num-classes", type=int, required=True, help="number of output classes K")
    p.add_argument("--out", required=True, help="checkpoint prefix to write, e.g. ckpt/start")
    p.add_argument("--fc-width", type=int, default=fcn_model.FC_WIDTH,
                   help="channels of conv6/conv7 (default 4096)")
    p.add_argument("--no-transpose", action="store_true",
                   help="keep kernels in the file's [kh, kw] order instead of FCN.tensorflow's "
                        "(1, 0, 2, 3) swap")
    p.add_argument("--seed", type=int, default=0, help="seed of the head initialisation")
    p.add_argument("-v", "--verbose", action="store_true", help="list every variable")
    p.set_defaults(func=mat2ckpt)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.port"))
