"""ONNX models of FCN checkpoints, and ONNX Runtime inference.

`build_onnx_model(prefix)` writes the network `model.fcn` builds for the
checkpoint (the legacy FCN-8s, or the paper's FCN-32s/16s/8s; see
`model.ModelSpec`) as an ONNX model directly from the checkpoint's arrays (no
TensorFlow graph conversion): NCHW `Conv`s that ONNX Runtime pre-packs once
(conv6 as im2col + a 1x1 Conv), 2x2 pools with TF's SAME padding (average
pools that skip padded cells), and every transposed convolution in the same
phase form as `model.upsample` (one dense `Conv` yielding all stride x stride
phases, `DepthToSpace`, a crop computed from the run-time shapes), so any
input size works. It is the project's one ONNX path: `fcn_graph.export
--format onnx` writes this model (`save_model`, optionally with the weights
in a `.data` file beside it) and `OnnxSegmenter` runs it.

    input  images  uint8   [N, H, W, 3]  RGB (the checkpoint's channel order
                                         is handled inside the model)
    output labels  int64   [N, H, W]     argmax over the classes
    output scores  float32 [N, H, W, K]  logits

`OnnxSegmenter(path_or_prefix)` runs such a model (a `.onnx` file, or a
checkpoint prefix or directory converted on the fly) with the same
`.run(batch, scores=False) -> (labels, scores)` as `infer.Segmenter`.
"""

import os
import tempfile

import numpy as np

from fcn_graph.constants import VGG_MEAN_RGB
from fcn_graph.errors import UserError

# TensorFlow is imported only to read checkpoints (build_onnx_model): running
# a `.onnx` file does not load it, which saves ~0.55 GB of resident memory.

DEFAULT_OPSET = 17
MIN_OPSET = 13                   # the oldest opset accepted (and tested)
EXTERNAL_DATA_SUFFIX = ".data"   # model.onnx -> model.onnx.data


