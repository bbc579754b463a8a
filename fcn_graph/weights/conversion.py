"""Porting weights between formats: MatConvNet `.mat` and Keras `.h5` VGG19 or
VGG16 files into starting checkpoints, FCN.tensorflow checkpoints into clean ones,
a checkpoint's VGG body back into a `.mat`, and `inspect` for any of them.
Each verb takes the parsed arguments of `python -m fcn_graph.port VERB`."""

import dataclasses
import glob
import os
import re
from collections import OrderedDict
from typing import Optional

import numpy as np
import tensorflow as tf

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import check_input_file, check_output_file, ensure_output_dir
from fcn_graph.data import image_files
from fcn_graph.host.session import session_config
from fcn_graph.network import definition, tf_layers
from fcn_graph.network.spec import (
    DEFAULT_BACKBONE,
    FC_WIDTH,
    VGG19_CONVS,
    VGG_CONVS,
    ModelSpec,
    last_conv,
)
from fcn_graph.weights import checkpoint, kerash5, matconvnet
from fcn_graph.weights.checkpoint_files import SIDECAR_SUFFIX

tf1 = tf.compat.v1

SCOPE = definition.SCOPE
# What an FCN.tensorflow training checkpoint holds besides the model: optimizer
# slots ("inference/W6/Adam"), Adam's beta powers, perhaps a global step.
_TRAINING_STATE = re.compile(r"^(beta[12]_power(_\d+)?|global_step|.+/(Adam|Adam_1|Momentum|"
                             r"RMSProp|RMSProp_1|ExponentialMovingAverage))$")


def _parameters(shapes):
    return sum(int(np.prod(shape)) for shape in shapes)


def _print_shapes(shapes, indent="  "):
    """Print name -> shape lines."""
    width = max((len(name) for name in shapes), default=0)
    for name, shape in shapes.items():
        print(f"{indent}{name:{width}s} {list(shape)}")


