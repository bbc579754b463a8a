"""Train FCN-8s: python train.py --config config.json [--set section.key=value ...]"""

import os
import sys

# TensorFlow's oneDNN kernels compute the convolution gradients faster than
# its default CPU kernels (docs/performance.md). Read once, when TensorFlow
# loads: set TF_ENABLE_ONEDNN_OPTS=0 in the environment to train without them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from fcn_graph.errors import run_cli  # noqa: E402  (after the environment is set)
from fcn_graph.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train.py"))
