"""Train FCN-8s: python train.py --config config.json [--set section.key=value ...]"""

import sys

# Whether TensorFlow's oneDNN kernels run (TF_ENABLE_ONEDNN_OPTS) is chosen for
# this CPU by fcn_graph.train.main, before TensorFlow loads (host.choice).
from fcn_graph.core.errors import run_cli
from fcn_graph.train import main

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train.py"))
