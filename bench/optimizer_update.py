"""The optimizer's update alone: how long `apply_gradients` takes over the
FCN's variables, and the memory traffic it implies.

    python bench/optimizer_update.py                    # Adam, full VGG19, 21 classes
    python bench/optimizer_update.py --optimizer momentum --repeats 9

The update reads every weight, its gradient and the optimizer's slots and
writes the weight and the slots back (Adam: 4 reads and 3 writes of float32
per weight; momentum: 3 and 2). It is memory-bound and outside the network's
FLOP count, so a training step's "% of sgemm" can reach at most
conv_flops / (conv_flops / sgemm + update seconds): this script prints that
ceiling for a given step FLOP count and sgemm figure.
"""

import argparse
import os
import statistics
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fcn_graph.core.ranges import (  # noqa: E402
    FC_WIDTH_RANGE,
    NUM_CLASSES_RANGE,
    REPEATS_RANGE,
    WIDTH_MULTIPLIER_RANGE,
    Range,
)

ACCESSES = {"adam": 7, "momentum": 5}  # float32 reads + writes per weight


def time_update(optimizer, shapes, repeats, warmup=2):
    """Median seconds of one `apply_gradients` over variables of `shapes`
    (gradients held in variables of their own, so that only the update runs)."""
    import tensorflow as tf

    from bench import worker
    from fcn_graph.training.loop import make_optimizer
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        weights = [tf1.get_variable(name, shape=shape, initializer=tf1.zeros_initializer())
                   for name, shape in shapes.items()]
        grads = [tf1.get_variable(name + "_grad", shape=shape, trainable=False,
                                  initializer=tf1.ones_initializer())
                 for name, shape in shapes.items()]
        update = make_optimizer(optimizer, 1e-4).apply_gradients(list(zip(grads, weights)))
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as sess:
        sess.run(init)
        _, times = worker.time_calls(lambda: sess.run(update), warmup=warmup, repeats=repeats)
    return statistics.median(times)


def ceiling(step_gflop, sgemm_gflops, update_seconds):
    """The highest "% of sgemm" a step of `step_gflop` can show when its
    convolutions run at the sgemm rate and the update takes `update_seconds`."""
    return step_gflop / (step_gflop / sgemm_gflops + update_seconds) / sgemm_gflops


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python bench/optimizer_update.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", choices=sorted(ACCESSES), default="adam")
    parser.add_argument("--num-classes", type=NUM_CLASSES_RANGE, default=21)
    parser.add_argument("--width-multiplier", type=WIDTH_MULTIPLIER_RANGE, default=1.0,
                        help="VGG widths times this (default 1: the real VGG19)")
    parser.add_argument("--fc-width", type=FC_WIDTH_RANGE, default=4096)
    parser.add_argument("--repeats", type=REPEATS_RANGE, default=7)
    parser.add_argument("--step-gflop", type=Range(0, 1e9, low_open=True), default=None,
                        help="a training step's FLOP count, for the ceiling (default: 224x224 "
                             "batch 2 of this model)")
    parser.add_argument("--sgemm", type=Range(0, 1e9, low_open=True), default=None,
                        help="sgemm GFLOP/s, for the ceiling (default: measured here)")
    args = parser.parse_args(argv)
    from bench import worker
    from fcn_graph.network import definition, flops
    from fcn_graph.network.spec import scaled_vgg_widths
    widths = (None if args.width_multiplier == 1.0
              else scaled_vgg_widths(args.width_multiplier))
    shapes = definition.variable_shapes(args.num_classes, vgg_widths=widths,
                                       fc_width=args.fc_width)
    count = sum(int(np.prod(shape)) for shape in shapes.values())
    sgemm = args.sgemm if args.sgemm is not None else worker.sgemm_gflops()[0]
    seconds = time_update(args.optimizer, shapes, args.repeats)
    traffic = count * 4 * ACCESSES[args.optimizer]
    print(f"{args.optimizer} update over {count / 1e6:.1f} M weights: {seconds * 1000:.0f} ms "
          f"(median of {args.repeats}), {traffic / 1e9:.2f} GB moved, "
          f"{traffic / seconds / 1e9:.1f} GB/s")
    step = args.step_gflop
    if step is None:
        step = flops.train_flops(2, 224, 224, args.num_classes, vgg_widths=widths,
                                 fc_width=args.fc_width) / 1e9
    print(f"a step of {step:.1f} GFLOP at sgemm {sgemm:.1f} GFLOP/s: at most "
          f"{100 * ceiling(step, sgemm, seconds):.0f} % of sgemm with this update")
    return 0


if __name__ == "__main__":
    sys.exit(main())
