"""The kernel sets and the one definition of the network.

Both TensorFlow kernel sets (`tf_layers.TFLayers`, the reference ops, and
`cpu_layers.CpuLayers`) give the same logits and gradients for every head;
`choose_kernels` picks by device; and a change to one layer of the definition
reaches the TensorFlow graph, the ONNX model and the FLOP count together.
"""

import types

import numpy as np
import pytest
import tensorflow as tf
from tfutil import random_values
from tinyvgg import TINY_MEAN, TINY_WIDTHS

from fcn_graph.engines.segmenter import Segmenter
from fcn_graph.host import choice
from fcn_graph.network import cpu_layers, definition, flops, tf_layers
from fcn_graph.network.spec import ModelSpec
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1

HEADS = [("legacy", "8s"), ("paper", "32s"), ("paper", "16s"), ("paper", "8s")]


def tiny_spec(architecture="legacy", skips="8s", num_classes=3):
    return ModelSpec(num_classes=num_classes, fc_width=6,
                               vgg_widths=tuple(TINY_WIDTHS.values()), mean_pixel=TINY_MEAN,
                               architecture=architecture, skips=skips)


def _close(got, want, rtol=1e-5):
    """Norm-wise relative error below rtol (element-wise ratios blow up near 0);
    returns whether `want` is non-zero (an all-zero `want` needs an all-zero `got`)."""
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= rtol * scale, np.abs(got - want).max() / scale
    return scale > 0


