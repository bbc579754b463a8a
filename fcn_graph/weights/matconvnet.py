"""Read and write MatConvNet VGG19 and VGG16 `.mat` files (`imagenet-vgg-verydeep-19.mat`,
`imagenet-vgg-verydeep-16.mat`).

Two layouts exist. The old one (MatConvNet beta16 and earlier) has top-level
`layers`, `classes` and `normalization`, conv structs with `weights` as their
first field and biases of shape 1 x Cout. The new one has `layers` and `meta`
(mean under `meta.normalization`), fields in another order and biases of shape
Cout x 1. Both are parsed here once, by field name, into `VggWeights`.
"""

import dataclasses
from collections import OrderedDict

import numpy as np
import scipy.io

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import atomic_write, check_input_file
from fcn_graph.core.finite import check_finite_array, check_mean_pixel
from fcn_graph.network.spec import (
    DEFAULT_BACKBONE,
    VGG19_FC,
    VGG_CONVS,
    VGG_MAT_LAYERS,
    backbone_of,
)

# backbone -> the MatConvNet file of its ImageNet weights.
MAT_FILES = {"vgg19": "imagenet-vgg-verydeep-19", "vgg16": "imagenet-vgg-verydeep-16"}


@dataclasses.dataclass
class VggWeights:
    """VGG19 or VGG16 weights parsed from a `.mat` or Keras `.h5` file.

    layers: conv name -> (kernel [kh, kw, Cin, Cout] float32, bias [Cout] float32),
        for the backbone's 16 or 13 conv layers in order.
    fc: "fc6"/"fc7"/"fc8" -> (kernel, bias) in the same layout, when the file has them
        (fc6 is 7x7xCx4096, fc7 1x1x4096x4096, fc8 1x1x4096x1000).
    mean_pixel: float64 [3], 0..255 scale, in `channel_order` (RGB for `.mat` files).
    layout: "old" or "new" (or "keras-h5" for weights read by fcn_graph.weights.kerash5).
    transposed: whether kernels were swapped from MatConvNet's to TensorFlow's order.
    channel_order: "rgb", or "bgr" for weights that expect BGR input.
    backbone: "vgg19" or "vgg16".
    """

    path: str
    layers: "OrderedDict[str, tuple]"
    fc: dict
    mean_pixel: np.ndarray
    layout: str
    transposed: bool
    channel_order: str = "rgb"
    backbone: str = DEFAULT_BACKBONE

    @property
    def widths(self):
        """conv name -> output channels."""
        return OrderedDict((name, kernel.shape[3]) for name, (kernel, _) in self.layers.items())


def _field(struct, name):
    """A field of a MATLAB struct as loaded by scipy (record array), or None."""
    names = struct.dtype.names or ()
    if name not in names:
        return None
    value = struct[name]
    # scipy wraps every field in a (1, 1) object array.
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.flat[0]
    return value


def _string(value):
    """A MATLAB char array (one string, or one character per element) as a str."""
    if value is None:
        return None
    return "".join(str(v) for v in np.asarray(value).ravel())


