"""Shared fixtures: tiny VGG19-shaped weights and `.mat` files in both layouts."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers  # noqa: E402

from fcn_graph.weights.matconvnet import write_vgg_mat  # noqa: E402

# Test files that run TensorFlow's convolution, pooling and upsampling kernels
# and compare their results (or errors) with a reference: marked `kernels`, so
# that .ci/run runs them under both kernel sets, Eigen (TF_ENABLE_ONEDNN_OPTS=0)
# and oneDNN (=1). A test elsewhere can carry @pytest.mark.kernels itself.
KERNEL_TEST_FILES = ("test_bench.py", "test_blocks.py", "test_export.py", "test_forward.py",
                     "test_kernels.py", "test_model.py", "test_onnx_engine.py", "test_upsample.py",
                     "test_variants.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in KERNEL_TEST_FILES:
            item.add_marker(pytest.mark.kernels)


@pytest.fixture(autouse=True)
def own_model_cache(tmp_path_factory, monkeypatch):
    """Each test its own model cache (fcn_graph.engines.model_cache), never the user's;
    subprocesses inherit it through the environment."""
    monkeypatch.setenv("FCN_GRAPH_CACHE", str(tmp_path_factory.mktemp("model_cache")))


@pytest.fixture
def vgg_layers():
    return make_vgg_layers()


@pytest.fixture(params=["old", "new"])
def tiny_mat(request, tmp_path, vgg_layers):
    """A tiny VGG19-shaped `.mat` in the old or the new MatConvNet layout."""
    path = str(tmp_path / f"vgg_{request.param}.mat")
    fc = make_fc_layers(TINY_WIDTHS["conv5_4"])
    write_vgg_mat(path, vgg_layers, TINY_MEAN, fc=fc, layout=request.param)
    return path

from datafixtures import ade_root, folder_root, pets_root, voc_root  # noqa: E402, F401
