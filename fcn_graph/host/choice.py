"""The one place that decides what runs on this machine: the device (one GPU
detector, `gpu_visible`), the engine of `--engine auto` (`choose_engine`),
the kernel set and the layer implementation it builds with (`choose_kernels`,
`kernel_layers`), and per CPU whether TensorFlow runs its oneDNN kernels (for
inference and for training) and which forms the "cpu" kernel set
(`network.cpu_layers.CpuLayers`) gives conv6/conv7 and the upsampling.

Each per-CPU choice comes from the first of these that has it:
- the environment: TF_ENABLE_ONEDNN_OPTS=0/1 decides oneDNN, whatever else;
- `--kernels cpu` or `reference`: the forms those sets name;
- a kernel timing of this CPU (`python -m fcn_graph.calibrate`), cached in
  `fileio.cache_dir()`/calibration and keyed by the CPU (model name and
  flags), the TensorFlow version and the thread count: the timings of the
  candidate forms, from which `derive_choices` picks;
- the rule (`rule_choices`), from the CPU's flags.

This module never imports TensorFlow at import time: commands call
`apply_onednn` before TensorFlow loads, since TensorFlow reads
TF_ENABLE_ONEDNN_OPTS only then.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys

from fcn_graph.core.constants import (
    DEFAULT_FC_FORM,
    DEFAULT_ROW_BLOCK,
    DEFAULT_UPSAMPLE_FORM,
    KERNELS,
    UPSAMPLE_FORMS,
)
from fcn_graph.core.fileio import cache_dir
from fcn_graph.host import cpuinfo

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
TASKS = ("inference", "training")

# The rule. oneDNN for training: on x86 CPUs with all of these flags (AVX2 and
# FMA, or wider), whose convolution gradients oneDNN computes faster than
# TensorFlow's default kernels (measured on AVX2-only and on AVX-512 CPUs).
TRAINING_ONEDNN_FLAGS = ("avx2", "fma")
# oneDNN for inference: on CPUs with AVX-512 (the first flag) and at least one
# of the others (VNNI, bfloat16 or AMX units), where oneDNN's forward kernels
# are faster; on AVX2-only CPUs they are slower than the default kernels.
INFERENCE_ONEDNN_AVX512 = "avx512f"
INFERENCE_ONEDNN_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Flags that mark an x86 CPU: elsewhere (ARM, or no flags to read) the rule
# leaves oneDNN to TensorFlow's own default.
X86_FLAGS = frozenset(("sse2", "avx", "avx2", "avx512f"))
# The forms the rule takes are core.constants' DEFAULT_FC_FORM,
# DEFAULT_ROW_BLOCK and DEFAULT_UPSAMPLE_FORM.

# The calibration. Row blocks it times (0: all rows in one product).
ROW_BLOCKS = (50, 100, 200, 0)
# A form replaces the rule's only when the calibration finds it faster by more
# than this fraction (a tie, or noise, keeps the rule's form).
TIMING_MARGIN = 0.03
TIMING_FORMAT = "fcn_graph.calibration"
TIMING_VERSION = 1
TIMING_DIR = "calibration"            # the sub-folder of the cache
PASSES = {"inference": "forward", "training": "training"}  # the timings a task's choice uses
FC_LAYERS = ("conv6", "conv7")
UPSAMPLE_LAYERS = ("conv_t1", "conv_t2", "conv_t3")
BODY_LAYER = "body"


def fc_form_name(fc_form, row_block):
    """The calibration's name of a conv6/conv7 form: "conv", "matmul/100", "matmul/all"."""
    if fc_form == "conv":
        return "conv"
    return f"matmul/{row_block or 'all'}"


def parse_fc_form(name):
    """"conv" -> ("conv", None); "matmul/100" -> ("matmul", 100); "matmul/all" -> ("matmul", 0)."""
    if name == "conv":
        return "conv", None
    kind, _, block = name.partition("/")
    if kind != "matmul" or not (block == "all" or block.isdigit() and int(block) > 0):
        raise ValueError(f"unknown conv6/conv7 form {name!r}")
    return "matmul", 0 if block == "all" else int(block)


