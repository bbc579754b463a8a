"""The gradient exchange of multi-worker training, simulated from a
backward-pass profile measured on this CPU.

    python bench/allreduce_sim.py                          # full VGG19, 224x224 batch 2
    python bench/allreduce_sim.py --from-report RUN.json   # the model again, no measuring

(a) The profile, on the single-process graph of one training step (the
legacy FCN-8s, random weights) without its update: for each layer the
median time of a run that computes the gradients of that layer and of every
later one, leaving out the backward pass of the layers before it: the time
at which its gradients are ready when the backward pass goes layer by layer
from the last (the first layer's: the whole forward and backward pass,
`backward_s`). The runs go in rounds over the layers, so that a change of
the machine's load touches all of them alike. The Adam update over all
variables is timed alone (`optimizer_update.time_update`).

(b) The model of the exchange: a ring all-reduce of B bytes over n workers
at W bytes/s takes 2(n-1)/n * B / W + 2(n-1) * latency (2(n-1) ring steps).
The buckets are those of training (`buckets.exchange_buckets` over the
gradients, last layer first); one bucket is on the link at a time, each
starting when its last gradient is ready and the previous bucket is done.
"flat" is one bucket of everything, ready at the end of the backward pass.
A step takes max(backward end, last bucket done) + the update; the scaling
efficiency is the single-worker step (backward end + update) over that.
The same is given with the profile scaled to a 1 s single-worker step.
The exchange's own CPU work (summing, copies) is not modelled.
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import report_path, write_report  # noqa: E402
from fcn_graph.cluster.buckets import exchange_buckets  # noqa: E402
from fcn_graph.core.errors import UserError, run_cli  # noqa: E402
from fcn_graph.core.ranges import (  # noqa: E402
    FC_WIDTH_RANGE,
    NUM_CLASSES_RANGE,
    REPEATS_RANGE,
    WIDTH_MULTIPLIER_RANGE,
    Range,
    threads_range,
)
from fcn_graph.host import cpuinfo  # noqa: E402

WORKERS = (2, 4, 8)
GBITS = (10, 25)
# Bytes per gradient value on the wire, by train.allreduce_dtype.
WIRE_BYTES = {"float32": 4, "bfloat16": 2}
# Bucket caps of the sweep, MiB.
SWEEP_MIB = (1, 4, 16, 32, 64, 128, 512)
MIB = 2**20


# ---------------------------------------------------------------- (a) the profile


def measure_profile(*, batch, size, num_classes, width_multiplier, fc_width, repeats,
                    threads=None):
    """The backward-pass profile of one training step on this CPU: a dict
    with `variables` (name, float32 bytes, seconds from the step's start to
    its gradient, in creation order), `backward_s`, `update_s`."""
    from fcn_graph.host import choice
    choice.apply_onednn("training", threads=threads)
    import numpy as np
    import tensorflow as tf

    from bench import optimizer_update, worker
    from fcn_graph.host.session import session_config
    from fcn_graph.network import tf_layers
    from fcn_graph.network.spec import ModelSpec, scaled_vgg_widths
    tf1 = tf.compat.v1
    spec = ModelSpec(num_classes=num_classes, fc_width=fc_width,
                     vgg_widths=tuple(scaled_vgg_widths(width_multiplier).values()))
    images = worker.case_images(batch, size, size).astype(np.float32)
    labels = np.random.default_rng(2).integers(0, num_classes, (batch, size, size),
                                               dtype=np.int32)
    with tf.Graph().as_default() as graph:
        logits, _, _ = tf_layers.build(tf.constant(images), spec,
                                       layers=choice.kernel_layers("auto"), keep_prob=0.85)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.constant(labels), logits=logits))
        trainable = tf1.trainable_variables()
        pairs = [(g, v) for g, v in zip(tf1.gradients(loss, trainable), trainable)
                 if g is not None]
        init = tf1.global_variables_initializer()
        graph.finalize()
    layers = {}  # layer -> indices into pairs, in creation order
    for index, (_, variable) in enumerate(pairs):
        layers.setdefault(_layer(variable.op.name), []).append(index)
    # The gradients of each layer and of every later one, last layer first:
    # their ops as targets (computed, not copied out).
    order = list(layers.values())[::-1]
    targets = [[pairs[i][0].op for indices in order[:k + 1] for i in indices]
               for k in range(len(order))]
    times = [[] for _ in targets]
    with tf1.Session(graph=graph, config=session_config(threads)) as sess:
        sess.run(init)
        for target in targets:  # warm-up
            sess.run(target)
        for _ in range(repeats):  # in rounds, so that a change of load touches every layer
            for target, seconds in zip(targets, times):
                start = time.perf_counter()
                sess.run(target)
                seconds.append(time.perf_counter() - start)
    ready, done = [None] * len(pairs), 0.0
    for indices, seconds in zip(order, times):
        done = max(done, statistics.median(seconds))  # more work: never earlier (noise)
        for i in indices:
            ready[i] = done
    backward_s = done
    shapes = {v.op.name: v.shape.as_list() for _, v in pairs}
    update_s = optimizer_update.time_update("adam", shapes, repeats)
    return {"variables": [[v.op.name, 4 * v.shape.num_elements(), t]
                          for (_, v), t in zip(pairs, ready)],
            "backward_s": backward_s, "backward_times_s": times[-1], "update_s": update_s}


def _layer(name):
    """The layer of a variable: inference/conv1_1_w -> conv1_1, inference/W6 -> 6."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith(("_w", "_b")):
        return base[:-2]
    return base[1:] if base[:1] in ("W", "b") else base


