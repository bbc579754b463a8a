"""Smoke test of the benchmark's pieces on a tiny-width network (not a timing test)."""

import argparse
import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import cases, harness, report, worker
from fcn_graph import bench as bench_command
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.network import definition
from fcn_graph.network.spec import scaled_vgg_widths
from fcn_graph.weights import checkpoint


def _args(tmp_path, **kwargs):
    values = dict(prefix=str(tmp_path / "w"), threads=2, warmup=1, repeats=2, min_seconds=0.0,
                  variant="tf", save_logits=None, profile=True, kernels="auto")
    values.update(kwargs)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("variant", ["tf-cpu", "tf-reference"])
def test_inference_case_profile_and_rows(tmp_path, monkeypatch, variant):
    monkeypatch.setitem(cases.CASES, "tiny", (1, 37, 45, False))
    args = _args(tmp_path, variant=variant)
    worker.make_weights(args.prefix, num_classes=3, width_multiplier=1 / 64, fc_width=8)
    result = worker.run_inference_case(args, "tiny")
    assert len(result["times_s"]) == 2 and result["first_call_s"] > 0
    profile = result["profile"]
    layers = profile["layers_ms"]
    # every layer of the graph that runs is found, conv5_4 is not among them
    for name in ("conv1_1", "pool4", "conv5_3", "pool5", "conv6", "conv_t1", "conv_t3"):
        assert name in layers, name
    assert "conv5_4" not in layers
    ends = [layer for layer, _ in definition.layer_ends(checkpoint.model_spec_from_checkpoint(args.prefix))]
    assert set(ends) <= set(layers), set(ends) - set(layers)
    # the reference kernels upsample with tf.nn.conv2d_transpose, the cpu ones do not
    transposed = [kind for kind in profile["op_kinds_ms"] if "Conv2DBackpropInput" in kind]
    assert bool(transposed) == (variant == "tf-reference"), profile["op_kinds_ms"]
    # the convolutions are fused with their bias and ReLU, under either kernel set:
    # _FusedConv2D (Eigen) or _MklNativeFusedConv2D / _MklNativePadWithFusedConv2D (oneDNN)
    assert any(kind.endswith("FusedConv2D") for kind in profile["fused_kinds"]), profile
    assert not any(kind in profile["op_kinds_ms"] for kind in ("Conv2D", "_MklNativeConv2D"))
    row = report.format_row({"variant": "tf", "case": "tiny", "gflop": 1.0,
                             "median_ms_per_image": 2.0, "median_ms_per_call": 2.0,
                             "min_ms_per_image": 1.5, "images_per_s": 500.0, "gflops": 0.5,
                             "run_peak_mib": 100.0, "fraction_of_sgemm": 0.25})
    assert "25%" in row and "tiny" in row


@pytest.mark.parametrize("kind,fused", [
    ("_FusedConv2D", True), ("_FusedMatMul", True), ("_MklNativeFusedConv2D", True),
    ("_MklNativePadWithFusedConv2D", True), ("_MklFusedMatMul", True),
    ("Conv2D", False), ("_MklNativeConv2D", False), ("_MklMatMul", False), ("BiasAdd", False),
])
def test_fused_kinds_of_both_kernel_sets(kind, fused):
    assert worker.is_fused_kind(kind) is fused


def test_training_case_lowers_the_loss(tmp_path, monkeypatch):
    monkeypatch.setitem(cases.CASES, "tiny_train", (2, 32, 32, True))
    args = _args(tmp_path, repeats=3, profile=False)
    worker.make_weights(args.prefix, num_classes=3, width_multiplier=1 / 64, fc_width=8)
    result = worker.run_training_case(args, "tiny_train")
    assert len(result["times_s"]) == 3
    # four Adam steps on one repeated batch: the loss goes down
    assert np.isfinite(result["loss_first"]) and result["loss_last"] < result["loss_first"]


def test_relative_error_and_lists():
    assert harness.max_relative_error(np.array([1.0, 2.1]), np.array([1.0, 2.0])) == pytest.approx(0.05)
    with pytest.raises(UserError, match="--cases"):
        cases.parse_list("224_b1,nope", cases.CASES, "--cases")
    with pytest.raises(UserError, match="--variants"):
        cases.parse_variants("tf,tf-fast")
    assert cases.variant_settings("tf-onednn-reference")[1] == {"kernels": "reference"}
    with pytest.raises(ValueError):
        cases.variant_settings("tf-transposed")


# --------------------------------------------------------------------------- the command


def test_the_command_runs_the_checkouts_harness():
    assert bench_command.load_harness() is harness
    assert bench_command.build_parser().prog == "python -m fcn_graph.bench"


def test_without_a_checkout_the_command_says_so_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_command, "CHECKOUT", str(tmp_path))
    assert run_cli(bench_command.main, ["--help"], prog="fcn_graph.bench") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the benchmark needs a source checkout" in err, err
    assert str(tmp_path) in err


