"""FCN-8s semantic segmentation as a TF1-style graph on tf.compat.v1."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) is noise
# for a command-line user; errors still show. Set before TensorFlow loads.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `python -m fcn_graph.infer` (evaluate, export, port, train): the command
# module imports TensorFlow as it loads, so TensorFlow is loaded here first,
# with its start-up lines filtered out of standard error (fcn_graph/tflog.py).
# sys.argv[0] is "-m" only while the package of the module being run loads.
if _sys.argv[:1] == ["-m"]:
    from fcn_graph import tflog as _tflog

    if _tflog.started_as_command():
        _tflog.import_tensorflow_quietly()
