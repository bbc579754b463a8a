"""A float64 NumPy reference of the network's building blocks, the legacy FCN-8s
and the paper's FCN-32s/16s/8s, on a VGG19 or VGG16 body.

Written from the definitions, without TensorFlow, so that tests can check the
TF graph against something that does not share its code. Layout is NHWC for
activations, HWIO ([kh, kw, in, out]) for conv kernels and [kh, kw, out, in]
for transposed-conv kernels, as in TensorFlow.

TF `SAME` padding along one axis of size n, kernel k, stride s:
    out = ceil(n / s)
    pad_total = max((out - 1) * s + k - n, 0)
    pad_before = pad_total // 2          (the extra pixel, if any, goes after)
Output cell i reads input cells i * s - pad_before + d for d = 0 .. k-1.

Import from tests as `import npref` (pytest puts the tests folder on sys.path).
"""

import numpy as np

__all__ = [
    "same_padding",
    "conv2d_same",
    "avg_pool_same",
    "max_pool_same",
    "conv2d_transpose_same",
    "fcn8s_legacy_forward",
    "fcn_paper_forward",
    "VGG_CONV_LAYERS",
    "VGG16_CONV_LAYERS",
]


def same_padding(size, k, s):
    """(out, pad_before, pad_after) of TF `SAME` padding along one axis."""
    out = -(-size // s)  # ceil(size / s)
    pad_total = max((out - 1) * s + k - size, 0)
    pad_before = pad_total // 2
    return out, pad_before, pad_total - pad_before


def _pad_hw(x, pads_h, pads_w, value):
    return np.pad(x, ((0, 0), pads_h, pads_w, (0, 0)), constant_values=value)


def _taps(x_padded, out_h, out_w, k_h, k_w, s):
    """Yield (dy, dx, window) where window[n, i, j] = x_padded[n, i*s + dy, j*s + dx]."""
    for dy in range(k_h):
        for dx in range(k_w):
            yield dy, dx, x_padded[:, dy:dy + (out_h - 1) * s + 1:s, dx:dx + (out_w - 1) * s + 1:s]


def conv2d_same(x, w, b=None, stride=1):
    """tf.nn.conv2d(x, w, stride, "SAME") (+ b), in float64.

    x: [N, H, W, Cin]; w: [kh, kw, Cin, Cout]; b: [Cout] or None.
    y[n, i, j, o] = sum_{dy, dx, c} xpad[n, i*s + dy, j*s + dx, c] * w[dy, dx, c, o],
    a cross-correlation (the kernel is not flipped), zero padding per `same_padding`.
    Returns [N, ceil(H/s), ceil(W/s), Cout].
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, h, wd, cin = x.shape
    kh, kw, wcin, cout = w.shape
    assert wcin == cin, f"kernel expects {wcin} input channels, input has {cin}"
    oh, ph0, ph1 = same_padding(h, kh, stride)
    ow, pw0, pw1 = same_padding(wd, kw, stride)
    xp = _pad_hw(x, (ph0, ph1), (pw0, pw1), 0.0)
    y = np.zeros((n, oh, ow, cout))
    for dy, dx, window in _taps(xp, oh, ow, kh, kw, stride):
        y += window @ w[dy, dx]  # [N, oh, ow, Cin] @ [Cin, Cout]
    if b is not None:
        y += np.asarray(b, np.float64)
    return y


def avg_pool_same(x, k=2, s=2):
    """tf.nn.avg_pool2d(x, k, s, "SAME") in float64.

    Each output is the mean of the real input cells under its window: padded
    cells are left out of both the sum and the count (TF's rule for SAME).
    """
    x = np.asarray(x, np.float64)
    n, h, wd, c = x.shape
    oh, ph0, ph1 = same_padding(h, k, s)
    ow, pw0, pw1 = same_padding(wd, k, s)
    xp = _pad_hw(x, (ph0, ph1), (pw0, pw1), 0.0)
    real = _pad_hw(np.ones((1, h, wd, 1)), (ph0, ph1), (pw0, pw1), 0.0)
    total = np.zeros((n, oh, ow, c))
    count = np.zeros((1, oh, ow, 1))
    for (_, _, window), (_, _, ones) in zip(_taps(xp, oh, ow, k, k, s), _taps(real, oh, ow, k, k, s)):
        total += window
        count += ones
    return total / count


def max_pool_same(x, k=2, s=2):
    """tf.nn.max_pool2d(x, k, s, "SAME") in float64; padded cells never win."""
    x = np.asarray(x, np.float64)
    n, h, wd, c = x.shape
    oh, ph0, ph1 = same_padding(h, k, s)
    ow, pw0, pw1 = same_padding(wd, k, s)
    xp = _pad_hw(x, (ph0, ph1), (pw0, pw1), -np.inf)
    y = np.full((n, oh, ow, c), -np.inf)
    for _, _, window in _taps(xp, oh, ow, k, k, s):
        np.maximum(y, window, out=y)
    return y


def conv2d_transpose_same(x, w, output_shape, stride):
    """tf.nn.conv2d_transpose(x, w, output_shape, stride, "SAME") in float64.

    x: [N, h, w, Cin]; w: [kh, kw, Cout, Cin] (TF's transposed-conv layout);
    output_shape: [N, H, W, Cout] with ceil(H/stride) == h and ceil(W/stride) == w
    (TF refuses other shapes, and so does this).

    It is the gradient of `conv2d_same` with respect to its input: padding is
    that of a SAME conv from H to h, pad_before = max((h-1)*s + k - H, 0) // 2,
    and input cell i adds x[i] * w[d] to output cell i*s - pad_before + d for
    d = 0 .. k-1 (contributions that land outside 0..H-1 are dropped). Written
    as that scatter, one kernel tap at a time.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, h, wd, cin = x.shape
    kh, kw, cout, wcin = w.shape
    on, oh, ow, oc = (int(v) for v in output_shape)
    assert wcin == cin, f"kernel expects {wcin} input channels, input has {cin}"
    assert (on, oc) == (n, cout), f"output_shape {output_shape} vs batch {n}, kernel out {cout}"
    ih, ph0, _ = same_padding(oh, kh, stride)
    iw, pw0, _ = same_padding(ow, kw, stride)
    if (ih, iw) != (h, wd):
        raise ValueError(
            f"output_shape {output_shape}: a SAME conv with stride {stride} maps it to "
            f"{ih}x{iw}, not to the input's {h}x{wd}"
        )
    # Scatter into a buffer indexed by (output cell + pad_before), large enough
    # for every tap, then cut out the real output cells.
    buf_h = max((h - 1) * stride + kh, ph0 + oh)
    buf_w = max((wd - 1) * stride + kw, pw0 + ow)
    buf = np.zeros((n, buf_h, buf_w, cout))
    for dy in range(kh):
        for dx in range(kw):
            contribution = x @ w[dy, dx].T  # [N, h, w, Cin] @ [Cin, Cout]
            buf[:, dy:dy + (h - 1) * stride + 1:stride,
                dx:dx + (wd - 1) * stride + 1:stride] += contribution
    return buf[:, ph0:ph0 + oh, pw0:pw0 + ow]


# VGG19 conv layers in order, one tuple per block; a pool follows each block.
VGG_CONV_LAYERS = (
    ("conv1_1", "conv1_2"),
    ("conv2_1", "conv2_2"),
    ("conv3_1", "conv3_2", "conv3_3", "conv3_4"),
    ("conv4_1", "conv4_2", "conv4_3", "conv4_4"),
    ("conv5_1", "conv5_2", "conv5_3", "conv5_4"),
)
# VGG16 (Simonyan and Zisserman's configuration D): three convs in blocks 3-5.
VGG16_CONV_LAYERS = (
    ("conv1_1", "conv1_2"),
    ("conv2_1", "conv2_2"),
    ("conv3_1", "conv3_2", "conv3_3"),
    ("conv4_1", "conv4_2", "conv4_3"),
    ("conv5_1", "conv5_2", "conv5_3"),
)


def _relu(x):
    return np.maximum(x, 0.0)


def fcn8s_legacy_forward(image_rgb, weights, mean_pixel, blocks=VGG_CONV_LAYERS):
    """The legacy FCN.tensorflow FCN-8s graph in float64 (inference: no dropout).

    image_rgb: [N, H, W, 3] RGB, 0..255. mean_pixel: [3] RGB, subtracted first.
    weights: dict of arrays keyed by the legacy variable names without the
    `inference/` scope, in the layouts TF uses (conv kernels [kh, kw, in, out],
    transposed-conv kernels [kh, kw, out, in]):
    conv1_1_w, conv1_1_b, ..., conv5_3_w, conv5_3_b (conv5_4_* optional: it
    feeds nothing), W6, b6, W7, b7, W8, b8, W_t1, b_t1, W_t2, b_t2, W_t3, b_t3.
    blocks: the body's conv names per block (VGG_CONV_LAYERS, VGG16_CONV_LAYERS).

    Graph: conv + ReLU layers; pool1..pool4 are 2x2/2 SAME average pools;
    pool5 is a 2x2/2 SAME max pool of conv5_3 before its ReLU; conv6 (ReLU),
    conv7 (ReLU), conv8 (no ReLU); conv_t1 upsamples conv8 to pool4's shape,
    fuse_1 = conv_t1 + pool4; conv_t2 to pool3's shape, fuse_2 = conv_t2 + pool3;
    conv_t3 (stride 8) to [N, H, W, K].

    Returns (logits [N, H, W, K] float64, end_points) where end_points maps
    names to arrays: conv<b>_<i> (before ReLU) and relu<b>_<i> for each VGG
    layer, pool1..pool5, conv6, relu6, conv7, relu7, conv8, conv_t1, fuse_1,
    conv_t2, fuse_2, conv_t3.
    """
    x = np.asarray(image_rgb, np.float64) - np.asarray(mean_pixel, np.float64)
    n, h, w, _ = x.shape
    end_points = {}
    net = x
    for block, names in enumerate(blocks, start=1):
        for name in names:
            if name == "conv5_4":
                if name + "_w" in weights:  # built by the legacy code, feeds nothing
                    conv = conv2d_same(net, weights["conv5_4_w"], weights["conv5_4_b"])
                    end_points["conv5_4"] = conv
                    end_points["relu5_4"] = _relu(conv)
                continue
            conv = conv2d_same(net, weights[name + "_w"], weights[name + "_b"])
            end_points[name] = conv
            net = end_points["relu" + name[4:]] = _relu(conv)
        if block < 5:
            net = end_points[f"pool{block}"] = avg_pool_same(net)  # 1/2, 1/4, 1/8, 1/16
    net = end_points["pool5"] = max_pool_same(end_points["conv5_3"])  # 1/32, before ReLU

    net = end_points["conv6"] = conv2d_same(net, weights["W6"], weights["b6"])
    net = end_points["relu6"] = _relu(net)
    net = end_points["conv7"] = conv2d_same(net, weights["W7"], weights["b7"])
    net = end_points["relu7"] = _relu(net)
    net = end_points["conv8"] = conv2d_same(net, weights["W8"], weights["b8"])  # [N, H/32, W/32, K]

    pool4, pool3 = end_points["pool4"], end_points["pool3"]
    net = conv2d_transpose_same(net, weights["W_t1"], pool4.shape, 2) + weights["b_t1"]
    end_points["conv_t1"] = net
    net = end_points["fuse_1"] = net + pool4  # [N, H/16, W/16, C4]
    net = conv2d_transpose_same(net, weights["W_t2"], pool3.shape, 2) + weights["b_t2"]
    end_points["conv_t2"] = net
    net = end_points["fuse_2"] = net + pool3  # [N, H/8, W/8, C3]
    num_classes = np.shape(weights["W_t3"])[2]
    net = conv2d_transpose_same(net, weights["W_t3"], (n, h, w, num_classes), 8)
    net = end_points["conv_t3"] = net + weights["b_t3"]  # [N, H, W, K]
    return net, end_points


def fcn_paper_forward(image, weights, mean_pixel, skips="8s", blocks=VGG_CONV_LAYERS):
    """The paper's FCN-32s/16s/8s (Long, Shelhamer, Darrell) in float64, inference.

    image: [N, H, W, 3], 0..255, in the weights' channel order; mean_pixel in
    the same order, subtracted first. weights: arrays keyed by the paper
    variant's variable names without the `inference/` scope: conv1_1_w ...
    conv5_4_b, W6, b6, W7, b7, score_fr_w, score_fr_b, and per skips
    upscore32_w (32s); upscore2_w, score_pool4_w/b, upscore16_w (16s);
    upscore2_w, score_pool4_w/b, upscore_pool4_w, score_pool3_w/b,
    upscore8_w (8s). Upsampling filters have no bias. blocks: the body's conv
    names per block (VGG_CONV_LAYERS, VGG16_CONV_LAYERS: then conv5_3_b is the
    body's last).

    Graph: all 16 (VGG16: 13) conv + ReLU layers, a 2x2/2 SAME max pool after
    each block (pool5 after relu5_4, VGG16: relu5_3); conv6, conv7 with ReLU; score_fr (1x1, no ReLU);
    32s: upsample x32 to [N, H, W, K];
    16s: upsample x2 to pool4's size, add score_pool4 (1x1 on pool4),
         upsample x16 to [N, H, W, K];
    8s: as 16s to fuse_pool4, upsample x2 to pool3's size, add score_pool3,
        upsample x8 to [N, H, W, K].

    Returns (logits [N, H, W, K] float64, end_points).
    """
    net = np.asarray(image, np.float64) - np.asarray(mean_pixel, np.float64)
    n, h, w, _ = net.shape
    end_points = {}
    for block, names in enumerate(blocks, start=1):
        for name in names:
            conv = end_points[name] = conv2d_same(net, weights[name + "_w"], weights[name + "_b"])
            net = end_points["relu" + name[4:]] = _relu(conv)
        net = end_points[f"pool{block}"] = max_pool_same(net)  # 1/2 ... 1/32
    net = end_points["relu6"] = _relu(conv2d_same(net, weights["W6"], weights["b6"]))
    net = end_points["relu7"] = _relu(conv2d_same(net, weights["W7"], weights["b7"]))
    net = end_points["score_fr"] = conv2d_same(net, weights["score_fr_w"], weights["score_fr_b"])
    k = net.shape[3]
    if skips == "32s":
        return conv2d_transpose_same(net, weights["upscore32_w"], (n, h, w, k), 32), end_points
    pool4 = end_points["pool4"]
    net = conv2d_transpose_same(net, weights["upscore2_w"], pool4.shape[:3] + (k,), 2)
    score_pool4 = conv2d_same(pool4, weights["score_pool4_w"], weights["score_pool4_b"])
    net = end_points["fuse_pool4"] = net + score_pool4  # [N, H/16, W/16, K]
    if skips == "16s":
        return conv2d_transpose_same(net, weights["upscore16_w"], (n, h, w, k), 16), end_points
    pool3 = end_points["pool3"]
    net = conv2d_transpose_same(net, weights["upscore_pool4_w"], pool3.shape[:3] + (k,), 2)
    score_pool3 = conv2d_same(pool3, weights["score_pool3_w"], weights["score_pool3_b"])
    net = end_points["fuse_pool3"] = net + score_pool3  # [N, H/8, W/8, K]
    return conv2d_transpose_same(net, weights["upscore8_w"], (n, h, w, k), 8), end_points