def _struct(value):
    """Unwrap a cell holding one struct into the struct record."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.flat[0]
    if isinstance(value, np.ndarray) and value.dtype.names is not None:
        return value.flat[0]
    return None


def _load(path, backbone):
    check_input_file(path, f"a MatConvNet {backbone.upper()} .mat, e.g. "
                     f"{MAT_FILES[backbone]}.mat (see weights/README.md)")
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as err:
        raise UserError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported ({err}); "
                        "re-save it with save(..., '-v7')") from None
    except Exception as err:  # scipy raises several types for foreign files
        raise UserError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None


def _mean_pixel(path, mat):
    """The RGB mean pixel, from either layout; the VGG mean when absent."""
    normalization = None
    if "normalization" in mat:
        normalization = _struct(mat["normalization"])
    elif "meta" in mat:
        meta = _struct(mat["meta"])
        if meta is not None:
            normalization = _struct(_field(meta, "normalization"))
    if normalization is None:
        return None
    average = _field(normalization, "averageImage")
    if average is None:
        return None
    where = f"{path}: averageImage"
    average = _numeric(average, where)
    check_finite_array(average, where)
    if average.size == 3:
        average = average.reshape(3)
    elif average.ndim == 3 and average.shape[2] == 3 and average.size:
        # Old layout: a 224x224x3 mean image; its mean over height and width.
        average = average.mean(axis=(0, 1))
    else:
        raise UserError(f"{where} has shape {average.shape}; expected 3 values or HxWx3")
    return np.asarray(check_mean_pixel(average, where))  # finite, 3 floats


def _numeric(value, where, dtype=np.float64):
    """`value` as a real-valued array of `dtype`; a UserError naming `where` when
    it holds text, structs or complex numbers."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise UserError(f"{where} holds {array.dtype} data of shape {array.shape}; expected "
                        "real numbers")
    return array.astype(dtype)


def check_backbone_found(path, found, backbone, flag):
    """A UserError when the conv layers of a weight file are exactly the other
    backbone's: `found` is the backbone they make (or None), `flag` says where
    the backbone is set."""
    if found is not None and found != backbone:
        extra = sorted(set(VGG_CONVS[found]) ^ set(VGG_CONVS[backbone]))
        has = "has" if len(VGG_CONVS[found]) > len(VGG_CONVS[backbone]) else "lacks"
        raise UserError(f"{path}: {found.upper()} weights ({len(VGG_CONVS[found])} conv "
                        f"layers; it {has} {', '.join(extra)}) but the backbone is "
                        f"{backbone}; set {flag} {found}")


