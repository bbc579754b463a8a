"""Read the Keras VGG19 and VGG16 ImageNet weight files
(`vgg19_weights_tf_dim_ordering_tf_kernels.h5`, `vgg16_...` and their `_notop.h5`),
the classic Keras HDF5 weight layout.

Layout (what Keras 2 `save_weights`/`load_weights` and the applications files use):
the root group (or its `model_weights` group, in a whole-model `.h5`) has the
attribute `layer_names` (split into `layer_names0`, `layer_names1`, ... when
long); each layer is a group of that name whose attribute `weight_names`
lists its arrays as paths inside it, kernel first, then bias:
`block1_conv1_W_1:0`, `block1_conv1_b_1:0` in the applications files,
`block1_conv1/kernel:0`, `block1_conv1/bias:0` in Keras 2 files. Layers without
weights (input, pools, flatten) have an empty list.

VGG19's layers: block1_conv1 ... block5_conv4 (VGG16's: ... block5_conv3;
kernels [3, 3, Cin, Cout], HWIO, no transpose needed), then in the full file fc1 [7*7*C5, F], fc2 [F, F] and
predictions [F, 1000] (Dense kernels, [in, out]). Keras flattens block5_pool's
[7, 7, C5] map in row-major (H, W, C) order, so fc1's kernel reshapes to
[7, 7, C5, F]: a 7x7 VALID convolution on the unflattened map.

The weights expect BGR input, 0..255, minus the Caffe mean pixel
KERAS_MEAN_BGR. Keras 3 `.weights.h5` files (groups `layers/<name>/vars/0`)
are a different layout and are refused.
"""

from collections import OrderedDict

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import check_input_file
from fcn_graph.core.finite import check_finite_array
from fcn_graph.network.spec import DEFAULT_BACKBONE, VGG_CONVS, backbone_of
from fcn_graph.weights.matconvnet import VggWeights, check_backbone_found

# Caffe's ImageNet mean in BGR order: what keras.applications.vgg19.preprocess_input subtracts.
KERAS_MEAN_BGR = (103.939, 116.779, 123.68)


def keras_conv_layers(backbone=DEFAULT_BACKBONE):
    """Keras layer name -> fcn_graph conv name for the backbone's body
    (block1_conv1 -> conv1_1 ...)."""
    return OrderedDict((f"block{name[4]}_conv{name[6]}", name) for name in VGG_CONVS[backbone])


# Keras layer name -> MatConvNet/fcn_graph layer name of the classifier.
KERAS_FC_LAYERS = OrderedDict((("fc1", "fc6"), ("fc2", "fc7"), ("predictions", "fc8")))

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _attribute_list(group, name):
    """A string-list attribute, joined from its chunks (`name0`, `name1`, ...)
    when Keras had to split it."""
    def decode(values):
        return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]

    if name in group.attrs:
        return decode(group.attrs[name])
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(decode(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return values


def _open(path, backbone=DEFAULT_BACKBONE):
    import h5py  # imported here: only this format needs it

    check_input_file(path, f"a Keras {backbone.upper()} .h5, e.g. "
                     f"{backbone}_weights_tf_dim_ordering_tf_kernels.h5")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]}); "
                        "expected a Keras .h5 weight file") from None


def _weights_root(path, handle):
    """The group holding `layer_names`; a clear error for other layouts."""
    for group in (handle, handle.get("model_weights")):
        if group is not None and _attribute_list(group, "layer_names"):
            return group
    if "layers" in handle or "vars" in handle:
        raise UserError(f"{path}: a Keras 3 '.weights.h5' file (groups layers/<name>/vars); "
                        "expected the classic Keras HDF5 layout with a 'layer_names' attribute, "
                        "as in vgg19_weights_tf_dim_ordering_tf_kernels.h5 (in Keras 3, "
                        "model.save('model.h5') writes the classic layout)")
    top = ", ".join(sorted(handle.keys())[:6]) or "nothing"
    raise UserError(f"{path}: no 'layer_names' attribute at the root or in 'model_weights' "
                    f"(found groups: {top}); not a Keras weight file in the classic layout")


def read_h5_layers(path, backbone=DEFAULT_BACKBONE):
    """Keras layer name -> list of (weight name, array), in file order, for every
    layer with weights; `backbone` names the file expected in errors."""
    with _open(path, backbone) as handle:
        root = _weights_root(path, handle)
        layers = OrderedDict()
        for layer in _attribute_list(root, "layer_names"):
            if layer not in root:
                raise UserError(f"{path}: layer '{layer}' is listed in layer_names but has no group")
            group = root[layer]
            names = _attribute_list(group, "weight_names")
            if names:
                layers[layer] = [(name, _read_array(path, layer, group, name)) for name in names]
        return layers


