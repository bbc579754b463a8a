"""Benchmark inference and training against the machine's sgemm throughput.

    python -m fcn_graph.bench                       # every case, tf + onnxruntime, ~6 min
    python -m fcn_graph.bench --cases 224_b1,512_b1 --variants tf,tf-reference --repeats 7

Weights are random, full VGG19 size (--backbone vgg16: VGG16; He-normal body,
FCN.tensorflow's heads), 21 classes, written once to a temporary checkpoint. Every (variant, case) runs in
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
come from `fcn_graph.network.flops` (what the legacy graph runs: conv5_4 is not
counted); the per-layer profile's layers are `definition.layer_ends`. The same run
times a 4096^3 float32 matmul through NumPy's BLAS with the same thread count;
"% sgemm" is each case's GFLOP/s against it (for a bfloat16 variant, marked
"*", against this FP32 figure, not a bf16 peak). One
case (default 224_b1, variant tf) is also traced with TensorFlow's step stats
and its time split per op kind and per layer. The report also gives each
inference case's forward GFLOP on both backbones, side by side. Results go to
bench/results/bench-<UTC time>.json (or --out), written atomically.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.cases import (
    CASES,
    MODIFIERS,
    NUM_CLASSES,
    parse_list,
    parse_variants,
    variant_settings,
)
from bench.report import format_report, format_row
from bench.worker import worker_main
from fcn_graph.core.constants import KERNELS
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import (
    claim_output,
    record_output,
    write_json_atomic,
)
from fcn_graph.core.ranges import (
    FC_WIDTH_RANGE,
    NUM_CLASSES_RANGE,
    REPEATS_RANGE,
    WIDTH_MULTIPLIER_RANGE,
    Range,
    threads_range,
)
from fcn_graph.network.spec import BACKBONES, DEFAULT_BACKBONE

# The source checkout that holds bench/ and fcn_graph/: put on the workers' path.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join("bench", "results")


def max_relative_error(got, want):
    """max |got - want| / max |want| (a norm-wise error: element-wise ratios
    blow up where a logit crosses zero)."""
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


# ---------------------------------------------------------------- parent side

def _spawn(args, extra, env_extra=None, timeout=900):
    """Run `python -m fcn_graph.bench <extra>` (a worker); None, or the error's last lines."""
    command = [sys.executable, "-m", "fcn_graph.bench"] + extra
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
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
             "--width-multiplier", str(args.width_multiplier), "--backbone", args.backbone,
             "--sgemm-size", str(args.sgemm_size), "--sgemm-repeats", str(args.sgemm_repeats),
             "--kernels", args.kernels]
    return extra


def run_benchmark(args):
    from fcn_graph.host.session import cpu_count
    args.threads = args.threads or cpu_count()
    cases = parse_list(args.cases, CASES, "--cases")
    variants = parse_variants(args.variants)
    started = time.time()
    work = tempfile.mkdtemp(prefix="fcn_bench_")
    prefix = os.path.join(work, "weights")
    report = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "machine": machine_info(args.kernels, args.threads), "threads": args.threads,
              "num_classes": args.num_classes,
              "width_multiplier": args.width_multiplier, "fc_width": args.fc_width,
              "kernels": args.kernels, "backbone": args.backbone,
              "flops_by_backbone": flops_by_backbone(args, cases),
              "warmup": args.warmup, "repeats": args.repeats, "results": []}
    try:
        write_models(args, work, prefix, variants)
        sgemm = run_sgemm(args, work, prefix)
        report["sgemm"] = sgemm
        if sgemm:
            print(f"sgemm {args.sgemm_size}^3 (NumPy BLAS, {args.threads} threads): "
                  f"{sgemm['median_gflops']:.0f} GFLOP/s median", file=sys.stderr)
        peak = sgemm["median_gflops"] if sgemm else None
        reference_logits = {}
        for case in cases:
            batch, height, width, training = CASES[case]
            for variant in variants:
                if training and (variant_settings(variant)[0] != "tf" or "inter2" in variant):
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
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["onednn_workers"] = onednn_in_workers(report["results"])
    report["seconds"] = round(time.time() - started, 1)
    return report