def load_vgg_mat(path, *, transpose=True, require_fc=False, backbone=DEFAULT_BACKBONE,
                 flag="--backbone"):
    """Parse a MatConvNet VGG19 or VGG16 `.mat` into a validated `VggWeights`.

    transpose: swap the two spatial kernel axes with (1, 0, 2, 3).
        FCN.tensorflow does this because it reads MatConvNet kernels as
        [width, height, Cin, Cout]; its checkpoints were trained with it, so it
        is the default. Pass False to keep the file's order.
    require_fc: raise if fc6/fc7 are missing (the paper variant initialises
        conv6/conv7 from them).
    backbone: "vgg19" or "vgg16", what the file must hold; None: whichever its
        conv layers make (VGG19 when neither). A file of the other backbone is
        a one-line error naming `flag`, where the caller's user sets it.
    """
    mat = _load(path, backbone or DEFAULT_BACKBONE)
    if "layers" not in mat:
        keys = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        raise UserError(f"{path}: no 'layers' variable; expected a MatConvNet model (found: {keys})")
    cells = np.asarray(mat["layers"]).ravel()
    raw, position, unknown = OrderedDict(), {}, []
    for index, cell in enumerate(cells):
        layer = _struct(cell)
        if layer is None:
            raise UserError(f"{path}: layers{{{index + 1}}} is not a struct; expected a MatConvNet simplenn layer")
        name = _string(_field(layer, "name"))
        kind = _string(_field(layer, "type"))
        if not name:
            raise UserError(f"{path}: layers{{{index + 1}}} has no name")
        if name in raw:
            raise UserError(f"{path}: layer '{name}' appears twice (layers{{{position[name]}}} "
                            f"and layers{{{index + 1}}}); expected each layer once")
        weights = _field(layer, "weights")
        if weights is not None and np.size(weights):
            unknown.append((name, f"layers{{{index + 1}}} '{name}' (type '{kind}')"))
        raw[name], position[name] = (kind, layer), index + 1
    found = backbone_of(raw)
    backbone = backbone or found or DEFAULT_BACKBONE
    check_backbone_found(path, found, backbone, flag)
    known = VGG_MAT_LAYERS[backbone]
    unknown = [where for name, where in unknown if name not in known]
    first = next(iter(raw.values()), (None, None))[1]
    layout = "old" if first is not None and first.dtype.names[0] == "weights" else "new"

    def conv_weights(name):
        kind, layer = raw[name]
        if kind != "conv":
            raise UserError(f"{path}: layer '{name}' has type '{kind}'; expected 'conv'")
        weights = np.asarray(_field(layer, "weights"), dtype=object).ravel()
        if weights.size != 2:
            raise UserError(f"{path}: layer '{name}': weights holds {weights.size} arrays; "
                            "expected 2 (kernel, bias)")
        kernel = _numeric(weights[0], f"{path}: layer '{name}': kernel", np.float32)
        bias = _numeric(weights[1], f"{path}: layer '{name}': bias", np.float32)
        check_finite_array(kernel, f"{path}: layer '{name}': kernel")
        check_finite_array(bias, f"{path}: layer '{name}': bias")
        if kernel.ndim == 2:  # MATLAB drops trailing singleton dims: [kh, kw] means Cin = Cout = 1
            kernel = kernel[:, :, None, None]
        elif kernel.ndim == 3:
            kernel = kernel[:, :, :, None]
        if kernel.ndim != 4:
            raise UserError(f"{path}: layer '{name}': kernel has shape {kernel.shape}; "
                            "expected [kh, kw, Cin, Cout]")
        if bias.size != kernel.shape[3] or max(bias.shape) != bias.size:
            raise UserError(f"{path}: layer '{name}': bias has shape {bias.shape} but the kernel "
                            f"{kernel.shape} has {kernel.shape[3]} output channels")
        if transpose:
            # MatConvNet kernels were read as [width, height, Cin, Cout] by the
            # legacy code; TensorFlow wants [height, width, Cin, Cout].
            kernel = np.transpose(kernel, (1, 0, 2, 3))
        return np.ascontiguousarray(kernel), bias.reshape(-1)

    layers = OrderedDict()
    previous, cin = None, 3
    convs, file_name = VGG_CONVS[backbone], MAT_FILES[backbone]
    for name in convs:
        if name not in raw:
            raise UserError(f"{path}: layer '{name}' not found (expected the {len(convs)} conv "
                            f"layers of {file_name})")
        kernel, bias = conv_weights(name)
        if kernel.shape[2] != cin:
            source = f"'{previous}' gives {cin}" if previous else "the image has 3"
            raise UserError(f"{path}: layer '{name}': kernel has {kernel.shape[2]} input channels "
                            f"but {source}")
        layers[name] = (kernel, bias)
        previous, cin = name, kernel.shape[3]
    if unknown:  # weights that would be ignored: another network, or an edited file
        raise UserError(f"{path}: {unknown[0]} has weights but is not a layer of "
                        f"{file_name} (expected conv1_1 ... {convs[-1]}, fc6, fc7, fc8)")

    fc = {}
    for name in VGG19_FC:
        if name in raw:
            kernel, bias = conv_weights(name)
            if kernel.shape[2] != cin:
                raise UserError(f"{path}: layer '{name}': kernel has {kernel.shape[2]} input "
                                f"channels but '{previous}' gives {cin}")
            fc[name] = (kernel, bias)
            previous, cin = name, kernel.shape[3]
        elif require_fc and name != "fc8":
            raise UserError(f"{path}: layer '{name}' not found; the paper variant needs fc6 and fc7")

    mean_pixel = _mean_pixel(path, mat)
    if mean_pixel is None:
        raise UserError(f"{path}: no normalization.averageImage (old layout) or "
                        "meta.normalization.averageImage (new layout); cannot tell the mean pixel")
    return VggWeights(path=path, layers=layers, fc=fc, mean_pixel=mean_pixel, layout=layout,
                      transposed=transpose, backbone=backbone)


