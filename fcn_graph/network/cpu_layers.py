"""CPU forms of the FCN's heaviest layers.

The network (`definition.network`) is written once; `tf_layers.TFLayers`
computes it with the plain TensorFlow ops (the "reference" kernels: one
cuBLAS/cuDNN call per layer on a GPU). `CpuLayers` computes the same layers,
to float rounding, in forms that TensorFlow's CPU kernels run faster
(docs/performance.md):

- conv6 and conv7 (`dense_conv2d`): im2col, then the matrix product in blocks
  of `MATMUL_ROW_BLOCK` rows, one after another (`matmul_in_row_blocks`);
  its gradient is the plain product's;
- every upsampling (`upsample_by_phases`): one dense convolution that yields
  all stride x stride output phases at once, depth_to_space, and the SAME
  crop, instead of tf.nn.conv2d_transpose.

Which forms run on this machine is decided in `fcn_graph.host.choice`.
"""

import tensorflow as tf

from fcn_graph.core.constants import DEFAULT_ROW_BLOCK, FC_FORMS, UPSAMPLE_FORMS
from fcn_graph.network.tf_layers import TFLayers, shape_with_channels

# Rows per matrix product in `dense_conv2d`: TensorFlow's CPU matmul with a
# conv6- or conv7-sized matrix runs faster on blocks of up to about this many
# rows than on more (docs/performance.md).
MATMUL_ROW_BLOCK = DEFAULT_ROW_BLOCK


class CpuLayers(TFLayers):
    """`tf_layers.TFLayers` with conv6/conv7 and the upsampling in the forms given:
    fc_form "matmul" (`dense_conv2d` in blocks of `row_block` rows, 0 = all
    at once) or "conv" (the plain op); upsample_form "phases"
    (`upsample_by_phases`) or "transpose" (the plain op). The same results,
    to float rounding; the defaults are the "cpu" kernel set."""

    def __init__(self, *, fc_form="matmul", row_block=MATMUL_ROW_BLOCK, upsample_form="phases"):
        super().__init__()
        if fc_form not in FC_FORMS:
            raise ValueError(f"fc_form: expected one of {', '.join(FC_FORMS)}, "
                             f"found {fc_form!r}")
        if upsample_form not in UPSAMPLE_FORMS:
            raise ValueError(f"upsample_form: expected one of "
                             f"{', '.join(UPSAMPLE_FORMS)}, found {upsample_form!r}")
        if fc_form == "matmul" and (not isinstance(row_block, int) or row_block < 0):
            raise ValueError(f"row_block: expected a non-negative integer, found {row_block!r}")
        self.fc_form, self.row_block, self.upsample_form = fc_form, row_block, upsample_form

    @classmethod
    def from_choices(cls, choices):
        """CpuLayers with the forms of a `host.choice.Choices`."""
        return cls(fc_form=choices.fc_form, row_block=choices.row_block,
                   upsample_form=choices.upsample_form)

    def _fc(self, net, kernel, bias, name):
        if self.fc_form == "conv":
            return super()._fc(net, kernel, bias, name)
        return dense_conv2d(net, kernel, bias, block=self.row_block)

    def _upsample(self, net, kernel, bias, like, channels, stride, name):
        if self.upsample_form == "transpose":
            return super()._upsample(net, kernel, bias, like, channels, stride, name)
        return upsample_by_phases(net, kernel, bias,
                                  shape_with_channels(like, channels), stride)


def dense_conv2d(net, kernel, bias, *, block=MATMUL_ROW_BLOCK):
    """`tf_layers.conv2d` for an odd k x k kernel as a matrix product: the k x k
    patches of `net` (im2col; SAME pads (k - 1) / 2 on every side, as conv2d
    does for odd k) times the kernel as a [k*k*Cin, Cout] matrix,
    `block` rows at a time (0: all rows in one product). For conv6 and conv7, whose thousands of
    output channels make TensorFlow's CPU convolution (and its gradients)
    slower than the matrix product."""
    size, _, c_in, c_out = kernel.shape.as_list()
    shape = tf.shape(net)
    if size > 1:
        net = tf.image.extract_patches(net, sizes=[1, size, size, 1], strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding="SAME")  # [N, H, W, k*k*Cin]
    rows = tf.reshape(net, [-1, size * size * c_in])                      # [N*H*W, k*k*Cin]
    out = matmul_in_row_blocks(rows, tf.reshape(kernel, [size * size * c_in, c_out]), block)
    out = tf.nn.bias_add(out, bias)                                       # [N*H*W, Cout]
    return tf.reshape(out, tf.concat([shape[:3], [c_out]], axis=0))     # [N, H, W, Cout]


