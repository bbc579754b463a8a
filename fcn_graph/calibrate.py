"""Measure which kernels are fastest on this CPU, once, for every later run.

    python -m fcn_graph.calibrate              # measure (about a minute), unless cached
    python -m fcn_graph.calibrate --show       # what is cached, and what each task runs
    python -m fcn_graph.calibrate --threads 4 --force

Times conv6/conv7 (tf.nn.conv2d, or im2col + matrix products in row blocks),
the three upsamplings (conv2d_transpose, or phase convolutions) and a VGG-body
conv, at the shapes of 224x224 and 512x512 inputs, with TensorFlow's oneDNN
kernels off and on (each in a fresh process), forward for inference and
forward plus backward for training. From the times it chooses, per task,
whether oneDNN runs and which forms `--kernels auto` uses. The result goes to
the cache folder ($FCN_GRAPH_CACHE, else $XDG_CACHE_HOME/fcn_graph, else
~/.cache/fcn_graph), under calibration/, for this CPU, TensorFlow version and
thread count. Without one, the choices follow a rule from the CPU's flags;
TF_ENABLE_ONEDNN_OPTS in the environment overrides either for oneDNN.
"""

import argparse
import json
import sys

from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.ranges import Range, threads_range
from fcn_graph.host import choice


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=threads_range(), default=None,
                        help="threads per op to measure with (default: every core); "
                             "commands use the calibration of their own thread count")
    parser.add_argument("--show", action="store_true",
                        help="print the cached calibration and the choices; measure nothing")
    parser.add_argument("--force", action="store_true",
                        help="measure again even when a calibration is cached (and replace "
                             "a cached file that cannot be read)")
    # internal: the layers' channels scaled by this (tests), and one oneDNN
    # setting measured in this process, its rows written to --result
    parser.add_argument("--scale", type=Range(0, 1, low_open=True), default=1.0,
                        help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("0", "1"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def show_choices(threads):
    """The choices of each task, and where each comes from."""
    lines = []
    for task in choice.TASKS:
        choices = choice.choose(task, threads=threads)
        lines.append(f"{task}:")
        for name, value, source in choices.describe():
            lines.append(f"  {name:<22}{value:<22}{source}")
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.measure:
        if not args.result:
            parser.error("--measure: needs --result")
        return measure_here(args)
    if args.show and args.force:
        parser.error("--show and --force: pick one")
    from fcn_graph.host import kernel_timing
    threads = args.threads or choice.thread_count()
    key = choice.timing_key(threads=threads)
    path = choice.timing_path(key)
    timings, problem = choice.read_timings(path, key)
    if args.show:
        if timings is not None:
            with open(path, encoding="utf-8") as handle:
                print(kernel_timing.format_timings(json.load(handle), path))
        else:
            print(f"no calibration for this CPU at {threads} threads"
                  + (f" ({problem})" if problem else f" ({path} does not exist)"))
        print(show_choices(threads))
        return 0
    if timings is not None and not args.force:
        print(f"{path}: already calibrated (--show prints it, --force measures again)",
              file=sys.stderr)
        print(show_choices(threads))
        return 0
    if problem and not args.force:
        raise UserError(f"calibration {problem}; --force replaces it")
    path, record = kernel_timing.run_timing(threads=threads, scale=args.scale, log=sys.stderr)
    print(kernel_timing.format_timings(record, path))
    print(show_choices(threads))
    return 0


def measure_here(args):
    """One oneDNN setting, in this process (started by `kernel_timing.run_timing`)."""
    import os

    from fcn_graph.core.fileio import write_json_atomic
    from fcn_graph.host import kernel_timing, tflog
    if os.environ.get(choice.ONEDNN_ENV) != args.measure:
        raise UserError(f"--measure {args.measure}: expected {choice.ONEDNN_ENV}="
                        f"{args.measure} in the environment, found "
                        f"{os.environ.get(choice.ONEDNN_ENV)!r}")
    tflog.load_tensorflow()
    rows = kernel_timing.measure(threads=args.threads or choice.thread_count(),
                               scale=args.scale, log=sys.stderr)
    write_json_atomic(args.result, rows)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.calibrate"))
