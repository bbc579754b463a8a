"""Each training and command-line option does what it claims: SGD with momentum,
the poly schedule, weight decay, keep_checkpoints, --precision, --xla, --alpha,
--threads, --no-transpose, --no-verify, and the benchmark's low-precision label."""

import argparse
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tfutil import build_graph
from tinyvgg import TINY_MEAN, TINY_WIDTHS, make_fc_layers, make_vgg_layers

from bench import cases, harness
from bench.report import FP32_MARK, FP32_NOTE, format_report, format_row
from fcn_graph import export, infer, port
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.data import image_files
from fcn_graph.engines import exporters
from fcn_graph.engines import segmenter as segmenter_module
from fcn_graph.host import cpuinfo, session
from fcn_graph.network.spec import ModelSpec
from fcn_graph.training import loop as train_module
from fcn_graph.training.config import load_config
from fcn_graph.weights import checkpoint
from fcn_graph.weights.matconvnet import write_vgg_mat

tf1 = tf.compat.v1
NUM_CLASSES = 4


# --------------------------------------------------------------------------- training options


def _run_steps(build, steps):
    """Values of variable `w` after each of `steps` runs of the op `build` makes."""
    graph = tf.Graph()
    with graph.as_default():
        w = tf1.get_variable("w", initializer=np.array([1.0, -2.0, 0.5], np.float32))
        op = build(w)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            values = [sess.run(w)]
            for _ in range(steps):
                sess.run(op)
                values.append(sess.run(w))
            return values


def test_sgd_momentum_follows_its_update_rule():
    """accumulator = momentum * accumulator + gradient; w -= rate * accumulator."""
    c = np.array([0.3, -1.0, 2.0], np.float32)  # the constant gradient of sum(c * w)
    rate, momentum = 0.1, 0.7
    values = _run_steps(lambda w: train_module.make_optimizer(
        "sgd", rate, momentum=momentum).minimize(tf.reduce_sum(c * w)), 3)
    accumulator, w = np.zeros(3), values[0].astype(np.float64)
    for got in values[1:]:
        accumulator = momentum * accumulator + c
        w = w - rate * accumulator
        np.testing.assert_allclose(got, w, rtol=1e-6)
    adam = _run_steps(lambda w: train_module.make_optimizer("adam", rate).minimize(
        tf.reduce_sum(c * w)), 1)
    # Adam's first step is rate * sign(gradient), whatever its size
    np.testing.assert_allclose(adam[1], values[0] - rate * np.sign(c), rtol=1e-4)


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_poly_schedule_follows_its_formula(power):
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.placeholder(tf.int64, [])
        poly = train_module.learning_rate(0.01, step, schedule="poly", max_steps=10, power=power)
        constant = train_module.learning_rate(0.01, step, schedule="constant", max_steps=10,
                                              power=power)
        with tf1.Session(graph=graph) as sess:
            for s in (0, 1, 4, 9, 10):
                got_poly, got_constant = sess.run([poly, constant], {step: s})
                assert got_poly == pytest.approx(0.01 * (1 - s / 10) ** power, rel=1e-5, abs=1e-9)
                assert got_constant == pytest.approx(0.01)


def test_weight_decay_adds_exactly_decay_times_w_to_the_kernel_gradients():
    spec = ModelSpec(num_classes=NUM_CLASSES, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()), mean_pixel=TINY_MEAN)
    graph, images, logits, _, _, variables = build_graph(spec)
    decay = 0.37
    with graph.as_default():
        labels = tf1.placeholder(tf.int32, [None, None, None])
        loss = train_module.segmentation_loss(logits, labels)
        total = loss + decay * train_module.kernel_l2(variables)
        names = sorted(variables)
        def gradients(of):
            found = tf1.gradients(of, [variables[n] for n in names])
            return [tf.zeros_like(variables[n]) if g is None else g for n, g in zip(names, found)]

        plain, decayed = gradients(loss), gradients(total)
        rng = np.random.default_rng(0)
        feed = {images: rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32),
                labels: rng.integers(0, NUM_CLASSES, (1, 16, 16)).astype(np.int32)}
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            values = sess.run(dict(variables))
            plain, decayed = sess.run([plain, decayed], feed)
    kernels = 0
    for name, g0, g1 in zip(names, plain, decayed):
        short = name.split("/")[-1]
        if short.endswith("_w") or short.startswith("W"):
            kernels += 1
            np.testing.assert_allclose(g1 - g0, decay * values[name], rtol=1e-3, atol=1e-6,
                                       err_msg=name)
        else:  # biases are not decayed
            np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-7, err_msg=name)
    assert kernels == 16 + 3 + 3  # the VGG body, W6..W8 and W_t1..W_t3