# ---------------------------------------------------------------- (b) the model


def ring_seconds(nbytes, workers, bytes_per_s, latency_s):
    """A ring all-reduce of `nbytes` over `workers` at `bytes_per_s` per link."""
    steps = 2 * (workers - 1)
    return steps / workers * nbytes / bytes_per_s + steps * latency_s


def simulate(profile, *, workers, gbit, dtype, cap, latency_s, compute_s=None):
    """(step seconds, scaling efficiency) of `workers` exchanging the
    gradients of `profile` at `gbit` Gbit/s as `dtype`, in buckets of at
    most `cap` bytes (None: flat, one exchange after the backward pass).
    `compute_s`: the profile scaled to this single-worker step."""
    backward, update = profile["backward_s"], profile["update_s"]
    factor = 1.0 if compute_s is None else compute_s / (backward + update)
    sizes = [nbytes // 4 * WIRE_BYTES[dtype] for _, nbytes, _ in profile["variables"]]
    ready = [t * factor for _, _, t in profile["variables"]]
    backward, update = backward * factor, update * factor
    if cap is None:
        buckets = [list(range(len(sizes)))]
        ready = [backward] * len(sizes)
    else:
        buckets = exchange_buckets(sizes, cap)
    done = 0.0
    for bucket in buckets:
        start = max(done, max(ready[i] for i in bucket))
        done = start + ring_seconds(sum(sizes[i] for i in bucket), workers, gbit * 1e9 / 8,
                                    latency_s)
    step = max(backward, done) + update
    return step, (backward + update) / step


def tables(profile, *, cap, latency_s, gbits=GBITS):
    """The rows of the report: every workers x Gbit/s x dtype, flat and
    bucketed, at the measured step and at a 1 s step; and the bucket sweep."""
    rows = []
    for compute_s in (None, 1.0):
        for workers in WORKERS:
            for gbit in gbits:
                for dtype in WIRE_BYTES:
                    row = {"compute_s": compute_s, "workers": workers, "gbit": gbit,
                           "dtype": dtype}
                    for name, bucket_cap in (("flat", None), ("bucketed", cap)):
                        step, efficiency = simulate(profile, workers=workers, gbit=gbit,
                                                    dtype=dtype, cap=bucket_cap,
                                                    latency_s=latency_s, compute_s=compute_s)
                        row[f"{name}_step_s"], row[f"{name}_efficiency"] = step, efficiency
                    rows.append(row)
    sweep = []
    for mib in SWEEP_MIB:
        for dtype in WIRE_BYTES:
            _, efficiency = simulate(profile, workers=8, gbit=10, dtype=dtype, cap=mib * MIB,
                                     latency_s=latency_s, compute_s=1.0)
            sweep.append({"cap_mib": mib, "dtype": dtype, "efficiency": efficiency})
    return rows, sweep


def print_report(profile, rows, sweep, *, cap, latency_s):
    total = sum(nbytes for _, nbytes, _ in profile["variables"])
    single = profile["backward_s"] + profile["update_s"]
    print(f"gradients {total / 1e6:.0f} MB float32 over {len(profile['variables'])} variables; "
          f"forward and backward pass {profile['backward_s']:.2f} s (median), Adam update "
          f"{profile['update_s']:.2f} s: single-worker step {single:.2f} s")
    print("gradients ready (s from the step's start): " + ", ".join(
        f"{_layer(name)} {t:.3f}" for name, _, t in profile["variables"][::-2]))
    print(f"ring latency {latency_s * 1e6:g} us per step; buckets of at most {cap / MIB:g} MiB")
    print()
    print("step    workers  Gbit/s  dtype     flat step  flat eff  bucketed step  bucketed eff")
    for row in rows:
        step = "here" if row["compute_s"] is None else f"{row['compute_s']:g} s"
        print(f"{step:<7} {row['workers']:>7}  {row['gbit']:>6g}  {row['dtype']:<8}  "
              f"{row['flat_step_s']:8.2f} s  {100 * row['flat_efficiency']:6.0f} %  "
              f"{row['bucketed_step_s']:11.2f} s  {100 * row['bucketed_efficiency']:10.0f} %")
    print()
    print("bucket cap at 8 workers, 10 Gbit/s, 1 s step: "
          + ", ".join(f"{s['cap_mib']} MiB {s['dtype']} {100 * s['efficiency']:.0f} %"
                      for s in sweep))


def build_parser():
    parser = argparse.ArgumentParser(prog="python bench/allreduce_sim.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=Range(1, 64, integer=True), default=2)
    parser.add_argument("--size", type=Range(32, 1024, integer=True), default=224)
    parser.add_argument("--num-classes", type=NUM_CLASSES_RANGE, default=21)
    parser.add_argument("--width-multiplier", type=WIDTH_MULTIPLIER_RANGE, default=1.0,
                        help="VGG widths times this (default 1: the real VGG19)")
    parser.add_argument("--fc-width", type=FC_WIDTH_RANGE, default=4096)
    parser.add_argument("--repeats", type=REPEATS_RANGE, default=5)
    parser.add_argument("--threads", type=threads_range(), default=None)
    parser.add_argument("--latency-us", type=Range(0, 10**6), default=50.0,
                        help="latency of one ring step, microseconds (default 50)")
    parser.add_argument("--gbit", type=Range(0, 10**6, low_open=True), action="append",
                        help="link bandwidth, Gbit/s; repeat for several (default 10 and 25)")
    parser.add_argument("--bucket-bytes", type=Range(1, 10**12, integer=True), default=None,
                        help="bucket cap (default: train.allreduce_bucket_bytes's default)")
    parser.add_argument("--from-report", metavar="RUN.json",
                        help="take the profile from an earlier report instead of measuring")
    parser.add_argument("--out", help="the JSON report (default "
                                      "bench/results/allreduce-<UTC time>.json)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from fcn_graph.training.config import TrainConfig
    cap = args.bucket_bytes or TrainConfig().allreduce_bucket_bytes
    latency_s = args.latency_us / 1e6
    out = report_path(args.out, "allreduce")
    if args.from_report:
        try:
            with open(args.from_report, encoding="utf-8") as handle:
                profile = json.load(handle)["profile"]
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"--from-report {args.from_report}: expected a report of this "
                            f"script, found {err}") from None
    else:
        profile = measure_profile(batch=args.batch, size=args.size, num_classes=args.num_classes,
                                  width_multiplier=args.width_multiplier,
                                  fc_width=args.fc_width, repeats=args.repeats,
                                  threads=args.threads)
    rows, sweep = tables(profile, cap=cap, latency_s=latency_s, gbits=args.gbit or GBITS)
    print_report(profile, rows, sweep, cap=cap, latency_s=latency_s)
    write_report(out, {
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": cpuinfo.cpu_label(), "loadavg": list(os.getloadavg()),
        "case": {"batch": args.batch, "size": args.size, "num_classes": args.num_classes,
                 "width_multiplier": args.width_multiplier, "fc_width": args.fc_width},
        "latency_s": latency_s, "bucket_bytes": cap, "profile": profile, "rows": rows,
        "sweep": sweep})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