FC_CANDIDATES = tuple(fc_form_name("matmul", b) for b in ROW_BLOCKS) + ("conv",)


@dataclasses.dataclass(frozen=True)
class Choices:
    """What runs for `task` ("inference" or "training") on this CPU.

    onednn_inference, onednn_training: TF_ENABLE_ONEDNN_OPTS for each task
        (None: TensorFlow's own default, where nothing decides);
    fc_form: conv6/conv7 as "matmul" (im2col + products of `row_block` rows,
        0 = all rows at once) or "conv" (tf.nn.conv2d; row_block None);
    upsample_form: "phases" or "transpose";
    sources: choice name ("onednn_inference", "onednn_training", "fc_form",
        "row_block", "upsample_form") -> where it came from: "rule: <reason>",
        "calibration <file>", "environment TF_ENABLE_ONEDNN_OPTS=<value>" or
        "--kernels <set>".
    """
    task: str
    onednn_inference: object
    onednn_training: object
    fc_form: str
    row_block: object
    upsample_form: str
    sources: dict

    @property
    def onednn(self):
        """oneDNN for this record's task."""
        return self.onednn_inference if self.task == "inference" else self.onednn_training

    def describe(self):
        """(name, value in words, source) for each choice, in a fixed order."""
        def onoff(value):
            return {True: "on", False: "off", None: "TensorFlow's default"}[value]
        block = "-" if self.row_block is None else (self.row_block or "all rows")
        return [("oneDNN for inference", onoff(self.onednn_inference),
                 self.sources["onednn_inference"]),
                ("oneDNN for training", onoff(self.onednn_training),
                 self.sources["onednn_training"]),
                ("conv6/conv7", self.fc_form, self.sources["fc_form"]),
                ("row block", str(block), self.sources["row_block"]),
                ("upsampling", self.upsample_form, self.sources["upsample_form"])]


# ---------------------------------------------------------------- the rule

def rule_choices(features, task="inference"):
    """The rule's Choices for a CPU with the cpuinfo flags `features`."""
    features = frozenset(features)
    if not features & X86_FLAGS:
        onednn_inf = onednn_train = None
        why_inf = why_train = (f"rule: {'not an x86 CPU' if features else 'no CPU flags'}, "
                               "TensorFlow's default")
    else:
        onednn_train = all(flag in features for flag in TRAINING_ONEDNN_FLAGS)
        why_train = (f"rule: {'+'.join(TRAINING_ONEDNN_FLAGS)}"
                     f"{'' if onednn_train else ' missing'}")
        wide = [flag for flag in INFERENCE_ONEDNN_FLAGS if flag in features]
        onednn_inf = INFERENCE_ONEDNN_AVX512 in features and bool(wide)
        if onednn_inf:
            why_inf = f"rule: {INFERENCE_ONEDNN_AVX512} with {', '.join(wide)}"
        elif INFERENCE_ONEDNN_AVX512 in features:
            why_inf = (f"rule: {INFERENCE_ONEDNN_AVX512} without "
                       f"{' or '.join(INFERENCE_ONEDNN_FLAGS)}")
        else:
            why_inf = f"rule: no {INFERENCE_ONEDNN_AVX512}"
    forms = "rule: measured fastest on AVX2 CPUs"
    return Choices(task=task, onednn_inference=onednn_inf, onednn_training=onednn_train,
                   fc_form=DEFAULT_FC_FORM, row_block=DEFAULT_ROW_BLOCK,
                   upsample_form=DEFAULT_UPSAMPLE_FORM,
                   sources={"onednn_inference": why_inf, "onednn_training": why_train,
                            "fc_form": forms, "row_block": forms, "upsample_form": forms})


# ---------------------------------------------------------------- calibration

