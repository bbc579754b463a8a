"""The worker side of the benchmark: one (variant, case) in its own process.

The process loads the weights, runs the warm-up calls, resets the
resident-memory high-water mark, then times the calls; `worker_main` writes
the record as JSON. Workers import TensorFlow only where they use it, so that
an onnxruntime worker's memory is ONNX Runtime's alone.
"""

import collections
import json
import os
import statistics
import sys
import time

import numpy as np

from bench.cases import CASES, variant_settings

# ---------------------------------------------------------------- measurement

def _proc_status_mib(key):
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_memory():
    """Reset VmHWM to the current RSS (Linux); returns the peak before the reset."""
    before = _proc_status_mib("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass
    return before


def time_calls(fn, *, warmup, repeats, min_seconds=0.0, on_warm=None):
    """Warm up, then time fn() at least `repeats` times and `min_seconds`;
    returns (first call seconds, [seconds per timed call])."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    if on_warm:
        on_warm()
    times, begin = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - begin < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def sgemm_gflops(size=4096, repeats=5):
    """GFLOP/s of a size^3 float32 matmul through NumPy's BLAS: (median, best)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    _, times = time_calls(lambda: a @ b, warmup=1, repeats=repeats)
    work = 2.0 * size ** 3 / 1e9
    return work / statistics.median(times), work / min(times)


def case_images(batch, height, width, seed=1):
    """Random uint8 images [batch, height, width, 3], the same for a given seed."""
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- one case


def generated_calibration(folder, count=8, size=224):
    """`count` shapes images of `size` pixels in `folder` (kept between runs)."""
    import numpy as np

    from fcn_graph.data import image_files
    from fcn_graph.data.shapes import render_sample
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = os.path.join(folder, f"calib_{index:02d}.png")
        image = render_sample(rng, size)[0]
        if not os.path.exists(path):
            image_files.write_image(path, image)
    return folder


def make_weights(prefix, *, num_classes, width_multiplier, fc_width, seed=0, backbone="vgg19"):
    """Write a checkpoint of random full-size (or scaled) weights of the legacy
    FCN-8s on `backbone` to `prefix`."""
    import tensorflow as tf

    from fcn_graph.network import tf_layers
    from fcn_graph.network.spec import ModelSpec, scaled_vgg_widths
    from fcn_graph.weights import checkpoint
    tf1 = tf.compat.v1
    widths = scaled_vgg_widths(width_multiplier, backbone)
    spec = ModelSpec(num_classes=num_classes, fc_width=fc_width,
                     vgg_widths=tuple(widths.values()), backbone=backbone)
    with tf.Graph().as_default() as graph:
        tf1.set_random_seed(seed)
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        tf_layers.build(images, spec)
        variables = tf_layers.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        init = tf1.variables_initializer(list(variables.values()))
        with tf1.Session(graph=graph) as sess:
            sess.run(init)
            checkpoint.save_model(sess, saver, prefix, spec)


def layer_boundaries(spec, end_points):
    """(layer, tensor) in execution order: a layer is everything computed after
    the previous boundary up to this tensor (conv + bias + ReLU together), as
    `definition.layer_ends` lists them, then the prediction."""
    from fcn_graph.network import definition
    rows = [(layer, end_points[end]) for layer, end in definition.layer_ends(spec)]
    return rows + [("prediction", end_points["prediction"])]


def op_layers(boundaries):
    """original op name -> layer, by walking each boundary's ancestors."""
    owner = {}
    for layer, tensor in boundaries:
        stack = [tensor.op]
        while stack:
            op = stack.pop()
            if op.name in owner:
                continue
            owner[op.name] = layer
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return owner


def profile_step_stats(run_metadata, owner):
    """(per op kind ms, per layer ms) from one traced run's step stats."""
    kinds, layers = collections.Counter(), collections.Counter()
    for device in run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
            ms = (node.all_end_rel_micros or node.op_end_rel_micros) / 1000.0
            label = node.timeline_label
            kind = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else node.node_name
            kinds[kind] += ms
            name = node.node_name.split(":")[0]
            layer = owner.get(name)
            while layer is None and "/" in name:  # grappler-made names: try the scope
                name = name.rsplit("/", 1)[0]
                layer = owner.get(name)
            layers[layer or "(other)"] += ms
    return kinds, layers


def run_inference_case(args, case):
    """Time `infer`'s per-batch call on the case's images; profile it if args.profile."""
    batch, height, width, _ = CASES[case]
    engine, options, _ = variant_settings(args.variant)
    images = case_images(batch, height, width)
    kernels = options.get("kernels", args.kernels)
    if not options.get("heap"):
        from fcn_graph.host.memory import return_freed_memory  # as infer and evaluate do
        return_freed_memory()
    if engine == "openvino":
        from fcn_graph.engines.openvino_engine import OpenVinoSegmenter
        segmenter = OpenVinoSegmenter(onnx_path(args.prefix), threads=args.threads,
                                      precision=options.get("precision", "float32"))
    elif engine == "litert":
        from fcn_graph.engines.litert import LiteRTSegmenter
        segmenter = LiteRTSegmenter(tflite_path(args.prefix), threads=args.threads)
    elif engine == "onnxruntime":
        from fcn_graph.engines.onnx_engine import OnnxSegmenter
        # converted once by the parent ("make-onnx"), so this process never
        # imports TensorFlow, as in a deployment that ships the .onnx file
        segmenter = OnnxSegmenter(onnx_path(args.prefix, options.get("precision", "float32")),
                                  threads=args.threads)
    else:
        from fcn_graph.engines.segmenter import Segmenter
        config = None
        if "inter_op" in options:
            from fcn_graph.host.session import session_config
            config = session_config(args.threads)
            config.inter_op_parallelism_threads = options["inter_op"]
        segmenter = Segmenter(args.prefix, threads=args.threads, xla=options.get("xla", False),
                              precision=options.get("precision", "float32"), config=config,
                              kernels=kernels)
    result = {"load_peak_mib": reset_peak_memory()}
    first, times = time_calls(lambda: segmenter.run(images), warmup=args.warmup,
                              repeats=args.repeats, min_seconds=args.min_seconds)
    result.update(first_call_s=first, times_s=times)
    if args.save_logits:
        _, logits = segmenter.run(images, scores=True)
        np.save(args.save_logits, logits.astype(np.float32))
    if args.profile:
        result["profile"] = _profile(segmenter, images, repeats=3)
    segmenter.close()
    return result


def onnx_path(prefix, precision="float32"):
    """The ONNX model of checkpoint `prefix` that the parent writes: the float
    one ("make-onnx") or the int8 one ("make-int8")."""
    return prefix + (".int8.onnx" if precision == "int8" else ".onnx")


def tflite_path(prefix):
    """The float32 LiteRT model of checkpoint `prefix` that the parent writes ("make-tflite")."""
    return prefix + ".tflite"


def make_tflite(prefix):
    """Write `prefix`.tflite as `export --format tflite` writes it (float32)."""
    from fcn_graph.engines.exporters import export_tflite
    export_tflite(prefix, tflite_path(prefix), verify=False, force=True)


def make_int8(prefix, *, calibration=None):
    """Quantize `prefix`.onnx into `prefix`.int8.onnx, calibrated on the images
    of folder `calibration` (default: generated shapes images beside `prefix`)."""
    from fcn_graph.engines import int8_model
    calibration = calibration or generated_calibration(
        os.path.join(os.path.dirname(os.path.abspath(prefix)), "calibration"))
    int8_model.quantize_model(onnx_path(prefix), calibration, onnx_path(prefix, "int8"))


def is_fused_kind(kind):
    """True for the op kinds of Grappler's fusions: `_FusedConv2D`, `_FusedMatMul`
    (Eigen kernels) and `_MklNativeFusedConv2D`, `_MklNativePadWithFusedConv2D`,
    `_MklFusedMatMul` (oneDNN kernels, TF_ENABLE_ONEDNN_OPTS=1)."""
    return kind.startswith("_") and "Fused" in kind


def _profile(segmenter, images, repeats):
    import tensorflow as tf
    tf1 = tf.compat.v1
    owner = op_layers(layer_boundaries(segmenter.spec, segmenter.end_points))
    batch = images.astype(np.float32)
    runs = []
    for _ in range(repeats):
        metadata = tf1.RunMetadata()
        segmenter.session.run(segmenter.prediction, {segmenter.images: batch},
                              options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                              run_metadata=metadata)
        runs.append(profile_step_stats(metadata, owner))
    # the median run by total time
    runs.sort(key=lambda r: sum(r[0].values()))
    kinds, layers = runs[len(runs) // 2]
    fused = [kind for kind in kinds if is_fused_kind(kind)]
    return {"op_kinds_ms": dict(kinds.most_common()), "layers_ms": dict(layers),
            "fused_kinds": fused}


def run_training_case(args, case):
    """Time Adam steps of the legacy loss on the case's batch, repeated from memory."""
    import tensorflow as tf

    from fcn_graph.host import choice
    from fcn_graph.host.session import session_config, xla_scope
    from fcn_graph.network import tf_layers
    from fcn_graph.weights import checkpoint
    tf1 = tf.compat.v1
    batch, height, width, _ = CASES[case]
    _, options, _ = variant_settings(args.variant)
    spec = checkpoint.model_spec_from_checkpoint(args.prefix)
    images = case_images(batch, height, width)
    labels = np.random.default_rng(2).integers(0, spec.num_classes, (batch, height, width),
                                               dtype=np.int32)
    with tf.Graph().as_default() as graph:
        dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(1)
        image_batch, label_batch = tf1.data.make_one_shot_iterator(dataset).get_next()
        with xla_scope(options.get("xla", False)):
            layers = choice.kernel_layers(options.get("kernels", args.kernels))
            logits, _, _ = tf_layers.build(image_batch, spec, layers=layers, keep_prob=0.85)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=label_batch, logits=logits))
            train_op = tf1.train.AdamOptimizer(1e-4).minimize(loss)
        variables = tf_layers.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        others = [v for v in tf1.global_variables() if v.op.name not in variables]
        init_others = tf1.variables_initializer(others)
        graph.finalize()
    session = tf1.Session(graph=graph, config=session_config(
        args.threads, xla=options.get("xla", False),
        precision=options.get("precision", "float32")))
    checkpoint.restore_model(session, args.prefix, variables, saver=saver)
    session.run(init_others)
    result = {"load_peak_mib": reset_peak_memory()}
    losses = []
    first, times = time_calls(lambda: losses.append(session.run([train_op, loss])[1]),
                              warmup=args.warmup, repeats=args.repeats,
                              min_seconds=args.min_seconds)
    result.update(first_call_s=first, times_s=times, loss_first=float(losses[0]),
                  loss_last=float(losses[-1]))
    session.close()
    return result


