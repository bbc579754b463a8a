"""Export a checkpoint for serving: a SavedModel, a frozen GraphDef or ONNX.

    python -m fcn_graph.export --checkpoint ckpt/voc --format savedmodel --out export/voc
    python -m fcn_graph.export --checkpoint ckpt/voc --format frozen --out export/voc.pb
    python -m fcn_graph.export --checkpoint ckpt/voc --format onnx --out export/voc.onnx

Every format has the same contract:

    input   images  uint8   [N, H, W, 3]  RGB, any N, H, W >= 1
    output  labels  int32   [N, H, W]     argmax of scores over K
    output  scores  float32 [N, H, W, K]  the logits

The mean subtraction (and, for BGR checkpoints such as the Keras VGG19 ones,
the RGB -> BGR swap) happens inside the exported graph. In the frozen graph
the tensors are `images:0`, `labels:0` and `scores:0`; in the SavedModel they
are the inputs and outputs of the `serving_default` signature; in ONNX the
graph's input and outputs are named `images`, `labels` and `scores`, with
dynamic dimensions N, H and W.

The SavedModel is written by the TF1 `SavedModelBuilder`: the weights stay
variables (in `variables/`), the graph is the serving graph. Load it with
`tf.saved_model.load(path).signatures["serving_default"]` in TF2 or
`tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)`.

Each export is checked before it replaces the target: the written file is
loaded back (TensorFlow for SavedModel and frozen graphs, onnxruntime for
ONNX), run on a seeded random 67x93 image, and its scores compared with the
checkpoint's (`fcn_graph.infer.Segmenter`). A maximum relative error of
1e-4 or more is an error and nothing is written.
"""

import argparse
import logging
import os
import shutil
import sys
import uuid
from collections import OrderedDict

import numpy as np
import tensorflow as tf

from fcn_graph import checkpoint
from fcn_graph import model as fcn_model
from fcn_graph.errors import UserError, run_cli
from fcn_graph.fileio import atomic_write
from fcn_graph.session import session_config

tf1 = tf.compat.v1

INPUT_NAME = "images"
OUTPUT_NAMES = ("labels", "scores")
FORMATS = ("savedmodel", "frozen", "onnx")
SIGNATURE_KEY = "serving_default"
TOLERANCE = 1e-4                 # largest accepted max relative error of the scores
VERIFY_SIZE = (67, 93)           # odd sizes: every SAME-padding corner case on the way
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 24  # a GraphDef or ONNX file must stay below 2 GB


class VerificationError(UserError):
    """An export whose scores differ from the checkpoint's."""


def serving_graph(spec, *, custom_getter=None):
    """The serving graph of a `ModelSpec`: (graph, images, labels, scores).

    images: uint8 [N, H, W, 3] RGB placeholder named "images";
    labels: int32 [N, H, W] named "labels"; scores: float32 [N, H, W, K] named "scores".
    custom_getter: optional variable getter for the model's variables.
    """
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.uint8, [None, None, None, 3], name=INPUT_NAME)
        net = tf.cast(images, tf.float32)                             # [N, H, W, 3] RGB
        if custom_getter is None:
            logits, prediction, _ = fcn_model.build(net, spec)        # [N, H, W, K]
        else:
            with tf1.variable_scope(tf1.get_variable_scope(), custom_getter=custom_getter):
                logits, prediction, _ = fcn_model.build(net, spec)    # [N, H, W, K]
        scores = tf.identity(logits, name="scores")                   # [N, H, W, K]
        labels = tf.cast(prediction, tf.int32, name="labels")         # [N, H, W]
    return graph, images, labels, scores


def _weights_as_inputs(spec):
    """The serving graph with every model variable replaced by a placeholder of
    the same name and shape: (graph_def, name -> placeholder). Converting this
    graph instead of a frozen one keeps the weights out of tf2onnx, which
    copies every constant many times over (tens of GB for VGG19)."""
    weights = OrderedDict()

    def placeholder_getter(getter, name, shape=None, dtype=None, **kwargs):
        with tf1.get_default_graph().name_scope(None):
            weights[name] = tf1.placeholder(tf.float32, shape, name=name)
        return weights[name]

    graph, *_ = serving_graph(spec, custom_getter=placeholder_getter)
    return graph.as_graph_def(), weights


