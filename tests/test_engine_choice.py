"""--engine auto: which engine runs a checkpoint, and why (engine_choice)."""

import os

import pytest
from tinyvgg import write_tiny_checkpoint

from fcn_graph import infer
from fcn_graph.host import choice
from fcn_graph.host.choice import choose_engine


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory):
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt")))


@pytest.mark.parametrize("requested", ["tf", "onnxruntime"])
def test_a_named_engine_is_kept(requested):
    for precision in ("float32", "bfloat16", "int8"):
        assert choose_engine(requested, precision=precision, gpu=True,
                             has_onnxruntime=False) == (requested, "--engine")


@pytest.mark.parametrize("requested", [None, "auto"])
def test_auto_on_a_cpu_with_onnxruntime_is_onnxruntime(requested):
    engine, reason = choose_engine(requested, gpu=False, has_onnxruntime=True)
    assert engine == "onnxruntime"
    assert reason.startswith("auto:")


@pytest.mark.parametrize("kwargs, engine, why", [
    ({"precision": "int8", "gpu": True, "has_onnxruntime": True}, "onnxruntime", "int8"),
    ({"precision": "bfloat16", "gpu": False, "has_onnxruntime": True, "has_openvino": False},
     "tf", "bfloat16"),
    ({"precision": "bfloat16", "gpu": False, "has_openvino": True, "features": {"avx2"}},
     "tf", "bfloat16"),
    ({"precision": "float16", "gpu": False, "has_onnxruntime": True}, "tf", "float16"),
    ({"xla": True, "gpu": False, "has_onnxruntime": True}, "tf", "--xla"),
    ({"gpu": True, "has_onnxruntime": True}, "tf", "GPU"),
    ({"gpu": False, "has_onnxruntime": False}, "tf", "onnxruntime is not installed"),
])
def test_auto_falls_back_to_tensorflow_where_onnxruntime_cannot_serve(kwargs, engine, why):
    chosen, reason = choose_engine("auto", **kwargs)
    assert chosen == engine
    assert why in reason


def test_an_nvidia_gpu_counts_unless_cuda_visible_devices_hides_it(tmp_path):
    gpus = tmp_path / "gpus"
    assert not choice.gpu_visible({}, str(gpus))          # no driver
    gpus.mkdir()
    assert not choice.gpu_visible({}, str(gpus))          # driver, no GPU
    (gpus / "0000:00:1e.0").mkdir()
    assert choice.gpu_visible({}, str(gpus))
    assert choice.gpu_visible({"CUDA_VISIBLE_DEVICES": "0"}, str(gpus))
    for hidden in ("", "-1"):
        assert not choice.gpu_visible({"CUDA_VISIBLE_DEVICES": hidden}, str(gpus))
    (tmp_path / "file").write_text("")
    assert not choice.gpu_visible({}, str(tmp_path / "file"))   # not a folder


def test_onnxruntime_installed_follows_the_import_system(monkeypatch):
    monkeypatch.setattr(choice.importlib.util, "find_spec", lambda name: None)
    assert not choice.onnxruntime_installed()
    monkeypatch.setattr(choice.importlib.util, "find_spec", lambda name: object())
    assert choice.onnxruntime_installed()


@pytest.mark.parametrize("has_onnxruntime, engine", [(True, "onnxruntime"), (False, "tf")])
def test_infer_names_the_engine_auto_chose(tmp_path, tiny_prefix, monkeypatch, capsys,
                                           has_onnxruntime, engine):
    import numpy as np
    from PIL import Image

    monkeypatch.setattr(choice, "gpu_visible", lambda: False)
    monkeypatch.setattr(choice, "onnxruntime_installed", lambda: has_onnxruntime)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert infer.main([str(tmp_path / "a.png"), "--checkpoint", tiny_prefix,
                       "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"engine {engine} (auto: " in err
    assert os.path.exists(out / "a.png")


ZEN4 = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}
XEON_AMX = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("features, has_openvino, engine", [
    (ZEN4, True, "openvino"),          # measured: OpenVINO bf16 faster than TensorFlow's
    (XEON_AMX, True, "tf"),            # AMX: unmeasured, TensorFlow kept
    ({"avx2", "fma"}, True, "tf"),     # no bf16 units
    (ZEN4, False, "tf"),               # OpenVINO not installed
])
def test_bfloat16_runs_on_openvino_only_where_it_was_measured_faster(features, has_openvino,
                                                                      engine):
    chosen, reason = choose_engine("auto", precision="bfloat16", gpu=False,
                                   has_onnxruntime=True, has_openvino=has_openvino,
                                   features=features)
    assert chosen == engine
    assert ("OpenVINO" in reason) == (engine == "openvino")


def test_openvino_is_not_chosen_for_float32_xla_or_a_gpu():
    fixed = {"has_onnxruntime": True, "has_openvino": True, "features": ZEN4}
    assert choose_engine("auto", gpu=False, **fixed)[0] == "onnxruntime"
    assert choose_engine("auto", precision="bfloat16", xla=True, gpu=False, **fixed)[0] == "tf"
    assert choose_engine("auto", precision="bfloat16", gpu=True, **fixed)[0] == "tf"
    assert choose_engine("auto", precision="int8", gpu=False, **fixed)[0] == "onnxruntime"
    assert choose_engine("openvino", gpu=False, **fixed) == ("openvino", "--engine")
