import numpy as np
import pytest
import scipy.io
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from fcn_graph.core.errors import UserError
from fcn_graph.network.spec import VGG19_CONVS
from fcn_graph.weights.matconvnet import load_vgg_mat, write_vgg_mat


def test_both_layouts_load_by_name(tiny_mat, vgg_layers):
    vgg = load_vgg_mat(tiny_mat)
    assert vgg.layout in tiny_mat
    assert list(vgg.layers) == list(VGG19_CONVS)
    assert dict(vgg.widths) == dict(TINY_WIDTHS)
    np.testing.assert_allclose(vgg.mean_pixel, TINY_MEAN, rtol=1e-6)
    for name, (kernel, bias) in vgg_layers.items():
        np.testing.assert_array_equal(vgg.layers[name][0], kernel)
        np.testing.assert_array_equal(vgg.layers[name][1], bias)
        assert vgg.layers[name][1].shape == (kernel.shape[3],)
    assert sorted(vgg.fc) == ["fc6", "fc7", "fc8"]
    assert vgg.fc["fc6"][0].shape == (7, 7, TINY_WIDTHS["conv5_4"], 6)


def test_transpose_option_swaps_spatial_axes(tiny_mat):
    swapped = load_vgg_mat(tiny_mat)
    raw = load_vgg_mat(tiny_mat, transpose=False)
    for name in VGG19_CONVS:
        np.testing.assert_array_equal(swapped.layers[name][0],
                                      np.transpose(raw.layers[name][0], (1, 0, 2, 3)))
    assert swapped.transposed and not raw.transposed


def _cell(value):
    """`value` inside a 1x1 MATLAB cell."""
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = value
    return cell


def _layer_cells(layers, wrap=lambda value: value, names=None):
    """The old-layout `layers` cell array written directly with scipy, independent
    of write_vgg_mat: struct fields in the beta16 order, biases 1 x Cout, every
    field passed through `wrap`; `names` replaces the layer names."""
    order = []
    for name in VGG19_CONVS:
        order += [name, "relu" + name[4:]]
        if name.endswith(("1_2", "2_2", "3_4", "4_4", "5_4")):
            order.append("pool" + name[4])
    cells = np.empty((1, len(order)), dtype=object)
    for index, name in enumerate(order):
        shown = (names or {}).get(name, name)
        if name.startswith("conv"):
            weights = np.empty((1, 2), dtype=object)
            kernel, bias = layers[name]
            # In the file, kernels are in MatConvNet's order: the loader swaps axes 0 and 1.
            weights[0, 0] = np.transpose(kernel, (1, 0, 2, 3))
            weights[0, 1] = bias.reshape(1, -1)
            fields = {"weights": weights, "pad": np.ones((1, 4)), "type": "conv",
                      "name": shown, "stride": np.ones((1, 2))}
        elif name.startswith("relu"):
            fields = {"type": "relu", "name": shown}
        else:
            fields = {"type": "pool", "name": shown, "method": "max",
                      "pool": np.full((1, 2), 2.0), "stride": np.full((1, 2), 2.0),
                      "pad": np.zeros((1, 4))}
        cells[0, index] = {key: wrap(value) for key, value in fields.items()}
    return cells


def _hand_built_old_layout(path, layers, mean_image):
    """The old layout with a 224x224x3-style mean image, written directly with scipy."""
    scipy.io.savemat(path, {"layers": _layer_cells(layers),
                            "classes": {"description": np.array(["x"], object)},
                            "normalization": {"averageImage": mean_image}})


def test_hand_built_old_layout_mean_image_is_averaged(tmp_path):
    layers = make_vgg_layers(seed=3)
    rng = np.random.default_rng(0)
    mean_image = rng.uniform(0, 255, (6, 5, 3)).astype(np.float32)
    path = str(tmp_path / "hand.mat")
    _hand_built_old_layout(path, layers, mean_image)
    vgg = load_vgg_mat(path)
    assert vgg.layout == "old"
    assert vgg.fc == {}
    np.testing.assert_allclose(vgg.mean_pixel, mean_image.astype(np.float64).mean(axis=(0, 1)),
                               rtol=1e-6)
    for name, (kernel, bias) in layers.items():
        np.testing.assert_array_equal(vgg.layers[name][0], kernel)
        np.testing.assert_array_equal(vgg.layers[name][1], bias)


