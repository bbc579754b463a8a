"""Benchmark inference and training against the machine's sgemm throughput.

    python -m fcn_graph.bench                       # every case, tf + onnxruntime, ~6 min
    python -m fcn_graph.bench --cases 224_b1,512_b1 --variants tf,tf-reference --repeats 7

Weights are random, full VGG19 size (He-normal body, FCN.tensorflow's heads), 21
classes, written once to a temporary checkpoint. Every (variant, case) runs in
its own process, so that one case's memory does not hide another's: the
process loads the weights, runs the warm-up calls, resets the resident-memory
high-water mark (/proc/self/clear_refs = 5), then times >= --repeats calls.
"Peak MiB" is VmHWM from the first warm-up call on (run phase); the whole
process's peak, loading included, is in the JSON ("process_peak_mib").

An inference call is what `infer` does per batch: uint8 images in, the label
map (argmax) back in host memory. A training call is one Adam step on the
legacy loss (mean sparse softmax cross-entropy, keep_prob 0.85), the batch
coming from a repeated in-memory `tf.data` dataset straight into the graph.

The kernel set of every variant is --kernels (default auto: the CPU forms
without a GPU); a variant's -reference or -cpu modifier overrides it. FLOPs
come from `fcn_graph.flops` (what the legacy graph runs: conv5_4 is not
counted); the per-layer profile's layers are `model.layer_ends`. The same run
times a 4096^3 float32 matmul through NumPy's BLAS with the same thread count;
"% sgemm" is each case's GFLOP/s against it (for a bfloat16 variant, marked
"*", against this FP32 figure, not a bf16 peak). One
case (default 224_b1, variant tf) is also traced with TensorFlow's step stats
and its time split per op kind and per layer. Results go to
bench/results/bench-<UTC time>.json (or --out), written atomically.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from fcn_graph.constants import KERNELS
from fcn_graph.errors import UserError, run_cli
from fcn_graph.fileio import check_output_file, json_written_with, write_json_atomic

# case -> (batch, height, width, training)
CASES = collections.OrderedDict([
    ("224_b1", (1, 224, 224, False)),
    ("512_b1", (1, 512, 512, False)),
    ("224_b8", (8, 224, 224, False)),
    ("voc_b1", (1, 375, 500, False)),   # a VOC-sized image: 500 wide, 375 high
    ("train_b2", (2, 224, 224, True)),
    ("train_b8", (8, 224, 224, True)),
])
# A variant is an engine ("tf", the default path, or "onnxruntime") plus
# "-"-joined modifiers of the tf engine, e.g. "tf-onednn-reference":
MODIFIERS = collections.OrderedDict([
    ("reference", ({"kernels": "reference"}, {})),      # the plain ops (model.TFLayers)
    ("cpu", ({"kernels": "cpu"}, {})),                  # cpu_kernels.CpuLayers
    ("xla", ({"xla": True}, {})),                       # XLA JIT scope
    ("onednn", ({}, {"TF_ENABLE_ONEDNN_OPTS": "1"})),   # TF's oneDNN kernels
    ("eigen", ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"})),    # TF's default CPU kernels
    ("bf16", ({"precision": "bfloat16"}, {"TF_ENABLE_ONEDNN_OPTS": "1"})),
    ("inter2", ({"inter_op": 2}, {})),                  # inter-op threads 2 instead of 1
    ("heap", ({"heap": True}, {})),                     # freed memory kept in glibc's heap
])
ENGINES = ("tf", "onnxruntime")
TRAIN_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1"}  # what train.py sets unless told otherwise


def variant_settings(name):
    """variant name -> (engine, options, extra environment); ValueError if unknown."""
    engine, *mods = name.split("-")
    if engine not in ENGINES or (engine == "onnxruntime" and mods):
        raise ValueError(name)
    options, env = {}, {}
    for mod in mods:
        if mod not in MODIFIERS:
            raise ValueError(name)
        options.update(MODIFIERS[mod][0])
        env.update(MODIFIERS[mod][1])
    return engine, options, env


NUM_CLASSES = 21
RESULTS_DIR = os.path.join("bench", "results")
REPORT_KEYS = ("started_utc", "results")  # held by every report run_benchmark returns


# ---------------------------------------------------------------- helpers

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
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def max_relative_error(got, want):
    """max |got - want| / max |want| (a norm-wise error: element-wise ratios
    blow up where a logit crosses zero)."""
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


# ---------------------------------------------------------------- worker side
# Workers import TensorFlow only where they use it, so that an onnxruntime
# worker's memory is ONNX Runtime's alone.

def make_weights(prefix, *, num_classes, width_multiplier, fc_width, seed=0):
    """Write a checkpoint of random full-size (or scaled) weights to `prefix`."""
    import tensorflow as tf

    from fcn_graph import checkpoint
    from fcn_graph import model as fcn_model
    tf1 = tf.compat.v1
    widths = fcn_model.scaled_vgg_widths(width_multiplier)
    spec = fcn_model.ModelSpec(num_classes=num_classes, fc_width=fc_width,
                               vgg_widths=tuple(widths.values()))
    with tf.Graph().as_default() as graph:
        tf1.set_random_seed(seed)
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        fcn_model.build(images, spec)
        variables = fcn_model.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        init = tf1.variables_initializer(list(variables.values()))
        with tf1.Session(graph=graph) as sess:
            sess.run(init)
            checkpoint.save_model(sess, saver, prefix, spec)


def layer_boundaries(spec, end_points):
    """(layer, tensor) in execution order: a layer is everything computed after
    the previous boundary up to this tensor (conv + bias + ReLU together), as
    `model.layer_ends` lists them, then the prediction."""
    from fcn_graph import model as fcn_model
    rows = [(layer, end_points[end]) for layer, end in fcn_model.layer_ends(spec)]
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
    batch, height, width, _ = CASES[case]
    engine, options, _ = variant_settings(args.variant)
    images = case_images(batch, height, width)
    kernels = options.get("kernels", args.kernels)
    if not options.get("heap"):
        from fcn_graph.memory import return_freed_memory  # as infer and evaluate do
        return_freed_memory()
    if engine == "onnxruntime":
        from fcn_graph.onnx_engine import OnnxSegmenter
        # converted once by the parent ("make-onnx"), so this process never
        # imports TensorFlow, as in a deployment that ships the .onnx file
        segmenter = OnnxSegmenter(args.prefix + ".onnx", threads=args.threads)
    else:
        from fcn_graph.infer import Segmenter
        config = None
        if "inter_op" in options:
            from fcn_graph.session import session_config
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
    import tensorflow as tf

    from fcn_graph import checkpoint
    from fcn_graph import model as fcn_model
    from fcn_graph.session import session_config, xla_scope
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
            logits, _, _ = fcn_model.build(image_batch, spec, keep_prob=0.85,
                                           kernels=options.get("kernels", args.kernels))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=label_batch, logits=logits))
            train_op = tf1.train.AdamOptimizer(1e-4).minimize(loss)
        variables = fcn_model.model_variables(graph)
        saver = checkpoint.model_saver(variables)
        others = [v for v in tf1.global_variables() if v.op.name not in variables]
        init_others = tf1.variables_initializer(others)
        graph.finalize()
    session = tf1.Session(graph=graph, config=session_config(args.threads,
                                                             xla=options.get("xla", False)))
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
                     width_multiplier=args.width_multiplier, fc_width=args.fc_width)
        return 0
    if case == "make-onnx":
        from fcn_graph.onnx_engine import build_onnx_model, save_model
        # as `export --format onnx --external-data` writes it (lower load peak)
        save_model(build_onnx_model(args.prefix, kernels=args.kernels), args.prefix + ".onnx",
                   external_data=True)
        return 0
    if case == "sgemm":
        median, best = sgemm_gflops(args.sgemm_size, repeats=args.sgemm_repeats)
        record = {"median_gflops": median, "best_gflops": best}
    else:
        runner = run_training_case if CASES[case][3] else run_inference_case
        record = runner(args, case)  # resets the high-water mark before the first call
        record["run_peak_mib"] = _proc_status_mib("VmHWM")
        record["process_peak_mib"] = max(record["load_peak_mib"], record["run_peak_mib"])
    with open(args.result, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return 0


# ---------------------------------------------------------------- parent side

def _spawn(args, extra, env_extra=None, timeout=900):
    command = [sys.executable, "-m", "fcn_graph.bench"] + extra
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(env_extra or {})
    threads = str(args.threads)
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return " | ".join(tail) or f"exit status {proc.returncode}"
    return None


def _worker_args(args, prefix, result, variant, case):
    extra = ["--worker", case, "--prefix", prefix, "--result", result, "--variant", variant,
             "--threads", str(args.threads), "--warmup", str(args.warmup),
             "--repeats", str(args.repeats), "--min-seconds", str(args.min_seconds),
             "--num-classes", str(args.num_classes), "--fc-width", str(args.fc_width),
             "--width-multiplier", str(args.width_multiplier),
             "--sgemm-size", str(args.sgemm_size), "--sgemm-repeats", str(args.sgemm_repeats),
             "--kernels", args.kernels]
    return extra


def run_benchmark(args):
    from fcn_graph.session import cpu_count
    args.threads = args.threads or cpu_count()
    cases = _parse_list(args.cases, CASES, "--cases")
    variants = _parse_variants(args.variants)
    started = time.time()
    work = tempfile.mkdtemp(prefix="fcn_bench_")
    prefix = os.path.join(work, "weights")
    report = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "machine": _machine(), "threads": args.threads, "num_classes": args.num_classes,
              "width_multiplier": args.width_multiplier, "fc_width": args.fc_width,
              "kernels": args.kernels,
              "warmup": args.warmup, "repeats": args.repeats, "results": []}
    try:
        print(f"writing random weights (width x{args.width_multiplier}) ...", file=sys.stderr)
        error = _spawn(args, _worker_args(args, prefix, os.path.join(work, "w.json"), "tf",
                                          "make-weights"))
        if error:
            raise UserError(f"could not write the benchmark weights: {error}")
        if "onnxruntime" in variants:
            error = _spawn(args, _worker_args(args, prefix, os.path.join(work, "o.json"), "tf",
                                              "make-onnx"))
            if error:
                raise UserError(f"could not convert the benchmark weights to ONNX: {error}")
        sgemm_file = os.path.join(work, "sgemm.json")
        error = _spawn(args, _worker_args(args, prefix, sgemm_file, "tf", "sgemm"))
        sgemm = None if error else json.load(open(sgemm_file, encoding="utf-8"))
        report["sgemm"] = sgemm
        if sgemm:
            print(f"sgemm {args.sgemm_size}^3 (NumPy BLAS, {args.threads} threads): "
                  f"{sgemm['median_gflops']:.0f} GFLOP/s median", file=sys.stderr)
        peak = sgemm["median_gflops"] if sgemm else None
        reference_logits = {}
        for case in cases:
            batch, height, width, training = CASES[case]
            for variant in variants:
                if training and (variant_settings(variant)[0] != "tf"
                                 or "inter2" in variant or "bf16" in variant):
                    continue
                record = _run_one(args, work, prefix, variant, case, peak)
                if not training and record.get("logits_file"):
                    if variant == "tf":
                        reference_logits[case] = record["logits_file"]
                    elif case in reference_logits:
                        record["max_rel_error_vs_tf"] = max_relative_error(
                            np.load(record["logits_file"]), np.load(reference_logits[case]))
                record.pop("logits_file", None)
                report["results"].append(record)
                print(format_row(record), file=sys.stderr)
        if args.profile_case and args.profile_case != "none":
            report["profile"] = _run_profile(args, work, prefix)
    finally:
        for name in os.listdir(work):
            os.remove(os.path.join(work, name))
        os.rmdir(work)
    report["seconds"] = round(time.time() - started, 1)
    return report


def _run_one(args, work, prefix, variant, case, peak):
    from fcn_graph import flops  # imports TensorFlow: parent side only
    batch, height, width, training = CASES[case]
    result = os.path.join(work, f"{variant}-{case}.json")
    extra = _worker_args(args, prefix, result, variant, case)
    logits_file = None
    if not training and len(_parse_variants(args.variants)) > 1:
        logits_file = os.path.join(work, f"{variant}-{case}.npy")
        extra += ["--save-logits", logits_file]
    # Training runs with oneDNN unless the variant says otherwise, as train.py does.
    env = dict(TRAIN_ENV if training else {}, **variant_settings(variant)[2])
    error = _spawn(args, extra, env)
    record = {"variant": variant, "case": case, "batch": batch, "height": height,
              "width": width, "training": training}
    if error:
        record["error"] = error
        return record
    with open(result, encoding="utf-8") as handle:
        raw = json.load(handle)
    count = flops.train_flops if training else flops.forward_flops
    widths = _widths(args)
    work_flops = count(batch, height, width, args.num_classes, vgg_widths=widths,
                       fc_width=args.fc_width)
    median, best = statistics.median(raw["times_s"]), min(raw["times_s"])
    record.update(
        gflop=work_flops / 1e9, runs=len(raw["times_s"]),
        median_ms_per_call=median * 1000, min_ms_per_call=best * 1000,
        median_ms_per_image=median * 1000 / batch, min_ms_per_image=best * 1000 / batch,
        images_per_s=batch / median, gflops=work_flops / median / 1e9,
        first_call_s=raw["first_call_s"], run_peak_mib=raw["run_peak_mib"],
        process_peak_mib=raw["process_peak_mib"], times_ms=[t * 1000 for t in raw["times_s"]])
    if peak:
        # The probe is an FP32 sgemm: a low-precision variant is not bounded by it.
        if variant_settings(variant)[1].get("precision", "float32") == "float32":
            record["fraction_of_sgemm"] = record["gflops"] / peak
        else:
            record["fraction_of_fp32_sgemm"] = record["gflops"] / peak
    for key in ("loss_first", "loss_last"):
        if key in raw:
            record[key] = raw[key]
    if logits_file and os.path.exists(logits_file):
        record["logits_file"] = logits_file
    return record


def _run_profile(args, work, prefix):
    from fcn_graph import flops
    case = args.profile_case
    batch, height, width, training = CASES[case]
    result = os.path.join(work, "profile.json")
    extra = _worker_args(args, prefix, result, "tf", case) + ["--profile"]
    extra[extra.index("--repeats") + 1] = "1"
    extra[extra.index("--min-seconds") + 1] = "0"
    error = _spawn(args, extra)
    if error:
        return {"case": case, "error": error}
    with open(result, encoding="utf-8") as handle:
        profile = json.load(handle)["profile"]
    layer_flops = flops.layer_flops(batch, height, width, args.num_classes,
                                    vgg_widths=_widths(args), fc_width=args.fc_width)
    total_ms = sum(profile["layers_ms"].values())
    total_flops = sum(layer_flops.values())
    layers = []
    for name, ms in sorted(profile["layers_ms"].items(), key=lambda kv: -kv[1]):
        share = ms / total_ms
        flop_share = layer_flops.get(name, 0) / total_flops
        layers.append({"layer": name, "ms": ms, "time_share": share, "flop_share": flop_share,
                       "gflops": layer_flops.get(name, 0) / (ms / 1000) / 1e9 if ms else 0.0})
    return {"case": case, "variant": "tf", "traced_ms": total_ms, "layers": layers,
            "op_kinds_ms": profile["op_kinds_ms"], "fused_kinds": profile["fused_kinds"]}


def _widths(args):
    from fcn_graph import model as fcn_model
    return fcn_model.scaled_vgg_widths(args.width_multiplier)


def _parse_list(text, known, flag):
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise UserError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; expected a "
                        f"comma-separated list of {', '.join(known)}")
    return items


def _parse_variants(text):
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        try:
            variant_settings(item)
        except ValueError:
            raise UserError(f"--variants: unknown variant {item!r}; expected onnxruntime or tf "
                            f"with any of -{', -'.join(MODIFIERS)} (e.g. tf-onednn-xla)") from None
    if not items:
        raise UserError("--variants: empty list")
    return items


def _machine():
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "onednn_env":
            os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


# ---------------------------------------------------------------- output

HEADER = (f"{'variant':<22}{'case':<10}{'GFLOP':>8}{'ms/call':>9}{'median ms/img':>15}{'min ms/img':>12}"
          f"{'img/s':>8}{'GFLOP/s':>9}{'% sgemm':>9}{'peak MiB':>10}{'rel err':>9}")


FP32_MARK = "*"  # a low-precision variant's GFLOP/s against the FP32 sgemm
FP32_NOTE = (f"{FP32_MARK} low-precision variant: GFLOP/s vs the FP32 sgemm, not a peak of its "
             "own precision (can exceed 100%)")


def format_row(r):
    if "error" in r:
        return f"{r['variant']:<22}{r['case']:<10}  failed: {r['error']}"
    if "fraction_of_sgemm" in r:
        frac = f"{100 * r['fraction_of_sgemm']:.0f}%"
    elif "fraction_of_fp32_sgemm" in r:
        frac = f"{100 * r['fraction_of_fp32_sgemm']:.0f}%{FP32_MARK}"
    else:
        frac = "-"
    err = f"{r['max_rel_error_vs_tf']:.1e}" if "max_rel_error_vs_tf" in r else "-"
    return (f"{r['variant']:<22}{r['case']:<10}{r['gflop']:>8.1f}{r['median_ms_per_call']:>9.0f}"
            f"{r['median_ms_per_image']:>15.1f}"
            f"{r['min_ms_per_image']:>12.1f}{r['images_per_s']:>8.2f}{r['gflops']:>9.1f}"
            f"{frac:>9}{r['run_peak_mib']:>10.0f}{err:>9}")


def format_report(report):
    lines = []
    sgemm = report.get("sgemm")
    if sgemm:
        lines.append(f"sgemm 4096^3, NumPy BLAS, {report['threads']} threads: "
                     f"{sgemm['median_gflops']:.1f} GFLOP/s (median), {sgemm['best_gflops']:.1f} best")
    lines.append(HEADER)
    lines.extend(format_row(r) for r in report["results"])
    if any("fraction_of_fp32_sgemm" in r for r in report["results"]):
        lines.append(FP32_NOTE)
    profile = report.get("profile")
    if profile and "layers" in profile:
        lines.append("")
        lines.append(f"profile {profile['case']} ({profile['variant']}): "
                     f"{profile['traced_ms']:.0f} ms traced; slowest layer "
                     f"{profile['layers'][0]['layer']}")
        lines.append(f"{'layer':<12}{'ms':>8}{'time %':>8}{'FLOP %':>8}{'GFLOP/s':>9}")
        for row in profile["layers"]:
            lines.append(f"{row['layer']:<12}{row['ms']:>8.1f}{100 * row['time_share']:>8.1f}"
                         f"{100 * row['flop_share']:>8.1f}{row['gflops']:>9.0f}")
        lines.append("op kinds: " + ", ".join(f"{k} {v:.1f} ms" for k, v in
                                              list(profile["op_kinds_ms"].items())[:8]))
    elif profile:
        lines.append(f"profile failed: {profile.get('error')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases (default all: {','.join(CASES)})")
    parser.add_argument("--variants", default="tf,onnxruntime",
                        help="comma-separated variants (default tf,onnxruntime): onnxruntime, "
                             "or tf plus any of " + ", ".join("-" + m for m in MODIFIERS)
                             + " (e.g. tf-onednn-reference); training cases run tf* only")
    parser.add_argument("--kernels", choices=KERNELS, default="auto",
                        help="kernel set of every variant (and of the ONNX model): reference, "
                             "cpu, or auto (default: reference when a GPU is seen, else cpu); "
                             "-reference/-cpu in a variant override it")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per case, at least (default 5)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls first, the first includes graph optimisation "
                             "(default 2)")
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="keep timing until this many seconds have passed (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per op, and for the sgemm probe (default: every core)")
    parser.add_argument("--profile-case", default="224_b1",
                        help="case to trace per layer with the tf variant, or 'none' "
                             "(default 224_b1)")
    parser.add_argument("--width-multiplier", type=float, default=1.0,
                        help="scale the VGG widths (default 1: real VGG19)")
    parser.add_argument("--fc-width", type=int, default=4096,
                        help="conv6/conv7 channels (default 4096)")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES,
                        help=f"classes (default {NUM_CLASSES})")
    parser.add_argument("--sgemm-size", type=int, default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--sgemm-repeats", type=int, default=5,
                        help="timed sgemm calls (default 5)")
    parser.add_argument("--out", default=None,
                        help="JSON file to write (default bench/results/bench-<UTC time>.json)")
    # internal: one case in a child process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="tf", help=argparse.SUPPRESS)
    parser.add_argument("--save-logits", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup: expected positive integers")
    if args.profile_case not in CASES and args.profile_case != "none":
        parser.error(f"--profile-case: expected one of {', '.join(CASES)} or none, "
                     f"found {args.profile_case!r}")
    if args.profile_case in CASES and CASES[args.profile_case][3]:
        parser.error("--profile-case: pick an inference case")
    if args.worker:
        return worker_main(args)
    out = args.out or os.path.join(RESULTS_DIR, time.strftime("bench-%Y%m%dT%H%M%SZ.json",
                                                              time.gmtime()))
    # Checked before the (long) run: the folder made and writable, and an
    # existing file replaced only when it is an earlier bench report.
    if check_output_file(out, "--out") and not json_written_with(out, REPORT_KEYS):
        raise UserError(f"--out {out}: exists and is not a report bench wrote; refusing to "
                        "overwrite it (choose another --out)")
    report = run_benchmark(args)
    print(format_report(report))
    try:
        write_json_atomic(out, report)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write ({err.strerror})") from None
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.bench"))