def matmul_in_row_blocks(rows, matrix, block=MATMUL_ROW_BLOCK):
    """rows [M, K] @ matrix [K, N], computed in ceil(M / block) blocks of
    ceil(M / blocks) rows (the last one may be shorter), one after another;
    block 0: one product of all rows. Its gradient is the plain product's (two
    matmuls over all rows)."""
    @tf.custom_gradient
    def product(rows, matrix):
        def grad(upstream):
            return (tf.matmul(upstream, matrix, transpose_b=True),
                    tf.matmul(rows, upstream, transpose_a=True))

        if not block:
            return tf.matmul(rows, matrix), grad
        count = tf.shape(rows)[0]
        blocks = tf.maximum((count + block - 1) // block, 1)
        step = (count + blocks - 1) // blocks

        def body(i, outputs):
            return i + 1, outputs.write(i, tf.matmul(rows[i * step:(i + 1) * step], matrix))

        outputs = tf.TensorArray(rows.dtype, size=blocks, infer_shape=False,
                                 element_shape=tf.TensorShape([None, matrix.shape[1]]))
        _, outputs = tf.while_loop(lambda i, _: i < blocks, body, [0, outputs],
                                   parallel_iterations=1)
        return outputs.concat(), grad
    return product(rows, matrix)


def phase_kernel(kernel, stride):
    """[k, k, C', C_in] transposed-conv kernel -> [T, T, C_in, s*s*C'] conv kernel,
    T = ceil(k / s), for `upsample_by_phases`.

    Output row o of a stride-s transposed conv, written as o + pad = q*s + r
    (0 <= r < s), sums x[q - t] * w[r + t*s] over t = 0 .. T-1 (taps past k
    are zero). So phase r of block q is a T-tap correlation over the input
    padded by T - 1, with taps w[r + (T-1-j)*s] for j = 0 .. T-1; output
    channel (r_y*s + r_x)*C' + c, the order depth_to_space reads.
    """
    k_h, k_w, c_out, c_in = kernel.shape.as_list()
    assert k_h == k_w, f"square kernels only, got {k_h}x{k_w}"
    taps = -(-k_h // stride)
    extra = taps * stride - k_h
    kernel = tf.pad(kernel, [[0, extra], [0, extra], [0, 0], [0, 0]])
    kernel = tf.reshape(kernel, [taps, stride, taps, stride, c_out, c_in])  # [t_y, r_y, t_x, r_x, o, i]
    kernel = tf.reverse(kernel, axis=[0, 2])                                # tap j = T-1-t
    kernel = tf.transpose(kernel, [0, 2, 5, 1, 3, 4])                       # [j_y, j_x, i, r_y, r_x, o]
    return tf.reshape(kernel, [taps, taps, c_in, stride * stride * c_out])


def upsample_by_phases(net, kernel, bias, output_shape, stride):
    """`tf_layers.upsample` (same rule, same result to float rounding) as a conv
    yielding all phases + depth_to_space + the SAME crop."""
    k = kernel.shape.as_list()[0]
    taps = -(-k // stride)
    in_shape = tf.shape(net)
    net = tf.pad(net, [[0, 0], [taps - 1, taps - 1], [taps - 1, taps - 1], [0, 0]])
    net = tf.nn.conv2d(net, phase_kernel(kernel, stride), strides=[1, 1, 1, 1],
                       padding="VALID")                         # [N, h+T-1, w+T-1, s*s*C']
    if bias is not None:
        net = tf.nn.bias_add(net, tf.tile(bias, [stride * stride]))
    net = tf.nn.depth_to_space(net, stride)                     # [N, (h+T-1)*s, (w+T-1)*s, C']
    output_shape = tf.convert_to_tensor(output_shape)
    out_h, out_w = output_shape[1], output_shape[2]
    # SAME padding's leading crop: max((in - 1) * s + k - out, 0) // 2
    top = tf.maximum((in_shape[1] - 1) * stride + k - out_h, 0) // 2
    left = tf.maximum((in_shape[2] - 1) * stride + k - out_w, 0) // 2
    return tf.slice(net, tf.stack([0, top, left, 0]), tf.stack([-1, out_h, out_w, -1]))