def write_models(args, work, prefix, variants):
    """Write the random weights to `prefix`, and the float and int8 ONNX models
    and the float LiteRT model where `variants` run them; UserError when one
    cannot be written."""
    print(f"writing random weights (width x{args.width_multiplier}) ...", file=sys.stderr)
    error = _spawn(args, _worker_args(args, prefix, os.path.join(work, "w.json"), "tf",
                                      "make-weights"))
    if error:
        raise UserError(f"could not write the benchmark weights: {error}")
    engines = {variant_settings(v)[0] for v in variants}
    precisions = {variant_settings(v)[1].get("precision", "float32") for v in variants
                  if variant_settings(v)[0] == "onnxruntime"}
    if precisions or "openvino" in engines:
        error = _spawn(args, _worker_args(args, prefix, os.path.join(work, "o.json"), "tf",
                                          "make-onnx"))
        if error:
            raise UserError(f"could not convert the benchmark weights to ONNX: {error}")
    if "int8" in precisions:
        error = _spawn(args, _worker_args(args, prefix, os.path.join(work, "q.json"), "tf",
                                          "make-int8"))
        if error:
            raise UserError(f"could not quantize the benchmark's ONNX model to int8: {error}")
    if "litert" in engines:
        error = _spawn(args, _worker_args(args, prefix, os.path.join(work, "t.json"), "tf",
                                          "make-tflite"))
        if error:
            raise UserError(f"could not export the benchmark weights to LiteRT: {error}")


def run_sgemm(args, work, prefix):
    """The sgemm probe in its own process: {"median_gflops", "best_gflops"}, or None."""
    sgemm_file = os.path.join(work, "sgemm.json")
    error = _spawn(args, _worker_args(args, prefix, sgemm_file, "tf", "sgemm"))
    if error:
        return None
    with open(sgemm_file, encoding="utf-8") as handle:
        return json.load(handle)


def _run_one(args, work, prefix, variant, case, peak):
    from fcn_graph.network import flops  # imports TensorFlow: parent side only
    batch, height, width, training = CASES[case]
    result = os.path.join(work, f"{variant}-{case}.json")
    extra = _worker_args(args, prefix, result, variant, case)
    logits_file = None
    if not training and len(parse_variants(args.variants)) > 1:
        logits_file = os.path.join(work, f"{variant}-{case}.npy")
        extra += ["--save-logits", logits_file]
    # oneDNN as train.py or infer choose it (host.choice, in the worker), unless
    # the variant says otherwise
    error = _spawn(args, extra, variant_settings(variant)[2])
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
                       fc_width=args.fc_width, backbone=args.backbone)
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
    for key in ("loss_first", "loss_last", "onednn"):
        if key in raw:
            record[key] = raw[key]
    if logits_file and os.path.exists(logits_file):
        record["logits_file"] = logits_file
    return record


def _run_profile(args, work, prefix):
    from fcn_graph.network import flops
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
                                    vgg_widths=_widths(args), fc_width=args.fc_width,
                                    backbone=args.backbone)
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


def _widths(args, backbone=None):
    from fcn_graph.network.spec import scaled_vgg_widths
    return scaled_vgg_widths(args.width_multiplier, backbone or args.backbone)


def flops_by_backbone(args, cases):
    """{backbone: {case: forward GFLOP of one call}} of the benchmark's legacy
    FCN-8s on each backbone, for the inference cases of the run."""
    from fcn_graph.network import flops
    return {backbone: {case: flops.forward_flops(
        *CASES[case][:3], args.num_classes, vgg_widths=_widths(args, backbone),
        fc_width=args.fc_width, backbone=backbone) / 1e9
        for case in cases if not CASES[case][3]} for backbone in BACKBONES}


# The cpuinfo flags that decide the engines' choices (vector width, bf16 and
# int8 units), printed with the report.
DECIDING_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
                  "amx_tile", "amx_bf16", "amx_int8")