def _train_args(tmp_path, run, *extra):
    return [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=4",
            "data.shapes_val_images=1", "data.shapes_image_size=24",
            f"train.log_dir={tmp_path / run}", "model.vgg_width=0.0625", "model.fc_width=8",
            "train.image_size=24", "train.batch_size=2", "train.log_every=1",
            "train.eval_every=0", "train.threads=2", "train.keep_prob=1.0",
            "train.optimizer=sgd", "train.checkpoint_every=1", "train.learning_rate=0.01",
            *extra]


def _read(log_dir, step, names):
    return checkpoint.read_variables(os.path.join(log_dir, f"model.ckpt-{step}"), names)


def _logged_rates(log_dir):
    rates = {}
    for name in os.listdir(log_dir):
        if name.startswith("events.out.tfevents"):
            for event in tf1.train.summary_iterator(os.path.join(log_dir, name)):
                for value in event.summary.value:
                    if value.tag == "train/learning_rate":
                        rates[event.step] = value.simple_value
    return rates


def test_training_options_change_the_run_as_they_claim(tmp_path, monkeypatch):
    """One SGD step with and without weight decay (the momentum accumulator after
    one step is the gradient, so the two differ by decay * w0), then a poly
    schedule over three steps with keep_checkpoints=2."""
    calls = {"optimizer": [], "threads": []}
    real_make_optimizer, real_session_config = train_module.make_optimizer, \
        train_module.session_config

    def spy_optimizer(name, rate, *, momentum=0.9):
        calls["optimizer"].append((name, momentum))
        return real_make_optimizer(name, rate, momentum=momentum)

    def spy_session_config(threads=None, **kwargs):
        calls["threads"].append(threads)
        return real_session_config(threads, **kwargs)

    monkeypatch.setattr(train_module, "make_optimizer", spy_optimizer)
    monkeypatch.setattr(train_module, "session_config", spy_session_config)
    w, b = "inference/conv2_1_w", "inference/conv2_1_b"
    slots = [w, b, w + "/Momentum", b + "/Momentum"]
    decay, rate = 0.5, 0.01
    runs = {}
    for run, extra in (("plain", []), ("decayed", [f"train.weight_decay={decay}"])):
        train_module.train(load_config(None, _train_args(
            tmp_path, run, "train.max_steps=1", "train.momentum=0.3", *extra)))
        runs[run] = _read(tmp_path / run, 1, slots)
    assert calls["optimizer"] == [("sgd", 0.3)] * 2 and calls["threads"][:1] == [2]
    plain, decayed = runs["plain"], runs["decayed"]
    # both start from the same seeded weights: w1 = w0 - rate * accumulator
    w0 = decayed[w] + rate * decayed[w + "/Momentum"]
    np.testing.assert_allclose(plain[w] + rate * plain[w + "/Momentum"], w0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(decayed[w + "/Momentum"] - plain[w + "/Momentum"], decay * w0,
                               rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(decayed[b + "/Momentum"], plain[b + "/Momentum"], rtol=1e-4,
                               atol=1e-6)

    log_dir = tmp_path / "poly"
    train_module.train(load_config(None, _train_args(
        tmp_path, "poly", "train.max_steps=3", "train.lr_schedule=poly", "train.lr_power=2",
        "train.momentum=0.6", "train.keep_checkpoints=2")))
    rates = _logged_rates(log_dir)
    # the rate of the update that made step s is the one at global step s - 1
    for s in (1, 2, 3):
        assert rates[s] == pytest.approx(rate * (1 - (s - 1) / 3) ** 2, rel=1e-5)
    step2, step3 = _read(log_dir, 2, slots), _read(log_dir, 3, slots)
    np.testing.assert_allclose(step3[w], step2[w] - rates[3] * step3[w + "/Momentum"],
                               rtol=1e-5, atol=1e-7)
    kept = sorted(name for name in os.listdir(log_dir) if name.endswith(".index"))
    assert kept == ["model.ckpt-2.index", "model.ckpt-3.index"]
    assert not any(name.startswith("model.ckpt-1.") for name in os.listdir(log_dir))
    assert tf.train.latest_checkpoint(str(log_dir)).endswith("model.ckpt-3")


@pytest.mark.parametrize("schedule, power", [("constant", 1.0), ("poly", 2.0)])
def test_warmup_raises_the_rate_linearly_then_follows_the_schedule(tmp_path, schedule, power):
    """train.warmup_steps=3 over 4 steps: the rate of global step g is the
    schedule's times min(1, (g + 1) / 3), and each SGD step moves the weights
    by that rate."""
    rate, steps = 0.01, 4
    log_dir = tmp_path / schedule
    train_module.train(load_config(None, _train_args(
        tmp_path, schedule, f"train.max_steps={steps}", f"train.lr_schedule={schedule}",
        f"train.lr_power={power}", "train.warmup_steps=3", "train.momentum=0.0",
        f"train.keep_checkpoints={steps}")))
    rates = _logged_rates(log_dir)
    for s in range(1, steps + 1):
        g = s - 1  # the rate of the update that made step s
        decay = 1.0 if schedule == "constant" else (1 - g / steps) ** power
        assert rates[s] == pytest.approx(rate * decay * min(1.0, (g + 1) / 3), rel=1e-5)
    w = "inference/conv2_1_w"
    step1, step2 = _read(log_dir, 1, [w, w + "/Momentum"]), _read(log_dir, 2, [w, w + "/Momentum"])
    # momentum 0: the accumulator is the gradient, and w2 = w1 - rate_2 * grad
    np.testing.assert_allclose(step2[w], step1[w] - rates[2] * step2[w + "/Momentum"],
                               rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- command options


@pytest.fixture(scope="module")
def mat_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("options") / "vgg.mat")
    write_vgg_mat(path, make_vgg_layers(), TINY_MEAN, fc=make_fc_layers(TINY_WIDTHS["conv5_4"]))
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, mat_file):
    prefix = str(tmp_path_factory.mktemp("ckpt") / "start")
    assert port.main(["mat2ckpt", mat_file, "--num-classes", str(NUM_CLASSES), "--fc-width", "6",
                      "--out", prefix]) == 0
    return prefix


def test_no_transpose_keeps_the_file_order_of_the_kernels(tmp_path, mat_file, capsys):
    layers = make_vgg_layers()
    stored = {}
    for flags in ((), ("--no-transpose",)):
        prefix = str(tmp_path / ("kept" if flags else "swapped"))
        assert port.main(["mat2ckpt", mat_file, "--num-classes", "3", "--fc-width", "6",
                          "--out", prefix, *flags]) == 0
        stored[bool(flags)] = checkpoint.read_variables(prefix, ["inference/conv1_1_w",
                                                                 "inference/conv3_2_w"])
    for name in ("conv1_1", "conv3_2"):
        kernel = layers[name][0]  # TensorFlow order; the file holds it swapped
        assert not np.array_equal(kernel, np.transpose(kernel, (1, 0, 2, 3)))
        np.testing.assert_array_equal(stored[False][f"inference/{name}_w"], kernel)
        np.testing.assert_array_equal(stored[True][f"inference/{name}_w"],
                                      np.transpose(kernel, (1, 0, 2, 3)))
    assert "kernels kept in file order" in capsys.readouterr().out


def test_no_verify_skips_the_comparison(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(exporters, "TOLERANCE", -1.0)  # any verification now fails
    argv = ["--checkpoint", tiny_checkpoint, "--format", "frozen"]
    code = run_cli(export.main, argv + ["--out", str(tmp_path / "checked.pb")],
                   prog="fcn_graph.export")
    assert code == 2 and "scores differ" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "checked.pb")
    assert export.main(argv + ["--out", str(tmp_path / "unchecked.pb"), "--no-verify"]) == 0
    assert os.path.getsize(tmp_path / "unchecked.pb") > 0


def _write_image(path, seed=0, shape=(13, 17, 3)):
    rgb = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    cv2.imwrite(str(path), rgb[..., ::-1])
    return rgb


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_sets_the_overlay_blend(tmp_path, tiny_checkpoint, alpha):
    rgb = _write_image(tmp_path / "a.png")
    out = tmp_path / "out"
    assert infer.main([str(tmp_path / "a.png"), "--checkpoint", tiny_checkpoint,
                       "--output-dir", str(out), "--alpha", str(alpha)]) == 0
    label = image_files.read_label(str(out / "a.png"))
    overlay = cv2.imread(str(out / "a_overlay.png"))[..., ::-1]
    colour = image_files.colorize(label).astype(np.float64)
    want = np.rint((1 - alpha) * rgb + alpha * colour).astype(np.uint8)
    want[label == 0] = rgb[label == 0]  # class 0 shows the image
    assert (label != 0).any()
    np.testing.assert_array_equal(overlay, want)


def test_threads_xla_and_precision_reach_the_segmenter(tmp_path, tiny_checkpoint, monkeypatch):
    seen = []
    real = segmenter_module.make_segmenter

    def spy(prefix, **kwargs):
        seen.append(kwargs)
        return real(prefix, **kwargs)

    monkeypatch.setattr(segmenter_module, "make_segmenter", spy)
    _write_image(tmp_path / "a.png")
    assert infer.main([str(tmp_path / "a.png"), "--checkpoint", tiny_checkpoint,
                       "--output-dir", str(tmp_path / "out"), "--threads", "1", "--xla"]) == 0
    assert seen[0]["threads"] == 1 and seen[0]["xla"] is True
    assert seen[0]["precision"] == "float32"


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_sets_the_ops_threads(threads):
    config = session.session_config(threads)
    assert config.intra_op_parallelism_threads == threads
    assert config.inter_op_parallelism_threads == 1
    assert session.session_config(None).intra_op_parallelism_threads == session.cpu_count()


def test_xla_compiles_the_graph_to_the_same_scores(tmp_path, tiny_checkpoint):
    image = np.random.default_rng(1).integers(0, 256, (1, 19, 23, 3), dtype=np.uint8)
    scores = {}
    for xla in (False, True):
        segmenter = segmenter_module.Segmenter(tiny_checkpoint, threads=2, xla=xla)
        try:
            scores[xla] = segmenter.run(image, scores=True)[1]
            marked = [op for op in segmenter.graph.get_operations()
                      if op.type == "Conv2D" and "_XlaCompile" in op.node_def.attr
                      and op.get_attr("_XlaCompile")]
        finally:
            segmenter.close()
        assert bool(marked) == xla
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-4,
                               atol=1e-4 * np.abs(scores[False]).max())


