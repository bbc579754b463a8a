"""Every figure of the performance goals in one run, and one report.

    python bench/suite.py                      # the full run ({full})
    python bench/suite.py --quick              # the plumbing at a reduced width ({quick})
    python bench/suite.py --skip peers,tiles --rounds 3

Parts, in this order (any but the header can be left out with --skip):
  header     UTC time, lscpu's model name, the CPU flags that decide the engines'
             choices and what bfloat16 and int8 do here (bench.harness), threads, load
             average at the start and the end, TensorFlow / ONNX Runtime / torch versions
  sgemm      the 4096^3 FP32 sgemm probe of bench.harness: the yardstick of "% sgemm"
  inference  cases 224_b1, 512_b1, 224_b8, voc_b1 (500x375): our engines (tf as infer
             runs it, onnxruntime, tf-bf16 where the CPU has bf16 units,
             onnxruntime-int8) and the peers of --peers-dir (torch eager, torch.compile
             with freezing, their ONNX Runtime model, Keras tf.function, tf XLA); each
             (contender, case) in its own process, contender after contender within a
             case, the whole repeated --rounds times, each contender's best median kept
  runtimes   in the inference cases, beside ours and the peers: the runtimes users would
             pick instead, each on the file fcn_graph exports, each in its own process
             as ours are: OpenVINO's CPU plugin on our ONNX model (the onnxruntime
             engine's; performance hint LATENCY, the threads ours use) at precision
             hint f32 and, where the CPU has bf16 units, bf16; the LiteRT interpreter
             on our .tflite (float32); shown as peers, where installed
  training   train_b2 (224x224 batch 2, an Adam step as train.py runs it), in float32
             and, where the CPU has bf16 units, in bfloat16 (tf-bf16: train.precision),
             against the peers' tf XLA train_on_batch and torch eager
  cold       bench/cold_start.py: one 500x375 JPEG through `infer` (tf; onnxruntime with
             an empty cache, then a cache hit): wall s and peak GB (/usr/bin/time)
  folder     the same script's folder rate: images/s of `infer FOLDER` on the fastest
             engine against the network alone: the 100 images in 10 folders, each run
             followed by the network alone, the medians (one folder of 5 with --quick)
  tiles      bench/tiled_memory.py: a 6000x4000 image tiled (peak MiB over its first
             tiles, where the peak is reached), and 1024x768 tiled against whole
  goals      each goal as one line: the figure measured, the target, met or NOT met

Weights are random (bench.worker.make_weights), full VGG19 size, 21 classes,
written once to the work folder and used by every part of ours; the peers
build theirs (the same network, seeded). The peers' scripts run as they are,
in their own venvs (--peer-python for torch and their ONNX Runtime,
--peer-tf-python for Keras); their ONNX model is exported once per run into
the work folder. A peer that cannot run is one line saying why. "x best peer"
is a contender's median ms per call over the best peer's of the case (below
1: faster; the best peer is the fastest float32 one). "labels=ort" is the
share of pixels whose label equals the onnxruntime engine's on the same
input, so that a fast but wrong runtime shows. Peers' GFLOP/s use their own
count (conv5_4 included, which the legacy graph of ours does not run). The report goes to stdout and, with
every figure, to bench/results/suite-<UTC time>.json (or --out), written
atomically; progress goes to stderr.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, CHECKOUT)  # bench and fcn_graph without installing them

from bench import cases as bench_cases  # noqa: E402
from bench import report as bench_report  # noqa: E402
from fcn_graph.core.errors import UserError, run_cli  # noqa: E402
from fcn_graph.core.ranges import REPEATS_RANGE  # noqa: E402
from fcn_graph.host import cpuinfo  # noqa: E402
from fcn_graph.host.choice import choose_engine  # noqa: E402

PEERS_DIR = os.path.normpath(os.path.join(CHECKOUT, "..", "shared", "bench-peers"))
PEER_PYTHON = "/tmp/peerenv/bin/python"
REPORT_KEYS = ("suite_started_utc", "goals")  # held by every report the suite writes
DOC_PATH = os.path.join(CHECKOUT, "docs", "performance.md")  # --write-doc's default
WORK_MARK = ".fcn_suite_work"  # marks a --work folder as the suite's own
PARTS = ("sgemm", "inference", "peers", "runtimes", "training", "cold", "folder", "tiles")
INFERENCE_CASES = ("224_b1", "512_b1", "224_b8", "voc_b1")
TRAINING_CASE = "train_b2"
TRAINING_VARIANTS = ("tf", "tf-bf16")  # train.precision float32 and bfloat16
QUICK_CASES = ("224_b1", "voc_b1")  # one case with peers, one without
# --quick: VGG widths x QUICK_WIDTH, conv6/conv7 QUICK_FC_WIDTH channels
QUICK_WIDTH, QUICK_FC_WIDTH = 0.125, 256
QUICK_FOLDER_IMAGES = 5  # the folder rate needs at least 3 (the first is left out)
FOLDER_IMAGES = 100
FOLDER_ROUNDS = 10  # the folder in 10 runs, each followed by the network alone: medians
LARGE_MAX_TILES = 4  # 6000x4000: tiles run; every tile has the same size
AGREEMENT_TILE = "864"  # bench/tiled_memory.py's 1024x768 agreement tile

# our case -> the peers' case name (None: the peers have no such case)
PEER_CASES = {"224_b1": "224x224_b1", "512_b1": "512x512_b1", "224_b8": "224x224_b8",
              "voc_b1": None, "train_b2": "train_224x224_b2"}
# peer -> (venv: "torch" or "tf", script, arguments, cases it runs: "inference"/"training")
PEERS = {
    "torch-eager": ("torch", "peer_torch.py", ["--variant", "eager"], ("inference", "training")),
    "torch-compile-freeze": ("torch", "peer_torch.py", ["--variant", "compile_freeze"],
                             ("inference",)),
    "onnxruntime": ("torch", "peer_onnxrt.py", [], ("inference",)),
    "tf-function": ("tf", "peer_tf.py", ["--variant", "tffunc"], ("inference",)),
    "tf-xla": ("tf", "peer_tf.py", ["--variant", "xla"], ("inference", "training")),
}
# the other runtimes: contender -> (its Python package, the module it imports)
RUNTIME_PACKAGES = {"openvino": ("openvino", "openvino"),
                    "openvino-bf16": ("openvino", "openvino"),
                    "litert": ("ai-edge-litert", "ai_edge_litert")}
PEER_TIMEOUT = 900  # seconds for one peer process (torch.compile included)

# The goals' targets.
WITHIN_FASTEST = 1.10      # the default engine's ms over the fastest FP32 engine's, at most
LOW_PRECISION_SPEEDUP = 1.7  # bf16 / int8 at 512x512 against the best FP32 peer, at least
AGREEMENT = 0.995          # share of labels equal to the reference's, at least
TILE_PEAK_GB = 3.0         # 6000x4000, full VGG19, peak RSS under
TRAIN_SGEMM = 0.85         # training GFLOP/s over sgemm, at least
GOAL_CASE = "512_b1"       # the case of the bf16 / int8 speed goals

# Estimated seconds of the parts on a 2-core machine (AVX-512), for --help:
# a process's start, load and first call; the FP32 seconds per call of each case.
PROCESS_S, COMPILE_S = 10, 60
CALL_S = {"224_b1": 0.3, "512_b1": 1.4, "224_b8": 2.1, "voc_b1": 1.0, "train_b2": 2.1}
PEER_SLOWER = 1.3  # the peers' calls against ours
SGEMM_S, EXPORT_S, COLD_S, TILES_S = 20, 90, 40, 200


def estimate_seconds(rounds=2, *, repeats=5, warmup=2, ours=4, images=FOLDER_IMAGES,
                     cases=INFERENCE_CASES, parts=PARTS):
    """The expected duration of a run, from the parts' process counts and calls."""
    calls = warmup + repeats
    total = SGEMM_S if "sgemm" in parts else 0
    peers = "peers" in parts
    if "inference" in parts and "runtimes" in parts:
        ours += len(RUNTIME_PACKAGES)
        total += EXPORT_S  # the .tflite
    if "inference" in parts:
        for case in cases:
            n_peers = sum("inference" in p[3] for p in PEERS.values()) \
                if peers and PEER_CASES[case] else 0
            total += rounds * (ours * (PROCESS_S + calls * CALL_S[case])
                               + n_peers * (PROCESS_S + calls * CALL_S[case] * PEER_SLOWER))
            total += 2 * COMPILE_S if n_peers else 0  # torch.compile and XLA, once per case
        total += EXPORT_S if peers else 0
    if "training" in parts:
        n_peers = 2 if peers else 0
        total += rounds * (1 + n_peers) * (PROCESS_S + calls * CALL_S[TRAINING_CASE])
        total += COMPILE_S if peers else 0
    if "cold" in parts:
        total += COLD_S
    if "folder" in parts:
        total += PROCESS_S * 2 + (images + 10) * CALL_S["voc_b1"]
    if "tiles" in parts:
        total += TILES_S
    return total