def write_vgg_mat(path, layers, mean_pixel, *, fc=None, layout="new", transposed=True):
    """Write VGG19 or VGG16 weights as a MatConvNet simplenn `.mat` in the old or
    new layout.

    layers: conv name -> (kernel, bias) for the convs of VGG16 or (any other set
        of names) of VGG19, kernels in TensorFlow order when
        `transposed` (they are swapped back, the inverse of
        `load_vgg_mat(transpose=True)`), else in the file's order.
    fc: optional "fc6"/"fc7"/"fc8" -> (kernel, bias).
    The file round-trips through `load_vgg_mat` without loss.
    """
    if layout not in ("old", "new"):
        raise ValueError(f"layout: expected 'old' or 'new', found {layout!r}")
    fc = fc or {}
    mean_pixel = np.asarray(mean_pixel, dtype=np.float64).reshape(3)
    backbone = backbone_of(layers) or DEFAULT_BACKBONE
    names = [n for n in VGG_MAT_LAYERS[backbone] if n in layers or n in fc
             or not n.startswith(("conv", "fc"))]
    if not fc:
        names = names[:names.index("pool5") + 1]
    cells = np.empty((1, len(names)), dtype=object)
    for index, name in enumerate(names):
        if name.startswith(("conv", "fc")):
            kernel, bias = layers[name] if name in layers else fc[name]
            kernel = np.asarray(kernel, dtype=np.float32)
            if transposed:
                kernel = np.transpose(kernel, (1, 0, 2, 3))
            bias = np.asarray(bias, dtype=np.float32)
            bias = bias.reshape(1, -1) if layout == "old" else bias.reshape(-1, 1)
            weights = np.empty((1, 2), dtype=object)
            weights[0, 0], weights[0, 1] = kernel, bias
            pad = 0 if name.startswith("fc") else 1
            if layout == "old":
                struct = {"weights": weights, "pad": np.full((1, 4), pad, float),
                          "type": "conv", "name": name, "stride": np.ones((1, 2))}
            else:
                struct = {"name": name, "type": "conv", "weights": weights,
                          "size": np.asarray(kernel.shape, float).reshape(1, 4),
                          "pad": np.full((1, 4), pad, float), "stride": np.ones((1, 2)),
                          "precious": False, "dilate": np.ones((1, 2)), "opts": np.empty((0, 0), object)}
        elif name.startswith("relu"):
            struct = {"type": "relu", "name": name} if layout == "old" else \
                {"name": name, "type": "relu", "weights": np.empty((0, 0), object), "leak": 0.0,
                 "precious": False}
        elif name.startswith("pool"):
            struct = {"type": "pool", "name": name, "method": "max", "pool": np.full((1, 2), 2.0),
                      "stride": np.full((1, 2), 2.0), "pad": np.zeros((1, 4))}
            if layout == "new":
                struct = {"name": name, "type": "pool", "weights": np.empty((0, 0), object),
                          "method": "max", "pool": np.full((1, 2), 2.0),
                          "stride": np.full((1, 2), 2.0), "pad": np.zeros((1, 4)),
                          "precious": False, "opts": np.empty((0, 0), object)}
        else:  # prob
            struct = {"type": "softmax", "name": name} if layout == "old" else \
                {"name": name, "type": "softmax", "weights": np.empty((0, 0), object),
                 "precious": False}
        cells[0, index] = struct
    # The ImageNet class list of the original files is not kept: empty cells.
    description = np.empty((1, 0), dtype=object)
    classes = {"name": description, "description": description}
    if layout == "old":
        average = np.broadcast_to(mean_pixel.astype(np.float32), (224, 224, 3)).copy()
        contents = {"layers": cells, "classes": classes,
                    "normalization": {"averageImage": average, "keepAspect": 1,
                                      "imageSize": np.asarray([[224.0, 224.0, 3.0]])}}
    else:
        average = mean_pixel.astype(np.float32).reshape(1, 1, 3)
        contents = {"layers": cells,
                    "meta": {"inputs": {"name": "data"}, "classes": classes,
                             "normalization": {"averageImage": average,
                                               "imageSize": np.asarray([[224.0, 224.0, 3.0, 10.0]])}}}
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:
            scipy.io.savemat(handle, contents, do_compression=False, oned_as="row")