def tensorflow_version():
    """The installed TensorFlow's version, read without importing it; "unknown"."""
    from importlib import metadata
    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def thread_count():
    """Cores this process may run on (as `session.cpu_count`, without TensorFlow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def timing_key(*, threads=None, text=None, tf_version=None):
    """What a calibration holds for: the CPU's model name, a hash of its flags,
    the TensorFlow version and the thread count (default: every core)."""
    text = cpuinfo.read_cpuinfo() if text is None else text
    flags = " ".join(sorted(cpuinfo.parse_cpu_flags(text)))
    return {"cpu": cpuinfo.cpu_model_name(text) or "unknown",
            "flags_sha256": hashlib.sha256(flags.encode()).hexdigest(),
            "tensorflow": tf_version or tensorflow_version(),
            "threads": int(threads or thread_count())}


def timing_path(key, root=None):
    """The cache file of calibration `key`: ROOT/calibration/<hash of the key>.json."""
    root = root or cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, TIMING_DIR, f"cpu-{digest}.json")


def _check_row(row, index):
    kinds = {"onednn": bool, "pass": str, "input": int, "layer": str, "form": str}
    for name, kind in kinds.items():
        if not isinstance(row.get(name), kind):
            return f"timings[{index}].{name}: expected {kind.__name__}, found {row.get(name)!r}"
    for name in ("seconds", "count"):
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return f"timings[{index}].{name}: expected a positive number, found {value!r}"
    if row["pass"] not in PASSES.values():
        return f"timings[{index}].pass: unknown {row['pass']!r}"
    return None


def timings_problem(timings):
    """None when `timings` (rows of `kernel_timing.measure`) hold every layer's
    candidates for both oneDNN settings and both passes; else what is wrong."""
    if not isinstance(timings, list) or not timings:
        return "timings: expected a non-empty list"
    for index, row in enumerate(timings):
        problem = "not an object" if not isinstance(row, dict) else _check_row(row, index)
        if problem:
            return problem if "timings[" in problem else f"timings[{index}]: {problem}"
    have = {(r["onednn"], r["pass"], r["input"], r["layer"], r["form"]) for r in timings}
    runs = sorted({(r["pass"], r["input"]) for r in timings})
    needed = ([(layer, form) for layer in FC_LAYERS for form in FC_CANDIDATES]
              + [(layer, form) for layer in UPSAMPLE_LAYERS for form in UPSAMPLE_FORMS]
              + [(BODY_LAYER, "conv")])
    for pass_ in PASSES.values():
        if pass_ not in {run[0] for run in runs}:
            return f"timings: no {pass_} times"
    for onednn in (False, True):
        for pass_, size in runs:
            for layer, form in needed:
                if (onednn, pass_, size, layer, form) not in have:
                    return (f"timings: no {pass_} time of {layer} as {form} at input {size} "
                            f"with oneDNN {'on' if onednn else 'off'}")
    return None


def _pick(totals, default):
    """The fastest form in `totals` (form -> seconds); `default` unless another
    is faster by more than TIMING_MARGIN."""
    best = min(totals, key=totals.get)
    if default in totals and totals[best] >= totals[default] * (1 - TIMING_MARGIN):
        return default
    return best


def derive_choices(timings, task, *, onednn=None):
    """What the calibration `timings` choose for `task`: a dict with onednn
    (faster in the summed time of the network's layers, each in its fastest
    form; forced to `onednn` when given), fc_form, row_block, upsample_form,
    and totals (oneDNN setting -> estimated seconds)."""
    pass_ = PASSES[task]
    picked, totals = {}, {}
    for setting in (False, True):
        rows = [r for r in timings if r["pass"] == pass_ and r["onednn"] == setting]

        def summed(layers, forms, rows=rows):
            return {form: sum(r["seconds"] * r["count"] for r in rows
                              if r["layer"] in layers and r["form"] == form) for form in forms}
        fc = summed(FC_LAYERS, FC_CANDIDATES)
        up = summed(UPSAMPLE_LAYERS, UPSAMPLE_FORMS)
        body = sum(r["seconds"] * r["count"] for r in rows if r["layer"] == BODY_LAYER)
        fc_best = _pick(fc, fc_form_name(DEFAULT_FC_FORM, DEFAULT_ROW_BLOCK))
        up_best = _pick(up, DEFAULT_UPSAMPLE_FORM)
        picked[setting] = (fc_best, up_best)
        totals[setting] = fc[fc_best] + up[up_best] + body
    chosen = (totals[True] < totals[False]) if onednn is None else bool(onednn)
    fc_form, row_block = parse_fc_form(picked[chosen][0])
    return {"onednn": chosen, "fc_form": fc_form, "row_block": row_block,
            "upsample_form": picked[chosen][1], "totals": {"0": totals[False], "1": totals[True]}}


def timing_record(key, timings, seconds):
    """The JSON object a calibration file holds."""
    return {"format": TIMING_FORMAT, "version": TIMING_VERSION, "key": key,
            "seconds": round(seconds, 1), "timings": timings,
            "choices": {task: derive_choices(timings, task) for task in TASKS}}


def read_timings(path, key):
    """(timings, None) from the calibration file at `path` for `key`; (None,
    None) when there is no such file; (None, problem) when it cannot be used
    (unreadable, not JSON, another format, another key, bad timings)."""
    from fcn_graph.core.fileio import NotARegularFile, kind_of, read_regular_file
    from fcn_graph.core.private_files import untrusted
    if not os.path.lexists(path):
        return None, None
    for where, kind in ((os.path.dirname(path), "folder"), (path, "file")):
        problem = untrusted(where, kind=kind)
        if problem is not None and not problem.startswith("is not a "):
            return None, f"{where} {problem}, not this user's alone; ignored"
    try:
        data = read_regular_file(path)
    except NotARegularFile as err:
        return None, f"{path}: is {kind_of(err.mode)}, not a regular file"
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return None, f"{path}: not JSON ({'empty file' if not data.strip() else err})"
    if not isinstance(record, dict) or record.get("format") != TIMING_FORMAT:
        return None, f"{path}: not a calibration file (format {TIMING_FORMAT!r} expected)"
    if record.get("version") != TIMING_VERSION:
        return None, (f"{path}: calibration version {record.get('version')!r}, expected "
                      f"{TIMING_VERSION}")
    if record.get("key") != key:
        return None, f"{path}: measured for {record.get('key')!r}, not for this {key!r}"
    problem = timings_problem(record.get("timings"))
    if problem:
        return None, f"{path}: {problem}"
    return record["timings"], None


_warned = set()  # calibration problems already reported by this process


def _warn_once(message, warn):
    if message in _warned:
        return
    _warned.add(message)
    if warn is None:
        print(message, file=sys.stderr)
    else:
        warn(message)


# ---------------------------------------------------------------- the choice

def parse_onednn_env(value):
    """TF_ENABLE_ONEDNN_OPTS as TensorFlow reads it: True, False, or None (unset, or a
    value that is not 1/true/0/false)."""
    value = (value or "").strip().lower()
    return {"1": True, "true": True, "0": False, "false": False}.get(value)


def choose(task, *, threads=None, kernels="auto", onednn=None, environ=None, text=None,
           root=None, warn=None):
    """The Choices for `task` ("inference" or "training") on this CPU.

    threads: the thread count the calibration is looked up for (default: every core);
    kernels: "auto" (the calibration's or the rule's forms), "cpu" (the rule's
        forms) or "reference" (tf.nn.conv2d and conv2d_transpose);
    onednn: the oneDNN setting this process runs with, when known (TensorFlow
        loaded): the forms are then the ones measured fastest with it;
    environ: the environment (default os.environ); text: cpuinfo text (default
        /proc/cpuinfo); root: the cache folder (default `fileio.cache_dir()`);
    warn: called with the one-line warning about an unusable calibration file
        (default: printed to stderr, once per process).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, found {task!r}")
    environ = os.environ if environ is None else environ
    text = cpuinfo.read_cpuinfo() if text is None else text
    rule = rule_choices(cpuinfo.parse_cpu_flags(text), task)
    values = dataclasses.asdict(rule)
    sources = values.pop("sources")
    env_value = environ.get(ONEDNN_ENV)
    from_env = parse_onednn_env(env_value)
    if onednn is None:
        onednn = from_env
    if kernels == "auto":
        key = timing_key(threads=threads, text=text)
        root = root if root is not None else _cache_root(environ)
        path = timing_path(key, root)
        timings, problem = read_timings(path, key)
        if problem:
            _warn_once(f"warning: calibration {problem}; using the rule (python -m "
                       "fcn_graph.calibrate --force measures again)", warn)
        if timings is not None:
            where = f"calibration {path}"
            for name in TASKS:
                derived = derive_choices(timings, name)
                values[f"onednn_{name}"] = derived["onednn"]
                sources[f"onednn_{name}"] = where
            derived = derive_choices(timings, task, onednn=(
                values[f"onednn_{task}"] if onednn is None else onednn))
            for name in ("fc_form", "row_block", "upsample_form"):
                values[name] = derived[name]
                sources[name] = where
    elif kernels in ("cpu", "reference"):
        if kernels == "reference":
            values.update(fc_form="conv", row_block=None, upsample_form="transpose")
        for name in ("fc_form", "row_block", "upsample_form"):
            sources[name] = f"--kernels {kernels}"
    else:
        raise ValueError(f"kernels: expected auto, cpu or reference, found {kernels!r}")
    if from_env is not None:
        for name in TASKS:
            values[f"onednn_{name}"] = from_env
            sources[f"onednn_{name}"] = f"environment {ONEDNN_ENV}={env_value}"
    return Choices(sources=sources, **values)