def test_precision_bfloat16_rounds_the_convolutions(tiny_checkpoint):
    image = np.random.default_rng(2).integers(0, 256, (1, 21, 18, 3), dtype=np.uint8)
    features = cpuinfo.cpu_features()
    if features and not cpuinfo.has_bf16_units(features):
        with pytest.raises(UserError, match="--precision bfloat16: this CPU has no bfloat16"):
            segmenter_module.Segmenter(tiny_checkpoint, precision="bfloat16")
        return
    if not session.onednn_enabled():
        with pytest.raises(UserError, match="--precision bfloat16: .*TF_ENABLE_ONEDNN_OPTS=1"):
            segmenter_module.Segmenter(tiny_checkpoint, precision="bfloat16")
        return
    scores = {}
    for precision in ("float32", "bfloat16"):
        segmenter = segmenter_module.Segmenter(tiny_checkpoint, threads=2, precision=precision)
        try:
            scores[precision] = segmenter.run(image, scores=True)[1]
        finally:
            segmenter.close()
    scale = np.abs(scores["float32"]).max()
    difference = np.abs(scores["bfloat16"] - scores["float32"]).max() / scale
    # bfloat16 keeps 8 significant bits: off by more than float32 rounding, by
    # less than a few bfloat16 steps
    assert 1e-5 < difference < 0.1, difference
    assert scores["bfloat16"].dtype == np.float32


