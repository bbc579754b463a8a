"""FCN-8s semantic segmentation as a TF1-style graph on tf.compat.v1."""

__version__ = "0.1.0"