def live_values(variables, seed):
    """name -> random array with every ReLU mostly alive, so that every
    gradient is non-zero: kernels before a ReLU non-negative, all scaled by
    1 / fan-in."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, variable in variables.items():
        shape = variable.shape.as_list()
        value = rng.standard_normal(shape)
        if len(shape) == 4:
            short = name.split("/")[1]
            if short.startswith("conv") or short in ("W6", "W7"):
                value = np.abs(value)
            value *= 2.0 / (shape[0] * shape[1] * shape[2])
        else:
            value *= 0.1
        values[name] = value.astype(np.float32)
    return values


# Mixed forms of `CpuLayers` (as `cpu_choice` may pick them): conv6/conv7 form
# and row block (0: one product; 3 and 7 cut the tiny nets' rows into several
# blocks), upsampling form.
MIXED_FORMS = [dict(fc_form="conv", row_block=None, upsample_form="phases"),
               dict(fc_form="matmul", row_block=0, upsample_form="transpose"),
               dict(fc_form="matmul", row_block=7, upsample_form="phases"),
               dict(fc_form="matmul", row_block=3, upsample_form="transpose")]


@pytest.mark.parametrize("architecture,skips,forms",
                         [(a, s, None) for a, s in HEADS]
                         + [("legacy", "8s", f) for f in MIXED_FORMS]
                         + [("paper", "8s", f) for f in MIXED_FORMS[:2]])
def test_kernel_sets_give_the_same_logits_and_gradients(architecture, skips, forms,
                                                         monkeypatch):
    spec = tiny_spec(architecture, skips)
    cpu = "cpu"
    if forms is not None:
        # "auto" without a GPU takes the forms cpu_choice picks: these
        if tf.config.list_physical_devices("GPU"):
            pytest.skip("auto means the reference kernels where a GPU is seen")
        monkeypatch.setattr(choice, "chosen_forms",
                            lambda: types.SimpleNamespace(**forms))
        cpu = "auto"
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        seeds = tf1.placeholder(tf.float32, [None, None, None, spec.num_classes])
        results = {}
        for kernels in ("reference", cpu):  # one set of variables, shared
            logits, _, _ = tf_layers.build(images, spec,
                                               layers=choice.kernel_layers(kernels))
            variables = tf_layers.model_variables(graph)
            loss = tf.reduce_sum(logits * seeds)
            trainable = [v for v in variables.values() if v.trainable]
            grads = tf.gradients(loss, [images] + trainable)
            # legacy conv5_4 feeds nothing: no gradient under either set
            results[kernels] = (logits, [g for g in grads if g is not None])
        ops = {op.type for op in graph.get_operations()}
        # both forms are in the graph: the reference ops and the CPU forms
        assert {"Conv2DBackpropInput"} <= ops
        if forms is None or forms["upsample_form"] == "phases":
            assert "DepthToSpace" in ops
        if forms is None or forms["fc_form"] == "matmul":
            assert "ExtractImagePatches" in ops
        if forms is not None and forms["fc_form"] == "matmul":
            # row blocks run in a loop; block 0 is one product
            assert ("StatelessWhile" in ops) == (forms["row_block"] > 0)
    rng = np.random.default_rng(7)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, live_values(variables, seed=3))
        for n, h, w in ((2, 37, 45), (3, 17, 6), (2, 1, 1), (2, 70, 33)):
            feed = {images: rng.uniform(0, 255, (n, h, w, 3)).astype(np.float32),
                    seeds: rng.standard_normal((n, h, w, spec.num_classes)).astype(np.float32)}
            (ref_logits, ref_grads), (cpu_logits, cpu_grads) = sess.run(
                [results["reference"], results[cpu]], feed)
            assert ref_logits.shape == (n, h, w, spec.num_classes)
            assert _close(cpu_logits, ref_logits)
            assert len(cpu_grads) == len(ref_grads) == len(trainable) + 1 - (
                2 if architecture == "legacy" else 0)
            # each gradient to 1e-5 of the largest one: a small gradient is a sum
            # of large terms that cancel, and keeps their rounding
            scale = max(np.abs(g).max() for g in ref_grads)
            for got, want in zip(cpu_grads, ref_grads):
                assert np.abs(want).max() > 0
                assert np.abs(got - want).max() <= 1e-5 * scale


def test_choose_kernels_by_device():
    assert choice.choose_kernels("reference") == "reference"
    assert choice.choose_kernels("cpu") == "cpu"
    seen = "reference" if tf.config.list_physical_devices("GPU") else "cpu"
    assert choice.choose_kernels("auto") == seen
    assert choice.resolve_kernels("auto", lambda: True) == "reference"
    assert choice.resolve_kernels("auto", lambda: False) == "cpu"
    with pytest.raises(ValueError, match="unknown kernels 'gpu'"):
        choice.resolve_kernels("gpu", lambda: True)
    assert isinstance(choice.kernel_layers("cpu"), cpu_layers.CpuLayers)
    assert type(choice.kernel_layers("reference")) is tf_layers.TFLayers


@pytest.mark.parametrize("kernels,transposed", [("reference", 3), ("cpu", 0)])
def test_segmenter_builds_the_kernel_set_it_is_given(tmp_path, kernels, transposed):
    spec = tiny_spec()
    graph = tf.Graph()
    with graph.as_default():
        tf_layers.build(tf1.placeholder(tf.float32, [None, None, None, 3]), spec)
        variables = tf_layers.model_variables(graph)
        saver = checkpoint.model_saver(variables)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, random_values(variables, seed=1))
        prefix = checkpoint.save_model(sess, saver, str(tmp_path / "tiny"), spec)
    segmenter = Segmenter(prefix, kernels=kernels)
    ops = [op.type for op in segmenter.graph.get_operations()]
    assert ops.count("Conv2DBackpropInput") == transposed
    # the cpu set folds the checkpoint's upsampling kernels into constants
    folded = [op.name for op in segmenter.graph.get_operations() if op.name.endswith("_value")]
    assert len(folded) == (3 if kernels == "cpu" else 0)
    batch = np.random.default_rng(0).integers(0, 256, (2, 23, 31, 3), dtype=np.uint8)
    labels, scores = segmenter.run(batch, scores=True)
    segmenter.close()
    other = Segmenter(prefix, kernels="cpu" if kernels == "reference" else "reference")
    assert _close(scores, other.run(batch, scores=True)[1])
    other.close()


# -- one definition: a test-only variant of one head layer --------------------------

class _Resized:
    """Layers that build the layer `name` with a `size` x `size` kernel and
    pass everything else through: a change of one line of the head."""

    def __init__(self, ops, name, size):
        self.ops, self.name, self.size = ops, name, size

    def __getattr__(self, attribute):
        return getattr(self.ops, attribute)

    def conv(self, net, name, weights, **kwargs):
        if name == self.name:
            kwargs["size"] = self.size
        return self.ops.conv(net, name, weights, **kwargs)


def conv8_3x3(ops, net, spec, keep_prob):
    """The legacy FCN-8s with a 3x3 conv8."""
    return definition.legacy_fcn(_Resized(ops, "conv8", 3), net, spec, keep_prob)


def test_one_change_to_the_head_reaches_graph_onnx_and_flops():
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from fcn_graph.engines import onnx_engine
    spec = tiny_spec(num_classes=4)
    f, k = spec.fc_width, spec.num_classes

    # the FLOP count: conv8 does 9 times the work, nothing else changes
    plain = flops.layer_macs(2, 37, 45, k, vgg_widths=spec.widths, fc_width=f)
    varied = flops.layer_macs(2, 37, 45, k, vgg_widths=spec.widths, fc_width=f, head=conv8_3x3)
    assert varied["conv8"] == 9 * plain["conv8"]
    assert {n: m for n, m in varied.items() if n != "conv8"} == \
        {n: m for n, m in plain.items() if n != "conv8"}
    shapes = definition.trace(spec, head=conv8_3x3).variables
    assert shapes["W8"] == (3, 3, f, k)

    # the TensorFlow graph: W8 is 3x3, and so is the convolution that reads it
    for kernels in ("reference", "cpu"):
        graph = tf.Graph()
        with graph.as_default():
            images = tf1.placeholder(tf.float32, [None, None, None, 3])
            logits, _, _ = tf_layers.build(images, spec, layers=choice.kernel_layers(kernels),
                                           head=conv8_3x3)
            variables = tf_layers.model_variables(graph)
        assert variables["inference/W8"].shape.as_list() == [3, 3, f, k]
        assert {name.split("/")[1]: tuple(v.shape.as_list())
                for name, v in variables.items()} == dict(shapes)
    values = random_values(variables, seed=9)
    batch = np.random.default_rng(4).integers(0, 256, (2, 37, 45, 3), dtype=np.uint8)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        want = sess.run(logits, {images: batch.astype(np.float32)})

    # the ONNX model: conv8 is a 3x3 Conv, and it computes what TensorFlow does
    weights = {name.split("/")[1]: value for name, value in values.items()}
    for kernels in ("reference", "cpu"):
        model = onnx_engine.onnx_model(spec, weights, kernels=kernels, head=conv8_3x3)
        convs = {node.output[0].rsplit("_", 1)[0]: node for node in model.graph.node
                 if node.op_type == "Conv"}
        sizes = [list(a.ints) for a in convs["conv8"].attribute if a.name == "kernel_shape"]
        assert sizes == [[3, 3]]
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        got = session.run(["scores"], {"images": batch})[0]
        assert _close(got, want, rtol=1e-4)