def _phase_kernel(kernel, stride):
    """NumPy twin of `model.phase_kernel`: [k, k, C', Cin] -> [T, T, Cin, s*s*C']."""
    k, _, c_out, c_in = kernel.shape
    taps = -(-k // stride)
    extra = taps * stride - k
    kernel = np.pad(kernel, [(0, extra), (0, extra), (0, 0), (0, 0)])
    kernel = kernel.reshape(taps, stride, taps, stride, c_out, c_in)[::-1, :, ::-1]
    kernel = kernel.transpose(0, 2, 5, 1, 3, 4)
    return kernel.reshape(taps, taps, c_in, stride * stride * c_out)


class _Builder:
    """Collects ONNX nodes and initializers with unique names."""

    def __init__(self):
        import onnx  # imported here: only this engine needs it
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes, self.initializers = [], []
        self.count = 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, hint=None, outputs=None, **attrs):
        outputs = outputs or [self.name(hint or op_type.lower())]
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs,
                                                name=self.name(op_type), **attrs))
        return outputs[0]

    def conv(self, net, kernel_hwio, bias, hint, *, pad="same"):
        """Stride-1 conv (plus `bias` unless it is None); kernel [kh, kw, Cin, Cout]
        (TF layout) -> ONNX OIHW."""
        k = kernel_hwio.shape[0]
        pads = [(k - 1) // 2, (k - 1) // 2, k // 2, k // 2] if pad == "same" else [0, 0, 0, 0]
        kernel = np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1))  # [Cout, Cin, kh, kw]
        inputs = [net, self.const(hint + "_w", kernel)]
        if bias is not None:
            inputs.append(self.const(hint + "_b", bias.astype(np.float32)))
        return self.op("Conv", inputs, hint, kernel_shape=[k, k], pads=pads)

    def pool2x2(self, net, method, hint):
        """`model.pool2x2` in NCHW: 2x2 stride-2 SAME max or average pooling, the
        padding at the bottom/right; the average counts real cells only."""
        op_type, attrs = ("AveragePool", {"count_include_pad": 0}) if method == "avg" else \
            ("MaxPool", {})
        return self.op(op_type, [net], hint, kernel_shape=[2, 2], strides=[2, 2],
                       auto_pad="SAME_UPPER", **attrs)

    def conv_im2col(self, net, kernel_hwio, bias, hint):
        """Stride-1 SAME k x k conv as im2col (k*k shifted slices, concatenated
        over channels) and one 1x1 conv: a single GEMM with pre-packed weights."""
        k, _, c_in, c_out = kernel_hwio.shape
        half = (k - 1) // 2
        padded = self.op("Pad", [net, self.const("pads", np.array(
            [0, 0, half, half, 0, 0, k - 1 - half, k - 1 - half], np.int64))], hint + "_pad")
        height, width = self.dim(net, 2), self.dim(net, 3)
        columns = []
        for dy in range(k):
            for dx in range(k):
                start = self.const("start", np.array([dy, dx], np.int64))
                end = self.op("Concat", [self.op("Add", [height, self.const(
                    "dy", np.array([dy], np.int64))]), self.op("Add", [width, self.const(
                        "dx", np.array([dx], np.int64))])], axis=0)
                columns.append(self.op("Slice", [padded, start, end, self.const(
                    "axes", np.array([2, 3], np.int64))], hint + "_tap"))
        net = self.op("Concat", columns, hint + "_columns", axis=1)   # [N, k*k*Cin, H, W]
        kernel = kernel_hwio.reshape(1, 1, k * k * c_in, c_out)    # (dy, dx, c) order
        return self.conv(net, kernel, bias, hint)

    def dim(self, tensor, axis):
        """A 1-element int64 tensor: tensor.shape[axis]."""
        shape = self.op("Shape", [tensor], "shape")
        return self.op("Gather", [shape, self.const("axis", np.array([axis], np.int64))], "dim",
                       axis=0)

    def upsample(self, net, kernel, bias, like, stride, hint):
        """`model.upsample` in NCHW (plus `bias` unless it is None): output height
        and width those of `like`."""
        k = kernel.shape[0]
        taps = -(-k // stride)
        padded = self.op("Pad", [net, self.const("pads", np.array(
            [0, 0, taps - 1, taps - 1, 0, 0, taps - 1, taps - 1], np.int64))], hint + "_pad")
        bias = None if bias is None else np.tile(bias, stride * stride)
        net = self.conv(padded, _phase_kernel(kernel, stride), bias, hint,
                        pad="valid")                     # [N, s*s*C', h+T-1, w+T-1]
        in_h, in_w = self.dim(padded, 2), self.dim(padded, 3)  # h + 2(T-1), w + 2(T-1)
        net = self.op("DepthToSpace", [net], hint + "_d2s", blocksize=stride, mode="DCR")
        out_h, out_w = self.dim(like, 2), self.dim(like, 3)
        # SAME crop: top = ((h - 1) * s + k - H) // 2, with h = padded - 2(T-1)
        starts = []
        for padded_size, out_size in ((in_h, out_h), (in_w, out_w)):
            full = self.op("Add", [self.op("Mul", [padded_size, self.const(
                "s", np.array([stride], np.int64))]), self.const("c", np.array(
                    [k - stride - 2 * (taps - 1) * stride], np.int64))])
            starts.append(self.op("Div", [self.op("Max", [self.op("Sub", [full, out_size]),
                                                          self.const("zero", np.zeros(1, np.int64))]),
                                          self.const("two", np.array([2], np.int64))]))
        start = self.op("Concat", starts, "start", axis=0)
        end = self.op("Add", [start, self.op("Concat", [out_h, out_w], "size", axis=0)], "end")
        return self.op("Slice", [net, start, end, self.const("axes", np.array([2, 3], np.int64))],
                       hint)


def check_opset(opset):
    """Raise a UserError unless `opset` is one `build_onnx_model` can write."""
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset}: expected {MIN_OPSET} or later, up to {newest} "
                        f"(the newest this onnx {onnx.__version__} knows)")


