"""Small helpers for building and running graphs in tests."""

import numpy as np
import tensorflow as tf

from fcn_graph.host import choice
from fcn_graph.network import tf_layers
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1

# Names and shapes FCN.tensorflow's checkpoints use, written out by hand.
LEGACY_NAMES = [f"inference/conv{b}_{i}_{s}"
                for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
                for i in range(1, n + 1) for s in ("w", "b")] + [
    "inference/" + n for n in ("W6", "b6", "W7", "b7", "W8", "b8",
                               "W_t1", "b_t1", "W_t2", "b_t2", "W_t3", "b_t3")]


def build_graph(spec, *, seed=0, kernels="auto", head=None):
    """(graph, images placeholder, logits, prediction, end_points, variables);
    `kernels` as in `choice.kernel_layers`, `head` as in `tf_layers.build`."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
        logits, prediction, end_points = tf_layers.build(
            images, spec, layers=choice.kernel_layers(kernels), head=head)
    return graph, images, logits, prediction, end_points, tf_layers.model_variables(graph)


def random_values(variables, seed=0, scale=0.3):
    """name -> random array of the variable's shape (non-zero biases too)."""
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(v.shape.as_list()) * scale).astype(np.float32)
            for name, v in variables.items()}


def run_random(graph, images, variables, fetches, x, seed):
    """Assign `random_values(variables, seed)` and run `fetches` on the images
    `x`; returns (the fetched values, the weights as float64 by their short
    names, for the NumPy reference)."""
    values = random_values(variables, seed=seed)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        got = sess.run(fetches, {images: x})
    return got, {name.split("/")[1]: a.astype(np.float64) for name, a in values.items()}


def write_random_checkpoint(prefix, spec, *, seed=4, scale=0.25):
    """A checkpoint of `spec` at `prefix` with `random_values` (non-zero
    everywhere; small weights keep the logits of a deep tiny network in
    float32's comfortable range); returns the prefix."""
    graph, _, _, _, _, variables = build_graph(spec)
    values = random_values(variables, seed=seed, scale=scale)
    with graph.as_default():
        saver = checkpoint.model_saver(variables)
    with tf1.Session(graph=graph) as sess:
        checkpoint.assign_arrays(sess, variables, values)
        return checkpoint.save_model(sess, saver, prefix, spec)