def test_precision_float16_needs_a_gpu(tiny_checkpoint):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="--precision float16: needs a GPU"):
        segmenter_module.Segmenter(tiny_checkpoint, precision="float16")
    with pytest.raises(UserError, match="--engine onnxruntime runs float32"):
        segmenter_module.make_segmenter(tiny_checkpoint, engine="onnxruntime", precision="bfloat16")


# --------------------------------------------------------------------------- benchmark label


def _bench_args(tmp_path):
    return argparse.Namespace(prefix=str(tmp_path / "w"), threads=2, warmup=1, repeats=1,
                              min_seconds=0.0, num_classes=3, fc_width=8, width_multiplier=1 / 64,
                              sgemm_size=64, sgemm_repeats=1, variants="tf", save_logits=None,
                              kernels="auto", backbone="vgg19")


@pytest.mark.parametrize("variant", ["tf", "tf-bf16", "tf-onednn-bf16"])
def test_low_precision_figures_are_not_read_against_the_fp32_peak(tmp_path, monkeypatch, variant):
    def fake_spawn(args, extra, env=None, timeout=900):
        result = extra[extra.index("--result") + 1]
        with open(result, "w", encoding="utf-8") as handle:
            json.dump({"times_s": [0.001], "first_call_s": 0.01, "run_peak_mib": 1.0,
                       "process_peak_mib": 1.0, "load_peak_mib": 1.0}, handle)

    monkeypatch.setattr(harness, "_spawn", fake_spawn)
    monkeypatch.setitem(cases.CASES, "tiny", (1, 32, 32, False))
    peak = 1e-3  # GFLOP/s, below what the fake timing gives
    record = harness._run_one(_bench_args(tmp_path), str(tmp_path), "w", variant, "tiny", peak)
    row = format_row(record)
    report = format_report({"results": [record]})
    percent = 100 * record["gflops"] / peak
    assert percent > 100
    if variant == "tf":
        assert record["fraction_of_sgemm"] == pytest.approx(record["gflops"] / peak)
        assert f"{percent:.0f}%" in row and FP32_MARK not in row.split()[-3]
        assert FP32_NOTE not in report
    else:
        assert "fraction_of_sgemm" not in record
        assert record["fraction_of_fp32_sgemm"] == pytest.approx(record["gflops"] / peak)
        assert f"{percent:.0f}%{FP32_MARK}" in row
        assert FP32_NOTE in report and "FP32" in FP32_NOTE
