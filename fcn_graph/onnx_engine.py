"""ONNX Runtime inference for FCN-8s checkpoints.

`build_onnx_model(prefix)` writes the legacy graph as an ONNX model directly
from the checkpoint's arrays (no TensorFlow graph conversion): NCHW `Conv`s
that ONNX Runtime pre-packs once (conv6 as im2col + a 1x1 Conv), average pools
that skip padded cells, and the three transposed convolutions in the same
phase form as `model.upsample` (one dense `Conv` yielding all stride x stride
phases, `DepthToSpace`, a crop computed from the run-time shapes), so any
input size works.

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
        """Stride-1 conv; kernel [kh, kw, Cin, Cout] (TF layout) -> ONNX OIHW."""
        k = kernel_hwio.shape[0]
        pads = [(k - 1) // 2, (k - 1) // 2, k // 2, k // 2] if pad == "same" else [0, 0, 0, 0]
        w = self.const(hint + "_w", np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1)))
        b = self.const(hint + "_b", bias.astype(np.float32))
        return self.op("Conv", [net, w, b], hint, kernel_shape=[k, k], pads=pads)

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
        """`model.upsample` in NCHW: output height and width those of `like`."""
        k = kernel.shape[0]
        taps = -(-k // stride)
        padded = self.op("Pad", [net, self.const("pads", np.array(
            [0, 0, taps - 1, taps - 1, 0, 0, taps - 1, taps - 1], np.int64))], hint + "_pad")
        net = self.conv(padded, _phase_kernel(kernel, stride), np.tile(bias, stride * stride),
                        hint, pad="valid")                     # [N, s*s*C', h+T-1, w+T-1]
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


def build_onnx_model(prefix, *, opset=DEFAULT_OPSET, mean_pixel=None, conv6_im2col=True):
    """The legacy FCN-8s of checkpoint `prefix` as an `onnx.ModelProto`
    (weights inside the model, float32). The mean pixel is the sidecar's, else
    `mean_pixel`, else the VGG mean (as in `model.build`). `conv6_im2col`
    writes the 7x7 conv6 as im2col + a 1x1 Conv (one pre-packed GEMM; 0-5 %
    faster overall in ONNX Runtime than its 7x7 Conv) instead of one Conv."""
    from fcn_graph import checkpoint
    from fcn_graph import model as fcn_model
    spec = checkpoint.model_spec_from_checkpoint(prefix)
    if spec.architecture != "legacy":
        raise UserError(f"{prefix}: architecture {spec.architecture!r} has no ONNX builder "
                        "(expected 'legacy')")
    scope = fcn_model.SCOPE
    arrays = {name.split("/", 1)[1]: value for name, value in
              checkpoint.read_variables(prefix, [f"{scope}/{n}" for n in fcn_model.variable_shapes(
                  spec.num_classes, vgg_widths=spec.widths, fc_width=spec.fc_width)]).items()}
    mean = np.asarray(spec.mean_pixel or mean_pixel or VGG_MEAN_RGB, np.float32)
    b = _Builder()
    helper, onnx = b.helper, b.onnx

    net = b.op("Cast", ["images"], "float", to=onnx.TensorProto.FLOAT)    # [N, H, W, 3]
    if spec.channel_order == "bgr":
        # the mean pixel is already in the model's channel order
        net = b.op("Gather", [net, b.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=3)
    net = b.op("Sub", [net, b.const("mean_pixel", mean)], "centred")
    net = nchw = b.op("Transpose", [net], "nchw", perm=[0, 3, 1, 2])       # [N, 3, H, W]
    points = {}
    for name, kind in fcn_model.VGG19_BODY:
        if name == "conv5_4":  # built by the legacy graph, feeds nothing
            break
        if kind == "conv":
            net = points[name] = b.conv(net, arrays[name + "_w"], arrays[name + "_b"], name)
        elif kind == "relu":
            net = b.op("Relu", [net], name)
        else:
            net = points[name] = b.op("AveragePool", [net], name, kernel_shape=[2, 2],
                                      strides=[2, 2], auto_pad="SAME_UPPER", count_include_pad=0)
    net = b.op("MaxPool", [points["conv5_3"]], "pool5", kernel_shape=[2, 2], strides=[2, 2],
               auto_pad="SAME_UPPER")                                       # [N, C5, H/32, W/32]
    conv6 = b.conv_im2col if conv6_im2col else b.conv
    net = b.op("Relu", [conv6(net, arrays["W6"], arrays["b6"], "conv6")], "relu6")
    net = b.op("Relu", [b.conv(net, arrays["W7"], arrays["b7"], "conv7")], "relu7")
    net = b.conv(net, arrays["W8"], arrays["b8"], "conv8")                  # [N, K, H/32, W/32]
    net = b.upsample(net, arrays["W_t1"], arrays["b_t1"], points["pool4"], 2, "conv_t1")
    net = b.op("Add", [net, points["pool4"]], "fuse_1")                      # [N, C4, H/16, W/16]
    net = b.upsample(net, arrays["W_t2"], arrays["b_t2"], points["pool3"], 2, "conv_t2")
    net = b.op("Add", [net, points["pool3"]], "fuse_2")                      # [N, C3, H/8, W/8]
    logits = b.upsample(net, arrays["W_t3"], arrays["b_t3"], nchw, 8, "conv_t3")
    b.op("ArgMax", [logits], outputs=["labels"], axis=1, keepdims=0)        # [N, H, W]
    b.op("Transpose", [logits], outputs=["scores"], perm=[0, 2, 3, 1])      # [N, H, W, K]

    k = spec.num_classes
    graph = helper.make_graph(
        b.nodes, "fcn8s_legacy",
        [helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, ["N", "H", "W"]),
         helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", "H", "W", k])],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fcn_graph")
    model.ir_version = min(model.ir_version, 8)  # readable by older runtimes too
    return model


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


class OnnxSegmenter:
    """ONNX Runtime twin of `infer.Segmenter`.

    path_or_prefix: a `.onnx` file with the interface above, or a checkpoint
    prefix (or directory), converted with `build_onnx_model` on the fly
    (`mean_pixel` applies to checkpoints without a sidecar, as in `Segmenter`).
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
            self.session = ort.InferenceSession(str(path_or_prefix), sess_options=options,
                                                providers=providers)
        else:
            # Through a temporary file, so that neither the ModelProto nor its
            # serialised bytes (0.5 GB each at full size) stay alive beside the
            # session's own copy of the weights.
            from fcn_graph import checkpoint
            prefix = checkpoint.resolve_checkpoint(str(path_or_prefix))
            with tempfile.TemporaryDirectory(prefix="fcn_onnx_") as work:
                path = os.path.join(work, "model.onnx")
                model = build_onnx_model(prefix, mean_pixel=mean_pixel)
                with open(path, "wb") as handle:
                    handle.write(model.SerializeToString())
                del model
                self.session = ort.InferenceSession(path, sess_options=options,
                                                    providers=providers)
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