def _read_weights(prefix, spec):
    """Checkpoint name (without scope) -> array for every variable of `spec`'s
    model, each shape checked against `model.variable_shapes`."""
    from fcn_graph import checkpoint
    from fcn_graph import model as fcn_model
    expected = fcn_model.variable_shapes(spec.num_classes, vgg_widths=spec.widths,
                                         fc_width=spec.fc_width, architecture=spec.architecture,
                                         skips=spec.skips)
    stored = checkpoint.read_variable_shapes(prefix)
    scope = fcn_model.SCOPE
    wrong = [f"{scope}/{name} is {list(stored[f'{scope}/{name}'])}, expected {list(shape)}"
             if f"{scope}/{name}" in stored else f"{scope}/{name} is missing"
             for name, shape in expected.items() if stored.get(f"{scope}/{name}") != shape]
    if wrong:
        raise UserError(f"{prefix}: not a complete {spec.name} checkpoint: " + "; ".join(wrong[:4])
                        + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""))
    values = checkpoint.read_variables(prefix, [f"{scope}/{name}" for name in expected])
    return {name.split("/", 1)[1]: value for name, value in values.items()}


def build_onnx_model(prefix, *, opset=DEFAULT_OPSET, mean_pixel=None, conv6_im2col=True):
    """The FCN of checkpoint `prefix`, whatever `model.fcn` builds from it (legacy
    FCN-8s, or the paper's FCN-32s/16s/8s), as an `onnx.ModelProto` with the
    weights inside (float32), the interface in the module docstring.

    The mean pixel is the sidecar's, else `mean_pixel`, else the VGG mean (as in
    `model.build`). `conv6_im2col` writes the 7x7 conv6 as im2col + a 1x1 Conv
    (one pre-packed GEMM; 0-5 % faster overall in ONNX Runtime than its 7x7
    Conv) instead of one Conv. `opset` 13 or later.
    """
    from fcn_graph import checkpoint
    from fcn_graph import model as fcn_model
    check_opset(opset)
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    weights = _read_weights(prefix, spec)
    mean = np.asarray(spec.mean_pixel or mean_pixel or VGG_MEAN_RGB, np.float32)
    b = _Builder()
    helper, onnx = b.helper, b.onnx

    net = b.op("Cast", ["images"], "float", to=onnx.TensorProto.FLOAT)    # [N, H, W, 3]
    if spec.channel_order == "bgr":
        # the mean pixel is already in the model's channel order
        net = b.op("Gather", [net, b.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=3)
    net = b.op("Sub", [net, b.const("mean_pixel", mean)], "centred")
    net = images = b.op("Transpose", [net], "nchw", perm=[0, 3, 1, 2])    # [N, 3, H, W]

    legacy = spec.architecture == "legacy"
    points = {}
    for name, kind in fcn_model.VGG19_BODY:
        if legacy and name == "conv5_4":  # the legacy graph builds it, nothing reads it
            break
        if kind == "conv":
            net = b.conv(net, weights.pop(name + "_w"), weights.pop(name + "_b"), name)
        elif kind == "relu":
            net = b.op("Relu", [net], name)
        else:
            net = b.pool2x2(net, "avg" if legacy else "max", name)
        points[name] = net                                                 # pool_k: [N, C, H/2^k, W/2^k]
    head = _legacy_head if legacy else _paper_head
    conv6 = b.conv_im2col if conv6_im2col else b.conv
    logits = head(b, points, weights, images, conv6, spec.skips)           # [N, K, H, W]
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


def _conv6_conv7(b, net, weights, conv6):
    """fc6 (7x7) and fc7 (1x1) with their ReLUs: [N, C5, h, w] -> [N, F, h, w]."""
    net = b.op("Relu", [conv6(net, weights.pop("W6"), weights.pop("b6"), "conv6")], "relu6")
    return b.op("Relu", [b.conv(net, weights.pop("W7"), weights.pop("b7"), "conv7")], "relu7")


def _legacy_head(b, points, weights, images, conv6, skips):
    """`model._legacy_head` in NCHW: logits [N, K, H, W] (`images` gives H, W)."""
    assert skips == "8s", skips
    net = b.pool2x2(points["conv5_3"], "max", "pool5")                     # [N, C5, H/32, W/32]
    net = _conv6_conv7(b, net, weights, conv6)                              # [N, F, H/32, W/32]
    net = b.conv(net, weights.pop("W8"), weights.pop("b8"), "conv8")        # [N, K, H/32, W/32]
    net = b.upsample(net, weights.pop("W_t1"), weights.pop("b_t1"), points["pool4"], 2,
                     "conv_t1")                                             # [N, C4, H/16, W/16]
    net = b.op("Add", [net, points["pool4"]], "fuse_1")
    net = b.upsample(net, weights.pop("W_t2"), weights.pop("b_t2"), points["pool3"], 2,
                     "conv_t2")                                             # [N, C3, H/8, W/8]
    net = b.op("Add", [net, points["pool3"]], "fuse_2")
    return b.upsample(net, weights.pop("W_t3"), weights.pop("b_t3"), images, 8,
                      "conv_t3")                                            # [N, K, H, W]


def _paper_head(b, points, weights, images, conv6, skips):
    """`model._paper_head` in NCHW (FCN-32s/16s/8s by `skips`): logits [N, K, H, W].

    As in the TF graph, every upsampling is bilinear-initialised but read from
    the checkpoint, has no bias, and is cropped by the SAME rule to the shape of
    what it is fused with; the skips are not scaled.
    """
    def score(net, name):                                                   # 1x1 conv to K
        return b.conv(net, weights.pop(name + "_w"), weights.pop(name + "_b"), name)

    def upsample(net, name, like, stride):
        return b.upsample(net, weights.pop(name + "_w"), None, like, stride, name)

    net = b.pool2x2(points["relu5_4"], "max", "pool5")                     # [N, C5, H/32, W/32]
    net = _conv6_conv7(b, net, weights, conv6)                              # [N, F, H/32, W/32]
    net = score(net, "score_fr")                                            # [N, K, H/32, W/32]
    if skips == "32s":
        return upsample(net, "upscore32", images, 32)                       # [N, K, H, W]

    net = upsample(net, "upscore2", points["pool4"], 2)                     # [N, K, H/16, W/16]
    net = b.op("Add", [net, score(points["pool4"], "score_pool4")], "fuse_pool4")
    if skips == "16s":
        return upsample(net, "upscore16", images, 16)                       # [N, K, H, W]

    net = upsample(net, "upscore_pool4", points["pool3"], 2)                # [N, K, H/8, W/8]
    net = b.op("Add", [net, score(points["pool3"], "score_pool3")], "fuse_pool3")
    return upsample(net, "upscore8", images, 8)                             # [N, K, H, W]


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


class OnnxSegmenter:
    """ONNX Runtime twin of `infer.Segmenter`.

    path_or_prefix: a `.onnx` file with the interface above (its external
    data, if any, beside it), or a checkpoint prefix (or directory), converted
    with `build_onnx_model` on the fly (`mean_pixel` applies to checkpoints
    without a sidecar, as in `Segmenter`).
    """

    def __init__(self, path_or_prefix, *, threads=None, mean_pixel=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("--engine onnxruntime: the onnxruntime package is not installed "
                            "(pip install onnxruntime)") from None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        options = session_options(threads)
        if str(path_or_prefix).endswith(".onnx"):
            if not os.path.isfile(path_or_prefix):
                raise UserError(f"{path_or_prefix}: no such ONNX file")
            self.session = load_session(str(path_or_prefix), options, providers)
        else:
            # Through temporary files, so that neither the ModelProto nor its
            # serialised bytes (0.5 GB each at full size) stay alive beside the
            # session's own copy of the weights; the weights as external data,
            # which ONNX Runtime loads with a lower peak (docs/performance.md).
            from fcn_graph import checkpoint
            prefix = checkpoint.resolve_checkpoint(str(path_or_prefix))
            with tempfile.TemporaryDirectory(prefix="fcn_onnx_") as work:
                path = os.path.join(work, "model.onnx")
                save_model(build_onnx_model(prefix, mean_pixel=mean_pixel), path,
                           external_data=True)
                self.session = load_session(path, options, providers)
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