def test_new_layout_bias_is_column(tmp_path, vgg_layers):
    path = str(tmp_path / "new.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, layout="new")
    raw = scipy.io.loadmat(path)
    first = raw["layers"][0, 0][0, 0]
    assert first.dtype.names[0] == "name"
    assert first["weights"][0, 1].shape == (TINY_WIDTHS["conv1_1"], 1)
    assert "meta" in raw and "normalization" not in raw


def test_round_trip_is_lossless(tmp_path, vgg_layers):
    fc = make_fc_layers(TINY_WIDTHS["conv5_4"])
    for layout in ("old", "new"):
        first, second = str(tmp_path / f"a_{layout}.mat"), str(tmp_path / f"b_{layout}.mat")
        write_vgg_mat(first, vgg_layers, TINY_MEAN, fc=fc, layout=layout)
        vgg = load_vgg_mat(first)
        write_vgg_mat(second, vgg.layers, vgg.mean_pixel, fc=vgg.fc, layout=layout)
        again = load_vgg_mat(second)
        for name in VGG19_CONVS:
            np.testing.assert_array_equal(again.layers[name][0], vgg_layers[name][0])
        for name in fc:
            np.testing.assert_array_equal(again.fc[name][0], vgg.fc[name][0])


# ---- bad inputs: one line naming the file and the layer ----

def _error(path, **kwargs):
    with pytest.raises(UserError) as info:
        load_vgg_mat(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_missing_file(tmp_path):
    message = _error(str(tmp_path / "nope.mat"))
    assert "nope.mat: no such file; expected a MatConvNet VGG19 .mat" in message


def test_not_a_mat_file(tmp_path):
    path = tmp_path / "fake.mat"
    path.write_bytes(b"this is a text file, not MATLAB\n" * 10)
    assert "not a readable MATLAB .mat file" in _error(str(path))


def test_mat_without_layers(tmp_path):
    path = str(tmp_path / "empty.mat")
    scipy.io.savemat(path, {"something": np.zeros(3)})
    message = _error(path)
    assert "no 'layers'" in message and "something" in message


def test_missing_layer_is_named(tmp_path, vgg_layers):
    del vgg_layers["conv5_4"]
    path = str(tmp_path / "vgg16ish.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, layout="new")
    message = _error(path)
    assert ("layer 'conv5_4' not found (expected the 16 conv layers of "
            "imagenet-vgg-verydeep-19)") in message


def test_misnamed_layer(tmp_path, vgg_layers):
    vgg_layers["conv3_x"] = vgg_layers.pop("conv3_2")
    path = str(tmp_path / "misnamed.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, layout="old")
    assert "'conv3_2' not found" in _error(path)


def test_bias_shape_mismatch(tmp_path, vgg_layers):
    kernel, bias = vgg_layers["conv2_1"]
    vgg_layers["conv2_1"] = (kernel, np.zeros(bias.size + 1, np.float32))
    path = str(tmp_path / "bias.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, layout="new")
    message = _error(path)
    assert "'conv2_1'" in message and "bias" in message


def test_broken_channel_chain(tmp_path, vgg_layers):
    kernel, bias = vgg_layers["conv4_2"]
    vgg_layers["conv4_2"] = (np.zeros(kernel.shape[:2] + (kernel.shape[2] + 2, kernel.shape[3]),
                                      np.float32), bias)
    path = str(tmp_path / "chain.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, layout="old")
    message = _error(path)
    assert "'conv4_2'" in message and "'conv4_1'" in message


def test_fc_required_for_paper_variant(tmp_path, vgg_layers):
    path = str(tmp_path / "nofc.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, layout="new")
    assert "'fc6' not found" in _error(path, require_fc=True)


# ---- the mean pixel, from either layout and any shape of averageImage ----

def _expected_mean(average):
    average = np.asarray(average, dtype=np.float64)
    return average.reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("layout", ["old", "new"])
@pytest.mark.parametrize("shape", [(3,), (1, 3), (3, 1), (1, 1, 3), (4, 5, 3), (1, 7, 3)])
def test_average_image_of_every_shape_gives_the_mean_pixel(tmp_path, vgg_layers, layout, shape):
    rng = np.random.default_rng(len(shape) * 10 + shape[0])
    average = rng.uniform(10, 240, shape).astype(np.float32)
    normalization = {"averageImage": average}
    top = {"normalization": normalization} if layout == "old" else {
        "meta": {"normalization": normalization}}
    path = str(tmp_path / f"mean_{layout}.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers), **top})
    vgg = load_vgg_mat(path)
    assert vgg.mean_pixel.dtype == np.float64 and vgg.mean_pixel.shape == (3,)
    np.testing.assert_allclose(vgg.mean_pixel, _expected_mean(average), rtol=1e-6)


def test_weights_are_float32_whatever_the_file_holds(tmp_path, vgg_layers):
    doubles = {name: (kernel.astype(np.float64), bias.astype(np.float64))
               for name, (kernel, bias) in vgg_layers.items()}
    path = str(tmp_path / "doubles.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(doubles),
                            "normalization": {"averageImage": np.array(TINY_MEAN)}})
    vgg = load_vgg_mat(path)
    for name, (kernel, bias) in vgg.layers.items():
        assert kernel.dtype == np.float32 and bias.dtype == np.float32
        np.testing.assert_array_equal(kernel, vgg_layers[name][0])


@pytest.mark.parametrize("shape", [(2,), (1, 4), (4, 5, 4), (0, 0, 3), (2, 2, 3, 1)])
def test_average_image_of_a_wrong_shape_is_refused(tmp_path, vgg_layers, shape):
    path = str(tmp_path / "badmean.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers),
                            "normalization": {"averageImage": np.full(shape, 100.0)}})
    message = _error(path)
    assert "averageImage" in message and "expected 3 values" in message


@pytest.mark.parametrize("value", ["abc", np.array([[1 + 2j, 3, 4]])])
def test_average_image_that_is_not_real_numbers_is_refused(tmp_path, vgg_layers, value):
    path = str(tmp_path / "textmean.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers),
                            "normalization": {"averageImage": value}})
    message = _error(path)
    assert "averageImage holds" in message and "expected real numbers" in message


def test_non_finite_average_image_is_refused(tmp_path, vgg_layers):
    path = str(tmp_path / "nanmean.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers),
                            "normalization": {"averageImage": np.array([1.0, np.nan, 3.0])}})
    assert "averageImage holds 1 NaN value" in _error(path)


@pytest.mark.parametrize("top", [
    {},
    {"meta": {"inputs": {"name": "data"}}},
    {"meta": 7.0},
    {"normalization": {"keepAspect": 1.0}},
    {"meta": {"normalization": {"imageSize": np.ones((1, 4))}}},
    {"normalization": 3.0},
], ids=["none", "meta-without-normalization", "meta-not-a-struct", "no-averageImage",
        "meta-no-averageImage", "normalization-not-a-struct"])
def test_a_file_without_a_mean_pixel_is_refused(tmp_path, vgg_layers, top):
    path = str(tmp_path / "nomean.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers), **top})
    assert "cannot tell the mean pixel" in _error(path)


def test_fields_inside_one_cell_read_as_the_plain_ones(tmp_path, vgg_layers):
    plain, wrapped = str(tmp_path / "plain.mat"), str(tmp_path / "wrapped.mat")
    average = np.array([[101.0, 102.5, 99.0]])
    scipy.io.savemat(plain, {"layers": _layer_cells(vgg_layers),
                             "meta": {"normalization": {"averageImage": average}}})
    scipy.io.savemat(wrapped, {"layers": _layer_cells(vgg_layers, wrap=_cell),
                               "meta": _cell({"normalization": _cell({"averageImage": average})})})
    first, second = load_vgg_mat(plain), load_vgg_mat(wrapped)
    np.testing.assert_array_equal(second.mean_pixel, first.mean_pixel)
    np.testing.assert_allclose(second.mean_pixel, average.ravel())
    assert list(second.layers) == list(VGG19_CONVS)
    for name in VGG19_CONVS:
        np.testing.assert_array_equal(second.layers[name][0], first.layers[name][0])
        np.testing.assert_array_equal(second.layers[name][1], first.layers[name][1])


def test_a_layer_without_a_name_is_refused(tmp_path, vgg_layers):
    path = str(tmp_path / "noname.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers, names={"relu2_1": ""}),
                            "normalization": {"averageImage": np.array(TINY_MEAN)}})
    message = _error(path)
    assert "has no name" in message and "layers{" in message


def test_write_defaults_to_the_new_layout(tmp_path, vgg_layers):
    path = str(tmp_path / "default.mat")
    write_vgg_mat(path, vgg_layers, list(TINY_MEAN))
    vgg = load_vgg_mat(path)
    assert vgg.layout == "new" and "meta" in scipy.io.loadmat(path)
    np.testing.assert_allclose(vgg.mean_pixel, TINY_MEAN)


# ---- the written file is a MatConvNet simplenn VGG19, field by field ----

def _empty_cell(value):
    """MATLAB's {} (a 0x0 cell), as MatConvNet gives layers without weights."""
    return value.dtype == object and value.shape == (0, 0)


def _simplenn_vgg19_names(fc_names):
    """VGG19's layer names in MatConvNet order, written out independently."""
    names = []
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for index in range(1, convs + 1):
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
        names.append(f"pool{block}")
    for number in (6, 7, 8):
        if f"fc{number}" in fc_names:
            names.append(f"fc{number}")
            if number < 8:
                names.append(f"relu{number}")
    if fc_names:
        names.append("prob")
    return names


@pytest.mark.parametrize("layout", ["old", "new"])
@pytest.mark.parametrize("fc_names", [(), ("fc6", "fc7"), ("fc6", "fc7", "fc8")])
def test_written_file_is_a_simplenn_vgg19_field_by_field(tmp_path, vgg_layers, layout, fc_names):
    fc = {name: value for name, value in make_fc_layers(TINY_WIDTHS["conv5_4"]).items()
          if name in fc_names}
    doubles = {name: (kernel.astype(np.float64), bias.astype(np.float64))
               for name, (kernel, bias) in {**vgg_layers, **fc}.items()}
    path = str(tmp_path / "written.mat")
    write_vgg_mat(path, {n: doubles[n] for n in vgg_layers},
                  np.array([[101.0, 102.5, 99.0]]), layout=layout,
                  fc={n: doubles[n] for n in fc})
    raw = scipy.io.loadmat(path)
    records = [cell[0, 0] for cell in raw["layers"][0]]
    names = [str(record["name"][0]) for record in records]
    assert names == _simplenn_vgg19_names(fc_names)
    for name, record in zip(names, records):
        kind = str(record["type"][0])
        fields = record.dtype.names
        if layout == "new":
            assert fields[0] == "name"
        if name.startswith(("conv", "fc")):
            assert kind == "conv"
            if layout == "old":
                assert fields[0] == "weights"
            kernel, bias = record["weights"][0, 0], record["weights"][0, 1]
            want_kernel, want_bias = doubles[name]
            assert kernel.dtype == np.float32 and bias.dtype == np.float32
            np.testing.assert_array_equal(kernel, np.transpose(want_kernel, (1, 0, 2, 3))
                                          .astype(np.float32))
            want_shape = (1, want_bias.size) if layout == "old" else (want_bias.size, 1)
            assert bias.shape == want_shape
            np.testing.assert_array_equal(bias.ravel(), want_bias.astype(np.float32))
            pad = 0 if name.startswith("fc") else 1
            np.testing.assert_array_equal(record["pad"], np.full((1, 4), pad))
            assert record["pad"].dtype == np.float64  # MATLAB doubles
            np.testing.assert_array_equal(record["stride"], np.ones((1, 2)))
            if layout == "new":
                np.testing.assert_array_equal(record["size"], [kernel.shape])
        elif name.startswith("relu"):
            assert kind == "relu"
            if layout == "new":
                assert float(record["leak"][0, 0]) == 0.0 and _empty_cell(record["weights"])
            else:
                assert set(fields) == {"type", "name"}
        elif name.startswith("pool"):
            assert kind == "pool" and str(record["method"][0]) == "max"
            np.testing.assert_array_equal(record["pool"], np.full((1, 2), 2.0))
            np.testing.assert_array_equal(record["stride"], np.full((1, 2), 2.0))
            np.testing.assert_array_equal(record["pad"], np.zeros((1, 4)))
            if layout == "new":
                assert _empty_cell(record["weights"])
        else:
            assert name == "prob" and kind == "softmax"
            if layout == "new":
                assert _empty_cell(record["weights"])
            else:
                assert set(fields) == {"type", "name"}
    # The ImageNet class list is written as empty cells, where MatConvNet keeps it.
    classes = raw["classes"][0, 0] if layout == "old" else raw["meta"][0, 0]["classes"][0, 0]
    assert set(classes.dtype.names) == {"name", "description"}
    assert classes["name"].shape == classes["description"].shape == (1, 0)
    assert classes["description"].dtype == object  # a cell
    if layout == "old":
        average = raw["normalization"][0, 0]["averageImage"]
        assert average.shape == (224, 224, 3) and average.dtype == np.float32
    else:
        assert "normalization" not in raw and "classes" not in raw
        average = raw["meta"][0, 0]["normalization"][0, 0]["averageImage"]
        assert average.shape == (1, 1, 3) and average.dtype == np.float32
    np.testing.assert_array_equal(average.reshape(-1, 3),
                                  np.broadcast_to(np.float32([101.0, 102.5, 99.0]),
                                                  (average.size // 3, 3)))


# ---- the loader's remaining rules ----

def _file_with(tmp_path, layers, name="f.mat", **top):
    path = str(tmp_path / name)
    contents = {"layers": _layer_cells(layers), "normalization": {"averageImage":
                                                                   np.array(TINY_MEAN)}}
    contents.update(top)
    scipy.io.savemat(path, contents)
    return path


def test_kernels_without_their_trailing_singleton_axes_are_read_whole(tmp_path):
    """MATLAB drops trailing axes of size 1: a [3, 3, 3, 1] kernel is stored as
    [3, 3, 3], and a [3, 3, 1, 1] one as [3, 3]."""
    widths = dict(TINY_WIDTHS, conv1_1=1, conv1_2=1)
    layers = make_vgg_layers(widths=widths, seed=5)
    path = str(tmp_path / "thin.mat")
    cells = _layer_cells(layers)
    for cell in cells[0]:
        record = cell
        if record["name"] in ("conv1_1", "conv1_2"):
            kernel = record["weights"][0, 0]
            record["weights"][0, 0] = kernel.reshape(kernel.shape[:2] + tuple(
                d for d in kernel.shape[2:] if d != 1)) if record["name"] == "conv1_2" \
                else kernel[:, :, :, 0]
    scipy.io.savemat(path, {"layers": cells, "normalization": {"averageImage": np.array(TINY_MEAN)}})
    stored = scipy.io.loadmat(path)["layers"][0]
    assert stored[0][0, 0]["weights"][0, 0].ndim == 3 and stored[2][0, 0]["weights"][0, 0].ndim == 2
    vgg = load_vgg_mat(path)
    assert vgg.path == path
    for name in ("conv1_1", "conv1_2", "conv2_1"):
        assert vgg.layers[name][0].shape == layers[name][0].shape
        np.testing.assert_array_equal(vgg.layers[name][0], layers[name][0])


@pytest.mark.parametrize("part", ["kernel", "bias"])
def test_non_finite_weights_name_the_layer_and_the_part(tmp_path, vgg_layers, part):
    kernel, bias = vgg_layers["conv3_2"]
    if part == "kernel":
        kernel = kernel.copy()
        kernel[1, 1, 0, 0] = np.inf
    else:
        bias = bias.copy()
        bias[0] = np.nan
    vgg_layers["conv3_2"] = (kernel, bias)
    message = _error(_file_with(tmp_path, vgg_layers))
    assert f"layer 'conv3_2': {part}" in message


def test_messages_name_what_is_missing_and_why(tmp_path, vgg_layers):
    path = str(tmp_path / "gap.mat")
    scipy.io.savemat(path, {"layers": _layer_cells(vgg_layers, names={"conv3_2": "conv3_x"}),
                            "normalization": {"averageImage": np.array(TINY_MEAN)}})
    message = _error(path)
    assert message.endswith("layer 'conv3_2' not found (expected the 16 conv layers of "
                            "imagenet-vgg-verydeep-19)")
    kernel, bias = vgg_layers["conv1_1"]
    first = dict(vgg_layers, conv1_1=(np.zeros((3, 3, 4, kernel.shape[3]), np.float32), bias))
    assert "kernel has 4 input channels but the image has 3" in _error(
        _file_with(tmp_path, first, "rgba.mat"))


def test_the_fc_layers_the_paper_needs_are_fc6_and_fc7(tmp_path, vgg_layers):
    fc = make_fc_layers(TINY_WIDTHS["conv5_4"])
    path = str(tmp_path / "nofc8.mat")
    write_vgg_mat(path, vgg_layers, TINY_MEAN, fc={n: fc[n] for n in ("fc6", "fc7")})
    vgg = load_vgg_mat(path, require_fc=True)
    assert sorted(vgg.fc) == ["fc6", "fc7"]


def test_a_file_without_layers_lists_its_variables(tmp_path):
    path = str(tmp_path / "two.mat")
    scipy.io.savemat(path, {"beta": np.zeros(2), "alpha": np.ones(1)})
    assert "no 'layers' variable; expected a MatConvNet model (found: alpha, beta)" in _error(path)
    empty = str(tmp_path / "empty.mat")
    scipy.io.savemat(empty, {})
    assert "(found: none)" in _error(empty)


def test_an_empty_layer_list_is_a_missing_layer(tmp_path):
    path = str(tmp_path / "nolayers.mat")
    scipy.io.savemat(path, {"layers": np.empty((1, 0), dtype=object),
                            "normalization": {"averageImage": np.array(TINY_MEAN)}})
    assert "layer 'conv1_1' not found" in _error(path)


def test_write_refuses_an_unknown_layout(tmp_path, vgg_layers):
    with pytest.raises(ValueError, match="layout"):
        write_vgg_mat(str(tmp_path / "x.mat"), vgg_layers, TINY_MEAN, layout="newest")
    assert not (tmp_path / "x.mat").exists()


@pytest.mark.parametrize("part", ["kernel", "bias"])
def test_text_weights_name_the_layer_and_the_part(tmp_path, vgg_layers, part):
    cells = _layer_cells(vgg_layers)
    for cell in cells[0]:
        if cell["name"] == "conv2_2":
            cell["weights"][0, 0 if part == "kernel" else 1] = "abc"
    path = str(tmp_path / "text.mat")
    scipy.io.savemat(path, {"layers": cells, "normalization": {"averageImage": np.array(TINY_MEAN)}})
    assert f"layer 'conv2_2': {part} holds" in _error(path)


def test_a_mean_out_of_range_names_the_file(tmp_path, vgg_layers):
    path = _file_with(tmp_path, vgg_layers, normalization={"averageImage": np.array([300.0, 1, 2])})
    assert f"{path}: averageImage" in _error(path)
