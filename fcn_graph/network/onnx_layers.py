"""The FCN's layer operations written as ONNX nodes (`OnnxLayers`), for
`onnx_engine.onnx_model`, which runs `definition.network` with them.

NCHW throughout: `Conv`s that ONNX Runtime pre-packs once, 2x2 pools with
TF's SAME padding (average pools that skip padded cells), and the upsampling
in one of two forms, by kernel set: "reference", a `ConvTranspose` and the
SAME crop; "cpu", the phase form of `cpu_layers.upsample_by_phases` (one
dense `Conv` yielding all stride x stride phases, `DepthToSpace`, the crop),
with conv6 as im2col + a 1x1 `Conv`. Crops are computed from the run-time
shapes, so any input size works.
"""

import numpy as np

from fcn_graph.network import definition


def _phase_kernel(kernel, stride):
    """NumPy twin of `cpu_layers.phase_kernel`: [k, k, C', Cin] -> [T, T, Cin, s*s*C']."""
    k, _, c_out, c_in = kernel.shape
    taps = -(-k // stride)
    extra = taps * stride - k
    kernel = np.pad(kernel, [(0, extra), (0, extra), (0, 0), (0, 0)])
    kernel = kernel.reshape(taps, stride, taps, stride, c_out, c_in)[::-1, :, ::-1]
    kernel = kernel.transpose(0, 2, 5, 1, 3, 4)
    return kernel.reshape(taps, taps, c_in, stride * stride * c_out)


class Builder:
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
        """`tf_layers.upsample` in NCHW (plus `bias` unless it is None): output height
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


    def upsample_transposed(self, net, kernel, bias, like, stride, hint):
        """`tf_layers.upsample` in NCHW as a ConvTranspose (the reference form): the
        full (h - 1) * s + k rows, then the SAME crop to the height and width of
        `like`, start ((h - 1) * s + k - H) // 2. Needs k >= s (every FCN head)."""
        k = kernel.shape[0]
        assert k >= stride, (k, stride)
        inputs = [net, self.const(hint + "_w", np.ascontiguousarray(
            kernel.transpose(3, 2, 0, 1)))]                    # [Cin, C', k, k]
        if bias is not None:
            inputs.append(self.const(hint + "_b", bias.astype(np.float32)))
        full = self.op("ConvTranspose", inputs, hint + "_full", kernel_shape=[k, k],
                       strides=[stride, stride])               # [N, C', (h-1)*s+k, (w-1)*s+k]
        starts = []
        for axis in (2, 3):
            excess = self.op("Sub", [self.dim(full, axis), self.dim(like, axis)])
            starts.append(self.op("Div", [excess, self.const("two", np.array([2], np.int64))]))
        start = self.op("Concat", starts, "start", axis=0)
        size = self.op("Concat", [self.dim(like, 2), self.dim(like, 3)], "size", axis=0)
        end = self.op("Add", [start, size], "end")
        return self.op("Slice", [full, start, end, self.const("axes", np.array([2, 3], np.int64))],
                       hint)


class OnnxLayers(definition.Layers):
    """`definition.Layers` writing ONNX nodes (NCHW) through a `Builder`, the weights
    taken from `weights` (name -> array, popped as the network reads them).
    A tensor is its ONNX name; `kernels` "cpu" writes conv6 as im2col + a 1x1
    Conv and every upsampling in the phase form, "reference" writes Conv and
    ConvTranspose."""

    def __init__(self, builder, weights, kernels):
        super().__init__()
        self.b, self.weights, self.kernels = builder, weights, kernels
        self._channels = {}

    def variable(self, name, shape, init, trainable):
        value = self.weights.pop(name)
        assert value.shape == tuple(shape), (name, value.shape, shape)
        return value

    def channels(self, net):
        return self._channels[net]

    def _out(self, net, channels):
        self._channels[net] = channels
        return net

    def _centre(self, net, mean_pixel):
        net = self.b.op("Sub", [net, self.b.const("mean_pixel", np.asarray(
            mean_pixel, np.float32))], "centred")                        # [N, H, W, 3]
        return self._out(self.b.op("Transpose", [net], "nchw", perm=[0, 3, 1, 2]), 3)

    def _conv(self, net, kernel, bias, name):
        return self._out(self.b.conv(net, kernel, bias, name), kernel.shape[3])

    def _fc(self, net, kernel, bias, name):
        if self.kernels == "cpu" and kernel.shape[0] > 1:
            return self._out(self.b.conv_im2col(net, kernel, bias, name), kernel.shape[3])
        return self._conv(net, kernel, bias, name)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        form = self.b.upsample if self.kernels == "cpu" else self.b.upsample_transposed
        return self._out(form(net, kernel, bias, like, stride, name), channels)

    def _relu(self, net, name):
        return self._out(self.b.op("Relu", [net], name), self.channels(net))

    def _pool(self, net, method, name):
        return self._out(self.b.pool2x2(net, method, name), self.channels(net))

    def _add(self, a, b, name):
        return self._out(self.b.op("Add", [a, b], name), self.channels(a))
