"""Session settings shared by every command."""

import contextlib
import os

import tensorflow as tf

from fcn_graph.core.constants import PRECISIONS


def cpu_count():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS, read
    when TensorFlow is first imported; off by default on AMD CPUs)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a build without the flag
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def session_config(threads=None, *, xla=False, precision="float32"):
    """A ConfigProto that uses every core inside each op and runs ops one at a time.

    On a few cores, letting independent ops run side by side (inter-op > 1)
    makes them fight for the same cores; one op at a time with all cores
    inside it is faster for this chain-shaped network (docs/performance.md).

    xla: compile clusters of the graph with XLA (global JIT, level ON_1).
    precision: "float32"; "bfloat16" lets grappler run the convolutions in
        bfloat16 through oneDNN (auto mixed precision: needs
        TF_ENABLE_ONEDNN_OPTS=1 in the environment before TensorFlow is
        imported); "float16" uses grappler's auto mixed precision on a GPU.
        Variables, inputs and outputs stay float32.
    Nothing here names a device: ops go to a GPU when one is visible.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    threads = threads or cpu_count()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=1,
                                      allow_soft_placement=True)
    if xla:
        config.graph_options.optimizer_options.global_jit_level = (
            tf.compat.v1.OptimizerOptions.ON_1)
    rewrite = config.graph_options.rewrite_options
    if precision == "bfloat16":
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewrite.ON
    elif precision == "float16":
        rewrite.auto_mixed_precision = rewrite.ON
    return config


def xla_scope(enabled):
    """A context in which the ops built are compiled with XLA (when `enabled`),
    on CPUs too, where `global_jit_level` alone clusters nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False)
