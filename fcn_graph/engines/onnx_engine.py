"""ONNX models of FCN checkpoints, and ONNX Runtime inference.

`build_onnx_model(prefix)` writes the checkpoint's network (the legacy
FCN-8s, or the paper's FCN-32s/16s/8s; see `spec.ModelSpec`) as an ONNX
model directly from the checkpoint's arrays (no TensorFlow graph
conversion): `definition.network`, the one definition the TensorFlow graph is
built from too, run with `onnx_layers.OnnxLayers`, in the kernel set
`kernels` ("cpu": the phase-form upsampling and an im2col conv6, faster in
ONNX Runtime on CPUs; "reference": Conv and ConvTranspose; "auto": by
whether ONNX Runtime offers CUDA). Any input size works. It is the project's
one ONNX path: `fcn_graph.export
--format onnx` writes this model (`save_model`, optionally with the weights
in a `.data` file beside it) and `OnnxSegmenter` runs it.

    input  images  uint8   [N, H, W, 3]  RGB (the checkpoint's channel order
                                         is handled inside the model)
    output labels  int64   [N, H, W]     argmax over the classes
    output scores  float32 [N, H, W, K]  logits

`OnnxSegmenter(path_or_prefix)` runs such a model (a `.onnx` file, or a
checkpoint prefix or directory converted on the fly) with the same
`.run(batch, scores=False) -> (labels, scores)` as `segmenter.Segmenter`.

A checkpoint's converted model is kept in the model cache
(`model_cache.cached_onnx_model`, keyed by the checkpoint's content and the
build options) and reused: `find_converted` finds it, with the checkpoint's
`ModelSpec`, without importing TensorFlow; `converted_model` builds it on a
miss (reading the checkpoint needs TensorFlow).
"""

import dataclasses
import hashlib
import os
import shutil

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.engines import model_cache
from fcn_graph.host.choice import resolve_kernels
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights.checkpoint_files import checkpoint_prefix, list_checkpoints

# TensorFlow is imported only to read checkpoints (build_onnx_model): running
# a `.onnx` file or a cached model does not load it (docs/performance.md:
# memory of the ONNX engine).

DEFAULT_OPSET = 17
MIN_OPSET = 13                   # the oldest opset accepted (and tested)
EXTERNAL_DATA_SUFFIX = ".data"   # model.onnx -> model.onnx.data


def _ort_gpu():
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_onnx_kernels(kernels="auto"):
    """"reference" or "cpu" for an ONNX model: `choice.resolve_kernels`, auto
    deciding by whether ONNX Runtime offers its CUDA provider."""
    return resolve_kernels(kernels, _ort_gpu)


def check_opset(opset):
    """Raise a UserError unless `opset` is one `build_onnx_model` can write."""
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset}: expected {MIN_OPSET} or later, up to {newest} "
                        f"(the newest this onnx {onnx.__version__} knows)")


def _read_weights(prefix, spec):
    """Checkpoint name (without scope) -> array for every variable of `spec`'s
    model, each shape checked against `definition.variable_shapes`."""
    from fcn_graph.network import definition
    from fcn_graph.weights import checkpoint
    expected = definition.variable_shapes(spec.num_classes, vgg_widths=spec.widths,
                                         fc_width=spec.fc_width, architecture=spec.architecture,
                                         skips=spec.skips, backbone=spec.backbone)
    stored = checkpoint.read_variable_shapes(prefix)
    scope = definition.SCOPE
    wrong = [f"{scope}/{name} is {list(stored[f'{scope}/{name}'])}, expected {list(shape)}"
             if f"{scope}/{name}" in stored else f"{scope}/{name} is missing"
             for name, shape in expected.items() if stored.get(f"{scope}/{name}") != shape]
    if wrong:
        raise UserError(f"{prefix}: not a complete {spec.name} checkpoint: " + "; ".join(wrong[:4])
                        + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""))
    values = checkpoint.read_variables(prefix, [f"{scope}/{name}" for name in expected])
    return {name.split("/", 1)[1]: value for name, value in values.items()}