def _cache_root(environ):
    return cache_dir(environ)


_applied = []  # the task `apply_onednn` chose for, in this process


def process_task():
    """The task this process chose oneDNN for (`apply_onednn`); "inference" if none."""
    return _applied[-1] if _applied else "inference"


def apply_onednn(task, *, threads=None, require=False, environ=None, warn=None):
    """Set TF_ENABLE_ONEDNN_OPTS in `environ` (default os.environ) to the choice for
    `task`, before TensorFlow loads; a value already set is kept, and nothing
    is set once TensorFlow is loaded. `require`:
    the caller needs oneDNN (bfloat16), so it is turned on whatever the choice.
    Returns the Choices."""
    environ = os.environ if environ is None else environ
    _applied.append(task)
    choices = choose(task, threads=threads, environ=environ, warn=warn)
    if environ.get(ONEDNN_ENV) or "tensorflow" in sys.modules and environ is os.environ:
        # set by the user, or too late: TensorFlow has read it already
        return choices
    value = True if require else choices.onednn
    if value is not None:
        environ[ONEDNN_ENV] = "1" if value else "0"
        if require and not choices.onednn:
            values = dataclasses.asdict(choices)
            values["sources"][f"onednn_{task}"] = "needed by bfloat16"
            values[f"onednn_{task}"] = True
            choices = Choices(**values)
    return choices