def _write_checkpoint(spec, values, out, *, seed=0, verbose=False, **sidecar_extra):
    """Build `spec`'s graph, initialise every variable (heads as the builder
    starts them), load `values` (checkpoint name -> array) on top and save.
    Returns the prefix written."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
        tf_layers.build(images, spec)
        variables = tf_layers.model_variables(graph)
        unknown = sorted(set(values) - set(variables))
        assert not unknown, f"values for variables the graph lacks: {unknown}"
        init = tf1.global_variables_initializer()
        saver = checkpoint.model_saver(variables)
        graph.finalize()
        with tf1.Session(graph=graph, config=session_config()) as sess:
            sess.run(init)
            checkpoint.assign_arrays(sess, variables, values)
            prefix = checkpoint.save_model(sess, saver, out, spec, **sidecar_extra)
    shapes = OrderedDict((name, v.shape.as_list()) for name, v in variables.items())
    if verbose:
        _print_shapes(shapes)
    copied = len(values)
    print(f"wrote {prefix} ({spec.name}, {len(shapes)} variables, {_parameters(shapes.values()):,} "
          f"parameters, {spec.num_classes} classes, fc width {spec.fc_width}; "
          f"{copied} variables copied, {len(shapes) - copied} initialised) and {prefix}.json")
    return prefix


def _check_prefix_out(out):
    """Prepare --out, a checkpoint prefix to write: create its folder where
    missing and check that it can be written. Refuse a prefix that names a
    folder, or whose files (PREFIX, .index, .data-*, .meta, .json) exist: port
    never replaces a checkpoint or another file."""
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        what = "is a directory" if os.path.isdir(out) else "names a folder"
        raise UserError(f"--out {out}: {what}; expected a checkpoint prefix to write, such as "
                        f"{os.path.join(out, 'start')} (its folder is created where missing)")
    existing = [path for path in (out, out + ".index", out + ".meta",
                                  out + SIDECAR_SUFFIX) if os.path.lexists(path)]
    existing += sorted(glob.glob(glob.escape(out) + ".data-*"))
    if existing:
        raise UserError(f"--out {out}: {existing[0]} exists; port never replaces a checkpoint "
                        "or any other file (remove it or choose another --out)")
    ensure_output_dir(os.path.dirname(os.path.abspath(out)), f"--out {out}: folder")


def _check_file_out(out):
    """Prepare --out, a file to write: its folder created and writable; an
    existing file refused."""
    if out.endswith(("/", os.sep)):
        raise UserError(f"--out {out}: names a folder; expected a file to write, such as "
                        f"{os.path.join(out, 'vgg19.mat')} (its folder is created where missing)")
    if check_output_file(out, "--out"):
        raise UserError(f"--out {out}: exists; port never replaces a file (remove it or choose "
                        "another --out)")


@dataclasses.dataclass(frozen=True)
class StartOptions:
    """What a starting checkpoint is made with (mat2ckpt, keras-h5): the class
    count, the output prefix, the head (architecture, skips, whether the paper's
    upsampling trains), conv6/conv7's width (None: 4096 legacy, fc6/fc7's
    paper), the seed of the head initialisation, whether every variable is
    listed, and the backbone the weight file must hold."""

    num_classes: int
    out: str
    architecture: str = "legacy"
    skips: str = "8s"
    train_upsampling: bool = False
    fc_width: Optional[int] = None
    seed: int = 0
    verbose: bool = False
    backbone: str = DEFAULT_BACKBONE


def _check_start_options(options):
    if options.num_classes < 1:
        raise UserError(f"--num-classes: expected a positive integer, found {options.num_classes}")
    image_files.check_num_classes(options.num_classes, "--num-classes")
    if options.backbone not in VGG_CONVS:
        raise UserError(f"--backbone: expected one of {', '.join(VGG_CONVS)}, found "
                        f"{options.backbone!r}")
    if options.architecture == "legacy" and options.skips != "8s":
        raise UserError(f"--skips {options.skips}: the legacy architecture is FCN-8s only "
                        "(use --architecture paper)")
    _check_prefix_out(options.out)


def _convert_vgg(vgg, options, source):
    """mat2ckpt and keras-h5: a starting checkpoint from parsed VGG weights."""
    fc_width = options.fc_width
    if options.architecture == "paper":
        c5 = vgg.layers[last_conv(vgg.backbone, 5)][0].shape[3]
        fc6, fc7 = vgg.fc["fc6"][0], vgg.fc["fc7"][0]
        found = fc6.shape[3]
        if fc6.shape[:3] != (7, 7, c5) or fc7.shape != (1, 1, found, found):
            raise UserError(f"{vgg.path}: fc6 {list(fc6.shape)} and fc7 {list(fc7.shape)}; the "
                            f"paper architecture needs [7, 7, {c5}, F] and [1, 1, F, F]")
        if fc_width is not None and fc_width != found:
            raise UserError(f"--fc-width {fc_width}: the paper architecture takes conv6/conv7 "
                            f"from fc6/fc7, which have width {found}")
        fc_width = found
    elif fc_width is None:
        fc_width = FC_WIDTH
    if fc_width < 1:
        raise UserError(f"--fc-width: expected a positive integer, found {fc_width}")
    spec = ModelSpec(num_classes=options.num_classes, fc_width=fc_width,
                               vgg_widths=tuple(vgg.widths.values()),
                               mean_pixel=tuple(float(v) for v in vgg.mean_pixel),
                               architecture=options.architecture, skips=options.skips,
                               channel_order=vgg.channel_order,
                               train_upsampling=options.train_upsampling,
                               backbone=vgg.backbone)
    heads = ("conv6/conv7 from fc6/fc7, score layers zero, bilinear upsampling"
             if options.architecture == "paper" else "heads truncated normal 0.02, biases zero")
    print(f"building {spec.name}: {heads}")
    return _write_checkpoint(spec, checkpoint.vgg_values(vgg, options.architecture), options.out, seed=options.seed,
                             verbose=options.verbose, source=source,
                             kernels_transposed=vgg.transposed)


def _backbone_words(backbone):
    """"VGG16, " for a VGG16 file; nothing for VGG19, the default."""
    return "" if backbone == DEFAULT_BACKBONE else f"{backbone.upper()}, "


def mat2ckpt(mat, options, *, no_transpose=False):
    """A complete starting checkpoint from a MatConvNet `.mat`: VGG from the
    file; legacy heads as FCN.tensorflow starts them (truncated normal 0.02,
    zero biases), or the paper's (conv6/conv7 from fc6/fc7)."""
    _check_start_options(options)
    vgg = matconvnet.load_vgg_mat(mat, transpose=not no_transpose,
                                  require_fc=options.architecture == "paper",
                                  backbone=options.backbone)
    print(f"read {mat}: {_backbone_words(vgg.backbone)}{vgg.layout} layout, {len(vgg.layers)} conv layers, "
          f"fc layers: {', '.join(vgg.fc) or 'none'}, mean pixel "
          f"{np.round(vgg.mean_pixel, 3).tolist()}"
          + ("" if vgg.transposed else ", kernels kept in file order"))
    _convert_vgg(vgg, options, f"mat2ckpt {mat}")
    return 0