class _Restored:
    """A serving graph with the checkpoint's weights in a session."""

    def __init__(self, prefix):
        self.prefix = checkpoint.resolve_checkpoint(prefix)
        self.spec = checkpoint.model_spec_from_checkpoint(self.prefix)
        self.graph, self.images, self.labels, self.scores = serving_graph(self.spec)
        self.variables = fcn_model.model_variables(self.graph)
        self.session = tf1.Session(graph=self.graph, config=session_config())
        checkpoint.restore_model(self.session, self.prefix, self.variables)
        self.nbytes = sum(4 * int(np.prod(v.shape.as_list())) for v in self.variables.values())

    def frozen_graph_def(self):
        if self.nbytes > PROTOBUF_LIMIT:
            raise UserError(f"{self.prefix}: {self.nbytes / 2**30:.2f} GiB of weights; a frozen "
                            "GraphDef must stay below 2 GB (export a SavedModel instead)")
        with self.graph.as_default():
            return tf1.graph_util.convert_variables_to_constants(
                self.session, self.graph.as_graph_def(), list(OUTPUT_NAMES))

    def close(self):
        self.session.close()


def frozen_session_config(threads=None):
    """Session settings for running a frozen graph: Grappler off. Its passes
    copy every large constant several times (for VGG19, 35 s and 4 GB more
    on the first run); the graph is already final."""
    config = session_config(threads)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def verification_image(seed=0):
    """The seeded random uint8 [1, 67, 93, 3] image every export is checked on."""
    return np.random.default_rng(seed).integers(0, 256, (1,) + VERIFY_SIZE + (3,), np.uint8)


def _reference(prefix, image):
    from fcn_graph.infer import Segmenter  # the checkpoint as `infer` runs it

    segmenter = Segmenter(prefix)
    try:
        labels, scores = segmenter.run(image, scores=True)
    finally:
        segmenter.close()
    return labels, scores


def _compare(what, path, labels, scores, want_labels, want_scores):
    """Check an export's outputs against the checkpoint's; returns a report dict."""
    scores = np.asarray(scores)
    if scores.shape != want_scores.shape or np.asarray(labels).shape != want_labels.shape:
        raise VerificationError(f"{path}: {what} gave scores {list(scores.shape)} and labels "
                                f"{list(np.shape(labels))}; expected {list(want_scores.shape)} "
                                f"and {list(want_labels.shape)}")
    error = float(np.abs(scores - want_scores).max() / max(np.abs(want_scores).max(), 1e-30))
    agree = float(np.mean(np.asarray(labels) == want_labels))
    height, width = want_labels.shape[1:3]
    print(f"verified with {what} on a {width}x{height} image: max relative error of scores "
          f"{error:.2e} (limit {TOLERANCE:g}), labels agree on {agree:.2%} of pixels")
    if not error < TOLERANCE:
        raise VerificationError(f"{path}: scores differ from the checkpoint's (max relative "
                                f"error {error:.3g} >= {TOLERANCE:g}); nothing written")
    return {"max_rel_error": error, "labels_agree": agree}


def _report(prefix, spec, fmt, path, **extra):
    report = {
        "format": fmt, "path": path, "checkpoint": prefix,
        "inputs": {INPUT_NAME: "uint8 [N, H, W, 3] RGB"},
        "outputs": {"labels": "int32 [N, H, W]", "scores": f"float32 [N, H, W, {spec.num_classes}]"},
        "num_classes": spec.num_classes, "architecture": spec.architecture, "skips": spec.skips,
        "channel_order": spec.channel_order,
        "mean_pixel": list(spec.mean_pixel) if spec.mean_pixel else None,
        "max_rel_error": None, "labels_agree": None,
    }
    report.update(extra)
    return report


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
                   for f in files)
    return os.path.getsize(path)


def _check_target(out_path):
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise UserError(f"{out_path}: cannot write; directory {directory!r} does not exist "
                        "(create it first)")