def _read_array(path, layer, group, name):
    """One weight array of a layer group, real-valued and finite."""
    where = f"{path}: layer '{layer}' weight '{name}'"
    try:
        array = np.asarray(group[name])
    except KeyError:
        raise UserError(f"{where} is listed in weight_names but not stored") from None
    except (OSError, ValueError, TypeError) as err:  # h5py on truncated or damaged files
        raise UserError(f"{where} cannot be read ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'no detail'}); the file is "
                        "damaged or truncated") from None
    if array.dtype.kind not in "biuf":
        raise UserError(f"{where} holds {array.dtype} data; expected real numbers")
    check_finite_array(array, where)
    return array


def _kernel_and_bias(path, layer, weights, kernel_ndim):
    if len(weights) != 2:
        raise UserError(f"{path}: layer '{layer}' holds {len(weights)} arrays "
                        f"({', '.join(n for n, _ in weights)}); expected 2 (kernel, bias)")
    (_, kernel), (_, bias) = weights
    if kernel.ndim != kernel_ndim or bias.ndim != 1 or bias.shape[0] != kernel.shape[-1]:
        raise UserError(f"{path}: layer '{layer}': kernel {list(kernel.shape)} and bias "
                        f"{list(bias.shape)}; expected a {kernel_ndim}-D kernel whose last "
                        "dimension is the bias length")
    kernel, bias = kernel.astype(np.float32), bias.astype(np.float32)
    check_finite_array(kernel, f"{path}: layer '{layer}': kernel as float32")
    check_finite_array(bias, f"{path}: layer '{layer}': bias as float32")
    return kernel, bias


def h5_backbone(layer_names):
    """The backbone whose Keras conv layers (block1_conv1 ...) are exactly those
    among `layer_names`, or None."""
    every = keras_conv_layers("vgg19")  # VGG19's conv names include all of VGG16's
    return backbone_of(every[name] for name in layer_names if name in every)


def load_keras_vgg_h5(path, *, require_fc=False, backbone=DEFAULT_BACKBONE):
    """Parse a classic-layout Keras VGG19 or VGG16 `.h5` into a `VggWeights`
    (BGR, kernels untransposed; fc1/fc2/predictions as fc6/fc7/fc8 convs).

    require_fc: raise if fc1/fc2 are missing (the `_notop` file).
    backbone: "vgg19" or "vgg16"; a file of the other is a one-line error.
    """
    found = read_h5_layers(path, backbone)
    check_backbone_found(path, h5_backbone(found), backbone, "--backbone")
    layers = OrderedDict()
    cin, previous = 3, None
    convs = keras_conv_layers(backbone)
    for keras_name, name in convs.items():
        if keras_name not in found:
            raise UserError(f"{path}: layer '{keras_name}' not found (expected the {len(convs)} "
                            f"conv layers block1_conv1 ... {next(reversed(convs))} of Keras "
                            f"{backbone.upper()}; the file has "
                            f"{', '.join(list(found)[:4]) or 'no layers with weights'}"
                            + (" ..." if len(found) > 4 else "") + ")")
        kernel, bias = _kernel_and_bias(path, keras_name, found[keras_name], 4)
        if kernel.shape[2] != cin or kernel.shape[:2] != (3, 3):
            source = f"'{previous}' gives {cin}" if previous else "the image has 3"
            raise UserError(f"{path}: layer '{keras_name}': kernel {list(kernel.shape)}; "
                            f"expected [3, 3, {cin}, Cout] ({source} channels; channels-first "
                            "'th_dim_ordering' files are not supported)")
        layers[name] = (np.ascontiguousarray(kernel), bias)
        cin, previous = kernel.shape[3], keras_name

    fc = {}
    for keras_name, name in KERAS_FC_LAYERS.items():
        if keras_name not in found:
            if require_fc and name != "fc8":
                raise UserError(f"{path}: layer '{keras_name}' not found; the paper "
                                "architecture takes conv6/conv7 from fc1/fc2 (use the file "
                                "without '_notop', or --architecture legacy)")
            continue
        kernel, bias = _kernel_and_bias(path, keras_name, found[keras_name], 2)
        if name == "fc6":
            # Flatten of [7, 7, C5] in row-major (H, W, C) order: row (h * 7 + w) * C5 + c.
            if kernel.shape[0] != 49 * cin:
                raise UserError(f"{path}: layer 'fc1': kernel {list(kernel.shape)}; expected "
                                f"[{49 * cin}, F] (7 x 7 x {cin} flattened features)")
            kernel = kernel.reshape(7, 7, cin, kernel.shape[1])
        else:
            if kernel.shape[0] != cin:
                raise UserError(f"{path}: layer '{keras_name}': kernel {list(kernel.shape)}; "
                                f"expected [{cin}, F] (the previous layer gives {cin})")
            kernel = kernel.reshape(1, 1, cin, kernel.shape[1])
        fc[name] = (np.ascontiguousarray(kernel), bias)
        cin = kernel.shape[3]
    return VggWeights(path=path, layers=layers, fc=fc,
                      mean_pixel=np.asarray(KERAS_MEAN_BGR, dtype=np.float64), layout="keras-h5",
                      transposed=False, channel_order="bgr", backbone=backbone)