def keras_h5(h5, options):
    """A starting checkpoint from the Keras VGG19 or VGG16 ImageNet weights (BGR
    input, Caffe mean; kernels used as they are)."""
    _check_start_options(options)
    vgg = kerash5.load_keras_vgg_h5(h5, require_fc=options.architecture == "paper",
                                    backbone=options.backbone)
    params = _parameters([a.shape for pair in vgg.layers.values() for a in pair]
                         + [a.shape for pair in vgg.fc.values() for a in pair])
    fc = ", ".join(f"{keras} {list(vgg.fc[name][0].shape)}"
                   for keras, name in kerash5.KERAS_FC_LAYERS.items() if name in vgg.fc)
    print(f"read {h5}: Keras {vgg.backbone.upper()}, {len(vgg.layers)} conv layers, dense layers as convs: "
          f"{fc or 'none (notop)'}; {params:,} parameters; input BGR minus "
          f"{list(kerash5.KERAS_MEAN_BGR)} (BGR)")
    _convert_vgg(vgg, options, f"keras-h5 {h5}")
    return 0


def legacy(source, *, out, mean=None, verbose=False):
    """An FCN.tensorflow training checkpoint -> a clean fcn_graph checkpoint:
    the 44 model variables only, with a sidecar."""
    _check_prefix_out(out)
    prefix = checkpoint.resolve_checkpoint(source)
    if checkpoint.read_sidecar(prefix) is not None:
        raise UserError(f"{prefix}: already an fcn_graph checkpoint ({prefix}.json exists); "
                        "expected an FCN.tensorflow checkpoint without a sidecar")
    shapes = checkpoint.read_variable_shapes(prefix)
    expected_names = {f"{SCOPE}/{name}" for name in definition.HEAD_VARIABLES} | {
        f"{SCOPE}/{name}_{s}" for name in VGG19_CONVS for s in ("w", "b")}
    model_names = sorted(n for n in shapes if n in expected_names)
    dropped = sorted(n for n in shapes if n not in expected_names and _TRAINING_STATE.match(n))
    unknown = sorted(set(shapes) - set(model_names) - set(dropped))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UserError(f"{prefix}: unexpected variables {shown}; expected FCN.tensorflow's 44 "
                        "model variables (inference/...), optimizer slots and beta1/beta2_power")
    missing = sorted(expected_names - set(model_names))
    if missing:
        variant = definition.detect_architecture(shapes)
        what = f" (it looks like a {variant[0]} FCN-{variant[1]})" if variant else ""
        raise UserError(f"{prefix}: missing {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                        + f"; not an FCN.tensorflow checkpoint{what}")
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    spec = dataclasses.replace(spec, mean_pixel=spec.resolved_mean(mean))
    slots = sum(1 for n in dropped if "/" in n)
    others = [n for n in dropped if "/" not in n]
    print(f"read {prefix}: {len(model_names)} model variables "
          f"({_parameters(shapes[n] for n in model_names):,} parameters, {spec.num_classes} "
          f"classes, fc width {spec.fc_width}); dropping {slots} optimizer slots"
          + (f" and {', '.join(others)}" if others else ""))
    print(f"mean pixel {list(spec.mean_pixel)} (RGB; "
          + ("from --mean)" if mean else "the VGG mean; pass --mean R G B if it was trained "
                                              "with another)"))
    values = checkpoint.read_variables(prefix, model_names)
    _write_checkpoint(spec, values, out, verbose=verbose,
                      source=f"legacy {prefix}", kernels_transposed=True)
    return 0


def ckpt2mat(source, *, out, layout="new", verbose=False):
    """The VGG body of a checkpoint (and fc6/fc7 for the paper architecture)
    as a MatConvNet `.mat` that mat2ckpt reads back unchanged."""
    _check_file_out(out)
    prefix = checkpoint.resolve_checkpoint(source)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    checkpoint.check_finite(prefix)  # the whole checkpoint, not only the layers written
    sidecar = checkpoint.read_sidecar(prefix) or {}
    convs = VGG_CONVS[spec.backbone]
    names = [f"{SCOPE}/{name}_{s}" for name in convs for s in ("w", "b")]
    if spec.architecture == "paper":
        names += [f"{SCOPE}/{n}" for n in ("W6", "b6", "W7", "b7")]
    values = checkpoint.read_variables(prefix, names)
    layers = OrderedDict((name, (values[f"{SCOPE}/{name}_w"], values[f"{SCOPE}/{name}_b"]))
                         for name in convs)
    fc = None
    if spec.architecture == "paper":
        fc = {"fc6": (values[f"{SCOPE}/W6"], values[f"{SCOPE}/b6"]),
              "fc7": (values[f"{SCOPE}/W7"], values[f"{SCOPE}/b7"])}
    mean = np.asarray(spec.resolved_mean(), dtype=np.float64)
    print(f"read {prefix}: {spec.name}, {len(names)} variables "
          f"({_parameters(v.shape for v in values.values()):,} parameters) of "
          f"{len(checkpoint.read_variable_shapes(prefix))}"
          + ("" if spec.mean_pixel else f"; no mean in a sidecar, writing the VGG mean {list(mean)}"))
    if spec.channel_order == "bgr":
        # A .mat network takes RGB: reverse conv1_1's input channels and the mean.
        kernel, bias = layers["conv1_1"]
        layers["conv1_1"] = (np.ascontiguousarray(kernel[:, :, ::-1, :]), bias)
        mean = mean[::-1].copy()
        print("the checkpoint takes BGR input; conv1_1's input channels and the mean are "
              "reversed so that the .mat takes RGB, as MatConvNet files do")
    transposed = bool(sidecar.get("kernels_transposed", True))
    matconvnet.write_vgg_mat(out, layers, mean, fc=fc, layout=layout,
                             transposed=transposed)
    written = [f"{name} {list(k.shape)}" for name, (k, _) in list(layers.items()) + list((fc or {}).items())]
    if verbose:
        print("\n".join("  " + line for line in written))
    print(f"wrote {out} ({layout} layout, {len(written)} conv layers"
          + (" incl. fc6, fc7" if fc else "") + f", mean pixel {np.round(mean, 3).tolist()})"
          + ("" if transposed else "; kernels in the checkpoint's order: read it back with "
                                   "mat2ckpt --no-transpose"))
    return 0


# -- inspect ---------------------------------------------------------------------

def detect_format(path):
    """One of "mat", "checkpoint", "keras-h5", "savedmodel", "frozen", "onnx"."""
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb",
                                                               "saved_model.pbtxt")):
            return "savedmodel"
        checkpoint.resolve_checkpoint(path)  # raises when the directory holds none
        return "checkpoint"
    if not os.path.lexists(path):
        if os.path.exists(path + ".index"):
            return "checkpoint"
        raise UserError(f"{path}: no such file, directory or checkpoint prefix")
    check_input_file(path, "a file, a checkpoint prefix or a SavedModel directory")
    with open(path, "rb") as handle:
        head = handle.read(128)
    lower = path.lower()
    if lower.endswith(".mat") or head.startswith(b"MATLAB"):
        return "mat"
    if head.startswith(kerash5.HDF5_SIGNATURE):
        return "keras-h5"
    if lower.endswith(".onnx"):
        return "onnx"
    if lower.endswith(".pb"):
        return "frozen"
    if lower.endswith((".index", ".meta")) or ".data-" in os.path.basename(lower) \
            or os.path.exists(path + ".index"):
        return "checkpoint"
    raise UserError(f"{path}: unknown format (expected a MatConvNet .mat, a checkpoint prefix "
                    "or directory, a Keras .h5, a SavedModel directory, a frozen .pb or an "
                    ".onnx file)")