def export_frozen(prefix, out_path, *, verify=True):
    """Write a frozen GraphDef (`.pb`, weights as constants) with tensors
    images:0, labels:0 and scores:0. Returns a report dict."""
    _check_target(out_path)
    restored = _Restored(prefix)
    try:
        graph_def = restored.frozen_graph_def()
        report = _report(restored.prefix, restored.spec, "frozen", out_path,
                         tensors={"images": "images:0", "labels": "labels:0",
                                  "scores": "scores:0"})
    finally:
        restored.close()
    with atomic_write(out_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(graph_def.SerializeToString())
        if verify:
            image = verification_image()
            want = _reference(report["checkpoint"], image)
            loaded = tf1.GraphDef()
            with open(tmp, "rb") as handle:
                loaded.ParseFromString(handle.read())
            graph = tf.Graph()
            with graph.as_default():
                tf.import_graph_def(loaded, name="")
            with tf1.Session(graph=graph, config=frozen_session_config()) as sess:
                labels, scores = sess.run(["labels:0", "scores:0"], {"images:0": image})
            report.update(_compare("TensorFlow (frozen graph)", out_path, labels, scores, *want))
    report["bytes"] = _size(out_path)
    return report


def export_savedmodel(prefix, out_dir, *, verify=True):
    """Write a SavedModel directory (tag "serve", signature "serving_default":
    images -> labels, scores). Returns a report dict."""
    _check_target(out_dir)
    if os.path.exists(out_dir) and not os.path.exists(os.path.join(out_dir, "saved_model.pb")):
        raise UserError(f"{out_dir}: exists and is not a SavedModel; refusing to replace it")
    parent, base = os.path.split(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    restored = _Restored(prefix)
    try:
        report = _report(restored.prefix, restored.spec, "savedmodel", out_dir, signature=SIGNATURE_KEY,
                         tags=[tf1.saved_model.tag_constants.SERVING])
        with restored.graph.as_default():
            signature = tf1.saved_model.signature_def_utils.predict_signature_def(
                inputs={INPUT_NAME: restored.images},
                outputs={"labels": restored.labels, "scores": restored.scores})
            builder = tf1.saved_model.Builder(tmp)
            builder.add_meta_graph_and_variables(
                restored.session, [tf1.saved_model.tag_constants.SERVING],
                signature_def_map={SIGNATURE_KEY: signature}, strip_default_attrs=True)
            builder.save()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        restored.close()
    try:
        if verify:
            image = verification_image()
            want = _reference(report["checkpoint"], image)
            serve = tf.saved_model.load(tmp).signatures[SIGNATURE_KEY]
            out = serve(**{INPUT_NAME: tf.constant(image)})
            report.update(_compare("TensorFlow (SavedModel signature)", out_dir,
                                   out["labels"].numpy(), out["scores"].numpy(), *want))
        # Swap the new directory in: rename the old one aside, then drop it.
        old = None
        if os.path.exists(out_dir):
            old = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.old")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["bytes"] = _size(out_dir)
    return report


def _attach_weights(proto, values):
    """Turn the graph inputs named after model variables ("inference/W6:0") into
    initializers holding the checkpoint's arrays, fold the Transposes tf2onnx
    put on them (HWIO -> OIHW kernels), and drop initializers nothing reads
    (the legacy conv5_4)."""
    from onnx import numpy_helper

    graph = proto.graph
    arrays = {}
    for value in list(graph.input):
        name = value.name[:-2] if value.name.endswith(":0") else value.name
        if name in values:
            arrays[value.name] = values[name]
            graph.input.remove(value)
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for node in list(graph.node):
        if node.op_type == "Transpose" and node.input[0] in arrays \
                and readers[node.input[0]] == 1:
            (perm,) = [list(a.ints) for a in node.attribute if a.name == "perm"] or [None]
            arrays[node.output[0]] = np.ascontiguousarray(
                np.transpose(arrays.pop(node.input[0]), perm))
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for name in list(arrays):
        if name in used:
            graph.initializer.append(numpy_helper.from_array(arrays.pop(name), name))
        else:
            del arrays[name]


def _name_onnx_io(proto):
    """tf2onnx names the graph's inputs/outputs after TF tensors ("images:0");
    rename them to images/labels/scores and name the dynamic dimensions."""
    renames = {f"{name}:0": name for name in (INPUT_NAME,) + OUTPUT_NAMES}
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
        for dim, label in zip(value.type.tensor_type.shape.dim, ("N", "H", "W")):
            if not dim.HasField("dim_value"):
                dim.dim_param = label


def export_onnx(prefix, out_path, *, opset=17, verify=True):
    """Write an ONNX model: input `images` uint8 [N, H, W, 3] RGB, outputs
    `labels` int32 [N, H, W] and `scores` float32 [N, H, W, K], N, H and W
    dynamic. tf2onnx converts the serving graph with the weights as inputs;
    the checkpoint's arrays then become the model's initializers. Verified
    with onnxruntime before it replaces `out_path` (unless verify=False).

    Returns a dict: format, path, checkpoint, inputs, outputs, num_classes,
    architecture, skips, channel_order, mean_pixel, opset, max_rel_error and
    labels_agree (None without verification), bytes.
    """
    if opset < 13:
        raise UserError(f"--opset {opset}: expected 13 or later")
    _check_target(out_path)
    try:
        import onnx
        import tf2onnx
    except ImportError as err:
        raise UserError(f"--format onnx needs tf2onnx and onnx ({err}); install them with "
                        "pip install -e '.[export]'") from None

    prefix = checkpoint.resolve_checkpoint(prefix)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    graph_def, weights = _weights_as_inputs(spec)
    stored = checkpoint.read_variable_shapes(prefix)
    for name, placeholder in weights.items():
        if stored.get(name) != tuple(placeholder.shape.as_list()):
            raise UserError(f"{prefix}: variable {name} is {stored.get(name, 'missing')}, "
                            f"expected {placeholder.shape.as_list()}")
    proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=[f"{INPUT_NAME}:0"] + [f"{name}:0" for name in weights],
        output_names=[f"{name}:0" for name in OUTPUT_NAMES], opset=opset)
    _attach_weights(proto, checkpoint.read_variables(prefix, list(weights)))
    _name_onnx_io(proto)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise UserError(f"{out_path}: the ONNX model would be {proto.ByteSize() / 2**30:.2f} GiB; "
                        "a single ONNX file must stay below 2 GB")
    report = _report(prefix, spec, "onnx", out_path, opset=opset)
    with atomic_write(out_path) as tmp:
        onnx.save(proto, tmp)
        del proto
        if verify:
            import onnxruntime

            image = verification_image()
            want = _reference(prefix, image)
            session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            labels, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
            del session
            report.update(_compare("onnxruntime", out_path, labels, scores, *want))
    report["bytes"] = _size(out_path)
    return report


EXPORTERS = {"savedmodel": export_savedmodel, "frozen": export_frozen, "onnx": export_onnx}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint prefix, one of its files, or a directory (its latest)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True,
                        help="SavedModel directory, or the .pb / .onnx file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, >= 13)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back and comparing its scores")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opset != 17 and args.format != "onnx":
        parser.error("--opset applies to --format onnx only")
    # TF1 deprecation notices and tf2onnx's progress log are noise on this command line.
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    prefix = checkpoint.resolve_checkpoint(args.checkpoint)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    print(f"read {prefix}: {spec.name}, {spec.num_classes} classes, "
          f"{spec.channel_order.upper()} weights, mean pixel "
          f"{[round(v, 3) for v in spec.mean_pixel] if spec.mean_pixel else 'unknown (the VGG mean is used)'} "
          "(subtracted inside the graph)", flush=True)
    kwargs = {"opset": args.opset} if args.format == "onnx" else {}
    report = EXPORTERS[args.format](prefix, args.out, verify=not args.no_verify, **kwargs)
    names = report.get("tensors") or {INPUT_NAME: INPUT_NAME, **{n: n for n in OUTPUT_NAMES}}
    if args.format == "savedmodel":
        where = f"signature '{SIGNATURE_KEY}', tag 'serve': "
    elif args.format == "onnx":
        where = f"opset {report['opset']}: "
    else:
        where = ""
    print(f"wrote {report['path']} ({report['bytes'] / 2**20:.1f} MiB), {where}"
          f"input {names[INPUT_NAME]} {report['inputs'][INPUT_NAME]}; outputs "
          + ", ".join(f"{names[n]} {report['outputs'][n]}" for n in OUTPUT_NAMES))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.export"))