# ---------------------------------------------------------------- device, engine, kernel set

AUTO = "auto"
# Where the NVIDIA driver lists the GPUs it drives, one folder each.
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def gpu_visible(environ=None, gpus_dir=NVIDIA_GPUS):
    """Whether an NVIDIA GPU is there for this process: the driver lists one
    and CUDA_VISIBLE_DEVICES does not hide them all ("" or "-1"). Read without
    TensorFlow, so that the choices can be made before it loads."""
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return bool(os.listdir(gpus_dir))
    except OSError:
        return False


def onnxruntime_installed():
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_installed():
    return importlib.util.find_spec("openvino") is not None


def openvino_runs_bfloat16(features):
    """Whether bfloat16 inference runs on OpenVINO on a CPU with the cpuinfo
    flags `features`: with avx512_bf16 and no AMX, the kind where OpenVINO's
    bf16 was measured faster than TensorFlow's (AMD EPYC Zen 4,
    docs/performance.md). AMX CPUs are unmeasured: TensorFlow stays."""
    return "avx512_bf16" in features and "amx_bf16" not in features


def choose_engine(requested, *, precision="float32", xla=False, gpu=None, has_onnxruntime=None,
                  has_openvino=None, features=None):
    """(engine, reason) for `--engine requested` ("auto", None, or one of
    ENGINES). `gpu`, `has_onnxruntime`, `has_openvino` and `features` (the
    cpuinfo flags) default to what this machine has.

    - an engine named on the command line is kept;
    - int8 runs on ONNX Runtime;
    - bfloat16 without XLA or a GPU runs on OpenVINO where it is installed
      and the CPU is of the kind `openvino_runs_bfloat16` names;
    - otherwise bfloat16, float16 and XLA run on TensorFlow;
    - with a GPU, TensorFlow, whose reference kernels run there as
      cuDNN/cuBLAS calls;
    - without ONNX Runtime installed, TensorFlow;
    - otherwise ONNX Runtime: on the CPU it computes the same network faster
      than TensorFlow on every CPU kind measured (docs/performance.md), and
      after the first run it starts from the converted model without loading
      TensorFlow.
    """
    if requested not in (None, AUTO):
        return requested, "--engine"
    if precision == "int8":
        return "onnxruntime", "auto: int8 runs on ONNX Runtime"
    if precision == "bfloat16" and not xla and not (gpu_visible() if gpu is None else gpu):
        features = cpuinfo.cpu_features() if features is None else features
        has_openvino = openvino_installed() if has_openvino is None else has_openvino
        if has_openvino and openvino_runs_bfloat16(features):
            return "openvino", ("auto: bfloat16 runs on OpenVINO on a CPU with avx512_bf16 and "
                                "no AMX, where it was measured faster")
    if precision != "float32":
        return "tf", f"auto: {precision} runs on TensorFlow"
    if xla:
        return "tf", "auto: --xla compiles the TensorFlow graph"
    gpu = gpu_visible() if gpu is None else gpu
    if gpu:
        return "tf", "auto: a GPU is visible"
    has_onnxruntime = onnxruntime_installed() if has_onnxruntime is None else has_onnxruntime
    if not has_onnxruntime:
        return "tf", "auto: onnxruntime is not installed (pip install fcn_graph[export])"
    return "onnxruntime", "auto: the faster engine on a CPU"