def worker_main(args):
    """One (variant, case) in this process; writes a JSON record to args.result."""
    case = args.worker
    if case == "make-weights":
        make_weights(args.prefix, num_classes=args.num_classes,
                     width_multiplier=args.width_multiplier, fc_width=args.fc_width,
                     backbone=args.backbone)
        return 0
    if case == "make-onnx":
        from fcn_graph.engines.onnx_engine import build_onnx_model, save_model
        # as `export --format onnx --external-data` writes it (lower load peak)
        save_model(build_onnx_model(args.prefix, kernels=args.kernels), args.prefix + ".onnx",
                   external_data=True)
        return 0
    if case == "make-int8":
        make_int8(args.prefix)
        return 0
    if case == "make-tflite":
        make_tflite(args.prefix)
        return 0
    if case == "sgemm":
        median, best = sgemm_gflops(args.sgemm_size, repeats=args.sgemm_repeats)
        record = {"median_gflops": median, "best_gflops": best}
    else:
        training = CASES[case][3]
        # as train.py and infer choose it, before TensorFlow loads; a variant's
        # -onednn or -eigen (the environment) wins
        from fcn_graph.host import choice
        choice.apply_onednn("training" if training else "inference", threads=args.threads,
                                require="bfloat16" == variant_settings(args.variant)[1].get(
                                    "precision"))
        runner = run_training_case if training else run_inference_case
        record = runner(args, case)  # resets the high-water mark before the first call
        if "tensorflow" in sys.modules:
            from fcn_graph.host.session import onednn_enabled
            record["onednn"] = onednn_enabled()
        record["run_peak_mib"] = _proc_status_mib("VmHWM")
        record["process_peak_mib"] = max(record["load_peak_mib"], record["run_peak_mib"])
    with open(args.result, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return 0

