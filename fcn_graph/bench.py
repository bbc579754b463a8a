"""Benchmark inference and training: `python -m fcn_graph.bench --help`.

The benchmark is not part of the installed library: its harness is the
`bench/` folder of a source checkout, beside this package. This command finds
it there and runs it; installed without a checkout, it says so on one line.
"""

import os
import sys

from fcn_graph.core.errors import UserError, run_cli

# The folder that holds this package: in a source checkout, bench/ is beside it.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_harness(checkout=None):
    """The module bench.harness of `checkout` (default CHECKOUT); UserError when
    there is none."""
    checkout = checkout or CHECKOUT
    bench_dir = os.path.join(checkout, "bench")
    if not os.path.isfile(os.path.join(bench_dir, "harness.py")):
        raise UserError(f"the benchmark needs a source checkout of fcn_graph: no "
                        f"bench/harness.py in {checkout}")
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from bench import harness
    if os.path.dirname(os.path.abspath(harness.__file__)) != bench_dir:
        raise UserError(f"the module 'bench' was imported from {harness.__file__}, not from "
                        f"{bench_dir}; run from the checkout or rename the other 'bench'")
    return harness


def build_parser():
    return load_harness().build_parser()


def main(argv=None):
    return load_harness().main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.bench"))