# ---------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as a UserError: one line, exit status 2."""

    def error(self, message):
        raise UserError(message)


def build_parser():
    full = estimate_seconds()
    description = __doc__.format(
        full=f"about {full / 60:.0f} min on 2 cores, {estimate_seconds(3) / 60:.0f} with "
             "--rounds 3",
        quick="about 10 min with the peers, which stay full size; 2 to 3 with --skip peers")
    parser = _Parser(prog="python bench/suite.py", description=description,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"check the plumbing: VGG widths x{QUICK_WIDTH:g}, conv6/conv7 "
                             f"{QUICK_FC_WIDTH} channels, cases {','.join(QUICK_CASES)}, 1 "
                             f"round of 2 calls, {QUICK_FOLDER_IMAGES} folder images, no "
                             "6000x4000 (the peers stay full size: their figures are not "
                             "comparable then, and the goals say so)")
    parser.add_argument("--skip", default="", metavar="PARTS",
                        help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    parser.add_argument("--cases", default=None,
                        help=f"inference cases (default {','.join(INFERENCE_CASES)})")
    parser.add_argument("--rounds", type=REPEATS_RANGE, default=None, metavar="N",
                        help="rounds over the contenders, each keeping its best median "
                             "(default 2; 1 with --quick)")
    parser.add_argument("--peer-python", default=PEER_PYTHON, metavar="PATH",
                        help=f"python of the peers' torch + onnxruntime venv (default "
                             f"{PEER_PYTHON})")
    parser.add_argument("--peer-tf-python", default=sys.executable, metavar="PATH",
                        help="python with TensorFlow and Keras 3 for the peers' Keras model "
                             "(default: this python)")
    parser.add_argument("--peers-dir", default=PEERS_DIR, metavar="DIR",
                        help=f"the peers' scripts (default {PEERS_DIR})")
    parser.add_argument("--work", default=None, metavar="DIR",
                        help="folder for the weights, models, images and the peers' ONNX file, "
                             "kept afterwards (an empty or new folder, or one of an earlier "
                             "suite run; default a temporary folder, removed at the end)")
    parser.add_argument("--out", default=None,
                        help="JSON file to write (default bench/results/suite-<UTC time>.json)")
    parser.add_argument("--write-doc", nargs="?", const=DOC_PATH, default=None, metavar="MD",
                        help="also put the report into the markdown file's section for this CPU "
                             f"kind (default {DOC_PATH})")
    parser.add_argument("--from-report", default=None, metavar="JSON",
                        help="measure nothing: print the report of an earlier run's JSON (and "
                             "write it with --write-doc)")
    return parser


def parse_args(argv=None):
    """The checked arguments, with the run's settings filled in; UserError."""
    args = build_parser().parse_args(argv)
    args.skip = set(bench_cases.parse_list(args.skip, PARTS, "--skip")) if args.skip else set()
    default_cases = QUICK_CASES if args.quick else INFERENCE_CASES
    args.cases = (bench_cases.parse_list(args.cases, INFERENCE_CASES, "--cases")
                  if args.cases is not None else list(default_cases))
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.quick:
        args.width_multiplier, args.fc_width = QUICK_WIDTH, QUICK_FC_WIDTH
        args.warmup, args.repeats, args.images, args.network_calls = 1, 2, QUICK_FOLDER_IMAGES, 2
        args.folder_rounds = 1
    else:
        args.width_multiplier, args.fc_width = 1.0, 4096
        args.warmup, args.repeats, args.images, args.network_calls = 2, 5, FOLDER_IMAGES, 10
        args.folder_rounds = FOLDER_ROUNDS
    if args.work is not None:
        check_work_folder(args.work)
    return args


def check_work_folder(path):
    """--work must be a new folder, an empty one, or one of an earlier suite run."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"--work {path}: exists and is not a folder; expected a folder for the "
                        "suite's files")
    if os.path.isdir(path) and os.listdir(path) and \
            not os.path.isfile(os.path.join(path, WORK_MARK)):
        raise UserError(f"--work {path}: a folder of other files (no {WORK_MARK}); expected an "
                        "empty folder or one of an earlier suite run")


# ---------------------------------------------------------------- the header

def versions(peer_python):
    """Versions of TensorFlow and ONNX Runtime here, and of torch in the peers'
    venv; and why that venv cannot run the torch peers (None when it can)."""
    found = {}
    for name in ("tensorflow", "onnxruntime", "openvino", "ai-edge-litert"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["torch"], problem = None, None
    if not os.access(peer_python, os.X_OK):
        problem = f"--peer-python {peer_python}: not found or not executable"
    else:
        code = "import torch, onnxruntime; print(torch.__version__)"
        try:
            proc = subprocess.run([peer_python, "-c", code], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode == 0:
                found["torch"] = proc.stdout.strip().splitlines()[-1]
            else:
                tail = (proc.stderr.strip().splitlines() or ["exit status"])[-1]
                problem = f"--peer-python {peer_python}: cannot import torch and onnxruntime ({tail})"
        except (OSError, subprocess.SubprocessError) as err:
            problem = f"--peer-python {peer_python}: {err}"
    return found, problem


def tf_peer_problem(python):
    """Why `python` cannot run the Keras peers, or None."""
    if not os.access(python, os.X_OK):
        return f"--peer-tf-python {python}: not found or not executable"
    try:
        proc = subprocess.run([python, "-c", "import keras, tensorflow"], capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    except (OSError, subprocess.SubprocessError) as err:
        return f"--peer-tf-python {python}: {err}"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["exit status"])[-1]
        return f"--peer-tf-python {python}: cannot import keras and tensorflow ({tail})"
    return None


def machine_line(machine):
    """bench.report's line of the CPU's flags, oneDNN, bfloat16 and int8."""
    return bench_report.format_report({"machine": machine, "results": []}).splitlines()[0]


# ---------------------------------------------------------------- contenders

def our_variants(machine):
    """Our variants here, and {variant: why it does not run}."""
    variants, not_run = ["tf", "onnxruntime"], {}
    if machine.get("bfloat16") == "native":
        variants.append("tf-bf16")
    else:
        not_run["tf-bf16"] = ("the CPU has no bf16 units (avx512_bf16, amx_bf16): "
                              "--precision bfloat16 is refused here")
    variants.append("onnxruntime-int8")
    return variants, not_run


def runtime_variants(machine):
    """The other runtimes that run here, and {runtime: why it does not run}."""
    import importlib.util
    variants, not_run = [], {}
    for name, (package, module) in RUNTIME_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            not_run[name] = f"{package} is not installed (pip install {package})"
        elif is_low_precision(name) and machine.get("bfloat16") != "native":
            not_run[name] = "the CPU has no bf16 units (avx512_bf16, amx_bf16)"
        else:
            variants.append(name)
    return variants, not_run


def is_low_precision(variant):
    return bench_cases.variant_settings(variant)[1].get("precision", "float32") != "float32"


def our_row(record):
    """A bench.harness record -> the suite's row."""
    if "error" in record:
        return {"error": record["error"]}
    row = {"median_ms": record["median_ms_per_call"], "min_ms": record["min_ms_per_call"],
           "gflop": record["gflop"], "gflops": record["gflops"],
           "peak_mib": record["run_peak_mib"], "first_call_s": record["first_call_s"],
           "low_precision": is_low_precision(record["variant"])}
    fraction = record.get("fraction_of_sgemm", record.get("fraction_of_fp32_sgemm"))
    if fraction is not None:
        row["sgemm_fraction"] = fraction
    return row


def peer_row(record, sgemm_gflops):
    """A peer's JSON line -> the suite's row."""
    if "error" in record:
        return {"error": record["error"]}
    row = {"median_ms": record["median_ms"], "min_ms": record["min_ms"],
           "gflop": record["gflop"], "gflops": record["gflops_per_s_median"],
           "peak_mib": record.get("peak_rss_run_mib"),
           "first_call_s": record.get("first_call_s"), "low_precision": False}
    if sgemm_gflops:
        row["sgemm_fraction"] = row["gflops"] / sgemm_gflops
    return row


def last_json_line(text):
    """The last line of `text` that is a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                return record
    return None


class Peers:
    """The peers' scripts as subprocesses: which can run, and one (peer, case) run."""

    def __init__(self, args, work, torch_problem, threads):
        self.args, self.work = args, work
        self.unavailable = {}  # peer -> why it does not run
        if not os.path.isfile(os.path.join(args.peers_dir, "fcn_spec.py")):
            reason = f"--peers-dir {args.peers_dir}: the peers' scripts (fcn_spec.py) are not there"
            self.unavailable = dict.fromkeys(PEERS, reason)
            return
        needs = {venv for venv, _, _, _ in PEERS.values()}
        tf_problem = tf_peer_problem(args.peer_tf_python) if "tf" in needs else None
        for name, (venv, _, _, _) in PEERS.items():
            problem = torch_problem if venv == "torch" else tf_problem
            if problem:
                self.unavailable[name] = problem
        self.env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                        MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                        TF_CPP_MIN_LOG_LEVEL="2", BENCH_WARMUP=str(args.warmup),
                        BENCH_MIN_RUNS=str(args.repeats), BENCH_MAX_RUNS=str(args.repeats),
                        BENCH_MIN_SECONDS="0",
                        FCN_WEIGHT_CACHE=os.path.join(work, "peer_weights"),
                        TORCHINDUCTOR_CACHE_DIR=os.path.join(work, "peer_inductor"))
        self.env.pop("BENCH_OUT", None)
        self.onnx = None

    def export_onnx(self):
        """The peers' ONNX model, exported once into the work folder (their README)."""
        if "onnxruntime" in self.unavailable or self.onnx:
            return
        folder = os.path.join(self.work, "peer_onnx")
        print("exporting the peers' ONNX model ...", file=sys.stderr, flush=True)
        error = self._run([self.args.peer_python, "peer_onnxrt.py", "--export", folder])[1]
        path = os.path.join(folder, "fcn8s_vgg19.onnx")
        if error or not os.path.isfile(path):
            self.unavailable["onnxruntime"] = f"the peers' ONNX export failed: {error or 'no file'}"
        else:
            self.onnx = path

    def wanted(self, kind):
        return [name for name, spec in PEERS.items() if kind in spec[3]]

    def _run(self, command):
        """(last JSON line, error text or None) of one peer process."""
        try:
            proc = subprocess.run(command, env=self.env, cwd=self.args.peers_dir,
                                  capture_output=True, text=True, timeout=PEER_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, f"timeout after {PEER_TIMEOUT} s"
        except OSError as err:
            return None, f"{command[0]}: {err.strerror or err}"
        record = last_json_line(proc.stdout)
        if record and "error" in record:
            return record, record["error"]
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            return record, f"exit status {proc.returncode}: {tail}".rstrip(": ")
        return record, None

    def run(self, name, case):
        """The peer's JSON record of our `case`, or {"error": ...}."""
        venv, script, extra, _ = PEERS[name]
        python = self.args.peer_python if venv == "torch" else self.args.peer_tf_python
        if name == "onnxruntime":
            extra = ["--model", self.onnx]
        record, error = self._run([python, script, *extra, "--case", PEER_CASES[case]])
        if error or record is None:
            return {"error": error or "no JSON line in its output"}
        return record


def interleave(ours, peers):
    """Ours and the peers alternately: [(kind, name), ...]."""
    order = []
    for index in range(max(len(ours), len(peers))):
        order += [("ours", n) for n in ours[index:index + 1]]
        order += [("peer", n) for n in peers[index:index + 1]]
    return order


def best_round(rows):
    """The row of the best median among a contender's rounds (the last error
    when every round failed)."""
    good = [row for row in rows if "error" not in row]
    if not good:
        return rows[-1]
    best = dict(min(good, key=lambda row: row["median_ms"]))
    best["min_ms"] = min(row["min_ms"] for row in good)
    best["rounds"] = [round(row["median_ms"], 1) for row in good]
    return best


def run_contenders(args, hargs, work, prefix, peers, cases, variants, sgemm, kind,
                   runtimes=()):
    """Every round over `cases`, contender after contender: {case: {"ours":
    {variant: row}, "peers": {peer: row}}}. The other `runtimes` run as our
    variants do (bench.harness) and count as peers."""
    from bench import harness
    peak = sgemm["median_gflops"] if sgemm else None
    rows = {case: {"ours": {}, "peers": {}} for case in cases}
    for number in range(1, args.rounds + 1):
        for case in cases:
            peer_names = [] if peers is None or not PEER_CASES[case] else \
                [n for n in peers.wanted(kind) if n not in peers.unavailable]
            for who, name in interleave(variants, list(runtimes) + peer_names):
                done = rows[case]["ours" if who == "ours" else "peers"].setdefault(name, [])
                if done and "error" in done[-1]:
                    continue  # failed in an earlier round: not tried again
                print(f"round {number}/{args.rounds} {case} {'peer ' if who == 'peer' else ''}"
                      f"{name} ...", file=sys.stderr, flush=True)
                if who == "ours" or name in runtimes:
                    try:
                        record = harness._run_one(hargs, work, prefix, name, case, peak)
                    except subprocess.TimeoutExpired as err:
                        record = {"variant": name, "error": f"timeout after {err.timeout:g} s"}
                    row = our_row(record)
                    if record.get("logits_file"):
                        row["logits_file"] = record["logits_file"]
                else:
                    row = peer_row(peers.run(name, case), peak)
                done.append(row)
    result = {}
    for case in cases:
        result[case] = {side: {name: best_round(found) for name, found in rows[case][side].items()}
                        for side in ("ours", "peers")}
    return result


def add_agreement(case_rows):
    """Each of our rows gets its labels' agreement with tf's and the logits'
    max relative error (bench.harness.max_relative_error); every row, ours
    and the other runtimes', its labels' agreement with the onnxruntime
    engine's; where both logits were saved."""
    import numpy as np

    from bench.harness import max_relative_error

    def load(path):
        return np.load(path) if path and os.path.exists(path) else None

    files = {side: {name: row.pop("logits_file", None) for name, row in case_rows[side].items()}
             for side in ("ours", "peers")}
    tf_logits, ort_logits = load(files["ours"].get("tf")), load(files["ours"].get("onnxruntime"))
    for side in ("ours", "peers"):
        for name, row in case_rows[side].items():
            got = load(files[side][name])
            if got is None:
                continue
            if side == "ours" and name != "tf" and tf_logits is not None:
                row["label_agreement_vs_tf"] = labels_agree(tf_logits, got)
                row["max_rel_error_vs_tf"] = max_relative_error(got, tf_logits)
            if (side, name) != ("ours", "onnxruntime") and ort_logits is not None:
                row["label_agreement_vs_onnxruntime"] = labels_agree(ort_logits, got)


def labels_agree(want, got):
    """The share of pixels whose argmax over the last axis is the same in both logits."""
    return float((want.argmax(-1) == got.argmax(-1)).mean())


def add_ratios(case_rows):
    """Each row gets x_best_peer: its median over the best peer's (where one ran)."""
    best = best_peer(case_rows)
    if best is None:
        return
    for side in ("ours", "peers"):
        for row in case_rows[side].values():
            if "error" not in row:
                row["x_best_peer"] = row["median_ms"] / best[1]["median_ms"]


def best_peer(case_rows):
    """(name, row) of the fastest float32 peer of a case, or None."""
    found = [(name, row) for name, row in case_rows.get("peers", {}).items()
             if "error" not in row and not row.get("low_precision")]
    return min(found, key=lambda item: item[1]["median_ms"]) if found else None


# ---------------------------------------------------------------- the parts

def run_cold(args, prefix, work, fastest):
    """Cold start of every engine, and the folder rate of `fastest` (the
    fastest network of the run, else the default engine; None: tf)."""
    from bench import cold_start
    folder_work = os.path.join(work, "cold")
    shutil.rmtree(folder_work, ignore_errors=True)
    os.makedirs(folder_work)
    env = cold_start.environment(folder_work)
    images = args.images if "folder" not in args.skip else 0
    photo, folder = cold_start.make_inputs(folder_work, images)
    found = {}
    if "cold" not in args.skip:
        print("cold start ...", file=sys.stderr, flush=True)
        try:
            runs = cold_start.cold_starts(folder_work, env, prefix, photo, ["tf", "onnxruntime"])
            found["cold_start"] = {"runs": runs, "peak_from": "/usr/bin/time -v" if os.access(
                cold_start.TIME, os.X_OK) else "rusage"}
        except (RuntimeError, OSError) as err:
            found["cold_start"] = {"error": one_line(err)}
    if found.get("cold_start", {}).get("runs"):
        # the engine that starts fastest: tf, or onnxruntime with its cached model
        found["cold_start"]["fastest_engine"] = min(
            cold_candidates(found["cold_start"]["runs"]), key=lambda run: run["wall_s"])["engine"]
    if "folder" not in args.skip:
        engine = fastest or "tf"
        print(f"folder rate ({engine}, {images} images) ...", file=sys.stderr, flush=True)
        try:
            found["folder"] = cold_start.folder_rate(folder_work, env, prefix, photo, folder,
                                                     engine, args.network_calls,
                                                     args.folder_rounds)
        except (RuntimeError, OSError, ValueError, IndexError) as err:
            found["folder"] = {"engine": engine, "error": one_line(err)}
    return found


def cold_candidates(runs):
    """The cold runs that count for an engine: tf, and onnxruntime's cache hit."""
    return [run for run in runs if run["name"] in ("tf", "onnxruntime cache hit")]


def run_tiles(args, prefix, work):
    from bench import tiled_memory
    folder = os.path.join(work, "tiles")
    os.makedirs(folder, exist_ok=True)
    found = {}
    if not args.quick:
        print("6000x4000 tiled ...", file=sys.stderr, flush=True)
        try:
            found["large"] = tiled_memory._spawn(prefix, 4000, 6000, "auto",
                                                 max_tiles=LARGE_MAX_TILES)
        except SystemExit as err:
            found["large"] = {"error": one_line(err)}
    print("1024x768 tiled against whole ...", file=sys.stderr, flush=True)
    try:
        found["agreement"] = tiled_memory.measure_agreement(folder, prefix, AGREEMENT_TILE)
    except SystemExit as err:
        found["agreement"] = {"error": one_line(err)}
    return found


def one_line(err):
    text = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def fastest_engine(inference):
    """tf or onnxruntime, whichever ran voc_b1 (else the last case) faster."""
    for case in ("voc_b1", *reversed(list(inference))):
        ours = inference.get(case, {}).get("ours", {})
        times = {name: ours[name]["median_ms"] for name in ("tf", "onnxruntime")
                 if name in ours and "error" not in ours[name]}
        if times:
            return min(times, key=times.get)
    return None


def run_suite(args):
    """Every part not skipped; the results dict (goals included)."""
    from bench import harness
    from fcn_graph.host.session import cpu_count
    started = time.time()
    results = {"suite_started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
               "load_start": list(os.getloadavg())}
    threads = cpu_count()
    machine = harness.machine_info()
    found_versions, torch_problem = versions(args.peer_python)
    results["header"] = {"cpu_model": cpuinfo.cpu_model_name(), "machine": machine,
                         "threads": threads, "versions": found_versions}
    results["settings"] = {
        "quick": args.quick, "rounds": args.rounds, "warmup": args.warmup,
        "repeats": args.repeats, "folder_rounds": args.folder_rounds,
        "width_multiplier": args.width_multiplier,
        "fc_width": args.fc_width, "cases": args.cases, "skip": sorted(args.skip),
        "peer_python": args.peer_python, "peer_tf_python": args.peer_tf_python,
        "full_width": args.width_multiplier == 1.0 and args.fc_width == 4096,
        # what `infer` and `evaluate` run at float32 unless told (--engine auto)
        "default_engine": choose_engine("auto")[0],
    }
    variants, not_run = our_variants(machine)
    runtimes = []
    if not args.skip & {"runtimes", "inference"}:
        runtimes, runtimes_not_run = runtime_variants(machine)
        not_run.update(runtimes_not_run)
    results["not_run"] = not_run
    hargs = harness.build_parser().parse_args([
        "--width-multiplier", str(args.width_multiplier), "--fc-width", str(args.fc_width),
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--variants", ",".join(variants + runtimes)])
    hargs.threads = threads
    keep = args.work is not None
    work = os.path.abspath(args.work) if keep else tempfile.mkdtemp(prefix="fcn_suite_")
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, WORK_MARK), "w", encoding="utf-8") as handle:
        handle.write("bench/suite.py work folder\n")
    prefix = os.path.join(work, "weights")
    try:
        harness.write_models(hargs, work, prefix, variants + runtimes
                             if "inference" not in args.skip else ["tf"])
        sgemm = None
        if "sgemm" not in args.skip:
            print("sgemm probe ...", file=sys.stderr, flush=True)
            sgemm = harness.run_sgemm(hargs, work, prefix) or {"error": "the probe failed"}
        results["sgemm"] = sgemm
        sgemm_ok = sgemm if sgemm and "error" not in sgemm else None
        peers = None
        if "peers" not in args.skip and not args.skip >= {"inference", "training"}:
            peers = Peers(args, work, torch_problem, threads)
            if "inference" not in args.skip:
                peers.export_onnx()
            results["peers_unavailable"] = dict(peers.unavailable)
        if "inference" not in args.skip:
            inference = run_contenders(args, hargs, work, prefix, peers, args.cases, variants,
                                       sgemm_ok, "inference", runtimes)
            for case_rows in inference.values():
                add_agreement(case_rows)
                add_ratios(case_rows)
            results["inference"] = inference
        if "training" not in args.skip:
            # float32, and bfloat16 (train.precision) where the CPU has the units
            training = run_contenders(args, hargs, work, prefix, peers, [TRAINING_CASE],
                                      [v for v in variants if v in TRAINING_VARIANTS],
                                      sgemm_ok, "training")[TRAINING_CASE]
            add_ratios(training)
            results["training"] = training
        if not args.skip >= {"cold", "folder"}:
            # the fastest network of the run, else what `infer` runs by default
            results.update(run_cold(args, prefix, work, fastest_engine(
                results.get("inference", {})) or results["settings"]["default_engine"]))
        if "tiles" not in args.skip:
            results["tiles"] = run_tiles(args, prefix, work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = list(os.getloadavg())
    results["seconds"] = round(time.time() - started, 1)
    results["goals"] = goals(results)
    return results


# ---------------------------------------------------------------- the goals

def _goal(goal, figure, target, status):
    return {"goal": goal, "figure": figure, "target": target, "status": status}


def _met(ok):
    return "met" if ok else "NOT met"


def _case_name(case):
    batch, height, width, _ = bench_cases.CASES[case]
    return f"{width}x{height} b{batch}"


def _peer_absence(results):
    """Why no peer figure exists: the part skipped, or the peers' lines."""
    if "peers" in results.get("settings", {}).get("skip", []):
        return "peers skipped"
    unavailable = results.get("peers_unavailable") or {}
    if unavailable:
        return "; ".join(f"peer {name}: {why}" for name, why in unavailable.items())
    return "no peer ran"


def _not_measured(goal, why, target):
    return _goal(goal, f"not measured ({why})", target, "not measured")


class _Run:
    """What the goal checks read of a results dict."""

    def __init__(self, results):
        self.results = results
        settings = results.get("settings", {})
        self.full = settings.get("full_width", True)
        self.default_engine = settings.get("default_engine", "tf")
        self.inference = results.get("inference")
        self.not_run = results.get("not_run", {})
        self.training = results.get("training")

    def comparable(self, status):
        return status if self.full else "not comparable (reduced width)"

    def fp32_rows(self, rows):
        return {n: r for n, r in rows["ours"].items()
                if "error" not in r and not r.get("low_precision")}


def _default_engine_near_fastest(run):
    """The default engine within 10 % of the fastest FP32 engine, in every case."""
    default = run.default_engine
    goal = (f"default engine within {100 * (WITHIN_FASTEST - 1):.0f} % of the fastest FP32 "
            f"engine ({default}, what --engine auto runs here)")
    target = f"<= {WITHIN_FASTEST:.2f}x in every case"
    worst, missing = None, []
    for case, rows in (run.inference or {}).items():
        ours = run.fp32_rows(rows)
        if default not in ours:
            missing.append(case)
            continue
        fastest = min(ours, key=lambda n: ours[n]["median_ms"])
        ratio = ours[default]["median_ms"] / ours[fastest]["median_ms"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, case, fastest)
    if worst is None:
        return [_not_measured(goal, "inference skipped" if run.inference is None
                              else f"{default} did not run", target)]
    ratio, case, fastest = worst
    figure = (f"worst {_case_name(case)}: {default} {ratio:.2f}x of {fastest}"
              if fastest != default else f"{default} the fastest in every case")
    if missing:
        figure += f" ({default} not measured: {', '.join(missing)})"
    return [_goal(goal, figure, target, _met(ratio <= WITHIN_FASTEST and not missing))]


def _fastest_beats_peers(run):
    """The fastest FP32 engine beats the best peer, in every case."""
    goal = "fastest FP32 engine faster than the best peer"
    target = "< 1.00x in every case"
    worst, no_peer = None, []
    for case, rows in (run.inference or {}).items():
        ours, peer = run.fp32_rows(rows), best_peer(rows)
        if peer is None or not ours:
            no_peer.append(case)
            continue
        fastest = min(ours, key=lambda n: ours[n]["median_ms"])
        ratio = ours[fastest]["median_ms"] / peer[1]["median_ms"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, case, fastest, peer[0])
    if worst is None:
        return [_not_measured(goal, "inference skipped" if run.inference is None
                              else _peer_absence(run.results), target)]
    ratio, case, fastest, peer = worst
    figure = f"worst {_case_name(case)}: {fastest} {ratio:.2f}x of peer {peer}"
    if no_peer:
        figure += f" (no peer figure: {', '.join(no_peer)})"
    return [_goal(goal, figure, target, run.comparable(_met(ratio < 1.0)))]


def _against_runtimes(run, goal, low_precision):
    """Our fastest engine of the kind (the default engine at float32, the
    fastest of bf16 / int8 at low precision) against the fastest other runtime
    of that kind (RUNTIME_PACKAGES), in every case: the worst case's ratio."""
    target = f"<= {WITHIN_FASTEST:.2f}x in every case"
    worst = None
    for case, rows in (run.inference or {}).items():
        if low_precision:
            ours = {n: r for n, r in rows["ours"].items()
                    if "error" not in r and r.get("low_precision")}
        else:
            ours = {n: r for n, r in run.fp32_rows(rows).items() if n == run.default_engine}
        others = {n: r for n, r in rows["peers"].items() if n in RUNTIME_PACKAGES
                  and "error" not in r and bool(r.get("low_precision")) == low_precision}
        if not ours or not others:
            continue
        mine = min(ours, key=lambda n: ours[n]["median_ms"])
        other = min(others, key=lambda n: others[n]["median_ms"])
        ratio = ours[mine]["median_ms"] / others[other]["median_ms"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, case, mine, other, ours[mine]["median_ms"],
                     others[other]["median_ms"])
    if worst is None:
        kind = "low-precision" if low_precision else "float32"
        why = [f"peer {n}: {w}" for n, w in run.not_run.items() if n in RUNTIME_PACKAGES]
        return _not_measured(goal, "inference skipped" if run.inference is None else
                             "; ".join(why) or f"no {kind} runtime or engine of ours ran",
                             target)
    ratio, case, mine, other, mine_ms, other_ms = worst
    return _goal(goal, f"worst {_case_name(case)}: {mine} {mine_ms:.1f} ms, {ratio:.2f}x of "
                       f"{other} {other_ms:.1f} ms", target,
                 run.comparable(_met(ratio <= WITHIN_FASTEST)))


def _other_runtimes(run):
    """The runtimes users would pick instead, on our exported files, against ours."""
    return [_against_runtimes(run, "other runtimes on our exported files: the default engine "
                                   f"({run.default_engine}) against OpenVINO f32 and LiteRT",
                              False),
            _against_runtimes(run, "other runtimes on our exported files: our fastest "
                                   "bfloat16 or int8 engine against OpenVINO bf16", True)]


LOW_PRECISION_VARIANTS = (("tf-bf16", "bfloat16"), ("onnxruntime-int8", "int8"))


def _low_precision_speed(run):
    """bf16 and int8 at 512x512 against the best FP32 peer."""
    found = []
    for variant, label in LOW_PRECISION_VARIANTS:
        goal = f"{label} at {_case_name(GOAL_CASE)} faster than the best FP32 peer"
        target = f">= {LOW_PRECISION_SPEEDUP:.1f}x"
        rows = (run.inference or {}).get(GOAL_CASE)
        row = (rows or {}).get("ours", {}).get(variant)
        peer = best_peer(rows) if rows else None
        if variant in run.not_run:
            found.append(_not_measured(goal, run.not_run[variant], target))
        elif rows is None:
            found.append(_not_measured(goal, f"{GOAL_CASE} not run", target))
        elif row is None or "error" in row:
            found.append(_not_measured(goal, (row or {}).get("error", f"{variant} did not run"),
                                       target))
        elif peer is None:
            found.append(_not_measured(goal, _peer_absence(run.results), target))
        else:
            speedup = peer[1]["median_ms"] / row["median_ms"]
            found.append(_goal(goal, f"{variant} {speedup:.2f}x faster than peer {peer[0]}",
                               target, run.comparable(_met(speedup >= LOW_PRECISION_SPEEDUP))))
    return found


def _low_precision_labels(run):
    """bf16 and int8 labels against FP32 (tf) on the run's random weights."""
    found = []
    for variant, label in LOW_PRECISION_VARIANTS:
        goal = (f"{label} labels equal to FP32 (tf) on random weights (the goal is on trained "
                "models: evaluate --precision)")
        target = f">= {100 * AGREEMENT:.1f} % of pixels in every case"
        agreements = {case: rows["ours"][variant]["label_agreement_vs_tf"]
                      for case, rows in (run.inference or {}).items()
                      if "label_agreement_vs_tf" in rows["ours"].get(variant, {})}
        if not agreements:
            found.append(_not_measured(goal, run.not_run.get(variant) or (
                "inference skipped" if run.inference is None
                else f"{variant} or tf did not run"), target))
            continue
        case = min(agreements, key=agreements.get)
        # Near-tied logits of random weights flip labels: informative only.
        found.append(_goal(goal, f"worst {_case_name(case)}: {100 * agreements[case]:.2f} %",
                           target, "informative"))
    return found


def _cold_start(run):
    """Cold start on the engine fastest to start."""
    from bench.cold_start import GOAL_GB, GOAL_SECONDS
    goal = "cold start, one 500x375 JPEG, the engine fastest to start"
    target = f"< {GOAL_SECONDS:g} s and < {GOAL_GB:g} GB"
    cold = run.results.get("cold_start")
    engine = (cold or {}).get("fastest_engine") or "tf"
    found = next((r for r in cold_candidates((cold or {}).get("runs", []))
                  if r["engine"] == engine), None)
    if found is None:
        return [_not_measured(goal, "cold skipped" if cold is None else cold.get("error")
                              or f"no cold run of {engine}", target)]
    ok = found["wall_s"] < GOAL_SECONDS and found["peak_bytes"] < GOAL_GB * 1e9
    return [_goal(goal, f"{found['name']}: {found['wall_s']:.2f} s, "
                        f"{found['peak_bytes'] / 1e9:.2f} GB", target, run.comparable(_met(ok)))]


def _folder_rate(run):
    """A folder at network speed."""
    from bench.cold_start import GOAL_RATIO
    goal = "folder of 500x375 JPEGs at network speed"
    target = f">= {100 * GOAL_RATIO:.0f} % of the network-only rate"
    folder = run.results.get("folder")
    if folder is None or "error" in folder:
        return [_not_measured(goal, "folder skipped" if folder is None else folder["error"],
                              target)]
    return [_goal(goal, f"{folder['engine']} {folder['folder_rate']:.2f} img/s, "
                        f"{100 * folder['ratio']:.1f} % of {folder['network_rate']:.2f}",
                  target, _met(folder["ratio"] >= GOAL_RATIO))]


def _tiles(run):
    """Tiles: bounded memory and the same labels."""
    tiles = run.results.get("tiles")
    goal = "6000x4000 tiled, full VGG19, peak RSS"
    target = f"< {TILE_PEAK_GB:g} GB"
    large = (tiles or {}).get("large")
    if large is None or "error" in large:
        found = [_not_measured(goal, "tiles skipped" if tiles is None else
                               "not run with --quick" if large is None else large["error"],
                               target)]
    else:
        peak_gb = large["peak_mib"] * 2**20 / 1e9
        found = [_goal(goal, f"{peak_gb:.2f} GB ({large['peak_mib']} MiB, "
                             f"{large['tiles_run']} of {large['tiles']} tiles run)",
                       target, run.comparable(_met(peak_gb < TILE_PEAK_GB)))]
    goal = "tiled labels equal to whole-image labels (1024x768)"
    target = f">= {100 * AGREEMENT:.1f} % of pixels"
    agreement = (tiles or {}).get("agreement")
    if agreement is None or "error" in agreement:
        found.append(_not_measured(goal, "tiles skipped" if agreement is None
                                   else agreement["error"], target))
    else:
        found.append(_goal(goal, f"{100 * agreement['agreement']:.2f} %", target,
                           _met(agreement["agreement"] >= AGREEMENT)))
    return found


def _training(run):
    """The training step against the best peer and against sgemm, in float32 and bfloat16."""
    training = run.training
    ours = (training or {}).get("ours", {}).get("tf")
    peer = best_peer(training) if training else None
    goal = "training step (224x224 b2) faster than the best peer's"
    target = "< 1.00x"
    if ours is None or "error" in ours:
        found = [_not_measured(goal, "training skipped" if training is None
                               else (ours or {}).get("error", "no figure"), target)]
    elif peer is None:
        found = [_not_measured(goal, _peer_absence(run.results), target)]
    else:
        ratio = ours["median_ms"] / peer[1]["median_ms"]
        found = [_goal(goal, f"tf {ours['median_ms']:.0f} ms, {ratio:.2f}x of peer "
                             f"{peer[0]} ({peer[1]['median_ms']:.0f} ms)", target,
                       run.comparable(_met(ratio < 1.0)))]
    goal = "training step at least 85 % of sgemm (with oneDNN, as train runs)"
    target = f">= {100 * TRAIN_SGEMM:.0f} %"
    if ours is None or "error" in ours or "sgemm_fraction" not in ours:
        found.append(_not_measured(goal, "training skipped" if training is None
                                   else "no sgemm figure" if ours and "error" not in ours
                                   else (ours or {}).get("error", "no figure"), target))
    else:
        found.append(_goal(goal, f"{100 * ours['sgemm_fraction']:.0f} % "
                                 f"({ours['gflops']:.0f} GFLOP/s)", target,
                           run.comparable(_met(ours["sgemm_fraction"] >= TRAIN_SGEMM))))
    bf16 = (training or {}).get("ours", {}).get("tf-bf16")
    goal = "training step in bfloat16 (train.precision), vs the best peer and FP32 sgemm"
    target = f"< 1.00x and >= {100 * TRAIN_SGEMM:.0f} %{bench_report.FP32_MARK}"
    if bf16 is None or "error" in bf16:
        found.append(_not_measured(goal, "training skipped" if training is None else
                                   (bf16 or {}).get("error", run.not_run.get("tf-bf16",
                                                                             "no figure")),
                                   target))
    elif peer is None or "sgemm_fraction" not in bf16:
        found.append(_not_measured(goal, _peer_absence(run.results) if peer is None
                                   else "no sgemm figure", target))
    else:
        ratio = bf16["median_ms"] / peer[1]["median_ms"]
        found.append(_goal(goal, f"tf-bf16 {bf16['median_ms']:.0f} ms, {ratio:.2f}x of peer "
                                 f"{peer[0]}, {100 * bf16['sgemm_fraction']:.0f} %"
                                 f"{bench_report.FP32_MARK} ({bf16['gflops']:.0f} GFLOP/s)",
                           target, run.comparable(_met(ratio < 1.0 and bf16["sgemm_fraction"]
                                                       >= TRAIN_SGEMM))))
    return found


# The goal checks, in the report's order: each takes a `_Run` and returns its goals.
GOAL_CHECKS = (_default_engine_near_fastest, _other_runtimes, _fastest_beats_peers,
               _low_precision_speed, _low_precision_labels, _cold_start, _folder_rate, _tiles, _training)


def goals(results):
    """Each goal as {"goal", "figure", "target", "status"} from a results dict
    (a pure function of it). status: met, NOT met, not measured (the figure is
    missing, the figure says why) or not comparable (a reduced width, against
    a full-size target or the full-size peers)."""
    run = _Run(results)
    return [goal for check in GOAL_CHECKS for goal in check(run)]


# ---------------------------------------------------------------- the report

ROW_HEADER = (f"  {'contender':<26}{'median ms':>10}{'min ms':>9}{'GFLOP/s':>9}{'% sgemm':>9}"
              f"{'x best peer':>12}{'labels=tf':>11}{'rel err':>9}{'labels=ort':>12}")


def format_row(name, row, best_peer_ms=None):
    """One contender's line; "x best peer" against `best_peer_ms` where given."""
    if "error" in row:
        return f"  {name:<26}failed: {row['error']}"
    fraction = "-"
    if "sgemm_fraction" in row:
        fraction = f"{100 * row['sgemm_fraction']:.0f}%" + \
            (bench_report.FP32_MARK if row.get("low_precision") else "")
    ratio = f"{row['median_ms'] / best_peer_ms:.2f}x" if best_peer_ms else "-"
    agree = f"{100 * row['label_agreement_vs_tf']:.2f}%" if "label_agreement_vs_tf" in row \
        else "-"
    error = f"{row['max_rel_error_vs_tf']:.1e}" if "max_rel_error_vs_tf" in row else "-"
    agree_ort = f"{100 * row['label_agreement_vs_onnxruntime']:.2f}%" \
        if "label_agreement_vs_onnxruntime" in row else "-"
    return (f"  {name:<26}{row['median_ms']:>10.1f}{row['min_ms']:>9.1f}{row['gflops']:>9.1f}"
            f"{fraction:>9}{ratio:>12}{agree:>11}{error:>9}{agree_ort:>12}")


def format_case(title, case_rows, not_run, unavailable, peer_case):
    lines = [title, ROW_HEADER]
    peer = best_peer(case_rows)
    best_ms = peer[1]["median_ms"] if peer else None
    for name, row in case_rows["ours"].items():
        lines.append(format_row(name, row, best_ms))
    for name, why in not_run.items():
        shown = f"peer {name}" if name in RUNTIME_PACKAGES else name
        lines.append(f"  {shown:<26}not run: {why}")
    for name, row in case_rows["peers"].items():
        lines.append(format_row(f"peer {name}", row, best_ms))
    if not peer_case:
        lines.append("  (the peers' scripts have no figure for this case)")
    elif unavailable and not case_rows["peers"]:
        lines.append("  (no peer ran: see above)")
    if peer:
        lines.append(f"  best peer: {peer[0]}, {peer[1]['median_ms']:.1f} ms")
    return lines


def _load(values):
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def _header_lines(results):
    """The run's time, machine, versions, load, network settings, sgemm and absent peers."""
    header, settings = results.get("header", {}), results.get("settings", {})
    lines = [f"fcn_graph benchmark suite, {results.get('suite_started_utc', '?')} UTC, "
             f"{results.get('seconds', '?')} s"]
    if header:
        machine = header.get("machine")
        if machine:
            lines.append(machine_line(machine))
        if not machine or machine.get("cpu") != header.get("cpu_model"):
            lines.append(f"CPU model (lscpu): {header.get('cpu_model')}")
        found = header.get("versions", {})
        lines.append(f"threads {header.get('threads')}; TensorFlow {found.get('tensorflow')}, "
                     f"ONNX Runtime {found.get('onnxruntime')}, OpenVINO "
                     f"{found.get('openvino') or 'not installed'}, LiteRT "
                     f"{found.get('ai-edge-litert') or 'not installed'}, torch "
                     f"{found.get('torch') or 'not available'} (peers' venv)")
    lines.append(f"load average (1/5/15 min): start {_load(results.get('load_start'))}, "
                 f"end {_load(results.get('load_end'))}")
    if settings:
        width = ("full VGG19 (fc 4096)" if settings.get("full_width") else
                 f"VGG widths x{settings.get('width_multiplier'):g}, fc "
                 f"{settings.get('fc_width')} (--quick; the peers stay full size)")
        lines.append(f"network: {width}, 21 classes, random weights; {settings.get('rounds')} "
                     f"round(s) of {settings.get('warmup')} warm-up + {settings.get('repeats')} "
                     f"timed calls; skipped: {', '.join(settings.get('skip') or []) or 'nothing'}")
    sgemm = results.get("sgemm")
    if sgemm and "error" not in sgemm:
        lines.append(f"sgemm 4096^3, NumPy BLAS, {header.get('threads')} threads: "
                     f"{sgemm['median_gflops']:.1f} GFLOP/s median, {sgemm['best_gflops']:.1f} best")
    elif sgemm:
        lines.append(f"sgemm: failed: {sgemm['error']}")
    for name, why in (results.get("peers_unavailable") or {}).items():
        lines.append(f"peer {name}: not run: {why}")
    return lines


def _contender_lines(results):
    """The inference cases and the training step, each beside the peers."""
    unavailable = results.get("peers_unavailable") or {}
    lines, low = [], False
    for case, case_rows in (results.get("inference") or {}).items():
        lines.append("")
        lines += format_case(f"inference {_case_name(case)} (ms per call, best median of the "
                             "rounds)", case_rows, results.get("not_run", {}), unavailable,
                             PEER_CASES[case])
        low = low or any(r.get("low_precision") for r in case_rows["ours"].values())
    training = results.get("training")
    if training:
        lines.append("")
        lines += format_case("training 224x224 b2 (ms per Adam step)", training, {},
                             unavailable, True)
        low = low or any(r.get("low_precision") for r in training["ours"].values())
    if low:
        lines.append(bench_report.FP32_NOTE)
    return lines


def _start_and_folder_lines(results):
    """The cold start and the folder rate."""
    lines = []
    cold = results.get("cold_start")
    if cold:
        lines.append("")
        if "error" in cold:
            lines.append(f"cold start: failed: {cold['error']}")
        else:
            lines.append(f"cold start, one 500x375 JPEG, `infer photo.jpg` (peak: "
                         f"{cold['peak_from']}); the fastest to start: {cold.get('fastest_engine')}")
            for run in cold["runs"]:
                lines.append(f"  {run['name']:<24}{run['wall_s']:6.2f} s {run['peak_bytes'] / 1e9:6.2f} GB")
    folder = results.get("folder")
    if folder:
        if "error" in folder:
            lines.append(f"folder ({folder['engine']}): failed: {folder['error']}")
        else:
            lines.append(f"folder of {folder['images']} 500x375 JPEGs, {folder['engine']}: "
                         f"{folder['folder_rate']:.2f} img/s against {folder['network_rate']:.2f} "
                         f"network alone: {100 * folder['ratio']:.1f} %"
                         + (f" (medians of {folder['rounds']} rounds: "
                            f"{', '.join(f'{100 * r:.0f}' for r in folder['round_ratios'])} %)"
                            if folder.get("rounds", 1) > 1 else ""))
    return lines


def _tile_lines(results):
    """The 6000x4000 tiled run and the tiled-against-whole agreement."""
    tiles = results.get("tiles")
    if not tiles:
        return []
    lines = [""]
    large = tiles.get("large")
    if large and "error" in large:
        lines.append(f"6000x4000 tiled: failed: {large['error']}")
    elif large:
        lines.append(f"6000x4000 tiled (tiles of {large['tile_size']}, {large['tiles']} "
                     f"tiles, {large['tiles_run']} run, {large['seconds_per_tile']} s "
                     f"each): peak RSS {large['peak_mib']} MiB")
    agreement = tiles.get("agreement")
    if agreement and "error" in agreement:
        lines.append(f"1024x768 tiled against whole: failed: {agreement['error']}")
    elif agreement:
        lines.append(f"1024x768 tiled (--tile {AGREEMENT_TILE}) against whole: labels equal "
                     f"on {100 * agreement['agreement']:.2f} %, max |logit difference| / "
                     f"max |logit| {agreement['max_logit_difference']:.1e}")
    return lines


def format_report(results):
    """The printed report of a results dict."""
    lines = (_header_lines(results) + _contender_lines(results)
             + _start_and_folder_lines(results) + _tile_lines(results))
    lines += ["", "goals:"]
    for goal in results.get("goals", []):
        lines.append(f"  {goal['goal']}: {goal['figure']}; target {goal['target']}: "
                     f"{goal['status']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def read_results(path):
    """An earlier run's results dict (--from-report), or a one-line error."""
    try:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"--from-report {path}: cannot read a suite report "
                        f"({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(results, dict) or not set(REPORT_KEYS) <= set(results):
        raise UserError(f"--from-report {path}: not a report the suite wrote (expected the "
                        f"keys {', '.join(sorted(REPORT_KEYS))})")
    return results


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench import doc, harness
    if args.from_report:
        results = read_results(args.from_report)
    else:
        out = harness.report_path(args.out, "suite")
        results = run_suite(args)
    report = format_report(results)
    print(report, flush=True)
    if not args.from_report:
        harness.write_report(out, results)
    if args.write_doc:
        print(f"wrote {doc.write_doc(args.write_doc, results, report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="bench/suite.py"))
