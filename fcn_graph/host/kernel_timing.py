"""The kernel timing behind `choice`: time the candidate forms of the layers
the choices are about, with oneDNN off and on, and cache what it finds.

`run_timing` starts one fresh process per oneDNN setting (TensorFlow
reads TF_ENABLE_ONEDNN_OPTS only when it loads); each runs `measure`, which
times, at the full network's shapes for 224x224 and 512x512 inputs:
- conv6 (7x7, C5 -> F) and conv7 (1x1, F -> F) as tf.nn.conv2d and as
  im2col + matrix products of `choice.ROW_BLOCKS` rows;
- the legacy head's three upsamplings (conv_t1, conv_t2 by 2, conv_t3 by 8)
  as conv2d_transpose and as phase convolutions;
- one VGG-body 3x3 conv (conv3_2, 256 -> 256 at 1/4), counted as many times
  as the whole body's FLOPs hold it, so that the summed time estimates the
  network's;
forward (the "forward" pass) for inference, and forward plus the gradients of
inputs and weights (the "training" pass, 224x224 batch 2) for training. Each
time is the median of REPEATS calls after WARMUP (one call, for a form over
GIVE_UP_FACTOR times slower than the fastest so far); weights and inputs are
random, made in the graph.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from fcn_graph.core.errors import UserError
from fcn_graph.host import choice

WARMUP = 1             # untimed calls of each form first (the first optimises the graph)
REPEATS = 3            # timed calls of each form; the median counts
# A form whose timed call takes more than this many times the fastest form of
# the same layer so far is timed once only.
GIVE_UP_FACTOR = 2.0
SLOW_WARMUP_SECONDS = 0.5
INPUT_SIZES = (224, 512)
TRAINING_INPUT = (2, 224)   # batch, size of the training pass (the benchmark's train_b2)
NUM_CLASSES = 21
# Full VGG19 widths of the layers timed: pool3 (C3), pool4 (C4), pool5 (C5), conv6/7 (F).
WIDTHS = {"c3": 256, "c4": 512, "c5": 512, "fc": 4096}
# The VGG19 body up to conv5_3 (what the legacy graph runs): (C_in, C_out, downsampling).
BODY = ((3, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 2), (128, 256, 4), (256, 256, 4),
        (256, 256, 4), (256, 256, 4), (256, 512, 8), (512, 512, 8), (512, 512, 8), (512, 512, 8),
        (512, 512, 16), (512, 512, 16), (512, 512, 16))
BODY_SAMPLE = 5        # the body conv timed: BODY[5], conv3_2
WORKER_TIMEOUT = 900


def scaled(width, scale):
    return max(1, int(round(width * scale)))


def body_count(scale=1.0):
    """How many times the timed body conv's FLOPs fit in the body's (same input size)."""
    def flops(c_in, c_out, down):
        return scaled(c_in, scale) * scaled(c_out, scale) / down ** 2 if c_in > 3 else \
            3 * scaled(c_out, scale) / down ** 2
    return sum(flops(*row) for row in BODY) / flops(*BODY[BODY_SAMPLE])


def fc_variants(rows):
    """The distinct computations among the conv6/conv7 candidates for a product
    of `rows` rows: candidate -> the candidate timed for it (blocks that cut
    `rows` into the same number of products are one computation)."""
    timed, same = {}, {}
    for form in choice.FC_CANDIDATES:
        kind, block = choice.parse_fc_form(form)
        what = "conv" if kind == "conv" else ("all" if not block else -(-rows // block))
        same[form] = timed.setdefault(what, form)
    return same


def _time(session, op, warmup, repeats, give_up=None):
    """The median seconds of `repeats` calls after `warmup` (at least one); a
    single timed call when it takes more than `give_up` seconds, none when the
    last warm-up call took twice that and over SLOW_WARMUP_SECONDS (a form
    that slow cannot win)."""
    for _ in range(warmup):
        start = time.perf_counter()
        session.run(op)
        first = time.perf_counter() - start
    if give_up is not None and first > max(2 * give_up, SLOW_WARMUP_SECONDS):
        return first  # far slower even counting the graph's set-up: not timed again
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(op)
        times.append(time.perf_counter() - start)
        if give_up is not None and times[-1] > give_up:
            break
    return statistics.median(times)


def _rule_first(form):
    rule = (choice.fc_form_name(choice.DEFAULT_FC_FORM, choice.DEFAULT_ROW_BLOCK),
            choice.DEFAULT_UPSAMPLE_FORM)
    return (form not in rule, form)


def _layer_cases(size, batch, scale):
    """(layer, input shape, builder(net, kernel, bias, form) -> output, kernel shape,
    forms, count) for each layer timed at input size `size`."""
    from fcn_graph.network import cpu_layers, tf_layers
    c3, c4, c5, fc = (scaled(WIDTHS[k], scale) for k in ("c3", "c4", "c5", "fc"))
    k = NUM_CLASSES
    s32, s16, s8 = (-(-size // d) for d in (32, 16, 8))

    def fc_layer(net, kernel, bias, form):
        kind, block = choice.parse_fc_form(form)
        if kind == "conv":
            return tf_layers.conv2d(net, kernel, bias)
        return cpu_layers.dense_conv2d(net, kernel, bias, block=block)

    def upsampling(out_hw, stride):
        def build(net, kernel, bias, form):
            shape = [batch, out_hw, out_hw, kernel.shape[2]]
            if form == "transpose":
                return tf_layers.upsample(net, kernel, bias, shape, stride)
            return cpu_layers.upsample_by_phases(net, kernel, bias, shape, stride)
        return build

    def body(net, kernel, bias, form):
        return tf_layers.conv2d(net, kernel, bias)

    s4 = -(-size // 4)
    b_in, b_out, _ = BODY[BODY_SAMPLE]
    return [
        ("conv6", [batch, s32, s32, c5], fc_layer, [7, 7, c5, fc], None, 1.0),
        ("conv7", [batch, s32, s32, fc], fc_layer, [1, 1, fc, fc], None, 1.0),
        ("conv_t1", [batch, s32, s32, k], upsampling(s16, 2), [4, 4, c4, k],
         choice.UPSAMPLE_FORMS, 1.0),
        ("conv_t2", [batch, s16, s16, c4], upsampling(s8, 2), [4, 4, c3, c4],
         choice.UPSAMPLE_FORMS, 1.0),
        ("conv_t3", [batch, s8, s8, c3], upsampling(size, 8), [16, 16, k, c3],
         choice.UPSAMPLE_FORMS, 1.0),
        (choice.BODY_LAYER, [batch, s4, s4, scaled(b_in, scale)], body,
         [3, 3, scaled(b_in, scale), scaled(b_out, scale)], ("conv",), body_count(scale)),
    ]


def measure(*, threads, scale=1.0, warmup=WARMUP, repeats=REPEATS, sizes=INPUT_SIZES,
            log=None):
    """Time every candidate in this process (TensorFlow loaded here, with the
    oneDNN setting the environment gave it); returns the timing rows."""
    import numpy as np
    import tensorflow as tf

    from fcn_graph.host.session import onednn_enabled, session_config
    tf1 = tf.compat.v1
    onednn = onednn_enabled()
    runs = [("forward", 1, size) for size in sizes] + [("training", *TRAINING_INPUT)]
    rows = []
    for pass_, batch, size in runs:
        for layer, in_shape, build, k_shape, forms, count in _layer_cases(size, batch, scale):
            if forms is None:
                same = fc_variants(in_shape[0] * in_shape[1] * in_shape[2])
            else:
                same = {form: form for form in forms}
            with tf.Graph().as_default() as graph:
                rng = np.random.default_rng(0)
                net = tf1.get_variable("input", in_shape, initializer=tf1.random_normal_initializer())
                fan_in = k_shape[0] * k_shape[1] * (k_shape[3] if layer.startswith("conv_t")
                                                    else k_shape[2])
                init = tf1.random_normal_initializer(stddev=math.sqrt(2.0 / fan_in))
                if pass_ == "forward" and layer.startswith("conv_t"):
                    # at inference the upsampling kernels are constants (folded_upsampling_kernels)
                    kernel = tf.constant(rng.standard_normal(k_shape).astype(np.float32) * 0.01)
                else:
                    kernel = tf1.get_variable("kernel", k_shape, initializer=init)
                bias = tf1.get_variable("bias", [k_shape[2] if layer.startswith("conv_t")
                                                 else k_shape[3]],
                                        initializer=tf1.zeros_initializer())
                ops = {}
                # the rule's forms first: the others' times are held against them
                for form in sorted(set(same.values()), key=_rule_first):
                    out = build(net, kernel, bias, form)
                    # a sum is fetched: Grappler drops work whose result nobody fetches
                    if pass_ == "training":
                        wrt = [net, kernel] if isinstance(kernel, tf.Variable) else [net]
                        ops[form] = tf.add_n([tf.reduce_sum(grad) for grad in
                                              tf.gradients(tf.reduce_sum(out), wrt)])
                    else:
                        ops[form] = tf.reduce_sum(out)
                initialize = tf1.global_variables_initializer()
                graph.finalize()
            with tf1.Session(graph=graph, config=session_config(threads)) as session:
                session.run(initialize)
                seconds = {}
                for form, op in ops.items():
                    best = min(seconds.values(), default=None)
                    seconds[form] = _time(session, op, warmup, repeats,
                                          None if best is None else GIVE_UP_FACTOR * best)
            for form, timed in same.items():
                rows.append({"onednn": onednn, "pass": pass_, "input": size, "batch": batch,
                             "layer": layer, "form": form, "seconds": seconds[timed],
                             "count": count})
                if log and form == timed:
                    print(f"  oneDNN {'on' if onednn else 'off'}: {pass_} {size} {layer} "
                          f"{form}: {1000 * seconds[timed]:.1f} ms", file=log)
    return rows


# ---------------------------------------------------------------- the parent

def worker_command(setting, result, *, threads, scale):
    return [sys.executable, "-m", "fcn_graph.calibrate", "--measure", setting, "--result", result,
            "--threads", str(threads), "--scale", repr(scale)]


def run_timing(*, threads=None, scale=1.0, root=None, log=None):
    """Measure with oneDNN off, then on, each in a fresh process; write and return
    (path, record). The file goes to `choice.timing_path` atomically."""
    from fcn_graph.core.fileio import write_json_atomic
    from fcn_graph.core.private_files import make_private_folder
    threads = threads or choice.thread_count()
    key = choice.timing_key(threads=threads)
    path = choice.timing_path(key, root)
    started = time.time()
    timings = []
    with tempfile.TemporaryDirectory(prefix="fcn_calibrate_") as work:
        for setting in ("0", "1"):
            result = os.path.join(work, f"onednn{setting}.json")
            env = dict(os.environ, **{choice.ONEDNN_ENV: setting,
                                      "OMP_NUM_THREADS": str(threads)})
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            if log:
                print(f"timing with oneDNN {'on' if setting == '1' else 'off'} ...", file=log)
            try:
                proc = subprocess.run(worker_command(setting, result, threads=threads,
                                                     scale=scale),
                                      env=env, capture_output=True, text=True,
                                      timeout=WORKER_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise UserError(f"calibration with {choice.ONEDNN_ENV}={setting}: no result "
                                f"within {WORKER_TIMEOUT} s") from None
            if log and proc.stderr:
                log.write(proc.stderr)
            if proc.returncode != 0 or not os.path.isfile(result):
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                raise UserError(f"calibration with {choice.ONEDNN_ENV}={setting} failed: "
                                f"{tail or f'exit status {proc.returncode}'}")
            with open(result, encoding="utf-8") as handle:
                rows = json.load(handle)
            if any(row["onednn"] != (setting == "1") for row in rows):
                raise UserError(f"calibration: {choice.ONEDNN_ENV}={setting} did not set "
                                "oneDNN in the TensorFlow process (a build without oneDNN?)")
            timings.extend(rows)
    record = choice.timing_record(key, timings, time.time() - started)
    folder = os.path.dirname(path)
    for private in (os.path.dirname(folder), folder):
        try:
            problem = make_private_folder(private, follow=private != folder)
        except OSError as err:
            raise UserError(f"{private}: cannot write the calibration "
                            f"({err.strerror or err})") from None
        if problem is not None:
            raise UserError(f"{private}: {problem}; expected a folder only this user can write "
                            "(the calibration is not written there)")
    write_json_atomic(path, record)
    return path, record


def format_timings(record, path=None):
    """The calibration as a table: one line per (pass, input, layer, form), ms
    with oneDNN off and on, then the choices for each task."""
    key = record["key"]
    lines = [f"calibration{' ' + path if path else ''}",
             f"CPU {key['cpu']}, TensorFlow {key['tensorflow']}, {key['threads']} threads; "
             f"measured in {record.get('seconds', 0):.0f} s"]
    table = {}
    for row in record["timings"]:
        where = (row["pass"], row["input"], row["layer"], row["form"])
        table.setdefault(where, {})[row["onednn"]] = row
    lines.append(f"{'pass':<10}{'input':>6} {'layer':<9}{'form':<12}{'off ms':>9}{'on ms':>9}"
                 f"{'x count':>9}")
    for (pass_, size, layer, form), by in table.items():
        cells = [f"{1000 * by[s]['seconds']:>9.1f}" if s in by else f"{'-':>9}"
                 for s in (False, True)]
        count = next(iter(by.values()))["count"]
        lines.append(f"{pass_:<10}{size:>6} {layer:<9}{form:<12}{''.join(cells)}{count:>9.2f}")
    for task in choice.TASKS:
        c = choice.derive_choices(record["timings"], task)
        block = "-" if c["row_block"] is None else (c["row_block"] or "all")
        lines.append(f"{task}: oneDNN {'on' if c['onednn'] else 'off'} (estimated "
                     f"{1000 * c['totals']['0']:.0f} ms off, {1000 * c['totals']['1']:.0f} ms on); "
                     f"conv6/conv7 {c['fc_form']} (row block {block}); "
                     f"upsampling {c['upsample_form']}")
    return "\n".join(lines)
