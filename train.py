"""Train FCN-8s: python train.py --config config.json [--set section.key=value ...]"""

import os
import sys

# TensorFlow's oneDNN kernels compute the convolution gradients faster than
# its default CPU kernels (about 20 % per step at 224x224 batch 2 on an AVX2
# CPU; docs/performance.md). Read once, when TensorFlow loads: set
# TF_ENABLE_ONEDNN_OPTS=0 in the environment to train without them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

try:  # Ctrl-C while TensorFlow loads: one line, like Ctrl-C later
    from fcn_graph import tflog  # noqa: E402  (after the environment is set)

    tflog.import_tensorflow_quietly()  # TensorFlow's start-up lines kept out of stderr
    from fcn_graph.errors import run_cli  # noqa: E402
    from fcn_graph.train import main  # noqa: E402
except KeyboardInterrupt:
    print("train.py: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train.py"))
