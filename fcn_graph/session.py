"""Session settings shared by every command."""

import os

import tensorflow as tf


def cpu_count():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_config(threads=None):
    """A ConfigProto that uses every core inside each op and runs ops one at a time.

    On a few cores, letting independent ops run side by side (inter-op > 1)
    makes them fight for the same cores; one op at a time with all cores
    inside it is faster for this chain-shaped network.
    """
    threads = threads or cpu_count()
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                    inter_op_parallelism_threads=1,
                                    allow_soft_placement=True)
