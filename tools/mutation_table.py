"""Print the kill rate per module of the last tools/mutation.sh run (mutants/*.meta).

    python tools/mutation_table.py                  the table and the survivors
    python tools/mutation_table.py --pending NAME   the mutants of module NAME not yet
                                                    decided, one a line (its patterns
                                                    when it never ran)
"""

import fnmatch
import json
import os
import sys

# module -> (file in mutants/, mutant name patterns), as tools/mutation.sh selects them
MODULES = {
    "model": ("fcn_graph/network/definition.py", ["fcn_graph.network.definition.*"]),
    "tf_layers": ("fcn_graph/network/tf_layers.py", ["fcn_graph.network.tf_layers.*"]),
    "metrics": ("fcn_graph/core/metrics.py", ["fcn_graph.core.metrics.*"]),
    "loss": ("fcn_graph/training/loop.py", ["fcn_graph.training.loop.x_segmentation_loss__mutmut_*",
                                         "fcn_graph.training.loop.x_kernel_l2__mutmut_*"]),
    "checkpoint": ("fcn_graph/weights/checkpoint.py", ["fcn_graph.weights.checkpoint.*"]),
    "matconvnet": ("fcn_graph/weights/matconvnet.py", ["fcn_graph.weights.matconvnet.*"]),
    "datasets": ("fcn_graph/data/datasets.py",
                 ["fcn_graph.data.datasets.x_read_label__mutmut_*"]),
}
KILLED, SURVIVED, NO_TESTS = {1, 3, -24, 24, 36, 152, 255}, {0}, {33}


def _codes(module):
    """Mutant name -> exit code (None: not run) of a module, or None if it never ran."""
    path, patterns = MODULES[module]
    meta = os.path.join("mutants", path + ".meta")
    if not os.path.exists(meta):
        return None
    with open(meta, encoding="utf-8") as handle:
        codes = json.load(handle)["exit_code_by_key"]
    return {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}


def pending(module):
    codes = _codes(module)
    names = MODULES[module][1] if codes is None else [k for k, v in codes.items() if v is None]
    for name in names:
        print(name)
    return 0


def main(argv):
    if argv[:1] == ["--pending"] and len(argv) == 2 and argv[1] in MODULES:
        return pending(argv[1])
    if argv:
        print(f"usage: {sys.argv[0]} [--pending {'|'.join(MODULES)}]", file=sys.stderr)
        return 2
    print(f"{'module':<12}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}"
          f"{'not run':>8}{'kill rate':>10}")
    survivors = []
    for module in MODULES:
        codes = _codes(module)
        if codes is None:
            print(f"{module:<12}  not run")
            continue
        killed = sum(v in KILLED or (v is not None and v not in SURVIVED | NO_TESTS)
                     for v in codes.values())
        survived = [k for k, v in codes.items() if v in SURVIVED]
        no_tests = sum(v in NO_TESTS for v in codes.values())
        not_run = sum(v is None for v in codes.values())
        checked = killed + len(survived) + no_tests
        rate = f"{100 * killed / checked:.0f}%" if checked else "-"
        print(f"{module:<12}{len(codes):>8}{killed:>8}{len(survived):>9}{no_tests:>9}"
              f"{not_run:>8}{rate:>10}")
        survivors += sorted(survived)
    if survivors:
        print("\nsurvivors (inspect one with: mutmut show NAME):")
        print("\n".join("  " + name for name in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