def machine_info(kernels="auto", threads=None):
    from fcn_graph.host import choice, cpuinfo
    text = cpuinfo.read_cpuinfo()
    features = cpuinfo.cpu_features(text)
    choices = {task: choice.choose(task, threads=threads, kernels=kernels, text=text)
               for task in choice.TASKS}
    return {"cpu": cpuinfo.cpu_model_name(text), "kind": cpuinfo.cpu_kind(text),
            "cores": os.cpu_count(),
            "tensorflow": choice.tensorflow_version(),
            "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "features": [flag for flag in DECIDING_FLAGS if flag in features],
            "bfloat16": "native" if cpuinfo.has_bf16_units(features) else "refused",
            "int8": "native" if cpuinfo.has_int8_units(features) else "7-bit weights, slow",
            "choices": {task: [{"choice": name, "value": value, "source": source}
                               for name, value, source in c.describe()]
                        for task, c in choices.items()}}


def onednn_in_workers(results):
    """{"inference": ..., "training": ...}: whether oneDNN ran in the plain tf
    variant's workers of each kind (None where none ran)."""
    seen = {}
    for record in results:
        if record.get("variant") == "tf" and "onednn" in record:
            seen.setdefault("training" if record["training"] else "inference", record["onednn"])
    return {task: seen.get(task) for task in ("inference", "training")}


# ---------------------------------------------------------------- CLI

def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases (default all: {','.join(CASES)})")
    parser.add_argument("--variants", default="tf,onnxruntime",
                        help="comma-separated variants (default tf,onnxruntime): onnxruntime, "
                             "onnxruntime-int8, or tf plus any of "
                             + ", ".join("-" + m for m in MODIFIERS)
                             + " (e.g. tf-onednn-reference); other runtimes on the exported "
                             "files: openvino (the ONNX model, f32), openvino-bf16, litert "
                             "(the .tflite); training cases run tf* only")
    parser.add_argument("--kernels", choices=KERNELS, default="auto",
                        help="kernel set of every variant (and of the ONNX model): reference, "
                             "cpu, or auto (default: reference when a GPU is seen, else cpu); "
                             "-reference/-cpu in a variant override it")
    parser.add_argument("--repeats", type=REPEATS_RANGE, default=5,
                        help="timed calls per case, at least (default 5)")
    parser.add_argument("--warmup", type=Range(0, 1000, integer=True), default=2,
                        help="untimed calls first, the first includes graph optimisation "
                             "(default 2)")
    parser.add_argument("--min-seconds", type=Range(0, 86400, unit="seconds"), default=0.0,
                        help="keep timing until this many seconds have passed (default 0)")
    parser.add_argument("--threads", type=threads_range(), default=None,
                        help="threads per op, and for the sgemm probe (default: every core)")
    parser.add_argument("--profile-case", default="224_b1",
                        help="case to trace per layer with the tf variant, or 'none' "
                             "(default 224_b1)")
    parser.add_argument("--width-multiplier", type=WIDTH_MULTIPLIER_RANGE, default=1.0,
                        help="scale the VGG widths (default 1: real VGG19)")
    parser.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE,
                        help="the VGG body of the weights timed (default vgg19)")
    parser.add_argument("--fc-width", type=FC_WIDTH_RANGE, default=4096,
                        help="conv6/conv7 channels (default 4096)")
    parser.add_argument("--num-classes", type=NUM_CLASSES_RANGE, default=NUM_CLASSES,
                        help=f"classes (default {NUM_CLASSES})")
    parser.add_argument("--sgemm-size", type=Range(1, 65536, integer=True), default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--sgemm-repeats", type=REPEATS_RANGE, default=5,
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


def report_path(out, name):
    """--out, else bench/results/<name>-<UTC time>.json; checked before the
    (long) run: its folder made and writable, and an existing file replaced
    only when fcn_graph wrote it there and nobody changed it since
    (`fileio.claim_output`)."""
    out = out or os.path.join(RESULTS_DIR, time.strftime(f"{name}-%Y%m%dT%H%M%SZ.json",
                                                         time.gmtime()))
    claim_output(out, "--out")  # replaced only when fcn_graph wrote it and it is unchanged
    return out


def write_report(out, report):
    """`report` as JSON to `out`, atomically; a one-line error where it cannot be written."""
    try:
        write_json_atomic(out, report)
        record_output(out)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write ({err.strerror})") from None
    print(f"wrote {out}", file=sys.stderr)


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
    out = report_path(args.out, "bench")
    report = run_benchmark(args)
    print(format_report(report))
    write_report(out, report)
    return 0
