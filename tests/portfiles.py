"""Files in the formats users bring, written small: an FCN.tensorflow training
checkpoint and a classic-layout Keras VGG19 or VGG16 `.h5`."""

import h5py
import numpy as np
import tensorflow as tf
from tfutil import build_graph, random_values

from fcn_graph.network.spec import backbone_of
from fcn_graph.weights import checkpoint
from fcn_graph.weights.kerash5 import KERAS_FC_LAYERS, keras_conv_layers

tf1 = tf.compat.v1


def write_legacy_checkpoint(prefix, spec, seed=0, height=9, width=11):
    """A checkpoint as FCN.tensorflow's training wrote it: the 44 model variables,
    Adam slots for the 42 that get gradients, beta1_power/beta2_power, no global
    step and no sidecar. Returns the model values by name."""
    graph, images, logits, *_, variables = build_graph(spec)
    with graph.as_default():
        labels = tf1.placeholder(tf.int32, [None, None, None])
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits))
        train_op = tf1.train.AdamOptimizer(1e-4).minimize(loss)
        saver = tf1.train.Saver()
        values = random_values(variables, seed=seed)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            checkpoint.assign_arrays(sess, variables, values)
            x = np.random.default_rng(seed).uniform(0, 255, (1, height, width, 3))
            sess.run(train_op, {images: x.astype(np.float32),
                                labels: np.zeros((1, height, width), np.int32)})
            values = dict(zip(variables, sess.run(list(variables.values()))))
            saver.save(sess, prefix, write_meta_graph=True)
    return values


def write_keras_h5(path, layers, fc=None, *, style="applications", skip=()):
    """Write VGG19 or VGG16 weights in the classic Keras layout (for tests and examples).

    layers: conv name -> (kernel HWIO, bias), the convs of VGG19 or VGG16; fc: optional "fc6"/"fc7"/"fc8" ->
    (kernel, bias) as 7x7/1x1 convs, flattened back to Dense kernels.
    style: "applications" (`block1_conv1_W_1:0` directly in the layer group) or
    "keras2" (`block1_conv1/kernel:0`, a nested group).
    skip: Keras layer names to leave out (to test missing layers).
    """
    fc = fc or {}
    convs = keras_conv_layers(backbone_of(layers))
    last = "4" if len(convs) == 16 else "3"  # the last conv of blocks 3-5
    order = ["input_1"]
    for keras_name, name in convs.items():
        order.append(keras_name)
        if name.endswith("2") and name[4] in "12" or name.endswith(last) and name[4] in "345":
            order.append(f"block{name[4]}_pool")
    if fc:
        order.append("flatten")
    order += [k for k, n in KERAS_FC_LAYERS.items() if n in fc]
    order = [n for n in order if n not in skip]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [n.encode("utf8") for n in order]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.0.0"
        conv_names = dict(convs)
        fc_names = dict(KERAS_FC_LAYERS)
        for keras_name in order:
            group = handle.create_group(keras_name)
            if keras_name in conv_names:
                kernel, bias = layers[conv_names[keras_name]]
            elif keras_name in fc_names:
                kernel, bias = fc[fc_names[keras_name]]
                kernel = np.asarray(kernel).reshape(-1, np.shape(kernel)[-1])
            else:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            if style == "applications":
                names = [f"{keras_name}_W_1:0", f"{keras_name}_b_1:0"]
            else:
                names = [f"{keras_name}/kernel:0", f"{keras_name}/bias:0"]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            group.create_dataset(names[0], data=np.asarray(kernel, np.float32))
            group.create_dataset(names[1], data=np.asarray(bias, np.float32))