def resolve_kernels(kernels, has_gpu):
    """The kernel set `kernels` asks for: "reference" or "cpu" as given; "auto"
    is "reference" when `has_gpu()` is true (a GPU runs the plain ops as single
    cuDNN/cuBLAS calls) and "cpu" otherwise."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; expected one of {', '.join(KERNELS)}")
    if kernels != "auto":
        return kernels
    return "reference" if has_gpu() else "cpu"


def choose_kernels(kernels="auto"):
    """"reference" or "cpu" for `kernels` ("auto", "reference" or "cpu"): auto
    is the reference ops with a GPU, the CPU forms otherwise."""
    return resolve_kernels(kernels, gpu_visible)


def kernel_layers(kernels="auto"):
    """A fresh TensorFlow `Layers` for the kernel set `kernels`: `TFLayers`
    (the reference ops) or `CpuLayers`; "auto" without a GPU: `CpuLayers` with
    the forms `choose` picks for this process's task and oneDNN setting."""
    from fcn_graph.network.cpu_layers import CpuLayers
    from fcn_graph.network.tf_layers import TFLayers
    if choose_kernels(kernels) != "cpu":
        return TFLayers()
    if kernels == "cpu":
        return CpuLayers()
    return CpuLayers.from_choices(chosen_forms())


def chosen_forms():
    """`choose` for this process (the task `apply_onednn` chose for, the
    oneDNN setting TensorFlow runs with)."""
    from fcn_graph.host.session import onednn_enabled
    return choose(process_task(), onednn=onednn_enabled())