def _inspect_mat(path):
    vgg = matconvnet.load_vgg_mat(path, transpose=False, backbone=None)
    shapes = OrderedDict()
    for name, (kernel, bias) in list(vgg.layers.items()) + list(vgg.fc.items()):
        shapes[name + ".weights{1}"], shapes[name + ".weights{2}"] = kernel.shape, bias.shape
    print(f"{path}: MatConvNet {vgg.backbone.upper()} .mat, {vgg.layout} layout, {len(vgg.layers)} conv layers"
          f" + {', '.join(vgg.fc) or 'no fc layers'}, mean pixel "
          f"{np.round(vgg.mean_pixel, 3).tolist()} (RGB)")
    return shapes


def _inspect_checkpoint(path):
    prefix = checkpoint.resolve_checkpoint(path)
    shapes = checkpoint.read_variable_shapes(prefix)
    sidecar = checkpoint.read_sidecar(prefix)
    model = OrderedDict(sorted((n, s) for n, s in shapes.items()
                               if n.startswith(SCOPE + "/") and n.count("/") == 1))
    state = [n for n in shapes if n not in model]
    variant = definition.detect_architecture(shapes)
    if sidecar is not None:
        spec = checkpoint.model_spec_from_checkpoint(prefix)
        kind = (f"fcn_graph checkpoint, {spec.name}, {spec.num_classes} classes, mean pixel "
                f"{list(spec.mean_pixel) if spec.mean_pixel else 'unknown'} "
                f"({spec.channel_order.upper()})")
    elif variant == ("legacy", "8s") and state:
        kind = ("FCN.tensorflow training checkpoint (no sidecar; "
                f"{len(state)} optimizer variables; convert with 'port legacy')")
    elif variant is not None:
        kind = f"{variant[0]} FCN-{variant[1]} checkpoint without a sidecar"
    else:
        kind = "TensorFlow checkpoint, not an FCN model"
        model = OrderedDict(sorted(shapes.items()))
        state = []
    print(f"{prefix}: {kind}")
    _check_every_tensor(prefix)
    if state:
        print(f"  (not listed: {len(state)} optimizer/training variables, e.g. {sorted(state)[0]})")
    return model


