"""Train FCN-8s: python train.py --config config.json [--set section.key=value ...]"""

import sys

from fcn_graph.errors import run_cli
from fcn_graph.train import main

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train.py"))