def build_onnx_model(prefix, *, opset=DEFAULT_OPSET, mean_pixel=None, kernels="auto"):
    """The FCN of checkpoint `prefix` (legacy FCN-8s, or the paper's
    FCN-32s/16s/8s) as an `onnx.ModelProto` with the weights inside (float32),
    the interface in the module docstring: `onnx_model` of its arrays.

    The mean pixel is the sidecar's, else `mean_pixel`, else the VGG mean (as in
    `tf_layers.build`). kernels: "cpu", "reference" or "auto" (`choose_onnx_kernels`).
    `opset` 13 or later.
    """
    from fcn_graph.weights import checkpoint
    check_opset(opset)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    weights = _read_weights(prefix, spec)
    return onnx_model(spec, weights, opset=opset, mean_pixel=mean_pixel, kernels=kernels)


# The modules whose code decides what a converted model holds: a change to
# any of them makes new cache keys (`converter_version`).
# Paths relative to the fcn_graph package.
CONVERTER_MODULES = ("engines/onnx_engine.py", "network/onnx_layers.py", "network/definition.py",
                     "network/spec.py")


def converter_version():
    """SHA-256 (hex, 16 digits) of the source of CONVERTER_MODULES."""
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in CONVERTER_MODULES:
        with open(os.path.join(package, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read())
    return digest.hexdigest()[:16]


def cpu_identity():
    """The CPU's model name and feature flags (from /proc/cpuinfo, hashed), and
    the machine type: what ONNX Runtime's optimised CPU models depend on."""
    import platform
    found = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features") and key not in found:
                    found[key] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    text = "|".join(f"{key}={found[key]}" for key in sorted(found))
    return f"{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def optimise_for_cpu():
    """Whether converted models are cached in ONNX Runtime's optimised form for
    this CPU: yes unless ONNX Runtime offers CUDA (a CPU-optimised graph would
    not suit it)."""
    return not _ort_gpu()


def onnx_variant(*, mean_pixel=None, kernels="auto", opset=DEFAULT_OPSET, optimise=None):
    """The build options of a float32 model of a checkpoint, as the model
    cache's `variant`: opset, kernel set (resolved), the fallback mean pixel,
    the converter's version, and for a CPU-optimised model the ONNX Runtime
    version and the CPU (`cpu_identity`). optimise: whether the model is kept
    in ONNX Runtime's optimised form (None: `optimise_for_cpu()`; False: the
    plain ONNX model, which other runtimes read too)."""
    variant = {"engine": "onnxruntime", "precision": "float32", "opset": int(opset),
               "kernels": choose_onnx_kernels(kernels),
               "mean_pixel": None if mean_pixel is None else [float(v) for v in mean_pixel],
               "converter": converter_version(), "optimised_for": None}
    if optimise_for_cpu() if optimise is None else optimise:
        import onnxruntime as ort
        variant["optimised_for"] = {"onnxruntime": ort.__version__, "cpu": cpu_identity()}
    return variant


def write_optimised(source, target):
    """Write ONNX Runtime's optimised form of the model file `source` (every
    graph optimisation, for this CPU) to `target`, its weights in
    `external_data_path(target)`. Loaded with optimisations off, it starts in a
    fraction of the time and memory: the weights are already in the layouts
    the CPU kernels use."""
    import onnxruntime as ort
    options = session_options()
    options.log_severity_level = 3  # not the warning that the result suits this CPU only
    options.optimized_model_filepath = os.fspath(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     os.path.basename(external_data_path(target)))
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(os.fspath(source), sess_options=options,
                         providers=["CPUExecutionProvider"])


def converted_model(prefix, *, mean_pixel=None, kernels="auto", opset=DEFAULT_OPSET, log=None,
                    optimise=None):
    """A `model_cache.ModelFile` of checkpoint `prefix` (resolved) converted by
    `build_onnx_model` and saved with its weights as external data; from the
    cache when there, else built (TensorFlow reads the checkpoint) and cached.
    Its `info["spec"]` is the checkpoint's `ModelSpec` as a dict. optimise: as
    in `onnx_variant`."""
    def build(folder):
        from fcn_graph.weights import checkpoint
        check_opset(opset)
        spec = checkpoint.model_spec_from_checkpoint(prefix)
        weights = _read_weights(prefix, spec)
        model = onnx_model(spec, weights, opset=opset, mean_pixel=mean_pixel, kernels=kernels)
        del weights
        target = os.path.join(folder, model_cache.MODEL_FILE)
        if not optimised:
            save_model(model, target, external_data=True)
            return {"spec": dataclasses.asdict(spec), "optimised": False}
        plain = os.path.join(folder, "plain")
        os.mkdir(plain)
        save_model(model, os.path.join(plain, model_cache.MODEL_FILE), external_data=True)
        del model
        try:
            write_optimised(os.path.join(plain, model_cache.MODEL_FILE), target)
        except Exception:  # ONNX Runtime's Fail, ...: the plain model serves
            for name in os.listdir(folder):
                if name != "plain":
                    os.remove(os.path.join(folder, name))
            for name in os.listdir(plain):
                os.replace(os.path.join(plain, name), os.path.join(folder, name))
            os.rmdir(plain)
            return {"spec": dataclasses.asdict(spec), "optimised": False}
        shutil.rmtree(plain)
        return {"spec": dataclasses.asdict(spec), "optimised": True}

    variant = onnx_variant(mean_pixel=mean_pixel, kernels=kernels, opset=opset, optimise=optimise)
    optimised = variant["optimised_for"] is not None

    return model_cache.cached_onnx_model(prefix, variant=variant, build=build, log=log)


def cached_spec(found):
    """The `ModelSpec` stored with a converted model, or None when the entry
    does not hold a valid one."""
    try:
        return ModelSpec(**found.info["spec"])
    except (KeyError, TypeError, ValueError):
        return None


def find_converted(source, *, mean_pixel=None, kernels="auto", opset=DEFAULT_OPSET, log=None,
                   optimise=None):
    """The cached `model_cache.ModelFile` of the checkpoint `source` names (a
    prefix, one of its files, or a directory: its newest checkpoint by name),
    with `.spec` set, or None when it is not cached (optimise: as in
    `onnx_variant`). Never imports TensorFlow. For a directory only the newest checkpoint is looked up:
    when it is not cached, `checkpoint.resolve_checkpoint` decides, as
    without a cache."""
    source = os.fspath(source)
    try:
        if os.path.isdir(source):
            found = list_checkpoints(source)
            if not found:
                return None
            prefix = found[0].prefix
        else:
            prefix = checkpoint_prefix(source)
    except UserError:
        return None
    entry = model_cache.lookup(
        prefix, onnx_variant(mean_pixel=mean_pixel, kernels=kernels, opset=opset,
                             optimise=optimise), log=log)
    if entry is None:
        return None
    entry.spec = cached_spec(entry)
    if entry.spec is None:
        entry.close()
        return None
    return entry


def onnx_model(spec, weights, *, opset=DEFAULT_OPSET, mean_pixel=None, kernels="auto",
               head=None):
    """`definition.network` for `spec` written as ONNX with `weights` (name without
    scope -> array, each of the shape the network asks for); head: as in
    `definition.network`."""
    from fcn_graph.network import definition
    from fcn_graph.network.onnx_layers import Builder, OnnxLayers
    b = Builder()
    helper, onnx = b.helper, b.onnx
    mean = spec.resolved_mean(mean_pixel)
    net = b.op("Cast", ["images"], "float", to=onnx.TensorProto.FLOAT)    # [N, H, W, 3]
    if spec.channel_order == "bgr":
        # the mean pixel is already in the model's channel order
        net = b.op("Gather", [net, b.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=3)
    ops = OnnxLayers(b, dict(weights), choose_onnx_kernels(kernels))
    logits = definition.network(ops, net, spec, mean_pixel=mean, head=head)  # [N, K, H, W]
    b.op("ArgMax", [logits], outputs=["labels"], axis=1, keepdims=0)        # [N, H, W]
    b.op("Transpose", [logits], outputs=["scores"], perm=[0, 2, 3, 1])      # [N, H, W, K]

    k = spec.num_classes
    graph = helper.make_graph(
        b.nodes, f"fcn_{spec.architecture}_{spec.skips}",
        [helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, ["N", "H", "W"]),
         helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", "H", "W", k])],
        b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="fcn_graph")
    # the oldest IR version that carries this opset: readable by older runtimes too
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def external_data_path(path):
    """Where `save_model(..., external_data=True)` puts the weights of `path`."""
    return os.fspath(path) + EXTERNAL_DATA_SUFFIX


def save_model(model, path, *, external_data=False):
    """Write `model` to `path`, whole, or with `external_data` as a small
    `path` (the graph) plus `external_data_path(path)` (every initializer over
    1 KiB, raw little-endian, named in the model relative to it, so the two
    files move together). ONNX Runtime then reads the weights from the data
    file instead of parsing them out of the protobuf, and no 2 GB protobuf
    limit applies. With external data the model's initializers are emptied on
    the way (their bytes move to the file)."""
    import onnx
    path = os.fspath(path)
    if not external_data:
        with open(path, "wb") as handle:
            handle.write(model.SerializeToString())
        return
    data = external_data_path(path)
    # onnx appends to the data file, and creates it readable by its owner only:
    # start it empty here, with the usual permissions.
    open(data, "wb").close()
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(data), size_threshold=1024)


def cpu_count():
    """Cores this process may run on (as `session.cpu_count`, without TensorFlow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options(threads=None):
    """ONNX Runtime options: every core inside each op, ops one at a time,
    all graph optimisations."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def load_session(path, options, providers):
    """An `onnxruntime.InferenceSession` of the model file `path`; a file it
    cannot load is a UserError naming it and saying why, on one line."""
    import onnxruntime as ort
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime's Fail, InvalidProtobuf, NoSuchFile, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: ONNX Runtime cannot load it ({reason})") from None


def _options_for(found, options):
    """`options`, with the graph optimisations off for a model that is already
    in ONNX Runtime's optimised form (`write_optimised`)."""
    if (found.info or {}).get("optimised"):
        import onnxruntime as ort
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


class OnnxSegmenter:
    """ONNX Runtime twin of `segmenter.Segmenter`.

    path_or_prefix: a `.onnx` file with the interface above (its external
    data, if any, beside it), a checkpoint prefix (or directory), converted
    with `build_onnx_model` through the model cache (`mean_pixel` applies to
    checkpoints without a sidecar, as in `Segmenter`; `kernels` picks the ONNX
    kernel set), or a `model_cache.ModelFile` (`find_converted`).
    """

    def __init__(self, path_or_prefix, *, threads=None, mean_pixel=None, kernels="auto"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("--engine onnxruntime: the onnxruntime package is not installed "
                            "(pip install onnxruntime)") from None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        options = session_options(threads)
        if isinstance(path_or_prefix, model_cache.ModelFile):
            with path_or_prefix as found:
                self.session = load_session(found.path, _options_for(found, options), providers)
        elif str(path_or_prefix).endswith(".onnx"):
            if not os.path.isfile(path_or_prefix):
                raise UserError(f"{path_or_prefix}: no such ONNX file")
            self.session = load_session(str(path_or_prefix), options, providers)
        else:
            # Through files (the model cache's, or temporary ones), so that
            # neither the ModelProto nor its serialised bytes (0.5 GB each at
            # full size) stay alive beside the session's own copy of the
            # weights; the weights as external data, which ONNX Runtime loads
            # with a lower peak (docs/performance.md).
            found = find_converted(path_or_prefix, mean_pixel=mean_pixel, kernels=kernels)
            if found is None:
                from fcn_graph.weights import checkpoint
                prefix = checkpoint.resolve_checkpoint(str(path_or_prefix))
                found = converted_model(prefix, mean_pixel=mean_pixel, kernels=kernels)
            with found:
                self.session = load_session(found.path, _options_for(found, options), providers)
        names = {o.name for o in self.session.get_outputs()}
        if not {"labels", "scores"} <= names or self.session.get_inputs()[0].name != "images":
            raise UserError(f"{path_or_prefix}: expected input 'images' and outputs 'labels', "
                            f"'scores'; found {sorted(names)}")

    def run(self, batch_rgb, *, scores=False):
        """uint8 [N, H, W, 3] RGB -> (labels int64 [N, H, W], logits or None)."""
        batch = np.ascontiguousarray(batch_rgb, dtype=np.uint8)
        fetches = ["labels", "scores"] if scores else ["labels"]
        out = self.session.run(fetches, {"images": batch})
        return out[0], (out[1] if scores else None)

    def close(self):
        self.session = None