def _inspect_keras_h5(path):
    layers = kerash5.read_h5_layers(path)
    shapes = OrderedDict((f"{layer}/{name}", array.shape)
                         for layer, weights in layers.items() for name, array in weights)
    backbone = kerash5.h5_backbone(layers)
    print(f"{path}: Keras HDF5 weights (classic layout)"
          + (f", {backbone.upper()}" if backbone else "") + f", {len(layers)} layers with weights")
    return shapes


def _graph_constants(graph_def):
    """Name -> shape of the float constants with more than one element."""
    from tensorflow.python.framework import tensor_util

    shapes = OrderedDict()
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum:
            shape = tuple(tensor_util.TensorShapeProtoToList(node.attr["value"].tensor.tensor_shape))
            if int(np.prod(shape)) > 1:
                shapes[node.name] = shape
    return shapes


def _signature_lines(signature):
    def describe(info):
        dims = [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
        return f"{tf.dtypes.as_dtype(info.dtype).name} {dims} ({info.name})"

    lines = [f"  input  {k}: {describe(v)}" for k, v in signature.inputs.items()]
    lines += [f"  output {k}: {describe(v)}" for k, v in signature.outputs.items()]
    return lines


def _inspect_savedmodel(path):
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.exists(pb):
        raise UserError(f"{path}: only binary SavedModels (saved_model.pb) can be inspected")
    check_input_file(pb, "the SavedModel's graph, a binary protocol buffer")
    with open(pb, "rb") as handle:
        saved.ParseFromString(handle.read())
    print(f"{path}: SavedModel, {len(saved.meta_graphs)} meta graph(s)")
    for meta in saved.meta_graphs:
        print(f" tags {list(meta.meta_info_def.tags)}")
        for key, signature in meta.signature_def.items():
            if key.startswith("__"):
                continue
            print(f" signature '{key}':")
            print("\n".join(_signature_lines(signature)))
    variables = os.path.join(path, "variables", "variables")
    if os.path.exists(variables + ".index"):
        _check_every_tensor(variables)
        return OrderedDict(sorted(checkpoint.read_variable_shapes(variables).items()))
    return _graph_constants(saved.meta_graphs[0].graph_def)


def _inspect_frozen(path):
    graph_def = tf1.GraphDef()
    try:
        with open(path, "rb") as handle:
            graph_def.ParseFromString(handle.read())
    except Exception as err:  # protobuf's DecodeError and friends
        raise UserError(f"{path}: not a binary GraphDef ({type(err).__name__})") from None
    consumed = {i.split(":")[0].lstrip("^") for node in graph_def.node for i in node.input}
    inputs = [f"{n.name}:0 {tf.dtypes.as_dtype(n.attr['dtype'].type).name}"
              for n in graph_def.node if n.op == "Placeholder"]
    outputs = [f"{n.name}:0" for n in graph_def.node if n.name not in consumed and n.op != "Const"]
    variables = [n.name for n in graph_def.node if n.op in ("VariableV2", "VarHandleOp")]
    print(f"{path}: frozen GraphDef, {len(graph_def.node)} nodes; inputs "
          f"{', '.join(inputs) or 'none'}; outputs {', '.join(outputs) or 'none'}"
          + (f"; {len(variables)} variables left (not frozen)" if variables else ""))
    return _graph_constants(graph_def)


def _inspect_onnx(path):
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others
        raise UserError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None

    def describe(value):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return f"{value.name} {np.dtype(dtype).name} {dims}"

    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    producer = " ".join(v for v in (proto.producer_name, proto.producer_version)
                        if v and v != "None")
    print(f"{path}: ONNX model ({opsets}; producer {producer or 'unknown'}); "
          f"{len(proto.graph.node)} nodes")
    for value in proto.graph.input:
        print(f"  input  {describe(value)}")
    for value in proto.graph.output:
        print(f"  output {describe(value)}")
    return OrderedDict((t.name, tuple(t.dims)) for t in proto.graph.initializer
                       if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1)


def inspect(path):
    """Detect a file's format and list its variables or layers."""
    kind = detect_format(path)
    shapes = {"mat": _inspect_mat, "checkpoint": _inspect_checkpoint,
              "keras-h5": _inspect_keras_h5, "savedmodel": _inspect_savedmodel,
              "frozen": _inspect_frozen, "onnx": _inspect_onnx}[kind](path)
    _print_shapes(shapes)
    what = "constants" if kind in ("frozen", "onnx") else "arrays"
    print(f"{len(shapes)} {what}, {_parameters(shapes.values()):,} parameters")
    return 0


def _check_every_tensor(prefix):
    """Read every tensor of a checkpoint (so that damaged data files show),
    list those that cannot be read or hold NaN or infinite values, and end
    with a UserError when there are any."""
    problems = checkpoint.checkpoint_problems(prefix)
    total = len(checkpoint.read_variable_shapes(prefix))
    if not problems:
        print(f"  (read all {total} tensors: every value finite)")
        return
    for name, problem in problems:
        print(f"  {name}: {problem}")
    name, problem = problems[0]
    raise UserError(f"{prefix}: {len(problems)} of {total} tensors unusable, e.g. '{name}' "
                    f"{problem}")


# -- command line ----------------------------------------------------------------
