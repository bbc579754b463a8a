"""FCN-8s semantic segmentation as a TF1-style graph on tf.compat.v1."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) is noise
# for a command-line user; errors still show. Set before TensorFlow loads.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