def test_a_worker_process_runs_from_another_folder(tmp_path, monkeypatch):
    # the worker is `python -m fcn_graph.bench --worker ...`; the checkout is put
    # on its path, so it runs whatever the current folder and PYTHONPATH
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    args = argparse.Namespace(threads=1, warmup=1, repeats=1, min_seconds=0.0, num_classes=3,
                              fc_width=8, width_multiplier=1 / 64, sgemm_size=64,
                              sgemm_repeats=1, kernels="auto", backbone="vgg19")
    result = tmp_path / "sgemm.json"
    extra = harness._worker_args(args, str(tmp_path / "w"), str(result), "tf", "sgemm")
    assert harness._spawn(args, extra) is None
    assert result.read_text().startswith('{"median_gflops": ')


def test_help_from_another_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=harness.CHECKOUT)
    proc = subprocess.run([sys.executable, "-m", "fcn_graph.bench", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--variants" in proc.stdout and "--kernels" in proc.stdout


def test_no_library_module_imports_the_benchmark():
    package = os.path.join(harness.CHECKOUT, "fcn_graph")
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py") or name == "bench.py":
            continue
        with open(os.path.join(package, name), encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] != "bench" and module != "fcn_graph.bench", \
                    f"fcn_graph/{name} imports {module}"


@pytest.mark.parametrize("cpuinfo_text,features,bf16,int8", [
    ("flags\t: fpu avx2 fma avx512f avx512_bf16 avx512_vnni\n",
     "avx2 fma avx512f avx512_bf16 avx512_vnni", "native", "native"),
    ("flags\t: fpu avx2 fma\n", "avx2 fma", "refused", "7-bit weights, slow"),
])
def test_the_report_names_the_cpu_features_and_choices(tmp_path, monkeypatch, cpuinfo_text,
                                                       features, bf16, int8):
    from fcn_graph.host import cpuinfo
    path = tmp_path / "cpuinfo"
    path.write_text("model name\t: Test CPU\n" + cpuinfo_text)
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(path))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    machine = harness.machine_info()
    assert machine["features"] == features.split()
    line = report.format_report({"machine": machine, "results": []}).splitlines()[0]
    assert f"flags {features};" in line and "oneDNN off" in line
    assert f"bfloat16 {bf16}; int8 {int8}" in line


def test_optimizer_update_ceiling_and_a_tiny_run(capsys):
    from bench import optimizer_update
    # 300 GFLOP at 300 GFLOP/s is 1 s of convolutions; a 0.25 s update makes the
    # step 1.25 s: 240 GFLOP/s, 80 % of sgemm.
    assert optimizer_update.ceiling(300.0, 300.0, 0.25) == pytest.approx(0.8)
    assert optimizer_update.ceiling(300.0, 300.0, 0.0) == pytest.approx(1.0)
    assert optimizer_update.main(["--width-multiplier", "0.125", "--fc-width", "8",
                                  "--num-classes", "3", "--repeats", "1", "--sgemm", "50",
                                  "--step-gflop", "5"]) == 0
    out = capsys.readouterr().out
    shapes = definition.variable_shapes(3, vgg_widths=scaled_vgg_widths(0.125),
                                       fc_width=8)
    count = sum(int(np.prod(shape)) for shape in shapes.values())
    assert f"adam update over {count / 1e6:.1f} M weights" in out
    assert f"{count * 4 * 7 / 1e9:.2f} GB moved" in out
    assert "a step of 5.0 GFLOP at sgemm 50.0 GFLOP/s: at most" in out
    for argv in (["--repeats", "0"], ["--sgemm", "0"], ["--step-gflop", "-1"]):
        with pytest.raises(SystemExit):
            optimizer_update.main(argv)
    assert "--sgemm: expected a number in (0, 1e+09], found '0'" in capsys.readouterr().err


def test_allreduce_model_against_a_hand_worked_step():
    from bench import allreduce_sim
    assert allreduce_sim.ring_seconds(1000, 4, 1000, 0.01) == pytest.approx(1.5 + 6 * 0.01)
    # Creation order; the last layer's gradient (c) is ready first. 1000 bytes/s, no latency.
    profile = {"variables": [["a", 400, 1.0], ["b", 100, 0.5], ["c", 300, 0.2]],
               "backward_s": 1.0, "update_s": 0.1}
    run = dict(workers=2, gbit=8e-6, latency_s=0.0)
    # Flat: 800 bytes from 1.0 s take 0.8 s, then the update.
    assert allreduce_sim.simulate(profile, dtype="float32", cap=None, **run) == pytest.approx(
        (1.9, 1.1 / 1.9))
    # Buckets [c, b] (ready 0.5, done 0.9) and [a] (ready 1.0, done 1.4).
    assert allreduce_sim.simulate(profile, dtype="float32", cap=400, **run) == pytest.approx(
        (1.5, 1.1 / 1.5))
    # bfloat16: half the bytes; [c, b] done 0.7, [a] done 1.2.
    assert allreduce_sim.simulate(profile, dtype="bfloat16", cap=250, **run) == pytest.approx(
        (1.3, 1.1 / 1.3))
    # Scaled to a 2.2 s step: every time doubles, the link does not.
    assert allreduce_sim.simulate(profile, dtype="float32", cap=400, compute_s=2.2,
                                  **run) == pytest.approx((2.6, 2.2 / 2.6))
